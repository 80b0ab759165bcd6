"""CLIP enrichers on a real lake: vector columns, owners, idempotence, model changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lake.enrich import enrich
from lake.errors import ConfigError
from lake.ingest import IngestSettings, ingest
from lake.store import Lake
from plugins.clip_embed import (
    ClipImageEmbedder,
    ClipTextEmbedder,
    build_index,
    parse_owner,
    sample_text,
)
from plugins.image_folder import ImageFolderSource

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def make_images(root: Path) -> Path:
    """12 PNGs in 3 class folders; 9 have a caption sidecar, 3 have none."""
    from PIL import Image, ImageDraw

    for i, (label, j) in enumerate((lab, j) for lab in COLOURS for j in range(4)):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (48, 48), COLOURS[label])
        ImageDraw.Draw(img).ellipse((4 + 3 * j, 4, 30, 30 + j), fill=(250, 250, 250))
        img.save(folder / f"{i:02d}.png")
        if j != 3:
            (folder / f"{i:02d}.txt").write_text(f"a {label} circle number {j}")
    return root


def save_tiny_clip(out: Path, seed: int) -> str:
    """A randomly initialised tiny-clip saved in the open_clip local-dir layout."""
    import torch

    from core.models.clip import create_clip, save_open_clip

    torch.manual_seed(seed)
    model = create_clip("tiny-clip", None)[0]
    save_open_clip(model, None, out)
    return f"local-dir:{out}"


@pytest.fixture(scope="session")
def clip_base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An ingested (not embedded) lake and two different saved models, built once."""
    base = tmp_path_factory.mktemp("clip_base")
    images = make_images(base / "shapes")
    lake = Lake(base / "lake")
    ingest(ImageFolderSource(images, caption_sidecar=True), lake, settings=IngestSettings(
        progress=False))  # fmt: skip
    return {
        "lake": base / "lake",
        "images": images,
        "m1": save_tiny_clip(base / "m1", 0),
        "m2": save_tiny_clip(base / "m2", 1),
    }


@pytest.fixture
def clip_lake(clip_base: dict[str, object], tmp_path: Path) -> Lake:
    """A private copy of the ingested lake."""
    shutil.copytree(clip_base["lake"], tmp_path / "lake")
    return Lake(tmp_path / "lake")


def _run(enricher, lake: Lake, **kw):
    return enrich(enricher, lake, batch_size=5, write_batch=4, progress=False, **kw)


def _column(lake: Lake, table: str, column: str, key: str) -> dict[str, object]:
    t = lake.dataset(table).to_table(columns=[key, column])
    return dict(zip(t.column(key).to_pylist(), t.column(column).to_pylist(), strict=True))


def test_image_and_text_columns_owner_and_normalisation(clip_base, clip_lake: Lake) -> None:
    image = ClipImageEmbedder(pretrained=clip_base["m1"], device="cpu", batch_size=4)
    text = ClipTextEmbedder(pretrained=clip_base["m1"], device="cpu", batch_size=4)
    owner = image.owner()
    assert owner == text.owner()  # one model, one id, loaded once
    assert image.clip is text.clip
    arch, kind, value = parse_owner(owner)
    assert (arch, kind, value) == ("tiny-clip", "local-dir", "m1")
    assert len(owner.rsplit(":", 1)[1]) == 12

    r1, r2 = _run(image, clip_lake), _run(text, clip_lake)
    assert (r1.done, r2.done) == (12, 12)
    media = clip_lake.table("media").schema
    samples = clip_lake.table("samples").schema
    assert media.field("clip_image").type == pa.list_(pa.float32(), 64)
    assert media.field("clip_image_model").type == pa.string()
    assert samples.field("clip_text").type == pa.list_(pa.float32(), 64)

    col = clip_lake.dataset("media").to_table(columns=["clip_image"]).column("clip_image")
    vecs = np.stack(col.to_numpy(zero_copy_only=False))
    assert vecs.dtype == np.float32 and vecs.shape == (12, 64)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert set(_column(clip_lake, "media", "clip_image_model", "media_id").values()) == {owner}

    rows = (
        clip_lake.dataset("samples")
        .to_table(columns=["caption", "clip_text", "clip_text_model"])
        .to_pylist()
    )
    assert {r["clip_text_model"] for r in rows} == {owner}  # text-less rows count as done
    for r in rows:
        assert (r["clip_text"] is None) == (r["caption"] is None)
    with_text = [r for r in rows if r["caption"]]
    assert len(with_text) == 9
    got = np.array([r["clip_text"] for r in with_text], np.float32)
    want = text.embed_texts([r["caption"] for r in with_text])
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    # the embedding step is appended to each row's provenance
    prov = clip_lake.dataset("media").to_table(columns=["provenance"]).to_pylist()
    for p in prov:
        step = p["provenance"]["steps"][-1]
        assert step["name"] == "clip_image"
        assert json.loads(step["params"])["owner"] == owner


def test_second_run_is_a_no_op(clip_base, clip_lake: Lake) -> None:
    image = ClipImageEmbedder(pretrained=clip_base["m1"], device="cpu")
    _run(image, clip_lake)
    before = _column(clip_lake, "media", "clip_image", "media_id")
    version = clip_lake.table("media").version
    again = _run(image, clip_lake)
    assert (again.done, again.skipped, again.todo) == (0, 12, 0)
    assert clip_lake.table("media").version == version  # nothing written
    assert _column(clip_lake, "media", "clip_image", "media_id") == before


