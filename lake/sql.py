"""SQL literals and filter combination for Lance ``where`` filters: the one owner.

Every job, data module and screen that builds a filter from a user's ``where`` plus its
own scope (a split, a dataset, an id list) combines them with :func:`and_filters`. Each
clause is checked by :func:`check_clause` and parenthesised, so a user clause can only
narrow the scope: ``where="1=0) OR (1=1"`` is refused (unbalanced parentheses) instead
of turning ``(split = 'train') AND (1=0) OR (1=1)`` into the whole lake.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from lake.errors import ConfigError


def quote(value: str) -> str:
    """A SQL string literal (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def in_list(values: Iterable[str]) -> str:
    """A parenthesised list of string literals for ``column IN (...)``."""
    return "(" + ", ".join(quote(v) for v in values) + ")"


def check_clause(clause: str) -> str:
    """Return ``clause`` if it stands alone inside parentheses, else raise ConfigError.

    Parentheses must balance outside string literals (``'...'``) and quoted identifiers
    (``"..."``, backticks), literals and identifiers must be closed, and comments
    (``--``, ``/*``) are refused: they could hide a closing parenthesis from this check.
    """
    depth = 0
    quote_char: str | None = None
    i, n = 0, len(clause)
    while i < n:
        ch = clause[i]
        if quote_char is not None:
            if ch == quote_char:
                if i + 1 < n and clause[i + 1] == quote_char:  # doubled quote: escaped
                    i += 1
                else:
                    quote_char = None
        elif ch in "'\"`":
            quote_char = ch
        elif clause.startswith(("--", "/*"), i):
            raise ConfigError(f"invalid where filter {clause!r}: SQL comments are not allowed")
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ConfigError(
                    f"invalid where filter {clause!r}: unbalanced parentheses "
                    f"(')' at character {i + 1} closes nothing)"
                )
        i += 1
    if quote_char is not None:
        raise ConfigError(f"invalid where filter {clause!r}: unterminated {quote_char} quote")
    if depth:
        raise ConfigError(
            f"invalid where filter {clause!r}: unbalanced parentheses ({depth} '(' not closed)"
        )
    return clause


def and_filters(*clauses: str | None) -> str | None:
    """AND the non-empty clauses, each checked and parenthesised; None when none is left."""
    kept = [c.strip() for c in clauses if c and str(c).strip()]
    return " AND ".join(f"({check_clause(c)})" for c in kept) or None


# Lance's wording around the reason: the statement it parsed, its internal columns
_LANCE_FILTER_NOISE = (
    (re.compile(r"^Invalid user input: "), ""),
    (re.compile(r"^Error \w+ statement: SELECT .* WHERE .* \((.*)\)$"), r"\1"),
    (re.compile(r", _row\w+"), ""),
)


def filter_error(what: str, where: str | None, exc: BaseException) -> ConfigError:
    """The ConfigError for a filter Lance refused: ``invalid <what> <where>: <reason>``,
    with Lance's reason on one line and without its internal source path."""
    from lake.errors import lance_cause

    cause = lance_cause(exc)
    for pattern, repl in _LANCE_FILTER_NOISE:
        cause = pattern.sub(repl, cause)
    return ConfigError(f"invalid {what} {where!r}: {cause}")
