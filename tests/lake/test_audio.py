"""lake.audio on real encoded files: resampling, tone recovery, determinism, rejects."""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from lake.audio import AudioRejected, decode_pcm, encode_pcm, extract_audio, load_audio
from lake.synth_video import Segment, write_video

SEGMENTS = [
    Segment(1.5, (20, 30, 90), "circle", tone_hz=440.0),
    Segment(1.0, (235, 225, 200), "square"),  # silence
    Segment(1.5, (30, 120, 50), "triangle", tone_hz=660.0),
]


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    """The strongest frequency of ``pcm``."""
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[np.argmax(spectrum)])


def write_tone(path: Path, codec: str, rate: int, channels: int, seconds: float, hz: float):
    """A sine tone encoded by PyAV with ``codec`` (container from the file suffix)."""
    n = round(rate * seconds)
    tone = (0.3 * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.float32)
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        fmt = (
            "fltp"
            if "fltp" in [f.name for f in stream.codec_context.codec.audio_formats]
            else "flt"
        )
        for start in range(0, n, 1024):
            chunk = np.repeat(tone[None, start : start + 1024], channels, axis=0)
            data = chunk if fmt == "fltp" else chunk.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data), format=fmt, layout=layout
            )
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_wav(path: Path, rate: int, channels: int, seconds: float, hz: float) -> Path:
    """A 16-bit PCM WAV written by the standard library (no FFmpeg on the writing side)."""
    n = round(rate * seconds)
    tone = (9000 * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(tone[:, None], channels, axis=1).tobytes())
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("audio") / "clip.mp4"
    return path, write_video(path, SEGMENTS)


@pytest.mark.parametrize(
    "fmt, mime, magic", [("flac", "audio/flac", b"fLaC"), ("wav", "audio/wav", b"RIFF")]
)
def test_extract_audio_resamples_to_16k_mono(clip, fmt: str, mime: str, magic: bytes) -> None:
    path, truth = clip
    track = extract_audio(path, fmt=fmt)
    assert track is not None and track.data.startswith(magic) and track.mime == mime
    assert (track.sample_rate, track.channels) == (16000, 1)
    assert (track.source_codec, track.source_rate, track.source_channels) == ("aac", 16000, 1)
    assert abs(track.duration_s - truth["audio_duration_s"]) <= 0.05
    pcm, rate = decode_pcm(track.data)
    assert pcm.dtype == np.float32 and rate == 16000
    assert len(pcm) == round(track.duration_s * rate)
    assert peak_hz(pcm[int(0.2 * rate) : int(1.3 * rate)], rate) == pytest.approx(440, abs=3)
    assert peak_hz(pcm[int(2.7 * rate) : int(3.8 * rate)], rate) == pytest.approx(660, abs=3)
    silence = pcm[int(1.7 * rate) : int(2.3 * rate)]
    assert np.sqrt(np.mean(silence**2)) < 0.01 < np.sqrt(np.mean(pcm[:rate] ** 2))
    assert extract_audio(path, fmt=fmt).data == track.data  # deterministic bytes


def test_flac_and_wav_hold_the_same_samples(clip) -> None:
    flac, _ = decode_pcm(extract_audio(clip[0], fmt="flac").data)
    wav, _ = decode_pcm(extract_audio(clip[0], fmt="wav").data)
    np.testing.assert_array_equal(flac, wav)


def test_encode_pcm_round_trip() -> None:
    pcm = (np.arange(-4000, 4000, 3) * 4).astype(np.int16)
    for fmt in ("flac", "wav"):
        data = encode_pcm(pcm, 16000, fmt)
        back, rate = decode_pcm(data)
        assert rate == 16000
        np.testing.assert_allclose(back, pcm / 32768.0, atol=1e-6)
        assert encode_pcm(pcm, 16000, fmt) == data


def test_extract_audio_from_open_container_and_no_audio(clip, tmp_path: Path) -> None:
    with av.open(str(clip[0])) as container:
        assert extract_audio(container).duration_s == pytest.approx(4.0, abs=0.05)
    silent = tmp_path / "silent.mp4"
    write_video(silent, SEGMENTS[:1], audio=False)
    assert extract_audio(silent) is None


@pytest.mark.parametrize(
    "name, codec, rate, channels",
    [
        ("tone.mp3", "libmp3lame", 44100, 2),
        ("tone.m4a", "aac", 48000, 2),
        ("tone.ogg", "libopus", 48000, 1),
        ("tone.flac", "flac", 22050, 1),
    ],
)
def test_load_audio_formats(tmp_path: Path, name: str, codec: str, rate: int, channels: int):
    path = write_tone(tmp_path / name, codec, rate, channels, 2.0, 500.0)
    track = load_audio(path)
    assert (track.sample_rate, track.channels, track.mime) == (16000, 1, "audio/flac")
    assert (track.source_rate, track.source_channels) == (rate, channels)
    assert abs(track.duration_s - 2.0) <= 0.05
    pcm, sr = decode_pcm(track.data)
    assert peak_hz(pcm[int(0.3 * sr) : int(1.7 * sr)], sr) == pytest.approx(500, abs=3)


def test_load_audio_wav_from_the_standard_library(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "tone.wav", 44100, 2, 1.5, 700.0)
    track = load_audio(path, fmt="wav")
    assert (track.source_codec, track.source_rate, track.source_channels) == ("pcm_s16le", 44100, 2)
    assert track.data.startswith(b"RIFF") and abs(track.duration_s - 1.5) <= 0.05
    pcm, sr = decode_pcm(track.data)
    assert peak_hz(pcm, sr) == pytest.approx(700, abs=3)


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _garbage_flac(path: Path) -> Path:
    path.write_bytes(b"fLaC" + bytes(range(256)) * 8)
    return path


def _text(path: Path) -> Path:
    path.write_text("just some words\n" * 40)
    return path


def _video_without_audio(path: Path) -> Path:
    write_video(path, SEGMENTS[:1], audio=False)
    return path


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: _empty(d / "empty.wav"), "zero-length file"),
        (lambda d: _text(d / "notes.mp3"), "not an audio file"),
        (
            lambda d: _truncate(write_tone(d / "t.flac", "flac", 16000, 1, 3.0, 300.0)),
            "truncated or corrupt",
        ),
        (
            lambda d: _truncate(write_wav(d / "t.wav", 16000, 1, 3.0, 300.0)),
            "truncated or corrupt: decoded",
        ),
        (lambda d: _garbage_flac(d / "bad.flac"), "truncated or corrupt"),
        (lambda d: _video_without_audio(d / "mute.mp4"), "no audio stream (streams: video)"),
    ],
    ids=["zero-length", "text", "truncated-flac", "truncated-wav", "corrupt-flac", "no-audio"],
)
def test_load_audio_rejects(tmp_path: Path, make, reason: str) -> None:
    with pytest.raises(AudioRejected) as err:
        load_audio(make(tmp_path))
    assert str(err.value).startswith(reason), str(err.value)


def test_load_audio_too_long(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "long.wav", 8000, 1, 3.0, 300.0)
    with pytest.raises(AudioRejected, match=r"^too long: 3\.0 s > max_duration_s 2"):
        load_audio(path, max_duration_s=2)
    assert load_audio(path, max_duration_s=4).duration_s == pytest.approx(3.0, abs=0.01)


def test_unknown_format_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="audio format"):
        load_audio(write_wav(tmp_path / "a.wav", 8000, 1, 0.5, 300.0), fmt="mp3")
