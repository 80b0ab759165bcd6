"""The check runner: ``lakeloom check [check=default] [where=SQL] [dataset=NAME]``.

Runs the Check plugins of ``conf/check/<name>.yaml`` (a ``checks:`` map of name ->
``{_target_, thresholds...}``) over the selected samples and writes, per sample:

- ``flags``: the names of the checks that flag it. Each check replaces only its own
  name among the selected samples (flagged: added once; not flagged, or no longer
  scored: removed) and keeps every other check's flags;
- ``check_<name>_score`` (float32; null where the check did not score the sample) and,
  for checks that group samples (duplicates), ``check_<name>_group``;
- any plain sample columns a check declares in ``writes`` (caption mismatch:
  ``clip_score``).

All of a run's columns are written in one ``merge_insert`` commit. Checks flag, they never
delete. Two reports are written under ``lake.reports``: ``checks.json`` (counts,
thresholds, model ids per check: machine-readable, usable as DVC metrics) and
``checks.md`` (a table for people plus the worst examples of each check); duplicate
groups go to ``duplicates.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake.errors import ConfigError
from lake.job import RunContext, hydra_job, run_record
from lake.plugin import Check
from lake.schema import SAMPLES
from lake.sql import and_filters, filter_error, in_list, quote
from lake.store import Lake
from lake.weights_origin import describe_owner

log = logging.getLogger("lakeloom.check")


def scope(where: str | None = None, dataset: str | None = None) -> str | None:
    """SQL filter selecting the samples to check (``where`` can only narrow ``dataset``)."""
    return and_filters(f"dataset = {quote(dataset)}" if dataset else None, where)


def score_column(name: str) -> str:
    """Column holding check ``name``'s score."""
    return f"check_{name}_score"


def group_column(name: str) -> str:
    """Column holding check ``name``'s group id."""
    return f"check_{name}_group"


class LocalPasses:
    """Where a check runs its row-wise heavy pass (``check.passes``): here, in one call.

    A check calls :meth:`map_rows` with a picklable batch function; under
    ``executor=ray`` :class:`lake.ray_check.RayPasses` runs the same function as a Ray Data
    stage, so the results are the same.
    """

    def map_rows(
        self,
        lake: Lake,
        table: str,
        columns: list[str],
        key: str,
        ids: list[str],
        fn: Callable[[pa.Table], pa.Table],
        stage: str,
    ) -> pa.Table:
        """``fn`` over the rows of ``table`` (``columns``) whose ``key`` is in ``ids``."""
        rows = lake.dataset(table).to_table(
            columns=columns, filter=pc.field(key).isin(pa.array(ids, pa.string()))
        )
        return fn(rows)


def _grouped(check: Check, result: pa.Table) -> bool:
    return bool(getattr(check, "has_groups", False)) or result.column("group").null_count < len(
        result
    )


