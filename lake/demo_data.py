"""``lakeloom demo-data``: the synthetic "shapes" demo dataset, generated offline.

Every original image is a small RGB JPEG of one coloured shape (circle, square, triangle,
star, hexagon, cross) of some size class on some background (solid light, solid dark,
vertical gradient, noise texture, stripes), stored in a class folder named after the shape.
Each image has a caption and a LLaVA-style conversation.

Problems are planted on purpose so that the lake's checks have something to find, and the
truth about them is written to ``ground_truth.json``:

- wrong captions: the caption (and the conversation's answer) names another shape and
  another colour than the one drawn;
- exact duplicates: byte-for-byte copies under another name in the same class folder;
- near duplicates: copies re-encoded at another JPEG quality and/or slightly cropped and
  resized back.

Output layout (under ``out``)::

    <shape>/<shape>_<index:05d>.jpg      originals
    <shape>/<shape>_dup_<index:05d>.jpg  exact copies of <shape>_<index>.jpg
    <shape>/<shape>_near_<index:05d>.jpg near copies of <shape>_<index>.jpg
    llava.json                           [{"id", "image", "conversations"}, ...]
    captions.csv                         image,caption,label
    ground_truth.json                    arguments, attributes of every file, planted problems

Generation is deterministic: the same arguments give byte-identical files. Every image
draws from its own generator ``numpy.random.default_rng([seed, index])`` (planting draws
from ``[seed, index, tag]``), so the result does not depend on how the work is chunked
across processes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lake.errors import LakeloomError
from lake.images import decode_image
from lake.job import hydra_job
from lake.schema import IMAGE_TOKEN

GENERATOR = "lakeloom.demo_data"
VERSION = 1

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
    "white": (250, 250, 250),
    "black": (12, 12, 12),
}
BACKGROUNDS: tuple[str, ...] = ("solid_light", "solid_dark", "gradient", "noise", "stripes")
BACKGROUND_WORDS: dict[str, str] = {
    "solid_light": "light",
    "solid_dark": "dark",
    "gradient": "gradient",
    "noise": "noisy",
    "stripes": "striped",
}
# size class -> range of the shape's circumradius, as a fraction of the image side
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.14, 0.19),
    "medium": (0.22, 0.29),
    "large": (0.32, 0.40),
}

CAPTION_TEMPLATES: tuple[str, ...] = (
    "{a_size} {size} {colour} {shape} on a {bg} background",
    "{a_colour} {colour} {shape}, {size}, on a {bg} background",
    "{size} {colour} {shape} against a {bg} background",
    "a picture of {a_size} {size} {colour} {shape} over a {bg} background",
)
QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What is shown in this image?", "{A_size} {size} {colour} {shape} on a {bg} background."),
    (
        "Describe the image briefly.",
        "The image shows {a_size} {size} {colour} {shape} on a {bg} background.",
    ),
    (
        "What shape is drawn, and what colour is it?",
        "It is {a_colour} {colour} {shape}. It is {size} and sits on a {bg} background.",
    ),
    ("Which colour is the shape?", "The {shape} is {colour}; it is {size}, on a {bg} background."),
)

MIN_CONTRAST = 110.0  # minimum RGB distance between the shape and every background colour
NEAR_QUALITIES: tuple[int, ...] = (60, 70, 75, 80, 85)
INLINE_BELOW = 600  # below this many originals, generate in this process
CHUNK = 250  # originals per worker task

# tags of the per-image planting generators: default_rng([seed, index, tag])
_TAG_WRONG, _TAG_EXACT, _TAG_NEAR = 1, 2, 3
_PLAN_KEY = 2**40 + 17  # the plan's generator: default_rng([seed, _PLAN_KEY]); never an index


class DemoDataError(LakeloomError):
    """The demo dataset cannot be generated where asked."""


# --------------------------------------------------------------------------- drawing


def _background(kind: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """A ``size x size x 3`` uint8 background and its key colours (for the contrast test)."""
    if kind == "solid_light":
        c = rng.integers(175, 246, 3)
        return np.broadcast_to(c.astype(np.uint8), (size, size, 3)).copy(), [c]
    if kind == "solid_dark":
        c = rng.integers(0, 71, 3)
        return np.broadcast_to(c.astype(np.uint8), (size, size, 3)).copy(), [c]
    if kind == "gradient":
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0.0, 1.0, size)[:, None]
        col = np.rint(top[None, :] * (1.0 - t) + bottom[None, :] * t).astype(np.uint8)
        arr = np.broadcast_to(col[:, None, :], (size, size, 3)).copy()
        return arr, [top, (top + bottom) / 2.0, bottom]
    if kind == "noise":
        base = rng.integers(40, 216, 3)
        cells = max(2, size // 8)
        # smooth blotches: coarse noise upsampled bilinearly, plus a little fine grain
        coarse = np.clip(base + rng.normal(0.0, 28.0, (cells, cells, 3)), 0, 255)
        smooth = Image.fromarray(np.rint(coarse).astype(np.uint8), "RGB")
        smooth = smooth.resize((size, size), Image.Resampling.BILINEAR)
        fine = rng.integers(-12, 13, (size, size, 3), dtype=np.int16)
        arr = np.clip(np.asarray(smooth, dtype=np.int16) + fine, 0, 255).astype(np.uint8)
        return arr, [base]
    if kind == "stripes":
        c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        period = int(rng.integers(max(4, size // 12), max(6, size // 5) + 1))
        direction = int(rng.integers(0, 3))  # 0 vertical, 1 horizontal, 2 diagonal
        ramp = np.arange(size)
        coord = {0: ramp[None, :], 1: ramp[:, None], 2: ramp[None, :] + ramp[:, None]}[direction]
        mask = np.broadcast_to((coord // max(1, period // 2)) % 2 == 0, (size, size))
        colours = np.stack([c2, c1]).astype(np.uint8)
        return colours[mask.astype(np.intp)], [c1, c2]
    raise ValueError(f"unknown background {kind!r}")


def _pick_colour(rng: np.random.Generator, keys: list) -> str:
    """A named colour that contrasts with every key colour of the background.

    Colours are tried in a random order (a too-similar one is redrawn); if none passes,
    the most contrasting one is used.
    """
    names = list(COLOURS)
    order = rng.permutation(len(names))
    best, best_dist = names[int(order[0])], -1.0
    for i in order:
        name = names[int(i)]
        rgb = np.asarray(COLOURS[name], dtype=np.float64)
        dist = min(float(np.linalg.norm(rgb - np.asarray(k, dtype=np.float64))) for k in keys)
        if dist >= MIN_CONTRAST:
            return name
        if dist > best_dist:
            best, best_dist = name, dist
    return best


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of ``shape`` with circumradius ``r`` centred at ``(cx, cy)``, rotated."""
    if shape == "square":
        local = [
            (r * math.cos(a), r * math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4
        ]
    elif shape == "triangle":
        local = [(r * math.cos(a), r * math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3]
    elif shape == "hexagon":
        local = [(r * math.cos(a), r * math.sin(a)) for a in np.arange(6) * math.pi / 3]
    elif shape == "star":
        local = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = k * math.pi / 5 - math.pi / 2
            local.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        w = 0.33 * r
        local = [
            (-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w),
            (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w),
        ]  # fmt: skip
    else:
        raise ValueError(f"not a polygon: {shape!r}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in local]


def _draw(
    index: int, seed: int, size: int
) -> tuple[Image.Image, dict[str, Any], np.random.Generator]:
    """Draw original ``index``: the image, its attributes and its generator (for captions)."""
    rng = np.random.default_rng([seed, index])
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    size_class = list(SIZES)[int(rng.integers(len(SIZES)))]
    bg, keys = _background(background, size, rng)
    colour = _pick_colour(rng, keys)

    lo, hi = SIZES[size_class]
    r = float(rng.uniform(lo, hi)) * size
    margin = r + 1.0
    cx = float(rng.uniform(margin, size - margin))
    cy = float(rng.uniform(margin, size - margin))
    angle = float(rng.uniform(0.0, 2.0 * math.pi))

    # draw the shape's mask at 2x and box-filter it down: cheap anti-aliasing
    ss = 2
    mask = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse(((cx - r) * ss, (cy - r) * ss, (cx + r) * ss, (cy + r) * ss), fill=255)
    else:
        draw.polygon([(x * ss, y * ss) for x, y in _polygon(shape, cx, cy, r, angle)], fill=255)
    mask = mask.resize((size, size), Image.Resampling.BOX)
    img = Image.fromarray(bg, "RGB")
    img.paste(COLOURS[colour], (0, 0, size, size), mask)
    attrs = {"shape": shape, "colour": colour, "background": background, "size": size_class}
    return img, attrs, rng


def _jpeg(img: Image.Image, quality: int) -> bytes:
    """Encode with explicit, fixed options (no metadata), so bytes are reproducible."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=2, optimize=False, progressive=False)
    return buf.getvalue()


# --------------------------------------------------------------------------- text


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _facts(attrs: dict[str, Any]) -> dict[str, str]:
    """Template fields for a caption or answer."""
    return {
        "shape": attrs["shape"],
        "colour": attrs["colour"],
        "size": attrs["size"],
        "bg": BACKGROUND_WORDS[attrs["background"]],
        "a_size": _article(attrs["size"]),
        "A_size": _article(attrs["size"]).capitalize(),
        "a_colour": _article(attrs["colour"]),
    }


def _texts(attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[dict[str, str]]]:
    """Caption and LLaVA conversation stating ``attrs`` (templates drawn from ``rng``)."""
    facts = _facts(attrs)
    caption = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(**facts)
    question, answer = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
    conversation = [
        {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
        {"from": "gpt", "value": answer.format(**facts)},
    ]
    return caption, conversation


# --------------------------------------------------------------------------- per chunk


def _render_chunk(task: tuple[str, int, int, int, Sequence[tuple[int, str]]]) -> list[dict]:
    """Render originals (and their planted copies) into ``root``; return their records.

    ``task`` is ``(root, seed, size, jpeg_quality, [(index, role), ...])`` where role is
    ``""`` (plain), ``"wrong"``, ``"exact"`` or ``"near"``.
    """
    root_s, seed, size, quality, items = task
    root = Path(root_s)
    records: list[dict] = []
    for index, role in items:
        img, attrs, rng = _draw(index, seed, size)
        shape = attrs["shape"]
        data = _jpeg(img, quality)
        name = f"{shape}/{shape}_{index:05d}.jpg"
        (root / name).write_bytes(data)
        rec: dict[str, Any] = {"image": name, "attrs": attrs, "kind": "original"}
        if role == "wrong":
            prng = np.random.default_rng([seed, index, _TAG_WRONG])
            others = [s for s in SHAPES if s != shape]
            colours = [c for c in COLOURS if c != attrs["colour"]]
            written = {
                **attrs,
                "shape": others[int(prng.integers(len(others)))],
                "colour": colours[int(prng.integers(len(colours)))],
            }
            rec["caption"], rec["conversations"] = _texts(written, rng)
            rec["written"] = {"shape": written["shape"], "colour": written["colour"]}
        else:
            rec["caption"], rec["conversations"] = _texts(attrs, rng)
        records.append(rec)

        if role == "exact":
            prng = np.random.default_rng([seed, index, _TAG_EXACT])
            copy = f"{shape}/{shape}_dup_{index:05d}.jpg"
            (root / copy).write_bytes(data)
            caption, conv = _texts(attrs, prng)
            records.append(
                {"image": copy, "attrs": attrs, "kind": "exact_dup", "source": name,
                 "caption": caption, "conversations": conv}
            )  # fmt: skip
        elif role == "near":
            prng = np.random.default_rng([seed, index, _TAG_NEAR])
            mode = ("reencode", "crop", "crop+reencode")[int(prng.integers(3))]
            near = decode_image(data)
            transform: dict[str, Any] = {"mode": mode}
            if "crop" in mode:
                frac = float(prng.uniform(0.02, 0.06))
                px = max(1, round(frac * size))
                box = (px, px, size - px, size - px)
                near = near.crop(box).resize((size, size), Image.Resampling.LANCZOS)
                transform["crop_frac"] = round(px / size, 4)
                transform["crop_box"] = list(box)
            q = quality
            if "reencode" in mode:
                choices = [x for x in NEAR_QUALITIES if x != quality]
                q = choices[int(prng.integers(len(choices)))]
            transform["quality"] = q
            copy = f"{shape}/{shape}_near_{index:05d}.jpg"
            (root / copy).write_bytes(_jpeg(near, q))
            caption, conv = _texts(attrs, prng)
            records.append(
                {"image": copy, "attrs": attrs, "kind": "near_dup", "source": name,
                 "caption": caption, "conversations": conv, "transform": transform}
            )  # fmt: skip
    return records


# --------------------------------------------------------------------------- driver


def _plan(n: int, seed: int, k: int, e: int, m: int) -> list[str]:
    """Role of every original: disjoint sets of wrong captions, exact and near sources."""
    perm = np.random.default_rng([seed, _PLAN_KEY]).permutation(n)
    roles = [""] * n
    for i in perm[:k]:
        roles[int(i)] = "wrong"
    for i in perm[k : k + e]:
        roles[int(i)] = "exact"
    for i in perm[k + e : k + e + m]:
        roles[int(i)] = "near"
    return roles


def _workers(n: int) -> int:
    """Number of processes for ``n`` originals (1 means inline)."""
    if n < INLINE_BELOW:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, math.ceil(n / CHUNK)))


def _summary(counts: dict[str, int], out: Path) -> dict[str, Any]:
    return {**counts, "path": str(out)}


def _stored(out: Path, args: dict[str, Any]) -> dict[str, Any] | None:
    """The stored counts if ``out`` holds a complete dataset made with ``args``."""
    try:
        truth = json.loads((out / "ground_truth.json").read_text())
    except (OSError, ValueError):
        return None
    if truth.get("generator") != GENERATOR or truth.get("version") != VERSION:
        return None
    if truth.get("args") != args:
        return None
    return truth.get("counts")


def generate(
    out: Path,
    n: int = 3000,
    seed: int = 0,
    size: int = 96,
    wrong_caption_frac: float = 0.05,
    exact_dup_frac: float = 0.02,
    near_dup_frac: float = 0.03,
    jpeg_quality: int = 90,
    force: bool = False,
) -> dict[str, Any]:
    """Generate the shapes demo dataset into ``out`` (see the module docstring).

    If ``out`` already holds a dataset generated with the same arguments (and ``force`` is
    false), nothing is written and its stored summary is returned. Otherwise the dataset
    is built in ``<out>.tmp`` and renamed into place, replacing an older one.

    Returns ``{"images", "originals", "wrong_captions", "exact_duplicates",
    "near_duplicates", "path"}``.
    """
    out = Path(out)
    n, seed, size, jpeg_quality = int(n), int(seed), int(size), int(jpeg_quality)
    fracs = {
        "wrong_caption_frac": float(wrong_caption_frac),
        "exact_dup_frac": float(exact_dup_frac),
        "near_dup_frac": float(near_dup_frac),
    }
    if n < 1:
        raise DemoDataError(f"n must be at least 1, got {n}")
    if size < 16:
        raise DemoDataError(f"size must be at least 16 pixels, got {size}")
    if not 1 <= jpeg_quality <= 100:
        raise DemoDataError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    for key, value in fracs.items():
        if not 0.0 <= value <= 1.0:
            raise DemoDataError(f"{key} must be in [0, 1], got {value}")
    k, e, m = (round(n * f) for f in fracs.values())
    if k + e + m > n:
        raise DemoDataError("the planted fractions add up to more than all the images")
    args = {"n": n, "seed": seed, "size": size, **fracs, "jpeg_quality": jpeg_quality}

    if out.exists() and not force:
        counts = _stored(out, args)
        if counts is not None:
            return _summary(counts, out)
    exists = out.exists()
    if exists and not force and not (out / "ground_truth.json").exists() and any(out.iterdir()):
        raise DemoDataError(
            f"{out} exists and is not a generated demo dataset; "
            "remove it, choose another demo.out, or pass demo.force=true"
        )

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    for shape in SHAPES:
        (tmp / shape).mkdir(parents=True)

    roles = _plan(n, seed, k, e, m)
    tasks = [
        (str(tmp), seed, size, jpeg_quality, [(i, roles[i]) for i in range(a, min(a + CHUNK, n))])
        for a in range(0, n, CHUNK)
    ]
    procs = _workers(n)
    if procs == 1:
        chunks = [_render_chunk(t) for t in tasks]
    else:
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            chunks = pool.map(_render_chunk, tasks, chunksize=1)
    records = [r for chunk in chunks for r in chunk]

    _write_outputs(tmp, records, args)
    counts = _counts(records)
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    return _summary(counts, out)


def _counts(records: list[dict]) -> dict[str, int]:
    kinds = [r["kind"] for r in records]
    return {
        "images": len(records),
        "originals": kinds.count("original"),
        "wrong_captions": sum("written" in r for r in records),
        "exact_duplicates": kinds.count("exact_dup"),
        "near_duplicates": kinds.count("near_dup"),
    }


def _write_outputs(root: Path, records: list[dict], args: dict[str, Any]) -> None:
    """Write llava.json, captions.csv and, last, ground_truth.json into ``root``."""
    llava = [
        {"id": Path(r["image"]).stem, "image": r["image"], "conversations": r["conversations"]}
        for r in records
    ]
    (root / "llava.json").write_text(json.dumps(llava, indent=1, ensure_ascii=False) + "\n")

    with (root / "captions.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image", "caption", "label"])
        for r in records:
            writer.writerow([r["image"], r["caption"], r["attrs"]["shape"]])

    wrong = [
        {
            "image": r["image"],
            "true": {"shape": r["attrs"]["shape"], "colour": r["attrs"]["colour"]},
            "written": r["written"],
            "caption": r["caption"],
        }
        for r in records
        if "written" in r
    ]
    duplicates = []
    for r in records:
        if r["kind"] == "exact_dup":
            duplicates.append({"kind": "exact", "pair": [r["source"], r["image"]]})
        elif r["kind"] == "near_dup":
            duplicates.append(
                {"kind": "near", "pair": [r["source"], r["image"]], "transform": r["transform"]}
            )
    images = {
        r["image"]: {
            **r["attrs"],
            "kind": r["kind"],
            **({"source": r["source"]} if "source" in r else {}),
        }
        for r in records
    }
    truth = {
        "generator": GENERATOR,
        "version": VERSION,
        "args": args,
        "counts": _counts(records),
        "classes": list(SHAPES),
        "wrong_captions": wrong,
        "duplicates": duplicates,
        "images": images,
    }
    (root / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n")


def generate_from_config(demo_cfg: Any) -> dict[str, Any]:
    """Call :func:`generate` with the fields of ``conf/demo/shapes.yaml`` (``cfg.demo``)."""
    return generate(
        Path(str(demo_cfg.out)),
        n=int(demo_cfg.n),
        seed=int(demo_cfg.seed),
        size=int(demo_cfg.size),
        wrong_caption_frac=float(demo_cfg.wrong_caption_frac),
        exact_dup_frac=float(demo_cfg.exact_dup_frac),
        near_dup_frac=float(demo_cfg.near_dup_frac),
        jpeg_quality=int(demo_cfg.jpeg_quality),
        force=bool(demo_cfg.get("force", False)),
    )


@hydra_job("demo_data")
def main(cfg: Any) -> int:
    """Generate the demo dataset and print a one-line summary."""
    s = generate_from_config(cfg.demo)
    print(
        f"demo data: {s['images']} images ({s['originals']} originals, "
        f"{s['wrong_captions']} wrong captions, {s['exact_duplicates']} exact and "
        f"{s['near_duplicates']} near duplicates) in {s['path']}"
    )
    return 0


if __name__ == "__main__":
    main()
