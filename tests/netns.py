"""Run a bash script in a private, loopback-only network and PID namespace.

The multi-node tests (a 2-node Ray cluster, 2 Lightning nodes) start servers that would
otherwise bind every interface. Under ``unshare --net --pid --fork --mount-proc`` the
script sees only ``lo`` (brought up first), so nothing it starts can reach or be reached
from another address, and its teardown (``ray stop --force``, killing PID 1) cannot touch
any process outside the namespace. ``--kill-child`` ends the namespace's whole process
tree when ``unshare`` itself is killed (the timeout below).

Needs root or unprivileged user namespaces; where ``unshare`` is not permitted the
calling test is skipped with the reason (CI runs as root, so there it runs).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

UNSHARE = ("unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child")
#: environment every namespaced script gets (Ray's usage statistics off, no cloud lookups)
SAFE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass(frozen=True)
class NetnsResult:
    """The exit status and the combined stdout/stderr of a namespaced script."""

    returncode: int
    output: str

    def tail(self, chars: int = 6000) -> str:
        """The last ``chars`` characters of the output (for assertion messages)."""
        return self.output[-chars:]


@functools.cache
def unshare_problem() -> str | None:
    """Why a loopback-only namespace cannot be made here (None: it can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "the unshare and ip commands are not installed"
    try:
        done = subprocess.run(
            [*UNSHARE, "ip", "link", "set", "lo", "up"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if done.returncode != 0:
        return (
            f"unshare is not permitted here (needs root or user namespaces): {done.stderr.strip()}"
        )
    return None


def require_netns() -> None:
    """Skip the calling test, with the reason, where ``unshare`` is not permitted."""
    problem = unshare_problem()
    if problem is not None:
        pytest.skip(problem)


def run_in_netns(
    script: str,
    *,
    timeout: float,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> NetnsResult:
    """Run ``script`` with bash inside a fresh loopback-only net + PID namespace.

    ``lo`` is brought up first; ``env`` is added to this process's environment (plus
    :data:`SAFE_ENV`). After ``timeout`` seconds the namespace's whole process tree is
    killed and an ``AssertionError`` carries the output so far. Skips the calling test
    where namespaces are not permitted (:func:`require_netns`).
    """
    require_netns()
    full_env = {**os.environ, **SAFE_ENV, **(env or {})}
    body = f"ip link set lo up\n{script}"
    proc = subprocess.Popen(
        [*UNSHARE, "bash", "-c", body],
        cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # unshare's child is PID 1 of the namespace: killing unshare (--kill-child) or
        # its session ends every process started inside
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(
            f"namespaced script timed out after {timeout:.0f} s; output:\n{out[-6000:]}"
        ) from None
    return NetnsResult(proc.returncode, out)
