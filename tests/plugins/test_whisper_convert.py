"""Whisper model resolution and conversion: a tiny random Whisper, converted and transcribing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lake.enrich import enrich
from lake.errors import ConfigError
from lake.store import Lake
from plugins.whisper_models import (
    cli,
    convert_whisper,
    default_model_dir,
    file_sha256,
    model_owner,
    resolve_model,
)
from tests.plugins.test_transcribe import audio_table, silence, transcriber, wav_bytes

RATE = 16000


def save_tiny_whisper(out: Path) -> Path:
    """A random English-only Whisper (d_model 64, 2+2 layers) with the real tokenizer.

    The tokenizer is built locally from tiny.en's ``tokenizer.json`` (the Whisper English
    vocabulary, special tokens at ids 50256-50362), so no download is needed; the model's
    vocabulary is that plus the 1,501 timestamp tokens.
    """
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizerFast

    tokenizer = WhisperTokenizerFast(tokenizer_file=str(default_model_dir() / "tokenizer.json"))
    sot, eot = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|endoftext|>"])
    config = WhisperConfig(
        vocab_size=51864,  # 50257 text + 106 specials + 1501 timestamps (tiny.en layout)
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,  # 30 s windows: faster-whisper always feeds 3000 frames
        max_target_positions=448,
        bos_token_id=sot,
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        suppress_tokens=[],
        begin_suppress_tokens=[220, eot],
    )
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def slow_tokenizer_copy(src: Path, out: Path, specials: bool = True) -> Path:
    """``src`` as older tools save it: vocab.json + merges.txt, no tokenizer.json."""
    shutil.copytree(src, out)
    spec = json.loads((out / "tokenizer.json").read_text())
    (out / "tokenizer.json").unlink()
    (out / "vocab.json").write_text(json.dumps(spec["model"]["vocab"]))
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = json.loads((out / "tokenizer_config.json").read_text())
    if specials:
        keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
        config["added_tokens_decoder"] = {
            str(t["id"]): {k: t[k] for k in keys} for t in spec["added_tokens"]
        }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The transformers checkpoint and its CTranslate2 conversion, made once."""
    root = tmp_path_factory.mktemp("whisper")
    src = save_tiny_whisper(root / "hf")
    out = convert_whisper(src, root / "converted" / "tiny-ft")
    return {"root": root, "src": src, "out": out}


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A short espeak-ng sentence, 16 kHz mono float32."""
    from faster_whisper import decode_audio

    out = tmp_path_factory.mktemp("espeak") / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(out), "hello world"], check=True, capture_output=True)
    return np.concatenate([silence(0.5), decode_audio(str(out), sampling_rate=RATE)])


def test_converted_directory_loads_and_transcribes(tiny: dict[str, Path], speech) -> None:
    from faster_whisper import WhisperModel

    out = tiny["out"]
    assert out.name == "tiny-ft" and out.is_dir()
    names = {p.name for p in out.iterdir()}
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"} <= names
    assert json.loads((out / "preprocessor_config.json").read_text())["feature_size"] == 80
    assert [p.name for p in out.parent.iterdir()] == ["tiny-ft"]  # no staging leftovers
    assert resolve_model(out) == str(out)

    model = WhisperModel(str(out), device="cpu", compute_type="int8", local_files_only=True)
    assert not model.model.is_multilingual
    segments, info = model.transcribe(speech, beam_size=1, temperature=0.0, vad_filter=False)
    segments = list(segments)  # random weights: whatever text, but real decoding ran
    assert isinstance(segments, list) and info.language == "en"
    assert all(isinstance(s.text, str) for s in segments)


def test_enricher_with_the_converted_model(tiny: dict[str, Path], speech, tmp_path: Path) -> None:
    out = tiny["out"]
    lake = Lake(tmp_path / "lake")
    lake.insert_new("media", audio_table([{"bytes": wav_bytes(speech)}]))
    enricher = transcriber(model=str(out), beam_size=1, log_prob_threshold=None)
    owner = enricher.owner()
    assert owner == f"faster-whisper:tiny-ft:{file_sha256(out / 'model.bin')[:12]}"
    assert owner == model_owner(out)
    report = enrich(enricher, lake, progress=False)
    assert report.done == 1
    row = lake.dataset("media").to_table().to_pylist()[0]
    assert row["transcript_model"] == owner and row["transcript_language"] == "en"
    assert isinstance(row["transcript"], str)
    duration = len(speech) / RATE
    for s in row["transcript_segments"]:
        assert 0.0 <= s["start"] <= s["end"] <= duration
    # the bundled tiny.en is another model: its rows are refused without reembed
    with pytest.raises(ConfigError, match="reembed"):
        enrich(transcriber(), lake, progress=False)


def test_quantized_overwrite_is_another_owner(tiny: dict[str, Path]) -> None:
    target = tiny["root"] / "quantized" / "tiny-ft"
    first = convert_whisper(tiny["src"], target)
    float_owner, size = model_owner(first), (first / "model.bin").stat().st_size
    with pytest.raises(ConfigError, match="already exists"):
        convert_whisper(tiny["src"], target, quantization="int8")
    convert_whisper(tiny["src"], target, quantization="int8", overwrite=True)
    assert (target / "model.bin").stat().st_size < size / 2
    assert model_owner(target) != float_owner
    assert [p.name for p in target.parent.iterdir()] == ["tiny-ft"]


def test_checkpoint_without_tokenizer_json(tiny: dict[str, Path]) -> None:
    root = tiny["root"]
    good = slow_tokenizer_copy(tiny["src"], root / "slow")
    out = convert_whisper(good, root / "slow-ct2")
    assert resolve_model(out) == str(out)  # tokenizer.json written from the slow files
    bad = slow_tokenizer_copy(tiny["src"], root / "slow-bare", specials=False)
    with pytest.raises(ConfigError, match="lacks Whisper's special tokens"):
        convert_whisper(bad, root / "slow-bare-ct2")
    assert not (root / "slow-bare-ct2").exists()


def test_command_line(tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny["root"] / "cli" / "m"
    assert cli([f"src={tiny['src']}", f"out={out}", "quantization=int8"]) == 0
    assert "faster-whisper:m:" in capsys.readouterr().out
    assert cli([f"src={tiny['src']}", f"out={out}"]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert cli([f"src={tiny['src']}"]) == 2
    assert cli([f"src={tiny['src']}", f"out={out}", "quant=int8"]) == 2
    assert cli([f"src={tiny['src']}", f"out={out}x", "quantization=int3"]) == 2
    assert "int3" in capsys.readouterr().err


def test_resolution_errors(tiny: dict[str, Path], tmp_path: Path) -> None:
    assert resolve_model("tiny.en") == resolve_model("default") == str(default_model_dir())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"missing model\.bin, config\.json, tokenizer\.json"):
        resolve_model(empty)
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny["out"], no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match=r"no-tokenizer: missing tokenizer\.json"):
        resolve_model(no_tokenizer)
    with pytest.raises(ConfigError, match="convert it first with `lakeloom whisper-convert"):
        resolve_model(tiny["src"])  # a transformers checkpoint
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="not one of faster-whisper's names"):
        resolve_model("enormous-v9")
    with pytest.raises(ConfigError, match="not available offline"):
        resolve_model("small.en")  # a real name, never downloaded here
    with pytest.raises(ConfigError, match="not available offline"):
        transcriber(model="small.en").owner()


def test_conversion_input_errors(tiny: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        convert_whisper(tmp_path / "nowhere", tmp_path / "o")
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        convert_whisper(tmp_path, tmp_path / "o")
    clip_like = tmp_path / "clip"
    clip_like.mkdir()
    (clip_like / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ConfigError, match="model_type 'clip', expected 'whisper'"):
        convert_whisper(clip_like, tmp_path / "o")
    with pytest.raises(ConfigError, match="quantization 'int3'"):
        convert_whisper(tiny["src"], tmp_path / "o", quantization="int3")
    assert not (tmp_path / "o").exists()


def test_enricher_columns_are_typed(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    lake.insert_new("media", pa.table({"media_id": ["x"], "kind": ["image"]}))
    report = enrich(transcriber(), lake, progress=False)
    assert (report.todo, report.done) == (0, 0)  # images are out of scope; no model load
    schema = lake.table("media").schema
    assert schema.field("transcript_language").type == pa.string()
    seg = schema.field("transcript_segments").type.value_type
    assert [seg.field(i).name for i in range(seg.num_fields)] == [
        "start",
        "end",
        "text",
        "no_speech_prob",
        "avg_logprob",
    ]
