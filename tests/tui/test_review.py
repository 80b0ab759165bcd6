"""tui.review: decisions as tags, replaced per check, and excluded by `lakeloom split`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from lake.split import EXCLUDED, split_lake
from lake.store import Lake
from tests.conftest import REPO
from tui.lake_data import LakeView
from tui.review import decide, decisions

RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1}


@pytest.fixture
def lake_copy(tui_lake: Path, tmp_path: Path) -> Path:
    shutil.copytree(tui_lake, tmp_path / "lake")
    return tmp_path / "lake"


def _rows(lake: Path) -> dict[str, dict]:
    table = Lake(lake).dataset("samples").to_table()
    return {r["sample_id"]: r for r in table.to_pylist()}


def test_decisions_parse_tags() -> None:
    tags = [
        "mine",
        "review:duplicates:dismissed:bob:2024-01-02T03:04:05+00:00",
        "review:caption_mismatch:confirmed:ana:2024-01-01T00:00:00+00:00",
        "review:caption_mismatch:maybe:ana:2024-01-01T00:00:00+00:00",
        "review:broken",
    ]
    assert decisions(tags) == {
        "duplicates": ("dismissed", "bob", "2024-01-02T03:04:05+00:00"),
        "caption_mismatch": ("confirmed", "ana", "2024-01-01T00:00:00+00:00"),
    }
    assert decisions(None) == {} and decisions([]) == {}


def test_decide_round_trip_keeps_other_columns(lake_copy: Path) -> None:
    view = LakeView(lake_copy)
    flagged = [r["sample_id"] for r in view.flagged("caption_mismatch").page(0, 2)]
    uncaptioned = view.rows("caption IS NULL").page(0, 1)[0]["sample_id"]  # null clip_text
    picked = [*flagged, uncaptioned]
    before = _rows(lake_copy)
    assert decide(lake_copy, [*picked, "no-such-id"], "caption_mismatch", "confirmed", "a:na") == 3
    after = _rows(lake_copy)
    assert after.keys() == before.keys()
    for sid, row in after.items():
        tags = row.pop("tags")
        assert row == {k: v for k, v in before[sid].items() if k != "tags"}
        got = decisions(tags)
        if sid in picked:
            decision, who, when = got["caption_mismatch"]
            assert (decision, who) == ("confirmed", "a_na") and when.endswith("+00:00")
        else:
            assert got == {}
    assert view.changed()
    view.refresh()
    assert decisions(view.sample(picked[0])["tags"])["caption_mismatch"][0] == "confirmed"


def test_a_later_decision_replaces_the_earlier(lake_copy: Path) -> None:
    sid = LakeView(lake_copy).flagged("duplicates").page(0, 1)[0]["sample_id"]
    decide(lake_copy, [sid], "duplicates", "confirmed", "ana")
    decide(lake_copy, [sid], "caption_mismatch", "dismissed", "ana")
    assert decide(lake_copy, [sid], "duplicates", "dismissed", "bob") == 1
    tags = LakeView(lake_copy).sample(sid)["tags"]  # a fresh handle: the write persisted
    assert len(tags) == 2
    got = decisions(tags)
    assert got["duplicates"][:2] == ("dismissed", "bob")
    assert got["caption_mismatch"][:2] == ("dismissed", "ana")


def test_bad_decisions_are_refused(lake_copy: Path) -> None:
    with pytest.raises(ValueError, match="decision must be one of"):
        decide(lake_copy, ["x"], "duplicates", "maybe")
    with pytest.raises(ValueError, match="bad check name"):
        decide(lake_copy, ["x"], "a:b", "confirmed")
    assert decide(lake_copy, [], "duplicates", "confirmed") == 0
    assert decide(lake_copy, ["no-such-id"], "duplicates", "confirmed") == 0


def test_split_excludes_confirmed_samples(lake_copy: Path) -> None:
    view = LakeView(lake_copy)
    toys = view.rows("dataset = 'toys' AND check_duplicates_group IS NULL", sort="source_uri")
    confirmed = [r["sample_id"] for r in toys.page(0, 3)]
    dismissed = [r["sample_id"] for r in toys.page(1, 3)]
    decide(lake_copy, confirmed, "caption_mismatch", "confirmed", "ana")
    decide(lake_copy, dismissed, "caption_mismatch", "dismissed", "ana")
    lake = Lake(lake_copy)

    def splits() -> dict[str, str]:
        t = lake.dataset("samples").to_table(columns=["sample_id", "split"])
        return dict(zip(t["sample_id"].to_pylist(), t["split"].to_pylist(), strict=True))

    rep = split_lake(lake, RATIOS)
    assert rep["exclude_confirmed"] is False and rep["totals"][EXCLUDED] == 0
    rep = split_lake(lake, RATIOS, exclude_confirmed=True)
    got = splits()
    assert {got[s] for s in confirmed} == {EXCLUDED}
    assert EXCLUDED not in {got[s] for s in dismissed}
    assert rep["excluded_confirmed"] == 3 and rep["totals"][EXCLUDED] == 3
    n = pc.sum(pc.equal(lake.dataset("samples").to_table(columns=["split"])["split"], EXCLUDED))
    assert n.as_py() == 3


def test_split_cli_exclude_confirmed(lake_copy: Path, tmp_path: Path) -> None:
    sid = LakeView(lake_copy).rows("check_duplicates_group IS NULL").page(0, 1)[0]["sample_id"]
    decide(lake_copy, [sid], "outliers", "confirmed", "ana")
    reports = tmp_path / "reports"
    proc = subprocess.run(
        [sys.executable, "-m", "lake.cli", "split", f"lake.uri={lake_copy}",
         f"lake.reports={reports}", "split.exclude_confirmed=true"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "1 samples excluded by a confirmed review" in proc.stdout
    assert "excluded by a confirmed review" in (reports / "split.md").read_text()
    assert LakeView(lake_copy).sample(sid)["split"] == EXCLUDED
