"""Benchmark: VLM training throughput on lake batches, packed rows vs padded batches.

For each family (tiny LLaVA and tiny Qwen2-VL from ``conf/model/*_tiny.yaml``, random
weights, no download) it runs ``--steps`` optimizer steps on real lake batches (dataset
``shapes_llava``) through the real loader: ``LanceDataModule`` (``num_workers`` 0,
``read_ahead`` as default) with the module's own ``VlmCollator``, and the module's
``sft_loss`` + AdamW from ``configure_optimizers`` (the LR schedule is not stepped). Two
configurations per family, on the same samples in the same order (same seed, a fresh
loader per run) and the same batch size in samples:

- ``unpacked`` (the baseline): one padded row per sample;
- ``packed``: samples packed first-fit into rows of ``--max-length`` tokens with
  per-sample positions (block-diagonal attention).

Per configuration: tokens/s (non-pad tokens over wall time), supervised tokens/s,
samples/s, padding fraction (pad slots / all slots of ``input_ids``), the share of step
time spent waiting for data (blocked in ``next(iterator)``, which at 0 workers includes
rendering and tokenizing the batch, vs total), step time, and packed / unpacked speed
ratios (wall and compute-only, taken within each round, then the median). Every run
starts from the same weights and a fresh optimizer, so the first step's loss must agree
between packed and unpacked (printed as a check). Rounds alternate which configuration
goes first; the first ``--warmup`` steps of every run are left out; figures are medians
over ``--rounds``.

Model FLOPs (an analytic estimate, attention scores left out)::

    FLOPs/step = 6 * N_lm * T + 6 * N_proj * T_img + k * N_vis * T_patch
                 (k = 2 for a frozen vision tower, run forward only under no_grad; 6 if trained)

with N_* the weights of the Linear / Conv layers of each role (embedding lookups excluded,
the LM head included), T the non-pad tokens, T_img the image tokens fed to the LM and
T_patch the patches through the vision tower. Padding counts as no useful work, so the
same samples have the same FLOPs packed or not. Recomputation under gradient
checkpointing is not counted (model FLOPs, not hardware FLOPs). MFU = model FLOP/s /
``--peak-tflops`` (only when given: e.g. 989 for H100 SXM bf16 dense).

``--real`` swaps the tiny models for published architectures with random weights, built
from transformers configs written below (no download): LLaVA-1.5-7B (CLIP ViT-L/14-336 +
Llama-7B, 576 image tokens per image) and Qwen2-VL-2B, on CUDA in bfloat16, with gradient
checkpointing on (``--no-grad-ckpt`` turns it off). The text goes through the tiny
byte-level tokenizer (ids fit the real vocabularies), so text lengths differ a little from
the real tokenizers'. It refuses to run without CUDA. Full fine-tuning of LLaVA-1.5-7B
(bf16 weights, gradients and AdamW state) takes about 60 GB before activations;
``--peft lora`` needs much less. ``--real`` also has Qwen2.5-VL-3B (``qwen2_5_vl``) and
Qwen3-VL-4B (``qwen3_vl``, once core/models/vlm_families.py has the family).

``--quantization 4bit`` (with ``--real``, CUDA): QLoRA through the module's own loading path:
the random-weight model is saved to a temporary folder and ``VlmModule`` loads it with
``model.quantization=4bit`` (bitsandbytes NF4, core/models/vlm_load.py). ``--fsdp`` wraps the
model in FSDP as ``trainer=fsdp_vlm`` does (one unit per transformer block of the family,
``sharding_strategy`` / ``use_orig_params`` read from conf/trainer/fsdp_vlm.yaml; bf16 mixed
precision on CUDA) in a process group of one (NCCL on CUDA, gloo over loopback on CPU,
rendezvous through a file). Peak memory per family: CUDA's max allocated, else the process's
peak RSS.

The lake is ``--lake`` (default ``data/lake``, made by ``lakeloom demo``); when it holds no
``shapes_llava`` samples (or with ``--build``) the bench generates a small shapes demo
and ingests it with the ``llava`` plugin into a temporary lake, removed at the end.

    python bench/train_vlm.py [--families llava,qwen2_vl] [--steps 30] [--warmup 3]
        [--rounds 3] [--batch 16] [--max-length 512] [--threads 1] [--peak-tflops T]
    python bench/train_vlm.py --real --peak-tflops 989            # CUDA only

Prints a table and a last line with a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.lance_data import LanceDataModule
from core.models.vlm_families import family as family_spec
from core.modules import vlm_module
from core.modules.vlm_collate import IGNORE
from core.modules.vlm_module import VlmModule

DATASET = "shapes_llava"
CONFIGS = ("unpacked", "packed")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"
REAL_NAME = {
    "llava": "LLaVA-1.5-7B",
    "qwen2_vl": "Qwen2-VL-2B",
    "qwen2_5_vl": "Qwen2.5-VL-3B",
    "qwen3_vl": "Qwen3-VL-4B",
}
# a family without a tiny config of its own takes Qwen2-VL's hyperparameters (its model
# comes from the family's tiny builder, or with --real from the published config)
TINY_CONF = {
    f: f"{f}_tiny" if (CONF_DIR / f"{f}_tiny.yaml").is_file() else "qwen2_vl_tiny"
    for f in REAL_NAME
} | {"llava": "llava_tiny"}


# ---- the lake ------------------------------------------------------------------------------


def lake_samples(uri: str) -> int:
    """``shapes_llava`` samples in the lake at ``uri`` (0 when there is none)."""
    from lake.store import Lake

    if not Path(uri).exists():
        return 0
    return Lake(uri).count("samples", f"dataset = '{DATASET}'")


def build_lake(root: Path, n: int) -> str:
    """A lake of ``n`` shapes images with their LLaVA conversations, under ``root``."""
    from lake.demo_data import generate
    from lake.ingest import IngestSettings, ingest
    from lake.store import Lake
    from plugins.llava import LlavaSource

    demo = root / "shapes"
    generate(demo, n=n, seed=0, wrong_caption_frac=0, exact_dup_frac=0, near_dup_frac=0)
    uri = root / "lake"
    ingest(LlavaSource(demo / "llava.json"), Lake(uri), DATASET, IngestSettings(progress=False))
    return str(uri)


# ---- models ----------------------------------------------------------------------------------


def tiny_kwargs(family: str) -> dict[str, Any]:
    """``VlmModule`` arguments of the family's tiny config (over ``conf/model/vlm.yaml``),
    composed as ``lakeloom train`` would."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR.parent)):
        cfg = compose(config_name="train", overrides=[f"model={TINY_CONF[family]}"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(model, dict)
    return {k: v for k, v in model.items() if not k.startswith("_")} | {"family": family}


def real_model(family: str, device: Any, dtype: torch.dtype, shrink: int = 0) -> tuple[Any, Any]:
    """``(model, processor)`` of the published architecture with random weights, built on
    ``device`` (``shrink`` > 0 keeps only that many layers per tower: smoke tests)."""
    import transformers as tf

    from core.models import vlm_tiny

    if family == "llava":
        tok = vlm_tiny.build_tokenizer(
            ("<image>",), pad="<pad>", eos="</s>", bos="<s>", unk="<unk>"
        )
        # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px (penultimate layer) + Llama-7B
        cfg = tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(
                hidden_size=1024, intermediate_size=4096, num_hidden_layers=shrink or 24,
                num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                hidden_act="quick_gelu", layer_norm_eps=1e-5,
            ),
            text_config=tf.LlamaConfig(
                vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=shrink or 32, num_attention_heads=32, num_key_value_heads=32,
                max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                tie_word_embeddings=False,
            ),
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            projector_hidden_act="gelu",
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            image_seq_length=576,
            tie_word_embeddings=False,
        )  # fmt: skip
        processor = tf.LlavaProcessor(
            image_processor=tf.CLIPImageProcessor(
                size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                image_mean=[0.48145466, 0.4578275, 0.40821073],
                image_std=[0.26862954, 0.26130258, 0.27577711],
            ),
            tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
            num_additional_image_tokens=1, chat_template=vlm_tiny.LLAVA_TEMPLATE,
        )  # fmt: skip
        cls = tf.LlavaForConditionalGeneration
    elif family == "qwen2_vl":
        tok = vlm_tiny.build_tokenizer(
            vlm_tiny.QWEN_SPECIAL, pad="<|endoftext|>", eos="<|im_end|>",
            bos="<|endoftext|>", unk=None,
        )  # fmt: skip
        ids = {s: tok.convert_tokens_to_ids(s) for s in vlm_tiny.QWEN_SPECIAL}
        # Qwen/Qwen2-VL-2B-Instruct: 32-block ViT (1280) + Qwen2 1.5B-class LM, tied head
        cfg = tf.Qwen2VLConfig(
            text_config=dict(
                vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                num_hidden_layers=shrink or 28, num_attention_heads=12, num_key_value_heads=2,
                max_position_embeddings=32768, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": [16, 24, 24]},
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
            ),
            vision_config=dict(
                depth=shrink or 32, embed_dim=1280, hidden_size=1536, num_heads=16,
                mlp_ratio=4, in_channels=3, patch_size=14, spatial_merge_size=2,
                temporal_patch_size=2,
            ),
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
        )  # fmt: skip
        kw = dict(patch_size=14, temporal_patch_size=2, merge_size=2)
        processor = tf.Qwen2VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(**kw),
            tokenizer=tok,
            video_processor=tf.Qwen2VLVideoProcessor(**kw),
            chat_template=vlm_tiny.QWEN_TEMPLATE,
        )
        cls = tf.Qwen2VLForConditionalGeneration
    elif family in ("qwen2_5_vl", "qwen3_vl"):
        return _real_qwen_new(family, device, dtype, shrink)
    else:
        raise SystemExit(f"--real has no published config for family {family!r}")
    with torch.device(device):
        model = cls._from_config(cfg, dtype=dtype)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor


