"""Each check on a small planted lake (vectors and hashes written by the test)."""

from __future__ import annotations

import numpy as np
import pytest

from lake.store import Lake
from plugins.checks.duplicates import (
    greedy_groups,
    knn_pairs,
    phash_pairs,
    thumb_similarity,
    thumb_stack,
)
from tests.checks_data import (
    DUP_MEMBERS,
    IMAGE_MODEL,
    MISLABELLED,
    OUTLIER,
    TEXT_MODEL,
    WRONG_CAPTIONS,
    build_lake,
    build_thumb_lake,
    conf_check,
    cropped,
    jpeg,
    picture,
)


@pytest.fixture
def toy(lake: Lake) -> Lake:
    return build_lake(lake)


def _flagged(table) -> set[str]:
    return set(table.filter(table.column("flagged")).column("sample_id").to_pylist())


def test_caption_mismatch_flags_exactly_the_wrong_captions(toy: Lake) -> None:
    result, summary = conf_check("caption_mismatch").run(toy)
    assert _flagged(result) == WRONG_CAPTIONS
    assert result.column_names == ["sample_id", "score", "flagged", "group", "detail", "clip_score"]
    rows = {r["sample_id"]: r for r in result.to_pylist()}
    assert len(rows) == 40  # the chain has no embeddings; `other` is too small to rank
    # nll: a right caption competes with its label's ~10 captions (about log 10), a wrong
    # one (opposite to its image) with all 40 at a far higher logit
    assert rows["s03"]["score"] > 20 and rows["s00"]["score"] < np.log(40)
    assert rows["s03"]["clip_score"] < 0 < rows["s00"]["clip_score"]
    assert "robust z of log1p" in rows["s03"]["detail"]
    assert summary["models"] == {"image": [IMAGE_MODEL], "text": [TEXT_MODEL]}
    assert summary["flagged"] == 3 and summary["thresholds"]["method"] == "nll"


@pytest.mark.parametrize("temperature", [0.1, 0.05, 0.01])
def test_caption_mismatch_flags_do_not_hang_on_the_temperature(toy: Lake, temperature) -> None:
    # with a near-perfect model the nll of right captions is ~0 and its spread tiny: a
    # caption shared by two images (nll ~ log 2) must not become an outlier
    result, _ = conf_check("caption_mismatch", temperature=temperature).run(toy)
    assert _flagged(result) == WRONG_CAPTIONS


def test_caption_mismatch_nll_is_the_softmax_retrieval_loss(toy: Lake) -> None:
    result, _ = conf_check("caption_mismatch", temperature=0.1).run(toy, "dataset = 'toy'")
    rows = {r["sample_id"]: r for r in result.to_pylist()}
    data = toy.dataset("samples").to_table(columns=["sample_id", "clip_text", "media_ids"])
    media = toy.dataset("media").to_table(columns=["media_id", "clip_image"]).to_pylist()
    image = {m["media_id"]: m["clip_image"] for m in media}
    ids = [i for i in data.column("sample_id").to_pylist() if i in rows]
    by_id = {r["sample_id"]: r for r in data.to_pylist()}
    txt = np.array([by_id[i]["clip_text"] for i in ids])
    img = np.array([image[by_id[i]["media_ids"][0]] for i in ids])
    logits = img @ txt.T / 0.1
    expected = np.log(np.exp(logits).sum(axis=1)) - np.diag(logits)
    got = np.array([rows[i]["score"] for i in ids])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_caption_mismatch_is_relative_and_respects_where(toy: Lake) -> None:
    # the wrong captions rank last, whatever the rank threshold; `where` limits the scope
    ranked, summary = conf_check("caption_mismatch", method="rank").run(toy)
    # the threshold is conf/check/default.yaml's (0.05), not a second default in the code
    assert _flagged(ranked) == WRONG_CAPTIONS and summary["thresholds"]["max_beaten_frac"] == 0.05
    rows = {r["sample_id"]: r for r in ranked.to_pylist()}
    assert rows["s03"]["score"] > 0.9 and rows["s00"]["score"] < 0.1
    loose, _ = conf_check("caption_mismatch", method="rank", max_beaten_frac=0.9).run(toy)
    assert _flagged(loose) == WRONG_CAPTIONS
    some, _ = conf_check("caption_mismatch", min_samples=5).run(toy, "label = 'a'")
    assert set(some.column("sample_id").to_pylist()) == {f"s{i:02d}" for i in range(10)}
    assert _flagged(some) == {"s03"}


