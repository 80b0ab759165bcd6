"""A per-process cache of loaded models, keyed by what identifies them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class ModelCache(Generic[T]):
    """Load each key's model once per process (thread-safe); ``clear`` frees them."""

    def __init__(self) -> None:
        self._items: dict[Hashable, T] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The model of ``key``, loaded by ``load()`` the first time."""
        with self._lock:
            if key not in self._items:
                self._items[key] = load()
            return self._items[key]

    def clear(self) -> None:
        """Forget every loaded model (tests; freeing GPU memory)."""
        with self._lock:
            self._items.clear()


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else unchanged.

    Shared by the torch-backed plugins (CLIP embedder, captioner); torch is imported only
    for ``auto``.
    """
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
