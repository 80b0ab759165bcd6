"""Video and audio turns in the conversation sources (sharegpt, llava, messages) and back.

Real small files: an H.264 + AAC MP4 from lake.synth_video, a 22.05 kHz WAV and a JPEG, in
the layouts of LLaMA-Factory (``mllm_video_demo.json``, ``mllm_audio_demo.json``), 2U1's
Qwen2-VL-Finetune (``video`` key), Qwen content parts and OpenAI's ``input_audio``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lake.audio import decode_pcm
from lake.export import export
from lake.ingest import IngestSettings, ingest
from lake.records import Reject, SourceRecord
from lake.schema import MEDIA, SAMPLES
from lake.store import Lake
from lake.synth_video import Segment, write_video
from plugins.exporters import LlavaExporter, MessagesExporter, ShareGPTExporter
from plugins.llava import LlavaSource
from plugins.messages import MessagesSource
from plugins.sharegpt import ShareGPTSource
from tests.conftest import jpeg_bytes

QUIET = IngestSettings(workers=0, progress=False)
# LLaMA-Factory's dataset_info.json tags for its mllm demos (sharegpt formatting)
LF = {
    "messages_key": "messages",
    "role_key": "role",
    "content_key": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wav(path: Path, rate: int = 22050, seconds: float = 0.6, hz: float = 440.0) -> None:
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mllm_demo_data/`` with a 2 s video (two scenes, a tone track), a WAV and a JPEG."""
    ds = tmp_path_factory.mktemp("av") / "data"
    media = ds / "mllm_demo_data"
    media.mkdir(parents=True)
    segments = [
        Segment(1.0, (90, 90, 90), "circle", (200, 30, 30), "moving", 440.0),
        Segment(1.0, (30, 30, 200), "square", (30, 160, 60), "static", 660.0),
    ]
    write_video(media / "1.mp4", segments, fps=10, size=(96, 64))
    _wav(media / "1.wav")
    (media / "1.jpg").write_bytes(jpeg_bytes((200, 0, 0)))
    (media / "notes.mp4").write_text("not a video\n")
    return ds


def _write(root: Path, name: str, records: list[dict[str, Any]]) -> Path:
    path = root / name
    path.write_text(json.dumps(records, indent=1))
    return path


def _records(source: Any) -> tuple[list[SourceRecord], list[Reject]]:
    items = list(source.records())
    return (
        [r for r in items if isinstance(r, SourceRecord)],
        [r for r in items if isinstance(r, Reject)],
    )


def _media(lake: Lake) -> dict[str, dict[str, Any]]:
    cols = [f.name for f in lake.dataset(MEDIA).schema if f.name != "blob"]
    return {r["media_id"]: r for r in lake.dataset(MEDIA).to_table(columns=cols).to_pylist()}


def _samples(lake: Lake) -> list[dict[str, Any]]:
    cols = ["sample_id", "media_ids", "messages", "chosen", "rejected"]
    return lake.dataset(SAMPLES).to_table(columns=cols).to_pylist()


VIDEO_DEMO = [  # LLaMA-Factory data/mllm_video_demo.json
    {
        "messages": [
            {"content": "<video>Why is this video funny?", "role": "user"},
            {"content": "Because a circle chases nothing.", "role": "assistant"},
        ],
        "videos": ["mllm_demo_data/1.mp4"],
    }
]
AUDIO_DEMO = [  # LLaMA-Factory data/mllm_audio_demo.json
    {
        "messages": [
            {"content": "<audio>What's that sound?", "role": "user"},
            {"content": "A tone at 440 Hz.", "role": "assistant"},
        ],
        "audios": ["mllm_demo_data/1.wav"],
    }
]


def test_llamafactory_video_demo_lands_the_video_with_its_frames_and_audio(
    root: Path, tmp_path: Path
) -> None:
    data = _write(root, "video_demo.json", VIDEO_DEMO)
    lake = Lake(tmp_path / "lake")
    report = ingest(ShareGPTSource(data, **LF), lake, "demo", settings=QUIET)
    assert report.rejected == 0
    (sample,) = _samples(lake)
    video_id = _sha(root / "mllm_demo_data/1.mp4")
    assert sample["media_ids"] == [video_id]
    assert sample["messages"][0]["content"] == "<video>Why is this video funny?"
    media = _media(lake)
    assert media[video_id]["kind"] == "video"
    assert media[video_id]["mime"] == "video/mp4"
    with lake.open_blob(MEDIA, video_id) as blob:
        assert blob.read() == (root / "mllm_demo_data/1.mp4").read_bytes()
    children = [m for m in media.values() if m["parent_id"] == video_id]
    kinds = sorted({m["kind"] for m in children})
    assert kinds == ["audio", "frame"]
    audio = next(m for m in children if m["kind"] == "audio")
    assert decode_pcm(audio["bytes"])[1] == 16000


