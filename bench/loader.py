"""Benchmark: LanceDataModule train loader vs a raw Lance scan + decode of the same rows.

Builds a lake of N generated JPEGs (lake.ingest + plugins.image_folder), then in the same
run measures samples/s of
  (a) raw: ``to_batches`` over the samples and the media ``bytes`` in row order, in
      lockstep (the floor: sequential scans, no sample<->media join, no shuffling), decoded
      with the collator's own function into batches of the same shape;
  (b) the data module's shuffled train loader with a decode-only collator, in the main
      process and with workers: a full permutation read per batch (media by row id, and by
      ``media_id IN`` filter), and block-local shuffling with block reads (the default,
      ``shuffle_block`` 256 x ``shuffle_window`` 4).
Prints a table and a last line with a JSON object of the figures (target: data module
>= 0.9x raw; the headline ratio compares one process with one process).

    python bench/loader.py [--n 4000] [--batch 64] [--workers 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.collate import DecodeCollator
from core.data.lance_data import LanceDataModule
from lake.images import decode_image
from lake.ingest import IngestSettings, ingest
from lake.store import Lake
from plugins.image_folder import ImageFolderSource


def make_images(root: Path, n: int, size: int = 96) -> None:
    """``n`` JPEGs of random blocks in 4 class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        img = Image.fromarray(arr).resize((size, size), Image.NEAREST)
        img.save(d / f"{i:06d}.jpg", quality=85)


def raw_scan(lake: Lake, sample_rows: np.ndarray, batch: int) -> float:
    """Samples/s of scanning the samples' rows and their media bytes in row order, decoded
    with the same function as the loader's collator into the same kind of batches (ids,
    labels and a list of decoded images; each batch is kept until the next one)."""
    samples, media = lake.dataset("samples"), lake.dataset("media")
    t0 = time.perf_counter()
    n = 0
    meta = samples.to_batches(columns=["sample_id", "label", "media_ids"], batch_size=batch)
    data = media.to_batches(columns=["bytes"], batch_size=batch)
    out: dict[str, list] = {}
    for m, d in zip(meta, data, strict=True):
        out = {
            "sample_id": m.column("sample_id").to_pylist(),
            "label": m.column("label").to_pylist(),
            "images": [[decode_image(b)] for b in d.column("bytes").to_pylist()],
        }
        n += len(out["sample_id"])
    assert n >= len(sample_rows) and out
    return n / (time.perf_counter() - t0)


def module_rate(
    uri: str, batch: int, workers: int, media_read: str, block: int = 0
) -> tuple[float, int]:
    """Samples/s of one epoch of the train loader (worker start-up excluded)."""
    dm = LanceDataModule(
        uri, batch_size=batch, num_workers=workers, val_fraction=0, test_fraction=0,
        media_read=media_read, persistent_workers=True, shuffle_block=block, shuffle_window=4,
    )  # fmt: skip
    dm.set_collator(DecodeCollator())
    loader = dm.loader("train")
    it = iter(loader)
    first = next(it)  # workers started, first batch read
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += len(b["sample_id"])
    rate = n / (time.perf_counter() - t0)
    assert n + len(first["sample_id"]) == len(dm.dataset("train"))
    return rate, len(dm.dataset("train"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    ap.add_argument("--keep", type=Path, default=None, help="build the lake here and keep it")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    root = args.keep or tmp
    try:
        uri = root / "lake"
        lake = Lake(uri)
        if not lake.exists("samples"):
            make_images(root / "images", args.n)
            ingest(
                ImageFolderSource(root / "images"), lake, "bench", IngestSettings(progress=False)
            )
        rows = np.arange(lake.count("samples"))
        configs = [
            (f"data module, {how}, {w} workers", f"{name}_w{w}", w, media_read, block)
            for w in (0, args.workers)
            for name, how, media_read, block in (
                ("block256", "block reads (256)", "rowid", 256),
                ("rowid", "per batch, media rowid", "rowid", 0),
                ("filter", "per batch, media filter", "filter", 0),
            )
        ]
        # rounds interleave the baseline with every loader, so a load change on the box
        # hits both sides of a ratio; the figures are medians over the rounds
        raws: list[float] = []
        rates: dict[str, list[float]] = {key: [] for _, key, *_ in configs}
        ratios: dict[str, list[float]] = {key: [] for _, key, *_ in configs}
        for _ in range(args.rounds):
            for _, key, w, media_read, block in configs:
                raw = raw_scan(lake, rows, args.batch)
                rate = module_rate(str(uri), args.batch, w, media_read, block)[0]
                raws.append(raw)
                rates[key].append(rate)
                ratios[key].append(rate / raw)
        raw = float(np.median(raws))
        figures: dict[str, float | int] = {
            "n": len(rows), "batch": args.batch, "rounds": args.rounds,
            "raw_scan_per_s": round(raw, 1),
        }  # fmt: skip
        table = [("raw scan + decode (1 process)", raw, 1.0)]
        for label, key, *_ in configs:
            rate, ratio = float(np.median(rates[key])), float(np.median(ratios[key]))
            figures[f"module_{key}_per_s"] = round(rate, 1)
            figures[f"ratio_{key}"] = round(ratio, 3)
            table.append((label, rate, ratio))
        print(f"{'loader (median of rounds)':<52}{'samples/s':>12}{'x raw':>8}")
        for name, rate, ratio in table:
            print(f"{name:<52}{rate:>12.0f}{ratio:>8.2f}")
        print(json.dumps(figures))
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