def test_model_change_needs_reembed(clip_base, clip_lake: Lake) -> None:
    first = ClipImageEmbedder(pretrained=clip_base["m1"], device="cpu")
    _run(first, clip_lake)
    before = _column(clip_lake, "media", "clip_image", "media_id")
    other = ClipImageEmbedder(pretrained=clip_base["m2"], device="cpu")
    assert other.owner() != first.owner()  # same arch and folder name scheme, other weights
    with pytest.raises(ConfigError, match="reembed"):
        _run(other, clip_lake)
    assert _column(clip_lake, "media", "clip_image", "media_id") == before  # untouched

    report = _run(other, clip_lake, reembed=True)
    assert report.done == 12
    owners = set(_column(clip_lake, "media", "clip_image_model", "media_id").values())
    assert owners == {other.owner()}
    after = _column(clip_lake, "media", "clip_image", "media_id")
    assert all(not np.allclose(after[k], before[k]) for k in before)
    steps = clip_lake.dataset("media").to_table(columns=["provenance"]).to_pylist()
    assert [s["name"] for s in steps[0]["provenance"]["steps"]][-2:] == [
        "clip_image",
        "clip_image",
    ]


def test_sample_text_rules() -> None:
    msgs = [
        {"role": "user", "content": "<image>\nWhat is it?"},
        {"role": "assistant", "content": "<image> A red circle."},
        {"role": "assistant", "content": "later"},
    ]
    assert sample_text(" a cat ", msgs) == "a cat"
    assert sample_text(None, msgs) == "A red circle."
    assert sample_text("", [{"role": "user", "content": "hi"}]) is None
    assert sample_text(None, None) is None


def test_index_waits_for_enough_rows(clip_base, clip_lake: Lake) -> None:
    image = ClipImageEmbedder(pretrained=clip_base["m1"], device="cpu", index_min_rows=1000)
    _run(image, clip_lake)
    assert build_index(clip_lake, min_rows=1000) == "skipped"
    # (ingest's key lookups are indexed: no vector index is what counts)
    assert not any("clip_image" in i.columns for i in clip_lake.table("media").list_indices())


def test_index_built_over_threshold(tmp_path: Path) -> None:
    """IVF_PQ (cosine) on a synthetic media table of 512 unit vectors; recall is measured."""
    from lake.query import index_recall

    lake = Lake(tmp_path / "lake")
    rng = np.random.default_rng(0)
    n, dim = 512, 16
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rows = pa.table(
        {
            "media_id": [f"m{i}" for i in range(n)],
            "kind": ["image"] * n,
        }
    )
    lake.insert_new("media", rows)
    lake.add_columns("media", [pa.field("clip_image", pa.list_(pa.float32(), dim))])
    flat = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim)
    lake.update_columns(
        "media", pa.table({"media_id": rows.column("media_id"), "clip_image": flat})
    )
    assert build_index(lake, min_rows=256, num_partitions=4) == "created"
    assert any("clip_image" in i.columns for i in lake.table("media").list_indices())
    assert index_recall(lake, queries=20, k=5, nprobes=4, refine_factor=10) >= 0.9


def test_label_conflict_zero_shot_reloads_the_images_model(
    clip_base, clip_lake: Lake, tmp_path: Path
) -> None:
    """The zero-shot label check embeds its prompts with the model named by the vectors."""
    import torch

    from core.models.clip import create_clip, save_open_clip
    from tests.checks_data import conf_check

    runs = tmp_path / "runs"
    torch.manual_seed(3)
    model = create_clip("tiny-clip", None)[0]
    save_open_clip(model, None, runs / "r1" / "open_clip")
    _run(ClipImageEmbedder(run="r1", runs_dir=str(runs)), clip_lake)

    check = conf_check("label_conflict", method="zero_shot", min_confidence=0.0, runs_dir=str(runs))
    result, summary = check.run(clip_lake)
    assert summary["method"].startswith("CLIP zero-shot") and summary["scored"] == 12

    # the same figures computed here, straight from the saved model
    saved, _, _, tokenizer = create_clip(f"local-dir:{runs / 'r1' / 'open_clip'}")
    names = sorted(COLOURS)
    with torch.no_grad():
        prompts = saved.encode_text(tokenizer([f"a photo of a {n}" for n in names]))
        prompts = torch.nn.functional.normalize(prompts, dim=-1).numpy()
        scale = saved.logit_scale.exp().item()
    samples = clip_lake.dataset("samples").to_table(columns=["sample_id", "label", "media_ids"])
    vec = _column(clip_lake, "media", "clip_image", "media_id")
    rows = {r["sample_id"]: r for r in result.to_pylist()}
    for s in samples.to_pylist():
        logits = scale * np.asarray(vec[s["media_ids"][0]]) @ prompts.T
        p = np.exp(logits - logits.max())
        p /= p.sum()
        own = names.index(s["label"])
        others = [(p[j], j) for j in range(len(names)) if j != own]
        best_p, best = max(others)
        row = rows[s["sample_id"]]
        assert row["score"] == pytest.approx(best_p - p[own], abs=1e-4)
        assert row["flagged"] == bool(best_p > p[own])
        assert row["detail"].startswith(f"predicted {names[best]} ")


def test_label_conflict_zero_shot_needs_a_loadable_model(clip_base, clip_lake: Lake) -> None:
    from tests.checks_data import conf_check

    _run(ClipImageEmbedder(pretrained=clip_base["m1"]), clip_lake)
    # a local-dir model's id holds only the folder's name: zero_shot says so, auto falls back
    with pytest.raises(ValueError, match=r"cannot load .* for zero-shot labels"):
        conf_check("label_conflict", method="zero_shot").run(clip_lake)
    _, summary = conf_check("label_conflict").run(clip_lake)
    assert summary["method"].startswith("leave-one-out label prototypes")
