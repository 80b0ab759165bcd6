"""Apotheon: a vision + audio + language fusion model (one file, read top to bottom).

Towers (each a transformers model, built tiny from sizes or loaded from a local directory
or hub id): a CLIP ViT (``CLIPVisionModel``), a Whisper encoder (``WhisperModel``'s
encoder) and any causal language model (``AutoModelForCausalLM``; Llama in the reference
config). One linear projection per modality maps into the fusion width; video frames get
a temporal position embedding, every media token a modality embedding.

The fusion transformer is a stack of :class:`FusionLayer` (self-attention over the
queries, cross-attention from the queries to the media tokens, MLP). The queries are the
prompt's text tokens (the LM's own embeddings, projected) followed by learned latent
queries; the media memory always ends with a learned *null* token, so a sample without
media (or a head that must not see a modality) still has something to attend to.

Heads:

- **caption**: the LM conditioned on the fused tokens of vision + audio (projected back to
  the LM width as a prefix), trained with cross-entropy on the caption.
- **transcription**: the same LM conditioned on fused tokens of the audio alone.
- **contrastive**: CLIP-style alignment of the pooled vision embedding with the caption
  encoded by the fusion stack (no media), learnable temperature starting at 0.07.

Missing modalities are normal: each head trains on the rows it applies to, and every
tower runs on every step (a blank image, silent audio or a one-token text with weight 0
when a batch has none) so DDP / FSDP ranks always run the same graph.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.models.packaged import resolve_source

IGNORE = -100
HEADS = ("caption", "transcription", "contrastive")


# ---- configuration ------------------------------------------------------------------------


@dataclass
class VisionConfig:
    """The vision tower: ``source`` is ``tiny`` (built from the sizes here), a local
    directory or a hub id of a CLIP checkpoint (``CLIPVisionModel`` + its processor)."""

    source: str = "tiny"
    image_size: int = 56
    patch_size: int = 14
    hidden: int = 64
    layers: int = 2
    heads: int = 4


@dataclass
class AudioConfig:
    """The audio tower: a Whisper encoder. ``chunk_s`` seconds of 16 kHz audio per sample
    (Whisper checkpoints: 30); ``pool`` averages that many encoder frames into one token."""

    source: str = "tiny"
    chunk_s: float = 5.0
    n_mels: int = 80
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    pool: int = 4


@dataclass
class LanguageConfig:
    """The language model: any transformers causal LM (``tiny`` builds a small Llama with
    a byte-level BPE tokenizer trained locally; ``smollm2-135m-instruct`` is the real
    SmolLM2 a package ships, see :mod:`core.models.packaged`; else a directory or hub id).
    Every tower's ``source`` goes through :func:`core.models.packaged.resolve_source`."""

    source: str = "tiny"
    hidden: int = 64
    intermediate: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    max_positions: int = 512
    dtype: str | None = None  # e.g. bfloat16 for large checkpoints


@dataclass
class FusionConfig:
    """The cross-attention fusion transformer and its queries."""

    width: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    latents: int = 8  # learned queries after the prompt tokens
    max_frames: int = 8  # temporal positions for video frames


@dataclass
class ApotheonConfig:
    """Every size of an Apotheon model, and its training objectives."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    contrastive_dim: int = 64
    temperature: float = 0.07  # initial; learned as a logit scale (used clamped at 100)
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"caption": 1.0, "transcription": 1.0, "contrastive": 0.5}
    )
    caption_prompt: str = "Describe the image."
    transcription_prompt: str = "Transcribe the audio."
    max_text_tokens: int = 64

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ApotheonConfig:
        """Build from a (Hydra / JSON) mapping; unknown keys are an error."""
        data = dict(data or {})
        parts = {"vision": VisionConfig, "audio": AudioConfig, "language": LanguageConfig,
                 "fusion": FusionConfig}  # fmt: skip
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in parts:
                kwargs[key] = _dataclass_from(parts[key], value)
            elif key in {f.name for f in fields(cls)}:
                kwargs[key] = {**cls().loss_weights, **value} if key == "loss_weights" else value
            else:
                raise ValueError(f"unknown Apotheon config key {key!r}")
        cfg = cls(**kwargs)
        if cfg.audio.source == "tiny" and float(cfg.audio.chunk_s) != int(cfg.audio.chunk_s):
            raise ValueError(f"audio.chunk_s must be whole seconds, not {cfg.audio.chunk_s}")
        unknown = set(cfg.loss_weights) - set(HEADS)
        if unknown:
            raise ValueError(f"loss_weights: unknown heads {sorted(unknown)}; heads are {HEADS}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``from_dict`` inverts it)."""
        return asdict(self)


