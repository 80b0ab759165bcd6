"""Recording review decisions on flagged samples as tags in ``samples.tags``.

The tag format (build, parse, "is confirmed") is :mod:`lake.review`'s; this module writes
the tags, one per check (a later decision replaces the earlier one).
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from lake.review import DECISIONS, decisions, parse_tag, review_tag
from lake.schema import SAMPLES
from lake.sql import in_list

__all__ = ["decide", "decisions"]


def _who(who: str | None) -> str:
    try:
        name = who or getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        name = "unknown"
    return name.replace(":", "_") or "unknown"


def decide(
    lake_uri: str | Path,
    sample_ids: list[str],
    check: str,
    decision: str,
    who: str | None = None,
    storage_options: dict[str, str] | None = None,
) -> int:
    """Record ``decision`` on ``check`` for the samples; return the rows written.

    One merge-insert on ``sample_id`` that sets only ``tags`` (every other column is kept);
    unknown ids are ignored.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    if not check or ":" in check:
        raise ValueError(f"bad check name {check!r}")
    ids = list(dict.fromkeys(sample_ids))
    if not ids:
        return 0
    from lake.store import Lake  # lancedb: a 3-7 s import, kept off the UI's start path

    lake = Lake(lake_uri, storage_options)
    where = f"sample_id IN {in_list(ids)}"
    rows = lake.dataset(SAMPLES).to_table(columns=["sample_id", "tags"], filter=where)
    if rows.num_rows == 0:
        return 0
    when = datetime.now(UTC).isoformat(timespec="seconds")
    tag = review_tag(check, decision, _who(who), when)
    tags = []
    for old in rows.column("tags").to_pylist():
        kept = [t for t in old or [] if (p := parse_tag(t)) is None or p[0] != check]
        tags.append([*kept, tag])
    # update_columns, not upsert: a full-row upsert would rewrite every column (media
    # vectors, messages) and lancedb rejects the null vectors of text-less samples
    update = pa.table(
        {"sample_id": rows.column("sample_id"), "tags": pa.array(tags, pa.list_(pa.string()))}
    )
    return lake.update_columns(SAMPLES, update)
