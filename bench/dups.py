"""Near-duplicate hash pairs at scale: the check's pair finder, the libraries, the old banding.

Hashes: N uniform random 64-bit values; 1 % of them are replaced by a copy of another
(never copied) hash with 0..8 distinct random bits flipped (uniform), the planted pairs.
Each (method, N) runs in its own process, so its peak RSS (``ru_maxrss``) is its own.

Methods (all asked for every pair within 8 bits):

- ``banding``: the duplicates check's former ``phash_pairs`` (4 bands of 16 bits, 1-bit
  probes, ``np.unique``), copied here as the baseline; skipped above 200k (500k took 270 s
  and 9.3 GiB in PERF.md, 1M does not fit);
- ``mih``: ``plugins.checks.duplicates.phash_pairs`` (multi-index hashing in numpy, the
  check's memory budget and bucket cap from conf/check/default.yaml);
- ``faiss_multihash``: faiss ``IndexBinaryMultiHash`` (3 tables of 21 bits, 2-bit flips:
  exact within 8 bits by pigeonhole), ``range_search``;
- ``faiss_hash``: faiss ``IndexBinaryHash`` (one 16-bit table, 1-bit flips);
- ``usearch``: usearch HNSW ``Index(ndim=64, metric="hamming", dtype="b1")``, 10 neighbours
  per hash, kept when within 8 bits;
- ``faiss_flat``: faiss ``IndexBinaryFlat`` range search (exact) for a sample of 2,000
  queries, extrapolated to all N (marked ``~``).

The embedding pass (``--methods clip_exact,clip_lance``): N clustered 512-d unit vectors
with 1 % planted copies at cosine ~0.98; ``clip_exact`` is the check's blocked exact
``knn_pairs`` within its memory budget, ``clip_partitioned_old`` the former partitioned
search (copied here as the baseline: argpartition of whole rows), ``clip_partitioned`` the
check's ``ann: partitioned`` (``partitioned_knn_pairs``, own k-means), ``clip_index`` its
default ``ann: index``: partitions started from the IVF centroids that the enricher's
``build_index`` trains (Lance's k-means, trained here in ``ivf_train_s``, not counted: the
enricher pays it), topped up to sqrt(N) (``recall_vs_exact``: share of the pairs above
``candidate_cosine`` among 1,000 sampled rows' exact 10 nearest that it finds), and
``clip_lance`` builds the enricher's IVF_PQ index (``plugins.clip_embed.build_index``)
and runs ``lance_knn_pairs`` for 1,000 sampled queries
(time = build + extrapolated search; ``recall_at_10`` against exact search on 200 of them).

Recall: share of planted pairs found. Growth: the exponent of seconds between sizes
(1 = linear, 2 = quadratic). Other processes share this machine's cores: figures are
noisy, compare ratios within one run.

    .venv/bin/python bench/dups.py                       # quick: 100k, 300k
    .venv/bin/python bench/dups.py --sizes 100000,300000,1000000,3000000
    .venv/bin/python bench/dups.py --sizes 100000 --methods clip_exact,clip_partitioned,clip_lance
    python bench/dups.py --sizes 1000000 --methods check_caption,check_outliers,check_labels

The other checks at scale (``--methods check_caption,check_outliers,check_labels``,
:func:`run_check`): their cores on N synthetic vectors, labels and caption vectors (the
recall column is not theirs: 1.0).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RADIUS = 8
METHODS = ["banding", "mih", "faiss_multihash", "faiss_hash", "usearch", "faiss_flat"]
CHECK_METHODS = ["check_caption", "check_outliers", "check_labels"]
CLIP_METHODS = [
    "clip_exact",
    "clip_partitioned_old",
    "clip_partitioned",
    "clip_index",
    "clip_lance",
]
BANDING_MAX = 200_000


def planted(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random hashes with 1 % planted near copies: (hashes, source index, copy index)."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    m = n // 100
    idx = rng.permutation(n)
    src, dst = idx[:m], idx[m : 2 * m]
    flips = rng.integers(0, RADIUS + 1, size=m)
    noise = np.zeros(m, np.uint64)
    for r in range(m):
        for b in rng.choice(64, size=int(flips[r]), replace=False):
            noise[r] |= np.uint64(1) << np.uint64(int(b))
    h[dst] = h[src] ^ noise
    return h, src, dst


def banding_pairs(hashes: np.ndarray, max_distance: int, bands: int = 4, probe_radius: int = 1):
    """The check's former ``phash_pairs`` (banding + ``np.unique``), kept as the baseline."""

    def match(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        lo = np.searchsorted(sk, query, "left")
        hi = np.searchsorted(sk, query, "right")
        counts = hi - lo
        i = np.repeat(np.arange(len(query)), counts)
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
        return i, order[starts + np.arange(counts.sum())]

    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    width = 64 // bands
    mask = np.uint64((1 << width) - 1)
    found = []
    for b in range(bands):
        key = (h >> np.uint64(b * width)) & mask
        probes = [np.uint64(0)]
        if probe_radius >= 1:
            probes += [np.uint64(1 << k) for k in range(width)]
        for p in probes:
            i, j = match(key, key ^ p)
            keep = i < j
            found.append(i[keep].astype(np.int64) * n + j[keep])
    codes = np.unique(np.concatenate(found))
    i, j = codes // n, codes % n
    dist = np.bitwise_count(h[i] ^ h[j]).astype(np.int64)
    keep = dist <= max_distance
    return i[keep], j[keep], dist[keep]


def packed(h: np.ndarray) -> np.ndarray:
    """Hashes as n x 8 uint8 (the libraries' binary code layout)."""
    return np.ascontiguousarray(h.astype("<u8")).view(np.uint8).reshape(-1, 8)


def faiss_range(index, codes: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query row, found row) pairs within RADIUS bits (faiss keeps distances < radius)."""
    index.add(codes)
    lims, _, found = index.range_search(queries, RADIUS + 1)
    rows = np.repeat(np.arange(len(queries)), np.diff(lims.astype(np.int64)))
    return rows, found.astype(np.int64)


def run_one(method: str, n: int) -> dict:
    """Time one method on N hashes in this process."""
    h, src, dst = planted(n)
    conf = {}
    t0 = time.perf_counter()
    sample = None
    if method == "banding":
        i, j, _ = banding_pairs(h, RADIUS)
    elif method == "mih":
        from omegaconf import OmegaConf

        from plugins.checks.duplicates import phash_pairs

        conf = OmegaConf.load(ROOT / "conf/check/default.yaml").checks.duplicates
        i, j, _ = phash_pairs(h, RADIUS, conf.memory_budget_mb, conf.bucket_cap)
        conf = {"memory_budget_mb": conf.memory_budget_mb, "bucket_cap": conf.bucket_cap}
    elif method.startswith("faiss"):
        import faiss

        conf = {"threads": faiss.omp_get_max_threads()}
        codes = packed(h)
        if method == "faiss_multihash":
            index = faiss.IndexBinaryMultiHash(64, 3, 21)
            index.nflip = 2
            i, j = faiss_range(index, codes, codes)
        elif method == "faiss_hash":
            index = faiss.IndexBinaryHash(64, 16)
            index.nflip = 1
            i, j = faiss_range(index, codes, codes)
        else:
            sample = np.random.default_rng(1).choice(n, size=min(n, 2000), replace=False)
            q, j = faiss_range(faiss.IndexBinaryFlat(64), codes, codes[sample])
            i = sample[q]
    elif method == "usearch":
        from usearch.index import Index

        index = Index(ndim=64, metric="hamming", dtype="b1")
        codes = packed(h)
        index.add(np.arange(n), codes)
        res = index.search(codes, 10)
        keys, dist = np.asarray(res.keys), np.asarray(res.distances)
        i = np.repeat(np.arange(n), keys.shape[1])
        j, d = keys.ravel().astype(np.int64), dist.ravel()
        ok = d <= RADIUS
        i, j = i[ok], j[ok]
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - t0
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    ok = i != j
    lo, hi = np.minimum(i[ok], j[ok]), np.maximum(i[ok], j[ok])
    got = set((lo * n + hi).tolist())
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    want = a * n + b
    if sample is not None:  # only the sampled hashes' planted pairs can be found
        on = np.isin(src, sample) | np.isin(dst, sample)
        want = want[on]
        seconds *= n / len(sample)
    recall = float(np.mean([w in got for w in want.tolist()])) if len(want) else 1.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "method": method,
        "n": n,
        "seconds": round(seconds, 2),
        "extrapolated": sample is not None,
        "peak_rss_gib": round(rss, 2),
        "pairs": len(got),
        "recall": round(recall, 4),
        **conf,
    }


def clustered(n: int, dim: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors around 1,000 centres (members ~0.7 apart in cosine) with 1 % planted
    near copies (cosine ~0.98): (vectors, source index, copy index)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, size=n)]
    scale = 0.6 * np.linalg.norm(centres, axis=1).mean() / np.sqrt(dim)
    for a in range(0, n, 65536):  # in blocks: the data's own peak stays near its size
        b = min(a + 65536, n)
        x[a:b] += scale * rng.normal(size=(b - a, dim)).astype(np.float32)
        x[a:b] /= np.linalg.norm(x[a:b], axis=1, keepdims=True)
    m = n // 100
    idx = rng.permutation(n)
    src, dst = idx[:m], idx[m : 2 * m]
    x[dst] = x[src] + 0.2 / np.sqrt(dim) * rng.normal(size=(m, dim)).astype(np.float32)
    x[dst] /= np.linalg.norm(x[dst], axis=1, keepdims=True)
    return x, src, dst


def old_partitioned_pairs(x, min_cosine, k, probes, memory_budget_mb, seed=0):
    """The check's former ``partitioned_knn_pairs`` (own k-means, argpartition of every
    query's whole row, a boolean self mask), kept as the baseline."""
    from plugins.checks.common import partition_members
    from plugins.checks.duplicates import knn_pairs, unique_pairs

    n = len(x)
    parts = max(1, int(np.sqrt(n)))
    if n < 2 or parts < 4:
        return knn_pairs(x, min_cosine, k, max(1, int(memory_budget_mb * 2**20 / (16 * n))))
    x = np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(n, size=min(n, 64 * parts), replace=False)]
    cent = sample[rng.choice(len(sample), size=parts, replace=False)].copy()
    block = max(1, int(memory_budget_mb * 2**20 / (8 * parts)))
    for _ in range(10):
        near = np.concatenate(
            [np.argmax(sample[a : a + block] @ cent.T, 1) for a in range(0, len(sample), block)]
        )
        sums = np.zeros_like(cent)
        np.add.at(sums, near, sample)
        empty = np.bincount(near, minlength=parts) == 0
        sums[empty] = cent[empty]
        cent = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    probes = min(probes, parts)
    assign = np.empty((n, probes), np.int64)
    for a in range(0, n, block):
        s = x[a : a + block] @ cent.T
        top = np.argpartition(-s, probes - 1, 1)[:, :probes]
        order = np.argsort(-np.take_along_axis(s, top, 1), 1)
        assign[a : a + block] = np.take_along_axis(top, order, 1)
    q_order, q_bounds, d_rows, d_bounds = partition_members(assign, parts)
    found_i, found_j, found_s = [], [], []
    for p in range(parts):
        queries = q_order[q_bounds[p] : q_bounds[p + 1]]
        data = d_rows[d_bounds[p] : d_bounds[p + 1]]
        if not len(queries) or len(data) < 2:
            continue
        kk = min(k + 1, len(data))
        step = max(1, int(memory_budget_mb * 2**20 / (16 * len(data))))
        for a in range(0, len(queries), step):
            qs = queries[a : a + step]
            sims = x[qs] @ x[data].T
            sims[data[None, :] == qs[:, None]] = -np.inf
            top = np.argpartition(-sims, kk - 1, 1)[:, :kk]
            s = np.take_along_axis(sims, top, 1).ravel()
            keep = s >= min_cosine
            found_i.append(np.repeat(qs, kk)[keep])
            found_j.append(data[top.ravel()[keep]])
            found_s.append(s[keep])
    return unique_pairs(found_i, found_j, found_s, n)


