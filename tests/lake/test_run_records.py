"""A job's ``runs`` row tells how it ended: ``failed`` with its reason, ``interrupted`` on
SIGTERM, never a ``finished`` row overwritten as ``killed`` by a job starting meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lake import provenance, runs
from lake.ingest import IngestSettings, ingest
from lake.lock import writer_lock
from lake.schema import RUNS
from lake.store import Lake
from plugins.image_folder import ImageFolderSource
from tests.conftest import REPO, slow_ingest_command

QUIET = IngestSettings(workers=0, progress=False)


def _stored(lake: Lake) -> dict[str, dict]:
    return {r["run_id"]: r for r in lake.dataset(RUNS).to_table().to_pylist()}


def test_failed_export_records_failed_with_its_one_line_reason(
    class_folder: Path, tmp_path: Path
) -> None:
    uri = tmp_path / "lake"
    lake = Lake(uri)
    for path in class_folder.rglob("*.*g"):
        path.with_suffix(".txt").write_text(f"a photo of {path.stem}")
    ingest(ImageFolderSource(class_folder, caption_sidecar=True), lake, "pets", QUIET)
    done = subprocess.run(
        [sys.executable, "-m", "lake.cli", "export", f"lake.uri={uri}", "out=/dev/full/pairs",
         f"lake.reports={tmp_path / 'reports'}", "export=clip_pairs_csv"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("lakeloom: /dev/full")
    (row,) = [r for r in _stored(lake).values() if r["job"] == "export"]
    assert row["status"] == "failed" and row["finished_at"] is not None
    assert row["error"] == line.removeprefix("lakeloom: ")
    assert "/dev/full/pairs" in row["inputs"]  # what it was asked to do is kept
    assert [r["status"] for r in lake.runs() if r["job"] == "export"] == ["failed"]


def test_sigterm_during_ingest_records_interrupted(tmp_path: Path) -> None:
    cmd, uri = slow_ingest_command(tmp_path)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while proc.poll() is None and not (uri / "media.lance").exists():
        assert time.monotonic() < deadline, "the ingest never wrote"
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.fail(f"the ingest ended before SIGTERM: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert err.decode().strip().splitlines()[-1] == "lakeloom: terminated (SIGTERM)"
    (row,) = _stored(Lake(uri)).values()
    assert (row["status"], row["error"]) == ("interrupted", "terminated (SIGTERM)")
    assert row["finished_at"] is not None


def test_a_run_finished_while_another_starts_is_not_marked_killed(lake: Lake) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    late = {  # its process recorded `finished`, then exited, just as a new job started
        "run_id": "r-late", "job": "ingest", "status": runs.RUNNING,
        "started_at": provenance.now(), "pid": gone.pid, "host": runs.owner()["host"],
        "pid_start": 1,
    }  # fmt: skip
    lake.record_run(late)
    held, go = threading.Event(), threading.Event()

    def finisher() -> None:
        with writer_lock(lake.uri):
            held.set()
            go.wait(30)
            Lake(lake.uri).record_run({**late, "status": runs.FINISHED})

    def starter() -> None:
        new = {"run_id": "r-new", "job": "check", "status": runs.RUNNING}
        Lake(lake.uri).record_run({**new, "started_at": provenance.now(), **runs.owner()})

    threads = [threading.Thread(target=finisher), threading.Thread(target=starter)]
    threads[0].start()
    assert held.wait(30)
    threads[1].start()
    time.sleep(1.5)  # the starter reads the runs now, unless it waits for the lock first
    go.set()
    for t in threads:
        t.join(60)
    stored = _stored(lake)
    assert stored["r-late"]["status"] == runs.FINISHED
    assert stored["r-new"]["status"] == runs.RUNNING
