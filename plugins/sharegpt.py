"""Source plugin: ShareGPT conversations (JSON array or JSONL), with preference pairs.

The reader is :class:`lake.json_source.ConversationSource` (shared with ``llava``);
this plugin names it and keeps ShareGPT's default keys and tags.
"""

from __future__ import annotations

from typing import ClassVar

from lake.json_source import ConversationSource


class ShareGPTSource(ConversationSource):
    """ShareGPT conversations: ``conversations`` = ``[{"from", "value"}, ...]``.

    See :class:`lake.json_source.ConversationSource` for the keys, tags, media,
    preference pairs and KTO feedback it reads.
    """

    name = "sharegpt"
    version = "0.1.0"
    step: ClassVar[str] = "parse_sharegpt"
