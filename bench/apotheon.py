"""Benchmark: Apotheon training throughput (samples/s, tokens/s, MFU) on collated batches.

Generates synthetic but realistic lake items, a mix of three kinds in every batch:

- ``image``: one JPEG (56..224 px each side, shapes on a gradient) and a ~12-word caption;
- ``audio``: 2..8 s of 16 kHz tones + noise (FLAC) and a ~8-word transcript, no caption;
- ``clip``: 3..8 JPEG frames, the video's audio track (6..20 s, WAV) cut to the clip's
  range (``audio_range``), a caption and a transcript,

and collates them once with the real :class:`ApotheonCollator` (JPEG decode, CLIP image
processor, audio decode + Whisper log-mel, tokenizer): its samples/s is reported on its
own. The pre-collated batches then sit on the device and are cycled through, so the
training figure is the model's: ``--warmup`` + ``--steps`` training steps (forward of all
three heads + backward + AdamW step, every parameter trained), timed after the warm-up.

Figures: samples/s, LM tokens/s (prefix + target tokens of both LM heads: the non-pad
prompt tokens, the fusion's latents and the non-pad targets of the rows each head trains
on), media tokens/s (ViT patches + CLS of every image / frame and pooled Whisper frames of
every audio: the memory of the fusion's cross-attention), step time, and MFU. Model FLOPs
of each distinct batch are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one
real training step (forward + backward, before the measured steps; the CPU
flash-attention kernels, which it does not know, with its own SDPA formulas); over the
measured step time they give the achieved FLOP/s. The baseline, measured in the same run
on the same device and threads, is the peak of a large matmul (CPU: 2048^3 float32;
CUDA: 8192^3 bf16, float32 with ``--no-bf16``), best of several reps. MFU = achieved /
measured peak; with CUDA also against the H100 SXM bf16 dense spec (989 TFLOP/s), for
reference. The forward's FLOPs by top-level module of the model are printed with the
table (the counter cannot split the backward by module).

Sizes (``--size``):

- ``tiny`` (default): ``conf/model/apotheon_tiny.yaml`` (CLIP 2x64 at 56 px, Whisper
  encoder 2x64 on 5 s, Llama 2x64 with the local 512-token BPE, fusion 64 x 2), on CPU in
  float32, torch's default thread count unless ``--threads``.
- ``base-width``: real widths with RANDOM weights, built from transformers configs (no
  download): CLIP ViT-L/14 at 224 px (1024 x 24, 16 heads), the Whisper-base encoder (512
  x 6, 8 heads, 30 s, 80 mels), a Llama of ``--lm-*`` sizes (default ~1.2B, Llama-3.2-1B
  shaped: 2048 x 16, 32 heads, 8 KV heads, MLP 8192, vocab 128256, tied embeddings; 8B does
  not fit full training with AdamW on one 80 GB GPU), fusion and heads as
  ``conf/model/apotheon.yaml`` (2048 wide, 6 layers, 16 heads, 32 latents, 375 audio tokens
  per 30 s). Runs on CUDA with bf16 autocast (float32 weights and AdamW state). The text
  goes through the tiny byte-level BPE (about 2 tokens a word, so texts are somewhat longer
  than with Llama-3's tokenizer); every token id is taken modulo the LM's vocab, so any
  ``--lm-vocab`` works, and the default (Llama-3's 128256) gives the real logits' cost.
  ``--device cpu`` runs it too (a smoke test: shrink it with ``--lm-layers`` /
  ``--lm-vocab``; full training needs ~16 bytes per parameter).

Prints a table and, last, one line with a JSON object of the figures (``--json-only``:
that line only).

    python bench/apotheon.py [--batch 16] [--steps 30] [--warmup 3] [--threads N]
    python bench/apotheon.py --device cuda --size base-width [--lm-layers 16 --lm-hidden 2048]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models.apotheon import ApotheonConfig, ApotheonModel, build_processors
from core.modules.apotheon_collate import SAMPLE_RATE, ApotheonCollator
from lake.audio import encode_pcm

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"
KINDS = ("image", "audio", "clip")
H100_SXM_BF16_TFLOPS = 989.0

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "grey")
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
SIZES = ("small", "large", "medium", "tiny", "huge")
MOTIONS = ("moves slowly", "slides quickly", "rests", "spins", "drifts", "bounces")
PLACES = ("left edge", "centre", "top corner", "bottom", "right side", "middle")
BACKDROPS = ("dark", "light", "striped", "noisy", "plain", "checked")
SPOKEN = ("the", "a", "shape", "now", "turns", "moves", "here", "is", "then", "stops",
          "again", "we", "see", "colour", "left", "right", "and", "slowly")  # fmt: skip


# ---- synthetic items ------------------------------------------------------------------------


def caption(rng: np.random.Generator) -> str:
    """About 12 words describing a shapes scene."""
    c = rng.choice
    return (
        f"a {c(SIZES)} {c(COLOURS)} {c(SHAPES)} {c(MOTIONS)} near the {c(PLACES)} "
        f"of a {c(BACKDROPS)} {c(COLOURS)} background"
    )


def transcript(rng: np.random.Generator) -> str:
    """6..10 spoken-like words."""
    return " ".join(rng.choice(SPOKEN, size=int(rng.integers(6, 11))))


def jpeg(rng: np.random.Generator, lo: int = 56, hi: int = 224) -> bytes:
    """A JPEG of random size in [lo, hi] per side: a colour gradient and a few shapes."""
    w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    a, b = rng.integers(0, 256, size=(2, 3))
    t = np.linspace(0.0, 1.0, w)[None, :, None]
    pixels = (a + (b - a) * t) * np.ones((h, 1, 1))
    pixels += rng.normal(0, 8, size=pixels.shape)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = (
            x0 + int(rng.integers(6, max(7, w // 2))),
            y0 + int(rng.integers(6, max(7, h // 2))),
        )
        fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def tones(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """16 kHz mono int16: a few tones that switch every ~0.5 s, under some noise."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    freqs = rng.uniform(120, 2000, size=max(1, int(seconds * 2)))
    f = np.repeat(freqs, math.ceil(n / len(freqs)))[:n]
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    sig = 0.4 * np.sin(phase) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    sig += rng.normal(0, 0.05, size=n)
    return (np.clip(sig, -1, 1) * 32767).astype(np.int16)


