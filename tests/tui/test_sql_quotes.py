"""The TUI builds its filters with lake.sql (the one owner): quotes in a dataset name, a
label or a tag survive, and a typed ``where`` only narrows the chosen dataset."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from lake.errors import ConfigError
from lake.ingest import IngestSettings, ingest
from lake.schema import SAMPLES
from lake.store import Lake
from plugins.image_folder import ImageFolderSource
from tests.conftest import REPO, jpeg_bytes
from tui.lake_data import LakeView
from tui.review import decide, decisions
from tui.screens.lake import Query

DATASET, LABEL, TAG = "o'brien", "it's", "x'y"


@pytest.fixture
def quoted_lake(tmp_path: Path) -> Path:
    """``o'brien`` (3 samples labelled ``it's``, one tagged ``x'y``) and ``plain`` (2)."""
    uri = tmp_path / "lake"
    lake = Lake(uri)
    settings = IngestSettings(workers=0, progress=False)
    for dataset, label, n, shade in ((DATASET, LABEL, 3, 0), ("plain", "cat", 2, 120)):
        folder = tmp_path / dataset / label
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i}.jpg").write_bytes(jpeg_bytes((shade + 40 * i, 30, 90)))
        ingest(ImageFolderSource(folder.parent), lake, dataset, settings)
    ids = lake.dataset(SAMPLES).to_table(filter="label = 'it''s'")["sample_id"].to_pylist()
    tags = pa.array([[TAG]] + [[]] * (len(ids) - 1), pa.list_(pa.string()))
    lake.update_columns(SAMPLES, pa.table({"sample_id": ids, "tags": tags}))
    return uri


def test_quotes_survive_the_filter_path(quoted_lake: Path) -> None:
    view = LakeView(quoted_lake)
    where = f"label = '{LABEL.replace(chr(39), chr(39) * 2)}'"  # typed by a user
    rows = view.rows(Query(dataset=DATASET, where=where).sql())
    found = rows.page(0, 10)
    assert len(found) == 3 and {(r["dataset"], r["label"]) for r in found} == {(DATASET, LABEL)}
    tagged = view.rows(Query(dataset=DATASET, where="array_has(tags, 'x''y')").sql())
    assert len(tagged) == 1
    media = [r["media_id"] for r in found]
    assert set(view.thumbnails(media)) == set(media)
    # a review decision (its own IN list) keeps the quoted tag and adds its own
    (sample,) = tagged.page(0, 1)
    assert decide(quoted_lake, [sample["sample_id"]], "dup's", "confirmed", who="me") == 1
    again = LakeView(quoted_lake)  # pinned at the version with the decision
    (row,) = again.rows(
        Query(dataset=DATASET, where="array_has(tags, 'x''y')").sql(), columns=["sample_id", "tags"]
    ).page(0, 1)
    assert decisions(row["tags"])["dup's"][0] == "confirmed" and TAG in row["tags"]


def test_a_typed_where_cannot_escape_the_chosen_dataset(quoted_lake: Path) -> None:
    view = LakeView(quoted_lake)
    assert len(view.rows(Query(dataset=DATASET).sql())) == 3
    assert len(view.rows(Query(dataset=DATASET, where="(1=0) OR (1=1)").sql())) == 3
    with pytest.raises(ConfigError, match="unbalanced parentheses"):
        Query(dataset=DATASET, where="1=0) OR (1=1").sql()


#: hand-made SQL string literals: doubling quotes (any spelling), or a value pasted between
#: quotes after a comparison, in an IN / array list, or as a list item (``f"'{x}'"``)
HAND_QUOTING = (
    re.compile(r"""replace\(\s*(["'])(\\'|'|\")\1\s*,|replace\(\s*chr\(39\)"""),
    re.compile(r"""(=|!=|<>|\bIN \(|\btags, |\[)\s*'\{"""),
    re.compile(r"""\bf(["'])'\{[^}]*\}'\1"""),
)


def test_no_copy_of_the_sql_quoting_outside_lake_sql() -> None:
    """Every package (core, lake, plugins, tui) quotes SQL values with lake.sql only."""
    found = [
        f"{path.relative_to(REPO)}:{n}: {text.strip()}"
        for folder in ("core", "lake", "tui", "plugins")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path != REPO / "lake" / "sql.py"
        for n, text in enumerate(path.read_text().splitlines(), 1)
        if any(p.search(text) for p in HAND_QUOTING)
    ]
    assert found == []


