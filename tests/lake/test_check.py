"""The check runner and `lakeloom check`: flags, score columns, reports, re-runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from lake.check import run_checks, scope
from lake.store import Lake
from tests.checks_data import (
    DUP_MEMBERS,
    MISLABELLED,
    OUTLIER,
    WRONG_CAPTIONS,
    build_lake,
    conf_check,
)
from tests.conftest import REPO


def _checks() -> dict:
    return {
        "caption_mismatch": conf_check("caption_mismatch"),
        "label_conflict": conf_check("label_conflict"),
        "duplicates": conf_check("duplicates"),
        "outliers": conf_check("outliers"),
    }


def _expected() -> dict[str, set[str]]:
    want: dict[str, set[str]] = {}
    for name, ids in (
        ("caption_mismatch", WRONG_CAPTIONS),
        ("label_conflict", MISLABELLED),
        ("duplicates", DUP_MEMBERS),
        ("outliers", OUTLIER | MISLABELLED),
    ):
        for s in ids:
            want.setdefault(s, set()).add(name)
    return want


def _rows(lake: Lake) -> dict[str, dict]:
    return {r["sample_id"]: r for r in lake.dataset("samples").to_table().to_pylist()}


def test_run_checks_writes_flags_scores_and_reports(lake: Lake, tmp_path: Path) -> None:
    build_lake(lake)
    # a flag from elsewhere (a person's review) must survive
    lake.update_columns(
        "samples", pa.table({"sample_id": ["s00", "s03"], "flags": [["manual"], ["manual"]]})
    )
    reports = tmp_path / "reports"
    report = run_checks(lake, _checks(), reports=reports)
    rows = _rows(lake)
    want = _expected()
    for sid, row in rows.items():
        own = set(row["flags"] or []) - {"manual"}
        assert own == want.get(sid, set()), sid
    assert rows["s00"]["flags"] == ["manual"]
    assert rows["s03"]["flags"] == ["manual", "caption_mismatch"]
    assert rows["s03"]["check_caption_mismatch_score"] > 0.9
    assert rows["s00"]["clip_score"] > 0.9
    assert rows["s40"]["check_caption_mismatch_score"] is None  # not scored: no embeddings
    assert rows["s31"]["check_duplicates_group"] == "s30"
    assert rows["s08"]["check_label_conflict_score"] > 0.05
    assert "check_outliers_group" not in rows["s00"]

    metrics = json.loads((reports / "checks.json").read_text())
    assert metrics == json.loads(json.dumps(report, default=str))
    dup = metrics["checks"]["duplicates"]
    assert (dup["flagged"], dup["groups"], dup["models"]) == (5, 5, {"image": ["toy-clip-image"]})
    assert metrics["checks"]["caption_mismatch"]["thresholds"]["max_z"] == 3.5
    assert metrics["checks"]["caption_mismatch"]["models"]["text"] == ["toy-clip-text"]
    md = (reports / "checks.md").read_text()
    assert "| caption_mismatch | 0.2.0 | 40 | 3 |" in md
    assert "## duplicates: worst" in md and "b/img38.jpg" not in md  # s38 is label d
    assert "d/img38.jpg" in md
    groups = json.loads((reports / "duplicates.json").read_text())["duplicates"]
    assert len(groups) == 5


def test_rerun_replaces_only_its_own_flags(lake: Lake) -> None:
    build_lake(lake)
    run_checks(lake, _checks())
    run_checks(lake, _checks())
    rows = _rows(lake)
    for row in rows.values():
        assert len(row["flags"] or []) == len(set(row["flags"] or []))
    assert sorted(rows["s08"]["flags"]) == ["label_conflict", "outliers"]
    # a looser threshold clears this check's flags; the others stay
    run_checks(lake, {"outliers": conf_check("outliers", z=1000.0)})
    rows = _rows(lake)
    assert rows["s08"]["flags"] == ["label_conflict"]
    assert rows["s29"]["flags"] == []
    # a filtered run leaves samples outside the selection alone
    run_checks(
        lake,
        {"label_conflict": conf_check("label_conflict", min_confidence=1.1)},
        where="label = 'b'",
    )
    assert _rows(lake)["s08"]["flags"] == ["label_conflict"]


def test_scope_combines_dataset_and_where() -> None:
    assert scope(None, None) is None
    assert scope("label = 'a'", "toy") == "(dataset = 'toy') AND (label = 'a')"
    assert scope(None, "it's") == "(dataset = 'it''s')"


def test_check_job_through_the_cli(lake: Lake, tmp_path: Path) -> None:
    build_lake(lake)
    reports = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable, "-m", "lake.cli", "check", f"lake.uri={lake.uri}",
            f"lake.reports={reports}", "dataset=toy", "check.checks.outliers=null",
        ],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "caption_mismatch" in proc.stdout and "duplicates" in proc.stdout
    # the toy vectors' model cannot be loaded: label_conflict says it used prototypes
    assert "fell back: zero-shot not possible: the image model toy-clip-image" in proc.stdout
    md = (reports / "checks.md").read_text()
    assert "- **label_conflict**: zero-shot not possible: the image model toy-clip-image" in md
    metrics = json.loads((reports / "checks.json").read_text())
    assert set(metrics["checks"]) == {"caption_mismatch", "label_conflict", "duplicates"}
    assert metrics["where"] == "(dataset = 'toy')" and metrics["selected"] == 43
    assert metrics["checks"]["label_conflict"]["fallbacks"][0].endswith("used label prototypes")
    assert metrics["checks"]["duplicates"]["fallbacks"] == []
    rows = _rows(Lake(lake.uri))
    assert rows["s03"]["flags"] == ["caption_mismatch"]
    assert rows["s43"]["flags"] is None  # other dataset: untouched
    run = [r for r in Lake(lake.uri).runs() if r["job"] == "check"]
    assert run and run[-1]["status"] == "finished"
