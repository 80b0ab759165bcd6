"""A job's config composed from ``conf/`` without Hydra, for the light commands.

Importing Hydra and composing through it cost about 0.3 s, a third of ``lakeloom stats``.
For a command line of plain ``key=value`` overrides of keys the config has, the light
commands (stats, versions, why, the TUI) build the same config here with OmegaConf: the
defaults list (group options, ``# @package _global_`` headers, ``_self_`` order), then
the overrides, typed as Hydra's grammar types them. Anything else (``+key=``, ``~key``,
a group choice such as ``tui=NAME``, lists, dicts, quotes with escapes, interpolations,
``--cfg``, ``hydra.*``, an unknown key) gives None: the caller composes with Hydra, which
keeps every feature and its own messages.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR_ENV = "LAKELOOM_CONFIG_DIR"

_KEY = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")
_UNQUOTED = re.compile(r"[\w./:@%+~^ -]*")
_HYDRA_INT = re.compile(r"[+-]?(0|[1-9](_?\d)*)")
_DIGITS = re.compile(r"[+-]?[\d_]+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?|[+-]?\d+[eE][+-]?\d+")
_PACKAGE = re.compile(r"#\s*@package\s+(\S+)")


class Unsupported(Exception):
    """Something only Hydra composes: the caller falls back to it."""


@dataclass
class Composed:
    """A composed job config and the ``hydra/job_logging`` option it selected."""

    cfg: DictConfig
    job_logging: str | None


def config_dir() -> Path:
    """``$LAKELOOM_CONFIG_DIR`` when set, else the installed ``conf`` package."""
    folder = os.environ.get(CONFIG_DIR_ENV)
    if folder:
        return Path(folder).resolve()
    spec = importlib.util.find_spec("conf")
    if spec is None or spec.origin is None:
        raise Unsupported("no conf package")
    return Path(spec.origin).parent


def _header_package(text: str) -> str | None:
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        m = _PACKAGE.match(line)
        if m:
            return m.group(1)
    return None


def _place(body: DictConfig, package: str) -> DictConfig:
    for part in reversed([p for p in package.split(".") if p]):
        body = OmegaConf.create({part: body})
    return body


def _compose(folder: Path, group: str, option: str, found: dict[str, str]) -> DictConfig:
    """``<group>/<option>.yaml`` (the primary config when ``group`` is empty) with its
    defaults list, placed at its package; ``found`` collects the hydra/* choices."""
    path = folder / group / f"{option}.yaml"
    if not path.is_file():
        raise Unsupported(f"no {path}")
    text = path.read_text()
    header = _header_package(text)
    if header in (None, "_group_"):
        package = group.replace("/", ".")
    elif header == "_global_":
        package = ""
    else:
        raise Unsupported(f"package {header} in {path}")
    body = OmegaConf.create(text)
    if not isinstance(body, DictConfig):
        raise Unsupported(f"{path} is not a mapping")
    defaults = body.pop("defaults", [])
    parts: list[DictConfig] = []
    self_at = None
    for entry in defaults:
        if entry == "_self_":
            self_at = len(parts)
            continue
        if not (isinstance(entry, DictConfig) and len(entry) == 1):
            raise Unsupported(f"defaults entry {entry!r} in {path}")
        ((key, value),) = entry.items()
        key = str(key)
        override = key.startswith("override ")
        name = key.removeprefix("override ").strip()
        target = name[1:] if name.startswith("/") else f"{group}/{name}".strip("/")
        if target.startswith("hydra/"):
            found[target] = str(value)
            continue
        if override or not isinstance(value, str) or name.startswith("optional"):
            raise Unsupported(f"defaults entry {key}: {value} in {path}")
        parts.append(_compose(folder, target, value, found))
    body.pop("hydra", None)
    parts.insert(len(parts) if self_at is None else self_at, _place(body, package))
    return OmegaConf.merge(*parts) if parts else OmegaConf.create()


def _value(text: str) -> Any:
    """An override's value as Hydra's grammar types it (a subset; else Unsupported)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        inner = text[1:-1]
        if text[0] in inner or "\\" in inner or "$" in inner:
            raise Unsupported(text)
        return inner
    value = text.strip()
    if not _UNQUOTED.fullmatch(value):
        raise Unsupported(text)
    low = value.lower()
    if low == "null":
        return None
    if low in ("true", "false"):
        return low == "true"
    if _HYDRA_INT.fullmatch(value):
        return int(value.replace("_", ""))
    if _DIGITS.fullmatch(value) or low.lstrip("+-") in ("inf", "nan"):
        raise Unsupported(text)  # 0123, 1__0: leave Hydra's exact reading to Hydra
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


def compose_light(config_name: str, args: list[str]) -> Composed | None:
    """``conf/<config_name>.yaml`` with the ``key=value`` overrides in ``args``, as Hydra
    composes it for a job (struct mode, no ``hydra`` key); None when ``args`` or the config
    need Hydra."""
    try:
        folder = config_dir()
        found: dict[str, str] = {}
        cfg = _compose(folder, "", config_name, found)
        for arg in args:
            key, eq, raw = arg.partition("=")
            if not eq or not _KEY.fullmatch(key) or key.split(".")[0] == "hydra":
                return None
            if "." not in key and (folder / key).is_dir():
                return None  # a group choice (tui=NAME, lake=NAME)
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
            # not `leaf in parent`: that is False for a key left ??? (why's id)
            if not isinstance(parent, DictConfig) or leaf not in parent.keys():  # noqa: SIM118
                return None  # Hydra names the unknown key
            if not OmegaConf.is_missing(parent, leaf) and OmegaConf.is_config(parent[leaf]):
                return None
            OmegaConf.update(cfg, key, _value(raw), merge=False)
    except (Unsupported, OmegaConfBaseException):
        return None
    OmegaConf.set_struct(cfg, True)
    return Composed(cfg, found.get("hydra/job_logging"))


class _NoPandas:
    """A meta path finder that makes ``import pandas`` fail (see :func:`import_lance`)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


class _Loader:
    """pandas' own loader; once pandas is loaded it tells pyarrow pandas is there."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        import pyarrow.lib

        pyarrow.lib._pandas_api.pd  # noqa: B018 - pyarrow's shim imports and notes pandas


class _PandasWatch:
    """A meta path finder that, on the first ``import pandas``, lets pyarrow know."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "pandas":
            return None
        import sys

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def import_lance() -> None:
    """Import ``lance`` without pandas (0.15-0.2 s of a light command's start).

    ``pyarrow.dataset``, which lance imports, builds a scalar at import, and pyarrow's
    check whether that scalar is a pandas object imports pandas. With pandas hidden for
    that one import, pyarrow notes "no pandas"; when anything imports pandas later, a
    watcher tells pyarrow's shim, so pandas objects handed to pyarrow convert as usual.
    Nothing when lance or pandas is already imported.
    """
    import sys

    if "lance" in sys.modules or "pandas" in sys.modules:
        return
    hide = _NoPandas()
    sys.meta_path.insert(0, hide)
    try:
        import lance  # noqa: F401
    finally:
        sys.meta_path.remove(hide)
    sys.meta_path.insert(0, _PandasWatch())
