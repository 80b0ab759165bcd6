"""Benchmark: the checks against the shapes demo's ground truth.

Reads the check results already written to the lake (it does not train, embed or run the
checks itself) for dataset ``shapes`` and compares them with ``ground_truth.json``:

- caption mismatch: precision and recall of the ``caption_mismatch`` flag against the
  planted wrong captions, and the best point of the precision/recall curve over
  ``check_caption_mismatch_score`` (best F1, and the best precision at recall >= 0.8);
  the baseline is one global threshold on the image-caption cosine (``clip_score``);
- duplicates: the share of planted pairs (exact and near) found (both samples in the same
  ``check_duplicates_group``), and the false-group rate (groups that contain no planted
  pair);
- label conflict: the demo's class folders are correctly labelled, so every flag in
  ``shapes`` is a false alarm.

Run the pipeline first::

    lakeloom demo                                   # generate + ingest data/demo/shapes
    lakeloom train +experiment=clip_tiny run_id=R   # tiny CLIP on the lake
    lakeloom enrich enrich=clip enrich.model.run=R  # media.clip_image, samples.clip_text
    lakeloom check                                  # flags, check_* columns, reports
    python bench/checks.py [--lake URI] [--demo DIR] [--dataset D] [--caption-dataset C]

Without arguments, everything comes from the demo config (``conf/demo.yaml``): the lake
``lake.uri``, the demo folder ``demo.out``, the class-folder dataset (the source reading
``demo.out`` itself) and the caption dataset (the source reading a file inside
``demo.out``, the LLaVA conversations; the class folders have no captions).

**Side by side** (``--compare-lake URI``, as ``make demo`` runs it): a second lake, a copy
of the first embedded and checked by another CLIP (the demo: ``clip_minilm_locked``, the
real all-MiniLM-L6-v2 as a frozen text tower, image tower trained on the demo), is measured
the same way, plus text search on both: for every colour x shape of the demo vocabulary a
literal query ("a red circle"), one with the shape paraphrased ("a red disc") and one with
both paraphrased ("a crimson disc"), each embedded by the lake's own model (its own
tokenizer, as ``lakeloom query text=`` does) and ranked by exact cosine over the images of
``dataset`` (what ``lakeloom query`` does below the index threshold); relevant = the images
whose ground-truth shape and colour both match. Reported: mean precision@10 and
R-precision (recall at k = the number of relevant images). Both image towers are random-init
and trained on the demo only; the MiniLM text tower is pretrained on text but never saw an
image, so none of these figures is a pretrained image-text model's quality.

Prints a table and, last, one line with a JSON object of the figures. Targets (issue 3):
precision >= 0.8 at recall >= 0.8 for captions; >= 95% of planted pairs found with <= 5%
false groups.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lake.storage import storage_options
from lake.store import Lake

CAPTION = "caption_mismatch"
DUPLICATES = "duplicates"
LABELS = "label_conflict"


def _record_images(demo: Path, file: str) -> dict[str, str]:
    """``fragment -> image`` for a demo record file: ``L<line>`` of a CSV, ``<index>`` of JSON."""
    path = demo / file
    out: dict[str, str] = {}
    if file.endswith(".csv") and path.is_file():
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            col = header.index("image")
            while True:
                start = reader.line_num + 1
                row = next(reader, None)
                if row is None:
                    break
                if row:
                    out[f"L{start}"] = row[col]
    elif file.endswith(".json") and path.is_file():
        for i, rec in enumerate(json.loads(path.read_text())):
            out[str(i)] = rec.get("image", "")
    return out


def _image_paths(rows: list[dict[str, Any]], demo: Path, images: dict[str, Any]) -> list[str]:
    """Image path (relative to the demo folder) of every sample.

    ``source_uri`` when it names an image of the ground truth (the class-folder source);
    ``captions.csv#L<line>`` / ``llava.json#<index>`` through those files (the caption and
    LLaVA sources); otherwise the first media's sha256 matched against the demo files (a
    byte-identical copy then maps to one of its paths).
    """
    records: dict[str, dict[str, str]] = {}
    by_hash: dict[str, str] | None = None
    out = []
    for r in rows:
        uri = r["source_uri"] or ""
        if uri in images:
            out.append(uri)
            continue
        file, _, frag = uri.partition("#")
        if file not in records:
            records[file] = _record_images(demo, file)
        if records[file].get(frag) in images:
            out.append(records[file][frag])
            continue
        if by_hash is None:
            by_hash = {}
            for rel in sorted(images):
                digest = hashlib.sha256((demo / rel).read_bytes()).hexdigest()
                by_hash.setdefault(digest, rel)
        mids = r["media_ids"] or []
        out.append(by_hash.get(mids[0], "") if mids else "")
    return out


def pr_curve(
    truth: np.ndarray, scores: np.ndarray, positives: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, threshold) at every cut of ``scores`` (higher = more suspect);
    rows with a NaN score are never flagged."""
    keep = ~np.isnan(scores)
    order = np.argsort(-scores[keep], kind="stable")
    hits = np.cumsum(truth[keep][order])
    return hits / np.arange(1, len(hits) + 1), hits / max(positives, 1), scores[keep][order]