def run_checks(
    lake: Lake,
    checks: dict[str, Check],
    where: str | None = None,
    reports: str | Path | None = None,
    ctx: RunContext | None = None,
    worst: int = 10,
    runs_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``checks`` (name -> Check) on the samples selected by ``where``; write results.

    Returns the report (also written to ``reports``/checks.json and checks.md when
    ``reports`` is given). ``weights`` in it says, for each model a check used that a
    training run under ``runs_dir`` made, where its weights come from
    (:mod:`lake.weights_origin`): a random-init tower trained on the demo says so.
    """
    if not lake.exists(SAMPLES):
        raise ConfigError(f"lake {lake.uri} has no samples table: ingest something first")
    try:
        base = lake.dataset(SAMPLES).to_table(columns=["sample_id", "flags"], filter=where)
    except (ValueError, OSError) as exc:  # Lance reports a bad filter as either
        raise filter_error("check where filter", where, exc) from exc
    ids = base.column("sample_id").to_pylist()
    pos = {s: i for i, s in enumerate(ids)}
    flags = [list(f or []) for f in base.column("flags").to_pylist()]
    out: dict[str, pa.Array] = {}
    fields: list[pa.Field] = []
    summaries: dict[str, Any] = {}
    results: dict[str, pa.Table] = {}
    for name, check in checks.items():
        started = time.perf_counter()
        result, summary = check.run(lake, where)
        seconds = time.perf_counter() - started
        sids = result.column("sample_id").to_pylist()
        rows = np.asarray([pos.get(s, -1) for s in sids], dtype=np.int64)
        if (rows < 0).any():
            raise ConfigError(f"check {name} returned samples outside the selection")
        flagged = np.asarray(result.column("flagged").fill_null(False).to_pylist(), dtype=bool)
        hit = set(rows[flagged].tolist())
        for i, f in enumerate(flags):
            kept = [x for x in f if x != name]
            flags[i] = [*kept, name] if i in hit else kept
        score = np.full(len(ids), np.nan, dtype=np.float32)
        score[rows] = result.column("score").to_numpy(zero_copy_only=False)
        scored = np.zeros(len(ids), dtype=bool)
        scored[rows] = True
        out[score_column(name)] = pa.array(score, pa.float32(), mask=~scored)
        fields.append(pa.field(score_column(name), pa.float32()))
        if _grouped(check, result):
            group: list[str | None] = [None] * len(ids)
            for r, g in zip(rows, result.column("group").to_pylist(), strict=True):
                group[r] = g
            out[group_column(name)] = pa.array(group, pa.string())
            fields.append(pa.field(group_column(name), pa.string()))
        for col in getattr(check, "writes", ()):
            if col in result.column_names:
                typ = result.schema.field(col).type
                values: list[Any] = [None] * len(ids)
                for r, v in zip(rows, result.column(col).to_pylist(), strict=True):
                    values[r] = v
                out[col] = pa.array(values, typ)
                fields.append(pa.field(col, typ))
        summaries[name] = {
            "plugin": f"{type(check).__module__}.{type(check).__qualname__}",
            "version": getattr(check, "version", "?"),
            **summary,
            "flagged_frac": round(int(flagged.sum()) / max(len(result), 1), 4),
            "seconds": round(seconds, 2),
        }
        results[name] = result
        log.info("check %s: %d scored, %d flagged", name, len(result), int(flagged.sum()))
    if ids:
        lake.add_columns(SAMPLES, [f for f in fields if f.name not in ("clip_score",)])
        table = pa.table(
            {
                "sample_id": pa.array(ids, pa.string()),
                "flags": pa.array(flags, pa.list_(pa.string())),
                **out,
            }
        )
        lake.update_columns(SAMPLES, table)
    report = {
        "lake": lake.uri,
        "where": where,
        "run_id": ctx.run_id if ctx else None,
        "selected": len(ids),
        "checks": {
            n: {k: v for k, v in s.items() if k != "group_list"} for n, s in summaries.items()
        },
    }
    report["weights"] = model_weights(report, runs_dir)
    if reports is not None:
        write_reports(lake, Path(reports), report, summaries, results, worst)
    return report


def write_reports(
    lake: Lake,
    folder: Path,
    report: dict[str, Any],
    summaries: dict[str, Any],
    results: dict[str, pa.Table],
    worst: int = 10,
) -> None:
    """checks.json (metrics), checks.md (people) and duplicates.json (groups)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checks.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    groups = {n: s["group_list"] for n, s in summaries.items() if "group_list" in s}
    if groups:
        (folder / "duplicates.json").write_text(json.dumps(groups, indent=1) + "\n")
    (folder / "checks.md").write_text(markdown(lake, report, results, worst))


def model_weights(report: dict[str, Any], runs_dir: str | Path | None) -> dict[str, str]:
    """``{model id: weights line}`` for the models of the report's checks that say where
    their weights come from (a run's model, a random init)."""
    ids = {
        m for s in report["checks"].values() for v in (s.get("models") or {}).values() for m in v
    }
    found = {m: describe_owner(m, runs_dir) for m in sorted(ids)}
    return {m: line for m, line in found.items() if line}


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:120]


