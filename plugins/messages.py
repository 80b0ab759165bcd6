"""Source plugin: OpenAI / Qwen2-VL / LLaMA-Factory ``messages`` records (JSONL or JSON array).

Each record has ``messages``: a list of ``{"role", "content"}``. ``content`` is either

- a string, whose ``<image>`` placeholders pair in order with a top-level ``images``
  (or ``image``) list (LLaMA-Factory style), or
- a list of parts: ``{"type": "text", "text": ...}``;
  ``{"type": "image", "image" | "path" | "url": REF}`` (Qwen2-VL style); or
  ``{"type": "image_url", "image_url": {"url": REF}}`` (OpenAI style). ``REF`` is a path
  relative to the dataset root, a ``file://`` URL or a ``data:`` URL (and, only when the
  path policy allows it, an absolute path or an http(s) URL).

Videos and audio work the same way: ``<video>`` / ``<audio>`` placeholders with top-level
``videos`` / ``audios`` (or ``video`` / ``audio``) lists, or parts
``{"type": "video", "video": REF}`` / ``{"type": "video_url", "video_url": {"url": REF}}``
and ``{"type": "audio", "audio": REF}`` / ``{"type": "audio_url", ...}`` / OpenAI's
``{"type": "input_audio", "input_audio": {"data": BASE64, "format": "wav"}}``, each
flattened to its placeholder. They are analysed like the ``video`` and ``audio`` sources
do (see :class:`lake.json_source.JsonRecordsSource`).

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
from typing import Any, ClassVar

from lake.errors import RejectedInput
from lake.json_source import JsonRecordsSource
from lake.records import Location, SourceRecord
from lake.schema import PLACEHOLDERS, placeholder_kinds
from lake.sources import (
    canonical_messages,
    canonical_role,
    flatten_parts,
    json_type,
    media_list,
    require,
)


class MessagesSource(JsonRecordsSource):
    """Chat records with role/content messages, as plain text or as typed content parts.

    See the module docstring for the accepted shapes and the canonical flattening rule.
    ``messages_key`` names the conversation field; ``image_folder`` prefixes relative
    image paths (null = the dataset root). Image parts without a reference
    (``{"type": "image"}``, TRL's vision layout) take the top-level ``images`` in order.

    ms-swift's preference layout: the last assistant turn is the chosen answer and
    ``rejected_response`` the rejected one (``rejected_images``: the images the rejected
    answer was given instead, one per ``<image>``); the sample stores the prompt as
    ``messages`` and the pair as ``chosen`` / ``rejected``. ``kto_tag`` (default ``label``,
    LLaMA-Factory's and ms-swift's KTO layouts) holds true / false feedback on the last
    assistant turn, stored as the sample's ``feedback``.
    """

    name = "messages"
    version = "0.1.0"
    step: ClassVar[str] = "parse_messages"

    def __init__(
        self,
        path: str | Path,
        messages_key: str = "messages",
        image_folder: str | None = None,
        kto_tag: str | None = "label",
        **kwargs: Any,
    ) -> None:
        super().__init__(path, image_folder=image_folder, **kwargs)
        self.messages_key = messages_key
        self.kto_tag = kto_tag or None

    def params(self) -> dict[str, object]:
        """Options recorded in provenance."""
        return {**super().params(), "messages_key": self.messages_key, "kto_tag": self.kto_tag}

    def parse(self, obj: dict[str, object], location: Location) -> SourceRecord:
        """One record -> canonical messages (parts flattened) and media in order."""
        raw = require(obj, self.messages_key)
        if not isinstance(raw, list):
            raise RejectedInput(f"{self.messages_key!r} must be a list, got {json_type(raw)}")
        top = {kind: media_list(obj, kind) for kind in PLACEHOLDERS}
        parts_refs: dict[str, list[object]] = {kind: [] for kind in PLACEHOLDERS}
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
                content = flatten_parts(
                    content, parts_refs["image"], i, parts_refs["video"], parts_refs["audio"]
                )
            elif not isinstance(content, str):
                raise RejectedInput(
                    f"message {i}: content must be a string or a list of parts, "
                    f"got {json_type(content)}"
                )
            turns.append((role, content))
        refless = sum(1 for ref in parts_refs["image"] if ref is None)
        if refless:
            if refless != len(parts_refs["image"]):
                raise RejectedInput("image parts with and without a reference are mixed")
            parts_refs["image"] = top["image"]  # TRL: {"type": "image"} parts + images
        mixed = [f"{kind}s" for kind, refs in top.items() if refs and refs is not parts_refs[kind]]
        if uses_parts and mixed:
            raise RejectedInput(
                f"content parts and a top-level {' / '.join(mixed)} list are mixed; "
                "use one or the other"
            )
        refs = parts_refs if uses_parts else top
        messages = canonical_messages(
            turns, len(refs["image"]), len(refs["video"]), len(refs["audio"])
        )
        messages, chosen, rejected, rejected_images = swift_pair(obj, messages)
        return self.conversation_record(
            obj,
            location,
            messages,
            refs,
            (chosen, rejected),
            None if rejected_images is None else self.media(rejected_images),
            content="parts" if uses_parts else "text",
        )


def swift_pair(
    obj: dict[str, object], messages: list[dict[str, str]]
) -> tuple[list[dict[str, str]], str | None, str | None, list[object] | None]:
    """``(prompt messages, chosen, rejected, rejected image refs)`` of an ms-swift record
    with ``rejected_response``; ``(messages, None, None, None)`` without one."""
    rejected = obj.get("rejected_response")
    rejected_images = obj.get("rejected_images")
    if rejected is None:
        if rejected_images:
            raise RejectedInput("'rejected_images' without 'rejected_response'")
        return messages, None, None, None
    if not isinstance(rejected, str) or not rejected.strip():
        raise RejectedInput("'rejected_response' must be a non-empty string")
    if not messages or messages[-1]["role"] != "assistant":
        raise RejectedInput(
            "'rejected_response' needs the conversation to end with the chosen assistant answer"
        )
    chosen = messages[-1]["content"]
    if placeholder_kinds(chosen):
        raise RejectedInput("the chosen answer holds a media placeholder")
    if not chosen.strip():
        raise RejectedInput("the chosen answer is empty")
    if rejected_images is not None:
        if not isinstance(rejected_images, list):
            raise RejectedInput("'rejected_images' must be a list")
        wanted = sum(placeholder_kinds(m["content"]).count("image") for m in messages)
        if len(rejected_images) != wanted:
            raise RejectedInput(
                f"'rejected_images' holds {len(rejected_images)} image(s), the prompt {wanted}"
            )
    return messages[:-1], chosen, rejected, rejected_images
