"""A sample's identity: its dataset is part of it (old lakes keep theirs), and a record's
own ``id`` is kept and exported back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from lake import ids
from lake.export import export
from lake.ingest import IngestSettings, ingest
from lake.schema import SAMPLES
from lake.store import Lake
from plugins.exporters import LlavaExporter, MessagesExporter, ShareGPTExporter
from plugins.llava import LlavaSource
from plugins.messages import MessagesSource
from plugins.sharegpt import ShareGPTSource
from tests.conftest import jpeg_bytes

QUIET = IngestSettings(workers=0, progress=False)


def _llava(root: Path) -> Path:
    """Two LLaVA records with their own ids (one a number), one without."""
    root.mkdir(parents=True)
    (root / "a.jpg").write_bytes(jpeg_bytes((200, 30, 30)))
    records = [
        {
            "id": "rec-1",
            "image": "a.jpg",
            "conversations": [
                {"from": "human", "value": "<image>colour?"},
                {"from": "gpt", "value": "red"},
            ],
        },
        {
            "id": 7,
            "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
        },
        {"conversations": [{"from": "human", "value": "no id"}, {"from": "gpt", "value": "ok"}]},
    ]
    (root / "data.json").write_text(json.dumps(records))
    return root / "data.json"


def _rows(lake: Lake) -> list[dict[str, Any]]:
    return lake.dataset(SAMPLES).to_table().to_pylist()


def test_same_content_under_two_datasets_is_two_samples(tmp_path: Path, lake: Lake) -> None:
    data = _llava(tmp_path / "src")
    first = ingest(LlavaSource(data), lake, "one", QUIET)
    second = ingest(LlavaSource(data), lake, "two", QUIET)
    assert (first.new_samples, second.new_samples, second.present_samples) == (3, 3, 0)
    rows = _rows(lake)
    per_dataset = {
        d: sorted(r["record_id"] or "" for r in rows if r["dataset"] == d) for d in ("one", "two")
    }
    assert per_dataset == {"one": ["", "7", "rec-1"], "two": ["", "7", "rec-1"]}
    assert len({r["sample_id"] for r in rows}) == 6
    again = ingest(LlavaSource(data), lake, "one", QUIET)
    assert (again.new_samples, again.present_samples) == (0, 3)
    assert len(_rows(lake)) == 6


def test_a_lake_keyed_without_the_dataset_gets_no_duplicates(tmp_path: Path, lake: Lake) -> None:
    data = _llava(tmp_path / "src")
    ingest(LlavaSource(data), lake, "one", QUIET)
    # rewrite the samples as an older lakeloom keyed them: content only
    table = lake.dataset(SAMPLES).to_table()
    rows = table.to_pylist()
    old = [
        ids.sample_id(
            r["media_ids"], r["messages"], r["caption"], r["label"], r["chosen"], r["rejected"]
        )
        for r in rows
    ]
    assert set(old).isdisjoint(r["sample_id"] for r in rows)
    table = table.set_column(0, "sample_id", pa.array(old, pa.string()))
    lake.db.create_table(SAMPLES, table, mode="overwrite")
    again = ingest(LlavaSource(data), lake, "one", QUIET)
    assert (again.new_samples, again.present_samples) == (0, 3)
    # the same content under another name is still a sample of its own
    other = ingest(LlavaSource(data), lake, "two", QUIET)
    assert other.new_samples == 3 and len(_rows(lake)) == 6


def test_record_ids_are_kept_and_exported_back(tmp_path: Path, lake: Lake) -> None:
    data = _llava(tmp_path / "src")
    ingest(LlavaSource(data), lake, "one", QUIET)
    ids_by_text = {r["messages"][0]["content"]: r["record_id"] for r in _rows(lake)}
    assert ids_by_text == {"<image>colour?": "rec-1", "hi": "7", "no id": None}
    for exporter, source, file in (
        (LlavaExporter(), LlavaSource, "llava.json"),
        (ShareGPTExporter(), ShareGPTSource, "sharegpt.json"),
        (MessagesExporter(style="qwen"), MessagesSource, "messages.jsonl"),
    ):
        out = tmp_path / f"out_{exporter.name}"
        report = export(lake, exporter, out)
        assert report["samples"] == 3 and report["changed_ids"] == 0
        text = (out / file).read_text()
        objs = (
            json.loads(text)
            if file.endswith(".json")
            else [json.loads(line) for line in text.splitlines()]
        )
        got = sorted(str(o.get("id")) for o in objs if o.get("id") in ("rec-1", "7"))
        assert got == ["7", "rec-1"], exporter.name
        if exporter.name != "llava":  # llava names a sample without an id by its sample_id
            assert sum("id" not in o for o in objs) == 1
        back = Lake(tmp_path / f"back_{exporter.name}")
        ingest(source(out / file), back, "one", QUIET)
        expected = {r["sample_id"]: r["record_id"] for r in _rows(lake)}
        if exporter.name == "llava":
            expected = {sid: rid or sid for sid, rid in expected.items()}
        assert {r["sample_id"]: r["record_id"] for r in _rows(back)} == expected, exporter.name
