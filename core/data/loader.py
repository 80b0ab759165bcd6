"""A DataLoader whose position inside the epoch is saved in Lightning checkpoints.

Lightning saves ``state_dict()`` of every training dataloader that has one (its
``_Stateful`` protocol, ``fit_loop.on_save_checkpoint``) and calls ``load_state_dict`` on
restart before it creates the iterator. The state is the sampler's epoch and the number
of batches this loader has handed out in it; the loader counts batches as it yields them
(in the main process, so worker prefetching does not inflate the count).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from core.data.sampler import ShardedBatchSampler


class StatefulLoader(DataLoader):
    """DataLoader over a :class:`ShardedBatchSampler`, resumable mid-epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, ShardedBatchSampler):
            raise TypeError("StatefulLoader needs batch_sampler=ShardedBatchSampler(...)")
        self._consumed = 0

    @property
    def sampler_state(self) -> ShardedBatchSampler:
        """The batch sampler (typed)."""
        assert isinstance(self.batch_sampler, ShardedBatchSampler)
        return self.batch_sampler

    def __iter__(self) -> Iterator[Any]:
        self._consumed = self.sampler_state.skip
        return _Counting(self, super().__iter__())

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


class _Counting:
    """Iterator wrapper counting the batches handed out."""

    def __init__(self, loader: StatefulLoader, it: Iterator[Any]) -> None:
        self.loader, self.it = loader, it

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        batch = next(self.it)
        self.loader._consumed += 1
        return batch

    def __len__(self) -> int:
        return len(self.it)  # type: ignore[arg-type]
