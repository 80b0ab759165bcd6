"""Locked-text tuning: a tiny image tower with the real all-MiniLM-L6-v2 as a frozen open_clip
text tower (``conf/model/clip_configs/tiny-clip-minilm.json``, ``clip_minilm_locked``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from core.models.clip import CONFIG_FILE, create_clip, load_from_run, save_open_clip
from core.models.packaged import MINILM
from core.modules.clip_module import ClipModule
from tests.conftest import conf_kwargs
from tests.core.test_clip_module import shape_samples, trainer

ARCH = "tiny-clip-minilm"
EXPERIMENT = "+experiment=clip_minilm_locked"
FAST = ("trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")
TEXTS = ["a red circle", "a crimson disc", "three small blue squares on a striped background"]


def mean_pooled(folder: Path, texts: list[str]) -> torch.Tensor:
    """all-MiniLM-L6-v2's sentence embedding as its model card defines it (mean pooling +
    L2 normalisation), computed with transformers alone."""
    from transformers import AutoModel, AutoTokenizer

    tok, enc = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = enc(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@pytest.fixture
def one_thread():
    """One intra-op thread: two made steps slower on the loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_text_tower_is_minilm_mean_pooled_and_reloads(
    minilm_dir: Path, tmp_path: Path, one_thread: None
) -> None:
    from open_clip.hf_model import HFTextEncoder
    from open_clip.tokenizer import HFTokenizer

    model, _, _, tokenizer = create_clip(ARCH)
    assert isinstance(model.text, HFTextEncoder)
    assert isinstance(model.text.proj, torch.nn.Identity)  # embed_dim 384: no projection
    assert isinstance(tokenizer, HFTokenizer)  # the model's own (MiniLM's WordPiece)
    model.eval()
    with torch.no_grad():
        got = model.encode_text(tokenizer(TEXTS), normalize=True)
    assert got.shape == (3, 384)
    torch.testing.assert_close(got, mean_pooled(minilm_dir, TEXTS), atol=1e-5, rtol=0)

    # the saved config keeps the symbolic name (a run reloads on another machine)
    out = save_open_clip(model, None, tmp_path / "export", tokenizer=tokenizer)
    saved = (out / CONFIG_FILE).read_text()
    assert json.loads(saved)["model_cfg"]["text_cfg"]["hf_model_name"] == MINILM
    assert str(minilm_dir) not in saved
    again, _, _, tok2 = create_clip(f"local-dir:{out}")
    assert torch.equal(tok2(TEXTS), tokenizer(TEXTS))
    state, state2 = model.state_dict(), again.state_dict()
    assert state.keys() == state2.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)


def test_locked_text_stays_frozen_and_cached_while_the_image_tower_trains(
    minilm_dir: Path, tmp_path: Path, one_thread: None
) -> None:
    L.seed_everything(0)
    module = ClipModule(**conf_kwargs("train", "model", EXPERIMENT, warmup_steps=0, lr=1e-2))
    assert module.text_frozen
    assert not any(p.requires_grad for p in module.model.text.parameters())
    text = {n: p.detach().clone() for n, p in module.model.text.named_parameters()}
    visual = {n: p.detach().clone() for n, p in module.model.visual.named_parameters()}
    samples = shape_samples()
    loader = torch.utils.data.DataLoader(
        samples, batch_size=8, collate_fn=module.make_collator(train=True)
    )
    trainer(tmp_path, max_steps=4, limit_val_batches=0).fit(module, loader)
    assert not module.model.text.training  # eval mode: no dropout in the fixed embedding
    for name, param in module.model.text.named_parameters():
        assert param.grad is None, name
        assert torch.equal(param, text[name]), name
    changed = [
        n for n, p in module.model.visual.named_parameters() if not torch.equal(p, visual[n])
    ]
    assert changed
    # one cache entry per distinct caption, equal to the tower's own output
    assert len(module._text_cache) == len({s["caption"] for s in samples})
    tokens = module.tokenizer([s["caption"] for s in samples[:5]])
    module.eval()
    with torch.no_grad():
        direct = module.model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(module.cached_text_features(tokens), direct)
    torch.testing.assert_close(direct, mean_pooled(minilm_dir, [s["caption"] for s in samples[:5]]),
                               atol=1e-5, rtol=0)  # fmt: skip


def test_experiment_trains_then_enrich_and_query_text_use_it(
    compose, lake_dir: Path, minilm_dir: Path, tmp_path: Path
) -> None:
    from core.train import train
    from lake.enrich import enrich
    from lake.query import lake_model, run_query
    from lake.store import Lake
    from plugins.clip_embed import ClipImageEmbedder, ClipTextEmbedder, clear_cache

    # data.datasets=null: the experiment names the demo's datasets, this lake has others
    cfg = compose(EXPERIMENT, "+debug=limit_batches", "data.batch_size=8", "data.datasets=null",
                  "run_id=minilm", *FAST)  # fmt: skip
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["step"] > 0
    run_dir = Path(cfg.runs_dir) / "minilm"
    assert MINILM in (run_dir / "open_clip" / CONFIG_FILE).read_text()
    model, _, _, _ = load_from_run(run_dir)
    reference = create_clip(ARCH)[0]  # the packaged MiniLM weights, untouched
    for name, value in reference.text.state_dict().items():
        assert torch.equal(model.text.state_dict()[name], value), name

    shutil.copytree(lake_dir, tmp_path / "lake")
    lake = Lake(tmp_path / "lake")
    clear_cache()
    for cls in (ClipImageEmbedder, ClipTextEmbedder):
        enrich(cls(run="minilm", runs_dir=str(cfg.runs_dir), device="cpu"), lake, progress=False)
    assert lake_model(lake).startswith("open_clip:") and ":run:minilm:" in lake_model(lake)
    vectors = lake.dataset("media").to_table(columns=["clip_image"]).column("clip_image")
    assert vectors.type.list_size == 384
    query = OmegaConf.create(
        {
            "lake": {"uri": str(tmp_path / "lake")}, "text": "a photo of a cat", "image": None,
            "k": 3, "where": None, "dataset": None, "plugin": "clip_image",
            "model": {"arch": None, "pretrained": None, "run": None, "device": "cpu",
                      "runs_dir": str(cfg.runs_dir)},
            "kind": None, "nprobes": 20, "refine_factor": 50, "overfetch": 4, "max_fetch": 2560,
            "filtered_refine": 20,
        }
    )  # fmt: skip
    hits = run_query(query)
    assert len({h.media_id for h in hits}) == 3
    assert all(-1.0 <= h.score <= 1.0 for h in hits)
