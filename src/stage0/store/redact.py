"""Secret redaction for what the decision log keeps of a request."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

MASK = "[REDACTED]"
SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[_-]?key|apikey|authorization|auth[_-]?header|"
    r"cookie|credential|private[_-]?key|session[_-]?(id|key)|client[_-]?secret|bearer|signature",
    re.IGNORECASE,
)


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    return SECRET_KEY.search(key) is not None


def redact(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """``value`` with the values under secret-looking keys masked, and their paths.

    Copy on write: containers with nothing to mask are returned as they are (shared with
    ``value``), and a path is spelled out only for a masked value.
    """
    masked: list[str] = []
    return _walk(value, (path,) if path else (), masked), masked


def _walk(value: Any, parts: tuple[str, ...], masked: list[str]) -> Any:
    if isinstance(value, dict):
        out: dict[Any, Any] | None = None
        for key, item in value.items():
            if isinstance(key, str) and item is not None and is_secret_key(key):
                new: Any = MASK
                masked.append(".".join((*parts, key)))
            elif isinstance(item, dict | list):
                new = _walk(item, (*parts, str(key)), masked)
            else:
                continue
            if new is not item:
                if out is None:
                    out = dict(value)
                out[key] = new
        return value if out is None else out
    if isinstance(value, list):
        copied: list[Any] | None = None
        for i, item in enumerate(value):
            if not isinstance(item, dict | list):
                continue
            new = _walk(item, (*parts, str(i)), masked)
            if new is not item:
                if copied is None:
                    copied = list(value)
                copied[i] = new
        return value if copied is None else copied
    return value
