"""core.modules.clip_module: collation, metrics, schedule, LiT locking and a real overfit."""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import lightning as L
import pytest
import torch

from core.modules.clip_collate import ClipCollator, pick_text
from core.modules.clip_metrics import clip_loss, retrieval_recall, zero_shot_accuracy
from core.modules.clip_module import ClipModule
from core.modules.optim import decay_groups, warmup_cosine
from lake.demo_data import COLOURS
from tests.conftest import conf_kwargs


def shape_png(shape: str, colour: tuple[int, int, int], size: int = 64) -> bytes:
    """A real PNG: one coloured circle or square on grey."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (128, 128, 128))
    box = (size // 5, size // 5, size - size // 5, size - size // 5)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.rectangle(box, fill=colour)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def shape_samples() -> list[dict]:
    """16 lake-style samples: 2 shapes x 8 colours, each with a distinct caption."""
    return [
        {
            "sample_id": f"{shape}-{name}",
            "images": [shape_png(shape, rgb)],
            "caption": f"a {name} {shape}",
            "label": shape,
            "messages": None,
            "dataset": "shapes",
        }
        for shape in ("circle", "square")
        for name, rgb in COLOURS.items()
    ]


def trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    return L.Trainer(**(defaults | kwargs))


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine two
    threads per process made a step 10x slower (OpenMP waits on a descheduled core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clip(**values: object) -> ClipModule:
    """A tiny CLIP from ``conf/model/clip_tiny.yaml`` with ``values`` replacing some keys."""
    return ClipModule(**conf_kwargs("train", "model", "model=clip_tiny", **values))


@pytest.fixture(scope="module")
def module() -> ClipModule:
    L.seed_everything(0)
    return clip(warmup_steps=0)


# ---- collation ------------------------------------------------------------------------


def test_pick_text_fallbacks() -> None:
    assert pick_text({"caption": " a red star ", "label": "star"}) == "a red star"
    messages = [
        {"role": "user", "content": "<image>\nWhat is it?"},
        {"role": "assistant", "content": [{"type": "text", "text": "A blue circle."}]},
        {"role": "assistant", "content": "ignored: not the first answer"},
    ]
    assert pick_text({"caption": "", "messages": messages, "label": "x"}) == "A blue circle."
    assert pick_text({"caption": None, "messages": [], "label": "cat"}) == "a photo of a cat"
    assert pick_text({"label": "cat"}, "an image of a {}.") == "an image of a cat."
    assert pick_text({"caption": None, "messages": None, "label": None}) is None


def test_collator_shapes_drops_and_pickles(module: ClipModule) -> None:
    samples = shape_samples()[:3]
    samples.append({**samples[0], "sample_id": "no-image", "images": []})
    samples.append({**samples[0], "sample_id": "no-text", "caption": None, "label": None})
    samples.append({**samples[0], "sample_id": "corrupt", "images": [b"not an image"]})
    samples.append(
        {
            "sample_id": "messages-only",
            "images": [shape_png("square", (1, 2, 3), size=96)],
            "caption": None,
            "label": "square",
            "messages": [{"role": "assistant", "content": "a dark square"}],
            "dataset": "llava",
        }
    )
    collator = module.make_collator(train=False)
    collator = pickle.loads(pickle.dumps(collator))  # it runs in spawned workers
    assert isinstance(collator, ClipCollator)
    batch = collator(samples)
    assert batch["images"].shape == (4, 3, 64, 64) and batch["images"].dtype == torch.float32
    assert batch["texts"].shape == (4, 32) and batch["texts"].dtype == torch.long
    assert batch["sample_ids"] == ["circle-red", "circle-green", "circle-blue", "messages-only"]
    assert batch["labels"] == ["circle", "circle", "circle", "square"]
    assert torch.equal(batch["texts"][3], module.tokenizer(["a dark square"])[0])
    assert collator.dropped == 3
    empty = collator(samples[3:5])
    assert empty["images"].shape[0] == 0 and empty["sample_ids"] == []


# ---- metrics and schedule on hand-built values ------------------------------------------


def test_retrieval_recall_exact_values() -> None:
    image = torch.eye(3)
    text = torch.tensor([[1.0, 0.2, 0.1], [0.1, 0.3, 1.0], [0.2, 1.0, 0.5]])
    # i2t: image 0 ranks text 0 first; images 1 and 2 rank their text second. t2i alike.
    got = retrieval_recall(image, text, ks=(1, 2))
    assert got == pytest.approx({"i2t_r1": 1 / 3, "i2t_r2": 1.0, "t2i_r1": 1 / 3, "t2i_r2": 1.0})
    # texts 1 and 2 are the same caption: the other copy ranking first is a hit
    same = retrieval_recall(image, text, ks=(1,), groups=torch.tensor([0, 1, 1]))
    assert same == {"i2t_r1": 1.0, "t2i_r1": 1.0}
    chunked = retrieval_recall(image, text, ks=(1, 2), chunk=2)
    assert chunked == got


def test_zero_shot_and_loss_exact_values() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    classes = torch.eye(2)
    assert zero_shot_accuracy(image, classes, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert math.isnan(zero_shot_accuracy(image[:0], classes, torch.tensor([])))
    # orthonormal pairs: each row is softmax over one positive (s) and n-1 zeros
    n, s = 4, 2.0
    loss = clip_loss(torch.eye(n), torch.eye(n), torch.tensor(s))
    assert loss.item() == pytest.approx(math.log(1 + (n - 1) * math.exp(-s)))


def test_loss_can_leave_out_the_noisiest_pairs() -> None:
    # pair 0's caption is another image's (a mismatched pair): its loss is the highest
    image = torch.eye(4)
    text = torch.eye(4)[[1, 1, 2, 3]]
    scale = torch.tensor(3.0)
    logits = scale * image @ text.T
    target = torch.arange(4)
    per_pair = (
        torch.nn.functional.cross_entropy(logits, target, reduction="none")
        + torch.nn.functional.cross_entropy(logits.T, target, reduction="none")
    ) / 2
    assert int(per_pair.argmax()) == 0
    full = clip_loss(image, text, scale)
    assert full.item() == pytest.approx(per_pair.mean().item())
    trimmed = clip_loss(image, text, scale, drop_frac=0.25)  # 1 of 4 pairs left out
    assert trimmed.item() == pytest.approx(per_pair[1:].mean().item())
    # the left-out pair gets no gradient as a positive, but stays a negative for the others
    image.requires_grad_(True)
    clip_loss(image, text, scale, drop_frac=0.25).backward()
    assert image.grad is not None and image.grad[0].abs().sum() > 0


def test_warmup_cosine_values() -> None:
    assert warmup_cosine(0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(4, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine(9, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110) == pytest.approx(0.0)
    assert warmup_cosine(500, 10, 110) == pytest.approx(0.0)
    assert warmup_cosine(60, 10, 110, min_ratio=0.1) == pytest.approx(0.55)
    assert warmup_cosine(0, 0, 100) == pytest.approx(1.0)


def test_module_scheduler_and_decay_groups() -> None:
    module = clip(lr=1.0, warmup_steps=10, max_steps=110)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    seen = {}
    for step in range(111):
        seen[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(0.1) and seen[9] == pytest.approx(1.0)
    assert seen[60] == pytest.approx(0.5) and seen[110] == pytest.approx(0.0, abs=1e-12)

    names = {id(p): n for n, p in module.model.named_parameters()}
    decayed, plain = decay_groups(module.model, 0.1)
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    plain_names = {names[id(p)] for p in plain["params"]}
    assert {
        "logit_scale",
        "positional_embedding",
        "ln_final.weight",
        "ln_final.bias",
    } <= plain_names
    assert all(p.ndim >= 2 for p in decayed["params"])
    assert "token_embedding.weight" in {names[id(p)] for p in decayed["params"]}


# ---- training ---------------------------------------------------------------------------


def test_lock_image_trains_text_only(tmp_path: Path, one_thread: None) -> None:
    L.seed_everything(0)
    module = clip(lr=1e-2, lock_image=True, warmup_steps=0)
    visual = {n: p.detach().clone() for n, p in module.model.visual.named_parameters()}
    text = {n: p.detach().clone() for n, p in module.model.transformer.named_parameters()}
    assert not any(p.requires_grad for p in module.model.visual.parameters())
    loader = torch.utils.data.DataLoader(
        shape_samples(), batch_size=8, collate_fn=module.make_collator(train=True)
    )
    trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(module, loader)
    for name, param in module.model.visual.named_parameters():
        assert param.grad is None, name
        assert torch.equal(param, visual[name]), name
    grads = [p.grad for p in module.model.transformer.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    changed = [
        n for n, p in module.model.transformer.named_parameters() if not torch.equal(p, text[n])
    ]
    assert changed


def test_short_overfit_learns_and_exports(tmp_path: Path, one_thread: None) -> None:
    """60 steps on 16 real images: loss falls, recall@1 rises from chance (1/16)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from core.models.clip import create_clip, load_from_run

    L.seed_everything(0)
    module = clip(lr=1e-3, warmup_steps=5, weight_decay=0.0)
    samples = shape_samples()
    train = torch.utils.data.DataLoader(
        samples, batch_size=16, shuffle=True, collate_fn=module.make_collator(train=True)
    )
    val = torch.utils.data.DataLoader(
        samples, batch_size=16, collate_fn=module.make_collator(train=False)
    )
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    fit = trainer(
        tmp_path,
        max_steps=60,
        num_sanity_val_steps=-1,  # full validation before the first step
        check_val_every_n_epoch=1000,
        callbacks=[Record(), ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        enable_checkpointing=True,
    )
    fit.fit(module, train, val)
    before = module.sanity_metrics
    assert before["val/i2t_r1"] <= 0.25  # untrained: near chance
    after = {k: float(v) for k, v in fit.validate(module, val, verbose=False)[0].items()}

    assert len(losses) == 60
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert after["val/loss"] < 0.5 * before["val/loss"]
    assert after["val/i2t_r1"] >= 0.5 and after["val/t2i_r1"] >= 0.5
    assert after["val/i2t_r1"] > before["val/i2t_r1"] + 0.25
    assert 0 <= after["val/zeroshot_acc"] <= 1 and after["val/logit_scale"] <= 100
    assert set(after) == {
        "val/loss",
        "val/i2t_r1",
        "val/i2t_r5",
        "val/t2i_r1",
        "val/t2i_r5",
        "val/zeroshot_acc",
        "val/logit_scale",
    }

    # test mirrors validation; exports reload to the same model
    tested = fit.test(module, val, verbose=False)[0]
    assert tested["test/i2t_r1"] == pytest.approx(after["val/i2t_r1"])
    module.export(tmp_path / "run")
    images = module.make_collator(train=False)(samples[:4])
    module.eval()
    with torch.no_grad():
        want = module(images["images"], images["texts"])
        for model in (
            load_from_run(tmp_path / "run")[0],
            create_clip("tiny-clip", str(tmp_path / "ckpt" / "last.ckpt"))[0],
        ):
            model.eval()
            got = model(images["images"], images["texts"])
            assert torch.allclose(got["image_features"], want["image_features"], atol=1e-6)
            assert torch.allclose(got["text_features"], want["text_features"], atol=1e-6)


def test_configs_compose_and_instantiate() -> None:
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(version_base="1.3", config_module="conf"):
        tiny = compose(config_name="train", overrides=["+experiment=clip_tiny"])
        finetune = compose(config_name="train", overrides=["+experiment=clip_finetune"])
    assert finetune.model.arch == "ViT-B-32" and finetune.model.lr <= 1e-5
    assert finetune.trainer.num_sanity_val_steps == -1 and finetune.model.warmup_steps > 0
    assert tiny.trainer.num_sanity_val_steps == -1
    module = instantiate(tiny.model)
    assert isinstance(module, ClipModule) and module.hparams.arch == "tiny-clip-p8"
    assert module.hparams.recall_ks == [1, 5] and module.hparams.warmup_steps == 20
