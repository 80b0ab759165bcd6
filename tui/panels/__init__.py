"""Panels: panes that show fields of the selected sample, declared in ``conf/tui``.

A panel is a Textual widget class whose constructor takes the :class:`PanelSpec` and which
implements :meth:`Panel.show`. ``conf/tui/default.yaml`` lists them under ``panels:``
with the sample ``fields`` they read and the ``screens`` they appear on (``lake``: beside
the samples table, ``sample``: on the detail screen). A plugin contributes one by
shipping the class and declaring it, e.g. a transcript pane for audio::

    # my_plugin/tui.py
    class TranscriptPanel(Panel):
        def show(self, sample):
            texts = [m["transcript"] for m in sample.get("media", []) if m.get("transcript")]
            self.body.update("\\n\\n".join(texts) or "no transcript")

    # conf/tui/audio.yaml of the plugin's config package (``lakeloom.conf`` entry point)
    defaults: [default]
    panels:
      transcript:
        _target_: my_plugin.tui.TranscriptPanel
        title: Transcript
        fields: [media]
        screens: [sample]

and ``lakeloom tui tui=audio`` (or the same keys as overrides) shows it.
``sample`` is what ``LakeView.sample`` returns: every samples column plus ``media``.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from tui.config import PanelSpec, import_object
from tui.format import printable


class Panel(Vertical):
    """Base of the panels; ``body`` is a Static subclasses may fill."""

    def __init__(self, spec: PanelSpec, **kwargs: Any) -> None:
        kwargs.setdefault("id", f"panel-{spec.name}")
        super().__init__(**kwargs)
        self.spec = spec
        self.border_title = spec.title
        self.add_class("panel")
        self.body = Static("", classes="panel-body", markup=False)

    def compose(self) -> ComposeResult:
        yield self.body

    def show(self, sample: dict[str, Any] | None) -> None:
        """Show ``sample`` (None: nothing selected)."""
        raise NotImplementedError

    def values(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The declared fields of ``sample`` (missing ones as None)."""
        return {f: sample.get(f) for f in self.spec.fields}


class BrokenPanel(Panel):
    """Stands in for a panel whose class could not be loaded, saying why."""

    def __init__(self, spec: PanelSpec, error: str) -> None:
        super().__init__(spec)
        self.body.update(printable(f"panel {spec.name!r} ({spec.target}): {error}"))

    def show(self, sample: dict[str, Any] | None) -> None:
        """Nothing to show."""


def build_panels(specs: list[PanelSpec]) -> list[Panel]:
    """Instantiate the declared panels (a failing one becomes a :class:`BrokenPanel`)."""
    out: list[Panel] = []
    for spec in specs:
        try:
            out.append(import_object(spec.target)(spec))
        except Exception as exc:  # a plugin's bug must not keep the app from starting
            out.append(BrokenPanel(spec, f"{type(exc).__name__}: {exc}"))
    return out
