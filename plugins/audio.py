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
from lake.records import Location, MediaMeta, MediaRef, Reject, SourceRecord
from lake.schema import KIND_TAGS
from lake.sources import confined_root, list_files, read_media_file

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus")


def _load(
    task: tuple[str, str, int, str, float | None, str | None, int | None],
) -> tuple[str, str, Any, str | None]:
    """Worker: decode and resample one file; (rel, sha256 of the original, track, reason).

    The file must resolve inside ``root`` (None: anywhere), be a regular file and hold at
    most ``limit`` bytes (:func:`lake.sources.checked_file`)."""
    from lake.audio import AudioRejected, load_audio

    rel, full, rate, fmt, max_duration_s, root, limit = task
    return read_media_file(
        rel, full, lambda f: load_audio(f, rate, fmt, max_duration_s), AudioRejected, root, limit
    )


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


def load_file(
    rel: str,
    full: str,
    rate: int,
    fmt: str,
    max_duration_s: float | None = None,
    root: str | None = None,
    limit: int | None = None,
) -> tuple[str, str, Any, str | None]:
    """Decode and resample one audio file: ``(rel, sha256 of the original, AudioTrack,
    None)`` or ``(rel, "", None, reason)`` (:func:`lake.sources.read_media_file`)."""
    return _load((rel, full, rate, fmt, max_duration_s, root, limit))


def audio_media(rel: str, sha: str, track: Any, fmt: str) -> MediaRef:
    """The ``audio`` media of a decoded file (``track``, mono at its rate, ``fmt``), with
    the original's sha256, codec, rate and channels in its steps. Shared by every source
    that reads audio files."""
    decode = {
        "source_sha256": sha,
        "codec": track.source_codec,
        "rate": track.source_rate,
        "channels": track.source_channels,
    }
    convert = {"rate": track.sample_rate, "channels": track.channels, "format": fmt}
    return MediaRef(
        source_uri=rel,
        data=track.data,
        kind="audio",
        meta=MediaMeta(
            mime=track.mime,
            duration_s=track.duration_s,
            t_start=0.0,
            t_end=track.duration_s,
            steps=(("decode", decode), ("resample_encode", convert)),
        ),
    )
