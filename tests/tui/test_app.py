"""The lakeloom app driven by keys through Textual's Pilot, on the real ``tui_lake``."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from rich.console import Console
from textual.command import CommandPalette
from textual.widgets import Input

from tests.conftest import REPO
from tests.tui.pilot import SIZE, make_app, table_lines, text, type_into, until
from tui.config import TuiConfig
from tui.screens.help import HelpScreen
from tui.screens.lake import LakeScreen
from tui.screens.review import ReviewScreen
from tui.screens.sample import SampleScreen
from tui.widgets.sample_table import SampleTable
from tui.widgets.tile import Tile

pytestmark = pytest.mark.anyio


def table(pilot) -> SampleTable:
    return pilot.app.screen.query_one(SampleTable)


async def loaded(pilot, rows: int | None = None) -> SampleTable:
    """Wait until the current screen's table shows its first page (of ``rows`` rows)."""
    await until(pilot, lambda: isinstance(pilot.app.screen.query(SampleTable).first(), SampleTable))
    t = table(pilot)
    await until(pilot, lambda: t.current_row is not None and (rows is None or len(t) == rows))
    return t


@pytest.fixture
def lake_copy(tui_lake: Path, tmp_path: Path) -> Path:
    """A writable copy of the TUI lake."""
    return Path(shutil.copytree(tui_lake, tmp_path / "lake"))


# -- config ---------------------------------------------------------------------------------
def test_config_declares_everything_and_every_binding_has_an_id() -> None:
    config = TuiConfig.load()
    assert list(config.screens) == ["lake", "review", "runs", "jobs"]
    assert config.screens["runs"].args == {"runs_dir": "runs"}
    assert [c.field for c in config.columns][:3] == ["dataset", "label", "caption"]
    assert {p.name for p in config.panels} >= {"preview", "summary", "provenance"}
    assert config.plots and config.graphics == "auto"
    ids = [b.id for specs in config.bindings.values() for b in specs]
    assert all(ids) and len(ids) == len(set(ids))
    remapped = TuiConfig.load(["+tui.keymap.lake.sort=o", "tui.graphics=sixel"])
    assert remapped.keymap == {"lake.sort": "o"} and remapped.graphics == "sixel"
    with pytest.raises(ValueError, match=r"tui\.graphics"):
        TuiConfig.load(["tui.graphics=retina"])


async def test_columns_come_from_config_alone(tui_lake: Path) -> None:
    app = make_app(tui_lake, "tui.columns=[{field:label,title:LBL,width:6},{field:nope,width:4}]")
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, 60)
        header = table_lines(pilot)[0]
        assert "LBL" in header and "dataset" not in header and "caption" not in header


# -- lake browser ---------------------------------------------------------------------------
async def test_navigate_datasets_samples_detail_and_back(tui_lake: Path) -> None:
    async with make_app(tui_lake).run_test(size=SIZE) as pilot:
        assert isinstance(pilot.app.screen, LakeScreen)
        t = await loaded(pilot, 60)
        assert "60 samples" in text(pilot, "#lake-status")
        datasets = pilot.app.screen.query_one("#datasets")
        await until(pilot, lambda: datasets.option_count == 3)  # read by its own worker
        assert [o.id for o in datasets.options][1:] == ["pets", "toys"]
        await pilot.press("d", "down", "down", "enter")  # All, pets, toys -> toys
        await until(pilot, lambda: len(t) == 28 and t.current_row is not None)
        assert "where dataset = 'toys'" in text(pilot, "#lake-status")
        assert t.has_focus
        await pilot.press("down", "enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, SampleScreen))
        detail = pilot.app.screen
        await until(pilot, lambda: "dataset" in text(pilot, "#sample-header"))
        assert detail.sample_id == t.row(1)["sample_id"]
        assert "toys" in text(pilot, "#sample-header")
        await pilot.press("n")  # next row of the list it came from
        await until(pilot, lambda: detail.sample_id == t.row(2)["sample_id"])
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, LakeScreen))
        assert table(pilot).cursor == 1


