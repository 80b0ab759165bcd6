"""The ingest runner: source records -> processed media -> merge-inserted lake rows.

Pipeline (one pass, bounded memory): the main process reads each record's media bytes
and hashes them; media not yet in the lake go to worker processes that verify, measure,
phash and thumbnail them; the main thread assembles samples in source order and commits
media then samples every ``write_batch`` samples. A record is written whole or not at
all: any bad media rejects the record, with its location, into the rejects report.
Because keys are content hashes and writes insert only missing keys, a re-run (or a run
resumed after a crash) converges to the lake a single clean run produces.

Run it as ``python -m lake.ingest source=NAME source.path=PATH`` or ``lakeloom ingest``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import operator
import os
import re
import stat
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from lake import ids, provenance, sql
from lake.errors import ConfigError, RejectedInput
from lake.images import ImageInfo, ImageRejected, ImageSettings, process_image
from lake.job import RunContext, hydra_job, run_record
from lake.lineage import ensure_indexes
from lake.plugin import Source
from lake.records import MediaMeta, MediaRef, Reject, SourceRecord
from lake.schema import MEDIA, MEDIA_SCHEMA, SAMPLE_KEY, SAMPLES, SAMPLES_SCHEMA
from lake.sources import too_big
from lake.store import Lake

log = logging.getLogger("lakeloom.ingest")


@dataclass
class IngestSettings:
    """Runner options (``ingest:`` in ``conf/ingest.yaml``)."""

    workers: int | str = "auto"
    chunk_size: int = 256
    write_batch: int = 5000
    progress: bool = True
    image: ImageSettings = field(default_factory=ImageSettings)


@dataclass
class IngestReport:
    """Counts and timing of one ingest run."""

    run_id: str
    dataset: str
    records: int = 0
    new_samples: int = 0
    present_samples: int = 0
    new_media: int = 0
    images_processed: int = 0
    source_analysed: int = 0  # new media the source analysed itself (frames, audio, videos)
    rejected: int = 0
    seconds: float = 0.0
    rejects_path: str | None = None
    reasons: Counter[str] = field(default_factory=Counter)
    # top-level record keys the source did not read (unknown to it), with record counts
    ignored_keys: Counter[str] = field(default_factory=Counter)

    @property
    def ingested(self) -> int:
        """Samples that are in the lake after the run (new or already present)."""
        return self.new_samples + self.present_samples

    @property
    def images_per_s(self) -> float:
        """Images decoded and processed per second of wall time."""
        return self.images_processed / self.seconds if self.seconds else 0.0

    def counts(self) -> dict[str, Any]:
        """JSON-ready counts for the run record."""
        return {
            "records": self.records,
            "new_samples": self.new_samples,
            "present_samples": self.present_samples,
            "new_media": self.new_media,
            "images_processed": self.images_processed,
            "source_analysed": self.source_analysed,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 1),
            "ignored_keys": dict(self.ignored_keys.most_common()),
        }

    def summary(self) -> str:
        """Human-readable closing lines."""
        work = (
            f"{self.source_analysed} media analysed by the source"
            if self.source_analysed and not self.images_processed
            else f"{self.images_processed} images ({self.images_per_s:.0f} images/s)"
        )
        lines = [
            f"ingest {self.dataset}: {self.records} records -> {self.new_samples} new samples, "
            f"{self.present_samples} already present, {self.rejected} rejected; "
            f"{self.new_media} new media; {work} in {self.seconds:.1f} s"
        ]
        if self.ignored_keys:
            keys = ", ".join(f"{k} ({n})" for k, n in self.ignored_keys.most_common(12))
            lines.append(f"ignored keys, not read by the source (records): {keys}")
        if self.rejected:
            lines.append(f"rejects report: {self.rejects_path}")
            for reason, n in self.reasons.most_common(8):
                lines.append(f"  {n:6d}  {reason}")
        return "\n".join(lines)


# -- worker side ---------------------------------------------------------------------------
_WORKER_SETTINGS = ImageSettings()


def _init_worker(settings: ImageSettings) -> None:
    global _WORKER_SETTINGS
    _WORKER_SETTINGS = settings


def _process_chunk(task: tuple[int, list[tuple[str, bytes]]]) -> tuple[int, list[tuple[str, Any]]]:
    idx, items = task
    out: list[tuple[str, Any]] = []
    for mid, data in items:
        try:
            out.append((mid, process_image(data, _WORKER_SETTINGS)))
        except ImageRejected as exc:
            out.append((mid, str(exc)))
    return idx, out


# (key, media_id, bytes, ImageInfo | reason | None) or (key, None, None, (prefix, reason))
ReadResult = tuple[str, str | None, bytes | None, Any]


def _read_chunk(task: _ReadTask) -> tuple[int, list[tuple[str, Any]], list[ReadResult]]:
    """Worker: process the chunk's already-read media, then read, hash and process the
    files the main process left to the workers."""
    idx, work, reads, limit, present = task
    _, out = _process_chunk((idx, work))
    return idx, out, [_read_file(k, p, limit, present, _WORKER_SETTINGS) for k, p in reads]


def _read_file(
    key: str, path: str, limit: int | None, present: Any, settings: ImageSettings
) -> ReadResult:
    """Read, hash and process one media file; a failed read answers ``(prefix, reason)``.

    A file whose key is (by its 64-bit prefix) in ``present`` is not decoded: its result
    is None and its bytes are not sent back (the main process checks the full key).
    """
    try:
        data = _read(path, limit)
    except RejectedInput as exc:
        return key, None, None, ("media", exc.reason)
    except OSError as exc:
        return key, None, None, ("cannot read", str(exc.strerror or exc))
    except ValueError as exc:  # e.g. a path with a NUL byte
        return key, None, None, ("cannot read", str(exc))
    mid = ids.media_id(data)
    if present is not None and present.contains(mid):
        return key, mid, None, None
    try:
        return key, mid, data, process_image(data, settings)
    except ImageRejected as exc:
        return key, mid, data, str(exc)


class _KeyPrefixes:
    """The lake's media keys as sorted 64-bit prefixes: a compact "maybe present" test
    that travels to the workers (8 bytes a key instead of a 64-character string)."""

    def __init__(self, keys: set[str]):
        import numpy as np

        self.sorted = np.unique(np.array([int(k[:16], 16) for k in keys], dtype=np.uint64))

    def contains(self, key: str) -> bool:
        """Whether a key with ``key``'s prefix is in the set (rarely a false positive)."""
        import numpy as np

        value = np.uint64(int(key[:16], 16))
        i = int(np.searchsorted(self.sorted, value))
        return i < len(self.sorted) and self.sorted[i] == value


