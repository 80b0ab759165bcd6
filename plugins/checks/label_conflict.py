"""Check plugin ``label_conflict``: images a classifier over the labels puts elsewhere."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from lake.plugin import Check, registered
from plugins.checks.common import (
    by_dataset,
    image_embeddings,
    normalise,
    read_samples,
    result_table,
)


class LabelConflict(Check):
    """Flags samples whose image a classifier over the dataset's labels confidently puts
    under another label.

    Two classifiers in the embedding space, per dataset:

    - ``zero_shot``: CLIP zero-shot. Each label becomes the prompts of ``templates``
      (``_`` read as a space), embedded by the text tower of the model that embedded the
      images (reproduced from the ``clip_image_model`` id, like ``lakeloom query``) and
      averaged; probabilities are a softmax at the model's own temperature (or
      ``temperature`` when given).
    - ``prototype``: a label's prototype is the mean image embedding of its samples,
      leave-one-out for the sample's own label; probabilities are a softmax over the
      cosines at ``temperature`` (0.05 when not given).

    ``auto`` (default) uses ``zero_shot`` when the image model can be loaded and
    ``prototype`` otherwise; the summary records which. A sample is flagged when the most
    probable label is not its own and has probability >= ``min_confidence``. Score = the
    most probable other label's probability minus the own label's. Labels with fewer than
    ``min_per_label`` samples are not scored.
    """

    name: ClassVar[str] = "label_conflict"
    version: ClassVar[str] = "0.2.0"

    def __init__(
        self,
        *,
        method: str,
        min_confidence: float,
        temperature: float | None,
        templates: list[str] | tuple[str, ...],
        min_per_label: int,
        runs_dir: str,
    ) -> None:
        if method not in ("auto", "zero_shot", "prototype"):
            raise ValueError(
                f"label_conflict method must be auto, zero_shot or prototype, not {method!r}"
            )
        self.method = method
        self.min_confidence = float(min_confidence)
        self.temperature = None if temperature is None else float(temperature)
        self.templates = tuple(templates)
        self.min_per_label = int(min_per_label)
        self.runs_dir = str(runs_dir)

    def thresholds(self) -> dict[str, Any]:
        """Settings recorded in the summary and the report."""
        return {
            "method": self.method,
            "min_confidence": self.min_confidence,
            "temperature": self.temperature,
            "min_per_label": self.min_per_label,
        }

    def _text_model(self, models: list[str]) -> tuple[tuple[Any, float] | None, str | None]:
        """((text embedder, its temperature factor), None) reproducing the image model, or
        (None, why zero-shot is not possible) under ``auto``."""
        if len(models) != 1:
            if self.method == "zero_shot":
                raise ValueError(
                    f"zero-shot label check needs media embedded by one model, found {models}"
                )
            if not models:
                return None, "the image embeddings do not record their model"
            return None, f"the media were embedded by {len(models)} models ({', '.join(models)})"
        try:
            embedder = registered("clip_text").from_owner(models[0], runs_dir=self.runs_dir)
            if embedder.owner() != models[0]:
                raise ValueError(f"{models[0]} reloads as {embedder.owner()}")
            scale = float(embedder.clip.model.logit_scale.exp().item())
        except Exception as exc:  # the model of the vectors is not reproducible here
            if self.method == "zero_shot":
                raise ValueError(f"cannot load {models[0]} for zero-shot labels: {exc}") from exc
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            return None, f"the image model {models[0]} cannot be loaded ({reason})"
        return (embedder, scale), None

    def _prompts(self, embedder: Any, names: np.ndarray) -> np.ndarray:
        """One unit vector per label: the mean of its templates' text embeddings."""
        texts = [t.format(str(n).replace("_", " ")) for n in names for t in self.templates]
        emb = embedder.embed_texts(texts).reshape(len(names), len(self.templates), -1)
        return normalise(emb.mean(axis=1))

    def prototype_logits(self, x: np.ndarray, inv: np.ndarray, labels: int) -> np.ndarray:
        """Logits (rows x labels) of the ``prototype`` classifier: cosines to each label's mean
        embedding, leave-one-out for the row's own label ``inv``, over the temperature. Label
        sums in sorted blocks (linear, bounded; ``np.add.at`` on rows is far slower)."""
        order = np.argsort(inv, kind="stable")
        sums = np.zeros((labels, x.shape[1]), dtype=np.float64)
        for a in range(0, len(x), 65536):  # sorted blocks: 0.5 GB of float64 at most
            rows = order[a : a + 65536]
            lab = inv[rows]
            starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
            sums[lab[starts]] += np.add.reduceat(x[rows].astype(np.float64), starts, axis=0)
        sims = x @ normalise(sums).T.astype(np.float32)
        for a in range(0, len(x), 65536):  # own label's prototype without the sample itself
            b = min(a + 65536, len(x))
            loo = normalise(sums[inv[a:b]] - x[a:b])
            sims[np.arange(a, b), inv[a:b]] = np.einsum("ij,ij->i", x[a:b], loo)
        return sims / (self.temperature or 0.05)

    def run(self, lake: Any, where: str | None = None) -> tuple[pa.Table, dict[str, Any]]:
        """Score every labelled sample with an image embedding."""
        samples = read_samples(lake, where, ["media_ids", "label"])
        valid, img, models = image_embeddings(lake, samples)
        labels = np.asarray(samples.column("label").to_pylist(), dtype=object)
        ids_all = samples.column("sample_id").to_pylist()
        text, why = None, None
        if self.method != "prototype" and valid.any():
            text, why = self._text_model(models)
        method = "zero_shot" if text is not None else "prototype"
        fallbacks = [f"zero-shot not possible: {why}; used label prototypes"] if why else []
        ids: list[str] = []
        scores, flags, details = [], [], []
        for _, rows in by_dataset(samples):
            rows = rows[valid[rows] & (labels[rows] != None)]  # noqa: E711
            if not len(rows):
                continue
            names, inv, counts = np.unique(
                labels[rows].astype(str), return_inverse=True, return_counts=True
            )
            keep = counts[inv] >= self.min_per_label
            rows, inv = rows[keep], inv[keep]
            big = counts >= self.min_per_label
            if big.sum() < 2 or not len(rows):
                continue
            x = img[rows]
            if text is not None:
                embedder, scale = text
                factor = 1.0 / self.temperature if self.temperature else scale
                logits = factor * (x @ self._prompts(embedder, names).T)
            else:
                logits = self.prototype_logits(x, inv, len(names))
            logits[:, ~big] = -np.inf
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            at = np.arange(len(rows))
            own = probs[at, inv]
            others = probs.copy()
            others[at, inv] = -1.0
            best = others.argmax(axis=1)
            margin = others[at, best] - own
            flagged = (margin > 0) & (others[at, best] >= self.min_confidence)
            ids += [ids_all[i] for i in rows]
            scores.append(margin)
            flags.append(flagged)
            details += [
                f"predicted {names[b]} p={others[i, b]:.2f} (label {names[o]} p={own[i]:.2f})"
                for i, (b, o) in enumerate(zip(best, inv, strict=True))
            ]
        score = np.concatenate(scores) if scores else np.zeros(0)
        flagged = np.concatenate(flags) if flags else np.zeros(0, bool)
        result = result_table(ids, score, flagged, None, details)
        described = {
            "zero_shot": f"CLIP zero-shot over the labels, prompts {list(self.templates)}",
            "prototype": "leave-one-out label prototypes (mean image embedding), softmax",
        }
        return result, {
            "check": self.name,
            "thresholds": self.thresholds(),
            "scored": len(ids),
            "flagged": int(flagged.sum()),
            "method": described[method],
            "models": {"image": models},
            "fallbacks": fallbacks,
        }
