"""``python -m core.compare_runs RUN_DIR RUN_DIR ...``: VLM runs side by side.

For each split (``val``, ``test``) a table of exact match and token F1 per run, read from
the runs' ``summary.json`` (the last validation and the test figures), then, per split, the
answers each run generated for the same samples next to their reference (from the runs'
``generations`` events). A ``weights`` line per run says how it was made
(:mod:`lake.weights_origin`, e.g. a random-init vision tower trained only on the demo): such
figures are the demo's, not a pretrained model's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lake.errors import ConfigError
from lake.runs import EV_GENERATIONS, RunDir, read_events
from lake.weights_origin import describe, run_weights

SPLITS = ("val", "test")
METRICS = ("exact_match", "token_f1")


def split_figures(summary: dict[str, Any], split: str) -> dict[str, float | None]:
    """``{exact_match, token_f1}`` of ``split`` in a run summary (None when absent)."""
    block = summary.get("last_val" if split == "val" else "test") or {}
    return {m: block.get(f"{split}/{m}") for m in METRICS}


def generations(run_dir: Path, split: str) -> list[dict[str, Any]]:
    """The samples of the run's last ``generations`` event of ``split``."""
    events = read_events(RunDir(run_dir).events)
    gens = [e for e in events if e["type"] == EV_GENERATIONS and e.get("split") == split]
    return list(gens[-1]["samples"]) if gens else []


def compare(run_dirs: list[Path], samples: int = 3) -> str:
    """The side-by-side text (see the module docstring)."""
    summaries = {}
    for run in run_dirs:
        path = RunDir(run).summary
        if not path.is_file():
            raise ConfigError(f"{path}: no summary (has the run finished?)")
        summaries[run] = json.loads(path.read_text())
    width = max(len("reference"), *(len(r.name) for r in run_dirs)) + 2
    lines = []
    for split in SPLITS:
        lines.append(f"{split:<6}{'run':<{width}}{'exact match':>12}{'token F1':>10}")
        for run in run_dirs:
            fig = split_figures(summaries[run], split)
            cells = "".join(
                f"{'-' if fig[m] is None else format(fig[m], '.3f'):>{w}}"
                for m, w in zip(METRICS, (12, 10), strict=True)
            )
            lines.append(f"{'':<6}{run.name:<{width}}{cells}")
    lines.append("weights:")
    for run in run_dirs:
        lines.append(f"  {run.name:<{width}}{describe(run_weights(run))}")
    for split in SPLITS:
        per_run = {run: {g["sample_id"]: g for g in generations(run, split)} for run in run_dirs}
        shared = [sid for sid in per_run[run_dirs[0]] if all(sid in p for p in per_run.values())]
        if not shared:
            continue
        lines.append(f"{split} answers (same samples):")
        for sid in shared[:samples]:
            lines.append(f"  {'reference':<{width}}{per_run[run_dirs[0]][sid]['reference']}")
            for run in run_dirs:
                lines.append(f"  {run.name:<{width}}{per_run[run][sid]['prediction']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the comparison of the run directories given."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 1:
        print("usage: python -m core.compare_runs RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    print(compare([Path(a) for a in args]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
