"""Text of sample values for the screens (no Textual imports).

Every string that comes from the data (lake rows, run names, events) reaches a widget
through :func:`printable` (or :func:`literal`, :func:`value_text` that call it): the
terminal is never the data's. Control characters are drawn as visible pictures
(ESC as ``␛``, BEL as ``␇``, C1 codes as ``\\x9b``), so a caption holding
``ESC[2J`` shows ``␛[2J`` instead of clearing the screen, and an OSC 52 sequence cannot
write the clipboard. Rich markup in data is never parsed: the helpers return plain
``str`` for ``markup=False`` widgets or :class:`rich.text.Text`, which Rich and Textual
never read as markup. Huge texts are cut by :func:`clip` / :func:`clip_sample` (in the
workers that read them) with a note of how much was cut.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rich.style import Style
from rich.text import Text

from lake.runs import fmt_duration as fmt_duration  # owned by lake.runs; re-exported


def _visible_table(multiline: bool) -> dict[int, str]:
    table = {c: chr(0x2400 + c) for c in range(0x20)}  # Unicode control pictures ␀..␟
    table[0x7F] = "\u2421"  # ␡
    table |= {c: f"\\x{c:02x}" for c in range(0x80, 0xA0)}  # C1 (CSI, OSC, ...): no picture
    # text direction overrides and line separators reorder or break what is shown
    table |= {c: f"\\u{c:04x}" for c in (0x061C, 0x200E, 0x200F, 0x2028, 0x2029)}
    table |= {c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
    if multiline:
        del table[ord("\n")]
        table[ord("\t")] = "    "
        table[ord("\r")] = ""  # CRLF line ends: the LF breaks the line
    return table


_ONE_LINE = _visible_table(multiline=False)
_MULTILINE = _visible_table(multiline=True)


def printable(value: Any, multiline: bool = False) -> str:
    """``value`` as text safe to draw: control characters shown as visible pictures.

    ``multiline`` keeps line feeds (tabs become spaces); otherwise they show as ``␊``.
    The one door through which data reaches the terminal (see the module docstring).
    """
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return text.translate(_MULTILINE if multiline else _ONE_LINE)


def literal(value: Any, style: str = "", multiline: bool = False) -> Text:
    """``value`` as a rich ``Text`` (never read as markup), controls made visible."""
    return Text(printable(value, multiline=multiline), style=style)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with a note of how much was cut (0: no limit)."""
    if limit <= 0 or len(text) <= limit:
        return text
    return (
        f"{text[:limit]} … [{len(text) - limit:,} more characters not shown, {len(text):,} in all]"
    )


def clip_sample(value: Any, limit: int) -> Any:
    """Every string in ``value`` (a sample: dicts, lists, media rows) cut by :func:`clip`.

    Runs in the worker that read the sample, so a 5 MB caption never reaches the UI
    thread whole; bytes (images) are left alone.
    """
    if isinstance(value, str):
        return clip(value, limit)
    if isinstance(value, dict):
        return {k: clip_sample(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clip_sample(v, limit) for v in value]
    return value


def value_text(value: Any) -> str:
    """Text of a value: lists joined, floats to 4 significant digits, controls visible."""
    return printable(_value_text(value), multiline=True)


def _value_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    if isinstance(value, list | tuple):
        return ", ".join(_value_text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_value_text(v)}" for k, v in value.items())
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
        text.append(printable(step.get("name") or "?"))
        params = step.get("params")
        if params:
            with contextlib.suppress(TypeError, ValueError):
                params = json.dumps(json.loads(params), sort_keys=True)
            text.append(f" {printable(params)}", style="dim")
        text.append("\n")
    return text


def conversation_text(
    messages: list[dict[str, Any]] | None,
    role_styles: Mapping[str, Style | str],
    other_role: Style | str = "bold",
) -> Text:
    """The conversation, one block per message, each labelled with its role in the
    style ``role_styles`` gives it (``other_role`` for the roles it does not name)."""
    text = Text()
    for m in messages or []:
        role = m.get("role") or "?"
        text.append(f"{printable(role)}\n", style=role_styles.get(role, other_role))
        text.append(f"{printable(m.get('content') or '', multiline=True).strip()}\n\n")
    text.rstrip()
    return text