def test_llamafactory_audio_demo_lands_16k_mono_audio(root: Path, tmp_path: Path) -> None:
    data = _write(root, "audio_demo.json", AUDIO_DEMO)
    lake = Lake(tmp_path / "lake")
    assert ingest(MessagesSource(data), lake, "demo", settings=QUIET).rejected == 0
    (sample,) = _samples(lake)
    (audio,) = _media(lake).values()
    assert sample["media_ids"] == [audio["media_id"]]
    assert (audio["kind"], audio["mime"]) == ("audio", "audio/flac")
    pcm, rate = decode_pcm(audio["bytes"])
    assert rate == 16000 and abs(len(pcm) / rate - 0.6) < 0.05
    assert sample["messages"][0]["content"] == "<audio>What's that sound?"


def test_qwen_parts_interleave_media_in_placeholder_order(root: Path) -> None:
    wav = (root / "mllm_demo_data/1.wav").read_bytes()
    data = _write(
        root,
        "qwen.json",
        [
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "video", "video": "mllm_demo_data/1.mp4"},
                            {"type": "text", "text": "Compare with "},
                            {"type": "image", "image": "mllm_demo_data/1.jpg"},
                            {"type": "audio", "audio": "mllm_demo_data/1.wav"},
                        ],
                    },
                    {"role": "assistant", "content": "They match."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "And this? "},
                            {
                                "type": "input_audio",
                                "input_audio": {
                                    "data": base64.b64encode(wav).decode(),
                                    "format": "wav",
                                },
                            },
                        ],
                    },
                    {"role": "assistant", "content": "The same tone."},
                ]
            }
        ],
    )
    (rec,), rejects = _records(MessagesSource(data))
    assert rejects == []
    assert rec.messages[0]["content"] == "<video>Compare with <image><audio>"
    assert rec.messages[2]["content"] == "And this? <audio>"
    assert [m.kind for m in rec.media] == ["video", "image", "audio", "audio"]
    # the inline audio and the file are the same samples: one audio media
    assert rec.media[2].data == rec.media[3].data
    video_id = _sha(root / "mllm_demo_data/1.mp4")
    assert rec.media[0].media_id == video_id
    assert {a.meta.parent_id for a in rec.attached if a.meta} == {video_id}


def test_2u1_video_key_and_llava(root: Path) -> None:
    data = _write(
        root,
        "2u1.json",
        [
            {
                "id": "v1",
                "video": "mllm_demo_data/1.mp4",
                "conversations": [
                    {"from": "human", "value": "<video>\nWhat happens?"},
                    {"from": "gpt", "value": "Shapes move."},
                ],
            }
        ],
    )
    (rec,), rejects = _records(LlavaSource(data))
    assert rejects == []
    assert [m.kind for m in rec.media] == ["video"]
    assert {a.kind for a in rec.attached} == {"audio", "frame"}


def test_placeholders_the_source_cannot_resolve_are_rejects_with_the_reason(root: Path) -> None:
    conv = [{"from": "human", "value": "<video>What?"}, {"from": "gpt", "value": "This."}]
    two = [{"from": "human", "value": "<audio><audio>Same?"}, {"from": "gpt", "value": "Yes."}]
    data = _write(
        root,
        "bad.json",
        [
            {"conversations": conv},  # a <video> and no videos
            {"conversations": two, "audios": ["mllm_demo_data/1.wav"]},  # 2 <audio>, 1 audio
            {"conversations": conv, "videos": ["mllm_demo_data/notes.mp4"]},  # not a video
            {"conversations": conv, "videos": ["mllm_demo_data/missing.mp4"]},
            {"conversations": conv[1:], "videos": ["mllm_demo_data/1.mp4"]},  # no placeholder
        ],
    )
    records, rejects = _records(ShareGPTSource(data))
    assert records == []
    reasons = [r.reason for r in rejects]
    assert reasons[0] == "1 <video> placeholder(s) but 0 video(s)"
    assert reasons[1] == "2 <audio> placeholder(s) but 1 audio(s)"
    assert reasons[2].startswith("video mllm_demo_data/notes.mp4: ")
    assert reasons[3] == "video file not found: mllm_demo_data/missing.mp4"
    assert reasons[4] == "0 <video> placeholder(s) but 1 video(s)"
    # a messages part with a literal placeholder in its text is refused too
    parts = [{"role": "user", "content": [{"type": "text", "text": "<video>"}]}]
    bad_parts = _write(root, "bad_parts.json", [{"messages": parts}])
    _, (reject,) = _records(MessagesSource(bad_parts))
    assert "text part contains a literal <video>" in reject.reason


