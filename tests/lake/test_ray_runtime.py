"""lake.ray_runtime: the private local Ray listens on 127.0.0.1 only, and a process can
open several sessions one after another (tests and benches do)."""

from __future__ import annotations

import psutil
import pytest

from lake.ray_runtime import ray_session
from tests.conftest import non_loopback_listeners

pytestmark = pytest.mark.slow


def test_local_sessions_bind_loopback_only_and_can_follow_each_other() -> None:
    """Every socket the private Ray opens is on loopback; a second session in the same
    process starts (Ray caches the auth token per process)."""
    for _ in range(2):
        with ray_session(num_cpus=1) as ray:

            @ray.remote
            def double(x: int) -> int:
                return 2 * x

            assert ray.get([double.remote(i) for i in range(3)]) == [0, 2, 4]
            names = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
            assert any("raylet" in n for n in names)  # the session's daemons are ours
            assert non_loopback_listeners() == []
        assert not ray.is_initialized()
