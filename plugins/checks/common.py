"""Shared helpers of the built-in checks: projected reads of samples and media, the
embedding matrices, per-dataset grouping, robust z-scores and the result table.

Embedding inputs (written by the CLIP enricher): ``media.clip_image`` (L2-normalised
``fixed_size_list<float32>[D]``) with ``media.clip_image_model``, and ``samples.clip_text``
(L2-normalised, null without text) with ``samples.clip_text_model``. A sample's image is
its first media.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake.plugin import RESULT_SCHEMA

IMAGE_VEC, IMAGE_MODEL = "clip_image", "clip_image_model"
TEXT_VEC, TEXT_MODEL = "clip_text", "clip_text_model"


# --------------------------------------------------------------------------- loading


def table_columns(lake: Any, table: str) -> set[str]:
    """Column names of ``table`` (empty when the table does not exist)."""
    return {f.name for f in lake.table(table).schema} if lake.exists(table) else set()


def read_samples(lake: Any, where: str | None, columns: list[str]) -> pa.Table:
    """The selected samples, reading only ``columns`` (``sample_id``, ``dataset`` added)."""
    cols = list(dict.fromkeys(["sample_id", "dataset", *columns]))
    return lake.dataset("samples").to_table(columns=cols, filter=where)


def first_media(samples: pa.Table) -> pa.Array:
    """First media id of every sample (null when it has none)."""
    lists = samples.column("media_ids").combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0)
    has = pc.greater(lengths, 0)
    safe = pc.if_else(has, lists, pa.scalar(["-"], lists.type))
    first = pc.list_element(safe, 0)
    return pc.if_else(has, first, pa.nulls(len(first), pa.string()))


def vector_matrix(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(valid mask, float32 matrix with zero rows where null) of a fixed-size-list column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_fixed_size_list(arr.type):
        dim = arr.type.list_size
    else:  # a variable list: take the first valid row's length
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        dim = int(lengths[valid][0]) if valid.any() else 0
    out = np.zeros((n, dim), dtype=np.float32)
    if valid.any():
        kept = arr.filter(pa.array(valid))
        flat = pc.list_flatten(kept).to_numpy(zero_copy_only=False).astype(np.float32)
        out[valid] = flat.reshape(-1, dim)
    return valid, out


def media_rows(lake: Any, columns: list[str], ids: pa.Array) -> tuple[pa.Table, np.ndarray]:
    """Media rows (``columns`` only) for ``ids``; returns (table, row index per id, -1 absent).

    Streamed in batches, each filtered as it arrives, so media that are not wanted never
    stay in memory (at a million media the whole table would not need to be held)."""
    cols = list(dict.fromkeys(["media_id", *columns]))
    wanted = pc.unique(ids.filter(pc.is_valid(ids)))
    dataset = lake.dataset("media")
    parts = [
        batch.filter(pc.is_in(batch.column("media_id"), value_set=wanted))
        for batch in dataset.to_batches(columns=cols)
    ]
    table = pa.Table.from_batches(parts) if parts else dataset.to_table(columns=cols, limit=0)
    idx = pc.index_in(ids, value_set=table.column("media_id").combine_chunks())
    return table, np.asarray(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def model_ids(*cols: pa.ChunkedArray | pa.Array | None) -> list[str]:
    """Distinct non-null model ids of some ``*_model`` columns."""
    found: set[str] = set()
    for col in cols:
        if col is not None:
            found.update(v for v in pc.unique(col).to_pylist() if v is not None)
    return sorted(found)


def image_embeddings(lake: Any, samples: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(valid mask, image matrix, models) of every sample's first media."""
    n = samples.num_rows
    if IMAGE_VEC not in table_columns(lake, "media"):
        return np.zeros(n, dtype=bool), np.zeros((n, 0), np.float32), []
    first = first_media(samples)
    cols = [IMAGE_VEC] + ([IMAGE_MODEL] if IMAGE_MODEL in table_columns(lake, "media") else [])
    media, idx = media_rows(lake, cols, first)
    mvalid, mvec = vector_matrix(media.column(IMAGE_VEC))
    valid = idx >= 0
    valid[valid] &= mvalid[idx[valid]]
    out = np.zeros((n, mvec.shape[1]), dtype=np.float32)
    out[valid] = mvec[idx[valid]]
    used = media.take(pa.array(np.unique(idx[valid]))) if valid.any() else media.slice(0, 0)
    models = model_ids(used.column(IMAGE_MODEL)) if IMAGE_MODEL in used.column_names else []
    return valid, out, models


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def by_dataset(samples: pa.Table) -> Iterable[tuple[str, np.ndarray]]:
    """(dataset, row indices) for each dataset in ``samples``."""
    ds = np.asarray(samples.column("dataset").to_pylist(), dtype=object)
    for name in sorted(set(ds.tolist())):
        yield name, np.flatnonzero(ds == name)


def result_table(
    ids: list[str],
    score: np.ndarray,
    flagged: np.ndarray,
    group: list[str | None] | None = None,
    detail: list[str | None] | None = None,
) -> pa.Table:
    """The per-sample result table (:data:`lake.plugin.RESULT_SCHEMA`)."""
    n = len(ids)
    return pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "score": pa.array(np.asarray(score, dtype=np.float32), pa.float32()),
            "flagged": pa.array(np.asarray(flagged, dtype=bool), pa.bool_()),
            "group": pa.array(group if group is not None else [None] * n, pa.string()),
            "detail": pa.array(detail if detail is not None else [None] * n, pa.string()),
        },
        schema=RESULT_SCHEMA,
    )