def caption_figures(rows: list[dict[str, Any]], paths: list[str], wrong: set[str]) -> dict:
    """Precision/recall of the flag and the best points of the score's PR curve."""
    col = f"check_{CAPTION}_score"
    truth = np.array([p in wrong for p in paths])
    flagged = np.array([CAPTION in (r.get("flags") or []) for r in rows])
    scores = np.array([np.nan if r.get(col) is None else r[col] for r in rows], dtype=float)
    scored = ~np.isnan(scores)
    positives = int(truth.sum())
    tp = int((flagged & truth).sum())
    out: dict[str, Any] = {
        "samples": len(rows),
        "scored": int(scored.sum()),
        "wrong_captions": positives,
        "flagged": int(flagged.sum()),
        "precision": tp / max(int(flagged.sum()), 1),
        "recall": tp / max(positives, 1),
    }
    prec, rec, s = pr_curve(truth, scores, positives)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    if len(s):
        b = int(np.argmax(f1))
        out["best_f1"] = {
            "f1": float(f1[b]),
            "precision": float(prec[b]),
            "recall": float(rec[b]),
            "score_threshold": float(s[b]),
        }
        ok = rec >= 0.8
        if ok.any():
            c = int(np.argmax(np.where(ok, prec, -1.0)))
            out["best_precision_at_recall_0.8"] = {
                "precision": float(prec[c]),
                "recall": float(rec[c]),
                "score_threshold": float(s[c]),
            }
    out["target_met"] = bool(out["precision"] >= 0.8 and out["recall"] >= 0.8)
    # baseline, same embeddings: one global threshold on the image-caption cosine
    cos = np.array([np.nan if r.get("clip_score") is None else -r["clip_score"] for r in rows])
    if (~np.isnan(cos)).any():
        prec, rec, _ = pr_curve(truth, cos, positives)
        good = rec >= 0.8
        out["baseline_cosine_precision_at_recall_0.8"] = (
            float(prec[good].max()) if good.any() else 0.0
        )
    return out


def duplicate_figures(rows: list[dict[str, Any]], paths: list[str], pairs: list[dict]) -> dict:
    """Planted pairs found and the false-group rate."""
    col = f"check_{DUPLICATES}_group"
    group_of = {p: r.get(col) for r, p in zip(rows, paths, strict=True)}
    members: dict[str, set[str]] = {}
    for p, g in group_of.items():
        if g is not None:
            members.setdefault(g, set()).add(p)
    found = {"exact": [0, 0], "near": [0, 0]}
    groups_with_pair: set[str] = set()
    for d in pairs:
        a, b = d["pair"]
        hit = group_of.get(a) is not None and group_of.get(a) == group_of.get(b)
        found[d["kind"]][0] += hit
        found[d["kind"]][1] += 1
        if hit:
            groups_with_pair.add(group_of[a])
    total = sum(v[1] for v in found.values())
    hits = sum(v[0] for v in found.values())
    false_groups = [g for g in members if g not in groups_with_pair]
    return {
        "planted_pairs": total,
        "found": hits,
        "found_rate": hits / max(total, 1),
        "exact_found": f"{found['exact'][0]}/{found['exact'][1]}",
        "near_found": f"{found['near'][0]}/{found['near'][1]}",
        "groups": len(members),
        "false_groups": len(false_groups),
        "false_group_rate": len(false_groups) / max(len(members), 1),
        "target_met": bool(
            hits / max(total, 1) >= 0.95 and len(false_groups) / max(len(members), 1) <= 0.05
        ),
    }


