"""Search the lake by CLIP similarity: ``lakeloom query text="a red circle" k=10``.

A text or an image query is embedded with the model that embedded the lake (the one
value of ``media.clip_image_model``; several models, or none, is an error), through the
enricher plugin that made the vectors (found in the ``lakeloom.plugins`` entry points:
``lake`` never imports ``plugins``). The ``k`` media nearest by cosine on
``media.clip_image`` are found with a Lance vector search (exact below the index size,
IVF_PQ with ``nprobes`` and ``refine_factor`` above it), optionally of one media ``kind``;
then the samples using those media are listed, optionally restricted by a SQL ``where``
on ``samples`` and a ``dataset`` (post-filtered with over-fetch). Scores are cosine
similarities (1 - cosine distance). ``bench/vectors.py`` measures the settings.

Everything is read through pylance (no LanceDB import), with one ``lance.Session`` per
process: a dataset opened afresh for each query (to see the newest version) would reload
the vector index and the ``samples.media_ids`` label-list index every time (~120 ms at
200k rows); the session keeps them loaded, so repeated searches cost milliseconds.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake.errors import ConfigError
from lake.job import hydra_job
from lake.plugin import PLUGIN_GROUP, load_class
from lake.query_cache import VectorCache
from lake.schema import MEDIA, SAMPLES
from lake.sql import and_filters, filter_error, in_list, quote
from lake.store import Lake
from lake.weights_origin import describe_owner

IMAGE_COLUMN = "clip_image"
IMAGE_OWNER = "clip_image_model"
SAMPLE_COLUMNS = ["sample_id", "dataset", "media_ids", "caption", "label", "source_uri"]

_SESSION: Any = None


def session_dataset(lake: Lake, name: str) -> Any:
    """Table ``name`` at its newest version, opened in this process's shared Lance session."""
    global _SESSION
    if _SESSION is None:
        import lance

        _SESSION = lance.Session()
    return lake.dataset(name, session=_SESSION)


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
    ds = session_dataset(lake, MEDIA) if lake.exists(MEDIA) else None
    if ds is None or column not in ds.schema.names:
        raise ConfigError(f"the lake at {lake.uri} has no CLIP embeddings: run lakeloom enrich")
    col = ds.to_table(columns=[column], filter=f"{column} IS NOT NULL")
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


def _nearest_args(
    vector: np.ndarray, k: int, nprobes: int | None, refine_factor: int | None
) -> dict[str, Any]:
    """pylance's ``nearest`` for a cosine search of ``media.clip_image``."""
    nearest: dict[str, Any] = {
        "column": IMAGE_COLUMN, "q": np.asarray(vector, np.float32), "k": k, "metric": "cosine",
    }  # fmt: skip
    if nprobes:
        nearest["nprobes"] = nprobes
    if refine_factor:
        nearest["refine_factor"] = refine_factor
    return nearest


def media_query(
    lake: Lake,
    vector: np.ndarray,
    limit: int,
    nprobes: int | None,
    refine_factor: int | None,
    where: str | None = None,
) -> Any:
    """The Lance vector search on ``media.clip_image`` (cosine): a scanner, ready to run.

    ``where`` is a prefilter on ``media`` columns (``kind = 'frame'``; a scan of that
    small column, measured cheaper than a scalar index by ``bench/vectors.py``). There is no
    ``clip_image IS NOT NULL`` filter: as a prefilter it made Lance read the whole
    vector column on every query (2.4 s at 1M rows); media without a vector are not in
    the index, and unindexed ones come back with a null distance, dropped by the caller.
    """
    nearest = _nearest_args(vector, limit, nprobes, refine_factor)
    return session_dataset(lake, MEDIA).scanner(
        columns=["media_id", "_distance"], nearest=nearest, filter=where or None,
        prefilter=bool(where),
    )  # fmt: skip


