"""Benchmark: vector search at scale through the project's own index and query path.

Builds ``--n`` clustered 512-d unit vectors (``--clusters`` Gaussian clusters: centre ~
N(0, I/d), noise ~ N(0, 0.5² I/d), L2-normalised) in a lake's ``media`` table, one sample
per media (datasets a / b / c / d = 50 / 30 / 15 / 5 %, every 5th media a ``frame``), with
the key indexes ingest makes (:func:`lake.lineage.ensure_indexes`: the label-list index on
``samples.media_ids`` serves the query's samples lookup), then:

- builds the IVF_PQ index with the enricher's own :func:`plugins.clip_embed.build_index`
  for each index setting (``--indexes``), timing it and counting the Lance k-means
  warnings it prints on stderr;
- for each query setting (``--settings`` nprobes/refine_factor) measures recall@10
  against exact search (numpy on the matrix in RAM) on held-out queries (fresh draws from
  the same clusters, not stored vectors) and the p50 / p95 latency of the real query
  path, :func:`lake.query.search`, without a filter and with ``dataset`` / ``kind``
  filters (the exact answer then is the exact top 10 among the matching rows), and the
  first search after the build (cold: the index is loaded into the session then);
- the filtering strategies at the default setting: the old full-column prefilter
  (``clip_image IS NOT NULL``), and the post-filter with an extra Bitmap index on
  ``samples.dataset`` (build_index makes the one on ``media.kind``);
- the exact baselines: numpy matrix-vector product, LanceDB flat search.

Quick run (default, ~200k rows)::

    python bench/vectors.py
    python bench/vectors.py --n 1000000 --clusters 1000   # the full run of issue 19

The machine is shared: latencies are noisy, compare ratios from the same run. Prints a
table and, last, one line with a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lake.lineage import ensure_indexes
from lake.query import IMAGE_COLUMN, search
from lake.schema import MEDIA, MEDIA_SCHEMA, SAMPLES, SAMPLES_SCHEMA
from lake.store import Lake
from plugins.clip_embed import build_index

DATASETS = ("a", "b", "c", "d")
K = 10


def make_vectors(n: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` clustered unit vectors and the generator's centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1 / np.sqrt(dim), size=(clusters, dim)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for a in range(0, n, 100_000):
        b = min(n, a + 100_000)
        c = rng.integers(0, clusters, size=b - a)
        x[a:b] = centres[c] + rng.normal(0, 0.5 / np.sqrt(dim), size=(b - a, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, centres


def queries_from(centres: np.ndarray, nq: int, seed: int) -> np.ndarray:
    """Held-out queries: fresh draws from the same clusters."""
    rng = np.random.default_rng(seed + 1)
    dim = centres.shape[1]
    q = centres[rng.integers(0, len(centres), nq)]
    q = q + rng.normal(0, 0.5 / np.sqrt(dim), size=q.shape).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _full(schema: pa.Schema, cols: dict[str, pa.Array], n: int) -> pa.Table:
    arrays = [cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_lake(lake: Lake, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Write media (+ vectors) and samples; return each row's dataset and kind."""
    n, dim = x.shape
    i = np.arange(n)
    ds_of = np.select([(i * 7) % 20 < 10, (i * 7) % 20 < 16, (i * 7) % 20 < 19], [0, 1, 2], 3)
    kinds = np.where(i % 5 == 0, "frame", "image")
    lake.ensure(MEDIA)
    lake.ensure(SAMPLES)
    vec = pa.field(IMAGE_COLUMN, pa.list_(pa.float32(), dim))
    lake.add_columns(MEDIA, [vec, pa.field("clip_image_model", pa.string())])
    media_schema = lake.table(MEDIA).schema
    samples_schema = lake.table(SAMPLES).schema
    assert set(MEDIA_SCHEMA.names) <= set(media_schema.names)
    assert set(SAMPLES_SCHEMA.names) <= set(samples_schema.names)
    for a in range(0, n, 100_000):
        b = min(n, a + 100_000)
        ids = pa.array([f"m{j:07d}" for j in range(a, b)])
        media = {
            "media_id": ids,
            "kind": pa.array(kinds[a:b]),
            IMAGE_COLUMN: pa.FixedSizeListArray.from_arrays(pa.array(x[a:b].reshape(-1)), dim),
            "clip_image_model": pa.array(["bench"] * (b - a)),
        }
        lake.table(MEDIA).add(_full(media_schema, media, b - a))
        samples = {
            "sample_id": pa.array([f"s{j:07d}" for j in range(a, b)]),
            "dataset": pa.array([DATASETS[d] for d in ds_of[a:b]]),
            "media_ids": pa.array([[m] for m in ids.to_pylist()], pa.list_(pa.string())),
            "caption": pa.array([f"caption {j}" for j in range(a, b)]),
        }
        lake.table(SAMPLES).add(_full(samples_schema, samples, b - a))
    ensure_indexes(lake)  # what ingest leaves: key indexes, samples.media_ids label list
    return ds_of, kinds


