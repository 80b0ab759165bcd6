"""``lakeloom stats``: row counts per table, per dataset and per media kind.

``out=PATH`` also writes them as JSON with the versions of ``media`` and ``samples``: the
DVC pipeline's stages use that file as the mark of the lake state they produced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lake.errors import LakeNotFoundError
from lake.job import hydra_job
from lake.schema import MEDIA, RUNS, SAMPLES
from lake.store import Lake


def lake_stats(lake: Lake) -> dict[str, Any]:
    """Counts of every table, samples per dataset and media per kind."""
    return {
        "tables": {t: lake.count(t) for t in (MEDIA, SAMPLES, RUNS)},
        "datasets": dict(sorted(lake.value_counts(SAMPLES, "dataset").items())),
        "media_kinds": dict(sorted(lake.value_counts(MEDIA, "kind").items())),
    }


def format_stats(stats: dict[str, Any], uri: str) -> str:
    """Plain-text rendering of :func:`lake_stats`."""
    lines = [f"lake {uri}", "", f"{'table':<12}{'rows':>12}"]
    lines += [f"{t:<12}{n:>12,}" for t, n in stats["tables"].items()]
    if stats["datasets"]:
        lines += ["", f"{'dataset':<24}{'samples':>12}"]
        lines += [f"{d:<24}{n:>12,}" for d, n in stats["datasets"].items()]
    if stats["media_kinds"]:
        lines += ["", f"{'media kind':<24}{'rows':>12}"]
        lines += [f"{k:<24}{n:>12,}" for k, n in stats["media_kinds"].items()]
    return "\n".join(lines)


@hydra_job("stats", light=True)
def main(cfg: Any) -> int:
    """Print the lake's counts."""
    lake = Lake.from_config(cfg.lake)
    if not lake.present():
        raise LakeNotFoundError(f"no lake at {cfg.lake.uri}: ingest something first")
    stats = lake_stats(lake)
    print(format_stats(stats, cfg.lake.uri))
    if cfg.get("out"):
        versions = lake.current_versions()
        state = {
            "media": {"rows": stats["tables"][MEDIA], "version": versions.get(MEDIA)},
            "samples": {"rows": stats["tables"][SAMPLES], "version": versions.get(SAMPLES)},
            "datasets": stats["datasets"],
            "media_kinds": stats["media_kinds"],
        }
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    main()
