"""The video and audio sources through the real ingest runner into a real lake.

Videos are synthesised with PyAV (lake.synth_video) with planted scene cuts, moving and
static shapes and tone tracks; the tests follow a frame back to the second of its video.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import av
import imagehash
import numpy as np
import pytest
from PIL import Image

from lake.ingest import IngestSettings, ingest
from lake.store import Lake
from lake.synth_video import Segment, write_video
from plugins.audio import AudioSource
from plugins.video import VideoSource
from tests.conftest import conf_kwargs

QUIET = IngestSettings(progress=False)
RED, BLUE, GREEN, GREY = (200, 30, 30), (30, 30, 200), (30, 160, 60), (90, 90, 90)


def video_source(path: Path, **values: object) -> VideoSource:
    """The source ``conf/source/video.yaml`` builds, inline (no workers), ``values`` replacing."""
    return VideoSource(
        **conf_kwargs("ingest", "source", "source=video", path=path, workers=0, **values)
    )


def _segments() -> list[Segment]:
    return [
        Segment(2.0, GREY, "circle", RED, "moving", 440.0),
        Segment(2.0, BLUE, "square", GREEN, "static", 660.0),
        Segment(2.0, GREEN, "triangle", BLUE, "moving", None),
    ]


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two good videos (one without audio, one rotated) and three bad files."""
    root = tmp_path_factory.mktemp("clips")
    write_video(root / "a.mp4", _segments())
    write_video(root / "sub" / "b.mkv", _segments()[:2], audio=False, rotation=90)
    (root / "empty.mp4").write_bytes(b"")
    good = (root / "a.mp4").read_bytes()
    (root / "truncated.mov").write_bytes(good[: len(good) // 3])
    (root / "notes.webm").write_text("this is not a video\n")
    (root / "readme.txt").write_text("ignored: not a video extension")
    return root


@pytest.fixture(scope="module")
def video_lake(video_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, Path]:
    lake = Lake(tmp_path_factory.mktemp("vlake") / "lake")
    rejects = video_folder.parent / "video_rejects.jsonl"
    ingest(video_source(video_folder), lake, settings=QUIET, rejects_path=rejects)
    return lake, rejects


def _rows(lake: Lake, table: str, where: str | None = None) -> list[dict]:
    cols = [f.name for f in lake.dataset(table).schema if f.name != "blob"]
    return lake.dataset(table).to_table(columns=cols, filter=where).to_pylist()


def test_bad_files_are_rejected_by_name_and_the_rest_lands(video_lake, video_folder) -> None:
    lake, rejects = video_lake
    reasons = {
        r["source_file"]: r["reason"] for r in map(json.loads, rejects.read_text().splitlines())
    }
    assert set(reasons) == {"empty.mp4", "truncated.mov", "notes.webm"}
    assert "zero-length" in reasons["empty.mp4"]
    assert all(reason.startswith(f"video {name}: ") for name, reason in reasons.items())
    videos = _rows(lake, "media", "kind = 'video'")
    assert sorted(v["source_uri"] for v in videos) == ["a.mp4", "sub/b.mkv"]


def test_video_rows_hold_the_file_lazily_and_its_probe(video_lake, video_folder) -> None:
    lake, _ = video_lake
    data = (video_folder / "a.mp4").read_bytes()
    vid = hashlib.sha256(data).hexdigest()
    (row,) = _rows(lake, "media", f"media_id = '{vid}'")
    assert row["kind"] == "video" and row["bytes"] is None and row["mime"] == "video/mp4"
    assert row["duration_s"] == pytest.approx(6.0, abs=0.1)
    blob = lake.open_blob("media", vid)
    assert blob.read() == data  # the original bytes, byte for byte
    rotated = _rows(lake, "media", "source_uri = 'sub/b.mkv'")[0]
    assert (rotated["width"], rotated["height"]) == (240, 320)  # displayed size


def test_audio_track_is_16k_mono_with_its_parent(video_lake, video_folder) -> None:
    lake, _ = video_lake
    vid = hashlib.sha256((video_folder / "a.mp4").read_bytes()).hexdigest()
    audio = _rows(lake, "media", "kind = 'audio'")
    assert len(audio) == 1  # b.mkv has no audio stream: fine, no row
    (track,) = audio
    assert track["parent_id"] == vid and track["source_uri"] == "a.mp4#audio"
    assert track["duration_s"] == pytest.approx(6.0, abs=0.05)
    with av.open(io.BytesIO(track["bytes"])) as c:
        stream = c.streams.audio[0]
        assert (stream.rate, stream.channels) == (16000, 1)
    steps = [s["name"] for s in track["provenance"]["steps"]]
    assert "audio_extract" in steps


def test_frames_and_clips_per_scene(video_lake, video_folder) -> None:
    lake, _ = video_lake
    vid = hashlib.sha256((video_folder / "a.mp4").read_bytes()).hexdigest()
    frames = _rows(lake, "media", f"kind = 'frame' AND parent_id = '{vid}'")
    assert {f["scene"] for f in frames} == {0, 1, 2}
    per_scene = {s: sum(f["scene"] == s for f in frames) for s in (0, 1, 2)}
    assert per_scene[1] < per_scene[0] and per_scene[1] < per_scene[2]  # static scene: few
    clips = _rows(lake, "samples", "array_has(tags, 'kind:clip')")
    mine = sorted(
        (c for c in clips if c["source_uri"].startswith("a.mp4#")), key=lambda c: c["t_start"]
    )
    assert [c["source_uri"] for c in mine] == [f"a.mp4#scene={i}" for i in range(3)]
    assert mine[1]["t_start"] == pytest.approx(2.0, abs=0.05)
    assert mine[2]["t_end"] == pytest.approx(6.0, abs=0.1)
    by_id = {f["media_id"]: f for f in frames}
    for clip in mine:
        times = [by_id[m]["t_start"] for m in clip["media_ids"]]
        assert times == sorted(times)
        assert all(clip["t_start"] - 1e-6 <= t < clip["t_end"] for t in times)
    frame_samples = _rows(lake, "samples", "array_has(tags, 'kind:frame')")
    assert len([s for s in frame_samples if s["source_uri"].startswith("a.mp4#t=")]) == len(frames)


def test_a_frame_traces_back_to_the_second_of_its_video(video_lake) -> None:
    lake, _ = video_lake
    sample = _rows(lake, "samples", "array_has(tags, 'kind:frame')")[3]
    (frame,) = _rows(lake, "media", f"media_id = '{sample['media_ids'][0]}'")
    steps = {s["name"]: json.loads(s["params"]) for s in frame["provenance"]["steps"]}
    assert {"decode", "scene_detect", "sample", "dedupe", "encode", "frame"} <= set(steps)
    (video,) = _rows(lake, "media", f"media_id = '{frame['parent_id']}'")
    assert sample["source_uri"] == f"{video['source_uri']}#t={frame['t_start']:.3f}"
    # decode the stored video (read lazily from the lake) at the frame's time: same picture
    with av.open(lake.open_blob("media", video["media_id"])) as c:
        stream = c.streams.video[0]
        for decoded in c.decode(stream):
            if decoded.time is not None and decoded.time >= frame["t_start"] - 1e-6:
                break
        img = decoded.to_image()
    rotation = steps["encode"].get("rotation", 0)
    if rotation:
        img = img.rotate(-rotation, expand=True)
    stored = Image.open(io.BytesIO(frame["bytes"]))
    img = img.resize(stored.size)
    assert imagehash.phash(img) - imagehash.phash(stored) <= 4
    diff = np.abs(np.asarray(img, np.float32) - np.asarray(stored.convert("RGB"), np.float32))
    assert diff.mean() < 8


def test_reingest_converges_and_reference_mode(video_lake, video_folder, tmp_path) -> None:
    lake, _ = video_lake
    before = lake.current_versions()
    again = ingest(video_source(video_folder), lake, settings=QUIET)
    assert (again.new_samples, again.new_media) == (0, 0)
    assert lake.current_versions() == before
    ref_lake = Lake(tmp_path / "ref")
    ingest(video_source(video_folder / "a.mp4", store_video=False), ref_lake, settings=QUIET)
    (video,) = _rows(ref_lake, "media", "kind = 'video'")
    assert video["source_uri"] == "a.mp4" and ref_lake.open_blob("media", video["media_id"]) is None
    same = {r["media_id"] for r in _rows(ref_lake, "media", "kind = 'frame'")}
    assert same == {
        r["media_id"] for r in _rows(lake, "media", "kind = 'frame' AND source_uri LIKE 'a.mp4%'")
    }


def test_audio_source_ingests_audio_and_rejects_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "speech"
    root.mkdir()
    write_video(root / "tone.mp4", _segments()[:1])  # a video file: not in the audio extensions
    sr = 22050
    t = np.arange(int(1.5 * sr)) / sr
    _write_wav(root / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr)
    _write_flac(
        root / "nested" / "tone.flac", (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sr
    )
    (root / "empty.flac").write_bytes(b"")
    (root / "fake.mp3").write_text("not audio at all")
    lake = Lake(tmp_path / "lake")
    rejects = tmp_path / "rejects.jsonl"
    report = ingest(AudioSource(root, workers=0), lake, settings=QUIET, rejects_path=rejects)
    assert (report.new_samples, report.rejected) == (2, 2)
    reasons = {r["source_file"] for r in map(json.loads, rejects.read_text().splitlines())}
    assert reasons == {"empty.flac", "fake.mp3"}
    media = _rows(lake, "media")
    assert {m["source_uri"] for m in media} == {"tone.wav", "nested/tone.flac"}
    assert all(
        m["kind"] == "audio" and m["duration_s"] == pytest.approx(1.5, abs=0.05) for m in media
    )
    samples = _rows(lake, "samples")
    assert all(s["tags"] == ["kind:audio"] for s in samples)
    steps = json.loads(media[0]["provenance"]["steps"][0]["params"])
    assert len(steps["source_sha256"]) == 64


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    import wave

    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())


def _write_flac(path: Path, samples: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            (samples * 32767).astype(np.int16)[None, :], format="s16", layout="mono"
        )
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
