"""Clear failures, no debris: ``where`` only narrows a job's scope, file problems end in
one line naming the file, killed runs read ``killed``, killed exports leave no temp folder."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lake.check import scope
from lake.errors import ConfigError, FileProblem
from lake.export import export
from lake.ingest import IngestSettings, ingest
from lake.query import _sample_filter
from lake.schema import RUNS, SAMPLES
from lake.sql import and_filters, check_clause
from lake.store import Lake
from plugins.exporters import ClipPairsCsvExporter
from plugins.image_folder import ImageFolderSource
from tests.conftest import REPO, jpeg_bytes, slow_ingest_command

QUIET = IngestSettings(workers=0, progress=False)
ESCAPE = "1=0) OR (1=1"  # closes the scope's parenthesis, ORs everything back in
ALL_TRUE = "(1=0) OR (1=1)"  # balanced, true for every row: must still only narrow


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def two_datasets(class_folder: Path, lake: Lake) -> Lake:
    """``pets`` (8 samples, 3 of them ``train``, the rest ``val``) and ``more`` (4, no split)."""
    for path in class_folder.rglob("*.*g"):
        path.with_suffix(".txt").write_text(f"a photo of {path.stem}")
    ingest(ImageFolderSource(class_folder, caption_sidecar=True), lake, "pets", QUIET)
    other = class_folder.parent / "more" / "bird"
    other.mkdir(parents=True)
    for i in range(4):
        (other / f"b{i}.jpg").write_bytes(jpeg_bytes((20, 20 + 50 * i, 90)))
        (other / f"b{i}.txt").write_text(f"bird {i}")
    ingest(ImageFolderSource(other.parent, caption_sidecar=True), lake, "more", QUIET)
    ids = sorted(lake.dataset(SAMPLES).to_table(filter="dataset = 'pets'")["sample_id"].to_pylist())
    import pyarrow as pa

    splits = ["train" if i < 3 else "val" for i in range(len(ids))]
    lake.update_columns(SAMPLES, pa.table({"sample_id": ids, "split": splits}))
    return lake


# -- where only narrows ------------------------------------------------------------------


def test_sql_helper_parenthesises_and_refuses_unbalanced_filters() -> None:
    assert and_filters("split = 'train'", None, "", ALL_TRUE) == (
        "(split = 'train') AND ((1=0) OR (1=1))"
    )
    assert and_filters(None, " ") is None
    assert check_clause("caption = 'a) OR (b' AND (x > 1)").startswith("caption")  # in a literal
    for bad, why in [
        (ESCAPE, "unbalanced parentheses"),
        ("(label = 'cat'", "not closed"),
        ("label = 'cat", "unterminated"),
        ("1=0 /* ( */ ) OR (1=1 /* ) */", "comments"),
        ("1=1 -- )", "comments"),
    ]:
        with pytest.raises(ConfigError, match=why):
            and_filters("split = 'train'", bad)


def test_export_where_cannot_escape_the_split(two_datasets: Lake, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unbalanced parentheses"):
        export(two_datasets, ClipPairsCsvExporter(), tmp_path / "a", split="train", where=ESCAPE)
    assert not (tmp_path / "a").exists()
    report = export(
        two_datasets, ClipPairsCsvExporter(), tmp_path / "b", split="train", where=ALL_TRUE
    )
    assert report["selected"] == 3 == report["samples"]  # not the lake's 12


def test_check_and_query_scopes_hold(two_datasets: Lake) -> None:
    for build in (scope, _sample_filter):
        with pytest.raises(ConfigError, match="unbalanced"):
            build(ESCAPE, "more")
        assert two_datasets.count(SAMPLES, build(ALL_TRUE, "more")) == 4  # of 12


def test_split_job_where_cannot_escape_the_dataset(two_datasets: Lake) -> None:
    done = _run("lake.split", f"lake.uri={two_datasets.uri}", "dataset=more", f"where='{ESCAPE}'")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unbalanced parentheses" in lines[0], done.stderr
    splits = two_datasets.value_counts(SAMPLES, "split")
    assert splits == {"train": 3, "val": 5, "None": 4}  # nothing was split


# -- one line naming the file -------------------------------------------------------------


def test_corrupt_manifest_is_one_line_naming_the_file(two_datasets: Lake) -> None:
    versions = Path(two_datasets.uri) / "samples.lance" / "_versions"
    manifest = max(versions.glob("*.manifest"), key=lambda p: p.stat().st_mtime_ns)
    manifest.write_bytes(b"not a manifest")
    done = _run("lake.stats", f"lake.uri={two_datasets.uri}")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"lakeloom: {manifest}: table samples cannot be read: "), line
    assert "Traceback" not in done.stderr and ".rs:" not in line  # no Rust source location
    debug = _run("lake.stats", f"lake.uri={two_datasets.uri}", env={"LAKELOOM_DEBUG": "1"})
    assert "Traceback" in debug.stderr and debug.stderr.strip().endswith(line)


def test_disk_full_output_file_is_one_line(two_datasets: Lake) -> None:
    done = _run("lake.stats", f"lake.uri={two_datasets.uri}", "out=/dev/full")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["lakeloom: /dev/full: No space left on device"], (
        done.stderr
    )


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_export_onto_a_full_disk_names_the_out_folder_and_cleans_up(
    full_disk: Path, tmp_path: Path, lake: Lake
) -> None:
    root = tmp_path / "noise" / "x"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):  # ~1.2 MB of incompressible PNG each
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (640, 640, 3), np.uint8)).save(buf, "PNG")
        (root / f"n{i}.png").write_bytes(buf.getvalue())
        (root / f"n{i}.txt").write_text(f"noise {i}")
    ingest(ImageFolderSource(root.parent, caption_sidecar=True), lake, "noise", QUIET)
    out = full_disk / "pairs"
    with pytest.raises(FileProblem, match=r"pairs: No space left on device") as info:
        export(lake, ClipPairsCsvExporter(), out)
    assert info.value.path == str(out)
    assert list(full_disk.iterdir()) == []  # its temp folder went with it


# -- killed runs --------------------------------------------------------------------------


def _kill_when(cmd: list[str], ready: callable, timeout: float = 90) -> None:  # type: ignore[valid-type]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.005)
    proc.kill()
    _, err = proc.communicate()
    pytest.fail(f"the process ended before it could be killed: {err.decode()[-2000:]}")


def test_killed_ingest_reads_killed(tmp_path: Path) -> None:
    cmd, uri = slow_ingest_command(tmp_path)
    # a committed version, not just the folder (killed before its first manifest, the
    # table is listed but cannot be opened)
    _kill_when(cmd, lambda: any((uri / "media.lance" / "_versions").glob("*.manifest")))
    lake = Lake(uri)
    (stored,) = lake.dataset(RUNS).to_table().to_pylist()
    assert stored["status"] == "running" and stored["pid"]  # what the killed job left
    assert [r["status"] for r in lake.runs()] == ["killed"]
    listing = _run("lake.versions", f"lake.uri={uri}")
    assert listing.returncode == 0, listing.stderr
    (line,) = [
        ln for ln in listing.stdout.splitlines() if stored["run_id"] in ln and "ingest" in ln
    ]
    assert "killed" in line.split()
    # the next job that writes records it
    ingest(ImageFolderSource(tmp_path / "many"), lake, "many", QUIET)
    rows = {r["run_id"]: r["status"] for r in lake.dataset(RUNS).to_table().to_pylist()}
    assert rows.pop(stored["run_id"]) == "killed" and list(rows.values()) == ["finished"]


def test_a_live_running_row_stays_running(lake: Lake) -> None:
    from lake import provenance, runs

    for run_id in ("r-live", "r-other"):
        row = {"run_id": run_id, "job": "x", "status": "running", **runs.owner()}
        lake.record_run({**row, "started_at": provenance.now()})
    assert {r["status"] for r in lake.runs()} == {"running"}
    reused = {**runs.owner(), "pid_start": (runs.owner()["pid_start"] or 0) + 1}
    assert runs.is_dead(reused)  # same pid, other start time: the pid was reused
    assert not runs.is_dead({**reused, "host": "elsewhere"})  # cannot tell: keep the word


SLOW_EXPORT = textwrap.dedent(
    """
    import sys, time
    from lake.export import export
    from lake.store import Lake
    from plugins.exporters import ClipPairsCsvExporter

    class Slow(ClipPairsCsvExporter):
        def write(self, rows, media):
            super().write(rows, media)
            time.sleep(120)

    export(Lake(sys.argv[1]), Slow(), sys.argv[2])
    """
)


def test_killed_export_temp_folder_is_removed_by_the_next(
    two_datasets: Lake, tmp_path: Path
) -> None:
    out = tmp_path / "exp"
    temps = lambda: list(tmp_path.glob(".exp.tmp-*"))  # noqa: E731
    cmd = [sys.executable, "-c", SLOW_EXPORT, two_datasets.uri, str(out)]
    _kill_when(cmd, lambda: any((t / "pairs.csv").exists() for t in temps()))
    (left,) = temps()
    assert not out.exists()
    report = export(two_datasets, ClipPairsCsvExporter(), out)
    assert report["samples"] == 12 and (out / "pairs.csv").is_file()
    assert temps() == [] and not left.exists()
