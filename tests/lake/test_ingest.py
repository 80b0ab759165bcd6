"""The ingest runner against a real lake: keys, dedupe, rejects, provenance, idempotence."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.compute as pc
import pytest
from PIL import Image

from lake.images import ImageSettings, decode_image
from lake.ingest import IngestSettings, ingest
from lake.store import Lake
from plugins.image_folder import ImageFolderSource
from tests.conftest import jpeg_bytes

QUIET = IngestSettings(progress=False)


def _table(lake: Lake, name: str) -> list[dict]:
    return lake.dataset(name).to_table().to_pylist()


def test_image_folder_lands_with_keys_labels_and_provenance(class_folder: Path, lake: Lake) -> None:
    report = ingest(ImageFolderSource(class_folder), lake, settings=QUIET)
    assert (report.records, report.new_samples, report.rejected) == (8, 8, 0)
    assert report.dataset == "pets"
    media = {m["media_id"]: m for m in _table(lake, "media")}
    samples = _table(lake, "samples")
    # cat0.jpg and its byte-identical copy share one media row
    assert len(media) == 7 and len(samples) == 8
    import hashlib

    original = (class_folder / "cat" / "cat0.jpg").read_bytes()
    row = media[hashlib.sha256(original).hexdigest()]
    assert row["bytes"] == original  # byte for byte, never re-encoded
    assert (row["width"], row["height"], row["mime"], row["kind"]) == (
        64,
        48,
        "image/jpeg",
        "image",
    )
    assert 0 <= row["phash"] < 2**64
    assert Image.open(io.BytesIO(row["thumb"])).format == "JPEG"
    labels = sorted(s["label"] for s in samples)
    assert labels == ["cat"] * 5 + ["dog"] * 3
    prov = samples[0]["provenance"]
    assert prov["plugin"] == "image_folder" and prov["run_id"] == report.run_id
    assert [s["name"] for s in prov["steps"]][-1] == "canonicalize"
    assert [s["name"] for s in row["provenance"]["steps"]] == [
        "read",
        "decode_verify",
        "phash",
        "thumbnail",
    ]
    copies = [s for s in samples if s["media_ids"] == [row["media_id"]]]
    # every file stays a sample, so the duplicate check can report the copy
    assert {c["source_uri"] for c in copies} == {"cat/cat0.jpg", "cat/cat0_copy.jpg"}


def test_rerun_adds_nothing_and_creates_no_data_versions(class_folder: Path, lake: Lake) -> None:
    ingest(ImageFolderSource(class_folder), lake, settings=QUIET)
    versions = lake.current_versions()
    again = ingest(ImageFolderSource(class_folder), lake, settings=QUIET)
    assert again.new_samples == 0 and again.new_media == 0
    assert again.present_samples == 8
    assert again.images_processed == 0  # already-present media are not decoded again
    assert lake.current_versions() == versions
    keys = lake.dataset("samples").to_table(columns=["sample_id"]).column("sample_id")
    assert len(pc.unique(keys)) == len(keys)


def test_earlier_version_readable_by_number_and_run_tag(
    class_folder: Path, lake: Lake, tmp_path: Path
) -> None:
    first = ingest(ImageFolderSource(class_folder), lake, settings=QUIET)
    extra = tmp_path / "more" / "bird"
    extra.mkdir(parents=True)
    (extra / "b.jpg").write_bytes(jpeg_bytes((1, 2, 250)))
    ingest(ImageFolderSource(extra.parent), lake, settings=QUIET)
    n_now = lake.count("samples")
    assert lake.table("samples", version=first.run_id).count_rows() == n_now - 1
    v = lake.versions("samples")
    tagged = [x for x in v if first.run_id in x["tags"]]
    assert len(tagged) == 1
    assert lake.table("samples", version=tagged[0]["version"]).count_rows() == n_now - 1
    runs = lake.runs()
    assert [r["status"] for r in runs] == ["finished", "finished"]
    assert json.loads(runs[0]["counts"])["new_samples"] == first.new_samples


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("truncated.jpg", jpeg_bytes((9, 9, 9), size=(200, 200))[:600], "truncated"),
        ("garbage.jpg", b"this is not an image at all", "not a recognised image format"),
        ("empty.jpg", b"", "empty file"),
        ("icon.ico", None, "unsupported image format ICO"),
        ("huge.png", None, "decompression bomb"),
    ],
)
def test_each_bad_image_kind_is_rejected_with_location(
    tmp_path: Path, lake: Lake, name: str, payload: bytes | None, reason: str
) -> None:
    root = tmp_path / "ds"
    (root / "x").mkdir(parents=True)
    (root / "x" / "good.jpg").write_bytes(jpeg_bytes((100, 150, 200)))
    bad = root / "x" / name
    if name == "icon.ico":
        Image.new("RGB", (16, 16), (1, 2, 3)).save(bad, format="ICO")
    elif name == "huge.png":
        Image.new("L", (3000, 3000)).save(bad, format="PNG")  # 9 MP > the limit below
    else:
        bad.write_bytes(payload or b"")
    rejects = tmp_path / "rejects.jsonl"
    settings = IngestSettings(progress=False, image=ImageSettings(max_pixels=4_000_000))
    report = ingest(ImageFolderSource(root), lake, settings=settings, rejects_path=rejects)
    assert (report.new_samples, report.rejected) == (1, 1)
    lines = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert len(lines) == 1
    assert lines[0]["source_file"] == f"x/{name}"
    assert reason in lines[0]["reason"]
    assert lake.count("media") == 1


def test_multi_image_record_with_one_bad_image_lands_nothing(tmp_path: Path, lake: Lake) -> None:
    from plugins.llava import LlavaSource

    root = tmp_path / "conv"
    root.mkdir()
    (root / "a.jpg").write_bytes(jpeg_bytes((200, 0, 0)))
    (root / "b.jpg").write_bytes(b"\xff\xd8\xff broken")
    (root / "c.jpg").write_bytes(jpeg_bytes((0, 200, 0)))
    conv = lambda n: [  # noqa: E731
        {"from": "human", "value": "<image>" * n + " compare"},
        {"from": "gpt", "value": "they differ"},
    ]
    lines = [
        {"id": "1", "images": ["a.jpg", "b.jpg"], "conversations": conv(2)},
        {"id": "2", "images": ["c.jpg"], "conversations": conv(1)},
        "{not json",
        {"id": "4", "images": ["a.jpg", "c.jpg"], "conversations": conv(1)},
    ]
    (root / "data.jsonl").write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    )
    rejects = tmp_path / "r.jsonl"
    report = ingest(LlavaSource(root / "data.jsonl"), lake, settings=QUIET, rejects_path=rejects)
    assert (report.new_samples, report.rejected) == (1, 3)
    got = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [g["line"] for g in got] == [1, 3, 4]
    assert "image b.jpg" in got[0]["reason"]
    # a.jpg was valid but only used by rejected records: it must not land either
    assert lake.count("media") == 1
    assert _table(lake, "samples")[0]["source_uri"] == "data.jsonl#L2"


def test_exif_orientation_gives_upright_size_and_thumbnail(tmp_path: Path, lake: Lake) -> None:
    """The original bytes are kept; the recorded size and the thumbnail are upright, as
    decode_image gives the pixels."""
    root = tmp_path / "exif" / "x"
    root.mkdir(parents=True)
    img = Image.new("RGB", (200, 100), (250, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    (root / "r.jpg").write_bytes(buf.getvalue())
    ingest(ImageFolderSource(root.parent), lake, settings=QUIET)
    row = _table(lake, "media")[0]
    assert row["bytes"] == buf.getvalue()
    assert (row["width"], row["height"]) == (100, 200)
    assert decode_image(row["bytes"]).size == (100, 200)
    assert Image.open(io.BytesIO(row["thumb"])).size == (64, 128)


def test_worker_processes_give_the_same_lake_as_inline(class_folder: Path, tmp_path: Path) -> None:
    inline, pooled = Lake(tmp_path / "a"), Lake(tmp_path / "b")
    ingest(
        ImageFolderSource(class_folder), inline, settings=IngestSettings(workers=0, progress=False)
    )
    ingest(
        ImageFolderSource(class_folder),
        pooled,
        settings=IngestSettings(workers=2, chunk_size=2, write_batch=3, progress=False),
    )
    for name, key in (("media", "media_id"), ("samples", "sample_id")):
        a = inline.dataset(name).to_table(columns=[key, "source_uri"]).sort_by(key)
        b = pooled.dataset(name).to_table(columns=[key, "source_uri"]).sort_by(key)
        assert a.equals(b)


def test_ingest_after_embeddings_exist_leaves_new_vectors_null(
    class_folder: Path, lake: Lake, tmp_path: Path
) -> None:
    """New media arrive without embeddings once an enricher has added a vector column:
    lancedb rejects null vectors by default, the lake must not."""
    import pyarrow as pa

    ingest(ImageFolderSource(class_folder), lake, settings=QUIET)
    vec = pa.list_(pa.float32(), 64)
    lake.add_columns("media", [pa.field("clip_image", vec)])
    ids = lake.dataset("media").to_table(columns=["media_id"]).column("media_id").to_pylist()
    lake.update_columns(
        "media",
        pa.table({"media_id": ids, "clip_image": pa.array([[1.0] * 64] * len(ids), vec)}),
    )
    more = tmp_path / "more" / "bird"
    more.mkdir(parents=True)
    (more / "b0.jpg").write_bytes(jpeg_bytes((9, 200, 30)))
    report = ingest(ImageFolderSource(more.parent), lake, settings=QUIET)
    assert report.new_samples == 1
    rows = {r["media_id"]: r["clip_image"] for r in _table(lake, "media")}
    assert sum(v is None for v in rows.values()) == 1
    assert all(v == [1.0] * 64 for k, v in rows.items() if k in ids)
