"""Benchmark: LanceDataModule's train loader vs a raw Lance scan + decode of the same rows.

Builds a lake of N generated JPEGs (lake.ingest + plugins.image_folder), then in the same
run, on real collators (``--collators``: ``decode``, decode-only ``DecodeCollator``;
``clip``, the tiny CLIP module's own train collator: decode + open_clip transform +
tokenizer; ``vlm``, the tiny LLaVA module's ``VlmCollator``: chat template, processor,
tokenizer), measures samples/s of

  (a) raw: ``to_batches`` over the samples (the columns the loader reads) and the media
      (``bytes``, ``kind``) in row order, in lockstep (the floor: sequential scans, no
      sample<->media join, no shuffling), turned into the loader's item dicts and collated
      by the same collator into batches of the same size. With W workers the baseline is
      the same scan split into W contiguous row ranges, one per DataLoader worker (spawn,
      persistent), batches sent back to the main process like the loader's;
  (b) the data module's shuffled train loader with that collator: the default (a full
      permutation, ``read_batches`` 8 batches per take of each table, media by row id,
      the next group read in a thread), the default with W workers, block reads
      (``shuffle_block`` 256 x ``shuffle_window`` 4), and the pre-issue-19 default (one
      take per batch, ``read_batches`` 1).

Every figure is one full epoch after a warm-up epoch (workers started, Lance opened); the
``vlm`` collator runs only the first ``--vlm-batches`` batches on both sides, in one
process. Rounds interleave each baseline with the loaders it is compared with (a load
change on the box hits both sides of a ratio); the table gives medians over the rounds of
rates and of per-round ratios (loader / raw with the same number of processes). The last
line is a JSON object of the figures; the target is >= 0.9x with the default settings.

    python bench/loader.py [--n 4000] [--batch 64] [--workers 2] [--rounds 3]
        [--collators decode,clip,vlm] [--vlm-batches 16] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.collate import DecodeCollator
from core.data.lance_data import LanceDataModule
from core.data.lance_dataset import OPTIONAL_COLUMNS, SAMPLE_COLUMNS
from lake.ingest import IngestSettings, ingest
from lake.store import Lake
from plugins.image_folder import ImageFolderSource

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def make_images(root: Path, n: int, size: int = 96) -> None:
    """``n`` JPEGs of random blocks in 4 class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        img = Image.fromarray(arr).resize((size, size), Image.NEAREST)
        img.save(d / f"{i:06d}.jpg", quality=85)


def model_kwargs(name: str) -> dict[str, Any]:
    """Arguments of ``conf/model/<name>.yaml``, composed as ``lakeloom train`` would."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="train", overrides=[f"model={name}"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(model, dict)
    return {k: v for k, v in model.items() if not k.startswith("_")}


def make_collator(name: str) -> Callable[[list[dict[str, Any]]], Any]:
    """The collator called ``name`` (see the module docstring)."""
    if name == "decode":
        return DecodeCollator()
    if name == "clip":
        from core.modules.clip_module import ClipModule

        return ClipModule(**model_kwargs("clip_tiny")).make_collator(train=True)
    if name == "vlm":
        from core.modules.vlm_module import VlmModule

        return VlmModule(**model_kwargs("llava_tiny")).make_collator(train=True)
    raise ValueError(f"unknown collator {name!r}")


def items_of(meta: Any, media: Any) -> list[dict[str, Any]]:
    """The loader's item dicts of a samples batch and its media batch (one media each)."""
    table, data = meta.to_pydict(), media.to_pydict()
    assert table["media_ids"] and [m[0] for m in table["media_ids"]] == data["media_id"]
    extra = [c for c in table if c not in ("sample_id", "messages", "media_ids")]
    return [
        {
            "sample_id": table["sample_id"][i],
            "images": [data["bytes"][i]],
            "media_kinds": [data["kind"][i]],
            "messages": table["messages"][i] or [],
            **{c: table[c][i] for c in extra},
        }
        for i in range(len(table["sample_id"]))
    ]


class RawScan(IterableDataset):
    """Collated batches of a sequential scan of both tables in lockstep (in a DataLoader
    worker: its contiguous share of the rows)."""

    def __init__(self, uri: str, batch: int, collate: Callable, limit: int | None = None):
        self.uri, self.batch, self.collate, self.limit = uri, batch, collate, limit
        self.handles: tuple[Any, Any] | None = None  # opened once per process, like the loader

    def __iter__(self) -> Iterator[Any]:
        if self.handles is None:
            lake = Lake(self.uri)
            self.handles = (lake.dataset("samples"), lake.dataset("media"))
        samples, media = self.handles
        cols = [c for c in SAMPLE_COLUMNS + OPTIONAL_COLUMNS if c in samples.schema.names]
        n = samples.count_rows() if self.limit is None else self.limit
        info = get_worker_info()
        w, k = (info.id, info.num_workers) if info is not None else (0, 1)
        start, stop = n * w // k, n * (w + 1) // k
        common = {"batch_size": self.batch, "offset": start, "limit": stop - start}
        meta = samples.to_batches(columns=[*cols, "media_ids"], **common)
        data = media.to_batches(columns=["media_id", "bytes", "kind"], **common)
        for m, d in zip(meta, data, strict=True):
            yield self.collate(items_of(m, d))


