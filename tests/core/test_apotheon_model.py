"""ApotheonModel with its tiny real towers (CLIP ViT, Whisper encoder, Llama) on batches
built by the real ApotheonCollator from images, clips and audio made here.

Every head's outputs and counts, overfitting a few samples (and greedy decoding the
memorised caption back), every missing-modality combination (each tower and every
trainable parameter in the graph on every step), save -> load, the FSDP wrap (real FSDP
on CPU over a gloo group of one), towers loaded from local checkpoint directories, and the
config's checks.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from core.models.apotheon import (
    HEADS,
    IGNORE,
    ApotheonConfig,
    ApotheonModel,
    FusionLayer,
    build_processors,
    fsdp_wrap_classes,
)
from core.modules.apotheon_collate import SAMPLE_RATE, ApotheonCollator
from lake.audio import decode_pcm, encode_pcm
from tests.conftest import gloo_world_of_one

# ---- media and items ----------------------------------------------------------------------


def image(colour: tuple[int, int, int], shape: str = "square", fmt: str = "PNG") -> bytes:
    """A real PNG / JPEG: one coloured shape on a light background."""
    img = Image.new("RGB", (48, 40), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    box = (8, 6, 40, 34)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(8, 34), (24, 6), (40, 34)], fill=colour)
    else:
        draw.rectangle(box, fill=colour)
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def tone(freq: float, seconds: float = 1.0, fmt: str = "flac") -> bytes:
    """16 kHz mono sine (FLAC or WAV bytes, as the lake stores audio)."""
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    return encode_pcm(pcm, SAMPLE_RATE, fmt)


def noise(seed: int, seconds: float = 1.0) -> bytes:
    rng = np.random.default_rng(seed)
    pcm = (rng.uniform(-0.2, 0.2, int(SAMPLE_RATE * seconds)) * 32767).astype(np.int16)
    return encode_pcm(pcm, SAMPLE_RATE, "wav")


def item(sid: str, images=(), audio=None, caption=None, transcript=None, **kw: Any) -> dict:
    return {
        "sample_id": sid,
        "images": list(images),
        "audio": audio,
        "audio_range": kw.pop("audio_range", None),
        "caption": caption,
        "messages": kw.pop("messages", []),
        "transcript": transcript,
        **kw,
    }


def four_samples() -> list[dict]:
    """image+caption, audio (noise)+transcript, clip (3 frames)+audio (a tone)+caption+
    transcript, image+conversation (its answer is the caption)."""
    clip = [image((200, 30, 30), "circle", "JPEG"), image((30, 200, 30), "circle", "JPEG"),
            image((30, 30, 200), "circle", "JPEG")]  # fmt: skip
    return [
        item("img", [image((220, 40, 40), "square")], caption="a red square"),
        item("aud", audio=noise(0), transcript="hello world"),
        item(
            "clip",
            clip,
            audio=tone(880.0, 2.0),
            audio_range=(0.5, 1.5),
            caption="a circle changing colour",
            transcript="look at the circle",
        ),
        item(
            "conv",
            [image((40, 40, 220), "triangle")],
            messages=[
                {"role": "user", "content": "<image>\nWhat shape is this?"},
                {"role": "assistant", "content": "a blue triangle"},
            ],
        ),
    ]


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processors() -> dict[str, Any]:
    return build_processors(ApotheonConfig())


@pytest.fixture(scope="module")
def collate(processors) -> ApotheonCollator:
    cfg = ApotheonConfig()
    return ApotheonCollator(
        processors["tokenizer"], processors["image_processor"], processors["feature_extractor"],
        caption_prompt=cfg.caption_prompt, transcription_prompt=cfg.transcription_prompt,
        max_text_tokens=cfg.max_text_tokens, max_frames=cfg.fusion.max_frames,
    )  # fmt: skip


@pytest.fixture(scope="module")
def model() -> ApotheonModel:
    """The tiny model, shared: tests here only run forward / backward on it (no steps)."""
    return ApotheonModel(ApotheonConfig(), seed=0)


def tower_params(model: ApotheonModel) -> dict[str, torch.nn.Parameter]:
    """Every parameter of the three towers, but Whisper's frozen sinusoidal positions."""
    out = {}
    for tower in ("vision", "audio", "lm"):
        for name, p in getattr(model, tower).named_parameters():
            if f"{tower}.{name}" != "audio.embed_positions.weight":
                out[f"{tower}.{name}"] = p
    return out