def recall_vs_exact(x, rows, i, j, k, floor) -> float:
    """Share of the pairs above ``floor`` among the sampled ``rows``' exact ``k`` nearest
    that the pairs ``(i, j)`` hold."""
    top = np.zeros((len(rows), k), np.int64)
    ok = np.zeros((len(rows), k), bool)
    for a in range(0, len(rows), 100):
        sims = x[rows[a : a + 100]] @ x.T
        sims[np.arange(len(sims)), rows[a : a + 100]] = -np.inf
        top[a : a + 100] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        ok[a : a + 100] = np.take_along_axis(sims, top[a : a + 100], 1) >= floor
    exact = {
        (min(a, b), max(a, b))
        for a, b in zip(
            np.repeat(rows, k)[ok.ravel()].tolist(), top.ravel()[ok.ravel()].tolist(), strict=True
        )
    }
    found = set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist(), strict=True))
    return round(len(exact & found) / max(1, len(exact)), 4)


def lance_centroids(x: np.ndarray) -> tuple[np.ndarray, float]:
    """IVF centroids as the enricher's ``build_index`` trains them (Lance's k-means, cosine,
    ``index_partitions`` of them, its sample rate and iterations), without the PQ encoding
    and partition shuffle the check does not read: (centroids, seconds)."""
    import inspect
    import tempfile

    import lance
    import pyarrow as pa
    from lance.indices import IndicesBuilder

    from plugins.clip_embed import build_index, index_partitions

    defaults = inspect.signature(build_index).parameters
    tmp = tempfile.mkdtemp(prefix="dups-bench-")
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
    ds = lance.write_dataset(pa.table({"clip_image": vec}), tmp)
    t0 = time.perf_counter()
    parts = index_partitions(len(x), defaults["max_partitions"].default)
    ivf = IndicesBuilder(ds, "clip_image").train_ivf(
        parts,
        distance_type="cosine",
        sample_rate=defaults["sample_rate"].default,
        max_iters=defaults["max_iterations"].default,
    )
    seconds = time.perf_counter() - t0
    cent = np.asarray(ivf.centroids.values.to_numpy(), np.float32).reshape(parts, -1)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return cent, seconds


