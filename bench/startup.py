"""Benchmark: how long the light commands and the TUI take to start, against their floors.

Each repeat runs every command once, interleaved, each in a fresh process (so the
others' load on the machine hits all of them alike):
  - ``python -c pass``: the interpreter's floor;
  - ``lakeloom --help``;
  - ``lakeloom stats`` and ``lakeloom versions`` (goal < 1 s), against a bare pylance
    script printing the same counts (the floor of the light read path) and the bare
    lancedb script of PERF.md item 1 (what the counts cost with lancedb);
  - ``lakeloom query text=... k=5``: its first call (an empty query-vector cache: the
    model is loaded) and a repeated call (the vector comes from ``vector_cache``; goal
    < 3 s). Only on a lake with CLIP embeddings and the model that made them;
  - the TUI's first paint: ``python -m tui`` in a pseudo-terminal of 200 x 50, from the
    spawn until the first sample's id is on screen (goal < 1 s), against a bare Textual
    app showing the same rows read with ``lance`` (PERF.md item 1's baseline).

The lake is ``data/lake`` (``make demo``) when present, else a small one the bench writes
through ``Lake.insert_new`` (no embeddings: no query rows then). Prints median [min-max]
per command and a last line with a JSON object of the figures. Other processes share the
machine's cores: compare the ratios of one run, not figures across runs.

    python bench/startup.py [--reps 3] [--lake DIR] [--no-query] [--no-tui] [--importtime]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PY = sys.executable
LAKELOOM = str(Path(PY).parent / "lakeloom")
QUERY_TEXT = "a red circle"
# issue 19's absolute goals, wall seconds (the table marks each median met or missed)
GOALS = {"lakeloom stats": 1.0, "lakeloom versions": 1.0, "TUI first paint with rows": 1.0,
         "lakeloom query (repeated)": 3.0}  # fmt: skip

BARE_PYLANCE = """
import collections, sys, lance
uri = sys.argv[1]
for t in ("media", "samples", "runs"):
    print(t, lance.dataset(f"{uri}/{t}.lance").count_rows())
s = lance.dataset(f"{uri}/samples.lance").to_table(columns=["dataset"]).column("dataset")
m = lance.dataset(f"{uri}/media.lance").to_table(columns=["kind"]).column("kind")
print(collections.Counter(s.to_pylist()), collections.Counter(m.to_pylist()))
"""

BARE_LANCEDB = """
import collections, sys, lancedb
db = lancedb.connect(sys.argv[1])
for t in ("media", "samples", "runs"):
    print(t, db.open_table(t).count_rows())
s = db.open_table("samples").to_lance().to_table(columns=["dataset"]).column("dataset")
m = db.open_table("media").to_lance().to_table(columns=["kind"]).column("kind")
print(collections.Counter(s.to_pylist()), collections.Counter(m.to_pylist()))
"""

BARE_TUI = """
import sys
from textual.app import App
from textual.widgets import DataTable, Header

class Base(App):
    def compose(self):
        yield Header()
        yield DataTable()

    def on_mount(self):
        import lance
        t = lance.dataset(sys.argv[1] + "/samples.lance").to_table(
            columns=["dataset", "label", "caption", "sample_id"], limit=60)
        dt = self.query_one(DataTable)
        dt.add_columns("dataset", "label", "caption", "id")
        for r in t.to_pylist():
            dt.add_row(" " + r["dataset"] + " ", r["label"] or "", (r["caption"] or "")[:30],
                       r["sample_id"][:10])

Base().run()
"""


def env() -> dict[str, str]:
    """Offline, no telemetry, a plain xterm."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("TMUX", "TEXTUAL"))}
    out.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TERM="xterm-256color",
        PYTHONDONTWRITEBYTECODE="0",
    )
    out.pop("LAKELOOM_CONFIG_DIR", None)
    return out


def timed(cmd: list[str]) -> float:
    """Wall seconds of one command; it must succeed."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall


def paint(cmd: list[str], marker: str) -> float:
    """Seconds from spawning ``cmd`` in a 200 x 50 pty until ``marker`` is on screen."""
    import pexpect

    # pexpect forks and at once execs the command: Lance's fork warning does not apply
    warnings.filterwarnings("ignore", "lance is not fork-safe")

    t0 = time.perf_counter()
    child = pexpect.spawn(
        cmd[0], cmd[1:], cwd=str(REPO), env=env(), dimensions=(50, 200), timeout=60,
        encoding="utf-8", codec_errors="replace",
    )  # fmt: skip
    try:
        child.expect(re.escape(marker))
        return time.perf_counter() - t0
    finally:
        child.close(force=True)  # the child we spawned, by its pid


def small_lake(folder: Path, n: int = 500) -> Path:
    """A lake of ``n`` samples over ``n // 5`` media, written by the real writer."""
    import hashlib

    import pyarrow as pa

    from lake.store import Lake

    lake = Lake(folder)
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n // 5)]
    media = [{"media_id": m, "kind": "image", "mime": "image/png"} for m in ids]
    samples = [
        {
            "sample_id": hashlib.sha256(f"s{i}".encode()).hexdigest(),
            "dataset": f"set{i % 3}",
            "media_ids": [ids[i % len(ids)]],
            "caption": f"caption number {i}",
            "label": ("cat", "dog")[i % 2],
        }
        for i in range(n)
    ]
    lake.insert_new("media", pa.Table.from_pylist(media))
    lake.insert_new("samples", pa.Table.from_pylist(samples))
    return folder


