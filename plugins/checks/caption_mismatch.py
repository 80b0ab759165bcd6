"""Check plugin ``caption_mismatch``: captions that fit their own image poorly."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from lake.plugin import Check
from plugins.checks.common import (
    TEXT_MODEL,
    TEXT_VEC,
    by_dataset,
    image_embeddings,
    model_ids,
    read_samples,
    result_table,
    robust_z,
    table_columns,
    vector_matrix,
)


class CaptionMismatch(Check):
    """Flags captions that fit their own image poorly compared with the dataset's captions.

    For each sample with an image and a text embedding, the image is compared with its own
    caption and with the captions of ``negatives`` other samples of the same dataset (all
    of them when there are fewer; a fixed random subset otherwise, drawn with ``seed``).

    - ``method="nll"`` (default): the score is the negative log-probability of the own
      caption under a softmax over those captions at ``temperature`` (CLIP's image→text
      retrieval loss for this one pair): near ``log m`` when ``m`` captions say the same,
      large when many captions fit the image better. Flagged when the robust z-score
      (median/MAD) of ``log(1 + nll)`` within the dataset exceeds ``max_z`` (the nll of
      right captions is skewed to the right; ``log1p`` makes it close to symmetric and
      stays tame when a confident model puts the nll of right captions near 0), and the
      own caption's probability is below ``max_own_prob`` (so that with a near-perfect
      model a caption shared by two images, nll ~ log 2, is not an outlier).
    - ``method="rank"``: the score is the fraction of the other captions that match the
      image better than its own (0: best; 1: worst); flagged above ``max_beaten_frac``.

    Both thresholds are relative to the dataset, so they adapt to the model's cosine
    scale rather than being one global cosine constant. Also writes ``samples.clip_score``
    (image–own-caption cosine).
    """

    name: ClassVar[str] = "caption_mismatch"
    version: ClassVar[str] = "0.2.0"
    writes: ClassVar[tuple[str, ...]] = ("clip_score",)

    def __init__(
        self,
        *,
        method: str,
        temperature: float,
        max_z: float,
        max_own_prob: float,
        max_beaten_frac: float,
        negatives: int,
        min_samples: int,
        seed: int,
        batch_size: int = 1024,
    ) -> None:
        if method not in ("nll", "rank"):
            raise ValueError(f"caption_mismatch method must be 'nll' or 'rank', not {method!r}")
        self.method = method
        self.temperature = float(temperature)
        self.max_z = float(max_z)
        self.max_own_prob = float(max_own_prob)
        self.max_beaten_frac = float(max_beaten_frac)
        self.negatives = int(negatives)
        self.min_samples = int(min_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def thresholds(self) -> dict[str, Any]:
        """Settings recorded in the summary and the report."""
        common = {
            "method": self.method,
            "negatives": self.negatives,
            "min_samples": self.min_samples,
        }
        if self.method == "nll":
            return {
                **common,
                "temperature": self.temperature,
                "max_z": self.max_z,
                "max_own_prob": self.max_own_prob,
            }
        return {**common, "max_beaten_frac": self.max_beaten_frac}

    def run(self, lake: Any, where: str | None = None) -> tuple[pa.Table, dict[str, Any]]:
        """Score every sample that has both an image and a text embedding."""
        have = table_columns(lake, "samples")
        summary: dict[str, Any] = {"check": self.name, "thresholds": self.thresholds()}
        if TEXT_VEC not in have:
            empty = result_table([], np.zeros(0), np.zeros(0, bool)).append_column(
                "clip_score", pa.array([], pa.float32())
            )
            return empty, {**summary, "scored": 0, "flagged": 0, "models": {}}
        cols = ["media_ids", TEXT_VEC] + ([TEXT_MODEL] if TEXT_MODEL in have else [])
        samples = read_samples(lake, where, cols)
        ivalid, img, image_models = image_embeddings(lake, samples)
        tvalid, txt = vector_matrix(samples.column(TEXT_VEC))
        ok = ivalid & tvalid
        text_models = (
            model_ids(samples.column(TEXT_MODEL).filter(pa.array(ok)))
            if TEXT_MODEL in samples.column_names
            else []
        )
        ids_all = samples.column("sample_id").to_pylist()
        ids: list[str] = []
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        skipped = 0
        for _, rows in by_dataset(samples):
            rows = rows[ok[rows]]
            if len(rows) < self.min_samples:
                skipped += len(rows)
                continue
            score, own = self._score(img[rows], txt[rows])
            if self.method == "nll":
                z = robust_z(np.log1p(np.maximum(score, 0.0)))
                flagged = (z > self.max_z) & (np.exp(-score) < self.max_own_prob)
            else:
                z = robust_z(own)
                flagged = score > self.max_beaten_frac
            ids += [ids_all[i] for i in rows]
            parts.append((score, own, z, flagged))
        score, own, z, flagged = (
            (np.concatenate([p[k] for p in parts]) for k in range(4))
            if parts
            else (np.zeros(0, np.float32),) * 3 + (np.zeros(0, bool),)
        )
        if self.method == "nll":
            detail = [
                f"cosine {c:.3f}, nll {sc:.2f} (robust z of log1p {x:+.1f})"
                for c, sc, x in zip(own, score, z, strict=True)
            ]
        else:
            detail = [f"cosine {c:.3f} (robust z {x:+.2f})" for c, x in zip(own, z, strict=True)]
        result = result_table(ids, score, flagged, None, detail).append_column(
            "clip_score", pa.array(own.astype(np.float32), pa.float32())
        )
        summary.update(
            scored=len(ids),
            flagged=int(flagged.sum()),
            skipped_small_datasets=skipped,
            no_embedding=int((~ok).sum()),
            clip_score_median=float(np.median(own)) if len(own) else None,
            models={"image": image_models, "text": text_models},
        )
        return result, summary

    def _negatives(self, n: int) -> np.ndarray:
        """Row positions of the captions every image is compared with."""
        if n - 1 <= self.negatives:
            return np.arange(n)
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(n, size=self.negatives, replace=False))

    def _score(self, img: np.ndarray, txt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score per row by ``method``, own cosine per row)."""
        n = len(img)
        own = np.einsum("ij,ij->i", img, txt)
        neg = self._negatives(n)
        negt = txt[neg]
        score = np.zeros(n, dtype=np.float64)
        inv_t = 1.0 / self.temperature
        for a in range(0, n, self.batch_size):
            b = min(a + self.batch_size, n)
            sims = img[a:b] @ negt.T
            rows = np.arange(a, b)
            is_self = neg[None, :] == rows[:, None]  # own caption among the negatives
            if self.method == "nll":
                # softmax over the own caption and the other captions
                logits = np.where(is_self, -np.inf, sims * inv_t)
                logits = np.concatenate([logits, own[a:b, None] * inv_t], axis=1)
                top = logits.max(axis=1, keepdims=True)
                lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
                score[a:b] = lse - own[a:b] * inv_t
            else:
                better = (sims > own[a:b, None]) & ~is_self
                count = is_self.sum(axis=1)
                score[a:b] = better.sum(axis=1) / np.maximum(len(neg) - count, 1)
        return score.astype(np.float32), own.astype(np.float32)
