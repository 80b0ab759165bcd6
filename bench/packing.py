"""Benchmark: the packing plan from stored token counts vs packing inside each batch.

Synthetic token counts of N samples (default 1M) shaped like a Qwen2-VL SFT mix at a 256-1280
visual-token budget (0-3 images of lognormal size, lognormal text with a long tail; the
same generator as tests/core/test_packing_plan.py) are written to a Lance table
(``sample_id`` + ``tokens_qwen2_vl``; no media table at all, so no image can be decoded).
In the same run it measures time and padding of:

  (a) ``batch FFD`` (the current per-batch packing, the baseline): shuffled batches of
      ``--batch`` samples, each packed first-fit decreasing into rows of ``--capacity``
      by the collator's own ``pack_first_fit``, rows padded to the batch's widest row;
  (b) ``buffer 1000``: the plan's best-fit decreasing on each window of 1,000 shuffled
      samples (a streaming buffer, as ms-swift packs);
  (c) ``plan``: the global plan (``core.data.packing.plan_packs``: seeded global shuffle,
      best-fit decreasing on the length histogram) in memory, and ``plan from lake``: the
      same plus reading the ids and counts with pylance (``plan_from_lake``).

``--lengths uniform54`` (every sample 54 tokens) and ``--lengths narrow`` (a handful of
lengths around 54, normal with sd 2) stand in for a caption-only lake such as the demo's,
whose few distinct lengths once made the plan open one pack per sample.

Padding is reported two ways: of the tensors the collator builds (rows x the batch's
widest row) and of fixed rows (rows x capacity, what a step costs with static shapes).
The machine is shared (2 cores, other jobs): times are noisy, compare ratios of one run.
Prints a table and a last line with a JSON object of the figures.

    python bench/packing.py [--n 1000000] [--capacity 4096] [--batch 8]
                            [--lengths realistic|uniform54|narrow] [--keep DIR]
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
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.packing import plan_from_lake, plan_packs
from core.modules.vlm_collate import pack_first_fit


def realistic(n: int, seed: int = 0) -> np.ndarray:
    """Token counts like a Qwen2-VL SFT mix (see the module docstring)."""
    rng = np.random.default_rng(seed)
    images = rng.choice([0, 1, 2, 3], size=n, p=[0.1, 0.75, 0.1, 0.05])
    per_image = np.clip(rng.lognormal(np.log(640 * 480 / 784), 0.6, n), 256, 1280).astype(int)
    text = np.clip(rng.lognormal(np.log(120), 0.9, n), 8, 3000).astype(int)
    return images * per_image + text


def synthetic(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """Token counts of ``kind``: ``realistic``, ``uniform54`` or ``narrow`` (see above)."""
    if kind == "uniform54":
        return np.full(n, 54, np.int64)
    if kind == "narrow":
        rng = np.random.default_rng(seed)
        return np.clip(np.rint(rng.normal(54, 2, n)), 1, None).astype(np.int64)
    return realistic(n, seed)


def batch_ffd(lengths: np.ndarray, capacity: int, batch: int, seed: int) -> dict[str, float]:
    """The current way: each shuffled batch packed first-fit decreasing by the collator."""
    t0 = time.perf_counter()
    order = np.random.default_rng([seed, 0]).permutation(len(lengths))
    rows = slots = 0
    for start in range(0, len(order), batch):
        lens = lengths[order[start : start + batch]].tolist()
        groups = pack_first_fit(lens, capacity)
        rows += len(groups)
        slots += len(groups) * max(sum(lens[i] for i in g) for g in groups)
    return {"s": time.perf_counter() - t0, "rows": rows, "slots": slots}


def planned(lengths: np.ndarray, capacity: int, seed: int, window: int) -> dict[str, float]:
    """The plan: one pack per row (one row per batch, the data module's default)."""
    t0 = time.perf_counter()
    plan = plan_packs(lengths, capacity, seed=seed, window=window)
    return {"s": time.perf_counter() - t0, "rows": len(plan), "slots": int(plan.tokens.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--capacity", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8, help="samples per batch of the baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lengths", choices=["realistic", "uniform54", "narrow"], default="realistic")
    ap.add_argument("--keep", type=Path, default=None, help="write the table here and keep it")
    args = ap.parse_args()
    lengths = synthetic(args.lengths, args.n, args.seed)
    lengths = lengths[lengths <= args.capacity]  # over-long samples are skipped either way
    tokens = int(lengths.sum())

    import lance

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_packing_"))
    uri = str(root / "samples.lance")
    ids = pa.array([f"{i:016x}" for i in range(len(lengths))])
    lance.write_dataset(
        pa.table({"sample_id": ids, "tokens_qwen2_vl": pa.array(lengths, pa.int32())}),
        uri,
        mode="overwrite",
    )
    del ids

    rows = {
        "batch FFD (current)": batch_ffd(lengths, args.capacity, args.batch, args.seed),
        "buffer 1000": planned(lengths, args.capacity, args.seed, 1000),
        "plan": planned(lengths, args.capacity, args.seed, 0),
    }
    t0 = time.perf_counter()
    plan, got_ids = plan_from_lake(lance.dataset(uri), "tokens_qwen2_vl", args.capacity, args.seed)
    rows["plan from lake"] = {
        "s": time.perf_counter() - t0,
        "rows": len(plan),
        "slots": int(plan.tokens.sum()),
    }
    assert len(got_ids) == len(lengths) and len(plan.members) == len(lengths)
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"{len(lengths):,} {args.lengths} samples ({len(np.unique(lengths)):,} distinct "
        f"lengths), {tokens:,} tokens, capacity {args.capacity}, "
        f"baseline batches of {args.batch}; image decodes: 0 (no media table)"
    )
    head = f"{'packing':<22}{'seconds':>9}{'rows':>11}{'pad (tensors)':>15}{'pad (fixed rows)':>18}"
    print(head)
    print("-" * len(head))
    figures: dict[str, dict[str, float]] = {}
    for name, r in rows.items():
        pad_tensor = 1 - tokens / r["slots"]
        pad_fixed = 1 - tokens / (r["rows"] * args.capacity)
        print(f"{name:<22}{r['s']:>9.2f}{r['rows']:>11,}{pad_tensor:>14.1%}{pad_fixed:>17.1%}")
        figures[name] = {
            "seconds": round(r["s"], 3),
            "rows": int(r["rows"]),
            "padding_tensors": round(pad_tensor, 4),
            "padding_fixed_rows": round(pad_fixed, 4),
        }
    base, ours = rows["batch FFD (current)"], rows["plan"]
    print(
        f"rows (steps at one row each): plan / current = {ours['rows'] / base['rows']:.2f}; "
        f"plan time / current = {ours['s'] / base['s']:.2f}"
    )
    print(
        json.dumps(
            {
                "n": len(lengths),
                "lengths": args.lengths,
                "capacity": args.capacity,
                "batch": args.batch,
                "tokens": tokens,
                "decodes": 0,
                **figures,
            }
        )
    )


if __name__ == "__main__":
    main()
