"""The caption enricher with a tiny real LLaVA on a real lake: scope, owners, runs."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from lake.enrich import enrich
from lake.errors import ConfigError
from lake.schema import MEDIA_SCHEMA, SAMPLES_SCHEMA
from lake.store import Lake
from plugins.caption import (
    CaptionEnricher,
    generate,
    load_captioner,
    render_prompt,
    weights_sha256,
)
from tests.conftest import jpeg_bytes, png_bytes

PROV = {"plugin": "test", "plugin_version": "0", "run_id": "ingest-1", "steps": []}
HUMAN = "a dark square on a red background, written by a person"


def save_tiny_llava(out: Path, seed: int) -> Path:
    """A randomly initialised tiny LLaVA in the from_pretrained layout."""
    from core.models.vlm_tiny import save_tiny

    return save_tiny("llava", {}, out, seed=seed)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny LLaVAs with different weights, saved once."""
    base = tmp_path_factory.mktemp("caption_models")
    return {"m1": save_tiny_llava(base / "m1", 0), "m2": save_tiny_llava(base / "m2", 1)}


def _media(data: bytes, kind: str, mime: str, uri: str, **extra: object) -> dict[str, object]:
    media_id = hashlib.sha256(data).hexdigest()
    return {"media_id": media_id, "kind": kind, "mime": mime, "bytes": data,
            "source_uri": uri, "provenance": PROV, **extra}  # fmt: skip


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    """Samples of every kind the scope must tell apart, inserted as ingest would."""
    images = [
        _media(jpeg_bytes((200, 30, 30)), "image", "image/jpeg", "a.jpg"),
        _media(png_bytes((20, 40, 230), (80, 30)), "image", "image/png", "b.png"),
        _media(jpeg_bytes((30, 200, 30), (48, 64)), "image", "image/jpeg", "c.jpg"),
        _media(jpeg_bytes((240, 240, 240)), "image", "image/jpeg", "d.jpg"),
    ]
    frame = _media(jpeg_bytes((90, 90, 10), (72, 40)), "frame", "image/jpeg", "v.mp4#t=1.0",
                   parent_id="v" * 64, t_start=1.0, t_end=1.0)  # fmt: skip
    audio = _media(b"RIFF....WAVEfmt " + bytes(64), "audio", "audio/wav", "v.mp4#audio")
    lake = Lake(tmp_path / "lake")
    lake.insert_new("media", pa.Table.from_pylist([*images, frame, audio], schema=MEDIA_SCHEMA))
    ids = [m["media_id"] for m in images]

    def sample(sid: str, media: list[object], **fields: object) -> dict[str, object]:
        return {"sample_id": sid, "dataset": "d", "media_ids": media, "provenance": PROV,
                **fields}  # fmt: skip

    rows = [
        sample("img", [ids[0]]),
        sample("img2", [ids[1]], tags=["reviewed"]),
        sample("empty", [ids[2]], caption=""),
        sample("human", [ids[3]], caption=HUMAN),
        sample("frame", [frame["media_id"]], tags=["kind:frame"]),
        sample("audio", [audio["media_id"]], tags=["kind:audio"]),
        sample("multi", [ids[0], ids[1]]),
    ]
    lake.insert_new("samples", pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA))
    return lake


def _run(enricher: CaptionEnricher, lake: Lake, **kw: object):
    return enrich(enricher, lake, batch_size=4, write_batch=3, progress=False, **kw)


def _rows(lake: Lake) -> dict[str, dict[str, object]]:
    cols = ["sample_id", "caption", "caption_model", "provenance"]
    return {r["sample_id"]: r for r in lake.dataset("samples").to_table(columns=cols).to_pylist()}


CAPTIONED = {"img", "img2", "empty", "frame"}


