"""Source plugin: images under class-named subfolders (``root/<label>/**/<image>``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from lake.plugin import Source
from lake.records import Location, MediaRef, Reject, SourceRecord

SIDECARS = frozenset({".txt", ".json", ".jsonl", ".csv", ".md", ".parquet", ".caption", ".xml"})


class ImageFolderSource(Source):
    """One sample per image, labelled with the name of its top-level class folder.

    Files directly in the root (metadata, READMEs) are ignored; every other non-hidden
    file under a class folder is an image candidate, so a corrupt or unsupported file is
    rejected rather than silently skipped. With ``caption_sidecar`` a ``<stem>.txt`` next
    to an image becomes its caption.
    """

    name = "image_folder"
    version = "0.1.0"

    def __init__(self, path: str | Path, caption_sidecar: bool = False, **kwargs: bool) -> None:
        super().__init__(path, **kwargs)
        self.caption_sidecar = caption_sidecar
        self._files: list[Path] | None = None

    def validate(self) -> None:
        """The path must be a folder."""
        super().validate()
        if not self.path.is_dir():
            raise NotADirectoryError(f"image_folder source.path must be a folder: {self.path}")

    def _list(self) -> list[Path]:
        if self._files is None:
            files: list[Path] = []
            for class_dir in sorted(p for p in self.path.iterdir() if p.is_dir()):
                if class_dir.name.startswith("."):
                    continue
                for dirpath, dirnames, filenames in os.walk(class_dir):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    for fn in sorted(filenames):
                        if fn.startswith(".") or Path(fn).suffix.lower() in SIDECARS:
                            continue
                        files.append(Path(dirpath) / fn)
            self._files = files
        return self._files

    def count(self) -> int:
        """Number of image candidates."""
        return len(self._list())

    def params(self) -> dict[str, object]:
        """Options recorded in provenance."""
        return {**super().params(), "caption_sidecar": self.caption_sidecar}

    def records(self) -> Iterator[SourceRecord | Reject]:
        """One record per image candidate."""
        root = self.path.resolve()
        steps = [("scan_class_folders", {"label_from": "top-level folder"})]  # shared: cheap
        for file in self._list():
            rel = file.relative_to(self.path).as_posix()
            label = rel.split("/", 1)[0]
            caption = None
            if self.caption_sidecar:
                side = file.with_suffix(".txt")
                if side.is_file():
                    try:
                        caption = side.read_text(encoding="utf-8").strip() or None
                    except UnicodeDecodeError as exc:
                        yield Reject(
                            Location(side.relative_to(self.path).as_posix()), f"caption: {exc}"
                        )
                        continue
            yield SourceRecord(
                location=Location(rel),
                media=[MediaRef(source_uri=rel, path=root / rel)],
                label=label,
                caption=caption,
                key=rel,
                steps=steps,
            )
