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
    """A copy of ``value`` with the values under secret-looking keys masked, and their paths."""
    masked: list[str] = []
    return _walk(value, path, masked), masked


def _walk(value: Any, path: str, masked: list[str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and is_secret_key(key) and item is not None:
                out[key] = MASK
                masked.append(here)
            else:
                out[key] = _walk(item, here, masked)
        return out
    if isinstance(value, list):
        return [_walk(item, f"{path}.{i}", masked) for i, item in enumerate(value)]
    return value
