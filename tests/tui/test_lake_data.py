"""tui.lake_data on a real lake: pages, filters, sorts, pinned versions, details, search."""

from __future__ import annotations

import shutil
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from tests.tui.conftest import TUI_LAYOUT
from tui.lake_data import LakeUnavailable, LakeView, page_rows

N = sum(TUI_LAYOUT.values())


def _full(lake: Path, columns: list[str], where: str | None = None) -> list[dict]:
    """Every row (scan order) through the same row builder: the reference for pages."""
    view = LakeView(lake)
    table = lance.dataset(str(lake / "samples.lance")).to_table(
        columns=view._physical(columns), filter=where
    )
    return page_rows(table, columns)


@pytest.fixture
def view(tui_lake: Path) -> LakeView:
    return LakeView(tui_lake, page_cache=4)


@pytest.fixture
def lake_copy(tui_lake: Path, tmp_path: Path) -> Path:
    shutil.copytree(tui_lake, tmp_path / "lake")
    return tmp_path / "lake"


def test_pages_equal_slices_of_a_full_read(view: LakeView, tui_lake: Path) -> None:
    rows = view.rows()
    cols = view.default_columns()
    assert cols[:4] == ["sample_id", "dataset", "label", "split"]
    assert {"check_caption_mismatch_score", "check_duplicates_score"} <= set(cols)
    full = _full(tui_lake, cols)
    assert len(rows) == N == len(full)
    got = [r for i in range(rows.pages(7)) for r in rows.page(i, 7)]
    assert got == full
    last = rows.page(rows.pages(7) - 1, 7)
    assert len(last) == N % 7 and last == full[-(N % 7) :]
    assert rows.page(rows.pages(7), 7) == []
    assert all(r["n_media"] == 1 and r["media_id"] for r in got)


def test_filter_and_sort_match_a_sorted_full_read(view: LakeView, tui_lake: Path) -> None:
    where = "dataset = 'pets' AND label = 'cat'"
    score = "check_caption_mismatch_score"
    rows = view.rows(where, sort=score, descending=True)
    full = _full(tui_lake, view.default_columns(), where)
    scored = sorted((r for r in full if r[score] is not None), key=lambda r: -r[score])
    expect = scored + [r for r in full if r[score] is None]  # nulls last, scan order
    assert len(rows) == TUI_LAYOUT[("pets", "cat")] == len(expect)
    got = [r for i in range(rows.pages(5)) for r in rows.page(i, 5)]
    assert got == expect
    ascending = view.rows(where, sort=score)
    firsts = [r[score] for r in ascending.page(0, 50)]
    assert firsts[: len(scored)] == sorted(r[score] for r in scored)
    assert firsts[len(scored) :] == [None] * (len(full) - len(scored))
    # a filter alone keeps scan order; a sort alone covers every row
    assert view.rows("label = 'car'").page(0, 50) == _full(tui_lake, view.default_columns(),
        "label = 'car'")  # fmt: skip
    by_id = view.rows(sort="sample_id").page(0, 100)
    assert [r["sample_id"] for r in by_id] == sorted(r["sample_id"] for r in by_id)
    assert len(by_id) == N
    assert len(view.rows("label = 'nothing'")) == 0


def test_columns_override_and_page_cache(view: LakeView) -> None:
    rows = view.rows(sort="source_uri", columns=["sample_id", "source_uri", "n_media"])
    page = rows.page(0, 3)
    assert [set(r) for r in page] == [{"sample_id", "source_uri", "n_media"}] * 3
    assert rows.page(0, 3) is page  # cached
    for i in range(1, 6):
        rows.page(i, 3)
    assert rows.page(0, 3) is not page and rows.page(0, 3) == page  # evicted (4 pages), reread
    with pytest.raises(ValueError, match="no column 'nope'"):
        view.rows(columns=["sample_id", "nope"])


@pytest.mark.parametrize(
    ("where", "sort", "needle"),
    [
        ("labl = 'cat'", None, "No field named labl"),
        ("label = ", None, "sql parser error"),
        ("label = 'cat' AND", "clip_score", "invalid filter"),
        (None, "nope", "no column 'nope'"),
        (None, "flags", "cannot sort by 'flags'"),
    ],
)
def test_bad_sql_is_a_readable_value_error(view: LakeView, where, sort, needle) -> None:
    with pytest.raises(ValueError) as info:
        view.rows(where, sort=sort)
    msg = str(info.value)
    assert needle in msg
    assert ".rs:" not in msg and "Traceback" not in msg and "\n" not in msg


def test_dataset_counts(view: LakeView) -> None:
    pets, toys = view.datasets()
    assert (pets.name, pets.samples, toys.name, toys.samples) == ("pets", 32, "toys", 28)
    assert pets.by_label == {"cat": 18, "dog": 14}
    assert toys.by_label == {"ball": 16, "car": 12}
    assert pets.by_split == {"<none>": 24, "train": 6, "val": 2}
    assert toys.by_split == {"<none>": 26, "test": 2}
    assert pets.by_flag == toys.by_flag == {"caption_mismatch": 3, "duplicates": 3}
    assert view.checks() == ["caption_mismatch", "duplicates"]


