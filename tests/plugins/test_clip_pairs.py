"""ClipPairsSource: CSV / JSONL / Parquet image-caption pairs, inline bytes, rejects."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import plugins.clip_pairs as clip_pairs
from lake.records import Location, Reject, SourceRecord
from plugins.clip_pairs import ClipPairsSource
from tests.conftest import jpeg_bytes, png_bytes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``pairs/`` with ``img/a.jpg``, ``img/b.png`` and ``../outside.jpg``."""
    ds = tmp_path / "pairs"
    (ds / "img").mkdir(parents=True)
    (ds / "img" / "a.jpg").write_bytes(jpeg_bytes((200, 0, 0)))
    (ds / "img" / "b.png").write_bytes(png_bytes((0, 0, 200)))
    (tmp_path / "outside.jpg").write_bytes(jpeg_bytes((0, 200, 0)))
    return ds


def _split(got: list[SourceRecord | Reject]) -> tuple[list[SourceRecord], list[Reject]]:
    return (
        [r for r in got if isinstance(r, SourceRecord)],
        [r for r in got if isinstance(r, Reject)],
    )


def test_csv_records_lines_labels_and_rejects(root: Path) -> None:
    (root / "pairs.csv").write_text(
        "image,caption,label\n"
        "img/a.jpg,a red square,cat\n"
        "img/b.png,,dog\n"
        'img/b.png,"a blue\nsquare on two lines",\n'
        "\n"
        "img/missing.jpg,nothing,cat\n"
        "../outside.jpg,escapes,cat\n"
        "img/a.jpg,too,many,fields\n"
        "img/b.png,  ,dog\n"
        "img/a.jpg,red again,3\n"
    )
    got = list(ClipPairsSource(root / "pairs.csv", label_column="label").records())
    records, rejects = _split(got)
    assert [(r.location, r.caption, r.label) for r in records] == [
        (Location("pairs.csv", line=2), "a red square", "cat"),
        (Location("pairs.csv", line=4), "a blue\nsquare on two lines", None),
        (Location("pairs.csv", line=11), "red again", "3"),
    ]
    assert [[m.source_uri for m in r.media] for r in records] == [
        ["img/a.jpg"],
        ["img/b.png"],
        ["img/a.jpg"],
    ]
    assert records[0].media[0].path == (root / "img" / "a.jpg").resolve()
    assert records[0].steps == [("parse_clip_pairs", {"format": "csv"})]
    assert records[0].messages == []
    expected = [
        (3, "missing caption (column 'caption')"),
        (7, "image file not found: img/missing.jpg"),
        (8, "image path escapes the dataset root"),
        (9, "expected 3 fields, got 4"),
        (10, "missing caption"),
    ]
    assert [r.location for r in rejects] == [Location("pairs.csv", line=n) for n, _ in expected]
    for reject, (_, reason) in zip(rejects, expected, strict=True):
        assert reason in reject.reason


def test_missing_column_is_one_reject_per_file_and_other_files_still_read(root: Path) -> None:
    (root / "a_bad.csv").write_text("image,text\nimg/a.jpg,red\nimg/b.png,blue\n")
    (root / "b_good.csv").write_text("image,caption\nimg/b.png,blue\n")
    pq.write_table(pa.table({"image": ["img/a.jpg"], "text": ["red"]}), root / "c_bad.parquet")
    (root / "notes.txt").write_text("not a table")
    got = list(ClipPairsSource(root).records())
    records, rejects = _split(got)
    assert [(r.location, r.caption) for r in records] == [(Location("b_good.csv", line=2), "blue")]
    assert [r.location for r in rejects] == [
        Location("a_bad.csv", line=1),
        Location("c_bad.parquet"),
    ]
    assert all("missing column(s) 'caption'" in r.reason for r in rejects)
    assert "(columns: image, text)" in rejects[0].reason
    label_missing = list(ClipPairsSource(root / "b_good.csv", label_column="label").records())
    assert len(label_missing) == 1
    assert isinstance(label_missing[0], Reject)
    assert "missing column(s) 'label'" in label_missing[0].reason


def test_jsonl_records_data_url_and_rejects(root: Path) -> None:
    raw = png_bytes((5, 5, 5))
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    lines = [
        json.dumps({"image": "img/a.jpg", "caption": "red", "label": "warm"}),
        "{broken",
        json.dumps({"image": url, "caption": "inline grey"}),
        json.dumps({"image": "img/b.png"}),
        json.dumps({"caption": "no image"}),
        json.dumps({"image": str((root / "img" / "a.jpg").resolve()), "caption": "abs"}),
        json.dumps({"image": "https://example.com/x.jpg", "caption": "url"}),
        json.dumps({"image": "img/b.png", "caption": 7}),
        json.dumps({"image": "img/b.png", "caption": "blue", "label": 2}),
    ]
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    got = list(ClipPairsSource(root / "pairs.jsonl", label_column="label").records())
    records, rejects = _split(got)
    assert [(r.location.line, r.caption, r.label) for r in records] == [
        (1, "red", "warm"),
        (3, "inline grey", None),
        (9, "blue", "2"),
    ]
    assert records[1].media[0].data == raw
    assert records[1].media[0].path is None
    assert records[0].steps == [("parse_clip_pairs", {"format": "jsonl"})]
    expected = [
        (2, "malformed JSON line"),
        (4, "missing caption"),
        (5, "missing field 'image'"),
        (6, "absolute image path not allowed"),
        (7, "URL image references are not allowed"),
        (8, "caption must be a string, got int"),
    ]
    assert [r.location for r in rejects] == [Location("pairs.jsonl", line=n) for n, _ in expected]
    for reject, (_, reason) in zip(rejects, expected, strict=True):
        assert reason in reject.reason


