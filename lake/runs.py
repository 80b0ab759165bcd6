"""Run status words and the liveness check of a run's process (torch-free, the one owner).

Lake jobs (the ``runs`` table) and training runs (``runs/<id>/``) record who runs them
when they start: :func:`owner` gives the pid, the host and the process's start time
(from ``/proc/<pid>/stat``, so a pid reused by another process is not mistaken for the
run). A reader that finds a run still ``running`` / ``started`` whose process is gone
on this host shows it as ``killed`` (:func:`effective_status`); runs of other hosts, or
records without an owner, keep their word (their liveness cannot be checked here).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RUNNING = "running"  # a lake job's row while it runs
STARTED = "started"  # a training run's status event while it runs
FINISHED = "finished"
FAILED = "failed"
INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: the run stopped cleanly
KILLED = "killed"  # the process died without recording an end (SIGKILL, OOM, power)
UNKNOWN = "unknown"

ACTIVE = frozenset({RUNNING, STARTED})
FINAL = frozenset({FINISHED, FAILED, INTERRUPTED, KILLED})


def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (None: not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has exited; only its exit status is left
        return None
    return int(fields[19])  # field 22 of proc(5)


def owner(pid: int | None = None) -> dict[str, Any]:
    """``{"pid", "host", "pid_start"}`` of this process (or of ``pid``)."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "host": socket.gethostname(), "pid_start": process_start(pid)}


def is_alive(record: Mapping[str, Any]) -> bool | None:
    """Whether the process that ``record`` names still runs: None when it cannot be told.

    Only a record of this host with a pid can be checked. False when that pid no longer
    exists or now belongs to a process started at another time than ``pid_start``.
    """
    pid, host = record.get("pid"), record.get("host")
    if pid is None or host != socket.gethostname():
        return None
    if not Path("/proc/self/stat").exists():  # no procfs: fall back to a signal probe
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    started = process_start(int(pid))
    if started is None:
        return False
    recorded = record.get("pid_start")
    return recorded is None or int(recorded) == started


def is_dead(record: Mapping[str, Any]) -> bool:
    """Whether the process that ``record`` names is known to be gone (see :func:`is_alive`).

    False when alive or when it cannot be told.
    """
    return is_alive(record) is False


def effective_status(record: Mapping[str, Any]) -> str:
    """The record's ``status``, or ``killed`` when it is active but its process is dead."""
    status = str(record.get("status") or UNKNOWN)
    if status in ACTIVE and is_dead(record):
        return KILLED
    return status
