"""Content keys: ``media_id`` from bytes, ``sample_id`` from canonical sample content."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SAMPLE_CONTENT_FIELDS = ("media_ids", "messages", "caption", "label", "chosen", "rejected")


def media_id(data: bytes) -> str:
    """sha256 of the original bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, streamed (the ``media_id`` it would get), hex."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sample_id(
    media_ids: Sequence[str],
    messages: Sequence[dict[str, str]],
    caption: str | None = None,
    label: str | None = None,
    chosen: str | None = None,
    rejected: str | None = None,
    key: str | None = None,
    *,
    dataset: str | None = None,
    feedback: bool | None = None,
    rejected_media_ids: Sequence[str] | None = None,
) -> str:
    """sha256 of the canonical JSON of a sample's content and its dataset.

    The dataset is part of a sample's identity: the same content ingested under a second
    dataset name is a second sample. The source location is not: the same content
    re-ingested (or exported and ingested back) into its dataset gets the same id.
    ``key`` is included only when a source sets it (records with no distinguishing
    content). ``dataset=None`` gives the id that lakes written before the dataset was part
    of it used; the ingest treats a sample as present under either id.
    """
    content: dict[str, Any] = {
        "media_ids": list(media_ids),
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "caption": caption,
        "label": label,
        "chosen": chosen,
        "rejected": rejected,
    }
    if key is not None:
        content["key"] = key
    if dataset is not None:
        content["dataset"] = dataset
    # KTO feedback and a rejected answer's own media: in the id only when set, so the ids
    # of samples without them are unchanged
    if feedback is not None:
        content["feedback"] = bool(feedback)
    if rejected_media_ids is not None:
        content["rejected_media_ids"] = list(rejected_media_ids)
    blob = _CANONICAL.encode(content)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# json.dumps with these options builds an encoder per call: one shared encoder, same text
_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
