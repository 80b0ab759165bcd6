"""Benchmark: the TUI's paged lake reads (tui.lake_data.LakeView) on a lake of 1M samples.

Writes a lake straight from Arrow batches with the real schema (``lake.schema``) plus the
columns enrichers and checks add (``clip_score``, ``check_*_score``,
``check_duplicates_group``); the samples share a few hundred small JPEG media, so the lake
stays small. Then, each repeat in a fresh process (cold Python and Lance caches, warm OS
page cache), times:
  - first page: import + open + ``rows()`` + ``page(0)`` (target < 1 s);
  - jump to the last page of the unfiltered rows (target < 200 ms), and of a sorted set;
  - a filter ``label = 'x' AND dataset = 'y'``: ``rows()`` + ``len`` + ``page(0)``
    (target < 200 ms);
  - a sort by a check score: ``rows(sort=...)`` + ``page(0)``;
  - baseline: a naive full ``to_table()`` of the columns a page shows.
Prints a table (medians) and a last line with a JSON object of the figures.

    python bench/tui.py [--n 1000000] [--repeats 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lake.schema import MEDIA_SCHEMA, PROVENANCE, SAMPLES_SCHEMA  # noqa: E402

PAGE = 50
LABELS = [f"class{i}" for i in range(10)]
DATASETS = ["photos", "captions", "chat", "more"]
FILTER = "label = 'class3' AND dataset = 'captions'"
SORT = "check_caption_mismatch_score"
EXTRA = [
    pa.field("check_caption_mismatch_score", pa.float32()),
    pa.field("check_duplicates_score", pa.float32()),
    pa.field("check_duplicates_group", pa.string()),
]
BATCH = 100_000


def _provenance(n: int, plugin: str) -> pa.Array:
    one = {"plugin": plugin, "plugin_version": "0.1.0", "lakeloom_version": "bench",
           "config_hash": "0" * 16, "run_id": "bench", "created_at": datetime.now(UTC),
           "steps": [{"name": "generate", "params": "{}"}]}  # fmt: skip
    return pa.array([one], PROVENANCE).take(pa.array(np.zeros(n, np.int64)))


def _media(n_media: int) -> pa.Table:
    """``n_media`` small JPEGs (thumb = bytes)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    blobs = []
    for _ in range(n_media):
        arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(arr).resize((64, 64), Image.NEAREST).save(out, "JPEG", quality=80)
        blobs.append(out.getvalue())
    ids = [hashlib.sha256(b).hexdigest() for b in blobs]
    cols = {
        "media_id": ids, "kind": ["image"] * n_media, "mime": ["image/jpeg"] * n_media,
        "bytes": blobs, "width": [64] * n_media, "height": [64] * n_media, "thumb": blobs,
        "source_uri": [f"img/{i}.jpg" for i in range(n_media)],
    }  # fmt: skip
    arrays = [
        pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n_media, f.type)
        for f in MEDIA_SCHEMA
    ]
    arrays[MEDIA_SCHEMA.get_field_index("provenance")] = _provenance(n_media, "bench")
    return pa.Table.from_arrays(arrays, schema=MEDIA_SCHEMA)


