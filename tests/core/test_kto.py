"""Feedback and preference data in VLM training (issue 16, part 3): SFT never learns an
undesirable (``feedback = false``) answer and trains a preference sample on ``chosen``
only; ``objective=kto`` is TRL 1.16's KTO loss (recomputed here by hand from the logits)
and learns feedback data, with the tiny LLaVA on a real lake.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch

from core.modules.vlm_collate import IGNORE
from core.modules.vlm_module import VlmModule
from tests.conftest import jpeg_bytes
from tests.core.conftest import VLM_COLOURS
from tests.core.test_vlm_module import lake_samples, make, step

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log")

QUESTION = "Which colour is the shape?"


@pytest.fixture(scope="module")
def kto_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dataset ``kto`` (LLaVA JSON, all ``train``): 8 image samples answered "It is
    <colour>.", ``feedback`` true when the colour is the image's (even i) and false when
    it is another (odd i), plus 2 samples without feedback."""
    from lake.ingest import IngestSettings, ingest
    from lake.schema import SAMPLES
    from lake.store import Lake
    from plugins.llava import LlavaSource

    base = tmp_path_factory.mktemp("kto_lake")
    names = list(VLM_COLOURS)
    records, good = [], {}
    for i in range(10):
        colour = names[i % 4]
        said = colour if i % 2 == 0 else names[(i + 1) % 4]
        (base / f"{i}.jpg").write_bytes(jpeg_bytes(VLM_COLOURS[colour], (44, 40 + 2 * i)))
        records.append({"id": f"k{i}", "image": f"{i}.jpg", "conversations": [
            {"from": "human", "value": f"<image>\n{QUESTION}"},
            {"from": "gpt", "value": f"It is {said}."}]})  # fmt: skip
        good[f"{i}.jpg"] = None if i >= 8 else i % 2 == 0
    (base / "data.json").write_text(json.dumps(records))
    lake = Lake(base / "lake")
    report = ingest(
        LlavaSource(base / "data.json"), lake, "kto", IngestSettings(workers=0, progress=False)
    )
    assert report.new_samples == 10 and not report.rejected, report.summary()
    table = lake.dataset(SAMPLES).to_table()
    rows = table.to_pylist()
    media = {m["media_id"]: m["source_uri"] for m in lake.dataset("media").to_table(
        columns=["media_id", "source_uri"]).to_pylist()}  # fmt: skip
    for r in rows:
        r["feedback"] = good[Path(media[r["media_ids"][0]]).name]
        r["split"] = "train"
    lake.upsert(SAMPLES, pa.Table.from_pylist(rows, table.schema))
    return base / "lake"


@pytest.fixture(scope="module")
def prefs(vlm_lake: Path) -> list[dict[str, Any]]:
    """The ``prefs`` samples of the VLM lake (a prompt, ``chosen`` and ``rejected``)."""
    return lake_samples(vlm_lake, "prefs")


@pytest.fixture(scope="module")
def feedback(kto_lake: Path) -> list[dict[str, Any]]:
    """The ``kto`` samples with feedback, desirable and undesirable alternating."""
    rows = [s for s in lake_samples(kto_lake, "kto") if s["feedback"] is not None]
    good = [s for s in rows if s["feedback"]]
    bad = [s for s in rows if not s["feedback"]]
    assert len(good) == len(bad) == 4
    return [s for pair in zip(good, bad, strict=True) for s in pair]


def supervised_text(module: VlmModule, batch: dict[str, Any], row: int) -> str:
    ids, labels = batch["input_ids"][row], batch["labels"][row]
    return module.processor.tokenizer.decode(ids[labels != IGNORE])


def answer(sample: dict[str, Any]) -> str:
    return sample["messages"][-1]["content"]


# ---- SFT --------------------------------------------------------------------------------


def test_sft_never_selects_or_trains_an_undesirable_answer(kto_lake: Path) -> None:
    from core.data.lance_data import LanceDataModule

    module = make("llava")
    dm = LanceDataModule(str(kto_lake), datasets=["kto"], batch_size=16)
    everything = dm.dataset("train").__getitems__(list(range(10)))
    bad = {s["sample_id"] for s in everything if s["feedback"] is False}
    assert len(bad) == 4
    # the objective's collator narrows the selection: the undesirable answers are gone
    dm.set_collator(module.make_collator(train=True), module.make_collator(train=False))
    assert dm.sizes() == {"train": 6, "val": 0, "test": 0}
    ds = dm.dataset("train")
    kept = ds.__getitems__(list(range(len(ds))))
    assert not bad & {s["sample_id"] for s in kept}
    assert {s["feedback"] for s in kept} == {True, None}

    # and a collator handed one anyway leaves it out, saying why
    batch = module.make_collator()(everything)
    skipped = dict(batch["skipped"])
    assert set(skipped) == bad
    assert all("feedback = false" in why for why in skipped.values())
    assert not bad & set(batch["sample_ids"]) and len(batch["sample_ids"]) == 6
    wrong = {answer(s) for s in everything if s["sample_id"] in bad}
    for row in range(len(batch["sample_ids"])):
        assert supervised_text(module, batch, row).strip() not in wrong