def make_item(rng: np.random.Generator, kind: str, sid: str) -> dict[str, Any]:
    """One lake item of ``kind`` as :class:`ApotheonSamples` yields them."""
    item: dict[str, Any] = {"sample_id": sid, "images": [], "audio": None, "audio_range": None}
    if kind == "image":
        item["images"] = [jpeg(rng)]
        item["caption"] = caption(rng)
    elif kind == "audio":
        item["audio"] = encode_pcm(tones(rng, float(rng.uniform(2, 8))), SAMPLE_RATE, "flac")
        item["transcript"] = transcript(rng)
    else:  # a clip: its frames, and the video's audio cut to the clip's range
        item["images"] = [jpeg(rng) for _ in range(int(rng.integers(3, 9)))]
        track = float(rng.uniform(6, 20))
        start = float(rng.uniform(0, track - 4))
        item["audio"] = encode_pcm(tones(rng, track), SAMPLE_RATE, "wav")
        item["audio_range"] = (start, start + float(rng.uniform(1.5, 4)))
        item["caption"] = caption(rng)
        item["transcript"] = transcript(rng)
    return item


def make_batches(n_batches: int, batch: int, seed: int) -> list[list[dict[str, Any]]]:
    """Batches of items, the kinds in equal shares (round robin), shuffled in each batch."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        kinds = [KINDS[(b + i) % len(KINDS)] for i in range(batch)]
        rng.shuffle(kinds)
        out.append([make_item(rng, k, f"s{b:02d}-{i:03d}") for i, k in enumerate(kinds)])
    return out


# ---- models -----------------------------------------------------------------------------------


def yaml_config(name: str) -> dict[str, Any]:
    """The ``config`` mapping of ``conf/model/<name>.yaml`` over its defaults' (apotheon)."""
    from omegaconf import OmegaConf

    conf = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    parts = [conf.get("config", {})]
    for d in conf.get("defaults", []):
        if isinstance(d, str) and d != "_self_":
            parts.insert(0, OmegaConf.load(CONF_DIR / f"{d}.yaml").get("config", {}))
    merged = OmegaConf.to_container(OmegaConf.merge(*parts), resolve=True)
    assert isinstance(merged, dict)
    return merged


