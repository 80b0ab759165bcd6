"""A tiny real LightningModule for the training-loop tests (the lakeloom contract).

A linear probe on 8x8 grey pixels of each sample's first image: it decodes images in the
(picklable) collator, trains with SGD + momentum and a step LR schedule, uses dropout (so
RNG state matters on resume), and logs train/val/test metrics with ``self.log``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image


class PixelCollator:
    """Decode the first image to an ``size x size`` grey tensor; label to its index."""

    def __init__(self, labels: list[str], size: int = 8) -> None:
        self.index = {name: i for i, name in enumerate(labels)}
        self.size = size

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        pixels = []
        for it in items:
            img = Image.open(io.BytesIO(it["images"][0])).convert("L").resize((self.size,) * 2)
            pixels.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8))
        return {
            "x": torch.stack(pixels).float() / 255.0,
            "y": torch.tensor([self.index[it["label"]] for it in items]),
            "sample_id": [it["sample_id"] for it in items],
        }


class LinearProbe(L.LightningModule):
    """Dropout + linear classifier over pixels."""

    def __init__(self, size: int = 8, lr: float = 0.5, dropout: float = 0.2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.labels: list[str] = []
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(size * size, 2)

    def set_label_names(self, names: list[str]) -> None:
        self.labels = list(names)
        self.head = torch.nn.Linear(self.hparams.size**2, len(names))

    def make_collator(self) -> PixelCollator:
        return PixelCollator(self.labels, self.hparams.size)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.drop(batch["x"]))
        loss = torch.nn.functional.cross_entropy(logits, batch["y"])
        return loss, (logits.argmax(-1) == batch["y"]).float().mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, batch_size=len(batch["y"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, acc = self._loss(batch)
        self.log_dict({"val/loss": loss, "val/acc": acc}, batch_size=len(batch["y"]))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, acc = self._loss(batch)
        self.log("test/acc", acc, batch_size=len(batch["y"]))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class BatchRecorder(L.Callback):
    """Append each training batch's step and sample ids to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        row = {
            "step": trainer.global_step,
            "ids": batch["sample_id"],
            "loss": float(outputs["loss"]),
        }
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


class StopAt(L.Callback):
    """Simulate a kill: Ctrl-C (``KeyboardInterrupt``) or SIGTERM after step ``step``."""

    def __init__(self, step: int, how: str = "interrupt") -> None:
        self.step, self.how = step, how

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            if self.how == "sigterm":
                import os
                import signal

                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise KeyboardInterrupt


class KillAt(L.Callback):
    """A real crash: the process SIGKILLs itself after step ``step`` (nothing is saved)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
