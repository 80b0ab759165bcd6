"""``lakeloom versions``: the versions of each table, with the runs that made them.

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


@hydra_job("versions")
def main(cfg: Any) -> int:
    """Print the version history."""
    tables = [cfg.table] if cfg.table else [MEDIA, SAMPLES, RUNS]
    print(format_versions(Lake(cfg.lake.uri), tables))
    return 0


if __name__ == "__main__":
    main()