def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD); the scale never falls below 1e-6."""
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    return (x - med) / max(1.4826 * float(mad), 1e-6)


# --------------------------------------------------------------------------- partitions


def spherical_kmeans(
    x: np.ndarray,
    parts: int,
    memory_budget_mb: float,
    seed: int = 0,
    init: np.ndarray | None = None,
    iterations: int = 10,
) -> np.ndarray:
    """``parts`` unit centroids of the unit rows ``x`` (a coarse IVF quantiser), trained on a
    sample of 64 rows a centroid. ``init``: starting centroids (e.g. a vector index's), topped
    up with sampled rows to ``parts``; an empty cluster keeps its centroid."""
    n = len(x)
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(n, size=min(n, 64 * parts), replace=False))]
    start = np.zeros((0, x.shape[1]), np.float32) if init is None else normalise(init)
    extra = max(0, parts - len(start))
    seeds = sample[rng.choice(len(sample), size=min(extra, len(sample)), replace=False)]
    cent = np.concatenate([start, seeds]).astype(np.float32)
    block = max(1, int(memory_budget_mb * 2**20 / (8 * len(cent))))
    for _ in range(iterations):
        near = np.concatenate(
            [np.argmax(sample[a : a + block] @ cent.T, 1) for a in range(0, len(sample), block)]
        )
        # cluster sums by sorting (np.add.at on rows is ~10x slower)
        order = np.argsort(near, kind="stable")
        counts = np.bincount(near, minlength=len(cent))
        sums = cent.copy()  # an empty cluster keeps its centroid
        full = np.flatnonzero(counts)
        starts = (np.cumsum(counts) - counts)[full]
        sums[full] = np.add.reduceat(sample[order], starts, axis=0)
        cent = normalise(sums).astype(np.float32)
    return cent


def partition_plan(
    x: np.ndarray, centroids: np.ndarray, probes: int, memory_budget_mb: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows filed under their ``probes`` most similar centroids: (query rows ordered by their
    nearest centroid, their bounds per centroid, data rows ordered by each centroid they are
    filed under, their bounds; rows ascend inside each partition). Partition ``p`` searches
    ``q[qb[p]:qb[p+1]]`` against ``d[db[p]:db[p+1]]``; the n x centroids similarities go in
    blocks within the budget."""
    n, parts = len(x), len(centroids)
    probes = max(1, min(probes, parts))
    cent = np.ascontiguousarray(centroids, dtype=np.float32)
    block = max(1, int(memory_budget_mb * 2**20 / (8 * parts)))
    assign = np.empty((n, probes), np.int32)
    for a in range(0, n, block):
        s = x[a : a + block] @ cent.T
        at = np.arange(len(s))
        for p in range(probes):  # repeated argmax: ~100x faster than argpartition here
            best = np.argmax(s, 1)
            assign[a : a + block, p] = best
            s[at, best] = -np.inf
    return partition_members(assign, parts)


def partition_members(
    assign: np.ndarray, parts: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`partition_plan`'s result from ``assign`` (n x probes partition ids, nearest
    first): query rows by their nearest partition, data rows by every partition they are
    filed under, each with its bounds per partition."""
    primary = assign[:, 0]
    q_order = np.argsort(primary, kind="stable")
    q_bounds = np.searchsorted(primary[q_order], np.arange(parts + 1))
    flat = assign.ravel()
    d_order = np.argsort(flat, kind="stable")
    d_bounds = np.searchsorted(flat[d_order], np.arange(parts + 1))
    return q_order, q_bounds, d_order // assign.shape[1], d_bounds


def block_similarities(
    x: np.ndarray, queries: np.ndarray, data: np.ndarray, cell_bytes: int, memory_budget_mb: float
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(query rows, their similarities to every ``data`` row) in blocks of queries sized so
    that ``cell_bytes`` per similarity stays within ``memory_budget_mb``."""
    xd = x[data]
    step = max(1, int(memory_budget_mb * 2**20 / (cell_bytes * len(data))))
    for a in range(0, len(queries), step):
        qs = queries[a : a + step]
        yield qs, x[qs] @ xd.T


def nearest_rows(
    x: np.ndarray, k: int, probes: int, memory_budget_mb: float, exact_below: int, seed: int = 0
) -> np.ndarray:
    """Similarities (n x k, best first) of each unit row's ``k`` nearest other rows: exact in
    blocks up to ``exact_below`` rows, above it inside ``sqrt(n)`` k-means partitions
    (:func:`spherical_kmeans`, :func:`partition_plan`), each row searched in its nearest
    partition against the rows filed ``probes`` deep; memory within ``memory_budget_mb``.
    A row whose partition holds fewer than ``k`` others gets -1 for the missing ones."""
    n = len(x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.full((n, k), -1.0, np.float32)

    def search(queries: np.ndarray, data: np.ndarray) -> None:
        kk = min(k, len(data) - 1)
        if kk < 1:
            return
        for qs, sims in block_similarities(x, queries, data, 16, memory_budget_mb):
            c = np.minimum(np.searchsorted(data, qs), len(data) - 1)  # data rows ascend
            mine = data[c] == qs
            sims[np.flatnonzero(mine), c[mine]] = -np.inf
            top = -np.partition(-sims, kk - 1, 1)[:, :kk]
            out[qs, :kk] = -np.sort(-top, 1)

    if n <= max(exact_below, k + 1):
        search(np.arange(n), np.arange(n))
        return out
    cent = spherical_kmeans(x, max(1, int(np.sqrt(n))), memory_budget_mb, seed)
    q, qb, d, db = partition_plan(x, cent, probes, memory_budget_mb)
    for p in range(len(cent)):
        if qb[p + 1] > qb[p]:
            search(q[qb[p] : qb[p + 1]], d[db[p] : db[p + 1]])
    return out
