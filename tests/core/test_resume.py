"""Exact resume: a run killed anywhere and resumed equals an uninterrupted run.

Real runs of the probe model (tests/core/probe.py) over the small test lake: per-step
train losses come from the events log, final weights from ``last.ckpt``; both must be
identical bit for bit. Also: each epoch draws its own order, a corrupt ``last.ckpt``
falls back to the newest intact checkpoint, ``ckpt=`` picks one, and ``resume=true``
without ``run_id`` stays within the experiment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.checkpoint import load_lightning_checkpoint
from core.run import read_events
from core.train import train
from tests.core.conftest import TEST_CONF

REPO = Path(__file__).resolve().parents[2]
FAST = ("trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")
#: three epochs of 10 batches (the lake's train split: 37 samples); checkpoints every 4 steps
COMMON = (
    "model=probe", "data.batch_size=4", "checkpoint.every_n_steps=4", "events_every_n_steps=1",
    "trainer.num_sanity_val_steps=0", "test_after_fit=false", *FAST,
)  # fmt: skip
EPOCHS = ("trainer.max_epochs=3",)
STEPS = ("trainer.max_steps=30", "trainer.max_epochs=-1")  # iteration-based: Lightning
# restores the loader's position even at an epoch's end


@pytest.fixture(scope="module")
def lake_dir(lake_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test lake with every split written: 37 train samples (10 batches of 4), chosen
    by source file, so the step arithmetic below does not hang on the hash split of ids."""
    import shutil

    import pyarrow as pa

    from lake.schema import SAMPLES
    from lake.store import Lake

    copy = tmp_path_factory.mktemp("resume_lake") / "lake"
    shutil.copytree(lake_dir, copy)
    lake = Lake(copy)
    rows = lake.dataset(SAMPLES).to_table(filter="split IS NULL").sort_by("source_uri")
    rows = rows.to_pylist()
    for i, r in enumerate(rows):
        r["split"] = "train" if i < 37 else "val"
    lake.upsert(SAMPLES, pa.Table.from_pylist(rows, lake.dataset(SAMPLES).schema))
    return copy


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_lightning_checkpoint(path)["state_dict"]


def _losses(run: Path) -> dict[int, float]:
    """Per-step train loss; a step replayed after a resume keeps its latest value."""
    return {e["step"]: e["train/loss"] for e in read_events(run / "events.jsonl")
            if e["type"] == "train"}  # fmt: skip


