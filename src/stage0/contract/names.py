"""Canonical tool names, side effects, environments and principals (docs/decisions.md).

One set of rules, applied before anything is classified, digested or compared:

* **Refused** (a 422 naming the field and the character): a control character (Unicode ``Cc``:
  U+0000-U+001F, U+007F-U+009F, so tab, newline and NUL too) or a whitespace character other
  than the ASCII space anywhere in a name; a name that is not ASCII after the steps below; a
  name that is blank after them.
* **Canonicalised**: NFKC (full-width letters become ASCII), Unicode format characters
  (``Cf``: U+200B zero-width space, U+200D, U+2060, U+FEFF, U+00AD soft hyphen, bidi controls)
  removed, case folded, surrounding space and ``_``/``-`` trimmed, and runs of spaces, ``-``
  and ``_`` folded to one ``_`` (``Money Movement`` is ``money_movement``). ``.``, ``/`` and
  ``:`` are kept: the canonical name is what the response, the digest and an approver show.
* **Matched separator-insensitively**: for classification every run of characters other than
  ``a-z0-9`` is one separator, and a glob matches a name whatever separators the name puts
  between the glob's letters (:func:`match_key`, :func:`squash`; the globs themselves are
  compiled in ``stage0.policy.matching``), so ``db.schema.apply``, ``db_schema_apply`` and
  ``dbschemaapply`` fall in the bucket of ``*schema_apply*``.

Principals (``context.actor_id``, a key's principal) get the same Unicode steps (NFKC, ``Cf``
removed, case folded, whitespace runs folded to one space and trimmed) but may stay non-ASCII:
``alice\\u200b`` is ``alice``, so it cannot approve alice's own request.
"""

from __future__ import annotations

import re
import unicodedata

_PLAIN = re.compile(r"[a-z0-9.:/]+(?:_[a-z0-9.:/]+)*")
"""Names already canonical (the common case): returned as they are, with no Unicode work."""
_FOLD = re.compile(r"[\s\-_]+")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_ALNUM = re.compile(r"[a-z0-9]")
_SPACES = re.compile(r"\s+")
_BLANK = ("name_blank", "must not be blank: a name needs a letter or a digit")


def _describe(c: str) -> str:
    name = unicodedata.name(c, "")
    return f"U+{ord(c):04X}" + (f" ({name})" if name else "")


def name_problem(value: str) -> tuple[str, str] | None:
    """Why ``value`` cannot be a tool name, side effect or environment: ``(error type,
    message)``; ``None`` when it can. The types are ``name_control_character``,
    ``name_whitespace``, ``name_not_ascii`` and ``name_blank``."""
    if _PLAIN.fullmatch(value) and _ALNUM.search(value):
        return None
    if value.isascii() and value.isprintable():  # no control character, no other whitespace
        return None if _ALNUM.search(value.lower()) else _BLANK
    for i, c in enumerate(value):
        if unicodedata.category(c) == "Cc":
            return ("name_control_character",
                    f"contains the control character {_describe(c)} at index {i}; names must "
                    "not contain control characters")
        if c != " " and c.isspace():
            return ("name_whitespace",
                    f"contains the whitespace character {_describe(c)} at index {i}; the only "
                    "whitespace a name may contain is the ASCII space (it folds to `_`)")
    text = _strip_format(unicodedata.normalize("NFKC", value))
    for c in text:  # NFKC can make a character the raw text did not have
        if unicodedata.category(c) == "Cc" or (c != " " and c.isspace()):
            return ("name_control_character" if unicodedata.category(c) == "Cc"
                    else "name_whitespace",
                    f"`{value}` normalises (NFKC) to a name with {_describe(c)}")
    if not text.isascii():
        c = next(c for c in text if not c.isascii())
        return ("name_not_ascii",
                f"`{value}` has the non-ASCII character {_describe(c)}; names must be ASCII "
                "identifiers")
    if not match_key(fold_name(value)):
        return _BLANK
    return None


def _strip_format(text: str) -> str:
    if text.isascii():  # no ASCII character is a format one
        return text
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def fold_name(value: str) -> str:
    """The canonical form of a name, never raising: NFKC, format characters removed, case
    folded, control characters and runs of whitespace, ``-`` and ``_`` folded to one ``_``,
    trimmed. (Request names that :func:`name_problem` refuses never get here; for other text,
    such as a pack's patterns or a key's roles, a control character is a separator.)"""
    if _PLAIN.fullmatch(value):
        return value
    text = _strip_format(unicodedata.normalize("NFKC", value)).casefold()
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text) \
        if not text.isprintable() else text
    return _FOLD.sub("_", text).strip("_")


def match_key(name: str) -> str:
    """A canonical name as the classifier sees it: every run of characters other than
    ``a-z0-9`` is one ``_``, none at either end (``db.schema/apply`` -> ``db_schema_apply``)."""
    return _NON_ALNUM.sub("_", name).strip("_")


def squash(name: str) -> str:
    """A canonical name with every separator removed: what exact (non-glob) names compare by
    (``data.deletion``, ``data_deletion`` and ``datadeletion`` are all ``datadeletion``)."""
    return _NON_ALNUM.sub("", name)


def canonical_principal(value: str | None) -> str | None:
    """A principal (an actor id, a key's principal) as it is compared: NFKC, format characters
    removed, case folded, runs of whitespace and control characters one space, trimmed.
    ``Alice``, `` alice ``, ``alice\\u200b`` and ``\\uff41lice`` (a full-width a) are all
    ``alice``."""
    if value is None:
        return None
    text = _strip_format(unicodedata.normalize("NFKC", value)).casefold()
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    return _SPACES.sub(" ", text).strip()


def principal_problem(value: str) -> tuple[str, str] | None:
    """Why ``value`` cannot be a principal (``context.actor_id``): a control character
    (``principal_control_character``); ``None`` when it can."""
    if value.isascii() and value.isprintable():
        return None
    for i, c in enumerate(value):
        if unicodedata.category(c) == "Cc":
            return ("principal_control_character",
                    f"contains the control character {_describe(c)} at index {i}; principals "
                    "must not contain control characters")
    return None