def _real_qwen_new(family: str, device: Any, dtype: torch.dtype, shrink: int) -> tuple[Any, Any]:
    """Qwen2.5-VL-3B or Qwen3-VL-4B (published sizes, random weights), tied heads."""
    import transformers as tf

    from core.models import vlm_tiny

    tok = vlm_tiny.build_tokenizer(
        vlm_tiny.QWEN_SPECIAL, pad="<|endoftext|>", eos="<|im_end|>",
        bos="<|endoftext|>", unk=None,
    )  # fmt: skip
    ids = {s: tok.convert_tokens_to_ids(s) for s in vlm_tiny.QWEN_SPECIAL}
    special = dict(
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    tokens = dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
    )  # fmt: skip
    if family == "qwen2_5_vl":
        # Qwen/Qwen2.5-VL-3B-Instruct: 32-block window-attention ViT (1280) + a 36-layer 2048 LM
        cfg = tf.Qwen2_5_VLConfig(
            text_config=dict(
                vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                num_hidden_layers=shrink or 36, num_attention_heads=16, num_key_value_heads=2,
                max_position_embeddings=128000, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": [16, 24, 24]}, **special,
            ),
            vision_config=dict(
                depth=shrink or 32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                out_hidden_size=2048, in_channels=3, patch_size=14, spatial_merge_size=2,
                temporal_patch_size=2, window_size=112, hidden_act="silu",
                fullatt_block_indexes=[7, 15, 23, 31][: (shrink or 32) // 8 or 1],
                tokens_per_second=2,
            ), **tokens,
        )  # fmt: skip
        kw = dict(patch_size=14, temporal_patch_size=2, merge_size=2)
        processor = tf.Qwen2_5_VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(**kw), tokenizer=tok,
            video_processor=tf.Qwen2VLVideoProcessor(**kw), chat_template=vlm_tiny.QWEN_TEMPLATE,
        )  # fmt: skip
        cls = tf.Qwen2_5_VLForConditionalGeneration
    else:
        # Qwen/Qwen3-VL-4B-Instruct: 24-block ViT (1024, patch 16, DeepStack taps at 5/11/17)
        # + a 36-layer 2560 LM (32 heads, 8 KV heads, head dim 128), interleaved M-RoPE
        depth = shrink or 24
        cfg = tf.Qwen3VLConfig(
            text_config=dict(
                vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                num_hidden_layers=shrink or 36, num_attention_heads=32, num_key_value_heads=8,
                head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                 "mrope_section": [24, 20, 20], "mrope_interleaved": True},
                **special,
            ),
            vision_config=dict(
                depth=depth, hidden_size=1024, intermediate_size=4096, num_heads=16,
                out_hidden_size=2560, in_channels=3, patch_size=16, spatial_merge_size=2,
                temporal_patch_size=2, num_position_embeddings=2304,
                hidden_act="gelu_pytorch_tanh",
                deepstack_visual_indexes=[i for i in (5, 11, 17) if i < depth] or [depth - 1],
            ), **tokens,
        )  # fmt: skip
        kw = dict(patch_size=16, temporal_patch_size=2, merge_size=2)
        processor = tf.Qwen3VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(**kw), tokenizer=tok,
            video_processor=tf.Qwen3VLVideoProcessor(**kw), chat_template=vlm_tiny.QWEN_TEMPLATE,
        )  # fmt: skip
        cls = tf.Qwen3VLForConditionalGeneration
    with torch.device(device):
        model = cls._from_config(cfg, dtype=dtype)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor


