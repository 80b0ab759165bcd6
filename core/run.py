"""Which run directory a training job writes, and which checkpoint it resumes from.

The layout of ``runs/<run_id>/``, its events log and the event types are owned by
:mod:`lake.runs` (torch-free, read by the TUI and the loaders too); ``RunDir``,
``EventLog`` and ``read_events`` are re-exported here for training code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lake.errors import ConfigError
from lake.provenance import new_run_id
from lake.runs import STEP_PREFIX, EventLog, RunDir, read_events, run_dirs

__all__ = ["EventLog", "RunDir", "memory_mb", "read_events", "resolve_run"]

log = logging.getLogger("lakeloom.train")


def resolve_run(
    runs_dir: str | Path,
    run_id: str | None,
    resume: bool,
    rank_zero: bool = True,
    *,
    experiment: str | None = None,
    ckpt: str | None = None,
) -> tuple[RunDir, Path | None]:
    """Pick the run directory and the checkpoint to resume from (None for a new run).

    A new run gets ``run_id`` or a fresh ``train-<time>-<hex>`` id. Processes other than
    rank zero (DDP workers re-running the script) join rank zero's run through the
    ``LAKELOOM_RUN_ID`` environment variable it sets, or, launched on other nodes by
    torchrun / SLURM / by hand, through the same ``run_id`` (the folder may exist then).
    ``resume`` with no id takes the newest run of ``experiment`` (its saved
    ``experiment_name``) that has a checkpoint.
    The checkpoint is ``ckpt`` when given (a path, a file name in the run's
    ``checkpoints/``, or ``step-N``), else ``last.ckpt``, or, when that is missing or
    unreadable, the newest intact ``step-*.ckpt`` (a warning names the ones skipped).
    """
    root = Path(runs_dir)
    # a worker joins rank zero's run: the id rank zero put in the environment (its own
    # DDP children), else run_id= (a launcher's process on another node: same command)
    joined = None if rank_zero else os.environ.get("LAKELOOM_RUN_ID") or run_id
    run_id = joined or run_id
    if resume:
        run = RunDir(root / run_id) if run_id else _newest_run(root, experiment)
        if not run.path.is_dir():
            raise ConfigError(f"cannot resume {run.run_id}: no run directory {run.path}")
        return run, _chosen_checkpoint(run, ckpt) if ckpt else _intact_checkpoint(run)
    if ckpt:
        raise ConfigError(f"ckpt={ckpt} picks a checkpoint to resume from: add resume=true")
    run = RunDir(root / (run_id or new_run_id("train")))
    if run.events.exists() and not joined:
        raise ConfigError(f"run {run.run_id} already exists; pass resume=true to continue it")
    return run, None


def _checkpoints(run: RunDir) -> list[Path]:
    """``last.ckpt``, then the periodic ``step-*.ckpt`` newest (highest step) first."""
    return ([run.last_ckpt] if run.last_ckpt.exists() else []) + run.step_checkpoints()


def _newest_run(root: Path, experiment: str | None) -> RunDir:
    """The run of ``experiment`` whose newest checkpoint is the most recent."""
    from omegaconf import OmegaConf

    found: list[tuple[float, RunDir]] = []
    others = 0
    for run in run_dirs(root):
        ckpts = _checkpoints(run)
        if not ckpts:
            continue
        try:
            name = OmegaConf.load(run.config).get("experiment_name")
        except Exception:  # an unreadable config: not a run this resume can match
            name = None
        if name != experiment:
            others += 1
            continue
        found.append((max(p.stat().st_mtime for p in ckpts), run))
    if not found:
        more = f" ({others} run(s) of other experiments are not considered)" if others else ""
        raise ConfigError(
            f"resume=true but no run of experiment {experiment!r} under {root} has a "
            f"checkpoint{more}; pass run_id=ID to pick one"
        )
    return max(found, key=lambda f: f[0])[1]


def _chosen_checkpoint(run: RunDir, ckpt: str) -> Path:
    """``ckpt=``: ``step-N``, a file name in the run's ``checkpoints/``, or a path."""
    from core.checkpoint import CheckpointError, check_checkpoint

    spec = str(ckpt)
    number = spec.removeprefix(STEP_PREFIX)
    if spec.startswith(STEP_PREFIX) and number.isdigit():
        path = run.step_checkpoint(int(number))
    elif Path(spec).exists() or Path(spec).is_absolute():
        path = Path(spec)
    else:
        path = run.checkpoints / spec
    if not path.exists():
        have = ", ".join(p.name for p in _checkpoints(run)) or "none"
        raise ConfigError(
            f"ckpt={spec}: {path} does not exist (checkpoints of {run.run_id}: {have})"
        )
    try:
        check_checkpoint(path)
    except CheckpointError as exc:
        raise ConfigError(f"ckpt={spec}: {exc}") from exc
    return path


def _intact_checkpoint(run: RunDir) -> Path:
    """``last.ckpt`` or the newest periodic checkpoint that loads; warn about the rest."""
    from core.checkpoint import CheckpointError, check_checkpoint

    skipped = []
    for path in _checkpoints(run):
        try:
            check_checkpoint(path)
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        if skipped:
            log.warning(
                "resuming %s from %s: skipped unreadable checkpoint(s): %s",
                run.run_id, path.name, "; ".join(skipped),
            )  # fmt: skip
        return path
    why = ": " + "; ".join(skipped) if skipped else ""
    raise ConfigError(f"cannot resume {run.run_id}: no intact checkpoint in {run.checkpoints}{why}")


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
