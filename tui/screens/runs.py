"""The list of training runs: status, experiment, start, duration and best metric; the
highlighted run's folder and where its weights come from (:mod:`lake.weights_origin`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from lake.weights_origin import describe, run_weights
from tui.config import TuiConfig
from tui.format import fmt_duration, literal, printable
from tui.runs_data import RunInfo, list_runs
from tui.screens.base import PollingScreen

COLUMNS = ("", "status", "run", "experiment", "started", "duration", "best")


def fmt_time(ts: float | None) -> str:
    """Local time (``TZ`` honoured) of a UNIX timestamp."""
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def fmt_best(best: dict | None) -> str:
    """``val/acc 0.9123 @80`` from a run's best ``{metric, value, step}``."""
    if not best or best.get("value") is None:
        return ""
    step = f" @{best['step']}" if best.get("step") is not None else ""
    return f"{best.get('metric', '')} {best['value']:.4g}{step}".strip()


class RunsScreen(PollingScreen):
    """Training runs under ``runs_dir``, newest first, refreshed every ``refresh_s``.

    The config is handed on to the run and compare screens it opens.
    """

    SCOPE = "runs"
    COMPONENT_CLASSES: ClassVar[set[str]] = {"runs--mark", "runs--marked", "runs--error"}

    def __init__(self, runs_dir: str | Path, config: TuiConfig) -> None:
        super().__init__(config)
        self.runs_dir = Path(runs_dir)
        self.poll_s = config.refresh_s
        self.runs: dict[str, RunInfo] = {}
        self.marked: set[str] = set()
        self._weights: dict[Path, str] = {}  # run folder -> its weights line (config is fixed)

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
        self.show_rows(table, rows, [c or "mark" for c in COLUMNS], self.current_run_id())
        self._detail()

    def _row(self, run: RunInfo) -> tuple:
        return (
            Text("◆", style=self.style("runs--mark")) if run.run_id in self.marked else Text(" "),
            self.status_text(run.status),
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
                text.append(
                    f"   marked for comparison: {len(self.marked)}",
                    style=self.style("runs--marked"),
                )
            if run.path not in self._weights:
                self._weights[run.path] = describe(run_weights(run.path))
            text.append("\n")
            text.append(printable(f"weights: {self._weights[run.path]}"))
            if run.error:
                text.append("\n")
                text.append(printable(run.error, multiline=True), style=self.style("runs--error"))
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
