"""Review: the flagged samples of each check, worst first; confirm or dismiss each flag.

Decisions are written to the lake as tags (``tui.review``) with who and when, so they
survive restarts and ``lakeloom split split.exclude_confirmed=true`` can use them.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Header, OptionList, Static
from textual.widgets.option_list import Option

from lake.sql import quote
from tui.config import ColumnSpec, TuiConfig
from tui.format import literal, printable
from tui.panels import build_panels
from tui.screens.lake import row_columns
from tui.screens.sample import SampleListScreen
from tui.widgets.sample_table import SampleTable

REVIEW_COLUMN = ColumnSpec("review", "review", 16)
MARKS = {"confirmed": "✔ confirmed", "dismissed": "✘ dismissed"}


class ReviewRows:
    """Flagged rows of one check, each with a ``review`` field: the decision on it."""

    def __init__(self, rows: Any, check: str) -> None:
        self.rows, self.check = rows, check

    def __len__(self) -> int:
        return len(self.rows)

    def page(self, index: int, size: int) -> list[dict[str, Any]]:
        """A page of the flagged rows (runs in a worker thread)."""
        from tui.review import decisions  # imports LanceDB: never on the UI thread

        out = []
        for row in self.rows.page(index, size):
            decision = decisions(row.get("tags")).get(self.check)
            mark = f"{MARKS[decision[0]]} {decision[1]}" if decision else ""
            out.append({**row, "review": mark})
        return out


class ReviewScreen(SampleListScreen):
    """Checks on the left, their flagged samples (worst first) in the middle."""

    SCOPE = "review"

    def __init__(self, config: TuiConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.check: str | None = None
        self._cursor = 0

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="review-main"):
            yield OptionList(id="checks")
            with Vertical(id="review-center"):
                yield Static("Opening the lake…", id="review-status", markup=False)
                yield SampleTable(
                    self.config.columns, page_size=self.config.page_size, id="review-table"
                )
            with VerticalScroll(id="review-side"):
                yield from build_panels(self.config.panels_for(self.SCOPE))
        yield Footer()

    @property
    def table(self) -> SampleTable:
        """The flagged samples table."""
        return self.query_one("#review-table", SampleTable)

    def status(self, text: str | Text) -> None:
        """The line above the table."""
        self.query_one("#review-status", Static).update(
            literal(text) if isinstance(text, str) else text
        )

    def lake_ready(self) -> None:
        self.load_checks()

    def lake_missing(self, error: str) -> None:
        self.status(literal(error, style=self.style("lake--error")))
        self.table.set_source(None, message=error)

    # -- checks ---------------------------------------------------------------------------
    @work(thread=True, name="checks", group="checks", exclusive=True, exit_on_error=False)
    def load_checks(self) -> list[tuple[str, int]]:
        """Every check with a score column or a flag, and how many samples it flags."""
        view = self.view
        names = list(view.checks())
        for summary in view.datasets():
            names += [f for f in summary.by_flag if f not in names]
        return [(name, len(view.flagged(name))) for name in names]

    def on_checks_done(self, checks: list[tuple[str, int]]) -> None:
        options = self.query_one("#checks", OptionList)
        options.set_options(
            Option(Text.assemble((printable(name), "bold"), (f" ({n})", "dim")), id=name)
            for name, n in checks
        )
        if not checks:
            self.status("No checks have run on this lake: run lakeloom check.")
            self.table.set_source(None, message="Nothing to review.")
            return
        names = [name for name, _ in checks]
        if self.check not in names:
            self.check, self._cursor = names[0], 0
        options.highlighted = names.index(self.check)
        self.load_flagged(self.check, self._cursor)

    @on(OptionList.OptionSelected, "#checks")
    def check_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id != self.check:
            self.check, self._cursor = event.option.id, 0
            self.load_flagged(self.check, 0)
        self.set_focus(self.table)

    # -- rows -----------------------------------------------------------------------------
    @work(thread=True, name="flagged", group="flagged", exclusive=True, exit_on_error=False)
    def load_flagged(self, check: str, cursor: int) -> tuple[str, ReviewRows, int, str, int]:
        """The flagged samples of ``check``, worst first, with their tags."""
        view = self.view
        score = f"check_{check}_score"
        columns = row_columns(self.config, view.columns)
        columns += [c for c in (score, "tags") if c in view.columns and c not in columns]
        sort = score if score in view.columns else None
        rows = view.rows(
            f"array_has(flags, {quote(check)})", sort=sort, descending=True, columns=columns
        )
        return check, ReviewRows(rows, check), len(rows), score, cursor

    def on_flagged_done(self, result: tuple[str, ReviewRows, int, str, int]) -> None:
        check, rows, n, score, cursor = result
        if check != self.check:
            return
        extra = [ColumnSpec(score, "score", 7, "{:.3f}", "right"), REVIEW_COLUMN]
        self.table.set_source(
            rows, score, True, message="No flagged samples.", extra=extra, length=n, cursor=cursor
        )
        self.status(f"{check}: {n} flagged, worst first")
        self.set_focus(self.table)

    # -- preview --------------------------------------------------------------------------
    @on(SampleTable.Highlighted, "#review-table")
    def highlighted(self, event: SampleTable.Highlighted) -> None:
        self._cursor = event.index
        self.schedule_preview(event.row.get("sample_id"))

    # -- decisions ------------------------------------------------------------------------
    def action_decide(self, decision: str) -> None:
        """Confirm or dismiss the flag of the sample under the cursor."""
        row = self.table.current_row
        if row is None or self.check is None or self.view is None:
            return
        self.status(f"writing {decision} on {row['sample_id'][:12]}…")
        self.write_decision(row["sample_id"], self.check, decision, self.table.cursor)

    @work(thread=True, name="decision", group="decision", exit_on_error=False)
    def write_decision(
        self, sample_id: str, check: str, decision: str, cursor: int
    ) -> tuple[str, str, int, int]:
        """Write the decision tag to the lake."""
        from tui.review import decide

        written = decide(
            self.view.uri, [sample_id], check, decision, who=self.config.who,
            storage_options=self.view.storage_options,
        )  # fmt: skip
        return sample_id, decision, written, cursor

    def on_decision_done(self, result: tuple[str, str, int, int]) -> None:
        sample_id, decision, written, cursor = result
        if not written:
            self.notify(
                f"{printable(sample_id[:12])} is no longer in the lake.",
                severity="warning",
                markup=False,
            )
            return
        self.notify(
            printable(f"{decision}: {self.check} on {sample_id[:12]}"), title="Review", markup=False
        )
        self._cursor = cursor + 1  # on to the next flagged sample
        self.app.lake_written()

    def on_decision_failed(self, message: str) -> None:
        self.status(
            literal(f"could not write the decision: {message}", style=self.style("lake--error"))
        )

    def action_focus_checks(self) -> None:
        """Focus the checks list."""
        self.set_focus(self.query_one("#checks", OptionList))