def exact_top(x: np.ndarray, q: np.ndarray, mask: np.ndarray | None) -> list[set[str]]:
    """Exact cosine top-K media ids per query (among ``mask`` rows)."""
    rows = np.flatnonzero(mask) if mask is not None else np.arange(len(x))
    sims = x[rows] @ q.T
    top = np.argpartition(-sims, K - 1, axis=0)[:K]
    return [{f"m{rows[j]:07d}" for j in top[:, c]} for c in range(q.shape[0])]


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, p)) if values else float("nan")


def run_search(lake: Lake, q: np.ndarray, truth: list[set[str]] | None, **kw) -> dict:
    """Recall@K (when ``truth``) and latency of ``lake.query.search`` over the queries."""
    search(lake, q[0], k=K, **kw)  # warm caches
    times, recall = [], []
    for c, v in enumerate(q):
        t0 = time.perf_counter()
        hits = search(lake, v, k=K, **kw)
        times.append(time.perf_counter() - t0)
        if truth is not None:
            recall.append(len({h.media_id for h in hits} & truth[c]) / K)
    return {
        "recall": float(np.mean(recall)) if recall else None,
        "p50_ms": pct(times, 50),
        "p95_ms": pct(times, 95),
    }


def build(lake: Lake, **kw) -> dict:
    """build_index with stderr captured: seconds and k-means warnings printed."""
    tbl = lake.table(MEDIA)
    for idx in tbl.list_indices():
        if IMAGE_COLUMN in (idx.columns or []):
            tbl.drop_index(idx.name)
    with tempfile.TemporaryFile() as err:  # what reaches fd 2 (Lance's Rust logger)
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            t0 = time.perf_counter()
            done = build_index(lake, min_rows=0, **kw)
            secs = time.perf_counter() - t0
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        warnings = err.read().decode(errors="replace").count("KMeans: more than 10%")
    assert done == "created", done
    return {"seconds": secs, "kmeans_warnings": warnings}


# the alternative: a Bitmap index on the dataset filter too (build_index makes media.kind's)
SCALAR_INDEXES = {"samples": {"dataset": "Bitmap"}}


def create_scalar_indexes(lake: Lake) -> None:
    from lancedb import index

    for name, cols in SCALAR_INDEXES.items():
        for column, kind in cols.items():
            lake.table(name).create_index(column, config=getattr(index, kind)())


