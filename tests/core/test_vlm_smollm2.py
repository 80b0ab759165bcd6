"""LLaVA with the real SmolLM2-135M-Instruct as its language model (tiny random vision tower).

The build (SmolLM2's weights and tokenizer, ``<image>`` added, ChatML template), and the
two stages through ``core.train``: projector(+tower) alignment, then LoRA started from it
with ``init_from``, merged and reloaded to the same outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.models.vlm_load import load_vlm
from tests.conftest import conf_kwargs

FAST = ("trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # REAL_MODELS.md: two threads collapse on a busy 2-core box


def test_llava_on_smollm2_has_its_weights_tokenizer_and_image_token(smollm2_dir: Path) -> None:
    tiny = conf_kwargs("train", "model", "model=llava_smollm2")["tiny"]
    model, processor, _ = load_vlm("llava", "tiny", tiny, 0, language_source=str(smollm2_dir))
    tok = processor.tokenizer
    lm_state = load_file(smollm2_dir / "model.safetensors")
    vocab = lm_state["model.embed_tokens.weight"].shape[0]
    assert tok.convert_tokens_to_ids("<image>") == vocab == model.config.image_token_id
    assert model.model.language_model.embed_tokens.weight.shape[0] == vocab + 1
    ours = model.model.language_model.state_dict()
    for key, want in lm_state.items():
        got = ours[key.removeprefix("model.")]
        if key == "model.embed_tokens.weight":
            got = got[:vocab]
        assert torch.equal(got, want.float()), key
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True)
    assert text == "<|im_start|>user\n<image>\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert tok("The capital of France")["input_ids"] == load_vlm_tokens(smollm2_dir)


def load_vlm_tokens(folder: Path) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)("The capital of France")["input_ids"]


@pytest.mark.slow
def test_align_then_lora_from_it_then_merge_reloads(
    compose, vlm_lake: Path, smollm2_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForImageTextToText

    from core.checkpoint import load_lightning_checkpoint
    from core.merge import merge
    from core.train import train

    common = (
        f"model.language_source={smollm2_dir}", "model.max_length=64",
        "model.generate_samples=2", "model.max_new_tokens=4", "data.datasets=[convs]",
        "data.batch_size=2", "trainer.max_steps=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.val_check_interval=2",
        "checkpoint.every_n_steps=2", *FAST,
    )  # fmt: skip
    s1 = train(compose("+experiment=llava_smollm2_align", "run_id=align", *common, lake=vlm_lake))
    assert s1["status"] == "finished" and s1["step"] == 2
    align = tmp_path / "runs" / "align"
    trained = load_lightning_checkpoint(align / "checkpoints" / "last.ckpt")["state_dict"]
    assert any("multi_modal_projector" in k for k in trained)
    assert not any("language_model" in k for k in trained)  # the LM stays frozen in stage 1

    cfg = compose("+experiment=llava_smollm2_lora", "run_id=lora", f"model.init_from={align}",
                  *common, lake=vlm_lake)  # fmt: skip
    from hydra.utils import instantiate

    start = instantiate(cfg.model)  # stage 2 as it starts: stage 1's tensors loaded
    state = {
        n.removeprefix("base_model.model.").replace(".modules_to_save.default.", "."): p
        for n, p in start.model.named_parameters()
        if ".original_module." not in n
    }
    for key, value in trained.items():
        assert torch.equal(state[key.removeprefix("model.")].detach(), value), key
    del start
    s2 = train(cfg)
    assert s2["status"] == "finished" and 0 <= s2["test"]["test/token_f1"] <= 1

    out = merge(cfg.runs_dir, "lora", "last", tmp_path / "merged")
    module = instantiate(cfg.model)
    ckpt = load_lightning_checkpoint(tmp_path / "runs" / "lora" / "checkpoints" / "last.ckpt")
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"], strict=False)
    module.eval()
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    from PIL import Image

    enc = module.processor(
        text=[module.processor.apply_chat_template(conv, add_generation_prompt=True)],
        images=[Image.new("RGB", (56, 56), (200, 30, 30))],
        return_tensors="pt",
        add_special_tokens=False,
    )
    reloaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    with torch.no_grad():
        want = module.model(**enc).logits
        assert torch.allclose(reloaded(**enc).logits, want, atol=1e-4)