# -- main side -----------------------------------------------------------------------------
@dataclass
class _Prepared:
    record: SourceRecord | None
    media_ids: list[str]
    reject: Reject | None = None
    attached_ids: list[str] = field(default_factory=list)
    rejected_ids: list[str] = field(default_factory=list)  # the rejected answer's own media


@dataclass
class _Staged:
    items: list[_Prepared]
    new_media: dict[str, tuple[bytes | None, MediaRef]]  # media_id -> (bytes, reference)
    # files the workers read and hash: placeholder key -> reference (see _Feeder)
    reads: dict[str, MediaRef] = field(default_factory=dict)


# (chunk index, [(media_id, bytes)] to process, [(placeholder, path)] to read first,
# max_media_bytes, the lake's media keys or None)
_ReadTask = tuple[int, list[tuple[str, bytes]], list[tuple[str, str]], int | None, Any]
_PLACEHOLDER = "\0"  # starts a media id the workers have not computed yet (no sha256 does)


class _Feeder:
    """Reads and hashes the media of chunks of records; keeps their bytes until consumed.

    With ``read_in_workers`` the media files (references with a path only) are read and
    hashed by the workers, which decode them anyway: such a media id is a placeholder
    until :meth:`resolve` puts the worker's answer in, in source order.
    """

    def __init__(
        self,
        source: Source,
        present_media: set[str],
        chunk_size: int,
        read_in_workers: bool = False,
    ):
        self.source = source
        self.present_media = present_media
        self.chunk_size = chunk_size
        self.read_in_workers = read_in_workers
        self.present = _KeyPrefixes(present_media) if read_in_workers and present_media else None
        self.staged: dict[int, _Staged] = {}
        self.seen: set[str] = set()
        policy = getattr(source, "policy", None)  # a plugin that skipped Source.__init__
        self.limit: int | None = getattr(policy, "max_media_bytes", None)

    def read_tasks(self) -> Iterator[_ReadTask]:
        """:meth:`tasks` with the files left for the workers to read (``read_in_workers``)."""
        for idx, work in self.tasks():
            staged = self.staged[idx]
            reads = [(key, str(ref.path)) for key, ref in staged.reads.items()]
            yield idx, work, reads, self.limit, self.present

    def resolve(
        self,
        staged: _Staged,
        done: list[ReadResult],
        status: dict[str, Any],
        image: ImageSettings,
    ) -> int:
        """Put the workers' media ids into ``staged``'s records (a failed read rejects its
        record, as :meth:`_stage` does) and their results into ``status``; return the
        number of images decoded."""
        keys: dict[str, str] = {}
        errors: dict[str, str] = {}
        images = 0
        for key, mid, data, res in done:
            ref = staged.reads[key]
            if mid is not None and res is None and mid not in self.present_media:
                # the prefix matched another key: read and decode this one here
                _, mid, data, res = _read_file(key, str(ref.path), self.limit, None, image)
            if mid is None:
                prefix, reason = res
                errors[key] = f"{prefix} {ref.source_uri}: {reason}"
                continue
            keys[key] = mid
            if mid in self.present_media or mid in self.seen:
                continue
            self.seen.add(mid)
            staged.new_media[mid] = (data, ref)
            status[mid] = res
            images += isinstance(res, ImageInfo)
        for item in staged.items:
            if item.record is None:
                continue
            ordered = [*item.media_ids, *item.rejected_ids, *item.attached_ids]
            if not any(m.startswith(_PLACEHOLDER) for m in ordered):
                continue
            bad = next((errors[m] for m in ordered if m in errors), None)
            if bad is not None and item.reject is None:
                item.reject = Reject(item.record.location, bad)
            if item.reject is None:
                item.media_ids = [keys.get(m, m) for m in item.media_ids]
                item.rejected_ids = [keys.get(m, m) for m in item.rejected_ids]
                item.attached_ids = [keys.get(m, m) for m in item.attached_ids]
        return images

    def tasks(self) -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
        chunk: list[SourceRecord | Reject] = []
        idx = 0
        for rec in self.source.records():
            chunk.append(rec)
            if len(chunk) >= self.chunk_size:
                yield self._stage(idx, chunk)
                idx, chunk = idx + 1, []
        if chunk:
            yield self._stage(idx, chunk)

    def _stage(self, idx: int, chunk: list[SourceRecord | Reject]) -> tuple[int, list]:
        items: list[_Prepared] = []
        new_media: dict[str, tuple[bytes | None, MediaRef]] = {}
        reads: dict[str, MediaRef] = {}
        for rec in chunk:
            if isinstance(rec, Reject):
                items.append(_Prepared(None, [], rec))
                continue
            mids: list[str] = []
            reject = None
            rejected_media = rec.rejected_media or []
            for ref in (*rec.media, *rejected_media, *rec.attached):
                if (
                    self.read_in_workers
                    and ref.data is None
                    and not ref.media_id
                    and ref.meta is None
                    and ref.path is not None
                ):
                    key = f"{_PLACEHOLDER}{len(reads)}"
                    reads[key] = ref
                    mids.append(key)
                    continue
                try:
                    # a given key spares re-hashing media shared by many records (a
                    # video's audio) and reading blob/referenced videos up front
                    data = (
                        ref.data
                        if ref.data is not None or ref.media_id
                        else _read(ref.path, self.limit)
                    )
                    if data is not None and self.limit is not None and len(data) > self.limit:
                        raise RejectedInput(too_big(len(data), self.limit, "max_media_bytes"))
                    mid = ref.media_id or ids.media_id(data)  # type: ignore[arg-type]
                except RejectedInput as exc:
                    reject = Reject(rec.location, f"media {ref.source_uri}: {exc.reason}")
                    break
                except OSError as exc:
                    reject = Reject(
                        rec.location, f"cannot read {ref.source_uri}: {exc.strerror or exc}"
                    )
                    break
                except ValueError as exc:  # e.g. a path with a NUL byte
                    reject = Reject(rec.location, f"cannot read {ref.source_uri}: {exc}")
                    break
                mids.append(mid)
                if mid not in self.present_media and mid not in self.seen:
                    self.seen.add(mid)
                    new_media[mid] = (data, ref)
            n, r = len(rec.media), len(rejected_media)
            items.append(
                _Prepared(rec, mids[:n], reject, mids[n + r :], rejected_ids=mids[n : n + r])
            )
        self.staged[idx] = _Staged(items, new_media, reads)
        # Media analysed by their source need no image worker.
        work = [(m, d) for m, (d, ref) in new_media.items() if ref.meta is None and d is not None]
        return idx, work


