"""Save ``last.ckpt`` when the run is stopped by SIGTERM (preemption, ``kill``).

Lightning raises ``SIGTERMException`` at a batch boundary (after the batch, its hooks and
the scheduler step), so the state saved here is consistent and a resume loses nothing.
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
            trainer.save_checkpoint(self.path)
