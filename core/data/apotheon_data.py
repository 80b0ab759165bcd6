"""The lake for Apotheon: samples with images, frames and audio, and a curriculum over them.

Sample kinds come from the ``kind:*`` tags the sources write (:data:`lake.schema.KIND_TAGS`):
``image`` (no kind tag: image files, conversations), ``frame`` (a video frame), ``clip`` (a
scene: its frames in order) and ``audio`` (an audio file). A clip's audio is not one of its
media: it is the audio track of the frames' video, found by ``parent_id`` and cut to the
clip's time range here. Audio samples carry their transcript on the media row
(``enrich=transcribe``); clips on the sample (``clip_transcript``).

:class:`ApotheonDataModule` selects the train samples of every curriculum stage once (a
lake query per stage: the kinds it admits) and hands Lightning the stage of the current
epoch; the trainer must reload train loaders every epoch. Each switch goes to the run's
events log (``curriculum``). Validation and test use every kind of every stage, so
their figures compare across stages.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from core.data.lance_data import LanceDataModule
from core.data.lance_dataset import LanceSamples, Selection, select
from core.data.sampler import ShardedBatchSampler
from lake.errors import ConfigError
from lake.runs import EV_CURRICULUM
from lake.schema import KIND_TAGS
from lake.sql import and_filters, quote

log = logging.getLogger(__name__)

KINDS = ("image", "frame", "clip", "audio")
VISUAL = ("image", "frame")


def kind_filter(kinds: Sequence[str]) -> str:
    """A Lance SQL filter on ``samples`` admitting the given sample kinds."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ConfigError(f"curriculum kinds must be among {KINDS}, got {list(kinds)}")
    tagged = ", ".join(quote(t) for t in KIND_TAGS.values())
    parts = [
        f"(tags IS NULL OR NOT array_has_any(tags, [{tagged}]))"
        if k == "image"
        else f"array_has(tags, {quote(KIND_TAGS[k])})"
        for k in kinds
    ]
    return "(" + " OR ".join(parts) + ")"


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: from ``start_epoch`` on, train on samples of ``kinds``."""

    name: str
    start_epoch: int
    kinds: tuple[str, ...]


def parse_curriculum(stages: Sequence[Mapping[str, Any]] | None) -> list[Stage]:
    """Stages sorted by start epoch; the first must start at epoch 0. None: one stage of
    every kind."""
    if not stages:
        return [Stage("all", 0, KINDS)]
    out = []
    for i, s in enumerate(stages):
        kinds = tuple(s.get("kinds") or ())
        kind_filter(kinds)  # validates
        out.append(Stage(str(s.get("name", f"stage{i + 1}")), int(s.get("start_epoch", 0)), kinds))
    out.sort(key=lambda s: s.start_epoch)
    if out[0].start_epoch != 0:
        raise ConfigError(
            f"the first curriculum stage must start at epoch 0, not {out[0].start_epoch}"
        )
    if len({s.start_epoch for s in out}) != len(out):
        raise ConfigError("two curriculum stages start at the same epoch")
    return out


def stage_at(stages: Sequence[Stage], epoch: int) -> Stage:
    """The stage in force at ``epoch``."""
    return [s for s in stages if s.start_epoch <= epoch][-1]


class ApotheonSamples(LanceSamples):
    """Lake samples as Apotheon items: visual media, the audio (own or the clip's video
    track, with the range to cut), caption, messages, transcript and kind tags."""

    def __init__(
        self, *args: Any, audio_of_parent: Mapping[str, tuple[int, float]], **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.audio_of_parent = dict(audio_of_parent)  # video id -> (audio row id, its t_start)

    media_columns = ("kind", "parent_id", "transcript")  # read with the bytes

    def _read(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        items = super()._read(positions)
        clip_audio: dict[int, tuple[int, float]] = {}
        for i, item in enumerate(items):
            data = item.pop("images")
            kinds = item.pop("media_kind")
            parents = item.pop("media_parent_id")
            notes = item.pop("media_transcript")
            item["images"] = [d for d, kind in zip(data, kinds, strict=True) if kind in VISUAL]
            item["audio"], item["audio_range"] = None, None
            if sum(k == "audio" for k in kinds) > 1:
                raise ValueError(
                    f"sample {item['sample_id']}: {sum(k == 'audio' for k in kinds)} audio "
                    "media; Apotheon takes one audio per sample"
                )
            for d, kind, note in zip(data, kinds, notes, strict=True):
                if kind == "audio":
                    item["audio"] = d
                    if not (item.get("transcript") or "").strip():
                        item["transcript"] = note
                    break
            is_clip = KIND_TAGS["clip"] in (item.get("tags") or [])
            if item["audio"] is None and is_clip and parents and parents[0] in self.audio_of_parent:
                clip_audio[i] = self.audio_of_parent[parents[0]]
        if clip_audio:  # the clips' video tracks: one more take, each track once
            _, media = self._open()
            rows = sorted({r for r, _ in clip_audio.values()})
            data = media._take_rows(pa.array(rows, pa.uint64()), columns=["bytes"])
            by_row = dict(zip(rows, data.column("bytes").to_pylist(), strict=True))
            for i, (row, t0) in clip_audio.items():
                item = items[i]
                item["audio"] = by_row[row]
                start, end = item.get("t_start"), item.get("t_end")
                if start is not None and end is not None:
                    item["audio_range"] = (start - t0, end - t0)
        return items


class ApotheonDataModule(LanceDataModule):
    """Train / val / test loaders of Apotheon items with a curriculum over sample kinds.

    ``curriculum``: a list of ``{name, start_epoch, kinds}``; the train loader of epoch e
    reads the samples of the last stage starting at or before e (the trainer needs
    ``reload_dataloaders_every_n_epochs: 1``). Val and test hold every kind named in any
    stage.
    """

    def __init__(self, *, curriculum: Sequence[Mapping[str, Any]] | None, **kw: Any) -> None:
        self.stages = parse_curriculum(curriculum)
        self.all_kinds = tuple(k for k in KINDS if any(k in s.kinds for s in self.stages))
        base = kw.pop("where", None)
        super().__init__(where=and_filters(kind_filter(self.all_kinds), base), **kw)
        self.base_where = base
        self._audio_of_parent: dict[str, tuple[int, float]] = {}
        self._stage_sets: dict[str, ApotheonSamples] = {}
        self.stage: Stage | None = None
        self._pending: dict[str, Any] | None = None
        self._logged: str | None = None  # the stage of the last logged switch

    def select(self) -> None:
        """Select val/test (every kind) and each stage's train samples, once."""
        if self.splits is not None:
            return
        from lake.schema import MEDIA, SAMPLES

        lake = self.lake()
        samples, media = lake.dataset(SAMPLES), lake.dataset(MEDIA)
        self._audio_of_parent = _audio_tracks(media)
        super().select()
        for st in self.stages:
            where = and_filters(kind_filter(st.kinds), self.base_where)
            sel, _ = select(
                samples, media, where=where, datasets=self.datasets,
                val_fraction=self.val_fraction, test_fraction=self.test_fraction,
            )  # fmt: skip
            self._stage_sets[st.name] = self._dataset(samples, media, sel["train"])

    def _dataset(self, samples: Any, media: Any, sel: Selection) -> ApotheonSamples:
        return ApotheonSamples(
            samples.uri, samples.version, media.uri, media.version, sel, self.media_read,
            read_block=self.shuffle_block, cache_blocks=2 * self.shuffle_window,
            audio_of_parent=self._audio_of_parent, storage_options=self.storage_options,
        )  # fmt: skip

    def dataset(self, split: str) -> LanceSamples:
        """The train split of the current stage (the first before training), or val/test."""
        self.select()
        if split == "train":
            return self._stage_sets[(self.stage or self.stages[0]).name]
        return super().dataset(split)

    def stage_sizes(self) -> dict[str, int]:
        """Train samples per stage."""
        self.select()
        return {name: len(ds) for name, ds in self._stage_sets.items()}

    def estimated_stepping_batches(self, trainer: Any) -> float:
        """Optimizer steps of a whole fit through the curriculum (Lightning's own estimate
        sizes every epoch like the first stage): per epoch its stage's batches for one
        rank, capped by ``limit_train_batches``, over gradient accumulation."""
        if trainer.max_epochs in (None, -1):
            return trainer.estimated_stepping_batches
        self.select()
        limit = trainer.limit_train_batches
        total = 0
        for epoch in range(max(1, trainer.max_epochs)):
            ds = self._stage_sets[stage_at(self.stages, epoch).name]
            sampler = ShardedBatchSampler(
                len(ds), self.batch_size, shuffle=False, rank=0,
                world_size=int(trainer.world_size), drop_last=self.drop_last,
            )  # fmt: skip
            batches = len(sampler)
            if isinstance(limit, int):
                batches = min(batches, limit)
            elif limit is not None:
                batches = int(batches * float(limit))
            total += math.ceil(batches / trainer.accumulate_grad_batches)
        return min(total, trainer.max_steps) if trainer.max_steps != -1 else total

    def train_dataloader(self) -> Any:
        """The loader of the stage in force at the trainer's current epoch."""
        trainer = getattr(self, "trainer", None)
        epoch = int(trainer.current_epoch) if trainer is not None else 0
        reload = trainer.reload_dataloaders_every_n_epochs if trainer is not None else 1
        if len(self.stages) > 1 and reload != 1:
            raise ConfigError("a curriculum needs trainer.reload_dataloaders_every_n_epochs=1")
        st = stage_at(self.stages, epoch)
        if st != self.stage:
            self.stage = st
            n = len(self.dataset("train"))
            if n == 0:
                raise ConfigError(f"curriculum stage {st.name!r} selects no train samples")
            log.info("curriculum: epoch %d -> stage %s (%s), %d samples", epoch, st.name,
                     ", ".join(st.kinds), n)  # fmt: skip
            # a loader replaced before any batch was drawn from it (Lightning builds one
            # to estimate the step count before a resume restores the epoch) never took
            # effect: only the latest switch is logged
            self._pending = {"epoch": epoch, "stage": st.name, "kinds": list(st.kinds),
                             "samples": n}  # fmt: skip
        return self.loader("train")

    def pop_events(self) -> list[tuple[str, dict[str, Any]]]:
        """The curriculum switch that took effect since the last call, for the events log
        (with the stage it follows)."""
        if self._pending is None:
            return []
        event, self._pending = {**self._pending, "previous": self._logged}, None
        self._logged = event["stage"]
        return [(EV_CURRICULUM, event)]


def _audio_tracks(media: Any) -> dict[str, tuple[int, float]]:
    """Video id -> (row id, t_start) of its audio track (one scan of small columns)."""
    out: dict[str, tuple[int, float]] = {}
    scanner = media.scanner(
        columns=["parent_id", "t_start"], filter="kind = 'audio' AND parent_id IS NOT NULL",
        with_row_id=True,
    )  # fmt: skip
    for batch in scanner.to_batches():
        for parent, t0, row in zip(
            batch.column("parent_id").to_pylist(),
            batch.column("t_start").to_pylist(),
            batch.column("_rowid").to_pylist(),
            strict=True,
        ):
            out.setdefault(parent, (int(row), float(t0 or 0.0)))
    return out