async def test_filter_valid_and_invalid_sql(tui_lake: Path) -> None:
    async with make_app(tui_lake).run_test(size=SIZE) as pilot:
        t = await loaded(pilot, 60)
        await type_into(pilot, "slash", *"label = 'cat'", "enter")
        await until(pilot, lambda: len(t) == 18 and t.current_row is not None)
        assert all(t.row(i)["label"] == "cat" for i in range(18))
        assert "where label = 'cat'" in text(pilot, "#lake-status")
        await type_into(pilot, "slash", "ctrl+a", "ctrl+k", *"label = = 'x", "enter")
        status = pilot.app.screen.query_one("#lake-status")
        await until(pilot, lambda: status.has_class("error"))
        assert "invalid filter" in text(pilot, "#lake-status")
        assert len(t) == 18  # the last good rows stay
        await pilot.press("c")  # clear
        await until(pilot, lambda: len(t) == 60)


async def test_sort_cycles_columns_and_direction(tui_lake: Path) -> None:
    async with make_app(tui_lake).run_test(size=SIZE) as pilot:
        t = await loaded(pilot, 60)
        await pilot.press("s")  # first sortable column: dataset
        await until(pilot, lambda: "sorted by dataset ▲" in text(pilot, "#lake-status"))
        await until(pilot, lambda: t.current_row is not None)
        assert t.current_row["dataset"] == "pets" and "dataset ▲" in table_lines(pilot)[0]
        await pilot.press("S")
        await until(pilot, lambda: "sorted by dataset ▼" in text(pilot, "#lake-status"))
        await until(pilot, lambda: t.current_row is not None)
        assert t.current_row["dataset"] == "toys"
        await pilot.press("s")  # label
        await until(pilot, lambda: "sorted by label ▼" in text(pilot, "#lake-status"))
        await until(pilot, lambda: t.current_row is not None)
        assert t.current_row["label"] == "dog"


async def test_preview_panels_follow_the_cursor(tui_lake: Path) -> None:
    async with make_app(tui_lake).run_test(size=SIZE) as pilot:
        t = await loaded(pilot, 60)
        screen = pilot.app.screen
        await until(pilot, lambda: screen.query_one("#panel-preview").image.has_image)
        first = t.current_row["sample_id"]
        await pilot.press("end")
        await until(pilot, lambda: t.current_row is not None and t.cursor == 59)
        summary = screen.query_one("#panel-summary")
        label = t.current_row["label"]
        await until(pilot, lambda: label in str(summary.body.render()))
        assert t.current_row["sample_id"] != first


async def test_sample_detail_shows_provenance_duplicates_and_neighbours(tui_lake: Path) -> None:
    async with make_app(tui_lake).run_test(size=SIZE) as pilot:
        t = await loaded(pilot, 60)
        # the second sample of each dataset: in a group of 3, score 0.9
        await type_into(pilot, "slash", *"check_duplicates_score BETWEEN 0.89 AND 0.91", "enter")
        await until(pilot, lambda: len(t) == 2 and t.current_row is not None)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, SampleScreen))
        screen = pilot.app.screen
        await until(pilot, lambda: "duplicates" in text(pilot, "#sample-header"))
        provenance = str(screen.query_one("#panel-provenance").body.render())
        assert "image_folder" in provenance and "run_id" in provenance
        assert screen.query(".sample-image")  # its image
        await until(pilot, lambda: len(screen.query(Tile)) > 3, timeout=60)
        group = screen.query_one("#sample-duplicates")
        assert len(group.query(Tile)) == 3  # representative, this one and the other
        near = screen.query_one("#sample-neighbours")
        assert 0 < len(near.query(Tile)) <= 8
        await pilot.press("o", "enter")  # open the representative
        await until(pilot, lambda: len(pilot.app.screen_stack) == 3)
        assert pilot.app.screen.sample_id == group.query(Tile).first().sample_id


