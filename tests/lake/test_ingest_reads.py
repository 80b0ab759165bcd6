"""Files read and hashed by the ingest workers, and batches appended instead of merged:
the same lake as before, re-runs that decode nothing, and no duplicate keys when another
writer comes in between."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lake import ids
from lake.images import ImageSettings
from lake.ingest import (
    IngestSettings,
    _Feeder,
    _ingest,
    _KeyPrefixes,
    _process_chunk_inline,
    _Writer,
    ingest,
)
from lake.job import RunContext
from lake.schema import MEDIA, SAMPLES
from lake.store import Lake
from plugins.image_folder import ImageFolderSource
from tests.conftest import jpeg_bytes

# provenance holds the run's id and time: the rest of every row must be equal
COMPARED = {MEDIA: "media_id", SAMPLES: "sample_id"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Good JPEGs, a byte-identical copy, a corrupt and an empty file, a text sidecar."""
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    for i in range(9):
        (root / ("a" if i % 2 else "b") / f"{i}.jpg").write_bytes(jpeg_bytes((25 * i, 90, 9 * i)))
    (root / "a" / "copy.jpg").write_bytes((root / "b" / "0.jpg").read_bytes())
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "b" / "empty.jpg").write_bytes(b"")
    return root


def _rows(lake: Lake, name: str) -> list[dict[str, Any]]:
    table = lake.dataset(name).to_table()
    table = table.drop_columns(["provenance"]).sort_by(COMPARED[name])
    return table.to_pylist()


def _main_process_reads(feeder: _Feeder, consume: Any) -> None:
    """The protocol before workers read files: the main process reads and hashes them."""
    for task in feeder.tasks():
        consume(*_process_chunk_inline(task, ImageSettings()))


def _rejects(path: Path) -> list[dict[str, Any]]:
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=str)


def test_rows_read_in_workers_equal_rows_read_by_the_main_process(
    folder: Path, tmp_path: Path
) -> None:
    workers, main = Lake(tmp_path / "workers"), Lake(tmp_path / "main")
    settings = IngestSettings(workers=2, chunk_size=3, write_batch=4, progress=False)
    got = ingest(ImageFolderSource(folder), workers, settings=settings, rejects_path=tmp_path / "w")
    ctx = RunContext("ingest", "ingest-main-reads", "", "")
    want = _ingest(
        ImageFolderSource(folder), main, "imgs", settings, ctx, tmp_path / "m", _main_process_reads
    )
    assert (got.new_samples, got.new_media, got.rejected) == (10, 9, 2)
    assert (want.new_samples, want.new_media, want.rejected) == (10, 9, 2)
    assert got.images_processed == want.images_processed == 9  # the copy counts once
    for name in COMPARED:
        assert _rows(workers, name) == _rows(main, name)
    assert _rejects(tmp_path / "w") == _rejects(tmp_path / "m")
    reasons = {r["source_file"]: r["reason"] for r in _rejects(tmp_path / "w")}
    assert reasons["a/corrupt.jpg"].startswith("image a/corrupt.jpg: ")
    assert reasons["b/empty.jpg"] == "image b/empty.jpg: empty file"


def test_rerun_decodes_only_new_files(folder: Path, lake: Lake) -> None:
    settings = IngestSettings(workers=2, chunk_size=3, progress=False)
    ingest(ImageFolderSource(folder), lake, settings=settings)
    (folder / "a" / "new.jpg").write_bytes(jpeg_bytes((1, 2, 3)))
    again = ingest(ImageFolderSource(folder), lake, settings=settings)
    assert (again.new_samples, again.present_samples, again.new_media) == (1, 10, 1)
    assert again.images_processed == 1
    keys = lake.dataset(MEDIA).to_table(columns=["media_id"]).column(0)
    assert len(pc.unique(keys)) == len(keys) == 10


def test_a_key_sharing_a_lake_keys_prefix_is_decoded_by_the_main_process(
    folder: Path, lake: Lake
) -> None:
    real = ids.media_id((folder / "b" / "2.jpg").read_bytes())
    other = real[:16] + ("0" * 48 if real[16:] != "0" * 48 else "1" * 48)
    assert _KeyPrefixes({other}).contains(real) and not _KeyPrefixes({other}).contains("f" * 64)
    lake.insert_new(MEDIA, pa.table({"media_id": [other], "kind": ["image"]}))
    settings = IngestSettings(workers=2, chunk_size=3, progress=False)
    report = ingest(ImageFolderSource(folder), lake, settings=settings)
    assert report.new_samples == 10
    row = lake.dataset(MEDIA).to_table(filter=f"media_id = '{real}'").to_pylist()[0]
    assert row["phash"] is not None and row["width"] == 64


