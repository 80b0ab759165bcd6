"""Audio tracks: decode with PyAV, resample to mono, store as FLAC or WAV.

Used by the ``audio`` source (:func:`load_audio`, one audio file) and by video analysis
(:func:`extract_audio` or :class:`PcmCollector` fed from the video's own demux pass).
Encoding is deterministic: the same input and settings give byte-identical output (the
FLAC muxer runs bit-exact, WAV goes through the ``wave`` module), because media keys are
the sha256 of the bytes.

Runs in worker processes, so it imports only numpy and av.
"""

from __future__ import annotations

import io
import re
import struct
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import av.container
import numpy as np

FORMATS: dict[str, str] = {"flac": "audio/flac", "wav": "audio/wav"}
# leading bytes of audio containers: a file that starts so but will not open is corrupt,
# anything else that will not open is not audio at all
SIGNATURES: tuple[bytes, ...] = (b"RIFF", b"fLaC", b"ID3", b"OggS", b"FORM", b"\x1aE\xdf\xa3")
TRUNCATED_FRACTION = 0.9  # decoding less than this share of the declared duration...
TRUNCATED_SLACK_S = 0.25  # ...minus this much is a truncated file
PAD_TRIM_S = 0.1  # decoded audio past the declared end by at most this is encoder padding


class AudioRejected(Exception):
    """The file or stream is not usable audio; the message is the reason."""


@dataclass(frozen=True)
class AudioTrack:
    """One audio track, resampled to mono and encoded (``data``), plus where it came from."""

    data: bytes  # FLAC or WAV, 16-bit mono at sample_rate
    mime: str
    sample_rate: int
    channels: int
    duration_s: float
    source_codec: str
    source_rate: int
    source_channels: int

    def as_dict(self) -> dict[str, object]:
        """Everything but the bytes, JSON-ready (for provenance)."""
        return {
            "mime": self.mime,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "duration_s": round(self.duration_s, 6),
            "source_codec": self.source_codec,
            "source_rate": self.source_rate,
            "source_channels": self.source_channels,
        }


def check_format(fmt: str) -> str:
    """The MIME type of output format ``fmt``; ValueError when it is not flac or wav."""
    if fmt not in FORMATS:
        raise ValueError(f"audio format must be one of {sorted(FORMATS)}, got {fmt!r}")
    return FORMATS[fmt]


def declared_seconds(stream: av.audio.stream.AudioStream) -> float | None:
    """The stream's own declared duration in seconds, when the container states one."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    return None


class PcmCollector:
    """Decodes one audio stream packet by packet into mono 16-bit PCM at ``rate``.

    Feed it the stream's packets (in demux order) and call :meth:`finish`; decode errors
    raise AudioRejected naming the reason.
    """

    def __init__(self, stream: av.audio.stream.AudioStream, rate: int = 16000) -> None:
        if stream.codec_context is None:
            raise AudioRejected(f"unsupported audio codec {codec_label(stream)}")
        self.stream = stream
        self.rate = rate
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        self._chunks: list[np.ndarray] = []
        self.decoded_samples = 0  # at the source rate

    def _take(self, frames: list) -> None:
        for frame in frames:
            self.decoded_samples += frame.samples
            for out in self._resampler.resample(frame):
                self._chunks.append(out.to_ndarray().reshape(-1))

    def feed(self, packet: av.Packet | None) -> None:
        """Decode one packet (None flushes the decoder)."""
        try:
            self._take(self.stream.decode(packet))
        except av.error.FFmpegError as exc:
            raise AudioRejected(f"truncated or corrupt: {ffmpeg_reason(exc)}") from None

    def finish(self) -> np.ndarray:
        """Flush decoder and resampler; the whole track as int16 samples."""
        self.feed(None)
        for out in self._resampler.resample(None):
            self._chunks.append(out.to_ndarray().reshape(-1))
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        declared = declared_seconds(self.stream)
        if declared is not None:  # drop the encoder's padding past the declared end
            end = round(declared * self.rate)
            if 0 < len(pcm) - end <= PAD_TRIM_S * self.rate:
                pcm = pcm[:end]
        return pcm

    def source_seconds(self) -> float:
        """Seconds of audio actually decoded from the source."""
        rate = self.stream.codec_context.sample_rate or self.stream.rate or 1
        return self.decoded_samples / rate


def encode_pcm(pcm: np.ndarray, rate: int, fmt: str = "flac") -> bytes:
    """Mono int16 ``pcm`` encoded as FLAC (bit-exact muxer) or WAV; deterministic."""
    check_format(fmt)
    pcm = np.ascontiguousarray(pcm, dtype=np.int16)
    if fmt == "wav":
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm.tobytes())
        return buf.getvalue()
    buf = io.BytesIO()
    # bitexact: no library version string in the file, so the bytes do not drift with FFmpeg
    with av.open(buf, "w", format="flac", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("flac", rate=rate, layout="mono", options={"flags": "+bitexact"})
        stream.format = "s16"
        if len(pcm):
            frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, 0
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def make_track(collector: PcmCollector, fmt: str) -> AudioTrack:
    """Finish ``collector`` and encode its samples as an :class:`AudioTrack`."""
    mime = check_format(fmt)
    pcm = collector.finish()
    cc = collector.stream.codec_context
    return AudioTrack(
        data=encode_pcm(pcm, collector.rate, fmt),
        mime=mime,
        sample_rate=collector.rate,
        channels=1,
        duration_s=len(pcm) / collector.rate,
        source_codec=cc.name,
        source_rate=int(cc.sample_rate or 0),
        source_channels=int(cc.channels or 0),
    )


def first_audio_stream(container: av.container.InputContainer):
    """The container's first audio stream, or None."""
    return container.streams.audio[0] if container.streams.audio else None