def _nearest(
    lake: Lake,
    vector: np.ndarray,
    limit: int,
    nprobes: int | None,
    refine_factor: int | None,
    where: str | None,
) -> tuple[list[str], list[float]]:
    found = media_query(lake, vector, limit, nprobes, refine_factor, where).to_table()
    media, scores = [], []
    for m, d in zip(
        found.column("media_id").to_pylist(), found.column("_distance").to_pylist(), strict=True
    ):
        if d is not None and d == d:  # null / NaN: a media without a vector
            media.append(m)
            scores.append(1.0 - float(d))
    return media, scores


def _samples_using(
    lake: Lake, media: list[str], sample_filter: str | None
) -> dict[str, list[dict[str, Any]]]:
    """The samples (matching ``sample_filter``) that use each of ``media``."""
    if not media:
        return {}
    using = f"array_has_any(media_ids, [{', '.join(map(quote, media))}])"
    filt = and_filters(using, sample_filter)
    try:
        rows = (
            session_dataset(lake, SAMPLES).to_table(columns=SAMPLE_COLUMNS, filter=filt).to_pylist()
        )
    except (ValueError, OSError) as exc:  # Lance reports a bad filter as either
        raise filter_error("query where filter", sample_filter, exc) from exc
    wanted = set(media)
    by_media: dict[str, list[dict[str, Any]]] = {}
    for s in sorted(rows, key=lambda s: s["sample_id"]):
        for m in dict.fromkeys(s["media_ids"] or []):
            if m in wanted:
                by_media.setdefault(m, []).append(s)
    return by_media


_ALLOWED: dict[tuple[str, int, str], frozenset[str]] = {}


def allowed_media(lake: Lake, sample_filter: str) -> frozenset[str]:
    """The media ids used by the samples matching ``sample_filter`` (a ``where`` on samples).

    One scan of ``samples.media_ids`` under the filter; the newest answer is kept for the
    process by (table, version, filter), so repeated searches with the same filter (the TUI,
    benches) test membership in a set instead of looking samples up per candidate, and a
    write to ``samples`` (a new version) is seen. A bad filter is a typed error.
    """
    return _allowed(lake, sample_filter)[1]


def _allowed(lake: Lake, sample_filter: str) -> tuple[tuple[str, int, str], frozenset[str]]:
    """:func:`allowed_media` and the (table, version, filter) it was read at."""
    ds = session_dataset(lake, SAMPLES)
    key = (str(ds.uri), int(ds.version), sample_filter)
    if key not in _ALLOWED:
        try:
            col = ds.to_table(columns=["media_ids"], filter=sample_filter).column("media_ids")
        except (ValueError, OSError) as exc:  # Lance reports a bad filter as either
            raise filter_error("query where filter", sample_filter, exc) from exc
        _ALLOWED.clear()  # one filter kept: a set can hold millions of ids
        _ALLOWED[key] = frozenset(pc.unique(pc.list_flatten(col)).drop_null().to_pylist())
    return key, _ALLOWED[key]


def _prefiltered(
    lake: Lake,
    vector: np.ndarray,
    k: int,
    allowed: frozenset[str],
    media_where: str | None,
    nprobes: int | None,
    refine_factor: int | None,
) -> tuple[list[str], list[float]]:
    """Search only the ``allowed`` media (for a filter too selective to over-fetch)."""
    where = and_filters(media_where, f"media_id IN {in_list(sorted(allowed))}")
    return _nearest(lake, vector, k, nprobes, refine_factor, where)


_ALLOWED_ROWS: dict[tuple[str, int, tuple[str, int, str]], tuple[np.ndarray, np.ndarray]] = {}