def _dataclass_from(cls: type, value: Any) -> Any:
    value = dict(value or {})
    known = {f.name for f in fields(cls)}
    extra = set(value) - known
    if extra:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(extra)}; known: {sorted(known)}")
    return cls(**value)


# ---- roles: what each part of the model is ------------------------------------------------

#: role -> attribute paths of :class:`ApotheonModel` (longest prefix wins, as for the VLMs)
ROLES: dict[str, tuple[str, ...]] = {
    "vision": ("vision",),
    "audio": ("audio",),
    "language_model": ("lm",),
    "projector": ("vision_proj", "audio_proj", "text_proj", "lm_proj"),
    "fusion": ("fusion", "latents", "null_memory", "temporal_pos", "modality_emb"),
    "contrastive": ("image_head", "text_head", "logit_scale"),
}

#: blocks FSDP wraps (and checkpoints) one unit each: the towers' layers and the fusion's
FSDP_WRAP = (
    "transformers.models.clip.modeling_clip:CLIPEncoderLayer",
    "transformers.models.whisper.modeling_whisper:WhisperEncoderLayer",
    "transformers.models.llama.modeling_llama:LlamaDecoderLayer",
    "transformers.models.mistral.modeling_mistral:MistralDecoderLayer",
    "transformers.models.qwen2.modeling_qwen2:Qwen2DecoderLayer",
    "core.models.apotheon:FusionLayer",
)


def role_of(param_name: str) -> str | None:
    """The role of a parameter name of :class:`ApotheonModel` (LoRA wraps ``lm`` only, so
    PEFT's names keep the ``lm.`` prefix)."""
    name = param_name
    best, best_len = None, -1
    for role, paths in ROLES.items():
        for path in paths:
            if (name == path or name.startswith(path + ".")) and len(path) > best_len:
                best, best_len = role, len(path)
    return best


class ApotheonRoles:
    """The role registry as the shared tuning helpers take it (``role_of`` + ``roles``;
    see :func:`core.models.vlm_load.role_param_groups`, ``parameter_table``)."""

    roles: tuple[str, ...] = tuple(ROLES)

    @staticmethod
    def role_of(param_name: str) -> str | None:
        """The role of a parameter name."""
        return role_of(param_name)


def fsdp_wrap_classes(language_source: str | None = None) -> set[type[nn.Module]]:
    """The block classes of :data:`FSDP_WRAP` (``auto_wrap_policy`` and
    ``activation_checkpointing_policy`` of ``conf/trainer/fsdp_apotheon.yaml``), plus the
    blocks of the configured language model (any causal LM: the classes its transformers
    model declares in ``_no_split_modules``, read from its config, no weights)."""
    out: set[type[nn.Module]] = set()
    for ref in FSDP_WRAP:
        module, cls = ref.split(":")
        out.add(getattr(importlib.import_module(module), cls))
    if language_source and language_source != "tiny":
        out |= _causal_lm_blocks(resolve_source(language_source))
    return out


def _causal_lm_blocks(source: str) -> set[type[nn.Module]]:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    module = importlib.import_module(model_class.__module__)
    names = model_class._no_split_modules or []
    return {getattr(module, n) for n in names if hasattr(module, n)}


