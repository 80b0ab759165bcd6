"""Build the callbacks and loggers of a training run from its config."""

from __future__ import annotations

from typing import Any

from lake.runs import BEST, STEP_TEMPLATE, EventLog, RunDir


def build_callbacks(cfg: Any, run: RunDir, events: EventLog) -> tuple[list, Any, Any]:
    """Events log, RNG state, checkpoints (periodic + last, best when monitored) + extras.

    Returns ``(callbacks, best_checkpoint_callback_or_None, events_callback)``.
    """
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from core.callbacks.checkpoint import SaveOnSigterm
    from core.callbacks.events import EventsCallback
    from core.callbacks.rng import RngStateCallback

    c = cfg.checkpoint
    events_cb = EventsCallback(events, cfg.events_every_n_steps, c.monitor, c.mode)
    periodic = ModelCheckpoint(
        dirpath=str(run.checkpoints),
        filename=STEP_TEMPLATE,
        every_n_train_steps=int(c.every_n_steps),
        save_top_k=int(c.keep),
        monitor="step",
        mode="max",
        save_last=True,
        save_on_train_epoch_end=True,
        auto_insert_metric_name=False,
    )
    callbacks: list = [events_cb, RngStateCallback(), periodic, SaveOnSigterm(run.last_ckpt)]
    best = None
    if c.monitor:
        best = ModelCheckpoint(
            dirpath=str(run.checkpoints),
            filename=BEST,
            monitor=c.monitor,
            mode=c.mode,
            save_top_k=1,
            enable_version_counter=False,
        )
        callbacks.append(best)
    for node in (cfg.get("callbacks") or {}).values():
        if node is not None:
            callbacks.append(instantiate(node))
    return callbacks, best, events_cb


def build_loggers(cfg: Any) -> list:
    """Instantiate the selected Lightning loggers (``logger=none`` selects none)."""
    from hydra.utils import instantiate

    return [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None]
