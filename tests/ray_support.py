"""What the Ray tests share besides their fixtures (``ray_env``, ``ray_alarm`` in
tests/lake/conftest.py): the composed ``executor=ray`` config of a job."""

from __future__ import annotations

from typing import Any


def executor_config(job: str, *overrides: str) -> Any:
    """The composed ``executor=ray`` node of ``conf/<job>.yaml``."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base="1.3", config_module="conf"):
        cfg = compose(config_name=job, overrides=["executor=ray", *overrides])
    return cfg.executor
