"""Whisper (the transcribe enricher) on real read speech with reference transcripts.

The clips are Debian pocketsphinx-testdata's (LibriVox read speech and spoken playing
cards). Bounds were measured with ``bench/transcribe.py`` (tiny.en, int8, beam 5): WER
4.2 % on librivox (71 words), 9.5 % on cards (21 words); they are set with margin.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lake.real_data import clip_set, speech_plan
from lake.wer import word_errors
from tests.conftest import conf_kwargs

SPEECH_SRC = Path("/usr/share/pocketsphinx/test/data")
pytestmark = pytest.mark.skipif(
    not (SPEECH_SRC / "librivox" / "transcription").is_file(),
    reason="Debian pocketsphinx-testdata is not installed (make sysdeps installs it)",
)
#: clip set -> WER bound (measured WER with margin; see the module docstring)
BOUNDS = {"librivox": 0.15, "cards": 0.30}


def test_whisper_wer_on_real_read_speech() -> None:
    from faster_whisper import decode_audio

    from plugins.transcribe import TranscribeEnricher

    enr = TranscribeEnricher(
        **conf_kwargs("enrich", "enrich.steps.audio", "enrich=transcribe", cpu_threads=1)
    )
    refs: dict[str, list[str]] = {}
    hyps: dict[str, list[str]] = {}
    for name, (wav, text) in speech_plan(SPEECH_SRC).items():
        hyp, language, segments = enr.transcribe(decode_audio(str(wav), sampling_rate=16000))
        assert language == "en" and segments, name
        refs.setdefault(clip_set(name), []).append(text)
        hyps.setdefault(clip_set(name), []).append(hyp)
    assert set(refs) == set(BOUNDS)
    for cset, bound in BOUNDS.items():
        got = word_errors(refs[cset], hyps[cset])
        assert got["wer"] < bound, (cset, got, hyps[cset])
