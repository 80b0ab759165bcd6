"""Source plugin: a folder of videos -> video, frame and audio media; frame and clip samples.

Each video is analysed once (``lake.video.analyze_video``: PyAV probe, PySceneDetect scene
cuts, motion-aware frame sampling, phash dedupe, JPEG frames, 16 kHz mono audio) in a
pool of worker processes. The video itself becomes a ``video`` media row (blob-stored, or
referenced by ``source_uri`` + sha256), its audio track an ``audio`` row and every kept
frame a ``frame`` row, each with ``parent_id`` = the video's key, its time and scene, and
the processing steps with their parameters in provenance. Samples: one per kept frame
(tag ``kind:frame``) and one per scene (tag ``kind:clip``, its frames in order, the scene's
time range in ``t_start`` / ``t_end``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lake.parallel import ordered_map, worker_count
from lake.plugin import Source
from lake.records import Location, Reject, SourceRecord
from lake.schema import KIND_TAGS
from lake.sources import analyse_file, confined_root, list_files, video_media

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")


def _analyse(
    task: tuple[str, str, dict[str, Any], str | None, int | None],
) -> tuple[str, str, Any, str | None]:
    """Worker: (rel, full, settings, root, limit) -> (rel, sha256, analysis, reject reason).

    The file must resolve inside ``root`` (None: anywhere), be a regular file and hold at
    most ``limit`` bytes (:func:`lake.sources.checked_file`)."""
    from lake.video import video_settings

    rel, full, options, root, limit = task
    return analyse_file(rel, full, video_settings(options), root, limit)


class VideoSource(Source):
    """Videos under a folder (mp4, mov, mkv, webm, avi), analysed into frames, scenes, audio."""

    name = "video"
    version = "0.1.0"
    decodes_images = False

    def __init__(
        self,
        path: str | Path,
        store_video: bool = True,
        frame_samples: bool = True,
        clip_samples: bool = True,
        workers: int | str = "auto",
        *,
        analysis: dict[str, Any],
        **kwargs: bool,
    ) -> None:
        """``analysis``: every key of ``analysis:`` in ``conf/source/video.yaml`` (the one
        place of its values; :class:`lake.video.VideoSettings` has no defaults)."""
        super().__init__(path, **kwargs)
        from lake.video import video_settings

        self.store_video = bool(store_video)
        self.frame_samples = bool(frame_samples)
        self.clip_samples = bool(clip_samples)
        if not (self.frame_samples or self.clip_samples):
            raise ValueError("video source: frame_samples and clip_samples are both false")
        self.workers = workers
        self.settings = video_settings(dict(analysis))

    def params(self) -> dict[str, object]:
        """Options recorded in provenance (the analysis settings included)."""
        return {
            **super().params(),
            "store_video": self.store_video,
            "frame_samples": self.frame_samples,
            "clip_samples": self.clip_samples,
            "analysis": asdict(self.settings),
        }

    def records(self) -> Iterator[SourceRecord | Reject]:
        """Frame and clip records of every video, video by video, in path order."""
        files = list_files(self.path, VIDEO_EXTENSIONS)
        options = asdict(self.settings)
        # a file named as source.path was chosen by the user: only a folder's are confined
        root = None if self.path.is_file() else confined_root(self.root, self.policy)
        limit = self.policy.max_media_bytes
        tasks = [(rel, full, options, root, limit) for rel, full in files]
        full_of = dict(files)
        workers = worker_count(self.workers, len(tasks))
        for rel, sha, analysis, reason in ordered_map(
            _analyse, tasks, workers, inflight=workers + 1
        ):
            if reason is not None:
                yield Reject(Location(rel), f"video {rel}: {reason}")
                continue
            yield from self._video_records(rel, full_of[rel], sha, analysis)

    def _video_records(
        self, rel: str, full: str, video_id: str, analysis: Any
    ) -> Iterator[SourceRecord]:
        video, audio, refs = video_media(rel, full, video_id, analysis, self.store_video)
        attached = [video, *audio]
        probe = analysis.probe
        sample_steps: list[tuple[str, dict[str, object]]] = [
            ("video", {"file": rel, "media_id": video_id, "probe": probe.as_dict()})
        ]
        if self.frame_samples:
            for f, ref in zip(analysis.frames, refs, strict=True):
                yield SourceRecord(
                    location=Location(rel, fragment=f"t={f.t:.3f}"),
                    media=[ref],
                    attached=attached,
                    tags=[KIND_TAGS["frame"]],
                    key=f"{video_id}:frame:{f.index}",
                    steps=sample_steps,
                )
        if self.clip_samples:
            for scene in analysis.scenes:
                # a scene that repeats an earlier one points at that scene's (kept) frames
                members = [refs[i] for i in scene.frames]
                if not members:
                    continue
                yield SourceRecord(
                    location=Location(rel, fragment=f"scene={scene.index}"),
                    media=members,
                    attached=attached,
                    tags=[KIND_TAGS["clip"]],
                    key=f"{video_id}:scene:{scene.index}",
                    steps=sample_steps,
                    t_start=round(scene.t_start, 6),
                    t_end=round(scene.t_end, 6),
                )
