"""Image widgets: half blocks everywhere, Kitty / Sixel graphics where the terminal has them."""

from __future__ import annotations

from PIL import Image
from rich.segment import Segment
from textual.strip import Strip
from textual.widget import Widget

from lake.images import decode_image
from tui import halfblock


class HalfBlockImage(Widget):
    """An image drawn with ``▀`` cells, centred, scaled to the widget on every resize."""

    def __init__(self, data: bytes | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._image: Image.Image | None = None
        self._lines: list[list[Segment]] = []
        self._drawn_for: tuple[int, int] | None = None
        self.set_image(data)

    def set_image(self, data: bytes | None) -> None:
        """Show the encoded image ``data`` (None or undecodable: blank)."""
        try:
            self._image = decode_image(data) if data else None
        except OSError:
            self._image = None
        self._drawn_for = None
        self.refresh()

    @property
    def has_image(self) -> bool:
        """Whether an image is shown."""
        return self._image is not None

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        if self._image is None or not width:
            return Strip.blank(width, self.rich_style)
        if self._drawn_for != (width, height):
            self._lines = halfblock.render(self._image, width, height)
            self._drawn_for = (width, height)
        top = (height - len(self._lines)) // 2
        if not 0 <= y - top < len(self._lines):
            return Strip.blank(width, self.rich_style)
        line = self._lines[y - top]
        pad = (width - Segment.get_line_length(line)) // 2
        return Strip([Segment(" " * pad, self.rich_style), *line]).extend_cell_length(
            width, self.rich_style
        )


def image_widget(data: bytes, mode: str, **kwargs) -> Widget:
    """A widget showing ``data`` with ``mode`` (``halfblock``, ``kitty`` or ``sixel``)."""
    if mode in ("kitty", "sixel"):
        try:
            from textual_image.widget import SixelImage, TGPImage

            cls = TGPImage if mode == "kitty" else SixelImage
            return cls(decode_image(data), **kwargs)
        except Exception:  # an undecodable image or a failed import: fall back
            pass
    return HalfBlockImage(data, **kwargs)
