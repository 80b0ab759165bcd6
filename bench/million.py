"""Benchmark: the curation passes on lakes of 100k, 300k and 1M real small JPEG samples.

For each size N the lake is built through the product itself: the shapes demo images
(``lake.demo_data.generate``, 64 px JPEGs with planted wrong captions and exact / near
duplicates) are generated once for the largest size and each size ingests the first N of
them as captioned, labelled pairs (``lakeloom ingest source=clip_pairs``: decode, phash,
thumbnail),
then ``lakeloom enrich enrich=clip`` (the tiny CLIP of ``conf/enrich/clip.yaml``, image and
caption vectors, IVF_PQ index from 100k rows) and ``lakeloom enrich enrich=tokens`` (token
counts for the packing plan). Then it times, each step in its own process:

- ``dups``: ``lakeloom check`` with only the duplicates check;
- ``checks``: ``lakeloom check`` with the other checks (caption mismatch, label conflict,
  outliers);
- ``split``: ``lakeloom split``;  ``export``: ``lakeloom export export=clip_pairs_csv split=train``;
- ``query``: a text query through :func:`lake.query.run_query`'s path (model loaded from
  the lake's model id, embed, :func:`lake.query.search`), p50 of ``--reps`` new texts
  after the first;
- ``packing``: :func:`core.data.packing.plan_from_lake` on the stored token counts;
- ``why``: :func:`lake.lineage.lineage` of ``--reps`` random samples and images (p50).

Each step reports its process's wall seconds (start-up included: what a user waits for)
and peak RSS (``ru_maxrss`` of that process from ``wait4``); query, packing and why also
report the in-process figure (p50 ms / plan seconds), which is what their growth exponent
uses. The growth exponent between consecutive sizes is ``log(t2/t1) / log(n2/n1)``: the
baseline is 1.0 (linear). ``--floor`` adds, per size, ingest's rate against a floor that
only reads, decodes and phashes the first 20k of the same files (bench/ingest.py's floor).

    python bench/million.py [--sizes 100000,300000,1000000] [--keep DIR]
                            [--steps ingest,clip,tokens,dups,checks,split,export,query,packing,why]

With ``--keep`` the generated images, the lakes and every measured figure
(``DIR/results.json``) are kept, so the steps can be run in several commands; the table
shows every figure stored for the sizes asked. Prints a table and a last line with a JSON
object of the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("ingest", "clip", "tokens", "dups", "checks", "split", "export", "query", "packing", "why")
INNER = ("query", "packing", "why")  # timed in process: their exponent uses the inner figure
TEXTS = (
    "a red circle",
    "a blue square on a dark background",
    "a green star",
    "a yellow triangle on stripes",
    "a hexagon",
    "a purple cross on a gradient",
    "a small orange circle",
    "a large white square",
    "a star on noise",
    "a cross",
    "a blue hexagon",
)
FLOOR_FILES = 20_000
CAPACITY = 4096  # packing rows (bench/packing.py's default)


def lakeloom(*args: str) -> list[str]:
    """The command line of a lakeloom job run by this interpreter's venv."""
    return [sys.executable, "-c", "from lake.cli import main; main()", *args]


