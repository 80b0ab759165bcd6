"""Save ``last.ckpt`` when the run is stopped by SIGTERM (preemption, ``kill``).

Lightning raises ``SIGTERMException`` at a batch boundary (after the batch, its hooks and
the scheduler step), so the state saved here is consistent and a resume loses nothing
(also when it is raised after an epoch's end: :func:`_close_finished_epoch`).
Ctrl-C can land in the middle of a step, so it is not checkpointed: resume then starts
from the last periodic checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SaveOnSigterm(L.Callback):
    """Write ``path`` (the run's ``last.ckpt``) when training stops on SIGTERM."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            _close_finished_epoch(trainer)
            trainer.save_checkpoint(self.path)


def _close_finished_epoch(trainer: L.Trainer) -> None:
    """Stopped after an epoch's end (Lightning checks SIGTERM once more there): clear the
    finished epoch's batch counters, as the next epoch's start would. Saved with them, a
    resume takes the next epoch for already run and skips it (the run then trains on the
    order of the epoch after it)."""
    fit = trainer.fit_loop
    epoch = fit.epoch_progress.current
    if not (epoch.ready == epoch.completed and fit.epoch_loop.batch_progress.current.ready):
        return
    loop = fit.epoch_loop
    loop.batch_progress.reset_on_run()
    loop.scheduler_progress.reset_on_run()
    loop.automatic_optimization.optim_progress.reset_on_run()
    loop.val_loop.batch_progress.total.reset()
