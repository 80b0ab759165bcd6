"""Enricher: each sample's token count at a VLM's pixel budget (``samples.tokens_<family>``).

The count is what the training collator (``core.modules.vlm_collate``) produces for the
sample's SFT row, computed without decoding an image: the text tokens of its conversation
rendered through the model's chat template and tokenizer, plus per image the tokens the
family's processor expands it into at the size the pixel budget gives the stored
``media.width`` x ``media.height`` (LLaVA: fixed tokens per image; Qwen2-VL: dynamic
resolution, smart_resize to the processor's min/max pixels, patch 14, merge 2). The rules
are the collator's and the processor's own (:func:`core.data.packing.token_counts`), so a
count equals the length of the row the collator builds (``tests/plugins/test_token_count``).

**Owner.** ``tokens_<family>_owner`` records :func:`core.data.packing.count_owner`:
``tokens:<family>:<sha12>`` over the tokenizer, chat template, image processor settings,
pixel budgets and caption prompt. The data module plans packs (``data.pack_plan``) only
from counts whose owner is its own collator's, so train with the same ``family``,
``source``, ``tiny`` sizes, ``min_pixels`` / ``max_pixels`` / ``dataset_pixels`` and
``caption_prompt`` as here. A sample that cannot be counted (video or audio media, a
media row without a size, placeholders not matching its media) keeps a null count with
its owner set, so it is not retried by every run.

Media sizes are read once per job from ``media`` (``media_id``, ``kind``, ``width``,
``height``: never the bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from lake.plugin import Enricher

log = logging.getLogger("lakeloom.token_count")

#: sample columns the count depends on (the per-sample budget columns when the lake has them)
TEXT_COLUMNS = ("sample_id", "dataset", "media_ids", "messages", "caption", "label", "chosen")
BUDGET_COLUMNS = ("min_pixels", "max_pixels")
STILL_KINDS = ("image", "frame")


class TokenCounter(Enricher):
    """Counts each sample's tokens for one VLM family and pixel budget (module docstring)."""

    name: ClassVar[str] = "token_count"
    version: ClassVar[str] = "0.1.0"
    table: ClassVar[str] = "samples"
    inputs: ClassVar[tuple[str, ...]] = TEXT_COLUMNS

    def __init__(
        self,
        family: str,
        source: str,
        tiny: Mapping[str, Any] | None,
        revision: str | None,
        trust_remote_code: bool,
        min_pixels: int | None,
        max_pixels: int | None,
        dataset_pixels: Mapping[str, Mapping[str, int | None]] | None,
        caption_prompt: str,
        seed: int,
    ) -> None:
        self.family = str(family)
        self.source = str(source)
        self.tiny = dict(tiny or {})
        self.revision = revision
        self.trust_remote_code = bool(trust_remote_code)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.dataset_pixels = {k: dict(v) for k, v in (dataset_pixels or {}).items()}
        self.caption_prompt = caption_prompt
        self.seed = int(seed)
        self._collator: Any = None
        self._owner: str | None = None
        self._sizes: dict[str, tuple[str, int | None, int | None]] = {}

    # ---- declarations ---------------------------------------------------------------------

    def columns(self) -> tuple[str, str]:
        """``(count column, owner column)``."""
        from core.data.packing import count_column

        return count_column(self.family)

    def output_fields(self) -> list[pa.Field]:
        """The count (int32) and its owner."""
        column, owner = self.columns()
        return [pa.field(column, pa.int32()), pa.field(owner, pa.string())]

    def owner_column(self) -> str:
        """Column naming who counted each row."""
        return self.columns()[1]

    def owner(self) -> str:
        """``tokens:<family>:<sha12>`` (see the module docstring)."""
        if self._owner is None:
            from core.data.packing import count_owner

            self._owner = count_owner(self.collator)
        return self._owner

    # ---- running --------------------------------------------------------------------------

    @property
    def collator(self) -> Any:
        """The training collator these counts are for (its processor loaded once)."""
        if self._collator is None:
            from core.models.vlm_families import family
            from core.modules.vlm_collate import VlmCollator

            spec = family(self.family)
            self._collator = VlmCollator(
                self._processor(),
                spec.never_supervised,
                spec.image_token,
                max_length=1,
                min_pixels=self.min_pixels,
                max_pixels=self.max_pixels,
                dataset_pixels=self.dataset_pixels,
                caption_prompt=self.caption_prompt,
                video_token=spec.video_token,
                family=spec.name,
            )
        return self._collator

    def _processor(self) -> Any:
        if self.source == "tiny":
            from core.models.vlm_tiny import build_tiny

            return build_tiny(self.family, self.tiny, self.seed)[1]
        from transformers import AutoProcessor

        from lake.errors import ConfigError

        try:
            return AutoProcessor.from_pretrained(
                self.source, revision=self.revision, trust_remote_code=self.trust_remote_code
            )
        except OSError as exc:
            raise ConfigError(f"cannot load the processor of {self.source!r}: {exc}") from exc

    def prepare(self, lake: Any) -> None:
        """Read every media's kind and size (no bytes); read the per-sample budget columns
        when the lake has them."""
        names = lake.dataset(self.table).schema.names
        self.inputs = TEXT_COLUMNS + tuple(c for c in BUDGET_COLUMNS if c in names)
        media = lake.dataset("media").to_table(columns=["media_id", "kind", "width", "height"])
        self._sizes = dict(
            zip(
                media.column("media_id").to_pylist(),
                zip(
                    media.column("kind").to_pylist(),
                    media.column("width").to_pylist(),
                    media.column("height").to_pylist(),
                    strict=True,
                ),
                strict=True,
            )
        )

    def setup(self) -> None:
        """Load the processor."""
        _ = self.collator

    def process(self, batch: pa.Table) -> pa.Table:
        """``sample_id`` + the count (null when it cannot be counted) + its owner."""
        from core.data.packing import token_counts

        rows = batch.to_pylist()
        samples, sizes = [], []
        for row in rows:
            media = [self._sizes.get(m) for m in row.get("media_ids") or []]
            row["media_kinds"] = [m[0] if m else "missing" for m in media]
            dims = [
                (m[1], m[2]) if m and m[0] in STILL_KINDS and m[1] and m[2] else None for m in media
            ]
            samples.append(row)
            sizes.append(dims)
        counts = token_counts(self.collator, samples, sizes)
        column, owner_column = self.columns()
        n_null = sum(c is None for c in counts)
        if n_null:
            log.info("token_count: %d of %d sample(s) cannot be counted", n_null, len(rows))
        return pa.table(
            {
                "sample_id": batch.column("sample_id"),
                column: pa.array(
                    np.asarray([c or 0 for c in counts], np.int32),
                    mask=np.asarray([c is None for c in counts]),
                ),
                owner_column: pa.array([self.owner()] * batch.num_rows, pa.string()),
            }
        )
