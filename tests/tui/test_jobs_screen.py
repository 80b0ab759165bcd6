"""The jobs view: the lake's jobs with their stages and nodes, refreshed while a job runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from textual.widgets import DataTable, Static

from lake import runs
from lake.schema import PROGRESS, PROGRESS_SCHEMA
from lake.store import Lake
from tests.lake.test_jobs_cmd import NODE_A, NODE_B, build_jobs_lake
from tests.tui.pilot import make_app, until
from tui.jobs_data import bar
from tui.screens.jobs import JobsScreen

pytestmark = pytest.mark.anyio

STAGE = "enrich:clip_text"


def _unit(unit: str, rows: int, node: str, attempts: int = 1, status: str = "done") -> dict:
    now = datetime.now(UTC)
    return {"progress_id": f"live/{unit}", "backfill": "live", "run_id": "enrich-live",
            "job": "enrich", "stage": STAGE, "unit": unit, "status": status, "rows": rows,
            "total": None, "node": node, "attempts": attempts, "seconds": 2.0, "error": None,
            "updated_at": now}  # fmt: skip


def _stage(rows: int) -> dict:
    return {**_unit("", rows, ""), "node": None, "attempts": None, "seconds": None,
            "total": 400, "status": "running"}  # fmt: skip


@pytest.fixture
def jobs_lake(tmp_path: Path) -> Lake:
    """The three jobs of the CLI tests plus ``enrich-live``: running in this process, 150
    of 400 rows done on two nodes, one retry."""
    lake = Lake(tmp_path / "lake")
    build_jobs_lake(lake)
    started = datetime.now(UTC) - timedelta(seconds=30)
    lake.record_run({"run_id": "enrich-live", "job": "enrich", "status": runs.RUNNING,
                     "started_at": started, **runs.owner()})  # fmt: skip
    rows = [_stage(150), _unit("fragment:0", 100, NODE_A), _unit("fragment:1", 50, NODE_B, 2)]
    lake.upsert(PROGRESS, pa.Table.from_pylist(rows, schema=PROGRESS_SCHEMA))
    return lake


def cells(table: DataTable) -> list[list[str]]:
    """Every row of a table as plain text cells."""
    return [[str(c).strip() for c in table.get_row(key)] for key in table.rows]


def stage_cells(app) -> list[list[str]]:
    return cells(app.screen.query_one("#jobs-stages", DataTable))


def add_unit(lake: Lake, unit: str, rows: int, node: str, done: int) -> None:
    """A worker finished one more unit: its row and the stage's rows done."""
    new = [_stage(done), _unit(unit, rows, node)]
    lake.upsert(PROGRESS, pa.Table.from_pylist(new, schema=PROGRESS_SCHEMA))


def test_bar_draws_eighths_and_nothing_without_a_total() -> None:
    assert bar(1, 2, width=4) == ("██", "░░")
    assert bar(1, 16, width=4) == ("▎", "░░░")
    assert bar(5, 4, width=2) == ("██", "")  # more than planned: full, never longer
    assert bar(3, None) == ("", "") and bar(3, 0) == ("", "")


async def test_jobs_view_shows_stages_nodes_and_picks_up_new_progress(jobs_lake: Lake) -> None:
    app = make_app(jobs_lake.uri, "tui.refresh_s=0.2")
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("j")  # app.jobs
        await until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.jobs)
        table = app.screen.query_one("#jobs-table", DataTable)
        listed = {row[1]: row for row in cells(table)}
        assert list(listed) == ["enrich-live", "enrich-killed", "enrich-done", "ingest-old"]
        assert listed["enrich-live"][0] == "● running"
        assert listed["enrich-killed"][0] == "✝ killed"  # its process is gone
        assert listed["enrich-done"][6:] == ["600/800", "6", "1", "3"]
        assert listed["enrich-live"][5] == "████▌░░░░░░░"  # 150 / 400 of 12 cells
        assert listed["ingest-old"][5:] == ["", "", "", "", ""]  # no progress rows
        # the job under the cursor (the newest) per stage and node
        assert stage_cells(app) == [
            [STAGE, "● running", "████▌░░░░░░░", "150/400", stage_cells(app)[0][4], "2/2", "0",
             "1"],
            [f"└ {NODE_A[:12]}…", "", "", "100", stage_cells(app)[1][4], "1", "0", "0"],
            [f"└ {NODE_B[:12]}…", "", "", "50", stage_cells(app)[2][4], "1", "0", "1"],
        ]  # fmt: skip
        await pilot.press("down", "down")  # enrich-done: a committed stage, a failed unit
        await until(pilot, lambda: stage_cells(app)[0][1] == "✔ committed")
        assert [row[3:] for row in stage_cells(app)] == [
            ["600/800", "20", "3/4", "1", "3"],
            ["350", "11.7", "2", "0", "0"],
            ["250", "8.33", "1", "1", "3"],
        ]
        detail = str(app.screen.query_one("#jobs-detail", Static).render())
        assert "fragment:3: decode error in row 7" in detail
        await pilot.press("up", "up")
        await until(pilot, lambda: stage_cells(app)[0][3] == "150/400")
        add_unit(jobs_lake, "fragment:2", 250, NODE_B, done=400)  # the poll picks it up
        await until(pilot, lambda: stage_cells(app)[0][3] == "400/400", timeout=15)
        assert stage_cells(app)[0][2] == "████████████" and stage_cells(app)[0][5] == "3/3"
        assert stage_cells(app)[2][3] == "300"  # node B: 50 + 250


async def test_jobs_keys_remap_and_are_listed_in_help(jobs_lake: Lake) -> None:
    app = make_app(
        jobs_lake.uri,
        "tui.refresh_s=600",  # no poll during the test: only the refresh key reads
        "+tui.keymap.app.jobs=J",
        "+tui.keymap.jobs.refresh=u",
    )
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("j")  # the default key no longer opens the jobs
        await pilot.pause(0.2)
        assert not isinstance(app.screen, JobsScreen)
        await pilot.press("J")
        await until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.jobs)
        assert stage_cells(app)[0][3] == "150/400"
        add_unit(jobs_lake, "fragment:2", 100, NODE_A, done=250)
        await pilot.press("f5")  # the default refresh key is gone too (app reload instead)
        await pilot.pause(0.5)
        assert stage_cells(app)[0][3] == "150/400"
        await pilot.press("u")
        await until(pilot, lambda: stage_cells(app)[0][3] == "250/400")
        await pilot.press("question_mark")
        await until(pilot, lambda: app.screen.id == "help")
        keys, does, _where, ids = (list(map(str, c._cells)) for c in app.screen.table.columns)
        listed = dict(zip(ids, zip(keys, does, strict=True), strict=True))
        assert listed["app.jobs"] == ("J", "Jobs") and listed["jobs.refresh"] == ("u", "Refresh")
