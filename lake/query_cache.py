"""Query vectors kept on disk, so a repeated ``lakeloom query`` loads no model.

Embedding a query costs a model load (open_clip pulls in torch, torchvision and
transformers: ~6 s of imports) for a few milliseconds of work. A vector is kept under a
key made of the lake's embedding owner id (``open_clip:<arch>:<source>:<sha12>``: the
weights' hash is part of it), the query kind (``text`` / ``image``) and the query's
bytes, so a cached vector is the one the same model would compute again; a new model is
a new owner id and never meets an old vector. One small ``.npy`` file per key, written
atomically; an unreadable file counts as absent.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np


class VectorCache:
    """A folder of query vectors by (owner id, kind, query bytes); ``None`` keeps nothing."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder).expanduser() if folder else None

    @staticmethod
    def key(owner: str, kind: str, query: bytes) -> str:
        """The file stem of one query's vector."""
        h = hashlib.sha256()
        for part in (owner.encode(), kind.encode(), query):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.hexdigest()

    def _path(self, owner: str, kind: str, query: bytes) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{self.key(owner, kind, query)}.npy"

    def get(self, owner: str, kind: str, query: bytes) -> np.ndarray | None:
        """The kept vector, or None (no cache, never embedded, or an unreadable file)."""
        path = self._path(owner, kind, query)
        if path is None or not path.is_file():
            return None
        try:
            vector = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return vector if vector.ndim == 1 and vector.dtype == np.float32 else None

    def put(self, owner: str, kind: str, query: bytes, vector: np.ndarray) -> None:
        """Keep ``vector`` (written to a temporary file, then renamed: never half a file)."""
        path = self._path(owner, kind, query)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.asarray(vector, np.float32).reshape(-1), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
