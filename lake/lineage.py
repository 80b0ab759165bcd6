"""Lineage of one row: "why is this row here?" (the one builder; ``lakeloom why`` and the
TUI's sample screen both show what :func:`lineage` returns).

For an id (a ``sample_id``, or a ``media_id`` of an image, video, audio or frame) it
gathers, reading only the needed columns of the matching rows with pylance (no lancedb):

- where the row came from: ``source_uri`` (``file#L12`` / ``file#12`` / ``file#t=1.5``),
  a frame's or clip's parent video and time span, its scene;
- its content hash (a ``media_id`` is the sha256 of the bytes; ``verify`` recomputes it);
- every processing step of its ``provenance`` with plugin, versions and parameters;
- the models that made its embeddings and scores (``*_model`` owner columns);
- its check scores, groups and flags, and the review decisions in its tags;
- its split, and the runs that touched it: the runs its provenance names (ingest,
  enrichers), the latest check / split / export runs whose scope selects it (their
  resolved config's ``where`` / ``dataset`` is evaluated against the row), and the
  training runs in ``runs_dir`` whose config reads this lake and selects it. A training
  run directory records no lake version, so that last list is a match on configuration
  (and on time: runs started before the row was written are left out), not a log of reads;
- a sample's media, and the samples using a media (``array_has_any(media_ids, ...)``).

Fast at scale: lookups by key use scalar indexes (:data:`INDEXES`), which
:func:`ensure_indexes` creates or extends at the end of ingest and in ``lakeloom
compact``; without them every lookup is a scan of one column (correct, slower).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from lake import review, runs
from lake.errors import LakeNotFoundError, UnknownIdError
from lake.schema import MEDIA, MEDIA_KEY, RUNS, SAMPLE_KEY, SAMPLES
from lake.sql import and_filters, in_list, quote
from lake.storage import guard_metadata_service, is_remote, join_uri

if TYPE_CHECKING:
    from lake.store import Lake

log = logging.getLogger("lakeloom.lineage")

# (table, column, Lance scalar index type): what the lookups here filter on
INDEXES: tuple[tuple[str, str, str], ...] = (
    (SAMPLES, SAMPLE_KEY, "BTREE"),
    (MEDIA, MEDIA_KEY, "BTREE"),
    (MEDIA, "parent_id", "BTREE"),
    (SAMPLES, "media_ids", "LABEL_LIST"),
)
# columns never read for lineage (large, or not about where a row came from)
_SKIP_SAMPLE = {"messages", "caption", "chosen", "rejected", "transcript", "clip_text"}
_SKIP_MEDIA = {"bytes", "blob", "thumb", "transcript", "clip_image"}
_FRAME_KINDS = ("frame",)


def index_name(column: str) -> str:
    """The name lakeloom gives the scalar index on ``column``."""
    return f"{column}_idx"


def ensure_indexes(lake: Lake) -> dict[str, str]:
    """Create the missing :data:`INDEXES` and add rows written since to existing ones.

    An index on the column under any name counts (the vector search adds some of its
    own). One commit per index that changed, under the lake's writer lock. Returns
    ``{"table.column": "created" | "updated"}`` for those that changed; an index Lance
    cannot build is logged and skipped (lookups then scan that column: slower, still right).
    """
    done: dict[str, str] = {}
    with lake.lock():
        for table, column, kind in INDEXES:
            if not lake.exists(table):
                continue
            ds = lake.dataset(table)
            if column not in ds.schema.names or ds.count_rows() == 0:
                continue
            have = [d.name for d in ds.describe_indices() if column in (d.field_names or [])]
            try:
                if not have:
                    ds.create_scalar_index(column, kind, name=index_name(column))
                    done[f"{table}.{column}"] = "created"
                elif ds.stats.index_stats(have[0]).get("num_unindexed_rows", 0):
                    ds.optimize.optimize_indices(index_names=have)
                    done[f"{table}.{column}"] = "updated"
            except (OSError, RuntimeError, ValueError) as exc:
                log.warning("no %s index on %s.%s: %s", kind, table, column, exc)
    return done


class Tables:
    """The pylance datasets lineage reads (``samples`` / ``media`` may be given pinned)."""

    def __init__(
        self,
        uri: str,
        storage_options: dict[str, str] | None = None,
        samples: Any = None,
        media: Any = None,
        cold: bool = False,
    ) -> None:
        self.uri = str(uri)
        guard_metadata_service(self.uri)  # it opens datasets itself, not through Lake
        # one lookup in a fresh process (``lakeloom why``): the samples that use a media
        # are found by scanning ``media_ids`` (~0.1 s at 1M samples) instead of loading
        # its LABEL_LIST index (0.6-0.9 s at 1M, then 1-2 ms a lookup)
        self.cold = cold
        self.storage_options = dict(storage_options or {})
        self.samples = samples if samples is not None else self.open(SAMPLES)
        self.media = media if media is not None else self.open(MEDIA)
        self._runs: Any = None

    def open(self, table: str) -> Any:
        """The pylance dataset of ``table`` at its latest version (None: no such table)."""
        import lance

        path = join_uri(self.uri, f"{table}.lance")
        if not is_remote(self.uri) and not Path(path).is_dir():
            return None
        try:
            return lance.dataset(path, storage_options=self.storage_options or None)
        except (ValueError, OSError) as exc:
            if is_remote(self.uri) and "not found" in str(exc).lower():
                return None
            raise

    @property
    def runs(self) -> Any:
        """The ``runs`` table's dataset (None when absent), opened on first use."""
        if self._runs is None:
            self._runs = self.open(RUNS) or False
        return self._runs or None


