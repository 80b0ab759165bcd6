"""A DataLoader whose position inside the epoch is saved in Lightning checkpoints.

Lightning saves ``state_dict()`` of every training dataloader that has one (its
``_Stateful`` protocol, ``fit_loop.on_save_checkpoint``) and calls ``load_state_dict`` on
restart before it creates the iterator. The state is the sampler's epoch and the number
of batches this loader has handed out in it; the loader counts batches as it yields them
(in the main process, so worker prefetching does not inflate the count). Its iterators
draw their workers' base seed from a generator seeded by ``(seed, epoch)``, not from the
global torch RNG, so a resumed run's random numbers match the run it continues.

Without worker processes, ``read_ahead`` reads the next batch from Lance in a background
thread while the current one is collated (decoded) in the main thread: Lance's takes and
PIL's decoders release the GIL, so the reads hide behind the decoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.data.sampler import ShardedBatchSampler


class StatefulLoader(DataLoader):
    """DataLoader over a :class:`ShardedBatchSampler`, resumable mid-epoch."""

    def __init__(self, *args: Any, read_ahead: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, ShardedBatchSampler):
            raise TypeError("StatefulLoader needs batch_sampler=ShardedBatchSampler(...)")
        self._consumed = 0
        self.read_ahead = read_ahead

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
        if self.read_ahead and self.num_workers == 0 and hasattr(self.dataset, "__getitems__"):
            return _Counting(self, self._read_ahead(), len(self.sampler_state))
        return _Counting(self, super().__iter__())

    def _read_ahead(self) -> Iterator[Any]:
        """Batches collated in this thread, each read while the previous one decodes."""
        read = self.dataset.__getitems__  # type: ignore[attr-defined]
        batches = iter(self.sampler_state)
        with ThreadPoolExecutor(1, thread_name_prefix="lakeloom-read") as pool:
            nxt = next(batches, None)
            pending = pool.submit(read, nxt) if nxt is not None else None
            while pending is not None:
                items = pending.result()
                nxt = next(batches, None)
                pending = pool.submit(read, nxt) if nxt is not None else None
                yield self.collate_fn(items)

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
