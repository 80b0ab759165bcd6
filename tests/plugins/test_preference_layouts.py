"""Preference, KTO and TRL layouts in the JSON sources, exact key layouts of the real files:
LLaMA-Factory's ``dpo_en_demo`` / ``kto_en_demo``, ms-swift's ``rejected_response`` /
``rejected_images`` / ``label``, TRL's vision preference and SFT rows, 2U1's DPO rows; and
a known media or preference key a source does not read is rejected, never dropped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lake.ingest import IngestSettings, ingest
from lake.plugin import Source
from lake.records import Reject, SourceRecord
from lake.schema import SAMPLES
from lake.store import Lake
from plugins.messages import MessagesSource
from plugins.sharegpt import ShareGPTSource
from plugins.trl import TrlSource
from tests.conftest import jpeg_bytes, png_bytes


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``ds/`` with ``a.jpg`` and ``b.png``."""
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "a.jpg").write_bytes(jpeg_bytes((200, 0, 0)))
    (ds / "b.png").write_bytes(png_bytes((0, 0, 200)))
    return ds


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _one(source: Source) -> SourceRecord:
    (rec,) = source.records()
    assert isinstance(rec, SourceRecord), rec
    return rec


def _reject(source: Source) -> str:
    (rec,) = source.records()
    assert isinstance(rec, Reject), rec
    return rec.reason


def _samples(lake: Lake) -> list[dict[str, Any]]:
    return lake.dataset(SAMPLES).to_table().to_pylist()


USER_IMG = {"role": "user", "content": "<image>What is shown?"}


def test_swift_rejected_response_and_rejected_images(root: Path) -> None:
    path = _jsonl(
        root / "swift.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    USER_IMG,
                    {"role": "assistant", "content": "A red square."},
                ],
                "images": ["a.jpg"],
                "rejected_response": "A blue circle.",
                "rejected_images": ["b.png"],
            }
        ],
    )
    rec = _one(MessagesSource(path))
    assert rec.messages == [{"role": "system", "content": "Be brief."}, USER_IMG]
    assert (rec.chosen, rec.rejected) == ("A red square.", "A blue circle.")
    assert [m.source_uri for m in rec.media] == ["a.jpg"]
    assert rec.rejected_media is not None
    assert [m.source_uri for m in rec.rejected_media] == ["b.png"]


def test_swift_rejected_images_same_as_prompt_stored_as_null(root: Path, lake: Lake) -> None:
    rows = [
        {
            "messages": [USER_IMG, {"role": "assistant", "content": "Red."}],
            "images": ["a.jpg"],
            "rejected_response": "Blue.",
            "rejected_images": ["a.jpg"],
        },
        {
            "messages": [USER_IMG, {"role": "assistant", "content": "Red!"}],
            "images": ["a.jpg"],
            "rejected_response": "Blue!",
            "rejected_images": ["b.png"],
        },
    ]
    report = ingest(
        MessagesSource(_jsonl(root / "s.jsonl", rows)), lake, "s", IngestSettings(progress=False)
    )
    assert report.new_samples == 2 and report.rejected == 0
    by_chosen = {r["chosen"]: r for r in _samples(lake)}
    assert by_chosen["Red."]["rejected_media_ids"] is None
    other = by_chosen["Red!"]["rejected_media_ids"]
    assert other and other != by_chosen["Red!"]["media_ids"]
    assert lake.count("media") == 2  # the rejected answer's image landed too


@pytest.mark.parametrize("label", [True, False])
def test_llamafactory_kto_tag_and_swift_label_become_feedback(
    root: Path, lake: Lake, label: bool
) -> None:
    # LLaMA-Factory kto_en_demo.json: {"messages": [{"content", "role"}], "label": bool}
    demo = [
        {
            "messages": [
                {"content": "Write a haiku.", "role": "user"},
                {"content": "Old pond, frog jumps in.", "role": "assistant"},
            ],
            "label": label,
        }
    ]
    (root / "kto_en_demo.json").write_text(json.dumps(demo))
    lf = ShareGPTSource(
        root / "kto_en_demo.json", messages_key="messages", role_key="role", content_key="content"
    )
    assert _one(lf).feedback is label
    swift = _one(MessagesSource(root / "kto_en_demo.json"))
    assert swift.feedback is label
    ingest(lf, lake, "kto", IngestSettings(progress=False))
    (row,) = _samples(lake)
    assert row["feedback"] is label and row["chosen"] is None


def test_kto_label_must_be_bool_and_judge_an_answer(root: Path) -> None:
    bad = _jsonl(root / "k.jsonl", [{"messages": [{"role": "user", "content": "hi"}], "label": 1}])
    assert "KTO feedback" in _reject(MessagesSource(bad))
    ask = _jsonl(
        root / "q.jsonl", [{"messages": [{"role": "user", "content": "hi"}], "label": True}]
    )
    assert "end with the answer" in _reject(MessagesSource(ask))


