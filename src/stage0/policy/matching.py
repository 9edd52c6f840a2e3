"""Name normalisation and glob matchers compiled once per pack."""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

_FOLD = re.compile(r"[\s\-_]+")


@lru_cache(maxsize=8192)
def normalize_name(name: str) -> str:
    """Compare tool names and side effects case-insensitively, spaces and hyphens as ``_``.

    ``"Money Movement"``, ``"money-movement"`` and ``"money _movement"`` all become
    ``"money_movement"``. The text is NFKC-normalised first (full-width letters become ASCII)
    and invisible format characters (zero-width spaces and joiners) are removed, so they cannot
    hide a name from the classifier.
    """
    text = unicodedata.normalize("NFKC", name)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return _FOLD.sub("_", text.strip().lower()).strip("_")


class GlobMatcher:
    """Any of several globs (``*``, ``?``, ``[...]``), compiled into one regular expression."""

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(normalize_name(p) for p in patterns)
        if self.patterns:
            alternatives = "|".join(fnmatch.translate(p) for p in self.patterns)
            self._regex: re.Pattern[str] | None = re.compile(alternatives)
        else:
            self._regex = None

    def __call__(self, name: str) -> bool:
        return self._regex is not None and self._regex.match(name) is not None


def glob_match(pattern: str, value: str) -> bool:
    """Whether ``value`` matches one glob, case-sensitively (used for resource scopes)."""
    return fnmatch.fnmatchcase(value, pattern)
