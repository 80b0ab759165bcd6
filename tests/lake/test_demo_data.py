"""The synthetic shapes demo dataset: determinism, layout, planted problems, atomic writes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lake.demo_data import SHAPES, DemoDataError, generate
from tests.conftest import REPO

N, SIZE = 60, 64
FRACS = {"wrong_caption_frac": 0.05, "exact_dup_frac": 0.05, "near_dup_frac": 0.05}


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two generations with seed 0 and one with seed 1."""
    base = tmp_path_factory.mktemp("demo")
    summaries = {
        name: generate(base / name, n=N, seed=seed, size=SIZE, **FRACS)
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    }
    return {"base": base, "summaries": summaries}


def _truth(root: Path) -> dict[str, Any]:
    return json.loads((root / "ground_truth.json").read_text())


def test_same_seed_is_byte_identical_and_another_seed_differs(made: dict[str, Any]) -> None:
    base = made["base"]
    a, b, c = _files(base / "a"), _files(base / "b"), _files(base / "c")
    assert a == b
    assert a != c
    assert any(a[k] != c.get(k) for k in a if k.endswith(".jpg"))


def test_layout_and_summary(made: dict[str, Any]) -> None:
    root = made["base"] / "a"
    summary = made["summaries"]["a"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(SHAPES)
    jpgs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert summary["images"] == len(jpgs)
    assert summary["originals"] == N
    assert summary["path"] == str(root)
    assert not root.with_name("a.tmp").exists()
    for rel in jpgs:
        folder, name = rel.split("/")
        assert name.startswith(folder + "_")
    with Image.open(root / jpgs[0]) as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (SIZE, SIZE)


def test_llava_json_and_captions_csv(made: dict[str, Any]) -> None:
    root = made["base"] / "a"
    records = json.loads((root / "llava.json").read_text())
    jpgs = {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}
    assert {r["image"] for r in records} == jpgs
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt" and gpt["value"]
    with (root / "captions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["image"] for r in rows} == jpgs
    assert all(r["label"] == r["image"].split("/")[0] for r in rows)


def test_ground_truth_counts_and_attributes(made: dict[str, Any]) -> None:
    root = made["base"] / "a"
    truth = _truth(root)
    counts = truth["counts"]
    assert counts["wrong_captions"] == len(truth["wrong_captions"]) == round(N * 0.05)
    kinds = [d["kind"] for d in truth["duplicates"]]
    assert counts["exact_duplicates"] == kinds.count("exact") == round(N * 0.05)
    assert counts["near_duplicates"] == kinds.count("near") == round(N * 0.05)
    assert counts["images"] == N + counts["exact_duplicates"] + counts["near_duplicates"]
    assert truth["args"]["n"] == N and truth["args"]["size"] == SIZE
    assert set(truth["images"]) == {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}
    for rel, attrs in truth["images"].items():
        assert attrs["shape"] == rel.split("/")[0]
        assert {"colour", "background", "size"} <= set(attrs)


def test_duplicate_pairs(made: dict[str, Any]) -> None:
    root = made["base"] / "a"
    for dup in _truth(root)["duplicates"]:
        orig, copy = (root / p for p in dup["pair"])
        assert orig.parent == copy.parent and orig != copy
        if dup["kind"] == "exact":
            assert orig.read_bytes() == copy.read_bytes()
        else:
            assert orig.read_bytes() != copy.read_bytes()
            with Image.open(orig) as a, Image.open(copy) as b:
                assert a.size == b.size == (SIZE, SIZE)
            assert dup["transform"]["quality"]


def test_wrong_captions_name_another_shape_and_colour(made: dict[str, Any]) -> None:
    root = made["base"] / "a"
    with (root / "captions.csv").open(newline="") as fh:
        captions = {r["image"]: r["caption"] for r in csv.DictReader(fh)}
    answers = {
        r["image"]: r["conversations"][1]["value"]
        for r in json.loads((root / "llava.json").read_text())
    }
    wrong = _truth(root)["wrong_captions"]
    assert wrong
    for w in wrong:
        folder = w["image"].split("/")[0]
        assert w["true"]["shape"] == folder
        assert w["written"]["shape"] != folder
        assert w["written"]["colour"] != w["true"]["colour"]
        for text in (captions[w["image"]], answers[w["image"]]):
            assert w["written"]["shape"] in text and folder not in text
            assert w["written"]["colour"] in text
    wrong_images = {w["image"] for w in wrong}
    for image, caption in captions.items():
        if image not in wrong_images:
            assert image.split("/")[0] in caption


def test_rerun_is_idempotent_and_force_regenerates(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    first = generate(out, n=20, size=32)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert generate(out, n=20, size=32) == first
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    before = _files(out)
    assert generate(out, n=20, size=32, force=True) == first
    assert _files(out) == before
    assert (out / "ground_truth.json").stat().st_mtime_ns != stamps[out / "ground_truth.json"]
    changed = generate(out, n=25, size=32)
    assert changed["originals"] == 25 and _truth(out)["args"]["n"] == 25


def test_leftover_tmp_is_cleaned(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    leftover = tmp_path / "shapes.tmp"
    (leftover / "circle").mkdir(parents=True)
    (leftover / "circle" / "stale.jpg").write_bytes(b"half written")
    summary = generate(out, n=12, size=32)
    assert not leftover.exists()
    assert not (out / "circle" / "stale.jpg").exists()
    assert summary["images"] == len(list(out.rglob("*.jpg")))


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DemoDataError):
        generate(tmp_path / "mine", n=5, size=32)
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_module_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "lake.demo_data", f"demo.out={out}", "demo.n=30", "demo.size=48"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    assert _truth(out)["counts"]["originals"] == 30