def test_trl_vision_preference(root: Path) -> None:
    row = {
        "images": ["a.jpg"],
        "prompt": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}
        ],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}],
    }
    rec = _one(TrlSource(_jsonl(root / "trl.jsonl", [row])))
    assert rec.messages == [{"role": "user", "content": "<image>Colour?"}]
    assert (rec.chosen, rec.rejected) == ("Red.", "Blue.")
    assert [m.source_uri for m in rec.media] == ["a.jpg"]


def test_2u1_dpo_strings_with_image(root: Path) -> None:
    row = {
        "id": "000000033471",
        "image": "a.jpg",
        "prompt": "<image>\nWhat are the colors of the bus in the image?",
        "chosen": "The bus in the image is white and red.",
        "rejected": "The bus in the image is blue and yellow.",
    }
    rec = _one(TrlSource(_jsonl(root / "dpo.jsonl", [row])))
    assert rec.messages == [{"role": "user", "content": row["prompt"]}]
    assert rec.chosen == row["chosen"] and rec.rejected == row["rejected"]
    assert rec.record_id == "000000033471" and len(rec.media) == 1


def test_trl_unpaired_preference_is_feedback(root: Path) -> None:
    row = {
        "prompt": [{"role": "user", "content": "The sky is"}],
        "completion": [{"role": "assistant", "content": "green."}],
        "label": False,
    }
    rec = _one(TrlSource(_jsonl(root / "kto.jsonl", [row])))
    assert rec.messages[-1] == {"role": "assistant", "content": "green."}
    assert rec.feedback is False


def test_trl_vision_sft_parts_and_string_content(root: Path) -> None:
    parts = {
        "images": ["a.jpg", "b.png"],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": " vs "},
                    {"type": "image"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Different."}]},
        ],
    }
    for source in (MessagesSource, TrlSource):
        rec = _one(source(_jsonl(root / "sft.jsonl", [parts])))
        assert rec.messages[0]["content"] == "<image> vs <image>"
        assert [m.source_uri for m in rec.media] == ["a.jpg", "b.png"]
    # string content + images: TRL shows the images before the first user text
    text = {
        "images": ["a.jpg"],
        "messages": [
            {"role": "user", "content": "What is it?"},
            {"role": "assistant", "content": "A square."},
        ],
    }
    rec = _one(TrlSource(_jsonl(root / "sft2.jsonl", [text])))
    assert rec.messages[0]["content"] == "<image>What is it?"


@pytest.mark.parametrize(
    ("source", "row", "key"),
    [
        # ms-swift preference through the sharegpt reader: rejected, not made SFT
        (
            "sharegpt",
            {
                "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
                "rejected_response": "Go away.",
            },
            "rejected_response",
        ),
        # a KTO column with kto_tag switched off
        (
            "sharegpt_no_kto",
            {
                "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
                "label": False,
            },
            "label",
        ),
        # TRL's prompt/chosen/rejected in a messages file
        (
            "messages",
            {"messages": [{"role": "user", "content": "Hi"}], "chosen": "a", "rejected": "b"},
            "chosen",
        ),
        ("messages", {"messages": [{"role": "user", "content": "Hi"}], "kto_tag": True}, "kto_tag"),
    ],
)
def test_known_key_not_read_is_rejected_with_reason(
    root: Path, source: str, row: dict[str, Any], key: str
) -> None:
    path = _jsonl(root / "x.jsonl", [row])
    src = {
        "sharegpt": lambda: ShareGPTSource(path),
        "sharegpt_no_kto": lambda: ShareGPTSource(path, kto_tag=None),
        "messages": lambda: MessagesSource(path),
    }[source]()
    reason = _reject(src)
    assert f"field {key!r} is not read by the" in reason


def test_unknown_keys_are_counted_in_the_summary(root: Path, lake: Lake) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": f"{i}"}]}
        | ({"tools": "[]"} if i < 2 else {})
        | {"weight": 1.0}
        for i in range(3)
    ]
    report = ingest(
        MessagesSource(_jsonl(root / "u.jsonl", rows)), lake, "u", IngestSettings(progress=False)
    )
    assert report.ignored_keys == {"weight": 3, "tools": 2}
    assert "ignored keys, not read by the source (records): weight (3), tools (2)" in (
        report.summary()
    )
    (run,) = [r for r in lake.runs() if r["job"] == "ingest" and r["status"] == "finished"]
    assert json.loads(run["counts"])["ignored_keys"] == {"weight": 3, "tools": 2}


