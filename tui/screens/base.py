"""What the lake screens share: declared bindings, the app's LakeView, lake (re)loads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from tui.bindings import install
from tui.config import TuiConfig
from tui.format import clip_sample, printable

if TYPE_CHECKING:
    from tui.lake_data import LakeView

PREVIEW_DELAY_S = 0.15  # holding an arrow key must not read every sample


class LakeScreenBase(Screen):
    """A screen over the lake; ``SCOPE`` names its bindings in ``conf/tui`` (``bindings:``).

    Subclasses implement :meth:`lake_ready` (the view opened or re-pinned; read in
    workers) and :meth:`lake_missing`, and handle worker results in ``on_<name>_done`` /
    ``on_<name>_failed`` methods named after their workers. Screens listing samples keep
    their table in ``table`` (read by :meth:`action_open_sample`).
    """

    SCOPE: ClassVar[str] = ""
    # Focus moves with ``self.set_focus(w)``, not ``w.focus()``: the latter waits a frame,
    # and keys typed right after (pasted, or fast over SSH) would go to the old widget.

    def __init__(self, config: TuiConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self._preview_timer: Any = None
        install(self, config.bindings.get(self.SCOPE, []))

    # -- preview of the sample under the cursor (debounced, read in a worker) ------------
    def schedule_preview(self, sample_id: str | None) -> None:
        """Show ``sample_id`` in the panels once the cursor rests on it."""
        if self._preview_timer is not None:
            self._preview_timer.stop()
        self._preview_timer = self.set_timer(PREVIEW_DELAY_S, lambda: self.load_preview(sample_id))

    @work(thread=True, name="preview", group="preview", exclusive=True, exit_on_error=False)
    def load_preview(self, sample_id: str) -> dict[str, Any] | None:
        """The full sample under the cursor (long texts cut here, off the UI thread)."""
        try:
            sample = self.view.sample(sample_id)  # type: ignore[union-attr]
            return clip_sample(sample, self.config.max_text_chars)
        except KeyError:
            return None

    def on_preview_done(self, sample: dict[str, Any] | None) -> None:
        self.show_sample(sample)

    def show_sample(self, sample: dict[str, Any] | None) -> None:
        """Fill the panels with ``sample``."""
        for panel in self.query(".panel"):
            panel.show(sample)  # type: ignore[attr-defined]

    @property
    def view(self) -> LakeView | None:
        """The app's lake view (None until opened, or when there is no lake)."""
        return getattr(self.app, "view", None)

    def on_mount(self) -> None:
        self.watch(self.app, "lake_generation", self._lake_generation, init=True)

    def _lake_generation(self, generation: int) -> None:
        if generation == 0:
            return
        error = getattr(self.app, "lake_error", None)
        if self.view is None:
            self.lake_missing(error or "no lake")
        else:
            self.lake_ready()

    def lake_ready(self) -> None:
        """The view is open (or was re-pinned at a newer version): (re)load."""

    def lake_missing(self, error: str) -> None:
        """The lake could not be opened; ``error`` is meant for people."""

    def back(self) -> bool:
        """Handle the back key here first (leave an input, clear a search); True if done."""
        return False

    def action_open_sample(self) -> None:
        """Open the detail screen of the sample under the cursor of ``self.table``."""
        row = self.table.current_row
        if row is None:
            return
        from tui.screens.sample import SampleScreen

        self.app.push_screen(
            SampleScreen(row["sample_id"], self.config, self.table.source, self.table.cursor)
        )

    def on_sample_table_page_failed(self, event: Any) -> None:
        self.notify(f"{printable(event.error)} (reload to retry)", severity="error", markup=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.node is not self or not worker.name:
            return
        if event.state == WorkerState.SUCCESS:
            handler = getattr(self, f"on_{worker.name}_done", None)
            if handler is not None:
                handler(worker.result)
        elif event.state == WorkerState.ERROR:
            handler = getattr(self, f"on_{worker.name}_failed", None)
            message = f"{type(worker.error).__name__}: {worker.error}"
            if handler is not None:
                handler(message)
            else:
                self.notify(
                    printable(message),
                    title=f"{worker.name} failed",
                    severity="error",
                    markup=False,
                )
