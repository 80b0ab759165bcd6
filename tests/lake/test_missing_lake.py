"""Jobs pointed at a lake that does not exist fail in one line and create nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lake.job import RunContext, run_record
from lake.store import Lake
from tests.conftest import REPO

# job -> extra arguments it needs to reach the lake
JOBS = {
    "stats": [],
    "check": [],
    "split": [],
    "export": ["out={tmp}/out"],
    "enrich": [],
    "query": ["text=a cat"],
    "versions": [],
    "compact": [],
    "doctor": [],
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_a_job_on_a_missing_lake_leaves_nothing(job: str, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    args = [a.format(tmp=tmp_path) for a in JOBS[job]]
    proc = subprocess.run(
        [sys.executable, "-m", "lake.cli", job, f"lake.uri={missing}", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
    )
    assert not missing.exists(), f"{job} created {sorted(p.name for p in missing.iterdir())}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing else either"
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lakeloom: ") and str(missing) in line


def test_a_handle_creates_nothing_until_a_write(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    assert lake.table_names() == [] and not lake.present() and not lake.exists("samples")
    assert lake.keys("samples") == set() and lake.runs() == []
    ctx = RunContext("check", "r1", "", "")
    with pytest.raises(ValueError, match="boom"), run_record(lake, ctx):
        raise ValueError("boom")
    assert not (tmp_path / "lake").exists()  # no runs table for a run in no lake
    lake.ensure("samples")  # the first write creates the folder
    assert lake.present()
    with pytest.raises(ValueError, match="boom"), run_record(lake, ctx):
        raise ValueError("boom")
    assert [(r["run_id"], r["status"]) for r in lake.runs()] == [("r1", "failed")]