def _decode_stream(container, stream, rate: int) -> PcmCollector:
    """Demux and decode all of ``stream`` into a collector (not yet finished)."""
    collector = PcmCollector(stream, rate)
    try:
        for packet in container.demux(stream):
            if packet.size:  # the empty packets at the end are left to finish()'s flush
                collector.feed(packet)
    except av.error.FFmpegError as exc:
        raise AudioRejected(f"truncated or corrupt: {ffmpeg_reason(exc)}") from None
    return collector


def extract_audio(
    path_or_container: str | Path | av.container.InputContainer,
    rate: int = 16000,
    fmt: str = "flac",
) -> AudioTrack | None:
    """The first audio stream of a media file, as mono ``rate`` Hz FLAC or WAV.

    Returns None when there is no audio stream. Raises AudioRejected when the stream
    cannot be decoded (unsupported codec, corrupt or truncated data). An open container is
    read from wherever it stands, so pass a fresh one.
    """
    check_format(fmt)
    own = not isinstance(path_or_container, av.container.InputContainer)
    try:
        container = av.open(str(path_or_container)) if own else path_or_container
    except av.error.FFmpegError as exc:
        raise AudioRejected(f"cannot open: {ffmpeg_reason(exc)}") from None
    try:
        stream = first_audio_stream(container)
        if stream is None:
            return None
        return make_track(_decode_stream(container, stream, rate), fmt)
    finally:
        if own:
            container.close()


