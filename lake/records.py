"""What a Source yields: records (media references + sample fields) and rejects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Location:
    """Where a record came from: a file relative to the source root, and a line or row."""

    file: str
    line: int | None = None
    row: int | None = None
    fragment: str | None = None  # e.g. ``t=12.480`` (a time in a video), ``scene=3``

    def uri(self) -> str:
        """``file#L12`` for a line, ``file#12`` for a row, ``file#t=1.5`` for a fragment."""
        if self.line is not None:
            return f"{self.file}#L{self.line}"
        if self.row is not None:
            return f"{self.file}#{self.row}"
        if self.fragment is not None:
            return f"{self.file}#{self.fragment}"
        return self.file

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for the rejects report."""
        return {"source_file": self.file, "line": self.line, "row": self.row}


@dataclass(frozen=True)
class MediaMeta:
    """Fields of a media object its source analysed itself (video frames, audio, videos).

    The runner stores these as given instead of decoding the bytes in its image workers.
    ``store`` says where the bytes go: ``bytes`` (the ``bytes`` column), ``blob`` (the
    blob column, for whole videos, read from ``MediaRef.path`` when the row is written) or
    ``reference`` (not stored: ``source_uri`` + the sha256 key point at the file).
    """

    mime: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    phash: int | None = None
    thumb: bytes | None = None
    parent_id: str | None = None
    t_start: float | None = None
    t_end: float | None = None
    scene: int | None = None
    steps: tuple[tuple[str, dict[str, object]], ...] = ()
    store: str = "bytes"


@dataclass(frozen=True)
class MediaRef:
    """One media object a record refers to: a file on disk or inline bytes.

    ``source_uri`` is the path relative to the source root (or a description of where
    inline bytes came from); ``path`` is where to read the bytes, or None when ``data``
    holds them already.
    """

    source_uri: str
    path: Path | str | None = None
    data: bytes | None = None
    kind: str = "image"
    meta: MediaMeta | None = None
    # Key computed by the source (sha256 of the bytes; of the file, streamed, for
    # blob-stored or referenced videos, which the runner then does not read up front).
    media_id: str | None = None


@dataclass
class SourceRecord:
    """One training example as read from a source, before its media are processed."""

    location: Location
    media: list[MediaRef] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    caption: str | None = None
    label: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    tags: list[str] = field(default_factory=list)
    # Distinguishes records whose content is otherwise identical (image_folder: the
    # file path, so byte-identical copies stay separate samples for the duplicate check).
    key: str | None = None
    steps: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    # Media written with the record but not part of its media_ids (a frame's video and
    # audio track); written once, when the first record that carries them lands.
    attached: list[MediaRef] = field(default_factory=list)
    t_start: float | None = None
    t_end: float | None = None
    # the record's own id in its source (`id` in LLaVA, ShareGPT, messages): stored,
    # exported back, not part of the sample's identity
    record_id: str | None = None
    # KTO feedback on the last assistant turn (true = desirable); None: no feedback
    feedback: bool | None = None
    # a preference pair's rejected answer shown other media than the prompt's (ms-swift
    # `rejected_images`), one per placeholder; None: the same media
    rejected_media: list[MediaRef] | None = None
    # top-level keys of the source record that nothing read, for the run's summary
    ignored_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reject:
    """A record that could not be read, with its location and the reason."""

    location: Location
    reason: str
