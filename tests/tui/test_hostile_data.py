"""Hostile data never reaches the terminal: escape sequences, OSC 52, Rich markup, huge texts.

A lake whose captions, labels, file names, flags and tags hold terminal escape sequences
and Rich markup, and a run folder whose name and events do the same, are opened in the
real app; the drawn screen (every strip the compositor sends) must show the sequences as
visible pictures (``␛``, ``␇``) and the markup as typed, and hold no raw ESC or BEL.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from textual.pilot import Pilot

from tests.conftest import png_bytes
from tests.tui.pilot import SIZE, make_app, until

pytestmark = pytest.mark.anyio

CLEAR = "\x1b[2J\x1b[31mHACKED"
CLEAR_SHOWN = "␛[2J␛[31mHACKED"
OSC52 = "\x1b]52;c;SGFja2Vk\x07"  # writes "Hacked" to the clipboard
OSC52_SHOWN = "␛]52;c;SGFja2Vk␇"
MARKUP = "[link=https://evil.example]click[/link][bold]loud"
LABEL = f"[bold]cat{CLEAR}"  # a folder name: markup that would eat "[bold]", and a clear
FILE = f"img{OSC52}"  # a file name (source_uri)
FILE_SHOWN = f"img{OSC52_SHOWN}"
CAPTION = f"caption {CLEAR} {MARKUP}"
FLAG = f"evil{CLEAR}"
TAG = f"note{OSC52}"
HUGE = 5_000_000


def screen_text(pilot: Pilot) -> str:
    """Everything the app would draw now: the text of every strip of the screen."""
    strips = pilot.app.screen._compositor.render_strips()
    return "\n".join(strip.text for strip in strips)


async def to_row(pilot: Pilot, table: Any, label: str) -> None:
    """Move the samples table's cursor to the row of ``label`` (row order is Lance's)."""
    await until(pilot, lambda: table.current_row is not None, 60)
    if table.current_row["label"] != label:
        await pilot.press("down")
        await until(pilot, lambda: (table.current_row or {}).get("label") == label, 10)


def assert_clean(shown: str) -> None:
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown


@pytest.fixture(scope="module")
def hostile_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sample: label, file name and caption hostile, flagged and tagged hostile;
    a second, plain sample with a 5 MB caption."""
    from lake.ingest import IngestSettings, ingest
    from lake.schema import SAMPLES
    from lake.store import Lake
    from plugins.image_folder import ImageFolderSource

    base = tmp_path_factory.mktemp("hostile")
    evil = base / "src" / LABEL
    evil.mkdir(parents=True)
    (evil / f"{FILE}.png").write_bytes(png_bytes((200, 10, 10), (24, 24)))
    (evil / f"{FILE}.txt").write_text(CAPTION)
    big = base / "src" / "zzbig"
    big.mkdir()
    (big / "big.png").write_bytes(png_bytes((10, 200, 10), (24, 24)))
    (big / "big.txt").write_text("start " + "x" * HUGE)
    lake = Lake(base / "lake")
    src = ImageFolderSource(base / "src", caption_sidecar=True)
    report = ingest(src, lake, "hostile", IngestSettings(workers=0, progress=False))
    assert report.new_samples == 2 and not report.rejected, report.summary()
    rows = lake.dataset(SAMPLES).to_table(columns=["sample_id", "label"]).to_pylist()
    evil_id = next(r["sample_id"] for r in rows if r["label"] == LABEL)
    lake.update_columns(
        SAMPLES,
        pa.table(
            {
                "sample_id": [evil_id],
                "flags": pa.array([[FLAG]], pa.list_(pa.string())),
                "tags": pa.array([[TAG]], pa.list_(pa.string())),
            }
        ),
    )
    return base / "lake"


