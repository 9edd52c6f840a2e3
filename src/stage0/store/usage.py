"""Quotas and rate limits per key: monthly, daily and per-minute windows, in UTC."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True, slots=True)
class Windows:
    month: str
    day: str
    minute: str
    seconds_to_next_day: int
    seconds_to_next_minute: int

    @classmethod
    def at(cls, now: datetime) -> Windows:
        next_minute = (now.replace(second=0, microsecond=0) + timedelta(minutes=1))
        next_day = (now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1))
        return cls(
            month=now.strftime("%Y-%m"),
            day=now.strftime("%Y-%m-%d"),
            minute=now.strftime("%Y-%m-%dT%H:%M"),
            seconds_to_next_day=max(1, int((next_day - now).total_seconds() + 0.999)),
            seconds_to_next_minute=max(1, int((next_minute - now).total_seconds() + 0.999)),
        )


@dataclass(frozen=True, slots=True)
class Counts:
    """A key's counts, each with the window it counts in."""

    month: int
    day: int
    minute: int
    month_key: str = ""
    day_key: str = ""
    minute_key: str = ""

    @classmethod
    def current(cls, row: Any, w: Windows) -> Counts:
        """Counts in the current windows from a ``key_usage`` row (or none yet), read by its
        columns' names (a :class:`~stage0.store.statements.UsageRow`, a SQLAlchemy row).

        A window never moves backwards: when the row already counts in a later window than
        ``w`` (another server process, or another host, whose clock is a little ahead; a
        decision made a moment before the row was written), counting goes on in the row's
        window instead of restarting an older one from zero."""
        if row is None:
            return cls(0, 0, 0, w.month, w.day, w.minute)
        month = _window(row.month_key, row.month_count, w.month)
        day = _window(row.day_key, row.day_count, w.day)
        minute = _window(row.minute_key, row.minute_count, w.minute)
        return cls(month[1], day[1], minute[1], month[0], day[0], minute[0])

    def plus_one(self) -> Counts:
        return Counts(self.month + 1, self.day + 1, self.minute + 1, self.month_key,
                      self.day_key, self.minute_key)


def _window(stored_key: str | None, stored_count: int, current: str) -> tuple[str, int]:
    """The window to count in and its count so far (window keys are fixed-width ISO
    strings, so they order as text)."""
    if stored_key is not None and stored_key >= current:
        return stored_key, int(stored_count)
    return current, 0


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    code: str
    """The refusal's stable code (server/errors.py's catalogue)."""
    detail: str
    retry_after: int | None = None


def check_quota(
    counts: Counts,
    w: Windows,
    *,
    monthly: int | None,
    daily: int | None,
    per_minute: int | None,
) -> Refusal | None:
    """Whether one more check fits: 402 for the monthly quota, 429 for daily and per-minute."""
    if monthly is not None and counts.month >= monthly:
        return Refusal(402, "MONTHLY_QUOTA_EXCEEDED", "Monthly quota exceeded")
    if daily is not None and counts.day >= daily:
        return Refusal(429, "DAILY_LIMIT_EXCEEDED", "Daily limit exceeded", w.seconds_to_next_day)
    if per_minute is not None and counts.minute >= per_minute:
        return Refusal(429, "RATE_LIMIT_EXCEEDED", "Rate limit exceeded",
                       w.seconds_to_next_minute)
    return None
