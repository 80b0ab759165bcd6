"""Killing an ingest at any point and re-running it converges to the clean-run lake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from lake.ingest import IngestSettings, ingest
from lake.store import Lake
from plugins.image_folder import ImageFolderSource
from tests.conftest import REPO, jpeg_bytes

N_IMAGES = 360


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "shapes"
    for i in range(N_IMAGES):
        d = root / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:04d}.jpg").write_bytes(
            jpeg_bytes((i % 256, (7 * i) % 256, (13 * i) % 256), (32, 32))
        )
    return root


def _cmd(src: Path, lake: Path) -> list[str]:
    return [
        sys.executable, "-m", "lake.ingest",
        f"source.path={src}", f"lake.uri={lake}", f"lake.reports={lake.parent / 'reports'}",
        "ingest.workers=0", "ingest.chunk_size=10", "ingest.write_batch=30",
        "ingest.progress=false",
    ]  # fmt: skip


def _versions(lake: Path, table: str) -> int:
    d = lake / f"{table}.lance" / "_versions"
    return len(list(d.iterdir())) if d.exists() else 0


def _kill_when(src: Path, lake: Path, table: str, n_versions: int) -> bool:
    """Start an ingest and SIGKILL it once ``table`` has ``n_versions`` versions."""
    proc = subprocess.Popen(
        _cmd(src, lake), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if _versions(lake, table) >= n_versions:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.wait()
    return False


def _snapshot(lake: Lake) -> dict[str, list[tuple]]:
    out = {}
    for name, key in (("media", "media_id"), ("samples", "sample_id")):
        t = lake.dataset(name).to_table(columns=[key, "source_uri"])
        assert len(pc.unique(t.column(key))) == t.num_rows, f"duplicate keys in {name}"
        out[name] = sorted(
            zip(t.column(key).to_pylist(), t.column("source_uri").to_pylist(), strict=True)
        )
    return out


@pytest.mark.slow
def test_kill_at_several_points_then_rerun_converges(dataset: Path, tmp_path: Path) -> None:
    clean = Lake(tmp_path / "clean")
    ingest(
        ImageFolderSource(dataset),
        clean,
        settings=IngestSettings(workers=0, write_batch=30, progress=False),
    )
    expected = _snapshot(clean)
    assert len(expected["samples"]) == N_IMAGES

    lake_dir = tmp_path / "crashed" / "lake"
    # media commit 2 lands before samples commit 2: this kill falls between the two writes
    assert _kill_when(dataset, lake_dir, "media", 2)
    assert _kill_when(dataset, lake_dir, "samples", 5)
    assert _kill_when(dataset, lake_dir, "media", 7)
    done = subprocess.run(
        _cmd(dataset, lake_dir), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert _snapshot(Lake(lake_dir)) == expected

    again = subprocess.run(
        _cmd(dataset, lake_dir), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert f"0 new samples, {N_IMAGES} already present" in again.stdout