def test_append_while_the_table_is_unchanged_else_merge(lake: Lake) -> None:
    def rows(*keys: str) -> pa.Table:
        return pa.table({"media_id": list(keys), "kind": ["image"] * len(keys)})

    lake.insert_new(MEDIA, rows("x0"))
    _, version = lake.keys_at(MEDIA)
    writer = _Writer(lake, 10)
    writer.versions = {MEDIA: version}
    assert writer.write(MEDIA, rows("y0", "y1")) == 2
    assert writer.versions[MEDIA] == lake.keys_at(MEDIA)[1] > version  # still appending
    lake.insert_new(MEDIA, rows("x1"))  # another writer
    assert writer.write(MEDIA, rows("x1", "y2")) == 1  # merged: x1 is not written twice
    assert MEDIA not in writer.versions
    keys = lake.dataset(MEDIA).to_table(columns=["media_id"]).column(0).to_pylist()
    assert sorted(keys) == ["x0", "x1", "y0", "y1", "y2"]


class _DiesBetweenCommits(Lake):
    """A lake whose process dies after the first media batch, before its samples."""

    def append_new(self, name: str, rows: pa.Table, version: int) -> int | None:
        if name == SAMPLES:
            raise SystemExit("killed between the media and the samples commit")
        return super().append_new(name, rows, version)


def test_a_crash_between_media_and_samples_commits_converges(folder: Path, tmp_path: Path) -> None:
    settings = IngestSettings(workers=0, chunk_size=3, write_batch=4, progress=False)
    clean = Lake(tmp_path / "clean")
    ingest(ImageFolderSource(folder), clean, settings=settings)
    crashed = _DiesBetweenCommits(tmp_path / "crashed")
    with pytest.raises(SystemExit):
        ingest(ImageFolderSource(folder), crashed, settings=settings)
    assert crashed.count(MEDIA) == 4 and crashed.count(SAMPLES) == 0
    rerun = Lake(tmp_path / "crashed")
    report = ingest(ImageFolderSource(folder), rerun, settings=settings)
    assert report.new_samples == 10 and report.new_media == 5
    for name in COMPARED:
        assert _rows(rerun, name) == _rows(clean, name)


def test_read_sizes_its_buffer_by_the_file_and_still_enforces_the_limit(tmp_path: Path) -> None:
    from lake.errors import RejectedInput
    from lake.ingest import _read

    empty, small, big = tmp_path / "empty", tmp_path / "small", tmp_path / "big"
    empty.write_bytes(b"")
    small.write_bytes(b"x" * 1000)
    big.write_bytes(bytes(range(256)) * 5000)  # 1.28 MB: more than one read
    assert _read(empty, 64) == b""
    assert _read(small, 1000) == b"x" * 1000
    assert _read(big, None) == big.read_bytes()
    with pytest.raises(RejectedInput, match="max_media_bytes"):
        _read(small, 999)
    with pytest.raises(RejectedInput, match="not a regular file"):
        _read(tmp_path, None)


@pytest.mark.parametrize("type_", [pa.binary(), pa.large_binary()])
def test_binary_columns_built_from_buffers_equal_pyarrows_own(type_: pa.DataType) -> None:
    from lake.ingest import _array

    for values in ([b"ab", b"", None, b"\x00" * 300, None], [None, None], [b"only"], []):
        built = _array(values, type_)
        built.validate(full=True)
        assert built.type == type_ and built.equals(pa.array(values, type_))
        assert built.null_count == values.count(None) and built.to_pylist() == values


def test_phash_int_is_the_hex_hash_as_an_integer() -> None:
    import io

    import imagehash
    import numpy as np
    from PIL import Image

    from lake.images import hash_int, phash_int

    for color in ((0, 0, 0), (250, 10, 10), (30, 200, 90)):
        img = Image.open(io.BytesIO(jpeg_bytes(color)))
        img.load()
        assert phash_int(img) == int(str(imagehash.phash(img)), 16)
    # leading zero bits and the top bit set: what the hex string gave, bit for bit
    for bits in (0, 1, 2**63, 2**64 - 1, 0x00FF00FF00FF00FF):
        arr = np.array([[(bits >> (63 - 8 * r - c)) & 1 for c in range(8)] for r in range(8)])
        h = imagehash.ImageHash(arr.astype(bool))
        assert hash_int(h) == int(str(h), 16) == bits


def test_an_ingest_leaves_the_garbage_collector_as_it_found_it(folder: Path, lake: Lake) -> None:
    import gc

    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    settings = IngestSettings(workers=0, chunk_size=4, progress=False)
    assert ingest(ImageFolderSource(folder), lake, settings=settings).new_samples == 10
    assert gc.get_threshold() == threshold and gc.get_freeze_count() == frozen
    dies = _DiesBetweenCommits(lake.uri + "-dies")
    with pytest.raises(SystemExit):  # and when the run dies in its commit
        ingest(ImageFolderSource(folder), dies, settings=settings)
    assert gc.get_threshold() == threshold and gc.get_freeze_count() == frozen
    gc.freeze()  # someone else's freeze (a forking server's) stays as it was
    try:
        before = gc.get_freeze_count()
        report = ingest(ImageFolderSource(folder), Lake(lake.uri + "-2"), settings=settings)
        # not unfrozen (0) by the run; frozen objects that died meanwhile leave the count
        assert report.new_samples == 10 and before >= gc.get_freeze_count() > before - 1000
    finally:
        gc.unfreeze()