def allowed_rows(lake: Lake, media_ds: Any, sample_filter: str) -> tuple[np.ndarray, np.ndarray]:
    """The :func:`allowed_media` as ``media`` row ids of ``media_ds``'s version (sorted), and
    each one's ``media_id``.

    A search then keeps its candidates by row id: reading ``media_id`` for the 1-3k PQ
    candidates a filtered search fetches cost ~10 ms of its ~25 at 1M rows (row ids come
    with the search for free). Kept for the process by (media version, samples version,
    filter): row ids change with a media version (compaction), the set with a samples one.
    """
    samples_key, allowed = _allowed(lake, sample_filter)
    key = (str(media_ds.uri), int(media_ds.version), samples_key)
    if key not in _ALLOWED_ROWS:
        tbl = media_ds.to_table(columns=["media_id"], with_row_id=True)
        keep = pc.is_in(tbl.column("media_id"), value_set=pa.array(list(allowed), pa.string()))
        tbl = tbl.filter(keep)
        rows = tbl.column("_rowid").to_numpy()
        order = np.argsort(rows, kind="stable")
        ids = np.asarray(tbl.column("media_id").to_pylist(), object)
        _ALLOWED_ROWS.clear()  # one filter kept, as in allowed_media
        _ALLOWED_ROWS[key] = (rows[order], ids[order])
    return _ALLOWED_ROWS[key]


def _reranked(
    lake: Lake,
    vector: np.ndarray,
    k: int,
    fetch: int,
    media_where: str | None,
    nprobes: int | None,
    budget: int,
    sample_filter: str | None = None,
) -> tuple[list[str], list[float], int]:
    """The nearest ``fetch`` media by the index's PQ distance (of the allowed rows when
    ``sample_filter``), the first ``budget`` of them re-ranked by exact cosine, the best
    ``k`` returned; and how many the index returned.

    Lance's own ``refine_factor`` re-ranks every candidate, with a filter most of them then
    filtered away; reading the full vectors of the allowed ones only re-ranks ``1 / share``
    times more of them for the same reads (``bench/vectors.py``: ``dataset=c`` recall). The
    search returns row ids only: ``media_id`` is read for the ``k`` winners (or known from
    :func:`allowed_rows`), not for every candidate.
    """
    ds = session_dataset(lake, MEDIA)  # one version for the search and the takes
    found = ds.scanner(
        columns=["_distance"], nearest=_nearest_args(vector, fetch, nprobes, None),
        filter=media_where or None, prefilter=bool(media_where), with_row_id=True,
    ).to_table()  # fmt: skip
    got = found.num_rows
    dist = found.column("_distance").to_numpy(zero_copy_only=False).astype(np.float64)
    rows = found.column("_rowid").to_numpy()
    ok = ~np.isnan(dist)  # null / NaN: a media without a vector
    ids: np.ndarray | None = None
    if sample_filter is not None:
        allowed, allowed_ids = allowed_rows(lake, ds, sample_filter)
        if not len(allowed):
            return [], [], got
        pos = np.minimum(np.searchsorted(allowed, rows), len(allowed) - 1)
        ok &= allowed[pos] == rows
        ids = allowed_ids[pos]
    keep = np.flatnonzero(ok)[:budget]
    if not len(keep):
        return [], [], got
    vecs = ds._take_rows(rows[keep].tolist(), columns=[IMAGE_COLUMN]).column(IMAGE_COLUMN)
    mat = vecs.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(keep), -1)
    q = np.asarray(vector, np.float32)
    sims = (mat @ q) / np.maximum(np.linalg.norm(mat, axis=1) * np.linalg.norm(q), 1e-12)
    order = np.argsort(-sims, kind="stable")[:k]
    if ids is None:
        taken = ds._take_rows(rows[keep[order]].tolist(), columns=["media_id"])
        names = taken.column("media_id").to_pylist()
    else:
        names = [ids[keep[j]] for j in order]
    return names, [float(sims[j]) for j in order], got


