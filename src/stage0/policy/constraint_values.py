"""The values of constraint strings (CONTRACT section 4): each value kind's parser.

Shared by the engine (the caller's ``constraints``) and the loader (the pack's ``require``
rules, validated when the pack loads).
"""

from __future__ import annotations

from collections.abc import Callable

from stage0.contract.constraints import ValueKind
from stage0.policy.matching import normalize_name
from stage0.policy.schema import parse_duration

TRUE = frozenset({"", "true", "yes", "1", "on", "required", "enabled", "only"})
FALSE = frozenset({"false", "no", "0", "off", "disabled", "none"})


def names(value: str) -> frozenset[str]:
    return frozenset(normalize_name(v) for v in value.split(",") if v.strip())


# -- each kind's parser gives the typed value and its display form, or raises ValueError

def _flag(canon: str, value: str) -> tuple[bool, str]:
    low = value.lower()
    if low in TRUE:
        return True, "true"
    if low in FALSE:
        return False, "false"
    raise ValueError(f"`{canon}` takes true or false, got `{value}`")


def _name_set(canon: str, value: str) -> tuple[frozenset[str], str]:
    found = names(value)
    if not found:
        raise ValueError(f"`{canon}` needs at least one name")
    return found, ",".join(sorted(found))


def _window(canon: str, value: str) -> tuple[str, str]:
    name = normalize_name(value)
    return name, name


def _int(canon: str, value: str) -> tuple[int, str]:
    number = int(value)
    if not 0 <= number <= 2**53 - 1:
        raise ValueError(f"`{canon}` must be between 0 and 2**53 - 1, got `{value}`")
    return number, str(number)


def _seconds(canon: str, value: str) -> tuple[float, str]:
    seconds = parse_duration(value)
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"`{canon}` must be a finite duration, got `{value}`")
    return seconds, f"{seconds:g}"


def _usd(canon: str, value: str) -> tuple[float, str]:
    usd = float(value.lstrip("$").strip())
    if not usd >= 0 or usd == float("inf"):
        raise ValueError(f"`{canon}` must be a non-negative amount, got `{value}`")
    return usd, f"{usd:g}"


def _text(canon: str, value: str) -> tuple[str, str]:
    return value, value


VALUE_PARSERS: dict[ValueKind, Callable[[str, str], tuple[object, str]]] = {
    "flag": _flag,
    "roles": _name_set,
    "names": _name_set,
    "window": _window,
    "int": _int,
    "seconds": _seconds,
    "usd": _usd,
    "glob": _text,
    "text": _text,
}
"""Value kind -> parser of ``(canonical key, value text)``."""
