"""Shared contracts have one owner in ``lake``: image decoding (EXIF-upright everywhere),
review tags, SQL literals and media placeholders. Behaviour tests run the real
consumers; grep tests fail if a private copy of a contract comes back."""

from __future__ import annotations

import ast
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from lake.images import decode_image
from lake.ingest import IngestSettings, ingest
from lake.schema import IMAGE_TOKEN
from lake.store import Lake
from plugins.image_folder import ImageFolderSource

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "lake", "plugins", "tui")
_ORIENTATION = 0x0112


def package_files() -> Iterator[Path]:
    """Every Python source file of lakeloom's packages (tests and bench are not packages)."""
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


# ---- images: one decoder, EXIF applied ---------------------------------------------------


def sideways_jpeg() -> tuple[bytes, bytes, bytes]:
    """(a JPEG stored sideways with EXIF orientation 6, the same pixels upright as a PNG
    without EXIF, the stored pixels as they are, not turned, as a PNG).

    The picture is wide and asymmetric (a block in one corner), so a decoder that ignores
    the orientation gets another shape and other pixels."""
    img = Image.new("RGB", (72, 40), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, 24, 16), fill=(220, 30, 30))
    draw.ellipse((40, 14, 66, 36), fill=(30, 30, 220))
    exif = Image.Exif()
    exif[_ORIENTATION] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, exif=exif.tobytes())
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as stored:
        stored.load()
        assert stored.getexif()[_ORIENTATION] == 6
        upright = ImageOps.exif_transpose(stored)
        raw = stored.copy()
    raw.info.pop("exif", None)

    def png(image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    assert upright.size == (40, 72)
    return data, png(upright), png(raw)


def test_decode_image_is_loaded_upright_and_in_the_asked_mode() -> None:
    exif_jpeg, upright_png, _ = sideways_jpeg()
    image = decode_image(exif_jpeg)
    want = decode_image(upright_png)
    assert image.size == (40, 72) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(want))
    assert decode_image(exif_jpeg, "L").mode == "L"
    palette = io.BytesIO()
    want.convert("P").save(palette, format="PNG", transparency=0)
    assert decode_image(palette.getvalue()).mode == "RGB"
    with pytest.raises(OSError):
        decode_image(b"not an image")