def tiny_model(device: torch.device) -> tuple[ApotheonModel, ApotheonCollator, dict[str, Any]]:
    """The tiny config's model (random weights) and its collator."""
    cfg = ApotheonConfig.from_dict(yaml_config("apotheon_tiny"))
    with torch.device(device):
        model = ApotheonModel(cfg, seed=0)
    p = build_processors(cfg)
    info = {"model": "apotheon_tiny", "vocab": len(p["tokenizer"])}
    return model, collator_of(cfg, p), info


def base_width_model(
    args: argparse.Namespace, device: torch.device
) -> tuple[ApotheonModel, ApotheonCollator, dict[str, Any]]:
    """Real-width towers with random weights (see the module docstring), no download."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        WhisperConfig,
        WhisperFeatureExtractor,
    )
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from core.models.vlm_tiny import build_tokenizer

    shrink = args.shrink or 0  # smoke tests only: cap every tower's and the fusion's depth
    tok = build_tokenizer((), pad="<pad>", eos="</s>", bos="<s>", unk="<unk>")
    vocab = args.lm_vocab
    conf = yaml_config("apotheon")  # fusion, heads, audio pooling: the reference config
    conf["vision"] = {"source": "random", "image_size": 224, "patch_size": 14, "hidden": 1024,
                      "layers": shrink or 24, "heads": 16}  # fmt: skip
    conf["audio"] = {**conf["audio"], "source": "random", "chunk_s": 30.0, "n_mels": 80,
                     "hidden": 512, "layers": shrink or 6, "heads": 8}  # fmt: skip
    conf["language"] = {"source": "random", "hidden": args.lm_hidden,
                        "intermediate": args.lm_intermediate, "layers": args.lm_layers,
                        "heads": args.lm_heads, "kv_heads": args.lm_kv_heads,
                        "max_positions": 8192, "dtype": None}  # fmt: skip
    if shrink:
        conf["fusion"]["layers"] = min(conf["fusion"]["layers"], shrink)
    cfg = ApotheonConfig.from_dict(conf)
    v, a, lang = cfg.vision, cfg.audio, cfg.language
    vision_cfg = CLIPVisionConfig(
        hidden_size=v.hidden, intermediate_size=4 * v.hidden, num_hidden_layers=v.layers,
        num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size,
        projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )  # fmt: skip
    audio_cfg = WhisperConfig(
        num_mel_bins=a.n_mels, d_model=a.hidden, encoder_layers=a.layers,
        encoder_attention_heads=a.heads, encoder_ffn_dim=4 * a.hidden,
        max_source_positions=int(a.chunk_s * 100) // 2,
    )  # fmt: skip
    lm_cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=lang.hidden, intermediate_size=lang.intermediate,
        num_hidden_layers=lang.layers, num_attention_heads=lang.heads,
        num_key_value_heads=lang.kv_heads, max_position_embeddings=lang.max_positions,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        pad_token_id=tok.pad_token_id % vocab, bos_token_id=tok.bos_token_id % vocab,
        eos_token_id=tok.eos_token_id % vocab, tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device(device):
        towers = (CLIPVisionModel(vision_cfg), WhisperEncoder(audio_cfg), LlamaForCausalLM(lm_cfg))
        model = ApotheonModel(cfg, towers=towers, seed=0)
    processors = {
        "tokenizer": tok,
        "image_processor": CLIPImageProcessor(
            size={"shortest_edge": v.image_size},
            crop_size={"height": v.image_size, "width": v.image_size},
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
        ),
        "feature_extractor": WhisperFeatureExtractor(
            feature_size=a.n_mels, chunk_length=int(a.chunk_s)
        ),
    }
    name = (
        f"base-width: CLIP-L/14-224 {v.layers}L + Whisper-base enc {a.layers}L + "
        f"Llama {lang.hidden}x{lang.layers} (vocab {vocab}) + fusion "
        f"{cfg.fusion.width}x{cfg.fusion.layers}x{cfg.fusion.heads}"
    )
    return model, collator_of(cfg, processors), {"model": name, "vocab": vocab}


def collator_of(cfg: ApotheonConfig, p: dict[str, Any]) -> ApotheonCollator:
    """The collator as :meth:`ApotheonModule.make_collator` builds it."""
    return ApotheonCollator(
        p["tokenizer"], p["image_processor"], p["feature_extractor"],
        caption_prompt=cfg.caption_prompt, transcription_prompt=cfg.transcription_prompt,
        max_text_tokens=cfg.max_text_tokens, max_frames=cfg.fusion.max_frames,
    )  # fmt: skip


# ---- batches ------------------------------------------------------------------------------------

ID_KEYS = ("caption_ids", "transcript_ids", "caption_prompt_ids", "transcription_prompt_ids")


def to_device(batch: dict[str, Any], device: torch.device, vocab: int) -> dict[str, Any]:
    """Tensors on ``device``; token ids modulo the LM's vocab (a no-op for the tiny LM)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = (v % vocab if k in ID_KEYS else v).to(device)
        out[k] = v
    return out


