"""One TUI dialect: the source of ``tui/`` parsed, never imported.

No import cycle between the modules of ``tui`` (lazy imports inside functions count:
they are cycles that only wait for a code path); no style written in Python (no
``DEFAULT_CSS``, no colour literal: styles live in ``tui/lakeloom.tcss``); the screens
read the typed ``TuiConfig``, never a ``conf_get`` of an untyped mapping.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from rich.color import ANSI_COLOR_NAMES

TUI = Path(__file__).resolve().parents[2] / "tui"
# Image pixels, not styles: the half-block renderer paints each cell in the colours of
# the pixels it stands for.
PIXEL_CODE = {"halfblock.py"}

HEX = re.compile(r"#[0-9a-fA-F]{6}\b|#[0-9a-fA-F]{3}\b")
STYLE_WORDS = {"bold", "dim", "italic", "underline", "reverse", "blink", "strike", "not", "on"}
COLOUR_WORDS = set(ANSI_COLOR_NAMES) - {"default"}


def _module(path: Path) -> str:
    parts = path.relative_to(TUI.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {_module(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(TUI.rglob("*.py"))}


def _imports(name: str, path: Path, tree: ast.Module, known: set[str]) -> set[str]:
    """The tui modules ``name`` imports anywhere in its file (top level or lazily)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from tui.screens import base` imports the module tui.screens.base
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (depth-first search), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_sees_a_lazy_cycle() -> None:
    # the finder itself: base -> sample at the top, sample -> base inside a function
    top = ast.parse("from tui.screens.sample import SampleScreen\n")
    lazy = ast.parse("def f():\n    from tui.screens import base\n")
    known = {"tui.screens.base", "tui.screens.sample"}
    graph = {
        "tui.screens.base": _imports("tui.screens.base", TUI / "screens/base.py", top, known),
        "tui.screens.sample": _imports(
            "tui.screens.sample", TUI / "screens/sample.py", lazy, known
        ),
    }
    assert _cycle(graph) in (
        ["tui.screens.base", "tui.screens.sample", "tui.screens.base"],
        ["tui.screens.sample", "tui.screens.base", "tui.screens.sample"],
    )


def test_tui_has_no_import_cycle() -> None:
    sources = _sources()
    known = set(sources)
    graph = {name: _imports(name, path, tree, known) for name, (path, tree) in sources.items()}
    assert "tui.screens.base" in graph and graph["tui.screens.run"], "parsed nothing?"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            ids.add(id(node.value))
    return ids


def _is_colour_style(text: str) -> bool:
    """``"bold red"``, ``"magenta"``, ``"white on blue"``: a Rich style naming a colour."""
    words = text.split()
    return (
        0 < len(words) <= 6
        and all(w in STYLE_WORDS or w in COLOUR_WORDS for w in words)
        and any(w in COLOUR_WORDS for w in words)
    )


def style_offences(path: Path, tree: ast.Module) -> list[str]:
    """Where ``path`` writes a style in Python: DEFAULT_CSS, a colour literal, Color()."""
    out = []
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        where = f"{path.relative_to(TUI.parent)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "DEFAULT_CSS" for t in targets):
                out.append(f"{where}: DEFAULT_CSS (styles belong in tui/lakeloom.tcss)")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            owner = getattr(getattr(func, "value", None), "id", "")
            if name == "Color" or owner == "Color":
                out.append(f"{where}: Color(...)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            if HEX.search(node.value) or _is_colour_style(node.value):
                out.append(f"{where}: colour literal {node.value!r}")
    return out


def test_offence_finder_sees_the_old_styles() -> None:
    code = (
        'class S:\n    DEFAULT_CSS = "S { height: 1; }"\n'
        'STATUS = {"running": ("●", "bold cyan")}\n'
        'PALETTE = ("#4e79a7",)\n'
        "c = Color.parse(x)\n"
        'def f():\n    """Errors in red."""\n    return "no colour here"\n'
    )
    found = style_offences(TUI / "x.py", ast.parse(code))
    assert len(found) == 4, found


def test_no_style_written_in_python_under_tui() -> None:
    offences = [
        o
        for name, (path, tree) in _sources().items()
        if path.name not in PIXEL_CODE
        for o in style_offences(path, tree)
    ]
    assert not offences, "\n".join(offences)


def test_screens_read_the_typed_config() -> None:
    # `conf_get(config, key, default)` read an untyped mapping with a second default
    found = [
        f"{path.relative_to(TUI.parent)}:{node.lineno}"
        for path, tree in _sources().values()
        for node in ast.walk(tree)
        if (isinstance(node, ast.Name) and node.id == "conf_get")
        or (isinstance(node, ast.FunctionDef) and node.name == "conf_get")
        or (isinstance(node, ast.alias) and node.name == "conf_get")
    ]
    assert not found, found
