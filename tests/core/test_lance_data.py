"""LanceDataModule on a small real lake: items, filters, splits, sharding, workers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from core.data.lance_data import LanceDataModule
from core.data.lance_dataset import hash_split
from core.data.loader import StatefulLoader
from core.data.sampler import ShardedBatchSampler


def _all_items(dm: LanceDataModule, split: str) -> list[dict]:
    ds = dm.dataset(split)
    return ds.__getitems__(list(range(len(ds))))


def test_items_are_the_lake_samples(lake_dir: Path) -> None:
    from lake.store import Lake

    dm = LanceDataModule(str(lake_dir), batch_size=4)
    items = [it for s in ("train", "val", "test") for it in _all_items(dm, s)]
    rows = Lake(lake_dir).dataset("samples").to_table().to_pylist()
    assert sorted(it["sample_id"] for it in items) == sorted(r["sample_id"] for r in rows)
    by_id = {r["sample_id"]: r for r in rows}
    for it in items:
        row = by_id[it["sample_id"]]
        assert [hashlib.sha256(b).hexdigest() for b in it["images"]] == row["media_ids"]
        assert (it["label"], it["dataset"], it["caption"]) == (row["label"], row["dataset"], None)
        assert it["messages"] == []
    assert dm.label_names == ["ball", "cat", "dog"]


def test_split_column_wins_and_hash_split_is_deterministic(lake_dir: Path) -> None:
    from lake.store import Lake

    rows = Lake(lake_dir).dataset("samples").to_table(columns=["sample_id", "split"]).to_pylist()
    given = {r["sample_id"]: r["split"] for r in rows if r["split"]}
    assert len(given) == 6
    dm = LanceDataModule(str(lake_dir), val_fraction=0.2, test_fraction=0.1)
    for split in ("train", "val", "test"):
        for it in _all_items(dm, split):
            sid = it["sample_id"]
            assert split == given.get(sid, hash_split(sid, 0.2, 0.1))
    assert sum(dm.sizes().values()) == 48
    again = LanceDataModule(str(lake_dir), val_fraction=0.2, test_fraction=0.1)
    assert [it["sample_id"] for it in _all_items(again, "val")] == [
        it["sample_id"] for it in _all_items(dm, "val")
    ]


def test_hash_split_fractions() -> None:
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    splits = [hash_split(s, 0.1, 0.2) for s in ids]
    assert abs(splits.count("test") / 4000 - 0.2) < 0.03
    assert abs(splits.count("val") / 4000 - 0.1) < 0.03


def test_where_and_datasets_filters(lake_dir: Path) -> None:
    cats = LanceDataModule(str(lake_dir), where="label = 'cat'", val_fraction=0, test_fraction=0)
    assert cats.label_names == ["cat"]
    assert {it["label"] for s in ("train", "val", "test") for it in _all_items(cats, s)} == {"cat"}
    assert sum(cats.sizes().values()) == 20
    toys = LanceDataModule(str(lake_dir), datasets=["toys"])
    assert sum(toys.sizes().values()) == 8 and toys.label_names == ["ball"]
    both = LanceDataModule(str(lake_dir), where="label != 'dog'", datasets=["pets", "toys"])
    assert sum(both.sizes().values()) == 28


def test_media_read_filter_matches_rowid(lake_dir: Path) -> None:
    a = LanceDataModule(str(lake_dir), media_read="rowid")
    b = LanceDataModule(str(lake_dir), media_read="filter")
    assert _all_items(a, "train") == _all_items(b, "train")


def test_block_reads_give_the_same_items_and_stay_bounded(lake_dir: Path) -> None:
    plain = LanceDataModule(str(lake_dir))
    blocked = LanceDataModule(str(lake_dir), shuffle_block=3, shuffle_window=1)
    ds = blocked.dataset("train")
    assert (ds.read_block, ds.cache_blocks) == (3, 2)
    order = np.random.default_rng(0).permutation(len(ds)).tolist()
    want = plain.dataset("train").__getitems__(order)
    assert ds.__getitems__(order[:5]) + ds.__getitems__(order[5:]) == want
    assert 0 < len(ds._blocks) <= 2  # least recently used blocks are dropped
    loaded = [sid for b in blocked.loader("train", 0, 1) for sid in b["sample_id"]]
    assert sorted(loaded) == sorted(it["sample_id"] for it in want)


def test_block_shuffle_mixes_whole_blocks_within_windows() -> None:
    s = ShardedBatchSampler(23, 4, seed=2, shuffle_block=5, shuffle_window=2)
    order = s.positions()
    assert sorted(order.tolist()) == list(range(23))
    where = np.empty(23, np.int64)
    where[order] = np.arange(23)
    for b in range(5):  # a block's positions all come within one window (< 10 apart)
        span = where[5 * b : min(5 * b + 5, 23)]
        assert span.max() - span.min() < 10
    assert np.array_equal(
        order, ShardedBatchSampler(23, 4, seed=2, shuffle_block=5, shuffle_window=2).positions()
    )
    s.set_epoch(1)
    assert not np.array_equal(order, s.positions())
    assert not np.array_equal(order, np.arange(23))
    with pytest.raises(ValueError, match="shuffle_block"):
        ShardedBatchSampler(10, 2, shuffle_block=-1)


def test_loader_batches_and_rank_sharding(lake_dir: Path) -> None:
    dm = LanceDataModule(str(lake_dir), batch_size=3, val_fraction=0, test_fraction=0)
    full = [sid for b in dm.loader("train", 0, 1) for sid in b["sample_id"]]
    assert len(full) == len(set(full)) == len(dm.dataset("train"))
    per_rank = [[sid for b in dm.loader("train", r, 3) for sid in b["sample_id"]] for r in range(3)]
    assert len({len(p) for p in per_rank}) == 1  # equal work per rank
    assert set().union(*per_rank) == set(full)
    assert sum(len(p) for p in per_rank) - len(full) < 3  # padding only
    dm2 = LanceDataModule(
        str(lake_dir), batch_size=3, where="dataset = 'toys'", test_fraction=0, val_fraction=0
    )
    shards = [{s for b in dm2.loader("train", r, 2) for s in b["sample_id"]} for r in range(2)]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 8  # an exact partition


def test_sampler_is_seeded_per_epoch_and_skips_on_resume() -> None:
    s = ShardedBatchSampler(10, 3, seed=1)
    e0 = list(s)
    assert e0 == list(ShardedBatchSampler(10, 3, seed=1)) and len(e0) == len(s) == 4
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and sorted(x for b in e1 for x in b) == list(range(10))
    s.skip = 2
    assert list(s) == e1[2:] and list(s) == e1  # skip applies to one iteration only
    assert len(ShardedBatchSampler(10, 3, drop_last=True)) == 3
    assert list(ShardedBatchSampler(5, 2, shuffle=False)) == [[0, 1], [2, 3], [4]]


def test_stateful_loader_resumes_position(lake_dir: Path) -> None:
    dm = LanceDataModule(str(lake_dir), batch_size=4)
    first = dm.loader("train")
    assert isinstance(first, StatefulLoader)
    it = iter(first)
    seen = [next(it)["sample_id"] for _ in range(3)]
    state = first.state_dict()
    assert state["batches"] == 3 and state["epoch"] == 0
    rest = [b["sample_id"] for b in it]
    again = dm.loader("train")
    again.load_state_dict(state)
    assert [b["sample_id"] for b in again] == rest
    assert seen  # the skipped part is not re-read
    end = dict(state, batches=len(first))
    again.load_state_dict(end)  # saved at an epoch's end: the next epoch starts
    assert again.batch_sampler.epoch == 1 and again.batch_sampler.skip == 0
    with pytest.raises(ValueError, match="cannot resume"):
        again.load_state_dict(dict(state, batch_size=5))


def test_read_ahead_gives_the_same_batches(lake_dir: Path) -> None:
    ahead = LanceDataModule(str(lake_dir), batch_size=3, read_ahead=True).loader("train")
    plain = LanceDataModule(str(lake_dir), batch_size=3, read_ahead=False).loader("train")
    assert ahead.read_ahead and not plain.read_ahead
    it = iter(ahead)
    assert len(it) == len(plain)
    got = [b["sample_id"] for b in it]
    assert got == [b["sample_id"] for b in plain] and len(got) == len(plain)
    assert ahead.state_dict()["batches"] == len(got)  # counted as handed out, not as read
    ahead.load_state_dict(dict(ahead.state_dict(), batches=2, epoch=0))
    assert [b["sample_id"] for b in ahead] == got[2:]


def test_workers_with_spawn(lake_dir: Path) -> None:
    from core.data.collate import DecodeCollator

    dm = LanceDataModule(str(lake_dir), batch_size=5, num_workers=2, persistent_workers=False)
    dm.set_collator(DecodeCollator())
    batches = list(dm.loader("train"))
    ref = LanceDataModule(str(lake_dir), batch_size=5)
    ref.set_collator(DecodeCollator())
    expected = list(ref.loader("train"))
    assert [b["sample_id"] for b in batches] == [b["sample_id"] for b in expected]
    img = batches[0]["images"][0][0]
    assert img.mode == "RGB" and np.asarray(img).shape[2] == 3


def test_fork_is_refused(lake_dir: Path) -> None:
    with pytest.raises(ValueError, match="fork"):
        LanceDataModule(str(lake_dir), multiprocessing_context="fork")