def run_clip(method: str, n: int, sample: int = 1000) -> dict:
    """The check's embedding k-NN pass on N vectors: blocked exact search in the check's
    memory budget, or LanceDB search through the enricher's IVF_PQ index (a sample of
    queries, time extrapolated; recall@10 against exact search on the same sample)."""
    from omegaconf import OmegaConf

    from plugins.checks.duplicates import knn_pairs, lance_knn_pairs, partitioned_knn_pairs

    conf = OmegaConf.load(ROOT / "conf/check/default.yaml").checks.duplicates
    x, src, dst = clustered(n)
    k, floor = int(conf.knn), float(conf.candidate_cosine)
    rows = np.random.default_rng(1).choice(n, size=min(n, sample), replace=False)
    extra: dict = {}
    t0 = time.perf_counter()
    if method == "clip_exact":
        batch = max(1, min(2048, int(conf.memory_budget_mb * 2**20 / (16 * n))))
        i, j, _ = knn_pairs(x, floor, k, batch)
        seconds = time.perf_counter() - t0
        extra = {"batch": batch}
        queried = np.arange(n)
    elif method in ("clip_partitioned", "clip_partitioned_old", "clip_index"):
        probes, budget = int(conf.partition_probes), float(conf.memory_budget_mb)
        if method == "clip_partitioned_old":
            i, j, _ = old_partitioned_pairs(x, floor, k, probes, budget)
        else:
            cent = None
            if method == "clip_index":
                cent, extra["ivf_train_s"] = lance_centroids(x)
                extra["index_partitions"] = len(cent)
                t0 = time.perf_counter()  # the enricher trained them; the check reads them
            import tracemalloc

            tracemalloc.start()  # the pass's own numpy allocations, beyond its input
            i, j, _ = partitioned_knn_pairs(x, floor, k, probes, budget, centroids=cent)
            extra["pass_mem_gib"] = round(tracemalloc.get_traced_memory()[1] / 2**30, 2)
            tracemalloc.stop()
        seconds = time.perf_counter() - t0
        queried = np.arange(n)
        extra["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        extra["recall_vs_exact"] = recall_vs_exact(x, rows, i, j, k, floor)
    else:
        import tempfile

        import lancedb
        import pyarrow as pa

        from lake.store import Lake
        from plugins.clip_embed import build_index

        tmp = tempfile.mkdtemp(prefix="dups-bench-")
        mids = [f"m{r:08d}" for r in range(n)]
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
        lancedb.connect(tmp).create_table("media", pa.table({"media_id": mids, "clip_image": vec}))
        lake = Lake(tmp)
        build_index(lake, min_rows=1)
        extra["index_build_s"] = round(time.perf_counter() - t0, 2)
        t1 = time.perf_counter()
        i, j, _ = lance_knn_pairs(
            lake, mids, x, floor, k, int(conf.nprobes), int(conf.refine_factor), queries=rows
        )
        seconds = (time.perf_counter() - t1) * n / len(rows) + extra["index_build_s"]
        # recall@k of the index against exact search, on the sampled queries
        sims = x[rows] @ x.T
        sims[np.arange(len(rows)), rows] = -np.inf
        exact = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        tbl = lake.table("media")
        hits = 0
        for r, q in enumerate(rows[:200].tolist()):
            res = (
                tbl.search(x[q], vector_column_name="clip_image")
                .distance_type("cosine")
                .limit(k + 1)
                .nprobes(int(conf.nprobes))
                .refine_factor(int(conf.refine_factor))
                .select(["media_id"])
                .to_arrow()
            )
            got = {int(m[1:]) for m in res.column("media_id").to_pylist()} - {q}
            hits += len(got & set(exact[r].tolist()))
        extra["recall_at_10"] = round(hits / (k * min(200, len(rows))), 4)
        queried = rows
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    got = set((np.minimum(i, j) * n + np.maximum(i, j)).tolist())
    on = np.isin(src, queried) | np.isin(dst, queried)
    want = (np.minimum(src, dst) * n + np.maximum(src, dst))[on]
    recall = float(np.mean([w in got for w in want.tolist()])) if len(want) else 1.0
    return {
        "method": method,
        "n": n,
        "seconds": round(seconds, 2),
        "extrapolated": method == "clip_lance",
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "pairs": len(got),
        "recall": round(recall, 4),
        **extra,  # clip_partitioned: its peak before the recall check
    }


def run_check(method: str, n: int) -> dict:
    """One other check's core on N synthetic rows (the clustered vectors, 10 labels of N/10,
    caption vectors near their image): ``check_caption`` (caption_mismatch's scores against
    its ``negatives``), ``check_outliers`` (the per-label k-NN distances), ``check_labels``
    (label_conflict's prototype logits). Settings from conf/check/default.yaml."""
    from omegaconf import OmegaConf

    from plugins.checks.caption_mismatch import CaptionMismatch
    from plugins.checks.label_conflict import LabelConflict
    from plugins.checks.outliers import Outliers

    conf = OmegaConf.load(ROOT / "conf/check/default.yaml").checks

    def kwargs(name: str) -> dict:
        c = OmegaConf.to_container(conf[name], resolve=False)
        c.pop("_target_")
        return c

    x, _, _ = clustered(n)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, size=n)
    t0 = time.perf_counter()
    if method == "check_caption":
        txt = x.copy()
        for a in range(0, n, 65536):  # in blocks, like the vectors
            txt[a : a + 65536] += 0.05 * rng.normal(size=txt[a : a + 65536].shape).astype(
                np.float32
            )
            txt[a : a + 65536] /= np.linalg.norm(txt[a : a + 65536], axis=1, keepdims=True)
        t0 = time.perf_counter()
        CaptionMismatch(**kwargs("caption_mismatch"))._score(x, txt)
    elif method == "check_outliers":
        check = Outliers(**kwargs("outliers"))
        for label in range(10):
            check._knn_distance(x[labels == label])
    else:
        c = kwargs("label_conflict")
        c["runs_dir"] = ""
        LabelConflict(**c).prototype_logits(x, labels, 10)
    return {
        "method": method,
        "n": n,
        "seconds": round(time.perf_counter() - t0, 2),
        "extrapolated": False,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "pairs": 0,
        "recall": 1.0,
    }


