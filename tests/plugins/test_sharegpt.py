"""ShareGPTSource: configurable keys and tags, system prompts, preference pairs, rejects."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from lake.records import Location, Reject, SourceRecord
from lake.sources import ShareGPTLayout
from lake.video import conf_settings
from plugins.exporters import ShareGPTExporter
from plugins.sharegpt import ShareGPTSource
from tests.conftest import conf_kwargs, jpeg_bytes, png_bytes

REPO = Path(__file__).resolve().parents[2]


def _write_jsonl(path: Path, lines: list[object]) -> None:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": role, "value": text} for role, text in pairs]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``sg/`` with ``a.jpg`` and ``b.png``."""
    ds = tmp_path / "sg"
    ds.mkdir()
    (ds / "a.jpg").write_bytes(jpeg_bytes((200, 0, 0)))
    (ds / "b.png").write_bytes(png_bytes((0, 0, 200)))
    return ds


def test_conversations_images_and_system_prompt(root: Path) -> None:
    (root / "data.json").write_text(
        json.dumps(
            [
                {
                    "conversations": _turns(
                        ("system", "Be brief."), ("human", "<image>Colour?"), ("gpt", "Red.")
                    ),
                    "images": ["a.jpg"],
                },
                {
                    "system": "You see two images.",
                    "conversations": _turns(("user", "<image> vs <image>"), ("assistant", "Same")),
                    "images": ["b.png", "a.jpg"],
                },
            ]
        )
    )
    first, second = ShareGPTSource(root / "data.json").records()
    assert isinstance(first, SourceRecord) and isinstance(second, SourceRecord)
    assert first.location == Location("data.json", row=0)
    assert first.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>Colour?"},
        {"role": "assistant", "content": "Red."},
    ]
    assert [m.source_uri for m in first.media] == ["a.jpg"]
    assert first.steps == [("parse_sharegpt", {"format": "sharegpt"})]
    assert second.location == Location("data.json", row=1)
    assert second.messages[0] == {"role": "system", "content": "You see two images."}
    assert [m.source_uri for m in second.media] == ["b.png", "a.jpg"]
    assert (first.chosen, first.rejected) == (None, None)


def test_configured_keys_and_tags(root: Path) -> None:
    _write_jsonl(
        root / "custom.jsonl",
        [
            {
                "dialog": [
                    {"speaker": "Q", "text": "<image> what?"},
                    {"speaker": "A", "text": "a jpeg"},
                    {"speaker": "human", "text": "and now?"},
                    {"speaker": "A", "text": "still"},
                ],
                "image": "a.jpg",
            },
            {"dialog": [{"speaker": "narrator", "text": "hi"}]},
        ],
    )
    src = ShareGPTSource(
        root / "custom.jsonl",
        messages_key="dialog",
        role_key="speaker",
        content_key="text",
        user_tag="Q",
        assistant_tag="A",
    )
    rec, reject = src.records()
    assert isinstance(rec, SourceRecord)
    assert [m["role"] for m in rec.messages] == ["user", "assistant", "user", "assistant"]
    assert rec.messages[0]["content"] == "<image> what?"
    assert isinstance(reject, Reject)
    assert reject.location == Location("custom.jsonl", line=2)
    assert "unknown message role 'narrator'" in reject.reason
    params = src.params()
    assert (params["messages_key"], params["user_tag"], params["assistant_tag"]) == (
        "dialog",
        "Q",
        "A",
    )


def test_preference_pairs_and_their_rejects(root: Path) -> None:
    prompt = _turns(("human", "<image> Describe it."))
    _write_jsonl(
        root / "pref.jsonl",
        [
            {
                "conversations": prompt,
                "image": "a.jpg",
                "chosen": {"from": "gpt", "value": "A red picture."},
                "rejected": "A blue picture.",
            },
            {"conversations": prompt, "image": "a.jpg", "chosen": "only chosen"},
            {"conversations": prompt, "image": "a.jpg", "chosen": "x", "rejected": {"from": "gpt"}},
            {"conversations": prompt, "image": "a.jpg", "chosen": "", "rejected": "y"},
            {"conversations": _turns(("human", "text only?")), "chosen": "yes", "rejected": "no"},
        ],
    )
    got = list(ShareGPTSource(root / "pref.jsonl").records())
    first, last = got[0], got[-1]
    assert isinstance(first, SourceRecord) and isinstance(last, SourceRecord)
    assert (first.chosen, first.rejected) == ("A red picture.", "A blue picture.")
    assert first.messages == [{"role": "user", "content": "<image> Describe it."}]
    assert (last.chosen, last.rejected, last.media) == ("yes", "no", [])
    expected = [
        (2, "'chosen' without 'rejected'"),
        (3, "'rejected': missing field 'value'"),
        (4, "'chosen' must be a non-empty string"),
    ]
    rejects = got[1:-1]
    assert all(isinstance(r, Reject) for r in rejects)
    assert [(r.location.line, r.location.file) for r in rejects] == [
        (line, "pref.jsonl") for line, _ in expected
    ]
    for reject, (_, reason) in zip(rejects, expected, strict=True):
        assert reason in reject.reason


