"""Check plugin ``duplicates``: exact and near duplicates, grouped around a representative.

Candidates come from perceptual-hash multi-index hashing (:func:`phash_pairs`) and embedding k-NN
(:func:`knn_pairs`, :func:`lance_knn_pairs`); thumbnails verify them
(:func:`thumb_stack`, :func:`thumb_similarity`); :func:`greedy_groups` builds the groups.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from functools import partial
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from lake.check import LocalPasses
from lake.errors import ConfigError
from lake.images import decode_image
from lake.plugin import Check
from plugins.checks.common import (
    IMAGE_VEC,
    block_similarities,
    by_dataset,
    first_media,
    image_embeddings,
    media_rows,
    normalise,
    partition_plan,
    read_samples,
    result_table,
    spherical_kmeans,
    table_columns,
    vector_matrix,
)

_MAX_KEY_BITS = 22  # widest block key: its dense count table is 2^22 int64 (32 MiB)


def _block_plan(
    n: int, radius: int, blocks: int | None = None
) -> list[tuple[int, int, int]] | None:
    """Blocks ``(bit offset, width, threshold)`` of multi-index hashing for ``n`` hashes within
    ``radius`` bits, or None when comparing all pairs is cheaper.

    Generalised pigeonhole: with blocks whose thresholds sum to at least ``radius - m + 1``,
    every pair within ``radius`` bits has some block within its threshold, so probing each
    block's keys within its threshold finds every pair. The plan minimises the estimated
    work on uniform hashes: ``probes x n`` table look-ups plus ``probes x n^2 / 2^(width+1)``
    candidates, against ``n^2 / 2`` for all pairs. ``blocks`` forces the number of blocks.
    """
    best: tuple[float, list[tuple[int, int, int]] | None] = (n * (n - 1) / 2.0, None)
    choices = range(3, max(3, min(radius + 1, 12)) + 1) if blocks is None else [blocks]
    if blocks is not None:
        best = (math.inf, None)
    for m in choices:
        widths = [64 // m + (1 if b < 64 % m else 0) for b in range(m)]
        if max(widths) > _MAX_KEY_BITS:
            continue
        total = max(0, radius - m + 1)
        thresholds = [total // m + (1 if b < total % m else 0) for b in range(m)]
        cost, offset, plan = 0.0, 0, []
        for w, t in zip(widths, thresholds, strict=True):
            probes = sum(math.comb(w, k) for k in range(t + 1))
            cost += probes * (n + n * n / 2.0 ** (w + 1))
            plan.append((offset, w, t))
            offset += w
        if cost < best[0]:
            best = (cost, plan)
    return best[1]


def _bit_masks(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit mask with at most ``radius`` bits set, fewest bits first."""
    masks = [0]
    for k in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in itertools.combinations(range(width), k)]
    return np.asarray(masks, dtype=np.int64)


def _block_dist(x: np.ndarray, offset: int, width: int) -> np.ndarray:
    """Hamming distance inside one block of the XORs ``x``."""
    return np.bitwise_count((x >> np.uint64(offset)) & np.uint64((1 << width) - 1))


