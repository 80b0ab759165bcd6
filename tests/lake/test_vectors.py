"""Vector search through the index: recall against exact search, filters, no full-column scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lake.query import IMAGE_COLUMN, index_recall, media_query, search
from lake.schema import MEDIA, SAMPLES
from lake.store import Lake
from plugins.clip_embed import build_index

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
    assert kinds == {IMAGE_COLUMN: "IvfPq"}


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
