"""``lakeloom query`` on a real embedded lake: model lookup, ordering, scores, filters."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from lake.enrich import enrich
from lake.errors import ConfigError
from lake.query import lake_model, load_embedder, run_query, search
from lake.store import Lake
from plugins.clip_embed import ClipImageEmbedder, ClipTextEmbedder
from tests.plugins.test_clip_embed import clip_base  # noqa: F401 - session fixture

TARGET = "plugins.clip_embed:ClipImageEmbedder"  # entry point before a reinstall


@pytest.fixture
def embedded(clip_base, tmp_path: Path) -> Lake:  # noqa: F811
    shutil.copytree(clip_base["lake"], tmp_path / "lake")
    lake = Lake(tmp_path / "lake")
    for cls in (ClipImageEmbedder, ClipTextEmbedder):
        enrich(cls(pretrained=clip_base["m1"], device="cpu"), lake, progress=False)
    return lake


def _vectors(lake: Lake) -> dict[str, np.ndarray]:
    t = lake.dataset("media").to_table(columns=["media_id", "clip_image"])
    return {m: np.asarray(v, np.float32) for m, v in zip(*t.to_pydict().values(), strict=True)}


def test_text_query_scores_are_cosines_best_first(clip_base, embedded: Lake) -> None:  # noqa: F811
    embedder = load_embedder(embedded, TARGET, pretrained=clip_base["m1"], device="cpu")
    q = embedder.embed_texts(["a red circle"])[0]
    hits = search(embedded, q, k=5)
    assert len({h.media_id for h in hits}) == 5
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    vecs = _vectors(embedded)
    for h in hits:
        assert h.score == pytest.approx(float(vecs[h.media_id] @ q), abs=1e-5)
        assert h.sample_id and h.source_uri and h.label in ("red", "green", "blue")
    # the 5 best by hand
    best = sorted(vecs, key=lambda m: -float(vecs[m] @ q))[:5]
    assert [h.media_id for h in hits] == best


def test_where_filter_and_dataset(clip_base, embedded: Lake) -> None:  # noqa: F811
    embedder = load_embedder(embedded, TARGET, pretrained=clip_base["m1"], device="cpu")
    q = embedder.embed_texts(["a green circle"])[0]
    hits = search(embedded, q, k=10, where="label = 'blue'")
    assert len(hits) == 4 and {h.label for h in hits} == {"blue"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert search(embedded, q, k=10, where="label = 'nope'") == []
    assert search(embedded, q, k=3, dataset="other") == []
    assert len(search(embedded, q, k=3, dataset="shapes")) == 3


def test_image_query_finds_itself(clip_base, embedded: Lake) -> None:  # noqa: F811
    path = sorted((clip_base["images"] / "green").glob("*.png"))[0]
    cfg = OmegaConf.create(
        {
            "lake": {"uri": embedded.uri},
            "text": None,
            "image": str(path),
            "k": 3,
            "where": None,
            "dataset": None,
            "plugin": TARGET,
            "model": {"arch": None, "pretrained": clip_base["m1"], "run": None, "device": "cpu"},
            "kind": None,
            "nprobes": 20,
            "refine_factor": 50,
            "overfetch": 4,
            "max_fetch": 2560,
            "filtered_refine": 20,
        }
    )
    hits = run_query(cfg)
    assert hits[0].source_uri == f"green/{path.name}"
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_model_must_be_the_lakes(clip_base, embedded: Lake, tmp_path: Path) -> None:  # noqa: F811
    owner = lake_model(embedded)
    assert owner.startswith("open_clip:tiny-clip:local-dir:m1:")
    with pytest.raises(ConfigError, match=r"model\.pretrained"):
        load_embedder(embedded, TARGET)  # a folder's path is not in the id
    with pytest.raises(ConfigError, match="the lake was embedded by"):
        load_embedder(embedded, TARGET, pretrained=clip_base["m2"], device="cpu")
    empty = Lake(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no CLIP embeddings"):
        lake_model(empty)