def test_sft_trains_a_preference_pair_on_chosen_only(prefs) -> None:
    module = make("llava")
    # as ingested (the prompt only) and with the chosen answer as the last turn
    ended = [s | {"messages": [*s["messages"], {"role": "assistant", "content": s["chosen"]}]}
             for s in prefs[:2]]  # fmt: skip
    samples = prefs[:2] + ended
    batch = module.make_collator()(samples)
    assert not batch["skipped"] and batch["sample_ids"] == [s["sample_id"] for s in samples]
    tok = module.processor.tokenizer
    for row, s in enumerate(samples):
        assert s["chosen"] in supervised_text(module, batch, row)
        rejected = tok(s["rejected"], add_special_tokens=False)["input_ids"]
        ids = batch["input_ids"][row].tolist()
        assert not any(ids[i : i + len(rejected)] == rejected for i in range(len(ids)))


# ---- KTO --------------------------------------------------------------------------------


def test_kto_batch_rows_and_kl_rows(feedback) -> None:
    module = make("llava", objective="kto")
    samples = feedback[:4]
    batch = module.make_collator()(samples)
    assert batch["feedback"].tolist() == [True, False, True, False]
    kl = batch["kl"]
    assert kl["input_ids"].shape[0] == 4 and batch["input_ids"].shape[0] == 4
    assert kl["sample_ids"] == batch["sample_ids"]  # prompt i and its image ...
    assert torch.equal(kl["pixel_values"], batch["pixel_values"])
    for i, s in enumerate(samples):  # ... answered by answer i - 1; labels on answers only
        assert supervised_text(module, batch, i).strip().startswith(answer(s))
        assert supervised_text(module, kl, i).strip().startswith(answer(samples[i - 1]))
    assert module.make_collator().sample_filter(["feedback"]) == "feedback IS NOT NULL"


def kto_by_hand(module: VlmModule, batch: dict[str, Any], beta: float, wd: float,
                wu: float) -> torch.Tensor:  # fmt: skip
    """KTOTrainer._compute_loss (TRL 1.16, loss_type="kto") written out from the logits."""

    def summed(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits[:, :-1].double(), -1)
        tgt = labels[:, 1:]
        picked = logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
        return (picked * (tgt != IGNORE)).sum(-1)

    with torch.no_grad():
        policy = summed(module(batch), batch["labels"])
        kl_policy = summed(module(batch["kl"]), batch["kl"]["labels"])
        with module.model.disable_adapter():
            ref = summed(module(batch), batch["labels"])
            kl_ref = summed(module(batch["kl"]), batch["kl"]["labels"])
    z = (kl_policy - kl_ref).mean().clamp(min=0)
    r = policy - ref
    good = batch["feedback"]
    chosen = wd * (1 - torch.sigmoid(beta * (r[good] - z)))
    rejected = wu * (1 - torch.sigmoid(beta * (z - r[~good])))
    return torch.cat((chosen, rejected)).mean()