# ---- the fusion transformer ---------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention (scaled dot product) from ``x`` to ``context``."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"fusion width {width} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mask``: (B, Lctx) True where the context token may be attended to."""
        b, n, w = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, w // h).transpose(1, 2)
        k, v = self.kv(context).view(b, -1, 2, h, w // h).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None, None, :], dropout_p=self.dropout * self.training
        )
        return self.out(attn.transpose(1, 2).reshape(b, n, w))


class FusionLayer(nn.Module):
    """Pre-norm block: self-attention over the queries, cross-attention from the queries
    to the media tokens, MLP."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = Attention(width, heads, dropout)
        self.norm_cross = nn.LayerNorm(width)
        self.norm_memory = nn.LayerNorm(width)
        self.cross_attn = Attention(width, heads, dropout)
        self.norm_mlp = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``x`` (B, Q, W) queries with ``x_mask`` (B, Q); ``memory`` (B, M, W) media
        tokens with ``memory_mask`` (B, M); True marks a real token."""
        h = self.norm_self(x)
        x = x + self.self_attn(h, h, x_mask)
        x = x + self.cross_attn(self.norm_cross(x), self.norm_memory(memory), memory_mask)
        return x + self.mlp(self.norm_mlp(x))


class FusionTransformer(nn.Module):
    """A stack of :class:`FusionLayer` with a final norm."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            FusionLayer(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Every layer in turn (checkpointed when ``gradient_checkpointing``), then a norm."""
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, x_mask, memory, memory_mask, use_reentrant=False)
            else:
                x = layer(x, x_mask, memory, memory_mask)
        return self.norm(x)


# ---- batch and outputs --------------------------------------------------------------------


@dataclass
class Media:
    """Media tokens of a batch in the fusion width: ``tokens`` (B, M, W), ``mask`` (B, M),
    ``present`` (B,) rows with any token, ``anchor`` 0 x the tower outputs when the
    batch had none of this modality (added to the loss: the tower stays in the graph)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    present: torch.Tensor
    anchor: torch.Tensor


@dataclass
class ApotheonOutput:
    """What one forward pass gives: the weighted loss, each head's loss, and outputs."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    counts: dict[str, int]  # rows each head trained on
    tokens: dict[str, int]  # target tokens of the two language heads
    caption_logits: torch.Tensor | None = None  # (b, L, V) over the caption rows' targets
    transcription_logits: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None  # (B, C) normalised, rows with vision
    text_embeds: torch.Tensor | None = None  # (B, C) normalised, rows with a caption
    logits_per_image: torch.Tensor | None = None  # (n, n) over rows with both


# ---- the model ----------------------------------------------------------------------------