def _read(path: Path | str | None, limit: int | None = None) -> bytes:
    """The bytes of a media file: a regular file of at most ``limit`` bytes, else
    RejectedInput. The file is checked before it is opened (opening a FIFO blocks) and
    opened non-blocking, so one swapped for a FIFO afterwards cannot hang the run."""
    if path is None:
        raise OSError("no path and no inline data")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise RejectedInput("not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RejectedInput("not a regular file")
        if limit is not None and st.st_size > limit:
            raise RejectedInput(f"file is {too_big(st.st_size, limit, 'max_media_bytes')}")
        # reads sized by the file, not by the limit: a buffer of ``limit + 1`` bytes
        # (64 MiB) allocated and shrunk per file cost a small JPEG's decode time over again
        parts, total, want = [], 0, st.st_size + 1
        while part := os.read(fd, want):
            parts.append(part)
            total += len(part)
            if limit is not None and total > limit:
                raise RejectedInput(f"file is {too_big(total, limit, 'max_media_bytes')}")
            want = max(want - len(part), 1 << 20)  # it grew or was read short: read on
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _Writer:
    """Buffers accepted rows and commits them media-first in large batches.

    Rows are kept as the dicts they arrive as and turned into columns once per chunk
    (:meth:`seal`), which costs less than appending every field to its column list.

    Provenance values repeat (one per run and source step list), so rows hold an index
    into the distinct values and the column is built with one ``take``.
    """

    # Whole videos make a few samples carry hundreds of MB: commit by size as well.
    max_bytes = 512 * 2**20

    def __init__(self, lake: Lake, write_batch: int):
        self.lake = lake
        self.write_batch = write_batch
        self.media: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.provs: list[dict[str, Any]] = []
        self.prov_index: dict[int, int] = {}
        self.new_media = 0
        self.new_samples = 0
        self.buffered_bytes = 0
        # rows already converted to Arrow (one table per consumed chunk), written at flush
        self.schemas = {MEDIA: MEDIA_SCHEMA, SAMPLES: SAMPLES_SCHEMA}
        self.parts: dict[str, list[pa.Table]] = {MEDIA: [], SAMPLES: []}
        self.buffered_samples = 0
        # table -> the version whose keys the run checked its rows against: while a table
        # stays there (only this writer wrote), its rows are appended, not merge-inserted
        self.versions: dict[str, int] = {}

    def prov(self, value: dict[str, Any]) -> int:
        """Index of a provenance value (identical objects share one index)."""
        i = self.prov_index.get(id(value))
        if i is None or self.provs[i] is not value:
            i = len(self.provs)
            self.provs.append(value)
            self.prov_index[id(value)] = i
        return i

    def add_media(self, media_rows: list[dict[str, Any]]) -> None:
        """Buffer media rows (no flush: :meth:`add` flushes with the sample)."""
        for row in media_rows:
            self.media.append(row)
            self.buffered_bytes += len(row["bytes"] or b"") + len(row["blob"] or b"")

    def add(self, media_rows: list[dict[str, Any]], sample_row: dict[str, Any]) -> None:
        """Buffer one accepted sample and its new media; flush a full batch."""
        self.add_media(media_rows)
        self.samples.append(sample_row)
        self.buffered_samples += 1
        if self.buffered_samples >= self.write_batch or self.buffered_bytes >= self.max_bytes:
            self.flush()

    def seal(self) -> None:
        """Convert the rows buffered so far to Arrow (after each chunk, while the workers
        still decode), so that a flush only concatenates and writes."""
        for name, rows in ((MEDIA, self.media), (SAMPLES, self.samples)):
            if rows:
                self.parts[name].append(self.table(rows, self.schemas[name]))
        self.media, self.samples = [], []
        self.provs, self.prov_index = [], {}  # the sealed tables hold the values themselves

    def sealed(self, name: str) -> pa.Table | None:
        """The buffered rows of table ``name`` as one Arrow table (None: none buffered)."""
        self.seal()
        parts = self.parts[name]
        return pa.concat_tables(parts) if parts else None

    def table(self, rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
        """The buffered ``rows`` (provenance as indices) as a table of ``schema``."""
        n = len(rows)
        if n == 0:
            return schema.empty_table()
        columns = zip(*map(operator.itemgetter(*schema.names), rows), strict=True)
        cols = dict(zip(schema.names, map(list, columns), strict=True))
        provs = pa.array(self.provs, type=schema.field("provenance").type)
        arrays = []
        for f in schema:
            if f.name == "provenance":
                arrays.append(provs.take(pa.array(cols[f.name], pa.int32())))
            else:
                arrays.append(_array(cols[f.name], f.type))
        return pa.Table.from_arrays(arrays, schema=schema)

    def flush(self) -> None:
        """Write the buffered rows, media first, and count the new ones."""
        media = self.sealed(MEDIA)
        if media is not None:
            self.new_media += self.write(MEDIA, media)
        samples = self.sealed(SAMPLES)
        if samples is not None:
            self.new_samples += self.write(SAMPLES, samples)
        self.clear()

    def write(self, name: str, rows: pa.Table) -> int:
        """Append ``rows`` while no other writer touched the table since the run read its
        keys (every row is then new); else merge-insert them. Return the rows inserted."""
        known = self.versions.get(name)
        if known is not None:
            written = self.lake.append_new(name, rows, known)
            if written is not None:
                self.versions[name] = written
                return rows.num_rows
            del self.versions[name]  # another writer came in: insert only missing keys
        return self.lake.insert_new(name, rows)

    def clear(self) -> None:
        """Empty the buffers (after they were written)."""
        self.media, self.samples = [], []
        self.provs, self.prov_index = [], {}
        self.parts = {MEDIA: [], SAMPLES: []}
        self.buffered_bytes = 0
        self.buffered_samples = 0

    def commit(self) -> None:
        """End of the run: write what is buffered (a staging writer commits here)."""
        self.flush()


def _array(values: list[Any], type_: pa.DataType) -> pa.Array:
    """``pa.array(values, type_)``; binary columns built from one joined buffer (pyarrow
    converts a list of Python bytes one object at a time: the media bytes and thumbnails
    were most of the ingest's Arrow conversion)."""
    if pa.types.is_large_binary(type_) or pa.types.is_binary(type_):
        return _binary_array(values, type_)
    return pa.array(values, type=type_)


def _binary_array(values: list[bytes | None], type_: pa.DataType) -> pa.Array:
    """A (large) binary array of ``values`` (None: null) from its buffers."""
    import numpy as np

    n = len(values)
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=n)
    nulls = n - int(valid.sum())
    if nulls:
        values = [b"" if v is None else v for v in values]
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if pa.types.is_binary(type_):
        if offsets[-1] >= 2**31:
            return pa.array(values, type=type_)  # pyarrow answers with its own error
        offsets = offsets.astype(np.int32)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    buffers = [bitmap, pa.py_buffer(offsets), pa.py_buffer(b"".join(values))]
    return pa.Array.from_buffers(type_, n, buffers, null_count=nulls)


def ingest(
    source: Source,
    lake: Lake,
    dataset: str | None = None,
    settings: IngestSettings | None = None,
    ctx: RunContext | None = None,
    rejects_path: str | Path | None = None,
    executor: Any = None,
) -> IngestReport:
    """Ingest every record of ``source`` into ``lake``; return the counts.

    ``rejects_path`` receives one JSON line per rejected record (source file, line or
    row, reason); it is rewritten by each run, so it always describes the last run.
    ``executor`` (``conf/executor``): ``name: ray`` runs the media work on Ray
    (:mod:`lake.ray_ingest`); None or ``local`` runs it here.
    """
    settings = settings or IngestSettings()
    ctx = ctx or RunContext("ingest", provenance.new_run_id("ingest"), "", "")
    dataset = dataset or source.default_dataset()
    inputs = {"source": source.name, "dataset": dataset, **source.params()}
    with run_record(lake, ctx, inputs, creates=True):
        if executor is not None and executor.get("name") == "ray":
            from lake.ray_ingest import ray_ingest

            return ray_ingest(source, lake, dataset, settings, ctx, rejects_path, executor)
        return _ingest(source, lake, dataset, settings, ctx, rejects_path)


def _ingest(
    source: Source,
    lake: Lake,
    dataset: str,
    settings: IngestSettings,
    ctx: RunContext,
    rejects_path: str | Path | None,
    process: Any = None,
    writer: _Writer | None = None,
) -> IngestReport:
    """:func:`ingest`'s work inside its run record; records ``finished`` last.

    ``process(feeder, consume)`` replaces the local image workers and ``writer`` the
    lake writer (the Ray executor stages rows and commits them once).
    """
    report = IngestReport(ctx.run_id, dataset)
    started = time.perf_counter()

    present_media, media_version = lake.keys_at(MEDIA)
    blobs_ok = not lake.exists(MEDIA) or lake.has_blobs(MEDIA)
    present_samples, samples_version = lake.keys_at(SAMPLES)
    legacy_ids = _dataset_keys(lake, dataset)
    total = source.count()
    workers = _worker_count(settings, total) if source.decodes_images else 0
    # the local workers read and hash the files; a given ``process`` (Ray) gets the bytes
    feeder = _Feeder(source, present_media, settings.chunk_size, read_in_workers=process is None)
    if writer is None:
        writer = _Writer(lake, settings.write_batch)
        writer.versions = {MEDIA: media_version, SAMPLES: samples_version}
    rejects = _RejectsFile(rejects_path)
    report.rejects_path = str(rejects_path) if rejects_path else None
    status: dict[str, ImageInfo | MediaMeta | str | None] = {}
    written_media: set[str] = set()
    orphans: dict[str, tuple[bytes | None, MediaRef]] = {}
    media_prov = image_provenance(source, ctx, settings.image)
    seen_samples: set[str] = set()
    bar = _progress(settings.progress, total, dataset)

    def consume(idx: int, results: list[tuple[str, Any]], done: list[ReadResult] = ()) -> None:
        staged = feeder.staged.pop(idx)
        for mid, res in results:
            status[mid] = res
        if staged.reads:
            report.images_processed += feeder.resolve(staged, done, status, settings.image)
        for mid, (_, ref) in staged.new_media.items():
            if ref.meta is not None:
                status[mid] = ref.meta
        report.images_processed += sum(1 for _, r in results if isinstance(r, ImageInfo))
        for item in staged.items:
            report.records += 1
            reject = item.reject or _media_problem(item, status)
            if reject is not None:
                report.rejected += 1
                report.reasons[_reason_kind(reject.reason)] += 1
                rejects.write(reject)
                continue
            rec = item.record
            assert rec is not None
            if rec.ignored_keys:
                report.ignored_keys.update(rec.ignored_keys)
            content = (rec.messages, rec.caption, rec.label, rec.chosen, rec.rejected, rec.key)
            extra = _preference_fields(item, rec)
            try:
                sid = ids.sample_id(item.media_ids, *content, dataset=dataset, **extra)
                # a lake written before the dataset was part of the id holds the old one
                old_sid = ids.sample_id(item.media_ids, *content, **extra) if legacy_ids else None
                _check_unicode(rec.location.uri(), *(m.source_uri for m in rec.media))
            except UnicodeEncodeError as exc:
                # a lone surrogate (JSON "\ud800", a file name that is not UTF-8) would
                # fail the whole commit later: reject just this record
                bad = exc.object[exc.start : exc.end].encode("utf-8", "backslashreplace")
                reject = Reject(rec.location, f"text is not valid Unicode: {bad.decode()}")
                report.rejected += 1
                report.reasons[_reason_kind(reject.reason)] += 1
                rejects.write(reject)
                continue
            if sid in present_samples or sid in seen_samples or old_sid in legacy_ids:
                report.present_samples += 1
                continue
            seen_samples.add(sid)
            media_rows = []
            for mid in (*item.media_ids, *item.rejected_ids, *item.attached_ids):
                if mid in present_media or mid in written_media:
                    continue
                written_media.add(mid)
                data, ref = staged.new_media.get(mid) or orphans.pop(mid)
                info = status[mid]
                if isinstance(info, MediaMeta):
                    if info.store == "blob" and not blobs_ok:
                        raise ConfigError(
                            f"lake {lake.uri} was created before videos could be stored in it: "
                            "ingest with source.store_video=false (reference the files) or "
                            "into a new lake"
                        )
                    report.source_analysed += 1
                    prov = writer.prov(_analysed_prov(info, source, ctx))
                else:
                    assert isinstance(info, ImageInfo)
                    prov = writer.prov(media_prov)
                media_rows.append(_media_row(mid, data, ref, info, prov))
                status[mid] = None  # written and valid: drop the thumbnail it holds
            prov = writer.prov(_sample_prov(rec, source, ctx))
            row = _sample_row(sid, dataset, item, rec, prov)
            row.update(extra)
            writer.add(media_rows, row)
        # Valid media whose records were all rejected may still be used by a later record.
        for mid, staged_media in staged.new_media.items():
            if mid not in written_media and isinstance(status.get(mid), ImageInfo | MediaMeta):
                orphans[mid] = staged_media
        writer.seal()
        if bar is not None:
            bar.update(len(staged.items))

    try:
        with _quiet_gc():
            if process is not None:
                process(feeder, consume)
            elif workers == 0:
                _init_worker(settings.image)
                for task in feeder.read_tasks():
                    consume(*_read_chunk(task))
            else:
                # once every chunk is submitted, write what is buffered while the workers
                # decode the last chunks: the run's end then commits only those
                _run_pool(
                    feeder, consume, workers, settings.image, 2 * workers + 2, drained=writer.flush
                )
            writer.commit()
    finally:
        rejects.close()
        if bar is not None:
            bar.close()
    report.new_media = writer.new_media
    report.new_samples = writer.new_samples
    report.present_samples += len(seen_samples) - writer.new_samples  # lost races: counted once
    report.seconds = time.perf_counter() - started
    ensure_indexes(lake)  # key lookups (`lakeloom why`, the TUI's sample) read through them
    versions = lake.tag(ctx.run_id)
    lake.record_run(
        ctx.record(
            "finished",
            inputs={"source": source.name, "dataset": dataset, **source.params()},
            counts=report.counts(),
            versions=versions,
        )
    )
    return report


def image_provenance(source: Source, ctx: RunContext, image: ImageSettings) -> dict[str, Any]:
    """Provenance of the images a run decodes, measures, phashes and thumbnails."""
    steps = provenance.steps(
        ("read", {}),
        (
            "decode_verify",
            {"max_pixels": image.max_pixels, "formats": list(image.formats)},
        ),
        ("phash", {"algo": "imagehash.phash", "hash_size": 8, "exif_transpose": True}),
        (
            "thumbnail",
            {"max_side": image.thumb_size, "quality": image.thumb_quality},
        ),
    )
    return provenance.record(source.name, source.version, ctx.config_hash, ctx.run_id, steps)


def _dataset_keys(lake: Lake, dataset: str) -> set[str]:
    """The sample ids already in ``dataset`` (empty for a new lake or dataset)."""
    if not lake.exists(SAMPLES):
        return set()
    rows = lake.dataset(SAMPLES).to_table(
        columns=[SAMPLE_KEY], filter=f"dataset = {sql.quote(dataset)}"
    )
    return set(rows.column(0).to_pylist())


@contextlib.contextmanager
def _quiet_gc(gen0: int = 20_000) -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects that outlive the run's loop.

    Every record, media reference and buffered row is a tracked object, so the full
    collections that their allocations trigger rescanned the whole heap (the lake's and
    the source listing's objects included): a sixth of the main process's time at 10k
    images. What exists now is frozen out of collection and collections run less often;
    both are restored afterwards. A process that froze objects itself (a forking server)
    keeps its freeze: nothing is frozen or unfrozen then.
    """
    threshold = gc.get_threshold()
    ours = gc.get_freeze_count() == 0
    if ours:
        gc.freeze()
    gc.set_threshold(max(gen0, threshold[0]), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if ours:
            gc.unfreeze()


def _run_pool(
    feeder: _Feeder,
    consume: Any,
    workers: int,
    image: ImageSettings,
    inflight: int,
    drained: Any = None,
) -> None:
    """Process chunks in worker processes, at most ``inflight`` ahead, consuming in order;
    ``drained()`` is called once the last chunk is submitted.

    A worker that dies (or cannot start) raises BrokenProcessPool instead of hanging.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # Lance is not fork-safe; workers import PIL only
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(image,))
    try:
        pending: deque = deque()
        for task in feeder.read_tasks():
            pending.append(pool.submit(_read_chunk, task))
            if len(pending) >= inflight:
                consume(*pending.popleft().result())
        if drained is not None:
            drained()
        while pending:
            consume(*pending.popleft().result())
    finally:
        # the idle workers exit while the lake commits the last batch: no wait for them
        pool.shutdown(wait=False, cancel_futures=True)


def _process_chunk_inline(task: tuple[int, list[tuple[str, bytes]]], settings: ImageSettings):
    _init_worker(settings)
    return _process_chunk(task)


def _preference_fields(item: _Prepared, rec: SourceRecord) -> dict[str, Any]:
    """The sample's ``feedback`` and ``rejected_media_ids`` (None when the rejected answer
    was shown the prompt's own media)."""
    rejected = item.rejected_ids if rec.rejected_media is not None else None
    if rejected == item.media_ids:
        rejected = None
    return {"feedback": rec.feedback, "rejected_media_ids": rejected}


def _media_problem(item: _Prepared, status: dict[str, ImageInfo | str]) -> Reject | None:
    rec = item.record
    assert rec is not None
    refs = [*rec.media, *(rec.rejected_media or [])]
    for ref, mid in zip(refs, [*item.media_ids, *item.rejected_ids], strict=True):
        res = status.get(mid)
        if isinstance(res, str):
            return Reject(rec.location, f"image {ref.source_uri}: {res}")
    return None


# where in a record or which file a reason is about: not part of its kind
_WHERE = re.compile(r"^(?:(?:message|turn|part|row) \d+(?: part \d+)?(?:: |, | ))+")
_MEDIA_PREFIXES = ("image ", "media ", "video ", "audio ", "cannot read ")


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary by what went wrong, not where: drop a media file's
    name and a position in the record (``message 0 part 1: ...``), then the detail after
    the next colon."""
    head = reason.split(": ", 2)
    if reason.startswith(_MEDIA_PREFIXES) and len(head) > 1:
        kind = head[1]
        return f"cannot read: {kind}" if reason.startswith("cannot read ") else kind
    rest = _WHERE.sub("", reason) or reason
    return rest.split(": ", 1)[0]


def _media_row(
    mid: str, data: bytes | None, ref: MediaRef, info: ImageInfo | MediaMeta, prov: int
) -> dict[str, Any]:
    """The row of one new media object: an image the runner's workers decoded
    (``ImageInfo``: its bytes stored, the original serving as the thumbnail when it is small
    enough) or one its source analysed (``MediaMeta``: a frame, an audio track, a video,
    its bytes stored, blob-stored or only referenced)."""
    if isinstance(info, ImageInfo):
        thumb = data if info.thumb is None else info.thumb
        info = MediaMeta(info.mime, info.width, info.height, phash=info.phash, thumb=thumb)
    return {
        "media_id": mid,
        "kind": ref.kind,
        "mime": info.mime,
        "bytes": data if info.store == "bytes" else None,
        "blob": _read(ref.path) if info.store == "blob" else None,
        "width": info.width,
        "height": info.height,
        "duration_s": info.duration_s,
        "thumb": info.thumb,
        "phash": info.phash,
        "parent_id": info.parent_id,
        "t_start": info.t_start,
        "t_end": info.t_end,
        "scene": info.scene,
        "transcript": None,
        "source_uri": ref.source_uri,
        "provenance": prov,
    }


def _analysed_prov(meta: MediaMeta, source: Source, ctx: RunContext) -> dict[str, Any]:
    steps = provenance.steps(*meta.steps)
    return provenance.record(source.name, source.version, ctx.config_hash, ctx.run_id, steps)


_PROV_CACHE: dict[int, tuple[object, dict[str, Any]]] = {}


def _sample_prov(rec: SourceRecord, source: Source, ctx: RunContext) -> dict[str, Any]:
    """Provenance of a record's sample; records sharing one steps list share one value."""
    hit = _PROV_CACHE.get(id(rec.steps))
    if hit is not None and hit[0] is rec.steps and hit[1]["run_id"] == ctx.run_id:
        return hit[1]
    steps = provenance.steps(*rec.steps, ("canonicalize", {"format": source.name}))
    value = provenance.record(source.name, source.version, ctx.config_hash, ctx.run_id, steps)
    if len(_PROV_CACHE) > 64:
        _PROV_CACHE.clear()
    _PROV_CACHE[id(rec.steps)] = (rec.steps, value)  # holding the list keeps its id unique
    return value


def _check_unicode(*texts: str) -> None:
    """Raise UnicodeEncodeError when a text cannot be stored (holds a lone surrogate)."""
    for text in texts:
        text.encode("utf-8")


def _sample_row(
    sid: str, dataset: str, item: _Prepared, rec: SourceRecord, prov: int
) -> dict[str, Any]:
    return {
        "sample_id": sid,
        "dataset": dataset,
        "media_ids": item.media_ids,
        "messages": rec.messages,
        "caption": rec.caption,
        "label": rec.label,
        "chosen": rec.chosen,
        "rejected": rec.rejected,
        "split": None,
        "tags": rec.tags,
        "flags": [],
        "clip_score": None,
        "t_start": rec.t_start,
        "t_end": rec.t_end,
        "transcript": None,
        "source_uri": rec.location.uri(),
        "provenance": prov,
        "record_id": rec.record_id,
    }


def _worker_count(settings: IngestSettings, total: int | None) -> int:
    if settings.workers == "auto":
        if total is not None and total < 2 * settings.chunk_size:
            return 0
        return os.cpu_count() or 1
    return int(settings.workers)


class _RejectsFile:
    """The rejects report: truncated at the start of a run, one JSON line per reject."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.fh = None
        if self.path is not None and self.path.exists():
            self.path.unlink()

    def write(self, reject: Reject) -> None:
        if self.path is None:
            return
        if self.fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = self.path.open("w", encoding="utf-8")
        self.fh.write(json.dumps({**reject.location.as_dict(), "reason": reject.reason}) + "\n")

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def _progress(enabled: bool, total: int | None, dataset: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"ingest {dataset}", unit="rec", smoothing=0.1, mininterval=0.5)


def settings_from_config(cfg: Any) -> IngestSettings:
    """Build runner settings from the ``ingest`` and ``media`` config nodes."""
    m = cfg.media
    image = ImageSettings(
        int(m.thumb_size), int(m.thumb_quality), int(m.max_pixels), tuple(m.formats)
    )
    i = cfg.ingest
    return IngestSettings(i.workers, int(i.chunk_size), int(i.write_batch), bool(i.progress), image)


def build_source(source_cfg: Any) -> Source:
    """Instantiate and validate a Source plugin from its config node (``_target_`` + options)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        source = instantiate(source_cfg)
    except InstantiationException as exc:
        raise ConfigError(f"cannot create source {source_cfg.get('_target_')}: {exc}") from exc
    if not isinstance(source, Source):
        raise ConfigError(f"{source_cfg.get('_target_')} is not a Source plugin")
    try:
        source.validate()
    except OSError as exc:
        raise ConfigError(str(exc)) from exc
    return source


@hydra_job("ingest")
def main(cfg: Any) -> int:
    """Hydra entry point: ingest one source and print the summary."""
    ctx = RunContext.from_config("ingest", cfg)
    source = build_source(cfg.source)
    dataset = cfg.dataset or source.default_dataset()
    lake = Lake.from_config(cfg.lake)
    rejects = Path(cfg.lake.reports) / "rejects" / f"{dataset}.jsonl"
    report = ingest(source, lake, dataset, settings_from_config(cfg), ctx, rejects, cfg.executor)
    print(report.summary())
    if report.ingested == 0:
        print("lakeloom: nothing could be ingested", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    main()
