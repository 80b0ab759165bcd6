"""VlmModule with tiny real LLaVA / Qwen2-VL models on samples of a real lake.

Freezing (the align stage) and ``no_grad`` around a frozen vision tower, LoRA / DoRA
targeting and the parameter table, text-only batches, DPO / ORPO, QLoRA on CPU, loading a
saved checkpoint, packing, generation metrics, and, through ``core.train``: the run's
events, PEFT adapters, ``merge`` and resume with slim checkpoints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from core.checkpoint import load_checkpoint
from core.models.vlm_load import parameter_table
from core.models.vlm_tiny import build_tiny, save_tiny
from core.modules.vlm_module import VlmModule
from lake.errors import ConfigError
from tests.conftest import conf_kwargs

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("llava", "qwen2_vl")
ALIGN = {"vision": True, "projector": False, "language_model": True}
LM_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FAST = ("trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")

# training_step / validation_step call self.log outside a Trainer in the direct tests
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log")


# ---- helpers ------------------------------------------------------------------------------


def tiny_kwargs(family: str) -> dict[str, Any]:
    """The VlmModule arguments of ``conf/model/<family>_tiny.yaml`` (over ``vlm.yaml``)."""
    return conf_kwargs("train", "model", f"model={family}_tiny")


def make(family: str, **kw: Any) -> VlmModule:
    return VlmModule(**{**tiny_kwargs(family), **kw})


def inner(module: VlmModule) -> torch.nn.Module:
    """The transformers model (inside a PeftModel or not)."""
    model = module.model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def vision_tower(module: VlmModule) -> torch.nn.Module:
    m = inner(module).model
    return m.vision_tower if module.spec.name == "llava" else m.visual


def role_params(module: VlmModule, role: str) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in module.model.named_parameters() if module.spec.role_of(n) == role}


def lake_samples(lake: Path, dataset: str, split: str = "train") -> list[dict[str, Any]]:
    from core.data.lance_data import LanceDataModule

    ds = LanceDataModule(str(lake), datasets=[dataset]).dataset(split)
    return ds.__getitems__(list(range(len(ds))))


@pytest.fixture(scope="module")
def convs(vlm_lake: Path) -> dict[str, list[dict[str, Any]]]:
    """The ``convs`` samples per split (train: image ones first, then text-only)."""
    out = {s: lake_samples(vlm_lake, "convs", s) for s in ("train", "val")}
    out["train"].sort(key=lambda s: not s["images"])
    return out


@pytest.fixture(scope="module")
def prefs(vlm_lake: Path) -> list[dict[str, Any]]:
    return lake_samples(vlm_lake, "prefs")


def step(module: VlmModule, opt: torch.optim.Optimizer, batch: dict[str, Any]) -> float:
    loss = module.training_step(batch, 0)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def lm_lora_count(module: VlmModule, r: int, dora: bool) -> int:
    """r * (in + out) over the LM's projections of every layer (+ out for DoRA)."""
    t = inner(module).config.text_config
    h, inter = t.hidden_size, t.intermediate_size
    kv = t.num_key_value_heads * (h // t.num_attention_heads)
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]
    per_layer = sum(r * (i + o) + (o if dora else 0) for i, o in shapes)
    return per_layer * t.num_hidden_layers


