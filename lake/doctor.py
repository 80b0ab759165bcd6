"""``lakeloom doctor``: find and repair duplicate keys in the lake's tables.

A lake written by lakeloom before the writer lock (:mod:`lake.lock`) may hold several
rows with one key (two ingests at once both inserted it); ``split`` and ``enrich`` then
fail with Lance's "Ambiguous merge inserts are prohibited". The doctor reports every
duplicated key per table and, unless ``doctor.dry_run=true``, keeps one row per key and
deletes the others in one commit per table.

Which row is kept, in order:

1. the most complete one: the most non-null columns (an enriched or checked copy beats a
   bare one, so no embedding, flag or split is lost);
2. then the newest: the latest ``provenance.created_at`` (``finished_at``, then
   ``started_at``, for ``runs``);
3. then the one written last (the highest Lance row address).

Exit status: 0 when the lake is clean or was repaired; 1 in dry-run when duplicates were
found (so a CI step can fail on them).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lake.errors import LakeNotFoundError
from lake.job import RunContext, hydra_job, run_record
from lake.schema import KEYS, MEDIA, RUNS, SAMPLES
from lake.sql import in_list
from lake.store import Lake, is_blob

# keys per `IN (...)` filter when reading the duplicated rows
_CHUNK = 1000


def duplicate_keys(lake: Lake, name: str) -> dict[str, int]:
    """Keys of table ``name`` held by more than one row -> how many rows hold each."""
    if not lake.exists(name):
        return {}
    key = KEYS[name]
    keys = lake.dataset(name).to_table(columns=[key])
    counts = keys.group_by(key).aggregate([(key, "count")])
    dup = counts.filter(pc.greater(counts.column(f"{key}_count"), 1))
    return dict(
        zip(dup.column(key).to_pylist(), dup.column(f"{key}_count").to_pylist(), strict=True)
    )


def _newest(rows: pa.Table, name: str) -> list[Any]:
    """Per row, the timestamp that makes it newer (None where there is none)."""
    if name == RUNS:
        done = rows.column("finished_at").to_pylist()
        started = rows.column("started_at").to_pylist()
        return [d if d is not None else s for d, s in zip(done, started, strict=True)]
    if "provenance" not in rows.column_names:
        return [None] * rows.num_rows
    return pc.struct_field(rows.column("provenance"), "created_at").to_pylist()


def _losers(lake: Lake, name: str, keys: list[str]) -> list[int]:
    """Row addresses of every row that is not its key's keeper (rule: module docstring)."""
    ds = lake.dataset(name)
    key = KEYS[name]
    columns = [f.name for f in ds.schema if not is_blob(f)]
    losers: list[int] = []
    for start in range(0, len(keys), _CHUNK):
        part = keys[start : start + _CHUNK]
        rows = ds.to_table(
            columns=columns, filter=f"{key} IN {in_list(part)}", with_row_address=True
        )
        filled = [0] * rows.num_rows
        for col in columns:
            valid = pc.is_valid(rows.column(col)).to_pylist()
            filled = [f + int(v) for f, v in zip(filled, valid, strict=True)]
        newest = _newest(rows, name)
        best: dict[str, tuple[Any, int]] = {}
        for k, n, t, addr in zip(
            rows.column(key).to_pylist(),
            filled,
            newest,
            rows.column("_rowaddr").to_pylist(),
            strict=True,
        ):
            # None sorts before any timestamp: (has a time, the time)
            rank = (n, t is not None, t if t is not None else 0, addr)
            if k not in best or rank > best[k][0]:
                if k in best:
                    losers.append(best[k][1])
                best[k] = (rank, addr)
            else:
                losers.append(addr)
    return losers


def doctor(
    lake: Lake, tables: list[str] | None = None, dry_run: bool = False
) -> dict[str, dict[str, Any]]:
    """Find (and unless ``dry_run``, repair) duplicate keys; return a report per table.

    Each table's check and repair hold the writer lock, so the row addresses chosen are
    still the rows deleted, and no other writer adds a duplicate in between. A dry run
    only reads (it leaves even the lock file alone).
    """
    report: dict[str, dict[str, Any]] = {}
    for name in tables or [MEDIA, SAMPLES, RUNS]:
        if not lake.exists(name):
            continue
        with contextlib.nullcontext() if dry_run else lake.lock():
            dup = duplicate_keys(lake, name)
            extra = sum(dup.values()) - len(dup)
            entry: dict[str, Any] = {
                "rows": lake.count(name),
                "duplicate_keys": len(dup),
                "extra_rows": extra,
                "examples": sorted(dup)[:5],
                "deleted": 0,
            }
            if dup and not dry_run:
                losers = _losers(lake, name, sorted(dup))
                ids = ", ".join(str(a) for a in sorted(losers))
                entry["deleted"] = lake.delete(name, f"_rowaddr IN ({ids})")
        report[name] = entry
    return report


def format_report(report: dict[str, dict[str, Any]], dry_run: bool) -> str:
    """The report for people, one line per table."""
    lines = []
    for name, e in report.items():
        if not e["duplicate_keys"]:
            lines.append(f"{name}: {e['rows']} rows, every {KEYS[name]} unique")
            continue
        action = "would delete" if dry_run else "deleted"
        count = e["extra_rows"] if dry_run else e["deleted"]
        lines.append(
            f"{name}: {e['duplicate_keys']} {KEYS[name]} values held by several rows "
            f"({e['extra_rows']} extra rows, e.g. {', '.join(e['examples'][:3])}); "
            f"{action} {count} rows, keeping the most complete, newest row of each key"
        )
    return "\n".join(lines) or "no tables"


@hydra_job("doctor")
def main(cfg: Any) -> int:
    """Hydra entry point: report duplicate keys and repair them unless dry-run."""
    d = cfg.doctor
    dry_run = bool(d.dry_run)
    lake = Lake.from_config(cfg.lake)
    if not lake.present():  # nothing to examine: a mistyped path, not a healthy lake
        raise LakeNotFoundError(f"no lake at {cfg.lake.uri}")
    ctx = RunContext.from_config("doctor", cfg)
    if dry_run:
        return _doctor_and_report(cfg, lake, ctx, dry_run)
    # no `running` row: it would be written before the runs table is repaired; a failed
    # repair is recorded as such
    with run_record(lake, ctx, {"tables": list(d.tables)}, announce=False):
        return _doctor_and_report(cfg, lake, ctx, dry_run)


def _doctor_and_report(cfg: Any, lake: Lake, ctx: RunContext, dry_run: bool) -> int:
    """Run the doctor, print and write the report, record a repair; the exit status."""
    report = doctor(lake, list(cfg.doctor.tables), dry_run=dry_run)
    print(format_report(report, dry_run))
    out = Path(cfg.lake.reports)
    out.mkdir(parents=True, exist_ok=True)
    (out / "doctor.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    found = any(e["duplicate_keys"] for e in report.values())
    if dry_run:
        return 1 if found else 0
    if found:
        counts = {n: e["deleted"] for n, e in report.items()}
        lake.record_run(ctx.record("finished", counts=counts, versions=lake.tag(ctx.run_id)))
    return 0


if __name__ == "__main__":
    main()
