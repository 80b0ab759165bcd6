"""Ingest on Ray (``lakeloom ingest executor=ray``).

The runner of :mod:`lake.ingest` runs unchanged on the driver: the source parses its
input there (every built-in source reads its records in one pass: cheap next to the
media work), records are read, hashed, deduplicated, checked and turned into sample rows
in source order, and rejects go to the same report with the same messages. What costs —
decoding, verifying, measuring, phashing and thumbnailing each new image — runs in Ray
tasks, which also build the media rows (the runner's own ``_media_row``) and write them
as Lance fragments into a staging dataset in the lake's ``_staging`` folder. The driver
stages its own rows (samples, media its source analysed) the same way and, at the end, commits once:
one merge-insert of the staged media (those an accepted sample uses) and one of the
staged samples, media first. Keys are content hashes and the merge inserts only missing
keys, so a re-run adds nothing and a run killed at any point converges when re-run
(before the commit nothing reached the lake; between the two merges the samples are
missing and the re-run adds them). Progress goes to the ``progress`` table
(:mod:`lake.progress`): a stage row ``ingest:media`` (records done of the source's count)
and one unit row per chunk (``shard:<n>``, its new images, the Ray node that did it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lake import progress
from lake.images import ImageInfo, ImageSettings
from lake.ingest import (
    IngestReport,
    IngestSettings,
    _Feeder,
    _ingest,
    _media_row,
    _process_chunk_inline,
    _Writer,
    image_provenance,
)
from lake.job import RunContext
from lake.lock import local_path
from lake.plugin import Source
from lake.ray_enrich import STAGING, settings_for
from lake.ray_runtime import ray_session
from lake.records import MediaRef
from lake.runs import FINAL, effective_status
from lake.schema import MEDIA, MEDIA_SCHEMA, SAMPLES, SAMPLES_SCHEMA
from lake.store import Lake, is_blob

JOB = "ingest"
RUN_PREFIX = "ingest-"  # run ids of ingest jobs: their staging folders


def _plain(schema: pa.Schema) -> pa.Schema:
    """``schema`` without blob encoding: staged videos read back as bytes, not descriptors."""
    return pa.schema([pa.field(f.name, f.type, f.nullable) if is_blob(f) else f for f in schema])


STAGED_MEDIA = _plain(MEDIA_SCHEMA)
STAGED_SAMPLES = _plain(SAMPLES_SCHEMA)


def staging_root(lake: Lake) -> str:
    """The lake's staging folder (shared with the Ray enrich runner; no table lives there)."""
    return f"{lake.uri.rstrip('/')}/{STAGING}"


def _write_fragments(
    table: pa.Table, uri: str, storage_options: dict[str, str] | None
) -> list[str]:
    """Write ``table`` as uncommitted fragments of ``uri``; their metadata as JSON."""
    from lance.fragment import write_fragments

    if table.num_rows == 0:
        return []
    frags = write_fragments(table, uri, schema=table.schema, storage_options=storage_options)
    return [json.dumps(f.to_json()) for f in frags]


def stage_images(
    task: tuple[int, list[tuple[str, bytes]]],
    refs: dict[str, MediaRef],
    image: ImageSettings,
    media_prov: dict[str, Any],
    uri: str,
    storage_options: dict[str, str] | None,
) -> tuple[int, list[tuple[str, Any]], list[str], str]:
    """Ray task: process one chunk's new images as the local workers do, write their media
    rows as staging fragments; return the results (without thumbnails), the fragments and
    the Ray node id."""
    idx, results = _process_chunk_inline(task, image)
    data = dict(task[1])
    rows = _Writer(None, 0)  # type: ignore[arg-type]  # a row buffer only: never flushed
    prov = rows.prov(media_prov)
    light: list[tuple[str, Any]] = []
    for mid, res in results:
        if isinstance(res, ImageInfo):
            rows.add_media([_media_row(mid, data[mid], refs[mid], res, prov)])
            res = dataclasses.replace(res, thumb=None)  # the driver needs the verdict only
        light.append((mid, res))
    frags = _write_fragments(rows.table(rows.media, STAGED_MEDIA), uri, storage_options)
    import ray

    return idx, light, frags, ray.get_runtime_context().get_node_id()


