"""Provenance: the per-row struct and the identity of a run."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any


@cache
def lakeloom_version() -> str:
    """Installed lakeloom version."""
    try:
        return version("lakeloom")
    except PackageNotFoundError:
        return "0+unknown"


def config_hash(resolved_yaml: str) -> str:
    """Short sha256 of a resolved config's YAML."""
    return hashlib.sha256(resolved_yaml.encode("utf-8")).hexdigest()[:16]


def new_run_id(job: str) -> str:
    """``<job>-YYYYmmdd-HHMMSS-<4 hex>``: sortable by time, unique across processes."""
    return f"{job}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def now() -> datetime:
    """Current UTC time."""
    return datetime.now(UTC)


def steps(*items: tuple[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Processing steps in the provenance layout: ``[{name, params (JSON)}]``."""
    return [{"name": n, "params": json.dumps(p, sort_keys=True, default=str)} for n, p in items]


def record(
    plugin: str,
    plugin_version: str,
    cfg_hash: str,
    run_id: str,
    step_list: list[dict[str, str]],
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """One provenance struct value."""
    return {
        "plugin": plugin,
        "plugin_version": plugin_version,
        "lakeloom_version": lakeloom_version(),
        "config_hash": cfg_hash,
        "run_id": run_id,
        "created_at": created_at or now(),
        "steps": step_list,
    }
