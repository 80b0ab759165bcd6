"""A panel answering "why is this row here?": the sample's lineage (``lakeloom why``)."""

from __future__ import annotations

from typing import Any

from lake.lineage import format_lineage
from tui.format import printable
from tui.panels import Panel


class LineagePanel(Panel):
    """The text of :func:`lake.lineage.format_lineage` for the sample's ``lineage``, which
    the sample screen reads off the UI thread (``LakeView.lineage``)."""

    def show(self, sample: dict[str, Any] | None) -> None:
        """Show the lineage of ``sample`` (or why it could not be read)."""
        info = (sample or {}).get("lineage")
        if not info:
            self.body.update("" if sample is None else "lineage not read")
            return
        if "error" in info:
            self.body.update(printable(f"lineage: {info['error']}"))
            return
        self.body.update(printable(format_lineage(info), multiline=True))
