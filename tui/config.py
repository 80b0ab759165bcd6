"""The TUI's declared configuration (``conf/tui.yaml`` + ``conf/tui/<name>.yaml``) as data.

No Textual imports: the app, the screens and the tests read the same :class:`TuiConfig`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lake.storage import storage_options
from tui.format import printable

GRAPHICS = ("auto", "halfblock", "kitty", "sixel")


@dataclass(frozen=True)
class ScreenSpec:
    """A screen of the registry: its class (import path), title and extra arguments."""

    name: str
    target: str
    title: str = ""
    description: str = ""
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ColumnSpec:
    """A samples table column."""

    field: str
    title: str = ""
    width: int = 10
    format: str | None = None
    align: str = "left"

    def text(self, value: Any) -> str:
        """The cell text of ``value`` (lists joined, ``format`` applied to non-null values),
        on one line with control characters made visible (``tui.format.printable``)."""
        if value is None:
            return ""
        if isinstance(value, list | tuple):
            return ", ".join(self.text(v) for v in value)
        if self.format:
            try:
                return printable(self.format.format(value))
            except (ValueError, TypeError):
                pass
        # a cell shows `width` cells at most: never split a 5 MB caption on each redraw
        return printable(" ".join(str(value)[: self.width * 4 + 64].split()))


@dataclass(frozen=True)
class PanelSpec:
    """A pane showing fields of the selected sample (see ``tui.panels``)."""

    name: str
    target: str
    title: str = ""
    fields: tuple[str, ...] = ()
    screens: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BindingSpec:
    """A key binding: ``id`` is what a keymap remaps."""

    id: str
    key: str
    action: str
    description: str = ""
    show: bool = True
    priority: bool = False


@dataclass
class TuiConfig:
    """Everything the app reads from the job config."""

    lake_uri: str = "data/lake"
    # an s3:// lake's settings (lake.storage_options over AWS_*): kept out of repr, they
    # hold credentials
    storage_options: dict[str, str] = field(default_factory=dict, repr=False)
    runs_dir: str = "runs"
    graphics: str = "auto"
    theme: str = "textual-dark"
    page_size: int = 100
    page_cache: int = 64
    lake_poll_s: float = 5.0
    who: str | None = None
    search_k: int = 200
    search_model: dict[str, Any] = field(default_factory=dict)
    # read by the run screens (tui/screens/run*.py, compare.py)
    poll_s: float = 0.5
    refresh_s: float = 2.0
    log_lines: int = 200
    max_points: int = 4096
    max_text_chars: int = 20000  # longer texts are cut for display (tui.format.clip)
    screens: dict[str, ScreenSpec] = field(default_factory=dict)
    columns: list[ColumnSpec] = field(default_factory=list)
    panels: list[PanelSpec] = field(default_factory=list)
    plots: list[dict[str, Any]] = field(default_factory=list)  # see tui.widgets.plot
    bindings: dict[str, list[BindingSpec]] = field(default_factory=dict)
    keymap: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_job(cls, cfg: Mapping[str, Any]) -> TuiConfig:
        """Build from the resolved job config (a plain dict or an OmegaConf node)."""
        cfg = _plain(cfg)
        tui = dict(cfg.get("tui") or {})
        graphics = str(tui.get("graphics", "auto"))
        if graphics not in GRAPHICS:
            raise ValueError(f"tui.graphics must be one of {', '.join(GRAPHICS)}, not {graphics!r}")
        screens = {}
        for name, spec in (tui.get("screens") or {}).items():
            spec = dict(spec)
            target = spec.pop("_target_")
            title = spec.pop("title", name.title())
            screens[name] = ScreenSpec(name, target, title, spec.pop("description", ""), spec)
        panels = []
        for name, spec in (tui.get("panels") or {}).items():
            if spec is None:  # `tui.panels.NAME=null` removes a panel
                continue
            spec = dict(spec)
            panels.append(
                PanelSpec(
                    name=name,
                    target=spec.pop("_target_"),
                    title=spec.pop("title", name.title()),
                    fields=tuple(spec.pop("fields", ())),
                    screens=tuple(spec.pop("screens", ())),
                    options=spec,
                )
            )
        return cls(
            lake_uri=str((cfg.get("lake") or {}).get("uri", "data/lake")),
            storage_options=storage_options(cfg.get("lake") or {}),
            runs_dir=str(cfg.get("runs_dir", "runs")),
            graphics=graphics,
            theme=str(tui.get("theme", "textual-dark")),
            page_size=int(tui.get("page_size", 100)),
            page_cache=int(tui.get("page_cache", 64)),
            lake_poll_s=float(tui.get("lake_poll_s", 5.0)),
            who=tui.get("who"),
            search_k=int(tui.get("search_k", 200)),
            search_model={
                k: v for k, v in (tui.get("search_model") or {}).items() if v is not None
            },
            poll_s=float(tui.get("poll_s", 0.5)),
            refresh_s=float(tui.get("refresh_s", 2.0)),
            log_lines=int(tui.get("log_lines", 200)),
            max_points=int(tui.get("max_points", 4096)),
            max_text_chars=int(tui.get("max_text_chars", 20000)),
            screens=screens,
            columns=[ColumnSpec(**c) for c in tui.get("columns") or []],
            panels=panels,
            plots=[dict(p) for p in tui.get("plots") or []],
            bindings={
                scope: [BindingSpec(**b) for b in specs or []]
                for scope, specs in (tui.get("bindings") or {}).items()
            },
            keymap=_flatten(tui.get("keymap") or {}),
        )

    @classmethod
    def load(cls, overrides: list[str] | None = None) -> TuiConfig:
        """Compose ``conf/tui.yaml`` with Hydra overrides (tests, ``python -c``)."""
        from hydra import compose, initialize_config_module

        with initialize_config_module("conf", version_base="1.3"):
            cfg = compose("tui", overrides=list(overrides or []))
        return cls.from_job(cfg)

    def panels_for(self, screen: str) -> list[PanelSpec]:
        """The panels declared for ``screen``, in order."""
        return [p for p in self.panels if screen in p.screens]


def import_object(path: str) -> Any:
    """``package.module.Name`` -> the object (screens and panels are declared this way)."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"not an import path: {path!r}")
    return getattr(importlib.import_module(module), name)


def _flatten(keymap: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{lake: {sort: o}}`` -> ``{"lake.sort": "o"}`` (ids hold dots; Hydra keys cannot)."""
    out: dict[str, str] = {}
    for key, value in keymap.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = str(value)
    return out


def _plain(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, Mapping) and not hasattr(cfg, "_get_node"):
        return dict(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
