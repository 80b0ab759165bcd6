"""The datasets list: one entry per dataset with its counts by label, split and flag."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from tui.format import printable

ALL = "\x00all"  # option id of "every dataset" (no dataset is named with a NUL)
MAX_VALUES = 4


def counts_text(counts: dict[str, int]) -> Text:
    """``cat 18 · dog 14`` (the largest first, at most a few)."""
    text = Text()
    items = list(counts.items())
    for i, (value, n) in enumerate(items[:MAX_VALUES]):
        text.append(" · " if i else "")
        text.append(printable(value))
        text.append(f" {n}", style="dim")
    if len(items) > MAX_VALUES:
        text.append(f" · +{len(items) - MAX_VALUES} more", style="dim")
    return text


def summary_text(summary: Any) -> Group:
    """The option prompt of one ``DatasetSummary``: name, size, then counts by key."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    for key, counts in (
        ("label", summary.by_label),
        ("split", summary.by_split),
        ("flags", summary.by_flag),
    ):
        if counts:
            grid.add_row(key, counts_text(counts))
    title = Text.assemble(
        (printable(summary.name), "bold"), (f"  {summary.samples} samples", "dim")
    )
    return Group(title, Padding(grid, (0, 0, 0, 1)))


class DatasetList(OptionList):
    """Datasets to browse; choosing one filters the samples table."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.summaries: list[Any] = []

    class Chosen(Message):
        """A dataset was chosen; None: every dataset."""

        def __init__(self, dataset: str | None) -> None:
            super().__init__()
            self.dataset = dataset

    def show(self, summaries: list[Any], chosen: str | None = None) -> None:
        """Replace the entries with ``summaries`` (``DatasetSummary``), keeping ``chosen``."""
        self.summaries = list(summaries)
        total = sum(s.samples for s in summaries)
        options = [
            Option(Text.assemble(("All datasets", "bold"), (f"  {total} samples", "dim")), id=ALL)
        ]
        options += [Option(summary_text(s), id=s.name) for s in summaries]
        self.set_options(options)
        index = next((i for i, o in enumerate(options) if o.id == (chosen or ALL)), 0)
        self.highlighted = index

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        option_id = event.option.id
        self.post_message(self.Chosen(None if option_id == ALL else option_id))
