"""The run report and the VLM comparison say where each run's weights come from."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from core.compare_runs import compare
from core.run_report import report


def _run(runs: Path, name: str, *overrides: str, weights: dict | None = None) -> Path:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(version_base="1.3", config_module="conf"):
        cfg = compose(config_name="train", overrides=[f"runs_dir={runs}", *overrides])
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    (run / "events.jsonl").write_text("")
    summary = {"status": "finished", "last_val": {"val/exact_match": 0.0, "val/token_f1": 0.5}}
    if weights is not None:
        summary["weights"] = weights
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_report_and_compare_label_random_init_and_pretrained_parts(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    tiny = _run(runs, "tiny", "model=llava_tiny", "data.datasets=[shapes_llava]")
    smol = _run(runs, "smol", "+experiment=llava_smollm2_align")
    head = report(tiny).splitlines()[1]
    assert head.startswith("  weights: vision tower random-init, frozen; projector random-init")
    assert (
        "| data: shapes_llava in data/lake | random-init: vision tower, projector, language" in head
    )
    assert "no figure is a pretrained model's quality" in head
    assert "language model pretrained: smollm2-135m-instruct, frozen" in report(smol)
    for run, answer in ((tiny, "A red square."), (smol, "A red circle.")):
        sample = {"sample_id": "s1", "prediction": answer, "reference": "A red circle."}
        event = {"type": "generations", "split": "val", "step": 1, "samples": [sample]}
        (run / "events.jsonl").write_text(json.dumps(event) + "\n")
    text = compare([tiny, smol])  # run names shorter than "reference"
    lines = text.splitlines()
    at = lines.index("weights:")
    assert lines[at + 1].split()[0] == "tiny" and "random-init" in lines[at + 1]
    assert lines[at + 2].split()[0] == "smol" and "pretrained: smollm2" in lines[at + 2]
    answers = lines[lines.index("val answers (same samples):") + 1 :]
    assert answers == ["  reference  A red circle.", "  tiny       A red square.",
                       "  smol       A red circle."]  # fmt: skip


def test_report_of_a_run_recorded_with_the_field(tmp_path: Path) -> None:
    parts = {"language model": {"origin": "pretrained: some/hub-id", "training": "LoRA"}}
    run = _run(tmp_path, "r", "model=llava_tiny", weights={"parts": parts, "datasets": ["a"]})
    assert (
        report(run).splitlines()[1]
        == "  weights: language model pretrained: some/hub-id, LoRA | data: a"
    )