def _recorded(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _rec(path: Path) -> tuple[str, str]:
    return ("+callbacks.rec._target_=tests.core.probe.BatchRecorder", f"+callbacks.rec.path={path}")


def _assert_same_run(tmp_path: Path, ref: str, other: str) -> None:
    """Same per-step losses (exact floats), same batches, same final weights."""
    a, b = _losses(tmp_path / "runs" / ref), _losses(tmp_path / "runs" / other)
    assert sorted(a) == list(range(1, 31)) and a == b
    wa = _weights(tmp_path / "runs" / ref / "checkpoints/last.ckpt")
    wb = _weights(tmp_path / "runs" / other / "checkpoints/last.ckpt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = _recorded(tmp_path / f"{ref}.jsonl")
    epochs = [[i for r in rows[k * 10 : (k + 1) * 10] for i in r["ids"]] for k in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # the reference's epochs: each its own order
    reference = {r["step"]: r["ids"] for r in rows}
    for r in _recorded(tmp_path / f"{other}.jsonl"):  # every attempt saw the same batches
        assert r["ids"] == reference[r["step"]]


def _kill(lake_dir: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m core.train`` in a subprocess that SIGKILLs itself (KillAt)."""
    args = [
        sys.executable, "-m", "core.train", f"hydra.searchpath=[file://{TEST_CONF}]",
        f"lake.uri={lake_dir}", f"runs_dir={tmp_path / 'runs'}", *overrides,
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_each_epoch_draws_its_own_order(compose, tmp_path: Path) -> None:
    summary = train(compose(*COMMON, *EPOCHS, "run_id=e", *_rec(tmp_path / "e.jsonl")))
    assert summary["status"] == "finished" and summary["step"] == 30
    rows = _recorded(tmp_path / "e.jsonl")
    epochs = [[i for r in rows[k * 10 : (k + 1) * 10] for i in r["ids"]] for k in range(3)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(epochs[2])  # each sample once
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]


@pytest.mark.parametrize(
    ("loading", "kill_at"),
    [  # last.ckpt: 11 -> the end of epoch 0 (step 10); 15 -> mid epoch 1 (step 12)
        pytest.param(("data.read_ahead=true", *STEPS), 11, id="read_ahead-epoch_end"),
        pytest.param(("data.read_ahead=false", *EPOCHS), 15, id="no_read_ahead-mid_epoch"),
        pytest.param(
            ("data.num_workers=1", *EPOCHS), 15, id="workers-mid_epoch", marks=pytest.mark.slow
        ),  # spawned workers: ~50 s
    ],
)
def test_sigkill_resumes_bit_for_bit(
    compose, lake_dir: Path, tmp_path: Path, loading: tuple[str, ...], kill_at: int
) -> None:
    ref = train(compose(*COMMON, *loading, "run_id=ref", *_rec(tmp_path / "ref.jsonl")))
    assert ref["status"] == "finished" and ref["step"] == 30
    crashed = _kill(lake_dir, tmp_path, *COMMON, *loading, "run_id=cut",
                    *_rec(tmp_path / "cut.jsonl"),
                    "+callbacks.kill._target_=tests.core.probe.KillAt",
                    f"+callbacks.kill.step={kill_at}")  # fmt: skip
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    assert max(_losses(tmp_path / "runs/cut")) == kill_at
    resumed = train(compose(*COMMON, *loading, "run_id=cut", "resume=true",
                            *_rec(tmp_path / "cut.jsonl")))  # fmt: skip
    assert resumed["status"] == "finished" and resumed["step"] == 30
    assert resumed["resumed_from"].endswith("last.ckpt")
    _assert_same_run(tmp_path, "ref", "cut")


@pytest.mark.parametrize("mode", [EPOCHS, STEPS], ids=["max_epochs", "max_steps"])
def test_sigterm_twice_resumes_bit_for_bit(compose, tmp_path: Path, mode: tuple[str, ...]) -> None:
    """SIGTERM mid-epoch (step 5), resume, SIGTERM at an epoch's last batch (step 10),
    resume: each stop saves where it is and the run ends as an uninterrupted one."""
    assert train(compose(*COMMON, *mode, "run_id=ref", *_rec(tmp_path / "ref.jsonl")))
    for stop_at in (5, 10):
        stop = ("+callbacks.stop._target_=tests.core.probe.StopAt",
                f"+callbacks.stop.step={stop_at}", "+callbacks.stop.how=sigterm")  # fmt: skip
        again = ("resume=true",) if stop_at == 10 else ()
        cut = train(compose(*COMMON, *mode, "run_id=cut", *again, *stop,
                            *_rec(tmp_path / "cut.jsonl")))  # fmt: skip
        assert cut["status"] == "interrupted"
        assert max(_losses(tmp_path / "runs/cut")) == stop_at
    resumed = train(compose(*COMMON, *mode, "run_id=cut", "resume=true",
                            *_rec(tmp_path / "cut.jsonl")))  # fmt: skip
    assert resumed["status"] == "finished" and resumed["step"] == 30
    _assert_same_run(tmp_path, "ref", "cut")


def _interrupted_run(compose, tmp_path: Path, run_id: str = "cut", *extra: str) -> Path:
    """A run stopped by Ctrl-C after step 9: step-4, step-8 and last.ckpt (step 8)."""
    stop = ("+callbacks.stop._target_=tests.core.probe.StopAt", "+callbacks.stop.step=9")
    summary = train(compose(*COMMON, *STEPS, f"run_id={run_id}", *stop, *extra))
    assert summary["status"] == "interrupted"
    ckpts = tmp_path / "runs" / run_id / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "last.ckpt",
        "step-0000004.ckpt",
        "step-0000008.ckpt",
    ]
    return ckpts


def _started(run: Path) -> list[dict]:
    return [e for e in read_events(run / "events.jsonl") if e.get("status") == "started"]


def test_corrupt_last_ckpt_falls_back_to_newest_intact(
    compose, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpts = _interrupted_run(compose, tmp_path)
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])  # a write cut short
    (ckpts / "step-0000008.ckpt").write_bytes(b"")  # and an empty one
    with caplog.at_level("WARNING", logger="lakeloom.train"):
        resumed = train(compose(*COMMON, *STEPS, "run_id=cut", "resume=true"))
    assert resumed["status"] == "finished" and resumed["step"] == 30
    assert resumed["resumed_from"] == str(ckpts / "step-0000004.ckpt")
    warning = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert "step-0000004.ckpt" in warning and "last.ckpt" in warning
    assert "step-0000008.ckpt" in warning
    assert _started(tmp_path / "runs/cut")[-1]["resumed_from"].endswith("step-0000004.ckpt")
    # the first step trained after the resume is step 5
    steps = [e["step"] for e in read_events(tmp_path / "runs/cut/events.jsonl")
             if e["type"] == "train"]  # fmt: skip
    assert steps == [*range(1, 10), *range(5, 31)]


def test_ckpt_picks_the_checkpoint(compose, tmp_path: Path) -> None:
    from lake.errors import ConfigError

    ckpts = _interrupted_run(compose, tmp_path)
    with pytest.raises(ConfigError, match=r"step-0000007\.ckpt does not exist.*step-0000004"):
        train(compose(*COMMON, *STEPS, "run_id=cut", "resume=true", "ckpt=step-7"))
    (ckpts / "step-0000008.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"ckpt=step-8: .*cannot load checkpoint"):
        train(compose(*COMMON, *STEPS, "run_id=cut", "resume=true", "ckpt=step-8"))
    with pytest.raises(ConfigError, match="add resume=true"):
        train(compose(*COMMON, *STEPS, "run_id=new", "ckpt=step-4"))
    resumed = train(compose(*COMMON, *STEPS, "run_id=cut", "resume=true", "ckpt=step-4",
                            "trainer.max_steps=6"))  # fmt: skip
    assert resumed["status"] == "finished" and resumed["step"] == 6
    assert resumed["resumed_from"] == str(ckpts / "step-0000004.ckpt")
    path = f"ckpt={ckpts / 'step-0000004.ckpt'}"
    by_path = train(compose(*COMMON, *STEPS, "run_id=cut", "resume=true", path,
                            "trainer.max_steps=5"))  # fmt: skip
    assert by_path["step"] == 5 and by_path["resumed_from"].endswith("step-0000004.ckpt")


def test_resume_without_run_id_stays_in_the_experiment(compose, tmp_path: Path) -> None:
    from lake.errors import ConfigError

    _interrupted_run(compose, tmp_path, "mine")
    # another experiment's run, newer and finished
    other = train(compose("+experiment=probe_exp", "run_id=other", *FAST))
    assert other["status"] == "finished" and other["experiment"] == "probe_exp"
    resumed = train(compose(*COMMON, *STEPS, "resume=true"))
    assert resumed["run_id"] == "mine" and resumed["status"] == "finished"
    with pytest.raises(ConfigError, match=r"no run of experiment 'nothing_yet'.*2 run"):
        train(compose(*COMMON, "experiment_name=nothing_yet", "resume=true"))


def test_failed_resume_keeps_a_finished_summary(compose, tmp_path: Path) -> None:
    done = train(compose(*COMMON, *STEPS, "run_id=done", "trainer.max_steps=4"))
    assert done["status"] == "finished"
    before = (tmp_path / "runs/done/summary.json").read_text()
    with pytest.raises(Exception, match=r"data\.where"):
        train(compose(*COMMON, *STEPS, "run_id=done", "resume=true",
                      "data.where='no_such_column = 1'"))  # fmt: skip
    assert (tmp_path / "runs/done/summary.json").read_text() == before
    statuses = [e["status"] for e in read_events(tmp_path / "runs/done/events.jsonl")
                if e["type"] == "status"]  # fmt: skip
    assert statuses == ["started", "finished", "started", "failed"]  # the attempt is logged