# ---- freezing -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_align_stage_trains_only_the_projector(family: str, convs) -> None:
    module = make(family, freeze=ALIGN, lr=1e-2, max_steps=3)
    vision, projector = role_params(module, "vision"), role_params(module, "projector")
    lm = role_params(module, "language_model")
    assert vision and projector and lm
    assert all(p.requires_grad for p in projector.values())
    assert not any(p.requires_grad for p in (vision | lm).values())
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}

    tower = vision_tower(module)
    first = tower.encoder.layers[0] if family == "llava" else tower.blocks[0]
    last = tower if family == "llava" else tower.blocks[-1]
    proj = inner(module).model.multi_modal_projector if family == "llava" else tower.merger
    seen: dict[str, list[bool]] = {"grad_enabled": [], "vision_out": [], "projector_out": []}

    def out_tensor(out: Any) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return out
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    hooks = [
        first.register_forward_pre_hook(
            lambda m, a: seen["grad_enabled"].append(torch.is_grad_enabled())
        ),
        last.register_forward_hook(
            lambda m, a, o: seen["vision_out"].append(out_tensor(o).requires_grad)
        ),
        proj.register_forward_hook(
            lambda m, a, o: seen["projector_out"].append(out_tensor(o).requires_grad)
        ),
    ]
    opt = module.configure_optimizers()["optimizer"]
    assert {g["name"].split("/")[0] for g in opt.param_groups} == {"projector"}
    batch = module.make_collator()(convs["train"][:2])
    assert "pixel_values" in batch

    loss = module.training_step(batch, 0)
    loss.backward()
    for name, p in projector.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in (vision | lm).items():
        assert p.grad is None, name
    # the tower ran under no_grad (checked inside it), its output carries no graph,
    # while the projector after it does (a frozen LM still passes gradients back to it)
    assert seen["grad_enabled"] == [False]
    assert seen["vision_out"] == [False] and seen["projector_out"] == [True]
    assert torch.is_grad_enabled()
    opt.step()
    for _ in range(2):
        step(module, opt, batch)
    for h in hooks:
        h.remove()

    after = dict(module.model.named_parameters())
    for name in vision | lm:
        assert torch.equal(after[name], before[name]), f"{name} changed"
    for name in projector:
        assert not torch.equal(after[name], before[name]), f"{name} did not change"


