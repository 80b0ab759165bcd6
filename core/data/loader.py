"""A DataLoader whose position inside the epoch is saved in Lightning checkpoints.

Lightning saves ``state_dict()`` of every training dataloader that has one (its
``_Stateful`` protocol, ``fit_loop.on_save_checkpoint``) and calls ``load_state_dict`` on
restart before it creates the iterator. The state is the sampler's epoch and the number
of batches this loader has handed out in it; the loader counts batches as it yields them
(in the main process, so worker prefetching does not inflate the count). Its iterators
draw their workers' base seed from a generator seeded by ``(seed, epoch)``, not from the
global torch RNG, so a resumed run's random numbers match the run it continues.

A Lance take costs about a millisecond whatever its size up to a few hundred rows, so the
loader reads ``read_batches`` batches together (the dataset's ``read_batches``: one take of
each table for all of them) and hands them out one by one, in the sampler's order. Without
worker processes, ``read_ahead`` reads the next group in a background thread while the
current one is collated (decoded) in the main thread: Lance's takes and PIL's decoders
release the GIL, so the reads hide behind the decoding. With workers, each worker reads and
collates a whole group and sends its batches back together (an inner DataLoader over groups
of batches), so up to ``num_workers * prefetch_factor * read_batches`` batches are in flight.
Each group travels with the group the same worker gets next (the inner loader hands groups
to its workers round-robin), and the worker reads that one in a thread while it collates
the current one: a worker's random-access takes (~5 ms per 512 media rows against ~1 ms
per 512 for a sequential scan) then hide behind its decoding, as they do in one process.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.data.sampler import ShardedBatchSampler


class StatefulLoader(DataLoader):
    """DataLoader over a :class:`ShardedBatchSampler`, resumable mid-epoch."""

    def __init__(
        self, *args: Any, read_ahead: bool = True, read_batches: int = 1, **kwargs: Any
    ) -> None:
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, ShardedBatchSampler):
            raise TypeError("StatefulLoader needs batch_sampler=ShardedBatchSampler(...)")
        if read_batches < 1:
            raise ValueError(f"read_batches must be >= 1, not {read_batches}")
        self._consumed = 0
        self.read_ahead = read_ahead
        self.read_batches = int(read_batches)
        self._groups: DataLoader | None = None  # the inner loader over groups (workers)

    @property
    def sampler_state(self) -> ShardedBatchSampler:
        """The batch sampler (typed)."""
        assert isinstance(self.batch_sampler, ShardedBatchSampler)
        return self.batch_sampler

    def __iter__(self) -> Iterator[Any]:
        s = self.sampler_state
        self._consumed = s.skip
        # the iterator draws its workers' base seed from this generator: seeded by the
        # epoch, it never takes a number from the global torch RNG (a resumed run creates
        # iterators at other points than the run it continues)
        self.generator.manual_seed(epoch_seed(s.seed, s.epoch))
        reads = getattr(self.dataset, "read_batches", None)
        if self.num_workers == 0 and (self.read_ahead or self.read_batches > 1):
            if reads is None and hasattr(self.dataset, "__getitems__"):
                reads = _PerBatch(self.dataset)
            if reads is not None:
                return _Counting(self, self._in_process(reads), len(s))
        if self.num_workers > 0 and self.read_batches > 1 and reads is not None:
            return _Counting(self, self._from_workers(), len(s))
        return _Counting(self, super().__iter__())

    def _in_process(self, reads: Callable[[list[list[int]]], list[Any]]) -> Iterator[Any]:
        """Batches collated in this thread, read in groups of ``read_batches``; with
        ``read_ahead`` each group is read in a thread while the previous one decodes."""
        groups = _grouped(iter(self.sampler_state), self.read_batches)
        if not self.read_ahead:
            for group in groups:
                for items in reads(group):
                    yield self.collate_fn(items)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="lakeloom-read") as pool:
            nxt = next(groups, None)
            pending = pool.submit(reads, nxt) if nxt is not None else None
            while pending is not None:
                got = pending.result()
                nxt = next(groups, None)
                pending = pool.submit(reads, nxt) if nxt is not None else None
                for items in got:
                    yield self.collate_fn(items)

    def _from_workers(self) -> Iterator[Any]:
        """Batches from the workers, each of which reads and collates a group at a time."""
        if self._groups is not None and self._iterator is None:
            self._groups._iterator = None  # its workers were shut down (Lightning's teardown)
        if self._groups is None or not self.persistent_workers:
            self._groups = DataLoader(
                _Groups(self.dataset),
                batch_sampler=_GroupSampler(
                    self.sampler_state, self.read_batches, self.num_workers
                ),
                num_workers=self.num_workers,
                collate_fn=_CollateEach(self.collate_fn),
                pin_memory=self.pin_memory,
                timeout=self.timeout,
                worker_init_fn=self.worker_init_fn,
                multiprocessing_context=self.multiprocessing_context,
                generator=self.generator,
                prefetch_factor=self.prefetch_factor,
                persistent_workers=self.persistent_workers,
            )
        it = iter(self._groups)
        # Lightning shuts persistent workers down through the loader's _iterator
        self._iterator = self._groups._iterator
        for group in it:
            yield from group

    def state_dict(self) -> dict[str, Any]:
        """Epoch and batches consumed in it, plus what must match on resume."""
        s = self.sampler_state
        return {
            "epoch": s.epoch,
            "batches": self._consumed,
            "seed": s.seed,
            "size": s.size,
            "world_size": s.world_size,
            "batch_size": s.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (the next ``iter`` skips the consumed batches)."""
        s = self.sampler_state
        same = (state["seed"], state["size"], state["world_size"], state["batch_size"])
        if same != (s.seed, s.size, s.world_size, s.batch_size):
            raise ValueError(
                "cannot resume the data position: seed, dataset size, world size or batch size "
                f"changed ({same} -> {(s.seed, s.size, s.world_size, s.batch_size)})"
            )
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(s):  # saved at the end of an epoch: start the next one
            epoch, batches = epoch + 1, 0
        s.epoch, s.skip = epoch, batches


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed derived from ``(seed, epoch)``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _grouped(batches: Iterator[list[int]], size: int) -> Iterator[list[list[int]]]:
    """Consecutive groups of ``size`` batches (the last one may be shorter)."""
    group: list[list[int]] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class _PerBatch:
    """``read_batches`` for a dataset that only reads one batch at a time."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __call__(self, group: list[list[int]]) -> list[Any]:
        return [self.dataset.__getitems__(b) for b in group]


class _GroupSampler:
    """Groups of ``size`` consecutive batches of a :class:`ShardedBatchSampler` (its
    epoch and resume position are read when an iteration starts), each paired with the
    group ``workers`` places later: the one the same worker is handed next."""

    def __init__(self, sampler: ShardedBatchSampler, size: int, workers: int = 1) -> None:
        self.sampler, self.size, self.workers = sampler, size, max(int(workers), 1)

    def __iter__(self) -> Iterator[tuple[list[list[int]], list[list[int]] | None]]:
        groups = _grouped(iter(self.sampler), self.size)
        window = deque(itertools.islice(groups, self.workers))
        while window:
            group = window.popleft()
            later = next(groups, None)
            if later is not None:
                window.append(later)
            yield group, window[self.workers - 1] if len(window) >= self.workers else None

    def __len__(self) -> int:
        return math.ceil(max(len(self.sampler) - self.sampler.skip, 0) / self.size)


class _Groups(Dataset):
    """A dataset whose ``__getitems__`` takes a group of batches and the group this worker
    gets next (for the workers): the next one is read in a thread meanwhile."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[Any, Future] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"], state["_pending"] = None, None  # per process
        return state

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, pair: tuple[list[list[int]], list[list[int]] | None]) -> list[Any]:
        group, ahead = pair
        items = None
        if self._pending is not None:
            key, future = self._pending
            self._pending = None
            got = future.result()  # a stale read is awaited too: one reader at a time
            if key == _key(group):
                items = got
        if items is None:
            items = self.dataset.read_batches(group)
        if ahead is not None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="lakeloom-read")
            self._pending = (_key(ahead), self._pool.submit(self.dataset.read_batches, ahead))
        return items


def _key(group: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    """A group's positions, hashable (to match a read-ahead with the group asked for)."""
    return tuple(tuple(int(i) for i in b) for b in group)


class _CollateEach:
    """Collate each batch of a group (picklable: it runs in the workers)."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, group: list[Any]) -> list[Any]:
        return [self.collate_fn(items) for items in group]


class _Counting:
    """Iterator wrapper counting the batches handed out."""

    def __init__(self, loader: StatefulLoader, it: Iterator[Any], length: int | None = None):
        self.loader, self.it, self.length = loader, it, length

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        batch = next(self.it)
        self.loader._consumed += 1
        return batch

    def __len__(self) -> int:
        return self.length if self.length is not None else len(self.it)  # type: ignore[arg-type]