def outputs(out) -> dict[str, torch.Tensor]:
    """Every tensor of an ApotheonOutput, by name."""
    named = {"loss": out.loss, **{f"loss_{k}": v for k, v in out.losses.items()}}
    for key in ("caption_logits", "transcription_logits", "image_embeds", "text_embeds",
                "logits_per_image"):  # fmt: skip
        named[key] = getattr(out, key)
    return named


# ---- 1. outputs of every head -------------------------------------------------------------


def test_head_outputs_match_the_batch(model, collate, processors) -> None:
    torch.manual_seed(0)
    batch = collate(four_samples())
    tok = processors["tokenizer"]
    vocab = model.lm.config.vocab_size
    # the collator: 1 + 3 + 1 frames, 2 audio tracks, the conversation's answer as caption
    assert batch["pixel_values"].shape == (5, 3, 56, 56)
    assert batch["frame_index"].tolist() == [[0, 0], [2, 0], [2, 1], [2, 2], [3, 0]]
    assert batch["audio_features"].shape == (2, 80, model.audio_frames)
    assert batch["audio_index"].tolist() == [1, 2]
    assert batch["captions"] == [
        "a red square",
        None,
        "a circle changing colour",
        "a blue triangle",
    ]
    prompt = batch["caption_prompt_ids"][3][batch["caption_prompt_mask"][3].bool()]
    assert tok.decode(prompt) == "What shape is this?"

    model.eval()
    with torch.no_grad():
        out = model(batch)
    cap_rows = torch.tensor([True, False, True, True])
    tr_rows = torch.tensor([False, True, True, False])
    assert out.counts == {"caption": 3, "transcription": 2, "contrastive": 3}
    # target tokens: every real token after BOS (caption then EOS)
    assert out.tokens["caption"] == int(batch["caption_mask"][cap_rows].sum()) - 3
    assert out.tokens["transcription"] == int(batch["transcript_mask"][tr_rows].sum()) - 2

    assert out.caption_logits.shape == (3, batch["caption_ids"].shape[1], vocab)
    assert out.transcription_logits.shape == (2, batch["transcript_ids"].shape[1], vocab)
    for head, logits, ids, mask, rows in (
        ("caption", out.caption_logits, batch["caption_ids"], batch["caption_mask"], cap_rows),
        ("transcription", out.transcription_logits, batch["transcript_ids"],
         batch["transcript_mask"], tr_rows),
    ):  # fmt: skip
        # the head's loss is the token cross-entropy of its logits over its rows' targets
        labels = ids[rows].masked_fill(~mask[rows].bool(), IGNORE)
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1))
        torch.testing.assert_close(out.losses[head], ce)

    dim = model.cfg.contrastive_dim
    assert out.image_embeds.shape == (4, dim) and out.text_embeds.shape == (4, dim)
    vision_rows = torch.tensor([True, False, True, True])
    norms = out.image_embeds.norm(dim=-1)
    torch.testing.assert_close(norms[vision_rows], torch.ones(3))
    assert float(norms[1]) == 0.0  # no image: a zero embedding, in no pair
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(4))
    assert out.logits_per_image.shape == (3, 3)
    scale = model.logit_scale.exp()
    torch.testing.assert_close(
        out.logits_per_image, scale * out.image_embeds[cap_rows] @ out.text_embeds[cap_rows].T
    )
    w = model.cfg.loss_weights
    torch.testing.assert_close(out.loss, sum(w[h] * out.losses[h] for h in HEADS))
    assert all(torch.isfinite(v).all() for v in outputs(out).values())


