"""``LanceDataModule``: the lake's samples of a split, with their media, for Lightning.

Selection (``select``, run by ``setup``) scans only id columns of ``samples`` (filtered by
``where`` and ``datasets``) and ``media_id`` of ``media``, pinning both table versions, and
keeps per split the sample row ids and their media row ids (numpy arrays, a few bytes per
sample).
Splits come from ``samples.split`` where set; samples without one are assigned by a
deterministic hash of their ``sample_id`` (``val_fraction`` / ``test_fraction``; see
:func:`core.data.lance_dataset.hash_split`) until ``lakeloom split`` has written splits.

Loading reads whole batches (a batch sampler plus ``__getitems__``), opens Lance lazily in
each worker process, and starts workers with ``spawn`` (Lance is not fork-safe). The
collator, taken in ``setup`` from the Trainer's module (``make_collator``, the contract of
:mod:`core.modules.base`) or given with :meth:`set_collator`, decodes in the workers. Batches
are sharded by rank (deterministic, like ``DistributedSampler``) and the training
loader's position is saved in checkpoints, so a resumed run continues where it stopped.
``shuffle_block`` > 0 switches to block reads: the sampler shuffles blocks of that many
consecutive samples and mixes ``shuffle_window`` blocks at a time, and the dataset reads
and caches whole blocks (``bench/loader.py`` measures both ways). The train loader
reads ``read_batches`` batches with one take of each table (:mod:`core.data.loader`).
``pack_plan`` (with a packing collator) makes each train batch ``packs_per_batch`` packs
of a plan made for the whole epoch from the samples' stored token counts (:mod:`core.data.packing`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from core.data.collate import collate_samples
from core.data.lance_dataset import SPLITS, LanceSamples, Selection, select
from core.data.loader import StatefulLoader
from core.data.sampler import ShardedBatchSampler
from core.modules.base import Collator, LakeloomDataModule


class LanceDataModule(LakeloomDataModule):
    """Train/val/test loaders over a lakeloom lake (see the module docstring)."""

    def __init__(
        self,
        lake_uri: str = "data/lake",
        where: str | None = None,
        datasets: Sequence[str] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        media_read: str = "rowid",
        media_root: str | None = None,
        shuffle_block: int = 0,
        shuffle_window: int = 4,
        read_ahead: bool = True,
        read_batches: int = 8,
        group_by_length: int = 0,
        length_image_tokens: int = 256,
        pack_plan: bool = False,
        packs_per_batch: int = 1,
        multiprocessing_context: str = "spawn",
        persistent_workers: bool = True,
        prefetch_factor: int | None = 2,
        pin_memory: bool = False,
        storage_options: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if multiprocessing_context == "fork":
            raise ValueError("Lance is not fork-safe: use 'spawn' or 'forkserver'")
        self.lake_uri = str(lake_uri)
        # object storage settings of an s3:// lake (core.train passes them from the `lake`
        # config, over the AWS_* variables): every open, the loader workers' included
        self.storage_options = dict(storage_options or {})
        self.where = where
        self.datasets = list(datasets) if datasets else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.media_read = media_read
        self.media_root = str(media_root) if media_root else None
        self._media_checked = False
        self.shuffle_block = shuffle_block
        self.shuffle_window = shuffle_window
        self.read_ahead = read_ahead
        self.read_batches = read_batches
        self.group_by_length = group_by_length
        self.length_image_tokens = length_image_tokens
        self._lengths: dict[str, Any] = {}
        self.pack_plan = pack_plan
        self.packs_per_batch = packs_per_batch
        self._token_counts: dict[str, np.ndarray] = {}
        self.multiprocessing_context = multiprocessing_context
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.collate_fn: Collator = collate_samples
        self.eval_collate_fn: Collator | None = None
        self.splits: dict[str, LanceSamples] | None = None
        self._labels: list[str] = []
        self._collator_filter: Callable[[list[str]], str | None] | None = None
        self._collator_given = False  # set_collator was called: setup keeps it

    # -- contract with the modules ------------------------------------------------------
    def set_collator(self, fn: Collator, eval_fn: Collator | None = None) -> None:
        """Collate with ``fn`` (picklable: it runs in worker processes); ``eval_fn``, when
        given, is used for the val and test loaders (e.g. without augmentation). A
        collator with a ``sample_filter(columns)`` method narrows the selection to the
        samples it trains on (e.g. SFT leaves out ``feedback = false`` answers)."""
        self._collator_given = True
        self.collate_fn = fn
        self.eval_collate_fn = eval_fn
        self._media_checked = False
        if self.splits is not None:
            self.check_media_kinds()
        if getattr(fn, "sample_filter", None) is not None:
            self._collator_filter = fn.sample_filter  # type: ignore[attr-defined]
            self.splits = None  # select again, narrowed to what the objective trains on

    @property
    def label_names(self) -> list[str]:
        """Sorted distinct non-null labels of the selected samples (all splits)."""
        self.select()
        return list(self._labels)

    def setup(self, stage: str | None = None) -> None:
        """Select the samples (:meth:`select`); attached to a Trainer, take the collators
        from its module once, unless :meth:`set_collator` gave some (a collator's
        ``sample_filter`` then narrows the selection)."""
        self.select()
        if self._collator_given:
            return
        collators = self.module_collators()
        if collators is not None:
            self.set_collator(*collators)
            self.select()

    # -- selection ------------------------------------------------------------------------
    def select(self) -> None:
        """Select the samples of every split once (id columns only)."""
        if self.splits is not None:
            return
        from lake.errors import ConfigError
        from lake.schema import MEDIA, SAMPLES
        from lake.sql import and_filters

        lake = self.lake()
        samples, media = lake.dataset(SAMPLES), lake.dataset(MEDIA)
        narrow = self._collator_filter(samples.schema.names) if self._collator_filter else None
        try:
            selections, self._labels = select(
                samples,
                media,
                where=and_filters(self.where, narrow),
                datasets=self.datasets,
                val_fraction=self.val_fraction,
                test_fraction=self.test_fraction,
            )
        except ValueError as exc:  # Lance reports a bad filter as ValueError
            raise ConfigError(f"invalid data.where / data.datasets filter: {exc}") from exc
        self.splits = {name: self._dataset(samples, media, sel) for name, sel in selections.items()}
        self.check_media_kinds()

    def lake(self) -> Any:
        """The lake this module reads (a :class:`lake.store.Lake` with its storage options)."""
        from lake.store import Lake

        return Lake(self.lake_uri, self.storage_options)

    def check_media_kinds(self) -> None:
        """Pre-flight: refuse, in one line, selected samples holding media of a kind the
        collator's model cannot take (``accepted_kinds``: e.g. LLaVA and ``<video>``),
        naming a few of them and their count. A collator that does not say takes all."""
        accepted = getattr(self.collate_fn, "accepted_kinds", None)
        if accepted is None or self.splits is None or self._media_checked:
            return
        from lake.errors import ConfigError
        from lake.schema import MEDIA, MEDIA_KINDS, SAMPLES
        from lake.sql import in_list

        other = [k for k in MEDIA_KINDS if k not in accepted]
        lake = self.lake()
        media = lake.dataset(MEDIA, self.splits["train"].media_version)
        bad = media.to_table(columns=["kind"], filter=f"kind IN {in_list(other)}",
                             with_row_id=True)  # fmt: skip
        self._media_checked = True
        if bad.num_rows == 0:
            return
        bad_rows = bad.column("_rowid").to_numpy()
        kinds = dict(zip(bad_rows.tolist(), bad.column("kind").to_pylist(), strict=True))
        hits: list[int] = []  # sample row ids
        found: set[str] = set()
        for ds in self.splits.values():
            sel = ds.selection
            flagged = np.isin(sel.media_rows, bad_rows)
            if not flagged.any():
                continue
            owner = np.searchsorted(sel.media_offsets, np.nonzero(flagged)[0], side="right") - 1
            hits.extend(np.unique(sel.sample_rows[owner]).tolist())
            found.update(kinds[int(r)] for r in sel.media_rows[flagged])
        hits = sorted(set(hits))
        if not hits:
            return
        samples = lake.dataset(SAMPLES, self.splits["train"].samples_version)
        first = samples._take_rows(pa.array(hits[:3], pa.uint64()), columns=["sample_id"])
        ids = first.column("sample_id").to_pylist()
        who = getattr(self.collate_fn, "family", "") or type(self.collate_fn).__name__
        more = ", ..." if len(hits) > 3 else ""
        raise ConfigError(
            f"{who} cannot take {' or '.join(sorted(found))} media: {len(hits)} selected "
            f"sample(s) hold some ({', '.join(ids)}{more}); leave them out with data.where "
            "or train a family that takes them"
        )

    def _dataset(self, samples: Any, media: Any, sel: Selection) -> LanceSamples:
        # a window may straddle a batch: keep two windows of blocks
        return LanceSamples(
            samples.uri, samples.version, media.uri, media.version, sel, self.media_read,
            read_block=self.shuffle_block, cache_blocks=2 * self.shuffle_window,
            media_root=self.media_root, storage_options=self.storage_options,
        )  # fmt: skip

    def dataset(self, split: str) -> LanceSamples:
        """The dataset of one split (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.select()
        assert self.splits is not None
        return self.splits[split]

    def sizes(self) -> dict[str, int]:
        """Number of samples per split."""
        return {s: len(self.dataset(s)) for s in SPLITS}

    # -- loaders --------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _fit_epoch(self) -> int:
        """The epoch the trainer's fit loop is in (0 without a trainer)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_progress.current.processed)

    def _min_batch(self) -> int:
        """The smallest train batch the trainer's module learns from (its ``min_batch``, e.g.
        2 for a contrastive loss; 1 for modules without one or without a trainer)."""
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        return int(getattr(module, "min_batch", 1))

    def loader(
        self, split: str, rank: int | None = None, world_size: int | None = None
    ) -> DataLoader:
        """A loader over one split for one rank (defaults: the trainer's rank and world)."""
        ds = self.dataset(split)
        if rank is None or world_size is None:
            rank, world_size = self._rank_world()
        train = split == "train"
        grouped = train and self.group_by_length > 0
        if grouped and split not in self._lengths:
            self._lengths[split] = ds.estimate_lengths(self.length_image_tokens)
        if train and self.pack_plan:
            sampler: ShardedBatchSampler = self._packed_sampler(split, rank, world_size)
        else:
            sampler = ShardedBatchSampler(
                len(ds),
                self.batch_size if train else self.eval_batch_size,
                shuffle=train and self.shuffle,
                seed=self.seed,
                rank=rank,
                world_size=world_size,
                drop_last=train and self.drop_last,
                shuffle_block=self.shuffle_block,
                shuffle_window=self.shuffle_window,
                lengths=self._lengths.get(split) if grouped else None,
                group_by_length=self.group_by_length if grouped else 0,
                min_batch=self._min_batch() if train else 1,
            )
        if train:
            # Lightning creates a loader's iterator (with workers: draws its first batches)
            # before it calls set_epoch, so a loader built mid-fit (reload, resume) starts
            # at the fit's epoch, not at 0
            sampler.set_epoch(self._fit_epoch())
        workers: dict[str, Any] = {}
        if self.num_workers > 0:
            workers = {
                "multiprocessing_context": self.multiprocessing_context,
                "persistent_workers": self.persistent_workers,
                "prefetch_factor": self.prefetch_factor,
            }
        if train:
            workers["read_ahead"] = self.read_ahead
            workers["read_batches"] = self.read_batches
        else:  # worker seeds from its own generator: evaluating leaves the torch RNG alone
            workers["generator"] = torch.Generator().manual_seed(self.seed)
        cls = StatefulLoader if train else DataLoader
        return cls(
            ds,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn if train else (self.eval_collate_fn or self.collate_fn),
            pin_memory=self.pin_memory,
            **workers,
        )

    def _packed_sampler(self, split: str, rank: int, world_size: int) -> ShardedBatchSampler:
        """Batches of planned packs (``pack_plan``) from the stored token counts."""
        from core.data.packing import PackedBatchSampler

        fn: Any = self.collate_fn
        if not getattr(fn, "pack", False):
            from lake.errors import ConfigError

            raise ConfigError("data.pack_plan plans packs for a packing model: set model.pack=true")
        if split not in self._token_counts:
            self._token_counts[split] = self.token_counts(split)
        return PackedBatchSampler(
            self._token_counts[split], int(fn.max_length), self.packs_per_batch,
            shuffle=self.shuffle, seed=self.seed, rank=rank, world_size=world_size,
            drop_last=self.drop_last,
        )  # fmt: skip

    def token_counts(self, split: str) -> np.ndarray:
        """Per position of ``split``, the token count the collator's settings give (the
        ``plugins.token_count`` enricher's ``samples.tokens_<family>``, read when its owner
        is this collator's); an over-long sample is cut to ``max_length`` when the
        collator truncates. Raises when a selected sample has no such count."""
        from core.data.packing import count_column, count_owner, read_counts
        from lake.errors import ConfigError
        from lake.schema import SAMPLES

        fn: Any = self.collate_fn
        ds = self.dataset(split)
        column, owner_column = count_column(fn.family)
        owner = count_owner(fn)
        samples = self.lake().dataset(SAMPLES, ds.samples_version)
        ids, counts, rowids = read_counts(samples, column, owner_column, owner)
        by_row = np.argsort(rowids)
        wanted = ds.selection.sample_rows
        at = np.clip(np.searchsorted(rowids[by_row], wanted), 0, max(len(rowids) - 1, 0))
        found = rowids[by_row][at] == wanted if len(rowids) else np.zeros(len(wanted), bool)
        out = np.where(found, counts[by_row][at] if len(rowids) else 0, 0)
        missing = np.flatnonzero(out <= 0)
        if len(missing):
            some = [str(ids[int(by_row[at[i]])]) for i in missing[:3] if found[i]]
            raise ConfigError(
                f"{len(missing)} of {len(out)} {split} sample(s) have no token count by "
                f"{owner} in samples.{column} ({', '.join(some) or 'not counted'}): run "
                f"lakeloom enrich enrich=tokens with the model's family, source and pixel "
                "budget (video and audio samples are not counted: leave them out with "
                "data.where)"
            )
        if fn.overlong == "truncate_text":
            out = np.minimum(out, int(fn.max_length))
        return out

    def train_dataloader(self) -> DataLoader:
        """Shuffled, sharded, resumable loader over the train split."""
        return self.loader("train")

    def val_dataloader(self) -> DataLoader | list:
        """Loader over the val split (none when it is empty)."""
        return self.loader("val") if len(self.dataset("val")) else []

    def test_dataloader(self) -> DataLoader | list:
        """Loader over the test split (none when it is empty)."""
        return self.loader("test") if len(self.dataset("test")) else []
