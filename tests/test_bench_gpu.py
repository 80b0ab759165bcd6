"""``bench/gpu.py --tiny``: every part runs on CPU (or says why not) and the budget holds."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"vlm", "clip", "enrich", "whisper", "apotheon"}
EXPLAINED = ("skipped: needs CUDA", "skipped: family not available", "skipped: tiny runs")


def _run(tmp_path: Path, *args: str, timeout: float = 600) -> dict:
    env = dict(os.environ, TMPDIR=str(tmp_path), HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_tiny_every_part_ok_or_explained(tmp_path: Path) -> None:
    """Every part has a row; each row is ok (with a figure, a baseline and a ratio) or a
    skip that says why."""
    out = _run(tmp_path)
    assert out["mode"] == "tiny" and out["device"] == "cpu"
    assert {r["part"] for r in out["rows"]} == PARTS
    for r in out["rows"]:
        assert r["status"] == "ok" or r["status"].startswith(EXPLAINED), r
        if r["status"] == "ok":
            assert r["figure"] and r["baseline"] and r["ratio"] > 0, r
    ok = {r["part"] for r in out["rows"] if r["status"] == "ok"}
    assert ok == PARTS  # at least one configuration of every part ran
    fsdp = [r for r in out["rows"] if "fsdp" in r["config"] and r["status"] == "ok"]
    assert fsdp, "FSDP (gloo over loopback) ran in tiny mode"
    assert not list(tmp_path.glob("bench_gpu_*")), "the temporary lake is removed"


def test_budget_kills_a_part_and_reports_timeout(tmp_path: Path) -> None:
    """A budget too short for anything: the vlm part reports timeout, promptly."""
    t0 = time.perf_counter()
    out = _run(tmp_path, "--budget-s", "1", "--only", "vlm", timeout=120)
    assert time.perf_counter() - t0 < 60
    statuses = {r["status"] for r in out["rows"]}
    assert "timeout" in statuses, out["rows"]
    assert statuses <= {"timeout", *(s for s in statuses if s.startswith(EXPLAINED))}
