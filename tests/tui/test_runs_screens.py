"""The run screens (runs list, one run, compare) driven by keys through Textual's Pilot."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import DataTable, Log, Select, Static

from tui.config import TuiConfig
from tui.runs_data import replay
from tui.screens.compare import CompareScreen
from tui.screens.run import RunScreen
from tui.screens.runs import RunsScreen
from tui.widgets.plot import LinePlot, PlotGrid

pytestmark = pytest.mark.anyio

RUNS = Path(__file__).resolve().parents[1] / "data" / "runs"
RECORDED = RUNS / "recorded-llava"
STYLESHEET = Path(__file__).resolve().parents[2] / "tui" / "lakeloom.tcss"
# the repository's conf/tui, polling fast
FAST = TuiConfig.load(["tui.refresh_s=0.1", "tui.poll_s=0.05"])


class Host(App):
    """A bare app that shows one screen (the real app composes them itself), styled by
    the app's one stylesheet."""

    CSS_PATH = STYLESHEET

    def __init__(self, screen: Screen) -> None:
        super().__init__()
        self.first = screen

    def on_mount(self) -> None:
        self.push_screen(self.first)


async def until(pilot: Pilot, cond: Callable[[], object], timeout: float = 3.0) -> None:
    """Let the app run until ``cond()`` holds."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting for the UI"
        await pilot.pause(0.02)


def text(app: App, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """The recorded runs, last written an hour ago (so the torn one counts as killed)."""
    root = tmp_path / "runs"
    shutil.copytree(RUNS, root)
    then = time.time() - 3600
    for p in [root, *root.rglob("*")]:
        os.utime(p, (then, then))
    return root


@pytest.fixture
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def table_rows(app: App) -> dict[str, list[str]]:
    table = app.screen.query_one("#runs-table", DataTable)
    return {key.value: [str(c) for c in table.get_row(key)] for key in table.rows}


async def test_runs_list_shows_recorded_runs(runs: Path, utc: None) -> None:
    app = Host(RunsScreen(runs, FAST))
    async with app.run_test(size=(140, 30)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs-table", DataTable).row_count)
        rows = table_rows(app)
        assert list(rows) == ["recorded-llava", "failed-run", "corrupt-run"]  # newest first
        status = {k: r[1] for k, r in rows.items()}
        assert status == {
            "recorded-llava": "✔ finished",
            "failed-run": "✘ failed",
            "corrupt-run": "◼ interrupted",
        }
        rec = rows["recorded-llava"]
        assert rec[3] == "default"
        assert rec[4] == time.strftime("%Y-%m-%d %H:%M", time.gmtime(1795470096.603))
        assert rec[5] == "1m 50s"  # summary total_s 110.3
        assert rec[6] == "val/loss 4.446 @30"
        await pilot.press("down")
        assert "RuntimeError: batch 19" in text(app, "#runs-detail")


async def test_runs_list_shows_a_killed_run(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    run = tmp_path / "runs" / "sigkilled"
    run.mkdir(parents=True)
    started = {"t": time.time(), "type": "status", "status": "started", "experiment": "e"}
    owner = {"pid": gone.pid, "host": socket.gethostname(), "pid_start": 1}
    (run / "events.jsonl").write_text(json.dumps({**started, **owner}) + "\n")
    app = Host(RunsScreen(run.parent, FAST))
    async with app.run_test(size=(140, 30)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs-table", DataTable).row_count)
        assert table_rows(app)["sigkilled"][1] == "✝ killed"
        assert f"process {gone.pid} on" in text(app, "#runs-detail")


@pytest.mark.parametrize("make", [False, True])
async def test_runs_list_without_runs(tmp_path: Path, make: bool) -> None:
    runs = tmp_path / "runs"
    if make:
        runs.mkdir()
    app = Host(RunsScreen(runs, FAST))
    async with app.run_test() as pilot:
        expected = "No runs in" if make else "No runs folder at"
        await until(pilot, lambda: expected in text(app, "#runs-empty"))
        assert not app.screen.query_one("#runs-table").display
        await pilot.press("enter", "space", "c")  # nothing to open, mark or compare
        assert isinstance(app.screen, RunsScreen)


async def test_enter_opens_a_run_with_its_curves(runs: Path) -> None:
    app = Host(RunsScreen(runs, FAST))
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs-table", DataTable).row_count)
        await pilot.press("enter")
        assert isinstance(app.screen, RunScreen)
        screen = app.screen
        await until(pilot, lambda: screen.snapshot is not None)
        await pilot.pause()
        plots = {p.title: p for p in screen.query_one(PlotGrid).plots}
        # the plots declared in conf/tui/default.yaml
        assert list(plots) == ["Loss", "Validation", "Learning rate", "Throughput", "Memory (MB)"]
        loss = plots["Loss"]
        assert loss.series_names == ["train/loss", "val/loss"]
        assert len(loss.points("train/loss")[0]) == 15 and len(loss.points("val/loss")[0]) == 2
        assert loss.drawn_points == loss.point_count == 17 and loss.renders >= 1
        assert plots["Memory (MB)"].points("gpu_mem_mb") == ([], [])  # null on CPU: no points
        head = text(app, "#run-head")
        assert "recorded-llava" in head and "finished" in head and "step 30" in head
        stats = text(app, "#run-stats")
        assert "samples/s" in stats and "CPU" in stats and "val/loss" in stats
        assert "best" in stats and "4.446" in stats
        assert "tokens/s" not in stats and "MFU" not in stats  # not logged by this run
        assert not screen.query_one("#run-notice").display
        log = screen.query_one("#run-log", Log)
        assert log.line_count == 26 and "summary step 30 finished" in log.lines[-1]
        # unchanged data is not drawn again
        renders = loss.renders
        await pilot.pause(0.2)
        assert loss.renders == renders
        await pilot.press("l")
        assert not log.display
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_failed_run_shows_its_error() -> None:
    app = Host(RunScreen(RUNS / "failed-run", FAST))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.screen.snapshot is not None)
        await pilot.pause()
        assert "failed" in text(app, "#run-head")
        error = app.screen.query_one("#run-error")
        assert error.display and "every sample was skipped" in text(app, "#run-error")


async def test_corrupt_run_shows_a_notice_not_a_traceback() -> None:
    app = Host(RunScreen(RUNS / "corrupt-run", FAST))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.screen.snapshot is not None)
        await pilot.pause()
        notice = app.screen.query_one("#run-notice")
        assert notice.display and "1 unreadable line skipped" in text(app, "#run-notice")
        loss = app.screen.query_one(PlotGrid).plots[0]
        assert loss.point_count > 0  # the readable events are still plotted


async def test_live_run_grows_while_the_ui_answers(tmp_path: Path) -> None:
    events = tmp_path / "live" / "events.jsonl"
    events.parent.mkdir()
    events.touch()
    app = Host(RunScreen(events.parent, FAST))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.snapshot is not None)
        assert "No events" in text(app, "#run-notice")
        loss = screen.query_one(PlotGrid).plots[0]
        writer = threading.Thread(target=replay, args=(RECORDED / "events.jsonl", events, 40, 0.03))
        writer.start()
        counts, steps = [], []
        while writer.is_alive() or screen.snapshot.events < 26:
            await pilot.pause(0.03)
            counts.append(loss.point_count)
            steps.append(screen.snapshot.step or 0)
            assert len(counts) < 150, "the screen never caught up with the log"
        writer.join()
        assert counts == sorted(counts) and len(set(counts)) >= 3 and counts[-1] == 17
        assert steps == sorted(steps) and steps[-1] == 30
        assert "finished" in text(app, "#run-head") and "step 30" in text(app, "#run-head")
        assert not screen.query_one("#run-notice").display

        # A read stuck on a slow disk must not hold up the UI: keys still work.
        gate, stuck, tail_poll = threading.Event(), threading.Event(), screen.tail.poll

        def slow_poll() -> int:
            stuck.set()
            gate.wait(10)
            return tail_poll()

        screen.tail.poll = slow_poll
        with events.open("a") as fh:
            fh.write('{"t": 1795470300.0, "type": "train", "step": 32, "loss": 4.4}\n')
        await until(pilot, stuck.is_set)
        log = screen.query_one("#run-log", Log)
        for _ in range(3):
            shown = log.display
            await pilot.press("l")
            assert log.display is not shown
        assert "step 30" in text(app, "#run-head") and not gate.is_set()
        gate.set()
        await until(pilot, lambda: "step 32" in text(app, "#run-head"))


async def test_compare_overlays_marked_runs(runs: Path) -> None:
    app = Host(RunsScreen(runs, FAST))
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs-table", DataTable).row_count)
        await pilot.press("space", "c")  # one marked run is not enough
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("down", "space", "up")
        assert app.screen.marked == {"recorded-llava", "failed-run"}
        await pilot.press("c")
        assert isinstance(app.screen, CompareScreen)
        screen = app.screen
        await until(pilot, lambda: screen.overlay is not None)
        await pilot.pause()
        plot = screen.query_one("#compare-plot", LinePlot)
        assert plot.title == "train/loss" and plot.series_names == ["recorded-llava", "failed-run"]
        assert len(plot.points("recorded-llava")[0]) == 15
        assert len(plot.points("failed-run")[0]) == 9
        assert plot.color("recorded-llava") != plot.color("failed-run")
        legend = text(app, "#compare-legend")
        assert "recorded-llava" in legend and "failed-run" in legend and "failed" in legend
        assert "test/loss" not in screen.overlay.common  # the failed run never tested
        assert screen.query_one(Select).value == "train/loss"
        await pilot.press("n")  # next common metric, keys only
        await until(pilot, lambda: plot.title == "train/pad_frac")
        assert len(plot.points("failed-run")[0]) == 9
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_line_plot_bounds_downsamples_and_redraws_only_on_change() -> None:
    plot = LinePlot("loss", ["a", "b"], max_points=1000)

    class One(App):
        def compose(self):
            yield plot

    async with One().run_test(size=(60, 12)) as pilot:
        await pilot.pause()
        assert "waiting for a, b" in "".join(plot.render_line(y).text for y in range(12))
        xs = list(range(10_000))
        assert plot.set_series("a", xs, [float(x % 97) for x in xs])
        assert not plot.set_series("a", xs, [float(x % 97) for x in xs])  # unchanged
        plot.set_series("b", [0, 1, 2, 3], [1.0, None, float("nan"), 2.0])
        await pilot.pause()
        assert len(plot.points("a")[0]) <= 1000  # bounded
        assert plot.points("b") == ([0.0, 3.0], [1.0, 2.0])  # null and NaN dropped
        assert plot.drawn_points <= 2 * 60 + 3  # downsampled to the width
        renders = plot.renders
        plot.update_data({"a": plot.points("a"), "b": plot.points("b"), "c": ([1], [1])})
        plot.refresh()
        await pilot.pause()
        assert plot.renders == renders
        lines = [plot.render_line(y).text for y in range(12)]
        assert lines[0].startswith("loss  ━ a 8") and "━ b 2" in lines[0]
        assert lines[-1].split()[0] == "0" and lines[-1].split()[-1] == "9999"
        assert any(ch in "".join(lines) for ch in "⠁⠂⠄⡀⠈⠐⠠⢀")


async def test_run_screen_reads_declared_plots_and_remapped_keys() -> None:
    # declared plots: `metrics` patterns, an `x` field
    plots = [{"title": "Validation", "metrics": ["val/*", "missing"], "x": "step"}]
    config = replace(FAST, plots=plots)
    app = Host(RunScreen(RECORDED, config))
    app.set_keymap({"run.log": "g"})
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.screen.snapshot is not None)
        (plot,) = app.screen.query_one(PlotGrid).plots
        assert plot.title == "Validation"
        assert plot.series_names == [
            "val/exact_match", "val/loss", "val/ppl", "val/token_f1", "missing",
        ]  # fmt: skip
        assert plot.point_count == 8  # two validations, four metrics
        log = app.screen.query_one("#run-log", Log)
        await pilot.press("l")
        assert log.display
        await pilot.press("g")
        assert not log.display


RUN_SCREENS = ((RunsScreen, "runs"), (RunScreen, "run"), (CompareScreen, "compare"))


def test_run_screens_bindings_are_declared_in_conf() -> None:
    # every action of the runs, run and compare screens has a key declared in
    # conf/tui/default.yaml under the screen's scope, with an id `tui.keymap` remaps
    config = TuiConfig.load()
    for screen, scope in RUN_SCREENS:
        assert scope == screen.SCOPE
        ours = [c for c in screen.__mro__ if c.__module__.startswith("tui.")]
        assert not [c for c in ours if vars(c).get("BINDINGS")], "bindings written in code"
        declared = config.bindings.get(scope) or []
        assert declared, f"no bindings declared for {scope}"
        for spec in declared:
            assert spec.id.startswith(f"{scope}."), spec
        actions = {spec.action.split("(")[0] for spec in declared}
        defined = {
            name.removeprefix("action_")
            for name in vars(screen)
            if name.startswith("action_") and callable(getattr(screen, name))
        }
        assert defined <= actions, f"{scope}: actions without a declared key: {defined - actions}"


async def test_keymap_remaps_a_key_on_the_runs_run_and_compare_screens(runs: Path) -> None:
    # the real app, its config composed with `tui.keymap` overrides as on the command line
    from tests.tui.pilot import make_app

    app = make_app(
        runs / "no-lake",
        "tui.refresh_s=0.1",
        "tui.poll_s=0.05",
        "+tui.keymap.runs.mark=x",
        "+tui.keymap.run.log=g",
        "+tui.keymap.compare.next=j",
        runs=runs,
    )
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("r")  # app.runs
        await until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.runs, 5)
        runs_screen = app.screen
        await pilot.press("space")  # the default key no longer marks
        await pilot.pause()
        assert not runs_screen.marked
        await pilot.press("x")
        await until(pilot, lambda: len(runs_screen.marked) == 1)
        await pilot.press("down", "x")
        await until(pilot, lambda: len(runs_screen.marked) == 2)

        await pilot.press("enter")  # runs.open
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        log = app.screen.query_one("#run-log", Log)
        assert log.display
        await pilot.press("g")
        await until(pilot, lambda: not log.display)
        await pilot.press("escape")  # run.back
        await until(pilot, lambda: app.screen is runs_screen)

        await pilot.press("c")  # runs.compare
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        compare = app.screen
        await until(pilot, lambda: compare.overlay is not None and len(compare.overlay.common) > 1)
        first = compare.metric
        await pilot.press("n")
        await pilot.pause(0.2)
        assert compare.metric == first
        await pilot.press("j")
        await until(pilot, lambda: compare.metric != first)
