"""`lakeloom split`: stratification, leakage freedom, exclusion, caps, oversampling."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from core.data.lance_data import LanceDataModule
from lake.errors import ConfigError
from lake.ingest import IngestSettings, ingest
from lake.split import EXCLUDED, assign_splits, repeats, split_lake
from lake.store import Lake
from plugins.image_folder import ImageFolderSource
from tests.conftest import REPO, jpeg_bytes

RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1}


def _plain(n_per_class: dict[str, int]) -> tuple[list[str], list[str], list[list[str]]]:
    ids, classes, media = [], [], []
    for name, n in n_per_class.items():
        for i in range(n):
            ids.append(f"{name}-{i:04d}")
            classes.append(name)
            media.append([f"m-{name}-{i}"])
    return ids, classes, media


def test_every_class_is_split_in_the_configured_proportions() -> None:
    ids, classes, media = _plain({"a": 500, "b": 120, "c": 30})
    out = assign_splits(ids, classes, media, [None] * len(ids), [False] * len(ids), RATIOS, 0)
    for name, n in {"a": 500, "b": 120, "c": 30}.items():
        got = Counter(s for s, c in zip(out, classes, strict=True) if c == name)
        for split, share in RATIOS.items():
            assert abs(got[split] - share * n) <= 1, (name, split, got)
    # deterministic for a seed, different for another, independent of the input order
    assert out == assign_splits(ids, classes, media, [None] * 650, [False] * 650, RATIOS, 0)
    assert out != assign_splits(ids, classes, media, [None] * 650, [False] * 650, RATIOS, 1)
    rev = assign_splits(
        ids[::-1], classes[::-1], media[::-1], [None] * 650, [False] * 650, RATIOS, 0
    )
    assert rev[::-1] == out


def test_shared_media_and_duplicate_groups_never_straddle() -> None:
    ids, classes, media = _plain({"a": 200, "b": 200})
    groups: list[str | None] = [None] * len(ids)
    for k in range(0, 200, 2):  # pairs of near duplicates (one duplicate group each)
        groups[k] = groups[k + 1] = f"g{k}"
    for k in range(200, 400, 4):  # the same image in two samples
        media[k + 1] = list(media[k])
    chain = [300, 301, 350]  # 300~301 share media; 301~350 share a group: one unit
    groups[301] = groups[350] = "chain"
    for seed in range(5):
        out = assign_splits(ids, classes, media, groups, [False] * 400, RATIOS, seed)
        for k in range(0, 200, 2):
            assert out[k] == out[k + 1]
        for k in range(200, 400, 4):
            assert out[k] == out[k + 1]
        assert len({out[i] for i in chain}) == 1
        assert {"train", "val", "test"} == set(out)


def test_flagged_samples_and_their_copies_are_excluded() -> None:
    ids, classes, media = _plain({"a": 50})
    media[7] = list(media[3])  # 7 is a copy of 3
    excluded = [i == 3 for i in range(50)]
    out = assign_splits(ids, classes, media, [None] * 50, excluded, RATIOS, 0)
    assert out[3] == out[7] == EXCLUDED
    assert Counter(out)[EXCLUDED] == 2


def test_cap_and_oversampling() -> None:
    ids, classes, media = _plain({"big": 300, "rare": 20})
    out = assign_splits(ids, classes, media, [None] * 320, [False] * 320, RATIOS, 0, 100)
    big = Counter(s for s, c in zip(out, classes, strict=True) if c == "big")
    assert big[EXCLUDED] == 200 and big["train"] == 80 and big["val"] == big["test"] == 10
    reps = repeats(out, classes, {"rare": 3})
    assert {
        r for r, s, c in zip(reps, out, classes, strict=True) if c == "rare" and s == "train"
    } == {3}
    assert {
        r for r, s, c in zip(reps, out, classes, strict=True) if c == "big" or s != "train"
    } == {1}
    with pytest.raises(ConfigError, match="integer >= 1"):
        repeats(out, classes, {"rare": 0.5})


def test_bad_ratios_are_refused() -> None:
    ids, classes, media = _plain({"a": 5})
    with pytest.raises(ConfigError, match="unknown split"):
        assign_splits(ids, classes, media, [None] * 5, [False] * 5, {"train": 1, "dev": 1})
    with pytest.raises(ConfigError, match="not all 0"):
        assign_splits(ids, classes, media, [None] * 5, [False] * 5, {"train": 0})


@pytest.fixture
def pets(tmp_path: Path) -> Lake:
    """A lake of 3 classes (40 / 20 / 6 images) plus exact copies of two cats."""
    root = tmp_path / "pets"
    for name, n, base in (
        ("cat", 40, (200, 40, 30)),
        ("dog", 20, (20, 90, 200)),
        ("fox", 6, (230, 120, 10)),
    ):
        (root / name).mkdir(parents=True)
        for i in range(n):
            colour = (base[0], (base[1] + 5 * i) % 256, base[2])
            (root / name / f"{i:03d}.jpg").write_bytes(jpeg_bytes(colour))
    for i in (0, 1):
        (root / "cat" / f"{i:03d}_copy.jpg").write_bytes(
            (root / "cat" / f"{i:03d}.jpg").read_bytes()
        )
    lake = Lake(tmp_path / "lake")
    ingest(ImageFolderSource(root), lake, "pets", IngestSettings(progress=False))
    return lake


def _rows(lake: Lake) -> list[dict]:
    return (
        lake.dataset("samples")
        .to_table(columns=["sample_id", "label", "split", "split_repeat", "media_ids"])
        .to_pylist()
    )


def test_split_lake_writes_columns_reports_and_feeds_training(pets: Lake, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    rep = split_lake(pets, RATIOS, seed=3, oversample={"fox": 4}, reports=reports)
    rows = _rows(pets)
    assert all(r["split"] in ("train", "val", "test") for r in rows)
    by_media: dict[str, set[str]] = {}
    for r in rows:
        by_media.setdefault(r["media_ids"][0], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_media.values())  # the copies sit with their originals
    fox_train = [r for r in rows if r["label"] == "fox" and r["split"] == "train"]
    assert fox_train and all(r["split_repeat"] == 4 for r in fox_train)
    assert rep["per_class"]["fox"]["train_repeated"] == 4 * len(fox_train)
    assert json.loads((reports / "split.json").read_text())["totals"] == rep["totals"]
    assert "| fox |" in (reports / "split.md").read_text()
    # the data module reads the written splits and repeats the oversampled samples
    dm = LanceDataModule(str(pets.uri))
    assert dm.sizes() == {
        "train": rep["totals"]["train_repeated"],
        "val": rep["totals"]["val"],
        "test": rep["totals"]["test"],
    }
    # re-running with the same settings converges to the same lake state
    split_lake(pets, RATIOS, seed=3, oversample={"fox": 4})
    assert _rows(pets) == rows


def test_split_lake_excludes_flagged_and_respects_where(pets: Lake) -> None:
    dogs = pets.dataset("samples").to_table(columns=["sample_id"], filter="label = 'dog'")
    ids = dogs.column("sample_id").to_pylist()  # no copies among the dogs
    everyone = pets.count("samples")
    pets.update_columns(
        "samples",
        pa.table({"sample_id": ids[:3], "flags": [["caption_mismatch"], ["manual"], None]}),
    )
    split_lake(pets, RATIOS, exclude_flags=["caption_mismatch"])
    rows = {r["sample_id"]: r for r in _rows(pets)}
    assert rows[ids[0]]["split"] == EXCLUDED and rows[ids[1]]["split"] != EXCLUDED
    dm = LanceDataModule(str(pets.uri))
    assert sum(dm.sizes().values()) == everyone - 1  # excluded samples are not loaded
    split_lake(pets, {"test": 1.0}, where="label = 'dog'")
    rows = {r["sample_id"]: r for r in _rows(pets)}
    assert {r["split"] for r in rows.values() if r["label"] == "dog"} == {"test"}
    assert {r["split"] for r in rows.values() if r["label"] == "fox"} <= {"train", "val", "test"}
    with pytest.raises(ConfigError, match="no column 'breed'"):
        split_lake(pets, RATIOS, stratify_by="breed")
    with pytest.raises(ConfigError, match="no samples selected"):
        split_lake(pets, RATIOS, where="label = 'whale'")


def test_split_job_through_the_cli(pets: Lake, tmp_path: Path) -> None:
    reports = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable, "-m", "lake.cli", "split", f"lake.uri={pets.uri}",
            f"lake.reports={reports}", "split.seed=7", "+split.oversample.fox=2",
        ],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "train_repeated" in proc.stdout and "fox" in proc.stdout
    metrics = json.loads((reports / "split.json").read_text())
    assert metrics["seed"] == 7 and metrics["oversample"] == {"fox": 2}
    assert [r for r in Lake(pets.uri).runs() if r["job"] == "split"][-1]["status"] == "finished"
