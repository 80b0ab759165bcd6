"""lake.weights_origin: each origin kind from the real experiment configs, a run's recorded
field vs its derived config, the owner ids of embeddings, and the readers' lines (check
report, query header)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lake.check import format_report, markdown, model_weights
from lake.query import query_header
from lake.weights_origin import (
    RANDOM,
    describe,
    describe_owner,
    owner_run,
    run_weights,
    weights_origin,
)


def composed(runs: Path, *overrides: str) -> dict[str, Any]:
    """``conf/train.yaml`` composed with ``overrides`` and resolved, as a run saves it."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(version_base="1.3", config_module="conf"):
        cfg = compose(config_name="train", overrides=[f"runs_dir={runs}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def save_run(runs: Path, name: str, cfg: dict[str, Any], summary: dict | None = None) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def origins(w: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {name: (p["origin"], p["training"]) for name, p in w["parts"].items()}


def test_tiny_clip_is_random_init_and_trained_only_on_its_datasets(tmp_path: Path) -> None:
    w = weights_origin(composed(tmp_path, "+experiment=clip_tiny"), tmp_path)
    assert origins(w) == {"image tower": (RANDOM, "trained"), "text tower": (RANDOM, "trained")}
    assert w["random_init"] == ["image tower", "text tower"] and w["lake"] == "data/lake"
    line = describe(w)
    assert "random-init: image tower, text tower, learnt only from this data" in line
    assert "no figure is a pretrained model's quality" in line


def test_minilm_clip_text_tower_is_pretrained_and_frozen(tmp_path: Path) -> None:
    w = weights_origin(composed(tmp_path, "+experiment=clip_minilm_locked"), tmp_path)
    assert origins(w) == {
        "image tower": (RANDOM, "trained"),
        "text tower": ("pretrained: all-minilm-l6-v2", "frozen"),
    }
    assert w["datasets"] == ["shapes", "shapes_llava"] and w["random_init"] == ["image tower"]


def test_open_clip_tag_is_pretrained_for_both_towers(tmp_path: Path) -> None:
    w = weights_origin(composed(tmp_path, "+experiment=clip_finetune", "model.lock_image=true"))
    assert origins(w) == {
        "image tower": ("pretrained: ViT-B-32/openai", "frozen"),
        "text tower": ("pretrained: ViT-B-32/openai", "trained"),
    }
    assert w["random_init"] == [] and "random-init" not in describe(w)


def test_vlm_tiny_hub_id_and_smollm2(tmp_path: Path) -> None:
    tiny = weights_origin(composed(tmp_path, "model=llava_tiny"))
    assert set(tiny["random_init"]) == {"vision tower", "projector", "language model"}
    hub = weights_origin(composed(tmp_path, "+experiment=llava_lora"))
    assert origins(hub)["language model"] == ("pretrained: llava-hf/llava-1.5-7b-hf", "LoRA")
    assert origins(hub)["vision tower"] == ("pretrained: llava-hf/llava-1.5-7b-hf", "frozen")
    align = weights_origin(
        composed(tmp_path, "+experiment=llava_smollm2_align", "model.freeze.vision=false")
    )
    assert origins(align) == {
        "vision tower": (RANDOM, "trained"),
        "projector": (RANDOM, "trained"),
        "language model": ("pretrained: smollm2-135m-instruct", "frozen"),
    }


def test_init_from_a_run_keeps_what_that_run_started_from(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    stage1 = save_run(
        runs,
        "align",
        composed(runs, "+experiment=llava_smollm2_align", "model.freeze.vision=false"),
    )
    cfg = composed(runs, "+experiment=llava_smollm2_lora", f"model.init_from={stage1}")
    w = weights_origin(cfg, runs)
    parts = w["parts"]
    # stage 1 trained the tower and projector (random-init there); it kept SmolLM2 frozen
    assert parts["vision tower"] == {
        "origin": "from run align",
        "base": RANDOM,
        "training": "frozen",
    }
    assert parts["projector"]["origin"] == "from run align" and parts["projector"]["base"] == RANDOM
    assert parts["language model"] == {
        "origin": "pretrained: smollm2-135m-instruct",
        "training": "LoRA",
    }
    assert w["init_from"] == "align" and w["init_datasets"] == ["shapes_llava"]
    assert w["random_init"] == ["vision tower", "projector"]
    line = describe(w)
    assert "vision tower from run align (random-init there), frozen" in line
    assert "(+ run align: shapes_llava)" in line
    # a checkpoint inside the run names the same run; a missing one says unknown
    ckpt = weights_origin(
        {**cfg, "model": {**cfg["model"], "init_from": f"{stage1}/checkpoints/last.ckpt"}}, runs
    )
    assert ckpt["parts"] == parts
    gone = weights_origin({**cfg, "model": {**cfg["model"], "init_from": "nowhere"}}, runs)
    assert gone["parts"]["projector"] == {
        "origin": "from run nowhere",
        "base": "unknown",
        "training": "trained",
    }


def test_apotheon_smollm2(tmp_path: Path) -> None:
    w = weights_origin(composed(tmp_path, "+experiment=apotheon_smollm2"))
    assert origins(w) == {
        "vision tower": (RANDOM, "trained"),
        "audio tower": (RANDOM, "trained"),
        "projector + fusion": (RANDOM, "trained"),
        "language model": ("pretrained: smollm2-135m-instruct", "LoRA"),
    }
    assert w["where"] and "where dataset != 'shapes_llava'" in describe(w)


def test_unknown_model_and_unreadable_run(tmp_path: Path) -> None:
    w = weights_origin({"model": {"_target_": "my.Module"}})
    assert w["model"] == "my.Module" and w["parts"] == {} and describe(w) == "unknown"
    assert run_weights(tmp_path / "none") is None and describe(None) == "unknown"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("model: [unclosed")
    assert run_weights(tmp_path / "bad") is None


def test_recorded_field_wins_over_the_config(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cfg = composed(runs, "+experiment=clip_tiny")
    recorded = {
        "model": "clip",
        "parts": {"image tower": {"origin": "pretrained: x", "training": "frozen"}},
    }
    save_run(runs, "new", cfg, {"status": "finished", "weights": recorded})
    assert run_weights(runs / "new") == recorded
    save_run(runs, "old", cfg, {"status": "finished"})  # recorded before the field existed
    assert run_weights(runs / "old") == weights_origin(cfg, runs)


def test_owner_ids_and_the_readers_lines(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    save_run(runs, "demo-clip", composed(runs, "+experiment=clip_minilm_locked"))
    owner = "open_clip:tiny-clip-minilm:run:demo-clip:0123456789ab"
    assert owner_run(owner) == "demo-clip" and owner_run("open_clip:ViT-B-32:tag:openai:ab") is None
    line = describe_owner(owner, runs)
    assert line.startswith("image tower random-init, trained; text tower pretrained: all-minilm")
    assert describe_owner("open_clip:tiny-clip:scratch:0123", runs) == "random-init, untrained"
    assert describe_owner("open_clip:tiny-clip:run:gone:0123", runs) == "unknown"
    assert describe_owner("open_clip:ViT-B-32:tag:openai:ab", runs) is None
    # lakeloom query's header
    assert query_header(owner, str(runs)) == f"model: {owner}\nweights: {line}"
    # lakeloom check's reports (checks.md, console)
    report = {
        "lake": "data/lake", "where": None, "run_id": "check-1", "selected": 4,
        "checks": {"outliers": {"version": "1", "scored": 4, "flagged": 1, "flagged_frac": 0.25,
                                "models": {"image": [owner]}}},
    }  # fmt: skip
    report["weights"] = model_weights(report, runs)
    assert report["weights"] == {owner: line}
    assert f"- `{owner}`: {line}" in markdown(None, report, {}, 0)
    assert f"model {owner}: {line}" in format_report(report)