class ApotheonModel(nn.Module):
    """Vision + audio + language fusion (see the module docstring)."""

    def __init__(
        self,
        cfg: ApotheonConfig,
        towers: tuple[nn.Module, nn.Module, nn.Module] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng():  # seeded init without resetting the caller's RNG
            torch.manual_seed(seed)
            self._build(cfg, towers)

    def _build(
        self, cfg: ApotheonConfig, towers: tuple[nn.Module, nn.Module, nn.Module] | None
    ) -> None:
        vision, audio, lm = towers if towers is not None else build_towers(cfg)
        self.vision, self.audio, self.lm = vision, audio, lm
        w = cfg.fusion.width
        v_hidden = vision.config.hidden_size
        a_hidden = audio.config.d_model
        lm_hidden = lm.get_input_embeddings().embedding_dim
        # each input is normalised before its projection: the LM's embeddings are ~50x
        # smaller than the encoders' states, and a plain Linear's bias would drown them
        # (every text query alike, the contrastive head collapsed from the start)
        self.vision_proj = _projection(v_hidden, w)
        self.audio_proj = _projection(a_hidden, w)
        self.text_proj = _projection(lm_hidden, w)
        self.lm_proj = nn.Linear(w, lm_hidden)
        self.temporal_pos = nn.Embedding(cfg.fusion.max_frames, w)
        self.modality_emb = nn.Embedding(2, w)  # 0 vision, 1 audio
        self.latents = nn.Parameter(torch.randn(cfg.fusion.latents, w) * 0.02)
        self.null_memory = nn.Parameter(torch.randn(1, w) * 0.02)
        self.fusion = FusionTransformer(cfg.fusion)
        self.image_head = nn.Linear(v_hidden, cfg.contrastive_dim, bias=False)
        self.text_head = nn.Linear(w, cfg.contrastive_dim, bias=False)
        # shape (1,), not a scalar: FSDP (FlatParameter) refuses 0-d parameters
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / cfg.temperature)]))
        self.audio_frames = _audio_frames(audio)

    # -- towers -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Where the model's own parameters live."""
        return self.latents.device

    def _dtype(self, module: nn.Module) -> torch.dtype:
        for p in module.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def encode_vision(
        self, pixel_values: torch.Tensor, frame_index: torch.Tensor, batch: int
    ) -> tuple[Media, torch.Tensor]:
        """Media tokens of every image / video frame, and each row's pooled image features
        (mean over its frames of the CLS output) for the contrastive head.

        ``pixel_values`` (N, 3, H, W); ``frame_index`` (N, 2): the row and the frame's
        position in its clip (0 for images).
        """
        w = self.cfg.fusion.width
        if pixel_values.shape[0] == 0:
            size = self.vision.config.image_size
            blank = torch.zeros(
                1, 3, size, size, device=self.device, dtype=self._dtype(self.vision)
            )
            out = self.vision(pixel_values=blank)
            anchor = 0.0 * (
                self.vision_proj(out.last_hidden_state).float().sum()
                + self.image_head(out.pooler_output).float().sum()
                + self.temporal_pos.weight.sum()  # DDP: every parameter in every step's graph
            )
            empty = torch.zeros(batch, 0, w, device=self.device)
            none = torch.zeros(batch, dtype=torch.bool, device=self.device)
            pooled = torch.zeros(batch, self.vision.config.hidden_size, device=self.device)
            return Media(empty, none[:, None][:, :0], none, anchor), pooled
        out = self.vision(pixel_values=pixel_values.to(self._dtype(self.vision)))
        tokens = self.vision_proj(out.last_hidden_state.float())  # (N, P, W)
        rows, t = frame_index[:, 0], frame_index[:, 1].clamp(max=self.cfg.fusion.max_frames - 1)
        tokens = tokens + self.temporal_pos(t)[:, None] + self.modality_emb.weight[0]
        frames = int(t.max()) + 1
        n_tok = tokens.shape[1]
        grid = tokens.new_zeros(batch, frames, n_tok, w)
        mask = torch.zeros(batch, frames, n_tok, dtype=torch.bool, device=self.device)
        grid[rows, t] = tokens
        mask[rows, t] = True
        pooled_sum = tokens.new_zeros(batch, out.pooler_output.shape[-1])
        pooled_sum.index_add_(0, rows, out.pooler_output.float())
        count = torch.zeros(batch, device=self.device).index_add_(
            0, rows, torch.ones_like(rows, dtype=torch.float)
        )
        pooled = pooled_sum / count.clamp(min=1)[:, None]
        present = count > 0
        media = Media(grid.view(batch, -1, w), mask.view(batch, -1), present, tokens.new_zeros(()))
        return media, pooled

    def encode_audio(
        self,
        features: torch.Tensor,
        audio_index: torch.Tensor,
        batch: int,
        lengths: torch.Tensor | None = None,
    ) -> Media:
        """Media tokens of each row's audio: ``features`` (Na, n_mels, frames) log-mel
        (Whisper's feature extractor), ``audio_index`` (Na,) the row of each, ``lengths``
        (Na,) mel frames of real audio in each (the rest is padding, masked out)."""
        w = self.cfg.fusion.width
        dummy = features.shape[0] == 0
        if dummy:
            n_mels = self.audio.config.num_mel_bins
            features = torch.zeros(1, n_mels, self.audio_frames, device=self.device)
        hidden = self.audio(input_features=features.to(self._dtype(self.audio))).last_hidden_state
        pool = max(1, self.cfg.audio.pool)
        if pool > 1:
            hidden = F.avg_pool1d(hidden.float().transpose(1, 2), pool, pool).transpose(1, 2)
        tokens = self.audio_proj(hidden.float()) + self.modality_emb.weight[1]
        if dummy:
            none = torch.zeros(batch, dtype=torch.bool, device=self.device)
            empty = torch.zeros(batch, 0, w, device=self.device)
            return Media(empty, none[:, None][:, :0], none, 0.0 * tokens.sum())
        n = tokens.shape[1]
        grid = tokens.new_zeros(batch, n, w)
        grid[audio_index] = tokens
        present = torch.zeros(batch, dtype=torch.bool, device=self.device)
        present[audio_index] = True
        mask = present[:, None].expand(batch, n).clone()
        if lengths is not None:
            # a token pools `pool` encoder frames of 2 mel frames each; keep those that
            # hold any real audio (Whisper pads short clips to its whole window)
            valid = torch.div(
                lengths.to(self.device) + 2 * pool - 1, 2 * pool, rounding_mode="floor"
            )
            keep = torch.arange(n, device=self.device)[None] < valid.clamp(min=1, max=n)[:, None]
            mask[audio_index] = keep
        return Media(grid, mask, present, tokens.new_zeros(()))

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """The LM's input embeddings of token ids (float32)."""
        return self.lm.get_input_embeddings()(ids).float()

    # -- fusion -----------------------------------------------------------------------------

    def fuse(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        media: list[Media],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused tokens: the prompt's tokens (left-padded) then the learned latents, after
        attending to the given media. Returns (B, P + latents, W) and its mask."""
        b = prompt_ids.shape[0]
        queries = torch.cat(
            [self.text_proj(self.embed_text(prompt_ids)),
             self.latents[None].expand(b, -1, -1)], dim=1,
        )  # fmt: skip
        q_mask = torch.cat(
            [prompt_mask.bool(), prompt_mask.new_ones(b, self.latents.shape[0], dtype=torch.bool)],
            dim=1,
        )
        memory, mem_mask = self._memory(media, b)
        return self.fusion(queries, q_mask, memory, mem_mask), q_mask

    def _memory(self, media: list[Media], b: int) -> tuple[torch.Tensor, torch.Tensor]:
        null = self.null_memory[None].expand(b, -1, -1)
        tokens = torch.cat([m.tokens for m in media] + [null], dim=1)
        mask = torch.cat(
            [m.mask for m in media] + [torch.ones(b, 1, dtype=torch.bool, device=self.device)],
            dim=1,
        )
        return tokens, mask

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Contrastive text embedding: the fusion stack over the text alone (no media),
        mean-pooled over its tokens, projected and normalised."""
        b = ids.shape[0]
        x = self.text_proj(self.embed_text(ids))
        memory, mem_mask = self._memory([], b)
        h = self.fusion(x, mask.bool(), memory, mem_mask)
        m = mask.float()[..., None]
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return F.normalize(self.text_head(pooled), dim=-1)

    # -- the language model on a fused prefix -------------------------------------------------

    def prefix_embeds(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, media: list[Media]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The LM prefix (B, P + latents, H) of fused tokens, with its attention mask."""
        fused, mask = self.fuse(prompt_ids, prompt_mask, media)
        return self.lm_proj(fused), mask

    def lm_logits(
        self,
        prefix: torch.Tensor,
        prefix_mask: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """LM logits over ``[prefix ; ids]`` (positions count only unmasked tokens)."""
        embeds = torch.cat([prefix, self.embed_text(ids)], dim=1)
        attn = torch.cat([prefix_mask.long(), mask.long()], dim=1)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        dtype = self._dtype(self.lm)
        out = self.lm(
            inputs_embeds=embeds.to(dtype), attention_mask=attn, position_ids=positions,
            use_cache=False,
        )  # fmt: skip
        return out.logits[:, prefix.shape[1] :]

    def lm_head_loss(
        self,
        rows: torch.Tensor,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        target_ids: torch.Tensor,
        target_mask: torch.Tensor,
        media: list[Media],
    ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Mean token cross-entropy of the targets of ``rows`` (a bool mask), the LM
        conditioned on the fused prefix, its logits, the rows and the target tokens.
        With no such row, row 0 runs with weight 0."""
        count = int(rows.sum())
        sel = rows if count else torch.arange(rows.shape[0], device=rows.device) == 0
        sub = [Media(m.tokens[sel], m.mask[sel], m.present[sel], m.anchor) for m in media]
        prefix, p_mask = self.prefix_embeds(prompt_ids[sel], prompt_mask[sel], sub)
        ids, mask = target_ids[sel], target_mask[sel]
        logits = self.lm_logits(prefix, p_mask, ids, mask)
        labels = ids.masked_fill(~mask.bool(), IGNORE)
        # logits at position i predict token i + 1; the BOS (position 0) is never a target
        ce = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        n = int((labels[:, 1:] != IGNORE).sum())
        loss = ce / max(1, n)
        return (loss if count else 0.0 * loss), logits, count, n if count else 0

    # -- forward --------------------------------------------------------------------------------

    def forward(self, batch: Mapping[str, Any]) -> ApotheonOutput:
        """All three heads on a collated batch (see :class:`core.modules.apotheon_collate.
        ApotheonCollator` for its keys); each head on the rows it applies to."""
        b = batch["caption_ids"].shape[0]
        vision, pooled = self.encode_vision(batch["pixel_values"], batch["frame_index"], b)
        audio = self.encode_audio(
            batch["audio_features"], batch["audio_index"], b, batch.get("audio_lengths")
        )
        has_caption = batch["has_caption"].bool()
        has_transcript = batch["has_transcript"].bool()
        losses: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        tokens: dict[str, int] = {}

        cap_rows = has_caption & (vision.present | audio.present)
        losses["caption"], cap_logits, counts["caption"], tokens["caption"] = self.lm_head_loss(
            cap_rows, batch["caption_prompt_ids"], batch["caption_prompt_mask"],
            batch["caption_ids"], batch["caption_mask"], [vision, audio],
        )  # fmt: skip
        tr_rows = has_transcript & audio.present
        (losses["transcription"], tr_logits, counts["transcription"],
         tokens["transcription"]) = self.lm_head_loss(
            tr_rows, batch["transcription_prompt_ids"], batch["transcription_prompt_mask"],
            batch["transcript_ids"], batch["transcript_mask"], [audio],
        )  # fmt: skip

        pair_rows = has_caption & vision.present
        text_emb = self.encode_text(batch["caption_ids"], batch["caption_mask"])
        image_emb = F.normalize(self.image_head(pooled), dim=-1)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp().squeeze(0)
        n_pairs = int(pair_rows.sum())
        if n_pairs >= 2:
            li = scale * image_emb[pair_rows] @ text_emb[pair_rows].T
            losses["contrastive"] = contrastive_loss(li, batch["caption_ids"][pair_rows])
        else:  # keep the heads in the graph
            li = scale * image_emb[:1] @ text_emb[:1].T
            losses["contrastive"] = 0.0 * li.sum() + 0.0 * image_emb.sum()
            n_pairs = 0
        counts["contrastive"] = n_pairs

        weights = self.cfg.loss_weights
        loss = sum(weights.get(k, 0.0) * v for k, v in losses.items())
        loss = loss + vision.anchor + audio.anchor
        return ApotheonOutput(
            loss=loss, losses=losses, counts=counts, tokens=tokens,
            caption_logits=cap_logits if counts["caption"] else None,
            transcription_logits=tr_logits if counts["transcription"] else None,
            image_embeds=image_emb, text_embeds=text_emb,
            logits_per_image=li if n_pairs else None,
        )  # fmt: skip

    # -- generation -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        batch: Mapping[str, Any],
        head: str = "caption",
        max_new_tokens: int = 32,
        bos_id: int | None = None,
        eos_id: int | None = None,
        stop_early: bool = True,
    ) -> list[list[int]]:
        """Greedy decoding of a head's text for every row of ``batch`` (token ids, no
        BOS / EOS). ``head``: ``caption`` (vision + audio) or ``transcription`` (audio).
        ``stop_early=False`` always runs ``max_new_tokens`` steps (sharded models: every
        rank must run the same number of forwards)."""
        if head not in ("caption", "transcription"):
            raise ValueError(f"head must be caption or transcription, not {head!r}")
        b = batch["caption_ids"].shape[0]
        audio = self.encode_audio(
            batch["audio_features"], batch["audio_index"], b, batch.get("audio_lengths")
        )
        media = [audio]
        if head == "caption":
            media = [self.encode_vision(batch["pixel_values"], batch["frame_index"], b)[0], audio]
        prefix, p_mask = self.prefix_embeds(
            batch[f"{head}_prompt_ids"], batch[f"{head}_prompt_mask"], media
        )
        bos = bos_id if bos_id is not None else batch["caption_ids"][0, 0].item()
        ids = torch.full((b, 1), int(bos), dtype=torch.long, device=self.device)
        done = [False] * b
        out: list[list[int]] = [[] for _ in range(b)]
        embeds = torch.cat([prefix, self.embed_text(ids)], dim=1)
        attn = torch.cat([p_mask.long(), torch.ones_like(ids)], dim=1)
        dtype = self._dtype(self.lm)
        past = None
        for _ in range(max_new_tokens):
            positions = (attn.cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1] :]
            res = self.lm(inputs_embeds=embeds.to(dtype), attention_mask=attn,
                          position_ids=positions, past_key_values=past, use_cache=True)  # fmt: skip
            past = res.past_key_values
            nxt = res.logits[:, -1].argmax(-1)
            for i, token in enumerate(nxt.tolist()):  # one host sync a step
                if not done[i]:
                    if eos_id is not None and token == eos_id:
                        done[i] = True
                    else:
                        out[i].append(token)
            if stop_early and all(done):
                break
            embeds = self.embed_text(nxt[:, None])
            attn = torch.cat([attn, torch.ones_like(nxt[:, None])], dim=1)
        return out

    # -- save / load ------------------------------------------------------------------------------

    def save_pretrained(self, out: str | Path, processors: Mapping[str, Any] | None = None) -> Path:
        """Write ``config.json`` (Apotheon sizes), each tower's transformers config, the
        weights (``model.safetensors``) and the processors to ``out``."""
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
        for name in ("vision", "audio", "lm"):
            getattr(self, name).config.save_pretrained(out / name)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(_untie(state), str(out / "model.safetensors"))
        for name, proc in (processors or {}).items():
            proc.save_pretrained(out / name)
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ApotheonModel:
        """Rebuild a model written by :meth:`save_pretrained` (no download: the towers
        are built from their saved configs, then every weight is loaded)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        path = Path(path)
        cfg = ApotheonConfig.from_dict(json.loads((path / "config.json").read_text()))
        vision = CLIPVisionModel(AutoConfig.from_pretrained(path / "vision"))
        audio = WhisperEncoder(AutoConfig.from_pretrained(path / "audio"))
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path / "lm"))
        model = cls(cfg, towers=(vision, audio, lm))
        state = load_file(str(path / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {k for k in missing if _is_tied(model, k)}
        if set(missing) - tied or unexpected:
            raise ValueError(
                f"{path}: weights do not match the config "
                f"(missing {sorted(set(missing) - tied)[:3]},"
                f" unexpected {sorted(unexpected)[:3]})"
            )
        return model


def contrastive_loss(logits: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over image x text ``logits`` where every pair with the same
    caption is a positive (a scene's frames share their caption; counting the copies as
    negatives would push apart what should match): soft targets spread over them."""
    same = (caption_ids[:, None, :] == caption_ids[None, :, :]).all(-1).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))


