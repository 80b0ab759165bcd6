"""VlmCollator against the real tiny LLaVA / Qwen2-VL / Qwen2.5-VL models and processors.

Tokens are compared with ``processor.apply_chat_template(tokenize=True)``, labels are
decoded back to the assistant answers, and packing is checked end to end: the tiny
model's per-sample loss on a packed row equals the loss on the unpacked batch.
"""

from __future__ import annotations

import io
import random

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from core.models.vlm_families import family
from core.modules.vlm_collate import IGNORE, SampleError, VlmCollator, pack_first_fit

FAMILIES = ("llava", "qwen2_vl")


# ---- fixtures and helpers -----------------------------------------------------------------


def collator(tiny, name: str, **kw) -> VlmCollator:
    spec = family(name)
    kw.setdefault("max_length", 4096)
    return VlmCollator(tiny(name)[1], spec.never_supervised, spec.image_token, **kw)


def jpeg(w: int, h: int, color=(200, 30, 30)) -> bytes:
    img = Image.new("RGB", (w, h), (235, 235, 235))
    ImageDraw.Draw(img).rectangle([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=color)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def sample(sid: str, messages, images=(), **extra) -> dict:
    out = {
        "sample_id": sid,
        "dataset": "d",
        "images": list(images),
        "messages": [{"role": r, "content": c} for r, c in messages],
        "caption": None,
        "chosen": None,
        "rejected": None,
        "source_uri": f"{sid}.jsonl#L3",
    }
    out.update(extra)
    return out


def single() -> dict:
    return sample(
        "single",
        [("user", "<image>\nWhat is shown?"), ("assistant", "A red square.")],
        [jpeg(64, 48)],
    )


def multi() -> dict:
    return sample(
        "multi",
        [
            ("system", "You are a helpful assistant."),
            ("user", "<image>\nWhat shape is drawn?"),
            ("assistant", "A red square."),
            ("user", "<image>\nAnd in this image?"),
            ("assistant", "A blue circle."),
        ],
        [jpeg(64, 48), jpeg(120, 90, (20, 40, 210))],
    )


def text_only() -> dict:
    return sample("text", [("user", "Which colour is the shape?"), ("assistant", "It is blue.")])


def processor_conv(sid: str, images: list[Image.Image]) -> list[dict]:
    """The processor-format conversation of the cases above, written out by hand."""

    def t(s):
        return {"type": "text", "text": s}

    def im(i):
        return {"type": "image", "image": images[i]}

    if sid == "single":
        return [
            {"role": "user", "content": [im(0), t("What is shown?")]},
            {"role": "assistant", "content": [t("A red square.")]},
        ]
    if sid == "multi":
        return [
            {"role": "system", "content": [t("You are a helpful assistant.")]},
            {"role": "user", "content": [im(0), t("What shape is drawn?")]},
            {"role": "assistant", "content": [t("A red square.")]},
            {"role": "user", "content": [im(1), t("And in this image?")]},
            {"role": "assistant", "content": [t("A blue circle.")]},
        ]
    return [
        {"role": "user", "content": [t("Which colour is the shape?")]},
        {"role": "assistant", "content": [t("It is blue.")]},
    ]


CASES = {"single": single, "multi": multi, "text": text_only}
ANSWERS = {
    "single": ["A red square."],
    "multi": ["A red square.", "A blue circle."],
    "text": ["It is blue."],
}


def expected_supervised(name: str, answers: list[str]) -> str:
    """The assistant turns as the template renders them (Vicuna-like for LLaVA)."""
    if name == "llava":
        return "".join(f" {a}</s>" for a in answers)
    return "".join(f"{a}<|im_end|>" for a in answers)


def row(batch: dict, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-padded ``(input_ids, labels)`` of row ``i``."""
    keep = batch["token_mask"][i].bool()
    return batch["input_ids"][i][keep], batch["labels"][i][keep]


def token_id(processor, token: str) -> int:
    return int(processor.tokenizer.convert_tokens_to_ids(token))


def image_token_count(name: str, processor, ids: torch.Tensor) -> int:
    return int((ids == token_id(processor, family(name).image_token)).sum())


def tokens_per_image(name: str, model, batch: dict) -> list[int]:
    """Image tokens each image of the batch expands to, in batch order."""
    if name == "llava":
        return [model.config.image_seq_length] * len(batch["image_sizes"])
    merge = model.config.vision_config.spatial_merge_size
    return (batch["image_grid_thw"].prod(-1) // merge**2).tolist()


# ---- 1. golden tokens ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [*FAMILIES, "qwen2_5_vl"])
@pytest.mark.parametrize("case", list(CASES))
def test_tokens_match_apply_chat_template(tiny, name, case):
    c = collator(tiny, name)
    s = CASES[case]()
    batch = c([s])
    ids, _ = row(batch, 0)
    images = c.images(s)
    ref = tiny(name)[1].apply_chat_template(
        processor_conv(case, images), tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert torch.equal(ids, ref["input_ids"][0])
    if images:
        assert torch.equal(batch["pixel_values"], ref["pixel_values"])
        if "image_grid_thw" in ref:
            assert torch.equal(batch["image_grid_thw"], ref["image_grid_thw"])
        if "mm_token_type_ids" in ref:
            assert torch.equal(batch["mm_token_type_ids"][0], ref["mm_token_type_ids"][0])
    else:
        assert "pixel_values" not in batch and "pixel_values" not in ref
    assert batch["image_sizes"] == [im.size for im in images]
    assert batch["skipped"] == [] and batch["sample_ids"] == [case]


# ---- 2. labels are exactly the assistant turns --------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_labels_are_the_assistant_turns(tiny, name):
    processor = tiny(name)[1]
    spec = family(name)
    samples = [f() for f in CASES.values()]
    batch = collator(tiny, name)(samples)
    never = torch.tensor([token_id(processor, t) for t in spec.never_supervised])
    assert token_id(processor, spec.image_token) in never.tolist()
    assert batch["sample_ids"] == list(CASES)
    for i, case in enumerate(CASES):
        ids, labels = row(batch, i)
        sup = labels != IGNORE
        assert torch.equal(labels[sup], ids[sup])  # a label is the token itself
        decoded = processor.tokenizer.decode(ids[sup])
        assert decoded == expected_supervised(name, ANSWERS[case])
        assert not sup[torch.isin(ids, never)].any()
        assert batch["n_supervised"][i] == int(sup.sum())
    # padding is never supervised
    assert (batch["labels"][batch["token_mask"] == 0] == IGNORE).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_image_inside_assistant_turn_is_not_supervised(tiny, name):
    """Vision tokens inside an assistant span (Qwen's vision_start/end too) get no label."""
    processor = tiny(name)[1]
    spec = family(name)
    s = sample(
        "answer-image",
        [("user", "Draw a red square."), ("assistant", "<image>\nA red square.")],
        [jpeg(64, 48)],
    )
    batch = collator(tiny, name)([s])
    ids, labels = row(batch, 0)
    sup = labels != IGNORE
    never = torch.tensor([token_id(processor, t) for t in spec.never_supervised])
    assert torch.isin(ids, never).sum() >= 1 and not sup[torch.isin(ids, never)].any()
    decoded = processor.tokenizer.decode(ids[sup])
    if name == "llava":  # the template's "<image>\n" leaves its space and newline labelled
        assert decoded.endswith("A red square.</s>") and decoded.strip() == "A red square.</s>"
    else:
        assert decoded == "A red square.<|im_end|>"


# ---- 3. bad samples -----------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("answer", [None, "", "   "])
def test_sample_without_assistant_text(tiny, name, answer):
    turns = [("user", "<image>\nWhat is shown?")]
    if answer is not None:
        turns.append(("assistant", answer))
    bad = sample("noanswer", turns, [jpeg(64, 48)])
    with pytest.raises(SampleError, match="noanswer"):
        collator(tiny, name)([single(), bad])
    batch = collator(tiny, name, on_error="skip")([single(), bad])
    assert batch["sample_ids"] == ["single"]
    assert [sid for sid, _ in batch["skipped"]] == ["noanswer"]
    assert batch["skipped"][0][1]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_placeholder_media_mismatch(tiny, name, n_images):
    bad = sample(
        "mismatch",
        [("user", "<image>\n<image>\nCompare."), ("assistant", "Same.")],
        [jpeg(32, 32)] * n_images,
    )
    with pytest.raises(SampleError) as err:
        collator(tiny, name)([bad])
    assert "mismatch" in str(err.value) and "mismatch.jsonl#L3" in str(err.value)
    batch = collator(tiny, name, on_error="skip")([bad, single()])
    assert batch["sample_ids"] == ["single"] and batch["skipped"][0][0] == "mismatch"


# ---- 4. length ----------------------------------------------------------------------------


def long_answer() -> dict:
    answer = " ".join(["The image shows a small red circle on a light background."] * 4)
    return sample(
        "long", [("user", "<image>\nDescribe the image."), ("assistant", answer)], [jpeg(112, 112)]
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_overlong_skip(tiny, name):
    full = collator(tiny, name)([long_answer()])
    n = int(full["token_mask"].sum())
    ok = collator(tiny, name, max_length=n)([long_answer()])
    assert ok["sample_ids"] == ["long"]
    batch = collator(tiny, name, max_length=n - 1)([long_answer(), text_only()])
    assert batch["sample_ids"] == ["text"]
    assert [sid for sid, _ in batch["skipped"]] == ["long"]
    assert "max_length" in batch["skipped"][0][1]


@pytest.mark.parametrize("name", FAMILIES)
def test_overlong_truncate_keeps_images(tiny, name):
    processor = tiny(name)[1]
    full = collator(tiny, name)([long_answer()])
    ids, labels = row(full, 0)
    n_img = image_token_count(name, processor, ids)
    img_pos = (ids == token_id(processor, family(name).image_token)).nonzero().flatten()
    first_sup = int((labels != IGNORE).nonzero()[0])
    assert n_img > 0 and first_sup > int(img_pos[-1])

    limit = len(ids) - 12
    assert limit > first_sup + 2
    cut = collator(tiny, name, max_length=limit, overlong="truncate_text")([long_answer()])
    assert cut["skipped"] == [] and cut["input_ids"].shape == (1, limit)
    cut_ids, cut_labels = row(cut, 0)
    assert torch.equal(cut_ids, ids[:limit]) and torch.equal(cut_labels, labels[:limit])
    assert image_token_count(name, processor, cut_ids) == n_img
    assert torch.equal(cut["pixel_values"], full["pixel_values"])
    assert cut["n_supervised"] == [int((cut_labels != IGNORE).sum())]
    assert 0 < cut["n_supervised"][0] < full["n_supervised"][0]
    if "mm_token_type_ids" in cut:
        assert torch.equal(cut["mm_token_type_ids"][0], full["mm_token_type_ids"][0][:limit])

    # a limit inside the image span: skipped, never cut inside the image
    inside = int(img_pos[len(img_pos) // 2])
    batch = collator(tiny, name, max_length=inside, overlong="truncate_text")([long_answer()])
    assert batch["sample_ids"] == [] and [s for s, _ in batch["skipped"]] == ["long"]
    assert "image" in batch["skipped"][0][1]


# ---- 5. pixel budget ----------------------------------------------------------------------


def check_fit(size, w0, h0, *, at_most=None, at_least=None):
    w, h = size
    assert abs(w / h - w0 / h0) <= 0.02 * w0 / h0  # aspect kept within rounding
    if at_most is not None:
        assert w * h <= at_most
        assert w * h >= at_most - (w + h + 1)  # as large as the budget allows
    if at_least is not None:
        assert abs(w * h - at_least) <= w + h + 1


@pytest.mark.parametrize("name", FAMILIES)
def test_pixel_budget(tiny, name):
    big, small = jpeg(400, 300), jpeg(20, 10)
    c = collator(
        tiny,
        name,
        min_pixels=56 * 56,
        max_pixels=112 * 112,
        dataset_pixels={"thumbs": {"max_pixels": 32 * 32}},
    )
    samples = [
        sample("big", [("user", "<image>\nWhat?"), ("assistant", "A square.")], [big]),
        sample("small", [("user", "<image>\nWhat?"), ("assistant", "A square.")], [small]),
        sample(
            "thumb",
            [("user", "<image>\nWhat?"), ("assistant", "A square.")],
            [big],
            dataset="thumbs",
        ),
        sample(
            "own",
            [("user", "<image>\nWhat?"), ("assistant", "A square.")],
            [big],
            dataset="thumbs",
            max_pixels=48 * 48,
        ),
    ]
    batch = c(samples)
    assert batch["skipped"] == [] and batch["sample_ids"] == ["big", "small", "thumb", "own"]
    sizes = batch["image_sizes"]
    assert len(sizes) == 4
    check_fit(sizes[0], 400, 300, at_most=112 * 112)
    check_fit(sizes[1], 20, 10, at_least=56 * 56)
    check_fit(sizes[2], 400, 300, at_most=32 * 32)  # the dataset's budget
    check_fit(sizes[3], 400, 300, at_most=48 * 48)  # the sample's own beats the dataset's
    assert sizes == [im.size for s in samples for im in c.images(s)]
    # images inside the budget are left alone
    plain = collator(tiny, name)([samples[0]])
    assert plain["image_sizes"] == [(400, 300)]


# ---- 6. packing ---------------------------------------------------------------------------


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, spans) -> list[float]:
    """Summed next-token cross-entropy over each ``(row, start, length)`` span."""
    ce = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE, reduction="none"
    )  # ce[:, j] scores labels[:, j + 1]
    return [float(ce[r, a : a + n - 1].sum()) for r, a, n in spans]


def spans_of(batch: dict) -> list[tuple[int, int, int]]:
    out = []
    for r, lens in enumerate(batch["seq_lens"]):
        at = 0
        for n in lens:
            out.append((r, at, n))
            at += n
    return out


def mrope_position_ids(model, batch: dict) -> torch.Tensor:
    """``(4, B, L)``: the text positions over the 3-D rope positions of each segment."""
    grids = batch.get("image_grid_thw")
    width = batch["input_ids"].shape[1]
    rows, k, g = [], 0, 0
    for r, lens in enumerate(batch["seq_lens"]):
        parts, at = [], 0
        for n in lens:
            m = batch["n_images"][k]
            pos, _ = model.model.get_rope_index(
                input_ids=batch["input_ids"][r, at : at + n][None],
                mm_token_type_ids=batch["mm_token_type_ids"][r, at : at + n][None],
                image_grid_thw=grids[g : g + m] if m else None,
                attention_mask=None,
            )
            parts.append(pos[:, 0])
            k, g, at = k + 1, g + m, at + n
        if at < width:
            parts.append(torch.arange(width - at).expand(3, -1))
        rows.append(torch.cat(parts, dim=1))
    return torch.cat([batch["position_ids"][None], torch.stack(rows, dim=1)], dim=0)


def forward(name: str, model, batch: dict, position_ids=None) -> torch.Tensor:
    kw = {
        k: batch[k]
        for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids")
        if k in batch and not (name == "llava" and k == "mm_token_type_ids")
    }
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=position_ids,
            use_cache=False,
            **kw,
        )
    return out.logits


@pytest.mark.parametrize("name", FAMILIES)
def test_packing_matches_unpacked_loss(tiny, name):
    model = tiny(name)[0]
    samples = [single(), multi(), text_only()]
    flat = collator(tiny, name)(samples)
    packed = collator(tiny, name, pack=True)(samples)

    lens = [int(n) for n in flat["token_mask"].sum(1)]
    assert packed["input_ids"].shape == (1, sum(lens))
    assert packed["seq_lens"] == [lens] and packed["sample_ids"] == flat["sample_ids"]
    assert packed["attention_mask"] is None
    assert packed["n_supervised"] == flat["n_supervised"]
    assert torch.equal(packed["input_ids"][0], torch.cat([row(flat, i)[0] for i in range(3)]))
    assert torch.equal(packed["labels"][0], torch.cat([row(flat, i)[1] for i in range(3)]))
    assert torch.equal(packed["pixel_values"], flat["pixel_values"])
    starts = [0, lens[0], lens[0] + lens[1]]
    pos = packed["position_ids"][0]
    assert torch.equal(pos, torch.cat([torch.arange(n) for n in lens]))
    assert all(int(pos[a]) == 0 for a in starts)
    assert all(int(packed["labels"][0, a]) == IGNORE for a in starts)

    ref = per_sample_loss(forward(name, model, flat), flat["labels"], spans_of(flat))
    if name == "llava":
        positions = packed["position_ids"]
        no_restart = torch.arange(sum(lens))[None]
    else:
        positions = mrope_position_ids(model, packed)
        no_restart = positions.clone()
        no_restart[0] = torch.arange(sum(lens))  # no packed-sequence boundaries
    got = per_sample_loss(
        forward(name, model, packed, positions), packed["labels"], spans_of(packed)
    )
    assert all(x > 0 for x in ref)
    # in float32 the two agree to ~1e-7; 1e-5 keeps the control below meaningful
    assert got == pytest.approx(ref, rel=1e-5)

    # control: without restarting positions the later samples attend to the earlier ones,
    # which moves their loss by a few 1e-4 relative in this tiny random model
    leaky = per_sample_loss(
        forward(name, model, packed, no_restart), packed["labels"], spans_of(packed)
    )
    assert leaky[0] == pytest.approx(ref[0], rel=1e-4)
    assert all(abs(a - b) > 1e-4 * b for a, b in zip(leaky[1:], ref[1:], strict=True))


# ---- 7. DPO -------------------------------------------------------------------------------


def dpo_samples() -> list[dict]:
    one = sample(
        "p1",
        [("user", "<image>\nWhat is shown?")],
        [jpeg(64, 48)],
        chosen="A red square.",
        rejected="A blue circle.",
    )
    two = sample(
        "p2",
        [
            ("user", "<image>\nWhat shape is drawn?"),
            ("assistant", "A red square."),
            ("user", "<image>\nAnd in this image?"),
        ],
        [jpeg(64, 48), jpeg(120, 90, (20, 40, 210))],
        chosen="A blue circle.",
        rejected="A green star.",
    )
    return [one, two]


@pytest.mark.parametrize("name", FAMILIES)
def test_dpo_pairs(tiny, name):
    model, processor = tiny(name)
    batch = collator(tiny, name, objective="dpo")(dpo_samples())
    assert batch["n_pairs"] == 2 and batch["input_ids"].shape[0] == 4
    assert batch["sample_ids"] == ["p1", "p2", "p1", "p2"]
    assert batch["n_images"] == [1, 2, 1, 2]

    # the same images twice: chosen half == rejected half
    per_image = tokens_per_image(name, model, batch)
    assert len(per_image) == 6
    pv = batch["pixel_values"]
    if name == "llava":
        assert pv.shape[0] == 6
        assert torch.equal(pv[:3], pv[3:])
    else:
        grids = batch["image_grid_thw"]
        assert torch.equal(grids[:3], grids[3:])
        half = int(grids[:3].prod(-1).sum())
        assert pv.shape[0] == 2 * half
        assert torch.equal(pv[:half], pv[half:])
    # every row holds exactly its images' tokens
    k = 0
    for i, m in enumerate(batch["n_images"]):
        ids, _ = row(batch, i)
        assert image_token_count(name, processor, ids) == sum(per_image[k : k + m])
        k += m

    answers = ["A red square.", "A blue circle.", "A blue circle.", "A green star."]
    for i, answer in enumerate(answers):
        ids, labels = row(batch, i)
        sup = labels != IGNORE
        assert processor.tokenizer.decode(ids[sup]) == expected_supervised(name, [answer])
        assert batch["n_supervised"][i] == int(sup.sum())
        # chosen and rejected share the prompt tokens up to the answer
        other, other_labels = row(batch, (i + 2) % 4)
        start = int(sup.nonzero()[0])
        assert int((other_labels != IGNORE).nonzero()[0]) == start
        assert torch.equal(ids[:start], other[:start])


@pytest.mark.parametrize("name", FAMILIES)
def test_dpo_needs_both_answers(tiny, name):
    bad = dpo_samples()[0] | {"sample_id": "norej", "rejected": None}
    with pytest.raises(SampleError, match="norej"):
        collator(tiny, name, objective="dpo")([bad])
    batch = collator(tiny, name, objective="dpo", on_error="skip")([bad, dpo_samples()[1]])
    assert batch["n_pairs"] == 1 and batch["sample_ids"] == ["p2", "p2"]
    assert [s for s, _ in batch["skipped"]] == ["norej"]


# ---- 8. first-fit packing -----------------------------------------------------------------


def test_pack_first_fit():
    assert pack_first_fit([60, 50, 40, 30], 100) == [[0, 2], [1, 3]]
    assert pack_first_fit([], 10) == []
    rng = random.Random(0)
    for _ in range(50):
        cap = rng.randint(10, 200)
        lengths = [rng.randint(1, cap) for _ in range(rng.randint(1, 40))]
        bins = pack_first_fit(lengths, cap)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= cap for b in bins)
        assert all(b == sorted(b) for b in bins)
        # first fit: no two bins could have been merged into one
        loads = sorted(sum(lengths[i] for i in b) for b in bins)
        assert len(loads) < 2 or loads[0] + loads[1] > cap
