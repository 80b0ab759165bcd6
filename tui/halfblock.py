"""Images as Unicode half blocks: each cell is ``▀`` with the top pixel as foreground and
the bottom pixel as background, so a cell shows two square-ish pixels in any terminal."""

from __future__ import annotations

from PIL import Image
from rich.color import Color
from rich.segment import Segment
from rich.style import Style

UPPER_HALF = "▀"


def fit(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """Pixel size of an image of ``size`` scaled to fit ``width`` x ``height`` cells."""
    w, h = size
    if w <= 0 or h <= 0 or width <= 0 or height <= 0:
        return 0, 0
    scale = min(width / w, 2 * height / h)
    return max(1, round(w * scale)), max(2, round(h * scale / 2) * 2)


def render(image: Image.Image, width: int, height: int) -> list[list[Segment]]:
    """Lines of segments drawing ``image`` within ``width`` x ``height`` cells."""
    w, h = fit(image.size, width, height)
    if not w:
        return []
    px = image.resize((w, h), Image.Resampling.BILINEAR).load()
    styles: dict[tuple, Style] = {}
    lines = []
    for y in range(0, h, 2):
        line = []
        for x in range(w):
            key = (px[x, y], px[x, y + 1])
            style = styles.get(key)
            if style is None:
                style = styles[key] = Style(
                    color=Color.from_rgb(*key[0]), bgcolor=Color.from_rgb(*key[1])
                )
            line.append(Segment(UPPER_HALF, style))
        lines.append(list(Segment.simplify(line)))
    return lines
