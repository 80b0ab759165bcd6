"""An open_clip ViT image tower as a transformers ``CLIPVisionModel`` (the LLaVA tower).

The one owner of the mapping: :func:`hf_vision_config` (sizes and activation from the
open_clip model config), :func:`convert_visual_state` (``visual.*`` tensors ->
``CLIPVisionModel`` tensors; the fused attention ``in_proj`` split into q / k / v),
:func:`hf_image_processor` (open_clip's eval preprocessing as a ``CLIPImageProcessor``) and
:func:`vision_from_run` (the tower a lakeloom CLIP run exported, read through
:func:`core.models.clip.load_from_run`).

The HF tower's ``pooler_output`` equals open_clip's pooled image feature before ``proj``;
LLaVA reads ``hidden_states[-1]`` (before ``ln_post``), as it does with OpenAI's CLIP.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from lake.errors import ConfigError

#: open_clip ViT options the plain HF CLIP tower has no equivalent for
_UNSUPPORTED = ("ls_init_value", "attentional_pool", "attn_pooler_queries", "no_ln_pre",
                "final_ln_after_pool", "timm_model_name", "act_kwargs", "norm_kwargs")  # fmt: skip


def hf_vision_config(model_cfg: dict[str, Any]) -> Any:
    """The ``CLIPVisionConfig`` of the ViT image tower in open_clip ``model_cfg``."""
    from transformers import CLIPVisionConfig

    v = dict(model_cfg.get("vision_cfg") or {})
    if not isinstance(v.get("layers"), int):
        raise ConfigError(f"only an open_clip ViT tower converts to CLIPVisionModel, not {v}")
    bad = [k for k in _UNSUPPORTED if v.get(k)]
    if bad or v.get("pool_type", "tok") != "tok":
        raise ConfigError(f"open_clip vision options without a CLIPVisionModel equivalent: "
                          f"{bad or ['pool_type=' + str(v.get('pool_type'))]}")  # fmt: skip
    width = int(v["width"])
    image_size = v.get("image_size", 224)
    if not isinstance(image_size, int):
        if len(set(image_size)) != 1:
            raise ConfigError(f"CLIPVisionModel needs a square image_size, not {image_size}")
        image_size = int(image_size[0])
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=int(width * float(v.get("mlp_ratio", 4.0))),
        num_hidden_layers=int(v["layers"]),
        num_attention_heads=width // int(v.get("head_width", 64)),
        image_size=image_size,
        patch_size=int(v["patch_size"]),
        projection_dim=int(model_cfg.get("embed_dim", width)),
        hidden_act="quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
        layer_norm_eps=1e-5,
    )


def convert_visual_state(visual: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """open_clip ``VisionTransformer`` tensors (keys without ``visual.``) as
    ``CLIPVisionModel`` tensors; ``proj`` is left out (LLaVA's projector replaces it)."""
    out = {
        "embeddings.class_embedding": visual["class_embedding"],
        "embeddings.patch_embedding.weight": visual["conv1.weight"],
        "embeddings.position_embedding.weight": visual["positional_embedding"],
        "pre_layrnorm.weight": visual["ln_pre.weight"],
        "pre_layrnorm.bias": visual["ln_pre.bias"],
        "post_layernorm.weight": visual["ln_post.weight"],
        "post_layernorm.bias": visual["ln_post.bias"],
    }
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for part, name in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
            q, k, v = visual[src + "attn." + name].chunk(3, dim=0)
            for proj, t in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"{dst}self_attn.{proj}.{part}"] = t
        pairs = (
            ("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"),
        )  # fmt: skip
        for a, b in pairs:
            for part in ("weight", "bias"):
                out[f"{dst}{b}.{part}"] = visual[f"{src}{a}.{part}"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def hf_image_processor(preprocess_cfg: dict[str, Any]) -> Any:
    """open_clip's eval transform (resize the shortest edge, centre crop, normalise) as a
    ``CLIPImageProcessor``."""
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    size = preprocess_cfg.get("size", 224)
    if not isinstance(size, int):
        if len(set(size)) != 1:
            raise ConfigError(f"a square open_clip image size is needed, not {size}")
        size = int(size[0])
    mode = preprocess_cfg.get("resize_mode", "shortest")
    if mode != "shortest":
        raise ConfigError(f"open_clip resize_mode {mode!r} has no CLIPImageProcessor equivalent")
    resample = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}
    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=resample[preprocess_cfg.get("interpolation", "bicubic")],
        image_mean=list(preprocess_cfg["mean"]),
        image_std=list(preprocess_cfg["std"]),
    )


def vision_tower_of(clip_model: torch.nn.Module) -> Any:
    """A ``CLIPVisionModel`` with the weights of ``clip_model``'s image tower (a model built
    by :func:`core.models.clip.create_clip`)."""
    from transformers import CLIPVisionModel

    from core.models.clip import model_config

    cfg = hf_vision_config(model_config(clip_model))
    tower = CLIPVisionModel(cfg)
    visual = clip_model.visual.state_dict()  # type: ignore[union-attr]
    state = convert_visual_state(visual, cfg.num_hidden_layers)
    missing, unexpected = tower.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ConfigError(f"open_clip -> CLIPVisionModel: missing {missing}, extra {unexpected}")
    return tower


def vision_from_run(run_dir: str | os.PathLike[str]) -> tuple[Any, Any]:
    """``(CLIPVisionModel, CLIPImageProcessor)`` of the image tower a lakeloom CLIP run
    exported (``runs/<id>/open_clip/``)."""
    import open_clip

    from core.models.clip import load_from_run

    model, _, _, _ = load_from_run(run_dir)
    return vision_tower_of(model), hf_image_processor(open_clip.get_model_preprocess_cfg(model))
