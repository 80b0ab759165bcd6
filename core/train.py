"""``python -m core.train +experiment=NAME`` (or ``lakeloom train``): fit, validate, test.

Composes ``conf/train.yaml``, instantiates the data module over the lake
(``cfg.data``), the LightningModule (``cfg.model``), loggers, callbacks and the Trainer
(``cfg.trainer``), fits, then tests the best checkpoint (or the last weights). Each run
writes ``runs/<run_id>/`` (see :mod:`core.run`). ``resume=true [run_id=ID]`` continues a
killed run from ``checkpoints/last.ckpt``: model, optimizer, scheduler, loop counters,
RNG states and the training loader's position in the epoch (``ckpt=step-N|PATH`` picks
another checkpoint; an unreadable ``last.ckpt`` falls back to the newest intact one;
without ``run_id`` only runs of the same ``experiment_name`` are candidates). Pass the
same overrides as the original run; keys that differ from its saved config are reported
in the log.

Heavy imports (torch, lightning) happen inside :func:`train`, so importing this module,
``lakeloom --help`` and spawned DataLoader workers stay fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from lake import runs
from lake.errors import ConfigError, FileProblem, LakeloomError
from lake.job import (
    JobResult,
    config_yaml,
    hydra_job,
    quiet_logs,
    redact_secrets,
    traceback_locals,
)
from lake.weights_origin import SUMMARY_KEY, weights_origin

log = logging.getLogger("lakeloom.train")

EXIT_CODES = {runs.FINISHED: 0, runs.FAILED: 1, runs.INTERRUPTED: 130}
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def train(cfg: Any) -> dict[str, Any]:
    """Run one training job from a composed config; return the run summary.

    Returns normally for ``finished`` and ``interrupted`` runs (Ctrl-C, SIGTERM); an
    error is recorded (events, summary) and re-raised. A new run that ends before
    ``fit`` begins (a config error, a missing lake, an empty selection) never started: its
    folder is removed and the error (or interrupt) re-raised, so only real runs are listed.
    """
    from omegaconf import OmegaConf, open_dict

    from core.run import resolve_run

    rank_zero = _rank_zero()
    run, ckpt = resolve_run(
        cfg.runs_dir, cfg.run_id, bool(cfg.resume), rank_zero,
        experiment=cfg.experiment_name, ckpt=cfg.get("ckpt"),
    )  # fmt: skip
    # a resume of a finished run that does not finish leaves its summary alone (the
    # attempt is in the events log)
    keep_summary = bool(ckpt) and _summary_status(run) == runs.FINISHED
    fresh = rank_zero and not ckpt and not run.path.exists()  # this call creates the folder
    made_root = not run.path.parent.exists()
    with open_dict(cfg):
        cfg.run_id = run.run_id
        cfg.run_dir = str(run.path)
    if rank_zero:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        os.environ["LAKELOOM_RUN_ID"] = run.run_id  # DDP workers re-run this script
    changes = _config_changes(run.config, cfg) if ckpt else {}
    if rank_zero and not ckpt:
        run.config.write_text(config_yaml(cfg), encoding="utf-8")  # credentials masked
    events = runs.EventLog(run.events, enabled=rank_zero)
    events.write(
        runs.EV_STATUS,
        status=runs.STARTED,
        run_id=run.run_id,
        experiment=cfg.experiment_name,
        resumed_from=str(ckpt) if ckpt else None,
        config_changes=changes or None,
        **runs.owner(),  # pid, host, start time: a reader tells a killed run (lake.runs)
    )
    if changes:
        log.warning("resumed with config changes: %s", changes)
    summary: dict[str, Any] = {
        "run_id": run.run_id,
        "experiment": cfg.experiment_name,
        "status": runs.FAILED,
        "started_at": time.time(),
        "resumed_from": str(ckpt) if ckpt else None,
        # what each part of the model starts from (random-init / pretrained / a run)
        SUMMARY_KEY: weights_origin(OmegaConf.to_container(cfg, resolve=True), cfg.runs_dir),
    }
    t0 = time.perf_counter()
    stage = {"fit": False}
    try:
        _fit_and_test(cfg, run, ckpt, events, summary, stage)
    except BaseException as exc:
        if fresh and not stage["fit"]:
            events.close()
            shutil.rmtree(run.path, ignore_errors=True)
            if made_root:
                with contextlib.suppress(OSError):  # only when empty: another run may be there
                    run.path.parent.rmdir()
            raise
        summary["status"] = runs.INTERRUPTED if _is_interrupt(exc) else runs.FAILED
        summary["error"] = redact_secrets(
            f"{type(exc).__name__}: {exc}", (cfg.get("lake") or {}).get("storage_options")
        )
        events.write(runs.EV_STATUS, status=summary["status"], error=summary["error"])
        _finish(run, events, summary, t0, rank_zero and not keep_summary)
        if summary["status"] == runs.FAILED:
            raise
        return summary
    summary["status"] = runs.FINISHED
    events.write(runs.EV_STATUS, status=runs.FINISHED)
    _finish(run, events, summary, t0, rank_zero)
    return summary


def _fit_and_test(
    cfg: Any, run: Any, ckpt: Path | None, events: Any, summary: dict, stage: dict[str, bool]
) -> None:
    """Instantiate data module, module, callbacks, loggers and Trainer; fit; test the best
    checkpoint; export. The module and data module wire themselves through the Trainer
    (:mod:`core.modules.base`); ``stage["fit"]`` turns true once the data module is set
    up (its selection and collators), and the data sizes go into ``summary`` then."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LambdaCallback
    from lightning.pytorch.utilities.model_helpers import is_overridden

    from core.builders import build_callbacks, build_loggers
    from core.checkpoint import allow_checkpoint_types  # ckpt: vetted by resolve_run
    from core.modules.base import LakeloomDataModule, LakeloomModule

    quiet_logs()  # Lightning added its own console handler on import

    L.seed_everything(cfg.seed, workers=True)
    # the lake's storage options (credentials from config or AWS_* variables) go to the
    # data module as an argument, never into the resolved config
    lake_data = {"storage_options": dm_options(cfg)} if "lake_uri" in cfg.data else {}
    dm = _instantiate(cfg.data, LakeloomDataModule, "data", **lake_data)
    module = _instantiate(cfg.model, LakeloomModule, "model")
    callbacks, ckpt_cb, events_cb = build_callbacks(cfg, run, events)

    def data_ready(*_: Any, **__: Any) -> None:  # Callback.setup: after the data module's
        stage["fit"] = True
        summary.setdefault("data", dm.sizes())

    trainer = instantiate(
        cfg.trainer,
        callbacks=[*callbacks, LambdaCallback(setup=data_ready)],
        logger=build_loggers(cfg) or False,
        default_root_dir=str(run.path),
        use_distributed_sampler=False,  # the data module shards by rank itself
    )
    t_fit = time.perf_counter()
    with allow_checkpoint_types():
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    summary["fit_s"] = round(time.perf_counter() - t_fit, 3)
    summary.update(step=trainer.global_step, epoch=trainer.current_epoch)
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted")
    best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    summary["train_loss"] = events_cb.loss_span
    summary["best"] = events_cb.best
    summary["best_checkpoint"] = best or None
    summary["last_val"] = _strip(events_cb.last.get(runs.EV_VAL))
    if cfg.test_after_fit and is_overridden("test_step", module) and dm.sizes()["test"]:
        t_test = time.perf_counter()
        with allow_checkpoint_types():
            trainer.test(module, datamodule=dm, ckpt_path=best or None, weights_only=True)
        summary["test_s"] = round(time.perf_counter() - t_test, 3)
        summary["test"] = _strip(events_cb.last.get(runs.EV_TEST))
    # After test() the module holds the best checkpoint's weights (or the last ones).
    if trainer.is_global_zero and module.export(run.path) is not None:
        summary["exported"] = True


