"""Enrichers: speech transcripts of audio (faster-whisper) and of video clips.

:class:`TranscribeEnricher` (``transcribe``) transcribes every audio media row (standalone
audio and the audio tracks extracted from videos) into ``media.transcript``,
``transcript_language``, ``transcript_segments`` and the owner column ``transcript_model``
(``faster-whisper:<name>:<sha12>``, see :mod:`plugins.whisper_models`). The audio bytes
are decoded in memory.

Whisper invents text on silence and noise ("You", "Thank you."), so the transcription
runs with the Silero VAD filter, without conditioning on the previous window's text, and
drops every segment whose no-speech probability exceeds ``no_speech_threshold`` (faster-
whisper itself only drops one when its log-probability is also low). Audio without speech
gets ``transcript = ""`` and no segments.

:class:`ClipTranscript` (``clip_transcript``) then gives each clip sample (one scene of a
video: ``t_start``/``t_end`` set, tag ``kind:clip``) the text of its parent video's audio
segments whose midpoint lies in ``[t_start, t_end)``, so a segment spanning a cut lands in
exactly one clip. Its owner is the transcribing model; a clip whose video has no audio
track gets ``""`` and the owner ``no-audio`` (and is not revisited); a clip whose audio is
not transcribed by that model yet is left untouched (null), to be filled by a later run.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from lake.cache import ModelCache
from lake.errors import ConfigError, RejectedInput
from lake.plugin import Enricher
from lake.sql import quote
from plugins.whisper_models import model_owner, resolve_model

log = logging.getLogger("lakeloom.transcribe")

OWNER_COLUMN = "transcript_model"
NO_AUDIO = "no-audio"
SAMPLE_RATE = 16000
SEGMENT = pa.struct(
    [
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("text", pa.string()),
        ("no_speech_prob", pa.float32()),
        ("avg_logprob", pa.float32()),
    ]
)


@dataclass(frozen=True)
class WhisperSpec:
    """A loaded model's identity in the per-process cache."""

    path: str
    device: str
    compute_type: str
    cpu_threads: int


_CACHE: ModelCache[Any] = ModelCache()


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when CTranslate2 sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def resolve_compute_type(compute_type: str, device: str) -> str:
    """``auto`` -> ``float16`` on CUDA, ``int8`` on CPU; anything else unchanged."""
    if compute_type != "auto":
        return compute_type
    return "float16" if device.startswith("cuda") else "int8"


def load_whisper(spec: WhisperSpec) -> Any:
    """A ``faster_whisper.WhisperModel`` for ``spec``, loaded once per process."""
    return _CACHE.get(spec, lambda: _load_whisper(spec))


def _load_whisper(spec: WhisperSpec) -> Any:
    from faster_whisper import WhisperModel

    # two INFO lines per file (duration, VAD) would drown the job's own log
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    model = WhisperModel(
        spec.path,
        device=spec.device,
        compute_type=spec.compute_type,
        cpu_threads=spec.cpu_threads,
        local_files_only=True,
    )
    log.info("loaded Whisper %s on %s (%s)", spec.path, spec.device, spec.compute_type)
    return model


def clear_cache() -> None:
    """Forget the loaded models (tests; freeing GPU memory)."""
    _CACHE.clear()


