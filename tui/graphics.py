"""Which image protocol the static detail pane uses, decided before the app starts.

Terminal queries (textual-image's) only work before Textual owns stdin, so the choice is
made once, in ``tui.__main__``: ``tui.graphics=auto`` asks the terminal, ``halfblock``,
``kitty`` or ``sixel`` force it. Half blocks (``▀`` with two colours) work everywhere:
plain SSH, tmux, textual-serve; they are also what every scrolling pane uses.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

MODES = ("halfblock", "kitty", "sixel")


def _quiet_terminal(env: Mapping[str, str]) -> bool:
    """Terminals not worth querying: no answer comes, or it comes garbled."""
    term = env.get("TERM", "")
    return (
        term in ("", "dumb", "linux")
        or "TMUX" in env  # tmux passes neither protocol through by default
        or "TEXTUAL_DRIVER" in env  # textual-serve: a browser, not a terminal
    )


def detect(
    setting: str = "auto",
    env: Mapping[str, str] | None = None,
    is_tty: bool | None = None,
) -> str:
    """Resolve ``tui.graphics`` to ``halfblock``, ``kitty`` or ``sixel``."""
    if setting in MODES:
        return setting
    if setting != "auto":
        raise ValueError(f"tui.graphics must be auto, {', '.join(MODES)}; not {setting!r}")
    env = os.environ if env is None else env
    if is_tty is None:
        is_tty = bool(sys.__stdin__ and sys.__stdout__) and (
            sys.__stdin__.isatty() and sys.__stdout__.isatty()
        )
    if not is_tty or _quiet_terminal(env):
        return "halfblock"
    if env.get("TERM") == "xterm-kitty" or "KITTY_WINDOW_ID" in env:
        return "kitty"
    try:  # importing it sends the queries (0.1 s timeout each)
        from textual_image import renderable
    except Exception:  # a terminal answering nonsense must not stop the app
        return "halfblock"
    if renderable.Image is renderable.SixelImage:
        return "sixel"
    if renderable.Image is renderable.TGPImage:
        return "kitty"
    return "halfblock"


def prepare(mode: str) -> None:
    """Import the textual-image widgets while the terminal can still answer (cell size)."""
    if mode in ("kitty", "sixel"):
        import textual_image.widget  # noqa: F401