def make_module(family: str, args: argparse.Namespace, device: Any, dtype: torch.dtype) -> Any:
    """The family's ``VlmModule`` (tiny, or the real architecture through the module's
    own freezing, PEFT and no_grad wiring), on ``device``."""
    kw: dict[str, Any] = {
        "max_length": args.max_length,
        "max_steps": args.warmup + args.steps,
        "grad_checkpointing": bool(args.grad_ckpt),
        "peft": {"method": args.peft},
    }
    if not args.real:
        module = VlmModule(**(tiny_kwargs(family) | kw))
        return module.to(device=device, dtype=dtype)
    model, processor = real_model(family, device, dtype, args.real_shrink)
    if args.quantization:  # the module's own loading path: from a folder, quantized
        folder = Path(tempfile.mkdtemp(prefix="bench_train_vlm_model_"))
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        try:
            module = VlmModule(
                **(tiny_kwargs(family) | {"source": str(folder), "lr": 1e-5}
                   | {"dtype": str(dtype)[6:], "quantization": args.quantization} | kw)
            )  # fmt: skip
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return module
    spec = family_spec(family)
    with mock.patch.object(vlm_module, "load_vlm", lambda *a, **k: (model, processor, spec)):
        module = VlmModule(**(tiny_kwargs(family) | {"source": "real", "lr": 1e-5} | kw))
    return module.to(device)


