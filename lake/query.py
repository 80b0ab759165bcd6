"""Search the lake by CLIP similarity: ``lakeloom query text="a red circle" k=10``.

A text or an image query is embedded with the model that embedded the lake (the one
value of ``media.clip_image_model``; several models, or none, is an error), through the
enricher plugin that made the vectors (found in the ``lakeloom.plugins`` entry points:
``lake`` never imports ``plugins``). The ``k`` media nearest by cosine on
``media.clip_image`` are found with a LanceDB vector search (exact below the index size,
IVF_PQ with ``nprobes`` and ``refine_factor`` above it), then the samples using those
media are listed, optionally restricted by a SQL ``where`` on ``samples`` and a
``dataset``. Scores are cosine similarities (1 - cosine distance).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from lake.errors import ConfigError
from lake.job import hydra_job
from lake.plugin import PLUGIN_GROUP, load_class
from lake.schema import MEDIA, SAMPLES
from lake.sql import and_filters, filter_error, in_list, quote
from lake.store import Lake

IMAGE_COLUMN = "clip_image"
IMAGE_OWNER = "clip_image_model"
SAMPLE_COLUMNS = ["sample_id", "dataset", "media_ids", "caption", "label", "source_uri"]


@dataclass
class Hit:
    """One result line: a sample using one of the nearest media."""

    rank: int
    score: float
    media_id: str
    sample_id: str | None
    dataset: str | None
    caption: str | None
    label: str | None
    source_uri: str | None


def lake_model(lake: Lake, column: str = IMAGE_OWNER) -> str:
    """The one model id that embedded ``media`` (ConfigError for none or several)."""
    if not lake.exists(MEDIA) or column not in lake.table(MEDIA).schema.names:
        raise ConfigError(f"the lake at {lake.uri} has no CLIP embeddings: run lakeloom enrich")
    col = lake.dataset(MEDIA).to_table(columns=[column], filter=f"{column} IS NOT NULL")
    owners = sorted(set(col.column(column).to_pylist()))
    if not owners:
        raise ConfigError(f"no media of {lake.uri} is embedded yet: run lakeloom enrich")
    if len(owners) > 1:
        raise ConfigError(
            f"media were embedded by several models ({', '.join(owners)}); re-embed with "
            "one model (lakeloom enrich enrich.reembed=true) before querying"
        )
    return owners[0]


def plugin_class(plugin: str) -> type:
    """A plugin class by entry-point name (``clip_image``) or ``module:Class`` target."""
    for ep in entry_points(group=PLUGIN_GROUP):
        if ep.name == plugin:
            return ep.load()
    if ":" in plugin or "." in plugin:
        return load_class(plugin)
    raise ConfigError(f"no plugin {plugin!r} is installed (see lakeloom plugins)")


def load_embedder(lake: Lake, plugin: str = "clip_image", **model: Any) -> Any:
    """The enricher that reproduces the lake's model, checked against its owner id."""
    owner = lake_model(lake)
    cls = plugin_class(plugin)
    if not hasattr(cls, "from_owner"):
        raise ConfigError(f"plugin {plugin!r} cannot embed queries (no from_owner)")
    embedder = cls.from_owner(owner, **model)
    if embedder.owner() != owner:
        raise ConfigError(
            f"the lake was embedded by {owner}, the configured model is {embedder.owner()}: "
            "pass the same model (model.run=... or model.pretrained=...)"
        )
    return embedder


def _sample_filter(where: str | None, dataset: str | None) -> str | None:
    return and_filters(where, f"dataset = {quote(dataset)}" if dataset else None)


