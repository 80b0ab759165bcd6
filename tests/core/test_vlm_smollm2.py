"""LLaVA with the real SmolLM2-135M-Instruct as its language model.

The build (SmolLM2's weights and tokenizer, ``<image>`` added, ChatML template); the
open_clip ViT -> ``CLIPVisionModel`` conversion and ``model.vision_from`` (a CLIP run's
image tower as LLaVA's, inherited through ``init_from``); and the two stages through
``core.train``: projector alignment, then LoRA started from it with ``init_from``, merged
and reloaded to the same outputs.
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


def _clip_run(tmp_path: Path) -> Path:
    """A CLIP run directory holding an exported tiny-clip-p8 (random weights), as
    ``core.train`` leaves one (``runs/<id>/open_clip/``)."""
    from core.models.clip import create_clip, save_open_clip
    from lake.runs import RunDir

    torch.manual_seed(0)
    model, _, _, _ = create_clip("tiny-clip-p8", None)
    run = tmp_path / "runs" / "clip"
    save_open_clip(model, None, RunDir(run).open_clip)
    return run


def test_open_clip_vit_converts_to_hf_clip_vision_model(tmp_path: Path) -> None:
    import numpy as np
    import open_clip
    from PIL import Image

    from core.models.clip import load_from_run
    from core.models.clip_to_hf import hf_image_processor, vision_tower_of

    clip, _, preprocess, _ = load_from_run(_clip_run(tmp_path))
    clip.eval()
    tower = vision_tower_of(clip).eval()
    cfg = tower.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 3, 2)
    assert (cfg.image_size, cfg.patch_size, cfg.intermediate_size) == (64, 8, 256)
    assert cfg.hidden_act == "gelu"  # open_clip's nn.GELU (quick_gelu is not set)
    pre_cfg = open_clip.get_model_preprocess_cfg(clip)
    proc = hf_image_processor(pre_cfg)
    assert proc.size == {"shortest_edge": 64} and proc.crop_size == {"height": 64, "width": 64}
    assert list(proc.image_mean) == list(pre_cfg["mean"])
    assert list(proc.image_std) == list(pre_cfg["std"])
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (96, 80, 3), dtype=np.uint8))
    theirs = preprocess(img).unsqueeze(0)
    ours = proc(images=img, return_tensors="pt")["pixel_values"]
    # both resize with PIL bicubic; rounding differs by at most one 8-bit level
    assert (ours - theirs).abs().max() <= 1 / 255 / min(pre_cfg["std"]) + 1e-6
    with torch.no_grad():
        clip.visual.output_tokens = True
        pooled, tokens = clip.visual(theirs)
        out = tower(pixel_values=theirs)
        assert torch.allclose(out.pooler_output @ clip.visual.proj, pooled, atol=1e-5)
        assert torch.allclose(tower.post_layernorm(out.last_hidden_state[:, 1:]), tokens,
                              atol=1e-5)  # fmt: skip


def test_vision_from_puts_the_clip_runs_tower_behind_smollm2(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    from core.models.clip import load_from_run
    from core.models.clip_to_hf import vision_tower_of
    from core.models.vlm_load import vision_from_of
    from lake.weights_origin import weights_origin

    run = _clip_run(tmp_path)
    tiny = {"vision_feature_layer": -2}  # conf/model/llava_smollm2.yaml's
    model, processor, _ = load_vlm(
        "llava", "tiny", tiny, 0, language_source=str(smollm2_dir), vision_from=str(run)
    )
    want = vision_tower_of(load_from_run(run)[0]).state_dict()
    got = model.model.vision_tower.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert model.config.image_seq_length == 64  # (64 / 8) ** 2 patches, CLS dropped
    # the image tokens are the projected patches of the layer before the last (LLaVA-1.5)
    pixels = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        features = model.model.get_image_features(pixel_values=pixels)
        features = getattr(features, "pooler_output", features)
    features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
    with torch.no_grad():
        expected = model.model.multi_modal_projector(hidden[-2][:, 1:])
    assert torch.allclose(features.reshape(expected.shape), expected, atol=1e-5)
    assert processor.image_processor.crop_size == {"height": 64, "width": 64}
    # stage 2 (init_from the stage-1 run) rebuilds the same frozen tower from its config
    align = tmp_path / "runs" / "align"
    align.mkdir()
    (align / "config.yaml").write_text(f"model:\n  vision_from: {run}\n")
    assert vision_from_of(align) == str(run)
    assert vision_from_of(align / "checkpoints" / "last.ckpt") == str(run)
    cfg = {"model": {"_target_": "core.modules.vlm_module.VlmModule", "source": "tiny",
                     "language_source": "smollm2-135m-instruct", "vision_from": str(run),
                     "freeze": {"vision": True, "language_model": True}}}  # fmt: skip
    vision = weights_origin(cfg)["parts"]["vision tower"]
    assert vision["origin"] == "from run clip (CLIP image tower)" and vision["training"] == "frozen"


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
