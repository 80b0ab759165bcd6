"""The checks with ``executor=ray`` (heavy passes as Ray Data stages) equal the local
executor: flags, scores, groups and reports; every Ray test runs under an alarm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lake import progress
from lake.check import run_checks
from lake.ray_check import run_checks_ray
from lake.store import Lake
from tests.checks_data import build_lake, build_thumb_lake, conf_check
from tests.conftest import REPO
from tests.ray_support import executor_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_alarm")]

CHECKS = ("caption_mismatch", "label_conflict", "duplicates", "outliers")


def planted(path: Path) -> Lake:
    """The check tests' planted lake plus the thumbnail dataset (duplicates verify pixels)."""
    lake = build_lake(Lake(path))
    return build_thumb_lake(lake)


def without_timing(report: dict[str, Any]) -> dict[str, Any]:
    """A report without what differs between two runs (lake path, seconds)."""
    out = {k: v for k, v in report.items() if k != "lake"}
    out["checks"] = {
        n: {k: v for k, v in s.items() if k != "seconds"} for n, s in report["checks"].items()
    }
    return out


def test_checks_on_ray_equal_local(tmp_path: Path, ray_env: Any) -> None:
    local, on_ray = planted(tmp_path / "local"), planted(tmp_path / "ray")
    r1 = run_checks(local, {n: conf_check(n) for n in CHECKS}, reports=tmp_path / "rep-local")
    checks = {n: conf_check(n) for n in CHECKS}
    r2 = run_checks_ray(
        on_ray,
        checks,
        None,
        tmp_path / "rep-ray",
        None,
        10,
        executor=executor_config(
            "check",
        ),
    )
    assert without_timing(r2) == without_timing(r1)
    assert r2["checks"]["duplicates"]["flagged"] > 0
    a = sorted(local.dataset("samples").to_table().to_pylist(), key=lambda r: r["sample_id"])
    b = sorted(on_ray.dataset("samples").to_table().to_pylist(), key=lambda r: r["sample_id"])
    assert a == b  # flags, check_*_score, check_duplicates_group, clip_score: every column
    dup = json.loads((tmp_path / "rep-ray" / "duplicates.json").read_text())
    assert dup == json.loads((tmp_path / "rep-local" / "duplicates.json").read_text())
    md = [
        (tmp_path / f"rep-{k}" / "checks.md").read_text().splitlines()[3:] for k in ("local", "ray")
    ]
    assert md[0] == md[1]
    # the thumbnail pass ran as a Ray stage and recorded its progress; the check object
    # got its local pass back
    stages = [s for s in progress.stages(on_ray) if s["stage"] == "check:thumbs"]
    assert [(s["status"], s["job"]) for s in stages] == [(progress.COMMITTED, "check")]
    assert stages[0]["rows"] == stages[0]["total"] > 0
    assert "passes" not in checks["duplicates"].__dict__


def test_checks_on_ray_over_an_s3_lake_equal_local(tmp_path: Path, ray_env: Any, s3: Any) -> None:
    local = planted(tmp_path / "local")
    remote = build_thumb_lake(build_lake(Lake(s3.uri("checks"), s3.storage_options)))
    r1 = run_checks(local, {"duplicates": conf_check("duplicates")})
    r2 = run_checks_ray(
        remote,
        {"duplicates": conf_check("duplicates")},
        None,
        None,
        None,
        10,
        executor_config(
            "check",
        ),
    )
    assert without_timing(r2) == without_timing(r1)
    a = sorted(local.dataset("samples").to_table().to_pylist(), key=lambda r: r["sample_id"])
    b = sorted(remote.dataset("samples").to_table().to_pylist(), key=lambda r: r["sample_id"])
    assert a == b


def test_check_job_with_executor_ray_through_the_cli(tmp_path: Path) -> None:
    local, on_ray = planted(tmp_path / "local"), planted(tmp_path / "ray")
    run_checks(local, {"duplicates": conf_check("duplicates")})
    proc = subprocess.run(
        [
            sys.executable, "-m", "lake.cli", "check", f"lake.uri={on_ray.uri}",
            f"lake.reports={tmp_path / 'out'}", "executor=ray", "executor.num_cpus=2",
            *(f"check.checks.{n}=null" for n in CHECKS if n != "duplicates"),
        ],
        capture_output=True, text=True, cwd=REPO, timeout=200,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "duplicates" in proc.stdout
    a = sorted(local.dataset("samples").to_table().to_pylist(), key=lambda r: r["sample_id"])
    b = sorted(
        Lake(on_ray.uri).dataset("samples").to_table().to_pylist(), key=lambda r: r["sample_id"]
    )
    assert a == b
    run = [r for r in Lake(on_ray.uri).runs() if r["job"] == "check"]
    assert run[-1]["status"] == "finished"
    assert any(s["stage"] == "check:thumbs" for s in progress.stages(Lake(on_ray.uri)))