def dm_options(cfg: Any) -> dict[str, str]:
    """Storage options of the lake the data module reads (``data.lake_uri``, else
    ``lake.uri``), from ``lake.storage_options`` over the ``AWS_*`` variables."""
    from lake.storage import storage_options

    lake = cfg.get("lake") or {}
    uri = (cfg.get("data") or {}).get("lake_uri") or lake.get("uri")
    return storage_options({"uri": uri, "storage_options": lake.get("storage_options")})


def _instantiate(node: Any, kind: type, key: str, **kw: Any) -> Any:
    """``instantiate(cfg.<key>)``, refused in one line unless it is a ``kind`` (the
    contract of :mod:`core.modules.base`); a lakeloom error from the constructor (a refused
    ``pretrained`` / ``init_from`` checkpoint) comes out as itself, one line, not inside
    Hydra's multi-line ``InstantiationException``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        obj = instantiate(node, **kw)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, LakeloomError):
            raise exc.__cause__ from None
        raise
    if not isinstance(obj, kind):
        raise ConfigError(
            f"{key}._target_ {node._target_} is not a {kind.__module__}.{kind.__name__}"
        )
    return obj


def monitored_metric(summary: dict[str, Any]) -> float | None:
    """The best value of ``checkpoint.monitor`` in a run summary (None: no monitor, or
    never logged): what ``main`` returns for a Hydra ``--multirun`` sweeper to optimise."""
    best = summary.get("best")
    return None if best is None else best.get("value")


def _finish(run: Any, events: Any, summary: dict, t0: float, rank_zero: bool) -> None:
    summary["finished_at"] = time.time()
    summary["total_s"] = round(time.perf_counter() - t0, 3)
    events.write(runs.EV_SUMMARY, **{k: v for k, v in summary.items() if k not in ("started_at",)})
    events.close()
    if rank_zero:
        runs.write_summary(run, summary)


def _summary_status(run: runs.RunDir) -> str | None:
    """The ``status`` of a run's ``summary.json`` (None: none or unreadable)."""
    try:
        return (runs.read_summary(run) or {}).get("status")
    except (OSError, ValueError):
        return None