async def test_search_disabled_without_embeddings(tmp_path: Path, class_folder: Path) -> None:
    from lake.ingest import IngestSettings, ingest
    from lake.store import Lake
    from plugins.image_folder import ImageFolderSource

    ingest(ImageFolderSource(class_folder), Lake(tmp_path / "lake"), "pets",
           IngestSettings(workers=0, progress=False))  # fmt: skip
    async with make_app(tmp_path / "lake").run_test(size=SIZE) as pilot:
        await loaded(pilot, 8)
        search = pilot.app.screen.query_one("#search", Input)
        await until(pilot, lambda: search.disabled)
        assert "no CLIP embeddings" in search.placeholder
        await pilot.press("t")
        await until(
            pilot, lambda: any("lakeloom enrich" in n.message for n in pilot.app._notifications)
        )


async def test_text_search_through_clip(tui_lake: Path) -> None:
    model = f"local-dir:{tui_lake.parent / 'clip'}"  # where the fixture saved its model
    app = make_app(tui_lake, "tui.search_k=5", f"tui.search_model.pretrained={model}")
    async with app.run_test(size=SIZE) as pilot:
        t = await loaded(pilot, 60)
        search = pilot.app.screen.query_one("#search", Input)
        await until(pilot, lambda: not search.disabled, 60)  # the CLIP stack loads first
        await type_into(pilot, "t", *"a red cat", "enter")
        await until(pilot, lambda: "nearest to 'a red cat'" in text(pilot, "#lake-status"), 90)
        await until(pilot, lambda: t.current_row is not None)
        assert 0 < len(t) <= 5 and "score" in table_lines(pilot)[0]
        scores = [t.row(i)["score"] for i in range(len(t))]
        assert scores == sorted(scores, reverse=True)


# -- review ---------------------------------------------------------------------------------
def lake_tags(lake: Path) -> dict[str, list[str]]:
    import lance

    rows = lance.dataset(str(lake / "samples.lance")).to_table(columns=["sample_id", "tags"])
    return {r["sample_id"]: r["tags"] or [] for r in rows.to_pylist()}


async def test_review_decision_lands_in_lake_and_survives_restart(lake_copy: Path) -> None:
    async with make_app(lake_copy, "tui.who=tester").run_test(size=SIZE) as pilot:
        await pilot.press("v")
        await until(pilot, lambda: isinstance(pilot.app.screen, ReviewScreen))
        t = await loaded(pilot, 6)  # caption_mismatch: 3 per dataset
        assert "caption_mismatch: 6 flagged" in text(pilot, "#review-status")
        scores = [t.row(i)["check_caption_mismatch_score"] for i in range(6)]
        assert scores == sorted(scores, reverse=True)  # worst first
        worst = t.current_row["sample_id"]
        await pilot.press("y")
        await until(pilot, lambda: t.current_row is not None and t.cursor == 1, 30)
        await until(pilot, lambda: (r := t.row(0)) is not None and r["review"])
        assert t.row(0)["review"] == "✔ confirmed tester"
        await pilot.press("x")
        await until(pilot, lambda: (r := t.row(1)) is not None and r["review"] and t.cursor == 2)
        assert t.row(1)["review"] == "✘ dismissed tester"
    tags = lake_tags(lake_copy)[worst]
    assert len(tags) == 1 and tags[0].startswith("review:caption_mismatch:confirmed:tester:")
    async with make_app(lake_copy).run_test(size=SIZE) as pilot:  # a new app instance
        await pilot.press("v")
        t = await loaded(pilot, 6)
        assert t.row(0)["sample_id"] == worst and t.row(0)["review"] == "✔ confirmed tester"
        await pilot.press("enter")  # the detail screen shows the decision tag too
        await until(
            pilot, lambda: "review:caption_mismatch:confirmed" in text(pilot, "#sample-header")
        )


