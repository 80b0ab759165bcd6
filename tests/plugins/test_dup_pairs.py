"""The duplicates check's hash pair finder: exact against brute force, bounded on degenerate
input and within its memory budget."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from plugins.checks.duplicates import (
    _block_plan,
    greedy_groups,
    knn_pairs,
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
