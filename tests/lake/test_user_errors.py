"""Errors a user can act on: one line naming the problem, never a traceback, and rejects
summarised by what went wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lake.check import run_checks
from lake.errors import ConfigError
from lake.export import export
from lake.ingest import IngestSettings, _reason_kind, ingest
from lake.query import search
from lake.store import Lake
from plugins.exporters import LlavaExporter
from plugins.llava import LlavaSource
from plugins.messages import MessagesSource
from tests.conftest import REPO

QUIET = IngestSettings(workers=0, progress=False)
BAD_SQL = "dataset = = 1"


def _job(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("LAKELOOM_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _chat(root: Path, records: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def chat_lake(tmp_path: Path, lake: Lake) -> Lake:
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    ingest(MessagesSource(_chat(tmp_path / "chat", [{"messages": conv}])), lake, "chat", QUIET)
    return lake


def test_missing_source_path_is_one_line(tmp_path: Path) -> None:
    done = _job("lake.ingest", "source=llava", f"lake.uri={tmp_path / 'lake'}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "lakeloom: invalid configuration: source.path is required: add source.path=... to "
        "the command"
    ]
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "lake").exists()


def test_bad_sql_in_check_query_split_export_names_the_filter_and_reason(
    chat_lake: Lake, tmp_path: Path
) -> None:
    from lake.split import split_lake

    calls = {
        "check": lambda: run_checks(chat_lake, {}, BAD_SQL),
        "query": lambda: search(chat_lake, np.zeros(4, np.float32), where=BAD_SQL),
        "split": lambda: split_lake(chat_lake, {"train": 1.0}, where=BAD_SQL),
        "export": lambda: export(chat_lake, LlavaExporter(), tmp_path / "out", where=BAD_SQL),
    }
    for name, call in calls.items():
        with pytest.raises(ConfigError) as err:
            call()
        text = str(err.value)
        assert BAD_SQL in text and "Expected: an expression, found: =" in text, name
        assert ".rs:" not in text and "SELECT" not in text and "\n" not in text, name


def test_one_pretty_printed_object_is_one_reject(tmp_path: Path, lake: Lake) -> None:
    root = tmp_path / "pretty"
    root.mkdir()
    record = {"id": "1", "conversations": [{"from": "human", "value": "hi"}]}
    (root / "data.json").write_text(json.dumps(record, indent=2))
    report = ingest(LlavaSource(root / "data.json"), lake, "pretty", QUIET)
    assert (report.records, report.rejected) == (1, 1)
    (reason,) = report.reasons
    assert reason.startswith("expected an array of records or JSON lines")
    # one record per line still reads, even when the first line is long
    (root / "data.json").write_text(json.dumps({**record, "pad": "x" * 5000}) + "\n")
    assert ingest(LlavaSource(root / "data.json"), lake, "pretty", QUIET).new_samples == 1


def test_openai_developer_role_is_a_system_message(tmp_path: Path, lake: Lake) -> None:
    conv = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]
    report = ingest(MessagesSource(_chat(tmp_path, [{"messages": conv}])), lake, "dev", QUIET)
    assert report.rejected == 0
    (row,) = lake.dataset("samples").to_table().to_pylist()
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]


def test_rejects_summary_groups_by_reason_not_position(tmp_path: Path, lake: Lake) -> None:
    records = [
        {"messages": [{"role": "user", "content": [{"type": "nope"}]}]},
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "nope"}]},
            ]
        },
        {"messages": [{"role": "user"}]},
    ]
    report = ingest(MessagesSource(_chat(tmp_path, records)), lake, "bad", QUIET)
    assert report.rejected == 3
    assert not any(r.startswith(("message ", "turn ")) for r in report.reasons), report.reasons
    assert sorted(report.reasons.values()) == [1, 2]
    assert _reason_kind("message 0 part 0 must be an object, got string") == (
        "must be an object, got string"
    )
    assert _reason_kind("image a b.jpg: cannot decode: truncated") == "cannot decode"
