"""The help screen: every key binding active where it was opened, with its id."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static


def bindings_table(screen: Screen) -> Table:
    """Key, action description and binding id of every binding active on ``screen``."""
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold")
    table.add_column("key", no_wrap=True)
    table.add_column("does")
    table.add_column("where", style="dim")
    table.add_column("id (tui.keymap)", style="dim")
    seen = set()
    app = screen.app
    for _key, active in screen.active_bindings.items():
        binding = active.binding
        if binding.system or (binding.id, binding.action) in seen:
            continue
        seen.add((binding.id, binding.action))
        keys = [app.get_key_display(b) for _, b in _same(screen, binding)]
        where = "app" if active.node is app else type(active.node).__name__
        table.add_row(
            ", ".join(keys), binding.description or binding.action, where, binding.id or ""
        )
    return table


def _same(screen: Screen, binding: Binding) -> list[tuple[str, Binding]]:
    """Every active key bound like ``binding`` (same id, or same action without id)."""
    out = []
    for key, active in screen.active_bindings.items():
        b = active.binding
        if (binding.id and b.id == binding.id) or (not binding.id and b.action == binding.action):
            out.append((key, b))
    return out


class HelpScreen(ModalScreen[None]):
    """Lists the bindings of the screen below; any of escape, q, ? or F1 closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark,f1", "dismiss", "Close", id="help.close"),
    ]

    def __init__(self, below: Screen) -> None:
        super().__init__(id="help")
        self.table = bindings_table(below)
        self.below_title = below.title or type(below).__name__

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body") as body:
            body.border_title = f"Keys: {self.below_title}"
            body.border_subtitle = "remap: tui.keymap.<id>=<keys> · ctrl+p: every command"
            yield Static(self.table, id="help-table")