def test_pinned_version_until_refresh(lake_copy: Path) -> None:
    from lake.store import Lake

    view = LakeView(lake_copy)
    before = view.rows().page(0, 10)
    v0 = view.version
    assert not view.changed()
    ids = [r["sample_id"] for r in before]
    Lake(lake_copy).update_columns(
        "samples", pa.table({"sample_id": ids, "label": ["relabelled"] * len(ids)})
    )
    assert view.changed()
    assert view.rows().page(0, 10) == before  # new RowSets stay at the pinned version
    assert len(view.rows("label = 'relabelled'")) == 0
    assert view.version == v0
    view.refresh()
    assert view.version > v0 and not view.changed()
    assert len(view.rows("label = 'relabelled'")) == 10
    assert sum(s.by_label.get("relabelled", 0) for s in view.datasets()) == 10


def test_missing_lake(tmp_path: Path) -> None:
    for path in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(LakeUnavailable) as info:
            LakeView(path)
        assert str(info.value) == (
            f"no lake at {path}: create one with `lakeloom demo` or pass lake.uri=..."
        )


def test_sample_detail_with_media(view: LakeView) -> None:
    row = view.rows("label = 'dog'", sort="source_uri").page(0, 1)[0]
    s = view.sample(row["sample_id"])
    assert set(view.columns) <= set(s)
    assert s["label"] == "dog" and s["source_uri"] == "dog/dog000.png"
    (m,) = s["media"]
    assert m["media_id"] == s["media_ids"][0] == row["media_id"]
    assert (m["kind"], m["mime"], m["width"], m["height"]) == ("image", "image/png", 24, 24)
    assert m["bytes"].startswith(b"\x89PNG") and m["size"] == len(m["bytes"])
    assert m["thumb"].startswith(b"\xff\xd8") and m["source_uri"] == "dog/dog000.png"
    assert m["provenance"]["plugin"] == "image_folder"
    assert view.thumbnails([m["media_id"], "missing"]) == {m["media_id"]: m["thumb"]}
    fresh = LakeView(view.uri)  # no row id memo: found by a filtered scan
    assert fresh.sample(row["sample_id"])["media_ids"] == s["media_ids"]
    with pytest.raises(KeyError):
        view.sample("no-such-sample")


def test_caption_falls_back_to_the_conversation() -> None:
    msg = pa.struct([("role", pa.string()), ("content", pa.string())])
    chat = [{"role": "user", "content": "<image>\nWhat  is it?"},
            {"role": "assistant", "content": "A cat."}]  # fmt: skip
    table = pa.table(
        {
            "caption": pa.array(["x" * 300, None, None], pa.string()),
            "messages": pa.array([None, chat, []], pa.list_(msg)),
        }
    )
    caps = [r["caption"] for r in page_rows(table, ["caption"])]
    assert caps == ["x" * 200, "What is it? / A cat.", None]


def test_flagged_worst_first_and_duplicate_groups(view: LakeView) -> None:
    mism = view.flagged("caption_mismatch").page(0, 50)
    scores = [r["check_caption_mismatch_score"] for r in mism]
    assert len(mism) == 6 and scores == sorted(scores, reverse=True)
    assert all("caption_mismatch" in r["flags"] for r in mism)
    dups = view.flagged("duplicates").page(0, 50)
    assert len(dups) == 6 and all("duplicates" in r["flags"] for r in dups)
    assert [r["check_duplicates_score"] for r in dups][:2] == pytest.approx([0.95, 0.95])
    group = view.duplicate_group(dups[0]["sample_id"])
    rep = view.sample(group[0])
    assert rep["check_duplicates_group"] == group[0] and dups[0]["sample_id"] in group
    assert len(group) in (2, 3)
    plain = view.rows("check_duplicates_group IS NULL").page(0, 1)[0]
    assert view.duplicate_group(plain["sample_id"]) == []
    assert len(view.flagged("nothing")) == 0


def test_text_search_and_neighbours(tui_lake: Path) -> None:
    view = LakeView(tui_lake, model={"pretrained": f"local-dir:{tui_lake.parent / 'clip'}"})
    assert view.has_embeddings()
    hits = view.search_text("a cat", k=10)
    assert 0 < len(hits) <= 10 and len({s for s, _ in hits}) == len(hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    pets = view.search_text("a cat", k=10, where="dataset = 'pets'")
    ids = {r["sample_id"] for r in view.rows("dataset = 'pets'").page(0, 100)}
    assert pets and {s for s, _ in pets} <= ids
    me = view.rows(sort="source_uri").page(0, 1)[0]["sample_id"]
    near = view.neighbours(me, k=5)
    assert len(near) == 5 and me not in {s for s, _ in near}
    assert [s for _, s in near] == sorted((s for _, s in near), reverse=True)
    with pytest.raises(ValueError, match="cannot embed"):
        LakeView(tui_lake).search_text("a cat")  # a local model needs its path


def test_no_embeddings_means_no_results(tmp_path: Path) -> None:
    from lake.ingest import IngestSettings, ingest
    from lake.store import Lake
    from plugins.image_folder import ImageFolderSource
    from tests.conftest import png_bytes

    (tmp_path / "src" / "a").mkdir(parents=True)
    for i in range(2):
        (tmp_path / "src" / "a" / f"{i}.png").write_bytes(png_bytes((10 * i, 0, 0)))
    ingest(ImageFolderSource(tmp_path / "src"), Lake(tmp_path / "lake"), "d",
           IngestSettings(workers=0, progress=False))  # fmt: skip
    view = LakeView(tmp_path / "lake")
    sid = view.rows().page(0, 1)[0]["sample_id"]
    assert not view.has_embeddings() and view.checks() == []
    assert view.search_text("anything") == [] and view.neighbours(sid) == []
    assert view.duplicate_group(sid) == [] and len(view.flagged("duplicates")) == 0
    assert view.datasets()[0].by_flag == {}