class StagingWriter(_Writer):
    """The ingest writer for Ray: rows go to staging fragments, the lake gets one commit.

    Image media rows were staged by the Ray tasks; the driver's copy of such a row only
    marks it used (a decoded image whose records were all rejected is staged but never
    committed, as the local writer never writes it).
    """

    def __init__(self, lake: Lake, write_batch: int, staging: str) -> None:
        super().__init__(lake, write_batch)
        self.staging = staging
        self.media_uri = f"{staging}/{MEDIA}.lance"
        self.samples_uri = f"{staging}/{SAMPLES}.lance"
        self.fragments: dict[str, list[str]] = {self.media_uri: [], self.samples_uri: []}
        self.worker_media: set[str] = set()  # media ids the Ray tasks staged
        self.keep: set[str] = set()  # staged media ids an accepted sample uses
        self.schemas = {MEDIA: STAGED_MEDIA, SAMPLES: STAGED_SAMPLES}

    def add(self, media_rows: list[dict[str, Any]], sample_row: dict[str, Any]) -> None:
        """Buffer a sample and the media rows the Ray tasks did not stage already."""
        self.keep.update(r["media_id"] for r in media_rows)
        own = [r for r in media_rows if r["media_id"] not in self.worker_media]
        super().add(own, sample_row)

    def flush(self) -> None:
        """Write the buffered rows as staging fragments (nothing reaches the lake)."""
        so = self.lake.storage_options or None
        media = self.sealed(MEDIA)
        if media is not None:
            self.fragments[self.media_uri] += _write_fragments(media, self.media_uri, so)
        samples = self.sealed(SAMPLES)
        if samples is not None:
            self.fragments[self.samples_uri] += _write_fragments(samples, self.samples_uri, so)
        self.clear()

    def commit(self) -> None:
        """Commit the staged fragments, then merge-insert them into the lake, media first."""
        self.flush()
        media = self._staged(self.media_uri, STAGED_MEDIA)
        if media.num_rows:
            used = pc.is_in(
                media.column("media_id"), value_set=pa.array(sorted(self.keep), pa.string())
            )
            self.new_media += self.lake.insert_new(MEDIA, media.filter(used))
        samples = self._staged(self.samples_uri, STAGED_SAMPLES)
        self.new_samples += self.lake.insert_new(SAMPLES, samples)

    def _staged(self, uri: str, schema: pa.Schema) -> pa.Table:
        import lance
        from lance.fragment import FragmentMetadata

        frags = [FragmentMetadata.from_json(f) for f in self.fragments[uri]]
        if not frags:
            return schema.empty_table()
        so = self.lake.storage_options or None
        op = lance.LanceOperation.Overwrite(schema, frags)
        return lance.LanceDataset.commit(uri, op, storage_options=so).to_table()


class IngestProgress:
    """The ingest's progress rows: written every ``every_s`` seconds and at the end."""

    stage = f"{JOB}:media"

    def __init__(self, lake: Lake, run_id: str, total: int | None, every_s: float = 5.0):
        self.lake, self.run_id, self.total = lake, run_id, total or 0
        self.backfill = progress.backfill_id(job=JOB, stage=self.stage, run=run_id)
        self.every_s = every_s
        self.started = self.last = time.perf_counter()
        self.records = 0
        self.units: list[dict[str, Any]] = []
        self.write(progress.RUNNING)

    def unit(self, idx: int, records: int, images: int, node: str) -> None:
        """One chunk consumed; write the rows when ``every_s`` has passed."""
        self.records += records
        self.units.append({"unit": f"shard:{idx}", "status": progress.DONE, "rows": images,
                           "node": node, "attempts": 1})  # fmt: skip
        if time.perf_counter() - self.last >= self.every_s:
            self.write(progress.RUNNING)

    def write(self, status: str, error: str | None = None) -> None:
        """The stage row and the unit rows gathered since the last write."""
        seconds = time.perf_counter() - self.started
        if self.units:
            progress.record_units(self.lake, self.backfill, self.run_id, JOB, self.stage,
                                  self.units)  # fmt: skip
            self.units = []
        total = max(self.total, self.records)
        progress.record_stage(self.lake, self.backfill, self.run_id, JOB, self.stage, status,
                              self.records, total, seconds, error)  # fmt: skip
        self.last = time.perf_counter()


