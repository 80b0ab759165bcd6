"""``conf/`` is the one source of defaults: every ``_target_`` a config composes (nested
ones too) is checked against its signature. A key the target does not take, or a
lakeloom signature default that disagrees with a config file's value, fails."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

CONF = Path(__file__).parents[1] / "conf"
#: Hydra's own keys of an instantiable node
HYDRA_KEYS = {"_target_", "_convert_", "_recursive_", "_partial_", "_args_"}
#: ``@package _global_`` groups that override the defaults of others (experiments, stages,
#: debug presets): their keys must be parameters, their values are meant to differ
OVERLAYS = {"experiment": [], "debug": [], "stage": ["model=llava_tiny"]}
#: keys the runner consumes before instantiating (not constructor parameters)
RUNNER_KEYS = {
    ("plugins.exporters.", "name"): "lake.export.build_exporter drops the config's own name",
    ("tui.screens.", "title"): "tui.config reads a screen's title for the command palette",
    ("tui.screens.", "description"): "tui.config reads a screen's description likewise",
}
#: packages whose signatures must not carry a second, different default
OWN = ("core.", "lake.", "plugins.", "tui.")


def _primaries() -> list[str]:
    return sorted(p.stem for p in CONF.glob("*.yaml"))


def _compositions() -> list[tuple[str, list[str], bool]]:
    """(primary config, overrides, values_are_defaults) for every config file: each primary
    config, each option of a group in the first primary that lists the group, and each
    overlay on ``train``."""
    out = [(p, [], True) for p in _primaries()]
    for group in sorted(d.name for d in CONF.iterdir() if d.is_dir() and any(d.glob("*.yaml"))):
        options = sorted(f.stem for f in (CONF / group).glob("*.yaml"))
        if group in OVERLAYS:
            out += [("train", [*OVERLAYS[group], f"+{group}={o}"], False) for o in options]
            continue
        listed = re.compile(rf"^\s*-\s*{group}\s*:", re.M)
        users = [p for p in _primaries() if listed.search((CONF / f"{p}.yaml").read_text())]
        assert users, f"conf/{group}/ is in no primary config's defaults list"
        out += [(users[0], [f"{group}={o}"], True) for o in options]
    return out


def _targets(node: Any, path: str, out: list[tuple[str, Any]]) -> None:
    from omegaconf import DictConfig, ListConfig

    if isinstance(node, DictConfig):
        if "_target_" in node:
            out.append((path, node))
        for key in node:
            _targets(node._get_node(key), f"{path}.{key}" if path else str(key), out)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            _targets(node._get_node(i), f"{path}[{i}]", out)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


_UNRESOLVED = object()


def _value(cfg: Any, path: str) -> Any:
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(cfg, path, throw_on_missing=True)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
    except Exception:  # an interpolation into a group this composition leaves out
        return _UNRESOLVED
    return _plain(value)


def _problems() -> list[str]:
    from hydra import compose, initialize_config_module

    problems: dict[tuple[str, str], str] = {}  # (target, key) -> its first problem
    with initialize_config_module(version_base="1.3", config_module="conf"):
        for primary, overrides, values_are_defaults in _compositions():
            where = " ".join([primary, *overrides])
            cfg = compose(config_name=primary, overrides=overrides)
            nodes: list[tuple[str, Any]] = []
            _targets(cfg, "", nodes)
            for path, node in nodes:
                target = node._get_node("_target_")._value()
                module, _, name = target.rpartition(".")
                params = inspect.signature(
                    getattr(importlib.import_module(module), name)
                ).parameters
                var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
                for key in node:
                    if key in HYDRA_KEYS or any(
                        target.startswith(t) and key == k for t, k in RUNNER_KEYS
                    ):
                        continue
                    if key not in params:
                        if not var_kw:
                            problems.setdefault(
                                (target, key), f"{where}: {path}.{key} is no parameter of {target}"
                            )
                        continue
                    default = params[key].default
                    if (
                        not values_are_defaults
                        or not target.startswith(OWN)
                        or default is inspect.Parameter.empty
                    ):
                        continue
                    value = _value(cfg, f"{path}.{key}" if path else key)
                    if value is not _UNRESOLVED and value != _plain(default):
                        problems.setdefault(
                            (target, key),
                            f"{where}: {path}.{key} = {value!r} but {target} defaults to "
                            f"{default!r} (remove the code default)",
                        )
    return sorted(problems.values())


def test_every_target_agrees_with_its_signature() -> None:
    """Walk every ``_target_`` of every config file; list each disagreement."""
    problems = _problems()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("group", sorted(OVERLAYS))
def test_overlays_exist(group: str) -> None:
    """The overlay groups named above are real (a rename must not silence the walk)."""
    assert any((CONF / group).glob("*.yaml"))