def _rows(lake: Lake, dataset: str, cols: list[str], lake_uri: str) -> list[dict[str, Any]]:
    safe = dataset.replace("'", "''")
    rows = lake.dataset("samples").to_table(columns=cols, filter=f"dataset = '{safe}'").to_pylist()
    if not rows:
        raise SystemExit(f"no samples of dataset {dataset!r} in {lake_uri}")
    return rows


def evaluate(
    lake_uri: str, demo: Path, dataset: str, caption_dataset: str | None = None
) -> dict[str, Any]:
    """The figures for ``dataset`` of the lake against ``demo``/ground_truth.json.

    ``caption_dataset`` (default: ``dataset``) is where the caption figures are taken:
    the class-folder dataset ``shapes`` has no captions unless it was ingested with them;
    ``shapes_llava`` has them (its text is the conversation's answer).
    """
    truth = json.loads((demo / "ground_truth.json").read_text())
    lake = Lake(lake_uri, storage_options({"uri": lake_uri}))  # s3://: keys from AWS_*
    have = {f.name for f in lake.table("samples").schema}
    need = [f"check_{CAPTION}_score", f"check_{DUPLICATES}_group"]
    missing = [c for c in need if c not in have]
    if missing:
        raise SystemExit(
            f"the lake has no {', '.join(missing)}: run `lakeloom check` first (see the docstring)"
        )
    cols = ["sample_id", "source_uri", "media_ids", "flags", *need]
    if "clip_score" in have:
        cols.append("clip_score")
    rows = _rows(lake, dataset, cols, lake_uri)
    paths = _image_paths(rows, demo, truth["images"])
    caption_dataset = caption_dataset or dataset
    if caption_dataset != dataset:
        crows = _rows(lake, caption_dataset, cols, lake_uri)
        cpaths = _image_paths(crows, demo, truth["images"])
    else:
        crows, cpaths = rows, paths
    wrong = {w["image"] for w in truth["wrong_captions"]}
    out = {
        "dataset": dataset,
        "caption_dataset": caption_dataset,
        "caption_mismatch": caption_figures(crows, cpaths, wrong),
        "duplicates": duplicate_figures(rows, paths, truth["duplicates"]),
    }
    if f"check_{LABELS}_score" in have:
        out["label_conflict"] = label_figures(
            _rows(lake, dataset, ["flags", f"check_{LABELS}_score"], lake_uri)
        )
    return out


# paraphrases of the demo vocabulary (lake/demo_data.py SHAPES and COLOURS)
SHAPE_PARAPHRASES = {
    "circle": "disc",
    "square": "box",
    "triangle": "three-sided shape",
    "star": "five-pointed star",
    "hexagon": "six-sided polygon",
    "cross": "plus sign",
}
COLOUR_PARAPHRASES = {
    "red": "crimson",
    "green": "emerald",
    "blue": "cobalt",
    "yellow": "golden",
    "purple": "violet",
    "orange": "tangerine",
    "white": "snow-white",
    "black": "jet-black",
}
SEARCH_K = 10