def run_measured(cmd: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` as its own process; wall seconds, peak RSS (MiB) and its last output line."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        tail = "\n".join(text[-15:])
        raise RuntimeError(f"{' '.join(cmd[3:]) or cmd} failed ({proc.returncode}); {log}:\n{tail}")
    return {"s": round(seconds, 2), "rss_mb": round(usage.ru_maxrss / 1024, 1), "last": text[-1:]}


def python(code: str, env: dict[str, str]) -> None:
    """Run ``code`` in a fresh interpreter: this launcher stays small, as every step's
    ``ru_maxrss`` starts from the launcher's (a forked child keeps its high-water mark)."""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def images_for(keep: Path, n: int, biggest: int, size: int, env: dict[str, str]) -> Path:
    """The folder of generated images holding at least ``n`` (made for ``biggest`` if none)."""
    have = sorted(
        (int(p.name.split("_")[1]), p)
        for p in keep.glob("images_*")
        if p.is_dir() and (p / "ground_truth.json").exists() and p.name.split("_")[1].isdigit()
    )
    for m, path in have:
        if m >= n:
            return path
    path = keep / f"images_{biggest}"
    t0 = time.perf_counter()
    python(
        f"from lake.demo_data import generate; generate({str(path)!r}, n={biggest}, seed=0, "
        f"size={size})",
        env,
    )
    print(f"generated {biggest:,} images ({size} px) in {time.perf_counter() - t0:.0f} s")
    return path


def prefix_csv(images: Path, n: int) -> Path:
    """``captions_<n>.csv``: the first ``n`` rows of the generated ``captions.csv``."""
    out = images / f"captions_{n}.csv"
    if not out.exists():
        lines = (images / "captions.csv").read_text().splitlines(keepends=True)
        if len(lines) - 1 < n:
            raise SystemExit(f"{images} holds {len(lines) - 1} images, fewer than {n}")
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(lines[: n + 1]))
        tmp.rename(out)
    return out


def clip_weights(keep: Path, env: dict[str, str] | None = None) -> Path:
    """A tiny CLIP's random weights saved once, so the enricher and the query load one model."""
    path = keep / "tiny-clip.pt"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        python(
            "import torch; from core.models.clip import create_clip; torch.manual_seed(0); "
            f"torch.save(create_clip('tiny-clip')[0].state_dict(), {str(tmp)!r})",
            env or dict(os.environ),
        )
        tmp.rename(path)
    return path


def step_command(
    step: str, n: int, lake_args: list[str], keep: Path, reps: int, env: dict[str, str]
) -> list[str]:
    """The command line of one step on the lake of size ``n``."""
    if step == "ingest":
        raise AssertionError("ingest is run by main (it also picks the images)")
    if step == "clip":
        weights = f"enrich.model.pretrained={clip_weights(keep, env)}"
        return lakeloom("enrich", "enrich=clip", weights, "enrich.progress=false", *lake_args)
    if step == "tokens":
        prompt = "enrich.model.caption_prompt=Describe the image."
        return lakeloom("enrich", "enrich=tokens", prompt, "enrich.progress=false", *lake_args)
    if step == "dups":
        off = [f"check.checks.{c}=null" for c in ("caption_mismatch", "label_conflict", "outliers")]
        return lakeloom("check", *off, *lake_args)
    if step == "checks":
        return lakeloom("check", "check.checks.duplicates=null", *lake_args)
    if step == "split":
        return lakeloom("split", *lake_args)
    if step == "export":
        out = keep / f"export_{n}"
        exporter = "export=clip_pairs_csv"
        return lakeloom("export", exporter, "split=train", f"out={out}", "force=true", *lake_args)
    me = str(Path(__file__).resolve())
    return [
        sys.executable,
        me,
        "--inner",
        step,
        "--reps",
        str(reps),
        "--keep",
        str(keep),
        *lake_args,
    ]


def inner(step: str, lake_uri: str, reps: int, keep: Path) -> dict[str, Any]:
    """One in-process measurement (run in its own process by the parent)."""
    import numpy as np

    from lake.schema import MEDIA, SAMPLES
    from lake.store import Lake

    lake = Lake(lake_uri)
    rng = np.random.default_rng(0)
    if step == "query":
        from lake.query import lake_model, load_embedder, search

        times = []
        for i, text in enumerate(TEXTS[: reps + 1]):
            t0 = time.perf_counter()
            if i == 0:
                lake_model(lake)
                embedder = load_embedder(lake, pretrained=str(clip_weights(keep)), device="cpu")
            vector = embedder.embed_texts([text])[0]
            hits = search(lake, vector, k=10)
            times.append(time.perf_counter() - t0)
            assert hits, f"no hits for {text!r}"
        return {
            "first_ms": round(times[0] * 1e3, 1),
            "p50_ms": round(statistics.median(times[1:]) * 1e3, 1),
        }
    if step == "packing":
        from core.data.packing import plan_from_lake

        t0 = time.perf_counter()
        plan, ids = plan_from_lake(lake.dataset(SAMPLES), "tokens_qwen2_vl", CAPACITY, seed=0)
        seconds = time.perf_counter() - t0
        return {
            "plan_s": round(seconds, 3),
            "samples": len(ids),
            "planned": len(plan.members),
            "mean_tokens": round(float(plan.tokens.sum()) / max(len(plan.members), 1), 1),
            "rows": len(plan),
            "padding": round(plan.padding, 4),
        }
    if step == "why":
        from lake.lineage import Tables, lineage

        out: dict[str, Any] = {}
        for table, key in ((SAMPLES, "sample_id"), (MEDIA, "media_id")):
            ds = lake.dataset(table)
            picks = rng.choice(ds.count_rows(), size=min(reps + 1, ds.count_rows()), replace=False)
            ids = ds.take(sorted(int(i) for i in picks), columns=[key]).column(key).to_pylist()
            tables = Tables(lake_uri)
            times = []
            for row_id in ids:
                t0 = time.perf_counter()
                info = lineage(tables, row_id)
                times.append(time.perf_counter() - t0)
                assert info["id"] == row_id
            out[f"{table}_p50_ms"] = round(statistics.median(times[1:] or times) * 1e3, 1)
        out["p50_ms"] = max(out["samples_p50_ms"], out["media_p50_ms"])
        return out
    raise SystemExit(f"unknown inner step {step}")


def ingest_floor(images: Path, n: int, env: dict[str, str]) -> float:
    """Files/s of bench/ingest.py's floor (read + decode + phash, one process per core) on
    the first ``FLOOR_FILES`` of the ``n`` files ingested (in its own process)."""
    names = [line.split(",", 1)[0] for line in prefix_csv(images, n).read_text().splitlines()[1:]]
    files = [str(images / name) for name in names[:FLOOR_FILES]]
    code = (
        "import json, os, sys; from pathlib import Path; sys.path.insert(0, 'bench'); "
        "from ingest import floor; files = [Path(p) for p in json.loads(sys.stdin.read())]; "
        "print(len(files) / floor(files, os.cpu_count() or 1, 256))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(files), capture_output=True, text=True,
        cwd=ROOT, env=env, check=True,
    )  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def exponent(t1: float, t2: float, n1: int, n2: int) -> float | None:
    """Growth exponent log(t2/t1) / log(n2/n1) (1.0 = linear)."""
    if t1 <= 0 or t2 <= 0:
        return None
    return round(math.log(t2 / t1) / math.log(n2 / n1), 2)


def primary(step: str, fig: dict[str, Any]) -> float:
    """The figure a step's growth exponent compares: in-process where there is one."""
    if step == "query" or step == "why":
        return fig["p50_ms"] / 1e3
    if step == "packing":
        return fig["plan_s"]
    return fig["s"]


def main() -> None:
    """Build the lakes, run the steps, print the table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--keep", type=Path, help="folder kept for images, lakes and results")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--reps", type=int, default=5, help="query texts / why ids after the first")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=0, help="generate at least this many images")
    ap.add_argument(
        "--floor", action="store_true", help="ingest rate against a read+decode+phash floor"
    )
    ap.add_argument("--inner", choices=INNER, help=argparse.SUPPRESS)
    ap.add_argument("lake_args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.inner:
        uri = next(a.split("=", 1)[1] for a in args.lake_args if a.startswith("lake.uri="))
        print(json.dumps(inner(args.inner, uri, args.reps, args.keep)))
        return

    sizes = sorted(int(s) for s in args.sizes.split(","))
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; choose from {','.join(STEPS)}")
    keep = args.keep or Path(tempfile.mkdtemp(prefix="lakeloom-million-"))
    keep = keep.resolve()
    keep.mkdir(parents=True, exist_ok=True)
    results_path = keep / "results.json"
    results: dict[str, dict[str, Any]] = (
        json.loads(results_path.read_text()) if results_path.exists() else {}
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "XDG_CACHE_HOME": str(keep / "cache"),
    }
    t_all = time.perf_counter()
    for n in sizes:
        lake = keep / f"lake_{n}"
        lake_args = [
            f"lake.uri={lake}",
            f"lake.reports={keep / f'reports_{n}'}",
            f"runs_dir={keep / 'runs'}",
        ]
        got = results.setdefault(str(n), {})
        for step in steps:
            log = keep / "logs" / f"{n}_{step}.log"
            if step == "ingest":
                biggest = max(sizes[-1], args.images)
                images = images_for(keep, n, biggest, args.image_size, env)
                data = prefix_csv(images, n)
                shutil.rmtree(lake, ignore_errors=True)
                cmd = lakeloom(
                    "ingest", "source=clip_pairs", f"source.path={data}",
                    "source.label_column=label", "dataset=shapes", "ingest.progress=false",
                    *lake_args,
                )  # fmt: skip
                fig = run_measured(cmd, log, env)
                if args.floor:
                    floor_rate = ingest_floor(images, n, env)
                    fig["floor_ratio"] = round((n / fig["s"]) / floor_rate, 3)
            else:
                if not lake.exists():
                    raise SystemExit(f"no lake for {n}: run --steps ingest first (with --keep)")
                cmd = step_command(step, n, lake_args, keep, args.reps, env)
                fig = run_measured(cmd, log, env)
                if step in INNER:
                    fig.update(json.loads(fig["last"][0]))
            fig.pop("last", None)
            got[step] = fig
            print(f"{n:>9,} {step:<8} {fig}", flush=True)
            results_path.write_text(json.dumps(results, indent=1))

    launcher_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report(results, sizes, time.perf_counter() - t_all, launcher_mb)
    if args.keep is None:
        shutil.rmtree(keep, ignore_errors=True)


def report(
    results: dict[str, dict[str, Any]], sizes: list[int], total_s: float, launcher_mb: float
) -> None:
    """Print the table of every stored figure for ``sizes`` and the JSON line."""
    print()
    head = f"{'step':<9}" + "".join(f"{f'{n:,} s':>13}{'MiB':>7}" for n in sizes)
    pairs = list(itertools.pairwise(sizes))
    head += "".join(f"{f'exp {a // 1000}k-{b // 1000}k':>15}" for a, b in pairs)
    print(head)
    print("-" * len(head))
    out: dict[str, Any] = {
        "bench": "million",
        "sizes": sizes,
        "steps": {},
        "seconds": round(total_s, 1),
    }
    for step in STEPS:
        figs = [results.get(str(n), {}).get(step) for n in sizes]
        if not any(figs):
            continue
        line = f"{step:<9}"
        for fig in figs:
            if fig is None:
                line += f"{'-':>13}{'-':>7}"
                continue
            shown = f"{fig['s']:.1f}"
            if step in INNER:
                shown = f"{fig['p50_ms']:.0f}ms/" if step != "packing" else f"{fig['plan_s']:.2f}/"
                shown += f"{fig['s']:.0f}"
            line += f"{shown:>13}{fig['rss_mb']:>7.0f}"
        exps = []
        for a, b in pairs:
            fa, fb = results.get(str(a), {}).get(step), results.get(str(b), {}).get(step)
            e = exponent(primary(step, fa), primary(step, fb), a, b) if fa and fb else None
            exps.append(e)
            line += f"{'-' if e is None else f'{e:.2f}':>15}"
        print(line)
        out["steps"][step] = {
            "figures": dict(zip(map(str, sizes), figs, strict=True)),
            "exponents": exps,
        }
    print(
        "seconds = the step's own process, start-up included; query / why: p50 ms in process / "
        "process s; packing: plan s / process s; exponent 1.0 = linear (the baseline); "
        f"MiB = the step process's peak RSS (this launcher's own: {launcher_mb:.0f} MiB)"
    )
    out["launcher_rss_mb"] = round(launcher_mb, 1)
    for n in sizes:
        ratio = results.get(str(n), {}).get("ingest", {}).get("floor_ratio")
        if ratio is not None:
            print(f"ingest {n:,}: {ratio:.2f} of the read+decode+phash floor's rate")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
