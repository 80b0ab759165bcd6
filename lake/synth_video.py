"""Synthetic videos with planted scene cuts, written with PyAV, for tests, the demo and benches.

A video is a list of :class:`Segment` s: each is one scene (a background colour with one
shape, standing still or moving) with an optional sine tone on the audio track. Because
the cuts, the motion and the tones are planted, :func:`write_video` can return the ground
truth that analysis must recover. Drawing is plain PIL without anti-aliasing and every
random choice comes from a seeded generator, so the same arguments give the same frames.

Imports only numpy, PIL and av, so it runs in worker processes.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

GENERATOR = "lakeloom.synth_video"
VERSION = 1

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("static", "moving")
# well separated backgrounds: every pair used as a cut scores far above ContentDetector's 27
PALETTE: tuple[tuple[int, int, int], ...] = (
    (20, 30, 90),
    (235, 225, 200),
    (30, 120, 50),
    (170, 30, 40),
    (120, 180, 235),
    (50, 50, 50),
    (230, 200, 40),
    (110, 50, 140),
)
SHAPE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (250, 250, 250),
    (10, 10, 10),
    (240, 120, 20),
    (40, 200, 200),
)
MIN_CUT_SCORE = 45.0  # planted cuts must score at least this (ContentDetector-style HSV delta)
TONE_AMPLITUDE = 0.3
VFR_STEPS = (1, 2, 4)  # VFR frame durations, in half frame periods (the VFR pts unit)
_AUDIO_CHUNK = 1024  # samples per audio frame handed to the encoder (AAC's frame size)


class SynthError(ValueError):
    """The arguments cannot make a video (unknown shape, bad size, empty segment list...)."""


@dataclass(frozen=True)
class Segment:
    """One planted scene: ``seconds`` long, one ``shape`` over a ``background``."""

    seconds: float
    background: tuple[int, int, int]
    shape: str = "circle"  # circle | square | triangle
    color: tuple[int, int, int] = (250, 250, 250)
    motion: str = "static"  # static: the shape stands still; moving: it travels fast
    tone_hz: float | None = None  # sine tone on the audio track; None = silence


def _anchor(seg: Segment) -> tuple[float, float, float, float]:
    """Where a segment's shape sits, as fractions of the frame, plus two path phases.

    Derived from the segment's look only, so a video that returns to the same scene
    draws exactly the same frames again.
    """
    key = f"{seg.shape}|{seg.color}|{seg.background}".encode()
    d = hashlib.sha256(key).digest()
    return (0.25 + 0.5 * d[0] / 255, 0.3 + 0.4 * d[1] / 255, d[2] / 255 * 6.283, d[3] / 255 * 6.283)


def render_frame(seg: Segment, t: float, size: tuple[int, int]) -> np.ndarray:
    """The ``(height, width, 3)`` uint8 RGB frame of ``seg`` at ``t`` seconds into it."""
    w, h = size
    ax, ay, px, py = _anchor(seg)
    if seg.motion == "moving":  # a Lissajous path across most of the frame, ~2 s period
        ax = 0.5 + 0.3 * math.sin(2 * math.pi * t / 2.0 + px)
        ay = 0.5 + 0.25 * math.sin(2 * math.pi * t / 3.1 + py)
    r = 0.15 * min(w, h)
    cx, cy = ax * w, ay * h
    img = Image.new("RGB", (w, h), seg.background)
    draw = ImageDraw.Draw(img)
    box = (cx - r, cy - r, cx + r, cy + r)
    if seg.shape == "circle":
        draw.ellipse(box, fill=seg.color)
    elif seg.shape == "square":
        draw.rectangle(box, fill=seg.color)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=seg.color)
    return np.asarray(img)


def cut_score(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """A ContentDetector-like score of a cut between two flat colours (OpenCV HSV scales)."""
    ha, sa, va = colorsys.rgb_to_hsv(*(c / 255 for c in a))
    hb, sb, vb = colorsys.rgb_to_hsv(*(c / 255 for c in b))
    dh = min(abs(ha - hb), 1 - abs(ha - hb)) * 180
    return (dh + abs(sa - sb) * 255 + abs(va - vb) * 255) / 3


def _check(segments: list[Segment], fps: int, size: tuple[int, int]) -> None:
    if not segments:
        raise SynthError("a video needs at least one segment")
    if fps < 1 or min(size) < 16 or size[0] % 2 or size[1] % 2:
        raise SynthError(f"need fps >= 1 and an even size of at least 16x16, got {fps}, {size}")
    for seg in segments:
        if seg.shape not in SHAPES or seg.motion not in MOTIONS:
            raise SynthError(f"unknown shape or motion in {seg}")
        if seg.seconds * fps < 1:
            raise SynthError(f"segment shorter than one frame: {seg}")


def _frame_times(total: float, fps: int, vfr: bool) -> list[int]:
    """Presentation times of every frame before ``total`` seconds, in ``_time_base`` units."""
    rng = np.random.default_rng(7)
    times: list[int] = []
    t = 0
    while t * _time_base(fps, vfr) < total - 1e-9:
        times.append(t)
        t += VFR_STEPS[int(rng.integers(len(VFR_STEPS)))] if vfr else 1
    return times


def _time_base(fps: int, vfr: bool) -> Fraction:
    """The video pts unit: one frame period, or half of one for VFR (every codec takes it)."""
    return Fraction(1, 2 * fps if vfr else fps)


def _tone(segments: list[Segment], rate: int) -> np.ndarray:
    """The whole audio track as float32 samples: each segment's tone or silence."""
    parts = []
    for seg in segments:
        n = round(seg.seconds * rate)
        if seg.tone_hz is None:
            parts.append(np.zeros(n, np.float32))
        else:
            k = np.arange(n, dtype=np.float64)
            parts.append((TONE_AMPLITUDE * np.sin(2 * np.pi * seg.tone_hz * k / rate)).astype("f4"))
    return np.concatenate(parts)


