"""Benchmark: the phash+thumbnail enricher and the CLIP image embedder, local executor vs
Ray with 1 and 2 workers, on a local lake and on an S3 server (SeaweedFS on 127.0.0.1).

A lake of N image rows is bulk-loaded without phash, thumbnail or embedding (what a
migration or an object-store listing gives); every variant backfills a fresh copy of it
with the real job (``python -m lake.enrich ... executor=local|ray``), timed from the
outside (process start, imports and Ray's start-up included: what a user waits for) and
from the job's own report (its rows/s). Variants run one after another, never at once; the
results of every variant are checked equal to the local executor's.

    python bench/scale.py [--rows 100000] [--stores local,s3] [--enrichers phash,clip]
                          [--workers 1,2] [--keep DIR]

Prints a table, the Ray overhead (Ray 1 worker / local), the scaling efficiency
(t1 / (2 * t2)) and a last line with a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lake.schema import MEDIA, MEDIA_SCHEMA  # noqa: E402
from lake.store import Lake  # noqa: E402

# enricher name -> (the enrich config, extra overrides, the column it fills)
ENRICHERS: dict[str, tuple[str, list[str], str]] = {
    "phash": ("phash", [], "phash"),
    "clip": ("clip", ["~enrich.steps.text"], "clip_image"),
}
SUMMARY = re.compile(r"\(([\d.]+) s, (\d+) rows/s\)")


def jpeg(i: int, rng: np.random.Generator, size: int = 48) -> bytes:
    """A small real JPEG: a smooth pattern that depends on ``i``, noise and a block."""
    from PIL import Image

    x = np.linspace(0, 6.28, size, dtype=np.float32)
    base = np.outer(np.sin(x * (1 + i % 7)), np.cos(x * (1 + i % 5))) * 100 + 128
    arr = np.stack([base, np.roll(base, i % 13, 0), np.roll(base, i % 17, 1)], -1)
    arr = arr + rng.normal(0, 8, arr.shape)
    y0, x0 = (i * 7) % (size - 12), (i * 11) % (size - 12)
    arr[y0 : y0 + 12, x0 : x0 + 12] = (i * 37) % 256
    out = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=85)
    return out.getvalue()


def media_rows(n: int) -> pa.Table:
    """``n`` image rows of the media table with bytes but no phash, thumbnail or vector."""
    rng = np.random.default_rng(0)
    data = [jpeg(i, rng) for i in range(n)]
    now = datetime.now(UTC)
    prov = {"plugin": "bench_scale", "plugin_version": "0", "lakeloom_version": "0",
            "config_hash": "", "run_id": "bench", "created_at": now, "steps": []}  # fmt: skip
    cols = {
        "media_id": [hashlib.sha256(b).hexdigest() for b in data],
        "kind": ["image"] * n,
        "mime": ["image/jpeg"] * n,
        "bytes": data,
        "width": [48] * n,
        "height": [48] * n,
        "source_uri": [f"bench/{i:07d}.jpg" for i in range(n)],
        "provenance": [prov] * n,
    }
    fields = [MEDIA_SCHEMA.field(c) for c in cols]
    return pa.Table.from_pydict(cols, schema=pa.schema(fields))


def load(lake: Lake, rows: pa.Table, chunk: int = 20_000) -> None:
    """Write the rows in a few commits (a fragment per chunk, as a bulk load would)."""
    for i in range(0, rows.num_rows, chunk):
        lake.insert_new(MEDIA, rows.slice(i, chunk))


def clip_weights(folder: Path) -> Path:
    """A tiny CLIP's weights saved once, so every process and actor loads the same model."""
    import torch

    from core.models.clip import create_clip

    path = folder / "tiny-clip.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(create_clip("tiny-clip")[0].state_dict(), path)
    return path


def run_job(
    uri: str, enricher: str, executor: list[str], env: dict[str, str], extra: list[str]
) -> tuple[float, float]:
    """Run one enrich job; return (wall seconds, the job's own seconds)."""
    conf, overrides, _ = ENRICHERS[enricher]
    cmd = [sys.executable, "-m", "lake.enrich", f"enrich={conf}", f"lake.uri={uri}",
           "enrich.progress=false", *overrides, *extra, *executor]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=7200)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:])} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    found = SUMMARY.findall(done.stdout)
    return wall, sum(float(s) for s, _ in found) if found else wall


