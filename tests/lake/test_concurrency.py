"""Concurrent writers never corrupt the lake: keys stay unique, no row is lost.

Writers run in real processes (multiprocessing with ``spawn``; Lance is not fork-safe)
released together by a barrier, so their merge-inserts read and commit at the same time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lake.doctor import doctor, duplicate_keys
from lake.errors import LakeLockError
from lake.ingest import IngestSettings, ingest
from lake.lock import holder, writer_lock
from lake.plugin import Enricher
from lake.split import split_lake
from lake.store import Lake
from plugins.image_folder import ImageFolderSource
from tests.conftest import REPO, png_bytes

SPAWN = mp.get_context("spawn")
# a commit every 5 samples: many chances for two writers to race on the same keys
RACY = IngestSettings(workers=0, write_batch=5, progress=False)


def _image(i: int) -> bytes:
    return png_bytes((i * 7 % 256, 255 - i * 3 % 256, i * 13 % 256), size=(16, 16))


def _folder(root: Path, name: str, indices: range) -> Path:
    """``root/name/{a,b}/imgNN.png``: image i lands in the same relative path everywhere."""
    for i in indices:
        target = root / name / ("a" if i % 2 else "b") / f"img{i:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_image(i))
    return root / name


def _ingest_job(folders: list[str], uri: str, gate: object) -> None:
    lake = Lake(uri)
    for folder in folders:  # one round per folder, all writers released together
        gate.wait(120)  # type: ignore[attr-defined]
        ingest(ImageFolderSource(Path(folder)), lake, dataset="shared", settings=RACY)


def _run_together(target: object, args: list[tuple[object, ...]]) -> None:
    gate = SPAWN.Barrier(len(args))
    procs = [SPAWN.Process(target=target, args=(*a, gate)) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def _keys(lake: Lake, name: str) -> list[str]:
    return lake.dataset(name).to_table(columns=[lake_key(name)]).column(0).to_pylist()


def lake_key(name: str) -> str:
    return {"media": "media_id", "samples": "sample_id", "runs": "run_id"}[name]


def test_three_concurrent_ingests_of_overlapping_folders_keep_keys_unique(
    tmp_path: Path,
) -> None:
    uri = str(tmp_path / "lake")
    jobs: list[list[str]] = [[], [], []]
    for rnd in range(3):
        lo, hi = 40 * rnd, 40 * rnd + 40
        # overlapping: a = first 30, b = last 30, c = all 40 of this round's images
        for job, (name, indices) in zip(
            jobs,
            [("a", range(lo, lo + 30)), ("b", range(lo + 10, hi)), ("c", range(lo, hi))],
            strict=True,
        ):
            job.append(str(_folder(tmp_path / f"round{rnd}", name, indices)))
    _run_together(_ingest_job, [(job, uri) for job in jobs])
    lake = Lake(uri)
    for name in ("media", "samples", "runs"):
        keys = _keys(lake, name)
        assert len(keys) == len(set(keys)), f"duplicate {name} keys"
    assert len(_keys(lake, "samples")) == 120
    stored = lake.dataset("media").to_table(columns=["bytes"]).column(0).to_pylist()
    assert sorted(stored) == sorted(_image(i) for i in range(120))
    assert len(lake.runs()) == 9


class ByteSum(Enricher):
    """A small real enricher: the sum of a media object's bytes."""

    name: ClassVar[str] = "byte_sum"
    table: ClassVar[str] = "media"
    inputs: ClassVar[tuple[str, ...]] = ("bytes",)

    def output_fields(self) -> list[pa.Field]:
        """The sum and its owner."""
        return [pa.field("byte_sum", pa.int64()), pa.field("byte_sum_owner", pa.string())]

    def owner_column(self) -> str:
        """Owner column."""
        return "byte_sum_owner"

    def owner(self) -> str:
        """Name and version."""
        return f"{self.name}@{self.version}"

    def process(self, batch: pa.Table) -> pa.Table:
        """Key + sum + owner, one batch."""
        sums = [sum(b) for b in batch.column("bytes").to_pylist()]
        return pa.table(
            {
                "media_id": batch.column("media_id"),
                "byte_sum": pa.array(sums, pa.int64()),
                "byte_sum_owner": pa.array([self.owner()] * len(sums)),
            }
        )


def _enrich_job(uri: str, gate: object) -> None:
    from lake.enrich import enrich

    lake = Lake(uri)
    gate.wait(120)  # type: ignore[attr-defined]
    for _ in range(3):  # each pass enriches what the concurrent ingest landed so far
        enrich(ByteSum(), lake, batch_size=4, write_batch=4, progress=False)