def write_video(
    path: str | Path,
    segments: list[Segment],
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    audio: bool = True,
    rotation: int = 0,
    vfr: bool = False,
    codec: str = "libx264",
    audio_rate: int = 16000,
    gop: int | None = None,
    speech: np.ndarray | None = None,
    speech_at: float = 1.0,
) -> dict[str, Any]:
    """Write ``segments`` as one video (H.264 + AAC in MP4 by default) and return its truth.

    ``rotation`` stores a display matrix (FFmpeg convention: degrees counterclockwise the
    coded frame is turned for display; the coded frames stay unrotated). ``vfr`` gives
    frames irregular durations (0.5, 1 or 2 nominal periods); ``gop`` caps the keyframe
    interval (in frames; None leaves the encoder's default). ``speech`` (float32 mono
    samples at ``audio_rate``) replaces the tones: silence with the speech starting at
    ``speech_at`` seconds. The returned dict holds the
    cut times and first frame numbers, each segment's frame range, motion and tone, the
    video and audio durations, and with ``vfr`` every frame's time.
    """
    size = (int(size[0]), int(size[1]))
    _check(segments, fps, size)
    bounds = np.cumsum([0.0] + [s.seconds for s in segments])
    ticks = _frame_times(float(bounds[-1]), fps, vfr)
    time_base = _time_base(fps, vfr)
    times = [float(t * time_base) for t in ticks]
    seg_of = np.searchsorted(bounds, np.array(times) + 1e-9, side="right") - 1
    pcm = _tone(segments, audio_rate) if audio else None
    if pcm is not None and speech is not None:
        pcm = np.zeros_like(pcm)
        start = int(speech_at * audio_rate)
        clip = speech[: max(0, len(pcm) - start)].astype(np.float32)
        pcm[start : start + len(clip)] = clip

    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # no x264 statistics on stderr; restored below
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    out = av.open(str(path), "w")
    try:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        vs.codec_context.time_base = time_base
        if codec == "libx264":  # x264 is deterministic for a given machine and thread count
            vs.codec_context.options = {"preset": "veryfast"}
        if gop:
            vs.codec_context.gop_size = int(gop)
        if rotation:
            vs.set_display_rotation(rotation)
        aus = None
        if pcm is not None:
            aus = out.add_stream("aac", rate=audio_rate)
            aus.layout = "mono"
        sent = 0  # audio samples handed to the encoder so far
        for i, (tick, t) in enumerate(zip(ticks, times, strict=True)):
            seg = segments[seg_of[i]]
            frame = av.VideoFrame.from_ndarray(
                render_frame(seg, t - bounds[seg_of[i]], size), format="rgb24"
            )
            frame.pts, frame.time_base = tick, time_base
            for packet in vs.encode(frame):
                out.mux(packet)
            if aus is not None:  # keep audio up with video so the file is interleaved
                want = min(len(pcm), round((t + 1 / fps) * audio_rate))
                sent = _send_audio(out, aus, pcm, sent, want, audio_rate)
        for packet in vs.encode():
            out.mux(packet)
        if aus is not None:
            _send_audio(out, aus, pcm, sent, len(pcm), audio_rate)
            for packet in aus.encode():
                out.mux(packet)
    finally:
        out.close()
        av.logging.set_level(level)
    return _truth(segments, bounds, times, seg_of, fps, size, rotation, vfr, codec, pcm, audio_rate)


