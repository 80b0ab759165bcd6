"""Load a VLM (hub id, local directory or tiny) and set up how it is tuned.

Everything reads the family's role keys (:mod:`core.models.vlm_families`): freezing,
LoRA / DoRA targets (language-model projections only), ``modules_to_save`` for trained
non-LM roles under LoRA, per-role learning rates, the trainable-parameter table, and
``no_grad`` around a frozen vision tower (nothing upstream of it trains, so its
activations need not be kept; a frozen language model still needs its graph, for the
projector's gradients).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.checkpoint import load_lightning_checkpoint
from core.models.vlm_families import (
    ROLES,
    FamilySpec,
    family,
    family_of_model_type,
    modules_of_role,
)
from lake.errors import ConfigError
from lake.runs import RunDir

log = logging.getLogger(__name__)


def load_vlm(
    family_name: str,
    source: str = "tiny",
    tiny: Mapping[str, Any] | None = None,
    seed: int = 0,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    quantization: str | None = None,
    allow_cpu_quantization: bool = False,
    attn_implementation: str | None = None,
    language_source: str | None = None,
    vision_from: str | None = None,
) -> tuple[nn.Module, Any, FamilySpec]:
    """``(model, processor, spec)`` for ``source``: ``tiny`` (built from ``tiny`` sizes),
    a local checkpoint directory, or a hub id (offline unless the cache has it).

    ``language_source`` (with ``source=tiny``, LLaVA): a real causal LM (a packaged name such
    as ``smollm2-135m-instruct``, a local directory or a hub id) behind the tiny random
    vision tower; its tokenizer and ChatML template become the processor's.
    ``vision_from`` (with ``language_source``): a lakeloom CLIP run whose image tower
    replaces the random one (:func:`core.models.vlm_tiny.build_tiny`).

    ``quantization="4bit"`` loads the language model in 4-bit NF4 through bitsandbytes
    (QLoRA); it needs a CUDA GPU unless ``allow_cpu_quantization`` (tests only).
    """
    spec = family(family_name)
    if source == "tiny":
        if quantization:
            raise ConfigError("quantization needs a pretrained source, not source=tiny")
        from core.models.packaged import resolve_source
        from core.models.vlm_tiny import build_tiny

        lm_dir = resolve_source(language_source) if language_source else None
        if vision_from and not lm_dir:
            raise ConfigError("model.vision_from needs model.language_source (LLaVA)")
        model, processor = build_tiny(family_name, dict(tiny or {}), seed, lm_dir, vision_from)
        return model, processor, spec
    if vision_from:
        raise ConfigError(f"model.vision_from needs model.source=tiny, not {source!r}")
    if language_source:
        raise ConfigError(
            f"model.language_source needs model.source=tiny (the tiny vision tower), not "
            f"{source!r}: a full VLM checkpoint brings its own language model"
        )
    import transformers
    from transformers import AutoConfig, AutoProcessor

    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code, "revision": revision}
    try:
        config = AutoConfig.from_pretrained(source, **kw)
    except OSError as exc:
        raise ConfigError(f"cannot load model config from {source!r}: {exc}") from exc
    found = family_of_model_type(config.model_type)
    if found.name != spec.name and found.model_class != spec.model_class:
        raise ConfigError(
            f"{source} is a {config.model_type} checkpoint, but model.family is {family_name!r}"
        )
    load_kw: dict[str, Any] = dict(kw)
    if dtype:
        load_kw["dtype"] = getattr(torch, dtype)
    if attn_implementation:
        load_kw["attn_implementation"] = attn_implementation
    if quantization:
        load_kw.update(_quantization(spec, quantization, allow_cpu_quantization, dtype))
    cls = getattr(transformers, spec.model_class)
    model = cls.from_pretrained(source, **load_kw)
    processor = AutoProcessor.from_pretrained(source, **kw)
    return model, processor, spec


def _quantization(
    spec: FamilySpec, mode: str, allow_cpu: bool, dtype: str | None
) -> dict[str, Any]:
    if mode not in ("4bit", "8bit"):
        raise ConfigError(f"quantization must be null, '4bit' or '8bit', not {mode!r}")
    if not torch.cuda.is_available() and not allow_cpu:
        raise ConfigError(
            "QLoRA (bitsandbytes 4-bit) needs a CUDA GPU and none is visible here. Use "
            "model.peft.method=lora without quantization on CPU (or set "
            "model.allow_cpu_quantization=true to exercise the path slowly, for tests)."
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ConfigError("quantization needs bitsandbytes: pip install bitsandbytes") from exc
    # full module paths: transformers v5 matches them from the start (or as a suffix),
    # so a bare "vision_tower" would quantize the tower and the projector too
    skip = [*spec.lora_conflicts(), "lm_head"]
    compute = getattr(torch, dtype) if dtype else torch.float32
    if mode == "4bit":
        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=skip,
        )
    else:
        q = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return {
        "quantization_config": q,
        "device_map": {"": 0} if torch.cuda.is_available() else "cpu",
    }


# ---- freezing, LoRA ----------------------------------------------------------------------


def freeze_roles(model: nn.Module, spec: FamilySpec, frozen: Mapping[str, bool]) -> None:
    """``requires_grad`` per role (parameters outside every role follow the LM).

    Non-float parameters (bitsandbytes' packed 4-bit weights) stay frozen: they cannot
    take gradients and train only through adapters."""
    unknown = set(frozen) - set(ROLES)
    if unknown:
        raise ConfigError(f"unknown roles in freeze: {sorted(unknown)}; roles are {ROLES}")
    for name, param in model.named_parameters():
        role = spec.role_of(name) or "language_model"
        param.requires_grad_(not frozen.get(role, False) and param.is_floating_point())


def no_grad_when_frozen(model: nn.Module, spec: FamilySpec, role: str = "vision") -> int:
    """Run the modules of ``role`` under ``torch.no_grad`` while all their parameters are
    frozen (checked at each call, so unfreezing later takes effect). Returns hook count."""
    count = 0
    for module in modules_of_role(model, spec, role):
        no_grad_while_frozen(module)
        count += 1
    return count


def no_grad_while_frozen(module: nn.Module) -> None:
    """Run ``module`` under ``torch.no_grad`` whenever none of its parameters trains
    (checked at each call)."""
    module.register_forward_pre_hook(_enter_no_grad)
    module.register_forward_hook(_exit_no_grad, always_call=True)


def _enter_no_grad(module: nn.Module, args: Any) -> None:
    frozen = not any(p.requires_grad for p in module.parameters())
    module._lakeloom_grad = torch.is_grad_enabled()  # type: ignore[attr-defined]
    if frozen:
        torch.set_grad_enabled(False)


def _exit_no_grad(module: nn.Module, args: Any, output: Any) -> None:
    torch.set_grad_enabled(getattr(module, "_lakeloom_grad", True))


def apply_peft(
    model: nn.Module,
    spec: FamilySpec,
    method: str,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    frozen: Mapping[str, bool] | None = None,
) -> nn.Module:
    """Wrap ``model`` with LoRA (``method="lora"``) or DoRA (``"dora"``) on the language
    model's projections; non-LM roles left trainable become ``modules_to_save``."""
    from peft import LoraConfig, get_peft_model

    if method not in ("lora", "dora"):
        raise ConfigError(f"peft.method must be none, lora or dora, not {method!r}")
    frozen = dict(frozen or {})
    save = [
        path
        for role in ("vision", "projector")
        if not frozen.get(role, True)
        for path in spec.roles[role]
    ]
    # peft copies single modules only: a container (Qwen3-VL's DeepStack merger list)
    # becomes its children
    names = dict(model.named_modules())
    save = [sub for path in save for sub in _save_paths(names, path)]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=spec.lora_target_regex(),
        use_dora=method == "dora",
        modules_to_save=save or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _save_paths(names: Mapping[str, nn.Module], path: str) -> list[str]:
    """``path``, or its children's paths when it is a ``ModuleList`` / ``ModuleDict``."""
    module = names.get(path)
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return [f"{path}.{child}" for child in module._modules]
    return [path]


# ---- reporting and optimiser groups ------------------------------------------------------


def parameter_table(
    model: nn.Module, spec: Any, roles: tuple[str, ...] = ROLES
) -> list[dict[str, Any]]:
    """Rows ``{module, params, trainable, share}`` per role, LoRA, other and total
    (``spec``: anything with ``role_of(param_name)``, e.g. a :class:`FamilySpec`)."""
    rows: dict[str, list[int]] = {r: [0, 0] for r in (*roles, "lora", "other")}
    for name, param in model.named_parameters():
        key = "lora" if "lora_" in name else (spec.role_of(name) or "other")
        n = param.numel()
        rows[key][0] += n
        rows[key][1] += n if param.requires_grad else 0
    total = sum(v[0] for v in rows.values())
    trainable = sum(v[1] for v in rows.values())
    out = [
        {"module": k, "params": v[0], "trainable": v[1], "share": v[1] / max(1, v[0])}
        for k, v in rows.items()
        if v[0]
    ]
    out.append({"module": "total", "params": total, "trainable": trainable,
                "share": trainable / max(1, total)})  # fmt: skip
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """The parameter table as aligned text."""
    lines = [f"{'module':<16}{'params':>14}{'trainable':>14}{'share':>9}"]
    for r in rows:
        lines.append(
            f"{r['module']:<16}{r['params']:>14,}{r['trainable']:>14,}{100 * r['share']:>8.1f}%"
        )
    return "\n".join(lines)


def role_param_groups(
    model: nn.Module,
    spec: Any,
    lrs: Mapping[str, float | None],
    base_lr: float,
    weight_decay: float,
) -> list[dict[str, Any]]:
    """AdamW groups per role (own learning rate) x decay / no decay; frozen params left
    out. LoRA weights take the language model's rate. ``spec``: anything with
    ``role_of(param_name)``."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        role = spec.role_of(name) or "language_model"
        decay = param.ndim >= 2 and "norm" not in name.lower()
        groups.setdefault((role, decay), []).append(param)
    out = []
    for (role, decay), params in sorted(groups.items()):
        lr = lrs.get(role) or base_lr
        name = f"{role}{'' if decay else '/no_decay'}"
        wd = weight_decay if decay else 0.0
        out.append({"params": params, "lr": float(lr), "weight_decay": wd, "name": name})
    return out


def save_processor(processor: Any, out: str | Path) -> Path:
    """Write the processor (tokenizer, image processor, chat template) to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out)
    return out


