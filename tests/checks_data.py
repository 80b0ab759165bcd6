"""A small planted lake for the check tests: embeddings and hashes written by the test.

Dataset ``toy`` (43 samples, D=16): labels a, b, c, d with 10 samples each, image vectors
clustered around one basis vector per label, caption vectors near their own image, plus:

- wrong captions: s03, s14, s25 (caption vector opposite to the image);
- mislabelled: s08, s09 are labelled ``a`` but their images sit in the ``b`` cluster;
- outlier: s29 (label ``c``) points mostly along an unused axis;
- duplicates: s30/s31 share one media (same bytes); s32/s33 identical phash and images;
  s34/s35 phash 3 bits apart, same image; s37/s38 same image, unrelated hashes
  (embedding only); s36 is 2 bits from s05's hash but a different image (not a copy);
- a hash chain without embeddings: s40 ~ s41 ~ s42 (5 bits per step, s40-s42 10 bits).

Dataset ``other`` has one sample, s43, reusing s00's media: never grouped across datasets.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from lake.schema import MEDIA_SCHEMA, SAMPLES_SCHEMA
from lake.store import Lake

D = 16
IMAGE_MODEL = "toy-clip-image"
TEXT_MODEL = "toy-clip-text"

WRONG_CAPTIONS = {"s03", "s14", "s25"}
MISLABELLED = {"s08", "s09"}
OUTLIER = {"s29"}
DUP_MEMBERS = {"s31", "s33", "s35", "s38", "s41"}  # non-representatives


def conf_check(name: str, **overrides: Any) -> Any:
    """The check ``name`` built from the composed ``conf/check/default.yaml`` (the one
    source of its settings), with ``overrides`` replacing some of them."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("check")
    node = cfg.check.checks[name]
    return instantiate(node, **overrides)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _flip(h: int, bits: list[int]) -> int:
    for b in bits:
        h ^= 1 << b
    return h


