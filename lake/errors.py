"""Exception hierarchy for lakeloom.

Every error lakeloom raises on purpose derives from :class:`LakeloomError`:

- :class:`ConfigError` — a job's configuration is invalid (exit status 2).
- :class:`LakeNotFoundError` — the lake or one of its tables does not exist.
- :class:`PluginError` — a plugin could not be found, loaded or instantiated.
- :class:`RejectedInput` — one input record is bad; it carries the reason and goes to the
  rejects report, the rest of the input still lands.
- :class:`MissingDependencyError` — an optional heavy dependency is missing.
- :class:`FileProblem` — a file could not be read or written (disk full, a corrupt lake
  manifest, a checkpoint that does not fit); it names the file and the cause.
- :class:`LakeLockError` — the lake's writer lock could not be taken in time.
"""

from __future__ import annotations

import re


class LakeloomError(Exception):
    """Base class of every error lakeloom raises on purpose."""


class ConfigError(LakeloomError):
    """The configuration of a job is invalid."""


class LakeNotFoundError(LakeloomError):
    """The lake, or a table in it, does not exist."""


class PluginError(LakeloomError):
    """A plugin could not be discovered, imported or instantiated."""


class MissingDependencyError(LakeloomError):
    """An optional dependency needed by the requested feature is not installed."""


class LakeLockError(LakeloomError):
    """Another writer held the lake's writer lock longer than the caller would wait."""


class RejectedInput(LakeloomError):
    """One input record (or media file) is invalid; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FileProblem(LakeloomError):
    """A file could not be read or written; the message is ``<file>: <cause>``."""

    def __init__(self, path: object, cause: str) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause


_LANCE_NOISE = re.compile(r"^(lance error: )?(LanceError\(\w+\): )?|, /\S+\.rs:\d+:\d+$")


def lance_cause(exc: BaseException) -> str:
    """Lance's error text without its prefixes and Rust source location (first line)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _LANCE_NOISE.sub("", text).strip() or type(exc).__name__


def is_lance_error(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by Lance / LanceDB (their errors are plain RuntimeErrors)."""
    text = str(exc)
    return "lance error" in text or "LanceError" in text or ".rs:" in text


class UnknownIdError(LakeloomError):
    """No row of the lake has the id asked about (``lakeloom why``: exit status 2)."""

    def __init__(self, row_id: str, uri: str) -> None:
        super().__init__(f"no sample or media with id {row_id!r} in lake {uri}")
        self.row_id = row_id
