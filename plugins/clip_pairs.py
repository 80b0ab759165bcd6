"""Source plugin: image + caption pairs (optionally labelled) from CSV, JSONL or Parquet."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lake.errors import RejectedInput
from lake.plugin import Source
from lake.records import Location, MediaRef, Reject, SourceRecord
from lake.sources import (
    RECORD_ERRORS,
    bounded_lines,
    checked_file,
    confined_root,
    dataset_files,
    iter_json_records,
    json_type,
    record_error,
    relative_name,
    resolve_media,
    too_big,
)

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
BATCH_ROWS = 256


class ClipPairsSource(Source):
    """One sample per row: an image, its caption and an optional label.

    The format follows the file extension (``.csv``, ``.jsonl``, ``.parquet``); ``path``
    is one such file or a folder whose top-level files of those types are read in name
    order. The image cell is a path (relative to the dataset root, or ``file://`` /
    ``data:`` URL), inline bytes (a binary Parquet column; ``source_uri`` is
    ``FILE#ROW``) or a Hugging Face ``Image`` struct ``{bytes, path}``. A missing or empty
    caption rejects the row; a column missing from a CSV or Parquet header rejects the
    whole file once. Locations: CSV and JSONL give the line (the CSV header is line 1),
    Parquet the 0-based row. Parquet is streamed in record batches.
    """

    name = "clip_pairs"
    version = "0.1.0"

    def __init__(
        self,
        path: str | Path,
        image_column: str = "image",
        caption_column: str = "caption",
        label_column: str | None = None,
        **kwargs: bool,
    ) -> None:
        super().__init__(path, **kwargs)
        self.image_column = image_column
        self.caption_column = caption_column
        self.label_column = label_column or None

    @property
    def columns(self) -> list[str]:
        """The columns every file must have."""
        cols = [self.image_column, self.caption_column]
        return [*cols, self.label_column] if self.label_column else cols

    def files(self) -> list[Path]:
        """The table files to read, in order."""
        return dataset_files(self.path, tuple(FORMATS))

    def validate(self) -> None:
        """The path must be a supported file, or a folder holding at least one."""
        super().validate()
        if not self.files():
            raise FileNotFoundError(f"no .csv, .jsonl or .parquet files in {self.path}")
        if self.path.is_file() and self.path.suffix.lower() not in FORMATS:
            raise ValueError(f"clip_pairs reads .csv, .jsonl or .parquet, not {self.path.name}")

    def count(self) -> int | None:
        """Row count from the Parquet footers when every file is Parquet, else None."""
        files = self.files()
        if not files or any(f.suffix.lower() != ".parquet" for f in files):
            return None
        import pyarrow.parquet as pq

        try:
            return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        except Exception:  # a corrupt footer is reported by records(), not here
            return None

    def params(self) -> dict[str, object]:
        """Options recorded in provenance."""
        return {
            **super().params(),
            "image_column": self.image_column,
            "caption_column": self.caption_column,
            "label_column": self.label_column,
        }

    def records(self) -> Iterator[SourceRecord | Reject]:
        """One record per row of every file; a bad row or file becomes a Reject.

        Any error while reading one row or resolving its image (an OSError, a ValueError,
        a RecursionError) rejects that row only. A table file must itself be a regular
        file inside the root (symlinks resolved).
        """
        # a file named as source.path was chosen by the user: only the folder's are confined
        confine = None if self.path.is_file() else confined_root(self.root, self.policy)
        for file in self.files():
            rel = relative_name(file, self.root)
            try:
                checked_file(file, confine)
            except RejectedInput as exc:
                yield Reject(Location(rel), f"dataset file: {exc.reason}")
                continue
            fmt = FORMATS.get(file.suffix.lower())
            if fmt is None:
                yield Reject(
                    Location(rel), f"unsupported file type {file.suffix!r} (.csv, .jsonl, .parquet)"
                )
                continue
            rows = {"csv": self._csv, "jsonl": self._jsonl, "parquet": self._parquet}[fmt]
            try:
                for item in rows(file, rel):
                    if isinstance(item, Reject):
                        yield item
                        continue
                    location, image, caption, label = item
                    try:
                        yield self._record(location, image, caption, label, fmt)
                    except RECORD_ERRORS as exc:
                        yield Reject(location, record_error(exc))
            except OSError as exc:
                yield Reject(Location(rel), f"cannot read file: {exc.strerror or exc}")

    def _missing(self, names: list[str]) -> str | None:
        missing = [c for c in self.columns if c not in names]
        if not missing:
            return None
        return f"missing column(s) {', '.join(map(repr, missing))} (columns: {', '.join(names)})"

    def _csv(
        self, file: Path, rel: str
    ) -> Iterator[tuple[Location, object, object, object] | Reject]:
        limit = self.policy.max_line_bytes
        bad: dict[int, str] = {}  # line number -> why the line could not be read

        def lines(fh: BinaryIO) -> Iterator[str]:
            # Each line read with the bound and decoded on its own; a bad one reads as
            # blank and is reported for the row that spans it.
            for lineno, raw, size in bounded_lines(fh, limit):
                if raw is None:
                    assert limit is not None
                    bad[lineno] = f"line is {too_big(size, limit, 'max_line_bytes')}"
                    yield "\n"
                    continue
                try:
                    yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    bad[lineno] = f"invalid UTF-8: {exc}"
                    yield "\n"

        with file.open("rb") as fh:
            reader = csv.reader(lines(fh))
            try:
                header = next(reader, None)
            except csv.Error as exc:
                yield Reject(Location(rel, line=1), f"malformed CSV header: {exc}")
                return
            if 1 in bad:
                yield Reject(Location(rel, line=1), f"CSV header: {bad[1]}")
                return
            if header is None:
                yield Reject(Location(rel), "empty CSV file (no header)")
                return
            problem = self._missing(header)
            if problem:
                yield Reject(Location(rel, line=1), problem)
                return
            index = {name: i for i, name in enumerate(header)}
            while True:
                start = reader.line_num + 1
                try:
                    row = next(reader, None)
                except csv.Error as exc:
                    yield Reject(Location(rel, line=start), f"malformed CSV: {exc}")
                    if reader.line_num < start:
                        return
                    continue
                if row is None:
                    return
                location = Location(rel, line=start)
                spanned = range(start, reader.line_num + 1)
                why = next((bad[n] for n in spanned if n in bad), None)
                if why is not None:
                    yield Reject(location, why)
                    continue
                if not row:
                    continue
                if len(row) != len(header):
                    yield Reject(location, f"expected {len(header)} fields, got {len(row)}")
                    continue
                label = row[index[self.label_column]] if self.label_column else None
                yield (
                    location,
                    row[index[self.image_column]],
                    row[index[self.caption_column]],
                    label,
                )

    def _jsonl(
        self, file: Path, rel: str
    ) -> Iterator[tuple[Location, object, object, object] | Reject]:
        for item in iter_json_records(file, self.root, self.policy.max_line_bytes):
            if isinstance(item, Reject):
                yield item
                continue
            location, obj = item
            if not isinstance(obj, dict):
                yield Reject(location, f"record must be a JSON object, got {json_type(obj)}")
                continue
            if self.image_column not in obj:
                yield Reject(location, f"missing field {self.image_column!r}")
                continue
            label = obj.get(self.label_column) if self.label_column else None
            yield location, obj[self.image_column], obj.get(self.caption_column), label

    def _parquet(
        self, file: Path, rel: str
    ) -> Iterator[tuple[Location, object, object, object] | Reject]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        row = 0
        try:
            pf = pq.ParquetFile(file)
            problem = self._missing(pf.schema_arrow.names)
            if problem:
                yield Reject(Location(rel), problem)
                return
            cols = list(dict.fromkeys(self.columns))
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=cols):
                images = batch.column(self.image_column).to_pylist()
                captions = batch.column(self.caption_column).to_pylist()
                labels = (
                    batch.column(self.label_column).to_pylist()
                    if self.label_column
                    else [None] * len(images)
                )
                for image, caption, label in zip(images, captions, labels, strict=True):
                    yield Location(rel, row=row), image, caption, label
                    row += 1
        except (pa.ArrowException, OSError) as exc:
            yield Reject(Location(rel, row=row if row else None), f"cannot read Parquet: {exc}")

    def _record(
        self, location: Location, image: object, caption: object, label: object, fmt: str
    ) -> SourceRecord:
        if caption is None or (isinstance(caption, str) and not caption.strip()):
            raise RejectedInput(f"missing caption (column {self.caption_column!r})")
        if not isinstance(caption, str):
            raise RejectedInput(f"caption must be a string, got {type(caption).__name__}")
        if label is not None and not isinstance(label, str | int | bool):
            raise RejectedInput(f"label must be a string or integer, got {type(label).__name__}")
        label_text = str(label) if label is not None and str(label).strip() else None
        return SourceRecord(
            location=location,
            media=[self._media(image, location)],
            caption=caption,
            label=label_text,
            steps=[("parse_clip_pairs", {"format": fmt})],
        )

    def _media(self, cell: object, location: Location) -> MediaRef:
        inline_uri = (
            f"{location.file}#{location.row if location.row is not None else location.line}"
        )
        if cell is None:
            raise RejectedInput(f"missing image (column {self.image_column!r})")
        if isinstance(cell, bytes | bytearray):
            if not cell:
                raise RejectedInput("empty inline image bytes")
            return MediaRef(source_uri=inline_uri, data=bytes(cell))
        if isinstance(cell, dict):
            data, path = cell.get("bytes"), cell.get("path")
            if isinstance(data, bytes | bytearray) and data:
                return MediaRef(source_uri=path or inline_uri, data=bytes(data))
            if data is not None and not isinstance(data, bytes | bytearray):
                raise RejectedInput(
                    f"image struct 'bytes' must be binary, got {type(data).__name__}"
                )
            if path:
                return resolve_media(self.root, path, self.policy)
            raise RejectedInput("image struct has neither bytes nor path")
        return resolve_media(self.root, cell, self.policy)
