"""Transcribe enrichers on a real lake: faster-whisper tiny.en on espeak-ng speech, clips."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pyarrow as pa
import pytest

from lake.enrich import enrich
from lake.errors import ConfigError, RejectedInput
from lake.store import Lake
from plugins.transcribe import NO_AUDIO, ClipTranscript, TranscribeEnricher
from plugins.whisper_models import default_model_dir, file_sha256
from tests.conftest import conf_kwargs

SENTENCE = "the quick brown fox jumps over the lazy dog"
RATE = 16000
VIDEO = "v" * 64  # parent of a speaking video's frames and audio


def wav_bytes(samples: np.ndarray) -> bytes:
    """16-bit PCM WAV, 16 kHz mono (what the ingest stores for audio)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def silence(seconds: float) -> np.ndarray:
    """``seconds`` of digital silence."""
    return np.zeros(int(seconds * RATE), np.float32)


def sha(data: bytes) -> str:
    """A media_id."""
    return hashlib.sha256(data).hexdigest()


def words(text: str) -> str:
    """Lower case, punctuation removed (for WER)."""
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def audio_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Media rows of kind audio (``bytes``, optional ``parent_id``/``source_uri``)."""
    return pa.Table.from_pylist(
        [
            {
                "media_id": sha(r["bytes"]),
                "kind": "audio",
                "mime": "audio/wav",
                "bytes": r["bytes"],
                "duration_s": (len(r["bytes"]) - 44) / 2 / RATE,
                "parent_id": r.get("parent_id"),
                "source_uri": r.get("source_uri"),
            }
            for r in rows
        ]
    )


def add_video(lake: Lake, video: str, clips: list[tuple[float, float]]) -> list[str]:
    """A video row, one frame per clip and one clip sample per range; returns the sample ids."""
    frames = [f"{video[:8]}-frame-{i}" for i in range(len(clips))]
    media = pa.table(
        {
            "media_id": [video, *frames],
            "kind": ["video"] + ["frame"] * len(frames),
            "parent_id": [None] + [video] * len(frames),
            "t_start": [None] + [t0 for t0, _ in clips],
        }
    )
    lake.insert_new("media", media)
    samples = [
        {
            "sample_id": f"{video[:8]}-clip-{i}",
            "dataset": "videos",
            "media_ids": [f],
            "tags": ["kind:clip"],
            "t_start": t0,
            "t_end": t1,
        }
        for i, (f, (t0, t1)) in enumerate(zip(frames, clips, strict=True))
    ]
    lake.insert_new("samples", pa.Table.from_pylist(samples))
    return [s["sample_id"] for s in samples]


def column(lake: Lake, table: str, key: str, *names: str) -> dict[str, dict[str, Any]]:
    """``key -> {name: value}`` for a few columns."""
    rows = lake.dataset(table).to_table(columns=[key, *names]).to_pylist()
    return {r[key]: r for r in rows}


def run(enricher: Any, lake: Lake, **kw: Any) -> Any:
    return enrich(enricher, lake, batch_size=2, write_batch=3, progress=False, **kw)


def transcriber(**kw: Any) -> TranscribeEnricher:
    """The audio step of ``conf/enrich/transcribe.yaml`` on CPU, ``kw`` replacing values."""
    conf = conf_kwargs("enrich", "enrich.steps.audio", "enrich=transcribe")
    return TranscribeEnricher(**conf | {"device": "cpu", "cpu_threads": 2} | kw)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The sentence spoken by espeak-ng, resampled to 16 kHz mono float32."""
    from faster_whisper import decode_audio

    out = tmp_path_factory.mktemp("espeak") / "fox.wav"
    subprocess.run(["espeak-ng", "-w", str(out), SENTENCE], check=True, capture_output=True)
    return decode_audio(str(out), sampling_rate=RATE)


@pytest.fixture(scope="module")
def clips_audio(speech: np.ndarray) -> dict[str, bytes]:
    """Speech, silence, a pure tone, and a video's soundtrack with speech at 2.5 s."""
    t = np.arange(2 * RATE) / RATE
    return {
        "fox": wav_bytes(np.concatenate([silence(1.0), speech, silence(1.0)])),
        "silence": wav_bytes(silence(2.0)),
        "tone": wav_bytes((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)),
        "video": wav_bytes(np.concatenate([silence(2.5), speech, silence(1.0)])),
    }