def phash_pairs(
    hashes: np.ndarray,
    max_distance: int,
    memory_budget_mb: float | None = None,
    bucket_cap: int | None = None,
    blocks: int | None = None,
    max_per_item: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of 64-bit hashes within ``max_distance`` bits: (i, j, distance).

    Multi-index hashing (:func:`_block_plan`): per block, the hashes are sorted by the
    block's key once and a dense count table gives each key's run, so a probe (a key XOR a
    mask within the block's threshold) costs one look-up per hash; the candidates it finds
    are checked with the exact distance and those beyond ``max_distance`` are dropped as
    they are found, in chunks of at most ``memory_budget_mb`` (None: one chunk). A pair is
    kept only by the first block within its threshold, so no pair is reported twice and no
    global deduplication is needed. Small or wide searches compare all pairs in blocks.

    ``bucket_cap`` bounds degenerate input (many equal keys, e.g. blank images): within a
    run of equal keys each hash is compared with at most the next ``bucket_cap`` hashes, and
    a probe into a larger run reads only its first ``bucket_cap`` hashes; pairs in such
    runs may then be missed, never invented. None: no cap (exact). ``blocks`` forces the
    number of blocks (None: the cheapest plan, which may be all pairs).

    ``max_per_item`` keeps only the pairs among each hash's ``max_per_item`` nearest
    (:func:`nearest_per_item`; a pair stays when it is among either side's nearest), pruned
    whenever the found pairs outgrow ``memory_budget_mb``, so near-identical hashes (many
    pairs) never hold all their pairs at once. None: every pair.
    """
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, empty
    per_pair = 48  # bytes a candidate costs while it is checked (indices, XOR, distance, masks)
    chunk = max(1, int(memory_budget_mb * 2**20 / per_pair)) if memory_budget_mb else 1 << 62
    cap = int(bucket_cap) if bucket_cap else n
    plan = _block_plan(n, int(max_distance), blocks)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_d: list[np.ndarray] = []
    # a found pair costs 24 bytes, and ~100 more while it is pruned (both directions sorted)
    prune_at = [max(4 * n, chunk * per_pair // 128) if max_per_item else 0]
    held = [0]

    def prune() -> None:
        i, j, d = (np.concatenate(f) for f in (found_i, found_j, found_d))
        i, j, d = nearest_per_item(i, j, d, int(max_per_item or 0))
        found_i[:], found_j[:], found_d[:] = [i], [j], [d]
        held[0] = len(i)
        prune_at[0] = max(prune_at[0], 2 * held[0])  # what stays is bounded by n x k

    def keep(a: np.ndarray, b: np.ndarray, hs: np.ndarray, order: np.ndarray, k: int) -> None:
        x = hs[a] ^ hs[b]
        d = np.bitwise_count(x).astype(np.int64)
        ok = d <= max_distance
        if plan is not None:
            for off, w, t in plan[:k]:  # found by an earlier block already
                ok &= _block_dist(x, off, w) > t
        i, j = order[a[ok]], order[b[ok]]
        found_i.append(np.minimum(i, j))
        found_j.append(np.maximum(i, j))
        found_d.append(d[ok])
        held[0] += int(ok.sum())
        if prune_at[0] and held[0] > prune_at[0]:
            prune()

    if plan is None:  # all pairs, a block of rows at a time
        rows = max(1, min(n, chunk // n))
        ident = np.arange(n, dtype=np.int64)
        for a0 in range(0, n - 1, rows):
            a = np.arange(a0, min(a0 + rows, n - 1), dtype=np.int64)
            starts = a + 1
            counts = n - starts
            ra = np.repeat(a, counts)
            rb = np.arange(counts.sum(), dtype=np.int64) - np.repeat(
                np.cumsum(counts) - counts, counts
            )
            keep(ra, np.repeat(starts, counts) + rb, h, ident, 0)
    else:
        for k, (off, w, t) in enumerate(plan):
            key = ((h >> np.uint64(off)) & np.uint64((1 << w) - 1)).astype(np.int64)
            order = np.argsort(key, kind="stable")
            sk, hs = key[order], h[order]
            counts = np.bincount(sk, minlength=1 << w)
            starts = np.cumsum(counts) - counts
            pos = np.arange(n, dtype=np.int64)
            side: dict[int, np.ndarray] = {}  # highest bit of a mask -> hashes with it clear
            for p in _bit_masks(w, t).tolist():
                if p == 0:  # the same key: the next hashes of the run, at most cap of them
                    q, c, first = pos, np.minimum(starts[sk] + counts[sk] - pos - 1, cap), pos + 1
                else:  # the other key (each unordered pair from its smaller key's side)
                    top = p.bit_length() - 1
                    if top not in side:
                        side[top] = pos[(sk & (1 << top)) == 0]
                    q = side[top]
                    tk = sk[q] ^ p
                    c, first = np.minimum(counts[tk], cap), starts[tk]
                nz = np.flatnonzero(c)
                if not len(nz):
                    continue
                q, c, first = q[nz], c[nz], first[nz]
                ends = np.cumsum(c)
                lo = 0
                while lo < len(q):  # chunks of at most `chunk` candidates
                    base = ends[lo - 1] if lo else 0
                    hi = max(lo + 1, int(np.searchsorted(ends, base + chunk, "right")))
                    cc = c[lo:hi]
                    a = np.repeat(q[lo:hi], cc)
                    off_in = np.arange(cc.sum(), dtype=np.int64) - np.repeat(np.cumsum(cc) - cc, cc)
                    keep(a, np.repeat(first[lo:hi], cc) + off_in, hs, order, k)
                    lo = hi
    if not found_i:
        return empty, empty, empty
    if max_per_item:
        prune()
    i, j, d = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)
    srt = np.lexsort((j, i))
    return i[srt], j[srt], d[srt]


def nearest_per_item(
    i: np.ndarray, j: np.ndarray, d: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs (i, j, distance) among either side's ``k`` nearest partners (smaller
    distance first, then the smaller partner index): the same answer whether applied once or
    again after more pairs arrive, so the pair search can prune as it goes."""
    m = len(i)
    if m == 0 or k <= 0:
        return i[:0], j[:0], d[:0]
    a, b = np.concatenate([i, j]), np.concatenate([j, i])
    order = np.lexsort((b, np.concatenate([d, d]), a))
    a = a[order]
    rank = np.arange(2 * m) - np.searchsorted(a, a, "left")
    kept = np.zeros(m, dtype=bool)
    kept[order[rank < k] % m] = True
    return i[kept], j[kept], d[kept]


def knn_pairs(
    x: np.ndarray, min_cosine: float, k: int = 10, batch_size: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) among each row's ``k`` nearest rows with cosine >= ``min_cosine``.

    Exact search in batches of ``batch_size`` rows against the whole matrix (memory
    ``batch_size x n``). Returns (i, j, cosine).
    """
    n = len(x)
    if n < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    k = min(k, n - 1)
    found_i, found_j, found_s = [], [], []
    for a in range(0, n, batch_size):
        b = min(a + batch_size, n)
        sims = x[a:b] @ x.T
        sims[np.arange(b - a), np.arange(a, b)] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sims, top, axis=1)
        rows = np.repeat(np.arange(a, b), k)
        keep = s.ravel() >= min_cosine
        found_i.append(rows[keep])
        found_j.append(top.ravel()[keep])
        found_s.append(s.ravel()[keep])
    i, j, s = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    codes, first = np.unique(lo * n + hi, return_index=True)
    return codes // n, codes % n, s[first].astype(np.float32)


def unique_pairs(
    found_i: list[np.ndarray], found_j: list[np.ndarray], found_s: list[np.ndarray], n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Found (i, j, similarity) chunks of ``n`` items as unique pairs ``i < j`` (the first
    similarity of each pair kept)."""
    if not found_i:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    i, j, s = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    codes, first = np.unique(lo * n + hi, return_index=True)
    return codes // n, codes % n, s[first].astype(np.float32)


def ivf_knn_pairs(
    x: np.ndarray,
    centroids: np.ndarray,
    min_cosine: float,
    k: int,
    probes: int,
    memory_budget_mb: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`knn_pairs` for large ``n``: exact similarities inside IVF partitions.

    Each row is filed under its ``probes`` most similar ``centroids`` (:func:`partition_plan`)
    and searched, in its nearest partition, against every row filed there: a near duplicate
    is missed only when the two fall on different sides of a partition border more than
    ``probes`` deep. Work is about ``n x probes x n / len(centroids)`` dot products (float32
    BLAS, one gathered block of the partition's rows); only similarities >= ``min_cosine``
    leave a block (no sort of whole rows), and each row keeps its ``k`` best of them. Blocks
    of queries stay within ``memory_budget_mb`` (similarities, the threshold mask and the
    worst case of every entry passing it). Returns (i, j, cosine) like :func:`knn_pairs`.
    """
    n = len(x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    q, qb, d, db = partition_plan(x, normalise(centroids), probes, memory_budget_mb)
    found_i, found_j, found_s = [], [], []
    for p in range(len(centroids)):
        queries, data = q[qb[p] : qb[p + 1]], d[db[p] : db[p + 1]]
        if not len(queries) or len(data) < 2:
            continue
        for qs, sims in block_similarities(x, queries, data, 24, memory_budget_mb):
            r, c = np.nonzero(sims >= min_cosine)
            qi, dj, sv = qs[r], data[c], sims[r, c]
            other = qi != dj
            qi, dj, sv = qi[other], dj[other], sv[other]
            if len(qi) > k:  # keep each query's k best (qi ascends with r)
                order = np.lexsort((-sv, qi))
                qi, dj, sv = qi[order], dj[order], sv[order]
                rank = np.arange(len(qi)) - np.searchsorted(qi, qi, "left")
                best = rank < k
                qi, dj, sv = qi[best], dj[best], sv[best]
            found_i.append(qi)
            found_j.append(dj)
            found_s.append(sv)
    return unique_pairs(found_i, found_j, found_s, n)


def partitioned_knn_pairs(
    x: np.ndarray,
    min_cosine: float,
    k: int,
    probes: int,
    memory_budget_mb: float,
    seed: int = 0,
    centroids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`ivf_knn_pairs` inside ``sqrt(n)`` partitions: a spherical k-means on a sample
    (:func:`spherical_kmeans`), started from ``centroids`` when given (a vector index's IVF
    centroids, :func:`index_centroids`; topped up to ``sqrt(n)`` when the index has fewer,
    since work grows with partition size). Small inputs use exact :func:`knn_pairs`."""
    n = len(x)
    parts = max(1, int(np.sqrt(n)))
    if n < 2 or parts < 4:
        return knn_pairs(x, min_cosine, k, max(1, int(memory_budget_mb * 2**20 / (16 * n))))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if centroids is not None and len(centroids) >= parts:
        cent = np.asarray(centroids, np.float32)
    else:
        cent = spherical_kmeans(x, parts, memory_budget_mb, seed, centroids)
    return ivf_knn_pairs(x, cent, min_cosine, k, probes, memory_budget_mb)


def index_centroids(lake: Any, column: str = IMAGE_VEC) -> np.ndarray | None:
    """The IVF centroids of the lake's vector index on ``media.<column>`` (built by the CLIP
    enricher's ``build_index``), or None when there is none."""
    if column not in table_columns(lake, "media"):
        return None
    try:
        cent = lake.dataset("media").centroids(column=column)
    except (KeyError, ValueError):  # no IVF index on the column
        return None
    if cent is None or not len(cent):
        return None
    if isinstance(cent, pa.ChunkedArray):
        cent = cent.combine_chunks()
    if isinstance(cent, pa.Array):
        return vector_matrix(cent)[1]
    return np.asarray(cent, np.float32)


def lance_knn_pairs(
    lake: Any,
    media_ids: list[str],
    x: np.ndarray,
    min_cosine: float,
    k: int = 10,
    nprobes: int = 64,
    refine_factor: int = 10,
    batch_size: int = 256,
    queries: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`knn_pairs`, through LanceDB vector search on ``media.clip_image``.

    Used for large selections. With a vector index (IVF_PQ), recall depends on
    ``nprobes`` and ``refine_factor`` (see DESIGN.md: measure against exact search when
    choosing them); without one, LanceDB searches exactly. Neighbours outside
    ``media_ids`` (other datasets) are dropped, so ``2k + 1`` neighbours are asked for.
    ``queries``: the rows searched from (None: all; a sample measures recall and time).
    """
    n = len(media_ids)
    where = {m: i for i, m in enumerate(media_ids)}
    tbl = lake.table("media")
    rows = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    found_i, found_j, found_s = [], [], []
    for a in range(0, len(rows), batch_size):
        b = min(a + batch_size, len(rows))
        query = (
            tbl.search(list(x[rows[a:b]].astype(np.float32)), vector_column_name=IMAGE_VEC)
            .distance_type("cosine")
            .limit(2 * k + 1)
            .nprobes(nprobes)
            .refine_factor(refine_factor)
            .select(["media_id", "_distance"])
        )
        res = query.to_arrow()
        qi = rows[res.column("query_index").to_numpy() + a]
        js = np.array([where.get(m, -1) for m in res.column("media_id").to_pylist()])
        cos = 1.0 - res.column("_distance").to_numpy(zero_copy_only=False)
        keep = (js >= 0) & (js != qi) & (cos >= min_cosine)
        found_i.append(qi[keep])
        found_j.append(js[keep])
        found_s.append(cos[keep])
    return unique_pairs(found_i, found_j, found_s, n)


def thumb_views(
    scales: Iterable[float], anchors: Iterable[float]
) -> list[tuple[float, float, float]]:
    """(scale, x anchor, y anchor) of each view: the whole image first, then each zoom
    ``s < 1`` with its window placed at each anchor of the slack ``1 - s`` (0 left/top, 0.5
    centred, 1 right/bottom): the inverse of a crop taken there."""
    zooms = sorted({float(s) for s in scales if float(s) < 1.0}, reverse=True)
    places = [float(a) for a in anchors]
    return [(1.0, 0.5, 0.5)] + [(s, ax, ay) for s in zooms for ay in places for ax in places]


def thumb_stack(
    blobs: list[bytes | None], size: int, scales: Iterable[float], anchors: Iterable[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Decode each thumbnail once into small RGB views: uint8 ``n x views x 3 x size x size``
    (3 KB a media with conf/check/default.yaml's settings), and ok.

    The views are :func:`thumb_views`: view 0 the whole image, the others zoomed windows
    (the inverse of a crop) of the upright picture (:func:`lake.images.decode_image`), each
    resampled to ``size x size`` with PIL's antialiased
    bilinear filter (a low-pass that removes JPEG block noise and sub-pixel misalignment;
    full-resolution decode, since JPEG draft decoding adds its own error); ``ok`` is False
    for missing or undecodable ones.
    """
    views = thumb_views(scales, anchors)
    out = np.zeros((len(blobs), len(views), 3, size, size), np.uint8)
    ok = np.zeros(len(blobs), dtype=bool)
    for r, blob in enumerate(blobs):
        if not blob:
            continue
        try:
            rgb = decode_image(blob)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        w, h = rgb.size
        for k, (s, ax, ay) in enumerate(views):
            x0, y0 = w * (1 - s) * ax, h * (1 - s) * ay
            box = (x0, y0, x0 + w * s, y0 + h * s)
            view = rgb.resize((size, size), Image.Resampling.BILINEAR, box=box)
            out[r, k] = np.asarray(view, np.uint8).transpose(2, 0, 1)
        ok[r] = True
    return out, ok


def thumb_views_batch(
    rows: pa.Table, size: int, scales: Iterable[float], anchors: Iterable[float]
) -> pa.Table:
    """:func:`thumb_stack` as a batch function (``media_id``, ``thumb`` in): ``media_id``,
    ``views`` (the row's uint8 views as bytes) and ``ok`` out."""
    views, ok = thumb_stack(rows.column("thumb").to_pylist(), size, scales, anchors)
    return pa.table(
        {
            "media_id": rows.column("media_id"),
            "views": pa.array([v.tobytes() for v in views], pa.large_binary()),
            "ok": pa.array(ok, pa.bool_()),
        }
    )


def thumb_similarity(
    views: np.ndarray, i: np.ndarray, j: np.ndarray, batch_size: int = 4096
) -> np.ndarray:
    """Best concordance of the pairs' thumbnail views, over zooms of either side.

    For each pair, each zoom of one image is compared with the other's full view by Lin's
    concordance correlation over the RGB pixels, ``1 - E[(a - b)^2] / (var a + var b +
    (mean a - mean b)^2)`` (per channel, pooled): 1 for identical pictures, near 1 after
    re-encoding (small pixel noise) or a centred crop (matched by the zoom), and unlike a
    plain correlation it drops when colours or brightness change. The denominator never falls
    below 1 (grey level squared), so two flat images score low unless they are equal.
    """
    n, k, c, s, _ = views.shape
    flat = views.reshape(n, k, c, s * s)  # uint8 (or float): cast per batch
    mu = np.zeros((n, k, c), np.float32)
    sq = np.zeros((n, k, c), np.float32)
    for a in range(0, n, batch_size):
        part = flat[a : a + batch_size].astype(np.float32)
        mu[a : a + batch_size], sq[a : a + batch_size] = part.mean(-1), (part * part).mean(-1)
    best = np.full(len(i), -np.inf, dtype=np.float32)
    for a in range(0, len(i), batch_size):
        ii, jj = np.asarray(i[a : a + batch_size]), np.asarray(j[a : a + batch_size])
        for x, y in ((ii, jj), (jj, ii)):
            # zooms of x against the full view of y
            fx, fy = flat[x].astype(np.float32), flat[y, 0].astype(np.float32)
            cross = np.einsum("pkcl,pcl->pkc", fx, fy) / (s * s)
            ma, mb = mu[x], mu[y, 0][:, None]
            ea, eb = sq[x], sq[y, 0][:, None]
            err = (ea + eb - 2 * cross).mean(-1)
            spread = (ea - ma**2 + eb - mb**2 + (ma - mb) ** 2).mean(-1)
            ccc = 1.0 - err / np.maximum(spread, 1.0)
            best[a : a + batch_size] = np.maximum(best[a : a + batch_size], ccc.max(1))
    return best


def greedy_groups(
    n: int,
    edges: list[tuple[int, int, float, int]],
    order_key: list[Any],
    complete: bool = True,
) -> tuple[np.ndarray, dict[int, float]]:
    """Groups around representatives from candidate edges; never connected components.

    ``edges`` are ``(u, v, similarity, rank)``; they are taken strongest first (rank, then
    similarity). Two ungrouped items found together start a group whose representative is
    the one with the smaller ``order_key``. An ungrouped item joins an existing group only
    when it has a direct edge to the group's representative and, with ``complete``, to
    every member too, so a chain a~b~c never puts a and c together. Groups never merge.
    Returns (representative per item, -1 when ungrouped; similarity of each member to its
    representative).
    """
    rep = np.full(n, -1, dtype=np.int64)
    members: dict[int, list[int]] = {}
    sim_of: dict[tuple[int, int], float] = {}
    for u, v, s, _ in edges:
        key = (min(u, v), max(u, v))
        sim_of[key] = max(s, sim_of.get(key, -np.inf))
    to_rep: dict[int, float] = {}

    def linked(a: int, b: int) -> bool:
        return (min(a, b), max(a, b)) in sim_of

    for u, v, _, _ in sorted(edges, key=lambda e: (-e[3], -e[2], min(e[0], e[1]), max(e[0], e[1]))):
        if rep[u] == -1 and rep[v] == -1:
            r, m = (u, v) if order_key[u] <= order_key[v] else (v, u)
            rep[r] = rep[m] = r
            members[r] = [r, m]
            to_rep[m] = sim_of[(min(r, m), max(r, m))]
            continue
        if rep[u] != -1 and rep[v] != -1:
            continue
        new, grouped = (v, u) if rep[v] == -1 else (u, v)
        r = int(rep[grouped])
        if not linked(r, new):
            continue
        if complete and not all(linked(x, new) for x in members[r]):
            continue
        rep[new] = r
        members[r].append(new)
        to_rep[new] = sim_of[(min(r, new), max(r, new))]
    return rep, to_rep


class Duplicates(Check):
    """Exact and near duplicates, reported as groups around a representative.

    Within each dataset:

    - exact duplicates: samples whose first media is the same ``media_id`` (same bytes);
    - near duplicates between distinct media, in two stages. Candidates, never all pairs:
      perceptual-hash Hamming distance <= ``candidate_distance`` (multi-index hashing within
      ``memory_budget_mb``, runs of equal keys capped at ``bucket_cap``, each media kept
      to its ``max_candidates_per_media`` nearest hashes, see :func:`phash_pairs`) and
      each media's ``knn`` nearest embeddings with cosine >=
      ``candidate_cosine`` (exact search in batches within ``memory_budget_mb``; above
      ``ann_above`` distinct media, ``ann: index`` searches exactly inside partitions
      started from the IVF centroids of the lake's vector index (:func:`index_centroids`,
      :func:`partitioned_knn_pairs`, ``partition_probes`` deep), ``ann: partitioned`` the
      same from a k-means of its own, ``ann: lance`` one LanceDB index query per media with
      ``nprobes`` / ``refine_factor``). Verification,
      when both media have a decodable ``media.thumb``: the thumbnails, decoded once per
      run to ``thumb_size`` px RGB views at the zooms ``thumb_scales``, must reach a
      concordance >= ``thumb_min_similarity`` (:func:`thumb_similarity`). Hashes and
      embeddings only say "looks alike" (synthetic scenes with the same shape, colour and
      background at another position share both); the pixels say "same picture".
    - pairs without thumbnails keep the unverified rules: Hamming distance <=
      ``phash_max_distance`` confirmed by an image-embedding cosine >= ``phash_min_cosine``
      when both have embeddings (null: trust the hash alone), or cosine >= ``min_cosine``
      alone. ``thumb_min_similarity: null`` applies these rules to every pair.

    Groups are built greedily around a representative (:func:`greedy_groups`), never as
    connected components. Per sample: ``group`` = the representative's ``sample_id``,
    ``score`` = similarity to the representative (1 for the same bytes, the thumbnail
    concordance when verified, else the cosine when embeddings exist, else
    ``1 - distance/64``; ungrouped samples score their best accepted link, else 0), flagged for
    every member except the representative.
    """

    name: ClassVar[str] = "duplicates"
    version: ClassVar[str] = "0.2.0"
    has_groups: ClassVar[bool] = True
    # where the thumbnail pass runs (executor=ray swaps in lake.ray_check.RayPasses)
    passes: Any = LocalPasses()

    def __init__(
        self,
        *,
        phash_max_distance: int,
        phash_min_cosine: float | None,
        min_cosine: float | None,
        knn: int,
        memory_budget_mb: float,
        bucket_cap: int,
        max_candidates_per_media: int,
        complete_link: bool,
        ann_above: int,
        ann: str,
        partition_probes: int,
        nprobes: int,
        refine_factor: int,
        candidate_distance: int,
        candidate_cosine: float,
        thumb_min_similarity: float | None,
        thumb_size: int,
        thumb_scales: Iterable[float],
        thumb_anchors: Iterable[float],
        batch_size: int = 2048,
        report_groups: int = 200,
    ) -> None:
        self.thumb_anchors = tuple(float(x) for x in thumb_anchors)
        self.candidate_distance = int(candidate_distance)
        self.candidate_cosine = float(candidate_cosine)
        self.thumb_min_similarity = (
            None if thumb_min_similarity is None else float(thumb_min_similarity)
        )
        self.thumb_size = int(thumb_size)
        self.thumb_scales = tuple(float(x) for x in thumb_scales)
        self.phash_max_distance = int(phash_max_distance)
        self.phash_min_cosine = None if phash_min_cosine is None else float(phash_min_cosine)
        self.min_cosine = None if min_cosine is None else float(min_cosine)
        self.knn = int(knn)
        self.memory_budget_mb = float(memory_budget_mb)
        self.bucket_cap = int(bucket_cap)
        self.max_candidates_per_media = int(max_candidates_per_media)
        self.complete_link = bool(complete_link)
        self.batch_size = int(batch_size)
        self.report_groups = int(report_groups)
        self.ann_above = int(ann_above)
        if ann not in ("index", "partitioned", "lance"):
            raise ConfigError(
                f"check.checks.duplicates.ann: {ann!r} is not index, partitioned or lance"
            )
        self.ann = ann
        self.partition_probes = int(partition_probes)
        self.nprobes = int(nprobes)
        self.refine_factor = int(refine_factor)

    def thresholds(self) -> dict[str, Any]:
        """Settings recorded in the summary and the report."""
        return {
            "phash_max_distance": self.phash_max_distance,
            "phash_min_cosine": self.phash_min_cosine,
            "min_cosine": self.min_cosine,
            "knn": self.knn,
            "memory_budget_mb": self.memory_budget_mb,
            "bucket_cap": self.bucket_cap,
            "max_candidates_per_media": self.max_candidates_per_media,
            "complete_link": self.complete_link,
            "ann_above": self.ann_above,
            "ann": self.ann,
            "partition_probes": self.partition_probes,
            "candidate_distance": self.candidate_distance,
            "candidate_cosine": self.candidate_cosine,
            "thumb_min_similarity": self.thumb_min_similarity,
            "thumb_size": self.thumb_size,
            "thumb_scales": list(self.thumb_scales),
            "thumb_anchors": list(self.thumb_anchors),
        }

    def run(self, lake: Any, where: str | None = None) -> tuple[pa.Table, dict[str, Any]]:
        """Group the selected samples' duplicates."""
        samples = read_samples(lake, where, ["media_ids", "source_uri"])
        first = first_media(samples)
        media, idx = media_rows(lake, ["phash"], first)
        valid, img, models = image_embeddings(lake, samples)
        pcol = media.column("phash")
        phash = pc.fill_null(pcol, 0).to_numpy(zero_copy_only=False).astype(np.uint64)
        hvalid = np.asarray(pcol.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        ids_all = samples.column("sample_id").to_pylist()
        uris = samples.column("source_uri").to_pylist()
        first_l = first.to_pylist()
        out_ids: list[str] = []
        scores: list[float] = []
        flags: list[bool] = []
        groups: list[str | None] = []
        details: list[str | None] = []
        report: list[dict[str, Any]] = []
        n_groups = n_exact = n_near = 0
        for _, rows in by_dataset(samples):
            rows = rows[idx[rows] >= 0]
            if not len(rows):
                continue
            # units: samples sharing the same media (same bytes)
            by_media: dict[str, list[int]] = {}
            for r in sorted(rows.tolist(), key=lambda r: (uris[r] or "", ids_all[r])):
                by_media.setdefault(first_l[r], []).append(r)
            units = list(by_media.values())
            head = np.array([u[0] for u in units])
            order_key = [(-len(u), uris[u[0]] or "", ids_all[u[0]]) for u in units]
            edges = self._edges(
                phash[idx[head]], hvalid[idx[head]], valid[head], img[head], first_l, head, lake
            )
            rep, to_rep = greedy_groups(len(units), edges, order_key, self.complete_link)
            kind = {(min(u, v), max(u, v)): k for u, v, _, k in edges}
            grouped_units: dict[int, list[int]] = {}
            for u in range(len(units)):
                if rep[u] != -1 or len(units[u]) > 1:
                    grouped_units.setdefault(int(rep[u]) if rep[u] != -1 else u, []).append(u)
            in_group = np.zeros(len(units), bool)
            for r_unit, member_units in grouped_units.items():
                rep_sample = units[r_unit][0]
                gid = ids_all[rep_sample]
                entry = {"group": gid, "representative": uris[rep_sample], "members": []}
                near_here = False
                for u in sorted(member_units, key=lambda u: u != r_unit):
                    in_group[u] = True
                    for pos, s in enumerate(units[u]):
                        is_rep = u == r_unit and pos == 0
                        if u == r_unit:
                            sc, det = 1.0, None if is_rep else "exact: same media"
                        else:
                            near_here = True
                            sc = float(to_rep[u])
                            k = kind[(min(u, r_unit), max(u, r_unit))]
                            det = f"near ({self._kind_name(k)}) {sc:.3f}"
                            if pos:
                                det += ", exact copy of a member"
                        out_ids.append(ids_all[s])
                        scores.append(sc)
                        flags.append(not is_rep)
                        groups.append(gid)
                        details.append("representative" if is_rep else det)
                        if not is_rep:
                            entry["members"].append(
                                {"sample": uris[s], "score": round(sc, 4), "detail": det}
                            )
                n_groups += 1
                n_near += near_here
                n_exact += not near_here
                if len(report) < self.report_groups:
                    report.append(entry)
            best = self._best(len(units), edges)
            for u in np.flatnonzero(~in_group):
                s = units[u][0]
                out_ids.append(ids_all[s])
                scores.append(best.get(int(u), 0.0))
                flags.append(False)
                groups.append(None)
                details.append(None)
        score = np.asarray(scores, dtype=np.float32)
        flagged = np.asarray(flags, dtype=bool)
        result = result_table(out_ids, score, flagged, groups, details)
        return result, {
            "check": self.name,
            "thresholds": self.thresholds(),
            "scored": len(out_ids),
            "flagged": int(flagged.sum()),
            "groups": n_groups,
            "exact_groups": n_exact,
            "near_groups": n_near,
            "models": {"image": models},
            "fallbacks": self._fallbacks(lake, len(out_ids), int(valid.sum())),
            "group_list": report,
        }

    def _fallbacks(self, lake: Any, scored: int, embedded: int) -> list[str]:
        """What this run could not use, and what it used instead."""
        out: list[str] = []
        if scored and not embedded and (self.min_cosine or self.phash_min_cosine):
            out.append(
                "no image embeddings (run lakeloom enrich enrich=clip): near duplicates "
                "by perceptual hash only, semantic copies not searched"
            )
        if embedded > self.ann_above and self.ann == "index" and index_centroids(lake) is None:
            out.append(
                "no vector index on media.clip_image: k-means partitions trained here "
                "(lakeloom enrich enrich=clip builds the index)"
            )
        verify = self.thumb_min_similarity is not None
        if scored and verify and "thumb" not in table_columns(lake, "media"):
            out.append("no thumbnails: near-duplicate pairs unverified (hash/cosine rules)")
        return out

    @staticmethod
    def _kind_name(rank: int) -> str:
        return {3: "thumbnail", 2: "phash+cosine", 1: "phash", 0: "cosine"}.get(rank, "?")

    @staticmethod
    def _best(n: int, edges: list[tuple[int, int, float, int]]) -> dict[int, float]:
        best: dict[int, float] = {}
        for u, v, s, _ in edges:
            best[u] = max(best.get(u, 0.0), s)
            best[v] = max(best.get(v, 0.0), s)
        return best

    def _thumbs(self, lake: Any, media_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Views (:func:`thumb_stack`) of ``media_ids``' thumbnails, each decoded once: the
        check's heavy pass, run through ``self.passes`` (here, or a Ray Data stage)."""
        n = len(media_ids)
        if (
            self.thumb_min_similarity is None
            or not n
            or "thumb" not in table_columns(lake, "media")
        ):
            return np.zeros((n, 0, 3, 0, 0), np.uint8), np.zeros(n, dtype=bool)
        fn = partial(
            thumb_views_batch,
            size=self.thumb_size,
            scales=self.thumb_scales,
            anchors=self.thumb_anchors,
        )
        out = self.passes.map_rows(
            lake, "media", ["media_id", "thumb"], "media_id", media_ids, fn, "thumbs"
        )
        ids = pa.array(media_ids, pa.string())
        at = pc.index_in(ids, value_set=out.column("media_id").combine_chunks())
        at = np.asarray(pc.fill_null(at, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        shape = (len(thumb_views(self.thumb_scales, self.thumb_anchors)), 3, self.thumb_size)
        views = np.zeros((n, *shape, self.thumb_size), np.uint8)
        ok = np.zeros(n, dtype=bool)
        col = out.column("views").combine_chunks().cast(pa.large_binary())
        flags = np.asarray(
            pc.fill_null(out.column("ok"), False).to_numpy(zero_copy_only=False), dtype=bool
        )
        # every row's views have the same size: read them straight from the Arrow buffer
        offs = np.frombuffer(col.buffers()[1], np.int64)[col.offset : col.offset + len(col) + 1]
        data = np.frombuffer(col.buffers()[2], np.uint8) if len(col) else np.zeros(0, np.uint8)
        size = int(np.prod(views.shape[1:]))
        good = np.flatnonzero(at >= 0)
        good = good[flags[at[good]] & (np.diff(offs)[at[good]] == size)]
        for a in range(0, len(good), 4096):  # bounded gathers
            r = good[a : a + 4096]
            pick = offs[at[r]][:, None] + np.arange(size)
            views[r] = data[pick].reshape(len(r), *views.shape[1:])
        ok[good] = True
        return views, ok

    def _edges(
        self,
        hashes: np.ndarray,
        has_hash: np.ndarray,
        has_vec: np.ndarray,
        vecs: np.ndarray,
        media: list[str | None],
        head: np.ndarray,
        lake: Any,
    ) -> list[tuple[int, int, float, int]]:
        """Edges (u, v, similarity, rank) between units (distinct media), verified if possible.

        Candidates stay numpy arrays (codes ``u * n + v``, u < v), each media's phash
        candidates capped to its ``max_candidates_per_media`` nearest; only accepted edges
        become Python tuples."""
        verify = self.thumb_min_similarity is not None
        n = len(hashes)
        keep = np.flatnonzero(has_hash)
        max_d = max(self.phash_max_distance, self.candidate_distance if verify else 0)
        i, j, hd = phash_pairs(
            hashes[keep], max_d, self.memory_budget_mb, self.bucket_cap,
            max_per_item=self.max_candidates_per_media,
        )  # fmt: skip
        hcodes = keep[i] * n + keep[j]
        ccodes, ccos = np.zeros(0, np.int64), np.zeros(0, np.float32)
        floors = [
            c for c in (self.min_cosine, self.candidate_cosine if verify else None) if c is not None
        ]
        if floors and has_vec.sum() >= 2:
            rows = np.flatnonzero(has_vec)
            if len(rows) > self.ann_above and self.ann in ("index", "partitioned"):
                cent = index_centroids(lake) if self.ann == "index" else None
                a, b, c = partitioned_knn_pairs(
                    vecs[rows], min(floors), self.knn, self.partition_probes,
                    self.memory_budget_mb, centroids=cent,
                )  # fmt: skip
            elif len(rows) > self.ann_above:
                mids = [str(media[int(h)]) for h in head[rows]]
                a, b, c = lance_knn_pairs(
                    lake, mids, vecs[rows], min(floors), self.knn, self.nprobes,
                    self.refine_factor,
                )  # fmt: skip
            else:
                # a block of batch x n similarities costs ~16 bytes an entry (argpartition)
                fit = int(self.memory_budget_mb * 2**20 / (16 * len(rows)))
                batch = max(1, min(self.batch_size, fit))
                a, b, c = knn_pairs(vecs[rows], min(floors), self.knn, batch)
            x, y = rows[a], rows[b]
            ccodes, ccos = np.minimum(x, y) * n + np.maximum(x, y), c
        codes = np.union1d(hcodes, ccodes)
        if not len(codes):
            return []
        dist = np.full(len(codes), -1, dtype=np.int64)
        dist[np.searchsorted(codes, hcodes)] = hd
        cknown = np.full(len(codes), np.nan, dtype=np.float64)
        cknown[np.searchsorted(codes, ccodes)] = ccos
        u, v = codes // n, codes % n
        both = has_vec[u] & has_vec[v]
        # verification by thumbnails: decode only the media that have a candidate
        units = np.unique(np.concatenate([u, v]))
        views, ok = self._thumbs(lake, [str(media[int(h)]) for h in head[units]])
        slot = np.full(n, -1, dtype=np.int64)
        slot[units] = np.arange(len(units))
        checked = verify & ok[slot[u]] & ok[slot[v]]
        rank = np.full(len(codes), -1, dtype=np.int64)
        score = np.zeros(len(codes), dtype=np.float64)
        if checked.any():  # every such candidate: the thumbnails decide
            # a pair costs ~4 float32 copies of one side's views while it is compared
            per_pair = 16 * max(1, int(np.prod(views.shape[1:])))
            batch = max(1, int(self.memory_budget_mb * 2**20 / per_pair))
            at = np.flatnonzero(checked)
            sim = thumb_similarity(views, slot[u[at]], slot[v[at]], batch)
            good = sim >= self.thumb_min_similarity
            rank[at[good]], score[at[good]] = 3, sim[good]
        del views
        rest = ~checked
        near = rest & (dist >= 0) & (dist <= self.phash_max_distance)
        if self.phash_min_cosine is not None:
            ask = np.flatnonzero(near & both)
            cos = np.zeros(len(ask), dtype=vecs.dtype)  # compared in float32, as it was
            step = max(1, int(self.memory_budget_mb * 2**20 / (8 * max(1, vecs.shape[-1]) * 4)))
            for a in range(0, len(ask), step):  # row gathers within the budget
                p = ask[a : a + step]
                cos[a : a + step] = np.einsum("ij,ij->i", vecs[u[p]], vecs[v[p]])
            conf = cos >= self.phash_min_cosine
            rank[ask[conf]], score[ask[conf]] = 2, cos[conf]
            alone = near & ~both
        else:
            alone = near
        rank[alone], score[alone] = 1, 1.0 - dist[alone] / 64.0
        if self.min_cosine is not None:
            sem = rest & (rank == -1) & ~np.isnan(cknown) & (cknown >= self.min_cosine)
            rank[sem], score[sem] = 0, cknown[sem]
        at = np.flatnonzero(rank >= 0)
        return list(
            zip(u[at].tolist(), v[at].tolist(), score[at].tolist(), rank[at].tolist(), strict=True)
        )
