"""Picklable helpers to decode media bytes and collate lake samples.

Collators run in DataLoader worker processes, so they must be module-level functions or
instances of module-level classes (picklable under ``spawn``).
"""

from __future__ import annotations

from typing import Any

from lake.images import decode_image


def collate_samples(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Default collator: a dict of lists, bytes left encoded."""
    keys = ("sample_id", "images", "caption", "label", "messages", "dataset")
    return {k: [it[k] for it in items] for k in keys}


class DecodeCollator:
    """Decode every image of every sample to RGB (PIL); keep the other fields as lists."""

    def __init__(self, mode: str = "RGB") -> None:
        self.mode = mode

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, list[Any]]:
        out = collate_samples(items)
        out["images"] = [[decode_image(b, self.mode) for b in imgs] for imgs in out["images"]]
        return out