def _strip(event: dict | None) -> dict | None:
    if event is None:
        return None
    return {k: v for k, v in event.items() if k not in ("t", "type")}


def _is_interrupt(exc: BaseException) -> bool:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    # Lightning turns Ctrl-C into sys.exit(1) after its graceful shutdown
    return isinstance(exc, KeyboardInterrupt | SIGTERMException | SystemExit)


def _rank_zero() -> bool:
    """Whether this process is global rank 0, read before the Trainer exists: torchrun
    sets RANK, Lightning's own launcher LOCAL_RANK / NODE_RANK, SLURM's srun SLURM_PROCID."""
    keys = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all(int(os.environ.get(k, 0)) == 0 for k in keys)


def _config_changes(saved: Path, cfg: Any) -> dict[str, Any]:
    """Keys whose resolved value differs from the run's saved config (resume check)."""
    from omegaconf import OmegaConf

    if not saved.is_file():
        return {}
    old = _flatten(OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
    # compared as saved: credentials masked (a new key is no config change to report)
    new = _flatten(OmegaConf.to_container(OmegaConf.create(config_yaml(cfg)), resolve=True))
    ignore = {"resume", "run_id", "run_dir", "ckpt"}
    keys = (old.keys() | new.keys()) - ignore
    return {k: [old.get(k), new.get(k)] for k in sorted(keys) if old.get(k) != new.get(k)}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def checkpoint_problem(exc: BaseException, cfg: Any) -> FileProblem | None:
    """A one-line :class:`FileProblem` for a checkpoint that cannot be loaded, else None.

    Recognises torch's load errors (a state dict that does not fit the model, a file
    that is no checkpoint, a refused pickle); the file is the checkpoint path found in
    the traceback's frames (innermost first), else ``model.init_from`` /
    ``model.pretrained``. Other errors keep their traceback (see :func:`lake.job.hydra_job`).
    """
    import pickle

    if isinstance(exc, LakeloomError):  # one line already (core.checkpoint.CheckpointError)
        return None
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    load_error = isinstance(exc, pickle.UnpicklingError) or any(
        s in text
        for s in (
            "Error(s) in loading state_dict",
            "size mismatch for",
            "PytorchStreamReader",
            "Weights only load failed",
            "invalid load key",
            "Error while deserializing header",
        )
    )
    if not load_error:
        return None
    if "size mismatch for" in text:  # torch lists every tensor; the first says enough
        lines = [ln.strip() for ln in text.splitlines() if "size mismatch for" in ln]
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        first = f"does not fit the model: {lines[0].rstrip('.')}{more}"
    path = _checkpoint_in(exc.__traceback__)
    if path is None:
        model = cfg.get("model") or {}
        path = model.get("init_from") or model.get("pretrained") or "checkpoint"
    return FileProblem(path, first)


def _checkpoint_in(tb: Any) -> str | None:
    for value in traceback_locals(tb):
        is_ckpt = isinstance(value, str | Path) and str(value).endswith(CHECKPOINT_SUFFIXES)
        if is_ckpt and Path(value).is_file():
            return str(value)
    return None


@hydra_job("train")
def main(cfg: Any) -> JobResult:
    """Hydra entry point: train, print where the run is; the exit code comes with the
    monitored metric (:func:`monitored_metric`), which the Hydra app returns."""
    if cfg.get("model") is None or cfg.get("data") is None:
        raise ConfigError("train needs model= and data= config groups")
    try:
        summary = train(cfg)
    except Exception as exc:
        problem = checkpoint_problem(exc, cfg)
        if problem is None:
            raise
        raise problem from exc
    if not _rank_zero():  # the run is rank zero's to report (another node: another id)
        return JobResult(EXIT_CODES.get(summary["status"], 1), None)
    print(
        f"run {summary['run_id']}: {summary['status']} -> {Path(cfg.runs_dir) / summary['run_id']}"
    )
    if summary.get("train_loss"):
        first, last = summary["train_loss"]
        print(f"train loss {first:.3f} (first logged) -> {last:.3f} (last)")
    return JobResult(EXIT_CODES.get(summary["status"], 1), monitored_metric(summary))


if __name__ == "__main__":
    main()
