"""Batch collation for CLIP: lake sample dicts in, image and token tensors out.

The collator runs inside DataLoader workers (spawned, see DESIGN.md), so it is a plain
picklable object holding the open_clip transform and tokenizer, with no lake handle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from lake.images import decode_image

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of a {}"


def _message_text(content: Any) -> str:
    """Text of one message's content: a string, or OpenAI/Qwen2-VL content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [
            p.get("text") or ""
            for p in content
            if isinstance(p, Mapping) and p.get("type", "text") == "text"
        ]
        return " ".join(t for t in parts if t)
    return ""


def pick_text(sample: Mapping[str, Any], template: str = DEFAULT_TEMPLATE) -> str | None:
    """The caption a sample trains on: ``caption``, else the first assistant message,
    else its label put into ``template``; ``None`` when it has none of them."""
    caption = sample.get("caption")
    if isinstance(caption, str) and caption.strip():
        return caption.strip()
    for message in sample.get("messages") or ():
        if isinstance(message, Mapping) and message.get("role") in ("assistant", "gpt"):
            text = _message_text(message.get("content")).strip()
            if text:
                return text
    label = sample.get("label")
    if isinstance(label, str) and label.strip():
        return template.format(label.strip())
    return None


class ClipCollator:
    """Collate lake samples into ``{"images", "texts", "labels", "sample_ids"}``.

    Each sample is a dict with ``sample_id``, ``images`` (list of encoded bytes; the first
    is used), ``caption``, ``label``, ``messages`` and ``dataset``. Samples without a
    decodable image or without any text are dropped (counted in ``dropped``).
    """

    def __init__(
        self,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        template: str = DEFAULT_TEMPLATE,
    ) -> None:
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.template = template
        self.dropped = 0

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        images: list[torch.Tensor] = []
        texts: list[str] = []
        labels: list[str | None] = []
        ids: list[str] = []
        for sample in samples:
            item = self._one(sample)
            if item is None:
                self.dropped += 1
                continue
            images.append(item[0])
            texts.append(item[1])
            labels.append(sample.get("label"))
            ids.append(str(sample.get("sample_id")))
        if images:
            pixels = torch.stack(images)
            tokens = self.tokenizer(texts)
        else:
            pixels = torch.empty(0, 3, 0, 0)
            tokens = torch.empty(0, 0, dtype=torch.long)
        return {"images": pixels, "texts": tokens, "labels": labels, "sample_ids": ids}

    def _one(self, sample: Mapping[str, Any]) -> tuple[torch.Tensor, str] | None:
        blobs = sample.get("images") or []
        if not blobs or not blobs[0]:
            return None
        text = pick_text(sample, self.template)
        if text is None:
            return None
        try:
            image = decode_image(blobs[0])
        except (UnidentifiedImageError, OSError, ValueError) as err:
            log.warning(
                "dropping sample %s: image does not decode (%s)", sample.get("sample_id"), err
            )
            return None
        return self.preprocess(image), text