# ---- 2. overfitting a handful of samples ----------------------------------------------------


def test_each_head_overfits_four_samples(collate, processors) -> None:
    torch.manual_seed(0)
    model = ApotheonModel(ApotheonConfig(), seed=0).train()
    batch = collate(four_samples())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(60):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in out.losses.items()})
    first, last = history[0], history[-1]
    for head in HEADS:
        assert last[head] < 0.5 * first[head], (head, first[head], last[head])
    assert last["caption"] < 0.5 and last["transcription"] < 0.5

    tok = processors["tokenizer"]
    model.eval()
    captions = model.generate(batch, "caption", bos_id=tok.bos_token_id, eos_id=tok.eos_token_id)
    transcripts = model.generate(
        batch, "transcription", bos_id=tok.bos_token_id, eos_id=tok.eos_token_id
    )
    assert tok.decode(captions[0]) == "a red square"
    assert tok.decode(captions[2]) == "a circle changing colour"
    assert tok.decode(captions[3]) == "a blue triangle"
    assert tok.decode(transcripts[1]) == "hello world"
    assert tok.decode(transcripts[2]) == "look at the circle"


# ---- 3. missing modalities ----------------------------------------------------------------

SUBSETS = [
    frozenset(s) for n in range(4) for s in itertools.combinations(("image", "audio", "text"), n)
]


def subset_items(subset: frozenset[str]) -> list[dict]:
    """Two rows, each holding exactly the modalities of ``subset``."""
    out = []
    for i, (colour, freq) in enumerate((((220, 40, 40), 440.0), ((40, 200, 40), 660.0))):
        kw: dict[str, Any] = {}
        if "image" in subset:
            kw["images"] = [image(colour, ("square", "circle")[i])]
        if "audio" in subset:
            kw["audio"] = tone(freq) if i == 0 else noise(i)
        if "text" in subset:
            kw["caption"] = ("a red square", "a green circle")[i]
            kw["transcript"] = ("one two", "three four")[i]
        out.append(item(f"s{i}", **kw))
    return out


def assert_every_tower_trains(model: ApotheonModel, out) -> None:
    assert torch.isfinite(out.loss)
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    missing = [n for n, p in tower_params(model).items() if p.grad is None]
    assert not missing, f"tower parameters without a gradient: {missing[:5]} ({len(missing)})"
    # and every other trainable parameter (DDP without find_unused_parameters needs it)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    bad = [
        n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    ]
    assert not bad, f"non-finite gradients: {bad[:5]}"


@pytest.mark.parametrize("subset", SUBSETS, ids=lambda s: "+".join(sorted(s)) or "nothing")
def test_every_missing_modality_combination(model, collate, subset) -> None:
    torch.manual_seed(0)
    batch = collate(subset_items(subset))
    if "image" not in subset:
        assert batch["pixel_values"].shape[0] == 0
    if "audio" not in subset:
        assert batch["audio_features"].shape[0] == 0
    model.train()
    out = model(batch)
    image, audio, text = ("image" in subset), ("audio" in subset), ("text" in subset)
    expected = {
        "caption": 2 if text and (image or audio) else 0,
        "transcription": 2 if text and audio else 0,
        "contrastive": 2 if text and image else 0,
    }
    assert out.counts == expected
    for head, n in expected.items():
        if n == 0:
            assert out.losses[head].item() == 0.0
        else:
            assert out.losses[head].item() > 0.0
    assert (out.caption_logits is None) == (expected["caption"] == 0)
    assert (out.transcription_logits is None) == (expected["transcription"] == 0)
    assert (out.logits_per_image is None) == (expected["contrastive"] == 0)
    if not any(expected.values()):
        assert out.loss.item() == 0.0
    assert_every_tower_trains(model, out)


