"""The duplicates check's hash pair finder: exact against brute force, bounded on degenerate
input and within its memory budget."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from plugins.checks.duplicates import (
    _block_plan,
    greedy_groups,
    knn_pairs,
    nearest_per_item,
    partitioned_knn_pairs,
    phash_pairs,
)


def planted_hashes(n: int, seed: int) -> np.ndarray:
    """Random hashes, a third of them near copies (0..8 bits flipped) of the others."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    m = n // 3
    for k in range(m):
        h[n - 1 - k] = h[k]
        for b in rng.choice(64, size=int(rng.integers(0, 9)), replace=False):
            h[n - 1 - k] ^= np.uint64(1) << np.uint64(int(b))
    return h


def brute(h: np.ndarray, radius: int) -> set[tuple[int, int, int]]:
    """Every pair within ``radius`` bits, by comparing all pairs."""
    dist = np.bitwise_count(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(dist <= radius, 1))
    return set(zip(i.tolist(), j.tolist(), dist[i, j].tolist(), strict=True))


@pytest.mark.parametrize("blocks", [None, 3, 4, 6, 9])
@pytest.mark.parametrize("radius", [0, 1, 3, 5, 8])
def test_pairs_equal_brute_force(radius: int, blocks: int | None) -> None:
    h = planted_hashes(1500, seed=radius)
    i, j, d = phash_pairs(h, radius, blocks=blocks)
    got = list(zip(i.tolist(), j.tolist(), d.tolist(), strict=True))
    assert len(got) == len(set(got))  # no pair twice
    assert set(got) == brute(h, radius)
    assert (i < j).all()


def test_block_plan_covers_the_radius() -> None:
    # generalised pigeonhole: thresholds + 1 summed over the blocks exceed the radius
    for n in (100, 10**5, 10**6, 3 * 10**6):
        for radius in range(0, 17):
            plan = _block_plan(n, radius)
            if plan is None:
                continue
            assert sum(w for _, w, _ in plan) == 64
            assert sum(t + 1 for _, _, t in plan) > radius
    assert _block_plan(10**6, 8) is not None  # a million hashes never compare all pairs


def test_all_equal_hashes_are_bounded_and_never_chain() -> None:
    n, cap = 3000, 16
    h = np.full(n, 0x0123_4567_89AB_CDEF, dtype=np.uint64)
    i, j, d = phash_pairs(h, 8, bucket_cap=cap, blocks=4)
    assert 0 < len(i) <= n * cap
    assert (d == 0).all() and (i < j).all()
    edges = [(a, b, 1.0, 1) for a, b in zip(i.tolist(), j.tolist(), strict=True)]
    rep, _ = greedy_groups(n, edges, order_key=list(range(n)), complete=True)
    linked = set(zip(i.tolist(), j.tolist(), strict=True))
    groups: dict[int, list[int]] = {}
    for u, r in enumerate(rep.tolist()):
        if r != -1:
            groups.setdefault(r, []).append(u)
    assert groups and max(len(g) for g in groups.values()) <= cap + 1
    for r, members in groups.items():
        assert r in members
        for a in members:  # complete link: every member is directly linked to every other
            assert all((min(a, b), max(a, b)) in linked for b in members if b != a)


def test_memory_budget_chunks_the_candidates() -> None:
    # 9 blocks of 7 bits: every block's equal-key runs hold ~12 hashes, so one probe yields
    # ~10^4-10^5 candidates; a tiny budget must give the same pairs with a lower peak
    h = planted_hashes(3000, seed=7)
    want = brute(h, 8)

    def peak(budget: float | None) -> tuple[set[tuple[int, int, int]], int]:
        tracemalloc.start()
        i, j, d = phash_pairs(h, 8, memory_budget_mb=budget, blocks=9)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)), top

    small, small_peak = peak(0.01)
    whole, whole_peak = peak(None)
    assert small == whole == want
    assert small_peak < whole_peak / 2


