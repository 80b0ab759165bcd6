"""lake.synth_speech: espeak-ng shape sentences, idempotent, ingested by the audio source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lake.audio import load_audio
from lake.ingest import IngestSettings, ingest
from lake.store import Lake
from lake.synth_speech import demo_speech, sentences
from plugins.audio import AudioSource


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Three spoken sentences in a folder, with what demo_speech returned."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not found (make test installs it)")
    out = tmp_path_factory.mktemp("speech")
    return out, demo_speech(out, n=3, seed=0)


def test_files_decode_to_speech_length_audio(speech) -> None:
    out, result = speech
    assert result["files"] == ["speech_000.wav", "speech_001.wav", "speech_002.wav"]
    for name in result["files"]:
        track = load_audio(out / name)
        assert 0.8 <= track.duration_s <= 6.0, (name, track.duration_s)


def test_ground_truth_holds_three_distinct_texts(speech) -> None:
    out, result = speech
    truth = json.loads((out / "ground_truth.json").read_text())
    assert truth == result["texts"] and list(truth) == result["files"]
    assert len(set(truth.values())) == 3
    assert list(truth.values()) == sentences(3, 0)
    assert all(t.endswith(" background.") for t in truth.values())


def test_a_second_call_rewrites_nothing(speech) -> None:
    out, result = speech
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert demo_speech(out, n=3, seed=0) == result
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_audio_source_ingests_them_as_audio_samples(speech, tmp_path: Path) -> None:
    out, _ = speech
    lake = Lake(tmp_path / "lake")
    report = ingest(AudioSource(out, workers=0), lake, settings=IngestSettings(progress=False))
    assert (report.new_samples, report.rejected) == (3, 0)
    samples = lake.dataset("samples").to_table(columns=["tags"]).to_pylist()
    assert [s["tags"] for s in samples] == [["kind:audio"]] * 3


def test_without_espeak_nothing_is_written(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("lake.synth_speech.shutil.which", lambda _: None)
    out = tmp_path / "speech"
    assert demo_speech(out, n=2) == {"files": [], "skipped": "espeak-ng not found"}
    assert not out.exists()
    assert "espeak-ng not found" in capsys.readouterr().out