def _vad_options(params: Any) -> dict[str, Any]:
    from faster_whisper.vad import VadOptions

    options = {str(k): v for k, v in dict(params).items()}
    known = {f.name for f in dataclasses.fields(VadOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"transcribe: unknown vad_parameters {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    return options


class _WhisperOwned:
    """Owner of transcripts, on media and on clip samples alike: the Whisper model."""

    model: str
    _owner: str | None = None

    def owner_column(self) -> str:
        """``transcript_model``: the model of each transcript."""
        return OWNER_COLUMN

    def owner(self) -> str:
        """``faster-whisper:<name>:<sha12 of model.bin>``."""
        if self._owner is None:
            self._owner = model_owner(self.model)
        return self._owner


class TranscribeEnricher(_WhisperOwned, Enricher):
    """Transcribes audio media with faster-whisper (see the module docstring)."""

    name: ClassVar[str] = "transcribe"
    version: ClassVar[str] = "0.1.0"
    table: ClassVar[str] = "media"
    inputs: ClassVar[tuple[str, ...]] = ("media_id", "bytes", "source_uri")

    def __init__(
        self,
        model: str = "tiny.en",
        device: str = "auto",
        compute_type: str = "auto",
        language: str | None = None,
        beam_size: int = 5,
        vad_filter: bool = True,
        *,
        vad_parameters: Mapping[str, Any],
        no_speech_threshold: float = 0.6,
        log_prob_threshold: float | None = -1.0,
        cpu_threads: int = 0,
    ) -> None:
        """``vad_parameters``: ``faster_whisper.vad.VadOptions`` fields, from
        ``conf/enrich/transcribe.yaml`` (the one place of their values)."""
        self.model = str(model)
        self.device = device
        self.compute_type = compute_type
        self.language = language or None
        self.beam_size = int(beam_size)
        self.vad_filter = bool(vad_filter)
        self.vad_parameters = _vad_options(vad_parameters)
        self.no_speech_threshold = float(no_speech_threshold)
        self.log_prob_threshold = None if log_prob_threshold is None else float(log_prob_threshold)
        self.cpu_threads = int(cpu_threads)
        self._owner: str | None = None
        self._spec: WhisperSpec | None = None

    @property
    def spec(self) -> WhisperSpec:
        """Model directory, device, compute type and threads, resolved once."""
        if self._spec is None:
            device = resolve_device(self.device)
            compute_type = resolve_compute_type(self.compute_type, device)
            self._spec = WhisperSpec(
                resolve_model(self.model), device, compute_type, self.cpu_threads
            )
        return self._spec

    @property
    def whisper(self) -> Any:
        """The loaded ``WhisperModel`` (loaded on first use, shared within the process)."""
        return load_whisper(self.spec)

    def setup(self) -> None:
        """Load the model."""
        _ = self.whisper

    def where(self) -> str:
        """Audio media only."""
        return "kind = 'audio'"

    def output_fields(self) -> list[pa.Field]:
        """Transcript, language, timed segments and the owner column."""
        return [
            pa.field("transcript", pa.string()),
            pa.field("transcript_language", pa.string()),
            pa.field("transcript_segments", pa.list_(SEGMENT)),
            pa.field(OWNER_COLUMN, pa.string()),
        ]

    def transcribe(self, audio: np.ndarray) -> tuple[str, str | None, list[dict[str, Any]]]:
        """``(text, language, segments)`` of 16 kHz mono float32 samples."""
        model = self.whisper
        multilingual = model.model.is_multilingual
        detected = self.language is None and multilingual
        if audio.size == 0:
            return "", (self.language if multilingual else "en"), []
        segments, info = model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            vad_filter=self.vad_filter,
            vad_parameters=self.vad_parameters,
            condition_on_previous_text=False,
            no_speech_threshold=self.no_speech_threshold,
            log_prob_threshold=self.log_prob_threshold,
        )
        duration = audio.shape[0] / SAMPLE_RATE
        kept = []
        for s in segments:  # a generator: decoding happens here
            text = s.text.strip()
            if not text or s.no_speech_prob > self.no_speech_threshold:
                continue
            start = min(max(float(s.start), 0.0), duration)
            kept.append(
                {
                    "start": start,
                    "end": min(max(float(s.end), start), duration),
                    "text": text,
                    "no_speech_prob": float(s.no_speech_prob),
                    "avg_logprob": float(s.avg_logprob),
                }
            )
        language = None if detected and not kept else info.language
        return " ".join(s["text"] for s in kept), language, kept

    def process(self, batch: pa.Table) -> pa.Table:
        """``media_id`` + transcript columns for a batch of audio rows."""
        from faster_whisper import decode_audio

        texts, languages, segments = [], [], []
        ids = batch.column("media_id").to_pylist()
        uris = batch.column("source_uri").to_pylist()
        for media_id, data, uri in zip(ids, batch.column("bytes").to_pylist(), uris, strict=True):
            row = f"media {media_id} ({uri or 'no source uri'})"
            if not data:
                raise RejectedInput(f"{row}: audio row without bytes")
            try:
                audio = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
            except Exception as exc:  # PyAV raises several error types for bad data
                raise RejectedInput(f"{row}: cannot decode audio: {exc}") from exc
            text, language, segs = self.transcribe(audio)
            texts.append(text)
            languages.append(language)
            segments.append(segs)
        return pa.table(
            {
                "media_id": batch.column("media_id"),
                "transcript": pa.array(texts, pa.string()),
                "transcript_language": pa.array(languages, pa.string()),
                "transcript_segments": pa.array(segments, pa.list_(SEGMENT)),
                OWNER_COLUMN: pa.array([self.owner()] * batch.num_rows, pa.string()),
            }
        )


@dataclass
class _Audio:
    """A video's audio track as far as clips need it."""

    media_id: str
    offset: float
    owner: str | None
    segments: list[dict[str, Any]]


class ClipTranscript(_WhisperOwned, Enricher):
    """Gives clip samples the transcript of their time range (see the module docstring)."""

    name: ClassVar[str] = "clip_transcript"
    version: ClassVar[str] = "0.1.0"
    table: ClassVar[str] = "samples"
    inputs: ClassVar[tuple[str, ...]] = ("sample_id", "media_ids", "t_start", "t_end")

    def __init__(self, model: str = "tiny.en") -> None:
        self.model = str(model)
        self._owner: str | None = None
        self._parents: dict[str, str] = {}
        self._audio: dict[str, list[_Audio]] = {}
        self.pending = 0

    def where(self) -> str:
        """Clip samples, except those already known to have no audio."""
        return (
            f"t_start IS NOT NULL AND ({OWNER_COLUMN} IS NULL OR {OWNER_COLUMN} != "
            f"{quote(NO_AUDIO)})"
        )

    def output_fields(self) -> list[pa.Field]:
        """``samples.transcript`` and its owner column."""
        return [pa.field("transcript", pa.string()), pa.field(OWNER_COLUMN, pa.string())]

    def prepare(self, lake: Any) -> None:
        """Read the clips' frames (-> parent video) and the videos' audio rows from media."""
        self._parents, self._audio, self.pending = {}, {}, 0
        if not (lake.exists("media") and lake.exists("samples")):
            return
        wanted: set[str] = set()
        clips = lake.dataset("samples").to_table(
            columns=["media_ids"], filter="t_start IS NOT NULL"
        )
        for ids in clips.column("media_ids").to_pylist():
            wanted.update(ids or [])
        media = lake.dataset("media")
        frames = media.to_batches(
            columns=["media_id", "parent_id"], filter="kind = 'frame' AND parent_id IS NOT NULL"
        )
        for b in frames:
            pairs = zip(b.column(0).to_pylist(), b.column(1).to_pylist(), strict=True)
            self._parents.update((m, parent) for m, parent in pairs if m in wanted)
        names = set(media.schema.names)
        transcribed = {"transcript_segments", OWNER_COLUMN} <= names
        extra = ["transcript_segments", OWNER_COLUMN] if transcribed else []
        audio = media.to_table(
            columns=["media_id", "parent_id", "t_start", *extra],
            filter="kind = 'audio' AND parent_id IS NOT NULL",
        )
        for row in audio.to_pylist():
            track = _Audio(
                row["media_id"],
                float(row["t_start"] or 0.0),
                row.get(OWNER_COLUMN),
                row.get("transcript_segments") or [],
            )
            self._audio.setdefault(row["parent_id"], []).append(track)
        for tracks in self._audio.values():
            tracks.sort(key=lambda a: a.media_id)  # several tracks: the first, deterministically

    def clip_text(
        self, media_ids: list[str], t_start: float, t_end: float
    ) -> tuple[str, str] | None:
        """``(transcript, owner)`` of one clip, or None while its audio is not transcribed."""
        parent = next((self._parents[m] for m in media_ids if m in self._parents), None)
        if parent is None:
            return None  # frames unknown: nothing to say yet
        tracks = self._audio.get(parent)
        if not tracks:
            return "", NO_AUDIO
        owner = self.owner()
        track = next((a for a in tracks if a.owner == owner), None)
        if track is None:
            return None
        words = [
            s["text"]
            for s in track.segments
            if t_start <= track.offset + (s["start"] + s["end"]) / 2 < t_end
        ]
        return " ".join(w for w in words if w), owner

    def process(self, batch: pa.Table) -> pa.Table:
        """``sample_id`` + transcript + owner for the clips whose audio is ready.

        Clips still waiting for their audio's transcript are left out of the result, so
        they stay null (pending) without a provenance step.
        """
        keys, texts, owners = [], [], []
        for row in batch.select(["sample_id", "media_ids", "t_start", "t_end"]).to_pylist():
            t_end = row["t_end"] if row["t_end"] is not None else float("inf")
            result = self.clip_text(row["media_ids"] or [], row["t_start"], t_end)
            if result is None:
                self.pending += 1
                continue
            keys.append(row["sample_id"])
            texts.append(result[0])
            owners.append(result[1])
        return pa.table(
            {
                "sample_id": pa.array(keys, pa.string()),
                "transcript": pa.array(texts, pa.string()),
                OWNER_COLUMN: pa.array(owners, pa.string()),
            }
        )

    def finish(self, lake: Any) -> None:
        """Say how many clips wait for their audio's transcript."""
        if self.pending:
            log.info(
                "clip_transcript: %d clips wait for their audio to be transcribed by %s",
                self.pending,
                self.owner(),
            )