def test_the_quoting_patterns_catch_the_old_copies() -> None:
    """The grep above recognises the copies that existed (so it can fail)."""
    old = [
        """return "'" + str(value).replace("'", "''") + "'" """,
        """safe = name.replace(chr(39), chr(39) * 2)""",
        """quoted = ", ".join(f"'{m}'" for m in wanted)""",
        """else f"array_has(tags, '{KIND_TAGS[k]}')" """,
        """return f"t_start IS NOT NULL AND (m IS NULL OR m != '{NO_AUDIO}')" """,
    ]
    assert all(any(p.search(line) for p in HAND_QUOTING) for line in old)
    message = """raise RejectedInput(f"{where}: part needs '{kind}': x")"""
    assert not any(p.search(message) for p in HAND_QUOTING)


# ---- every where-building path keeps a quoted dataset / label / tag -----------------------

QUOTED_WHERE = "label = 'it''s'"


def test_export_selects_a_quoted_dataset(quoted_lake: Path, tmp_path: Path) -> None:
    from lake.export import build_exporter, export

    exporter = build_exporter(
        {"_target_": "plugins.exporters.ClipPairsCsvExporter", "file": "pairs.csv",
         "image_column": "image", "caption_column": "caption", "label_column": "label"}
    )  # fmt: skip
    lake = Lake(quoted_lake)
    ids = lake.dataset(SAMPLES).to_table(columns=["sample_id"])["sample_id"]
    captions = pa.array(["a caption with a ' quote"] * len(ids))
    lake.update_columns(SAMPLES, pa.table({"sample_id": ids, "caption": captions}))
    report = export(lake, exporter, tmp_path / "out", dataset=DATASET, where=QUOTED_WHERE)
    text = (tmp_path / "out" / "pairs.csv").read_text()
    assert report["samples"] == 3
    assert text.count(LABEL) == 3 and "cat" not in text


def test_split_and_check_scope_a_quoted_dataset(quoted_lake: Path) -> None:
    from lake.check import scope
    from lake.split import split_lake

    lake = Lake(quoted_lake)
    split_lake(lake, {"train": 0.5, "val": 0.5}, where=scope(QUOTED_WHERE, DATASET))
    rows = lake.dataset(SAMPLES).to_table(columns=["dataset", "split"]).to_pylist()
    assert {r["dataset"] for r in rows if r["split"]} == {DATASET}
    assert sum(1 for r in rows if r["split"]) == 3


def test_data_module_selection_of_a_quoted_dataset_and_label(quoted_lake: Path) -> None:
    from core.data.lance_dataset import select

    lake = Lake(quoted_lake)
    selections, labels = select(
        lake.dataset(SAMPLES), lake.dataset("media"), where=QUOTED_WHERE, datasets=[DATASET]
    )
    assert labels == [LABEL]
    assert sum(len(s) for s in selections.values()) == 3


@pytest.fixture
def embedded(quoted_lake: Path, tmp_path: Path) -> tuple[Lake, object]:
    """The quoted lake embedded by a tiny CLIP saved in a folder named with a quote (so the
    enricher's owner, compared in SQL, holds one)."""
    import torch

    from core.models.clip import create_clip, save_open_clip
    from lake.enrich import enrich
    from plugins.clip_embed import ClipImageEmbedder

    torch.manual_seed(0)
    folder = tmp_path / "it's clip"
    save_open_clip(create_clip("tiny-clip", None)[0], None, folder)
    embedder = ClipImageEmbedder(pretrained=f"local-dir:{folder}", device="cpu")
    lake = Lake(quoted_lake)
    assert "'" in embedder.owner()
    first = enrich(embedder, lake, batch_size=4, write_batch=4, progress=False)
    again = enrich(embedder, lake, batch_size=4, write_batch=4, progress=False)
    assert (first.done, again.todo) == (5, 0)  # the owner comparison matched its own rows
    return lake, embedder


def test_enrich_query_and_check_with_quotes(embedded: tuple[Lake, object], tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from lake.check import build_checks, run_checks, scope
    from lake.query import search

    lake, embedder = embedded
    vector = embedder.embed_images([jpeg_bytes((0, 30, 90))])[0]
    hits = search(lake, vector, k=10, dataset=DATASET, where=QUOTED_WHERE)
    assert len(hits) == 3
    cfg = OmegaConf.load(REPO / "conf" / "check" / "default.yaml")
    cfg.checks = {"duplicates": cfg.checks.duplicates}
    run_checks(lake, build_checks(cfg), where=scope(QUOTED_WHERE, DATASET))
    rows = lake.dataset(SAMPLES).to_table(columns=["dataset", "check_duplicates_score"])
    scored = [r["dataset"] for r in rows.to_pylist() if r["check_duplicates_score"] is not None]
    assert scored == [DATASET] * 3
