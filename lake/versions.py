"""``lakeloom versions``: the versions of each table, with the runs that made them, and
the list of runs with their status (a run whose process died reads ``killed``).

Reading an earlier version from Python: ``Lake(uri).table("samples", version=3)`` or
``version="<run_id>"`` (every run tags the versions it produced with its run id).
"""

from __future__ import annotations

from typing import Any

from lake.errors import LakeNotFoundError
from lake.job import hydra_job
from lake.schema import MEDIA, RUNS, SAMPLES
from lake.store import Lake


def format_versions(lake: Lake, tables: list[str]) -> str:
    """One block per table: version, time (UTC), rows, tags (run ids)."""
    lines: list[str] = []
    for name in tables:
        if not lake.exists(name):
            continue
        lines += [f"{name}", f"  {'version':>7}  {'timestamp':<26}{'rows':>10}  tags"]
        for v in lake.versions(name):
            ts = v["timestamp"].isoformat(sep=" ", timespec="seconds")
            lines.append(f"  {v['version']:>7}  {ts:<26}{v['rows']:>10,}  {', '.join(v['tags'])}")
        lines.append("")
    if not lines:
        raise LakeNotFoundError(f"no tables in lake {lake.uri}")
    return "\n".join(lines)


def format_runs(lake: Lake) -> str:
    """One line per recorded run: id, job, status, start time (UTC); ``killed`` for a run
    left ``running`` by a process that is gone (see :mod:`lake.runs`)."""
    lines = ["runs", f"  {'run_id':<40}{'job':<10}{'status':<10}started"]
    for r in lake.runs():
        ts = r["started_at"].isoformat(sep=" ", timespec="seconds") if r["started_at"] else ""
        lines.append(f"  {r['run_id']:<40}{r['job'] or '':<10}{r['status'] or '':<10}{ts}")
    return "\n".join(lines) + "\n"


@hydra_job("versions", light=True)
def main(cfg: Any) -> int:
    """Print the version history, then the runs."""
    tables = [cfg.table] if cfg.table else [MEDIA, SAMPLES, RUNS]
    lake = Lake.from_config(cfg.lake)
    print(format_versions(lake, tables))
    if RUNS in tables and lake.exists(RUNS):
        print(format_runs(lake))
    return 0


if __name__ == "__main__":
    main()
