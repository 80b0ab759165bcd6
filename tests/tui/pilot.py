"""Helpers for driving the lakeloom app with Textual's Pilot (shared by the TUI tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Static

from tui.app import LakeloomApp
from tui.config import TuiConfig

RUNS = Path(__file__).resolve().parents[1] / "data" / "runs"
SIZE = (140, 40)


def make_app(lake: Path | str, *overrides: str, runs: Path | str = RUNS) -> LakeloomApp:
    """The real app on ``lake`` (no lake polling unless overridden), half blocks."""
    config = TuiConfig.load(
        [f"lake.uri={lake}", f"runs_dir={runs}", "tui.lake_poll_s=0", *overrides]
    )
    return LakeloomApp(config, graphics="halfblock")


async def until(pilot: Pilot, cond: Callable[[], object], timeout: float = 10.0) -> None:
    """Let the app run until ``cond()`` holds (fails after ``timeout`` seconds)."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting for the UI"
        await pilot.pause(0.02)


async def settle(pilot: Pilot, timeout: float = 30.0) -> None:
    """Wait until no worker runs and no timer is about to start one (for snapshots)."""
    app = pilot.app
    end = time.monotonic() + timeout
    quiet = 0
    while quiet < 5:
        assert time.monotonic() < end, "the app did not settle"
        await app.workers.wait_for_complete()
        await pilot.pause(0.05)
        quiet = quiet + 1 if not any(w.is_running for w in app.workers) else 0


async def type_into(pilot: Pilot, key: str, *text: str) -> None:
    """Press ``key`` (which focuses an input), wait for the focus, then type ``text``.

    Textual forwards each key to the widget focused when it arrives, before the previous
    key's action has run: typing at once after the key would reach the old widget.
    """
    from textual.widgets import Input

    await pilot.press(key)
    await until(pilot, lambda: isinstance(pilot.app.focused, Input))
    await pilot.press(*text)


def text(pilot: Pilot, selector: str) -> str:
    """The rendered text of a Static on the current screen."""
    return str(pilot.app.screen.query_one(selector, Static).render())


def table_lines(pilot: Pilot, selector: str = "SampleTable") -> list[str]:
    """The visible lines of a SampleTable as plain text (header first)."""
    from tui.widgets.sample_table import SampleTable

    table = pilot.app.screen.query_one(selector, SampleTable)
    return [table.render_line(y).text for y in range(table.scrollable_content_region.height)]
