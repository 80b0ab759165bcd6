"""Apotheon's data module, curriculum and LightningModule on a real lake of every kind
(``media_lake``: captioned images, a video's frames and clips with its audio, tones)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from core.data.apotheon_data import ApotheonDataModule, parse_curriculum
from core.models.apotheon import ApotheonModel
from core.modules.apotheon_collate import select_rows
from core.modules.apotheon_module import ApotheonModule, word_error_rate
from lake.errors import ConfigError
from tests.conftest import conf_kwargs

CONF = Path(__file__).parents[2] / "conf"
STAGES = [
    {"name": "pictures", "start_epoch": 0, "kinds": ["image", "frame"]},
    {"name": "sound", "start_epoch": 1, "kinds": ["image", "frame", "audio"]},
    {"name": "video", "start_epoch": 2, "kinds": ["image", "frame", "audio", "clip"]},
]
TINY: dict[str, Any] = {
    "vision": {"image_size": 56, "hidden": 32, "layers": 1, "heads": 2},
    "audio": {"chunk_s": 2.0, "hidden": 32, "layers": 1, "heads": 2, "pool": 4},
    "language": {"hidden": 32, "intermediate": 64, "layers": 1, "heads": 2, "kv_heads": 1},
    "fusion": {"width": 32, "layers": 1, "heads": 2, "latents": 4, "max_frames": 4},
    "contrastive_dim": 16,
}


def kinds_of(lake: Path) -> dict[str, str]:
    """sample_id -> its kind, read from the lake's tags."""
    import lance

    rows = lance.dataset(str(lake / "samples.lance")).to_table(columns=["sample_id", "tags"])
    out = {}
    for r in rows.to_pylist():
        tags = [t for t in r["tags"] or [] if t.startswith("kind:")]
        out[r["sample_id"]] = tags[0].removeprefix("kind:") if tags else "image"
    return out


def apotheon(**kw: Any) -> ApotheonModule:
    """An ApotheonModule from ``conf/model/apotheon_tiny.yaml`` at the tests' sizes, with
    ``kw`` replacing some keys."""
    return ApotheonModule(
        **conf_kwargs("train", "model", "model=apotheon_tiny", **{"config": TINY} | kw)
    )


def data_module(lake: Path, **kw: Any) -> ApotheonDataModule:
    args = {"lake_uri": str(lake), "batch_size": 6, "val_fraction": 0.25, "test_fraction": 0.0,
            "curriculum": STAGES, **kw}  # fmt: skip
    return ApotheonDataModule(**args)


def batch_of(module: ApotheonModule, dm: ApotheonDataModule, split: str, n: int = 0) -> dict:
    ds = dm.dataset(split)
    return module.make_collator()(ds.__getitems__(list(range(n or len(ds)))))


# ---- data ---------------------------------------------------------------------------------


def test_stages_select_their_kinds(media_lake: Path) -> None:
    dm = data_module(media_lake)
    dm.setup()
    kinds = kinds_of(media_lake)
    seen = {}
    for st in dm.stages:
        ds = dm._stage_sets[st.name]
        ids = [it["sample_id"] for it in ds.__getitems__(list(range(len(ds))))]
        seen[st.name] = {kinds[i] for i in ids}
    assert seen == {"pictures": {"image", "frame"}, "sound": {"image", "frame", "audio"},
                    "video": {"image", "frame", "audio", "clip"}}  # fmt: skip
    sizes = dm.stage_sizes()
    assert sizes["pictures"] < sizes["sound"] < sizes["video"]
    # val holds every kind the curriculum names, whatever the stage
    val = {
        kinds[it["sample_id"]] for it in dm.dataset("val").__getitems__(range(dm.sizes()["val"]))
    }
    assert val <= {"image", "frame", "audio", "clip"} and len(val) >= 2