# -- robustness -----------------------------------------------------------------------------
async def test_missing_lake_is_a_message_and_runs_still_open(tmp_path: Path) -> None:
    async with make_app(tmp_path / "nowhere").run_test(size=SIZE) as pilot:
        status = pilot.app.screen.query_one("#lake-status")
        await until(pilot, lambda: status.has_class("error"))
        assert "no lake at" in text(pilot, "#lake-status")
        await pilot.press("v")
        await until(pilot, lambda: "no lake at" in text(pilot, "#review-status"))
        await pilot.press("r")
        await until(pilot, lambda: type(pilot.app.screen).__name__ == "RunsScreen")


async def test_empty_lake_says_so(tmp_path: Path) -> None:
    from lake.store import Lake

    Lake(tmp_path / "lake").ensure("samples")
    async with make_app(tmp_path / "lake").run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "no samples" in text(pilot, "#lake-status"))
        assert "no samples" in "".join(table_lines(pilot))


async def test_lake_written_while_browsed_shows_notice_and_reloads(lake_copy: Path) -> None:
    from lake.store import Lake

    app = make_app(lake_copy, "tui.lake_poll_s=0.1")
    async with app.run_test(size=SIZE) as pilot:
        t = await loaded(pilot, 60)
        version = app.view.version
        sid = t.current_row["sample_id"]
        Lake(lake_copy).update_columns(
            "samples", pa.table({"sample_id": [sid], "label": ["relabelled"]})
        )
        await until(pilot, lambda: app.lake_stale)
        assert any("has changed" in n.message for n in app._notifications)
        assert t.current_row["label"] != "relabelled"  # nothing moved under the user
        await pilot.press("f5")
        await until(pilot, lambda: app.view.version > version and not app.lake_stale)
        datasets = pilot.app.screen.query_one("#datasets")
        await until(pilot, lambda: "relabelled" in datasets.summaries[0].by_label)
        await until(pilot, lambda: t.current_row is not None and len(t) == 60)


# -- keys, help, palette --------------------------------------------------------------------
async def test_help_lists_bindings_with_ids(tui_lake: Path) -> None:
    async with make_app(tui_lake).run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("question_mark")
        assert isinstance(pilot.app.screen, HelpScreen)
        console = Console(width=200, file=io.StringIO())
        console.print(pilot.app.screen.table)
        listing = console.file.getvalue()
        for binding_id in ("lake.sort", "lake.filter", "app.runs", "table.down", "app.quit"):
            assert binding_id in listing
        await pilot.press("escape")
        assert isinstance(pilot.app.screen, LakeScreen)


async def test_keymap_remaps_a_binding(tui_lake: Path) -> None:
    async with make_app(tui_lake, "+tui.keymap.lake.sort=o").run_test(size=SIZE) as pilot:
        await loaded(pilot, 60)
        await pilot.press("s")
        await pilot.pause(0.2)
        assert "sorted" not in text(pilot, "#lake-status")
        await pilot.press("o")
        await until(pilot, lambda: "sorted by dataset" in text(pilot, "#lake-status"))


async def test_palette_reaches_every_screen_and_action(tui_lake: Path) -> None:
    async with make_app(tui_lake).run_test(size=SIZE) as pilot:
        await loaded(pilot)
        titles = [c.title for c in pilot.app.get_system_commands(pilot.app.screen)]
        for title in ("Open Lake", "Open Review", "Open Runs", "Sort", "Where", "Help", "Quit"):
            assert title in titles
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(pilot.app.screen, CommandPalette))
        await pilot.press(*"Open Runs")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await until(pilot, lambda: type(pilot.app.screen).__name__ == "RunsScreen")
        await pilot.press("escape")  # back to the first screen
        await until(pilot, lambda: isinstance(pilot.app.screen, LakeScreen))


