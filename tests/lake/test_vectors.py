"""Vector search through the index: recall against exact search, filters, no full-column scan."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lake.query import IMAGE_COLUMN, index_recall, media_query, search
from lake.schema import MEDIA, SAMPLES
from lake.store import Lake
from plugins.clip_embed import build_index, quiet_kmeans

N, DIM, CLUSTERS, K = 3000, 32, 30, 10
DATASETS = ("a", "b", "c", "d")


def _clustered(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, DIM)).astype(np.float32)
    x = centres[rng.integers(0, CLUSTERS, n)] + rng.normal(0, 0.3, (n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), centres


def _write(
    lake: Lake, x: np.ndarray, kinds: list[str], datasets: list[str], start: int = 0
) -> None:
    n = len(kinds)
    ids = [f"m{i:05d}" for i in range(start, start + n)]
    lake.insert_new(MEDIA, pa.table({"media_id": ids, "kind": kinds}))
    lake.add_columns(MEDIA, [pa.field(IMAGE_COLUMN, pa.list_(pa.float32(), DIM))])
    if len(x):
        with_vec = [i for i, k in zip(ids, kinds, strict=True) if k != "audio"]
        flat = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM)
        lake.update_columns(MEDIA, pa.table({"media_id": with_vec, IMAGE_COLUMN: flat}))
    samples = {
        "sample_id": [f"s{i:05d}" for i in range(start, start + n)],
        "dataset": datasets,
        "media_ids": [[m] for m in ids],
        "caption": [f"caption {i}" for i in range(start, start + n)],
    }
    lake.insert_new(SAMPLES, pa.table(samples))


@pytest.fixture(scope="module")
def vec_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, np.ndarray, np.ndarray]:
    """N clustered vectors, indexed (IVF_PQ), then 20 audio media without vectors after it."""
    lake = Lake(tmp_path_factory.mktemp("vectors") / "lake")
    x, centres = _clustered(N, 0)
    kinds = ["frame" if i % 5 == 0 else "image" for i in range(N)]
    _write(lake, x, kinds, [DATASETS[i % 10 // 4 if i % 10 < 9 else 3] for i in range(N)])
    assert build_index(lake, min_rows=0, num_partitions=8, num_sub_vectors=8) == "created"
    _write(lake, np.zeros((0, DIM), np.float32), ["audio"] * 20, ["a"] * 20, start=N)
    rng = np.random.default_rng(1)
    q = centres[rng.integers(0, CLUSTERS, 20)] + rng.normal(0, 0.3, (20, DIM)).astype(np.float32)
    return lake, x, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _exact(x: np.ndarray, v: np.ndarray, rows: np.ndarray) -> set[str]:
    sims = x[rows] @ v
    return {f"m{rows[j]:05d}" for j in np.argsort(-sims)[:K]}


def _meta(lake: Lake) -> tuple[np.ndarray, np.ndarray]:
    s = lake.dataset(SAMPLES).to_table(columns=["sample_id", "dataset"]).to_pydict()
    order = np.argsort(s["sample_id"])
    datasets = np.asarray(s["dataset"])[order][:N]
    kinds = np.asarray(["frame" if i % 5 == 0 else "image" for i in range(N)])
    return datasets, kinds


def test_query_uses_the_index_without_a_full_column_filter(vec_lake) -> None:
    lake, _, q = vec_lake
    plan = media_query(lake, q[0], K, nprobes=4, refine_factor=10).explain_plan(verbose=True)
    assert "ANN" in plan  # the IVF index answers, not a flat KNN over every row
    assert f"{IMAGE_COLUMN} IS NOT NULL" not in plan  # that prefilter read the whole column
    kinds = {i.columns[0]: i.index_type for i in lake.table(MEDIA).list_indices()}
    assert kinds == {IMAGE_COLUMN: "IvfPq", "kind": "Bitmap"}  # build_index adds the kind one
    plan = media_query(lake, q[0], K, 4, 10, where="kind = 'frame'").explain_plan(verbose=True)
    assert "ScalarIndexQuery" in plan or "kind_idx" in plan, plan  # the bitmap, not a column scan


def test_search_matches_exact_search(vec_lake) -> None:
    lake, x, q = vec_lake
    recall = []
    for v in q:
        hits = search(lake, v, k=K, nprobes=4, refine_factor=50)
        assert [h.rank for h in hits] == list(range(1, K + 1))
        assert all(not h.media_id.startswith("m03") for h in hits)  # audio: no vector
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        recall.append(len({h.media_id for h in hits} & _exact(x, v, np.arange(N))) / K)
    assert np.mean(recall) >= 0.95


@pytest.mark.parametrize(
    ("filters", "field"),
    [({"dataset": "d"}, "dataset"), ({"dataset": "c"}, "dataset"), ({"kind": "frame"}, "kind")],
)
def test_filters_are_applied_with_high_recall(vec_lake, filters: dict, field: str) -> None:
    lake, x, q = vec_lake
    datasets, kinds = _meta(lake)
    rows = np.flatnonzero((datasets if field == "dataset" else kinds) == filters[field])
    recall = []
    for v in q:
        hits = search(lake, v, k=K, nprobes=4, refine_factor=50, **filters)
        assert len(hits) == K
        if field == "dataset":
            assert {h.dataset for h in hits} == {filters["dataset"]}
        else:
            assert all(kinds[int(h.media_id[1:])] == "frame" for h in hits)
        recall.append(len({h.media_id for h in hits} & _exact(x, v, rows)) / K)
    assert np.mean(recall) >= 0.9


def test_a_selective_where_falls_back_to_the_prefilter(vec_lake) -> None:
    """One matching sample among 3,000: over-fetching gives up, the prefilter finds it."""
    lake, _, q = vec_lake
    hits = search(lake, q[0], k=K, where="caption = 'caption 1234'", overfetch=4, max_fetch=160)
    assert [(h.rank, h.sample_id) for h in hits] == [(1, "s01234")]
    assert search(lake, q[0], k=K, where="caption = 'nothing'", max_fetch=160) == []


def test_index_recall_is_honest(tmp_path: Path) -> None:
    """A crude index (1 sub-vector, 1 probe, no re-ranking) scores low, a good setting ~1."""
    lake = Lake(tmp_path / "lake")
    x, _ = _clustered(2000, 3)
    _write(lake, x, ["image"] * 2000, ["a"] * 2000)
    assert build_index(lake, min_rows=0, num_partitions=16, num_sub_vectors=1) == "created"
    bad = index_recall(lake, queries=30, k=K, nprobes=1, refine_factor=None)
    good = index_recall(lake, queries=30, k=K, nprobes=16, refine_factor=200)
    assert bad < 0.8
    assert good >= 0.98


def test_filtered_search_equals_exact_search_when_exhaustive(vec_lake) -> None:
    """Every partition probed and every candidate re-ranked: the filtered answer is exact."""
    lake, x, q = vec_lake
    datasets, kinds = _meta(lake)
    for filters, rows in (
        ({"dataset": "c"}, np.flatnonzero(datasets == "c")),
        ({"kind": "frame"}, np.flatnonzero(kinds == "frame")),
        ({"dataset": "d", "kind": "frame"}, np.flatnonzero((datasets == "d") & (kinds == "frame"))),
    ):
        for v in q[:5]:
            hits = search(lake, v, k=K, nprobes=8, refine_factor=N, **filters)
            assert [h.media_id for h in hits] == [
                f"m{rows[j]:05d}" for j in np.argsort(-(x[rows] @ v))[:K]
            ]
            assert all(h.dataset == filters.get("dataset", h.dataset) for h in hits)


def test_filtered_search_reranks_the_allowed_candidates_exactly(vec_lake) -> None:
    """With a dataset filter the exact re-ranking covers ``k * filtered_refine`` allowed media,
    whatever ``refine_factor`` says: every one re-ranked gives the exact answer and scores."""
    lake, x, q = vec_lake
    datasets, _ = _meta(lake)
    rows = np.flatnonzero(datasets == "c")
    for v in q[:5]:
        hits = search(lake, v, k=K, nprobes=8, refine_factor=1, dataset="c", filtered_refine=N)
        sims = x[rows] @ v
        best = np.argsort(-sims)[:K]
        assert [h.media_id for h in hits] == [f"m{rows[j]:05d}" for j in best]
        assert np.allclose([h.score for h in hits], sims[best], atol=1e-5)


def test_repeated_searches_see_rows_written_since(tmp_path: Path) -> None:
    """The shared Lance session and the kept filter answer never pin an old table version."""
    lake = Lake(tmp_path / "lake")
    x, _ = _clustered(600, 5)
    _write(lake, x[:500], ["image"] * 500, ["a"] * 500)
    assert build_index(lake, min_rows=0, num_partitions=2, num_sub_vectors=4) == "created"
    assert search(lake, x[550], k=1, nprobes=2, refine_factor=10, dataset="b") == []
    _write(lake, x[500:], ["image"] * 100, ["b"] * 100, start=500)
    hit = search(lake, x[550], k=1, nprobes=2, refine_factor=10, dataset="b")[0]
    assert (hit.media_id, hit.sample_id, round(hit.score, 4)) == ("m00550", "s00550", 1.0)


def test_kept_allowed_rows_follow_a_new_media_version(tmp_path: Path) -> None:
    """A filtered search keeps its candidates by media row id: a media rewritten since (a
    new row id in a new version) is found, its old row is not served from the kept set."""
    lake = Lake(tmp_path / "lake")
    x, _ = _clustered(600, 6)
    _write(lake, x, ["image"] * 600, ["a" if i % 2 else "b" for i in range(600)])
    assert build_index(lake, min_rows=0, num_partitions=2, num_sub_vectors=4) == "created"
    first = search(lake, x[550], k=1, nprobes=2, refine_factor=10, dataset="b")[0]
    assert (first.media_id, round(first.score, 4)) == ("m00550", 1.0)
    lake.dataset(MEDIA).delete("media_id = 'm00550'")
    assert search(lake, x[550], k=1, nprobes=2, dataset="b")[0].media_id != "m00550"
    _write(lake, x[550:551], ["image"], ["b"], start=550)  # back, under a new row id
    hit = search(lake, x[550], k=1, nprobes=2, refine_factor=10, dataset="b")[0]
    assert (hit.media_id, hit.sample_id, round(hit.score, 4)) == ("m00550", "s00550", 1.0)


def test_search_reads_without_lancedb(vec_lake) -> None:
    """The query path is pylance only: lancedb's import (~2.5 s) is not paid by a query."""
    lake, _, q = vec_lake
    code = (
        "import sys, numpy as np\n"
        "from lake.store import Lake\n"
        "from lake.query import search\n"
        f"hits = search(Lake({str(lake.uri)!r}), np.asarray({q[0].tolist()!r}, np.float32),"
        " k=3, dataset='c')\n"
        "print(len(hits), 'lancedb' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert out.stdout.split() == ["3", "False"]


def test_index_build_prints_no_kmeans_warnings(tmp_path: Path, capfd) -> None:
    """Tight duplicate clusters make Lance's k-means leave clusters empty: nothing printed."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(20, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 20, 5000)] + rng.normal(0, 1e-3, (5000, DIM)).astype(np.float32)
    lake = Lake(tmp_path / "lake")
    _write(lake, x / np.linalg.norm(x, axis=1, keepdims=True), ["image"] * 5000, ["a"] * 5000)
    capfd.readouterr()
    assert build_index(lake, min_rows=0, num_partitions=19, num_sub_vectors=4) == "created"
    assert "KMeans" not in capfd.readouterr().err


def test_quiet_kmeans_passes_other_lines_through(capfd) -> None:
    with quiet_kmeans():
        os.write(2, b"[WARN lance_index::vector::kmeans] KMeans: more than 10% of clusters\n")
        os.write(2, b"    Help: this could mean your dataset has many duplicate vectors.\n")
        os.write(2, b"something else\n")
    assert capfd.readouterr().err == "something else\n"
