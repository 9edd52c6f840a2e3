"""Lint checks on time zones, change windows and the aliases that imply a window.

They read the raw document, so they run even when the schema fails. Overlaps are compared in UTC
over a winter and a summer reference week, so zones and DST shifts count.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stage0.contract.constraints import CONSTRAINT_KEYS
from stage0.policy.lint.codes import YamlPath
from stage0.policy.lint.document import Findings
from stage0.policy.lint.hints import did_you_mean, zones
from stage0.policy.lint.schema import DAYS
from stage0.policy.matching import normalize_name

# Reference weeks for overlap checks: one in winter and one in summer, so DST shifts count.
_REFERENCE_MONDAYS = (date(2026, 1, 5), date(2026, 7, 6))

Span = tuple[datetime, datetime]


def check_timezones(out: Findings, raw: dict[str, Any]) -> None:
    """``PACK_BAD_TIMEZONE`` for the pack's and each window's ``timezone``."""
    _zone(out, raw.get("timezone"), ("timezone",))
    for name, w in items(raw.get("change_windows")):
        if isinstance(w, dict):
            _zone(out, w.get("timezone"), ("change_windows", name, "timezone"))


def _zone(out: Findings, name: Any, path: YamlPath) -> None:
    if isinstance(name, str) and _zone_info(name) is None:
        out.add("PACK_BAD_TIMEZONE", f"`{name}` is not an IANA time zone", path,
                remediation=did_you_mean(name, zones()) or "e.g. `Europe/Berlin` or `UTC`")


def _zone_info(name: Any) -> ZoneInfo | None:
    if not isinstance(name, str):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def check_aliases(out: Findings, raw: dict[str, Any]) -> None:
    """``PACK_UNKNOWN_CONSTRAINT`` for alias keys, ``PACK_UNKNOWN_WINDOW`` for implied windows."""
    windows = {normalize_name(str(n)): str(n) for n, _ in items(raw.get("change_windows"))}
    for key, names in items(raw.get("constraint_aliases")):
        path: YamlPath = ("constraint_aliases", key)
        if key not in CONSTRAINT_KEYS:
            out.add("PACK_UNKNOWN_CONSTRAINT", f"`{key}` is not a constraint key", path,
                    key=True, remediation=did_you_mean(str(key), CONSTRAINT_KEYS))
            continue
        if CONSTRAINT_KEYS[key] != "window" or not isinstance(names, list):
            continue
        for i, alias in enumerate(names):
            if not isinstance(alias, str) or "=" not in alias:
                continue
            name, _, implied = alias.partition("=")
            implied = implied.strip()
            if implied and normalize_name(implied) not in windows:
                out.add(
                    "PACK_UNKNOWN_WINDOW",
                    f"alias `{name.strip()}` implies change window `{implied}`, which the "
                    "pack does not define",
                    (*path, i),
                    remediation=did_you_mean(implied, list(windows.values()))
                    or "define it under `change_windows`",
                )


def check_windows(out: Findings, raw: dict[str, Any]) -> None:
    """Duplicate names, empty windows, and windows open at the same time."""
    pack_zone = raw.get("timezone", "UTC")
    folded: dict[str, str] = {}
    spans: dict[str, list[Span]] = {}
    for name, w in items(raw.get("change_windows")):
        key = normalize_name(name)
        if key in folded:
            out.add("PACK_DUPLICATE_WINDOW",
                    f"window `{name}` and window `{folded[key]}` are both `{key}`; "
                    "the later one replaces the earlier", ("change_windows", name), key=True,
                    remediation="names fold case, spaces and hyphens: rename or merge them")
        folded[key] = name
        opened = _openings(out, name, w, pack_zone)
        if opened:
            spans[name] = opened
    names = sorted(spans)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _overlap(spans[a], spans[b]):
                out.add("PACK_OVERLAPPING_WINDOWS",
                        f"change windows `{a}` and `{b}` are open at the same time",
                        ("change_windows", b), key=True,
                        remediation="fine if meant; a request naming both must fall in both")


def _openings(out: Findings, name: str, w: Any, pack_zone: Any) -> list[Span]:
    """The openings of window ``name`` in the reference weeks (none if it cannot tell)."""
    if not isinstance(w, dict):
        return []
    start, end, days = _hhmm(w.get("start")), _hhmm(w.get("end")), w.get("days")
    if start is None or end is None or not isinstance(days, list):
        return []
    if start == end:
        out.add("PACK_EMPTY_WINDOW",
                f"change window `{name}` opens and closes at {start:%H:%M}: it is empty",
                ("change_windows", name, "end"),
                remediation="a window past midnight ends before it starts (`22:00`-`02:00`)")
        return []
    zone = _zone_info(w.get("timezone") or pack_zone)
    indexes = {DAYS.index(d) for d in days if d in DAYS}
    if zone is None or not indexes:
        return []
    return _spans(indexes, start, end, zone)


def items(value: Any) -> Iterator[tuple[str, Any]]:
    """A mapping's items with string keys (nothing if it is not a mapping)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k), v


def _hhmm(value: Any) -> time | None:
    if not isinstance(value, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        return None
    return time.fromisoformat(value)


def _spans(days: set[int], start: time, end: time, zone: ZoneInfo) -> list[Span]:
    """The window's openings in the reference weeks, in UTC."""
    spans = []
    for monday in _REFERENCE_MONDAYS:
        for offset in range(-1, 8):  # the day before: an overnight window reaches into Monday
            day = monday + timedelta(days=offset)
            if day.weekday() not in days:
                continue
            opens = datetime.combine(day, start, tzinfo=zone)
            closes_day = day if end > start else day + timedelta(days=1)
            closes = datetime.combine(closes_day, end, tzinfo=zone)
            spans.append((opens.astimezone(UTC), closes.astimezone(UTC)))
    return spans


def _overlap(a: list[Span], b: list[Span]) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


__all__ = ["check_aliases", "check_timezones", "check_windows", "items"]