def search_queries() -> dict[str, list[tuple[str, str, str]]]:
    """``variant -> [(query, shape, colour)]`` for literal and paraphrased queries."""
    out: dict[str, list[tuple[str, str, str]]] = {"literal": [], "shape": [], "both": []}
    for shape, shape_p in SHAPE_PARAPHRASES.items():
        for colour, colour_p in COLOUR_PARAPHRASES.items():
            out["literal"].append((f"a {colour} {shape}", shape, colour))
            out["shape"].append((f"a {colour} {shape_p}", shape, colour))
            out["both"].append((f"a {colour_p} {shape_p}", shape, colour))
    return out


def search_figures(
    lake_uri: str, demo: Path, dataset: str, k: int = SEARCH_K, runs_dir: str | None = None
) -> dict:
    """Mean precision@k and R-precision of text search over ``dataset``'s images, and
    where the lake's model's weights come from (``weights``, read from its run)."""
    from lake.query import lake_model, load_embedder
    from lake.weights_origin import describe_owner

    truth = json.loads((demo / "ground_truth.json").read_text())
    lake = Lake(lake_uri, storage_options({"uri": lake_uri}))
    rows = _rows(lake, dataset, ["sample_id", "source_uri", "media_ids"], lake_uri)
    paths = _image_paths(rows, demo, truth["images"])
    attrs: dict[str, tuple[str, str]] = {}
    for r, path in zip(rows, paths, strict=True):
        info = truth["images"].get(path)
        if info and r["media_ids"]:
            attrs[r["media_ids"][0]] = (info["shape"], info["colour"])
    ids = sorted(attrs)
    media = lake.dataset("media").to_table(columns=["media_id", "clip_image"]).to_pylist()
    vec_of = {m["media_id"]: m["clip_image"] for m in media if m["clip_image"] is not None}
    ids = [i for i in ids if i in vec_of]
    images = np.asarray([vec_of[i] for i in ids], dtype=np.float32)
    images /= np.maximum(np.linalg.norm(images, axis=1, keepdims=True), 1e-12)
    labels = np.array([f"{attrs[i][0]}|{attrs[i][1]}" for i in ids])
    embedder = load_embedder(lake, "clip_text")
    model = lake_model(lake)
    weights = describe_owner(model, runs_dir) or "unknown"
    out: dict[str, Any] = {"model": model, "weights": weights, "images": len(ids), "k": k}
    for variant, queries in search_queries().items():
        vectors = embedder.embed_texts([q for q, _, _ in queries])
        order = np.argsort(-(vectors @ images.T), axis=1, kind="stable")
        p_at_k, r_prec = [], []
        for (_, shape, colour), ranked in zip(queries, order, strict=True):
            hit = labels[ranked] == f"{shape}|{colour}"
            relevant = int(hit.sum())
            if not relevant:
                continue
            p_at_k.append(float(hit[:k].mean()))
            r_prec.append(float(hit[:relevant].mean()))
        out[variant] = {
            "queries": len(p_at_k),
            f"precision@{k}": float(np.mean(p_at_k)),
            "r_precision": float(np.mean(r_prec)),
            "example": queries[0][0],
        }
    out["chance"] = float(np.mean([np.mean(labels == lab) for lab in np.unique(labels)]))
    return out


def side_by_side(
    lake_uri: str,
    other_uri: str,
    demo: Path,
    dataset: str,
    caption_dataset: str,
    runs_dir: str | None = None,
) -> dict[str, Any]:
    """Caption-check and text-search figures of two lakes (two CLIPs) of the same demo."""
    out: dict[str, Any] = {}
    for name, uri in (("base", lake_uri), ("compare", other_uri)):
        fig = evaluate(uri, demo, dataset, caption_dataset)
        out[name] = {
            "lake": uri,
            "caption_mismatch": fig["caption_mismatch"],
            "search": search_figures(uri, demo, dataset, runs_dir=runs_dir),
        }
    return out