def fsdp_wrap(module: Any, family: str, device: torch.device, dtype: torch.dtype) -> None:
    """``module.model`` wrapped in FSDP as ``trainer=fsdp_vlm`` wraps it (see the module
    docstring); needs an initialised process group."""
    from omegaconf import OmegaConf
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from core.models.vlm_families import fsdp_wrap_classes

    conf = OmegaConf.load(CONF_DIR.parent / "trainer" / "fsdp_vlm.yaml").strategy
    mixed = None
    if device.type == "cuda":
        mixed = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
    module.model = FSDP(
        module.model,
        auto_wrap_policy=ModuleWrapPolicy(fsdp_wrap_classes(family)),
        sharding_strategy=ShardingStrategy[conf.sharding_strategy],
        use_orig_params=bool(conf.use_orig_params),
        mixed_precision=mixed,
        device_id=device,
    )


@contextlib.contextmanager
def world_of_one(device: torch.device) -> Iterator[None]:
    """A process group of world size 1 (NCCL on CUDA, gloo on loopback on CPU) with a file
    rendezvous: a ``tcp://`` init would open a listening socket on every interface."""
    import torch.distributed as dist

    folder = Path(tempfile.mkdtemp(prefix="bench_train_vlm_pg_"))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")  # NCCL's bootstrap socket, loopback only
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{folder}/store", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        shutil.rmtree(folder, ignore_errors=True)