def batch_size_of(batch: Any) -> int:
    """Samples in a collated batch (any of the collators)."""
    for key in ("sample_id", "sample_ids"):
        if key in batch:
            return len(batch[key])
    raise KeyError("no sample ids in the batch")


def epoch_rate(loader: Any, epoch: int, limit: int | None = None) -> float:
    """Samples/s of one epoch (or its first ``limit`` batches) of ``loader``."""
    sampler = getattr(loader, "batch_sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    t0 = time.perf_counter()
    n = sum(batch_size_of(b) for b in itertools.islice(loader, limit))
    return n / (time.perf_counter() - t0)


def raw_rate(uri: str, batch: int, collate: Callable, workers: int, limit: int | None) -> float:
    """Samples/s of the raw scan + collate (warm-up pass, then one timed pass)."""
    ds = RawScan(uri, batch, collate, None if limit is None else limit * batch)
    extra = {"multiprocessing_context": "spawn", "persistent_workers": True} if workers else {}
    loader = DataLoader(ds, batch_size=None, num_workers=workers, **extra)
    epoch_rate(loader, 0)
    return epoch_rate(loader, 1)


def module_rate(
    uri: str, batch: int, collate: Callable, workers: int, limit: int | None, **settings: Any
) -> float:
    """Samples/s of one epoch of the data module's train loader (after a warm-up epoch)."""
    dm = LanceDataModule(
        uri, batch_size=batch, num_workers=workers, val_fraction=0, test_fraction=0, **settings
    )
    dm.set_collator(collate)
    loader = dm.loader("train")
    epoch_rate(loader, 0, limit)
    return epoch_rate(loader, 1, limit)


#: loader configurations: key, label, workers (None: --workers), settings
CONFIGS: list[tuple[str, str, int | None, dict[str, Any]]] = [
    ("default_w0", "default, 0 workers", 0, {}),
    ("default_wN", "default, {w} workers", None, {}),
    ("block256_w0", "block reads (256 x 4), 0 workers", 0, {"shuffle_block": 256}),
    ("perbatch_w0", "one take per batch (read_batches 1), 0 workers", 0, {"read_batches": 1}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    ap.add_argument("--collators", default="decode,clip,vlm")
    ap.add_argument("--vlm-batches", type=int, default=16, help="batches timed with vlm")
    ap.add_argument("--keep", type=Path, default=None, help="build the lake here and keep it")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    root = args.keep or tmp
    started = time.perf_counter()
    try:
        uri = root / "lake"
        lake = Lake(uri)
        if not lake.exists("samples"):
            make_images(root / "images", args.n)
            ingest(
                ImageFolderSource(root / "images"), lake, "bench", IngestSettings(progress=False)
            )
        n = lake.count("samples")
        collators = {name: make_collator(name) for name in args.collators.split(",")}
        # rows: (collator, config key, label, workers, settings, batch limit)
        rows = []
        for name in collators:
            limit = args.vlm_batches if name == "vlm" else None
            for key, label, w, settings in CONFIGS:
                w = args.workers if w is None else w
                if name == "vlm" and w:
                    continue  # one process only: the tiny VLM's rendering is the cost
                rows.append((name, key, label.format(w=w), w, settings, limit))
        raws: dict[tuple[str, int], list[float]] = {}
        rates: dict[tuple[str, str], list[float]] = {}
        ratios: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, collate in collators.items():
                mine = [r for r in rows if r[0] == name]
                for w in sorted({r[3] for r in mine}):
                    limit = mine[0][5]
                    raw = raw_rate(str(uri), args.batch, collate, w, limit)
                    raws.setdefault((name, w), []).append(raw)
                    for _, key, _, rw, settings, _ in mine:
                        if rw != w:
                            continue
                        rate = module_rate(str(uri), args.batch, collate, w, limit, **settings)
                        rates.setdefault((name, key), []).append(rate)
                        ratios.setdefault((name, key), []).append(rate / raw)
        figures: dict[str, Any] = {
            "n": n, "batch": args.batch, "rounds": args.rounds, "workers": args.workers,
            "vlm_batches": args.vlm_batches,
        }  # fmt: skip
        print(f"rounds: {args.rounds}; {n} samples, batch {args.batch}")
        print(f"{'collator':<8}{'loader':<50}{'samples/s':>11}{'x raw':>7}  per round")
        for (name, w), values in raws.items():
            raw = float(np.median(values))
            figures[f"{name}_raw_w{w}_per_s"] = round(raw, 1)
            print(
                f"{name:<8}{f'raw scan + collate, {w or 1} process(es)':<50}{raw:>11.0f}{1:>7.2f}"
            )
            for cname, key, label, rw, _, _ in rows:
                if cname != name or rw != w:
                    continue
                rate = float(np.median(rates[(name, key)]))
                ratio = float(np.median(ratios[(name, key)]))
                each = " ".join(f"{x:.2f}" for x in ratios[(name, key)])
                figures[f"{name}_{key}_per_s"] = round(rate, 1)
                figures[f"{name}_{key}_ratio"] = round(ratio, 3)
                print(f"{'':<8}{label:<50}{rate:>11.0f}{ratio:>7.2f}  {each}")
        figures["wall_s"] = round(time.perf_counter() - started, 1)
        print(json.dumps(figures))
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
