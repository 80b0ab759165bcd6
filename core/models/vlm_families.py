"""The vision-language model families lakeloom trains, described by role keys.

Every place that needs to know "which part of the model is what" reads one
:class:`FamilySpec`: freezing (``freeze.vision`` ...), LoRA targeting (the language
model's projections only: bare names like ``q_proj`` also match LLaVA's CLIP tower),
per-module learning rates, FSDP wrapping and the tokens that are never supervised.

Roles are module paths inside the transformers model (v5 layout). A parameter belongs to
the role whose path is its longest prefix, so Qwen2-VL's projector (``model.visual.merger``)
is carved out of its vision tower (``model.visual``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from torch import nn

ROLES = ("vision", "projector", "language_model")


@dataclass(frozen=True)
class FamilySpec:
    """How one family is built, split into roles, adapted and rendered."""

    name: str
    model_class: str  # transformers class (top-level name)
    processor_class: str
    model_types: tuple[str, ...]  # config.model_type values this spec covers
    roles: dict[str, tuple[str, ...]]  # role -> module paths
    lora_modules: tuple[str, ...]  # projection names inside the language model
    fsdp_wrap: tuple[str, ...]  # transformer block classes, "module:Class"
    image_token: str
    never_supervised: tuple[str, ...]  # vision special tokens, always label -100
    mrope: bool = False  # Qwen2-VL style 3-D rotary positions (packing passes 4 x B x L)
    # the video placeholder the chat template writes and the processor expands into its
    # video input (frames, with any timestamp text it adds); None: no video input
    video_token: str | None = None
    # tokens the processor writes around an image's run of ``image_token`` (SmolVLM's
    # ``<fake_token_around_image>`` ...): never compared with the plain tokenization
    media_tokens: tuple[str, ...] = ()
    # why packing samples into one row is wrong for this family (None: packing works)
    pack_refusal: str | None = None

    @property
    def media_kinds(self) -> tuple[str, ...]:
        """The lake media kinds the family's model takes (``frame``s are images)."""
        return ("image", "frame", "video") if self.video_token else ("image", "frame")

    def role_of(self, param_name: str) -> str | None:
        """The role of a parameter (PEFT prefixes stripped), or None (e.g. ``lm_head``)."""
        name = strip_peft_prefix(param_name)
        best, best_len = None, -1
        for role, paths in self.roles.items():
            for path in paths:
                if (name == path or name.startswith(path + ".")) and len(path) > best_len:
                    best, best_len = role, len(path)
        return best

    def lora_target_regex(self) -> str:
        """A peft ``target_modules`` regex hitting only the language model's projections."""
        lm = "|".join(re.escape(p) for p in self.roles["language_model"])
        names = "|".join(re.escape(m) for m in self.lora_modules)
        return rf"(?:.*\.)?(?:{lm})\..*\.(?:{names})"

    def lora_conflicts(self) -> tuple[str, ...]:
        """Module paths LoRA must never wrap (the vision tower and the projector)."""
        return self.roles["vision"] + self.roles["projector"]


PEFT_PREFIXES = ("base_model.model.",)


def strip_peft_prefix(name: str) -> str:
    """``base_model.model.model.x`` -> ``model.x`` (names inside a PeftModel)."""
    for prefix in PEFT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


_LM_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


#: Qwen3.5's gated delta-net (linear attention) layers: input and output projections (the
#: per-head gates ``in_proj_a`` / ``in_proj_b`` are a few columns: left alone)
_GDN_PROJ = ("in_proj_qkv", "in_proj_z", "out_proj")


def _qwen(
    name: str,
    prefix: str,
    *,
    decoder: str = "DecoderLayer",
    projectors: tuple[str, ...] = ("model.visual.merger",),
    lora_modules: tuple[str, ...] = _LM_PROJ,
    processor: str | None = None,
    pack_refusal: str | None = None,
) -> FamilySpec:
    """The Qwen VL layout (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5): ``model.visual`` with
    its merger(s) as the projector, ``model.language_model``, M-RoPE positions."""
    module = f"{name}.modeling_{name}"
    return FamilySpec(
        name=name,
        model_class=f"{prefix}ForConditionalGeneration",
        processor_class=processor or f"{prefix}Processor",
        model_types=(name,),
        roles={
            "vision": ("model.visual",),
            "projector": projectors,
            "language_model": ("model.language_model", "lm_head"),
        },
        lora_modules=lora_modules,
        fsdp_wrap=(f"{module}:{prefix}{decoder}", f"{module}:{prefix}VisionBlock"),
        image_token="<|image_pad|>",
        never_supervised=("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"),
        mrope=True,
        video_token="<|video_pad|>",
        pack_refusal=pack_refusal,
    )


#: SmolVLM's image grid tokens (``<row_r_col_c>`` before each tile when it splits images)
_SMOLVLM_GRID = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
_SMOLVLM_AROUND = ("<fake_token_around_image>", "<global-img>", *_SMOLVLM_GRID)


