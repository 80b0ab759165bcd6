"""One sample in full: images, conversation, text fields, scores, flags, provenance,
its lineage (``lakeloom why``), its near-duplicate group and its nearest neighbours by
embedding."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, HorizontalScroll, VerticalScroll
from textual.widgets import Footer, Header, Static

from lake.sql import in_list
from tui.config import TuiConfig
from tui.format import clip_sample, conversation_text, printable, scores, value_text
from tui.panels import build_panels
from tui.screens.base import LakeScreenBase
from tui.widgets.image import image_widget
from tui.widgets.tile import Tile

NEIGHBOURS = 8
TEXT_FIELDS = ("caption", "chosen", "rejected")
ROLES = ("system", "user", "assistant")  # styled apart: sample--role-<role> in the .tcss


def header_text(sample: dict[str, Any], flag_style: Style | str = "") -> Text:
    """Identity, label, split, flags (in ``flag_style``), tags (review decisions) and
    scores of a sample."""
    text = Text()
    text.append(printable(sample["sample_id"]), style="bold")
    for key in ("dataset", "label", "split"):
        text.append(f"\n{key:<8}", style="bold")
        text.append(value_text(sample.get(key)) or "—")
    text.append(f"\n{'flags':<8}", style="bold")
    text.append(
        value_text(sample.get("flags")) or "none", style=flag_style if sample.get("flags") else ""
    )
    for tag in sample.get("tags") or []:  # review decisions read as they are stored
        text.append(f"\n{'tag':<8}", style="bold")
        text.append(printable(tag))
    for name, value in scores(sample).items():
        text.append("\nscore   ", style="bold")
        text.append(f"{printable(name)} {value_text(value)}")
    return text


class SampleScreen(LakeScreenBase):
    """Everything about one sample; ``n``/``p`` step through the rows it was opened from."""

    SCOPE = "sample"
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "sample--flags",
        "sample--role",
        *(f"sample--role-{role}" for role in ROLES),
    }

    def __init__(
        self,
        sample_id: str,
        config: TuiConfig,
        source: Any = None,
        index: int | None = None,
    ) -> None:
        super().__init__(config)
        self.sample_id = sample_id
        self.source, self.index = source, index
        self.title = "Sample"

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="sample-body"):
            with Horizontal(id="sample-top"):
                yield Static("Loading…", id="sample-header", markup=False)
                yield HorizontalScroll(id="sample-images")
            yield Static("", id="sample-conversation", markup=False)
            yield Static("", id="sample-text", markup=False)
            yield Static("", id="sample-related-status", markup=False)
            yield HorizontalScroll(id="sample-duplicates")
            yield HorizontalScroll(id="sample-neighbours")
            yield from build_panels(self.config.panels_for(self.SCOPE))
        yield Footer()

    def lake_ready(self) -> None:
        self.load_sample(self.sample_id)

    def lake_missing(self, error: str) -> None:
        self.query_one("#sample-header", Static).update(printable(error, multiline=True))

    # -- reads ----------------------------------------------------------------------------
    @work(thread=True, name="sample", group="sample", exclusive=True, exit_on_error=False)
    def load_sample(self, sample_id: str) -> dict[str, Any] | None:
        """The sample with its media rows (long texts cut here, off the UI thread)."""
        try:
            sample = clip_sample(self.view.sample(sample_id), self.config.max_text_chars)
        except KeyError:
            return None
        if any("lineage" in p.fields for p in self.config.panels_for(self.SCOPE)):
            try:
                sample["lineage"] = self.view.lineage(sample_id, self.config.runs_dir)
            except Exception as exc:  # the rest of the screen still shows
                sample["lineage"] = {"error": f"{type(exc).__name__}: {exc}"}
        return sample

    @work(thread=True, name="related", group="related", exclusive=True, exit_on_error=False)
    def load_related(self, sample_id: str) -> tuple[list, list, dict[str, bytes]]:
        """Duplicate group and nearest neighbours, with the thumbnails of both."""
        view = self.view
        group = view.duplicate_group(sample_id)
        neighbours = view.neighbours(sample_id, k=NEIGHBOURS)
        ids = [*group, *(s for s, _ in neighbours)]
        if not ids:
            return group, neighbours, {}
        where = f"sample_id IN {in_list(ids)}"
        rows = view.rows(where, columns=["sample_id", "media_id", "label"])
        info = {r["sample_id"]: r for r in rows.page(0, max(1, len(rows)))}
        thumbs = view.thumbnails([r["media_id"] for r in info.values() if r.get("media_id")])
        return group, neighbours, {s: (info[s], thumbs.get(info[s].get("media_id"))) for s in info}

    # -- display --------------------------------------------------------------------------
    def on_sample_done(self, sample: dict[str, Any] | None) -> None:
        if sample is None:
            self.query_one("#sample-header", Static).update(
                f"No sample {printable(self.sample_id)} in this lake version."
            )
            return
        self.sub_title = printable(sample["sample_id"][:16])
        header = header_text(sample, self.style("sample--flags"))
        self.query_one("#sample-header", Static).update(header)
        images = self.query_one("#sample-images", HorizontalScroll)
        images.remove_children()
        images.mount_all(
            image_widget(m["thumb"], self.app.graphics, classes="sample-image")
            for m in sample.get("media") or []
            if m.get("thumb")
        )
        images.display = bool(sample.get("media"))
        conversation = self.query_one("#sample-conversation", Static)
        roles = {role: self.style(f"sample--role-{role}") for role in ROLES}
        conversation.update(
            conversation_text(sample.get("messages"), roles, self.style("sample--role"))
        )
        conversation.border_title = "Conversation"
        conversation.display = bool(sample.get("messages"))
        texts = Text()
        for key in TEXT_FIELDS:
            if sample.get(key):
                texts.append(f"{key}\n", style="bold")
                texts.append(f"{printable(sample[key], multiline=True)}\n\n")
        texts.rstrip()
        self.query_one("#sample-text", Static).update(texts)
        for panel in self.query(".panel"):
            panel.show(sample)
        self.query_one("#sample-related-status", Static).update(
            "Looking for duplicates and neighbours…"
        )
        self.load_related(self.sample_id)

    def on_related_done(self, result: tuple[list, list, dict]) -> None:
        group, neighbours, info = result
        status = []
        dups = self.query_one("#sample-duplicates", HorizontalScroll)
        dups.remove_children()
        if group:
            dups.border_title = f"Near-duplicate group ({len(group)})"
            dups.mount_all(
                self._tile(s, info, "this" if s == self.sample_id else "") for s in group
            )
        else:
            status.append("no near-duplicate group")
        dups.display = bool(group)
        near = self.query_one("#sample-neighbours", HorizontalScroll)
        near.remove_children()
        if neighbours:
            near.border_title = "Nearest neighbours (CLIP cosine)"
            near.mount_all(self._tile(s, info, f"{score:.3f}") for s, score in neighbours)
        else:
            status.append("no neighbours (no CLIP embeddings)")
        near.display = bool(neighbours)
        self.query_one("#sample-related-status", Static).update(" · ".join(status))

    def on_related_failed(self, message: str) -> None:
        self.query_one("#sample-related-status", Static).update(
            f"related samples: {printable(message)}"
        )

    def _tile(self, sample_id: str, info: dict, note: str) -> Tile:
        row, thumb = info.get(sample_id, ({}, None))
        label = printable(row.get("label") or "")
        caption = f"{printable(sample_id[:8])} {note}".strip() + f"\n{label}"
        return Tile(sample_id, caption, thumb)

    @on(Tile.Chosen)
    def tile_chosen(self, event: Tile.Chosen) -> None:
        if event.sample_id != self.sample_id:
            self.app.push_screen(SampleScreen(event.sample_id, self.config))

    # -- actions --------------------------------------------------------------------------
    def action_step(self, delta: int) -> None:
        """Show the next / previous row of the list this sample was opened from."""
        if self.source is None or self.index is None:
            self.notify("Opened on its own: no list to step through.")
            return
        index = self.index + delta
        if 0 <= index < len(self.source):
            self.step_to(index)

    @work(thread=True, name="step", group="sample", exclusive=True, exit_on_error=False)
    def step_to(self, index: int) -> tuple[int, str | None]:
        """The sample id of row ``index`` of the source."""
        size = self.config.page_size  # the table's page size: its cached pages serve
        page = self.source.page(index // size, size)
        row = page[index % size] if index % size < len(page) else None
        return index, row and row.get("sample_id")

    def on_step_done(self, result: tuple[int, str | None]) -> None:
        index, sample_id = result
        if sample_id:
            self.index, self.sample_id = index, sample_id
            self.query_one("#sample-body", VerticalScroll).scroll_home(animate=False)
            self.load_sample(sample_id)

    def action_open_related(self) -> None:
        """Focus the first duplicate or neighbour tile (enter opens it)."""
        tiles = self.query(Tile)
        if tiles:
            self.set_focus(tiles.first())
        else:
            self.notify("No duplicates or neighbours to open.")


class SampleListScreen(LakeScreenBase):
    """A lake screen listing samples in ``self.table``; opening a row shows its sample."""

    @property
    def table(self) -> Any:
        """The samples table (a ``tui.widgets.sample_table.SampleTable``)."""
        raise NotImplementedError

    def action_open_sample(self) -> None:
        """Open the detail screen of the sample under the cursor of ``self.table``."""
        row = self.table.current_row
        if row is None:
            return
        self.app.push_screen(
            SampleScreen(row["sample_id"], self.config, self.table.source, self.table.cursor)
        )

    def on_sample_table_page_failed(self, event: Any) -> None:
        self.notify(f"{printable(event.error)} (reload to retry)", severity="error", markup=False)
