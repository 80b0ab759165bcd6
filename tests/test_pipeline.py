"""The DVC pipeline (dvc.yaml) on a small configuration: repro, no-op, params, checkout.

A copy of the project (dvc.yaml, conf/ and the code its stages depend on) goes to a
temporary git + DVC repository with a 60-image demo and one-epoch training; the stages
read that copy's conf/ through ``LAKELOOM_CONFIG_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lake.store import Lake
from tests.conftest import REPO

STAGES = ["demo-data", "ingest", "embedder", "enrich", "check", "split", "export", "train"]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


def _split_state(root: Path) -> str:
    rows = Lake(root / "data" / "lake").dataset("samples").to_table(columns=["sample_id", "split"])
    pairs = sorted(zip(*rows.to_pydict().values(), strict=True))
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def _small_copy(root: Path) -> None:
    for name in ("dvc.yaml", "conf", "lake", "plugins", "core"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    shapes = root / "conf" / "demo" / "shapes.yaml"
    shapes.write_text(re.sub(r"(?m)^n: \d+", "n: 60", shapes.read_text()))
    experiment = root / "conf" / "experiment" / "clip_tiny.yaml"
    experiment.write_text(re.sub(r"max_epochs: \d+", "max_epochs: 1", experiment.read_text()))
    (root / ".gitignore").write_text("__pycache__/\n/data/\n")


@pytest.mark.slow
def test_dvc_repro_reruns_exactly_what_changed(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    _small_copy(root)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "LAKELOOM_CONFIG_DIR": str(root / "conf"),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    dvc = str(Path(bin_dir) / "dvc")
    _run(["git", "init", "-q"], root, env)
    _run([dvc, "init", "-q"], root, env)
    _run([dvc, "config", "core.analytics", "false"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "project"], root, env)

    first = _run([dvc, "repro"], root, env)
    assert _ran(first) == STAGES
    second = _run([dvc, "repro"], root, env)
    assert _ran(second) == [] and "up to date" in second
    split = json.loads((root / "data" / "reports" / "split.json").read_text())
    assert split["seed"] == 0 and split["totals"]["train"] > 0
    assert (root / "data" / "exports" / "llava_train" / "llava.json").is_file()
    assert json.loads((root / "data/pipeline/runs/clip/summary.json").read_text())["status"] == (
        "finished"
    )
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "pipeline run A"], root, env)
    commit_a = _run(["git", "rev-parse", "HEAD"], root, env).strip()
    state_a = _split_state(root)

    # a Hydra override of one parameter reruns exactly the stages downstream of it
    exp = _run([dvc, "exp", "run", "-S", "conf/split.yaml:split.seed=5"], root, env)
    assert _ran(exp) == ["split", "export", "train"]
    assert json.loads((root / "data" / "reports" / "split.json").read_text())["seed"] == 5
    assert _split_state(root) != state_a
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "pipeline run B"], root, env)

    # checking out the earlier commit restores its lake, and the tool reads it
    _run(["git", "checkout", "-q", commit_a], root, env)
    _run([dvc, "checkout"], root, env)
    assert _split_state(root) == state_a
    assert _ran(_run([dvc, "repro"], root, env)) == []
