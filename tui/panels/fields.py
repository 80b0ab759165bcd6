"""A panel listing sample fields as ``name: value`` lines."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from tui.format import value_text
from tui.panels import Panel


class FieldsPanel(Panel):
    """The declared fields, one per line (lists joined, floats rounded)."""

    def show(self, sample: dict[str, Any] | None) -> None:
        """Show the fields of ``sample``."""
        if sample is None:
            self.body.update("")
            return
        text = Text()
        width = max((len(f) for f in self.spec.fields), default=0)
        for name, value in self.values(sample).items():
            text.append(f"{name:<{width}} ", style="bold")
            text.append(value_text(value) or "—")
            text.append("\n")
        text.rstrip()
        self.body.update(text)
