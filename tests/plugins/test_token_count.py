"""The token-count enricher on a real small lake: each stored count equals the length of the
row the real collator builds for that sample (tiny LLaVA and tiny Qwen2-VL, a pixel budget
that resizes some images), counting and planning work on a lake whose media bytes are gone
(so nothing is decoded), and the data module's training loader yields the planned packs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import conf_kwargs, jpeg_bytes

#: (width, height) of each image sample; None: a text-only sample; a list: several images
SHAPES = [
    (40, 36),
    (300, 200),
    (31, 47),
    (120, 90),
    None,
    [(64, 48), (200, 150)],
    (96, 96),
    (500, 120),
    None,
    (56, 56),
    [(80, 60), (40, 40), (150, 100)],
    (33, 250),
]
BUDGET = {"min_pixels": 32 * 32, "max_pixels": 96 * 96}


@pytest.fixture(scope="module")
def lake_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LLaVA-JSON lake: single, multi-image and text-only samples of varied sizes."""
    from lake.ingest import IngestSettings, ingest
    from lake.store import Lake
    from plugins.llava import LlavaSource

    base = tmp_path_factory.mktemp("token_lake")
    (base / "images").mkdir()
    records = []
    for i, shape in enumerate(SHAPES):
        sizes = [] if shape is None else shape if isinstance(shape, list) else [shape]
        names = []
        for j, size in enumerate(sizes):
            name = f"images/{i:02d}_{j}.jpg"
            (base / name).write_bytes(jpeg_bytes((40 * i % 256, 90, 200 - 10 * j), size))
            names.append(name)
        question = "".join("<image>\n" for _ in names) + "What is shown here?"
        turns = [
            {"from": "human", "value": question},
            {"from": "gpt", "value": "A square" + " on a plain background" * (i % 3) + "."},
        ]
        record = {"id": f"r{i}", "conversations": turns}
        if names:
            record["images" if len(names) > 1 else "image"] = names if len(names) > 1 else names[0]
        records.append(record)
    (base / "data.json").write_text(json.dumps(records))
    lake = Lake(base / "lake")
    report = ingest(
        LlavaSource(base / "data.json"), lake, "convs", IngestSettings(workers=0, progress=False)
    )
    assert report.new_samples == len(SHAPES) and not report.rejected, report.summary()
    return base / "lake"


def counter(family: str, **values):
    """The enricher as ``conf/enrich/tokens.yaml`` builds it, for ``family``."""
    from plugins.token_count import TokenCounter

    kw = conf_kwargs("enrich", "enrich.steps.tokens", "enrich=tokens", family=family, **values)
    return TokenCounter(**kw)


def real_collator(processor, family: str, **kw):
    """The training collator of ``family`` around ``processor``."""
    from core.models.vlm_families import family as spec_of
    from core.modules.vlm_collate import VlmCollator

    spec = spec_of(family)
    kw.setdefault("max_length", 100_000)
    return VlmCollator(
        processor,
        spec.never_supervised,
        spec.image_token,
        video_token=spec.video_token,
        family=spec.name,
        **kw,
    )


def data_module(path: Path, collator, **kw):
    from core.data.lance_data import LanceDataModule

    dm = LanceDataModule(str(path), val_fraction=0.0, test_fraction=0.0, shuffle=True, **kw)
    dm.set_collator(collator)
    return dm


def stored(path: Path, family: str) -> dict[str, int | None]:
    from lake.store import Lake

    table = Lake(path).dataset("samples").to_table(columns=["sample_id", f"tokens_{family}"])
    return dict(
        zip(table["sample_id"].to_pylist(), table[f"tokens_{family}"].to_pylist(), strict=True)
    )


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_stored_count_is_the_collators_length(lake_path, tmp_path, family):
    import shutil

    from lake.enrich import enrich
    from lake.store import Lake

    path = tmp_path / "lake"
    shutil.copytree(lake_path, path)
    budget = BUDGET if family == "qwen2_vl" else {}
    tc = counter(family, **budget)
    report = enrich(tc, Lake(path), batch_size=5, progress=False)
    assert report.done == len(SHAPES)
    counts = stored(path, family)
    assert all(isinstance(c, int) and c > 0 for c in counts.values()), counts

    # what the real collator builds for each sample, as the data module reads it
    real = real_collator(tc.collator.processor, family, **budget)
    ds = data_module(path, real).dataset("train")
    batch = real(ds.__getitems__(list(range(len(ds)))))
    lengths = dict(
        zip(batch["sample_ids"], [int(n) for n in batch["token_mask"].sum(1)], strict=True)
    )
    assert lengths == counts
    # a second run has nothing to do (same owner)
    assert enrich(tc, Lake(path), progress=False).todo == 0


def test_counts_and_plan_need_no_media_bytes(lake_path, tmp_path):
    """Zero decodes: the media bytes are removed, yet counting and planning give the same."""
    import shutil

    from lake.enrich import enrich
    from lake.store import Lake

    with_bytes, without = tmp_path / "a", tmp_path / "b"
    shutil.copytree(lake_path, with_bytes)
    shutil.copytree(lake_path, without)
    lake = Lake(without)
    ids = lake.dataset("media").to_table(columns=["media_id"])["media_id"]
    lake.update_columns(
        "media", pa.table({"media_id": ids, "bytes": pa.nulls(len(ids), pa.large_binary())})
    )
    assert lake.count("media", "bytes IS NOT NULL") == 0
    for path in (with_bytes, without):
        enrich(counter("qwen2_vl", **BUDGET), Lake(path), progress=False)
    assert stored(with_bytes, "qwen2_vl") == stored(without, "qwen2_vl")

    processor = counter("qwen2_vl", **BUDGET).collator.processor
    packing = real_collator(processor, "qwen2_vl", max_length=512, pack=True, **BUDGET)
    dm = data_module(without, packing, pack_plan=True, packs_per_batch=1)
    counts = dm.token_counts("train")
    assert sorted(counts.tolist()) == sorted(stored(with_bytes, "qwen2_vl").values())
    sampler = dm.loader("train").batch_sampler
    plan = sampler.plan()
    assert plan.tokens.max() <= 512 and len(plan) < len(SHAPES)
    assert sorted(plan.members.tolist()) == list(range(len(SHAPES)))


def test_loader_yields_planned_packs(lake_path, tmp_path):
    """The training loader with data.pack_plan: one row per batch, every sample once, each
    row's length the planned pack's count; counts of another budget are refused."""
    import shutil

    from lake.enrich import enrich
    from lake.errors import ConfigError
    from lake.store import Lake

    path = tmp_path / "lake"
    shutil.copytree(lake_path, path)
    tc = counter("llava")
    enrich(tc, Lake(path), progress=False)
    processor = tc.collator.processor
    dm = data_module(
        path, real_collator(processor, "llava", max_length=256, pack=True), pack_plan=True
    )
    counts = dm.token_counts("train")
    loader = dm.loader("train")
    plan = loader.batch_sampler.plan()
    seen = []
    for k, batch in enumerate(loader):
        assert batch["input_ids"].shape[0] == 1
        assert sum(batch["seq_lens"][0]) == int(plan.tokens[k]) <= 256
        seen += batch["sample_ids"]
    assert len(seen) == len(SHAPES) == len(set(seen))
    assert np.all(counts > 0)
    # a different budget is another owner: the plan refuses its counts
    other = real_collator(processor, "llava", max_length=256, pack=True, max_pixels=1000)
    with pytest.raises(ConfigError, match="no token count by tokens:llava:"):
        data_module(path, other, pack_plan=True).token_counts("train")
