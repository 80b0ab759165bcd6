"""SVG snapshots of the main screens (pytest-textual-snapshot).

Everything on screen is pinned: a copy of ``tui_lake`` whose provenance (run ids, times)
and CLIP image vectors are rewritten to fixed values, opened by a relative path; the
time zone (UTC), the theme and the terminal size; the config is the repository's
``conf/tui`` with no user config. Regenerate after a deliberate UI change with

    .venv/bin/python -m pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import json
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.tui.pilot import make_app, settle

SIZE = (130, 40)
WHEN = datetime(2025, 1, 1, tzinfo=UTC)


def _pin_provenance(prov: dict | None, run_id: str) -> dict | None:
    if prov is None:
        return None
    steps = [
        {**s, "params": re.sub(r'"run_id": "[^"]*"', '"run_id": "enrich-snapshot"', s["params"])}
        for s in prov.get("steps") or []
    ]
    return {**prov, "run_id": run_id, "created_at": WHEN, "config_hash": "0123456789abcdef",
            "steps": steps}  # fmt: skip


@pytest.fixture(scope="module")
def snap_root(tui_lake: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``lake``: the TUI lake with nothing time- or run-dependent."""
    from lake.schema import MEDIA, PROVENANCE, SAMPLES
    from lake.store import Lake

    root = tmp_path_factory.mktemp("snap")
    shutil.copytree(tui_lake, root / "lake")
    lake = Lake(root / "lake")
    for name in (SAMPLES, MEDIA):
        key = "sample_id" if name == SAMPLES else "media_id"
        rows = lake.dataset(name).to_table(columns=[key, "provenance"]).to_pylist()
        rows.sort(key=lambda r: r[key])
        prov = [_pin_provenance(r["provenance"], "ingest-snapshot") for r in rows]
        update = {key: [r[key] for r in rows], "provenance": pa.array(prov, PROVENANCE)}
        if name == MEDIA:  # deterministic vectors: neighbours independent of the float maths
            width = lake.dataset(MEDIA).schema.field("clip_image").type.list_size
            vecs = np.random.default_rng(0).normal(size=(len(rows), width)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            update["clip_image"] = pa.FixedSizeListArray.from_arrays(vecs.ravel(), width)
        lake.update_columns(name, pa.table(update))
    return root


@pytest.fixture
def pinned(snap_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Time zone, colours and working directory pinned; no user config."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    for var in ("NO_COLOR", "FORCE_COLOR", "TEXTUAL_THEME", "LAKELOOM_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(snap_root)  # the lake path on screen is relative: `lake`
    yield snap_root
    monkeypatch.undo()
    time.tzset()


def app():
    return make_app("lake", "tui.theme=textual-dark", "tui.graphics=halfblock")


def keys(*groups: str | tuple[str, ...]):
    """A run_before: settle, then press each group of keys and settle again (after the
    first key of a group too: it may move the focus the others go to)."""

    async def run_before(pilot) -> None:
        await settle(pilot)
        for group in groups:
            first, *rest = (group,) if isinstance(group, str) else group
            await pilot.press(first)
            await settle(pilot)
            if rest:
                await pilot.press(*rest)
                await settle(pilot)

    return run_before


def test_lake_browser(pinned: Path, snap_compare) -> None:
    assert snap_compare(app(), terminal_size=SIZE, run_before=keys("down", "down"))


def test_lake_browser_filtered_and_sorted(pinned: Path, snap_compare) -> None:
    where = "label = 'dog'"
    presses = (("slash", *where, "enter"), "s", "s", "S")  # sorted by label ▼
    assert snap_compare(app(), terminal_size=SIZE, run_before=keys(*presses))


def test_lake_browser_bad_sql(pinned: Path, snap_compare) -> None:
    presses = ("slash", *"label = = 1", "enter")
    assert snap_compare(app(), terminal_size=SIZE, run_before=keys(presses))


def test_sample_detail(pinned: Path, snap_compare) -> None:
    # the second `pets` sample: a member of a near-duplicate group of three
    where = "dataset = 'pets' AND check_duplicates_score BETWEEN 0.89 AND 0.91"
    presses = (("slash", *where, "enter"), "enter")
    assert snap_compare(app(), terminal_size=(130, 60), run_before=keys(*presses))


def test_review(pinned: Path, snap_compare) -> None:
    assert snap_compare(app(), terminal_size=SIZE, run_before=keys("v"))


def test_help(pinned: Path, snap_compare) -> None:
    assert snap_compare(app(), terminal_size=SIZE, run_before=keys("question_mark"))


def test_missing_lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snap_compare) -> None:
    monkeypatch.chdir(tmp_path)
    assert snap_compare(make_app("no-lake-here"), terminal_size=SIZE, run_before=keys())


def test_snapshot_lake_is_pinned(snap_root: Path) -> None:
    import lance

    prov = lance.dataset(str(snap_root / "lake" / "samples.lance")).to_table(columns=["provenance"])
    values = {json.dumps(p, default=str, sort_keys=True) for p in prov.column(0).to_pylist()}
    assert all('"run_id": "ingest-snapshot"' in v and "2025-01-01" in v for v in values)
