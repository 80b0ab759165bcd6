"""The run directory ``runs/<run_id>/`` and its append-only events log.

Layout: ``config.yaml`` (resolved config), ``events.jsonl`` (one JSON object per line,
flushed per line, so a monitor can tail it while training runs), ``checkpoints/``
(``last.ckpt`` and periodic ones) and ``summary.json`` (written at the end).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lake.errors import ConfigError
from lake.provenance import new_run_id


@dataclass(frozen=True)
class RunDir:
    """Paths of one training run."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"


def resolve_run(
    runs_dir: str | Path, run_id: str | None, resume: bool, rank_zero: bool = True
) -> tuple[RunDir, Path | None]:
    """Pick the run directory and the checkpoint to resume from (None for a new run).

    A new run gets ``run_id`` or a fresh ``train-<time>-<hex>`` id. Processes other than
    rank zero (DDP workers re-running the script) join rank zero's run through the
    ``LAKELOOM_RUN_ID`` environment variable it sets. ``resume`` with no id takes the
    newest run that has ``checkpoints/last.ckpt``.
    """
    root = Path(runs_dir)
    joined = None if rank_zero else os.environ.get("LAKELOOM_RUN_ID")
    run_id = joined or run_id
    if resume:
        if run_id is None:
            candidates = sorted(
                root.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime
            )
            if not candidates:
                raise ConfigError(f"resume=true but no run under {root} has checkpoints/last.ckpt")
            run_id = candidates[-1].parents[1].name
        run = RunDir(root / run_id)
        if not run.last_ckpt.is_file():
            raise ConfigError(f"cannot resume {run_id}: {run.last_ckpt} does not exist")
        return run, run.last_ckpt
    run = RunDir(root / (run_id or new_run_id("train")))
    if run.events.exists() and not joined:
        raise ConfigError(f"run {run.run_id} already exists; pass resume=true to continue it")
    return run, None


class EventLog:
    """Append-only JSON-lines writer; one line per event, flushed as written."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._fh = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        """Append ``{"t": now, "type": type, **fields}`` and return it."""
        event = {
            "t": round(time.time(), 3),
            "type": type,
            **{k: _plain(v) for k, v in fields.items()},
        }
        if self._fh is not None:
            self._fh.write(json.dumps(event, default=str) + "\n")
            self._fh.flush()
        return event

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every complete event of a log (a torn last line is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def memory_mb() -> dict[str, float | None]:
    """Resident CPU memory of this process and peak GPU memory allocated, in MiB."""
    try:
        import psutil

        cpu = psutil.Process().memory_info().rss / 2**20
    except ImportError:
        import resource

        cpu = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, KiB on Linux
    gpu = None
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gpu = torch.cuda.max_memory_allocated() / 2**20
    return {"cpu_mem_mb": round(cpu, 1), "gpu_mem_mb": None if gpu is None else round(gpu, 1)}


def _plain(value: Any) -> Any:
    """JSON-friendly scalars: tensors and numpy numbers to float, NaN/inf to None."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