def has_embeddings(lake: Path) -> bool:
    """Whether the lake's media carry CLIP vectors (query can run)."""
    import lance

    ds = lance.dataset(str(lake / "media.lance"))
    if "clip_image" not in ds.schema.names:
        return False
    return ds.count_rows(filter="clip_image IS NOT NULL") > 0


def first_sample_id(lake: Path) -> str:
    """The id of the first row of the samples table as both apps show it (first page)."""
    import lance

    t = lance.dataset(str(lake / "samples.lance")).to_table(columns=["sample_id"], limit=1)
    return t.column("sample_id")[0].as_py()[:8]


def importtime(args: list[str], top: int = 12) -> list[tuple[float, str]]:
    """The ``top`` imports by cumulative seconds of ``lakeloom <args>``."""
    code = "import sys; from lake.cli import main; sys.argv=['lakeloom', *sys.argv[1:]]; main()"
    done = subprocess.run(
        [PY, "-X", "importtime", "-c", code, *args], cwd=REPO, env=env(),
        capture_output=True, text=True,
    )  # fmt: skip
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(2)) / 1e6, m.group(3)[1:] + m.group(4)))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    """Run the interleaved repeats and print the table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lake", type=Path, default=None)
    ap.add_argument("--no-query", action="store_true")
    ap.add_argument("--no-tui", action="store_true")
    ap.add_argument("--importtime", action="store_true", help="also list the costliest imports")
    a = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="lakeloom-startup-"))
    atexit.register(shutil.rmtree, scratch, True)  # the small lake and query caches
    lake = a.lake or (REPO / "data" / "lake")
    if not (lake / "samples.lance").is_dir():
        lake = small_lake(scratch / "lake")
    lake = lake.resolve()
    runs_dir = REPO / "runs"
    uri = f"lake.uri={lake}"
    marker = first_sample_id(lake)
    query = not a.no_query and has_embeddings(lake)

    cases: dict[str, Callable[[int], float]] = {
        "python -c pass": lambda r: timed([PY, "-c", "pass"]),
        "lakeloom --help": lambda r: timed([LAKELOOM, "--help"]),
        "lakeloom stats": lambda r: timed([LAKELOOM, "stats", uri]),
        "lakeloom versions": lambda r: timed([LAKELOOM, "versions", uri]),
        "bare pylance counts": lambda r: timed([PY, "-c", BARE_PYLANCE, str(lake)]),
        "bare lancedb counts": lambda r: timed([PY, "-c", BARE_LANCEDB, str(lake)]),
    }
    if query:
        q = [LAKELOOM, "query", uri, f"text={QUERY_TEXT}", "k=5", f"runs_dir={runs_dir}"]
        cache = lambda r: f"vector_cache={scratch / f'vectors{r}'}"  # noqa: E731
        cases["lakeloom query (first call)"] = lambda r: timed([*q, cache(r)])
        cases["lakeloom query (repeated)"] = lambda r: timed([*q, cache(r)])
    if not a.no_tui:
        # halfblock: in auto mode textual-image queries the terminal (0.1 s timeouts), and
        # pexpect's pty never answers where a real terminal answers at once
        tui = [PY, "-m", "tui", uri, f"runs_dir={runs_dir}", "tui.graphics=halfblock"]
        cases["TUI first paint with rows"] = lambda r: paint(tui, marker)
        bare = [PY, "-c", BARE_TUI, str(lake)]
        cases["bare Textual + lance paint"] = lambda r: paint(bare, marker)

    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(a.reps):
        for name, fn in cases.items():
            times[name].append(fn(r))
        print(f"rep {r + 1}/{a.reps} done (load {os.getloadavg()[0]:.2f})", file=sys.stderr)

    floor = statistics.median(times["python -c pass"])
    print(f"\nlake {lake}; {a.reps} interleaved reps; wall seconds; load is shared, see ratios\n")
    print(f"{'command':<30}{'median':>8}  {'[min-max]':<15}{'x floor':>8}  goal")
    figures: dict[str, dict[str, float]] = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        figures[name] = {"median_s": round(med, 3), "min_s": round(min(ts), 3),
                         "max_s": round(max(ts), 3)}  # fmt: skip
        goal = GOALS.get(name)
        mark = "" if goal is None else f"  < {goal:g} s: {'met' if med < goal else 'MISSED'}"
        print(
            f"{name:<30}{med:>8.2f}  [{min(ts):.2f}-{max(ts):.2f}]{'':<4}{med / floor:>8.1f}{mark}"
        )
    ratios = {}
    if "TUI first paint with rows" in times:
        ratios["tui_vs_bare"] = round(
            figures["TUI first paint with rows"]["median_s"]
            / figures["bare Textual + lance paint"]["median_s"],
            2,
        )
    ratios["stats_vs_bare_pylance"] = round(
        figures["lakeloom stats"]["median_s"] / figures["bare pylance counts"]["median_s"], 2
    )
    print("\nratios (same run):", ", ".join(f"{k} {v}" for k, v in ratios.items()))
    if a.importtime:
        for args in (["stats", uri], ["versions", uri]):
            print(f"\ncostliest imports of lakeloom {args[0]} (cumulative s):")
            for secs, mod in importtime(args):
                print(f"  {secs:6.3f}  {mod}")
    print(json.dumps({"lake": str(lake), "reps": a.reps, "figures": figures, "ratios": ratios}))


if __name__ == "__main__":
    main()