def _columns(ds: Any, skip: set[str]) -> list[str]:
    """The scalar columns of ``ds`` worth showing (no bytes, no vectors, no long texts)."""
    out = []
    for field in ds.schema:
        t = field.type
        if field.name in skip or pa.types.is_fixed_size_list(t) or _is_binary(t):
            continue
        out.append(field.name)
    return out


def _is_binary(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or isinstance(t, pa.ExtensionType)
        or (pa.types.is_struct(t) and "position" in [f.name for f in t])  # a blob column
    )


def _rows(
    ds: Any, columns: list[str], where: str, limit: int | None = None, index: bool = True
) -> list[dict]:
    if ds is None:
        return []
    return ds.to_table(
        columns=columns, filter=where, limit=limit, use_scalar_index=index
    ).to_pylist()


def _plain(value: Any) -> Any:
    """JSON-ready: datetimes as ISO text, step params parsed."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _provenance(prov: dict[str, Any] | None) -> dict[str, Any] | None:
    """The provenance struct with each step's ``params`` JSON parsed."""
    if not prov:
        return None
    out = dict(prov)
    steps = []
    for step in prov.get("steps") or []:
        params: Any = step.get("params")
        with contextlib.suppress(TypeError, ValueError):  # else shown as stored
            params = json.loads(params) if params else {}
        steps.append({"name": step.get("name"), "params": params})
    out["steps"] = steps
    return _plain(out)


