"""``lakeloom jobs``: the runs table with the progress of distributed jobs, per stage and node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from lake import runs
from lake.jobs_cmd import format_job, format_jobs, job_detail, list_jobs
from lake.schema import PROGRESS, PROGRESS_SCHEMA
from lake.store import Lake
from tests.conftest import REPO

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
NOW = T1 + timedelta(minutes=10)
NODE_A = "a" * 56  # Ray node ids are 56 hex characters
NODE_B = "b" * 56


def _at(base: datetime, s: float) -> datetime:
    return base + timedelta(seconds=s)


def _dead_owner() -> dict:
    """The owner (pid, host, start) of a process that has exited."""
    proc = subprocess.Popen(["sleep", "30"])
    owner = runs.owner(proc.pid)
    proc.kill()
    proc.wait()
    return owner


def _run(run_id: str, job: str, status: str, started: datetime, finished: datetime | None,
         owner: dict) -> dict:  # fmt: skip
    return {"run_id": run_id, "job": job, "status": status, "started_at": started,
            "finished_at": finished, **owner}  # fmt: skip


def _unit(run_id: str, stage: str, unit: str, status: str, rows: int, node: str,
          attempts: int, seconds: float, ended: datetime, error: str | None = None
          ) -> dict:  # fmt: skip
    return {"progress_id": f"{stage}/{unit}", "backfill": stage, "run_id": run_id, "job": "enrich",
            "stage": stage, "unit": unit, "status": status, "rows": rows, "total": None,
            "node": node, "attempts": attempts, "seconds": seconds, "error": error,
            "updated_at": ended}  # fmt: skip


def _stage(run_id: str, stage: str, status: str, rows: int, total: int, at: datetime) -> dict:
    return {"progress_id": f"{stage}/", "backfill": stage, "run_id": run_id, "job": "enrich",
            "stage": stage, "unit": "", "status": status, "rows": rows, "total": total,
            "node": None, "attempts": None, "seconds": None, "error": None,
            "updated_at": at}  # fmt: skip


def build_jobs_lake(lake: Lake) -> None:
    """Three jobs: a finished 2-node enrich with a retry and a failed fragment, an enrich
    left ``running`` by a process that was killed, a finished ingest without progress."""
    live = runs.owner()
    lake.record_run(_run("ingest-old", "ingest", runs.FINISHED, _at(T0, -600), _at(T0, -500), live))
    lake.record_run(_run("enrich-done", "enrich", runs.FINISHED, T0, _at(T0, 100), live))
    lake.record_run(_run("enrich-killed", "enrich", runs.RUNNING, T1, None, _dead_owner()))
    stage, killed_stage = "enrich:phash", "enrich:clip_image"
    rows = [
        _stage("enrich-done", stage, "committed", 600, 800, _at(T0, 41)),
        _unit("enrich-done", stage, "fragment:0", "committed", 200, NODE_A, 1, 10.0, _at(T0, 20)),
        _unit("enrich-done", stage, "fragment:1", "committed", 250, NODE_B, 2, 20.0, _at(T0, 30)),
        _unit("enrich-done", stage, "fragment:2", "committed", 150, NODE_A, 1, 10.0, _at(T0, 40)),
        _unit(
            "enrich-done",
            stage,
            "fragment:3",
            "failed",
            0,
            NODE_B,
            3,
            5.0,
            _at(T0, 35),
            "decode error in row 7",
        ),
        _stage("enrich-killed", killed_stage, "running", 100, 1000, _at(T1, 3)),
        _unit("enrich-killed", killed_stage, "fragment:0", "done", 100, NODE_A, 1, 5.0, _at(T1, 8)),
    ]
    lake.upsert(PROGRESS, pa.Table.from_pylist(rows, schema=PROGRESS_SCHEMA))


@pytest.fixture
def jobs_lake(tmp_path: Path) -> Lake:
    lake = Lake(tmp_path / "lake")
    build_jobs_lake(lake)
    return lake


def test_figures_per_job_stage_and_node(lake_uri: tuple[str, dict[str, str]]) -> None:
    uri, options = lake_uri
    lake = Lake(uri, storage_options=options)
    build_jobs_lake(lake)
    jobs = list_jobs(lake, now=NOW)
    assert [j.run_id for j in jobs] == ["enrich-killed", "enrich-done", "ingest-old"]
    killed, done, old = jobs
    # a `running` row whose process is gone is killed; its time ends at its last progress
    assert killed.status == runs.KILLED and killed.duration_s == 8.0
    assert (killed.rows, killed.total, killed.failures, killed.retries) == (100, 1000, 0, 0)
    assert [s.status for s in killed.stages] == [runs.KILLED]
    assert (done.rows, done.total, done.failures, done.retries) == (600, 800, 1, 3)
    assert done.duration_s == 100.0 and done.rate == pytest.approx(6.0)  # 600 rows / 100 s
    (stage,) = done.stages
    assert (stage.units_done, stage.units) == (3, 4)
    # wall time: first unit start (t=10: fragment 0 and 2 ended at 20 and 40 after 10 s)
    # to last end (t=40) = 30 s; each node's rows over it, so the rates add up
    assert stage.rate == pytest.approx(600 / 30)
    a, b = stage.nodes
    assert (a.node, a.rows, a.units, a.failures, a.retries) == (NODE_A, 350, 2, 0, 0)
    assert (b.node, b.rows, b.units, b.failures, b.retries) == (NODE_B, 250, 1, 1, 3)
    assert a.rate == pytest.approx(350 / 30) and b.rate == pytest.approx(250 / 30)
    assert a.seconds == 20.0 and b.seconds == 25.0
    assert stage.errors == ["fragment:3: decode error in row 7"]
    assert old.rows is None and old.stages == [] and old.duration_s == 100.0
    assert job_detail(lake, "enrich-done", now=NOW).stages[0].nodes == stage.nodes


def test_text_tables(jobs_lake: Lake) -> None:
    listing = format_jobs(list_jobs(jobs_lake, now=NOW)).splitlines()
    assert listing[0].split() == [
        "run_id", "job", "status", "started", "(UTC)", "time", "rows", "rows/s", "fail", "retry"
    ]  # fmt: skip
    assert listing[1].split() == [
        "enrich-killed", "enrich", "killed", "2025-03-01", "13:00:00", "8s", "100/1,000",
        "12.5", "0", "0",
    ]  # fmt: skip
    assert listing[2].split()[-6:] == ["1m", "40s", "600/800", "6", "1", "3"]
    assert listing[3].split()[:3] == ["ingest-old", "ingest", "finished"]
    assert len(listing[3].split()) == 7  # no progress: no rows, rate, failures, retries
    detail = format_job(job_detail(jobs_lake, "enrich-done", now=NOW)).splitlines()
    stage = next(line for line in detail if line.strip().startswith("enrich:phash"))
    assert stage.split() == ["enrich:phash", "committed", "600/800", "20", "3/4", "1", "3"]
    a, b = NODE_A[:12] + "…", NODE_B[:12] + "…"  # long Ray node ids are shortened
    nodes = [line.split() for line in detail if line.strip().startswith((a, b))]
    assert nodes == [[a, "350", "11.7", "2", "0", "0"], [b, "250", "8.33", "1", "1", "3"]]
    assert any("fragment:3: decode error in row 7" in line for line in detail)


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lake.cli", "jobs", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_cli_lists_jobs_and_one_job_as_json(jobs_lake: Lake) -> None:
    listing = _cli(f"lake.uri={jobs_lake.uri}")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert [line.split()[:3] for line in lines[1:]] == [
        ["enrich-killed", "enrich", "killed"],
        ["enrich-done", "enrich", "finished"],
        ["ingest-old", "ingest", "finished"],
    ]
    one = _cli(f"lake.uri={jobs_lake.uri}", "run=enrich-done", "format=json")
    assert one.returncode == 0, one.stderr
    job = json.loads(one.stdout)
    assert (job["status"], job["rows"], job["total"], job["failures"], job["retries"]) == (
        "finished", 600, 800, 1, 3
    )  # fmt: skip
    assert job["started_at"] == T0.isoformat()
    (stage,) = job["stages"]
    assert {n["node"]: n["rows"] for n in stage["nodes"]} == {NODE_A: 350, NODE_B: 250}


def test_cli_errors_name_the_problem(jobs_lake: Lake, tmp_path: Path) -> None:
    unknown = _cli(f"lake.uri={jobs_lake.uri}", "run=nope")
    assert unknown.returncode == 2 and "run=nope: no such job" in unknown.stderr
    bad = _cli(f"lake.uri={jobs_lake.uri}", "format=xml")
    assert bad.returncode == 2 and "format must be one of text, json" in bad.stderr
    missing = tmp_path / "nowhere"
    gone = _cli(f"lake.uri={missing}", cwd=tmp_path)
    assert gone.returncode == 1 and f"no lake at {missing}" in gone.stderr
    assert not missing.exists()


def test_cli_on_an_s3_lake_with_keys_from_the_environment(s3) -> None:
    uri = s3.uri("lake")
    build_jobs_lake(Lake(uri, storage_options=s3.storage_options))
    opts = s3.storage_options
    env = {
        "AWS_ENDPOINT_URL": opts["endpoint"],
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": opts["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": opts["aws_secret_access_key"],
        "AWS_REGION": opts["region"],
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    done = subprocess.run(
        [sys.executable, "-m", "lake.cli", "jobs", f"lake.uri={uri}", "run=enrich-killed"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "status  killed" in done.stdout
    stage = next(line for line in done.stdout.splitlines() if "enrich:clip_image" in line)
    assert stage.split() == ["enrich:clip_image", "killed", "100/1,000", "20", "1/1", "0", "0"]
    assert opts["aws_secret_access_key"] not in done.stdout + done.stderr
