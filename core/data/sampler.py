"""A deterministic, rank-sharded, resumable batch sampler.

Every epoch draws a permutation from ``numpy.random.default_rng([seed, epoch])`` (no global
RNG), pads it to a multiple of the world size by repeating its head (as
``torch.utils.data.DistributedSampler`` does, so every rank gets the same number of
batches), and gives rank ``r`` the positions ``r, r + world, r + 2*world, ...``. The
sampler can start an epoch after its first ``skip`` batches: that is how a resumed run
continues where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


class ShardedBatchSampler:
    """Yields lists of dataset positions, one list per batch, for one rank."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.skip = 0  # batches to skip at the start of the next iteration (resume)

    @property
    def per_rank(self) -> int:
        """Positions each rank sees per epoch (padding included)."""
        return math.ceil(self.size / self.world_size) if self.size else 0

    def __len__(self) -> int:
        n = self.per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation (Lightning calls this before each epoch)."""
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def positions(self) -> np.ndarray:
        """This rank's positions for the current epoch, in order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        else:
            order = np.arange(self.size)
        total = self.per_rank * self.world_size
        if total > self.size:
            order = np.concatenate([order, np.resize(order, total - self.size)])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        pos = self.positions()
        for b in range(skip, len(self)):
            batch = pos[b * self.batch_size : (b + 1) * self.batch_size]
            yield batch.tolist()