def test_turn_and_record_rejects(root: Path) -> None:
    (root / "bad.json").write_text(
        json.dumps(
            [
                {"conversations": _turns(("human", "ok"), ("gpt", "fine"))},
                {"conversations": [{"from": "human"}]},
                {"conversations": ["just a string"]},
                {"conversations": {"from": "human", "value": "hi"}},
                {"messages": _turns(("human", "wrong key"))},
                "a string record",
                {"conversations": _turns(("human", "   "), ("gpt", ""))},
                {"conversations": _turns(("human", "<image>")), "image": "missing.png"},
                {"conversations": _turns(("human", "<image>")), "images": "a.jpg"},
                {"conversations": _turns(("human", "again")), "system": 3},
                {"conversations": _turns(("human", "last"), ("gpt", "one"))},
            ]
        )
    )
    got = list(ShareGPTSource(root / "bad.json").records())
    assert [r.location.row for r in got if isinstance(r, SourceRecord)] == [0, 10]
    expected = [
        (1, "turn 0: missing field 'value'"),
        (2, "turn 0 must be an object, got string"),
        (3, "'conversations' must be a list, got object"),
        (4, "missing field 'conversations'"),
        (5, "record must be a JSON object, got string"),
        (6, "empty conversation"),
        (7, "image file not found: missing.png"),
        (8, "'images' must be a list"),
        (9, "'system' must be a string, got int"),
    ]
    rejects = [r for r in got if isinstance(r, Reject)]
    assert [r.location for r in rejects] == [Location("bad.json", row=row) for row, _ in expected]
    for reject, (_, reason) in zip(rejects, expected, strict=True):
        assert reason in reject.reason


def test_folder_without_json_files_fails_validation(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match=r"no \*\.json"):
        ShareGPTSource(tmp_path).validate()
    with pytest.raises(FileNotFoundError):
        ShareGPTSource(tmp_path / "absent.jsonl").validate()


def test_config_instantiates_source(root: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "source" / "sharegpt.yaml")
    cfg.path = str(root)
    src = instantiate(cfg)
    assert isinstance(src, ShareGPTSource)
    assert (src.name, src.version, src.count()) == ("sharegpt", "0.1.0", None)
    assert src.params() == {
        "path": str(root),
        "allow_absolute": False,
        "allow_outside_root": False,
        "allow_urls": False,
        "max_media_bytes": 64 * 2**20,  # conf/source default
        "max_line_bytes": 64 * 2**20,
        "image_folder": None,
        "messages_key": "conversations",
        "role_key": "from",
        "content_key": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "system_tag": "system",
        "kto_tag": "label",
        "store_video": True,
        "video_analysis": asdict(conf_settings()),
        "audio_rate": 16000,
        "audio_format": "flac",
    }


def test_one_layout_for_the_source_and_the_exporter() -> None:
    """The ShareGPT keys and tags are defined once (lake.sources.ShareGPTLayout): its
    defaults are the values of both config files, and the exporter writes what the source
    reads for any layout."""
    fields = ShareGPTLayout().options()
    source = conf_kwargs("ingest", "source", "source=sharegpt", path="x")
    export = conf_kwargs("export", "export", "export=sharegpt")
    assert {k: source[k] for k in fields} == fields
    assert {k: export[k] for k in fields} == fields
    custom = {"messages_key": "turns", "role_key": "who", "user_tag": "q", "assistant_tag": "a"}
    exporter = ShareGPTExporter(**custom)
    assert ShareGPTSource("x", **custom).layout == exporter.layout
    assert exporter.source_options() == ShareGPTLayout(**custom).options()
    with pytest.raises(TypeError):
        ShareGPTExporter(message_key="typo")
