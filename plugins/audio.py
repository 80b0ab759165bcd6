"""Source plugin: a folder of audio files -> one ``audio`` media row and one sample each.

Every file (wav, flac, mp3, m4a, ogg, opus) is decoded with PyAV and stored as 16 kHz mono
(FLAC by default), the form speech models take; the original file's sha256, codec, rate
and channels are kept in provenance. Files that are not audio are rejected with the
reason, the rest of the folder is ingested.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lake.parallel import ordered_map, worker_count
from lake.plugin import Source
from lake.records import Location, Reject, SourceRecord
from lake.schema import KIND_TAGS
from lake.sources import audio_media, confined_root, list_files, load_file

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus")


def _load(
    task: tuple[str, str, int, str, float | None, str | None, int | None],
) -> tuple[str, str, Any, str | None]:
    """Worker: (rel, full, rate, format, max duration, root, limit) -> (rel, sha256 of the
    original, track, reject reason) (:func:`lake.sources.load_file`)."""
    return load_file(*task)


class AudioSource(Source):
    """Audio files under a folder; the dataset name defaults to the folder's name."""

    name = "audio"
    version = "0.1.0"
    decodes_images = False

    def __init__(
        self,
        path: str | Path,
        rate: int = 16000,
        format: str = "flac",
        max_duration_s: float | None = None,
        workers: int | str = "auto",
        **kwargs: bool,
    ) -> None:
        super().__init__(path, **kwargs)
        if format not in ("flac", "wav"):
            raise ValueError(f"audio source: format must be flac or wav, got {format!r}")
        self.rate = int(rate)
        self.format = format
        self.max_duration_s = max_duration_s
        self.workers = workers

    def params(self) -> dict[str, object]:
        """Options recorded in provenance."""
        return {
            **super().params(),
            "rate": self.rate,
            "format": self.format,
            "max_duration_s": self.max_duration_s,
        }

    def records(self) -> Iterator[SourceRecord | Reject]:
        """One record per audio file, in path order."""
        files = list_files(self.path, AUDIO_EXTENSIONS)
        # a file named as source.path was chosen by the user: only a folder's are confined
        root = None if self.path.is_file() else confined_root(self.root, self.policy)
        limit = self.policy.max_media_bytes
        tasks = [
            (rel, full, self.rate, self.format, self.max_duration_s, root, limit)
            for rel, full in files
        ]
        workers = worker_count(self.workers, len(tasks))
        steps: list[tuple[str, dict[str, object]]] = [("scan_audio_folder", {})]
        for rel, sha, track, reason in ordered_map(_load, tasks, workers, inflight=workers + 1):
            if reason is not None:
                yield Reject(Location(rel), f"audio {rel}: {reason}")
                continue
            yield SourceRecord(
                location=Location(rel),
                media=[audio_media(rel, sha, track, self.format)],
                tags=[KIND_TAGS["audio"]],
                key=rel,
                steps=steps,
            )
