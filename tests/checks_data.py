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

import numpy as np
import pyarrow as pa

from lake.schema import MEDIA_SCHEMA, SAMPLES_SCHEMA
from lake.store import Lake

D = 16
IMAGE_MODEL = "toy-clip-image"
TEXT_MODEL = "toy-clip-text"

WRONG_CAPTIONS = {"s03", "s14", "s25"}
MISLABELLED = {"s08", "s09"}
OUTLIER = {"s29"}
DUP_MEMBERS = {"s31", "s33", "s35", "s38", "s41"}  # non-representatives


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