# ---- model FLOPs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Flops:
    """Matmul weights per role and whether the vision tower runs backward."""

    n_vision: int
    n_projector: int
    n_lm: int
    vision_trained: bool
    patch_size: int
    image_token_id: int

    def of(self, batch: dict[str, Any]) -> tuple[float, int, int]:
        """``(model FLOPs, T_img, T_patch)`` of one batch."""
        tokens = int(batch["token_mask"].sum())
        t_img = int((batch["input_ids"] == self.image_token_id).sum())
        pix = batch.get("pixel_values")
        if pix is None:
            t_patch = 0
        elif "image_grid_thw" in batch:  # Qwen: one row per patch
            t_patch = int(pix.shape[0])
        else:  # CLIP: the patches and the class token of every image
            t_patch = int(pix.shape[0]) * (
                (pix.shape[-2] // self.patch_size) * (pix.shape[-1] // self.patch_size) + 1
            )
        k = 6 if self.vision_trained else 2
        flops = 6 * self.n_lm * tokens + 6 * self.n_projector * t_img + k * self.n_vision * t_patch
        return float(flops), t_img, t_patch


def flops_model(module: Any) -> Flops:
    """Linear / Conv weights per role of the module's model (a tied head counts as a
    head; LoRA's A / B matrices count, they run)."""
    spec = module.spec
    sizes = {"vision": 0, "projector": 0, "language_model": 0}
    for name, m in module.model.named_modules():
        if ".original_module" in name:  # PEFT's idle copy of a module it trains in full
            continue
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
            w = m.weight
            role = spec.role_of(f"{name}.weight")
            if role in sizes and w is not None:
                sizes[role] += int(w.numel())
    cfg = module.model.config
    vcfg = getattr(cfg, "vision_config", None)
    tok = module.processor.tokenizer
    return Flops(
        n_vision=sizes["vision"],
        n_projector=sizes["projector"],
        n_lm=sizes["language_model"],
        vision_trained=not module.frozen["vision"],
        patch_size=int(getattr(vcfg, "patch_size", 14)),
        image_token_id=int(tok.convert_tokens_to_ids(spec.image_token)),
    )


# ---- one measured run -------------------------------------------------------------------------


@dataclass
class Run:
    """Totals over the measured steps of one run (warm-up steps left out)."""

    steps: int = 0
    wait_s: float = 0.0
    compute_s: float = 0.0
    tokens: int = 0
    supervised: int = 0
    samples: int = 0
    slots: int = 0
    flops: float = 0.0
    rows: int = 0
    skipped: int = 0
    loss0: float = float("nan")

    @property
    def wall_s(self) -> float:
        return self.wait_s + self.compute_s


def to_device(batch: dict[str, Any], device: Any, dtype: torch.dtype) -> dict[str, Any]:
    """Tensors of a batch on ``device``; floating ones (pixels) in the model's dtype."""
    out = dict(batch)
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            out[k] = v.to(dtype) if v.is_floating_point() else v
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    module: Any,
    opt: torch.optim.Optimizer,
    dm: LanceDataModule,
    pack: bool,
    steps: int,
    warmup: int,
    device: torch.device,
    dtype: torch.dtype,
    flops: Flops,
) -> Run:
    """``warmup + steps`` optimizer steps on the train loader with packing on or off."""
    module.hparams.pack = pack
    dm.set_collator(module.make_collator(train=True))
    loader = dm.loader("train", 0, 1)
    it = iter(loader)
    run = Run()
    module.train()
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:  # a short lake: start the next epoch
            it = iter(loader)
            batch = next(it)
        t1 = time.perf_counter()
        b = to_device(batch, device, dtype)
        loss, _ = module.sft_loss(b)
        if "pixel_values" not in b:
            loss = loss + module.vision_dummy()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == 0:
            run.loss0 = float(loss.detach())
        _sync(device)
        t2 = time.perf_counter()
        if step < warmup:
            continue
        run.steps += 1
        run.wait_s += t1 - t0
        run.compute_s += t2 - t1
        run.tokens += int(batch["token_mask"].sum())
        run.supervised += int((batch["labels"][:, 1:] != IGNORE).sum())
        run.samples += len(batch["sample_ids"])
        run.slots += int(batch["input_ids"].numel())
        run.rows += int(batch["input_ids"].shape[0])
        run.skipped += len(batch["skipped"])
        run.flops += flops.of(batch)[0]
    return run