def _send_audio(out, stream, pcm: np.ndarray, start: int, stop: int, rate: int) -> int:
    """Encode ``pcm[start:stop]`` in whole chunks (the tail too once ``stop`` is the end)."""
    while start < stop and (stop - start >= _AUDIO_CHUNK or stop == len(pcm)):
        chunk = pcm[start : min(stop, start + _AUDIO_CHUNK)]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        for packet in stream.encode(frame):
            out.mux(packet)
        start += len(chunk)
    return start


def _truth(segments, bounds, times, seg_of, fps, size, rotation, vfr, codec, pcm, rate) -> dict:
    """The ground truth of one written video (see :func:`write_video`)."""
    firsts = [int(np.argmax(seg_of == k)) for k in range(len(segments))]
    lasts = [*(f - 1 for f in firsts[1:]), len(times) - 1]
    duration = round(float(bounds[-1]), 6)
    rows = [
        {
            "index": k,
            "first_frame": firsts[k],
            "last_frame": lasts[k],
            "t_start": times[firsts[k]],
            "t_end": times[lasts[k] + 1] if k + 1 < len(segments) else duration,
            **{
                key: list(v) if isinstance(v, tuple) else v
                for key, v in asdict(segments[k]).items()
                if key != "seconds"
            },
        }
        for k in range(len(segments))
    ]
    display = (size[1], size[0]) if rotation % 180 else size
    truth = {
        "fps": fps,
        "size": list(size),
        "display_size": list(display),
        "rotation": rotation,
        "vfr": vfr,
        "codec": codec,
        "frames": len(times),
        "duration_s": duration,
        "cuts": [{"frame": r["first_frame"], "t": r["t_start"]} for r in rows[1:]],
        "segments": rows,
        "audio": pcm is not None,
        "audio_rate": rate if pcm is not None else None,
        "audio_duration_s": len(pcm) / rate if pcm is not None else None,
    }
    if vfr:
        truth["frame_times"] = times
    return truth


# --------------------------------------------------------------------------- demo set


