"""image_folder resolves a plain file through its folder (one lstat a file) and leaves
symlinks and special files to checked_file: the same paths and rejects either way."""

from __future__ import annotations

import os
from pathlib import Path

from lake.records import Reject, SourceRecord
from lake.sources import checked_file
from plugins.image_folder import ImageFolderSource
from tests.conftest import jpeg_bytes


def test_resolved_paths_and_rejects_match_checked_file(tmp_path: Path) -> None:
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg_bytes((1, 2, 3)))
    real_root = tmp_path / "real"
    (real_root / "cat" / "sub").mkdir(parents=True)
    (real_root / "cat" / "a.jpg").write_bytes(jpeg_bytes((9, 9, 9)))
    (real_root / "cat" / "sub" / "b.jpg").write_bytes(jpeg_bytes((8, 8, 8)))
    (real_root / "cat" / "inside_link.jpg").symlink_to(real_root / "cat" / "a.jpg")
    (real_root / "cat" / "escape.jpg").symlink_to(outside)
    os.mkfifo(real_root / "cat" / "pipe.jpg")
    (real_root / "cat" / "big.jpg").write_bytes(b"x" * 5000)
    root = tmp_path / "linked_root"
    root.symlink_to(real_root)  # the root itself through a symlink

    source = ImageFolderSource(root, max_media_bytes=4000)
    out = {r.location.file: r for r in source.records()}
    resolved = {rel: rec.media[0].path for rel, rec in out.items() if isinstance(rec, SourceRecord)}
    real = os.path.realpath(root)
    assert resolved == {
        rel: checked_file(os.path.join(root, rel), real, 4000)
        for rel in ("cat/a.jpg", "cat/inside_link.jpg", "cat/sub/b.jpg")
    }
    assert resolved["cat/inside_link.jpg"] == resolved["cat/a.jpg"] == str(real_root / "cat/a.jpg")
    reasons = {rel: rec.reason for rel, rec in out.items() if isinstance(rec, Reject)}
    assert reasons["cat/escape.jpg"].startswith("symlink escapes the dataset root")
    assert reasons["cat/pipe.jpg"] == "not a regular file (FIFO)"
    assert reasons["cat/big.jpg"].startswith("file is ")
