"""Map-style dataset over the lake's ``samples`` joined with their ``media`` bytes.

The dataset holds only row ids (numpy arrays) of its samples and of their media, at pinned
table versions; the Lance datasets are opened lazily in whichever process reads (Lance is
not fork-safe, so DataLoader workers must be started with ``spawn`` or ``forkserver`` and
open their own handles). ``__getitems__`` reads a whole batch: one ``take`` of the sample
rows and one of their media (or, with ``media_read="filter"``, one filtered scan
``media_id IN (...)``); :meth:`LanceSamples.read_batches` reads several batches with one
take of each table (the loader's ``read_batches``). With ``read_block`` > 0 it reads whole
blocks of ``read_block`` consecutive positions instead (one take of the samples and one of
their media per block, row ids ascending) and keeps the last ``cache_blocks`` of them: with
the sampler's block-local shuffle (same block size) a batch then costs no read at all most
of the time.
Memory: ``read_block * cache_blocks`` samples' encoded media per process.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from torch.utils.data import Dataset

from lake.sql import and_filters, in_list

SPLITS = ("train", "val", "test")
SAMPLE_COLUMNS = [
    "sample_id", "caption", "label", "messages", "dataset", "chosen", "rejected", "source_uri",
]  # fmt: skip
#: read too when the samples table has them (per-sample pixel budget, see vlm_collate;
#: kind tags, time range and transcript of video / audio samples, see apotheon_data;
#: the KTO label and a rejected answer's own media, see vlm_collate)
OPTIONAL_COLUMNS = [
    "min_pixels", "max_pixels", "tags", "t_start", "t_end", "transcript", "feedback",
    "rejected_media_ids",
]  # fmt: skip


@dataclass
class Selection:
    """Row ids of the selected samples and, CSR-style, of each sample's media in order."""

    sample_rows: np.ndarray  # int64, one per sample
    media_offsets: np.ndarray  # int64, len(sample_rows) + 1
    media_rows: np.ndarray  # int64, media row ids of all samples, concatenated

    def __len__(self) -> int:
        return len(self.sample_rows)

    def media_of(self, positions: Sequence[int]) -> list[np.ndarray]:
        """Media row ids of each sample position."""
        o = self.media_offsets
        return [self.media_rows[o[p] : o[p + 1]] for p in positions]


