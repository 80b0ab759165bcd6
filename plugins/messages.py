"""Source plugin: OpenAI / Qwen2-VL / LLaMA-Factory ``messages`` records (JSONL or JSON array).

Each record has ``messages``: a list of ``{"role", "content"}``. ``content`` is either

- a string, whose ``<image>`` placeholders pair in order with a top-level ``images``
  (or ``image``) list (LLaMA-Factory style), or
- a list of parts: ``{"type": "text", "text": ...}``;
  ``{"type": "image", "image" | "path" | "url": REF}`` (Qwen2-VL style); or
  ``{"type": "image_url", "image_url": {"url": REF}}`` (OpenAI style). ``REF`` is a path
  relative to the dataset root, a ``file://`` URL or a ``data:`` URL (and, only when the
  path policy allows it, an absolute path or an http(s) URL).

Canonical flattening rule (parts -> one string): parts are concatenated in order with no
separator; each image part becomes exactly ``<image>`` and its reference is appended to
the record's media, in order of appearance across all messages. The inverse (for an
exporter) splits the string on ``<image>``: every token becomes an image part taking the
next media item, every non-empty text between tokens a text part. ``flatten(unflatten(s))
== s`` for every string, and ``unflatten(flatten(parts))`` is ``parts`` with adjacent text
parts merged and empty text parts dropped. To keep it unambiguous, a text part containing
a literal ``<image>`` is a reject, as are unknown part types and a record using both
content parts and a non-empty top-level images list.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from lake.errors import RejectedInput
from lake.records import Location, SourceRecord
from lake.sources import IMAGE_TOKEN, canonical_messages, canonical_role, image_list
from plugins.sharegpt import JsonRecordsSource, json_type, require

IMAGE_PART_KEYS = ("image", "path", "url")


class MessagesSource(JsonRecordsSource):
    """Chat records with role/content messages, as plain text or as typed content parts.

    See the module docstring for the accepted shapes and the canonical flattening rule.
    ``messages_key`` names the conversation field; ``image_folder`` prefixes relative
    image paths (null = the dataset root).
    """

    name = "messages"
    version = "0.1.0"
    step: ClassVar[str] = "parse_messages"

    def __init__(
        self,
        path: str | Path,
        messages_key: str = "messages",
        image_folder: str | None = None,
        **kwargs: bool,
    ) -> None:
        super().__init__(path, image_folder=image_folder, **kwargs)
        self.messages_key = messages_key

    def params(self) -> dict[str, object]:
        """Options recorded in provenance."""
        return {**super().params(), "messages_key": self.messages_key}

    def parse(self, obj: dict[str, object], location: Location) -> SourceRecord:
        """One record -> canonical messages (parts flattened) and media in order."""
        raw = require(obj, self.messages_key)
        if not isinstance(raw, list):
            raise RejectedInput(f"{self.messages_key!r} must be a list, got {json_type(raw)}")
        top_images = image_list(obj)
        part_images: list[object] = []
        uses_parts = False
        turns: list[tuple[object, object]] = []
        for i, msg in enumerate(raw):
            if not isinstance(msg, dict):
                raise RejectedInput(f"message {i} must be an object, got {json_type(msg)}")
            for key in ("role", "content"):
                if key not in msg:
                    raise RejectedInput(f"message {i}: missing field {key!r}")
            role = canonical_role(msg["role"])
            content = msg["content"]
            if isinstance(content, list):
                uses_parts = True
                content = flatten_parts(content, part_images, i)
            elif not isinstance(content, str):
                raise RejectedInput(
                    f"message {i}: content must be a string or a list of parts, "
                    f"got {json_type(content)}"
                )
            turns.append((role, content))
        if uses_parts and top_images:
            raise RejectedInput(
                "content parts and a top-level images list are mixed; use one or the other"
            )
        images = part_images if uses_parts else top_images
        messages = canonical_messages(turns, len(images))
        return SourceRecord(
            location=location,
            media=self.media(images),
            messages=messages,
            steps=[
                (self.step, {"format": self.name, "content": "parts" if uses_parts else "text"})
            ],
        )


def flatten_parts(parts: list[object], images: list[object], index: int = 0) -> str:
    """Flatten content parts to one string (the canonical rule), appending image refs.

    Raises RejectedInput for a malformed or unknown part, or a text part holding a
    literal ``<image>``. ``index`` is the message's position, for the reason.
    """
    out: list[str] = []
    for j, part in enumerate(parts):
        where = f"message {index} part {j}"
        if not isinstance(part, dict):
            raise RejectedInput(f"{where} must be an object, got {json_type(part)}")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RejectedInput(f"{where}: text part needs a string 'text'")
            if IMAGE_TOKEN in text:
                raise RejectedInput(f"{where}: text part contains a literal {IMAGE_TOKEN}")
            out.append(text)
        elif kind == "image":
            key = next((k for k in IMAGE_PART_KEYS if part.get(k) is not None), None)
            if key is None:
                raise RejectedInput(f"{where}: image part needs one of 'image', 'path', 'url'")
            images.append(part[key])
            out.append(IMAGE_TOKEN)
        elif kind == "image_url":
            value = part.get("image_url")
            url = value.get("url") if isinstance(value, dict) else value
            if url is None:
                raise RejectedInput(f"{where}: image_url part needs 'image_url': {{'url': ...}}")
            images.append(url)
            out.append(IMAGE_TOKEN)
        else:
            raise RejectedInput(f"{where}: unknown content part type {kind!r}")
    return "".join(out)
