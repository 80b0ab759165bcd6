"""Grouped reads (``data.read_batches``): the same samples, in the same seeded order, as one
take per batch, with and without workers and across a resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data.lance_data import LanceDataModule
from core.data.loader import StatefulLoader


def _ids(loader: StatefulLoader) -> list[list[str]]:
    return [list(b["sample_id"]) for b in loader]


def test_read_batches_gives_the_items_of_each_batch(lake_dir: Path) -> None:
    ds = LanceDataModule(str(lake_dir), batch_size=4).dataset("train")
    batches = [[5, 0, 3], [7, 5], [1], [2, 2, 6]]  # repeats inside and across batches
    grouped = ds.read_batches(batches)
    single = [ds.__getitems__(b) for b in batches]
    assert [[it["sample_id"] for it in b] for b in grouped] == [
        [it["sample_id"] for it in b] for b in single
    ]
    assert [[it["images"] for it in b] for b in grouped] == [
        [it["images"] for it in b] for b in single
    ]
    assert grouped[1][1] is not grouped[0][0]  # a repeated position is its own dict
    assert ds.read_batches([]) == [] and ds.read_batches([[]]) == [[]]


@pytest.mark.parametrize("read_ahead", [True, False])
def test_grouped_loader_matches_one_take_per_batch(lake_dir: Path, read_ahead: bool) -> None:
    def loader(read_batches: int) -> StatefulLoader:
        dm = LanceDataModule(
            str(lake_dir), batch_size=3, read_ahead=read_ahead, read_batches=read_batches
        )
        return dm.loader("train")

    grouped, single = loader(4), loader(1)
    assert grouped.read_batches == 4 and single.read_batches == 1
    for epoch in (0, 1):
        grouped.batch_sampler.set_epoch(epoch)
        single.batch_sampler.set_epoch(epoch)
        got = _ids(grouped)
        assert got == _ids(single)
        flat = [s for b in got for s in b]
        assert len(flat) == len(set(flat)) == len(grouped.dataset)  # each sample once
    first = _ids(grouped)
    assert first != _ids(loader(4))  # epoch 1 here vs a fresh loader's epoch 0
    grouped.load_state_dict(dict(grouped.state_dict(), epoch=1, batches=5))
    assert _ids(grouped) == first[5:]
    assert grouped.state_dict()["batches"] == len(first)


def test_grouped_reads_in_workers(lake_dir: Path) -> None:
    from core.data.collate import DecodeCollator

    def module(workers: int, read_batches: int) -> LanceDataModule:
        dm = LanceDataModule(
            str(lake_dir), batch_size=4, num_workers=workers, read_batches=read_batches,
            persistent_workers=True,
        )  # fmt: skip
        dm.set_collator(DecodeCollator())
        return dm

    ref = module(0, 1).loader("train")
    loader = module(2, 3).loader("train")
    for epoch in (0, 1):
        ref.batch_sampler.set_epoch(epoch)
        loader.batch_sampler.set_epoch(epoch)
        expected = _ids(ref)
        batches = list(loader)
        assert [list(b["sample_id"]) for b in batches] == expected
        flat = [s for b in expected for s in b]
        assert len(flat) == len(set(flat)) == len(loader.dataset)  # no overlap between workers
        assert batches[0]["images"][0][0].mode == "RGB"
    loader.load_state_dict(dict(loader.state_dict(), batches=4))
    assert _ids(loader) == expected[4:]  # resumed inside the epoch, groups re-formed


def test_read_batches_must_be_positive(lake_dir: Path) -> None:
    with pytest.raises(ValueError, match="read_batches"):
        LanceDataModule(str(lake_dir), read_batches=0).loader("train")


def test_group_read_ahead_pairs_each_group_with_its_workers_next(lake_dir: Path) -> None:
    from core.data.loader import _grouped, _Groups, _GroupSampler

    loader = LanceDataModule(str(lake_dir), batch_size=2, read_batches=2).loader("train")
    groups = list(_grouped(iter(loader.sampler_state), 2))
    assert len(groups) >= 3
    pairs = list(_GroupSampler(loader.sampler_state, 2, workers=2))
    assert [g for g, _ in pairs] == groups
    assert [a for _, a in pairs] == [*groups[2:], None, None]  # group i+2 goes to that worker
    reader = _Groups(loader.dataset)

    def ids(got: list) -> list:
        return [[it["sample_id"] for it in b] for b in got]

    expected = [ids(loader.dataset.read_batches(g)) for g in groups]
    # read ahead, then asked for that group (a hit) or, after a mismatch, another (a miss)
    assert ids(reader.__getitems__((groups[0], groups[2]))) == expected[0]
    assert reader._pending is not None
    assert ids(reader.__getitems__((groups[2], None))) == expected[2]
    assert reader._pending is None
    reader.__getitems__((groups[0], groups[2]))
    assert ids(reader.__getitems__((groups[1], None))) == expected[1]
    assert reader.__getstate__()["_pending"] is None