def test_clip_items_carry_their_videos_audio_cut_to_the_scene(media_lake: Path) -> None:
    dm = data_module(media_lake, val_fraction=0.0)
    dm.setup()
    ds = dm._stage_sets["video"]
    items = ds.__getitems__(list(range(len(ds))))
    clips = [it for it in items if "kind:clip" in (it["tags"] or [])]
    audio = [it for it in items if "kind:audio" in (it["tags"] or [])]
    frames = [it for it in items if "kind:frame" in (it["tags"] or [])]
    assert len(clips) == 3 and len(audio) == 6 and len(frames) == 12
    for it in clips:
        assert it["audio"] is not None and len(it["images"]) >= 1
        start, end = it["audio_range"]
        assert end - start == pytest.approx(it["t_end"] - it["t_start"])
        assert it["transcript"] in ("a low tone", "a middle tone", "a high tone")
    # an audio file's transcript comes from its media row (enrich=transcribe writes it there)
    assert all(it["images"] == [] and it["audio"] and it["transcript"] for it in audio)
    assert all(it["audio"] is None for it in frames)
    module = apotheon()
    batch = module.make_collator()(clips + audio[:2])
    assert batch["audio_features"].shape[0] == 5
    assert batch["audio_index"].tolist() == [0, 1, 2, 3, 4]
    assert batch["has_transcript"].all() and batch["has_caption"][:3].all()
    assert not batch["has_caption"][3:].any()
    # the clip's frames keep their order as temporal positions
    rows = batch["frame_index"][batch["frame_index"][:, 0] == 0][:, 1]
    assert rows.tolist() == list(range(len(rows)))
    # a sub-batch (evaluation generates on chosen rows) keeps each row's own media
    sub = select_rows(batch, [3, 0])
    assert sub["sample_ids"] == [batch["sample_ids"][3], batch["sample_ids"][0]]
    assert sub["audio_index"].tolist() == [1, 0]  # the clip's audio now belongs to row 1
    assert torch.equal(sub["audio_features"][0], batch["audio_features"][0])
    assert set(sub["frame_index"][:, 0].tolist()) == {1}
    assert len(sub["pixel_values"]) == len(rows)


def test_curriculum_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="kinds must be among"):
        parse_curriculum([{"name": "x", "start_epoch": 0, "kinds": ["smell"]}])
    with pytest.raises(ConfigError, match="start at epoch 0"):
        parse_curriculum([{"name": "x", "start_epoch": 1, "kinds": ["image"]}])
    with pytest.raises(ConfigError, match="same epoch"):
        parse_curriculum(
            [{"start_epoch": 0, "kinds": ["image"]}, {"start_epoch": 0, "kinds": ["audio"]}]
        )
    stages = parse_curriculum(
        [{"start_epoch": 5, "kinds": ["clip"]}, {"start_epoch": 0, "kinds": ["image"]}]
    )
    assert [s.start_epoch for s in stages] == [0, 5]


def test_curriculum_needs_loaders_reloaded_every_epoch(media_lake: Path) -> None:
    dm = data_module(media_lake)
    dm.trainer = L.Trainer(reload_dataloaders_every_n_epochs=0, logger=False, accelerator="cpu")
    with pytest.raises(ConfigError, match="reload_dataloaders_every_n_epochs=1"):
        dm.train_dataloader()


# ---- the module ---------------------------------------------------------------------------


def test_frozen_towers_lora_and_per_role_learning_rates(media_lake: Path) -> None:
    module = apotheon(
        freeze={"vision": True, "audio": True, "language_model": True},
        peft={"method": "lora", "r": 4, "alpha": 8},
        lr=1e-3,
        lrs={"fusion": 5e-3, "projector": 2e-3},
        max_steps=10,
        warmup_steps=0,  # the base rates at step 0
    )
    rows = {r["module"]: r for r in _table(module)}
    assert rows["vision"]["trainable"] == rows["audio"]["trainable"] == 0
    assert rows["language_model"]["trainable"] == 0 and rows["lora"]["trainable"] > 0
    assert rows["fusion"]["trainable"] == rows["fusion"]["params"]
    lora = [n for n, _ in module.model.named_parameters() if "lora_" in n]
    assert lora and all(n.startswith("lm.") for n in lora)
    module.trainer = L.Trainer(max_steps=10, logger=False, accelerator="cpu")
    opt = module.configure_optimizers()["optimizer"]
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["fusion"] == 5e-3 and lrs["projector"] == 2e-3
    assert lrs["language_model"] == 1e-3  # LoRA factors take the language model's rate
    assert not any(name.startswith(("vision", "audio")) for name in lrs)
    # frozen towers run under no_grad: nothing of theirs is kept for backward
    dm = data_module(media_lake)
    dm.setup()
    batch = batch_of(module, dm, "train", 6)
    out = module.model.vision(pixel_values=batch["pixel_values"])
    assert not out.last_hidden_state.requires_grad
    loss = module(batch).loss
    loss.backward()
    assert all(p.grad is None for p in module.model.vision.parameters())
    assert all(p.grad is not None for n, p in module.model.named_parameters() if "lora_B" in n)