def build_lake(lake: Lake, seed: int = 0) -> Lake:
    """Write the planted dataset into ``lake`` (empty) and return it."""
    rng = np.random.default_rng(seed)
    labels = "abcd"
    centres = np.eye(D, dtype=np.float64)
    n = 40
    lab = [labels[i // 10] for i in range(n)]
    img = np.stack([_unit(centres[i // 10] + 0.15 * rng.normal(size=D)) for i in range(n)])
    for i in (8, 9):  # in the b cluster, labelled a
        img[i] = _unit(centres[1] + 0.15 * rng.normal(size=D))
    img[29] = _unit(0.3 * centres[2] + centres[10] + 0.1 * rng.normal(size=D))
    img[31] = img[30]  # same media
    img[33] = _unit(img[32] + 0.01 * rng.normal(size=D))
    img[35] = _unit(img[34] + 0.01 * rng.normal(size=D))
    img[38] = _unit(img[37] + 0.01 * rng.normal(size=D))
    txt = _unit(img + 0.05 * rng.normal(size=(n, D)))
    for i in (3, 14, 25):
        txt[i] = _unit(-img[i] + 0.1 * rng.normal(size=D))

    hashes = [int(h) for h in rng.integers(0, 2**63, size=n + 3, dtype=np.int64)]
    hashes = [h * 2 + int(rng.integers(2)) for h in hashes]
    hashes[33] = hashes[32]
    hashes[35] = _flip(hashes[34], [1, 20, 50])
    hashes[36] = _flip(hashes[5], [7, 40])
    hashes[41] = _flip(hashes[40], [0, 1, 17, 33, 49])
    hashes[42] = _flip(hashes[41], [2, 3, 18, 34, 50])

    media, samples = [], []
    for i in range(n + 3):
        mid = f"m{i:02d}"
        label = lab[i] if i < n else "z"
        media.append(
            {"media_id": mid, "kind": "image", "phash": hashes[i], "source_uri": f"{i:02d}.jpg"}
        )
        samples.append(
            {
                "sample_id": f"s{i:02d}",
                "dataset": "toy",
                "media_ids": ["m30" if i == 31 else mid],
                "label": label,
                "caption": f"caption {i}",
                "source_uri": f"{label}/img{i:02d}.jpg",
            }
        )
    samples.append(
        {"sample_id": "s43", "dataset": "other", "media_ids": ["m00"], "label": "a",
         "caption": "caption 0", "source_uri": "a/img00.jpg"}
    )  # fmt: skip
    lake.insert_new("media", pa.Table.from_pylist(media, schema=MEDIA_SCHEMA))
    lake.insert_new("samples", pa.Table.from_pylist(samples, schema=SAMPLES_SCHEMA))

    vec = pa.list_(pa.float32(), D)
    lake.add_columns(
        "media", [pa.field("clip_image", vec), pa.field("clip_image_model", pa.string())]
    )
    lake.add_columns(
        "samples", [pa.field("clip_text", vec), pa.field("clip_text_model", pa.string())]
    )
    mids = [f"m{i:02d}" for i in range(n) if i != 31]
    lake.update_columns(
        "media",
        pa.table(
            {
                "media_id": mids,
                "clip_image": pa.array([img[int(m[1:])].astype(np.float32) for m in mids], vec),
                "clip_image_model": [IMAGE_MODEL] * len(mids),
            }
        ),
    )
    sids = [f"s{i:02d}" for i in range(n)] + ["s43"]
    tvecs = [*txt.astype(np.float32), txt[0].astype(np.float32)]
    lake.update_columns(
        "samples",
        pa.table(
            {
                "sample_id": sids,
                "clip_text": pa.array(list(tvecs), vec),
                "clip_text_model": [TEXT_MODEL] * len(sids),
            }
        ),
    )
    return lake


# --------------------------------------------------------------------------- thumbnails

THUMB_SIZE = 96


def picture(centre: tuple[float, float] = (40.0, 44.0), seed: int = 7) -> Image.Image:
    """A small scene: textured gradient background, a star and a disc (same seed, same scene).

    ``centre`` places the star; the background and the disc do not move with it, so a
    second call with another centre is "the same shape drawn at another position".
    """
    rng = np.random.default_rng(seed)
    s = THUMB_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    bg = np.stack([90 + 60 * xx / s, 120 + 40 * yy / s, 160 - 50 * xx / s], -1)
    bg += 12 * np.sin(xx / 5.0 + yy / 9.0)[..., None] + rng.normal(0, 6, size=(s, s, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    cx, cy = centre
    pts = []
    for k in range(10):
        r = 22 if k % 2 == 0 else 9
        a = np.pi * k / 5 - np.pi / 2
        pts.append((cx + r * np.cos(a), cy + r * np.sin(a)))
    draw.polygon(pts, fill=(235, 190, 40))
    draw.ellipse((66, 62, 84, 80), fill=(40, 60, 170))
    return img


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def cropped(img: Image.Image, frac: float, left: float = 0.5, top: float = 0.5) -> Image.Image:
    """Crop ``frac`` of each dimension (split ``left``/``top`` : rest) and resize back."""
    w, h = img.size
    cw, ch = round(w * frac), round(h * frac)
    x0, y0 = round(cw * left), round(ch * top)
    box = (x0, y0, w - (cw - x0), h - (ch - y0))
    return img.crop(box).resize((w, h), Image.Resampling.BICUBIC)


def build_thumb_lake(lake: Lake) -> Lake:
    """Dataset ``pix``: one picture, its copies and a redraw, all with the same phash and
    embedding (so every pair is a candidate) and a JPEG thumbnail each.

    p0 original; p1 re-encoded at quality 60; p2 4% crop (2% a side) re-encoded at 75;
    p3 the star drawn 14 px to the right (not a copy); p4 has no thumbnail (unverifiable,
    the unverified rules apply: hash + cosine).
    """
    base = picture()
    thumbs = [
        jpeg(base, 90),
        jpeg(base, 60),
        jpeg(cropped(base, 0.04), 75),
        jpeg(picture(centre=(54.0, 44.0)), 90),
        None,
    ]
    vec = pa.list_(pa.float32(), D)
    media = [
        {"media_id": f"pm{i}", "kind": "image", "phash": 12345, "thumb": t,
         "source_uri": f"p{i}.jpg"}
        for i, t in enumerate(thumbs)
    ]  # fmt: skip
    samples = [
        {"sample_id": f"p{i}", "dataset": "pix", "media_ids": [f"pm{i}"], "label": "star",
         "source_uri": f"pix/p{i}.jpg"}
        for i in range(len(thumbs))
    ]  # fmt: skip
    lake.insert_new("media", pa.Table.from_pylist(media, schema=MEDIA_SCHEMA))
    lake.insert_new("samples", pa.Table.from_pylist(samples, schema=SAMPLES_SCHEMA))
    lake.add_columns(
        "media", [pa.field("clip_image", vec), pa.field("clip_image_model", pa.string())]
    )
    one = _unit(np.ones(D)).astype(np.float32)
    lake.update_columns(
        "media",
        pa.table(
            {
                "media_id": [m["media_id"] for m in media],
                "clip_image": pa.array([one] * len(media), vec),
                "clip_image_model": [IMAGE_MODEL] * len(media),
            }
        ),
    )
    return lake
