"""A virtual samples table: draws only the visible lines, reading pages on demand.

Textual's ``DataTable`` holds every row; a lake may have millions. This widget knows only
the row count of its source (a ``RowSet`` of ``tui.lake_data``, or :class:`StaticRows`)
and asks for the pages it is about to draw, in thread workers; until a page arrives its
rows are drawn as placeholders. Line 0 is the header and does not scroll vertically.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar, Protocol

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events, work
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tui.config import ColumnSpec
from tui.format import printable

PLACEHOLDER = "…"


class RowSource(Protocol):
    """What the table reads: a length and pages of row dicts."""

    def __len__(self) -> int: ...

    def page(self, index: int, size: int) -> list[dict[str, Any]]: ...


class StaticRows:
    """Rows already in memory (text search results, in score order)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def page(self, index: int, size: int) -> list[dict[str, Any]]:
        """Rows ``index*size`` .. ``(index+1)*size``."""
        return self.rows[index * size : (index + 1) * size]


class SampleTable(ScrollView, can_focus=True):
    """Rows of a :class:`RowSource` under a fixed header, with a row cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False, id="table.up"),
        Binding("down,j", "cursor(1)", "Down", show=False, id="table.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="table.page_up"),
        Binding("pagedown,space", "page(1)", "Page down", show=False, id="table.page_down"),
        Binding("home,g", "jump(0)", "First", show=False, id="table.first"),
        Binding("end,G", "jump(-1)", "Last", show=False, id="table.last"),
        Binding("left", "scroll_left", "Scroll left", show=False, id="table.left"),
        Binding("right", "scroll_right", "Scroll right", show=False, id="table.right"),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "sample-table--header",
        "sample-table--cursor",
        "sample-table--placeholder",
        "sample-table--message",
    }

    cursor: reactive[int] = reactive(0, always_update=True, init=False)

    class _RowMessage(Message):
        """A message about one row of the table."""

        def __init__(self, table: SampleTable, index: int, row: dict[str, Any]) -> None:
            super().__init__()
            self.table, self.index, self.row = table, index, row

        @property
        def control(self) -> SampleTable:
            """The table (for ``@on(..., selector)``)."""
            return self.table

    class Highlighted(_RowMessage):
        """The cursor is on a row whose page has arrived."""

    class Selected(_RowMessage):
        """A row was chosen (enter, or clicked twice)."""

    class PageFailed(Message):
        """A page could not be read; ``error`` is meant for people."""

        def __init__(self, error: str) -> None:
            super().__init__()
            self.error = error

    class _PageLoaded(Message):
        def __init__(self, generation: int, index: int, rows: list[dict[str, Any]]) -> None:
            super().__init__()
            self.generation, self.index, self.rows = generation, index, rows

    def __init__(
        self,
        columns: list[ColumnSpec],
        page_size: int = 100,
        max_pages: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.columns = list(columns)
        self.page_size = max(1, page_size)
        self.max_pages = max(2, max_pages)
        self.source: RowSource | None = None
        self.sort: str | None = None
        self.descending = False
        self.message = "Loading…"
        self._length = 0
        self._generation = 0
        self._pages: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()
        self._pending: set[int] = set()
        self._extra: list[ColumnSpec] = []

    # -- data -----------------------------------------------------------------------------
    def set_source(
        self,
        source: RowSource | None,
        sort: str | None = None,
        descending: bool = False,
        message: str = "",
        extra: list[ColumnSpec] | None = None,
        length: int | None = None,
        cursor: int = 0,
    ) -> None:
        """Show ``source`` with the cursor on row ``cursor`` (clamped); ``message`` is
        drawn when it has no rows. ``length``: the row count when already known."""
        self._generation += 1
        self.source, self.sort, self.descending = source, sort, descending
        self._length = 0 if source is None else (len(source) if length is None else length)
        self.message = printable(message)
        self._extra = list(extra or [])
        self._pages.clear()
        self._pending.clear()
        self._update_virtual_size()
        self.scroll_to(0, 0, animate=False, immediate=True)
        self.cursor = cursor
        self.refresh()

    def __len__(self) -> int:
        return self._length

    @property
    def visible_columns(self) -> list[ColumnSpec]:
        """Extra columns of the source (e.g. search score), then the configured ones."""
        return self._extra + self.columns

    def row(self, index: int) -> dict[str, Any] | None:
        """Row ``index`` if its page has arrived."""
        page = self._pages.get(index // self.page_size)
        if page is None:
            return None
        self._pages.move_to_end(index // self.page_size)  # least recently drawn go first
        offset = index % self.page_size
        return page[offset] if offset < len(page) else None

    @property
    def current_row(self) -> dict[str, Any] | None:
        """The row under the cursor, if loaded."""
        return self.row(self.cursor) if self._length else None

    def _request(self, index: int) -> None:
        if index in self._pages or index in self._pending or self.source is None:
            return
        self._pending.add(index)
        self._fetch(self.source, self._generation, index)

    @work(thread=True, group="pages", exit_on_error=False)
    def _fetch(self, source: RowSource, generation: int, index: int) -> None:
        try:
            rows = source.page(index, self.page_size)
        except Exception as exc:  # a lake rewritten or removed under us: say so, go on
            self.post_message(self.PageFailed(f"cannot read rows: {exc}"))
            rows = []
        self.post_message(self._PageLoaded(generation, index, rows))

    def on_sample_table__page_loaded(self, event: _PageLoaded) -> None:
        event.stop()
        if event.generation != self._generation:
            return
        self._pending.discard(event.index)
        self._pages[event.index] = event.rows
        while len(self._pages) > self.max_pages:
            self._pages.popitem(last=False)
        if event.index == self.cursor // self.page_size:
            self._announce()
        self.refresh()

    # -- geometry -------------------------------------------------------------------------
    def _line_width(self) -> int:
        return sum(c.width + 1 for c in self.visible_columns) + 1

    def _update_virtual_size(self) -> None:
        self.virtual_size = Size(self._line_width(), self._length + 1)

    @property
    def _body_height(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    # -- drawing --------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        if y == 0:
            strip = self._header()
        else:
            index = int(self.scroll_y) + y - 1
            if index >= self._length:
                if self._length == 0 and y == 2 and self.message:
                    style = self.get_component_rich_style("sample-table--message")
                    return Strip([Segment(f" {self.message}", style)]).adjust_cell_length(
                        width, base
                    )
                return Strip.blank(width, base)
            strip = self._row_line(index)
        return strip.crop(int(self.scroll_x), int(self.scroll_x) + width).adjust_cell_length(
            width, base
        )

    def _cells(self, texts: list[str], style: Style) -> Strip:
        segments = [Segment(" ", style)]
        for col, text in zip(self.visible_columns, texts, strict=True):
            if cell_len(text) > col.width:
                text = set_cell_size(text, col.width - 1) + "…"
            pad = " " * (col.width - cell_len(text))
            cell = pad + text if col.align == "right" else text + pad
            segments.append(Segment(cell + " ", style))
        return Strip(segments)

    def _header(self) -> Strip:
        titles = []
        for col in self.visible_columns:
            title = col.title or col.field
            if col.field == self.sort:
                title += " ▼" if self.descending else " ▲"
            titles.append(printable(title))
        return self._cells(titles, self.get_component_rich_style("sample-table--header"))

    def _row_line(self, index: int) -> Strip:
        row = self.row(index)
        if index == self.cursor:
            style = self.get_component_rich_style("sample-table--cursor")
        elif row is None:
            style = self.get_component_rich_style("sample-table--placeholder")
        else:
            style = self.rich_style
        if row is None:
            self._request(index // self.page_size)
            return self._cells([PLACEHOLDER] * len(self.visible_columns), style)
        cells = [col.text(row.get(col.field)) for col in self.visible_columns]
        return self._cells(cells, style)

    # -- cursor ---------------------------------------------------------------------------
    def watch_cursor(self, old: int, new: int) -> None:
        clamped = max(0, min(new, self._length - 1)) if self._length else 0
        if clamped != new:
            self.cursor = clamped
            return
        top = int(self.scroll_y)
        if new < top:
            self.scroll_to(y=new, animate=False, immediate=True)
        elif new >= top + self._body_height:
            self.scroll_to(y=new - self._body_height + 1, animate=False, immediate=True)
        self._request(new // self.page_size)
        self._announce()
        self.refresh()

    def _announce(self) -> None:
        row = self.current_row
        if row is not None:
            self.post_message(self.Highlighted(self, self.cursor, row))

    def action_cursor(self, delta: int) -> None:
        """Move the cursor by ``delta`` rows."""
        self.cursor = self.cursor + delta

    def action_page(self, delta: int) -> None:
        """Move the cursor by ``delta`` screens."""
        self.cursor = self.cursor + delta * self._body_height

    def action_jump(self, index: int) -> None:
        """Put the cursor on row ``index`` (negative: from the end)."""
        self.cursor = index if index >= 0 else self._length + index

    def on_resize(self) -> None:
        self._update_virtual_size()

    def on_click(self, event: events.Click) -> None:
        if event.y < 1:
            return
        index = int(self.scroll_y) + event.y - 1
        if index >= self._length:
            return
        if index == self.cursor and (event.chain >= 2 or self.has_focus):
            row = self.current_row
            if row is not None:
                self.post_message(self.Selected(self, index, row))
        self.cursor = index