def markdown(lake: Lake, report: dict[str, Any], results: dict[str, pa.Table], worst: int) -> str:
    """The Markdown report: one row per check, then each check's worst examples."""
    lines = [
        "# Check report",
        "",
        f"Lake `{report['lake']}`, selection `{report['where'] or 'all samples'}`, "
        f"{report['selected']} samples, run `{report['run_id']}`.",
        "",
        "| check | version | scored | flagged | flagged % | thresholds | models |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for name, s in report["checks"].items():
        thresholds = ", ".join(f"{k}={v}" for k, v in s.get("thresholds", {}).items())
        models = "; ".join(
            f"{k}: {', '.join(v) or '-'}" for k, v in (s.get("models") or {}).items()
        )
        lines.append(
            f"| {name} | {s['version']} | {s.get('scored', 0)} | {s.get('flagged', 0)} | "
            f"{100 * s['flagged_frac']:.1f} | {_cell(thresholds)} | {_cell(models)} |"
        )
    if report.get("weights"):
        lines += ["", "Where the models' weights come from:", ""]
        lines += [f"- `{m}`: {line}" for m, line in report["weights"].items()]
    fell_back = [(n, why) for n, s in report["checks"].items() for why in s.get("fallbacks") or ()]
    if fell_back:
        lines += ["", "Fallbacks (a check could not run as configured):", ""]
        lines += [f"- **{name}**: {why}" for name, why in fell_back]
    for name, result in results.items():
        if not len(result):
            continue
        flagged = result.filter(pc.fill_null(result.column("flagged"), False))
        pool = flagged if len(flagged) else result
        order = pc.sort_indices(pool, sort_keys=[("score", "descending")])
        top = pool.take(order.slice(0, worst))
        info = _sample_info(lake, top.column("sample_id").to_pylist())
        lines += [
            "",
            f"## {name}: worst {len(top)}" + ("" if len(flagged) else " (none flagged)"),
            "",
            "| score | sample | label | caption | group | detail |",
            "|---:|---|---|---|---|---|",
        ]
        for row in top.to_pylist():
            meta = info.get(row["sample_id"], {})
            group = row["group"][:12] if row["group"] else ""
            lines.append(
                f"| {row['score']:.3f} | {_cell(meta.get('source_uri') or row['sample_id'][:12])}"
                f" | {_cell(meta.get('label'))} | {_cell(meta.get('caption'))} | {group} "
                f"| {_cell(row['detail'])} |"
            )
    return "\n".join(lines) + "\n"


def _sample_info(lake: Lake, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    where = f"sample_id IN {in_list(ids)}"
    rows = lake.dataset(SAMPLES).to_table(
        columns=["sample_id", "source_uri", "label", "caption"], filter=where
    )
    return {r["sample_id"]: r for r in rows.to_pylist()}


def build_checks(check_cfg: Any) -> dict[str, Check]:
    """Instantiate the ``checks:`` map of a ``conf/check/*.yaml`` config."""
    from hydra.utils import instantiate

    checks: dict[str, Check] = {}
    for name, node in (check_cfg.checks or {}).items():
        if node is None:  # `check.checks.outliers=null` switches one off
            continue
        obj = instantiate(node)
        if not isinstance(obj, Check):
            raise ConfigError(f"check {name}: {node.get('_target_')} is not a Check")
        checks[str(name)] = obj
    if not checks:
        raise ConfigError("no checks configured")
    return checks


def format_report(report: dict[str, Any]) -> str:
    """Short summary lines for the console."""
    lines = [f"checked {report['selected']} samples ({report['where'] or 'all'})"]
    for name, s in report["checks"].items():
        extra = f", {s['groups']} groups" if "groups" in s else ""
        lines.append(
            f"  {name:<18} {s.get('flagged', 0):>6} flagged of {s.get('scored', 0):>6}{extra}"
        )
        lines += [f"  {'':<18} fell back: {why}" for why in s.get("fallbacks") or ()]
    lines += [f"  model {m}: {line}" for m, line in (report.get("weights") or {}).items()]
    return "\n".join(lines)


@hydra_job("check")
def main(cfg: Any) -> int:
    """Hydra entry point: run the configured checks and write the reports."""
    ctx = RunContext.from_config("check", cfg)
    lake = Lake.from_config(cfg.lake)
    where = scope(cfg.get("where"), cfg.get("dataset"))
    checks = build_checks(cfg.check)
    with run_record(lake, ctx, {"check": cfg.check.name, "where": where}):
        args = (lake, checks, where, cfg.lake.reports, ctx, int(cfg.check.worst))
        if cfg.executor.name == "ray":
            from lake.ray_check import run_checks_ray

            report = run_checks_ray(*args, executor=cfg.executor, runs_dir=cfg.runs_dir)
        else:
            report = run_checks(*args, runs_dir=cfg.runs_dir)
        print(format_report(report))
        print(f"reports: {Path(cfg.lake.reports) / 'checks.md'}, checks.json")
        versions = lake.tag(ctx.run_id)
        counts = {
            n: {"scored": s.get("scored"), "flagged": s.get("flagged")}
            for n, s in report["checks"].items()
        }
        lake.record_run(ctx.record("finished", counts=counts, versions=versions))
    return 0


if __name__ == "__main__":
    main()
