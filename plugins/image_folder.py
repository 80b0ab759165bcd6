"""Source plugin: images under class-named subfolders (``root/<label>/**/<image>``)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from lake.errors import RejectedInput
from lake.plugin import Source
from lake.records import Location, MediaRef, Reject, SourceRecord
from lake.sources import checked_file, confined_root, read_text_file

SIDECARS = frozenset({".txt", ".json", ".jsonl", ".csv", ".md", ".parquet", ".caption", ".xml"})


class ImageFolderSource(Source):
    """One sample per image, labelled with the name of its top-level class folder.

    Files directly in the root (metadata, READMEs) are ignored; every other non-hidden
    file under a class folder is an image candidate, so a corrupt or unsupported file is
    rejected rather than silently skipped. With ``caption_sidecar`` a ``<stem>.txt`` next
    to an image becomes its caption. Symlinks that resolve outside the root, and anything
    that is not a regular file, are rejected (see :func:`lake.sources.checked_file`).
    """

    name = "image_folder"
    version = "0.1.0"

    def __init__(self, path: str | Path, caption_sidecar: bool = False, **kwargs: bool) -> None:
        super().__init__(path, **kwargs)
        self.caption_sidecar = caption_sidecar
        self._files: list[tuple[str, str]] | None = None  # (path relative to root, full path)

    def validate(self) -> None:
        """The path must be a folder."""
        super().validate()
        if not self.path.is_dir():
            raise NotADirectoryError(f"image_folder source.path must be a folder: {self.path}")

    def _list(self) -> list[tuple[str, str]]:
        # Plain strings: pathlib costs more than the image hashing on small images.
        if self._files is None:
            root = str(self.path.resolve())
            files: list[tuple[str, str]] = []
            for class_dir in sorted(os.listdir(root)):
                top = os.path.join(root, class_dir)
                if class_dir.startswith(".") or not os.path.isdir(top):
                    continue
                if os.path.islink(top) and not self.policy.allow_outside_root:
                    real = os.path.realpath(top)
                    if not (real + os.sep).startswith(root.rstrip(os.sep) + os.sep):
                        # listed as one candidate, rejected by records(), never walked
                        files.append((class_dir, top))
                        continue
                for dirpath, dirnames, filenames in os.walk(top):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
                    for fn in sorted(filenames):
                        if fn.startswith(".") or os.path.splitext(fn)[1].lower() in SIDECARS:
                            continue
                        files.append((f"{rel_dir}/{fn}", os.path.join(dirpath, fn)))
            self._files = files
        return self._files

    def count(self) -> int:
        """Number of image candidates."""
        return len(self._list())

    def params(self) -> dict[str, object]:
        """Options recorded in provenance."""
        return {**super().params(), "caption_sidecar": self.caption_sidecar}

    def records(self) -> Iterator[SourceRecord | Reject]:
        """One record per image candidate.

        Each image (and its sidecar) must resolve, symlinks included, to a regular file
        inside the dataset root (unless ``allow_outside_root``) within the size limits;
        otherwise the image is a Reject with the reason and the folder goes on.
        """
        steps = [("scan_class_folders", {"label_from": "top-level folder"})]  # shared: cheap
        root = confined_root(self.path, self.policy)
        limit = self.policy.max_media_bytes
        real_dirs: dict[str, str | None] = {}
        for rel, full in self._list():
            label = rel.split("/", 1)[0]
            real = _plain_file(full, root, limit, real_dirs)
            if real is None:
                try:
                    real = checked_file(full, root, limit)
                except RejectedInput as exc:
                    yield Reject(Location(rel), exc.reason)
                    continue
            caption = None
            if self.caption_sidecar:
                side = os.path.splitext(full)[0] + ".txt"
                if os.path.lexists(side):
                    try:
                        text = read_text_file(side, root, self.policy.max_line_bytes)
                    except RejectedInput as exc:
                        side_rel = rel.rsplit(".", 1)[0] + ".txt"
                        yield Reject(Location(side_rel), f"caption: {exc.reason}")
                        continue
                    caption = text.strip() or None
            yield SourceRecord(
                location=Location(rel),
                media=[MediaRef(source_uri=rel, path=real)],
                label=label,
                caption=caption,
                key=rel,
                steps=steps,
            )


def _plain_file(
    full: str, root: str | None, limit: int | None, real_dirs: dict[str, str | None]
) -> str | None:
    """The resolved path of ``full`` when it is a regular file (not a symlink) of at most
    ``limit`` bytes in a folder that resolves inside ``root``: what :func:`checked_file`
    answers, with one ``lstat`` instead of resolving every path component of every file.
    None: anything else (a symlink, a FIFO, ...), which :func:`checked_file` then judges.
    """
    folder, _, name = full.rpartition(os.sep)  # os.path.split costs more than the lstat
    if folder not in real_dirs:
        real = os.path.realpath(folder)
        inside = root is None or real == root or real.startswith(root.rstrip(os.sep) + os.sep)
        real_dirs[folder] = real if inside else None
    real_folder = real_dirs[folder]
    if real_folder is None:
        return None
    try:
        st = os.lstat(full)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode) or (limit is not None and st.st_size > limit):
        return None
    return f"{real_folder.rstrip(os.sep)}{os.sep}{name}"