@pytest.mark.parametrize("method", ["nll", "rank"])
def test_caption_mismatch_with_sampled_negatives(toy: Lake, method: str) -> None:
    result, _ = conf_check("caption_mismatch", method=method, negatives=20, seed=1).run(toy)
    worst = result.sort_by([("score", "descending")]).column("sample_id").to_pylist()[:3]
    assert set(worst) == WRONG_CAPTIONS <= _flagged(result)


def test_caption_mismatch_rejects_unknown_method() -> None:
    from hydra.errors import InstantiationException

    # hydra wraps the class's ValueError; the reason is kept
    with pytest.raises(InstantiationException, match=r"nll.*rank"):
        conf_check("caption_mismatch", method="cosine")


def test_label_conflict_flags_the_mislabelled(toy: Lake) -> None:
    # the toy vectors' model (toy-clip-image) cannot be loaded: auto falls back to prototypes
    result, summary = conf_check("label_conflict").run(toy)
    assert _flagged(result) == MISLABELLED
    detail = {r["sample_id"]: r["detail"] for r in result.to_pylist()}
    assert detail["s08"].startswith("predicted b p=") and "(label a p=" in detail["s08"]
    assert summary["models"] == {"image": [IMAGE_MODEL]}
    assert summary["method"].startswith("leave-one-out label prototypes")
    # ... and says so, naming the model and why
    [why] = summary["fallbacks"]
    assert why.startswith("zero-shot not possible: the image model toy-clip-image cannot be")
    assert why.endswith("used label prototypes")
    assert conf_check("label_conflict", method="prototype").run(toy)[1]["fallbacks"] == []
    # the outlier is far from every prototype: no confident conflict
    assert "s29" not in _flagged(result)


def test_outliers_flag_far_samples_per_label(toy: Lake) -> None:
    result, summary = conf_check("outliers").run(toy)
    assert _flagged(result) == OUTLIER | MISLABELLED
    assert summary["thresholds"] == {
        "k": 5,
        "z": 3.5,
        "min_per_label": 10,
        "exact_below": 20000,
        "partition_probes": 2,
    }


def test_duplicates_groups_around_representatives(toy: Lake) -> None:
    result, summary = conf_check("duplicates").run(toy)
    assert _flagged(result) == DUP_MEMBERS
    groups: dict[str, set[str]] = {}
    for r in result.to_pylist():
        if r["group"]:
            groups.setdefault(r["group"], set()).add(r["sample_id"])
    assert sorted(map(sorted, groups.values())) == [
        ["s30", "s31"],  # same media
        ["s32", "s33"],  # same phash, confirmed by embeddings
        ["s34", "s35"],  # phash 3 bits apart
        ["s37", "s38"],  # embeddings only
        ["s40", "s41"],  # the chain's first link; s42 is not within reach of s40
    ]
    assert all(r == min(m) for r, m in groups.items())  # representative = group id
    rows = {r["sample_id"]: r for r in result.to_pylist()}
    assert rows["s31"]["score"] == 1.0 and rows["s31"]["detail"] == "exact: same media"
    assert rows["s38"]["detail"].startswith("near (cosine)")
    # hash 2 bits from s05 but another image: not a copy; s43 is in another dataset
    assert rows["s36"]["group"] is None and rows["s05"]["group"] is None
    assert rows["s43"]["group"] is None and rows["s00"]["group"] is None
    assert summary["groups"] == 5 and summary["exact_groups"] == 1
    assert summary["group_list"][0]["members"]


def test_duplicates_hash_only_trusts_hashes(toy: Lake) -> None:
    result, _ = conf_check("duplicates", phash_min_cosine=None, min_cosine=None).run(toy)
    flagged = _flagged(result)
    assert {"s31", "s33", "s35", "s41"} <= flagged and "s38" not in flagged
    assert flagged & {"s05", "s36"}  # the hash collision is grouped without embeddings


