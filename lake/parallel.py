"""Ordered, bounded parallel map over worker processes (for sources that analyse files)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def worker_count(workers: int | str, items: int | None = None) -> int:
    """Resolve ``auto`` to the CPU count (0 = run inline when there is a single item)."""
    if workers == "auto":
        if items is not None and items <= 1:
            return 0
        return min(os.cpu_count() or 1, items or os.cpu_count() or 1)
    return max(0, int(workers))


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, inflight: int | None = None
) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in input order.

    With ``workers`` > 0 the calls run in spawned processes (Lance and PyAV are not
    fork-safe), at most ``inflight`` (default ``2 * workers``) ahead of the consumer, so
    memory stays bounded by a few results. ``fn`` must be a module-level function.
    """
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    limit = inflight or 2 * workers
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
