"""Review decisions as sample tags: the one owner of their format.

A decision on a flagged sample is the tag ``review:<check>:<decision>:<who>:<UTC ISO
time>`` in ``samples.tags``; a sample holds at most one per check and a later one wins.
The TUI writes them (``tui.review.decide``) and ``lakeloom split
split.exclude_confirmed=true`` excludes samples with a confirmed one; both read the tags
here, so they always agree on what a decision is.
"""

from __future__ import annotations

PREFIX = "review"
CONFIRMED = "confirmed"
DISMISSED = "dismissed"
DECISIONS = (CONFIRMED, DISMISSED)


def review_tag(check: str, decision: str, who: str, when: str) -> str:
    """The tag recording one decision (``who`` must not hold ``:``; ``when`` may)."""
    return f"{PREFIX}:{check}:{decision}:{who}:{when}"


def parse_tag(tag: str) -> tuple[str, str, str, str] | None:
    """(check, decision, who, when) of a review tag; None for any other tag."""
    parts = tag.split(":", 4)  # the ISO time holds colons: it is the rest
    if len(parts) != 5 or parts[0] != PREFIX or parts[2] not in DECISIONS:
        return None
    return parts[1], parts[2], parts[3], parts[4]


def decisions(tags: list[str] | None) -> dict[str, tuple[str, str, str]]:
    """Review decisions in ``tags``: check -> (decision, who, when); the last one wins."""
    out: dict[str, tuple[str, str, str]] = {}
    for tag in tags or []:
        parsed = parse_tag(tag)
        if parsed:
            out[parsed[0]] = parsed[1:]
    return out


def is_confirmed(tags: list[str] | None) -> bool:
    """Whether ``tags`` hold a confirmed decision on any check (its latest decision)."""
    return any(d[0] == CONFIRMED for d in decisions(tags).values())
