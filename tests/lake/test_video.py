"""lake.video on synthetic videos with planted truth: cuts, sampling, dedupe, VFR, rotation."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from lake.audio import decode_pcm
from lake.synth_video import Segment, demo_videos, write_video
from lake.video import VideoRejected, VideoSettings, analyze_video, probe_video
from tests.conftest import conf_kwargs

NAVY, CREAM, GREEN, CRIMSON = (20, 30, 90), (235, 225, 200), (30, 120, 50), (170, 30, 40)
WHITE, BLACK = (250, 250, 250), (10, 10, 10)

CUTS = [  # equal-length static and moving segments, so their frame counts compare fairly
    Segment(2.0, NAVY, "circle", WHITE, "static", 440.0),
    Segment(2.0, CREAM, "square", BLACK, "moving", None),
    Segment(2.0, GREEN, "triangle", WHITE, "static", 660.0),
    Segment(2.0, CRIMSON, "circle", BLACK, "moving", 330.0),
]
SCENE_A = Segment(1.5, NAVY, "square", WHITE, "static")
RETURN = [SCENE_A, Segment(1.5, CREAM, "circle", BLACK, "static"), SCENE_A]
FLASH = [  # cuts closer than min_scene_len: the detectors merge them and report late
    Segment(2.0, NAVY, "circle", WHITE, "moving"),
    Segment(0.2, CREAM, "square", BLACK),
    Segment(0.6, GREEN, "triangle", BLACK),
    Segment(0.2, CRIMSON, "square", BLACK),
    Segment(2.0, CREAM, "circle", BLACK, "moving"),
]


def settings(**values: object) -> VideoSettings:
    """``analysis:`` of ``conf/source/video.yaml``, ``values`` replacing some."""
    return VideoSettings(**conf_kwargs("ingest", "source.analysis", "source=video", **values))


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """The synthetic videos of this module with their ground truth."""
    root = tmp_path_factory.mktemp("videos")
    specs = {
        "cuts": (CUTS, {}),
        "return": (RETURN, {"audio": False}),
        "vfr": (CUTS[:2], {"vfr": True}),
        "rot90": ([SCENE_A], {"rotation": 90, "audio": False}),
        "rot-90": ([SCENE_A], {"rotation": -90, "audio": False}),
        "gop": (CUTS[:2], {"gop": 5}),
        "flash": (FLASH, {"audio": False}),
    }
    out = {}
    for name, (segments, kw) in specs.items():
        path = root / f"{name}.mp4"
        out[name] = (path, write_video(path, segments, **kw))
    return out


@pytest.fixture(scope="module")
def cuts_analysis(videos):
    return analyze_video(videos["cuts"][0], settings())


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_planted_cuts_found_within_one_frame(videos, detector: str) -> None:
    path, truth = videos["cuts"]
    result = analyze_video(path, settings(detector=detector))
    assert len(result.scenes) == len(truth["segments"])
    for scene, seg in zip(result.scenes, truth["segments"], strict=True):
        assert abs(scene.first_frame - seg["first_frame"]) <= 1
        assert abs(scene.t_start - seg["t_start"]) <= 1 / truth["fps"] + 1e-6
    assert [s.last_frame + 1 for s in result.scenes[:-1]] == [
        s.first_frame for s in result.scenes[1:]
    ]
    assert result.scenes[-1].last_frame == truth["frames"] - 1
    assert result.scenes[-1].t_end == pytest.approx(truth["duration_s"], abs=0.05)
    assert dict(result.steps)["scene_detect"]["detector"] == detector


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_cuts_match_pyscenedetects_own_pipeline(videos, detector: str) -> None:
    """Late (merged) cuts land where scenedetect.detect() puts them, and start a scene."""
    from scenedetect import AdaptiveDetector, ContentDetector, detect

    path = videos["flash"][0]
    result = analyze_video(path, settings(detector=detector))
    own = (
        ContentDetector(threshold=27.0, min_scene_len=0.5)
        if detector == "content"
        else AdaptiveDetector(adaptive_threshold=3.0, min_scene_len=0.5)
    )
    expected = [start.frame_num for start, _ in detect(str(path), own, backend="pyav")]
    assert [s.first_frame for s in result.scenes] == expected
    assert len(expected) < len(FLASH)  # some planted cuts were merged
    for k, scene in enumerate(result.scenes):
        first = result.frames[scene.frames[0]]
        assert (first.index, first.scene, first.reason) == (scene.first_frame, k, "scene_start")


def test_motion_sampling_keeps_more_frames_from_moving_segments(cuts_analysis) -> None:
    frames = cuts_analysis.frames
    per_scene = [sum(f.scene == k for f in frames) for k in range(len(CUTS))]
    static = [n for n, seg in zip(per_scene, CUTS, strict=True) if seg.motion == "static"]
    moving = [n for n, seg in zip(per_scene, CUTS, strict=True) if seg.motion == "moving"]
    assert min(moving) > max(static)
    assert static == [1, 1]  # a still scene is one frame: its start
    assert min(moving) >= 3  # 2 s at 2 candidates/s, nearly all differ from the last kept
    for k, scene in enumerate(cuts_analysis.scenes):
        assert scene.frames, "every scene has at least one frame"
        first = frames[scene.frames[0]]
        assert (first.scene, first.reason, first.index) == (k, "scene_start", scene.first_frame)
    assert all(
        f.reason == "motion" and f.motion >= 3.0
        for f in frames
        if f.index not in {s.first_frame for s in cuts_analysis.scenes}
    )
    stats = cuts_analysis.stats
    assert stats["frames_decoded"] == 200
    assert (
        stats["candidates"] == stats["kept"] + stats["dropped_static"] + stats["dropped_duplicate"]
    )
    assert stats["dropped_static"] >= 4  # the still scenes' grid candidates
    assert [f.index for f in frames] == sorted(f.index for f in frames)


def test_kept_frames_are_jpegs_with_phash_and_thumb(cuts_analysis) -> None:
    import imagehash

    for f in cuts_analysis.frames:
        img = Image.open(io.BytesIO(f.jpeg))
        assert img.format == "JPEG" and img.size == (f.width, f.height) == (320, 240)
        assert f.phash == int(str(imagehash.phash(img)), 16)
        assert max(Image.open(io.BytesIO(f.thumb)).size) == 128
    probe = cuts_analysis.probe
    assert (probe.container, probe.mime, probe.codec) == ("mp4", "video/mp4", "h264")
    assert (probe.width, probe.height, probe.fps, probe.frames) == (320, 240, 25.0, 200)
    assert probe.duration_s == pytest.approx(8.0, abs=0.05) and not probe.vfr
    assert (probe.audio_streams, probe.audio_codec, probe.audio_rate) == (1, "aac", 16000)
    assert probe.as_dict()["codec"] == "h264"
    steps = [name for name, _ in cuts_analysis.steps]
    assert steps == ["decode", "scene_detect", "sample", "dedupe", "encode", "audio_extract"]


def test_frame_max_side_scales_kept_frames(videos) -> None:
    result = analyze_video(videos["cuts"][0], settings(frame_max_side=160, audio=False))
    assert {(f.width, f.height) for f in result.frames} == {(160, 120)}
    assert result.audio is None and "audio_extract" not in dict(result.steps)


def test_static_duplicates_dropped_by_phash(videos) -> None:
    path, truth = videos["return"]
    result = analyze_video(path, settings())
    assert [s.first_frame for s in result.scenes[1:]] == [c["frame"] for c in truth["cuts"]]
    assert len(result.frames) == 2  # the return to scene A adds no frame
    assert result.stats["dropped_duplicate"] == 1
    assert [s.frames for s in result.scenes] == [(0,), (1,), (0,)]  # scene 3 shows frame 0
    assert result.frames[1].reason == "scene_start"


def test_audio_extracted_with_the_video(cuts_analysis, videos) -> None:
    truth = videos["cuts"][1]
    audio = cuts_analysis.audio
    assert audio is not None and audio.mime == "audio/flac"
    assert (audio.sample_rate, audio.channels, audio.source_codec) == (16000, 1, "aac")
    assert abs(audio.duration_s - truth["audio_duration_s"]) <= 0.05
    pcm, rate = decode_pcm(audio.data)
    assert rate == 16000 and len(pcm) == round(audio.duration_s * 16000)
    first = pcm[int(0.3 * rate) : int(1.7 * rate)]  # segment A carries 440 Hz
    spectrum = np.abs(np.fft.rfft(first * np.hanning(len(first))))
    assert np.fft.rfftfreq(len(first), 1 / rate)[np.argmax(spectrum)] == pytest.approx(440, abs=3)


def test_bytes_are_deterministic(videos, cuts_analysis) -> None:
    again = analyze_video(videos["cuts"][0], settings())
    assert [f.jpeg for f in again.frames] == [f.jpeg for f in cuts_analysis.frames]
    assert [f.thumb for f in again.frames] == [f.thumb for f in cuts_analysis.frames]
    assert again.audio.data == cuts_analysis.audio.data
    assert again.scenes == cuts_analysis.scenes


def test_vfr_timestamps_come_from_pts(videos) -> None:
    path, truth = videos["vfr"]
    result = analyze_video(path, settings())
    assert result.probe.vfr and probe_video(path).vfr
    with av.open(str(path)) as c:  # independent read of every frame's time
        times = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    assert times == pytest.approx(truth["frame_times"], abs=1e-6)
    assert result.frames and all(
        f.t == pytest.approx(times[f.index], abs=1e-6) for f in result.frames
    )
    cut = truth["cuts"][0]
    assert abs(result.scenes[1].first_frame - cut["frame"]) <= 1
    assert result.scenes[1].t_start == pytest.approx(times[result.scenes[1].first_frame])
    assert len(set(np.round(np.diff(times), 4))) > 1  # really irregular


@pytest.mark.parametrize("name, rotation", [("rot90", 90), ("rot-90", -90)])
def test_rotated_video_frames_are_upright(videos, name: str, rotation: int) -> None:
    path = videos[name][0]
    probe = probe_video(path)
    assert probe.rotation == rotation and (probe.width, probe.height) == (240, 320)
    result = analyze_video(path, settings())
    frame = result.frames[0]
    assert (frame.width, frame.height) == (240, 320)
    ours = np.asarray(Image.open(io.BytesIO(frame.jpeg)).convert("RGB"), dtype=np.float32)
    cap = cv2.VideoCapture(str(path))  # OpenCV's own FFmpeg applies the display matrix
    ok, bgr = cap.read()
    cap.release()
    assert ok and bgr.shape == (320, 240, 3)
    reference = bgr[..., ::-1].astype(np.float32)
    assert np.abs(ours - reference).mean() < 6
    flipped = np.rot90(reference, 2)  # the pattern is asymmetric: wrong turns differ a lot
    assert np.abs(ours - flipped).mean() > 20
    assert dict(result.steps)["encode"]["rotation_applied"] == rotation


def test_detector_none_decodes_only_keyframes(videos) -> None:
    path, truth = videos["gop"]
    result = analyze_video(path, settings(detector="none"))
    assert result.steps[0][1]["mode"].startswith("keyframes")
    with av.open(str(path)) as c:
        keys = [float(p.pts * p.time_base) for p in c.demux(video=0) if p.is_keyframe]
    assert result.stats["frames_decoded"] == len(keys) < truth["frames"]
    assert all(min(abs(f.t - k) for k in keys) < 1e-6 for f in result.frames)
    assert len(result.scenes) == 1 and result.frames[0].reason == "scene_start"
    scene = result.scenes[0]
    assert (scene.first_frame, scene.last_frame) == (0, truth["frames"] - 1)
    assert scene.t_end == pytest.approx(truth["duration_s"], abs=0.05)


# --------------------------------------------------------------------------- rejects


def _truncated(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


def _truncated_mkv(tmp: Path) -> Path:
    full = tmp / "full.mkv"
    write_video(full, CUTS[:2])  # Matroska opens from its header; the frames stop early
    return _truncated(full, tmp / "half.mkv")


def _wav_only(tmp: Path) -> Path:
    path = tmp / "tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(8000, np.int16).tobytes())
    return path


def _unsupported_codec(tmp: Path) -> Path:
    """An AVI whose video FourCC names AVS2, a codec FFmpeg knows but has no decoder for."""
    path = tmp / "avs2.avi"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = path.read_bytes()
    assert data.count(b"FMP4") == 2  # the stream header's handler and the bitmap compression
    path.write_bytes(data.replace(b"FMP4", b"AVS2"))
    return path


def _corrupt_middle(src: Path, dst: Path) -> Path:
    """Random bytes over 500 bytes of the media data, a third into the file."""
    data = bytearray(src.read_bytes())
    at = len(data) // 3
    data[at : at + 500] = np.random.default_rng(0).integers(0, 256, 500, np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def _empty(tmp: Path) -> Path:
    path = tmp / "empty.mp4"
    path.write_bytes(b"")
    return path


def _text(tmp: Path) -> Path:
    path = tmp / "notes.mp4"
    path.write_text("not a video\n" * 50)
    return path


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda tmp, v: _truncated(v["cuts"][0], tmp / "half.mp4"), "truncated or corrupt:"),
        (lambda tmp, v: _truncated_mkv(tmp), "truncated or corrupt: frames stop at"),
        (lambda tmp, v: _corrupt_middle(v["cuts"][0], tmp / "bad.mp4"), "truncated or corrupt:"),
        (lambda tmp, v: _empty(tmp), "zero-length file"),
        (lambda tmp, v: _text(tmp), "not a video file"),
        (lambda tmp, v: _wav_only(tmp), "no video stream (audio only)"),
        (lambda tmp, v: _unsupported_codec(tmp), "unsupported codec 'avs2' (tag 'AVS2')"),
        (lambda tmp, v: tmp / "missing.mp4", "cannot read"),
    ],
    ids=[
        "truncated-mp4",
        "truncated-mkv",
        "corrupt-middle",
        "zero-length",
        "text",
        "audio-only",
        "codec",
        "missing",
    ],
)
def test_bad_input_rejected_with_reason(tmp_path: Path, videos, make, reason: str) -> None:
    path = make(tmp_path, videos)
    with pytest.raises(VideoRejected) as err:
        analyze_video(path, settings())
    assert str(err.value).startswith(reason), str(err.value)


def test_too_long_rejected(videos) -> None:
    path = videos["cuts"][0]
    with pytest.raises(VideoRejected, match=r"^too long: 8\.0 s > max_duration_s 5"):
        analyze_video(path, settings(max_duration_s=5))
    with pytest.raises(VideoRejected, match="too long"):
        probe_video(path, max_duration_s=5)


def test_video_without_audio_is_fine(videos) -> None:
    result = analyze_video(videos["return"][0], settings())
    assert result.audio is None and result.probe.audio_streams == 0


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="detector must be one of"):
        settings(detector="histogram")
    with pytest.raises(ValueError, match="audio format"):
        settings(audio_format="mp3")


def test_demo_videos_have_findable_planted_truth(tmp_path: Path) -> None:
    truth = demo_videos(tmp_path / "demo", n=4)
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [
        "ground_truth.json",
        *(f"video_{i:03d}.mp4" for i in range(4)),
    ]
    for name, video in truth["videos"].items():
        assert 4.0 <= video["duration_s"] <= 10.5 and len(video["segments"]) >= 2
        result = analyze_video(tmp_path / "demo" / name, settings())
        found = [s.first_frame for s in result.scenes[1:]]
        planted = [c["frame"] for c in video["cuts"]]
        assert len(found) == len(planted) and all(
            abs(a - b) <= 1 for a, b in zip(found, planted, strict=True)
        )
        assert (result.audio is None) == (not video["audio"])
        assert result.probe.rotation == video["rotation"]
    assert [v["audio"] for v in truth["videos"].values()] == [True, False, True, True]
    stamp = (tmp_path / "demo" / "video_000.mp4").stat().st_mtime_ns
    assert demo_videos(tmp_path / "demo", n=4) == truth  # idempotent: nothing rewritten
    assert (tmp_path / "demo" / "video_000.mp4").stat().st_mtime_ns == stamp
