"""The contract between lakeloom's Lightning modules, their data modules and ``core.train``.

A :class:`LakeloomModule` makes the collators its batches need (``make_collator``), queues
events for the run's log (``pop_events``) and writes its weights in a format other tools
load (``export``). A :class:`LakeloomDataModule` selects samples, knows their label names
and sizes, and queues its own events. The two find each other through the Trainer that
``fit`` attaches them to: the data module takes its collators from
``self.trainer.lightning_module`` in its ``setup`` (after selecting, so a collator may ask
for the label names), the module reads the label names from ``self.trainer.datamodule``
in its ``setup`` (before its optimizers are configured and a checkpoint is restored).
``core.train`` only instantiates, fits, tests and exports: it knows no family.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L

Collator = Callable[[list[dict[str, Any]]], Any]
Event = tuple[str, dict[str, Any]]


class LakeloomModule(L.LightningModule):
    """A LightningModule that ``core.train`` can train on a :class:`LakeloomDataModule`."""

    _given_label_names: list[str] | None = None  # what set_label_names last received

    def make_collator(self, train: bool = True) -> Collator:
        """A picklable batch collator (it runs in loader workers); ``train=False`` for the
        val / test loaders (no augmentation, generation prompts)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_collator(train)")

    def pop_events(self) -> list[Event]:
        """Events ``(type, fields)`` for the run's log queued since the last call."""
        return []

    def export(self, run_dir: str | Path) -> Path | None:
        """Write the trained model into ``run_dir`` for use outside lakeloom after the run
        (called on rank zero after test); return where, or None when there is nothing."""
        return None

    def set_label_names(self, names: list[str]) -> None:
        """Hook: the data module's label names (sorted, distinct), given in ``setup``
        before the optimizers are built and again only when they change."""

    def datamodule_label_names(self) -> list[str] | None:
        """The label names of the attached Trainer's data module (None: no such module)."""
        trainer = self._trainer
        dm = trainer.datamodule if trainer is not None else None
        return list(dm.label_names) if isinstance(dm, LakeloomDataModule) else None

    def setup(self, stage: str) -> None:
        """Read the label names from ``self.trainer.datamodule`` (see :meth:`set_label_names`)."""
        names = self.datamodule_label_names()
        if names is not None and names != self._given_label_names:
            self._given_label_names = names
            self.set_label_names(names)


class LakeloomDataModule(L.LightningDataModule):
    """A LightningDataModule that feeds a :class:`LakeloomModule` (see the module docstring)."""

    @property
    def label_names(self) -> list[str]:
        """Sorted distinct labels of the selected samples."""
        raise NotImplementedError(f"{type(self).__name__} must implement label_names")

    def sizes(self) -> dict[str, int]:
        """Number of samples per split (``train``, ``val``, ``test``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement sizes()")

    def pop_events(self) -> list[Event]:
        """Events ``(type, fields)`` for the run's log queued since the last call."""
        return []

    def estimated_stepping_batches(self, trainer: L.Trainer) -> float:
        """Optimizer steps of the whole fit (for LR schedules); Lightning's estimate here."""
        return trainer.estimated_stepping_batches

    def module_collators(self) -> tuple[Collator, Collator] | None:
        """``(train, eval)`` collators of the Trainer's module, or None without a Trainer
        or when its module is no :class:`LakeloomModule`."""
        trainer = self.trainer
        module = trainer.lightning_module if trainer is not None else None
        if not isinstance(module, LakeloomModule):
            return None
        return module.make_collator(train=True), module.make_collator(train=False)
