"""Apotheon with the real SmolLM2-135M-Instruct as its language model
(``conf/model/apotheon_smollm2.yaml``, ``source: smollm2-135m-instruct``), on the media lake.

Slow: the session converts SmolLM2 once (~30 s) and every model holds 135 M parameters."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from core.models.apotheon import fsdp_wrap_classes
from core.models.packaged import SMOLLM2
from core.modules.apotheon_module import ApotheonModule
from tests.conftest import conf_kwargs
from tests.core.test_apotheon_module import STAGES, batch_of, data_module

#: tiny towers and fusion around the real LM (its sizes come from its checkpoint)
SMALL: dict[str, Any] = {
    "vision": {"image_size": 56, "hidden": 32, "layers": 1, "heads": 2},
    "audio": {"chunk_s": 2.0, "hidden": 32, "layers": 1, "heads": 2, "pool": 4},
    "language": {"source": SMOLLM2, "dtype": "float32"},
    "fusion": {"width": 32, "layers": 1, "heads": 2, "latents": 4, "max_frames": 4},
    "contrastive_dim": 16,
    "max_text_tokens": 24,
}

pytestmark = pytest.mark.slow


def smollm2_apotheon(**kw: Any) -> ApotheonModule:
    """An ApotheonModule from ``conf/model/apotheon_smollm2.yaml`` with tiny towers."""
    torch.set_num_threads(1)  # REAL_MODELS.md: two threads collapse on a busy 2-core box
    return ApotheonModule(
        **conf_kwargs("train", "model", "model=apotheon_smollm2", **{"config": SMALL} | kw)
    )


def test_apotheon_holds_smollm2_its_tokenizer_and_decodes_text(
    smollm2_dir: Path, media_lake: Path
) -> None:
    """The packaged name resolves to the converted folder: the LM's weights are SmolLM2's,
    the projections meet its 576-d embeddings, the collator uses its real tokenizer, LoRA
    trains while the LM's own weights stay frozen (a few steps lower the loss), and
    generation decodes to text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    module = smollm2_apotheon()
    model = module.model
    base = model.lm.get_base_model()
    assert isinstance(base, LlamaForCausalLM)
    reference = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    ours = base.state_dict()
    for name, tensor in reference.state_dict().items():
        key = name.replace(".weight", ".base_layer.weight") if name not in ours else name
        assert torch.equal(ours[key], tensor), name
    assert model.text_proj[1].in_features == 576 and model.lm_proj.out_features == 576
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lm_trainable = {n for n in trainable if n.startswith("lm.")}
    assert lm_trainable and all("lora_" in n for n in lm_trainable)
    assert any(n.startswith("fusion.") for n in trainable)

    tok = module.processors["tokenizer"]
    real = AutoTokenizer.from_pretrained(smollm2_dir)
    assert len(tok) == len(real) == 49152
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                             "<|im_end|>")  # fmt: skip
    dm = data_module(media_lake, curriculum=STAGES)
    dm.setup()
    batch = batch_of(module, dm, "val")
    row = next(i for i, c in enumerate(batch["captions"]) if c)
    ids = batch["caption_ids"][row][batch["caption_mask"][row].bool()].tolist()
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[1:-1]) == batch["captions"][row]  # the real BPE round-trips

    model.eval()
    with torch.no_grad():
        out = model(batch)
        assert math.isfinite(float(out.loss))
        gen = model.generate(batch, "caption", max_new_tokens=6, bos_id=tok.bos_token_id,
                             eos_id=tok.eos_token_id)  # fmt: skip
    assert len(gen) == len(batch["sample_ids"])
    assert all(0 <= t < len(tok) for g in gen for t in g)
    decoded = [tok.decode(g, skip_special_tokens=True) for g in gen]
    assert any(d.strip() for d in decoded), decoded

    # a few steps on this batch: the loss the real LM gives falls (LoRA + fusion learn)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = model(batch).loss
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses

    classes = fsdp_wrap_classes(SMOLLM2)  # the packaged name resolves to the folder too
    assert LlamaDecoderLayer in classes


def test_apotheon_smollm2_trains_through_core_train(
    compose, smollm2_dir: Path, media_lake: Path, tmp_path: Path
) -> None:
    """The experiment through ``core.train`` on the media lake, three curriculum stages of
    two batches: every head's loss is finite, the generated
    captions are the real tokenizer's text, and the export names the real LM."""
    from core.run import read_events
    from core.train import train

    torch.set_num_threads(1)
    stages = json.dumps(STAGES).replace('"', "")
    small = json.dumps(SMALL).replace('"', "")
    cfg = compose(
        "+experiment=apotheon_smollm2", f"model.config={small}",
        "data.datasets=null", "data.where=null", "data.batch_size=4",
        "data.val_fraction=0.25", "data.test_fraction=0.0", f"data.curriculum={stages}",
        "trainer.max_epochs=3", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.check_val_every_n_epoch=3", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "events_every_n_steps=1", "test_after_fit=false",
        "model.eval_samples=2", "model.max_new_tokens=6", "model.warmup_steps=0",
        lake=media_lake, runs=tmp_path / "runs",
    )  # fmt: skip
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["step"] == 6
    run = tmp_path / "runs" / summary["run_id"]
    events = read_events(run / "events.jsonl")
    steps = [e for e in events if e["type"] == "train"]
    assert steps and all(math.isfinite(e["train/loss"]) for e in steps)
    assert all(math.isfinite(e["train/loss_caption"]) for e in steps)
    assert any("train/loss_transcription" in e for e in steps)
    val = summary["last_val"]
    assert math.isfinite(val["val/loss"]) and math.isfinite(val["val/loss_caption"])
    gens = [e for e in events if e["type"] == "generations"][-1]["samples"]
    assert "caption" in {g["head"] for g in gens}  # one val batch: maybe no transcript
    assert all(isinstance(g["prediction"], str) for g in gens)
    assert not any("<|im_" in g["prediction"] for g in gens)  # special tokens skipped
    lm_config = json.loads((run / "hf" / "lm" / "config.json").read_text())
    assert lm_config["hidden_size"] == 576 and lm_config["vocab_size"] == 49152
