"""Reading checkpoints without running code: the one place lakeloom unpickles them.

Every checkpoint, state dict or pickle lakeloom reads (``model.pretrained``,
``model.init_from``, ``enrich.model.pretrained``, ``lakeloom merge``, ``resume=true``)
goes through :func:`load_checkpoint`, or is vetted by :func:`check_checkpoint` before a
library (Lightning, open_clip) reads it itself with ``weights_only=True`` under
:func:`allow_checkpoint_types`. ``torch.load(weights_only=True)`` rebuilds tensors and
plain containers only; any other type a pickle names must be in :data:`SAFE_GLOBALS`.

What lakeloom's own checkpoints (CLIP, VLM and Apotheon runs: Lightning's loops state,
hyper-parameters (plain containers, the model configs use ``_convert_: all``), the
loader's resumable position, callbacks' state) hold beyond that, found by
``torch.serialization.get_unsafe_globals_in_checkpoint`` over runs of every module:
numpy arrays, from the RNG callback's ``numpy.random`` state. A checkpoint that names
anything else (``os.system``, ``pathlib.Path.touch``...) is refused before that object is
created, with one line naming the file: :class:`CheckpointError`. A sharded (FSDP)
checkpoint folder is vetted through its ``meta.pt`` and its ``.metadata`` shard index, which
torch.distributed.checkpoint reads with a plain ``pickle.load``.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from lake.errors import FileProblem

#: the file in a sharded (FSDP) checkpoint folder that Lightning unpickles
SHARDED_METADATA = "meta.pt"
#: torch.distributed.checkpoint's index of the shards, a plain pickle torch reads unchecked
DCP_METADATA = ".metadata"
#: what a DCP index may name: its own dataclasses, plus these (module, name) pairs
_DCP_MODULE = "torch.distributed.checkpoint.metadata"
_DCP_NAMES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "Path"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


class CheckpointError(FileProblem):
    """A checkpoint file is missing, unreadable, or holds types that could run code;
    the message is ``<file>: cannot load checkpoint: <reason>``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(path, f"cannot load checkpoint: {reason}")
        self.reason = reason


@cache
def safe_globals() -> tuple[Any, ...]:
    """The types (besides tensors and plain containers) lakeloom's checkpoints hold."""
    import numpy as np

    # np.random.get_state(): ("MT19937", uint32 ndarray, pos, has_gauss, gauss); an
    # ndarray is pickled as _reconstruct(ndarray, shape, dtype) + __setstate__
    return (np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)))


@contextmanager
def allow_checkpoint_types() -> Iterator[None]:
    """While open, ``torch.load(weights_only=True)`` also accepts :func:`safe_globals`
    (for loads lakeloom does not call itself: Lightning's ``ckpt_path``)."""
    import torch

    with torch.serialization.safe_globals(list(safe_globals())):
        yield


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """The object saved in ``path`` (a ``torch.save`` file or ``.safetensors``), read
    without running code; :class:`CheckpointError` when it is missing, unreadable or
    names a type outside :func:`safe_globals`. ``mmap`` maps tensors instead of reading
    them (cheap validation of a large file)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "no such file" if not p.exists() else "not a file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(p, device=str(map_location))
        # mmap needs the zip format; an old-format (or forged) file is read whole
        mmap = mmap and zipfile.is_zipfile(p)
        with allow_checkpoint_types():
            return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:
        raise CheckpointError(p, _reason(err)) from err


def load_lightning_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """:func:`load_checkpoint` for a Lightning ``.ckpt``: a dict with a ``state_dict``."""
    ckpt = load_checkpoint(path, map_location=map_location)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(path, "no 'state_dict': not a Lightning checkpoint")
    return ckpt


def check_checkpoint(path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` loads safely: a checkpoint file, or
    a sharded checkpoint folder (its ``meta.pt`` and its DCP ``.metadata`` index).
    Tensors are memory-mapped, not read."""
    p = Path(path)
    if p.is_dir():
        if not (p / SHARDED_METADATA).is_file():
            raise CheckpointError(p, f"a folder without {SHARDED_METADATA}: not a checkpoint")
        if (p / DCP_METADATA).is_file():
            _check_dcp_index(p / DCP_METADATA)
        p = p / SHARDED_METADATA
    if p.suffix == ".safetensors" and p.is_file():
        from safetensors import safe_open

        try:
            with safe_open(p, framework="pt") as f:
                f.keys()
        except Exception as err:
            raise CheckpointError(p, _reason(err)) from err
        return
    load_checkpoint(p, mmap=True)


def _check_dcp_index(path: Path) -> None:
    """Unpickle a DCP ``.metadata`` index with only its own types allowed (torch reads it
    with a plain ``pickle.load``)."""
    import pickle

    import torch

    class _Index(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            obj = super().find_class(module, name) if _dcp_allowed(module, name) else None
            if obj is None:
                raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")
            return obj

    def _dcp_allowed(module: str, name: str) -> bool:
        if (module, name) in _DCP_NAMES:
            return True
        if module == "torch":
            return isinstance(getattr(torch, name, None), torch.dtype)
        if module == _DCP_MODULE:
            from torch.distributed.checkpoint import metadata

            obj = getattr(metadata, name, None)
            return isinstance(obj, type) and obj.__module__ == _DCP_MODULE
        return False

    try:
        with path.open("rb") as f:
            _Index(f).load()
    except Exception as err:
        raise CheckpointError(path, _reason(err)) from err


_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)")
_UNPICKLER = re.compile(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", re.S)


def _reason(err: Exception) -> str:
    """One line out of torch's multi-paragraph load errors."""
    text = str(err)
    refused = _GLOBAL.search(text)
    if refused:
        return (
            f"it names {refused.group(1)}, which is not a type lakeloom checkpoints hold "
            "(unpickling it could run code); refused"
        )
    broken = _UNPICKLER.search(text)
    if broken:
        return f"not a readable PyTorch checkpoint ({broken.group(1).splitlines()[0]})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first.split(". ")[0]  # miniz and friends append paragraphs of advice
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
