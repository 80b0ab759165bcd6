"""The lake's jobs, running and finished: per job, then per stage and node of the one under
the cursor: rows done / total as a bar, rows/s, failures and retries (``lakeloom jobs``)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from lake import runs as run_words
from lake.jobs_cmd import JobFigures, StageFigures, fmt_rate, fmt_rows, short_node
from lake.progress import COMMITTED
from tui.config import TuiConfig
from tui.format import fmt_duration, literal, printable
from tui.jobs_data import JobsRead, JobsSource, bar
from tui.screens.base import STATUS_GLYPHS, PollingScreen

JOB_COLUMNS = ("status", "run", "job", "started", "time", "progress", "rows", "rows/s", "fail",
               "retry")  # fmt: skip
STAGE_COLUMNS = ("stage / node", "status", "progress", "rows", "rows/s", "units", "fail", "retry")


class JobsScreen(PollingScreen):
    """Jobs of the lake (its ``runs`` and ``progress`` tables), newest first, read again
    every ``refresh_s``; below, the stages and nodes of the job under the cursor."""

    SCOPE = "jobs"
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "jobs--bar",
        "jobs--bar-empty",
        "jobs--failures",
        "jobs--node",
        "jobs--error",
    }

    def __init__(self, config: TuiConfig) -> None:
        super().__init__(config)
        self.poll_s = config.refresh_s
        self.source = JobsSource(config.lake_uri, config.storage_options)
        self.jobs: dict[str, JobFigures] = {}

    def compose(self) -> ComposeResult:
        yield Static(f"Reading the jobs of {printable(self.source.uri)} …", id="jobs-empty",
                     markup=False)  # fmt: skip
        table: DataTable = DataTable(id="jobs-table", cursor_type="row", zebra_stripes=True)
        for label in JOB_COLUMNS:
            table.add_column(label, key=label)
        yield table
        stages: DataTable = DataTable(id="jobs-stages", cursor_type="row")
        for label in STAGE_COLUMNS:
            stages.add_column(label, key=label)
        yield stages
        yield Static("", id="jobs-detail", markup=False)

    def on_mount(self) -> None:
        # Textual also runs PollingScreen.on_mount (handlers are called along the MRO)
        self.query_one("#jobs-table").display = False
        self.query_one("#jobs-stages").display = False

    # -- data -------------------------------------------------------------------------
    def read(self) -> JobsRead:
        return self.source.read()

    def show(self, result: JobsRead) -> None:
        table = self.query_one("#jobs-table", DataTable)
        empty = self.query_one("#jobs-empty", Static)
        self.jobs = {j.run_id: j for j in result.jobs}
        if not result.jobs:
            empty.update(result.message or "")
            empty.display, table.display = True, False
            self.query_one("#jobs-stages").display = False
            self._rows = {}
            table.clear()
            self._detail()
            return
        empty.display, table.display = False, True
        rows = {j.run_id: self._row(j) for j in result.jobs}
        self.show_rows(table, rows, list(JOB_COLUMNS), self.current_run_id())
        self._detail()

    # -- cells ------------------------------------------------------------------------
    def _status(self, status: str) -> Text:
        """A job or stage status; a committed stage looks finished."""
        if status == COMMITTED:
            glyph = STATUS_GLYPHS[run_words.FINISHED]
            return Text(f"{glyph} {status}", style=self.style(f"run--{run_words.FINISHED}"))
        return self.status_text(status)

    def _bar(self, done: int | None, total: int | None) -> Text:
        filled, empty = bar(done, total)
        text = Text(filled, style=self.style("jobs--bar"))
        text.append(empty, style=self.style("jobs--bar-empty"))
        return text

    def _count(self, n: int | None) -> Text:
        if n is None:
            return Text("")
        return Text(str(n), style=self.style("jobs--failures") if n else "", justify="right")

    def _row(self, job: JobFigures) -> tuple:
        started = job.started_at.astimezone().strftime("%Y-%m-%d %H:%M") if job.started_at else ""
        progress = job.rows is not None
        return (
            self.status_text(job.status),
            literal(job.run_id),  # Text: DataTable reads a str cell as markup
            literal(job.job),
            started,
            fmt_duration(job.duration_s),
            self._bar(job.rows, job.total),
            Text(fmt_rows(job.rows, job.total), justify="right"),
            Text(fmt_rate(job.rate), justify="right"),
            self._count(job.failures if progress else None),
            Text(str(job.retries) if progress else "", justify="right"),
        )

    def _stage_rows(self, stage: StageFigures) -> list[tuple]:
        rows = [
            (
                literal(stage.stage),
                self._status(stage.status),
                self._bar(stage.rows, stage.total),
                Text(fmt_rows(stage.rows, stage.total), justify="right"),
                Text(fmt_rate(stage.rate), justify="right"),
                Text(f"{stage.units_done}/{stage.units}", justify="right"),
                self._count(stage.failures),
                Text(str(stage.retries), justify="right"),
            )
        ]
        node_style = self.style("jobs--node")
        for n in stage.nodes:
            rows.append(
                (
                    literal(f"  └ {short_node(n.node)}", style=node_style),
                    Text(""),
                    Text(""),
                    Text(f"{n.rows:,}", justify="right", style=node_style),
                    Text(fmt_rate(n.rate), justify="right", style=node_style),
                    Text(str(n.units), justify="right", style=node_style),
                    self._count(n.failures),
                    Text(str(n.retries), justify="right", style=node_style),
                )
            )
        return rows

    def _detail(self) -> None:
        job = self.jobs.get(self.current_run_id() or "")
        stages = self.query_one("#jobs-stages", DataTable)
        detail = Text()
        stages.clear()
        stages.display = bool(job and job.stages)
        if job is not None:
            for stage in job.stages:
                for row in self._stage_rows(stage):
                    stages.add_row(*row)
            if not job.stages:
                detail.append("no progress rows: a local job, or one that has not begun a stage")
            errors = [job.error] if job.error else []
            errors += [e for s in job.stages for e in s.errors]
            for error in errors:
                detail.append("\n" if detail else "")
                detail.append(printable(error), style=self.style("jobs--error"))
        self.query_one("#jobs-detail", Static).update(detail)

    def current_run_id(self) -> str | None:
        """The job under the cursor."""
        table = self.query_one("#jobs-table", DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    # -- actions ----------------------------------------------------------------------
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "jobs-table":
            self._detail()

    def action_refresh(self) -> None:
        """Read the jobs again now."""
        self.poll(force=True)