@pytest.fixture(scope="module")
def transcribed(tmp_path_factory: pytest.TempPathFactory, clips_audio, speech) -> dict[str, Any]:
    """A lake with 4 audio rows and a video's 3 clips, transcribed once (tiny.en, CPU)."""
    lake = Lake(tmp_path_factory.mktemp("transcribe") / "lake")
    rows = [{"bytes": clips_audio[n], "source_uri": f"{n}.wav"} for n in ("fox", "silence", "tone")]
    rows.append({"bytes": clips_audio["video"], "parent_id": VIDEO, "source_uri": "talk.mp4"})
    lake.insert_new("media", audio_table(rows))
    end = 3.5 + len(speech) / RATE
    clip_ids = add_video(lake, VIDEO, [(0.0, 2.5), (2.5, 5.5), (5.5, end)])
    lake.insert_new("samples", pa.table({"sample_id": ["img"], "dataset": ["images"]}))

    enricher = transcriber()
    report = run(enricher, lake)
    clips_report = run(ClipTranscript(model="tiny.en"), lake)
    return {
        "lake": lake,
        "owner": enricher.owner(),
        "ids": {n: sha(b) for n, b in clips_audio.items()},
        "durations": {n: (len(b) - 44) / 2 / RATE for n, b in clips_audio.items()},
        "clips": clip_ids,
        "report": report,
        "clips_report": clips_report,
    }


def test_speech_is_transcribed(transcribed: dict[str, Any]) -> None:
    lake, ids = transcribed["lake"], transcribed["ids"]
    assert transcribed["report"].done == 4
    rows = column(lake, "media", "media_id", "transcript", "transcript_language")
    segs = column(lake, "media", "media_id", "transcript_segments")
    for name in ("fox", "video"):
        row = rows[ids[name]]
        assert jiwer.wer(SENTENCE, words(row["transcript"])) <= 0.4, row["transcript"]
        assert row["transcript_language"] == "en"
        found = segs[ids[name]]["transcript_segments"]
        assert found and " ".join(s["text"] for s in found) == row["transcript"]
        duration = transcribed["durations"][name]
        speech_at = 1.0 if name == "fox" else 2.5
        assert speech_at - 0.6 <= found[0]["start"] <= speech_at + 0.5
        assert found[-1]["end"] >= duration - 1.5
        for s in found:
            assert 0.0 <= s["start"] < s["end"] <= duration
            assert s["no_speech_prob"] <= 0.6 and s["avg_logprob"] < 0


def test_silence_and_tone_give_no_text(transcribed: dict[str, Any]) -> None:
    lake, ids = transcribed["lake"], transcribed["ids"]
    rows = column(
        lake, "media", "media_id", "transcript", "transcript_segments", "transcript_model"
    )
    for name in ("silence", "tone"):
        row = rows[ids[name]]
        assert row["transcript"] == ""
        assert row["transcript_segments"] == []
        assert row["transcript_model"] == transcribed["owner"]  # done, not retried


def test_owner_and_provenance(transcribed: dict[str, Any]) -> None:
    lake, owner = transcribed["lake"], transcribed["owner"]
    sha12 = file_sha256(default_model_dir() / "model.bin")[:12]
    assert owner == f"faster-whisper:tiny.en:{sha12}"
    assert transcriber(model="default").owner() == owner
    schema = lake.table("media").schema
    assert schema.field("transcript_segments").type.value_type.field("no_speech_prob").type == (
        pa.float32()
    )
    rows = lake.dataset("media").to_table(columns=["kind", "provenance"]).to_pylist()
    steps = [r["provenance"]["steps"] for r in rows if r["kind"] == "audio"]
    assert all(s[-1]["name"] == "transcribe" and owner in s[-1]["params"] for s in steps)
    assert all(not r["provenance"] for r in rows if r["kind"] != "audio")  # scope: audio


def test_rerun_skips_everything(transcribed: dict[str, Any]) -> None:
    lake = transcribed["lake"]
    version = lake.table("media").version
    again = run(transcriber(), lake)
    assert (again.todo, again.done, again.skipped) == (0, 0, 4)
    assert lake.table("media").version == version


def test_other_model_needs_reembed(transcribed: dict[str, Any], tmp_path: Path) -> None:
    shutil.copytree(transcribed["lake"].uri, tmp_path / "lake")
    lake = Lake(tmp_path / "lake")
    fox = transcribed["ids"]["fox"]
    other = "faster-whisper:small.en:0123456789ab"
    lake.update_columns(
        "media", pa.table({"media_id": [fox], "transcript": ["x"], "transcript_model": [other]})
    )
    with pytest.raises(ConfigError, match="reembed"):
        run(transcriber(), lake)
    assert column(lake, "media", "media_id", "transcript")[fox]["transcript"] == "x"
    report = run(transcriber(), lake, reembed=True)
    assert report.done == 1  # only the other model's row
    row = column(lake, "media", "media_id", "transcript", "transcript_model")[fox]
    assert row["transcript_model"] == transcribed["owner"]
    assert jiwer.wer(SENTENCE, words(row["transcript"])) <= 0.4