def test_captions_images_and_frames_and_nothing_else(models, lake: Lake) -> None:
    enricher = CaptionEnricher(model=str(models["m1"]), device="cpu", batch_size=2)
    owner = enricher.owner()
    prefix, name, sha12, gen8 = owner.split(":")
    assert (prefix, name, len(sha12), len(gen8)) == ("hf", "m1", 12, 8)
    assert sha12 == weights_sha256(models["m1"])[:12]

    report = _run(enricher, lake)
    assert (report.todo, report.done, report.skipped) == (4, 4, 0)
    rows = _rows(lake)
    for sid in CAPTIONED:
        assert isinstance(rows[sid]["caption"], str) and rows[sid]["caption"].strip()
        assert rows[sid]["caption"] == rows[sid]["caption"].strip()
        assert rows[sid]["caption_model"] == owner
        step = rows[sid]["provenance"]["steps"][-1]
        assert step["name"] == "caption"
        assert json.loads(step["params"])["owner"] == owner
    assert (rows["human"]["caption"], rows["human"]["caption_model"]) == (HUMAN, None)
    for sid in ("audio", "multi"):  # out of scope: untouched
        assert (rows[sid]["caption"], rows[sid]["caption_model"]) == (None, None)
        assert rows[sid]["provenance"]["steps"] == []
    assert rows["human"]["provenance"]["steps"] == []
    # random weights, but the captions follow the images
    assert len({rows[sid]["caption"] for sid in CAPTIONED}) > 1

    version = lake.table("samples").version
    again = _run(CaptionEnricher(model=str(models["m1"]), device="cpu"), lake)
    assert (again.todo, again.done, again.skipped) == (0, 0, 4)
    assert lake.table("samples").version == version


def test_another_model_needs_reembed_and_never_replaces_a_human_caption(models, lake: Lake) -> None:
    first = CaptionEnricher(model=str(models["m1"]), device="cpu")
    _run(first, lake)
    before = _rows(lake)
    other = CaptionEnricher(model=str(models["m2"]), device="cpu")
    assert other.owner().split(":")[2] != first.owner().split(":")[2]
    with pytest.raises(ConfigError, match="reembed"):
        _run(other, lake)
    assert _rows(lake) == before

    report = _run(other, lake, reembed=True)
    assert report.done == 4
    rows = _rows(lake)
    assert {rows[sid]["caption_model"] for sid in CAPTIONED} == {other.owner()}
    assert (rows["human"]["caption"], rows["human"]["caption_model"]) == (HUMAN, None)
    names = [s["name"] for s in rows["img"]["provenance"]["steps"]]
    assert names == ["caption", "caption"]

    # a new prompt is a new owner too
    reprompted = CaptionEnricher(model=str(models["m2"]), device="cpu", prompt="What is it?")
    assert reprompted.owner().split(":")[:3] == other.owner().split(":")[:3]
    assert reprompted.owner() != other.owner()
    with pytest.raises(ConfigError, match="reembed"):
        _run(reprompted, lake)


def test_stored_captions_are_what_the_model_generates(models, lake: Lake) -> None:
    from PIL import Image

    _run(CaptionEnricher(model=str(models["m1"]), device="cpu", batch_size=1), lake)
    rows = _rows(lake)
    media = {
        r["source_uri"]: r["bytes"]
        for r in lake.dataset("media").to_table(columns=["source_uri", "bytes"]).to_pylist()
    }
    captioner = load_captioner(str(models["m1"]), "Describe the image in one sentence.",
                               "cpu", "auto", False)  # fmt: skip
    images = {uri: Image.open(io.BytesIO(media[uri])).convert("RGB") for uri in
              ("a.jpg", "b.png", "c.jpg")}  # fmt: skip
    got = {uri: generate(captioner, [img], 32)[0] for uri, img in images.items()}
    assert got == {"a.jpg": rows["img"]["caption"], "b.png": rows["img2"]["caption"],
                   "c.jpg": rows["empty"]["caption"]}  # fmt: skip
    # deterministic: the same batch twice gives the same captions
    batch = list(images.values())
    assert generate(captioner, batch, 8) == generate(captioner, batch, 8)


