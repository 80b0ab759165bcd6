"""The lake's jobs for the TUI's jobs view: what ``lakeloom jobs`` reads, polled.

No Textual imports. The figures (rows done / total, rows/s, failures, retries, per stage
and per node) are :mod:`lake.jobs_cmd`'s, so the terminal view and the command agree.
The lake is read at its latest version on every poll (never pinned: a job writes its
progress while we watch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lake.jobs_cmd import JobFigures, list_jobs
from lake.storage import redact_text
from lake.store import Lake

BAR_FULL = "█"
BAR_EMPTY = "░"
_EIGHTHS = " ▏▎▍▌▋▊▉"


@dataclass
class JobsRead:
    """One poll: the jobs, newest first, or why there are none (``message``)."""

    jobs: list[JobFigures] = field(default_factory=list)
    message: str | None = None


class JobsSource:
    """Reads the jobs of one lake; the handle is kept between polls."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.storage_options = dict(storage_options or {})
        self.lake = Lake(uri, storage_options=self.storage_options)

    def read(self) -> JobsRead:
        """The jobs now; a missing or unreadable lake is a message, never an exception."""
        try:
            if not self.lake.present():
                return JobsRead(message=f"No lake at {self.uri} yet.")
            jobs = list_jobs(self.lake)
        except Exception as exc:  # a damaged or unreachable lake: say why, keep polling
            reason = redact_text(f"{type(exc).__name__}: {exc}", self.storage_options)
            return JobsRead(message=f"Cannot read the jobs of {self.uri}: {reason}")
        if not jobs:
            return JobsRead(message=f"No jobs recorded in {self.uri} yet.")
        return JobsRead(jobs)


def fraction(done: int | None, total: int | None) -> float | None:
    """``done / total`` clamped to [0, 1] (None when the total is unknown or zero)."""
    if done is None or not total:
        return None
    return min(max(done / total, 0.0), 1.0)


def bar(done: int | None, total: int | None, width: int = 12) -> tuple[str, str]:
    """A progress bar ``width`` cells wide as ``(filled, empty)`` parts (eighths of a cell
    drawn); ``("", "")`` when the total is unknown."""
    part = fraction(done, total)
    if part is None:
        return "", ""
    eighths = round(part * width * 8)
    full, rest = divmod(eighths, 8)
    filled = BAR_FULL * full + (_EIGHTHS[rest] if rest else "")
    return filled, BAR_EMPTY * (width - len(filled))
