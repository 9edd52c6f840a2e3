"""Request bodies are strict JSON (RFC 8259, I-JSON RFC 7493): every number finite, every
object's member names unique.

Python's ``json``, FastAPI's body parser and pydantic's ``validate_json`` all accept ``NaN``,
``Infinity`` and ``-Infinity`` (none is JSON) and turn ``1e999`` into ``inf``; all of them keep
the last of two equal member names. A runtime whose parser keeps the first one would then
execute another action than the one Stage0 decided (``"tools": ["payments.refund"]`` read as
``"tools": ["tickets.search"]``). :func:`check_strict` refuses both, cheaply for the normal body:

- orjson parses the body (it refuses ``NaN``, ``Infinity`` and numbers that overflow a double);
- a body without duplicate member names has as many ``:`` as its re-encoding: one per member
  plus those inside strings, which orjson writes back as they came. A duplicate loses a member
  (and the ``:`` of the strings it held), so the counts differ. Only an escaped colon
  (``\\u003a``) is written back as ``:`` without having been one, so a body holding one goes to
  the exact check too.

The exact check (Python's ``json`` with hooks that keep every member and every number's text)
runs only when orjson refused the body or the counts differ: it names the first duplicate or
non-finite number with its path. A body that is not JSON at all is left to the validation that
follows, which names the error as before.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from stage0.contract.errors import FieldError, RequestValidationError

DUPLICATE_KEY = "json_duplicate_key"
"""``errors[].type`` of a member name that appears twice in one object."""
NOT_FINITE = "json_number_not_finite"
"""``errors[].type`` of ``NaN``, ``Infinity``, ``-Infinity`` or a number beyond a double."""
_ESCAPED_COLONS = (b"\\u003a", b"\\u003A")
_SHOWN = 60
"""At most this many characters of a member name or a number are quoted back."""


def check_strict(raw: bytes) -> None:
    """Raise :class:`RequestValidationError` when ``raw`` is JSON that strict JSON refuses (a
    non-finite number, a repeated member name); return when it is strict JSON, or not JSON at
    all (the caller's parser reports that)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = False
    else:
        if raw.count(b":") == orjson.dumps(value).count(b":") and (
                b"\\" not in raw  # one byte: a fast scan, and the normal case
                or (_ESCAPED_COLONS[0] not in raw and _ESCAPED_COLONS[1] not in raw)):
            return
        parsed = True
    error = violation(raw, parsed=parsed)
    if error is not None:
        raise RequestValidationError([error])


class _Members(list[tuple[str, Any]]):
    """One JSON object, as its members in order (duplicates kept)."""

    __slots__ = ()


class _NotFinite:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NotFinite(text)


def violation(raw: bytes, *, parsed: bool = False) -> FieldError | None:
    """A duplicate member name or a non-finite number of ``raw`` (an object's repeated names
    are found before what its members hold), with its dotted path; ``None`` when there is none
    or ``raw`` is not JSON. ``parsed``: orjson read ``raw``, so it is JSON, and a body that
    Python's parser cannot read is refused rather than let through unchecked."""
    try:
        tree = json.loads(raw, object_pairs_hook=_Members, parse_constant=_NotFinite,
                          parse_float=_float)
    except RecursionError:
        return FieldError("(body)", "nests too deeply to be read as JSON", "json_invalid")
    except ValueError:  # not JSON (JSONDecodeError), not UTF-8/16/32 (UnicodeDecodeError)
        if parsed:
            return FieldError("(body)", "is not read alike by every JSON parser; send UTF-8 "
                              "JSON (RFC 8259)", "json_invalid")
        return None
    stack: list[tuple[Any, str]] = [(tree, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _NotFinite):
            return FieldError(path or "(body)", f"`{node.text[:_SHOWN]}` is not a finite JSON "
                              "number (NaN, Infinity and numbers beyond a double are refused)",
                              NOT_FINITE)
        children: list[tuple[Any, str]] = []
        if isinstance(node, _Members):
            seen: set[str] = set()
            for name, item in node:
                here = f"{path}.{name}" if path else name
                if name in seen:
                    return FieldError(here, f"duplicate key `{name[:_SHOWN]}`: member names "
                                      "must be unique within an object", DUPLICATE_KEY)
                seen.add(name)
                children.append((item, here))
        elif isinstance(node, list):
            children = [(item, f"{path}.{i}" if path else str(i)) for i, item in enumerate(node)]
        stack.extend(reversed(children))
    return None
