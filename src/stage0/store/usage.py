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
    month: int
    day: int
    minute: int

    @classmethod
    def current(cls, row: Any, w: Windows) -> Counts:
        """Counts in the current windows from a ``key_usage`` row (or none yet)."""
        if row is None:
            return cls(0, 0, 0)
        month_key, month_count, day_key, day_count, minute_key, minute_count = row
        return cls(
            month_count if month_key == w.month else 0,
            day_count if day_key == w.day else 0,
            minute_count if minute_key == w.minute else 0,
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
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
        return Refusal(402, "Monthly quota exceeded")
    if daily is not None and counts.day >= daily:
        return Refusal(429, "Daily limit exceeded", w.seconds_to_next_day)
    if per_minute is not None and counts.minute >= per_minute:
        return Refusal(429, "Rate limit exceeded", w.seconds_to_next_minute)
    return None
