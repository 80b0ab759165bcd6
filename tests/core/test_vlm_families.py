"""The newest VLM families (Qwen2.5-VL, Qwen3-VL, Qwen3.5, SmolVLM): the role table covers
every parameter, LoRA and FSDP hit what is there, each trains through ``core.train`` on
the VLM lake, merges and reloads to the same outputs, runs DPO, and packs (or refuses)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from core.models.vlm_families import family, fsdp_wrap_classes
from core.models.vlm_tiny import build_tiny
from core.modules.vlm_module import VlmModule
from lake.errors import ConfigError
from tests.conftest import conf_kwargs

NEW = ("qwen2_5_vl", "qwen3_vl", "qwen3_5", "smolvlm")
#: the tiny experiment of each family (conf/experiment/<name>_tiny.yaml)
EXPERIMENT = {"qwen2_5_vl": "qwen2_5vl", "qwen3_vl": "qwen3vl", "qwen3_5": "qwen3_5",
              "smolvlm": "smolvlm"}  # fmt: skip
FAST = ("trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log")


def make(name: str, **kw: Any) -> VlmModule:
    return VlmModule(**{**conf_kwargs("train", "model", f"model={name}_tiny"), **kw})


def samples(lake: Path, dataset: str, split: str = "train") -> list[dict[str, Any]]:
    from core.data.lance_data import LanceDataModule

    ds = LanceDataModule(str(lake), datasets=[dataset]).dataset(split)
    return ds.__getitems__(list(range(len(ds))))


@pytest.mark.parametrize("name", NEW)
def test_roles_lora_and_fsdp_cover_the_model(name: str) -> None:
    spec = family(name)
    model, _ = build_tiny(name, conf_kwargs("train", "model", f"model={name}_tiny")["tiny"])
    roles = {n: spec.role_of(n) for n, _ in model.named_parameters()}
    assert None not in roles.values(), [n for n, r in roles.items() if r is None]
    assert set(roles.values()) == {"vision", "projector", "language_model"}
    # LoRA: every hit is a language-model projection, and every LM layer gets some
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(model, LoraConfig(r=4, target_modules=spec.lora_target_regex()))
    hits = {n.rsplit(".lora_A", 1)[0] for n, _ in lora.named_parameters() if ".lora_A" in n}
    assert hits and all(spec.role_of(h) == "language_model" for h in hits)
    assert all(any(f"layers.{i}." in h for h in hits) for i in range(2))
    if name == "qwen3_5":  # linear-attention layer 0 is adapted too, not only attention
        assert any("linear_attn.in_proj_qkv" in h for h in hits)
    base = lora.get_base_model()
    blocks = [m for n, m in base.named_modules()
              if n.endswith(("layers.0", "layers.1", "blocks.0", "blocks.1"))]  # fmt: skip
    assert len(blocks) == 4  # 2 LM layers + 2 vision blocks
    assert all(isinstance(b, tuple(fsdp_wrap_classes(name))) for b in blocks)


@pytest.mark.parametrize("name", NEW)
def test_tiny_experiment_trains_merges_and_reloads(
    compose, vlm_lake: Path, tmp_path: Path, name: str
) -> None:
    """``+experiment=<family>_tiny`` (LoRA) a few steps through ``core.train`` on the
    conversations, then ``lakeloom merge``: the merged folder reloads with the family's
    transformers class and gives the trained (adapter) model's logits
    (:func:`core.family_check.merged_matches`, which ``python -m core.family_check`` runs
    on the demo lake)."""
    from core.family_check import merged_matches
    from core.merge import merge
    from core.train import train

    cfg = compose(
        f"+experiment={EXPERIMENT[name]}_tiny", "data.datasets=[convs]", "data.batch_size=4",
        "trainer.max_steps=6", "trainer.max_epochs=10", "trainer.val_check_interval=null",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "trainer.check_val_every_n_epoch=10", "model.generate_samples=2",
        "model.max_new_tokens=4", "checkpoint.every_n_steps=6", "events_every_n_steps=2",
        "run_id=fam", *FAST, lake=vlm_lake, runs=tmp_path / "runs",
    )  # fmt: skip
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["step"] == 6
    first, last = summary["train_loss"]
    assert math.isfinite(last) and last < first

    out = merge(tmp_path / "runs", "fam", "last", tmp_path / "merged")
    got = merged_matches(tmp_path / "runs" / "fam", out, samples(vlm_lake, "convs", "val"))
    assert got["adapter_delta"] > 1e-4, got  # the adapter learned something
    assert got["lora_params"] == 0 and got["chat_template_kept"], got
    assert got["max_delta"] <= 1e-4, got


@pytest.mark.parametrize("name", NEW)
def test_dpo_starts_at_log2_and_a_step_moves_it(vlm_lake: Path, name: str) -> None:
    module = make(name, objective="dpo", pack=False, lr=5e-3, max_steps=10,
                  peft={"method": "lora", "r": 8, "dropout": 0.0})  # fmt: skip
    batch = module.make_collator()(samples(vlm_lake, "prefs")[:3])
    assert batch["n_pairs"] == 3 and not batch["skipped"]
    loss, _ = module.preference_loss(batch)
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-5)
    opt = module.configure_optimizers()["optimizer"]
    for _ in range(3):
        module.training_step(batch, 0).backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        after, metrics = module.preference_loss(batch)
    assert float(after) < math.log(2)
    assert float(metrics["reward_chosen"]) > float(metrics["reward_rejected"])


@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen3_vl", "smolvlm"])
def test_packed_batch_gives_the_unpacked_loss(vlm_lake: Path, name: str) -> None:
    """Qwen2.5-VL / Qwen3-VL (interleaved M-RoPE, DeepStack): per-sample 3-D positions;
    SmolVLM: 1-D."""
    module = make(name, pack=True).eval()
    rows = samples(vlm_lake, "convs")
    rows = [s for s in rows if s["images"]][:3] + [s for s in rows if not s["images"]][:1]
    packed = module.make_collator(train=True)(rows)
    module.hparams.pack = False
    plain = module.make_collator(train=True)(rows)
    assert packed["packed"] and packed["input_ids"].shape[0] < plain["input_ids"].shape[0]
    with torch.no_grad():
        a, n_a = module.sft_loss(packed)
        b, n_b = module.sft_loss(plain)
    assert n_a == n_b
    assert float(a) == pytest.approx(float(b), rel=1e-4)


def test_qwen3_5_refuses_packing_and_the_new_families_take_video() -> None:
    """Qwen3.5 refuses packing with the reason; every new family takes ``<video>`` (their
    frames, timestamps included, are tested in tests/core/test_vlm_video.py)."""
    with pytest.raises(ConfigError, match="linear-attention"):
        make("qwen3_5", pack=True)
    tokens = {"qwen2_5_vl": "<|video_pad|>", "qwen3_vl": "<|video_pad|>",
              "qwen3_5": "<|video_pad|>", "smolvlm": "<video>"}  # fmt: skip
    for name in NEW:
        spec = family(name)
        assert spec.video_token == tokens[name]
        assert spec.media_kinds == ("image", "frame", "video")