def _ray_process(
    ray: Any,
    executor: Any,
    writer: StagingWriter,
    image: ImageSettings,
    media_prov: dict[str, Any],
    tracker: IngestProgress,
) -> Callable[[_Feeder, Callable[..., None]], None]:
    """The runner's ``process``: each chunk's new images in a Ray task, consumed in order."""
    s = settings_for(executor, JOB)
    task_fn = ray.remote(stage_images).options(
        num_cpus=float(s.cpus_per_actor), max_retries=int(s.max_retries)
    )
    inflight = 2 * int(s.actors) + 2  # tasks in flight: ``actors`` busy, as many queued
    so = writer.lake.storage_options or None
    image_ref = ray.put(image)
    prov_ref = ray.put(media_prov)

    def process(feeder: _Feeder, consume: Callable[..., None]) -> None:
        pending: deque = deque()

        def take() -> None:
            idx, results, frags, node = ray.get(pending.popleft())
            writer.fragments[writer.media_uri] += frags
            images = [m for m, r in results if isinstance(r, ImageInfo)]
            writer.worker_media.update(images)
            records = len(feeder.staged[idx].items)
            consume(idx, results)
            tracker.unit(idx, records, len(images), node)

        for idx, work in feeder.tasks():
            new = feeder.staged[idx].new_media
            refs = {m: dataclasses.replace(new[m][1], data=None) for m, _ in work}
            task = (idx, work)
            pending.append(task_fn.remote(task, refs, image_ref, prov_ref, writer.media_uri, so))
            if len(pending) >= inflight:
                take()
        while pending:
            take()

    return process


def clear_stale_staging(lake: Lake) -> None:
    """Remove the staging folders of Ray ingests that ended without cleaning up (killed)."""
    root = local_path(staging_root(lake))
    if root is None or not root.is_dir():
        return
    runs = {r.get("run_id"): r for r in lake.runs()}
    for folder in root.glob(f"{RUN_PREFIX}*"):
        run = runs.get(folder.name)
        if run is None or effective_status(run) in FINAL:
            shutil.rmtree(folder, ignore_errors=True)


def _remove(staging: str, lake: Lake) -> None:
    folder = local_path(staging)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the last staging folder takes its parent along
            folder.parent.rmdir()
        return
    import lance  # object storage: drop the staged rows' files through Lance itself

    for name in (MEDIA, SAMPLES):
        try:
            ds = lance.dataset(f"{staging}/{name}.lance", storage_options=lake.storage_options)
        except (ValueError, OSError):
            continue
        ds.delete("true")
        ds.cleanup_old_versions(older_than=timedelta(0), delete_unverified=True)


def ray_ingest(
    source: Source,
    lake: Lake,
    dataset: str,
    settings: IngestSettings,
    ctx: RunContext,
    rejects_path: Any,
    executor: Any,
) -> IngestReport:
    """:func:`lake.ingest.ingest` with the image work and the row writing on Ray."""
    clear_stale_staging(lake)
    staging = f"{staging_root(lake)}/{ctx.run_id}"
    writer = StagingWriter(lake, settings.write_batch, staging)
    media_prov = image_provenance(source, ctx, settings.image)
    tracker = IngestProgress(lake, ctx.run_id, source.count())
    try:
        with ray_session(
            str(executor["address"]),
            executor["num_cpus"],
            executor["num_gpus"],
            executor["temp_dir"],
        ) as ray:
            process = _ray_process(ray, executor, writer, settings.image, media_prov, tracker)
            report = _ingest(source, lake, dataset, settings, ctx, rejects_path, process, writer)
    except BaseException as exc:
        tracker.write(progress.FAILED, f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        _remove(staging, lake)
    tracker.write(progress.COMMITTED)
    return report