def column(lake: Lake, name: str) -> dict[str, Any]:
    """media_id -> the enriched column's value."""
    t = lake.dataset(MEDIA).to_table(columns=["media_id", name])
    return dict(zip(t.column("media_id").to_pylist(), t.column(name).to_pylist(), strict=True))


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal columns (vectors: to float32 rounding)."""
    if a.keys() != b.keys():
        return False
    for k, v in a.items():
        w = b[k]
        if isinstance(v, list):
            if w is None or not np.allclose(v, w, atol=1e-5):
                return False
        elif v != w:
            return False
    return True


def main() -> None:
    """Run every variant and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--stores", default="local,s3")
    ap.add_argument("--enrichers", default="phash,clip")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--keep", type=Path, help="work folder (default: a temp dir, removed)")
    args = ap.parse_args()
    stores = args.stores.split(",")
    enrichers = args.enrichers.split(",")
    workers = [int(w) for w in args.workers.split(",")]
    work = args.keep or Path(tempfile.mkdtemp(prefix="lakeloom-scale-"))
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    rows = media_rows(args.rows)
    print(f"{args.rows} JPEGs of 48x48 made in {time.perf_counter() - t0:.1f} s")
    extra = {"clip": [f"enrich.model.pretrained={clip_weights(work)}", "enrich.model.device=cpu"]}
    base_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "AWS_EC2_METADATA_DISABLED": "true"}

    server = None
    results: list[dict[str, Any]] = []
    try:
        for store in stores:
            env = dict(base_env)
            if store == "s3":
                from tests.s3_server import start_s3_server

                server = start_s3_server(work / "s3")
                so = server.storage_options
                env |= {"AWS_ENDPOINT": so["endpoint"], "AWS_ALLOW_HTTP": "true",
                        "AWS_ACCESS_KEY_ID": so["aws_access_key_id"],
                        "AWS_SECRET_ACCESS_KEY": so["aws_secret_access_key"],
                        "AWS_REGION": so["region"]}  # fmt: skip
            else:
                base = work / "base-lake"
                if not base.exists():
                    load(Lake(base), rows)
            for enricher in enrichers:
                reference: dict[str, Any] | None = None
                variants = [("local", 0, ["executor=local"])] + [
                    ("ray", w, ["executor=ray", f"executor.actors={w}", "executor.num_cpus=2"])
                    for w in workers
                ]
                for name, w, executor in variants:
                    if store == "s3":
                        assert server is not None
                        uri = server.uri(f"{enricher}-{name}{w}")
                        lake = Lake(uri, server.storage_options)
                        load(lake, rows)
                    else:
                        uri = str(work / f"lake-{enricher}-{name}{w}")
                        shutil.rmtree(uri, ignore_errors=True)
                        shutil.copytree(work / "base-lake", uri)
                        lake = Lake(uri)
                    wall, job_s = run_job(uri, enricher, executor, env, extra.get(enricher, []))
                    values = column(lake, ENRICHERS[enricher][2])
                    if reference is None:
                        reference = values
                    results.append({"store": store, "enricher": enricher, "executor": name,
                                    "workers": w, "wall_s": round(wall, 2),
                                    "job_s": round(job_s, 2),
                                    "rows_per_s": round(args.rows / job_s, 1),
                                    "equal_to_local": same(values, reference)})  # fmt: skip
                    print(json.dumps(results[-1]), flush=True)
                    if store == "local":
                        shutil.rmtree(uri, ignore_errors=True)
            if server is not None:
                server.stop()
                server = None
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(results, args.rows)


def report(results: list[dict[str, Any]], n: int) -> None:
    """The table, the overheads and efficiencies, and the JSON line."""
    print(f"\n{n} rows; wall = job process start to exit; rows/s from the job's own timing")
    head = f"{'store':6}{'enricher':9}{'executor':9}{'workers':>8}{'wall s':>9}{'job s':>9}"
    print(head + f"{'rows/s':>9}{'equal':>7}")
    for r in results:
        print(f"{r['store']:6}{r['enricher']:9}{r['executor']:9}{r['workers']:>8}"
              f"{r['wall_s']:>9.1f}{r['job_s']:>9.1f}{r['rows_per_s']:>9.0f}"
              f"{'yes' if r['equal_to_local'] else 'NO':>7}")  # fmt: skip
    figures: dict[str, Any] = {"bench": "scale", "rows": n, "runs": results}
    print()
    for store in dict.fromkeys(r["store"] for r in results):
        for enricher in dict.fromkeys(r["enricher"] for r in results):
            pick = {(r["executor"], r["workers"]): r for r in results
                    if r["store"] == store and r["enricher"] == enricher}  # fmt: skip
            local, one, two = pick.get(("local", 0)), pick.get(("ray", 1)), pick.get(("ray", 2))
            key = f"{store}_{enricher}"
            if local and one:
                figures[f"{key}_ray1_over_local"] = round(one["wall_s"] / local["wall_s"], 3)
                print(f"{key}: Ray 1 worker / local = {figures[f'{key}_ray1_over_local']:.2f}x "
                      "(goal <= 1.5x)")  # fmt: skip
            if one and two:
                eff = one["job_s"] / (2 * two["job_s"])
                figures[f"{key}_efficiency_1_to_2"] = round(eff, 3)
                print(f"{key}: scaling efficiency 1 -> 2 workers = {eff:.2f} (goal >= 0.85 "
                      f"where there are cores; this machine has {os.cpu_count()})")  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