def _side_table(side: dict[str, Any]) -> str:
    a, b = side["base"], side["compare"]
    k = a["search"]["k"]
    w = 14
    lines = [
        "",
        "side by side: two CLIPs on the same demo lake "
        f"(A: {a['search']['model']}; B: {b['search']['model']})",
        f"  A weights: {a['search'].get('weights', 'unknown')}",
        f"  B weights: {b['search'].get('weights', 'unknown')}",
        "  (all-MiniLM-L6-v2 is pretrained on text only and never saw an image: no figure",
        "  here is a pretrained image-text model's quality)",
        "",
        f"{'':<44}{'A':>{w}}{'B':>{w}}",
    ]

    def row(label: str, x: float, y: float) -> None:
        lines.append(f"  {label:<42}{x:>{w}.3f}{y:>{w}.3f}")

    for variant, title in (
        ("literal", "search, literal"),
        ("shape", "search, shape paraphrased"),
        ("both", "search, colour+shape paraphrased"),
    ):
        sa, sb = a["search"][variant], b["search"][variant]
        lines.append(f"  {title} (e.g. {sa['example']!r}, {sa['queries']} queries)")
        row(f"  precision@{k}", sa[f"precision@{k}"], sb[f"precision@{k}"])
        row("  R-precision", sa["r_precision"], sb["r_precision"])
    row("  (chance: share of one shape+colour)", a["search"]["chance"], b["search"]["chance"])
    ca, cb = a["caption_mismatch"], b["caption_mismatch"]
    lines.append(f"  caption mismatch ({ca['wrong_captions']} planted wrong captions)")
    row("  precision (flag)", ca["precision"], cb["precision"])
    row("  recall (flag)", ca["recall"], cb["recall"])
    for key, label in (("best_precision_at_recall_0.8", "  best precision at R >= 0.8"),):
        if key in ca and key in cb:
            row(label, ca[key]["precision"], cb[key]["precision"])
    if "best_f1" in ca and "best_f1" in cb:
        row("  best F1", ca["best_f1"]["f1"], cb["best_f1"]["f1"])
    return "\n".join(lines)


def label_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The demo's class folders are all correctly labelled: every flag is a false alarm."""
    scored = sum(r[f"check_{LABELS}_score"] is not None for r in rows)
    flagged = sum(LABELS in (r.get("flags") or []) for r in rows)
    return {
        "scored": scored,
        "flagged": flagged,
        "false_alarm_rate": flagged / max(scored, 1),
    }


def lake_weights(lake_uri: str, runs_dir: str | None) -> str:
    """Where the weights of the CLIP that embedded the lake come from (``unknown``: no
    embeddings, several models, or a model no run under ``runs_dir`` made)."""
    from lake.errors import ConfigError
    from lake.query import lake_model
    from lake.weights_origin import describe_owner

    try:
        model = lake_model(Lake(lake_uri, storage_options({"uri": lake_uri})))
    except ConfigError:
        return "unknown"
    return describe_owner(model, runs_dir) or "unknown"


