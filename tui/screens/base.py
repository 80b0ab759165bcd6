"""What every lakeloom screen shares, so that no screen module imports another.

:class:`ConfiguredScreen`: the typed config and the bindings declared for its scope in
``conf/tui`` (``bindings:``), which ``tui.keymap`` remaps by id; styles come from
``tui/lakeloom.tcss`` through component classes, never from colours written in Python.
:class:`LakeScreenBase` (the app's LakeView, lake (re)loads, the preview) and
:class:`PollingScreen` (a read in a worker every ``poll_s``, for the run screens) build
on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual import work
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from lake import runs as run_words
from tui.bindings import install
from tui.config import TuiConfig
from tui.format import clip_sample, printable

if TYPE_CHECKING:
    from tui.lake_data import LakeView

PREVIEW_DELAY_S = 0.15  # holding an arrow key must not read every sample

#: The glyph of each run status; its style is the ``run--<status>`` component class.
STATUS_GLYPHS = {
    run_words.RUNNING: "●",
    run_words.FINISHED: "✔",
    run_words.FAILED: "✘",
    run_words.INTERRUPTED: "◼",
    run_words.KILLED: "✝",
    run_words.UNKNOWN: "?",
}


class ConfiguredScreen(Screen):
    """A screen reading the typed :class:`TuiConfig`; ``SCOPE`` names its bindings.

    Subclasses list the styles they draw Rich text with in ``COMPONENT_CLASSES`` and
    declare them in ``tui/lakeloom.tcss``; :meth:`style` reads one.
    """

    SCOPE: ClassVar[str] = ""

    def __init__(self, config: TuiConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        install(self, config.bindings.get(self.SCOPE, []))

    def style(self, *names: str) -> Style:
        """The Rich style of component classes ``names`` as the stylesheet declares them
        (only what they set: a cell keeps its table's background)."""
        return self.get_component_rich_style(*names, partial=True)


class LakeScreenBase(ConfiguredScreen):
    """A screen over the lake.

    Subclasses implement :meth:`lake_ready` (the view opened or re-pinned; read in
    workers) and :meth:`lake_missing`, and handle worker results in ``on_<name>_done`` /
    ``on_<name>_failed`` methods named after their workers.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"lake--error"}
    # Focus moves with ``self.set_focus(w)``, not ``w.focus()``: the latter waits a frame,
    # and keys typed right after (pasted, or fast over SSH) would go to the old widget.

    def __init__(self, config: TuiConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._preview_timer: Any = None

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


class PollingScreen(ConfiguredScreen):
    """A screen that reads data in a thread worker every ``poll_s`` seconds, one read
    at a time, and shows the result on the UI thread; the UI never waits on a read."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {f"run--{status}" for status in STATUS_GLYPHS}

    poll_s: float = 1.0

    def __init__(self, config: TuiConfig) -> None:
        super().__init__(config)
        self._reading = False
        self._again = False
        self._rows: dict[str, tuple] = {}  # what show_rows shows

    def on_mount(self) -> None:
        self.set_interval(self.poll_s, self.poll)
        self.poll()

    def on_screen_resume(self) -> None:
        self.poll()

    def poll(self, force: bool = False) -> None:
        """Start a read unless one is running (then, with ``force``, read again after)."""
        if self._reading:
            self._again |= force
            return
        if not (force or self.is_current):
            return  # a covered screen does not read
        self._reading = True
        self.run_worker(self.read, thread=True, group="poll", exit_on_error=False)

    def read(self) -> Any:
        """Runs in a thread: gather what ``show`` needs (None: nothing new)."""
        raise NotImplementedError

    def show(self, result: Any) -> None:
        """Runs on the UI thread with what ``read`` returned."""

    def read_failed(self, error: BaseException) -> None:
        """Runs on the UI thread when ``read`` raised."""
        self.notify(printable(f"{type(error).__name__}: {error}"), severity="error", markup=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "poll" or event.state not in (
            WorkerState.SUCCESS,
            WorkerState.ERROR,
            WorkerState.CANCELLED,
        ):
            return
        self._reading = False
        if event.state == WorkerState.SUCCESS and event.worker.result is not None:
            self.show(event.worker.result)
        elif event.state == WorkerState.ERROR and event.worker.error is not None:
            self.read_failed(event.worker.error)
        if self._again:
            self._again = False
            self.poll(force=True)

    def show_rows(
        self, table: Any, rows: dict[str, tuple], columns: list[str], current: str | None
    ) -> None:
        """Show keyed ``rows`` in ``table``: with the same keys as last time only the changed
        cells are updated (no flicker, cursor kept), else the table is rebuilt with the
        cursor back on ``current``; ``columns`` are the table's column keys."""
        if list(rows) == list(self._rows):
            for key, row in rows.items():
                for column, old, new in zip(columns, self._rows[key], row, strict=True):
                    if old != new:
                        table.update_cell(key, column, new)
        else:
            table.clear()
            for key, row in rows.items():
                table.add_row(*row, key=key)
            if current in rows:
                table.move_cursor(row=table.get_row_index(current))
        self._rows = rows

    def status_text(self, status: str) -> Text:
        """A run status with its glyph, styled by ``run--<status>`` in the stylesheet."""
        if status not in STATUS_GLYPHS:
            status = run_words.UNKNOWN
        return Text(f"{STATUS_GLYPHS[status]} {status}", style=self.style(f"run--{status}"))


def events_path(run_path: str | Path) -> Path:
    """A run folder's events log (or the log itself when given): :func:`lake.runs.events_path`."""
    return run_words.events_path(run_path)


def run_status(status: str) -> str:
    """The run list's word for an events-log status (``started`` is ``running``)."""
    return run_words.RUNNING if status == run_words.STARTED else status
