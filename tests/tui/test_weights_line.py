"""The run and runs screens say where a run's weights come from (lake.weights_origin):
a random-init tiny LLaVA trained on the demo is labelled so, through Textual's pilot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from textual.widgets import DataTable

from tests.tui.test_runs_screens import FAST, RUNS, Host, text, until
from tui.screens.run import RunScreen
from tui.screens.runs import RunsScreen

pytestmark = pytest.mark.anyio


async def test_run_screen_shows_the_weights_line(tmp_path: Path) -> None:
    run = tmp_path / "recorded-llava"
    shutil.copytree(RUNS / "recorded-llava", run)  # its summary predates the field
    app = Host(RunScreen(run, FAST))
    async with app.run_test(size=(220, 40)) as pilot:
        await until(pilot, lambda: "weights:" in text(app, "#run-weights"))
        line = text(app, "#run-weights")
        assert "vision tower random-init, frozen" in line
        assert "language model random-init, trained" in line
        assert "no figure is a pretrained model's quality" in line


async def test_runs_list_detail_shows_the_weights_line(tmp_path: Path) -> None:
    shutil.copytree(RUNS, tmp_path / "runs")
    app = Host(RunsScreen(tmp_path / "runs", FAST))
    async with app.run_test(size=(220, 30)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs-table", DataTable).row_count)
        await until(pilot, lambda: "weights:" in text(app, "#runs-detail"))
        detail = text(app, "#runs-detail")
        assert "recorded-llava" in detail and "weights: vision tower random-init" in detail
