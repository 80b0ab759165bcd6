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


def test_no_copy_of_the_sql_quoting_outside_lake_sql() -> None:
    copies = re.compile(r"""replace\(\s*"'"\s*,\s*"''"\s*\)""")
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("lake", "tui", "plugins")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path != REPO / "lake" / "sql.py"
        for n, text in enumerate(path.read_text().splitlines(), 1)
        if copies.search(text)
    ]
    assert found == []
