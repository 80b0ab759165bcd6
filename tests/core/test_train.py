"""core.train end to end with a tiny real module: run dir, events, summary, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.run import read_events
from core.train import train

REPO = Path(__file__).resolve().parents[2]
FAST = ("trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")


def _ckpt_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]  # weights_only: our checkpoints load safely


def test_short_fit_writes_the_run_directory(compose, tmp_path: Path) -> None:
    cfg = compose(
        "model=probe", "run_id=r1", "trainer.max_epochs=2", "data.batch_size=8",
        "events_every_n_steps=1", "checkpoint.every_n_steps=2", "checkpoint.monitor=val/acc",
        "logger=csv", *FAST,
    )  # fmt: skip
    summary = train(cfg)
    run = tmp_path / "runs" / "r1"
    assert summary["status"] == "finished" and summary["step"] > 0
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert "run_id: r1" in (run / "config.yaml").read_text()
    events = read_events(run / "events.jsonl")
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert statuses == ["started", "finished"]
    train_ev = [e for e in events if e["type"] == "train"]
    assert [e["step"] for e in train_ev] == list(range(1, summary["step"] + 1))
    first = train_ev[0]
    for key in ("t", "epoch", "train/loss", "lr", "samples_per_s", "cpu_mem_mb", "gpu_mem_mb"):
        assert key in first
    assert first["lr"] == pytest.approx(0.5)
    assert len([e for e in events if e["type"] == "val"]) == 2
    assert "test/acc" in next(e for e in events if e["type"] == "test")
    assert events[-1]["type"] == "summary"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert summary["best"]["metric"] == "val/acc" and summary["test"]["test/acc"] >= 0
    assert (run / "csv" / "metrics.csv").is_file()
    with pytest.raises(Exception, match="already exists"):
        train(compose("model=probe", "run_id=r1"))


@pytest.mark.parametrize("how", ["interrupt", "sigterm"])
def test_resume_continues_where_it_stopped(compose, tmp_path: Path, how: str) -> None:
    common = (
        "model=probe", "data.batch_size=4", "trainer.max_steps=14", "trainer.max_epochs=-1",
        "checkpoint.every_n_steps=3", "trainer.num_sanity_val_steps=0", "test_after_fit=false",
        *FAST,
    )  # fmt: skip

    def rec(name: str) -> tuple[str, str]:
        path = tmp_path / name
        return (
            "+callbacks.rec._target_=tests.core.probe.BatchRecorder",
            f"+callbacks.rec.path={path}",
        )

    ref = train(compose(*common, "run_id=ref", *rec("ref.jsonl")))
    assert ref["status"] == "finished" and ref["step"] == 14
    stop = ("+callbacks.stop._target_=tests.core.probe.StopAt", "+callbacks.stop.step=7")
    cut = train(
        compose(*common, "run_id=cut", *rec("cut.jsonl"), *stop, f"+callbacks.stop.how={how}")
    )
    assert cut["status"] == "interrupted"
    resumed = train(compose(*common, "run_id=cut", "resume=true", *rec("resumed.jsonl")))
    assert resumed["status"] == "finished" and resumed["step"] == 14

    def rows(name: str) -> list[dict]:
        return [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]

    reference = {r["step"]: r for r in rows("ref.jsonl")}
    after = rows("resumed.jsonl")
    # Ctrl-C: back to the periodic checkpoint at step 6; SIGTERM: saved at step 7
    assert after[0]["step"] == (8 if how == "sigterm" else 7)
    assert len({len(reference)}) == 1 and after[-1]["step"] == 14
    for r in after:  # same batches (crossing an epoch boundary) and same losses
        assert r["ids"] == reference[r["step"]]["ids"]
        assert r["loss"] == pytest.approx(reference[r["step"]]["loss"], rel=1e-5)
    a = _ckpt_weights(tmp_path / "runs/ref/checkpoints/last.ckpt")
    b = _ckpt_weights(tmp_path / "runs/cut/checkpoints/last.ckpt")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    events = read_events(tmp_path / "runs/cut/events.jsonl")
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert statuses == ["started", "interrupted", "started", "finished"]


def test_resume_newest_run_without_id(compose, tmp_path: Path) -> None:
    from lake.errors import ConfigError

    with pytest.raises(ConfigError, match="no run"):
        train(compose("model=probe", "resume=true"))


@pytest.mark.parametrize("preset", ["fast_dev_run", "overfit_batches"])
def test_debug_presets_train(compose, preset: str) -> None:
    extra = ("trainer.max_epochs=20",) if preset == "overfit_batches" else ()
    summary = train(compose("model=probe", f"+debug={preset}", *extra, *FAST))
    assert summary["status"] == "finished"


def test_a_run_that_never_started_leaves_no_run_folder(compose, tmp_path: Path) -> None:
    # the error is raised; the run never reached fit, so neither it nor runs/ is left
    with pytest.raises(Exception, match=r"data\.where"):
        train(compose("model=probe", "run_id=bad", "data.where='no_such_column = 1'"))
    assert not (tmp_path / "runs").exists()
    missing = tmp_path / "no" / "lake"
    with pytest.raises(Exception, match="does not exist in lake"):
        train(compose("model=probe", "run_id=gone", lake=missing))
    assert not (tmp_path / "runs").exists() and not missing.exists()
    # another run's folder is never touched
    (tmp_path / "runs" / "other").mkdir(parents=True)
    with pytest.raises(Exception, match=r"data\.where"):
        train(compose("model=probe", "run_id=bad", "data.where='no_such_column = 1'"))
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["other"]


CLIP_READY = all(
    (REPO / p).exists()
    for p in (
        "core/modules/clip_module.py",
        "conf/model/clip_tiny.yaml",
        "conf/experiment/clip_tiny.yaml",
    )
)


@pytest.mark.slow
@pytest.mark.skipif(not CLIP_READY, reason="the CLIP module and its configs are not there yet")
def test_clip_tiny_end_to_end(compose) -> None:
    # data.datasets=null: the experiment names the demo's datasets, this lake has others
    cfg = compose(
        "+experiment=clip_tiny", "+debug=limit_batches", "data.batch_size=8",
        "data.datasets=null", *FAST,
    )  # fmt: skip
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["step"] > 0
    run_dir = Path(cfg.runs_dir) / summary["run_id"]
    assert (run_dir / "events.jsonl").stat().st_size > 0
    # the exported weights load with open_clip itself, outside lakeloom
    import open_clip
    import torch

    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{run_dir / 'open_clip'}")
    size = model.visual.image_size
    side = size[0] if isinstance(size, tuple) else size
    with torch.no_grad():
        emb = model.encode_image(torch.zeros(1, 3, side, side))
    assert emb.shape[0] == 1 and torch.isfinite(emb).all()


def test_a_pair_built_only_from_the_contract_trains(compose, tmp_path: Path) -> None:
    # core.train knows neither class: the data module takes its collators from the
    # module, the module its label names from the data module, and main returns the
    # monitored metric (what a --multirun sweeper optimises)
    from core.train import main
    from lake.job import JobResult

    cfg = compose(
        "model=contract", "data=contract", "run_id=pair", "trainer.max_epochs=2",
        "events_every_n_steps=1", "checkpoint.monitor=val/acc", *FAST,
    )  # fmt: skip
    result = main.__wrapped__(cfg)
    run = tmp_path / "runs" / "pair"
    summary = json.loads((run / "summary.json").read_text())
    assert isinstance(result, JobResult) and result.code == 0
    assert summary["status"] == "finished" and summary["step"] == 8
    assert result.value == summary["best"]["value"] and summary["best"]["metric"] == "val/acc"
    assert summary["data"] == {"train": 32, "val": 16, "test": 16}
    assert summary["test"]["test/acc"] >= 0 and summary["exported"] is True
    assert json.loads((run / "contract.json").read_text()) == {"labels": ["neg", "pos"], "out": 2}
    events = read_events(run / "events.jsonl")
    assert next(e for e in events if e["type"] == "contract_labels")["names"] == ["neg", "pos"]
    assert next(e for e in events if e["type"] == "contract_data")["n"] == 32


def test_main_returns_no_metric_without_a_monitor(compose) -> None:
    from core.train import main

    result = main.__wrapped__(compose("model=contract", "data=contract", *FAST))
    assert result.code == 0 and result.value is None


def test_a_model_outside_the_contract_is_refused_in_one_line(compose, tmp_path: Path) -> None:
    from lake.errors import ConfigError

    # torch.nn.Identity takes (and ignores) the probe's keys: it instantiates, it is no module
    with pytest.raises(ConfigError, match=r"model\._target_ torch\.nn\.Identity is not a "):
        train(compose("model=probe", "model._target_=torch.nn.Identity", "run_id=alien"))
    assert not (tmp_path / "runs").exists()


def test_train_does_not_broker_between_module_and_data_module() -> None:
    # the wiring is the contract of core.modules.base; core.train must not grow it back
    source = (REPO / "core" / "train.py").read_text(encoding="utf-8")
    for needle in ("inspect.signature", "hasattr(", "getattr(", "set_collator",
                   "set_label_names", "make_collator", "label_names"):  # fmt: skip
        assert needle not in source, f"core/train.py brokers again: {needle}"