def batch_counts(batch: dict[str, Any], model: ApotheonModel) -> dict[str, int]:
    """Rows per head, LM tokens (non-pad prompt + latents + non-pad targets of the rows
    each LM head trains on), media tokens, and the slots of the fusion's memory in the two
    LM heads (each row's memory is padded to the batch's longest clip and to an audio
    track; the cross-attention projects every slot) against the media tokens they hold."""
    b = batch["caption_ids"].shape[0]
    frame_index = batch["frame_index"].cpu()
    frames = torch.bincount(frame_index[:, 0], minlength=b)
    vis = frames > 0
    aud = torch.zeros(b, dtype=torch.bool)
    aud[batch["audio_index"].cpu()] = True
    latents = model.cfg.fusion.latents
    cap = batch["has_caption"].cpu().bool() & (vis | aud)
    tr = batch["has_transcript"].cpu().bool() & aud

    def lm(rows: torch.Tensor, prompt: str, target: str) -> int:
        p = batch[f"{prompt}_mask"].cpu()[rows].sum()
        t = batch[f"{target}_mask"].cpu()[rows].sum()
        return int(p + t) + latents * int(rows.sum())

    cfg = model.vision.config
    patches = (cfg.image_size // cfg.patch_size) ** 2 + 1
    audio_tokens = model.audio.config.max_source_positions // max(1, model.cfg.audio.pool)
    n_frames = int(frame_index.shape[0])
    n_audio = int(aud.sum())
    max_frames = model.cfg.fusion.max_frames
    grid = int(frame_index[:, 1].clamp(max=max_frames - 1).max()) + 1 if n_frames else 0
    a_slots = audio_tokens if n_audio else 0
    held = frames * patches + aud.long() * audio_tokens
    cap_slots = int(cap.sum()) * (grid * patches + a_slots + 1)
    tr_slots = int(tr.sum()) * (a_slots + 1)
    used = int(held[cap].sum() + cap.sum()) + int(tr.sum()) * (audio_tokens + 1)
    return {
        "samples": b,
        "frames": n_frames,
        "audio": n_audio,
        "caption_rows": int(cap.sum()),
        "transcription_rows": int(tr.sum()),
        "contrastive_rows": int((batch["has_caption"].cpu().bool() & vis).sum()),
        "lm_tokens": lm(cap, "caption_prompt", "caption")
        + lm(tr, "transcription_prompt", "transcript"),
        "media_tokens": n_frames * patches + n_audio * audio_tokens,
        "memory_slots": cap_slots + tr_slots,
        "memory_used": used,
    }


# ---- FLOPs and the matmul baseline ------------------------------------------------------------


def flop_counter() -> Any:
    """``FlopCounterMode`` that also counts the CPU flash-attention kernels (its SDPA
    formulas; the CUDA kernels it knows already)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def fwd(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
        return fc.sdpa_flop_count(q, k, v)

    def bwd(g: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
        return fc.sdpa_backward_flop_count(g, q, k, v)

    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return fc.FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(
    model: ApotheonModel, batch: dict[str, Any], autocast: Any
) -> tuple[int, int, dict[str, int]]:
    """Model FLOPs of one training step on ``batch``: forward, backward, and the forward's
    by top-level module of the model (the rest, e.g. the contrastive logits: ``other``).
    Backward FLOPs are not split by module: the counter's module tracking attributes them
    to whichever modules are still open in the autograd graph."""
    model.zero_grad(set_to_none=True)
    fwd, bwd = flop_counter(), flop_counter()
    with fwd, autocast():
        out = model(batch)
    with bwd:
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    total = int(fwd.get_total_flops())
    root = type(model).__name__
    by: dict[str, int] = {}
    for name, ops in fwd.get_flop_counts().items():
        parts = name.split(".")
        if parts[0] == root and len(parts) == 2:
            by[parts[1]] = by.get(parts[1], 0) + int(sum(ops.values()))
    by = {k: v for k, v in by.items() if v}
    by["other"] = total - sum(by.values())
    return total, int(bwd.get_total_flops()), by


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """FLOP/s of an n x n x n matmul, best of ``reps`` timed rounds (one warm-up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    inner = 20 if device.type == "cuda" else 1  # GPU matmuls are short: time several
    best = 0.0
    for r in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            c = a @ b
        sync(device)
        dt = time.perf_counter() - t0
        if r:
            best = max(best, 2 * n**3 * inner / dt)
    del a, b, c
    return best


# ---- training steps -----------------------------------------------------------------------------


def train(
    model: ApotheonModel,
    batches: list[dict[str, Any]],
    steps: int,
    warmup: int,
    device: torch.device,
    autocast: Any,
) -> tuple[list[tuple[int, float]], list[float]]:
    """``warmup + steps`` training steps cycling over ``batches``: ``(batch index,
    seconds)`` of the measured steps, and every step's loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    model.train()
    timed, losses = [], []
    for step in range(warmup + steps):
        k = step % len(batches)
        sync(device)
        t0 = time.perf_counter()
        with autocast():
            out = model(batches[k])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        dt = time.perf_counter() - t0
        losses.append(float(out.loss.detach()))
        if step >= warmup:
            timed.append((k, dt))
    del opt
    return timed, losses


# ---- the whole bench ----------------------------------------------------------------------------


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "base-width"), default="tiny")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="samples per batch (16; base 8)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps (30; base 10)")
    ap.add_argument("--warmup", type=int, default=3, help="steps before the measured ones")
    ap.add_argument("--batches", type=int, default=4, help="distinct pre-collated batches")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    ap.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast, CUDA only (default: on with CUDA; the peak is measured in the "
        "same dtype)",
    )
    ap.add_argument(
        "--grad-ckpt", action="store_true", help="gradient checkpointing (towers, fusion)"
    )
    ap.add_argument("--lm-hidden", type=int, default=2048, help="base-width LM width")
    ap.add_argument("--lm-layers", type=int, default=16, help="base-width LM layers")
    ap.add_argument("--lm-heads", type=int, default=32)
    ap.add_argument("--lm-kv-heads", type=int, default=8)
    ap.add_argument("--lm-intermediate", type=int, default=8192)
    ap.add_argument("--lm-vocab", type=int, default=128256, help="token ids are taken modulo it")
    ap.add_argument("--shrink", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-only", action="store_true", help="print the JSON line only")
    args = ap.parse_args()
    base = args.size == "base-width"
    args.batch = args.batch or (8 if base else 16)
    args.steps = args.steps if args.steps is not None else (10 if base else 30)
    if args.batch < 1 or args.steps < 1 or args.warmup < 0 or args.batches < 1:
        ap.error("--batch, --steps and --batches must be >= 1, --warmup >= 0")
    if args.bf16 and args.device != "cuda":
        ap.error("--bf16 is for --device cuda (bf16 matmuls on this CPU are no baseline)")
    return args


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda needs a CUDA GPU, and none is visible here. Run the real-width "
            "bench on a GPU machine (`python bench/apotheon.py --device cuda --size "
            "base-width`), or leave out --device for the tiny model on CPU."
        )
    say = (lambda *a, **k: None) if args.json_only else print
    t_start = time.perf_counter()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    bf16 = (device.type == "cuda") if args.bf16 is None else args.bf16
    dtype = torch.bfloat16 if bf16 else torch.float32

    def autocast() -> Any:
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.size == "tiny":
        model, collator, info = tiny_model(device)
    else:
        model, collator, info = base_width_model(args, device)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    by_tower = {
        k: sum(p.numel() for p in getattr(model, k).parameters()) for k in ("vision", "audio", "lm")
    }
    by_tower["fusion+heads"] = params - sum(by_tower.values())
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None

    # items, then the collator (timed on its own), then the batches on the device
    t0 = time.perf_counter()
    items = make_batches(args.batches, args.batch, args.seed)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    collated = [collator(b) for b in items]
    collate_s = time.perf_counter() - t0
    n_collated = args.batches * args.batch
    batches = [to_device(b, device, info["vocab"]) for b in collated]
    counts = [batch_counts(b, model) for b in collated]

    # model FLOPs of every distinct batch (also warms the kernels up)
    model.train()
    flops, fwd_flops, breakdown = [], [], defaultdict(float)
    for b in batches:
        fwd, bwd, by = count_flops(model, b, autocast)
        flops.append(fwd + bwd)
        fwd_flops.append(fwd)
        for k, v in by.items():
            breakdown[k] += v / len(batches)
    if args.grad_ckpt:  # after counting: model FLOPs, not the recomputation
        for tower in (model.vision, model.audio, model.lm):
            tower.activation_checkpointing_enable({"use_reentrant": False})
        model.fusion.gradient_checkpointing = True

    timed, losses = train(model, batches, args.steps, args.warmup, device, autocast)
    mem_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # the baseline: a large matmul on the same device, threads and dtype
    n = 8192 if device.type == "cuda" else 2048
    peak = matmul_peak(device, dtype, n, reps=5)

    wall = sum(dt for _, dt in timed)
    step_times = [dt for _, dt in timed]
    done = [counts[k] for k, _ in timed]
    samples = sum(c["samples"] for c in done)
    lm_tokens = sum(c["lm_tokens"] for c in done)
    media_tokens = sum(c["media_tokens"] for c in done)
    model_flops = sum(flops[k] for k, _ in timed)
    achieved = model_flops / wall
    mfu = achieved / peak
    spec_mfu = achieved / (H100_SXM_BF16_TFLOPS * 1e12) if device.type == "cuda" else None
    mean = {k: float(np.mean([c[k] for c in counts])) for k in counts[0]}
    pad_frac = 1 - sum(c["memory_used"] for c in counts) / sum(c["memory_slots"] for c in counts)
    bench_s = time.perf_counter() - t_start

    say(
        f"model: {info['model']}, {_si(params)} params "
        + ", ".join(f"{k} {_si(v)}" for k, v in by_tower.items())
        + f" (built in {build_s:.1f} s)"
    )
    say(
        f"device: {gpu or 'cpu'}, threads {threads}, {'bf16 autocast' if bf16 else 'float32'}"
        f"{', grad checkpointing' if args.grad_ckpt else ''}; batch {args.batch} "
        f"({args.batches} pre-collated batches cycled), {args.warmup} warm-up + {args.steps} "
        f"measured steps"
    )
    say(
        f"batch mix (mean): {mean['frames']:.1f} images/frames, {mean['audio']:.1f} audio; rows "
        f"caption {mean['caption_rows']:.1f}, transcription {mean['transcription_rows']:.1f}, "
        f"contrastive {mean['contrastive_rows']:.1f}; {mean['lm_tokens']:.0f} LM tokens, "
        f"{mean['media_tokens']:.0f} media tokens"
    )
    say(
        f"fusion memory of the LM heads: {mean['memory_slots']:.0f} slots a batch, "
        f"{100 * pad_frac:.1f} % padding (rows padded to the longest clip / an audio track)"
    )
    say(
        f"collator: {n_collated / collate_s:.1f} samples/s ({n_collated} samples in "
        f"{collate_s:.2f} s; items generated in {gen_s:.1f} s)"
    )
    say()
    say(f"{'':28}{'value':>14}")
    rows = [
        ("samples/s", f"{samples / wall:.2f}"),
        ("LM tokens/s", f"{lm_tokens / wall:.0f}"),
        ("media tokens/s", f"{media_tokens / wall:.0f}"),
        ("step ms (mean)", f"{1e3 * wall / len(timed):.1f}"),
        ("step ms (median)", f"{1e3 * float(np.median(step_times)):.1f}"),
        ("model GFLOP/step (mean)", f"{model_flops / len(timed) / 1e9:.2f}"),
        ("achieved TFLOP/s", f"{achieved / 1e12:.4g}"),
        (f"peak TFLOP/s ({n}^3 {str(dtype)[6:]})", f"{peak / 1e12:.4g}"),
        ("MFU % (of measured peak)", f"{100 * mfu:.2f}"),
    ]
    if spec_mfu is not None:
        rows.append((f"MFU % (of {H100_SXM_BF16_TFLOPS:.0f} spec)", f"{100 * spec_mfu:.2f}"))
    for name, value in rows:
        say(f"{name:28}{value:>14}")
    say()
    total_b = sum(breakdown.values())
    bwd_ratio = (sum(flops) - sum(fwd_flops)) / sum(fwd_flops)
    say(f"{'forward FLOPs by module':28}{'GFLOP':>14}{'share %':>9}")
    for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1]):
        say(f"{k:28}{v / 1e9:>14.3f}{100 * v / total_b:>9.1f}")
    say(f"{'forward, per batch':28}{total_b / 1e9:>14.3f}{'':>9}  (backward: {bwd_ratio:.2f}x)")
    say(
        f"\nloss first step {losses[0]:.3f}, last {losses[-1]:.3f}"
        + (f"; peak GPU memory {mem_gb:.1f} GiB" if mem_gb is not None else "")
        + f"; bench wall time {bench_s:.0f} s"
    )
    figures: dict[str, Any] = {
        "bench": "apotheon",
        "size": args.size,
        "model": info["model"],
        "device": gpu or "cpu",
        "threads": threads,
        "dtype": "bf16-autocast" if bf16 else "float32",
        "grad_ckpt": bool(args.grad_ckpt),
        "params": params,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "batches": args.batches,
        "collate_samples_per_s": round(n_collated / collate_s, 2),
        "samples_per_s": round(samples / wall, 3),
        "lm_tokens_per_s": round(lm_tokens / wall, 1),
        "media_tokens_per_s": round(media_tokens / wall, 1),
        "step_ms": round(1e3 * wall / len(timed), 2),
        "step_ms_median": round(1e3 * float(np.median(step_times)), 2),
        "lm_tokens_per_batch": round(mean["lm_tokens"], 1),
        "media_tokens_per_batch": round(mean["media_tokens"], 1),
        "fusion_memory_slots_per_batch": round(mean["memory_slots"], 1),
        "fusion_memory_pad_frac": round(pad_frac, 4),
        "model_flops_per_step": round(model_flops / len(timed)),
        "achieved_tflops": round(achieved / 1e12, 6),
        "peak_tflops": round(peak / 1e12, 4),
        "peak_matmul": f"{n}^3 {str(dtype)[6:]}",
        "mfu": round(mfu, 5),
        "forward_flops_per_step": round(total_b),
        "backward_vs_forward_flops": round(bwd_ratio, 3),
        "forward_flops_share": {k: round(v / total_b, 4) for k, v in breakdown.items()},
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "wall_s": round(bench_s, 1),
    }
    if spec_mfu is not None:
        figures["spec_peak_tflops"] = H100_SXM_BF16_TFLOPS
        figures["mfu_vs_spec"] = round(spec_mfu, 5)
    if mem_gb is not None:
        figures["max_memory_gib"] = round(mem_gb, 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
