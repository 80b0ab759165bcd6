"""Benchmark: ``lakeloom why ID`` at scale, against a floor.

Builds a lake of ``--n`` samples cheaply (rows written directly with ``Lake.insert_new``
from generated tables: bytes-free image media rows with provenance, one sample per image
``data.jsonl#L<i>``, and ``--n / 100`` video frames of 10 videos, each with a frame
sample), then times :func:`lake.lineage.lineage` for a sample, an image and a frame
(p50 of ``--reps`` random ids, in process) at three states:

- ``no index``: the lake as written, every lookup scans its column;
- ``indexed``: after :func:`lake.lineage.ensure_indexes` (what ingest's finish and
  ``lakeloom compact`` run; its time is reported);
- floor: a pylance ``take`` of the same rows by row id (the least a lookup can cost).

and the CLI wall time of ``lakeloom why`` (p50 of ``--cli-reps``, a new process each:
start-up included) against ``python -c "import lance"`` (the floor of any process that
reads Lance). Quick default ``--n 100000``; the issue's size is ``--n 1000000`` (a few
minutes to build). Other processes sharing the CPU make the figures noisy: compare the
ratios of one run. Prints a table, then one line with a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lake.lineage import Tables, ensure_indexes, lineage  # noqa: E402
from lake.schema import PROVENANCE  # noqa: E402
from lake.store import Lake  # noqa: E402


def _prov(n: int, plugin: str, steps: list[tuple[str, str]]) -> pa.Array:
    one = {
        "plugin": plugin, "plugin_version": "0.1.0", "lakeloom_version": "bench",
        "config_hash": "0" * 16, "run_id": "ingest-bench", "created_at": datetime.now(UTC),
        "steps": [{"name": a, "params": b} for a, b in steps],
    }  # fmt: skip
    return pa.array([one], PROVENANCE).take(pa.array(np.zeros(n, dtype=np.int64)))


def _sha(prefix: str, n: int) -> list[str]:
    return [hashlib.sha256(f"{prefix}{i}".encode()).hexdigest() for i in range(n)]


def ids_of(n: int) -> dict[str, list[str]]:
    """The sample, image, video and frame ids of the lake of ``n`` samples."""
    frames = max(10, n // 100)
    return {"sample": _sha("s", n), "image": _sha("img", n - frames), "video": _sha("vid", 10),
            "frame": _sha("frm", frames)}  # fmt: skip


def build(uri: str, n: int) -> dict[str, list[str]]:
    """The lake; returns sample, image and frame ids."""
    lake = Lake(uri)
    all_ids = ids_of(n)
    img, vids, frm = all_ids["image"], all_ids["video"], all_ids["frame"]
    frames, images = len(frm), len(img)
    steps = [("read", "{}"), ("phash", '{"hash_size": 8}')]
    media = pa.table(
        {
            "media_id": img + vids + frm,
            "kind": ["image"] * images + ["video"] * 10 + ["frame"] * frames,
            "mime": ["image/jpeg"] * (images + 10 + frames),
            "width": pa.array(np.full(images + 10 + frames, 64, np.int32)),
            "height": pa.array(np.full(images + 10 + frames, 48, np.int32)),
            "parent_id": [None] * (images + 10) + [vids[i % 10] for i in range(frames)],
            "t_start": [None] * (images + 10) + [float(i // 10) for i in range(frames)],
            "source_uri": [f"img/{i}.jpg" for i in range(images)]
            + [f"vid/{i}.mp4" for i in range(10)]
            + [f"vid/{i % 10}.mp4#t={i // 10}" for i in range(frames)],
            "provenance": _prov(images + 10 + frames, "llava", steps),
        }
    )
    lake.insert_new("media", media)
    sids = all_ids["sample"]
    samples = pa.table(
        {
            "sample_id": sids,
            "dataset": ["bench"] * n,
            "media_ids": [[m] for m in img + frm],
            "split": ["train"] * n,
            "source_uri": [f"data.jsonl#L{i + 1}" for i in range(n)],
            "provenance": _prov(n, "llava", [("parse", "{}")]),
        }
    )
    lake.insert_new("samples", samples)
    return {"sample": sids, "image": img, "frame": frm}


def p50_ms(fn, ids: list[str]) -> float:
    times = []
    for i in ids:
        t = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="samples (1000000: the issue's size)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--cli-reps", type=int, default=3)
    ap.add_argument(
        "--keep", help="build the lake here and keep it; a lake already there (of --n "
        "samples, indexed) is reused: no build, no `no index` column"
    )  # fmt: skip
    args = ap.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="why-bench-"))
    uri = str(folder / "lake")
    rng = np.random.default_rng(0)
    reuse = (folder / "lake" / "samples.lance").is_dir()
    t = time.perf_counter()
    if reuse:
        every = ids_of(args.n)
        ids = {k: every[k] for k in ("sample", "image", "frame")}
    else:
        ids = build(uri, args.n)
    built = time.perf_counter() - t
    pick = {k: [v[i] for i in rng.choice(len(v), args.reps, replace=False)]
            for k, v in ids.items()}  # fmt: skip
    rows: dict[str, dict[str, float]] = {}

    def measure(state: str) -> None:
        tables = Tables(uri)
        for kind, chosen in pick.items():
            rows.setdefault(kind, {})[state] = p50_ms(lambda i: lineage(tables, i), chosen)

    if not reuse:
        measure("no_index")
    t = time.perf_counter()
    created = ensure_indexes(Lake(uri))
    index_s = time.perf_counter() - t
    measure("indexed")
    tables = Tables(uri)
    for kind, chosen in pick.items():  # floor: the rows by row id, the same columns
        ds = tables.samples if kind == "sample" else tables.media
        key = "sample_id" if kind == "sample" else "media_id"
        rid = (
            ds.to_table(
                columns=[key],
                with_row_id=True,
                filter=f"{key} IN ({', '.join(repr(c) for c in chosen)})",
            )
            .column("_rowid")
            .to_pylist()
        )
        cols = ["source_uri", "provenance"]
        rows[kind]["floor_take"] = p50_ms(
            lambda r, ds=ds, cols=cols: ds.take([r], columns=cols), rid
        )
    cli, cli_media, base = [], [], []
    for i, m in zip(pick["sample"][: args.cli_reps], pick["image"], strict=False):
        for one, times in ((i, cli), (m, cli_media)):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lake.cli", "why", one, f"lake.uri={uri}"],
                           cwd=ROOT, check=True, capture_output=True)  # fmt: skip
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import lance"], check=True)
        base.append(time.perf_counter() - t)
    how = "reused" if reuse else f"built in {built:.1f} s"
    print(f"lake: {args.n:,} samples, {how}; indexes {created} in {index_s:.2f} s")
    print(f"{'id kind':<8}{'no index ms':>13}{'indexed ms':>12}{'floor take ms':>15}{'ratio':>8}")
    for kind, r in rows.items():
        ratio = r["indexed"] / max(r["floor_take"], 1e-6)
        print(f"{kind:<8}{r.get('no_index', float('nan')):>13.1f}{r['indexed']:>12.1f}"
              f"{r['floor_take']:>15.2f}"
              f"{ratio:>8.1f}")  # fmt: skip
    cli_s, base_s = statistics.median(cli), statistics.median(base)
    cli_media_s = statistics.median(cli_media)
    print(
        f"CLI `lakeloom why` {cli_s:.2f} s wall for a sample, {cli_media_s:.2f} s for an image "
        f"(p50 of {len(cli)}), `python -c 'import lance'` {base_s:.2f} s"
    )
    print("(2-core machine shared with other jobs: figures are noisy, compare ratios)")
    figures = {"n": args.n, "build_s": round(built, 1), "index_s": round(index_s, 2),
               "ms": {k: {s: round(v, 2) for s, v in r.items()} for k, r in rows.items()},
               "cli_s": round(cli_s, 2), "cli_image_s": round(cli_media_s, 2),
               "import_lance_s": round(base_s, 2)}  # fmt: skip
    print(json.dumps(figures))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
