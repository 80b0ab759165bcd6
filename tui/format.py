"""Text of sample values for the screens (no Textual imports)."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Any

from rich.text import Text

ROLE_STYLES = {"system": "magenta", "user": "bold cyan", "assistant": "bold green"}


def value_text(value: Any) -> str:
    """One-line text of a value: lists joined, floats to 4 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    if isinstance(value, list | tuple):
        return ", ".join(value_text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={value_text(v)}" for k, v in value.items())
    return str(value)


def scores(sample: dict[str, Any]) -> dict[str, float]:
    """``clip_score`` and every ``check_<name>_score`` that is set."""
    out = {}
    for key, value in sample.items():
        if value is not None and (
            key == "clip_score" or (key.startswith("check_") and key.endswith("_score"))
        ):
            out[key.removeprefix("check_").removesuffix("_score")] = value
    return out


def provenance_text(prov: dict[str, Any] | None, indent: str = "") -> Text:
    """Every provenance field, steps one per line with their parameters."""
    text = Text()
    if not prov:
        text.append(f"{indent}no provenance\n", style="dim")
        return text
    for key in (
        "plugin",
        "plugin_version",
        "lakeloom_version",
        "run_id",
        "config_hash",
        "created_at",
    ):
        text.append(f"{indent}{key:<16} ", style="bold")
        text.append(f"{value_text(prov.get(key)) or '—'}\n")
    for i, step in enumerate(prov.get("steps") or [], 1):
        text.append(f"{indent}step {i:<11} ", style="bold")
        text.append(step.get("name") or "?")
        params = step.get("params")
        if params:
            with contextlib.suppress(TypeError, ValueError):
                params = json.dumps(json.loads(params), sort_keys=True)
            text.append(f" {params}", style="dim")
        text.append("\n")
    return text


def conversation_text(messages: list[dict[str, Any]] | None) -> Text:
    """The conversation, one block per message, labelled and coloured by role."""
    text = Text()
    for m in messages or []:
        role = m.get("role") or "?"
        text.append(f"{role}\n", style=ROLE_STYLES.get(role, "bold"))
        text.append(f"{(m.get('content') or '').strip()}\n\n")
    text.rstrip()
    return text