def _demo_segments(rng: np.random.Generator) -> list[Segment]:
    """2-4 segments, 4-10 s in all, mixing static and moving shapes, tones and silence."""
    n = int(rng.integers(2, 5))
    seconds = rng.uniform(4.0, 10.0) * rng.dirichlet(np.full(n, 4.0))
    seconds = np.maximum(np.round(seconds, 1), 1.0)
    segments: list[Segment] = []
    for k in range(n):
        options = [
            c
            for c in PALETTE
            if not segments or cut_score(c, segments[-1].background) >= MIN_CUT_SCORE
        ]
        background = options[int(rng.integers(len(options)))]
        colour = max(SHAPE_COLOURS, key=lambda c: cut_score(c, background) + rng.uniform(0, 30))
        tone = None if rng.uniform() < 0.25 else float(rng.choice([220.0, 330.0, 440.0, 660.0]))
        segments.append(
            Segment(
                seconds=float(seconds[k]),
                background=background,
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                color=colour,
                motion=MOTIONS[k % 2] if rng.uniform() < 0.7 else MOTIONS[int(rng.integers(2))],
                tone_hz=tone,
            )
        )
    return segments


def speak(text: str, rate: int = 16000, speed: int | None = None) -> np.ndarray | None:
    """``text`` spoken by espeak-ng as float32 mono samples at ``rate`` (None without it).

    ``speed`` is espeak-ng's ``-s`` (words per minute; None keeps its default of 175).
    """
    import subprocess
    import tempfile

    if shutil.which("espeak-ng") is None:
        return None
    from lake.audio import decode_pcm, load_audio

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        cmd = ["espeak-ng", "-w", str(wav)] + (["-s", str(int(speed))] if speed else [])
        subprocess.run([*cmd, text], check=True, capture_output=True)
        samples, _ = decode_pcm(load_audio(wav, rate, "wav").data)
    return samples


def demo_videos(
    out: str | Path,
    n: int = 4,
    seed: int = 0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    narration: str | None = None,
) -> dict[str, Any]:
    """Write ``n`` short varied demo videos and ``ground_truth.json`` into ``out``.

    Every video has planted cuts between 2-4 scenes; the second one has no audio track and
    the fourth is stored rotated by 90 degrees. With ``narration`` and espeak-ng on the
    PATH, the first video's audio is that sentence spoken (from 1 s) instead of tones, so
    the transcription has speech to find. Idempotent: if ``out`` already holds the
    videos made with the same arguments, nothing is rewritten. Returns the ground truth:
    ``{"generator", "version", "args", "videos": {file name: truth}}``.
    """
    out = Path(out)
    speech = speak(narration) if narration else None
    args = {
        "n": int(n),
        "seed": int(seed),
        "fps": int(fps),
        "size": [int(size[0]), int(size[1])],
        "narration": narration if speech is not None else None,
    }
    gt_path = out / "ground_truth.json"
    try:
        stored = json.loads(gt_path.read_text())
        if (
            stored.get("generator") == GENERATOR
            and stored.get("version") == VERSION
            and stored.get("args") == args
            and all((out / name).is_file() for name in stored["videos"])
        ):
            return stored
    except (OSError, ValueError, KeyError, TypeError):
        pass
    out.mkdir(parents=True, exist_ok=True)
    videos: dict[str, Any] = {}
    for i in range(int(n)):
        rng = np.random.default_rng([int(seed), i])
        segments = _demo_segments(rng)
        name = f"video_{i:03d}.mp4"
        tmp = out / f".{name[:-4]}.tmp.mp4"  # the suffix picks the muxer
        truth = write_video(
            tmp,
            segments,
            fps=int(fps),
            size=(int(size[0]), int(size[1])),
            audio=i != 1,
            rotation=90 if i == 3 else 0,
            speech=speech if i == 0 else None,
        )
        if i == 0 and speech is not None:
            truth["speech"] = {"text": narration, "t_start": 1.0}
        shutil.move(tmp, out / name)
        videos[name] = truth
    result = {"generator": GENERATOR, "version": VERSION, "args": args, "videos": videos}
    gt_path.write_text(json.dumps(result, indent=1))
    return result