def _projection(d_in: int, d_out: int) -> nn.Module:
    """LayerNorm of the input, then a linear map into the fusion width."""
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out))


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage: copy tensors that share memory."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.setdefault(ptr, k)
    return out


def _is_tied(model: nn.Module, key: str) -> bool:
    return key.endswith("lm_head.weight") and bool(
        getattr(getattr(model, "lm", None), "config", None)
        and model.lm.config.get_text_config().tie_word_embeddings
    )


def _audio_frames(encoder: nn.Module) -> int:
    """Mel frames the Whisper encoder expects (2 x its positions)."""
    return int(encoder.config.max_source_positions * 2)


# ---- towers: tiny from sizes, or from a local directory / hub id --------------------------


def build_towers(cfg: ApotheonConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
    """``(vision, audio encoder, causal LM)`` as configured."""
    return _vision(cfg.vision), _audio(cfg.audio), _language(cfg.language)


def _vision(c: VisionConfig) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if c.source != "tiny":
        return CLIPVisionModel.from_pretrained(resolve_source(c.source))
    return CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=c.hidden, intermediate_size=4 * c.hidden, num_hidden_layers=c.layers,
            num_attention_heads=c.heads, image_size=c.image_size, patch_size=c.patch_size,
        )
    )  # fmt: skip


