"""Packing planned from the lake: stored token counts -> a whole-epoch plan of packs.

**Token counts.** :func:`token_counts` gives each sample's token count at the model's pixel
budget without decoding an image: the text tokens of its rendered SFT conversation
(:meth:`VlmCollator.sft_conversation` through the model's chat template and tokenizer)
plus, per image, the number of tokens the family's processor expands it into at the size
the collator's :class:`PixelBudget` gives it (``processor._get_num_multimodal_tokens``:
LLaVA's fixed tokens per image, Qwen2-VL's smart_resize to its min/max pixels, patch 14,
merge 2). Images come as the ``(width, height)`` stored in ``media``. The enricher
``plugins.token_count`` stores them as ``samples.tokens_<family>`` with an owner
(:func:`count_owner`: the family, the tokenizer, the template, the image processor and the
budget hashed), so a changed processor or budget is visible.

**Plan.** :func:`plan_packs` shuffles the samples (``default_rng([seed, epoch])``) and packs
them best-fit decreasing into packs of at most ``capacity`` tokens, working on the
histogram of lengths (one step per distinct length and open-room value, not per sample:
1M samples in well under a second); samples of one length are drawn from a shuffled pool,
so which samples share a pack changes every epoch, and the packs are shuffled. ``window``
> 0 plans each window of that many shuffled samples on its own (a streaming buffer, as
ms-swift packs; measured in ``bench/packing.py``). :func:`plan_from_lake` reads only
``sample_id`` and the count column. :class:`PackedBatchSampler` feeds the data module's
training loader with the plan's packs (``data.pack_plan``), sharded by rank and resumable.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.data.sampler import ShardedBatchSampler

log = logging.getLogger(__name__)

#: changes when the counting rule changes, so stored counts get a new owner
COUNT_VERSION = "1"


# ---- token counts -------------------------------------------------------------------------


def count_column(family: str) -> tuple[str, str]:
    """``(count column, owner column)`` of a family's token counts in ``samples``."""
    return f"tokens_{family}", f"tokens_{family}_owner"