@pytest.fixture(scope="module")
def exif_lake(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The three pictures ingested into a small lake; their stored bytes by file stem."""
    base = tmp_path_factory.mktemp("exif_lake")
    folder = base / "photos" / "shapes"
    folder.mkdir(parents=True)
    for name, data in zip(("exif", "upright", "raw"), sideways_jpeg(), strict=True):
        (folder / f"{name}.{'jpg' if name == 'exif' else 'png'}").write_bytes(data)
    lake = Lake(base / "lake")
    ingest(ImageFolderSource(base / "photos"), lake, settings=IngestSettings(progress=False))
    rows = lake.dataset("media").to_table(columns=["source_uri", "bytes"]).to_pylist()
    stored = {Path(r["source_uri"]).stem: r["bytes"] for r in rows}
    assert set(stored) == {"exif", "upright", "raw"}
    return {"lake": str(base / "lake"), **stored}  # type: ignore[dict-item]


def test_clip_enricher_embeds_the_upright_image(exif_lake: dict[str, Any], tmp_path: Path) -> None:
    from core.models.clip import create_clip, save_open_clip
    from lake.enrich import enrich
    from plugins.clip_embed import ClipImageEmbedder

    torch.manual_seed(0)
    save_open_clip(create_clip("tiny-clip", None)[0], None, tmp_path / "clip")
    lake = Lake(exif_lake["lake"])
    embedder = ClipImageEmbedder(pretrained=f"local-dir:{tmp_path / 'clip'}", device="cpu")
    enrich(embedder, lake, batch_size=4, write_batch=4, progress=False)
    rows = lake.dataset("media").to_table(columns=["source_uri", "clip_image"]).to_pylist()
    vec = {Path(r["source_uri"]).stem: np.asarray(r["clip_image"]) for r in rows}
    np.testing.assert_allclose(vec["exif"], vec["upright"], atol=1e-5)
    assert not np.allclose(vec["raw"], vec["upright"], atol=1e-3)  # the test can tell


def flat_tensors(batch: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a (nested) batch by its dotted key."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(batch, torch.Tensor):
        out[prefix] = batch
    elif isinstance(batch, Mapping):
        for key, value in batch.items():
            out.update(flat_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def same_batch(a: Any, b: Any) -> bool:
    """Whether two batches hold the same tensors (shapes and values)."""
    ta, tb = flat_tensors(a), flat_tensors(b)
    return ta.keys() == tb.keys() and all(
        ta[k].shape == tb[k].shape and torch.equal(ta[k], tb[k]) for k in ta
    )


def assert_collates_upright(collate: Any, sample: Any, stored: Mapping[str, bytes]) -> None:
    """The EXIF image collates exactly as its upright copy, and not as its raw pixels."""
    exif, upright, raw = (collate([sample(stored[k])]) for k in ("exif", "upright", "raw"))
    assert "pixel_values" in flat_tensors(exif) or "images" in flat_tensors(exif)
    assert same_batch(exif, upright)
    assert not same_batch(raw, upright)  # the test can tell


def test_clip_collator_sees_the_upright_image(exif_lake: dict[str, Any]) -> None:
    from core.modules.clip_module import ClipModule
    from tests.conftest import conf_kwargs

    module = ClipModule(**conf_kwargs("train", "model", "model=clip_tiny"))
    collate = module.make_collator(train=False)

    def sample(data: bytes) -> dict[str, Any]:
        return {"sample_id": "s", "images": [data], "caption": "a red block", "label": None,
                "messages": None, "dataset": "d"}  # fmt: skip

    assert_collates_upright(collate, sample, exif_lake)


def test_vlm_collator_sees_the_upright_image(exif_lake: dict[str, Any]) -> None:
    from core.models.vlm_families import family
    from core.models.vlm_tiny import build_tiny
    from core.modules.vlm_collate import VlmCollator

    spec = family("llava")
    processor = build_tiny("llava", {}, seed=0)[1]
    collate = VlmCollator(processor, spec.never_supervised, spec.image_token, max_length=4096)

    def sample(data: bytes) -> dict[str, Any]:
        messages = [("user", f"{IMAGE_TOKEN}\nWhat is in the corner?"), ("assistant", "red")]
        return {"sample_id": "s", "dataset": "d", "images": [data],
                "messages": [{"role": r, "content": c} for r, c in messages],
                "caption": None, "chosen": None, "rejected": None,
                "source_uri": "s.jsonl#L1"}  # fmt: skip

    assert_collates_upright(collate, sample, exif_lake)


def test_apotheon_collator_sees_the_upright_image(exif_lake: dict[str, Any]) -> None:
    from core.models.apotheon import ApotheonConfig, build_processors
    from core.modules.apotheon_collate import ApotheonCollator

    cfg = ApotheonConfig()
    p = build_processors(cfg)
    collate = ApotheonCollator(
        p["tokenizer"], p["image_processor"], p["feature_extractor"],
        caption_prompt=cfg.caption_prompt, transcription_prompt=cfg.transcription_prompt,
        max_text_tokens=cfg.max_text_tokens, max_frames=cfg.fusion.max_frames,
    )  # fmt: skip

    def sample(data: bytes) -> dict[str, Any]:
        return {"sample_id": "s", "images": [data], "audio": None, "audio_range": None,
                "caption": "a red block", "messages": [], "transcript": None}  # fmt: skip

    assert_collates_upright(collate, sample, exif_lake)


def test_tui_preview_and_decode_helpers_are_gone() -> None:
    """The TUI preview decodes through lake.images (upright); the old private decoders are
    gone from the modules that had them."""
    from tui import halfblock
    from tui.widgets import image as widget

    assert not hasattr(halfblock, "decode")
    assert widget.decode_image is decode_image
    import core.data.collate as collate
    import core.modules.clip_collate as clip_collate

    assert collate.decode_image is decode_image
    assert clip_collate.decode_image is decode_image


#: files allowed to call ``Image.open`` (the reason is the value)
IMAGE_OPEN_ALLOWED = {"lake/images.py": "the one decoder (decode_image) and the ingest check"}


def test_image_bytes_are_opened_only_in_lake_images() -> None:
    found = []
    for path in package_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in IMAGE_OPEN_ALLOWED:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "Image.open(" in line:
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "decode image bytes with lake.images.decode_image:\n" + "\n".join(found)


# ---- review tags: one format, read the same by the TUI and by split ------------------------

DECIDED = {
    "ok": ["review:dup:confirmed:ana:2026-01-02T03:04:05+00:00"],
    "changed_mind": [  # the latest decision wins: dismissed
        "review:dup:confirmed:ana:2026-01-02T03:04:05+00:00",
        "review:dup:dismissed:bob:2026-01-03T03:04:05+00:00",
    ],
    "malformed": ["review:dup:confirmed"],  # no who / when: not a decision
    "other_check": [
        "review:blur:dismissed:ana:2026-01-02T03:04:05+00:00",
        "review:dup:confirmed:bob:2026-01-02T03:04:05+00:00",
    ],
    "none": ["kind:image"],
}


def test_split_excludes_exactly_what_the_tui_shows_confirmed(tmp_path: Path) -> None:
    import pyarrow as pa

    from lake.split import EXCLUDED, split_lake
    from tui.review import decisions

    folder = tmp_path / "photos"
    for i, name in enumerate(DECIDED):
        (folder / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (40 * i, 20, 200 - 30 * i)).save(
            folder / ("a" if i % 2 else "b") / f"{name}.png"
        )
    lake = Lake(tmp_path / "lake")
    ingest(ImageFolderSource(folder), lake, settings=IngestSettings(progress=False))
    rows = lake.dataset("samples").to_table(columns=["sample_id", "source_uri"]).to_pylist()
    sid = {Path(r["source_uri"]).stem: r["sample_id"] for r in rows}
    tags = pa.array([DECIDED[name] for name in sid], pa.list_(pa.string()))
    lake.update_columns("samples", pa.table({"sample_id": list(sid.values()), "tags": tags}))

    shown = {
        name
        for name, t in DECIDED.items()
        if any(d[0] == "confirmed" for d in decisions(t).values())
    }
    assert shown == {"ok", "other_check"}
    split_lake(lake, {"train": 0.5, "val": 0.5}, exclude_confirmed=True)
    got = lake.dataset("samples").to_table(columns=["sample_id", "split"]).to_pylist()
    excluded = {r["sample_id"] for r in got if r["split"] == EXCLUDED}
    assert excluded == {sid[name] for name in shown}


def test_review_tag_round_trip() -> None:
    from lake.review import decisions, is_confirmed, parse_tag, review_tag

    tag = review_tag("dup", "confirmed", "ana", "2026-01-02T03:04:05+00:00")
    assert parse_tag(tag) == ("dup", "confirmed", "ana", "2026-01-02T03:04:05+00:00")
    assert parse_tag("review:dup:maybe:ana:t") is None and parse_tag("kind:image") is None
    assert decisions(DECIDED["changed_mind"]) == {
        "dup": ("dismissed", "bob", "2026-01-03T03:04:05+00:00")
    }
    assert [is_confirmed(t) for t in DECIDED.values()] == [True, False, False, True, False]
    assert is_confirmed(None) is False


def _code_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but docstrings (documentation may quote a format)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return (n for n in ast.walk(tree) if id(n) not in docstrings)


REVIEW_NAMES = {"review_tag", "parse_tag", "decisions", "is_confirmed", "DECISIONS", "PREFIX"}
REVIEW_WORDS = {"review", "confirmed", "dismissed"}


def test_review_tag_format_lives_only_in_lake_review() -> None:
    """No other module builds, parses or compares review tags' parts, nor defines the
    format's names again."""
    found = []
    for path in package_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel == "lake/review.py":
            continue
        for node in _code_nodes(ast.parse(path.read_text())):
            bad = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.startswith("review:"):
                    bad = node.value
            elif isinstance(node, ast.Compare):
                words = [node.left, *node.comparators]
                if any(isinstance(w, ast.Constant) and w.value in REVIEW_WORDS for w in words):
                    bad = ast.unparse(node)
            elif isinstance(node, (ast.FunctionDef, ast.Assign)):
                names = (
                    {node.name}
                    if isinstance(node, ast.FunctionDef)
                    else {t.id for t in node.targets if isinstance(t, ast.Name)}
                )
                if names & REVIEW_NAMES and ("review" in rel):
                    bad = f"defines {sorted(names & REVIEW_NAMES)}"
            if bad:
                found.append(f"{rel}:{getattr(node, 'lineno', '?')}: {bad}")
    assert not found, "use lake.review for review tags:\n" + "\n".join(found)


# ---- media placeholders: constants of lake.schema only -----------------------------------

#: files whose code may spell a placeholder (the reason is the value)
PLACEHOLDER_ALLOWED = {
    "lake/schema.py": "the owner: IMAGE_TOKEN, VIDEO_TOKEN, AUDIO_TOKEN",
    "core/models/vlm_families.py": "LLaVA's own tokenizer token (model vocabulary), which is "
    "not the lake's placeholder even though LLaVA spells it the same",
    "core/models/vlm_tiny.py": "the tiny LLaVA's tokenizer and chat template (model side)",
}


def test_placeholders_are_spelled_only_in_lake_schema() -> None:
    """Code (docstrings and comments may quote them) takes ``<image>`` / ``<video>`` /
    ``<audio>`` from lake.schema's constants."""
    from lake.schema import PLACEHOLDERS

    tokens = tuple(PLACEHOLDERS.values())
    found = []
    for path in package_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in PLACEHOLDER_ALLOWED:
            continue
        for node in _code_nodes(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and any(t in text for t in tokens):
                found.append(f"{rel}:{node.lineno}: {text!r}")
    assert not found, "use lake.schema's IMAGE_TOKEN etc.:\n" + "\n".join(found)


def test_tui_text_preview_drops_every_placeholder_kind() -> None:
    from lake.schema import AUDIO_TOKEN, VIDEO_TOKEN
    from tui.lake_data import _first_text

    messages = [
        {"role": "user", "content": f"{IMAGE_TOKEN}{VIDEO_TOKEN}\nWhat is {AUDIO_TOKEN} this?"},
        {"role": "assistant", "content": "a dog"},
    ]
    assert _first_text(messages) == "What is this? / a dog"
