"""A panel for time-based media: a frame's or clip's place in its video, audio, transcripts."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from tui.format import printable
from tui.panels import Panel


def _span(start: float | None, end: float | None) -> str:
    if start is None:
        return ""
    return f"{start:.2f}s" if end is None or end == start else f"{start:.2f}-{end:.2f}s"


class MediaPanel(Panel):
    """The sample's time range and transcript, then per media its kind, parent, time, scene.

    Image samples show one line per image (kind, size); video frames and clips show where
    in the parent video they sit, so a frame can be traced to the second of its source.
    """

    def show(self, sample: dict[str, Any] | None) -> None:
        """Show the media of ``sample``."""
        if sample is None:
            self.body.update("")
            return
        text = Text()
        span = _span(sample.get("t_start"), sample.get("t_end"))
        if span:
            text.append("clip ", style="bold")
            text.append(f"{span}\n")
        if sample.get("transcript"):
            text.append("speech ", style="bold")
            text.append(f"{printable(sample['transcript'], multiline=True)}\n")
        for media in sample.get("media") or []:
            kind = printable(media.get("kind") or "?")
            text.append(f"{kind:<6}", style="bold")
            parts = []
            if media.get("width"):
                parts.append(printable(f"{media['width']}x{media.get('height')}"))
            if media.get("scene") is not None:
                parts.append(f"scene {printable(media['scene'])}")
            if kind == "frame":
                parts.append(f"t {_span(media.get('t_start'), None)}")
            elif media.get("t_end") is not None:
                parts.append(_span(media.get("t_start"), media.get("t_end")))
            if media.get("parent_id"):
                parts.append(f"of {printable(media['parent_id'][:12])}")
            parts.append(printable(media.get("source_uri") or ""))
            text.append(" " + "  ".join(p for p in parts if p) + "\n")
            if media.get("transcript"):
                text.append("  speech ", style="bold")
                text.append(f"{printable(media['transcript'], multiline=True)}\n")
        text.rstrip()
        self.body.update(text or "no media")
