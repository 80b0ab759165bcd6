"""Fixtures of the lake tests that run Ray: one private loopback Ray per module and a guard
that fails a hung Ray job (SCALE.md G1: a stage that cannot place its tasks waits for
ever); a module opts in with ``pytest.mark.usefixtures("ray_alarm")``."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def ray_env() -> Iterator[Any]:
    """One private single-node Ray (2 CPUs) for the module, shut down and removed after;
    its workers import ``tests`` and ``plugins`` from this checkout."""
    from lake.ray_runtime import ray_session

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
            "PYTHONPATH")])))  # fmt: skip
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        with ray_session(num_cpus=2) as ray:  # a short temp path: Ray's sockets live there
            ray.data.DataContext.get_current().enable_progress_bars = False
            yield ray


@pytest.fixture
def ray_alarm() -> Iterator[None]:
    """Fail a test that runs past TIMEOUT_S instead of hanging."""

    def hung(*_: Any) -> None:
        raise TimeoutError(f"Ray test ran past {TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
