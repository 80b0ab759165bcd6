"""The lake's writer lock: one commit at a time per lake, across processes.

Lance resolves most concurrent commits itself (two updates of the same rows conflict and
are retried), but two ``merge_insert`` calls that both read before either committed can
both insert the same new key. :class:`lake.store.Lake` therefore holds
:func:`writer_lock` around each write (the read-check-commit of one merge-insert), not
around a whole job, so two long jobs interleave their batches.

Local lakes (a path or ``file://``): an exclusive ``fcntl.flock`` on ``<lake>/.writer.lock``.
The kernel releases it when the holder dies, so a lock left by a killed process is taken
over by the next writer without any stale-lock guessing; the file only carries the last
holder's pid, host and start time for the "waiting for ..." message. The lock is
re-entrant within a process (a write that calls another write does not deadlock) and
serialises the threads of one process too.

Other URIs (``s3://``, ``gs://``, ``az://``, ``memory://``): no lock (a warning is logged
once per lake); the lake relies on Lance's own conflict detection, which catches the
insert-insert race of two merge-inserts because every table key is declared an
unenforced primary key (see ``Lake.ensure``): the losing commit is retried against the
latest version. On S3 this relies on the store's conditional writes (measured with
pylance 14 on SeaweedFS: 4 processes x 10 insert_new and x 10 upserts keep every row and
every commit, tests/lake/test_store_s3.py; a fake S3 server without them lost half).
Not covered without the lock: two writers creating the same table at once (one fails;
create it before starting them), and many writers at once may run out of Lance's retries.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from lake.errors import LakeLockError

log = logging.getLogger("lakeloom")

LOCK_NAME = ".writer.lock"


@dataclass
class _Held:
    """This process's hold on one lock file."""

    pid: int
    guard: threading.RLock = field(default_factory=threading.RLock)
    fd: int | None = None
    depth: int = 0


_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.Lock()
_WARNED: set[str] = set()


def local_path(uri: str | Path) -> Path | None:
    """The directory of a lake on local disk, or None for an object-store URI."""
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        return None
    return Path(text)


def lock_path(uri: str | Path) -> Path | None:
    """Where the writer lock of lake ``uri`` lives (None: not a local lake)."""
    folder = local_path(uri)
    return None if folder is None else folder / LOCK_NAME


def holder(uri: str | Path) -> dict[str, object] | None:
    """The last recorded holder of the lock (pid, host, since, argv), if any."""
    path = lock_path(uri)
    if path is None:
        return None
    try:
        text = path.read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def _entry(path: Path) -> _Held:
    key = str(path.resolve())
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is None or held.pid != os.getpid():  # a forked child does not hold it
            held = _Held(pid=os.getpid())
            _HELD[key] = held
        return held


def _describe(info: dict[str, object] | None) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"


def _acquire(fd: int, path: Path, timeout_s: float | None) -> None:
    """flock ``fd`` exclusively, waiting at most ``timeout_s`` (None: as long as it takes)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
    info = holder(path.parent)
    if timeout_s is None:
        log.info("waiting for the lake's writer lock %s (held by %s)", path, _describe(info))
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        left = deadline - time.monotonic()
        if left <= 0:
            raise LakeLockError(
                f"{path}: writer lock still held by {_describe(holder(path.parent))} "
                f"after {timeout_s:g} s"
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.1)


@contextlib.contextmanager
def writer_lock(uri: str | Path, timeout_s: float | None = None) -> Iterator[None]:
    """Hold lake ``uri``'s writer lock for the ``with`` block (see the module docstring).

    ``timeout_s``: give up with :class:`LakeLockError` (naming the holder) after that many
    seconds; None waits until the holder commits or dies. On an object-store URI this
    holds nothing and Lance's conflict detection applies.
    """
    path = lock_path(uri)
    if path is None:
        if str(uri) not in _WARNED:
            _WARNED.add(str(uri))
            log.warning(
                "%s is not on local disk: no writer lock, concurrent writers rely on Lance's "
                "conflict detection (see lake/lock.py)",
                uri,
            )
        yield
        return
    held = _entry(path)
    if not held.guard.acquire(timeout=-1 if timeout_s is None else timeout_s):
        raise LakeLockError(f"{path}: writer lock busy in this process after {timeout_s:g} s")
    try:
        if held.depth == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                _acquire(fd, path, timeout_s)
            except BaseException:
                os.close(fd)
                raise
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            held.fd = fd
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0 and held.fd is not None:
                fd, held.fd = held.fd, None
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
    finally:
        held.guard.release()