def _batches(n: int, media_ids: list[str], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Samples in batches: captions or (for ``chat``) conversations, labels, flags, scores."""
    rng = np.random.default_rng(0)
    msg_type = schema.field("messages").type
    chats = pa.array(
        [[{"role": "user", "content": f"<image>\nWhat is shape {k}?"},
          {"role": "assistant", "content": f"It is a class{k % 10} shape."}]
         for k in range(50)], msg_type)  # fmt: skip
    flag_pool = pa.array([[], ["caption_mismatch"], ["duplicates"]], pa.list_(pa.string()))
    split_pool = pa.array([None, "train", "val", "test"], pa.string())
    for start in range(0, n, BATCH):
        m = min(BATCH, n - start)
        idx = np.arange(start, start + m)
        ds = rng.integers(0, len(DATASETS), m)
        is_chat = ds == DATASETS.index("chat")
        flag = rng.choice(3, m, p=[0.95, 0.03, 0.02])
        sids = [hashlib.sha256(b"%d" % i).hexdigest() for i in idx]
        mism = rng.random(m).astype(np.float32) * 5
        dup = np.where(flag == 2, 0.9 + rng.random(m) * 0.1, 0.0).astype(np.float32)
        cols = {
            "sample_id": pa.array(sids, pa.string()),
            "dataset": pa.array(np.array(DATASETS)[ds], pa.string()),
            "media_ids": pa.array(
                [[media_ids[i % len(media_ids)]] for i in idx], pa.list_(pa.string())
            ),
            "messages": chats.take(pa.array(idx % 50, mask=~is_chat)),
            "caption": pa.array(
                [
                    None if c else f"a photo of {LABELS[i % 10]} number {i}"
                    for i, c in zip(idx, is_chat, strict=True)
                ],
                pa.string(),
            ),
            "label": pa.array(np.array(LABELS)[rng.integers(0, 10, m)], pa.string()),
            "split": split_pool.take(pa.array(rng.integers(0, 4, m))),
            "flags": flag_pool.take(pa.array(flag)),
            "clip_score": pa.array(rng.random(m).astype(np.float32)),
            "source_uri": pa.array([f"src/{i:07d}.jpg" for i in idx], pa.string()),
            "provenance": _provenance(m, "bench"),
            "check_caption_mismatch_score": pa.array(mism, mask=rng.random(m) < 0.1),
            "check_duplicates_score": pa.array(dup),
            "check_duplicates_group": pa.array(
                [sids[k - 1] if f == 2 and k else None for k, f in enumerate(flag)], pa.string()
            ),
        }
        arrays = [
            cols[f.name].cast(f.type) if f.name in cols else pa.nulls(m, f.type) for f in schema
        ]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def build(uri: Path, n: int, n_media: int = 300) -> float:
    """Write the lake; return seconds taken."""
    import lance

    t0 = time.perf_counter()
    uri.mkdir(parents=True, exist_ok=True)
    media = _media(n_media)
    lance.write_dataset(media, str(uri / "media.lance"))
    schema = pa.schema([*SAMPLES_SCHEMA, *EXTRA])
    ids = media.column("media_id").to_pylist()
    reader = pa.RecordBatchReader.from_batches(schema, _batches(n, ids, schema))
    lance.write_dataset(reader, str(uri / "samples.lance"), max_rows_per_file=250_000)
    return time.perf_counter() - t0


def child(uri: str) -> None:
    """One repeat in this fresh process: print a JSON object of seconds per step."""
    t0 = time.perf_counter()
    import lance  # noqa: F401 - timed on its own: LakeView imports it

    from tui.lake_data import LakeView

    t_import = time.perf_counter()
    view = LakeView(uri)
    rows = view.rows()
    first = rows.page(0, PAGE)
    t_first = time.perf_counter()
    assert len(first) == PAGE

    t = time.perf_counter()
    last = rows.page(rows.pages(PAGE) - 1, PAGE)
    t_last = time.perf_counter() - t
    assert 0 < len(last) <= PAGE

    t = time.perf_counter()
    filtered = view.rows(FILTER)
    n_filtered = len(filtered)
    assert filtered.page(0, PAGE)
    t_filter = time.perf_counter() - t

    t = time.perf_counter()
    ordered = view.rows(sort=SORT, descending=True)
    top = ordered.page(0, PAGE)
    t_sort = time.perf_counter() - t
    assert top[0][SORT] >= top[-1][SORT]

    t = time.perf_counter()
    ordered.page(ordered.pages(PAGE) // 2, PAGE)
    t_sorted_jump = time.perf_counter() - t

    t = time.perf_counter()
    sid = filtered.page(0, PAGE)[7]["sample_id"]
    detail = view.sample(sid)
    t_sample = time.perf_counter() - t
    assert detail["media"]

    t = time.perf_counter()
    view._samples.to_table(columns=view._physical(view.default_columns()))
    t_naive = time.perf_counter() - t
    out = {"import_s": t_import - t0, "first_page_s": t_first - t0,
           "open_to_first_page_s": t_first - t_import, "last_page_s": t_last,
           "filter_s": t_filter, "filtered_rows": n_filtered, "sort_s": t_sort,
           "sorted_jump_s": t_sorted_jump, "sample_detail_s": t_sample,
           "naive_to_table_s": t_naive}  # fmt: skip
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", type=Path, default=None, help="build the lake here and keep it")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_tui_"))
    try:
        uri = root / "lake"
        built = 0.0
        if not (uri / "samples.lance").is_dir():
            built = build(uri, args.n)
        runs = []
        for _ in range(args.repeats):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(uri)],
                capture_output=True, text=True, cwd=REPO, check=True,
            )  # fmt: skip
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        rows = [
            ("build lake (0 = cached)", built, None),
            ("first page: import + open + rows() + page(0)", med["first_page_s"], 1.0),
            ("  of which import lance + tui.lake_data", med["import_s"], None),
            ("  of which open + rows() + page(0)", med["open_to_first_page_s"], None),
            ("jump to the last page", med["last_page_s"], 0.2),
            (f"filter ({int(med['filtered_rows'])} rows): len + page(0)", med["filter_s"], 0.2),
            (f"sort by {SORT} desc: page(0)", med["sort_s"], None),
            ("jump to the middle page of the sorted set", med["sorted_jump_s"], 0.2),
            ("sample detail (with media)", med["sample_detail_s"], None),
            ("baseline: naive to_table() of the page columns", med["naive_to_table_s"], None),
        ]
        print(f"{args.n} samples, page {PAGE}, median of {args.repeats} fresh processes")
        print(f"{'step':<52}{'ms':>10}{'target':>10}")
        for name, sec, target in rows:
            goal = f"< {target * 1000:.0f}" if target else ""
            print(f"{name:<52}{sec * 1000:>10.1f}{goal:>10}")
        figures = {"n": args.n, "page": PAGE, "repeats": args.repeats,
                   "build_s": round(built, 2)}  # fmt: skip
        figures.update({k: round(v, 4) for k, v in med.items()})
        figures["filtered_rows"] = int(med["filtered_rows"])
        print(json.dumps(figures))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