# -- start path -----------------------------------------------------------------------------
def test_start_path_imports_no_ml_stack(tui_lake: Path) -> None:
    code = (
        "import sys\n"
        "from tui.__main__ import main\n"
        "from tui.app import LakeloomApp\n"
        "from tui.lake_data import LakeView\n"
        f"v = LakeView({str(tui_lake)!r}); rows = v.rows(); rows.page(0, 100); v.datasets()\n"
        "v.sample(rows.page(0, 1)[0]['sample_id']); v.has_embeddings()\n"
        "bad = [m for m in ('torch', 'transformers', 'lightning', 'open_clip', 'lancedb')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_cli_lists_the_tui_job() -> None:
    from lake.cli import JOBS, usage

    assert JOBS["tui"][0] == "tui.__main__" and "tui" in usage()


# -- the virtual table ----------------------------------------------------------------------
class GatedRows:
    """A million rows read page by page; pages wait for ``gate`` (to see placeholders)."""

    def __init__(self, n: int = 1_000_000) -> None:
        import threading

        self.n, self.calls, self.gate = n, [], threading.Event()

    def __len__(self) -> int:
        return self.n

    def page(self, index: int, size: int) -> list[dict]:
        self.calls.append(index)
        self.gate.wait(10)
        start = index * size
        return [
            {"sample_id": f"s{i:07d}", "label": f"l{i % 7}"}
            for i in range(start, min(start + size, self.n))
        ]


async def test_virtual_table_reads_only_visible_pages_with_placeholders() -> None:
    from textual.app import App

    from tui.config import ColumnSpec

    rows = GatedRows()
    columns = [ColumnSpec("sample_id", "id", 10), ColumnSpec("label", "label", 4)]

    class Host(App):
        def compose(self):
            yield SampleTable(columns, page_size=50, id="t")

    async with Host().run_test(size=(60, 20)) as pilot:
        t = pilot.app.query_one(SampleTable)
        t.set_source(rows)
        t.focus()
        await pilot.pause(0.1)
        assert "…" in table_lines(pilot)[1] and t.current_row is None  # placeholder
        rows.gate.set()
        await until(pilot, lambda: t.current_row is not None)
        assert "s0000000" in table_lines(pilot)[1] and rows.calls == [0]
        await pilot.press("end")
        await until(pilot, lambda: t.current_row is not None and t.cursor == rows.n - 1)
        assert table_lines(pilot)[-1].strip().startswith("s0999999")
        assert rows.calls == [0, 19_999]  # the last page, nothing between
        await pilot.press("pageup", "up")
        await until(pilot, lambda: t.current_row is not None)
        assert len(rows.calls) <= 3 and len(t._pages) <= 3


# -- images, graphics, serve ----------------------------------------------------------------
def test_halfblock_renders_two_pixels_per_cell() -> None:
    from PIL import Image

    from tui.halfblock import UPPER_HALF, fit, render

    img = Image.new("RGB", (4, 4), (255, 0, 0))
    img.paste((0, 0, 255), (0, 2, 4, 4))  # bottom half blue
    lines = render(img, 4, 2)  # 4 cells wide, 2 high: exactly 4x4 pixels
    assert len(lines) == 2 and all(s.text == UPPER_HALF * 4 for line in lines for s in line)
    top, bottom = lines[0][0].style, lines[1][0].style
    assert top.color.triplet == (255, 0, 0) and top.bgcolor.triplet == (255, 0, 0)
    assert bottom.color.triplet == (0, 0, 255) and bottom.bgcolor.triplet == (0, 0, 255)
    assert fit((100, 50), 40, 40) == (40, 20) and fit((50, 100), 40, 10) == (10, 20)


def test_graphics_detection_and_override() -> None:
    from tui.graphics import detect

    plain = {"TERM": "xterm-256color"}
    assert detect("auto", env=plain, is_tty=False) == "halfblock"
    assert detect("auto", env={**plain, "TMUX": "/tmp/x"}, is_tty=True) == "halfblock"
    assert detect("auto", env={"TERM": "xterm-kitty"}, is_tty=True) == "kitty"
    assert detect("sixel", env=plain, is_tty=False) == "sixel"  # the override wins
    with pytest.raises(ValueError):
        detect("retina")


def test_serve_builds_the_server_with_the_app_command() -> None:
    import shlex

    from tui.serve import app_command, make_server

    overrides = ["lake.uri=/data/my lake", "runs_dir=runs", "port=9123", "host=0.0.0.0"]
    server = make_server(overrides, host="localhost", port=9123)
    assert server.port == 9123 and server.host == "127.0.0.1"  # loopback only
    assert shlex.split(server.command) == [
        sys.executable, "-m", "tui", "lake.uri=/data/my lake", "runs_dir=runs"
    ]  # fmt: skip
    assert app_command([], python="py") == "py -m tui"


def test_tui_serve_subcommand_reads_port_and_passes_overrides(monkeypatch, tmp_path) -> None:
    from textual_serve.server import Server

    from lake import cli

    served = []
    monkeypatch.setattr(Server, "serve", lambda self, debug=False: served.append(self))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI rewrites it
    monkeypatch.delenv("LAKELOOM_CONFIG_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    cli.main(["tui", "serve", "port=8765", f"lake.uri={tmp_path}/lake"])
    (server,) = served
    assert server.port == 8765
    assert server.command.endswith(f"-m tui lake.uri={tmp_path}/lake")


# -- declared panels ------------------------------------------------------------------------
async def test_panels_are_declared_including_a_plugin_one_and_a_broken_one(
    tui_lake: Path,
) -> None:
    app = make_app(
        tui_lake,
        # what a plugin's conf/tui/<name>.yaml would add: a class path and its fields
        "+tui.panels.origin={_target_:tui.panels.fields.FieldsPanel,title:Origin,"
        "fields:[source_uri],screens:[lake]}",
        "+tui.panels.broken={_target_:no_such_plugin.Panel,screens:[lake]}",
        "tui.panels.summary=null",  # and a built-in one removed
    )
    async with app.run_test(size=SIZE) as pilot:
        t = await loaded(pilot, 60)
        screen = pilot.app.screen
        assert not screen.query("#panel-summary")
        origin = screen.query_one("#panel-origin")
        await until(pilot, lambda: "source_uri" in str(origin.body.render()))
        assert t.current_row["label"] in str(origin.body.render())  # cat/cat000.png
        assert "no_such_plugin" in str(screen.query_one("#panel-broken").body.render())


def test_images_use_the_graphics_protocol_chosen_before_start() -> None:
    from textual_image.widget import SixelImage, TGPImage

    from tests.conftest import jpeg_bytes
    from tui.widgets.image import HalfBlockImage, image_widget

    data = jpeg_bytes((200, 10, 10))
    assert isinstance(image_widget(data, "halfblock"), HalfBlockImage)
    assert isinstance(image_widget(data, "kitty"), TGPImage)
    assert isinstance(image_widget(data, "sixel"), SixelImage)
    assert isinstance(image_widget(b"not an image", "kitty"), HalfBlockImage)


def test_conversation_is_rendered_by_role() -> None:
    from rich.style import Style

    from tui.format import conversation_text

    text = conversation_text(
        [
            {"role": "user", "content": "<image>\nWhat shape?"},
            {"role": "assistant", "content": "A star."},
        ],
        {"user": Style(bold=True), "assistant": Style(italic=True)},
    )
    assert text.plain == "user\n<image>\nWhat shape?\n\nassistant\nA star."
    styles = {text.plain[s.start : s.end]: str(s.style) for s in text.spans}
    assert styles["user\n"] != styles["assistant\n"]
