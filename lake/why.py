"""``lakeloom why ID``: why is this row here? The lineage of one sample or media row.

Prints what :func:`lake.lineage.lineage` finds (source file and line or time span,
content hash, processing steps with plugin versions and parameters, models, checks and
review decisions, split, runs, media / samples), as text or, with ``format=json``, as one
JSON object. An id that no row has exits with status 2. Read-only: records no run.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from lake.errors import ConfigError, UnknownIdError
from lake.job import JobResult, hydra_job
from lake.lineage import Tables, format_lineage, lineage
from lake.storage import storage_options

FORMATS = ("text", "json")


@hydra_job("why", light=True)
def _job(cfg: Any) -> int | JobResult:
    """Print the lineage of ``cfg.id``."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r}: use one of {', '.join(FORMATS)}")
    row_id = str(cfg.id).strip()
    if not row_id:
        raise ConfigError("id is empty: give a sample_id or media_id (lakeloom why ID)")
    tables = Tables(cfg.lake.uri, storage_options(cfg.lake), cold=True)
    try:
        info = lineage(
            tables,
            row_id,
            runs_dir=cfg.get("runs_dir"),
            max_samples=int(cfg.max_samples),
            verify=bool(cfg.verify),
        )
    except UnknownIdError as exc:
        print(f"lakeloom: {exc}", file=sys.stderr)
        return 2
    if cfg.format == "json":
        print(json.dumps(info, indent=1, default=str))
    else:
        print(format_lineage(info))
    return JobResult(0, info)


def as_overrides(args: list[str]) -> list[str]:
    """The first bare argument (no ``=``, not an option) becomes ``id='...'`` (quoted, so
    Hydra keeps an all-digit id a string)."""
    out, given = [], False
    for arg in args:
        if not given and "=" not in arg and not arg.startswith(("-", "+", "~")):
            out.append(f"id={json.dumps(arg)}")
            given = True
        else:
            out.append(arg)
    return out


def main() -> Any:
    """``lakeloom why ID [key=value ...]`` (or ``id=ID``)."""
    sys.argv = [sys.argv[0], *as_overrides(sys.argv[1:])]
    return _job()


if __name__ == "__main__":
    main()
