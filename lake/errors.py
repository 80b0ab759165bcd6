"""Exception hierarchy for lakeloom.

Every error lakeloom raises on purpose derives from :class:`LakeloomError`:

- :class:`ConfigError` — a job's configuration is invalid (exit status 2).
- :class:`LakeNotFoundError` — the lake or one of its tables does not exist.
- :class:`PluginError` — a plugin could not be found, loaded or instantiated.
- :class:`RejectedInput` — one input record is bad; it carries the reason and goes to the
  rejects report, the rest of the input still lands.
- :class:`MissingDependencyError` — an optional heavy dependency is missing.
"""

from __future__ import annotations


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


class RejectedInput(LakeloomError):
    """One input record (or media file) is invalid; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