def open_media_file(
    path: Path, rejected: type[Exception], what: str, looks_like: Callable[[Path], bool]
) -> Any:
    """Open ``path`` with PyAV, or raise ``rejected`` with why it cannot be read.

    "cannot read", "zero-length file", "truncated or corrupt: ..." when ``looks_like``
    recognises the file's kind (by its signature) but FFmpeg cannot open it, and
    "not <what> file: ..." otherwise.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise rejected(f"cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise rejected("zero-length file")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as exc:
        if looks_like(path):
            raise rejected(f"truncated or corrupt: {ffmpeg_reason(exc)}") from None
        raise rejected(f"not {what} file: {exc.strerror or 'unknown format'}") from None


def _looks_like_audio(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(16)
    return head.startswith(SIGNATURES) or _is_mpeg_audio(head)


def load_audio(
    path: str | Path, rate: int = 16000, fmt: str = "flac", max_duration_s: float | None = None
) -> AudioTrack:
    """Read an audio file (wav, flac, mp3, m4a, ogg, ...) as mono ``rate`` Hz FLAC or WAV.

    Raises AudioRejected with the reason: "zero-length file", "not an audio file: ...",
    "no audio stream", "truncated or corrupt: ...", "unsupported audio codec ...",
    "too long: ...".
    """
    check_format(fmt)
    path = Path(path)
    container = open_media_file(path, AudioRejected, "an audio", _looks_like_audio)
    with container:
        if container.format.name in ("tty", "image2") or container.format.name.endswith("_pipe"):
            raise AudioRejected(f"not an audio file: detected as {container.format.name!r}")
        stream = first_audio_stream(container)
        if stream is None:
            kinds = sorted({s.type for s in container.streams})
            raise AudioRejected(f"no audio stream (streams: {', '.join(kinds) or 'none'})")
        declared = declared_seconds(stream)
        if declared is None and container.duration:
            declared = container.duration / 1e6
        if container.format.name == "wav":
            declared = _wav_declared_seconds(path) or declared
        if max_duration_s is not None and declared is not None and declared > max_duration_s:
            raise AudioRejected(f"too long: {declared:.1f} s > max_duration_s {max_duration_s}")
        collector = _decode_stream(container, stream, rate)
        track = make_track(collector, fmt)
    got = collector.source_seconds()
    if declared and got < declared * TRUNCATED_FRACTION - TRUNCATED_SLACK_S:
        raise AudioRejected(
            f"truncated or corrupt: decoded {got:.2f} s of the declared {declared:.2f} s"
        )
    if track.duration_s <= 0:
        raise AudioRejected("truncated or corrupt: no audio samples decoded")
    if max_duration_s is not None and track.duration_s > max_duration_s:
        raise AudioRejected(f"too long: {track.duration_s:.1f} s > max_duration_s {max_duration_s}")
    return track


def decode_pcm(data: bytes) -> tuple[np.ndarray, int]:
    """Decode stored audio bytes (FLAC, WAV, ...) to float32 mono samples in [-1, 1] and rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = first_audio_stream(container)
        if stream is None:
            raise AudioRejected("no audio stream")
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = []
        for frame in container.decode(stream):
            chunks.extend(o.to_ndarray().reshape(-1) for o in resampler.resample(frame))
        chunks.extend(o.to_ndarray().reshape(-1) for o in resampler.resample(None))
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return pcm.astype(np.float32, copy=False), rate


def _wav_declared_seconds(path: Path) -> float | None:
    """Duration the RIFF header of a WAV file declares (FFmpeg trusts the file size instead)."""
    with path.open("rb") as fh:
        head = fh.read(1 << 16)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        tag, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if tag == b"fmt " and pos + 16 <= len(head):
            byte_rate = struct.unpack("<I", head[pos + 16 : pos + 20])[0]
        if tag == b"data":
            # 0 and 0xFFFFFFFF mark streamed files whose writer never knew the size
            if byte_rate and 0 < size < 0xFFFFFFFF:
                return size / byte_rate
            return None
        pos += 8 + size + (size & 1)
    return None


def _is_mpeg_audio(head: bytes) -> bool:
    """An MPEG audio frame sync (raw MP3/AAC without an ID3 tag) at the file start."""
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0


def codec_label(stream) -> str:
    """The codec of a stream FFmpeg has no decoder for, as the container describes it.

    PyAV gives such a stream no codec context, so the name and tag are read from
    FFmpeg's own description of the container (shared with :mod:`lake.video`).
    """
    level = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)  # dumps_format is silent below INFO
    try:
        text = stream.container.dumps_format()
    finally:
        av.logging.set_level(level)
    match = re.search(rf"Stream #\d+:{stream.index}\S*: \w+: (\S+)(?: \(([^/)]+) /)?", text)
    if not match:
        return "'unknown'"
    name, tag = match.group(1).rstrip(","), (match.group(2) or "").strip()
    return f"{name!r} (tag {tag!r})" if tag and tag != name else repr(name)


def ffmpeg_reason(exc: Exception) -> str:
    """A short, single-line reason from an FFmpeg error (shared with :mod:`lake.video`)."""
    msg = getattr(exc, "strerror", None) or str(exc)
    log = getattr(exc, "log", None)
    if log and len(log) >= 3 and log[2]:
        msg = f"{msg} ({log[1]}: {str(log[2]).strip()})"
    return " ".join(str(msg).split())