def test_kto_loss_is_trls_formula_and_learns_the_feedback(feedback) -> None:
    beta, wd, wu = 0.5, 1.0, 1.5
    module = make("llava", objective="kto", beta=beta, desirable_weight=wd,
                  undesirable_weight=wu, peft={"method": "lora", "r": 8, "dropout": 0.0},
                  lr=5e-3, max_steps=20)  # fmt: skip
    batch = module.make_collator()(feedback)
    # at the start the policy is the reference: every answer costs weight x (1 - sigmoid(0))
    loss, metrics = module.kto_loss(batch)
    assert float(loss.detach()) == pytest.approx((4 * wd + 4 * wu) / 8 * 0.5, abs=1e-5)
    assert float(metrics["kl"]) == pytest.approx(0.0, abs=1e-6)

    opt = module.configure_optimizers()["optimizer"]
    losses = [step(module, opt, batch) for _ in range(12)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05, losses
    module.eval()
    with torch.no_grad():
        loss, metrics = module.kto_loss(batch)
    want = kto_by_hand(module, batch, beta, wd, wu)
    assert float(want) != pytest.approx(0.5 * (wd + wu) / 2, abs=1e-3)  # r, z moved
    assert float(loss) == pytest.approx(float(want), rel=1e-4, abs=1e-6)
    assert float(metrics["reward_chosen"]) > float(metrics["reward_rejected"])
    assert float(metrics["kl"]) >= 0.0


def test_kto_needs_feedback(feedback, prefs) -> None:
    from core.modules.vlm_collate import SampleError

    module = make("llava", objective="kto")
    none = feedback[0] | {"sample_id": "nofb", "feedback": None}
    with pytest.raises(SampleError, match=r"nofb.*feedback"):
        module.make_collator()([none])
    with pytest.raises(SampleError, match="answer"):  # the prompt alone: nothing was rated
        module.make_collator()([prefs[0] | {"feedback": True}])


def test_kto_trains_through_core_train(compose, kto_lake: Path, tmp_path: Path) -> None:
    from core.run import read_events
    from core.train import train

    cfg = compose(
        "model=llava_tiny", "model.objective=kto", "data.datasets=[kto]", "data.batch_size=4",
        "trainer.max_steps=2", "trainer.max_epochs=-1", "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0", "test_after_fit=false", "run_id=kto",
        "events_every_n_steps=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        lake=kto_lake,
    )  # fmt: skip
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["step"] == 2
    assert summary["data"]["train"] == 8  # the two samples without feedback left out
    assert summary["train_loss"] and all(math.isfinite(x) for x in summary["train_loss"])
    events = read_events(tmp_path / "runs" / "kto" / "events.jsonl")
    kl = [e["train/kl"] for e in events if e["type"] == "train" and "train/kl" in e]
    assert len(kl) == 2 and all(x >= 0 for x in kl)


def test_kto_preset_composes(compose) -> None:
    cfg = compose("+experiment=qwen2vl_kto")
    m = cfg.model
    assert m.objective == "kto" and m.source == "Qwen/Qwen2-VL-2B-Instruct"
    assert m.peft.method == "lora" and m.beta == 0.1
    assert m.desirable_weight == 1.0 and m.undesirable_weight == 1.0
    header = (Path(__file__).parents[2] / "conf/experiment/qwen2vl_kto.yaml").read_text()
    assert "ESTIMATED" in header.split("defaults:")[0]


def test_llama_factory_kto_file_trains_as_kto(tmp_path: Path) -> None:
    """LLaMA-Factory's ``kto_en_demo`` layout (ShareGPT + ``label``) through the real
    source: the lake's feedback reaches the KTO batch, and SFT leaves the false ones out."""
    from core.data.lance_data import LanceDataModule
    from lake.ingest import IngestSettings, ingest
    from lake.store import Lake
    from plugins.sharegpt import ShareGPTSource

    names = list(VLM_COLOURS)
    lines = []
    for i in range(4):
        colour = names[i]
        said = colour if i % 2 == 0 else names[(i + 2) % 4]  # answers all differ
        (tmp_path / f"{i}.jpg").write_bytes(jpeg_bytes(VLM_COLOURS[colour], (40, 40 + 2 * i)))
        lines.append(json.dumps({"conversations": [
            {"from": "human", "value": f"<image>{QUESTION}"},
            {"from": "gpt", "value": f"It is {said}."}],
            "images": [f"{i}.jpg"], "label": i % 2 == 0}))  # fmt: skip
    (tmp_path / "kto.jsonl").write_text("\n".join(lines) + "\n")
    lake = Lake(tmp_path / "lake")
    report = ingest(
        ShareGPTSource(tmp_path / "kto.jsonl"), lake, "kto", IngestSettings(progress=False)
    )
    assert report.new_samples == 4 and not report.rejected, report.summary()

    kto = make("llava", objective="kto")
    dm = LanceDataModule(str(tmp_path / "lake"), val_fraction=0.0, test_fraction=0.0)
    dm.set_collator(kto.make_collator())
    batch = kto.make_collator()(dm.dataset("train").__getitems__(list(range(4))))
    by_answer = {supervised_text(kto, batch, i).strip(): bool(batch["feedback"][i])
                 for i in range(4)}  # fmt: skip
    for i in range(4):
        said = names[i] if i % 2 == 0 else names[(i + 2) % 4]
        (text,) = [t for t in by_answer if t.startswith(f"It is {said}.")]
        assert by_answer[text] == (i % 2 == 0)
    sft = LanceDataModule(str(tmp_path / "lake"), val_fraction=0.0, test_fraction=0.0)
    sft.set_collator(make("llava").make_collator())
    assert sft.sizes()["train"] == 2