def test_chain_never_becomes_one_group() -> None:
    # 0 ~ 1 ~ 2, but 0 and 2 are not within threshold; 1 sorts first (representative)
    edges = [(0, 1, 0.95, 1), (1, 2, 0.95, 1)]
    rep, _ = greedy_groups(3, edges, order_key=[1, 0, 2], complete=True)
    assert rep.tolist() in ([1, 1, -1], [-1, 1, 1])
    # without the complete-link rule, the star around the representative takes both
    rep, _ = greedy_groups(3, edges, order_key=[1, 0, 2], complete=False)
    assert rep.tolist() == [1, 1, 1]
    # and groups never grow through a member: 0 is rep, 1 member, 2 only near 1
    rep, _ = greedy_groups(3, edges, order_key=[0, 1, 2], complete=False)
    assert rep.tolist() == [0, 0, -1]


def test_phash_banding_finds_every_pair_within_seven_bits() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**63, size=300, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    near = base.copy()
    for k in range(len(near)):
        for b in rng.choice(64, size=int(rng.integers(0, 8)), replace=False):
            near[k] ^= np.uint64(1) << np.uint64(int(b))
    h = np.concatenate([base, near])
    i, j, d = phash_pairs(h, max_distance=7)
    dist = np.bitwise_count(h[:, None] ^ h[None, :])
    want = {(a, b) for a, b in zip(*np.nonzero(np.triu(dist <= 7, 1)), strict=True)}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == want
    assert (d == dist[i, j]).all()


