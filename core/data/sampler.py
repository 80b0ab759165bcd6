"""A deterministic, rank-sharded, resumable batch sampler.

Every epoch draws a permutation from ``numpy.random.default_rng([seed, epoch])`` (no global
RNG). With ``shuffle_block`` > 0 the permutation is block-local, as streaming loaders do
(MosaicML Streaming, WebDataset): the positions are cut into blocks of ``shuffle_block``
consecutive positions, the blocks are shuffled, and the positions within each window of
``shuffle_window`` consecutive (shuffled) blocks are shuffled together, so a batch draws
from ``shuffle_block * shuffle_window`` samples and the dataset can read whole blocks with
one sequential take each. The order is then padded to a multiple of the world size by
repeating its head (as ``torch.utils.data.DistributedSampler`` does, so every rank gets
the same number of batches), and gives rank ``r`` the positions ``r, r + world, ...``.
The sampler can start an epoch after its first ``skip`` batches: that is how a resumed
run continues where it stopped. Lightning advances the epoch through :attr:`sampler`.

With ``lengths`` and ``group_by_length`` = m > 0 (length-grouped batching, the simple
alternative to packing), each run of ``m * batch_size`` positions of the rank's order is
sorted by length and cut into batches, and the batches are shuffled (deterministically per
epoch): batches hold samples of similar length, so little of them is padding.

With ``min_batch`` > 1 a last batch smaller than ``min_batch`` (not dropped by
``drop_last``) is merged into the batch before it, so no sample is left out and no batch is
too small for its objective (a contrastive loss needs negatives: CLIP asks for 2).
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
        shuffle_block: int = 0,
        shuffle_window: int = 1,
        lengths: np.ndarray | None = None,
        group_by_length: int = 0,
        min_batch: int = 1,
    ) -> None:
        if shuffle_block < 0 or shuffle_window < 1:
            raise ValueError("shuffle_block must be >= 0 and shuffle_window >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 1 <= min_batch <= batch_size:
            raise ValueError(f"min_batch {min_batch} must be between 1 and batch_size {batch_size}")
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.shuffle_block = shuffle_block
        self.shuffle_window = shuffle_window
        if group_by_length and (lengths is None or len(lengths) != size):
            raise ValueError("group_by_length needs one length per position")
        self.lengths = lengths
        self.group_by_length = int(group_by_length)
        self.min_batch = int(min_batch)
        self.epoch = 0
        self.skip = 0  # batches to skip at the start of the next iteration (resume)

    @property
    def per_rank(self) -> int:
        """Positions each rank sees per epoch (padding included)."""
        return math.ceil(self.size / self.world_size) if self.size else 0

    def __len__(self) -> int:
        n = self.per_rank
        if self.drop_last:
            return n // self.batch_size
        return math.ceil(n / self.batch_size) - int(self._merges_tail())

    def _merges_tail(self) -> bool:
        """Whether the last batch is too small and goes into the one before it."""
        n, bs = self.per_rank, self.batch_size
        return not self.drop_last and n > bs and 0 < n % bs < self.min_batch

    @property
    def sampler(self) -> ShardedBatchSampler:
        """This sampler itself: Lightning calls ``set_epoch`` before each epoch on
        ``loader.sampler`` and ``loader.batch_sampler.sampler`` (where a torch
        ``BatchSampler`` keeps its sampler), never on the batch sampler; answering here
        is how each epoch gets its own permutation under Lightning."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation (Lightning calls this before each epoch)."""
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def positions(self) -> np.ndarray:
        """This rank's positions for the current epoch, in order."""
        if self.shuffle and self.shuffle_block > 0:
            order = self._block_permutation()
        elif self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        else:
            order = np.arange(self.size)
        total = self.per_rank * self.world_size
        if total > self.size:
            order = np.concatenate([order, np.resize(order, total - self.size)])
        return order[self.rank :: self.world_size]

    def _block_permutation(self) -> np.ndarray:
        """Blocks shuffled, then positions shuffled within each window of blocks."""
        rng = np.random.default_rng([self.seed, self.epoch])
        block, window = self.shuffle_block, self.shuffle_window
        blocks = rng.permutation(math.ceil(self.size / block))
        parts = []
        for w in range(0, len(blocks), window):
            members = [
                np.arange(b * block, min((b + 1) * block, self.size))
                for b in blocks[w : w + window]
            ]
            parts.append(rng.permutation(np.concatenate(members)))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def batches(self) -> list[np.ndarray]:
        """This rank's batches for the current epoch, in order."""
        pos = self.positions()
        bs = self.batch_size
        out = [pos[b * bs : (b + 1) * bs] for b in range(len(self))]
        if self._merges_tail():
            out[-1] = pos[(len(self) - 1) * bs :]
        if not (self.group_by_length and self.lengths is not None):
            return out
        span = self.group_by_length * bs
        grouped = []
        for start in range(0, len(pos), span):
            chunk = pos[start : start + span]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            grouped += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
        if self._merges_tail():
            grouped[-2:] = [np.concatenate(grouped[-2:])]
        if self.drop_last:
            grouped = [g for g in grouped if len(g) == bs][: len(self)]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, 1])
            grouped = [grouped[i] for i in rng.permutation(len(grouped))]
        return grouped

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        for batch in self.batches()[skip:]:
            yield batch.tolist()
