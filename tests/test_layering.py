"""The package layering, read from every file's imports (ast), and the one-owner rules of
the plugin seam.

- ``lake`` imports no sibling package (``core``, ``plugins``, ``tui``), not even lazily:
  it discovers plugins through entry points.
- ``plugins`` import ``lake``; never another plugin module (a plugin's own helpers
  module excepted: the checks' ``common``, transcribe's ``whisper_models``); ``core`` only
  lazily, inside a function (model-backed plugins); never Lightning, never ``tui``.
- ``core`` never imports ``plugins`` or ``tui``.
- ``tui`` never imports ``plugins``; ``core`` only lazily.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("lake", "plugins", "core", "tui")
# a plugin module -> the helper modules of its own that it may import
OWN_HELPERS = {
    "plugins.checks.caption_mismatch": {"plugins.checks.common"},
    "plugins.checks.label_conflict": {"plugins.checks.common"},
    "plugins.checks.duplicates": {"plugins.checks.common"},
    "plugins.checks.outliers": {"plugins.checks.common"},
    "plugins.transcribe": {"plugins.whisper_models"},
}


@dataclass(frozen=True)
class Import:
    """One imported module, where, and whether the import runs at module load."""

    module: str
    file: str
    line: int
    lazy: bool  # inside a function body


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> Iterator[Import]:
    """Every import of ``path`` (relative ones resolved), marked lazy inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    rel = str(path.relative_to(REPO))

    def visit(node: ast.AST, lazy: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(alias.name, rel, child.lineno, lazy)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from plugins import x`` imports the module plugins.x
                for alias in child.names:
                    yield Import(f"{base}.{alias.name}", rel, child.lineno, lazy)
            yield from visit(child, inner)

    yield from visit(tree, False)


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _top(module: str) -> str:
    return module.split(".")[0]


def _is_plugin_module(module: str) -> bool:
    return module.startswith("plugins.") and module != "plugins.__init__"


def layering_violations(files: dict[str, list[Path]]) -> list[str]:
    """Every import that breaks the layering, as ``file:line: reason``."""
    bad: list[str] = []
    for package, paths in files.items():
        for path in paths:
            me = _module_name(path)
            for imp in _imports(path):
                top = _top(imp.module)
                where = f"{imp.file}:{imp.line}: imports {imp.module}"
                if package == "lake" and top in ("core", "plugins", "tui"):
                    bad.append(f"{where} (lake imports no sibling package)")
                elif package == "plugins":
                    if top == "plugins" and imp.module != "plugins":
                        allowed = OWN_HELPERS.get(me, set())
                        target = imp.module
                        # ``from plugins.checks.common import x`` gives plugins.checks.common.x
                        if not any(a in (target, target.rpartition(".")[0]) for a in allowed):
                            bad.append(f"{where} (a plugin never imports another plugin)")
                    elif top == "core" and not imp.lazy:
                        bad.append(f"{where} (plugins import core only inside a function)")
                    elif top in ("lightning", "tui"):
                        bad.append(f"{where} (plugins never import {top})")
                elif package == "core" and top in ("plugins", "tui"):
                    bad.append(f"{where} (core never imports {top})")
                elif package == "tui":
                    if top == "plugins":
                        bad.append(f"{where} (tui never imports plugins)")
                    elif top == "core" and not imp.lazy:
                        bad.append(f"{where} (tui imports core only inside a function)")
    return bad


def test_every_package_keeps_its_layer() -> None:
    bad = layering_violations({p: _files(p) for p in PACKAGES})
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("package", "source", "reason"),
    [
        ("plugins", "from plugins.sharegpt import json_type\n", "another plugin"),
        ("plugins", "from core.models.clip import create_clip\n", "inside a function"),
        ("plugins", "def f():\n    import lightning\n", "never import lightning"),
        ("lake", "def f():\n    from plugins.clip_embed import ClipTextEmbedder\n", "sibling"),
        ("core", "from tui.app import LakeloomApp\n", "never imports tui"),
        ("tui", "from core.run_report import report\n", "inside a function"),
    ],
)
def test_the_layering_check_catches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str, source: str, reason: str
) -> None:
    # the checker itself flags each kind of break (a file written where the package is)
    import tests.test_layering as me

    fake = tmp_path / package / "probe.py"
    fake.parent.mkdir()
    fake.write_text(source)
    monkeypatch.setattr(me, "REPO", tmp_path)
    bad = layering_violations({package: [fake]})
    assert len(bad) == 1 and reason in bad[0], bad
    allowed = tmp_path / "plugins" / "transcribe.py"
    allowed.parent.mkdir(exist_ok=True)
    allowed.write_text("from plugins.whisper_models import model_owner\n")
    assert layering_violations({"plugins": [allowed]}) == []


def _top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_shared_source_helpers_have_one_home() -> None:
    # the helpers the JSON sources share live in lake (sources, json_source); a plugin
    # that defines one again has copied it
    owned = _top_level_names(REPO / "lake" / "sources.py") | _top_level_names(
        REPO / "lake" / "json_source.py"
    )
    assert {"dataset_files", "relative_name", "json_type", "JsonRecordsSource"} <= owned
    copies = {
        str(path.relative_to(REPO)): sorted(_top_level_names(path) & owned)
        for path in _files("plugins")
    }
    assert not {k: v for k, v in copies.items() if v}, copies


def test_plugin_kinds_and_result_schema_live_in_lake_plugin() -> None:
    # the four kinds and the check result schema are defined once, in lake/plugin.py
    kinds = {"Source", "Enricher", "Check", "Exporter", "RESULT_SCHEMA"}
    assert kinds <= _top_level_names(REPO / "lake" / "plugin.py")
    for package in PACKAGES:
        for path in _files(package):
            if path != REPO / "lake" / "plugin.py":
                assert not kinds & _top_level_names(path), path


def test_ingest_builds_media_rows_in_one_place() -> None:
    # one builder writes every media row (images and source-analysed media alike)
    tree = ast.parse((REPO / "lake" / "ingest.py").read_text())
    rows = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        and {"media_id", "parent_id"} <= {k.value for k in node.keys if isinstance(k, ast.Constant)}
    ]
    assert len(rows) == 1, f"media rows built at lines {rows} of lake/ingest.py"
