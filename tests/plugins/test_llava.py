"""LlavaSource: LLaVA JSON/JSONL records -> canonical messages, media refs and rejects."""

from __future__ import annotations

import base64
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from lake.records import Location, Reject, SourceRecord
from lake.video import conf_settings
from plugins.llava import LlavaSource
from tests.conftest import jpeg_bytes, png_bytes

REPO = Path(__file__).resolve().parents[2]


def _write_jsonl(path: Path, lines: list[object]) -> None:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


def _conv(question: str, answer: str = "a red square") -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``ds/`` with ``images/a.jpg``, ``images/b.png`` and ``../outside.jpg`` next to it."""
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "images" / "a.jpg").write_bytes(jpeg_bytes((200, 0, 0)))
    (ds / "images" / "b.png").write_bytes(png_bytes((0, 0, 200)))
    (tmp_path / "outside.jpg").write_bytes(jpeg_bytes((0, 200, 0)))
    return ds


def test_single_multi_and_text_only_records(root: Path) -> None:
    _write_jsonl(
        root / "data.jsonl",
        [
            {"id": "1", "image": "images/a.jpg", "conversations": _conv("<image>\nWhat is it?")},
            {
                "id": "2",
                "images": ["images/b.png", "images/a.jpg"],
                "conversations": _conv("<image><image> Compare.", "blue vs red"),
            },
            {"id": "3", "conversations": _conv("Hello?", "Hi.")},
        ],
    )
    got = list(LlavaSource(root / "data.jsonl").records())
    assert all(isinstance(r, SourceRecord) for r in got)
    first, second, third = got
    assert first.location == Location("data.jsonl", line=1)
    assert first.messages == [
        {"role": "user", "content": "<image>\nWhat is it?"},
        {"role": "assistant", "content": "a red square"},
    ]
    assert [m.source_uri for m in first.media] == ["images/a.jpg"]
    assert first.media[0].path == (root / "images" / "a.jpg").resolve()
    assert first.steps == [("parse_llava", {"format": "llava"})]
    assert [m.source_uri for m in second.media] == ["images/b.png", "images/a.jpg"]
    assert second.messages[1] == {"role": "assistant", "content": "blue vs red"}
    assert third.media == []
    assert third.messages == [
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "Hi."},
    ]
    assert (first.caption, first.label, first.chosen, first.rejected) == (None,) * 4


def test_image_folder_prefixes_relative_paths(root: Path) -> None:
    _write_jsonl(root / "d.jsonl", [{"image": "a.jpg", "conversations": _conv("<image>")}])
    (rec,) = LlavaSource(root / "d.jsonl", image_folder="images").records()
    assert isinstance(rec, SourceRecord)
    assert rec.media[0].source_uri == "images/a.jpg"
    assert LlavaSource(root, image_folder="images").params()["image_folder"] == "images"


def test_folder_reads_json_and_jsonl_sorted_with_rows_and_lines(root: Path) -> None:
    (root / "b.json").write_text(
        json.dumps(
            [
                {"image": "images/a.jpg", "conversations": _conv("<image> one")},
                {"image": "images/b.png", "conversations": _conv("<image> two")},
            ]
        )
    )
    _write_jsonl(root / "a.jsonl", [{"conversations": _conv("zero")}])
    (root / "notes.txt").write_text("ignored")
    got = list(LlavaSource(root).records())
    assert [r.location for r in got] == [
        Location("a.jsonl", line=1),
        Location("b.json", row=0),
        Location("b.json", row=1),
    ]
    assert [r.messages[0]["content"] for r in got] == ["zero", "<image> one", "<image> two"]


def test_every_reject_kind_keeps_location_and_reading_goes_on(root: Path) -> None:
    absolute = str((root / "images" / "a.jpg").resolve())
    _write_jsonl(
        root / "data.jsonl",
        [
            {"image": "images/a.jpg", "conversations": _conv("<image> ok")},
            "{not json",
            {"image": "images/missing.jpg", "conversations": _conv("<image>")},
            {"image": "../outside.jpg", "conversations": _conv("<image>")},
            {"image": absolute, "conversations": _conv("<image>")},
            {"image": "https://example.com/x.jpg", "conversations": _conv("<image>")},
            {"images": ["images/a.jpg", "images/b.png"], "conversations": _conv("<image>" * 3)},
            {"conversations": []},
            {"conversations": [{"from": "narrator", "value": "hi"}]},
            {"id": "no-conv", "image": "images/a.jpg"},
            "",
            {"conversations": _conv("<image> but no image")},
            ["not", "an", "object"],
            {"image": "images/b.png", "conversations": _conv("<image> last")},
        ],
    )
    got = list(LlavaSource(root / "data.jsonl").records())
    records = [r for r in got if isinstance(r, SourceRecord)]
    rejects = [r for r in got if isinstance(r, Reject)]
    assert [r.location.line for r in records] == [1, 14]
    assert records[1].media[0].source_uri == "images/b.png"
    expected = [
        (2, "malformed JSON line"),
        (3, "image file not found: images/missing.jpg"),
        (4, "image path escapes the dataset root"),
        (5, "absolute image path not allowed"),
        (6, "URL image references are not allowed"),
        (7, "3 <image> placeholder(s) but 2 image(s)"),
        (8, "empty conversation"),
        (9, "unknown message role 'narrator'"),
        (10, "missing field 'conversations'"),
        (12, "1 <image> placeholder(s) but 0 image(s)"),
        (13, "record must be a JSON object, got array"),
    ]
    assert [r.location.line for r in rejects] == [line for line, _ in expected]
    for reject, (_, reason) in zip(rejects, expected, strict=True):
        assert reject.location.file == "data.jsonl"
        assert reason in reject.reason


def test_json_array_syntax_error_is_one_reject_with_line(root: Path) -> None:
    (root / "bad.json").write_text('[\n  {"conversations": []},\n  oops\n]\n')
    (reject,) = LlavaSource(root / "bad.json").records()
    assert isinstance(reject, Reject)
    assert reject.location == Location("bad.json", line=3)
    assert "malformed JSON" in reject.reason


def test_data_url_accepted_and_policy_opens_absolute_paths(root: Path) -> None:
    raw = png_bytes((9, 9, 9))
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    absolute = str((root.parent / "outside.jpg").resolve())
    _write_jsonl(
        root / "d.jsonl",
        [
            {"image": url, "conversations": _conv("<image>")},
            {"image": absolute, "conversations": _conv("<image>")},
        ],
    )
    inline, outside = LlavaSource(root / "d.jsonl", allow_absolute=True).records()
    assert isinstance(inline, SourceRecord) and isinstance(outside, SourceRecord)
    assert inline.media[0].data == raw and inline.media[0].path is None
    assert outside.media[0].path == Path(absolute)


def test_config_instantiates_source(root: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "source" / "llava.yaml")
    cfg.path = str(root)
    src = instantiate(cfg)
    assert isinstance(src, LlavaSource)
    assert (src.name, src.version, src.count()) == ("llava", "0.1.0", None)
    assert src.params() == {
        "path": str(root),
        "allow_absolute": False,
        "allow_outside_root": False,
        "allow_urls": False,
        "max_media_bytes": 64 * 2**20,  # conf/source default
        "max_line_bytes": 64 * 2**20,
        "image_folder": None,
        "kto_tag": "label",
        "store_video": True,
        "video_analysis": asdict(conf_settings()),
        "audio_rate": 16000,
        "audio_format": "flac",
    }