def test_lora_export_merges_and_reloads_to_the_same_outputs(
    media_lake: Path, tmp_path: Path
) -> None:
    dm = data_module(media_lake)
    dm.setup()
    module = apotheon(peft={"method": "lora", "r": 4, "alpha": 8}, seed=2)
    batch = batch_of(module, dm, "train", 8)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # LoRA's B starts at zero: train it off zero
        opt.zero_grad()
        module(batch).loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        before = module(batch)
    out = module.export(tmp_path)
    loaded = ApotheonModel.from_pretrained(out).eval()
    assert not any("lora_" in n for n, _ in loaded.named_parameters())
    with torch.no_grad():
        after = loaded(batch)
    assert torch.allclose(before.caption_logits, after.caption_logits, atol=1e-5)
    assert torch.allclose(before.loss, after.loss, atol=1e-5)


def _table(module: ApotheonModule) -> list[dict[str, Any]]:
    from core.models.vlm_load import parameter_table

    return parameter_table(module.model, module.roles, module.roles.roles)


def test_slim_checkpoint_round_trip_gives_identical_outputs(media_lake: Path) -> None:
    dm = data_module(media_lake)
    dm.setup()
    kw = {"config": TINY, "freeze": {"vision": True, "audio": True}, "seed": 3}
    module = apotheon(**kw)
    batch = batch_of(module, dm, "train", 8)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    module(batch).loss.backward()
    opt.step()
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert ckpt["lakeloom_trainable_only"]
    assert not any(k.startswith(("model.vision.", "model.audio.")) for k in ckpt["state_dict"])
    fresh = apotheon(**kw)
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"], strict=False)
    module.eval(), fresh.eval()
    with torch.no_grad():
        a, b = module(batch), fresh(batch)
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(a.caption_logits, b.caption_logits)
    other = apotheon(seed=3)  # nothing frozen: the slim one lacks tensors
    with pytest.raises(ConfigError, match="lacks"):
        other.on_load_checkpoint(ckpt)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(media_lake: Path) -> None:
    dm = data_module(media_lake)
    dm.setup()
    plain = apotheon(seed=1)
    ckpt = apotheon(seed=1, grad_checkpointing=True)
    assert ckpt.model.fusion.gradient_checkpointing and ckpt.model.lm.is_activation_checkpointing
    batch = batch_of(plain, dm, "train", 8)
    la, lb = plain(batch).loss, ckpt(batch).loss
    la.backward(), lb.backward()
    assert torch.allclose(la, lb, atol=1e-6)
    ga = dict(plain.model.named_parameters())
    for name, p in ckpt.model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, ga[name].grad, atol=1e-5), name


def test_word_error_rate() -> None:
    assert word_error_rate("A low tone.", "a low tone") == 0.0
    assert word_error_rate("a high tone", "a low tone") == pytest.approx(1 / 2)
    assert word_error_rate("", "a low tone") == 1.0


# ---- experiments --------------------------------------------------------------------------


