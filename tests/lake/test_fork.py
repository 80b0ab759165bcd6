"""lake.fork: a full copy of a local lake without some columns; the source is untouched."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from lake.errors import ConfigError
from lake.fork import fork_lake, main
from lake.ingest import IngestSettings, ingest
from lake.store import Lake
from plugins.image_folder import ImageFolderSource

QUIET = IngestSettings(workers=0, progress=False)


def _lake_with_vectors(folder: Path, class_folder: Path) -> Lake:
    lake = Lake(folder)
    ingest(ImageFolderSource(class_folder), lake, settings=QUIET)
    lake.add_columns("media", [pa.field("clip_image", pa.list_(pa.float32(), 4))])
    return lake


def test_fork_drops_columns_and_keeps_rows(class_folder: Path, tmp_path: Path) -> None:
    src = _lake_with_vectors(tmp_path / "lake", class_folder)
    (tmp_path / "fork").mkdir()
    (tmp_path / "fork" / "stale.txt").write_text("replaced")
    dropped = fork_lake(src.uri, tmp_path / "fork", ["clip_image", "not_a_column"])
    assert dropped == {"media": ["clip_image"]}
    fork = Lake(tmp_path / "fork")
    assert not (tmp_path / "fork" / "stale.txt").exists()
    assert "clip_image" not in fork.dataset("media").schema.names
    assert "clip_image" in src.dataset("media").schema.names  # the source keeps it
    for name, key in (("media", "media_id"), ("samples", "sample_id")):
        a = src.dataset(name).to_table(columns=[key]).sort_by(key)
        b = fork.dataset(name).to_table(columns=[key]).sort_by(key)
        assert a.equals(b) and a.num_rows > 0
    assert not [p for p in tmp_path.iterdir() if ".fork-" in p.name]


def test_fork_command_and_errors(
    class_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _lake_with_vectors(tmp_path / "lake", class_folder)
    assert main([str(tmp_path / "lake"), str(tmp_path / "copy"), "--drop-embeddings"]) == 0
    assert "media: clip_image" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="no lake here"):
        fork_lake(tmp_path / "nothing", tmp_path / "x")
    with pytest.raises(ConfigError, match="local lakes only"):
        fork_lake("s3://bucket/lake", tmp_path / "x")


def test_a_fork_whose_copy_cannot_land_leaves_dst_as_it_was(
    class_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import lake.fork as fork_module

    src = _lake_with_vectors(tmp_path / "lake", class_folder)
    (tmp_path / "fork").mkdir()
    (tmp_path / "fork" / "mine.txt").write_text("kept")
    real_replace = os.replace

    def replace(a: str | Path, b: str | Path) -> None:
        if ".fork-" in str(a):  # the new copy moving in: the disk refuses it
            raise OSError("no space left on device")
        real_replace(a, b)

    monkeypatch.setattr(fork_module.os, "replace", replace)
    with pytest.raises(OSError, match="no space"):
        fork_lake(src.uri, tmp_path / "fork")
    assert (tmp_path / "fork" / "mine.txt").read_text() == "kept"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fork")]  # no half copy