# ---- LoRA / DoRA --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_hits_the_language_model_only(family: str, method: str) -> None:
    r = 4
    module = make(family, peft={"method": method, "r": r, "alpha": 8})
    spec = module.spec
    base, _ = build_tiny(family, tiny_kwargs(family)["tiny"])
    projector = sum(p.numel() for n, p in base.named_parameters() if spec.role_of(n) == "projector")
    lora = lm_lora_count(module, r, dora=method == "dora")

    trainable = {n: p for n, p in module.model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == lora + projector
    lora_params = {n: p for n, p in trainable.items() if "lora_" in n}
    assert sum(p.numel() for p in lora_params.values()) == lora
    if method == "dora":
        assert any("lora_magnitude_vector" in n for n in lora_params)
    # LoRA only in the LM's projections; the trained projector is a modules_to_save copy
    lm_layers = "base_model.model.model.language_model.layers."
    assert all(n.startswith(lm_layers) for n in lora_params)
    wrapped = [n for n, m in module.model.named_modules() if hasattr(m, "lora_A")]
    assert len(wrapped) == len(LM_PROJ) * inner(module).config.text_config.num_hidden_layers
    assert all(n.startswith(lm_layers) and n.rsplit(".", 1)[1] in LM_PROJ for n in wrapped)
    for n in wrapped:
        assert spec.role_of(n) == "language_model"
    assert not any("lora_" in n for n, _ in vision_tower(module).named_parameters())
    others = {n for n in trainable if "lora_" not in n}
    assert others and all(".modules_to_save.default." in n for n in others)
    assert {spec.role_of(n) for n in others} == {"projector"}

    rows = {row["module"]: row for row in parameter_table(module.model, spec)}
    total = rows.pop("total")
    everything = list(module.model.parameters())
    assert total["params"] == sum(p.numel() for p in everything)
    assert total["trainable"] == lora + projector
    assert sum(row["params"] for row in rows.values()) == total["params"]
    assert sum(row["trainable"] for row in rows.values()) == total["trainable"]
    assert rows["lora"]["trainable"] == rows["lora"]["params"] == lora
    assert rows["projector"]["trainable"] == projector  # the frozen original + its copy
    assert rows["projector"]["params"] == 2 * projector
    assert rows["vision"]["trainable"] == rows["language_model"]["trainable"] == 0


# ---- text-only batches --------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_batch_still_runs_the_vision_tower(family: str, convs) -> None:
    module = make(family)
    text_only = [s for s in convs["train"] if not s["images"]]
    assert text_only
    batch = module.make_collator()(text_only)
    assert "pixel_values" not in batch
    calls = []
    hook = vision_tower(module).register_forward_hook(lambda m, a, o: calls.append(1))
    loss = module.training_step(batch, 0)
    hook.remove()
    assert len(calls) == 1 and torch.isfinite(loss)
    assert float(loss.detach()) == pytest.approx(float(module.sft_loss(batch)[0]), abs=1e-6)
    loss.backward()
    # the projector is part of every step's graph (DDP sees the same parameters used)
    for name, p in role_params(module, "projector").items():
        assert p.grad is not None and torch.all(p.grad == 0), name


# ---- preference objectives ----------------------------------------------------------------


def test_dpo_starts_at_log2_and_learns_the_pairs(prefs) -> None:
    module = make("llava", objective="dpo", peft={"method": "lora", "r": 8, "dropout": 0.0},
                  lr=5e-3, max_steps=20)  # fmt: skip
    batch = module.make_collator()(prefs[:4])
    n = batch["n_pairs"]
    assert n == 4 and batch["input_ids"].shape[0] == 2 * n
    assert batch["pixel_values"].shape[0] == 2 * n
    assert torch.equal(batch["pixel_values"][:n], batch["pixel_values"][n:])
    assert batch["sample_ids"][:n] == batch["sample_ids"][n:]

    # the reference is the base with the adapter disabled: equal to the policy at init
    loss, metrics = module.preference_loss(batch)
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-5)
    assert float(metrics["margin"]) == pytest.approx(0.0, abs=1e-5)
    opt = module.configure_optimizers()["optimizer"]
    for _ in range(12):
        step(module, opt, batch)
    module.eval()
    with torch.no_grad():
        loss, metrics = module.preference_loss(batch)
        ref = module.reference_logps(batch)
        with module.model.disable_adapter():
            base_logits = module(batch)
    assert float(loss) < math.log(2) - 0.05
    assert float(metrics["accuracy"]) > 0.5
    assert float(metrics["reward_chosen"]) > float(metrics["reward_rejected"])
    # the adapter trained, the reference did not move
    base, _ = build_tiny("llava", tiny_kwargs("llava")["tiny"])
    with torch.no_grad():
        fresh = base(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")})
    assert torch.allclose(base_logits, fresh.logits, atol=1e-5)
    logps, _ = module.token_logps(fresh.logits, batch["labels"])
    assert torch.allclose(ref, logps.sum(-1), atol=1e-4)


def test_orpo_loss_falls(prefs) -> None:
    module = make("llava", objective="orpo", lr=2e-3, max_steps=10)
    batch = module.make_collator()(prefs[:4])
    opt = module.configure_optimizers()["optimizer"]
    losses = [step(module, opt, batch) for _ in range(8)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0]


# ---- QLoRA --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("llava", tiny_kwargs("llava")["tiny"], tmp_path_factory.mktemp("ckpt"), 3)


def test_quantization_needs_cuda_or_the_test_switch(saved_llava: Path) -> None:
    with pytest.raises(ConfigError, match="pretrained source"):
        make("llava", quantization="4bit", peft={"method": "lora"})
    with pytest.raises(ConfigError, match="adapters"):
        make("llava", source=str(saved_llava), quantization="4bit")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the no-CUDA error cannot happen here")
    with pytest.raises(ConfigError, match="CUDA"):
        make("llava", source=str(saved_llava), quantization="4bit", peft={"method": "lora"})


def test_qlora_on_cpu_quantizes_the_language_model_only(saved_llava: Path, convs) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    lora = {"method": "lora", "r": 4}
    module = make("llava", source=str(saved_llava), quantization="4bit",
                  allow_cpu_quantization=True, peft=lora, max_steps=2)  # fmt: skip
    quantized = [n for n, m in module.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    layers = inner(module).config.text_config.num_hidden_layers
    assert len(quantized) == len(LM_PROJ) * layers
    for name in quantized:
        assert module.spec.role_of(name) == "language_model", name
        assert name.startswith("base_model.model.model.language_model.layers."), name
    assert not isinstance(inner(module).lm_head, bnb.nn.Linear4bit)
    batch = module.make_collator()(convs["train"][:2])
    opt = module.configure_optimizers()["optimizer"]
    lora_b = {n: p.detach().clone() for n, p in module.model.named_parameters() if "lora_B" in n}
    loss = step(module, opt, batch)
    assert math.isfinite(loss)
    after = dict(module.model.named_parameters())
    assert all(not torch.equal(after[n], v) for n, v in lora_b.items())


# ---- loading a saved checkpoint -----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_from_pretrained_dir_matches_the_saved_model(family: str, tmp_path: Path, convs) -> None:
    tiny = tiny_kwargs(family)["tiny"]
    out = save_tiny(family, tiny, tmp_path / "ckpt", seed=7)
    ref_model, ref_proc = build_tiny(family, tiny, seed=7)
    module = make(family, source=str(out), freeze={"vision": False})
    assert module.processor.chat_template == ref_proc.chat_template
    samples = convs["train"][:2] + convs["train"][-1:]
    batch = module.make_collator()(samples)
    ref_batch = collator_like(module, processor=ref_proc)(samples)
    for key in ("input_ids", "labels", "attention_mask", "pixel_values"):
        assert torch.equal(batch[key], ref_batch[key]), key
    module.eval()
    with torch.no_grad():
        got = module(batch)
        want = ref_model.eval()(**_model_inputs(batch)).logits
    assert torch.equal(got, want)


def collator_like(module: VlmModule, processor: Any = None, **hparams: Any) -> Any:
    """``module.make_collator()`` with another processor and / or other settings."""
    from lightning.fabric.utilities.data import AttributeDict

    class Shim:
        spec = module.spec

    shim = Shim()
    shim.processor = processor or module.processor
    shim.hparams = AttributeDict({**module.hparams, **hparams})
    return VlmModule.make_collator(shim)


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    return {k: batch[k] for k in keys if k in batch}


# ---- packing and generation ---------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_batch_gives_the_unpacked_loss(family: str, convs) -> None:
    module = make(family, pack=True)
    samples = convs["train"][:3] + convs["train"][-2:]  # with and without images
    packed = module.make_collator(train=True)(samples)
    plain = collator_like(module, pack=False)(samples)
    assert packed["packed"] and packed["input_ids"].shape[0] < plain["input_ids"].shape[0]
    module.eval()
    with torch.no_grad():
        a, n_a = module.sft_loss(packed)
        b, n_b = module.sft_loss(plain)
    assert n_a == n_b
    assert float(a) == pytest.approx(float(b), rel=1e-4)


def _generations(module: VlmModule, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation over one batch of ``samples``: the ``generations`` event's samples."""
    batch = module.make_collator(train=False)(samples)
    assert batch["prompts"] is not None and len(batch["references"]) == len(samples)
    module.eval()
    module.on_validation_epoch_start()
    with torch.no_grad():
        module.validation_step(batch, 0)
        module.validation_step(batch, 1)  # already has generate_samples answers
    module._eval_epoch_end("val")
    ((_, event),) = [e for e in module.pop_events() if e[0] == "generations"]
    assert event["split"] == "val"
    return event["samples"]


# image / text-only rows mixed in one batch; the first n rows answered
@pytest.mark.parametrize("lead,n", [("image", 2), ("text", 2), ("text", 1), ("image", 3)])
@pytest.mark.parametrize("family", FAMILIES)
def test_validation_generates_and_scores_answers(family: str, lead: str, n: int, convs) -> None:
    text = next(s for s in convs["train"] if not s["images"])
    img0, img1 = convs["val"][:2]
    samples = [img0, text, img1] if lead == "image" else [text, img0, img1]
    module = make(family, generate_samples=n, max_new_tokens=4)
    got = _generations(module, samples)
    assert [g["sample_id"] for g in got] == [s["sample_id"] for s in samples[:n]]
    for g, s in zip(got, samples, strict=False):
        assert g["reference"] == s["messages"][-1]["content"]
        assert isinstance(g["prediction"], str)
        assert 0.0 <= g["token_f1"] <= 1.0 and g["exact_match"] in (0.0, 1.0)
        # each row got its own image: the same answer as the sample alone
        module.hparams.generate_samples = 1
        (alone,) = _generations(module, [s])
        module.hparams.generate_samples = n
        assert g["prediction"] == alone["prediction"], g["sample_id"]


# ---- end to end through core.train --------------------------------------------------------


class VlmBatchRecorder(L.Callback):
    """Append each training batch's step, sample ids and loss to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        row = {"step": trainer.global_step, "ids": batch["sample_ids"],
               "loss": float(outputs["loss"])}  # fmt: skip
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _trained_module(run: Path, ckpt: str = "last.ckpt") -> VlmModule:
    """The run's module rebuilt from its saved config with the checkpoint's tensors."""
    from hydra.utils import instantiate

    module = instantiate(OmegaConf.load(run / "config.yaml").model)
    state = load_checkpoint(run / "checkpoints" / ckpt)  # weights_only: our checkpoints load safely
    module.on_load_checkpoint(state)
    missing, unexpected = module.load_state_dict(state["state_dict"], strict=False)
    assert not unexpected
    trainable = {f"model.{n}" for n, p in module.model.named_parameters() if p.requires_grad}
    assert not trainable & set(missing)
    return module.eval()


def test_lora_run_end_to_end_with_adapter_and_merge(compose, vlm_lake: Path, tmp_path: Path,
                                                    convs) -> None:  # fmt: skip
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from core.merge import merge
    from core.models.vlm_tiny import LLAVA_TEMPLATE
    from core.run import read_events
    from core.train import train

    cfg = compose(
        "model=llava_tiny", "model.peft.method=lora", "model.peft.r=8", "model.lr=5e-3",
        "model.generate_samples=4", "model.max_new_tokens=6", "data.datasets=[convs]",
        "data.batch_size=4", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0", "checkpoint.every_n_steps=2", "run_id=lora",
        *FAST, lake=vlm_lake,
    )  # fmt: skip
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["step"] == 4
    run = tmp_path / "runs" / "lora"
    events = read_events(run / "events.jsonl")
    (params,) = [e for e in events if e["type"] == "params"]
    rows = {r["module"]: r for r in params["rows"]}
    assert params["family"] == "llava" and rows["lora"]["trainable"] > 0
    assert rows["vision"]["trainable"] == 0
    gens = [e for e in events if e["type"] == "generations" and e["split"] == "val"]
    assert len(gens) == 1 and len(gens[0]["samples"]) == 4
    assert all({"prediction", "reference"} <= set(s) for s in gens[0]["samples"])
    assert {s["reference"] for s in gens[0]["samples"]} <= {
        s["messages"][-1]["content"] for s in convs["val"]
    }
    (val,) = [e for e in events if e["type"] == "val"]
    assert 0 <= val["val/exact_match"] <= 1 and 0 <= val["val/token_f1"] <= 1
    assert "val/loss" in val and "val/ppl" in val

    adapter = run / "checkpoints" / "adapter-last"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (run / "hf" / "adapter_config.json").is_file()

    trained = _trained_module(run)
    batch = trained.make_collator()(convs["val"])
    inputs = _model_inputs(batch)
    base, _ = build_tiny("llava", tiny_kwargs("llava")["tiny"], seed=int(cfg.seed))
    with torch.no_grad():
        want = trained(batch)
        base_logits = base.eval()(**inputs).logits
        peft_model = PeftModel.from_pretrained(base, adapter).eval()
        got = peft_model(**inputs).logits
    assert not torch.allclose(want, base_logits, atol=1e-3)  # the adapter learned something
    assert torch.allclose(got, want, atol=1e-5)

    out = merge(cfg.runs_dir, "lora", "last", tmp_path / "merged")
    assert not (tmp_path / "merged.tmp").exists()
    reloaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    with torch.no_grad():
        merged_logits = trained.model.merge_and_unload()(**inputs).logits
        assert torch.allclose(reloaded(**inputs).logits, merged_logits, atol=1e-5)
    assert torch.allclose(merged_logits, want, atol=1e-4)
    processor = AutoProcessor.from_pretrained(out)
    assert processor.chat_template == LLAVA_TEMPLATE
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    assert processor.apply_chat_template(conv, add_generation_prompt=True) == (
        trained.processor.apply_chat_template(conv, add_generation_prompt=True)
    )


def test_resume_restores_step_optimizer_and_data_position(compose, vlm_lake: Path,
                                                          tmp_path: Path) -> None:  # fmt: skip
    from core.train import train

    common = (
        "model=llava_tiny", "data.datasets=[convs]", "data.batch_size=4",
        "trainer.max_steps=8", "trainer.max_epochs=-1", "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0", "checkpoint.every_n_steps=2", "test_after_fit=false",
        *FAST,
    )  # fmt: skip

    def rec(name: str) -> tuple[str, str]:
        return (
            "+callbacks.rec._target_=tests.core.test_vlm_module.VlmBatchRecorder",
            f"+callbacks.rec.path={tmp_path / name}",
        )

    run = lambda *o: train(compose(*common, *o, lake=vlm_lake))  # noqa: E731
    ref = run("run_id=ref", *rec("ref.jsonl"))
    assert ref["status"] == "finished" and ref["step"] == 8
    stop = ("+callbacks.stop._target_=tests.core.probe.StopAt", "+callbacks.stop.step=5")
    cut = run("run_id=cut", *rec("cut.jsonl"), *stop)
    assert cut["status"] == "interrupted"
    ckpt = load_checkpoint(tmp_path / "runs/cut/checkpoints/last.ckpt")
    assert ckpt["global_step"] == 4  # Ctrl-C: the periodic checkpoint before the stop
    resumed = run("run_id=cut", "resume=true", *rec("resumed.jsonl"))
    assert resumed["status"] == "finished" and resumed["step"] == 8

    reference = {r["step"]: r for r in _rows(tmp_path / "ref.jsonl")}
    after = _rows(tmp_path / "resumed.jsonl")
    assert [r["step"] for r in after] == [5, 6, 7, 8]
    assert len(reference[5]["ids"]) < 4  # step 5 ends an epoch: resume crosses it
    for r in after:  # the batches an uninterrupted run saw next, with the same losses
        assert r["ids"] == reference[r["step"]]["ids"]
        assert r["loss"] == pytest.approx(reference[r["step"]]["loss"], rel=1e-5)

    # slim checkpoints: the trainable tensors only, no frozen vision tower
    module = make("llava")
    trainable = {f"model.{n}" for n, p in module.model.named_parameters() if p.requires_grad}
    assert not any("vision_tower" in k for k in trainable)
    a = load_checkpoint(tmp_path / "runs/ref/checkpoints/last.ckpt")
    b = load_checkpoint(tmp_path / "runs/cut/checkpoints/last.ckpt")
    for c in (ckpt, a, b):
        assert c["lakeloom_trainable_only"] is True
        assert set(c["state_dict"]) == trainable
    # optimizer state restored: the resumed run ends where the uninterrupted one did
    assert a["global_step"] == b["global_step"] == 8
    for k in trainable:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-6), k
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert len(sa) == len(sb) == len(trainable)
    for i in sa:
        assert float(sa[i]["step"]) == float(sb[i]["step"]) == 8
        assert torch.allclose(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], rtol=1e-4, atol=1e-12)
    assert len(ckpt["optimizer_states"][0]["state"]) == len(trainable)


# ---- learning -----------------------------------------------------------------------------


def test_llava_tiny_overfits_eight_samples(convs) -> None:
    module = make("llava", max_steps=40)
    batch = module.make_collator()(convs["train"][:8])
    assert len(batch["sample_ids"]) == 8
    opt = module.configure_optimizers()["optimizer"]
    losses = [step(module, opt, batch) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0], losses[::8]
    assert losses[-1] < min(losses[:10])