def search(
    lake: Lake,
    vector: np.ndarray,
    k: int = 10,
    where: str | None = None,
    dataset: str | None = None,
    nprobes: int | None = 20,
    refine_factor: int | None = 10,
) -> list[Hit]:
    """The samples using the ``k`` media nearest to ``vector`` (cosine), best first.

    With ``where`` / ``dataset`` only media used by matching samples are searched
    (prefilter), and only matching samples are listed.
    """
    sample_filter = _sample_filter(where, dataset)
    media_filter = f"{IMAGE_COLUMN} IS NOT NULL"
    if sample_filter:
        try:
            allowed = lake.dataset(SAMPLES).to_table(columns=["media_ids"], filter=sample_filter)
        except (ValueError, OSError) as exc:  # Lance reports a bad filter as either
            raise filter_error("query where filter", sample_filter, exc) from exc
        ids = sorted({m for ms in allowed.column("media_ids").to_pylist() for m in ms or []})
        if not ids:
            return []
        media_filter += f" AND media_id IN {in_list(ids)}"
    query = (
        lake.table(MEDIA)
        .search(np.asarray(vector, np.float32), vector_column_name=IMAGE_COLUMN)
        .distance_type("cosine")
        .where(media_filter, prefilter=True)
        .select(["media_id", "_distance"])
        .limit(k)
    )
    if nprobes:
        query = query.nprobes(nprobes)
    if refine_factor:
        query = query.refine_factor(refine_factor)
    found = query.to_arrow()
    media = found.column("media_id").to_pylist()
    scores = [1.0 - float(d) for d in found.column("_distance").to_pylist()]
    if not media:
        return []
    using = f"array_has_any(media_ids, [{', '.join(map(quote, media))}])"
    filt = and_filters(using, sample_filter)
    samples = lake.dataset(SAMPLES).to_table(columns=SAMPLE_COLUMNS, filter=filt).to_pylist()
    by_media: dict[str, list[dict[str, Any]]] = {}
    for s in sorted(samples, key=lambda s: s["sample_id"]):
        for m in dict.fromkeys(s["media_ids"] or []):
            by_media.setdefault(m, []).append(s)
    hits = []
    for rank, (m, score) in enumerate(zip(media, scores, strict=True), start=1):
        for s in by_media.get(m, []):
            hits.append(
                Hit(rank, score, m, s["sample_id"], s["dataset"], s["caption"], s["label"],
                    s["source_uri"])
            )  # fmt: skip
    return hits


def index_recall(
    lake: Lake,
    queries: int = 100,
    k: int = 10,
    nprobes: int = 20,
    refine_factor: int | None = 10,
    seed: int = 0,
) -> float:
    """Recall@k of the (indexed) search against exact search, with stored vectors as queries.

    Use it to choose ``nprobes`` / ``refine_factor`` and the index parameters.
    """
    tbl = lake.table(MEDIA)
    vecs = lake.dataset(MEDIA).to_table(
        columns=[IMAGE_COLUMN], filter=f"{IMAGE_COLUMN} IS NOT NULL"
    )
    matrix = np.stack(vecs.column(IMAGE_COLUMN).to_numpy(zero_copy_only=False))
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(matrix), size=min(queries, len(matrix)), replace=False)
    total = 0.0
    for i in picks:
        base = tbl.search(matrix[i], vector_column_name=IMAGE_COLUMN).distance_type("cosine")
        exact = base.bypass_vector_index().select(["media_id"]).limit(k).to_arrow()
        approx = base.nprobes(nprobes)
        if refine_factor:
            approx = approx.refine_factor(refine_factor)
        got = approx.select(["media_id"]).limit(k).to_arrow()
        truth = set(exact.column("media_id").to_pylist())
        total += len(truth & set(got.column("media_id").to_pylist())) / max(1, len(truth))
    return total / max(1, len(picks))


def format_hits(hits: list[Hit]) -> str:
    """A plain table for people."""
    if not hits:
        return "no results"
    lines = [f"{'rank':>4}  {'score':>7}  {'sample_id':<16}  {'text':<40}  source_uri"]
    for h in hits:
        text = (h.caption or h.label or "").replace("\n", " ")
        text = text if len(text) <= 40 else text[:39] + "…"
        sid = (h.sample_id or "")[:16]
        lines.append(f"{h.rank:>4}  {h.score:7.4f}  {sid:<16}  {text:<40}  {h.source_uri or ''}")
    return "\n".join(lines)


def run_query(cfg: Any) -> list[Hit]:
    """Embed the configured query and search (the job without the printing)."""
    if bool(cfg.text) == bool(cfg.image):
        raise ConfigError('give exactly one of text="..." or image=PATH')
    lake = Lake.from_config(cfg.lake)
    model = {k: v for k, v in dict(cfg.model).items() if v is not None}
    embedder = load_embedder(lake, cfg.plugin, **model)
    if cfg.text:
        vector = embedder.embed_texts([str(cfg.text)])[0]
    else:
        path = Path(cfg.image)
        if not path.is_file():
            raise ConfigError(f"query image not found: {path}")
        vector = embedder.embed_images([path.read_bytes()])[0]
    return search(lake, vector, int(cfg.k), cfg.where, cfg.dataset, cfg.nprobes, cfg.refine_factor)


@hydra_job("query")
def main(cfg: Any) -> int:
    """Hydra entry point: print the nearest samples (``json=true`` for JSON lines)."""
    hits = run_query(cfg)
    if cfg.get("json"):
        for h in hits:
            sys.stdout.write(json.dumps(h.__dict__) + "\n")
    else:
        print(format_hits(hits))
    return 0


if __name__ == "__main__":
    main()
