"""Contrastive loss, retrieval recall and zero-shot accuracy on CLIP embeddings.

Pure functions on tensors: the module calls them, tests check them on hand-built vectors.
Embeddings are expected L2-normalised (open_clip's forward returns them so).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    drop_frac: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE: mean of image→text and text→image cross-entropy.

    Row ``i`` of each side is the positive for row ``i`` of the other; ``logit_scale``
    is the (already exponentiated) temperature factor. ``drop_frac`` > 0 averages only the
    pairs with the smallest loss, leaving out the ``drop_frac`` highest-loss pairs of the
    batch (the small-loss trick for noisy pairs: a mismatched caption keeps a high loss and
    is not memorised; the pair still serves as a negative for the others).
    """
    logits = logit_scale * image_features @ text_features.T
    target = torch.arange(logits.shape[0], device=logits.device)
    if drop_frac <= 0.0:
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    per_pair = (
        F.cross_entropy(logits, target, reduction="none")
        + F.cross_entropy(logits.T, target, reduction="none")
    ) / 2
    keep = max(1, per_pair.numel() - int(drop_frac * per_pair.numel()))
    return torch.topk(per_pair, keep, largest=False).values.mean()


def retrieval_recall(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    ks: tuple[int, ...] | list[int] = (1, 5),
    groups: torch.Tensor | None = None,
    chunk: int = 1024,
) -> dict[str, float]:
    """Image→text and text→image recall@k over a set of N pairs.

    Pair ``i`` is image ``i`` with text ``i``. ``groups`` (``[N]`` ints) marks texts that
    are the same caption: a text is a correct answer for every image of its group, so two
    images sharing a caption are not a miss when the other copy ranks first (default: every
    pair its own group). A query is a hit at k when a correct answer is among its k most
    similar candidates. Queries go in chunks, so memory is ``chunk × N``.
    Returns ``{"i2t_r1": .., "i2t_r5": .., "t2i_r1": .., "t2i_r5": ..}``.
    """
    n = image_features.shape[0]
    if groups is None:
        groups = torch.arange(n)
    groups = groups.to(image_features.device)
    image_features, text_features = image_features.float(), text_features.float()
    out: dict[str, float] = {}
    for name, queries, keys in (
        ("i2t", image_features, text_features),
        ("t2i", text_features, image_features),
    ):
        first_hit = torch.empty(n, dtype=torch.long, device=groups.device)
        for start in range(0, n, chunk):
            sim = queries[start : start + chunk] @ keys.T
            order = sim.argsort(dim=1, descending=True)
            hits = groups[order] == groups[start : start + chunk, None]
            first_hit[start : start + chunk] = hits.float().argmax(dim=1)
        for k in ks:
            out[f"{name}_r{k}"] = (first_hit < k).float().mean().item()
    return out


def zero_shot_accuracy(
    image_features: torch.Tensor,
    class_features: torch.Tensor,
    targets: torch.Tensor,
) -> float:
    """Top-1 accuracy of nearest-class-prompt prediction; ``targets`` are class indices."""
    if targets.numel() == 0:
        return float("nan")
    pred = (image_features.float() @ class_features.float().T).argmax(dim=1)
    return (pred == targets.to(pred.device)).float().mean().item()