# ---- the whole bench ---------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def bench_family(
    family: str, args: argparse.Namespace, uri: str, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """Interleaved rounds of unpacked / packed runs of one family; per-round figures."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    module = make_module(family, args, device, dtype)
    flops = flops_model(module)
    if args.fsdp:
        fsdp_wrap(module, family, device, dtype)
    dm = LanceDataModule(uri, datasets=[DATASET], batch_size=args.batch, num_workers=0, seed=0)
    dm.setup()
    trainable = [p for p in module.parameters() if p.requires_grad]
    # the tiny runs all start from the same weights and a fresh optimizer (first-step
    # losses comparable); the real ones keep one optimizer (no room for a second copy)
    init = None
    if not (args.real or args.fsdp):
        init = {k: v.detach().clone() for k, v in module.state_dict().items()}
    opt = None if init is not None else module.configure_optimizers()["optimizer"]
    runs: dict[str, list[Run]] = {c: [] for c in CONFIGS}
    for r in range(args.rounds):
        order = CONFIGS if r % 2 == 0 else CONFIGS[::-1]
        for cfg in order:
            if init is not None:
                module.load_state_dict(init)
                opt = module.configure_optimizers()["optimizer"]
            assert opt is not None
            pack = cfg == "packed"
            run = measure(module, opt, dm, pack, args.steps, args.warmup, device, dtype, flops)
            runs[cfg].append(run)
            if init is not None:
                del opt
                opt = None
    out = {
        "family": family,
        "model": REAL_NAME[family] if args.real else TINY_CONF[family],
        "train_samples": len(dm.dataset("train")),
        "params_total": sum(p.numel() for p in module.parameters()),
        "params_trainable": sum(p.numel() for p in trainable),
        "flops": flops,
        "runs": runs,
        "same_start": init is not None,
        "peak_mem_gb": peak_memory_gb(device),
    }
    del module, opt, init, trainable
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def peak_memory_gb(device: torch.device) -> float:
    """CUDA's peak allocated memory (since the family's reset), else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def figures_of(res: dict[str, Any], peak: float | None) -> dict[str, Any]:
    """Medians over the rounds per configuration, and the packed / unpacked ratios."""
    out: dict[str, Any] = {}
    runs: dict[str, list[Run]] = res["runs"]
    for cfg in CONFIGS:
        rs = runs[cfg]
        f = {
            "tokens_per_s": med([r.tokens / r.wall_s for r in rs]),
            "supervised_tokens_per_s": med([r.supervised / r.wall_s for r in rs]),
            "samples_per_s": med([r.samples / r.wall_s for r in rs]),
            "compute_tokens_per_s": med([r.tokens / r.compute_s for r in rs]),
            "pad_frac": med([1 - r.tokens / r.slots for r in rs]),
            "data_wait_frac": med([r.wait_s / r.wall_s for r in rs]),
            "step_ms": med([1e3 * r.wall_s / r.steps for r in rs]),
            "wait_ms": med([1e3 * r.wait_s / r.steps for r in rs]),
            "rows_per_batch": med([r.rows / r.steps for r in rs]),
            "row_len": med([r.slots / r.rows for r in rs]),
            "model_tflops_per_s": med([r.flops / r.wall_s / 1e12 for r in rs]),
            "skipped": int(sum(r.skipped for r in rs)),
            "loss_first_step": rs[0].loss0,
        }
        if peak:
            f["mfu"] = f["model_tflops_per_s"] / peak
        out[cfg] = f
    pairs = list(zip(runs["unpacked"], runs["packed"], strict=True))
    out["packed_vs_unpacked"] = med([u.wall_s / p.wall_s for u, p in pairs])
    out["packed_vs_unpacked_compute"] = med([u.compute_s / p.compute_s for u, p in pairs])
    u = runs["unpacked"][0]
    out["flops_per_token"] = u.flops / max(u.tokens, 1)
    if res["same_start"]:  # every run from the same weights: the first losses must agree
        out["first_step_loss_diff"] = abs(runs["packed"][0].loss0 - u.loss0)
    for cfg in CONFIGS:
        out[cfg].pop("loss_first_step")
    return out


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def print_table(
    results: list[dict[str, Any]], figs: list[dict[str, Any]], peak: float | None
) -> None:
    head = (f"{'family / config':<22}{'tokens/s':>10}{'sup tok/s':>10}{'samples/s':>10}"
            f"{'pad %':>7}{'wait %':>8}{'step ms':>9}{'rows x len':>12}{'TFLOP/s':>9}"
            + (f"{'MFU %':>7}" if peak else "") + f"{'x unpacked':>11}")  # fmt: skip
    print(head)
    for res, fig in zip(results, figs, strict=True):
        for cfg in CONFIGS:
            f = fig[cfg]
            ratio = 1.0 if cfg == "unpacked" else fig["packed_vs_unpacked"]
            shape = f"{f['rows_per_batch']:.1f}x{f['row_len']:.0f}"
            line = (f"{res['family'] + ' ' + cfg:<22}{f['tokens_per_s']:>10.0f}"
                    f"{f['supervised_tokens_per_s']:>10.0f}{f['samples_per_s']:>10.1f}"
                    f"{100 * f['pad_frac']:>7.1f}{100 * f['data_wait_frac']:>8.1f}"
                    f"{f['step_ms']:>9.1f}{shape:>12}{f['model_tflops_per_s']:>9.3g}"
                    + (f"{100 * f['mfu']:>7.2f}" if peak else "") + f"{ratio:>11.2f}")  # fmt: skip
            print(line)
    print()
    for res, fig in zip(results, figs, strict=True):
        fl: Flops = res["flops"]
        k = 6 if fl.vision_trained else 2
        check = ""
        if "first_step_loss_diff" in fig:
            check = f"; first-step loss packed - unpacked {fig['first_step_loss_diff']:.1e}"
        print(
            f"{res['family']} ({res['model']}, {_si(res['params_total'])} params, "
            f"{_si(res['params_trainable'])} trainable): packed/unpacked "
            f"{fig['packed_vs_unpacked']:.2f}x wall, {fig['packed_vs_unpacked_compute']:.2f}x "
            f"compute only{check}"
        )
        print(
            f"  model FLOPs/token {_si(fig['flops_per_token'])} = (6*N_lm*T + 6*N_proj*T_img "
            f"+ {k}*N_vis*T_patch) / T with N_lm {_si(fl.n_lm)}, N_proj {_si(fl.n_projector)}, "
            f"N_vis {_si(fl.n_vision)}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="llava,qwen2_vl", help="comma-separated")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per run (30; real 10)")
    ap.add_argument("--warmup", type=int, default=3, help="steps left out at the start of a run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    ap.add_argument("--batch", type=int, default=None, help="samples per batch (16; real 8)")
    ap.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per sample and per packed row (512; real 2048)",
    )
    ap.add_argument("--lake", default="data/lake")
    ap.add_argument(
        "--build", action="store_true", help="build a temporary lake even if --lake has one"
    )
    ap.add_argument(
        "--n", type=int, default=None, help="images of a built lake (enough for one epoch)"
    )
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (CPU default 1: the tiny models gain nothing from more, "
        "and on a shared 2-core box extra threads spin and stall)",
    )
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak of the device at the run's dtype, for MFU (H100 SXM bf16 dense: 989)",
    )
    ap.add_argument(
        "--real",
        action="store_true",
        help="published architectures with random weights (CUDA only)",
    )
    ap.add_argument("--real-shrink", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument(
        "--grad-ckpt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gradient checkpointing (default: on with --real, off otherwise)",
    )
    ap.add_argument("--peft", choices=("none", "lora"), default="none")
    ap.add_argument(
        "--quantization", choices=("4bit",), default=None,
        help="QLoRA: load the --real model in 4-bit NF4 through the module (CUDA)",
    )  # fmt: skip
    ap.add_argument("--fsdp", action="store_true", help="wrap the model as trainer=fsdp_vlm")
    args = ap.parse_args()

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in TINY_CONF]
    if unknown or not families:
        ap.error(f"--families: unknown {unknown}; choose from {sorted(TINY_CONF)}")
    from core.models.vlm_families import FAMILIES

    missing = [f for f in families if f not in FAMILIES]
    if missing:
        raise SystemExit(f"family not available: {missing} (core/models/vlm_families.py)")
    if args.quantization and not args.real:
        ap.error("--quantization needs --real (a saved checkpoint to load quantized)")
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    if args.real and not cuda:
        raise SystemExit(
            "--real builds multi-billion-parameter models (LLaVA-1.5-7B, Qwen2-VL-2B) and "
            "trains them in bfloat16: it needs a CUDA GPU, and none is visible here (or "
            "--device cpu was given). Run it on a GPU machine, e.g. "
            "`python bench/train_vlm.py --real --peak-tflops 989` on an H100."
        )
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if args.real else torch.float32
    args.steps = args.steps or (10 if args.real else 30)
    args.batch = args.batch or (8 if args.real else 16)
    args.max_length = args.max_length or (2048 if args.real else 512)
    args.grad_ckpt = args.real if args.grad_ckpt is None else args.grad_ckpt
    threads = args.threads or (1 if device.type == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    t_start = time.perf_counter()
    tmp: Path | None = None
    try:
        uri = args.lake
        have = 0 if args.build else lake_samples(uri)
        if have:
            where = f"{uri} ({have} {DATASET} samples)"
        else:
            tmp = Path(tempfile.mkdtemp(prefix="bench_train_vlm_"))
            need = args.n or max(200, int(1.5 * args.batch * (args.warmup + args.steps)))
            t0 = time.perf_counter()
            uri = build_lake(tmp, need)
            why = "--build" if args.build else f"{args.lake} has no {DATASET} samples"
            where = (
                f"temporary lake of {lake_samples(uri)} {DATASET} samples, built in "
                f"{time.perf_counter() - t0:.0f} s ({why}; `lakeloom demo` makes data/lake)"
            )
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        print(
            f"lake: {where}\ndevice: {gpu or 'cpu'}, threads {threads}, {str(dtype)[6:]}; "
            f"batch {args.batch} samples, max_length {args.max_length}, {args.warmup} warm-up "
            f"+ {args.steps} measured steps per run, {args.rounds} rounds (medians)"
            + (", grad checkpointing" if args.grad_ckpt else "")
            + f", peft {args.peft}"
        )
        with world_of_one(device) if args.fsdp else contextlib.nullcontext():
            results = [bench_family(f, args, uri, device, dtype) for f in families]
        figs = [figures_of(r, args.peak_tflops) for r in results]
        print()
        print_table(results, figs, args.peak_tflops)
        wall = time.perf_counter() - t_start
        print(f"\nbench wall time {wall:.0f} s")
        figures: dict[str, Any] = {
            "bench": "train_vlm",
            "real": bool(args.real),
            "device": gpu or "cpu",
            "threads": threads,
            "dtype": str(dtype)[6:],
            "batch": args.batch,
            "max_length": args.max_length,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "grad_ckpt": bool(args.grad_ckpt),
            "peft": args.peft,
            "quantization": args.quantization,
            "fsdp": bool(args.fsdp),
            "peak_tflops": args.peak_tflops,
            "lake_built": tmp is not None,
            "wall_s": round(wall, 1),
        }
        for res, fig in zip(results, figs, strict=True):
            fam = res["family"]
            fl: Flops = res["flops"]
            figures[f"{fam}_model"] = res["model"]
            figures[f"{fam}_train_samples"] = res["train_samples"]
            figures[f"{fam}_params"] = res["params_total"]
            figures[f"{fam}_params_trainable"] = res["params_trainable"]
            figures[f"{fam}_peak_mem_gb"] = round(res["peak_mem_gb"], 3)
            figures[f"{fam}_n_lm"] = fl.n_lm
            figures[f"{fam}_n_projector"] = fl.n_projector
            figures[f"{fam}_n_vision"] = fl.n_vision
            figures[f"{fam}_flops_per_token"] = round(fig["flops_per_token"])
            figures[f"{fam}_packed_vs_unpacked"] = round(fig["packed_vs_unpacked"], 3)
            figures[f"{fam}_packed_vs_unpacked_compute"] = round(
                fig["packed_vs_unpacked_compute"], 3
            )
            if "first_step_loss_diff" in fig:
                figures[f"{fam}_first_step_loss_diff"] = float(f"{fig['first_step_loss_diff']:.2e}")
            for cfg in CONFIGS:
                for k, v in fig[cfg].items():
                    key = f"{fam}_{cfg}_{k}"
                    if isinstance(v, float):
                        v = round(v, 6 if k in ("mfu", "model_tflops_per_s") else 4)
                    figures[key] = v
        print(json.dumps(figures))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