def test_rows_the_model_could_not_caption_are_marked_done(
    models, lake: Lake, caplog: pytest.LogCaptureFixture
) -> None:
    """Empty generations, undecodable images and non-image media: null caption, owner set;
    a sample whose media row is missing keeps a null owner and is retried."""
    corrupt = _media(b"\xff\xd8\xff\xe0 not really a jpeg", "image", "image/jpeg", "bad.jpg")
    audio_id = next(
        r["media_ids"][0] for r in lake.dataset("samples").to_table().to_pylist()
        if r["sample_id"] == "audio"
    )  # fmt: skip
    lake.insert_new("media", pa.Table.from_pylist([corrupt], schema=MEDIA_SCHEMA))
    extra = [
        {"sample_id": "corrupt", "dataset": "d", "media_ids": [corrupt["media_id"]]},
        {"sample_id": "untagged_audio", "dataset": "d", "media_ids": [audio_id]},
        {"sample_id": "orphan", "dataset": "d", "media_ids": ["0" * 64]},
    ]
    lake.insert_new("samples", pa.Table.from_pylist(extra, schema=SAMPLES_SCHEMA))

    enricher = CaptionEnricher(model=str(models["m1"]), device="cpu", max_new_tokens=4)
    # all-zero logits: greedy picks token 0, the pad token, which decodes to nothing
    enricher.captioner.model.lm_head.weight.data.zero_()
    assert enricher.captioner.processor.tokenizer.pad_token_id == 0
    report = _run(enricher, lake)
    assert (report.todo, report.done) == (7, 7)
    rows = _rows(lake)
    for sid in (*CAPTIONED, "corrupt", "untagged_audio"):
        assert (rows[sid]["caption"], rows[sid]["caption_model"]) == (None, enricher.owner())
    assert (rows["orphan"]["caption"], rows["orphan"]["caption_model"]) == (None, None)
    assert "cannot decode" in caplog.text and "bad.jpg" in caplog.text
    assert "0" * 64 in caplog.text
    assert lake.count("samples", "caption IS NULL AND caption_model IS NOT NULL") == 6

    again = _run(enricher, lake)
    assert (again.todo, again.skipped) == (1, 6)  # only the orphan is tried again


def test_another_family_with_variable_image_tokens(tmp_path: Path, lake: Lake) -> None:
    """Qwen2-VL: a token count per image size, so prompts of one batch are left-padded."""
    from core.models.vlm_tiny import save_tiny

    folder = save_tiny("qwen2_vl", {}, tmp_path / "qwen", seed=0)
    enricher = CaptionEnricher(model=str(folder), device="cpu", batch_size=4, max_new_tokens=8)
    assert _run(enricher, lake).done == 4
    rows = _rows(lake)
    assert all(isinstance(rows[sid]["caption"], str) for sid in CAPTIONED)
    assert enricher.owner().startswith("hf:qwen:")


def test_plain_prompt_without_a_chat_template(models) -> None:
    from PIL import Image

    captioner = load_captioner(str(models["m1"]), "Describe it.", "cpu", "float32", False)
    processor = captioner.processor
    processor.chat_template = None
    text, plain = render_prompt(processor, "Describe it.")
    assert (text, plain) == ("<image>\nDescribe it.", "Describe it.")
    captioner.text, captioner.plain = text, plain
    out = generate(captioner, [Image.new("RGB", (30, 50), (10, 200, 90))] * 2, 6)
    assert len(out) == 2 and all(c is None or isinstance(c, str) for c in out)
    assert processor.tokenizer.padding_side == "left"  # decoder-only