def _audio(c: AudioConfig) -> nn.Module:
    from transformers import WhisperConfig, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if c.source != "tiny":
        return WhisperModel.from_pretrained(resolve_source(c.source)).get_encoder()
    frames = round(c.chunk_s * 100)  # 10 ms hop
    config = WhisperConfig(
        num_mel_bins=c.n_mels, d_model=c.hidden, encoder_layers=c.layers,
        encoder_attention_heads=c.heads, encoder_ffn_dim=4 * c.hidden,
        max_source_positions=frames // 2,
    )  # fmt: skip
    return WhisperEncoder(config)


def _language(c: LanguageConfig) -> nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if c.source != "tiny":
        kw = {"dtype": getattr(torch, c.dtype)} if c.dtype else {}
        return AutoModelForCausalLM.from_pretrained(resolve_source(c.source), **kw)
    tok = build_tokenizer(c)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok), hidden_size=c.hidden, intermediate_size=c.intermediate,
            num_hidden_layers=c.layers, num_attention_heads=c.heads,
            num_key_value_heads=c.kv_heads, max_position_embeddings=c.max_positions,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
        )
    )  # fmt: skip


def build_tokenizer(c: LanguageConfig) -> Any:
    """The LM's tokenizer: the tiny BPE (built locally) or the checkpoint's own."""
    if c.source == "tiny":
        from core.models.vlm_tiny import build_tokenizer as tiny_bpe

        return tiny_bpe((), pad="<pad>", eos="</s>", bos="<s>", unk="<unk>")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_source(c.source))
    if tok.pad_token is None:  # the collator pads by mask: any token will do
        tok.pad_token = tok.eos_token
    return tok


def build_processors(cfg: ApotheonConfig) -> dict[str, Any]:
    """``{"tokenizer", "image_processor", "feature_extractor"}`` for the configured towers."""
    from transformers import CLIPImageProcessor, WhisperFeatureExtractor

    if cfg.vision.source == "tiny":
        s = cfg.vision.image_size
        image = CLIPImageProcessor(
            size={"shortest_edge": s}, crop_size={"height": s, "width": s},
            image_mean=[0.4815, 0.4578, 0.4082], image_std=[0.2686, 0.2613, 0.2758],
        )  # fmt: skip
    else:
        image = CLIPImageProcessor.from_pretrained(resolve_source(cfg.vision.source))
    if cfg.audio.source == "tiny":
        audio = WhisperFeatureExtractor(
            feature_size=cfg.audio.n_mels, chunk_length=int(cfg.audio.chunk_s)
        )
    else:
        audio = WhisperFeatureExtractor.from_pretrained(resolve_source(cfg.audio.source))
    return {
        "tokenizer": build_tokenizer(cfg.language),
        "image_processor": image,
        "feature_extractor": audio,
    }