def test_partitioned_knn_finds_the_near_copies_exact_search_finds() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    x = centres[rng.integers(0, 40, size=3000)] + 0.5 * rng.normal(size=(3000, 32))
    x[2500:] = x[:500] + 0.02 * rng.normal(size=(500, 32))  # 500 near copies
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    i, j, s = partitioned_knn_pairs(x, 0.97, k=5, probes=2, memory_budget_mb=0.5)
    ei, ej, _ = knn_pairs(x, 0.97, k=5, batch_size=256)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    exact = set(zip(ei.tolist(), ej.tolist(), strict=True))
    assert {(a, a + 2500) for a in range(500)} <= exact
    assert len(found & exact) >= 0.99 * len(exact)
    assert np.allclose(s, np.einsum("ij,ij->i", x[i], x[j]), atol=1e-5)
    assert (i < j).all() and (s >= 0.97).all()


def planted_vectors(n: int, dim: int, seed: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Unit vectors around 40 centres, the last fifth near copies (cosine ~0.99) of the first
    fifth, plus one chain: row m+1 ~ m+2 ~ m+3 (cosine 0.989, 0.982) with the ends at 0.943."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(0, 40, size=n)] + 0.5 * rng.normal(size=(n, dim))
    m = n // 5
    x[n - m :] = x[:m] + 0.01 * np.linalg.norm(x[:m], axis=1, keepdims=True) * rng.normal(
        size=(m, dim)
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    step = rng.normal(size=dim)
    step -= step @ x[m + 1] * x[m + 1]
    step /= np.linalg.norm(step)
    for r, t in ((m + 2, 0.15), (m + 3, 0.34)):  # angles from row m+1
        x[r] = np.cos(t) * x[m + 1] + np.sin(t) * step
    return x.astype(np.float32), [(a, a + n - m) for a in range(m)]


def test_ivf_pairs_from_the_lakes_ivf_pq_index(lake) -> None:
    """The index path reads the IVF centroids of a real IVF_PQ index and finds what exact
    search finds; the groups built from its pairs equal the exact ones and never chain."""
    from plugins.checks.duplicates import index_centroids, ivf_knn_pairs
    from plugins.clip_embed import build_index

    n, dim = 3000, 32
    x, planted = planted_vectors(n, dim, 0)
    rows = pa.table({"media_id": [f"m{i:05d}" for i in range(n)], "kind": ["image"] * n})
    lake.insert_new("media", rows)
    assert index_centroids(lake) is None  # no embeddings yet
    lake.add_columns("media", [pa.field("clip_image", pa.list_(pa.float32(), dim))])
    flat = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
    lake.update_columns(
        "media", pa.table({"media_id": rows.column("media_id"), "clip_image": flat})
    )
    assert index_centroids(lake) is None  # embedded, no index
    assert build_index(lake, min_rows=256, num_partitions=16) == "created"
    cent = index_centroids(lake)
    assert (
        cent is not None and 4 <= len(cent) <= 16 and cent.shape[1] == dim
    )  # Lance may train fewer
    # media are read back in the lake's order: match them to x by media_id
    got = lake.dataset("media").to_table(columns=["media_id"]).column("media_id").to_pylist()
    assert got == rows.column("media_id").to_pylist()

    ei, ej, es = knn_pairs(x, 0.97, k=5, batch_size=256)
    exact = set(zip(ei.tolist(), ej.tolist(), strict=True))
    for found in (
        ivf_knn_pairs(x, cent, 0.97, k=5, probes=2, memory_budget_mb=0.25),
        partitioned_knn_pairs(x, 0.97, k=5, probes=2, memory_budget_mb=0.25, centroids=cent),
    ):
        i, j, s = found
        pairs = set(zip(i.tolist(), j.tolist(), strict=True))
        assert set(planted) <= pairs
        assert len(pairs & exact) >= 0.99 * len(exact)
        assert np.allclose(s, np.einsum("ij,ij->i", x[i], x[j]), atol=1e-5)
        assert (i < j).all() and (s >= 0.97).all()
        a, b, c = 601, 602, 603
        assert {(a, b), (b, c)} <= pairs and (a, c) not in pairs  # the chain's links only

        def groups(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
            edges = [
                (p, q, r, 0) for p, q, r in zip(u.tolist(), v.tolist(), w.tolist(), strict=True)
            ]
            return greedy_groups(n, edges, list(range(n)))[0]

        rep = groups(i, j, s)
        assert (rep == groups(ei, ej, es)).all()
        assert rep[a] == rep[b] == a and rep[c] == -1  # c is like b, not like the rep a
        assert all(rep[copy] == src for src, copy in planted)


def test_nearest_rows_partitioned_matches_exact() -> None:
    """The outliers' k-NN above exact_below (k-means partitions) agrees with exact search."""
    from plugins.checks.common import nearest_rows

    x, _ = planted_vectors(4000, 32, 1)
    exact = nearest_rows(x, 5, 2, 0.5, exact_below=10**6)
    part = nearest_rows(x, 5, 2, 0.5, exact_below=100)
    assert (np.diff(exact, axis=1) <= 0).all()
    assert np.isclose(part, exact, atol=1e-5).all(axis=1).mean() >= 0.9
    assert (part <= exact + 1e-5).all()  # a subset search never finds closer rows
    brute = x @ x.T
    np.fill_diagonal(brute, -np.inf)
    assert np.allclose(exact, -np.sort(-brute, 1)[:, :5], atol=1e-5)


def test_look_alike_hashes_keep_a_bounded_nearest_set() -> None:
    # 3,000 images of 5 shapes: every hash within 3 bits of its shape's, so ~900k pairs are
    # within 8 bits; each media keeps its k nearest, pruned as found within a tiny budget
    rng = np.random.default_rng(3)
    shapes = rng.integers(0, 2**64, size=5, dtype=np.uint64)
    h = shapes[rng.integers(0, 5, size=3000)]
    for r in range(len(h)):
        for b in rng.choice(64, size=int(rng.integers(0, 4)), replace=False):
            h[r] ^= np.uint64(1) << np.uint64(int(b))
    k = 8
    i, j, d = phash_pairs(h, 8, memory_budget_mb=0.01, blocks=4, max_per_item=k)
    assert 0 < len(i) <= len(h) * k
    assert (i < j).all() and (np.bitwise_count(h[i] ^ h[j]) == d).all()
    ai, aj, ad = phash_pairs(h, 8)
    assert len(ai) > 20 * len(i)  # the uncapped search holds ~40x more
    want = nearest_per_item(ai, aj, ad, k)  # the same k nearest as pruning once at the end
    got = set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True))
    assert got == set(zip(*(x.tolist() for x in want), strict=True))
    # every media keeps its k nearest partners (ties broken by the smaller index)
    counts = np.bincount(np.concatenate([i, j]), minlength=len(h))
    assert counts.min() >= k


def test_capped_candidates_give_the_same_groups_on_a_small_case() -> None:
    h = planted_hashes(300, seed=11)  # each hash has at most a few within 8 bits
    full = phash_pairs(h, 8)
    capped = phash_pairs(h, 8, max_per_item=8)
    assert all((a == b).all() for a, b in zip(full, capped, strict=True))

    def groups(i: np.ndarray, j: np.ndarray, d: np.ndarray) -> list[int]:
        edges = [
            (a, b, 1.0 - e / 64, 1)
            for a, b, e in zip(*(x.tolist() for x in (i, j, d)), strict=True)
        ]
        return greedy_groups(len(h), edges, list(range(len(h))))[0].tolist()

    assert groups(*full) == groups(*capped)
    assert sum(r != -1 for r in groups(*capped)) >= 150  # the planted copies are grouped
