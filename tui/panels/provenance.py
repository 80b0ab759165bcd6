"""The built-in example panel: where a sample and its media came from."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from tui.format import printable, provenance_text
from tui.panels import Panel


class ProvenancePanel(Panel):
    """``source_uri`` and the full ``provenance`` of the sample, then of each media."""

    def show(self, sample: dict[str, Any] | None) -> None:
        """Show the provenance of ``sample`` and its media."""
        if sample is None:
            self.body.update("")
            return
        text = Text()
        if "source_uri" in self.spec.fields:
            text.append("source ", style="bold")
            text.append(f"{printable(sample.get('source_uri') or '—')}\n")
        if "provenance" in self.spec.fields:
            text.append_text(provenance_text(sample.get("provenance")))
            for i, media in enumerate(sample.get("media") or []):
                text.append(f"\nmedia {i + 1} ", style="bold")
                media_id = printable(media.get("media_id", "")[:16])
                text.append(f"{media_id}  {printable(media.get('source_uri') or '')}\n")
                text.append_text(provenance_text(media.get("provenance"), indent="  "))
        text.rstrip()
        self.body.update(text)