def _tokenizer_identity(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return str(backend.to_str())
    return json.dumps(tokenizer.get_vocab(), sort_keys=True)


def count_owner(collator: Any) -> str:
    """``tokens:<family>:<sha12>``: who counts, hashed from everything a count depends on
    (tokenizer, chat template, image processor settings, pixel budgets, caption prompt)."""
    processor = collator.processor
    image_processor = getattr(processor, "image_processor", None)
    parts = {
        "version": COUNT_VERSION,
        "tokenizer": hashlib.sha256(
            _tokenizer_identity(collator.renderer.tokenizer).encode()
        ).hexdigest(),
        "template": getattr(processor, "chat_template", None),
        "image_processor": image_processor.to_json_string() if image_processor else None,
        "processor": {
            k: str(getattr(processor, k, None))
            for k in ("patch_size", "num_additional_image_tokens", "vision_feature_select_strategy")
        },
        "budget": [collator.budget.min_pixels, collator.budget.max_pixels],
        "datasets": {
            k: [b.min_pixels, b.max_pixels] for k, b in sorted(collator.per_dataset.items())
        },
        "caption_prompt": collator.caption_prompt,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return f"tokens:{collator.family}:{digest[:12]}"


def token_counts(
    collator: Any,
    samples: Sequence[Mapping[str, Any]],
    sizes: Sequence[Sequence[tuple[int, int] | None]],
) -> list[int | None]:
    """Each sample's SFT token count as ``collator`` would produce it, from its media's
    stored ``(width, height)`` (``sizes``, in placeholder order; None for a medium that is
    not a still image, e.g. a video): None where it cannot be counted (no conversation,
    placeholders not matching media, video or audio media, no size)."""
    from core.modules.vlm_collate import SampleError, budget_for

    r = collator.renderer
    texts: list[str] = []
    media_tokens: list[int] = []
    keep: list[int] = []
    for i, (sample, dims) in enumerate(zip(samples, sizes, strict=True)):
        if any(d is None for d in dims):
            continue
        try:
            text = r.render(collator.sft_conversation(sample))
        except SampleError:
            continue
        budget = budget_for(sample, collator.budget, collator.per_dataset)
        # stored sizes are before EXIF orientation: a transposed image swaps width and
        # height, which leaves the budget's area rule and the patch grid's product alone
        fitted = [budget.size(int(w), int(h)) for w, h in dims]  # type: ignore[misc]
        n = 0
        if fitted:
            got = collator.processor._get_num_multimodal_tokens(
                image_sizes=[[h, w] for w, h in fitted]
            )
            n = int(sum(got.num_image_tokens))
        texts.append(text)
        media_tokens.append(n - len(fitted))  # each placeholder token is already counted
        keep.append(i)
    out: list[int | None] = [None] * len(samples)
    if not texts:
        return out
    special = [r._special(t) for t in texts]
    for flag in (True, False):
        idx = [j for j, s in enumerate(special) if s == flag]
        if not idx:
            continue
        enc = r.tokenizer([texts[j] for j in idx], add_special_tokens=flag)["input_ids"]
        for j, ids in zip(idx, enc, strict=True):
            placed = sum(1 for t in ids if t == r.image_token_id)
            n_images = len(sizes[keep[j]])
            if placed != n_images:  # the template did not place one token per image
                continue
            out[keep[j]] = len(ids) + media_tokens[j]
    return out


# ---- the plan -----------------------------------------------------------------------------


@dataclass
class PackPlan:
    """Packs of positions, CSR-style: pack ``k`` is ``members[offsets[k]:offsets[k+1]]``
    (in the plan's shuffled order), with ``tokens[k]`` tokens; ``dropped``: positions over
    ``capacity`` (or without a count), left out."""

    members: np.ndarray
    offsets: np.ndarray
    tokens: np.ndarray
    capacity: int
    dropped: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def pack(self, k: int) -> np.ndarray:
        """Positions of pack ``k``."""
        return self.members[self.offsets[k] : self.offsets[k + 1]]

    @property
    def padding(self) -> float:
        """Fraction of the packs' ``capacity`` slots that hold no token."""
        slots = len(self) * self.capacity
        return 1.0 - float(self.tokens.sum()) / slots if slots else 0.0


def _best_fit_decreasing(
    lengths: np.ndarray, capacity: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """``(pack of each item, number of packs)``: best-fit decreasing, run on the histogram.

    Items are taken longest first; all items of one length go, as many at a time as fit,
    into the packs whose free room is the smallest that holds them (packs with equal room
    are interchangeable, so they move together), else into new packs filled with as many
    as fit. Equal-length items
    are drawn in a shuffled order, so the same histogram gives the same pack shapes with
    other members.
    """
    n = len(lengths)
    order = rng.permutation(n)
    order = order[np.argsort(-lengths[order], kind="stable")]
    values, starts, counts = np.unique(-lengths[order], return_index=True, return_counts=True)
    room_count = np.zeros(capacity + 1, np.int64)
    rooms: dict[int, list[np.ndarray]] = {}
    pack_of = np.empty(n, np.int64)
    n_packs = 0

    def take(r: int, k: int) -> np.ndarray:
        stack, got, need = rooms[r], [], k
        while need:
            top = stack[-1]
            if len(top) <= need:
                got.append(stack.pop())
                need -= len(top)
            else:
                got.append(top[-need:])
                stack[-1] = top[:-need]
                need = 0
        room_count[r] -= k
        return np.concatenate(got) if len(got) > 1 else got[0]

    def put(r: int, ids: np.ndarray) -> None:
        if r > 0 and len(ids):  # a full pack takes nothing more
            rooms.setdefault(r, []).append(ids)
            room_count[r] += len(ids)

    for neg, start, count in zip(values.tolist(), starts.tolist(), counts.tolist(), strict=True):
        length = -neg
        items = order[start : start + count]
        done = 0
        while done < count:
            fits = np.flatnonzero(room_count[length:])
            if not len(fits):
                break
            r = length + int(fits[0])
            k = min(count - done, int(room_count[r]))
            ids = take(r, k)
            pack_of[items[done : done + k]] = ids
            put(r - length, ids)
            done += k
        if done < count:
            # no open pack holds one more: best fit puts each next item into the pack just
            # opened until it is full, so new packs take ``per`` items each
            rest = count - done
            per = capacity // length
            full, last = divmod(rest, per)
            pack_of[items[done:]] = n_packs + np.arange(rest) // per
            put(capacity - per * length, np.arange(n_packs, n_packs + full))
            n_packs += full
            if last:
                put(capacity - last * length, np.array([n_packs]))
                n_packs += 1
    return pack_of, n_packs


def plan_packs(
    lengths: np.ndarray,
    capacity: int,
    seed: int = 0,
    epoch: int = 0,
    window: int = 0,
    shuffle: bool = True,
) -> PackPlan:
    """Pack positions ``0..len(lengths)-1`` into packs of at most ``capacity`` tokens.

    ``lengths`` < 1 (no count) or > ``capacity`` are left out (``dropped``). Deterministic
    per ``(seed, epoch)``; ``window`` > 0 plans each window of that many shuffled positions
    on its own; ``shuffle`` False keeps the packs in the order they were opened.
    """
    lengths = np.asarray(lengths, np.int64)
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    rng = np.random.default_rng([seed, epoch])
    ok = (lengths >= 1) & (lengths <= capacity)
    positions = np.flatnonzero(ok)
    if window > 0:
        positions = rng.permutation(positions)
        windows = [positions[i : i + window] for i in range(0, len(positions), window)]
    else:
        windows = [positions]
    pack_parts, n_packs = [], 0
    for pos in windows:
        pack_of, n = _best_fit_decreasing(lengths[pos], capacity, rng)
        pack_parts.append(pack_of + n_packs)
        n_packs += n
    pack_of = np.concatenate(pack_parts) if pack_parts else np.zeros(0, np.int64)
    rank = rng.permutation(n_packs) if shuffle else np.arange(n_packs)
    key = rank[pack_of]
    order = np.argsort(key, kind="stable")
    members = positions[order]
    sizes = np.bincount(key, minlength=n_packs)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    tokens = np.bincount(key, weights=lengths[positions], minlength=n_packs).astype(np.int64)
    return PackPlan(members, offsets, tokens, int(capacity), np.flatnonzero(~ok))


def read_counts(
    dataset: Any, column: str, owner_column: str | None = None, owner: str | None = None
) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """``(sample_id, counts, row ids)`` of every sample (a pylance projection of the id and
    count columns, no media); a count whose ``owner_column`` is not ``owner`` is 0."""
    names = dataset.schema.names
    if column not in names:
        from lake.errors import ConfigError

        raise ConfigError(
            f"the lake's samples have no {column!r} column: count tokens first "
            "(lakeloom enrich enrich=tokens, with the model's family and pixel budget)"
        )
    cols = ["sample_id", column] + ([owner_column] if owner is not None else [])
    table = dataset.to_table(columns=cols, with_row_id=True)
    counts = table.column(column).fill_null(0)
    if owner is not None:
        same = pc.fill_null(pc.equal(table.column(owner_column), owner), False)
        counts = pc.if_else(same, counts, 0)
    values = np.asarray(counts.to_numpy(), np.int64)
    return table.column("sample_id"), values, table.column("_rowid").to_numpy()


def plan_from_lake(
    dataset: Any, column: str, capacity: int, seed: int = 0, epoch: int = 0, window: int = 0
) -> tuple[PackPlan, pa.Array]:
    """The plan over every sample of a ``samples`` dataset from its stored counts, and the
    sample ids its positions refer to (reads ``sample_id`` and ``column`` only)."""
    ids, counts, _ = read_counts(dataset, column)
    return plan_packs(counts, capacity, seed, epoch, window), ids


# ---- the training loader's batches --------------------------------------------------------


class PackedBatchSampler(ShardedBatchSampler):
    """Batches of ``packs_per_batch`` planned packs (each pack's positions in a row), one
    plan per epoch, the packs sharded by rank like :class:`ShardedBatchSampler` shards
    samples (padded by repeating the head) and resumable the same way (``skip``)."""

    def __init__(
        self,
        lengths: np.ndarray,
        capacity: int,
        packs_per_batch: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int,
        world_size: int,
        drop_last: bool,
    ) -> None:
        super().__init__(
            len(lengths),
            packs_per_batch,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        )
        self.token_lengths = np.asarray(lengths, np.int64)
        self.capacity = int(capacity)
        self._plan: tuple[int, PackPlan] | None = None

    def plan(self) -> PackPlan:
        """The current epoch's plan (computed once per epoch)."""
        if self._plan is None or self._plan[0] != self.epoch:
            plan = plan_packs(
                self.token_lengths, self.capacity, self.seed, self.epoch, shuffle=self.shuffle
            )
            if self._plan is None and len(plan.dropped):
                log.warning(
                    "packing plan: %d sample(s) without a count or over %d tokens left out",
                    len(plan.dropped),
                    self.capacity,
                )
            self._plan = (self.epoch, plan)
        return self._plan[1]

    @property
    def per_rank(self) -> int:
        """Packs each rank sees per epoch (padding included)."""
        n = len(self.plan())
        return -(-n // self.world_size) if n else 0

    def batches(self) -> list[np.ndarray]:
        """This rank's batches for the current epoch: the positions of its packs."""
        plan = self.plan()
        packs = np.arange(len(plan))
        total = self.per_rank * self.world_size
        if total > len(packs):
            packs = np.concatenate([packs, np.resize(packs, total - len(packs))])
        mine = packs[self.rank :: self.world_size]
        bs = self.batch_size
        out = []
        for b in range(len(self)):
            chosen = mine[b * bs : (b + 1) * bs]
            out.append(np.concatenate([plan.pack(int(k)) for k in chosen]))
        return out
