"""``lakeloom tui serve``: the same app in a browser, through textual-serve.

Every browser tab starts its own ``python -m tui <overrides>`` process (same lake, runs
folder and TUI config), drawn by Textual's web driver; nothing but the server listens.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from typing import Any

SERVE_KEYS = ("host", "port")  # read by the server, not passed on to the app


def app_command(overrides: Sequence[str], python: str | None = None) -> str:
    """The shell command each browser session runs."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in SERVE_KEYS]
    return shlex.join([python or sys.executable, "-m", "tui", *keep])


def make_server(overrides: Sequence[str], host: str = "localhost", port: int = 8000) -> Any:
    """A ``textual_serve.server.Server`` for the app (not started)."""
    from textual_serve.server import Server

    return Server(app_command(overrides), host=host, port=port, title="lakeloom")
