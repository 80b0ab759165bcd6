"""Composition of conf/train.yaml: groups, experiments, debug presets, trainers, loggers."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_top_level_keys(compose) -> None:
    cfg = compose("model=probe")
    assert cfg.data._target_ == "core.data.lance_data.LanceDataModule"
    assert cfg.trainer._target_ == "lightning.Trainer"
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.seed == 0 and cfg.resume is False and cfg.run_id is None
    assert cfg.experiment_name == "default"
    assert not cfg.logger
    assert "experiment" not in OmegaConf.to_container(cfg)


@pytest.mark.skipif(
    not (REPO / "conf/model/clip_tiny.yaml").exists(),
    reason="conf/model/clip_tiny.yaml not there yet",
)
def test_default_model_is_clip_tiny(compose) -> None:
    cfg = compose()
    assert cfg.model._target_.endswith("ClipModule") or "clip" in cfg.model._target_.lower()


def test_experiment_appends_and_command_line_model_wins(compose) -> None:
    cfg = compose("model=probe", "+experiment=probe_exp")
    assert cfg.experiment_name == "probe_exp"
    assert cfg.trainer.max_steps == 7 and cfg.data.batch_size == 5
    assert cfg.model.size == 8
    cfg = compose("+experiment=probe_exp", "model=probe_wide")
    assert cfg.model.size == 12  # the command line beats the experiment's override
    assert cfg.trainer.max_steps == 7


@pytest.mark.parametrize(
    ("preset", "key", "value"),
    [
        ("fast_dev_run", "fast_dev_run", True),
        ("overfit_batches", "overfit_batches", 1),
        ("limit_batches", "limit_train_batches", 4),
    ],
)
def test_debug_presets(compose, preset: str, key: str, value: object) -> None:
    cfg = compose("model=probe", f"+debug={preset}")
    assert cfg.trainer[key] == value


def test_trainer_configs(compose) -> None:
    assert compose("model=probe", "trainer=gpu").trainer.precision == "bf16-mixed"
    assert compose("model=probe", "trainer=ddp").trainer.strategy == "ddp"
    fsdp = compose("model=probe", "trainer=fsdp").trainer.strategy
    assert fsdp._target_.endswith("FSDPStrategy")


def test_logger_configs_instantiate(compose, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    cfg = compose("model=probe", "logger=csv", f"run_dir={tmp_path}")
    (logger,) = [instantiate(node) for node in cfg.logger.values()]
    assert Path(logger.save_dir) == tmp_path
    for name in (
        "tensorboard",
        "wandb",
        "mlflow",
    ):  # composed, not instantiated (optional packages)
        cfg = compose("model=probe", f"logger={name}")
        assert "_target_" in next(iter(cfg.logger.values()))


def test_cli_lists_train() -> None:
    from lake.cli import JOBS

    assert JOBS["train"][0] == "core.train"