def old_prefilter(lake: Lake, q: np.ndarray, n: int) -> dict:
    """The query as it was: a full-column ``clip_image IS NOT NULL`` prefilter."""
    times = []
    for v in q[:n]:
        t0 = time.perf_counter()
        (
            lake.table(MEDIA)
            .search(v, vector_column_name=IMAGE_COLUMN)
            .distance_type("cosine")
            .where(f"{IMAGE_COLUMN} IS NOT NULL", prefilter=True)
            .select(["media_id", "_distance"])
            .limit(K)
            .nprobes(20)
            .refine_factor(10)
            .to_arrow()
        )
        times.append(time.perf_counter() - t0)
    return {"p50_ms": pct(times, 50), "p95_ms": pct(times, 95)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=0, help="0: n / 1000")
    ap.add_argument("--queries", type=int, default=100, help="held-out queries for recall")
    ap.add_argument("--flat", type=int, default=3, help="queries for the slow exact baselines")
    ap.add_argument(
        "--indexes", default="cap256:256:0",
        help="name:max_partitions:sub_vectors,... (0: build_index's rule; max 0 = uncapped)",
    )  # fmt: skip
    ap.add_argument(
        "--settings", default="20/10,20/50,20/60,20/70,10/80,20/80,20/100", help="nprobes/refine"
    )
    ap.add_argument("--default", default="20/70", help="conf/query.yaml's; filters measured at it")
    ap.add_argument("--uri", default=None, help="lake folder (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    root = Path(args.uri or tempfile.mkdtemp(prefix="lakeloom-vectors-"))
    shutil.rmtree(root, ignore_errors=True)
    lake = Lake(root)
    clusters = args.clusters or max(1, args.n // 1000)
    t0 = time.perf_counter()
    x, centres = make_vectors(args.n, args.dim, clusters, args.seed)
    ds_of, kinds = write_lake(lake, x)
    write_s = time.perf_counter() - t0
    q = queries_from(centres, args.queries, args.seed)
    truth = {
        "none": exact_top(x, q, None),
        "dataset=c": exact_top(x, q, ds_of == 2),
        "dataset=d": exact_top(x, q, ds_of == 3),
        "kind=frame": exact_top(x, q, kinds == "frame"),
    }
    filters = {"none": {}, "dataset=c": {"dataset": "c"}, "dataset=d": {"dataset": "d"},
               "kind=frame": {"kind": "frame"}}  # fmt: skip

    out: dict = {"n": args.n, "dim": args.dim, "clusters": clusters, "queries": args.queries,
                 "write_s": round(write_s, 1), "indexes": {}}  # fmt: skip
    times = []
    for v in q:
        t = time.perf_counter()
        np.argpartition(-(x @ v), K - 1)[:K]
        times.append(time.perf_counter() - t)
    out["numpy_exact_p50_ms"] = pct(times, 50)
    times = []
    for v in q[: args.flat]:
        t = time.perf_counter()
        lake.table(MEDIA).search(v, vector_column_name=IMAGE_COLUMN).distance_type(
            "cosine"
        ).bypass_vector_index().select(["media_id"]).limit(K).to_arrow()
        times.append(time.perf_counter() - t)
    out["lancedb_flat_p50_ms"] = pct(times, 50)

    rows = []
    settings = [tuple(int(v) for v in s.split("/")) for s in args.settings.split(",")]
    default = tuple(int(v) for v in args.default.split("/"))
    for spec in args.indexes.split(","):
        name, cap, subs = spec.split(":")
        kw = {"max_partitions": int(cap) or 1 << 30}
        if int(subs):
            kw["num_sub_vectors"] = int(subs)
        built = build(lake, **kw)
        out["indexes"][name] = built
        secs, warns = built["seconds"], built["kmeans_warnings"]
        print(f"index {name}: {secs:.1f} s, {warns} k-means warnings", flush=True)
        t = time.perf_counter()
        search(lake, q[0], k=K, nprobes=default[0], refine_factor=default[1])
        built["cold_query_ms"] = (time.perf_counter() - t) * 1000
        for nprobes, refine in settings:
            fl = filters.items() if (nprobes, refine) == default else [("none", {})]
            for fname, fkw in fl:
                r = run_search(lake, q, truth[fname], nprobes=nprobes, refine_factor=refine, **fkw)
                rows.append({"index": name, "nprobes": nprobes, "refine": refine,
                             "filter": fname, "scalar_idx": False, **r})  # fmt: skip
                print(rows[-1], flush=True)
    # strategies at the default setting on the last index
    old = old_prefilter(lake, q, args.flat)
    rows.append({"index": name, "nprobes": 20, "refine": 10, "filter": "old IS NOT NULL prefilter",
                 "scalar_idx": False, "recall": None, **old})  # fmt: skip
    create_scalar_indexes(lake)
    for fname in ("dataset=c", "dataset=d"):
        r = run_search(lake, q, truth[fname], nprobes=default[0], refine_factor=default[1],
                       **filters[fname])  # fmt: skip
        rows.append({"index": name, "nprobes": default[0], "refine": default[1],
                     "filter": fname, "scalar_idx": True, **r})  # fmt: skip
    out["rows"] = rows
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)

    print()
    print(f"n={args.n} dim={args.dim} clusters={clusters}: written in {write_s:.1f} s; "
          f"exact baselines: numpy {out['numpy_exact_p50_ms']:.1f} ms, "
          f"LanceDB flat {out['lancedb_flat_p50_ms']:.0f} ms (p50)")  # fmt: skip
    for name, b in out["indexes"].items():
        print(f"build_index {name}: {b['seconds']:.1f} s, k-means warnings printed: "
              f"{b['kmeans_warnings']}, first query {b['cold_query_ms']:.0f} ms")  # fmt: skip
    print(f"{'index':<8} {'np/rf':>7} {'filter':<26} {'scalar idx':>10} {'recall@10':>9} "
          f"{'p50 ms':>8} {'p95 ms':>8}")  # fmt: skip
    for r in rows:
        rec = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        print(f"{r['index']:<8} {r['nprobes']:>3}/{r['refine']:<3} {r['filter']:<26} "
              f"{'yes' if r['scalar_idx'] else 'no':>10} {rec:>9} {r['p50_ms']:8.1f} "
              f"{r['p95_ms']:8.1f}")  # fmt: skip
    if not args.uri:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