def test_parquet_paths_inline_bytes_and_hf_struct_across_batches(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clip_pairs, "BATCH_ROWS", 2)  # rows span three record batches
    a, b = (root / "img" / "a.jpg").read_bytes(), (root / "img" / "b.png").read_bytes()
    pq.write_table(
        pa.table(
            {
                "image": pa.array([b"", a, b, None, a], pa.binary()),
                "caption": ["empty bytes", "red", "blue", "no image", None],
                "label": pa.array([0, 1, 2, 3, 4], pa.int64()),
            }
        ),
        root / "inline.parquet",
    )
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(
        pa.table(
            {
                "image": pa.array(
                    [
                        {"bytes": a, "path": "cat_001.jpg"},
                        {"bytes": b, "path": None},
                        {"bytes": None, "path": "img/a.jpg"},
                        {"bytes": None, "path": None},
                    ],
                    struct,
                ),
                "caption": ["hf red", "hf blue", "hf path", "hf nothing"],
                "label": pa.array([7, 8, 9, 10], pa.int64()),
            }
        ),
        root / "struct.parquet",
    )
    src = ClipPairsSource(root, label_column="label")
    assert src.count() == 9
    records, rejects = _split(list(src.records()))
    assert [(r.location, r.caption, r.label) for r in records] == [
        (Location("inline.parquet", row=1), "red", "1"),
        (Location("inline.parquet", row=2), "blue", "2"),
        (Location("struct.parquet", row=0), "hf red", "7"),
        (Location("struct.parquet", row=1), "hf blue", "8"),
        (Location("struct.parquet", row=2), "hf path", "9"),
    ]
    media = [r.media[0] for r in records]
    assert [m.source_uri for m in media] == [
        "inline.parquet#1",
        "inline.parquet#2",
        "cat_001.jpg",
        "struct.parquet#1",
        "img/a.jpg",
    ]
    assert [m.data for m in media] == [a, b, a, b, None]
    assert media[4].path == (root / "img" / "a.jpg").resolve()
    assert records[0].steps == [("parse_clip_pairs", {"format": "parquet"})]
    expected = [
        (Location("inline.parquet", row=0), "empty inline image bytes"),
        (Location("inline.parquet", row=3), "missing image (column 'image')"),
        (Location("inline.parquet", row=4), "missing caption (column 'caption')"),
        (Location("struct.parquet", row=3), "image struct has neither bytes nor path"),
    ]
    assert [r.location for r in rejects] == [loc for loc, _ in expected]
    for reject, (_, reason) in zip(rejects, expected, strict=True):
        assert reason in reject.reason


def test_corrupt_parquet_and_unsupported_file(root: Path) -> None:
    (root / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (reject,) = ClipPairsSource(root / "broken.parquet").records()
    assert isinstance(reject, Reject)
    assert reject.location == Location("broken.parquet")
    assert "cannot read Parquet" in reject.reason
    assert ClipPairsSource(root / "broken.parquet").count() is None
    (root / "pairs.tsv").write_text("image\tcaption\n")
    with pytest.raises(ValueError, match=r"\.csv, \.jsonl or \.parquet"):
        ClipPairsSource(root / "pairs.tsv").validate()
    (unsupported,) = ClipPairsSource(root / "pairs.tsv").records()
    assert isinstance(unsupported, Reject)
    assert "unsupported file type '.tsv'" in unsupported.reason


def test_custom_columns_and_config(root: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    (root / "t.csv").write_text("file,text,cls\nimg/b.png,blue square,b\n")
    cfg = OmegaConf.load(REPO / "conf" / "source" / "clip_pairs.yaml")
    cfg.path = str(root / "t.csv")
    cfg.image_column, cfg.caption_column, cfg.label_column = "file", "text", "cls"
    src = instantiate(cfg)
    assert isinstance(src, ClipPairsSource)
    assert (src.name, src.version, src.count()) == ("clip_pairs", "0.1.0", None)
    (rec,) = src.records()
    assert isinstance(rec, SourceRecord)
    assert (rec.caption, rec.label, rec.media[0].source_uri) == ("blue square", "b", "img/b.png")
    assert src.params() == {
        "path": str(root / "t.csv"),
        "allow_absolute": False,
        "allow_outside_root": False,
        "allow_urls": False,
        "max_media_bytes": 64 * 2**20,  # conf/source default
        "max_line_bytes": 64 * 2**20,
        "image_column": "file",
        "caption_column": "text",
        "label_column": "cls",
    }
