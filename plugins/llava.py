"""Source plugin: LLaVA instruction data (JSON array or JSONL of ``conversations``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from lake.json_source import ConversationSource


class LlavaSource(ConversationSource):
    """LLaVA records: ``{"id", "image" | "images", "conversations": [{"from", "value"}]}``.

    The ShareGPT reader (:class:`~lake.json_source.ConversationSource`) with LLaVA's
    fixed keys (``conversations``, ``from``, ``value``;
    ``human`` / ``gpt``). ``<image>`` placeholders pair in order with the images; a record
    without images is a text-only sample when its conversation has no placeholder. The
    record ``id`` is kept as ``record_id`` (not part of the sample's key). ``image_folder`` is the
    subfolder of the dataset root that image paths are relative to (LLaVA's
    ``--image_folder``); null means the dataset root itself.
    """

    name = "llava"
    version = "0.1.0"
    step: ClassVar[str] = "parse_llava"

    def __init__(self, path: str | Path, image_folder: str | None = None, **kwargs: Any) -> None:
        super().__init__(path, image_folder=image_folder, **kwargs)

    def params(self) -> dict[str, object]:
        """Options recorded in provenance (the fixed LLaVA keys are left out)."""
        fixed = self.layout.options()
        return {k: v for k, v in super().params().items() if k not in fixed}