def test_ingest_and_enrich_at_once_lose_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    lake = Lake(uri)
    first = _folder(tmp_path, "first", range(30))
    ingest(ImageFolderSource(first), lake, dataset="shared", settings=RACY)
    later = _folder(tmp_path, "later", range(20, 100))  # overlaps the first 30
    gate = SPAWN.Barrier(2)
    procs = [
        SPAWN.Process(target=_ingest_job, args=([str(later)], uri, gate)),
        SPAWN.Process(target=_enrich_job, args=(uri, gate)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    rows = lake.dataset("media").to_table(columns=["media_id", "bytes", "byte_sum"]).to_pylist()
    assert len(rows) == len({r["media_id"] for r in rows}) == 100
    done = [r for r in rows if r["byte_sum"] is not None]
    assert done, "the enricher wrote nothing"
    assert all(r["byte_sum"] == sum(r["bytes"]) for r in done)
    assert len(_keys(lake, "samples")) == len(set(_keys(lake, "samples"))) == 100


def _column_writer(uri: str, column: str, value: str, gate: object) -> None:
    lake = Lake(uri)
    gate.wait(120)  # type: ignore[attr-defined]
    ids = sorted(lake.keys("samples"))
    for start in range(0, len(ids), 5):
        part = ids[start : start + 5]
        rows = pa.table({"sample_id": part, column: [f"{value}{i}" for i in range(len(part))]})
        assert lake.update_columns("samples", rows) == len(part)


def test_two_writers_updating_columns_at_once_keep_both(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    lake = Lake(uri)
    ingest(ImageFolderSource(_folder(tmp_path, "d", range(40))), lake, settings=RACY)
    _run_together(_column_writer, [(uri, "split", "s"), (uri, "caption", "c")])
    rows = lake.dataset("samples").to_table(columns=["sample_id", "split", "caption"])
    ids = rows.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == 40
    assert rows.column("split").null_count == 0 and rows.column("caption").null_count == 0
    assert all(s.startswith("s") for s in rows.column("split").to_pylist())
    assert all(c.startswith("c") for c in rows.column("caption").to_pylist())


_HOLD = """
import sys, time
from lake.lock import writer_lock
with writer_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    uri = tmp_path / "lake"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(uri)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(LakeLockError, match=f"pid {proc.pid}"), writer_lock(uri, 0.2):
            pass
        assert holder(uri)["pid"] == proc.pid  # type: ignore[index]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    started = time.monotonic()
    with writer_lock(uri, timeout_s=5):
        assert holder(uri)["pid"] == os.getpid()  # type: ignore[index]
        with writer_lock(uri, timeout_s=0):  # re-entrant in the holding process
            pass
    assert time.monotonic() - started < 5


def test_doctor_repairs_planted_duplicates_and_split_works_again(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    lake = Lake(uri)
    ingest(ImageFolderSource(_folder(tmp_path, "d", range(20))), lake, settings=RACY)
    samples = lake.dataset("samples").to_table()
    enriched = samples.slice(0, 4)
    # plant what an old concurrent ingest left behind: plain appends of existing keys,
    # one of them with a column the original lacks (the more complete copy is kept)
    bare = samples.slice(4, 3)
    plain = lake.table("samples")
    plain.add(bare)
    plain.add(
        enriched.set_column(
            enriched.schema.get_field_index("split"), "split", pa.array(["train"] * 4)
        )
    )
    media = lake.dataset("media")
    plain_columns = [f.name for f in media.schema if f.name != "blob"]
    lake.table("media").add(media.to_table(columns=plain_columns).slice(0, 2))
    with pytest.raises(Exception, match=r"[Aa]mbiguous"):
        split_lake(lake, {"train": 0.8, "val": 0.2})
    found = doctor(lake, dry_run=True)
    assert (found["samples"]["duplicate_keys"], found["samples"]["extra_rows"]) == (7, 7)
    assert found["media"]["duplicate_keys"] == 2 and found["samples"]["deleted"] == 0
    assert lake.count("samples") == 27  # dry run changed nothing
    fixed = doctor(lake)
    assert fixed["samples"]["deleted"] == 7 and fixed["media"]["deleted"] == 2
    assert duplicate_keys(lake, "samples") == {} and duplicate_keys(lake, "media") == {}
    after = lake.dataset("samples").to_table()
    assert sorted(after.column("sample_id").to_pylist()) == sorted(
        samples.column("sample_id").to_pylist()
    )
    kept = after.filter(pc.is_in(after.column("sample_id"), enriched.column("sample_id")))
    assert kept.column("split").to_pylist() == ["train"] * 4
    rep = split_lake(lake, {"train": 0.8, "val": 0.2})
    assert rep["totals"]["train"] + rep["totals"]["val"] == 20


def test_doctor_cli_dry_run_exits_nonzero_on_duplicates(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    lake = Lake(uri)
    ingest(ImageFolderSource(_folder(tmp_path, "d", range(6))), lake, settings=RACY)
    lake.table("samples").add(lake.dataset("samples").to_table().slice(0, 2))
    args = [sys.executable, "-m", "lake.cli", "doctor", f"lake.uri={uri}"]
    args.append(f"lake.reports={tmp_path / 'reports'}")
    dry = subprocess.run([*args, "doctor.dry_run=true"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 1, dry.stderr
    assert "samples: 2 sample_id values held by several rows" in dry.stdout
    fix = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert fix.returncode == 0, fix.stderr
    again = subprocess.run([*args, "doctor.dry_run=true"], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and "every sample_id unique" in again.stdout
