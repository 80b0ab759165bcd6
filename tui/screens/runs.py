"""The list of training runs: status, experiment, start, duration and best metric."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Static
from textual.worker import Worker, WorkerState

from tui.format import literal, printable
from tui.runs_data import RunInfo, list_runs

STATUS_STYLE = {
    "running": ("●", "bold cyan"),
    "finished": ("✔", "green"),
    "failed": ("✘", "bold red"),
    "interrupted": ("◼", "yellow"),
    "killed": ("✝", "bold magenta"),
    "unknown": ("?", "dim"),
}
COLUMNS = ("", "status", "run", "experiment", "started", "duration", "best")


def conf_get(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` of a mapping or ``config.key`` of an object; ``default`` if unset."""
    if config is None:
        return default
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    return default if value is None else value


def status_text(status: str) -> Text:
    """A run status with its glyph and colour."""
    glyph, style = STATUS_STYLE.get(status, STATUS_STYLE["unknown"])
    return Text(f"{glyph} {status}", style=style)


def fmt_duration(seconds: float | None) -> str:
    """``12s``, ``3m 05s``, ``1h 02m``, ``2d 03h``; empty when unknown."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def fmt_time(ts: float | None) -> str:
    """Local time (``TZ`` honoured) of a UNIX timestamp."""
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def fmt_best(best: dict | None) -> str:
    """``val/acc 0.9123 @80`` from a run's best ``{metric, value, step}``."""
    if not best or best.get("value") is None:
        return ""
    step = f" @{best['step']}" if best.get("step") is not None else ""
    return f"{best.get('metric', '')} {best['value']:.4g}{step}".strip()


class PollingScreen(Screen):
    """A screen that reads data in a thread worker every ``poll_s`` seconds, one read
    at a time, and shows the result on the UI thread; the UI never waits on a read."""

    poll_s: float = 1.0

    def __init__(self, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self._reading = False
        self._again = False

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


class RunsScreen(PollingScreen):
    """Training runs under ``runs_dir``, newest first, refreshed every 2 s.

    ``config`` keys read: ``refresh_s`` (list refresh period) and what the run and
    compare screens read (``plots``, ``poll_s``, ...), handed on to them.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_run", "Open", id="runs.open"),
        Binding("space", "toggle_mark", "Mark", id="runs.mark"),
        Binding("c", "compare", "Compare marked", id="runs.compare"),
        Binding("r", "refresh", "Refresh", id="runs.refresh"),
    ]
    DEFAULT_CSS = """
    RunsScreen #runs-table { height: 1fr; }
    RunsScreen #runs-empty { padding: 1 2; height: auto; }
    RunsScreen #runs-detail { height: auto; max-height: 4; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, runs_dir: str | Path, config: Any = None) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.config = config
        self.poll_s = float(conf_get(config, "refresh_s", 2.0))
        self.runs: dict[str, RunInfo] = {}
        self.marked: set[str] = set()
        self._rows: dict[str, tuple] = {}

    def compose(self) -> ComposeResult:
        yield Static(f"Reading {printable(self.runs_dir)} …", id="runs-empty", markup=False)
        table: DataTable = DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        for label in COLUMNS:
            table.add_column(label, key=label or "mark")
        yield table
        yield Static("", id="runs-detail", markup=False)

    def on_mount(self) -> None:
        # Textual also runs PollingScreen.on_mount (handlers are called along the MRO)
        self.query_one("#runs-table").display = False

    # -- data -------------------------------------------------------------------------
    def read(self) -> list[RunInfo]:
        return list_runs(self.runs_dir) if self.runs_dir.is_dir() else []

    def show(self, runs: list[RunInfo]) -> None:
        table = self.query_one("#runs-table", DataTable)
        empty = self.query_one("#runs-empty", Static)
        self.runs = {r.run_id: r for r in runs}
        self.marked &= set(self.runs)
        if not runs:
            empty.update(self._empty_message())
            empty.display, table.display = True, False
            self._rows = {}
            table.clear()
            self._detail()
            return
        empty.display, table.display = False, True
        rows = {r.run_id: self._row(r) for r in runs}
        if list(rows) == list(self._rows):
            for run_id, row in rows.items():
                for column, old, new in zip(COLUMNS, self._rows[run_id], row, strict=True):
                    if old != new:
                        table.update_cell(run_id, column or "mark", new)
        else:
            current = self.current_run_id()
            table.clear()
            for run_id, row in rows.items():
                table.add_row(*row, key=run_id)
            if current in rows:
                table.move_cursor(row=table.get_row_index(current))
        self._rows = rows
        self._detail()

    def _row(self, run: RunInfo) -> tuple:
        return (
            Text("◆", style="bold magenta") if run.run_id in self.marked else Text(" "),
            status_text(run.status),
            literal(run.run_id),  # Text: DataTable reads a str cell as markup
            literal(run.experiment or ""),
            fmt_time(run.started),
            fmt_duration(run.duration_s),
            literal(fmt_best(run.best)),
        )

    def _empty_message(self) -> str:
        hint = "Start one with `lakeloom train +experiment=NAME`; it shows up here."
        if not self.runs_dir.exists():
            return f"No runs folder at {printable(self.runs_dir)}.\n{hint}"
        return f"No runs in {printable(self.runs_dir)} yet.\n{hint}"

    def _detail(self) -> None:
        run = self.runs.get(self.current_run_id() or "")
        text = Text()
        if run is not None:
            text.append(printable(run.path))
            if self.marked:
                text.append(f"   marked for comparison: {len(self.marked)}", style="magenta")
            if run.error:
                text.append("\n")
                text.append(printable(run.error, multiline=True), style="red")
        self.query_one("#runs-detail", Static).update(text)

    def current_run_id(self) -> str | None:
        """The run under the cursor."""
        table = self.query_one("#runs-table", DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    # -- actions ----------------------------------------------------------------------
    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_run()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    def action_open_run(self) -> None:
        run = self.runs.get(self.current_run_id() or "")
        if run is not None:
            from tui.screens.run import RunScreen

            self.app.push_screen(RunScreen(run.path, self.config))

    def action_toggle_mark(self) -> None:
        run_id = self.current_run_id()
        if run_id is None:
            return
        self.marked ^= {run_id}
        row = self._row(self.runs[run_id])
        self._rows[run_id] = row
        self.query_one("#runs-table", DataTable).update_cell(run_id, "mark", row[0])
        self._detail()

    def action_compare(self) -> None:
        marked = [r.path for r in self.runs.values() if r.run_id in self.marked]
        if len(marked) < 2:
            marks = [b.binding for b in self.active_bindings.values()]
            marks = [b for b in marks if b.action == "toggle_mark"]
            key = self.app.get_key_display(marks[0]) if marks else "space"
            self.notify(f"Mark two or more runs with {key} to compare them.")
            return
        from tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(marked, self.config))

    def action_refresh(self) -> None:
        self.poll(force=True)