def _preference_lake(root: Path, lake: Lake) -> None:
    """A pair with an image (TRL), a KTO-labelled answer and an SFT row, one dataset."""
    rows = [
        {
            "images": ["a.jpg"],
            "prompt": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hue?"}]}
            ],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}],
        },
        {
            "images": ["b.png"],
            "prompt": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hue?"}]}
            ],
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": "Green."}]}],
            "label": False,
        },
        {
            "images": ["b.png"],
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hue?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]},
            ],
        },
    ]
    report = ingest(
        TrlSource(_jsonl(root / "trl.jsonl", rows)), lake, "prefs", IngestSettings(progress=False)
    )
    assert report.new_samples == 3 and report.rejected == 0


@pytest.mark.parametrize(
    ("exporter", "source"),
    [
        ({"style": "trl"}, TrlSource),
        ({"style": "swift"}, MessagesSource),
        ("sharegpt", ShareGPTSource),
    ],
)
def test_export_then_reingest_is_exact(
    root: Path, lake: Lake, tmp_path: Path, exporter: Any, source: type[Source]
) -> None:
    from lake.export import export
    from plugins.exporters import MessagesExporter, ShareGPTExporter

    _preference_lake(root, lake)
    before = {r["sample_id"]: r for r in _samples(lake)}
    exp = ShareGPTExporter() if exporter == "sharegpt" else MessagesExporter(**exporter)
    out = tmp_path / "out"
    report = export(lake, exp, out)
    assert report["samples"] == 3 and report["dropped"] == [] and report["changed_ids"] == 0
    back = ingest(source(out), lake, "prefs", IngestSettings(progress=False))
    assert back.rejected == 0 and back.new_samples == 0 and back.present_samples == 3
    fresh = Lake(tmp_path / "fresh")
    ingest(source(out), fresh, "prefs", IngestSettings(progress=False))
    after = {r["sample_id"]: r for r in _samples(fresh)}
    assert after.keys() == before.keys()
    for sid, row in before.items():
        for key in ("messages", "media_ids", "chosen", "rejected", "feedback"):
            assert after[sid][key] == row[key], key


def test_trl_export_rows_are_trl_layouts(root: Path, lake: Lake, tmp_path: Path) -> None:
    from lake.export import export
    from plugins.exporters import MessagesExporter

    _preference_lake(root, lake)
    export(lake, MessagesExporter(style="trl"), tmp_path / "out")
    rows = [json.loads(x) for x in (tmp_path / "out" / "messages.jsonl").read_text().splitlines()]
    kinds = sorted(tuple(sorted(r)) for r in rows)
    assert kinds == [
        ("chosen", "images", "prompt", "rejected"),
        ("completion", "images", "label", "prompt"),
        ("images", "messages"),
    ]
    sft = next(r for r in rows if "messages" in r)
    assert sft["messages"][0]["content"][0] == {"type": "image"}
    assert len(sft["images"]) == 1


def test_sharegpt_export_writes_dataset_info(root: Path, lake: Lake, tmp_path: Path) -> None:
    from lake.export import export
    from plugins.exporters import ShareGPTExporter

    _preference_lake(root, lake)
    export(lake, ShareGPTExporter(), tmp_path / "all")
    info = json.loads((tmp_path / "all" / "dataset_info.json").read_text())
    entry = info["sharegpt"]
    assert entry["file_name"] == "sharegpt.json" and entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "conversations", "images": "images", "kto_tag": "label"}
    assert entry["tags"]["role_tag"] == "from" and "ranking" not in entry
    export(lake, ShareGPTExporter(), tmp_path / "pairs", where="chosen IS NOT NULL")
    pairs = json.loads((tmp_path / "pairs" / "dataset_info.json").read_text())["sharegpt"]
    assert pairs["ranking"] is True
    assert pairs["columns"]["chosen"] == "chosen" and pairs["columns"]["rejected"] == "rejected"


def test_exporter_that_cannot_carry_a_pair_says_so_per_sample(
    root: Path, lake: Lake, tmp_path: Path
) -> None:
    from lake.export import export, format_report
    from plugins.exporters import MessagesExporter

    _preference_lake(root, lake)
    report = export(lake, MessagesExporter(style="qwen"), tmp_path / "out")
    by_id = {r["sample_id"]: r for r in _samples(lake)}
    pair = next(s for s, r in by_id.items() if r["chosen"])
    kto = next(s for s, r in by_id.items() if r["feedback"] is not None)
    assert sorted((d["sample_id"], d["reason"].split(" not")[0]) for d in report["dropped"]) == (
        sorted([(pair, "preference pair (chosen / rejected)"), (kto, "KTO feedback")])
    )
    text = format_report(report)
    assert "dropped      1  preference pair (chosen / rejected) not carried by export=messages" in (
        text
    )
    manifest = json.loads((tmp_path / "out" / ".lakeloom_export.json").read_text())
    assert {d["sample_id"] for d in manifest["dropped"]} == {pair, kto}
