"""The last train batch of an epoch is never too small for a contrastive loss.

A 1-sample tail used to reach ``ClipModule.training_step``, which skipped it with Lightning's
"`training_step` returned `None`" warning in every ``make demo``; the sampler now merges a
tail smaller than the module's ``min_batch`` into the batch before it.
"""

from __future__ import annotations

import warnings
from itertools import chain
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from core.data.lance_data import LanceDataModule
from core.data.sampler import ShardedBatchSampler
from core.modules.clip_module import ClipModule
from tests.conftest import conf_kwargs


@pytest.mark.parametrize("world_size", [1, 2])
def test_small_tail_merges_into_the_batch_before(world_size: int) -> None:
    """Every position still comes once per rank; no batch is under ``min_batch``."""
    for size, batch in [(9, 4), (17, 4), (33, 8)]:
        for rank in range(world_size):
            s = ShardedBatchSampler(
                size, batch, seed=3, rank=rank, world_size=world_size, min_batch=2
            )
            batches = list(s)
            assert len(batches) == len(s)
            assert min(len(b) for b in batches) >= 2
            assert sorted(chain.from_iterable(batches)) == sorted(s.positions().tolist())
    # without min_batch the 1-sample tail stays (other data modules keep their batches)
    assert [len(b) for b in ShardedBatchSampler(9, 4)] == [4, 4, 1]
    assert [len(b) for b in ShardedBatchSampler(9, 4, min_batch=2)] == [4, 5]
    assert [len(b) for b in ShardedBatchSampler(10, 4, min_batch=2)] == [4, 4, 2]
    with pytest.raises(ValueError, match="min_batch"):
        ShardedBatchSampler(9, 4, min_batch=5)


def test_merged_tail_with_length_groups_and_resume_skip() -> None:
    """Length-grouped batches merge the same way, and a resumed epoch (``skip``) continues
    with exactly the batches the uninterrupted epoch had left."""
    lengths = np.arange(41)
    s = ShardedBatchSampler(41, 4, seed=0, lengths=lengths, group_by_length=3, min_batch=2)
    full = list(s)
    assert len(full) == len(s) == 10 and min(len(b) for b in full) >= 2
    assert sorted(chain.from_iterable(full)) == list(range(41))
    s.skip = 7
    assert list(s) == full[7:]


def test_clip_epoch_with_one_sample_tail_trains_every_sample(
    tmp_path: Path, lake_dir: Path
) -> None:
    """A real fit whose train split leaves a 1-sample tail: no "returned None" warning, one
    optimizer step per (merged) batch, and every train sample reaches ``training_step``."""
    L.seed_everything(0)
    torch.set_num_threads(1)
    data = conf_kwargs("train", "data", f"lake.uri={lake_dir}", num_workers=0)
    n = LanceDataModule(**data).sizes()["train"]
    assert n > 4
    # two batches per epoch: n - 1 samples and a 1-sample tail
    dm = LanceDataModule(**data | {"batch_size": n - 1})
    module = ClipModule(**conf_kwargs("train", "model", "model=clip_tiny", warmup_steps=1))
    dm.set_collator(module.make_collator(train=True), module.make_collator(train=False))
    seen: list[str] = []

    class Seen(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.extend(batch["sample_ids"])

    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[Seen()],
        default_root_dir=str(tmp_path),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=dm)
    returned_none = [str(w.message) for w in caught if "returned `None`" in str(w.message)]
    assert returned_none == []
    assert trainer.global_step == 1
    assert len(seen) == len(set(seen)) == n  # each train sample once, the tail included
