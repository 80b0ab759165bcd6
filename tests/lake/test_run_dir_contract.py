"""One run-directory contract: ``lake.runs`` alone spells a run folder's names.

The grep test walks the string literals of ``core``, ``lake``, ``plugins`` and ``tui``
(docstrings left out: they may describe the layout) and fails when a run directory's
file or folder name appears outside ``lake/runs.py``. The unit tests pin the layout,
the events writer / reader and that the module stays torch-free.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lake import runs

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "lake", "plugins", "tui")
OWNER = Path("lake/runs.py")

#: file names of a run directory: forbidden anywhere inside a literal
FILE_NAMES = re.compile(
    r"events\.jsonl|summary\.json|(?:last|best)\.ckpt|step-[^/]*\.ckpt|adapter-(?:step|last)"
)
#: folder / file names forbidden as a whole literal or as a path component of one
WHOLE = {"config.yaml", "checkpoints", "hf", "merged", "open_clip", "step-"}

#: (file, literal, why): literals that equal a name but do not name a run's file
ALLOWED = {
    ("core/models/clip.py", "open_clip"): "the ClipModule checkpoint's dict key of its config",
    ("core/modules/clip_module.py", "open_clip"): "the same checkpoint dict key, written",
    ("lake/job.py", "open_clip"): "open_clip's package folder in a log record's path",
}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            out.add(id(body[0].value))
    return out


def _ignored(tree: ast.AST) -> set[int]:
    """Literals that are module names of imports (``import_module("open_clip")``)."""
    out = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "find_spec", "getLogger")
            and node.args
        ):
            out.add(id(node.args[0]))
    return out


def run_dir_literals(root: Path = REPO) -> list[str]:
    """``file:line: literal`` of every run-directory name spelled outside the owner."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            if rel == OWNER:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), str(rel))
            skip = _docstrings(tree) | _ignored(tree)
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                    continue
                value = node.value
                if id(node) in skip or (rel.as_posix(), value) in ALLOWED:
                    continue
                parts = set(re.split(r"[/\\]", value)) | {value}
                if FILE_NAMES.search(value) or parts & WHOLE:
                    found.append(f"{rel}:{node.lineno}: {value!r}")
    return found


def test_no_run_directory_name_is_spelled_outside_lake_runs() -> None:
    found = run_dir_literals()
    assert not found, (
        "run-directory names belong to lake/runs.py (use lake.runs.RunDir / its constants):\n"
        + "\n".join(found)
    )


def test_the_grep_sees_a_copy(tmp_path: Path) -> None:
    """The scan is not vacuous: the old spellings are caught, docstrings are not."""
    pkg = tmp_path / "tui"
    pkg.mkdir()
    (pkg / "x.py").write_text(
        '"""Reads events.jsonl and checkpoints/last.ckpt."""\n'
        "from pathlib import Path\n"
        "def f(p: Path) -> list:\n"
        '    """The hf/ folder."""\n'
        '    return [p / "events.jsonl", p / "hf", p / "checkpoints" / "last.ckpt",\n'
        '            p.glob("*/config.yaml"), f"{p}/step-{1:07d}.ckpt", p / "merged"]\n'
    )
    found = sorted(f.split(": ", 1)[1] for f in run_dir_literals(tmp_path))
    assert found == sorted(
        ["'events.jsonl'", "'hf'", "'checkpoints'", "'last.ckpt'", "'*/config.yaml'",
         "'/step-'", "'merged'"]
    )  # fmt: skip


def test_run_dir_layout(tmp_path: Path) -> None:
    run = runs.RunDir.of(tmp_path, "r1")
    assert run.run_id == "r1" and run.path == tmp_path / "r1"
    names = {
        run.config: "r1/config.yaml",
        run.events: "r1/events.jsonl",
        run.summary: "r1/summary.json",
        run.last_ckpt: "r1/checkpoints/last.ckpt",
        run.best_ckpt: "r1/checkpoints/best.ckpt",
        run.step_checkpoint(120): "r1/checkpoints/step-0000120.ckpt",
        run.adapter_dir(40): "r1/checkpoints/adapter-step-0000040",
        run.adapter_last: "r1/checkpoints/adapter-last",
        run.hf: "r1/hf",
        run.merged: "r1/merged",
        run.open_clip: "r1/open_clip",
    }
    for path, rel in names.items():
        assert path.relative_to(tmp_path).as_posix() == rel
    # Lightning's ModelCheckpoint fills the template with its own format call
    assert runs.STEP_TEMPLATE.format(step=120) + runs.CKPT_SUFFIX == "step-0000120.ckpt"
    assert not run.is_run()
    run.checkpoints.mkdir(parents=True)
    for step in (3, 12, 7):
        run.step_checkpoint(step).write_bytes(b"x")
    (run.checkpoints / "step-junk.ckpt").write_bytes(b"x")
    assert [p.name for p in run.step_checkpoints()] == [
        "step-0000012.ckpt",
        "step-0000007.ckpt",
        "step-0000003.ckpt",
    ]
    run.config.write_text("a: 1\n")
    assert runs.run_dirs(tmp_path) == [run]


def test_event_log_round_trip_skips_torn_and_corrupt_lines(tmp_path: Path) -> None:
    run = runs.RunDir(tmp_path / "r")
    log = runs.EventLog(run.events)
    log.write(runs.EV_STATUS, status=runs.STARTED, loss=float("nan"))
    log.write(runs.EV_TRAIN, step=1, loss=0.5, nested={"x": float("inf")})
    log.close()
    with run.events.open("a", encoding="utf-8") as fh:
        fh.write('not json\n{"no_type": 1}\n\n{"t": 1, "type": "val", "st')  # torn last line
    events = runs.read_events(run.events)
    assert [e["type"] for e in events] == ["status", "train"]
    assert events[0]["loss"] is None and events[1]["nested"] == {"x": None}
    assert runs.read_events(run.path) == events  # a run folder reads its log
    assert run.is_run()
    assert runs.events_path(run.path) == run.events == runs.events_path(run.events)
    with pytest.raises(ValueError):
        runs.parse_event(b"\xff\xfe")
    assert runs.parse_event(b"  \n") is None


def test_summary_is_written_atomically_and_read_back(tmp_path: Path) -> None:
    run = runs.RunDir(tmp_path / "r")
    run.path.mkdir()
    assert runs.read_summary(run) is None
    runs.write_summary(run, {"status": runs.FINISHED, "step": 3})
    assert json.loads(run.summary.read_text()) == {"status": "finished", "step": 3}
    assert runs.read_summary(run) == {"status": "finished", "step": 3}
    assert [p.name for p in run.path.iterdir()] == [runs.SUMMARY_FILE]
    run.summary.write_text("[1]")
    with pytest.raises(ValueError, match="not a JSON object"):
        runs.read_summary(run)


def test_lake_runs_is_torch_free() -> None:
    code = "import sys, lake.runs; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