def _table(fig: dict[str, Any]) -> str:
    c, d = fig["caption_mismatch"], fig["duplicates"]
    lines = [
        f"checks vs ground truth: duplicates in {fig['dataset']}, "
        f"captions in {fig['caption_dataset']}",
        f"CLIP weights: {fig.get('weights', 'unknown')}",
        "",
    ]
    lines.append(f"{'caption mismatch':<34}{'value':>12}")
    lines.append(f"  {'wrong captions / flagged':<32}{c['wrong_captions']:>6} /{c['flagged']:>5}")
    lines.append(f"  {'precision (flag)':<32}{c['precision']:>12.3f}")
    lines.append(f"  {'recall (flag)':<32}{c['recall']:>12.3f}")
    if "best_f1" in c:
        b = c["best_f1"]
        lines.append(
            f"  {'best F1 point':<32}{b['f1']:>12.3f}  (P {b['precision']:.3f}, "
            f"R {b['recall']:.3f}, score >= {b['score_threshold']:.3f})"
        )
    if "best_precision_at_recall_0.8" in c:
        b = c["best_precision_at_recall_0.8"]
        lines.append(
            f"  {'best precision at R >= 0.8':<32}{b['precision']:>12.3f}  "
            f"(R {b['recall']:.3f}, score >= {b['score_threshold']:.3f})"
        )
    if "baseline_cosine_precision_at_recall_0.8" in c:
        lines.append(
            f"  {'baseline: global cosine, P@R0.8':<32}"
            f"{c['baseline_cosine_precision_at_recall_0.8']:>12.3f}"
        )
    lines.append(f"  {'target P>=0.8 at R>=0.8 (flag)':<32}{c['target_met']!s:>12}")
    lines += ["", f"{'duplicates':<34}{'value':>12}"]
    lines.append(f"  {'planted pairs found':<32}{d['found']:>6} / {d['planted_pairs']}")
    lines.append(f"  {'  exact / near':<32}{d['exact_found']:>6} / {d['near_found']}")
    lines.append(f"  {'found rate':<32}{d['found_rate']:>12.3f}")
    lines.append(f"  {'groups / false groups':<32}{d['groups']:>6} / {d['false_groups']}")
    lines.append(f"  {'false-group rate':<32}{d['false_group_rate']:>12.3f}")
    lines.append(f"  {'target >=0.95 found, <=0.05 false':<32}{d['target_met']!s:>12}")
    if "label_conflict" in fig:
        lab = fig["label_conflict"]
        lines += ["", f"{'label conflict (none planted)':<34}{'value':>12}"]
        lines.append(f"  {'scored / flagged':<32}{lab['scored']:>6} / {lab['flagged']}")
        lines.append(f"  {'false-alarm rate':<32}{lab['false_alarm_rate']:>12.3f}")
    return "\n".join(lines)


def demo_defaults(overrides: list[str] | None = None) -> dict[str, str]:
    """The bench's defaults from the composed demo config (``conf/demo.yaml`` + overrides).

    ``dataset`` is the demo dataset whose source reads the class folders (``path`` is
    ``demo.out``), ``caption_dataset`` the one whose source reads a file inside it (the
    conversations, whose answers are the captions).
    """
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base="1.3", config_module="conf"):
        cfg = compose(config_name="demo", overrides=list(overrides or []))
    out = Path(str(cfg.demo.out))
    folders, files = [], []
    for name, source in cfg.datasets.items():
        path = Path(str(source.get("path", "")))
        if path == out:
            folders.append(str(name))
        elif out in path.parents:
            files.append(str(name))
    if len(folders) != 1 or len(files) != 1:
        raise SystemExit(
            f"conf/demo.yaml: expected one dataset reading {out} and one reading a file in it, "
            f"found {folders} and {files}; pass --dataset and --caption-dataset"
        )
    return {
        "lake": str(cfg.lake.uri),
        "demo": str(out),
        "dataset": folders[0],
        "caption_dataset": files[0],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; options left out take their value from :func:`demo_defaults`."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lake", help="default: the demo config's lake.uri")
    ap.add_argument("--demo", help="default: the demo config's demo.out")
    ap.add_argument("--dataset", help="default: the demo's class-folder dataset")
    ap.add_argument("--caption-dataset", help="default: the demo's caption dataset")
    ap.add_argument(
        "--compare-lake",
        help="a copy of the lake embedded and checked by another CLIP: adds the side-by-side "
        "table (caption check and paraphrased text search)",
    )
    ap.add_argument(
        "--runs-dir",
        default="runs",
        help="where the runs that embedded the lakes live (their weights' origin is shown)",
    )
    args = ap.parse_args(argv)
    if None in (args.lake, args.demo, args.dataset, args.caption_dataset):
        for key, value in demo_defaults().items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> None:
    """Command line: print the table and a final JSON line."""
    args = parse_args(argv)
    fig = evaluate(args.lake, Path(args.demo), args.dataset, args.caption_dataset)
    fig["weights"] = lake_weights(args.lake, args.runs_dir)
    print(_table(fig))
    if args.compare_lake:
        side = side_by_side(
            args.lake,
            args.compare_lake,
            Path(args.demo),
            args.dataset,
            args.caption_dataset,
            args.runs_dir,
        )
        fig["side_by_side"] = side
        print(_side_table(side))
    print(json.dumps(fig, sort_keys=True))


if __name__ == "__main__":
    main()