def test_mixed_batch_trains_each_head_on_its_rows(model, collate) -> None:
    torch.manual_seed(0)
    items = [
        item("image-only", [image((200, 200, 30), "circle")]),
        item("audio+transcript", audio=tone(330.0), transcript="good morning"),
        item("text-only", caption="a caption with no media", transcript="no audio either"),
        item(
            "clip+audio+text",
            [image((200, 30, 30)), image((30, 30, 200))],
            audio=noise(3),
            caption="two frames",
            transcript="some noise",
        ),
        item(
            "image+caption", [image((30, 200, 200), "triangle", "JPEG")], caption="a cyan triangle"
        ),
    ]
    batch = collate(items)
    model.train()
    out = model(batch)
    # caption: rows 3, 4 (row 2 has no media); transcription: rows 1, 3; pairs: rows 3, 4
    assert out.counts == {"caption": 2, "transcription": 2, "contrastive": 2}
    assert out.caption_logits.shape[0] == 2 and out.transcription_logits.shape[0] == 2
    assert out.logits_per_image.shape == (2, 2)
    assert out.tokens["caption"] == int(batch["caption_mask"][[3, 4]].sum()) - 2
    assert out.tokens["transcription"] == int(batch["transcript_mask"][[1, 3]].sum()) - 2
    assert all(out.losses[h].item() > 0.0 for h in HEADS)
    assert_every_tower_trains(model, out)


# ---- 4. save -> load ----------------------------------------------------------------------


def test_save_then_load_gives_identical_outputs(model, collate, processors, tmp_path) -> None:
    from transformers import AutoTokenizer, CLIPImageProcessor, WhisperFeatureExtractor

    torch.manual_seed(0)
    items = four_samples()
    batch = collate(items)
    model.eval()
    path = model.save_pretrained(tmp_path / "hf", processors)
    for name in ("config.json", "vision/config.json", "audio/config.json", "lm/config.json",
                 "model.safetensors", "tokenizer/tokenizer.json",
                 "image_processor/preprocessor_config.json",
                 "feature_extractor/preprocessor_config.json"):  # fmt: skip
        assert (path / name).is_file(), name
    assert ApotheonConfig.from_dict(json.loads((path / "config.json").read_text())) == model.cfg

    loaded = ApotheonModel.from_pretrained(path).eval()
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        before, after = outputs(model(batch)), outputs(loaded(batch))
    for key, value in before.items():
        assert torch.equal(after[key], value), key

    # the saved processors collate the same batch
    again = ApotheonCollator(
        AutoTokenizer.from_pretrained(path / "tokenizer"),
        CLIPImageProcessor.from_pretrained(path / "image_processor"),
        WhisperFeatureExtractor.from_pretrained(path / "feature_extractor"),
    )(items)
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(again[key], value), key


# ---- 5. FSDP ------------------------------------------------------------------------------


def test_fsdp_wraps_every_block_and_trains(collate, tmp_path) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

    classes = fsdp_wrap_classes()
    assert {FusionLayer, CLIPEncoderLayer, WhisperEncoderLayer, LlamaDecoderLayer} <= classes
    torch.manual_seed(0)
    model = ApotheonModel(ApotheonConfig(), seed=0)
    blocks = [*model.fusion.layers, *model.vision.encoder.layers,
              *model.audio.layers, *model.lm.model.layers]  # fmt: skip
    assert len(blocks) == 8
    assert all(isinstance(b, tuple(classes)) for b in blocks)
    ids = {id(b) for b in blocks}

    with gloo_world_of_one(tmp_path):
        with pytest.warns(UserWarning, match="NO_SHARD"):  # world size 1
            wrapped = FSDP(
                model, auto_wrap_policy=ModuleWrapPolicy(classes),
                device_id=torch.device("cpu"), use_orig_params=True,
            )  # fmt: skip
        units = [m.module for m in wrapped.modules() if isinstance(m, FSDP)]
        assert units[0] is model
        # one FSDP unit per block, and nothing else but the root
        assert {id(u) for u in units[1:]} == ids
        assert isinstance(model.fusion.layers[0], FSDP)

        batch = collate(four_samples())
        opt = torch.optim.AdamW(wrapped.parameters(), lr=3e-3)
        losses = []
        for _ in range(3):
            out = wrapped(batch)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            losses.append(float(out.loss.detach()))
        assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