@pytest.fixture
def hostile_runs(tmp_path: Path) -> Path:
    """A run folder named with an escape sequence whose events carry more of them."""
    run = tmp_path / "runs" / f"run{CLEAR}"
    run.mkdir(parents=True)
    events = [
        {"t": 1.0, "type": "status", "status": "started", "run_id": "x", "experiment": MARKUP},
        {"t": 2.0, "type": "train", "step": 1, "epoch": OSC52, f"loss{CLEAR}": 0.5, "lr": 0.1},
        {"t": 3.0, "type": "val", "step": 1, f"val/{CLEAR}": 0.25, "val/note": OSC52},
        {"t": 4.0, "type": "status", "status": "failed", "error": f"{CLEAR} {OSC52} {MARKUP}"},
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return tmp_path / "runs"


def test_printable_shows_controls_and_keeps_text() -> None:
    from tui.format import clip, clip_sample, printable

    assert printable(CLEAR) == CLEAR_SHOWN and printable(OSC52) == OSC52_SHOWN
    assert printable("a\nb\tc") == "a␊b␉c"
    assert printable("a\r\nb\tc", multiline=True) == "a\nb    c"
    assert printable("\x9b31m\u202eevil") == "\\x9b31m\\u202eevil"  # C1 CSI, bidi override
    assert printable(MARKUP) == MARKUP and printable(None) == ""
    cut = clip("y" * 100, 10)
    assert cut.startswith("y" * 10) and "90 more characters not shown" in cut
    sample = clip_sample({"caption": "z" * 50, "media": [{"thumb": b"z" * 50, "t": "z" * 50}]}, 5)
    assert len(sample["caption"]) < 50 and sample["media"][0]["thumb"] == b"z" * 50
    assert "45 more" in sample["media"][0]["t"]


async def test_lake_sample_and_review_screens_show_escapes_visibly(hostile_lake: Path) -> None:
    app = make_app(hostile_lake, "tui.panels.provenance.screens=[lake,sample]")
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#samples")
        await to_row(pilot, table, LABEL)
        summary = app.screen.query_one("#panel-summary")
        await until(pilot, lambda: "caption" in str(summary.body.render()), 20)
        await pilot.pause(0.1)
        shown = screen_text(pilot)
        assert_clean(shown)
        assert CLEAR_SHOWN in shown  # caption and label, in the panel
        assert "[bold]cat␛" in shown  # markup in a label (table cell) shown as typed
        assert "[link=https://evil.example]c" in shown  # caption in the panel (wrapped)
        assert "[link=https://evil.example]click[/link][bold]loud" in str(summary.body.render())
        assert f"{OSC52_SHOWN}.png" in shown  # the file name, in the provenance panel
        assert f"evil{CLEAR_SHOWN}"[:14] in shown  # the flag, in the table
        assert f"note{OSC52_SHOWN}" in shown  # the tag

        await pilot.press("enter")  # the sample screen
        await until(pilot, lambda: "Sample" in str(app.screen.title), 10)
        header = app.screen.query_one("#sample-header")
        await until(pilot, lambda: "tag" in str(header.render()), 20)
        await pilot.pause(0.1)
        shown = screen_text(pilot)
        assert_clean(shown)
        assert CLEAR_SHOWN in shown and f"note{OSC52_SHOWN}" in shown  # caption, tag
        assert "[link=https://evil.example]click[/link][bold]loud" in shown
        provenance = str(app.screen.query_one("#panel-provenance").body.render())  # below
        assert_clean(provenance)
        assert f"source [bold]cat{CLEAR_SHOWN}/{FILE_SHOWN}.png" in provenance  # source_uri

        await pilot.press("escape", "v")  # the review screen: the hostile flag is a check
        await until(pilot, lambda: app.screen.query("#review-table"), 10)
        review = app.screen.query_one("#review-table")
        await until(pilot, lambda: review.current_row is not None, 30)
        await pilot.pause(0.3)
        shown = screen_text(pilot)
        assert_clean(shown)
        assert f"evil{CLEAR_SHOWN}" in shown  # the check list and the status line
        assert "[bold]cat␛" in shown


async def test_huge_caption_is_cut_and_the_app_stays_responsive(hostile_lake: Path) -> None:
    app = make_app(hostile_lake)  # tui.max_text_chars: 20000
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#samples")
        await until(pilot, lambda: table.current_row is not None, 60)
        first = table.cursor
        await to_row(pilot, table, "zzbig")  # the 5 MB caption
        moved = table.cursor != first
        summary = app.screen.query_one("#panel-summary")
        start = time.monotonic()
        await until(pilot, lambda: "not shown" in str(summary.body.render()), 20)
        body = str(summary.body.render())
        assert f"{HUGE + 6 - 20000:,} more characters not shown" in body
        assert len(body) < 21000
        await pilot.press("enter")  # the sample screen cuts it too
        text = app.screen.query_one("#sample-text")
        await until(pilot, lambda: "not shown" in str(text.render()), 20)
        assert len(str(text.render())) < 21000
        await pilot.press("escape", "up" if moved else "down")  # keys still answer at once
        await until(pilot, lambda: (table.current_row or {}).get("label") == LABEL, 2)
        assert time.monotonic() - start < 15


async def test_runs_screens_show_escapes_in_run_names_and_events(hostile_runs: Path) -> None:
    from tui.screens.run import RunScreen

    app = make_app("/nonexistent/lake", "tui.refresh_s=0.1", "tui.poll_s=0.05", runs=hostile_runs)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await until(pilot, lambda: app.screen.query("#runs-table"), 10)
        table = app.screen.query_one("#runs-table")
        await until(pilot, lambda: table.row_count == 1, 10)
        await pilot.pause(0.1)
        shown = screen_text(pilot)
        assert_clean(shown)
        assert f"run{CLEAR_SHOWN}" in shown and "[link=https://evil.example]click" in shown
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RunScreen), 5)
        await until(pilot, lambda: app.screen.snapshot is not None, 5)
        await pilot.pause(0.2)
        shown = screen_text(pilot)
        assert_clean(shown)
        assert f"loss{CLEAR_SHOWN}" in shown  # a metric key: plot legend and log
        assert OSC52_SHOWN in shown  # an event value (epoch, val/note)
        assert f"✘ {CLEAR_SHOWN} {OSC52_SHOWN} [link=" in shown  # the error, markup literal
        log = "\n".join(app.screen.query_one("#run-log").lines)
        assert "\x1b" not in log and CLEAR_SHOWN in log
