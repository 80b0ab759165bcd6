"""Check plugin ``outliers``: samples far from their label's neighbours."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from lake.plugin import Check
from plugins.checks.common import (
    by_dataset,
    image_embeddings,
    nearest_rows,
    read_samples,
    result_table,
    robust_z,
)


class Outliers(Check):
    """Flags samples far from their label's neighbours in the image-embedding space.

    Score = robust z-score, within the sample's (dataset, label), of the mean cosine
    distance from the sample's image to its ``k`` nearest neighbours of the same label:
    ``(d - median) / (1.4826 * MAD)``. Flagged when the score exceeds ``z``. Labels with
    fewer than ``min_per_label`` samples are not scored. Unlabelled samples form one group.
    The neighbours are exact up to ``exact_below`` samples a label, above it searched inside
    ``sqrt(n)`` k-means partitions (``partition_probes`` deep, :func:`nearest_rows`), with
    working memory within ``memory_budget_mb``: never n^2 for a large label.
    """

    name: ClassVar[str] = "outliers"
    version: ClassVar[str] = "0.1.0"

    def __init__(
        self,
        *,
        k: int,
        z: float,
        min_per_label: int,
        memory_budget_mb: float,
        exact_below: int,
        partition_probes: int,
    ) -> None:
        self.k = int(k)
        self.z = float(z)
        self.min_per_label = int(min_per_label)
        self.memory_budget_mb = float(memory_budget_mb)
        self.exact_below = int(exact_below)
        self.partition_probes = int(partition_probes)

    def thresholds(self) -> dict[str, Any]:
        """Settings recorded in the summary and the report."""
        return {
            "k": self.k,
            "z": self.z,
            "min_per_label": self.min_per_label,
            "exact_below": self.exact_below,
            "partition_probes": self.partition_probes,
        }

    def run(self, lake: Any, where: str | None = None) -> tuple[pa.Table, dict[str, Any]]:
        """Score every sample with an image embedding, per (dataset, label)."""
        samples = read_samples(lake, where, ["media_ids", "label"])
        valid, img, models = image_embeddings(lake, samples)
        labels = np.asarray(
            [x if x is not None else "" for x in samples.column("label").to_pylist()], object
        )
        ids_all = samples.column("sample_id").to_pylist()
        ids: list[str] = []
        scores, flags, details = [], [], []
        for _, rows in by_dataset(samples):
            rows = rows[valid[rows]]
            for label in sorted(set(labels[rows].tolist())):
                sub = rows[labels[rows] == label]
                if len(sub) < max(self.min_per_label, self.k + 1):
                    continue
                d = self._knn_distance(img[sub])
                z = robust_z(d)
                ids += [ids_all[i] for i in sub]
                scores.append(z)
                flags.append(z > self.z)
                details += [f"{self.k}-NN distance {x:.3f} in label {label!r}" for x in d]
        score = np.concatenate(scores) if scores else np.zeros(0)
        flagged = np.concatenate(flags) if flags else np.zeros(0, bool)
        return result_table(ids, score, flagged, None, details), {
            "check": self.name,
            "thresholds": self.thresholds(),
            "scored": len(ids),
            "flagged": int(flagged.sum()),
            "models": {"image": models},
        }

    def _knn_distance(self, x: np.ndarray) -> np.ndarray:
        """Mean cosine distance of each row to its k nearest other rows (:func:`nearest_rows`)."""
        sims = nearest_rows(
            x, self.k, self.partition_probes, self.memory_budget_mb, self.exact_below
        )
        return 1.0 - sims.astype(np.float64).mean(axis=1)
