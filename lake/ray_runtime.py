"""Ray for the curation jobs (``executor=ray``): the one place that starts or joins Ray.

``address``:

- ``local``: a private single-node Ray for this job, bound to 127.0.0.1 only
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: without it Ray 2.60 listens on every
  interface), dashboard and usage statistics off, a fresh temp folder holding its
  session files and auth token (a stale ``ray_current_cluster`` file or the user's
  ``~/.ray/auth_token`` never leak in); shut down and removed when the job ends.
- ``auto`` or ``HOST:PORT``: join a cluster started with ``ray start``; its auth token
  comes from the environment (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``), as
  Ray documents for every client of a cluster.

A caller that already holds a Ray session (a test, a bench) keeps it: the job runs in it
and leaves it running.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

LOCAL = "local"

# Set for the private local Ray (its daemons inherit the environment).
_LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@functools.cache
def _process_token() -> str:
    """One auth token per process: Ray caches the token it read in the process, so every
    private session of a process (tests, benches run several) must use the same one."""
    return secrets.token_hex(32)


@contextlib.contextmanager
def ray_session(
    address: str = LOCAL,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    temp_dir: str | None = None,
) -> Iterator[Any]:
    """Start (``local``) or join (``auto`` / ``HOST:PORT``) Ray; yield the ``ray`` module."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        yield ray
        return
    folder: str | None = None
    saved: dict[str, str | None] = {}
    cluster_flag: bool | None = None
    try:
        if address == LOCAL:
            folder = tempfile.mkdtemp(prefix="lakeloom-ray-", dir=temp_dir)
            token = os.path.join(folder, "auth_token")
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(_process_token())
            env = {**_LOCAL_ENV, "RAY_AUTH_TOKEN_PATH": token}
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            # Ray reads the variable at import (ray_constants): when ray was imported before
            # this session, the flag is set here too, and restored after
            from ray._private import ray_constants

            cluster_flag = ray_constants.ENABLE_RAY_CLUSTER
            ray_constants.ENABLE_RAY_CLUSTER = False
            ray.init(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                _temp_dir=folder,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
        else:
            ray.init(address=address, logging_level=logging.WARNING, configure_logging=False)
        yield ray
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if cluster_flag is not None:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = cluster_flag
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
