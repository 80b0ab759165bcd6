"""``python -m core.run_report RUN_DIR``: a run's story from its events log, as text.

Where the weights come from (each part random-init / pretrained / from a run; frozen /
LoRA / trained; the data: :mod:`lake.weights_origin`), every logged training loss
(``train/loss``, and each head's ``train/loss_*``) from its first to its last logged value,
curriculum switches, the last validation figures and a few of the texts generated at
validation. Works for any lakeloom run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lake.runs import EV_CURRICULUM, EV_GENERATIONS, EV_TRAIN, EV_VAL, RunDir, read_events
from lake.weights_origin import describe, run_weights


def report(run_dir: str | Path, generations: int = 4) -> str:
    """The report of one run directory (see the module docstring)."""
    events = read_events(RunDir(run_dir).events)
    lines = [f"run {Path(run_dir).name}", f"  weights: {describe(run_weights(run_dir))}"]
    spans: dict[str, list[tuple[int, float]]] = {}
    for e in events:
        if e["type"] == EV_TRAIN:
            for key, value in e.items():
                if key.startswith("train/loss") and isinstance(value, float):
                    spans.setdefault(key, []).append((e["step"], value))
    for key, points in spans.items():
        (s0, v0), (s1, v1) = points[0], points[-1]
        lines.append(f"  {key:<28} {v0:8.3f} (step {s0}) -> {v1:8.3f} (step {s1})")
    for e in events:
        if e["type"] == EV_CURRICULUM:
            lines.append(f"  curriculum: epoch {e['epoch']} -> {e['stage']} "
                         f"({', '.join(e['kinds'])}; {e['samples']} samples)")  # fmt: skip
    vals = [e for e in events if e["type"] == EV_VAL]
    if vals:
        last = vals[-1]
        figures = {k: v for k, v in last.items() if k.startswith("val/")}
        lines.append(f"  validation at step {last['step']}:")
        lines += [f"    {k:<28} {_fmt(v)}" for k, v in figures.items()]
    gens = [e for e in events if e["type"] == EV_GENERATIONS]
    if gens:
        for g in gens[-1]["samples"][:generations]:
            head = g.get("head", "answer")
            lines.append(f"  {head}: {g['prediction']!r}  (reference {g['reference']!r})")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    """Floats to 4 decimals, anything else as is."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    """Print the report of each run directory given."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m core.run_report RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    for run in args:
        print(report(run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
