"""Benchmark: ingest N demo images through `image_folder` vs a read+decode+phash floor.

Both sides use the same number of worker processes and the same files (page cache warm
for both). Each round runs the floor, then the lake ingest into a new lake, then the floor
again, and compares the ingest with the faster floor of its round; the ratio reported is
the median over ``--rounds`` (this 2-core box moves single runs by +-10 %). The one-time
``lancedb`` import is timed and shown on its own line, outside the ingest throughput.
Prints a table and a last line with a JSON object of the figures.

    python bench/ingest.py [--n 10000] [--workers auto] [--rounds 3] [--keep DIR]

``--keep DIR`` keeps the generated images (and the lake) there: a later run with the same
``--n`` reuses them instead of generating them again (100k images take a while).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import imagehash
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lake.demo_data import generate
from lake.ingest import IngestSettings, ingest
from lake.store import Lake
from plugins.image_folder import ImageFolderSource


def _floor_chunk(paths: list[str]) -> int:
    for p in paths:
        with open(p, "rb") as fh:
            img = Image.open(fh)
            img.load()
            imagehash.phash(img)
    return len(paths)


def floor(files: list[Path], workers: int, chunk: int) -> float:
    """Seconds to read, decode and phash every file with ``workers`` processes."""
    chunks = [[str(p) for p in files[i : i + chunk]] for i in range(0, len(files), chunk)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        done = sum(pool.imap(_floor_chunk, chunks))
    assert done == len(files)
    return time.perf_counter() - t0


def main() -> None:
    """Run both sides and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="folder for data and lake (default: a temp dir)")
    args = ap.parse_args()
    workers = os.cpu_count() or 1 if args.workers == "auto" else int(args.workers)

    load = os.getloadavg()[0]  # other work on the box moves the absolute rates
    work = args.keep or Path(tempfile.mkdtemp(prefix="lakeloom-bench-"))
    data = work / "shapes"
    t0 = time.perf_counter()
    gen = generate(data, n=args.n, seed=0, wrong_caption_frac=0, exact_dup_frac=0, near_dup_frac=0)
    gen_s = time.perf_counter() - t0
    files = sorted(p for p in data.rglob("*.jpg"))
    n = len(files)

    lake_dir = work / "lake"
    settings = IngestSettings(workers=workers, chunk_size=args.chunk, progress=False)
    t0 = time.perf_counter()
    assert Lake(lake_dir).db is not None  # the one-time lancedb import, apart from throughput
    open_s = time.perf_counter() - t0
    rounds = []  # (floor seconds, ingest seconds, ingest main-process CPU seconds)
    for _ in range(args.rounds):
        floor_a = floor(files, workers, args.chunk)
        shutil.rmtree(lake_dir, ignore_errors=True)
        lake = Lake(lake_dir)
        t0, cpu0 = time.perf_counter(), time.process_time()
        report = ingest(ImageFolderSource(data), lake, settings=settings)
        lake_s = time.perf_counter() - t0
        main_cpu_s = time.process_time() - cpu0  # what the main process takes from the workers
        assert report.new_samples == n, report.summary()
        rounds.append((min(floor_a, floor(files, workers, args.chunk)), lake_s, main_cpu_s))
    ratios = sorted(lake_s / floor_s for floor_s, lake_s, _ in rounds)
    ratio = statistics.median(ratios)
    floor_s, lake_s, main_cpu_s = min(rounds, key=lambda r: abs(r[1] / r[0] - ratio))
    overhead = ratio - 1
    rows = [
        ("floor: read + decode + phash", floor_s, n / floor_s),
        ("lakeloom ingest (image_folder)", lake_s, n / lake_s),
    ]
    print(
        f"{n} images ({gen['images']} generated in {gen_s:.1f} s), {workers} worker processes, "
        f"load {load:.2f} at start"
    )
    print(f"{'':34}{'seconds':>10}{'images/s':>12}")
    for name, s, rate in rows:
        print(f"{name:34}{s:>10.2f}{rate:>12.0f}")
    print(f"{'(one-time lancedb import + open)':34}{open_s:>10.2f}")
    print(f"{'(ingest main-process CPU)':34}{main_cpu_s:>10.2f}")
    spread = ", ".join(f"{r:.2f}x" for r in ratios)
    print(f"(the round with the median ratio; ratios of the {len(rounds)} rounds: {spread})")
    print(f"lake overhead over the floor: {overhead:+.1%} (target <= +30%)")
    print(
        json.dumps(
            {
                "bench": "ingest",
                "images": n,
                "workers": workers,
                "load": round(load, 2),
                "floor_images_per_s": round(n / floor_s, 1),
                "ingest_images_per_s": round(n / lake_s, 1),
                "rounds": len(rounds),
                "ratio": round(floor_s / lake_s, 3),
                "time_ratio_median": round(ratio, 3),
                "time_ratios": [round(r, 3) for r in ratios],
                "overhead": round(overhead, 3),
                "lancedb_import_s": round(open_s, 2),
                "main_cpu_s": round(main_cpu_s, 2),
            }
        )
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
