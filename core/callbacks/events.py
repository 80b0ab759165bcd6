"""Write training progress to the run's events log (``runs/<id>/events.jsonl``).

Whatever the module logs with ``self.log`` lands in ``trainer.callback_metrics``; this
callback copies it into ``train`` events every ``every_n_steps`` optimizer steps (with
the learning rate, samples/s since the previous event and memory), and into ``val`` and
``test`` events at the end of each evaluation. It also tracks the best value of the
monitored validation metric for the run summary, and marks interruptions.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from core.run import memory_mb
from lake.runs import EV_TEST, EV_TRAIN, EV_VAL, EventLog


class EventsCallback(L.Callback):
    """Append ``train``/``val``/``test`` events; remember the best monitored value."""

    def __init__(
        self,
        log: EventLog,
        every_n_steps: int = 10,
        monitor: str | None = None,
        mode: str = "max",
    ) -> None:
        self.events = log
        self.every_n_steps = max(1, int(every_n_steps))
        self.monitor = monitor
        self.mode = mode
        self.best: dict[str, Any] | None = None
        self.last: dict[str, dict[str, Any]] = {}
        self.loss_span: list[float] | None = None  # first and latest logged train loss
        self._t = time.perf_counter()
        self._samples = 0
        self._last_step = -1

    # -- training -------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t, self._samples = time.perf_counter(), 0
        self._flush(trainer, pl_module)

    def _flush(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the events the data module and the module queued
        (``pop_events() -> [(type, fields)]``)."""
        for source in (trainer.datamodule, pl_module):
            pop = getattr(source, "pop_events", None)
            if pop is not None:
                for kind, fields in pop():
                    self.events.write(kind, **fields)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._samples += batch_size(batch)
        self._flush(trainer, pl_module)
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        now = time.perf_counter()
        rate = self._samples / (now - self._t) if now > self._t else None
        self._t, self._samples = now, 0
        metrics = _metrics(trainer, exclude=("val", "test"))
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and "loss" not in metrics:
            metrics["loss"] = float(loss.detach())
        if "loss" in metrics:
            self.loss_span = [metrics["loss"] if self.loss_span is None else self.loss_span[0],
                              metrics["loss"]]  # fmt: skip
        self.last[EV_TRAIN] = self.events.write(
            EV_TRAIN,
            step=step,
            epoch=trainer.current_epoch,
            **metrics,
            lr=_lr(trainer),
            samples_per_s=None if rate is None else round(rate, 2),
            **memory_mb(),
        )

    # -- evaluation -----------------------------------------------------------------------
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer, pl_module)
        if trainer.sanity_checking:
            return
        metrics = _metrics(trainer, include=("val",))
        event = self.events.write(
            EV_VAL, step=trainer.global_step, epoch=trainer.current_epoch, **metrics
        )
        self.last[EV_VAL] = event
        value = metrics.get(self.monitor) if self.monitor else None
        if value is not None and self._better(value):
            self.best = {"metric": self.monitor, "value": value, "step": trainer.global_step}

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer, pl_module)
        metrics = _metrics(trainer, include=("test",))
        self.last[EV_TEST] = self.events.write(EV_TEST, step=trainer.global_step, **metrics)

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best["value"] if self.mode == "max" else value < self.best["value"]

    # -- checkpoint state (the best value survives a resume) ------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")


def batch_size(batch: Any) -> int:
    """Samples in a collated batch: ``sample_id`` list, else the first tensor's length."""
    if isinstance(batch, dict):
        for key in ("sample_id", "sample_ids"):
            if isinstance(batch.get(key), list):
                return len(batch[key])
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.ndim:
                return int(v.shape[0])
        for v in batch.values():
            if isinstance(v, list):
                return len(v)
    if isinstance(batch, torch.Tensor) and batch.ndim:
        return int(batch.shape[0])
    if isinstance(batch, (list, tuple)) and batch:
        return batch_size(batch[0]) if not isinstance(batch[0], (str, bytes)) else len(batch)
    return 0


def _metrics(
    trainer: L.Trainer, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
) -> dict[str, float]:
    out = {}
    for key, value in trainer.callback_metrics.items():
        if include and not key.startswith(include):
            continue
        if exclude and key.startswith(exclude):
            continue
        if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(
            value, (int, float)
        ):
            out[key] = float(value)
    return out


def _lr(trainer: L.Trainer) -> float | None:
    for opt in trainer.optimizers:
        for group in opt.param_groups:
            return float(group["lr"])
    return None