def _run_ids(prov: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(run id, what it did) for each run a provenance names: the writer, then each step
    with a ``run_id`` param (enrichers)."""
    if not prov:
        return []
    out = [(prov.get("run_id"), "wrote the row")]
    for step in prov["steps"]:
        if isinstance(step["params"], dict):
            out.append((step["params"].get("run_id"), f"step {step['name']}"))
    return [(rid, what) for rid, what in out if rid]


def _models(row: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in row.items() if k.endswith("_model") and v}


def _checks(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Per check with a score column: score, group, flagged (checks only flag by name)."""
    flags = set(row.get("flags") or [])
    names = [k[6:-6] for k in row if k.startswith("check_") and k.endswith("_score")]
    names += [f for f in flags if f not in names]
    out = []
    for name in names:
        score = row.get(f"check_{name}_score")
        group = row.get(f"check_{name}_group")
        if score is None and group is None and name not in flags:
            continue  # the check never scored this row
        out.append({"check": name, "score": score, "group": group, "flagged": name in flags})
    return out


def _media_entry(row: dict[str, Any]) -> dict[str, Any]:
    prov = _provenance(row.get("provenance"))
    entry = {k: _plain(v) for k, v in row.items() if k != "provenance" and not k.endswith("_model")}
    entry["sha256"] = row[MEDIA_KEY]  # the key is the sha256 of the original bytes
    entry["provenance"] = prov
    entry["models"] = _models(row)
    return entry


def _verify(tables: Tables, media_id: str) -> bool | None:
    """Whether the stored bytes hash to ``media_id`` (None: no bytes stored)."""
    ds = tables.media
    rows = _rows(ds, ["bytes"], f"{MEDIA_KEY} = {quote(media_id)}", limit=1)
    data = rows[0]["bytes"] if rows else None
    if data is None and "blob" in ds.schema.names:
        found = ds.to_table(columns=[MEDIA_KEY], with_row_id=True,
                            filter=f"{MEDIA_KEY} = {quote(media_id)}")  # fmt: skip
        if found.num_rows:
            blob = ds.take_blobs("blob", ids=[found.column("_rowid")[0].as_py()])[0]
            data = blob.read() if blob is not None else None
    if not data:
        return None
    return hashlib.sha256(data).hexdigest() == media_id


def lineage(
    tables: Tables,
    row_id: str,
    runs_dir: str | os.PathLike[str] | None = None,
    max_samples: int = 20,
    verify: bool = False,
) -> dict[str, Any]:
    """Everything known about why row ``row_id`` (a sample or media id) is in the lake.

    Raises :class:`UnknownIdError` when neither table has the id. ``max_samples`` bounds
    the samples listed for a media (their total is counted); ``verify`` re-hashes the
    stored bytes of the media.
    """
    if tables.samples is None and tables.media is None:
        raise LakeNotFoundError(f"no lake at {tables.uri}: ingest something first")
    row_id = row_id.strip()
    out: dict[str, Any] = {"id": row_id, "lake": tables.uri}
    sample = None
    if tables.samples is not None:
        found = _rows(
            tables.samples,
            _columns(tables.samples, _SKIP_SAMPLE),
            f"{SAMPLE_KEY} = {quote(row_id)}",
            limit=1,
        )
        sample = found[0] if found else None
    media_cols = _columns(tables.media, _SKIP_MEDIA) if tables.media is not None else []
    if sample is not None:
        out["kind"] = "sample"
        prov = _provenance(sample.pop("provenance", None))
        models = _models(sample)
        entry = {k: _plain(v) for k, v in sample.items() if not k.endswith("_model")}
        entry["review"] = [
            {"check": c, "decision": d, "who": w, "when": t}
            for c, (d, w, t) in review.decisions(sample.get("tags")).items()
        ]
        out["sample"] = {**entry, "provenance": prov, "models": models}
        out["checks"] = _checks(sample)
        ids = list(dict.fromkeys(sample.get("media_ids") or []))
        rows = _rows(tables.media, media_cols, f"{MEDIA_KEY} IN {in_list(ids)}") if ids else []
        by_id = {r[MEDIA_KEY]: r for r in rows}
        out["media"] = [_media_entry(by_id[m]) for m in ids if m in by_id]
        out["missing_media"] = [m for m in ids if m not in by_id]
        target, target_key = tables.samples, SAMPLE_KEY
        created = (prov or {}).get("created_at")
        provs = [prov, *(m["provenance"] for m in out["media"])]
    else:
        found = (
            _rows(tables.media, media_cols, f"{MEDIA_KEY} = {quote(row_id)}", limit=1)
            if tables.media is not None
            else []
        )
        if not found:
            raise UnknownIdError(row_id, tables.uri)
        media = _media_entry(found[0])
        out["kind"] = "media"
        out["media"] = [media]
        using = f"array_has_any(media_ids, [{quote(row_id)}])"
        samples = _rows(
            tables.samples,
            [SAMPLE_KEY, "dataset", "split", "source_uri", "flags"],
            using,
            limit=max_samples,
            index=not tables.cold,
        )
        out["samples"] = samples
        out["samples_total"] = (
            len(samples)
            if len(samples) < max_samples
            else tables.samples.scanner(
                columns=[], with_row_id=True, filter=using, use_scalar_index=not tables.cold
            ).count_rows()
        )
        if media.get("parent_id"):
            parent = _rows(
                tables.media, media_cols, f"{MEDIA_KEY} = {quote(media['parent_id'])}", limit=1
            )
            out["parent"] = _media_entry(parent[0]) if parent else None
        if media.get("kind") == "video":
            out["children"] = tables.media.count_rows(filter=f"parent_id = {quote(row_id)}")
        if verify:
            media["verified"] = _verify(tables, row_id)
        target, target_key = tables.media, MEDIA_KEY
        created = (media["provenance"] or {}).get("created_at")
        provs = [media["provenance"]]
    out["runs"] = _runs_of(tables, provs, target, target_key, row_id, out)
    out["training"] = _training_runs(tables, runs_dir, out, created)
    return out


def _config(text: str | None) -> dict[str, Any]:
    import yaml

    try:
        cfg = yaml.safe_load(text or "") or {}
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _selects(ds: Any, key: str, row_id: str, where: str | None) -> bool | None:
    """Whether filter ``where`` selects the row (None: the filter no longer parses)."""
    if not where:
        return True
    try:
        return ds.count_rows(filter=and_filters(f"{key} = {quote(row_id)}", where)) > 0
    except (ValueError, OSError):
        return None


def _runs_of(
    tables: Tables,
    provs: Iterable[dict[str, Any] | None],
    target: Any,
    key: str,
    row_id: str,
    out: dict[str, Any],
) -> list[dict[str, Any]]:
    """The lake runs that wrote the row (or its media), and the latest check / split /
    export runs whose scope selects it (a sample only)."""
    ds = tables.runs
    if ds is None:
        return []
    cols = ["run_id", "job", "status", "started_at", "finished_at", "pid", "host", "pid_start"]
    have = set(ds.schema.names)
    named: dict[str, str] = {}
    for i, prov in enumerate(provs):
        for rid, what in _run_ids(prov):
            named.setdefault(rid, what + (" (media)" if i > 0 else ""))
    found = {}
    if named:
        rows = _rows(ds, [c for c in cols if c in have], f"run_id IN {in_list(named)}")
        found = {r["run_id"]: r for r in rows}
    result = [_run_entry(found.get(rid, {"run_id": rid}), why) for rid, why in named.items()]
    if out["kind"] != "sample":
        return result
    # jobs that select samples by scope and record no per-row trace: newest first, the
    # first whose scope (from its resolved config) selects this sample
    scoped = _rows(
        ds,
        [c for c in [*cols, "config_yaml", "counts"] if c in have],
        f"job IN {in_list(['check', 'split', 'export'])} AND status = {quote(runs.FINISHED)}",
    )
    scoped.sort(key=lambda r: r.get("started_at") or datetime.min, reverse=True)
    checks = {c["check"] for c in out.get("checks") or []}
    seen: set[str] = set()
    for r in scoped:
        cfg = _config(r.get("config_yaml"))
        if r["job"] == "check":
            counts = json.loads(r.get("counts") or "{}")
            todo = [c for c in counts if c in checks and f"check:{c}" not in seen]
            what = [f"check:{c}" for c in todo]
        elif r["job"] == "split":
            what = ["split"] if "split" not in seen and out["sample"].get("split") else []
        else:
            what = ["export"] if "export" not in seen else []
            if cfg.get("split") and cfg.get("split") != out["sample"].get("split"):
                what = []
        if not what:
            continue
        dataset = cfg.get("dataset")
        where = and_filters(f"dataset = {quote(dataset)}" if dataset else None, cfg.get("where"))
        if not _selects(target, key, row_id, where):
            continue
        seen.update(what)
        label = {
            "check": "latest run of " + ", ".join(w[6:] for w in what),
            "split": "latest split run selecting it: set its split",
            "export": f"latest export selecting it ({cfg.get('out') or '?'})",
        }[r["job"]]
        result.append(_run_entry(r, label))
    return result


def _run_entry(r: dict[str, Any], why: str) -> dict[str, Any]:
    known = "job" in r
    return {
        "run_id": r["run_id"],
        "job": r.get("job"),
        "status": runs.effective_status(r) if known else "not in runs table",
        "started_at": _plain(r.get("started_at")),
        "why": why,
    }


def _same_lake(a: str, b: str) -> bool:
    if is_remote(a) or is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _training_runs(
    tables: Tables,
    runs_dir: str | os.PathLike[str] | None,
    out: dict[str, Any],
    created: str | None,
) -> list[dict[str, Any]]:
    """Training runs whose config reads this lake, selects the sample (its datasets and
    ``where``) and that started after the row was written (samples only)."""
    if out["kind"] != "sample" or not runs_dir or not Path(runs_dir).is_dir():
        return []
    sample = out["sample"]
    found = []
    for run in runs.run_dirs(runs_dir):
        try:
            cfg = _config(run.config.read_text())
        except OSError:
            continue
        data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
        lake_cfg = cfg.get("lake") if isinstance(cfg.get("lake"), dict) else {}
        uri = data.get("lake_uri") or lake_cfg.get("uri")
        if not uri or not _same_lake(str(uri), tables.uri):
            continue
        datasets = data.get("datasets")
        if datasets and sample.get("dataset") not in datasets:
            continue
        started = datetime.fromtimestamp(run.config.stat().st_mtime).astimezone()
        if created and started < datetime.fromisoformat(created):
            continue  # the run was configured before this row existed
        if not _selects(tables.samples, SAMPLE_KEY, sample[SAMPLE_KEY], data.get("where")):
            continue
        found.append(
            {
                "run_id": run.run_id,
                "experiment": cfg.get("experiment_name") or cfg.get("name"),
                "split": sample.get("split") or "by hash of sample_id",
                "started_at": started.isoformat(timespec="seconds"),
            }
        )
    return found


# -- text ----------------------------------------------------------------------------------
def _params(params: Any) -> str:
    if isinstance(params, dict):
        return json.dumps(params, sort_keys=True) if params else ""
    return str(params or "")


def _prov_lines(prov: dict[str, Any] | None, indent: str) -> list[str]:
    if not prov:
        return [f"{indent}provenance: none recorded"]
    when = str(prov.get("created_at") or "")[:19].replace("T", " ")
    lines = [
        f"{indent}written by {prov.get('plugin')} {prov.get('plugin_version')} "
        f"(lakeloom {prov.get('lakeloom_version')}, config {prov.get('config_hash')}) "
        f"run {prov.get('run_id')} at {when}"
    ]
    for i, step in enumerate(prov.get("steps") or [], 1):
        lines.append(f"{indent}  {i}. {step['name']} {_params(step['params'])}".rstrip())
    return lines


def _where(row: dict[str, Any]) -> str:
    parts = [str(row.get("source_uri") or "no source_uri")]
    if row.get("parent_id"):
        span = row.get("t_start")
        if row.get("t_end") is not None and row.get("t_end") != span:
            span = f"{row.get('t_start')}-{row.get('t_end')}s"
        elif span is not None:
            span = f"{span}s"
        parts.append(f"of video {row['parent_id'][:16]} at {span}")
    if row.get("scene") is not None:
        parts.append(f"scene {row['scene']}")
    return ", ".join(parts)


def format_lineage(info: dict[str, Any]) -> str:
    """Readable text of :func:`lineage`'s result."""
    lines: list[str] = []
    if info["kind"] == "sample":
        s = info["sample"]
        lines.append(f"sample {s[SAMPLE_KEY]}")
        lines.append(f"  dataset {s.get('dataset')}  split {s.get('split') or '-'}  "
                     f"label {s.get('label') or '-'}")  # fmt: skip
        source = str(s.get("source_uri") or "no source_uri")
        if s.get("record_id"):
            source += f"  (record id {s['record_id']})"
        if s.get("t_start") is not None:
            source += f"  clip {s['t_start']}-{s.get('t_end')}s"
        lines.append(f"  source  {source}")
        lines += _prov_lines(s.get("provenance"), "  ")
        for col, owner in (s.get("models") or {}).items():
            lines.append(f"  model   {col} = {owner}")
        if s.get("clip_score") is not None:
            lines.append(f"  score   clip_score {s['clip_score']:.4f}")
        lines.append("checks")
        for c in info.get("checks") or []:
            score = "-" if c["score"] is None else f"{c['score']:.4f}"
            group = f"  group {c['group']}" if c["group"] else ""
            flag = "FLAGGED" if c["flagged"] else "not flagged"
            lines.append(f"  {c['check']:<22} {flag:<12} score {score}{group}")
        if not info.get("checks"):
            lines.append("  none ran on it")
        for r in s.get("review") or []:
            lines.append(f"  review  {r['check']}: {r['decision']} by {r['who']} at {r['when']}")
        others = [t for t in s.get("tags") or [] if not t.startswith(review.PREFIX + ":")]
        if others:
            lines.append(f"  tags    {', '.join(others)}")
        lines.append(f"media ({len(info['media'])})")
    else:
        lines.append(f"{info['media'][0].get('kind')} {info['id']}")
    for m in info["media"]:
        size = f"{m.get('width')}x{m.get('height')}" if m.get("width") else ""
        dur = f"{m['duration_s']:.2f}s" if m.get("duration_s") else ""
        head = "  ".join(x for x in (m.get("kind"), m.get("mime"), size, dur) if x)
        lines.append(f"  {m[MEDIA_KEY]}  {head}")
        verified = m.get("verified")
        note = {True: "verified", False: "MISMATCH with the stored bytes", None: ""}[verified]
        lines.append(f"    content sha256 {m['sha256']} {note}".rstrip())
        lines.append(f"    source  {_where(m)}")
        lines += _prov_lines(m.get("provenance"), "    ")
        for col, owner in (m.get("models") or {}).items():
            lines.append(f"    model   {col} = {owner}")
    for m in info.get("missing_media") or []:
        lines.append(f"  {m}  MISSING from the media table")
    if info.get("parent"):
        p = info["parent"]
        lines.append(f"parent video {p[MEDIA_KEY]}  source {_where(p)}")
    if info.get("children") is not None:
        lines.append(f"frames and tracks from this video: {info['children']}")
    if info["kind"] == "media":
        lines.append(f"samples using it ({info['samples_total']})")
        for s in info["samples"]:
            flags = f"  flags {', '.join(s['flags'])}" if s.get("flags") else ""
            lines.append(f"  {s[SAMPLE_KEY]}  {s.get('dataset')}  split {s.get('split') or '-'}  "
                         f"{s.get('source_uri') or ''}{flags}")  # fmt: skip
        if info["samples_total"] > len(info["samples"]):
            lines.append(f"  ... and {info['samples_total'] - len(info['samples'])} more")
    lines.append("runs")
    for r in info.get("runs") or []:
        when = str(r.get("started_at") or "")[:19].replace("T", " ")
        lines.append(f"  {r['run_id']:<34} {r.get('job') or '?':<7} {r['status']:<10} "
                     f"{when:<19}  {r['why']}")  # fmt: skip
    if not info.get("runs"):
        lines.append("  none recorded")
    if info["kind"] == "sample":
        lines.append("training runs configured to read it (run dirs record no lake version)")
        for t in info.get("training") or []:
            lines.append(f"  {t['run_id']}  split {t['split']}  started {t['started_at']}")
        if not info.get("training"):
            lines.append("  none found")
    return "\n".join(lines)
