"""Fixtures for the TUI tests: one small real lake shared by the data and app tests."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import jpeg_bytes, png_bytes

#: (dataset, label) -> number of images in the ``tui_lake``
TUI_LAYOUT = {("pets", "cat"): 18, ("pets", "dog"): 14, ("toys", "ball"): 16, ("toys", "car"): 12}


def _images(root: Path, dataset: str, seed: int) -> Path:
    """Class folders of small images with caption sidecars (every 5th image has none)."""
    for c, ((ds, label), n) in enumerate(TUI_LAYOUT.items()):
        if ds != dataset:
            continue
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(n):
            rgb = ((37 * i + seed) % 256, (90 * c + 11 * i) % 256, (200 - 40 * c) % 256)
            name = f"{label}{i:03d}"
            if i % 2:
                (folder / f"{name}.jpg").write_bytes(jpeg_bytes(rgb, (32 + i, 24)))
            else:
                (folder / f"{name}.png").write_bytes(png_bytes(rgb, (24, 24 + i)))
            if i % 5:
                (folder / f"{name}.txt").write_text(f"a {label} in colour {rgb} number {i}")
    return root


@pytest.fixture(scope="session")
def tui_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real lake (60 samples) for the TUI: datasets ``pets`` (cat 18, dog 14) and
    ``toys`` (ball 16, car 12), ingested through ImageFolderSource with captions.

    Check columns are written like ``lakeloom check`` writes them (deterministic values,
    ordered by ``source_uri`` within each dataset, index ``i``):

    - ``check_caption_mismatch_score`` = ``i / 10`` on captioned samples (null otherwise);
      the 3 highest-scored samples of each dataset are flagged ``caption_mismatch``;
    - ``check_duplicates_score`` = 0 for all, except two groups per dataset: samples
      ``i`` in {0, 1, 2} (group = sample_id of ``i = 0``) and {3, 4} (group = ``i = 3``),
      scores 1.0 for the representative and 0.9 / 0.95 for the others; the
      non-representatives are flagged ``duplicates``;
    - ``clip_score`` = ``0.2 + i / 100``;
    - ``split``: the first 6 pets samples ``train``, the next 2 ``val``, the first 2 toys
      samples ``test``; the rest null.

    Media and samples are embedded (``clip_image`` / ``clip_text``) with a randomly
    initialised tiny CLIP saved at ``<lake>/../clip`` (``local-dir`` owner), so text search
    and neighbours work offline.

    Read-only: tests that write must copy it (``shutil.copytree``).
    """
    from lake.ingest import IngestSettings, ingest
    from lake.schema import SAMPLES
    from lake.store import Lake
    from plugins.image_folder import ImageFolderSource

    base = tmp_path_factory.mktemp("tui_lake")
    lake = Lake(base / "lake")
    settings = IngestSettings(workers=0, progress=False)
    for seed, ds in enumerate(("pets", "toys")):
        src = ImageFolderSource(_images(base / ds, ds, seed), caption_sidecar=True)
        report = ingest(src, lake, ds, settings)
        assert report.new_samples and not report.rejected, report.summary()

    lake.add_columns(
        SAMPLES,
        [
            pa.field("check_caption_mismatch_score", pa.float32()),
            pa.field("check_duplicates_score", pa.float32()),
            pa.field("check_duplicates_group", pa.string()),
        ],
    )
    table = lake.dataset(SAMPLES).to_table(
        columns=["sample_id", "dataset", "caption", "source_uri"]
    )
    rows = sorted(table.to_pylist(), key=lambda r: (r["dataset"], r["source_uri"]))
    names = ["sample_id", "flags", "split", "clip_score", "check_caption_mismatch_score",
             "check_duplicates_score", "check_duplicates_group"]  # fmt: skip
    out: dict[str, list] = {k: [] for k in names}
    for ds in ("pets", "toys"):
        mine = [r for r in rows if r["dataset"] == ds]
        cm = {r["sample_id"]: i / 10 for i, r in enumerate(mine) if r["caption"]}
        worst = set(sorted(cm, key=cm.get)[-3:])
        for i, r in enumerate(mine):
            sid, flags = r["sample_id"], []
            if sid in worst:
                flags.append("caption_mismatch")
            group, dup = None, 0.0
            if i < 5:
                rep = 0 if i < 3 else 3
                group = mine[rep]["sample_id"]
                dup = 1.0 if i == rep else (0.9, 0.95, 0.9, 1.0, 0.95)[i]
                if i != rep:
                    flags.append("duplicates")
            split = None
            if ds == "pets" and i < 8:
                split = "train" if i < 6 else "val"
            elif ds == "toys" and i < 2:
                split = "test"
            for key, value in (("sample_id", sid), ("flags", flags), ("split", split),
                ("clip_score", 0.2 + i / 100), ("check_caption_mismatch_score", cm.get(sid)),
                ("check_duplicates_score", dup), ("check_duplicates_group", group)):  # fmt: skip
                out[key].append(value)
    lake.update_columns(SAMPLES, pa.table(out))
    _embed(lake, base / "clip")
    assert lake.count(SAMPLES) == sum(TUI_LAYOUT.values())
    return base / "lake"


def _embed(lake, out: Path) -> None:
    """Embed media and samples with a random tiny CLIP (seeded, saved under ``out``)."""
    import torch

    from core.models.clip import create_clip, save_open_clip
    from lake.enrich import enrich
    from plugins.clip_embed import ClipImageEmbedder, ClipTextEmbedder

    torch.manual_seed(0)
    save_open_clip(create_clip("tiny-clip", None)[0], None, out)
    for cls in (ClipImageEmbedder, ClipTextEmbedder):
        enrich(cls(pretrained=f"local-dir:{out}", device="cpu"), lake, progress=False)
