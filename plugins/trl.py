"""Source plugin: TRL's dataset layouts (JSONL or JSON array), images included.

One record is one of TRL's dataset types, standard (strings) or conversational (lists of
``{"role", "content"}`` messages whose content is a string or a list of parts):

- preference: ``prompt`` + ``chosen`` + ``rejected`` (TRL's vision preference layout,
  and 2U1/Qwen2-VL-Finetune's DPO layout with strings and ``image``);
- prompt-completion, with an optional ``label`` (unpaired preference, KTO): ``prompt`` +
  ``completion`` (+ ``label`` true / false, stored as the sample's ``feedback``);
- language modeling: ``messages`` (TRL's vision SFT layout), with an optional ``label``.

Images come from the top-level ``images`` (or ``image``) list. They pair in order with
``{"type": "image"}`` parts or ``<image>`` placeholders; a record with images but neither
puts them before the first user message's text, as TRL's ``prepare_multimodal_messages``
does. Canonical form: ``messages`` = the prompt (a standard prompt is one user message),
plus the completion as the last assistant turn; a pair's answers are ``chosen`` /
``rejected`` (each one assistant message, text only).
"""

from __future__ import annotations

from typing import ClassVar

from lake.errors import RejectedInput
from lake.json_source import JsonRecordsSource
from lake.records import Location, SourceRecord
from lake.schema import IMAGE_TOKEN
from lake.sources import (
    canonical_messages,
    canonical_role,
    check_feedback,
    feedback_value,
    flatten_parts,
    json_type,
    media_list,
)


class TrlSource(JsonRecordsSource):
    """TRL preference, prompt-completion (KTO) and language-modeling rows with images.

    See the module docstring for the accepted shapes and the canonical form.
    """

    name = "trl"
    version = "0.1.0"
    step: ClassVar[str] = "parse_trl"

    def parse(self, obj: dict[str, object], location: Location) -> SourceRecord:
        """One TRL row -> canonical messages, media, preference pair or feedback."""
        refs: list[object] = []
        chosen = rejected = None
        if obj.get("messages") is not None:
            turns = self._conversation(obj["messages"], "messages", refs)
            kind = "language_modeling"
        elif obj.get("prompt") is not None:
            turns = self._conversation(obj["prompt"], "prompt", refs)
            if obj.get("chosen") is not None or obj.get("rejected") is not None:
                chosen = self._answer(obj.get("chosen"), "chosen")
                rejected = self._answer(obj.get("rejected"), "rejected")
                kind = "preference"
            elif obj.get("completion") is not None:
                turns.append(("assistant", self._answer(obj["completion"], "completion")))
                kind = "prompt_completion"
            else:
                raise RejectedInput("'prompt' without 'chosen' / 'rejected' or 'completion'")
        else:
            raise RejectedInput("missing field 'messages' or 'prompt'")
        if any(ref is not None for ref in refs):
            raise RejectedInput("image parts hold references: TRL rows list them in 'images'")
        images = media_list(obj, "image")
        if images and not refs and not any(IMAGE_TOKEN in str(t) for _, t in turns):
            turns = _images_first(turns, len(images))
        messages = canonical_messages(turns, len(images))
        feedback = feedback_value(obj, "label")
        check_feedback(messages, feedback, chosen is not None)
        return SourceRecord(
            location=location,
            media=self.media(images),
            messages=messages,
            chosen=chosen,
            rejected=rejected,
            feedback=feedback,
            steps=[(self.step, {"format": self.name, "type": kind})],
        )

    def _conversation(
        self, value: object, key: str, refs: list[object]
    ) -> list[tuple[object, object]]:
        """A standard string (one user turn) or a list of messages, parts flattened."""
        if isinstance(value, str):
            return [("user", value)]
        if not isinstance(value, list):
            raise RejectedInput(f"{key!r} must be a string or a list, got {json_type(value)}")
        turns: list[tuple[object, object]] = []
        for i, msg in enumerate(value):
            if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
                raise RejectedInput(f"{key!r} message {i} must be an object with role, content")
            content = msg["content"]
            if isinstance(content, list):
                content = flatten_parts(content, refs, i)
            turns.append((canonical_role(msg["role"]), content))
        return turns

    def _answer(self, value: object, key: str) -> str:
        """A chosen / rejected / completion answer: a string or one assistant message."""
        if isinstance(value, list):
            if len(value) != 1 or not isinstance(value[0], dict):
                raise RejectedInput(f"{key!r} must hold exactly one assistant message")
            refs: list[object] = []
            ((role, value),) = self._conversation(value, key, refs)
            if role != "assistant":
                raise RejectedInput(f"{key!r} must be an assistant message, got {role!r}")
            if refs:
                raise RejectedInput(f"{key!r} holds an image: answers are text only")
        if not isinstance(value, str) or not value.strip():
            raise RejectedInput(f"{key!r} must be a non-empty string or assistant message")
        return value


def _images_first(turns: list[tuple[object, object]], n: int) -> list[tuple[object, object]]:
    """TRL's rule for rows without image parts: the images precede the first user text."""
    out = list(turns)
    for i, (role, content) in enumerate(out):
        if role == "user" and isinstance(content, str):
            out[i] = (role, IMAGE_TOKEN * n + content)
            return out
    raise RejectedInput("images but no user message to show them in")