class KindRecorder(L.Callback):
    """Append each training batch's epoch, step, sample ids and loss to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step,
               "ids": batch["sample_ids"], "loss": float(outputs["loss"])}  # fmt: skip
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def test_apotheon_tiny_trains_through_the_curriculum(
    compose, media_lake: Path, tmp_path: Path
) -> None:
    """The tiny experiment on every kind: the stage switches at its epochs (events log),
    each epoch sees only its stage's kinds, every head's loss is logged, evaluation
    scores captions, transcripts and retrieval, and the export loads."""
    from core.run import read_events
    from core.train import train

    record = tmp_path / "batches.jsonl"
    stages = json.dumps(STAGES).replace('"', "")
    cfg = compose(
        "+experiment=apotheon_tiny",
        "data.datasets=null", "data.batch_size=8", "data.val_fraction=0.25",
        "data.test_fraction=0.0", f"data.curriculum={stages}",
        "trainer.max_epochs=3", "trainer.limit_train_batches=null",
        "trainer.check_val_every_n_epoch=3", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "events_every_n_steps=1",
        "+callbacks.kinds._target_=tests.core.test_apotheon_module.KindRecorder",
        f"+callbacks.kinds.path={record}",
        lake=media_lake, runs=tmp_path / "runs",
    )  # fmt: skip
    summary = train(cfg)
    assert summary["status"] == "finished"
    run = tmp_path / "runs" / summary["run_id"]
    events = read_events(run / "events.jsonl")
    switches = [e for e in events if e["type"] == "curriculum"]
    assert [(e["epoch"], e["stage"]) for e in switches] == [
        (0, "pictures"),
        (1, "sound"),
        (2, "video"),
    ]
    assert switches[0]["samples"] < switches[1]["samples"] < switches[2]["samples"]
    kinds = kinds_of(media_lake)
    seen: dict[int, set[str]] = {}
    for row in map(json.loads, record.read_text().splitlines()):
        seen.setdefault(row["epoch"], set()).update(kinds[i] for i in row["ids"])
    assert seen[0] == {"image", "frame"}
    assert seen[1] == {"image", "frame", "audio"}
    assert seen[2] == {"image", "frame", "audio", "clip"}
    train_events = [e for e in events if e["type"] == "train"]
    for head in ("caption", "contrastive"):
        assert all(f"train/loss_{head}" in e for e in train_events)
    assert not any("train/loss_transcription" in e for e in train_events if e["epoch"] == 0)
    assert any("train/loss_transcription" in e for e in train_events if e["epoch"] == 1)
    val = summary["last_val"]
    for key in ("val/caption_ppl", "val/loss_caption", "val/recall_i2t_r1", "val/recall_t2i_r5"):
        assert val[key] is not None, key
    assert 0.0 <= val["val/caption_exact_match"] <= 1.0
    gens = [e for e in events if e["type"] == "generations"][-1]["samples"]
    assert {g["head"] for g in gens} == {"caption", "transcription"}
    assert val["val/transcription_wer"] >= 0.0
    # the figures are the generations' own scores and the heads' losses
    wers = [g["wer"] for g in gens if g["head"] == "transcription"]
    ems = [g["exact_match"] for g in gens if g["head"] == "caption"]
    assert val["val/transcription_wer"] == pytest.approx(sum(wers) / len(wers))
    assert val["val/caption_exact_match"] == pytest.approx(sum(ems) / len(ems))
    assert val["val/caption_ppl"] == pytest.approx(math.exp(val["val/loss_caption"]), rel=1e-4)
    # the LR schedule spans the run's real length (stages grow: Lightning's own estimate
    # sizes every epoch like the first)
    dm = data_module(media_lake, batch_size=8)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False)
    assert dm.estimated_stepping_batches(trainer) == summary["step"]
    exported = ApotheonModel.from_pretrained(run / "hf")
    assert exported.cfg.fusion.width == cfg.model.config.fusion.width
    from core.run_report import report

    text = report(run)
    assert "train/loss_transcription" in text and "curriculum: epoch 1 -> sound" in text
    assert "val/recall_i2t_r1" in text


@pytest.mark.slow
def test_a_run_killed_mid_curriculum_resumes_in_its_stage(
    compose, media_lake: Path, tmp_path: Path
) -> None:
    """SIGTERM in the second stage, resume: the same stage, then the same batches and
    losses as an uninterrupted run, and the next switch at its epoch."""
    from core.run import read_events
    from core.train import train

    stages = json.dumps(STAGES).replace('"', "")
    common = (
        "+experiment=apotheon_tiny", "data.datasets=null", "data.batch_size=8",
        "data.val_fraction=0.25", "data.test_fraction=0.0", f"data.curriculum={stages}",
        "trainer.max_epochs=3", "trainer.limit_train_batches=null", "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "checkpoint.every_n_steps=100", "checkpoint.monitor=null", "test_after_fit=false",
        "+callbacks.kinds._target_=tests.core.test_apotheon_module.KindRecorder",
    )  # fmt: skip

    def run(run_id: str, record: str, *extra: str) -> dict[str, Any]:
        cfg = compose(*common, f"run_id={run_id}", f"+callbacks.kinds.path={tmp_path / record}",
                      *extra, lake=media_lake, runs=tmp_path / "runs")  # fmt: skip
        return train(cfg)

    def rows(name: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]

    assert run("ref", "ref.jsonl")["status"] == "finished"
    reference = {r["step"]: r for r in rows("ref.jsonl")}
    cut_at = next(s for s, r in sorted(reference.items()) if r["epoch"] == 1) + 1
    stop = ("+callbacks.stop._target_=tests.core.probe.StopAt", f"+callbacks.stop.step={cut_at}",
            "+callbacks.stop.how=sigterm")  # fmt: skip
    assert run("cut", "cut.jsonl", *stop)["status"] == "interrupted"
    resumed = run("cut", "resumed.jsonl", "resume=true")
    assert resumed["status"] == "finished" and resumed["step"] == max(reference)
    after = rows("resumed.jsonl")
    assert after[0]["step"] == cut_at + 1 and after[0]["epoch"] == 1
    for r in after:
        assert r["ids"] == reference[r["step"]]["ids"]
        assert r["loss"] == pytest.approx(reference[r["step"]]["loss"], rel=1e-4)
    events = read_events(tmp_path / "runs" / "cut" / "events.jsonl")
    switches = [(e["epoch"], e["stage"]) for e in events if e["type"] == "curriculum"]
    assert switches == [(0, "pictures"), (1, "sound"), (1, "sound"), (2, "video")]


def test_apotheon_base_states_the_seed_and_its_memory(compose) -> None:
    cfg = compose("+experiment=apotheon_base")
    c = cfg.model.config
    assert c.vision.source == "openai/clip-vit-large-patch14"
    assert c.audio.source == "openai/whisper-base"
    assert c.language.source == "meta-llama/Meta-Llama-3-8B"
    assert (c.fusion.width, c.fusion.layers, c.fusion.heads) == (2048, 6, 16)
    assert dict(c.loss_weights) == {"caption": 1.0, "transcription": 1.0, "contrastive": 0.5}
    assert c.temperature == 0.07
    assert [s.start_epoch for s in cfg.data.curriculum] == [0, 2, 5]
    assert cfg.trainer.max_epochs == 10 and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.reload_dataloaders_every_n_epochs == 1
    assert cfg.model.peft.method == "lora" and cfg.model.grad_checkpointing
    header = (CONF / "experiment" / "apotheon_base.yaml").read_text().split("defaults:")[0]
    assert "ESTIMATED" in header and "GB" in header


def test_fsdp_apotheon_trainer_wraps_every_block(compose) -> None:
    from hydra.utils import instantiate

    cfg = compose("+experiment=apotheon_tiny", "trainer=fsdp_apotheon")
    policy = instantiate(cfg.trainer.strategy.auto_wrap_policy)
    assert policy == instantiate(cfg.trainer.strategy.activation_checkpointing_policy)
    model = apotheon().model
    blocks = [m for name, m in model.named_modules() if re.search(r"layers\.\d+$", name)]
    n = TINY["fusion"]["layers"] + TINY["vision"]["layers"] + TINY["audio"]["layers"]
    assert len(blocks) == n + TINY["language"]["layers"]
    assert all(isinstance(b, tuple(policy)) for b in blocks)


def test_fsdp_wrapped_module_checkpoints_and_mixed_dtypes(media_lake: Path, tmp_path: Path) -> None:
    """Real FSDP (gloo, world size 1): a bfloat16 language model with LoRA beside float32
    towers cannot be flattened until :func:`ready_for_fsdp`; after wrapping, slim
    checkpoints still keep every trained tensor (FSDP's wrapper names cleaned)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from core.models.apotheon import fsdp_wrap_classes
    from core.modules.apotheon_module import ready_for_fsdp
    from tests.conftest import gloo_world_of_one

    def lora_module() -> ApotheonModule:
        return apotheon(freeze={"vision": True, "audio": True},
                              peft={"method": "lora", "r": 4}, grad_checkpointing=True)  # fmt: skip

    module = lora_module()
    module.model.lm.to(torch.bfloat16)  # as language.dtype=bfloat16 loads it
    for n, p in module.model.lm.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()  # peft keeps adapters in float32
    trained = {f"model.{n}" for n, p in module.model.named_parameters() if p.requires_grad}
    policy = ModuleWrapPolicy(fsdp_wrap_classes())
    with gloo_world_of_one(tmp_path):
        with pytest.raises(ValueError, match="uniform dtype"):
            FSDP(module.model, auto_wrap_policy=policy, device_id=torch.device("cpu"),
                 use_orig_params=True)  # fmt: skip
        module = lora_module()
        module.model.lm.to(torch.bfloat16)
        ready_for_fsdp(module.model, strategy_checkpoints=True)
        assert not module.model.fusion.gradient_checkpointing
        assert not module.model.lm.is_activation_checkpointing
        module.model = FSDP(module.model, auto_wrap_policy=policy,
                            device_id=torch.device("cpu"), use_orig_params=True)  # fmt: skip
        assert any("_fsdp_wrapped_module" in n for n, _ in module.model.named_parameters())
        ckpt = {"state_dict": module.state_dict()}
        module.on_save_checkpoint(ckpt)
        assert ckpt["lakeloom_trainable_only"]
        assert trained <= set(ckpt["state_dict"])  # fusion layers and LoRA factors kept
        assert not any(k.startswith("model.vision.") for k in ckpt["state_dict"])
