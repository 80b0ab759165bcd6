"""A tiny real LightningModule for the training-loop tests (the lakeloom contract,
:class:`core.modules.base.LakeloomModule`).

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
from torch.utils.data import DataLoader

from core.modules.base import LakeloomDataModule, LakeloomModule


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


class LinearProbe(LakeloomModule):
    """Dropout + linear classifier over pixels (one output per label of the data module)."""

    def __init__(self, size: int = 8, lr: float = 0.5, dropout: float = 0.2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.labels: list[str] = []
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(size * size, 2)

    def set_label_names(self, names: list[str]) -> None:
        self.labels = list(names)
        self.head = torch.nn.Linear(self.hparams.size**2, len(names))

    def make_collator(self, train: bool = True) -> PixelCollator:
        # the data module asks in its setup, before this module's setup has the names
        return PixelCollator(self.datamodule_label_names() or self.labels, self.hparams.size)

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


# -- a module / data-module pair built only from the contract (core.modules.base) ----------
# core.train knows neither: the data module is no LanceDataModule, reads no lake, and
# takes its collators from the module; the module takes its label names from it.


class VectorCollator:
    """Stack ``x`` vectors, index labels by the names it was given, say which loader."""

    def __init__(self, labels: list[str], train: bool) -> None:
        self.index = {name: i for i, name in enumerate(labels)}
        self.train = train

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "x": torch.tensor([it["x"] for it in items]),
            "y": torch.tensor([self.index[it["label"]] for it in items]),
            "train": self.train,
        }


class ListData(LakeloomDataModule):
    """``n`` labelled 2-d points in memory (label: the sign of the first coordinate)."""

    def __init__(self, n: int, batch_size: int) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size
        self.collators: tuple[Any, Any] | None = None
        self._events: list[tuple[str, dict[str, Any]]] = [("contract_data", {"n": n})]

    @property
    def label_names(self) -> list[str]:
        return ["neg", "pos"]

    def sizes(self) -> dict[str, int]:
        return {"train": self.n, "val": self.n // 2, "test": self.n // 2}

    def setup(self, stage: str) -> None:
        self.collators = self.module_collators()

    def pop_events(self) -> list[tuple[str, dict[str, Any]]]:
        out, self._events = self._events, []
        return out

    def _loader(self, split: str) -> DataLoader:
        assert self.collators is not None, "setup took no collators from the module"
        gen = torch.Generator().manual_seed(len(split))
        xs = torch.randn(self.sizes()[split], 2, generator=gen).tolist()
        items = [{"x": x, "label": "pos" if x[0] > 0 else "neg"} for x in xs]
        train = split == "train"
        return DataLoader(items, batch_size=self.batch_size, shuffle=train,
                          collate_fn=self.collators[0 if train else 1])  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class ContractModule(LakeloomModule):
    """A linear classifier with one output per label name of the data module."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.names: list[str] = []
        self.head = torch.nn.Linear(2, 1)
        self._events: list[tuple[str, dict[str, Any]]] = []

    def set_label_names(self, names: list[str]) -> None:
        self.names = list(names)
        self.head = torch.nn.Linear(2, len(names))
        self._events.append(("contract_labels", {"names": self.names}))

    def make_collator(self, train: bool = True) -> VectorCollator:
        return VectorCollator(self.datamodule_label_names() or [], train)

    def pop_events(self) -> list[tuple[str, dict[str, Any]]]:
        out, self._events = self._events, []
        return out

    def _acc(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(batch["x"])
        loss = torch.nn.functional.cross_entropy(logits, batch["y"])
        return loss, (logits.argmax(-1) == batch["y"]).float().mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        assert batch["train"], "the training loader got the eval collator"
        loss, _ = self._acc(batch)
        self.log("train/loss", loss, batch_size=len(batch["y"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        assert not batch["train"], "the val loader got the training collator"
        _, acc = self._acc(batch)
        self.log("val/acc", acc, batch_size=len(batch["y"]))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, acc = self._acc(batch)
        self.log("test/acc", acc, batch_size=len(batch["y"]))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def export(self, run_dir: str | Path) -> Path:
        out = Path(run_dir) / "contract.json"
        out.write_text(json.dumps({"labels": self.names, "out": self.head.out_features}))
        return out