def test_lakeloom_runs_load_merged_else_full_export(models, tmp_path: Path, lake: Lake) -> None:
    runs = tmp_path / "runs"
    # a full fine-tune: the export at the end of training holds full weights
    shutil.copytree(models["m2"], runs / "full" / "hf")
    full = CaptionEnricher(run="full", runs_dir=str(runs), device="cpu")
    assert full.source == str(runs / "full" / "hf")
    same = CaptionEnricher(model=str(models["m2"]))
    assert full.owner().split(":")[:2] == ["run", "full"]
    assert full.owner().split(":")[2:] == same.owner().split(":")[2:]  # same weights

    # a LoRA run: hf/ holds the adapter (PEFT format); merged/ is what `lakeloom merge` wrote
    _lora_export(runs / "lora" / "hf")
    with pytest.raises(ConfigError, match=r"lakeloom merge run=lora"):
        CaptionEnricher(run="lora", runs_dir=str(runs))
    with pytest.raises(ConfigError, match="PEFT adapter"):
        CaptionEnricher(model=str(runs / "lora" / "hf"))
    shutil.copytree(models["m1"], runs / "lora" / "merged")
    lora = CaptionEnricher(run="lora", runs_dir=str(runs), device="cpu")
    assert lora.source == str(runs / "lora" / "merged")
    report = _run(lora, lake)
    assert report.done == 4
    assert {r["caption_model"] for r in _rows(lake).values()} == {lora.owner(), None}

    with pytest.raises(ConfigError, match="no run 'nope'"):
        CaptionEnricher(run="nope", runs_dir=str(runs))
    (runs / "empty").mkdir()
    with pytest.raises(ConfigError, match="no exported model"):
        CaptionEnricher(run="empty", runs_dir=str(runs))


def _lora_export(out: Path) -> None:
    """What VlmModule.export writes for a LoRA run: the PEFT adapter and the processor."""
    from core.models.vlm_families import family
    from core.models.vlm_load import apply_peft
    from core.models.vlm_tiny import build_tiny

    model, processor = build_tiny("llava", {}, seed=0)
    peft_model = apply_peft(model, family("llava"), "lora", r=2)
    peft_model.save_pretrained(out)
    processor.save_pretrained(out)


def test_bad_options_are_config_errors(models, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one model"):
        CaptionEnricher()
    with pytest.raises(ConfigError, match="exactly one model"):
        CaptionEnricher(model=str(models["m1"]), run="r1")
    with pytest.raises(ConfigError, match="does not exist"):
        CaptionEnricher(model=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="dtype"):
        CaptionEnricher(model=str(models["m1"]), dtype="int8")
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(ConfigError, match=r"no config\.json"):
        CaptionEnricher(model=str(tmp_path / "not_a_model"))


def test_user_where_narrows_the_scope(models, lake: Lake) -> None:
    enricher = CaptionEnricher(model=str(models["m1"]), device="cpu",
                               where="sample_id IN ('img', 'human', 'audio')")  # fmt: skip
    assert _run(enricher, lake).done == 1
    rows = _rows(lake)
    assert [s for s, r in rows.items() if r["caption_model"]] == ["img"]


def test_a_user_where_cannot_escape_the_scope(models) -> None:
    escape = CaptionEnricher(model=str(models["m1"]), where="1=0) OR (1=1")
    with pytest.raises(ConfigError, match="unbalanced parentheses"):
        escape.where()


def test_media_read_survives_quotes_in_ids(models, lake: Lake) -> None:
    odd = _media(jpeg_bytes((9, 9, 9)), "image", "image/jpeg", "o'brien.jpg")
    odd["media_id"] = "it's'; --"
    lake.insert_new("media", pa.Table.from_pylist([odd], schema=MEDIA_SCHEMA))
    enricher = CaptionEnricher(model=str(models["m1"]))
    enricher.prepare(lake)
    plain = next(iter(lake.keys("media") - {odd["media_id"]}))
    found = enricher._media({odd["media_id"], plain, "missing'"})
    assert set(found) == {odd["media_id"], plain}
    assert found[odd["media_id"]]["source_uri"] == "o'brien.jpg"


def test_config_composes_and_instantiates(models) -> None:
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(
            "enrich",
            overrides=["enrich=caption", f"enrich.model.source={models['m1']}",
                       "enrich.max_new_tokens=8"],
        )  # fmt: skip
    assert cfg.enrich.name == "caption"
    enricher = instantiate(cfg.enrich.steps.caption)
    assert isinstance(enricher, CaptionEnricher)
    assert (enricher.source, enricher.max_new_tokens) == (str(models["m1"]), 8)
    assert enricher.prompt == "Describe the image in one sentence."