def test_knn_pairs_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    x[25:] = x[:25] + 0.01 * rng.normal(size=(25, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    i, j, s = knn_pairs(x, 0.99, k=3, batch_size=7)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) >= {(a, a + 25) for a in range(25)}
    assert np.allclose(s, np.einsum("ij,ij->i", x[i], x[j]), atol=1e-5)


def test_duplicates_through_lancedb_vector_search(toy: Lake) -> None:
    exact, _ = conf_check("duplicates").run(toy)
    ann, summary = conf_check("duplicates", ann_above=0).run(toy)
    assert summary["thresholds"]["ann_above"] == 0
    assert _flagged(ann) == _flagged(exact) == DUP_MEMBERS
    assert ann.column("group").to_pylist() == exact.column("group").to_pylist()


def test_thumbnail_similarity_confirms_copies_not_redraws() -> None:
    dup = conf_check("duplicates")
    threshold = dup.thumb_min_similarity
    base = picture()
    copies = [
        jpeg(base, 60),  # re-encoded
        jpeg(cropped(base, 0.04), 75),  # 4% crop (2% a side), resized back, re-encoded
        jpeg(cropped(base, 0.08), 60),  # 8% crop at a low quality
    ]
    others = [
        jpeg(picture(centre=(54.0, 44.0)), 90),  # the same star drawn 14 px to the right
        jpeg(picture(centre=(40.0, 30.0)), 90),  # ... 14 px higher
        jpeg(base.convert("L").convert("RGB"), 90),  # the same layout without its colours
    ]
    blobs = [jpeg(base, 90), *copies, *others, None, b"not an image"]
    views, ok = thumb_stack(blobs, dup.thumb_size, dup.thumb_scales, dup.thumb_anchors)
    assert ok.tolist() == [True] * 7 + [False, False]
    sim = thumb_similarity(views, np.zeros(6, int), np.arange(1, 7))
    assert (sim[:3] >= threshold).all(), sim
    assert (sim[3:] < threshold).all(), sim
    assert sim[3] < 0.9  # far below: a moved shape is not a borderline case
    # symmetric, and the crop is found from either side
    back = thumb_similarity(views, np.arange(1, 7), np.zeros(6, int))
    assert np.allclose(sim, back)


def test_off_centre_crops_need_anchors() -> None:
    base = picture()
    blobs = [jpeg(base, 90), jpeg(cropped(base, 0.04, left=0.0, top=0.0), 75)]
    dup = conf_check("duplicates")
    assert dup.thumb_anchors == (0.5,)
    centred, _ = thumb_stack(blobs, dup.thumb_size, dup.thumb_scales, dup.thumb_anchors)
    anywhere, _ = thumb_stack(blobs, dup.thumb_size, dup.thumb_scales, (0.0, 0.5, 1.0))
    assert anywhere.shape[1] == 1 + 3 * 9
    i, j = np.array([0]), np.array([1])
    assert thumb_similarity(anywhere, i, j)[0] > 0.99 > thumb_similarity(centred, i, j)[0]


def test_duplicates_verifies_candidates_on_thumbnails(lake: Lake) -> None:
    pix = build_thumb_lake(lake)
    result, summary = conf_check("duplicates").run(pix)
    rows = {r["sample_id"]: r for r in result.to_pylist()}
    # same hash and embedding everywhere: the thumbnails decide
    assert {s for s, r in rows.items() if r["group"] == "p0"} == {"p0", "p1", "p2", "p4"}
    assert rows["p1"]["detail"].startswith("near (thumbnail)") and rows["p1"]["score"] > 0.96
    assert rows["p3"]["group"] is None  # the star drawn elsewhere is not a copy
    # p4 has no thumbnail: its pairs fall back to the unverified rule (hash + cosine)
    assert rows["p4"]["detail"].startswith("near (phash+cosine)")
    assert summary["thresholds"]["thumb_min_similarity"] == 0.96
    # without verification, hash + embedding put everything together (the old failure)
    loose, _ = conf_check("duplicates", thumb_min_similarity=None).run(pix)
    assert set(loose.column("group").to_pylist()) == {"p0"}


def test_duplicates_without_embeddings_says_it_fell_back_to_hashes(lake: Lake) -> None:
    import pyarrow as pa

    from lake.schema import MEDIA_SCHEMA, SAMPLES_SCHEMA

    media = [{"media_id": f"h{i}", "kind": "image", "phash": 2**40 + i} for i in range(3)]
    samples = [
        {"sample_id": f"d{i}", "dataset": "toy", "media_ids": [f"h{i}"], "source_uri": f"{i}"}
        for i in range(3)
    ]
    lake.insert_new("media", pa.Table.from_pylist(media, schema=MEDIA_SCHEMA))
    lake.insert_new("samples", pa.Table.from_pylist(samples, schema=SAMPLES_SCHEMA))
    result, summary = conf_check("duplicates", thumb_min_similarity=None).run(lake)
    assert _flagged(result) == {"d1", "d2"}  # hashes 1-2 bits apart: grouped by hash alone
    [why] = summary["fallbacks"]
    assert why.startswith("no image embeddings") and "perceptual hash only" in why
    assert conf_check("duplicates").run(build_lake(Lake(lake.uri + "-toy")))[1]["fallbacks"] == []


def test_check_settings_have_one_source() -> None:
    # every key conf/check/default.yaml gives a check is a required keyword of its class:
    # no second default in the code that could drift from the YAML
    import inspect

    from omegaconf import OmegaConf

    from lake.plugin import load_class
    from tests.conftest import REPO

    checks = OmegaConf.load(REPO / "conf" / "check" / "default.yaml").checks
    assert set(checks) == {"caption_mismatch", "label_conflict", "duplicates", "outliers"}
    for name, node in checks.items():
        cls = load_class(node["_target_"])
        params = inspect.signature(cls.__init__).parameters
        keys = [k for k in node if k != "_target_"]
        assert cls.name == name and keys
        with_default = [k for k in keys if params[k].default is not inspect.Parameter.empty]
        assert not with_default, f"{name}: code defaults for config keys {with_default}"


def test_thumbnails_are_decoded_upright() -> None:
    # a thumbnail with an EXIF orientation (original bytes kept as the thumbnail) is
    # compared as it is meant to be seen, like every other reader of image bytes
    import io

    from PIL import Image, ImageOps

    dup = conf_check("duplicates")
    base = picture().resize((64, 32))
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    base.save(out, format="JPEG", quality=95, exif=exif)
    tagged = out.getvalue()
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(tagged)))
    views, ok = thumb_stack(
        [tagged, jpeg(upright, 95), jpeg(base, 95)],
        dup.thumb_size,
        dup.thumb_scales,
        dup.thumb_anchors,
    )
    assert ok.all()
    sim = thumb_similarity(views, np.array([0, 2]), np.array([1, 1]))
    # the tagged file matches its upright copy; the same pixels without the tag do not
    assert sim[0] >= dup.thumb_min_similarity > sim[1], sim
