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
from lake.schema import MEDIA, SAMPLES
from lake.split import EXCLUDED, SPLIT_NAMES, assign_splits, repeats, split_lake
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
    split_lake(pets, {"test": 1.0}, where="label = 'dog'", reassign=True)
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


def _folder(root: Path, counts: dict[str, int], start: int = 0) -> None:
    """``counts[class]`` distinct JPEGs per class folder, numbered from ``start``."""
    for k, (name, n) in enumerate(sorted(counts.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            colour = (20 + 9 * k, (7 * i) % 256, (3 * i + 60 * k) % 256)
            (root / name / f"{i:03d}.jpg").write_bytes(jpeg_bytes(colour))


def _state(lake: Lake) -> dict[str, dict]:
    cols = ["sample_id", "label", "split", "media_ids", "check_duplicates_group"]
    return {r["sample_id"]: r for r in lake.dataset(SAMPLES).to_table(columns=cols).to_pylist()}


def _group(lake: Lake, ids: list[str], group: str) -> None:
    """What the duplicates check writes: one near-duplicate group over ``ids``."""
    lake.update_columns(
        SAMPLES, pa.table({"sample_id": ids, "check_duplicates_group": [group] * len(ids)})
    )


def test_new_data_never_moves_a_placed_sample(tmp_path: Path) -> None:
    """Ingest, split, ingest a new class and more of the old ones, split again."""
    root = tmp_path / "shapes"
    _folder(root, {"circle": 60, "square": 30, "star": 12})
    (root / "circle" / "000_copy.jpg").write_bytes((root / "circle" / "000.jpg").read_bytes())
    lake = Lake(tmp_path / "lake")
    settings = IngestSettings(progress=False, workers=1)
    ingest(ImageFolderSource(root), lake, "shapes", settings)
    lake.add_columns(SAMPLES, [pa.field("check_duplicates_group", pa.string())])
    first = _state(lake)
    squares = sorted(k for k, r in first.items() if r["label"] == "square")[:3]
    _group(lake, squares, "g-square")
    split_lake(lake, RATIOS, seed=0)
    before = _state(lake)
    assert {r["split"] for r in before.values()} == set(SPLIT_NAMES)

    # new data lands: a new class (sorting first), more circles and squares, a copy of a
    # placed circle (same bytes) and a near duplicate of the grouped squares
    _folder(root, {"aardvark": 5}, start=0)
    _folder(root, {"circle": 20, "square": 10}, start=200)
    (root / "circle" / "000_copy2.jpg").write_bytes((root / "circle" / "000.jpg").read_bytes())
    ingest(ImageFolderSource(root), lake, "shapes", settings)
    fresh = [k for k in _state(lake) if k not in before]
    assert len(fresh) == 5 + 20 + 10 + 1
    newcomer = sorted(k for k in fresh if _state(lake)[k]["label"] == "square")[0]
    _group(lake, [newcomer], "g-square")
    rep = split_lake(lake, RATIOS, seed=0)
    after = _state(lake)

    moved = [k for k, r in before.items() if after[k]["split"] != r["split"]]
    assert moved == [] and rep["changes"]["moved"] == 0
    assert rep["changes"]["kept"] == len(before) and rep["changes"]["assigned"] == len(fresh)
    assert all(after[k]["split"] in SPLIT_NAMES for k in fresh)
    # no unit straddles: copies share their original's split, the group stays whole
    by_media: dict[str, set[str]] = {}
    by_group: dict[str, set[str]] = {}
    for r in after.values():
        by_media.setdefault(r["media_ids"][0], set()).add(r["split"])
        if r["check_duplicates_group"]:
            by_group.setdefault(r["check_duplicates_group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_media.values())
    assert by_group == {"g-square": {before[squares[0]]["split"]}}
    # every class, the new one included, stays close to the configured shares
    for name, n in Counter(r["label"] for r in after.values()).items():
        got = Counter(r["split"] for r in after.values() if r["label"] == name)
        for split, share in RATIOS.items():
            assert abs(got[split] - share * n) <= 2, (name, split, got)
    # nothing new: a third run changes nothing at all
    again = split_lake(lake, RATIOS, seed=0)
    assert _state(lake) == after and again["changes"]["assigned"] == 0


def test_five_new_images_of_a_new_class_move_nothing(pets: Lake, tmp_path: Path) -> None:
    """The issue's case: 5 images of a new class, then `lakeloom split` again."""
    split_lake(pets, RATIOS, seed=0)
    before = {r["sample_id"]: r["split"] for r in _rows(pets)}
    root = tmp_path / "ants"
    _folder(root, {"ant": 5})
    ingest(ImageFolderSource(root), pets, "pets", IngestSettings(progress=False, workers=1))
    split_lake(pets, RATIOS, seed=0)
    after = {r["sample_id"]: r["split"] for r in _rows(pets)}
    assert {k: after[k] for k in before} == before
    assert Counter(after[k] for k in after if k not in before)["train"] >= 3


def test_reassign_resplits_and_says_how_many_moved(pets: Lake, tmp_path: Path) -> None:
    split_lake(pets, RATIOS, seed=0)
    before = {r["sample_id"]: r["split"] for r in _rows(pets)}
    kept = split_lake(pets, RATIOS, seed=9)  # another seed alone moves nothing
    assert kept["changes"]["moved"] == 0
    assert {r["sample_id"]: r["split"] for r in _rows(pets)} == before
    reports = tmp_path / "reports"
    rep = split_lake(pets, RATIOS, seed=9, reassign=True, reports=reports)
    after = {r["sample_id"]: r["split"] for r in _rows(pets)}
    moved = sum(1 for k in before if after[k] != before[k])
    assert moved > 0 and rep["changes"]["moved"] == moved
    assert sum(rep["changes"]["moves"].values()) == moved
    assert f"{moved} moved" in (reports / "split.md").read_text()


def test_cap_counts_per_dataset_and_unlabelled_samples() -> None:
    # dataset a and b hold the same 30 images (one unit each), c 30 unlabelled ones
    ids = [f"{d}-{i:02d}" for d in "abc" for i in range(30)]
    media = [[f"m{i}"] for _ in "ab" for i in range(30)] + [[f"u{i}"] for i in range(30)]
    classes: list[str | None] = ["x"] * 60 + [None] * 30
    datasets = [d for d in "abc" for _ in range(30)]
    n = len(ids)
    out = assign_splits(
        ids, classes, media, [None] * n, [False] * n, RATIOS, 0, 10, datasets=datasets
    )
    kept = Counter(d for d, s in zip(datasets, out, strict=True) if s != EXCLUDED)
    assert kept == {"a": 10, "b": 10, "c": 10}
    # placed samples count first: a new unit of a full class is excluded, not placed
    more = assign_splits(
        [*ids, "a-new"], [*classes, "x"], [*media, ["m-new"]], [None] * (n + 1),
        [False] * (n + 1), RATIOS, 0, 10, current=[*out, None], datasets=[*datasets, "a"],
    )  # fmt: skip
    assert more[:n] == out and more[n] == EXCLUDED


def test_frames_of_one_video_stay_in_one_split(tmp_path: Path) -> None:
    """Samples of different frames share no media but share their video (parent_id)."""
    lake = Lake(tmp_path / "lake")
    media, samples = [], []
    for v in range(12):
        for f in range(4):
            mid = f"v{v:02d}-f{f}"
            media.append({"media_id": mid, "kind": "frame", "parent_id": f"v{v:02d}"})
            samples.append(
                {
                    "sample_id": f"s-{mid}",
                    "dataset": "clips",
                    "media_ids": [mid],
                    "messages": [{"role": "user", "content": "<image>"}],
                    "label": "ab"[v % 2],
                }
            )
    lake.insert_new(MEDIA, pa.Table.from_pylist(media))
    lake.upsert(SAMPLES, pa.Table.from_pylist(samples))
    split_lake(lake, RATIOS, seed=1)
    got: dict[str, set[str]] = {}
    for r in _rows(lake):
        got.setdefault(r["media_ids"][0].split("-")[0], set()).add(r["split"])
    assert len(got) == 12 and all(len(s) == 1 for s in got.values())
    assert len(set.union(*got.values())) > 1
