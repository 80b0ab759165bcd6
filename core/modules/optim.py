"""Optimiser helpers shared by the Lightning modules: decay groups and LR schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

#: name fragments of parameters that never get weight decay (besides every 1-d tensor)
NO_DECAY_NAMES: tuple[str, ...] = ("logit_scale", "logit_bias", "positional_embedding", "cls_emb")


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """AdamW parameter groups: biases, norms, embeddings of position and temperature
    get no weight decay; frozen parameters are left out. Empty groups are dropped."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or any(part in name for part in NO_DECAY_NAMES):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup from ~0 to 1 over ``warmup_steps``, then cosine decay
    to ``min_ratio`` at ``total_steps`` (held there after)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_warmup_cosine(
    groups: list[dict[str, Any]], hparams: Any, estimated_steps: Callable[[], float]
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: AdamW over ``groups`` with a per-step
    warmup-cosine schedule; ``hparams`` holds ``lr``, ``betas``, ``warmup_steps``,
    ``min_lr_ratio`` and ``max_steps`` (None or <= 0: ``estimated_steps()``, e.g. the
    trainer's ``estimated_stepping_batches``, asked only then)."""
    import torch
    from torch.optim.lr_scheduler import LambdaLR

    h = hparams
    opt = torch.optim.AdamW(groups, lr=h.lr, betas=tuple(h.betas))
    total = h.max_steps if (h.max_steps or 0) > 0 else estimated_steps()
    sched = LambdaLR(opt, WarmupCosine(h.warmup_steps, max(1, int(total)), h.min_lr_ratio))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class WarmupCosine:
    """Picklable ``LambdaLR`` lambda around :func:`warmup_cosine` (checkpoints keep it)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup_steps, self.total_steps, self.min_ratio)
