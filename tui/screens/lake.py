"""The lake browser: datasets, the samples table (filter, sort, text search), a preview."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Header, Input, Static

from lake.sql import and_filters, in_list, quote
from tui.config import ColumnSpec, TuiConfig
from tui.format import literal
from tui.lake_data import DERIVED
from tui.panels import build_panels
from tui.screens.sample import SampleListScreen
from tui.widgets.datasets import DatasetList
from tui.widgets.sample_table import SampleTable, StaticRows

# columns that hold lists or structs: not sortable
UNSORTABLE = {"flags", "tags", "media_ids", "messages", "provenance"}
SCORE_COLUMN = ColumnSpec("score", "score", 7, "{:.3f}", "right")


@dataclass
class Query:
    """What the samples table shows: dataset, SQL filter, text search and order."""

    dataset: str | None = None
    where: str = ""
    search: str = ""
    sort: str | None = None
    descending: bool = False

    def sql(self) -> str | None:
        """The combined SQL filter: the ``where`` clause can only narrow the dataset
        (:func:`lake.sql.and_filters`; an unbalanced one raises ConfigError)."""
        scope = f"dataset = {quote(self.dataset)}" if self.dataset else None
        where = self.where.strip() or None
        if not (scope and where):  # nothing to narrow: as typed, Lance judges it
            return scope or where
        return and_filters(scope, where)

    def describe(self, rows: int) -> str:
        """``12 samples · where … · sorted by label ▲``."""
        out = [f"{rows} sample{'s' * (rows != 1)}"]
        if self.search:
            out.append(f"nearest to {self.search!r}")
        shown = [f"dataset = {quote(self.dataset)}"] if self.dataset else []
        if self.where.strip():  # as typed; sql() adds the parentheses that keep it narrow
            shown.append(f"({self.where.strip()})" if shown else self.where.strip())
        if shown:
            out.append(f"where {' AND '.join(shown)}")
        if self.sort and not self.search:
            out.append(f"sorted by {self.sort} {'▼' if self.descending else '▲'}")
        return " · ".join(out)


def row_columns(config: TuiConfig, available: list[str]) -> list[str]:
    """Columns to read for the table: the configured ones that exist, plus ``sample_id``."""
    wanted = ["sample_id", "media_id", *(c.field for c in config.columns)]
    return [c for c in dict.fromkeys(wanted) if c in available or c in DERIVED]


def search_rows(view: Any, text: str, k: int, where: str | None, columns: list[str]) -> StaticRows:
    """Text search hits as table rows in score order (reads only the hits)."""
    hits = view.search_text(text, k=k, where=where)
    if not hits:
        return StaticRows([])
    found = view.rows(where=f"sample_id IN {in_list(sid for sid, _ in hits)}", columns=columns)
    by_id = {r["sample_id"]: r for r in found.page(0, max(1, len(found)))}
    return StaticRows([{**by_id[sid], "score": s} for sid, s in hits if sid in by_id])


class LakeScreen(SampleListScreen):
    """Datasets on the left, samples in the middle, panels of the selected sample right."""

    SCOPE = "lake"

    def __init__(self, config: TuiConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.query_state = Query()
        self.has_search = False
        self.columns: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="lake-main"):
            yield DatasetList(id="datasets")
            with Vertical(id="lake-center"):
                with Horizontal(id="lake-bar"):
                    yield Input(placeholder="where (SQL), e.g. label = 'cat'", id="where")
                    yield Input(placeholder="text search (CLIP)", id="search")
                yield Static("Opening the lake…", id="lake-status", markup=False)
                yield SampleTable(
                    self.config.columns,
                    page_size=self.config.page_size,
                    max_pages=self.config.page_cache,
                    id="samples",
                )
            with VerticalScroll(id="lake-side"):
                yield from build_panels(self.config.panels_for(self.SCOPE))
        yield Footer()

    @property
    def table(self) -> SampleTable:
        """The samples table."""
        return self.query_one("#samples", SampleTable)

    def status(self, text: str, error: bool = False) -> None:
        """Show a line above the table (errors styled by ``lake--error``)."""
        widget = self.query_one("#lake-status", Static)
        widget.update(literal(text, style=self.style("lake--error") if error else ""))
        widget.set_class(error, "error")

    # -- lake -----------------------------------------------------------------------------
    def lake_ready(self) -> None:
        self.set_focus(self.table)
        self.load_summary()
        self.reload()

    def lake_missing(self, error: str) -> None:
        self.status(error, error=True)
        self.table.set_source(None, message=error)
        self.query_one("#datasets", DatasetList).clear_options()

    @work(thread=True, name="summary", group="summary", exclusive=True, exit_on_error=False)
    def load_summary(self) -> tuple[list[Any], bool]:
        """Dataset counts and whether text search is possible."""
        view = self.view
        return view.datasets(), view.has_embeddings()

    def on_summary_done(self, result: tuple[list[Any], bool]) -> None:
        summaries, self.has_search = result
        self.query_one("#datasets", DatasetList).show(summaries, self.query_state.dataset)
        search = self.query_one("#search", Input)
        search.disabled = not self.has_search
        if not self.has_search:
            search.placeholder = "text search: no CLIP embeddings (lakeloom enrich)"
        if not summaries:
            self.table.set_source(None, message="The lake has no samples: run lakeloom ingest.")
            self.status("The lake has no samples.")

    # -- rows -----------------------------------------------------------------------------
    def reload(self) -> None:
        """Read the rows of the current query (in a worker)."""
        if self.view is None:
            return
        q = self.query_state
        self.status("searching… (the first search loads the CLIP model)" if q.search else "…")
        self.load_rows(replace(q))  # a copy: the worker must not see later edits

    @work(thread=True, name="rows", group="rows", exclusive=True, exit_on_error=False)
    def load_rows(self, q: Query) -> tuple[Query, Any, int]:
        """The RowSet (or search hits) of ``q`` and its length."""
        view = self.view
        columns = row_columns(self.config, view.columns)
        if q.search:
            rows = search_rows(view, q.search, self.config.search_k, q.sql(), columns)
        else:
            rows = view.rows(q.sql(), sort=q.sort, descending=q.descending, columns=columns)
        return q, rows, len(rows)

    def on_rows_done(self, result: tuple[Query, Any, int]) -> None:
        q, rows, n = result
        if q != self.query_state:  # a newer query is on its way
            return
        empty = "No samples match." if q.sql() or q.search else "The lake has no samples."
        extra = [SCORE_COLUMN] if q.search else []
        sort = None if q.search else q.sort
        self.table.set_source(rows, sort, q.descending, message=empty, extra=extra, length=n)
        self.status(q.describe(n))
        if n == 0:
            self.show_sample(None)

    def on_rows_failed(self, message: str) -> None:
        # ValueError from lake_data and ConfigError from lake.sql carry a readable
        # message; drop the class name
        text = message.removeprefix("ValueError: ").removeprefix("ConfigError: ")
        self.status(text, error=True)

    def on_sample_table_page_failed(self, event: SampleTable.PageFailed) -> None:
        self.status(f"{event.error} (reload to retry)", error=True)

    # -- preview --------------------------------------------------------------------------
    @on(SampleTable.Highlighted, "#samples")
    def highlighted(self, event: SampleTable.Highlighted) -> None:
        self.schedule_preview(event.row.get("sample_id"))

    @on(SampleTable.Selected, "#samples")
    def selected(self, event: SampleTable.Selected) -> None:
        self.action_open_sample()

    # -- inputs ---------------------------------------------------------------------------
    @on(Input.Submitted, "#where")
    def where_submitted(self, event: Input.Submitted) -> None:
        self.query_state.where = event.value
        self.set_focus(self.table)
        self.reload()

    @on(Input.Submitted, "#search")
    def search_submitted(self, event: Input.Submitted) -> None:
        self.query_state.search = event.value.strip()
        self.set_focus(self.table)
        self.reload()

    @on(DatasetList.Chosen)
    def dataset_chosen(self, event: DatasetList.Chosen) -> None:
        self.query_state.dataset = event.dataset
        self.set_focus(self.table)
        self.reload()

    def back(self) -> bool:
        if isinstance(self.focused, Input):
            self.set_focus(self.table)
            return True
        return False

    # -- actions --------------------------------------------------------------------------
    def action_filter(self) -> None:
        """Focus the SQL filter."""
        self.set_focus(self.query_one("#where", Input))

    def action_search(self) -> None:
        """Focus the text search (or say why there is none)."""
        if not self.has_search:
            self.notify("No CLIP embeddings in this lake: run `lakeloom enrich` first.")
            return
        self.set_focus(self.query_one("#search", Input))

    def action_focus_datasets(self) -> None:
        """Focus the datasets list."""
        self.set_focus(self.query_one("#datasets", DatasetList))

    def sortable(self) -> list[str]:
        """Configured columns the table can be sorted by."""
        have = self.view.columns if self.view else []
        return [
            c.field for c in self.config.columns if c.field in have and c.field not in UNSORTABLE
        ]

    def action_cycle_sort(self) -> None:
        """Sort by the next column (after the last: unsorted)."""
        cycle = [None, *self.sortable()]
        q = self.query_state
        q.sort = cycle[(cycle.index(q.sort) + 1) % len(cycle) if q.sort in cycle else 0]
        self.reload()

    def action_toggle_direction(self) -> None:
        """Ascending <-> descending."""
        self.query_state.descending = not self.query_state.descending
        if self.query_state.sort:
            self.reload()

    def action_clear(self) -> None:
        """Drop the dataset, filter, search and sort."""
        self.query_state = Query()
        self.query_one("#where", Input).value = ""
        self.query_one("#search", Input).value = ""
        self.query_one("#datasets", DatasetList).highlighted = 0
        self.reload()