def main() -> None:
    """Run every method at every size, each in a fresh process; print a table and a JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,300000")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per (method, N)")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        run = {"clip": run_clip, "check": run_check}.get(a.one[0].split("_")[0], run_one)
        print(json.dumps(run(a.one[0], int(a.one[1]))))
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    rows: list[dict] = []
    for n in sizes:
        for method in a.methods.split(","):
            if method == "banding" and n > BANDING_MAX:
                rows.append({"method": method, "n": n, "skipped": f"above {BANDING_MAX:,}"})
                continue
            cmd = [sys.executable, __file__, "--one", method, str(n)]
            try:
                out = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=a.timeout, check=True
                )
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            except subprocess.TimeoutExpired:
                rows.append({"method": method, "n": n, "skipped": f"over {a.timeout:.0f} s"})
            except subprocess.CalledProcessError as err:
                tail = (err.stderr or "").strip().splitlines()[-1:] or ["failed"]
                rows.append({"method": method, "n": n, "skipped": tail[0][:60]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    by = {(r["method"], r["n"]): r for r in rows}
    print(
        f"{'method':<16} {'N':>9} {'seconds':>9} {'peak GiB':>9} {'recall':>9} {'growth':>7} notes"
    )
    for method in a.methods.split(","):
        prev = None
        for n in sizes:
            r = by[(method, n)]
            if "skipped" in r:
                print(f"{method:<16} {n:>9,} {'skipped: ' + r['skipped']}")
                prev = None
                continue
            growth = ""
            if prev and prev["seconds"] > 0 and r["seconds"] > 0:
                growth = f"{math.log(r['seconds'] / prev['seconds']) / math.log(n / prev['n']):.2f}"
                r["growth"] = float(growth)
            secs = ("~" if r["extrapolated"] else "") + f"{r['seconds']:.2f}"
            notes = " ".join(
                f"{key}={r[key]}"
                for key in (
                    "threads",
                    "batch",
                    "index_build_s",
                    "ivf_train_s",
                    "index_partitions",
                    "recall_at_10",
                    "recall_vs_exact",
                    "pass_mem_gib",
                )
                if key in r
            )
            print(
                f"{method:<16} {n:>9,} {secs:>9} {r['peak_rss_gib']:>9.2f} "
                f"{r['recall']:>9.4f} {growth:>7} {notes}"
            )
            prev = r
    print(json.dumps({"radius": RADIUS, "results": rows}))


if __name__ == "__main__":
    main()