def search(
    lake: Lake,
    vector: np.ndarray,
    k: int = 10,
    where: str | None = None,
    dataset: str | None = None,
    nprobes: int | None = 20,
    refine_factor: int | None = 70,
    kind: str | None = None,
    overfetch: int = 4,
    max_fetch: int = 2560,
    filtered_refine: int = 20,
) -> list[Hit]:
    """The samples using the ``k`` media nearest to ``vector`` (cosine), best first.

    ``kind`` (``image`` | ``frame``) prefilters ``media``. ``where`` / ``dataset`` filter
    ``samples``: the media those samples use (:func:`allowed_media`) are a share ``f``
    of ``media``, so the nearest ``k * overfetch / f`` media are fetched and post-filtered
    (``overfetch`` times more again, up to ``max_fetch``, until ``k`` of them are
    allowed); a filter too selective for that searches only the allowed media. With a
    filter, the exact re-ranking is ours, not Lance's: the nearest ``k * filtered_refine /
    f`` media by PQ distance are fetched and their ``k * filtered_refine`` allowed ones
    re-ranked by exact cosine (Lance's ``refine_factor`` would read the vectors of the
    filtered-away ones too; ``bench/vectors.py`` at 500k: ``dataset=c`` recall 0.92 -> 1.0),
    kept by row id (:func:`allowed_rows`); a ``kind`` alone re-ranks its ``k *
    filtered_refine`` prefiltered candidates the same way.
    Ranks count the media that matched, 1..k; each lists every matching sample using it.
    """
    sample_filter = _sample_filter(where, dataset)
    allowed = allowed_media(lake, sample_filter) if sample_filter else None
    if allowed is not None and not allowed:
        return []
    media_where = f"kind = {quote(kind)}" if kind else None
    budget = k * refine_factor if refine_factor else 0
    # unfiltered, Lance's own refine (one take inside the search) was measured faster
    rerank = k * filtered_refine if (allowed is not None or kind) and budget else 0
    fetch = rerank or k  # kind: a prefilter, every candidate allowed
    if allowed is not None:
        share = len(allowed) / max(1, session_dataset(lake, MEDIA).count_rows())
        want = k * max(overfetch, filtered_refine if refine_factor else 0)
        fetch = min(max_fetch, max(k, int(np.ceil(want / share))))
    while True:
        if rerank:
            media, scores, got = _reranked(
                lake, vector, k, fetch, media_where, nprobes, rerank, sample_filter
            )
            if allowed is None or len(media) >= k or got < fetch:
                break
        else:
            refine = max(1, -(-budget // fetch)) if budget else None  # ceil: >= k * refine_factor
            media, scores = _nearest(lake, vector, fetch, nprobes, refine, media_where)
            if allowed is None:
                break
            kept = [(m, sc) for m, sc in zip(media, scores, strict=True) if m in allowed]
            if len(kept) >= k or len(media) < fetch:
                media, scores = [m for m, _ in kept], [sc for _, sc in kept]
                break
        if fetch >= max_fetch:
            media, scores = _prefiltered(
                lake, vector, k, allowed, media_where, nprobes, refine_factor
            )
            break
        fetch = min(fetch * overfetch, max_fetch)
    media, scores = media[:k], scores[:k]
    by_media = _samples_using(lake, media, sample_filter)
    hits: list[Hit] = []
    rank = 0
    for m, score in zip(media, scores, strict=True):
        if sample_filter and m not in by_media:
            continue
        rank += 1
        for s in by_media.get(m, []):
            hits.append(
                Hit(rank, score, m, s["sample_id"], s["dataset"], s["caption"], s["label"],
                    s["source_uri"])
            )  # fmt: skip
    return hits


def _exact_top(lake: Lake, queries: np.ndarray, k: int, batch_rows: int = 65536) -> list[list[str]]:
    """Exact cosine top-``k`` media ids of each query, in one streamed pass over the vectors."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_id = np.empty((len(q), 0), object)
    scanner = lake.dataset(MEDIA).to_batches(
        columns=["media_id", IMAGE_COLUMN], filter=f"{IMAGE_COLUMN} IS NOT NULL",
        batch_size=batch_rows,
    )  # fmt: skip
    for batch in scanner:
        if batch.num_rows == 0:
            continue
        vecs = batch.column(IMAGE_COLUMN)
        x = vecs.values.to_numpy(zero_copy_only=False).reshape(len(vecs), -1)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        ids = np.asarray(batch.column("media_id").to_pylist(), object)
        sims = q @ x.T.astype(np.float32)
        top = np.argpartition(-sims, min(k, sims.shape[1]) - 1, axis=1)[:, :k]
        all_s = np.concatenate([best_s, np.take_along_axis(sims, top, axis=1)], axis=1)
        all_id = np.concatenate([best_id, ids[top]], axis=1)
        keep = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(all_s, keep, axis=1)
        best_id = np.take_along_axis(all_id, keep, axis=1)
    return [list(row) for row in best_id]


def index_recall(
    lake: Lake,
    queries: int = 100,
    k: int = 10,
    nprobes: int | None = 20,
    refine_factor: int | None = 50,
    seed: int = 0,
) -> float:
    """Recall@k of the indexed search against exact search, on a sample of stored vectors.

    Each query is a stored vector; its own row is left out of both answers (else every
    query would find itself). The exact answer comes from one streamed numpy pass over
    the vectors, the approximate one from the indexed search (a scanner built afresh for
    each query: a shared builder could carry the exact search's settings over). Use it
    to choose ``nprobes`` / ``refine_factor`` and the index parameters.
    """
    ds = lake.dataset(MEDIA)
    n = ds.count_rows()
    if n == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(n, size=min(n, 2 * queries), replace=False))
    rows = ds.take(picks, columns=["media_id", IMAGE_COLUMN]).to_pylist()
    rows = [r for r in rows if r[IMAGE_COLUMN] is not None][:queries]
    if not rows:
        return 1.0
    matrix = np.asarray([r[IMAGE_COLUMN] for r in rows], np.float32)
    truth = _exact_top(lake, matrix, k + 1)
    total = 0.0
    for row, vec, exact in zip(rows, matrix, truth, strict=True):
        want = [m for m in exact if m != row["media_id"]][:k]
        got, _ = _nearest(lake, vec, k + 1, nprobes, refine_factor, None)
        got = [m for m in got if m != row["media_id"]][:k]
        total += len(set(want) & set(got)) / max(1, len(want))
    return total / len(rows)


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


def query_header(owner: str, runs_dir: str | None) -> str:
    """Which model ranked the results and where its weights come from (a demo-trained,
    random-init tower says so: its scores are not a pretrained model's)."""
    weights = describe_owner(owner, runs_dir)
    return f"model: {owner}" + (f"\nweights: {weights}" if weights else "")


def run_query(cfg: Any, info: dict[str, Any] | None = None) -> list[Hit]:
    """Embed the configured query and search (the job without the printing); ``info``
    receives the lake's model id (``model``)."""
    if bool(cfg.text) == bool(cfg.image):
        raise ConfigError('give exactly one of text="..." or image=PATH')
    lake = Lake.from_config(cfg.lake)
    model = {k: v for k, v in dict(cfg.model).items() if v is not None}
    if cfg.text:
        kind, query = "text", str(cfg.text).encode()
    else:
        path = Path(cfg.image)
        if not path.is_file():
            raise ConfigError(f"query image not found: {path}")
        kind, query = "image", path.read_bytes()
    cache = VectorCache(cfg.get("vector_cache"))
    owner = lake_model(lake)
    if info is not None:
        info["model"] = owner
    # only a model checked against this owner id put vectors under it (below)
    vector = cache.get(owner, kind, query)
    if vector is None:
        embedder = load_embedder(lake, cfg.plugin, **model)
        embed = embedder.embed_texts if kind == "text" else embedder.embed_images
        vector = embed([str(cfg.text) if kind == "text" else query])[0]
        cache.put(owner, kind, query, vector)
    return search(
        lake, vector, int(cfg.k), cfg.where, cfg.dataset, cfg.nprobes, cfg.refine_factor,
        kind=cfg.get("kind"), overfetch=int(cfg.overfetch), max_fetch=int(cfg.max_fetch),
        filtered_refine=int(cfg.filtered_refine),
    )  # fmt: skip


@hydra_job("query")
def main(cfg: Any) -> int:
    """Hydra entry point: print the nearest samples (``json=true`` for JSON lines)."""
    info: dict[str, Any] = {}
    hits = run_query(cfg, info)
    if cfg.get("json"):
        for h in hits:
            sys.stdout.write(json.dumps(h.__dict__) + "\n")
    else:
        print(query_header(info["model"], cfg.model.get("runs_dir")))
        print(format_hits(hits))
    return 0


if __name__ == "__main__":
    main()
