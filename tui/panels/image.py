"""A panel previewing the sample's first image with half blocks."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult

from tui.format import printable
from tui.panels import Panel
from tui.widgets.image import HalfBlockImage


class ImagePanel(Panel):
    """The thumbnail of the first media (half blocks: they scroll and work over SSH)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image = HalfBlockImage(classes="panel-image")

    def compose(self) -> ComposeResult:
        yield self.image
        yield self.body

    def show(self, sample: dict[str, Any] | None) -> None:
        """Show the first thumbnail of ``sample`` and a line about its media."""
        media = (sample or {}).get("media") or []
        first = media[0] if media else {}
        self.image.set_image(first.get("thumb"))
        if not media:
            self.body.update("no image" if sample else "")
            return
        size = f"{first.get('width')}×{first.get('height')}" if first.get("width") else ""
        more = f"  (+{len(media) - 1} more)" if len(media) > 1 else ""
        kind = printable(first.get("mime") or first.get("kind") or "")
        self.body.update(f"{kind} {printable(size)}{more}".strip())