def vision_from_of(path: str | Path) -> str | None:
    """The ``model.vision_from`` of the run that ``path`` (a run directory or one of its
    ``.ckpt`` files) belongs to, or None (so ``init_from`` rebuilds the same frozen tower)."""
    from omegaconf import OmegaConf

    p = Path(path)
    run = RunDir(p if p.is_dir() else p.parent.parent)
    if not run.config.is_file():
        return None
    value = OmegaConf.select(OmegaConf.load(run.config), "model.vision_from", default=None)
    return str(value) if value else None


def load_trained_tensors(model: nn.Module, path: str | Path) -> int:
    """Load the trained tensors of an earlier lakeloom run into ``model`` (before any
    adapter is added), e.g. the projector of a LLaVA ``align`` run into ``instruct``.

    ``path`` is a ``.ckpt`` file or a run directory (its ``best.ckpt``, else ``last.ckpt``).
    PEFT wrappers are unwrapped (``modules_to_save`` copies taken, LoRA factors refused:
    merge that run first). Returns the number of tensors loaded.
    """
    from core.models.vlm_families import strip_peft_prefix

    p = Path(path)
    if p.is_dir():
        run = RunDir(p)
        p = run.best_ckpt if run.best_ckpt.is_file() else run.last_ckpt
    if not p.is_file():
        raise ConfigError(f"init_from: no checkpoint at {p}")
    state = load_lightning_checkpoint(p)["state_dict"]
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = strip_peft_prefix(key.removeprefix("model."))
        if "lora_" in name:
            raise ConfigError(
                f"init_from {p} holds LoRA factors: merge that run first (lakeloom merge) "
                "and use the merged directory as model.source"
            )
        if ".original_module." in name:
            continue
        name = name.replace(".modules_to_save.default.", ".").replace(".base_layer.", ".")
        tensors[name] = value
    _, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected:
        raise ConfigError(f"init_from {p}: tensors this model lacks, e.g. {unexpected[0]}")
    log.info("init_from %s: loaded %d tensors", p, len(tensors))
    return len(tensors)
