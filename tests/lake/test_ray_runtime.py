"""lake.ray_runtime: the private local Ray listens on 127.0.0.1 only, and a process can
open several sessions one after another (tests and benches do)."""

from __future__ import annotations

import ipaddress
import os

import psutil
import pytest

from lake.ray_runtime import ray_session

pytestmark = pytest.mark.slow


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of ``pids``."""
    out = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            out.append((conn.pid, conn.laddr.ip, conn.laddr.port))
    return out


def test_local_sessions_bind_loopback_only_and_can_follow_each_other() -> None:
    """Every socket the private Ray opens is on loopback; a second session in the same
    process starts (Ray caches the auth token per process)."""
    for _ in range(2):
        with ray_session(num_cpus=1) as ray:

            @ray.remote
            def double(x: int) -> int:
                return 2 * x

            assert ray.get([double.remote(i) for i in range(3)]) == [0, 2, 4]
            ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
            sockets = _listening(ours)
            assert len(sockets) >= 3  # gcs, raylet, workers
            for pid, address, port in sockets:
                ip = ipaddress.ip_address(address)
                if ip.version == 6 and ip.ipv4_mapped:
                    ip = ip.ipv4_mapped
                assert ip.is_loopback, f"pid {pid} listens on {address}:{port}"
        assert not ray.is_initialized()