# ---- 6. towers from local checkpoint directories ----------------------------------------


def test_towers_load_from_local_directories(tmp_path, collate) -> None:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperModel,
    )

    from core.models.vlm_tiny import build_tokenizer

    torch.manual_seed(1)
    vision_dir, audio_dir, lm_dir = tmp_path / "clip", tmp_path / "whisper", tmp_path / "llama"
    clip = CLIPVisionModel(
        CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, image_size=28, patch_size=14)
    )  # fmt: skip
    clip.save_pretrained(vision_dir)
    CLIPImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
    ).save_pretrained(vision_dir)
    whisper = WhisperModel(
        WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=1, encoder_attention_heads=2,
                      encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2,
                      decoder_ffn_dim=64, max_source_positions=250, max_target_positions=32,
                      vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      decoder_start_token_id=1)
    )  # fmt: skip
    whisper.save_pretrained(audio_dir)
    WhisperFeatureExtractor(feature_size=80, chunk_length=5).save_pretrained(audio_dir)
    tok = build_tokenizer((), pad="<pad>", eos="</s>", bos="<s>", unk="<unk>", vocab_size=400)
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id)
    )  # fmt: skip
    llama.save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)

    cfg = ApotheonConfig.from_dict({
        "vision": {"source": str(vision_dir)},
        "audio": {"source": str(audio_dir), "chunk_s": 5.0},
        "language": {"source": str(lm_dir)},
        "fusion": {"width": 32, "layers": 1, "heads": 2, "latents": 4},
        "contrastive_dim": 16,
    })  # fmt: skip
    model = ApotheonModel(cfg).eval()
    for ours, theirs in ((model.vision, clip), (model.audio, whisper.get_encoder()),
                         (model.lm, llama)):  # fmt: skip
        mine = ours.state_dict()
        assert mine.keys() == theirs.state_dict().keys()
        for key, value in theirs.state_dict().items():
            assert torch.equal(mine[key], value), key
    assert model.audio_frames == 500

    procs = build_processors(cfg)
    assert procs["image_processor"].crop_size == {"height": 28, "width": 28}
    assert procs["feature_extractor"].nb_max_frames == 500
    assert procs["tokenizer"].get_vocab() == tok.get_vocab()
    batch = ApotheonCollator(
        procs["tokenizer"], procs["image_processor"], procs["feature_extractor"]
    )(four_samples())
    assert batch["pixel_values"].shape == (5, 3, 28, 28)
    with torch.no_grad():
        out = model(batch)
    assert out.counts == {"caption": 3, "transcription": 2, "contrastive": 3}
    assert out.caption_logits.shape[-1] == len(tok)
    assert all(torch.isfinite(v).all() for v in outputs(out).values())


# ---- 7. config ----------------------------------------------------------------------------


