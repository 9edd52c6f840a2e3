"""Name normalisation and glob matchers compiled once per pack."""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from stage0.contract.names import fold_name, match_key, squash

__all__ = ["GlobMatcher", "glob_match", "glob_regex", "match_key", "normalize_name", "squash"]


@lru_cache(maxsize=8192)
def normalize_name(name: str) -> str:
    """Compare tool names and side effects case-insensitively, spaces and hyphens as ``_``.

    ``"Money Movement"``, ``"money-movement"`` and ``"money _movement"`` all become
    ``"money_movement"``. The text is NFKC-normalised first (full-width letters become ASCII),
    invisible format characters (zero-width spaces and joiners) are removed and control
    characters count as spaces, so none of them can hide a name from the classifier
    (:func:`stage0.contract.names.fold_name`; a request's names are refused with a 422 for a
    control character before they get here).
    """
    return fold_name(name)


def _class(body: str) -> str:
    negate = body.startswith("!")
    body = body[1:] if negate else body
    escaped = "".join(c if c.isalnum() or c == "-" else "\\" + c for c in body)
    return ("[^" if negate else "[") + escaped + "]"


def glob_regex(pattern: str) -> str:
    """The regular expression of one glob, matched against a :func:`squash`: separator
    insensitive. The glob is NFKC-normalised and case folded, and every character of it that
    is not ``a-z0-9``, ``*``, ``?`` or a ``[...]`` class is dropped, as the name's separators
    are: ``*schema_apply*`` matches ``db.schema.apply``, ``db_schema_apply`` and
    ``dbschemaapply``, ``*payout*`` matches ``pay_out``. A separator in a glob is therefore no
    word boundary: ``pay_*`` is ``pay*`` (``payload`` matches it too)."""
    text = unicodedata.normalize("NFKC", pattern).casefold()
    parts: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "[":  # as fnmatch: `[!...]` negates, a `]` first is literal
            start = i + 2 if text[i + 1:i + 2] == "!" else i + 1
            end = text.find("]", start + 1 if text[start:start + 1] == "]" else start)
            if end != -1:
                parts.append(_class(text[i + 1:end]))
                i = end + 1
                continue
        if c == "*":
            if not parts or parts[-1] != ".*":
                parts.append(".*")
        elif c == "?":
            parts.append(".")
        elif c.isascii() and c.isalnum():
            parts.append(c)
        i += 1
    return "".join(parts)


class GlobMatcher:
    """Any of several globs (``*``, ``?``, ``[...]``), compiled into one regular expression
    and matched separator-insensitively (:func:`glob_regex`) against a normalised name: both
    the globs and the name are compared with their separators removed."""

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        raw = tuple(patterns)
        self.patterns = tuple(normalize_name(p) for p in raw)
        if self.patterns:
            alternatives = "|".join(f"(?:{glob_regex(p)})" for p in raw)
            self._regex: re.Pattern[str] | None = re.compile(f"(?:{alternatives})\\Z", re.S)
        else:
            self._regex = None

    def __call__(self, name: str) -> bool:
        return self._regex is not None and self._regex.match(squash(name)) is not None


def glob_match(pattern: str, value: str) -> bool:
    """Whether ``value`` matches one glob, case-sensitively (used for resource scopes)."""
    return fnmatch.fnmatchcase(value, pattern)
