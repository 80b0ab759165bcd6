"""`lakeloom why ID`: the lineage of a sample or a media on a real small lake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from lake.check import run_checks
from lake.errors import UnknownIdError
from lake.ingest import IngestSettings, ingest
from lake.lineage import INDEXES, Tables, format_lineage, index_name, lineage
from lake.plugin import RESULT_SCHEMA, Check
from lake.store import Lake
from tests.conftest import REPO, jpeg_bytes

QUIET = IngestSettings(workers=0, progress=False)


class DogCheck(Check):
    """Flags the samples labelled ``dog`` (score 1), scores the others 0."""

    name = "dogs"
    version = "9.9.9"

    def run(self, lake: Any, where: str | None = None) -> tuple[pa.Table, dict[str, Any]]:
        """One row per selected sample."""
        rows = lake.dataset("samples").to_table(columns=["sample_id", "label"], filter=where)
        dog = [label == "dog" for label in rows.column("label").to_pylist()]
        table = pa.table(
            {
                "sample_id": rows.column("sample_id"),
                "score": pa.array([1.0 if d else 0.0 for d in dog], pa.float32()),
                "flagged": pa.array(dog),
                "group": pa.nulls(rows.num_rows, pa.string()),
                "detail": pa.nulls(rows.num_rows, pa.string()),
            },
            schema=RESULT_SCHEMA,
        )
        return table, {"flagged": sum(dog)}


@pytest.fixture
def why_lake(tmp_path: Path, class_folder: Path) -> Lake:
    """``pets`` (image folder) and ``conv`` (LLaVA: records on lines 1 and 2 share a.jpg),
    then the dogs check."""
    from plugins.image_folder import ImageFolderSource
    from plugins.llava import LlavaSource

    lake = Lake(tmp_path / "lake")
    ingest(ImageFolderSource(class_folder), lake, "pets", QUIET)
    conv = tmp_path / "conv"
    conv.mkdir()
    (conv / "a.jpg").write_bytes(jpeg_bytes((200, 0, 0)))
    (conv / "c.jpg").write_bytes(jpeg_bytes((0, 200, 0)))
    turns = [{"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "red"}]
    two = [{"from": "human", "value": "<image><image> compare"}, {"from": "gpt", "value": "no"}]
    lines = [
        {"id": "r1", "images": ["a.jpg"], "conversations": turns},
        {"id": "r2", "images": ["a.jpg", "c.jpg"], "conversations": two},
    ]
    (conv / "data.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ingest(LlavaSource(conv / "data.jsonl"), lake, "conv", QUIET)
    run_checks(lake, {"dogs": DogCheck()})
    return lake


def _sample(lake: Lake, where: str) -> dict[str, Any]:
    return lake.dataset("samples").to_table(filter=where).to_pylist()[0]


def test_sample_names_source_line_media_steps_flags_and_runs(why_lake: Lake) -> None:
    row = _sample(why_lake, "record_id = 'r2'")
    info = lineage(Tables(why_lake.uri), row["sample_id"])
    assert info["kind"] == "sample" and info["sample"]["source_uri"] == "data.jsonl#L2"
    assert info["sample"]["provenance"]["plugin"] == "llava"
    assert [m["media_id"] for m in info["media"]] == row["media_ids"]
    assert [m["source_uri"] for m in info["media"]] == ["a.jpg", "c.jpg"]
    steps = [s["name"] for s in info["media"][0]["provenance"]["steps"]]
    assert "decode_verify" in steps and "phash" in steps
    assert any(r["job"] == "ingest" and r["why"] == "wrote the row" for r in info["runs"])
    text = format_lineage(info)
    assert "data.jsonl#L2" in text and "(record id r2)" in text
    assert f"content sha256 {row['media_ids'][1]}" in text
    prov = info["sample"]["provenance"]
    assert f"written by llava {prov['plugin_version']}" in text
    assert "dogs" in text and "not flagged" in text
    json.loads(json.dumps(info, default=str))

    dog = _sample(why_lake, "label = 'dog'")
    checks = lineage(Tables(why_lake.uri), dog["sample_id"])["checks"]
    assert checks == [{"check": "dogs", "score": 1.0, "group": None, "flagged": True}]
    assert "FLAGGED" in format_lineage(lineage(Tables(why_lake.uri), dog["sample_id"]))


def test_media_names_the_samples_using_it(why_lake: Lake) -> None:
    a = _sample(why_lake, "record_id = 'r1'")["media_ids"][0]
    info = lineage(Tables(why_lake.uri), a, verify=True)
    assert info["kind"] == "media" and info["samples_total"] == 2
    users = {s["sample_id"] for s in info["samples"]}
    want = why_lake.dataset("samples").to_table(filter="dataset = 'conv'")
    assert users == set(want.column("sample_id").to_pylist())
    assert info["media"][0]["verified"] is True
    text = format_lineage(info)
    assert "samples using it (2)" in text and "verified" in text
    assert all(s in text for s in users)


def test_ingest_creates_the_key_indexes(why_lake: Lake) -> None:
    for table, column, _ in INDEXES:
        names = {d.name for d in why_lake.dataset(table).describe_indices()}
        assert index_name(column) in names, (table, column)


def test_a_cold_lookup_scans_media_ids_and_answers_the_same(why_lake: Lake) -> None:
    row = _sample(why_lake, "record_id = 'r2'")
    for media_id in row["media_ids"]:
        warm = lineage(Tables(why_lake.uri), media_id, max_samples=1)
        cold = lineage(Tables(why_lake.uri, cold=True), media_id, max_samples=1)
        assert cold == warm and cold["samples_total"] >= 1
    shared = row["media_ids"][0]  # a.jpg: records r1 and r2
    assert lineage(Tables(why_lake.uri, cold=True), shared, max_samples=1)["samples_total"] == 2


def test_unknown_id_is_an_error_naming_it(why_lake: Lake) -> None:
    with pytest.raises(UnknownIdError, match="nope123"):
        lineage(Tables(why_lake.uri), "nope123")


def _why(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lake.cli", "why", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_text_json_and_unknown_id(why_lake: Lake, tmp_path: Path) -> None:
    sid = _sample(why_lake, "record_id = 'r1'")["sample_id"]
    lake = f"lake.uri={why_lake.uri}"
    out = _why(sid, lake, f"runs_dir={tmp_path / 'runs'}")
    assert out.returncode == 0, out.stderr
    assert "data.jsonl#L1" in out.stdout and "written by llava" in out.stdout
    js = _why(f"id={sid}", lake, "format=json")
    assert js.returncode == 0, js.stderr
    assert json.loads(js.stdout)["sample"]["sample_id"] == sid
    bad = _why("0123456789", lake)
    assert bad.returncode == 2 and "'0123456789'" in bad.stderr


def test_lineage_tables_on_s3_forbid_the_metadata_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables opens pylance datasets itself: it must set the guard a Lake would set."""
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    keys = {"aws_access_key_id": "k", "aws_secret_access_key": "s"}
    Tables("s3://bucket/lake", keys, samples=object(), media=object())  # nothing opened
    assert os.environ.get("AWS_EC2_METADATA_DISABLED") == "true"
