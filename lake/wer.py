"""Word error rate of transcripts against references, after one shared normalisation.

Whisper writes "Mr." and "10" where a reference transcript says "mister" and "ten", and
punctuates and capitalises; none of that is a recognition error. :func:`normalise` maps
both sides to lower-case words without punctuation, spells out numbers and the common
English abbreviations, and splits hyphenated words ("ill-disposed" = "ill disposed").
:func:`word_errors` scores with jiwer on the normalised texts. The bench
(``bench/transcribe.py``) and the tests use this one normaliser.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_ONES = [
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    *("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen"),
    *("eighteen", "nineteen"),
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
#: abbreviation (lower case, without its dot) -> spoken form
ABBREVIATIONS = {
    "mr": "mister",
    "mrs": "missus",
    "ms": "miss",
    "dr": "doctor",
}
_ABBREV = re.compile(r"\b(" + "|".join(ABBREVIATIONS) + r")\.", re.IGNORECASE)
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:,\d{3})*")
_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def number_words(n: int) -> str:
    """``n`` (0 <= n < 10**12) in English words: 21 -> "twenty one", 1905 -> "one thousand
    nine hundred five" (no "and"; hyphens are spaces, as :func:`normalise` leaves them)."""
    if not 0 <= n < 10**12:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    for size, word in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= size:
            rest = n % size
            head = number_words(n // size) + " " + word
            return head + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError("unreachable")


def _ordinal(m: re.Match[str]) -> str:
    words = number_words(int(m[1])).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def normalise(text: str) -> str:
    """Lower-case words separated by single spaces: abbreviations and numbers spelled out,
    hyphens split, other punctuation dropped (apostrophes inside words are kept)."""
    text = _ABBREV.sub(lambda m: " " + ABBREVIATIONS[m[1].lower()] + " ", text)
    text = _ORDINAL.sub(_ordinal, text)
    text = _NUMBER.sub(lambda m: " " + number_words(int(m[0].replace(",", ""))) + " ", text)
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^\w\s']", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(text.split())


def word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, Any]:
    """WER of ``hypotheses`` against ``references`` (pairwise, both normalised), pooled over
    all pairs: ``{"wer", "words", "substitutions", "deletions", "insertions"}``.

    ``words`` counts the normalised reference words; an empty reference list gives
    ``wer`` None.
    """
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalise(r) for r in references]
    if not refs:
        return {"wer": None, "words": 0, "substitutions": 0, "deletions": 0, "insertions": 0}
    hyps = [normalise(h) for h in hypotheses]
    # jiwer rejects an empty reference; a normalised reference is never empty in practice
    out = jiwer.process_words(refs, hyps)
    words = sum(len(r.split()) for r in refs)
    errors = out.substitutions + out.deletions + out.insertions
    return {
        "wer": errors / words if words else None,
        "words": words,
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
    }
