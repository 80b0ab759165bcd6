"""Save and restore the global RNG states (python, numpy, torch, CUDA) in checkpoints.

Lightning checkpoints hold model, optimizer, scheduler and loop state but not the RNG
states; with this callback a resumed run draws the same random numbers (dropout,
augmentation in the main process) as the run it continues. The saved states are applied
in ``on_train_start``, after Lightning has created the training iterator (which draws a
worker base seed from the torch RNG), so the first resumed step sees the same state as
the uninterrupted run did. The numpy state is saved as a tensor so that checkpoints load
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RngStateCallback(L.Callback):
    """Checkpoint the process's RNG states; restore them on resume."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state = {
            "python": random.getstate(),
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        random.setstate(state["python"])
        np.random.set_state(_numpy_tuple(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> tuple:
    """numpy's legacy global state with its key array as a tensor (no pickled ndarray)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)


def _numpy_tuple(state: Any) -> Any:
    """The ``np.random.set_state`` form of a saved state (older checkpoints hold an ndarray)."""
    name, keys, *rest = state
    if isinstance(keys, torch.Tensor):
        keys = keys.numpy().astype(np.uint32)
    return (name, keys, *rest)