def test_clips_get_the_speech_of_their_range(transcribed: dict[str, Any]) -> None:
    lake, owner = transcribed["lake"], transcribed["owner"]
    assert transcribed["clips_report"].done == 3
    rows = column(lake, "samples", "sample_id", "transcript", "transcript_model")
    first, middle, last = (rows[c] for c in transcribed["clips"])
    assert jiwer.wer(SENTENCE, words(middle["transcript"])) <= 0.4
    assert (first["transcript"], last["transcript"]) == ("", "")
    assert {first["transcript_model"], middle["transcript_model"]} == {owner}
    assert rows["img"]["transcript"] is None and rows["img"]["transcript_model"] is None


def test_clip_assignment_pending_and_no_audio(
    clips_audio: dict[str, bytes], tmp_path: Path
) -> None:
    """Known segments: each goes to the clip holding its midpoint; pending; no audio."""
    lake = Lake(tmp_path / "lake")
    talk, mute, later = "a" * 64, "b" * 64, "c" * 64
    ready = wav_bytes(silence(3.0))
    lake.insert_new(
        "media",
        audio_table(
            [
                {"bytes": ready, "parent_id": talk},
                {"bytes": clips_audio["silence"], "parent_id": later},
            ]
        ),
    )
    talk_clips = add_video(lake, talk, [(0.0, 3.0), (3.0, 6.0), (6.0, 8.0), (8.0, 9.0)])
    mute_clip = add_video(lake, mute, [(0.0, 4.0)])[0]
    later_clip = add_video(lake, later, [(0.0, 2.0)])[0]
    enricher = transcriber()
    owner = enricher.owner()
    lake.add_columns("media", enricher.output_fields())
    segments = [
        (0.5, 1.5, "one"),
        (2.0, 4.0, "two"),  # midpoint 3.0: the second clip ([3, 6) holds it)
        (4.8, 5.0, "three"),
        (5.5, 7.5, "four"),  # starts in the second, midpoint 6.5 in the third
    ]
    lake.update_columns(
        "media",
        pa.table(
            {
                "media_id": [sha(ready)],
                "transcript_segments": [
                    [
                        {
                            "start": a,
                            "end": b,
                            "text": t,
                            "no_speech_prob": 0.1,
                            "avg_logprob": -0.3,
                        }
                        for a, b, t in segments
                    ]
                ],
                "transcript_model": [owner],
            }
        ),
    )
    report = run(ClipTranscript(model="tiny.en"), lake)
    assert report.done == 5  # the clip of the untranscribed audio is not written
    rows = column(lake, "samples", "sample_id", "transcript", "transcript_model")
    assert [rows[c]["transcript"] for c in talk_clips] == ["one", "two three", "four", ""]
    assert {rows[c]["transcript_model"] for c in talk_clips} == {owner}
    assert (rows[mute_clip]["transcript"], rows[mute_clip]["transcript_model"]) == ("", NO_AUDIO)
    assert (rows[later_clip]["transcript"], rows[later_clip]["transcript_model"]) == (None, None)

    again = run(ClipTranscript(model="tiny.en"), lake)  # still pending; no-audio not revisited
    assert (again.todo, again.done, again.skipped) == (1, 0, 4)

    assert run(enricher, lake).done == 1  # the pending video's audio (the other is done)
    last = run(ClipTranscript(model="tiny.en"), lake)
    assert last.done == 1
    row = column(lake, "samples", "sample_id", "transcript", "transcript_model")[later_clip]
    assert (row["transcript"], row["transcript_model"]) == ("", owner)


def test_bad_audio_names_the_row(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    lake.insert_new("media", audio_table([{"bytes": b"not audio", "source_uri": "rec/bad.wav"}]))
    with pytest.raises(RejectedInput, match=r"rec/bad\.wav.*cannot decode audio"):
        run(transcriber(), lake)


def test_config_instantiates_both_steps() -> None:
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("enrich", overrides=["enrich=transcribe", "enrich.language=en"])
    audio = instantiate(cfg.enrich.steps.audio)
    clips = instantiate(cfg.enrich.steps.clips)
    assert isinstance(audio, TranscribeEnricher) and isinstance(clips, ClipTranscript)
    assert audio.language == "en" and audio.vad_filter and audio.beam_size == 5
    assert audio.vad_parameters == {
        "threshold": 0.5,
        "min_silence_duration_ms": 1000,
        "speech_pad_ms": 400,
    }
    assert audio.owner() == clips.owner()
    with pytest.raises(ConfigError, match="unknown vad_parameters min_speech"):
        transcriber(vad_parameters={"min_speech": 1})
