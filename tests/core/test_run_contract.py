"""A run written by ``core.train`` is read through ``lake.runs`` by the TUI and the report.

Writer and readers share one contract (:mod:`lake.runs`): the folder holds only names
the contract knows, and the TUI's run list, its live tail and ``core.run_report`` all
tell the same story as the run's own summary.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from core.run_report import report
from core.train import train
from lake import runs
from lake.weights_origin import weights_origin
from tui.runs_data import EventTail, list_runs

FAST = ("trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")


def test_tui_and_report_read_a_run_core_wrote(compose, tmp_path: Path) -> None:
    cfg = compose(
        "model=probe", "run_id=contract", "trainer.max_epochs=2", "data.batch_size=8",
        "events_every_n_steps=1", "checkpoint.every_n_steps=2", "checkpoint.monitor=val/acc",
        "logger=none", *FAST,
    )  # fmt: skip
    summary = train(cfg)
    assert summary["status"] == runs.FINISHED
    run = runs.RunDir.of(cfg.runs_dir, "contract")

    # the writer used the contract's names, and only them
    known = {runs.CONFIG_FILE, runs.EVENTS_FILE, runs.SUMMARY_FILE, runs.CHECKPOINTS_DIR}
    assert {p.name for p in run.path.iterdir()} == known
    assert run.last_ckpt.is_file() and run.best_ckpt.is_file()
    assert run.step_checkpoints() and run.step_checkpoints()[0].parent == run.checkpoints
    assert runs.read_summary(run)["step"] == summary["step"]
    # where the weights come from, once, in the summary (the probe is no known model)
    weights = runs.read_summary(run)["weights"]
    assert weights == weights_origin(yaml.safe_load(run.config.read_text()), cfg.runs_dir)
    assert weights["model"] == cfg.model._target_ and weights["lake"] == cfg.lake.uri

    # the TUI's run list
    (info,) = list_runs(cfg.runs_dir)
    assert (info.run_id, info.status, info.step) == ("contract", runs.FINISHED, summary["step"])
    assert info.best == summary["best"] and info.error is None

    # the TUI's live tail of the same run folder
    tail = EventTail(runs.events_path(run.path))
    assert tail.poll() == len(runs.read_events(run.path)) and tail.corrupt == 0
    assert tail.status == runs.FINISHED and tail.step == summary["step"]
    steps, losses = tail.series("train/loss")
    assert len(steps) == summary["step"] and losses[0] == summary["train_loss"][0]
    assert tail.last[runs.EV_SUMMARY]["status"] == runs.FINISHED

    # the text report
    text = report(run.path)
    assert text.splitlines()[:2] == ["run contract", "  weights: unknown"]
    assert f"(step {summary['step']})" in text and "val/acc" in text
