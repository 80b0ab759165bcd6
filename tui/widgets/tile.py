"""A focusable thumbnail with a caption; enter or a click opens its sample."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from tui.format import printable
from tui.widgets.image import HalfBlockImage


class Tile(Vertical, can_focus=True):
    """One related sample (duplicate, neighbour) shown side by side with others."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "choose", "Open", id="tile.open"),
    ]

    class Chosen(Message):
        """The tile's sample should be opened."""

        def __init__(self, sample_id: str) -> None:
            super().__init__()
            self.sample_id = sample_id

    def __init__(self, sample_id: str, caption: str, thumb: bytes | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_class("tile")
        self.sample_id = sample_id
        self.caption = printable(caption, multiline=True)
        self.thumb = thumb

    def compose(self) -> ComposeResult:
        yield HalfBlockImage(self.thumb, classes="tile-image")
        yield Static(self.caption, classes="tile-caption", markup=False)

    def action_choose(self) -> None:
        """Open this sample."""
        self.post_message(self.Chosen(self.sample_id))

    def on_click(self) -> None:
        self.action_choose()