FAMILIES: dict[str, FamilySpec] = {
    "llava": FamilySpec(
        name="llava",
        model_class="LlavaForConditionalGeneration",
        processor_class="LlavaProcessor",
        model_types=("llava",),
        roles={
            "vision": ("model.vision_tower",),
            "projector": ("model.multi_modal_projector",),
            "language_model": ("model.language_model", "lm_head"),
        },
        lora_modules=_LM_PROJ,
        fsdp_wrap=(
            "llama.modeling_llama:LlamaDecoderLayer",
            "mistral.modeling_mistral:MistralDecoderLayer",
            "qwen2.modeling_qwen2:Qwen2DecoderLayer",
            "clip.modeling_clip:CLIPEncoderLayer",
            "siglip.modeling_siglip:SiglipEncoderLayer",
        ),
        image_token="<image>",
        never_supervised=("<image>",),
    ),
    "qwen2_vl": _qwen("qwen2_vl", "Qwen2VL"),
    "qwen2_5_vl": _qwen("qwen2_5_vl", "Qwen2_5_VL"),
    # interleaved M-RoPE; DeepStack mergers feed vision features into the first LM layers
    # (projectors too); packing works: per-sample 3-D positions as for Qwen2-VL
    "qwen3_vl": _qwen(
        "qwen3_vl",
        "Qwen3VL",
        decoder="TextDecoderLayer",
        projectors=("model.visual.merger", "model.visual.deepstack_merger_list"),
    ),
    # Qwen3.5 is a VLM (Qwen3-VL's processor and vision tower, no DeepStack); 3 of 4 LM
    # layers are gated delta-net linear attention, whose recurrent state runs across a
    # packed row: transformers' PyTorch path ignores the sample boundaries
    "qwen3_5": _qwen(
        "qwen3_5",
        "Qwen3_5",
        processor="Qwen3VLProcessor",
        lora_modules=(*_LM_PROJ, *_GDN_PROJ),
        pack_refusal=(
            "its linear-attention (gated delta-net) layers carry their state from one "
            "packed sample into the next (no per-sample reset on transformers' path)"
        ),
    ),
    "smolvlm": FamilySpec(
        name="smolvlm",
        model_class="SmolVLMForConditionalGeneration",
        processor_class="SmolVLMProcessor",
        model_types=("smolvlm",),
        roles={
            "vision": ("model.vision_model",),
            "projector": ("model.connector",),
            "language_model": ("model.text_model", "lm_head"),
        },
        lora_modules=_LM_PROJ,
        fsdp_wrap=(
            "llama.modeling_llama:LlamaDecoderLayer",
            "smolvlm.modeling_smolvlm:SmolVLMEncoderLayer",
        ),
        image_token="<image>",
        never_supervised=("<image>", *_SMOLVLM_AROUND),
        # a <video> becomes frames on the image input, each with SmolVLM's image tokens
        video_token="<video>",
        media_tokens=_SMOLVLM_AROUND,
    ),
}


def family(name: str) -> FamilySpec:
    """The spec of a family by name (``llava``, ``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``,
    ``qwen3_5``, ``smolvlm``)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown VLM family {name!r}; known: {sorted(FAMILIES)}") from None


def family_of_model_type(model_type: str) -> FamilySpec:
    """The spec covering a checkpoint's ``config.model_type``."""
    for spec in FAMILIES.values():
        if model_type in spec.model_types:
            return spec
    raise ValueError(f"no lakeloom VLM family handles model_type {model_type!r}")


def modules_of_role(model: nn.Module, spec: FamilySpec, role: str) -> Iterator[nn.Module]:
    """The largest submodules all of whose parameters belong to ``role``.

    For Qwen2-VL's vision role that is every child of ``model.visual`` except ``merger``
    (the projector), so hooks placed on them leave the projector alone. Containers that
    are never called (``ModuleList`` / ``ModuleDict``, e.g. Qwen's ``visual.blocks``)
    give their children instead, so forward hooks on the result always fire.
    """
    names = dict(model.named_modules())
    nested = [p for r, paths in spec.roles.items() if r != role for p in paths]
    prefix = _model_prefix(names)
    for path in spec.roles[role]:
        if prefix + path in names:
            yield from _walk_prefixed(names, prefix + path, prefix, nested)


def _walk_prefixed(
    names: dict[str, nn.Module], full: str, prefix: str, nested: Iterable[str]
) -> Iterator[nn.Module]:
    inner = [prefix + p for p in nested if (prefix + p).startswith(full + ".")]
    if not inner and not isinstance(names[full], (nn.ModuleList, nn.ModuleDict)):
        yield names[full]
        return
    for child, _ in names[full].named_children():
        sub = f"{full}.{child}"
        if sub in inner:
            continue
        yield from _walk_prefixed(names, sub, prefix, nested)


def _model_prefix(names: dict[str, nn.Module]) -> str:
    """``base_model.model.`` inside a PeftModel, else ``""``."""
    for prefix in PEFT_PREFIXES:
        if prefix.rstrip(".") in names:
            return prefix
    return ""


def fsdp_wrap_classes(family_name: str) -> set[type[nn.Module]]:
    """The transformer block classes FSDP wraps one unit each for a family (the
    ``auto_wrap_policy`` / ``activation_checkpointing_policy`` of
    ``conf/trainer/fsdp_vlm.yaml``)."""
    import importlib

    out: set[type[nn.Module]] = set()
    for ref in family(family_name).fsdp_wrap:
        module, cls = ref.split(":")
        out.add(getattr(importlib.import_module(f"transformers.models.{module}"), cls))
    return out