def test_config_checks_keys_and_heads(model) -> None:
    with pytest.raises(ValueError, match="unknown Apotheon config key 'visoin'"):
        ApotheonConfig.from_dict({"visoin": {}})
    with pytest.raises(ValueError, match=r"unknown AudioConfig keys \['chunk'\]"):
        ApotheonConfig.from_dict({"audio": {"chunk": 30}})
    with pytest.raises(ValueError, match=r"unknown heads \['captioning'\]"):
        ApotheonConfig.from_dict({"loss_weights": {"caption": 1.0, "captioning": 1.0}})

    cfg = ApotheonConfig.from_dict({"fusion": {"layers": 3}, "loss_weights": {"caption": 2.0}})
    assert cfg.fusion.layers == 3 and cfg.fusion.width == 64
    assert cfg.loss_weights == {"caption": 2.0, "transcription": 1.0, "contrastive": 0.5}  # merged
    assert ApotheonConfig.from_dict(cfg.to_dict()) == cfg
    assert ApotheonConfig.from_dict(None) == ApotheonConfig()

    assert model.cfg.temperature == 0.07
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert torch.equal(model.logit_scale.detach(), torch.tensor([math.log(1 / 0.07)]))


def test_audio_helpers_round_trip() -> None:
    """The test's audio is what the collator decodes: 16 kHz mono, same samples."""
    for data in (tone(440.0, 0.5, "flac"), tone(440.0, 0.5, "wav"), noise(0, 0.5)):
        pcm, rate = decode_pcm(data)
        assert rate == SAMPLE_RATE and pcm.shape == (SAMPLE_RATE // 2,)
        assert 0.1 < float(np.abs(pcm).max()) <= 0.31


def test_bf16_language_model_with_float32_towers(collate) -> None:
    """apotheon_base loads the LM in bfloat16 (``language.dtype``) beside float32 towers
    and fusion: the prefix is cast to the LM's dtype, its logits come back for a float32
    loss, and every part still trains."""
    torch.manual_seed(0)
    model = ApotheonModel(ApotheonConfig())
    model.lm.to(torch.bfloat16)
    items = subset_items(frozenset({"image", "audio", "text"}))
    out = model(collate(items))
    assert out.caption_logits is not None and out.caption_logits.dtype == torch.bfloat16
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    out.loss.backward()
    lm_grads = [p.grad for p in model.lm.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.bfloat16 for g in lm_grads)
    assert model.lm_proj.weight.grad is not None
    assert all(p.grad is not None for p in model.fusion.parameters())


def test_bf16_autocast_step(collate) -> None:
    """``trainer.precision=bf16-mixed`` runs the step under autocast (here on CPU)."""
    torch.manual_seed(0)
    model = ApotheonModel(ApotheonConfig())
    batch = collate(subset_items(frozenset({"image", "audio", "text"})))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.vision.parameters())


def test_audio_tokens_past_a_clip_are_masked(model, collate) -> None:
    """Whisper pads every clip to its window; the pooled tokens that hold only that
    padding are masked out of the fusion's memory, per row."""
    items = [item("short", audio=tone(330.0, 1.0)), item("long", audio=tone(660.0, 4.0))]
    batch = collate(items)
    assert batch["audio_lengths"].tolist() == [100, 400]  # mel frames of 10 ms
    media = model.encode_audio(
        batch["audio_features"], batch["audio_index"], 2, batch["audio_lengths"]
    )
    pool = model.cfg.audio.pool
    assert media.mask.sum(1).tolist() == [-(-100 // (2 * pool)), -(-400 // (2 * pool))]
    assert batch["audio_truncated"] == 0
    over = collate([item("too long", audio=tone(440.0, 6.0))])  # the tiny window is 5 s
    assert over["audio_truncated"] == 1 and over["audio_lengths"].tolist() == [500]
    with pytest.raises(ValueError, match="whole seconds"):
        ApotheonConfig.from_dict({"audio": {"chunk_s": 2.5}})


def test_fsdp_policy_finds_the_blocks_of_any_causal_lm(tmp_path) -> None:
    """A language model outside the built-in list (Phi-3 here, its config saved locally)
    gets its own decoder blocks wrapped, read from its transformers class."""
    from transformers import Phi3Config
    from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer

    assert Phi3DecoderLayer not in fsdp_wrap_classes()
    Phi3Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    classes = fsdp_wrap_classes(str(tmp_path))
    assert Phi3DecoderLayer in classes and FusionLayer in classes
