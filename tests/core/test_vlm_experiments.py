"""The VLM experiments: every preset composes as documented, the tiny ones train (CI),
and the FSDP wrap policy of ``trainer=fsdp_vlm`` covers every transformer block."""

from __future__ import annotations

from pathlib import Path

import pytest

CONF = Path(__file__).parents[2] / "conf"

REAL = {
    "llava_align": ("llava", "llava-hf/llava-1.5-7b-hf"),
    "llava_lora": ("llava", "llava-hf/llava-1.5-7b-hf"),
    "qwen2vl_lora": ("qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct"),
    "qwen2vl_qlora": ("qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct"),
    "qwen2vl_dpo": ("qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct"),
    **{
        f"{name}_{kind}": (fam, hub)
        for name, fam, hub in (
            ("qwen2_5vl", "qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct"),
            ("qwen3vl", "qwen3_vl", "Qwen/Qwen3-VL-4B-Instruct"),
            ("qwen3_5", "qwen3_5", "Qwen/Qwen3.5-9B"),
            ("smolvlm", "smolvlm", "HuggingFaceTB/SmolVLM-256M-Instruct"),
        )
        for kind in ("lora", "dpo")
    },
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_experiments_compose_and_state_their_cost(compose, name: str) -> None:
    cfg = compose(f"+experiment={name}")
    family, source = REAL[name]
    assert cfg.model.family == family and cfg.model.source == source
    assert cfg.model._target_ == "core.modules.vlm_module.VlmModule"
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    header = (CONF / "experiment" / f"{name}.yaml").read_text().split("defaults:")[0]
    assert "ESTIMATED" in header or "MEASURED" in header
    assert "GB" in header
    m = cfg.model
    if name == "llava_align":
        assert dict(m.freeze) == {"vision": True, "projector": False, "language_model": True}
        assert m.peft.method == "none"
    else:
        assert dict(m.freeze) == {"vision": True, "projector": False, "language_model": False}
        assert m.peft.method == "lora"
    assert (m.quantization == "4bit") == (name == "qwen2vl_qlora")
    assert (m.objective == "dpo") == name.endswith("_dpo")
    if name.endswith("_dpo"):
        assert "chosen IS NOT NULL" in cfg.data.where


@pytest.mark.parametrize(
    "family", ["llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "smolvlm"]
)
def test_fsdp_policy_covers_every_block(compose, family: str) -> None:
    from hydra.utils import instantiate

    from core.models.vlm_tiny import build_tiny

    cfg = compose("model=llava_tiny", f"model.family={family}", "trainer=fsdp_vlm")
    policy = instantiate(cfg.trainer.strategy.auto_wrap_policy)
    assert policy == instantiate(cfg.trainer.strategy.activation_checkpointing_policy)
    model, _ = build_tiny(family, {})
    blocks = [
        m
        for name, m in model.named_modules()
        if name.endswith(tuple(f"layers.{i}" for i in range(4)))
        or name.endswith(tuple(f"blocks.{i}" for i in range(4)))
    ]
    assert len(blocks) == 4  # 2 language-model layers + 2 vision blocks
    assert all(isinstance(b, tuple(policy)) for b in blocks)


@pytest.mark.parametrize("name", ["llava_tiny", "qwen2vl_tiny"])
def test_tiny_experiments_train(compose, vlm_lake: Path, tmp_path: Path, name: str) -> None:
    """The tiny presets as CI runs them: a short run on the conversations, loss falls."""
    from core.train import train

    cfg = compose(
        f"+experiment={name}",
        "data.datasets=[convs]",
        "data.batch_size=6",
        "trainer.max_steps=18",
        "trainer.max_epochs=10",
        "trainer.val_check_interval=null",
        "trainer.check_val_every_n_epoch=3",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "events_every_n_steps=4",
        "checkpoint.every_n_steps=8",
        lake=vlm_lake,
        runs=tmp_path / "runs",
    )
    summary = train(cfg)
    assert summary["status"] == "finished"
    first, last = summary["train_loss"]
    assert last < first - 1.0
    assert summary["last_val"]["val/loss"] is not None
    assert 0.0 <= summary["last_val"]["val/token_f1"] <= 1.0
