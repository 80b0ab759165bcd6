"""A screen that only says something (a screen that could not be opened, and why)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from tui.format import printable


class MessageScreen(Screen):
    """A full screen message under the usual header and footer."""

    def __init__(self, title: str, message: str) -> None:
        super().__init__()
        self.title = title
        self.message = printable(message, multiline=True)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(self.message, classes="screen-message", markup=False)
        yield Footer()