MIXED = [  # images, videos and audio in one conversation, plus text-only and image-only records
    {
        "messages": [
            {"content": "<audio>Listen, then watch <video> and look: <image>", "role": "user"},
            {"content": "A tone, a circle, red.", "role": "assistant"},
            {"content": "Again <video>", "role": "user"},
            {"content": "Same video.", "role": "assistant"},
        ],
        "images": ["mllm_demo_data/1.jpg"],
        "videos": ["mllm_demo_data/1.mp4", "mllm_demo_data/1.mp4"],
        "audios": ["mllm_demo_data/1.wav"],
    },
    *VIDEO_DEMO,
    *AUDIO_DEMO,
    {
        "messages": [
            {"content": "<image>Colour?", "role": "user"},
            {"content": "Red.", "role": "assistant"},
        ],
        "images": ["mllm_demo_data/1.jpg"],
    },
]


@pytest.mark.parametrize(
    "exporter",
    [
        ShareGPTExporter(),
        ShareGPTExporter(
            file="lf.json",
            messages_key="messages",
            role_key="role",
            content_key="content",
            user_tag="user",
            assistant_tag="assistant",
        ),
        LlavaExporter(),
        MessagesExporter(style="qwen"),
        MessagesExporter(style="openai"),
        MessagesExporter(style="text"),
    ],
    ids=["sharegpt", "sharegpt-llamafactory", "llava", "qwen", "openai", "text"],
)
def test_round_trip_ingest_export_ingest_is_exact(
    root: Path, tmp_path: Path, exporter: Any
) -> None:
    data = _write(root, "mixed.json", MIXED)
    first = Lake(tmp_path / "a")
    assert ingest(MessagesSource(data), first, "demo", settings=QUIET).rejected == 0
    out = tmp_path / "out"
    report = export(first, exporter, out)
    assert report["samples"] == len(MIXED) and report["skipped"] == {}
    assert report["changed_ids"] == 0
    text = (out / exporter.file).read_text()
    record = (
        json.loads(text)[0]
        if exporter.file.endswith(".json")
        else json.loads(text[: text.index("\n")])
    )
    if exporter.name in ("sharegpt", "messages") and "videos" in record:
        assert len(record["videos"]) == 2 and len(record["audios"]) == 1
        assert record["videos"][0] == record["videos"][1]
    if exporter.name == "llava":
        assert isinstance(record["video"], list) and isinstance(record["audio"], str)
    second = Lake(tmp_path / "b")
    source_cls = {"sharegpt": ShareGPTSource, "llava": LlavaSource, "messages": MessagesSource}
    source = source_cls[exporter.source](out, **exporter.source_options())
    assert ingest(source, second, "demo", settings=QUIET).rejected == 0
    key = {s["sample_id"]: s for s in _samples(first)}
    assert {s["sample_id"]: s for s in _samples(second)} == key
    mixed = next(s for s in key.values() if len(s["media_ids"]) == 4)
    kinds = [_media(first)[m]["kind"] for m in mixed["media_ids"]]
    assert kinds == ["audio", "video", "image", "video"]
    media_a, media_b = _media(first), _media(second)
    assert set(media_a) == set(media_b)
    for mid, row in media_a.items():
        assert (row["kind"], row["bytes"], row["parent_id"]) == (
            media_b[mid]["kind"],
            media_b[mid]["bytes"],
            media_b[mid]["parent_id"],
        )
    video_id = _sha(root / "mllm_demo_data/1.mp4")
    with second.open_blob(MEDIA, video_id) as blob:
        assert blob.read() == (root / "mllm_demo_data/1.mp4").read_bytes()


def test_referenced_video_is_skipped_by_the_exporters_with_the_reason(
    root: Path, tmp_path: Path
) -> None:
    data = _write(root, "video_demo_ref.json", VIDEO_DEMO + AUDIO_DEMO)
    lake = Lake(tmp_path / "lake")
    ingest(MessagesSource(data, store_video=False), lake, "demo", settings=QUIET)
    report = export(lake, ShareGPTExporter(), tmp_path / "out")
    assert report["samples"] == 1
    assert list(report["skipped"]) == [
        "video stored by reference (store_video=false): its bytes are not in the lake"
    ]
