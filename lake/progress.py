"""Progress of the distributed jobs (``executor=ray``), kept in the lake's ``progress`` table.

One owner for writing and reading the rows of :data:`lake.schema.PROGRESS_SCHEMA`; the Ray
runners (enrich, ingest, checks) write through :func:`record_stage` / :func:`record_unit`,
monitors (``lakeloom jobs``, the TUI) read through :func:`stages` / :func:`units`.

A **backfill** (:func:`backfill_id`) names a piece of work independently of the run that
does it (for an enricher: table, plugin, plugin version, owner/model, scope, reembed), so a
run resumed after a kill finds what an earlier run of the same work finished.

Rows: one **stage row** per backfill (``unit == ""``; ``total`` = rows planned, ``rows`` =
rows done so far, the latest run's id) and one **unit row** per unit of work (``unit`` =
``fragment:<id>`` for an enricher, ``shard:<n>`` for ingest; ``rows`` = rows it produced).

Status words, for a stage row:

- ``running``: a run is working on it (or was killed while it was: compare ``updated_at``
  and the run's record in ``runs``, see :mod:`lake.runs`);
- ``committed``: every unit's output is in the table, in one commit; the work is finished;
- ``failed``: the run stopped with an error (``error`` says why); a re-run resumes it.

and for a unit row:

- ``done``: the unit's output is computed and staged durably next to the lake, but not yet
  in the table (it lands with the stage's single commit); a resumed run skips it;
- ``failed``: the unit failed after its retries (``attempts``, ``error``);
- ``committed``: its output is in the table (set with the stage's commit).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from lake.schema import PROGRESS, PROGRESS_SCHEMA
from lake.sql import quote

RUNNING = "running"
DONE = "done"
FAILED = "failed"
COMMITTED = "committed"
STAGE_UNIT = ""  # the unit of a stage row


def backfill_id(**parts: object) -> str:
    """A stable id for a piece of work from what defines it (table, plugin, version, ...)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def progress_id(backfill: str, unit: str) -> str:
    """The key of a progress row."""
    return f"{backfill}/{unit}"


def fragment_unit(fragment_id: int) -> str:
    """The unit name of one fragment of a table."""
    return f"fragment:{fragment_id}"


def unit_fragment(unit: str) -> int:
    """The fragment id of a ``fragment:<id>`` unit."""
    return int(unit.split(":", 1)[1])


def write(lake: Any, rows: list[dict[str, Any]]) -> None:
    """Upsert progress rows (missing fields are null; ``updated_at`` is set to now)."""
    if not rows:
        return
    now = datetime.now(UTC)
    table = []
    for r in rows:
        row = {f.name: r.get(f.name) for f in PROGRESS_SCHEMA}
        row["progress_id"] = progress_id(row["backfill"], row["unit"])
        row["updated_at"] = now
        table.append(row)
    lake.upsert(PROGRESS, pa.Table.from_pylist(table, schema=PROGRESS_SCHEMA))


def record_stage(
    lake: Any,
    backfill: str,
    run_id: str,
    job: str,
    stage: str,
    status: str,
    rows: int,
    total: int,
    seconds: float = 0.0,
    error: str | None = None,
) -> None:
    """Write the stage row of a backfill (rows done so far of ``total`` planned)."""
    write(
        lake,
        [
            {
                "backfill": backfill,
                "run_id": run_id,
                "job": job,
                "stage": stage,
                "unit": STAGE_UNIT,
                "status": status,
                "rows": rows,
                "total": total,
                "seconds": seconds,
                "error": error,
            }
        ],
    )


def record_units(
    lake: Any, backfill: str, run_id: str, job: str, stage: str, units: list[dict[str, Any]]
) -> None:
    """Write unit rows in one commit; each dict has ``unit``, ``status`` and any of
    ``rows``, ``node``, ``attempts``, ``seconds``, ``error``."""
    base = {"backfill": backfill, "run_id": run_id, "job": job, "stage": stage}
    write(lake, [{**base, **u} for u in units])


def _read(lake: Any, where: str | None = None) -> list[dict[str, Any]]:
    if not lake.exists(PROGRESS):
        return []
    return lake.dataset(PROGRESS).to_table(filter=where).to_pylist()


def stages(lake: Any) -> list[dict[str, Any]]:
    """Every stage row (one per backfill), newest first."""
    rows = _read(lake, f"unit = {quote(STAGE_UNIT)}")
    return sorted(rows, key=lambda r: r["updated_at"], reverse=True)


def run_rows(lake: Any, run_id: str | None = None) -> list[dict[str, Any]]:
    """Every row (stage and unit rows) that run ``run_id`` wrote last, or every row."""
    return _read(lake, None if run_id is None else f"run_id = {quote(run_id)}")


def stage(lake: Any, backfill: str) -> dict[str, Any] | None:
    """The stage row of one backfill, or None."""
    rows = _read(lake, f"progress_id = {quote(progress_id(backfill, STAGE_UNIT))}")
    return rows[0] if rows else None


def units(lake: Any, backfill: str) -> list[dict[str, Any]]:
    """The unit rows of one backfill, in unit order."""
    rows = _read(lake, f"backfill = {quote(backfill)} AND unit != {quote(STAGE_UNIT)}")
    return sorted(rows, key=lambda r: r["unit"])


def forget_units(lake: Any, backfill: str) -> int:
    """Delete the unit rows of a backfill (a committed one starting over); return how many."""
    if not lake.exists(PROGRESS):
        return 0
    return lake.delete(PROGRESS, f"backfill = {quote(backfill)} AND unit != {quote(STAGE_UNIT)}")
