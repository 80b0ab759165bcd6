"""Length-grouped batching: homogeneous batches, every sample once, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.data.lance_data import LanceDataModule
from core.data.sampler import ShardedBatchSampler


def _spread(batches: list[list[int]], lengths: np.ndarray) -> float:
    return float(np.mean([lengths[b].max() - lengths[b].min() for b in batches]))


def test_grouped_batches_are_homogeneous_and_cover_every_position() -> None:
    lengths = np.random.default_rng(0).integers(10, 1000, size=1000)
    plain = ShardedBatchSampler(1000, 16, seed=3)
    grouped = ShardedBatchSampler(1000, 16, seed=3, lengths=lengths, group_by_length=20)
    a, b = list(plain), list(grouped)
    assert len(b) == len(grouped) == len(a)
    assert sorted(p for batch in b for p in batch) == list(range(1000))
    # length spread inside a batch: random batches span most of the range, grouped few
    assert _spread(b, lengths) < 0.2 * _spread(a, lengths)
    # padding of a right-padded batch = sum(max - length): far less when grouped
    pad = lambda bs: sum(int(lengths[x].max() * len(x) - lengths[x].sum()) for x in bs)  # noqa: E731
    assert pad(b) < 0.2 * pad(a)


def test_grouping_is_deterministic_per_epoch_and_resumes() -> None:
    lengths = np.arange(200) % 37
    s = ShardedBatchSampler(200, 8, seed=1, lengths=lengths, group_by_length=5)
    first = list(s)
    assert list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0)
    s.skip = 7
    assert list(s) == first[7:]


def test_grouping_with_drop_last_and_ranks() -> None:
    lengths = np.arange(103)
    for rank in (0, 1):
        s = ShardedBatchSampler(103, 10, seed=0, rank=rank, world_size=2, drop_last=True,
                                lengths=lengths, group_by_length=2)  # fmt: skip
        batches = list(s)
        assert len(batches) == len(s) == 5
        assert all(len(b) == 10 for b in batches)


def test_grouping_needs_lengths() -> None:
    with pytest.raises(ValueError, match="one length per position"):
        ShardedBatchSampler(10, 2, group_by_length=4)


def test_data_module_estimates_lengths_from_text_and_media(lake_dir: Path) -> None:
    dm = LanceDataModule(str(lake_dir), batch_size=4, group_by_length=4, length_image_tokens=100)
    ds = dm.dataset("train")
    lengths = ds.estimate_lengths(100)
    assert len(lengths) == len(ds)
    # image-folder samples: one image, no text columns
    assert set(lengths.tolist()) == {100}
    loader = dm.loader("train", 0, 1)
    seen = [p for b in loader.batch_sampler for p in b]
    assert sorted(seen) == list(range(len(ds)))