def hash_split(sample_id: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split of a sample with no ``split`` set: sha256 of its id -> [0, 1).

    ``u < test`` is test, ``u < test + val`` is val, the rest train. It depends on the
    sample id only (not on the training seed), so a sample stays in its split across runs.
    """
    u = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def sql_filter(where: str | None, datasets: Iterable[str] | None) -> str | None:
    """Combine a SQL ``where`` and a dataset list into one Lance filter (``where`` only narrows)."""
    return and_filters(where, f"dataset IN {in_list(datasets)}" if datasets else None)


def select(
    samples: Any,
    media: Any,
    *,
    where: str | None = None,
    datasets: Iterable[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    scan_batch: int = 65536,
) -> tuple[dict[str, Selection], list[str]]:
    """Scan id columns only and return the selection of each split plus the sorted labels.

    ``samples.split`` is used when set; otherwise :func:`hash_split` decides. Samples of
    other splits (``excluded``) are left out. A train sample with ``split_repeat`` = k
    (``lakeloom split``'s oversampling) appears k times in the train selection.
    """
    rows: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    mids: dict[str, list[pa.Array]] = {s: [] for s in SPLITS}
    counts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    labels: set[str] = set()
    repeat = "split_repeat" in samples.schema.names
    scanner = samples.scanner(
        columns=["sample_id", "split", "label", "media_ids"] + (["split_repeat"] if repeat else []),
        filter=sql_filter(where, datasets),
        with_row_id=True,
        batch_size=scan_batch,
    )
    for batch in scanner.to_batches():
        if batch.num_rows == 0:
            continue
        ids = batch.column("sample_id").to_pylist()
        given = batch.column("split").to_pylist()
        split = np.array(
            [
                g or hash_split(i, val_fraction, test_fraction)
                for i, g in zip(ids, given, strict=True)
            ]
        )
        labels.update(x for x in batch.column("label").to_pylist() if x is not None)
        rowid = batch.column("_rowid").to_numpy()
        media_ids = batch.column("media_ids")
        reps = (
            np.asarray(batch.column("split_repeat").fill_null(1).to_numpy(zero_copy_only=False))
            if repeat
            else None
        )
        for name in SPLITS:
            mask = split == name
            if not mask.any():
                continue
            picked = media_ids.filter(pa.array(mask))
            kept = rowid[mask]
            if name == "train" and reps is not None and (reps[mask] > 1).any():
                idx = np.repeat(np.arange(len(kept)), np.maximum(reps[mask], 1))
                picked, kept = picked.take(pa.array(idx)), kept[idx]
            rows[name].append(kept)
            mids[name].append(pc.list_flatten(picked))
            counts[name].append(pc.fill_null(pc.list_value_length(picked), 0).to_numpy())
    lookup = _media_rows(media, [m for s in SPLITS for m in mids[s]])
    out: dict[str, Selection] = {}
    for name in SPLITS:
        n_media = np.concatenate(counts[name]) if counts[name] else np.zeros(0, np.int64)
        flat = (
            pa.chunked_array(mids[name], pa.string()) if mids[name] else pa.array([], pa.string())
        )
        out[name] = Selection(
            np.concatenate(rows[name]).astype(np.int64) if rows[name] else np.zeros(0, np.int64),
            np.concatenate([[0], np.cumsum(n_media)]).astype(np.int64),
            lookup(flat),
        )
    return out, sorted(labels)


def _media_rows(media: Any, needed: list[pa.Array], scan_batch: int = 65536):
    """Return a function mapping media ids to media row ids (one batched scan of ``media_id``)."""
    want = pa.chunked_array(needed, pa.string()).unique() if needed else pa.array([], pa.string())
    keep_ids: list[pa.Array] = []
    keep_rows: list[np.ndarray] = []
    if len(want):
        scanner = media.scanner(columns=["media_id"], with_row_id=True, batch_size=scan_batch)
        for batch in scanner.to_batches():
            mask = pc.is_in(batch.column("media_id"), value_set=want)
            keep_ids.append(batch.column("media_id").filter(mask))
            keep_rows.append(batch.column("_rowid").filter(mask).to_numpy())
    known = pa.chunked_array(keep_ids, pa.string()).combine_chunks() if keep_ids else want
    known_rows = np.concatenate(keep_rows) if keep_rows else np.zeros(0, np.uint64)

    def lookup(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
        if len(ids) == 0:
            return np.zeros(0, np.int64)
        idx = pc.index_in(ids, value_set=known)
        if idx.null_count:
            missing = pc.filter(ids, pc.is_null(idx))[0]
            raise LookupError(f"media {missing} is referenced by a sample but not in the lake")
        return known_rows[np.asarray(idx)].astype(np.int64)

    return lookup


class LanceSamples(Dataset):
    """The samples of one split; items are the dicts the model collators expect.

    Subclasses name further ``media`` columns to read with the bytes in
    ``media_columns``; items carry them as ``media_<column>`` lists."""

    media_columns: tuple[str, ...] = ()

    def __init__(
        self,
        samples_uri: str,
        samples_version: int,
        media_uri: str,
        media_version: int,
        selection: Selection,
        media_read: str = "rowid",
        read_block: int = 0,
        cache_blocks: int = 8,
        media_root: str | None = None,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        if media_read not in ("rowid", "filter"):
            raise ValueError(f"media_read must be 'rowid' or 'filter', not {media_read!r}")
        if read_block < 0 or cache_blocks < 1:
            raise ValueError("read_block must be >= 0 and cache_blocks >= 1")
        self.samples_uri, self.samples_version = samples_uri, samples_version
        self.media_uri, self.media_version = media_uri, media_version
        self.selection = selection
        self.media_read = media_read
        self.read_block = read_block
        self.cache_blocks = cache_blocks
        self.media_root = media_root
        # object storage settings (credentials included): pickled with the dataset, so each
        # worker process opens the lake with them (they never go to disk or a log)
        self.storage_options = dict(storage_options or {})
        self._handles: tuple[Any, Any] | None = None
        self._blocks: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.selection)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = None  # each process opens its own Lance handles
        state["_blocks"] = OrderedDict()
        return state

    def _open(self) -> tuple[Any, Any]:
        if self._handles is None:
            import lance

            options = self.storage_options or None
            self._handles = (
                lance.dataset(
                    self.samples_uri, version=self.samples_version, storage_options=options
                ),
                lance.dataset(self.media_uri, version=self.media_version, storage_options=options),
            )
        return self._handles

    def __getitem__(self, position: int) -> dict[str, Any]:
        return self.__getitems__([position])[0]

    def __getitems__(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """Read a batch of samples with their media bytes (two reads for the whole batch,
        or none when ``read_block`` is set and their blocks are cached)."""
        if self.read_block > 0:
            return [self._block(p // self.read_block)[p % self.read_block] for p in positions]
        return self._read(positions)

    def read_batches(self, batches: Sequence[Sequence[int]]) -> list[list[dict[str, Any]]]:
        """The items of several batches at once: one take of each table for all of them
        (rows ascending), split back into the batches in their order. A take costs about
        a millisecond whatever its size up to a few hundred rows, so reading 8 batches of
        64 together costs a fifth of 8 takes. With ``read_block`` set, batch by batch
        (their blocks are cached)."""
        if self.read_block > 0:
            return [self.__getitems__(b) for b in batches]
        flat = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches]) if batches else []
        if len(flat) == 0:
            return [[] for _ in batches]
        uniq, inverse = np.unique(flat, return_inverse=True)
        order = np.argsort(self.selection.sample_rows[uniq], kind="stable")
        items = self._read(uniq[order])
        at = np.empty(len(uniq), np.int64)
        at[order] = np.arange(len(uniq))
        picked = at[inverse].tolist()
        seen: set[int] = set()
        out: list[list[dict[str, Any]]] = []
        k = 0
        for b in batches:
            batch = []
            for i in picked[k : k + len(b)]:
                # a position repeated (the sampler's padding) gets its own dict: collators
                # may change the items they are given
                batch.append(dict(items[i]) if i in seen else items[i])
                seen.add(i)
            out.append(batch)
            k += len(b)
        return out

    def _block(self, index: int) -> list[dict[str, Any]]:
        """The items of block ``index`` (read once, then cached, least recently used out)."""
        items = self._blocks.get(index)
        if items is not None:
            self._blocks.move_to_end(index)
            return items
        start = index * self.read_block
        items = self._read(range(start, min(start + self.read_block, len(self))))
        self._blocks[index] = items
        while len(self._blocks) > self.cache_blocks:
            self._blocks.popitem(last=False)
        return items

    def _read(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """Read samples with their media bytes: one take of each table."""
        samples, media = self._open()
        rows = self.selection.sample_rows[np.asarray(positions, dtype=np.int64)]
        names = samples.schema.names
        cols = [c for c in SAMPLE_COLUMNS + OPTIONAL_COLUMNS if c in names]
        cols += ["media_ids"] if self.media_read == "filter" else []
        table = samples._take_rows(pa.array(rows, pa.uint64()), columns=cols).to_pydict()
        mcols = list(dict.fromkeys(["bytes", "kind", *self.media_columns]))
        if self.media_read == "rowid":
            per_media = self._by_rowid(media, self.selection.media_of(positions), mcols)
        else:
            per_media = self._by_filter(media, table["media_ids"], mcols)
        self._video_sources(media, per_media)
        extra = [c for c in cols if c not in ("sample_id", "messages", "media_ids")]
        return [
            {
                "sample_id": table["sample_id"][i],
                "images": per_media["bytes"][i],
                "media_kinds": per_media["kind"][i],
                "messages": table["messages"][i] or [],
                **{c: table[c][i] for c in extra},
                **{f"media_{c}": per_media[c][i] for c in self.media_columns},
            }
            for i in range(len(rows))
        ]

    def _video_sources(self, media: Any, per_media: dict[str, list[list[Any]]]) -> None:
        """Put a readable source in place of every video whose bytes are not inline: its
        Lance blob (a lazy file object: only the bytes the decoder reads are fetched), else
        the file it references (``source_uri`` under ``media_root``), else None."""
        where = [
            (i, j)
            for i, kinds in enumerate(per_media["kind"])
            for j, kind in enumerate(kinds)
            if kind == "video" and per_media["bytes"][i][j] is None
        ]
        if not where:
            return
        rows = [per_media["_rowid"][i][j] for i, j in where]
        uris = [per_media["source_uri"][i][j] for i, j in where]
        blobs: list[Any] = [None] * len(rows)
        if "blob" in media.schema.names:
            blobs = media.take_blobs("blob", ids=[int(r) for r in rows])
        for (i, j), blob, uri in zip(where, blobs, uris, strict=True):
            if blob is not None and blob.size() > 0:
                per_media["bytes"][i][j] = blob
            elif uri:
                path = Path(uri) if self.media_root is None else Path(self.media_root) / uri
                per_media["bytes"][i][j] = str(path)

    def estimate_lengths(self, image_tokens: int = 256, chunk: int = 65536) -> np.ndarray:
        """A token-length proxy per position for length-grouped batching: characters of
        the text columns / 4 + ``image_tokens`` per media (reads text columns only)."""
        samples, _ = self._open()
        rows = self.selection.sample_rows
        out = np.zeros(len(rows), np.int64)
        cols = [c for c in ("messages", "caption", "chosen") if c in samples.schema.names]
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            table = samples._take_rows(pa.array(part, pa.uint64()), columns=cols)
            chars = np.zeros(len(part), np.int64)
            for name in cols:
                col = table.column(name)
                if name == "messages":
                    flat = pc.list_flatten(col)
                    text = pc.utf8_length(pc.fill_null(pc.struct_field(flat, "content"), ""))
                    owner = pc.list_parent_indices(col).to_numpy()
                    np.add.at(chars, owner, np.asarray(text.to_numpy(zero_copy_only=False)))
                else:
                    chars += pc.fill_null(pc.utf8_length(col), 0).to_numpy(zero_copy_only=False)
            out[start : start + len(part)] = chars // 4
        n_media = np.diff(self.selection.media_offsets)
        return out + image_tokens * n_media

    @staticmethod
    def _by_rowid(
        media: Any, per_sample: list[np.ndarray], columns: list[str]
    ) -> dict[str, list[list[Any]]]:
        """``columns`` of each sample's media rows (one take): column -> per sample."""
        flat = np.concatenate(per_sample) if per_sample else np.zeros(0, np.int64)
        if len(flat) == 0:
            return {c: [[] for _ in per_sample] for c in columns}
        uniq, inverse = np.unique(flat, return_inverse=True)
        table = media._take_rows(pa.array(uniq, pa.uint64()), columns=[*columns, "source_uri"])
        out: dict[str, list[list[Any]]] = {}
        for c in [*columns, "source_uri", "_rowid"]:
            values = uniq.tolist() if c == "_rowid" else table.column(c).to_pylist()
            k, col = 0, []
            for ids in per_sample:
                col.append([values[j] for j in inverse[k : k + len(ids)]])
                k += len(ids)
            out[c] = col
        return out

    @staticmethod
    def _by_filter(
        media: Any, media_ids: list[list[str] | None], columns: list[str]
    ) -> dict[str, list[list[Any]]]:
        """``columns`` of each sample's media (one filtered scan): column -> per sample."""
        wanted = sorted({m for ids in media_ids for m in ids or []})
        if not wanted:
            return {c: [[] for _ in media_ids] for c in columns}
        table = media.to_table(
            columns=["media_id", *columns, "source_uri"], filter=f"media_id IN {in_list(wanted)}",
            with_row_id=True,
        )  # fmt: skip
        index = {m: i for i, m in enumerate(table.column("media_id").to_pylist())}
        out = {}
        for c in [*columns, "source_uri", "_rowid"]:
            values = table.column(c).to_pylist()
            out[c] = [[values[index[m]] for m in ids or []] for ids in media_ids]
        return out
