"""Change windows: time-zone aware weekly windows with the next opening time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

DAY_INDEX = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


@dataclass(frozen=True, slots=True)
class CompiledWindow:
    """Open on ``days`` from ``start`` (inclusive) to ``end`` (exclusive), local time in ``zone``.

    A window whose end is not after its start runs past midnight: ``22:00``-``02:00`` on a
    Friday is open from Friday 22:00 to Saturday 02:00.
    """

    name: str
    days: frozenset[int]
    start: time
    end: time
    zone: ZoneInfo
    holidays: frozenset[date] = frozenset()

    def _open_day(self, day: date) -> bool:
        return day.weekday() in self.days and day not in self.holidays

    @property
    def overnight(self) -> bool:
        return self.end <= self.start

    def contains(self, at: datetime) -> bool:
        local = at.astimezone(self.zone)
        now = local.time().replace(tzinfo=None)
        today = local.date()
        if not self.overnight:
            return self._open_day(today) and self.start <= now < self.end
        if self._open_day(today) and now >= self.start:
            return True
        return self._open_day(today - timedelta(days=1)) and now < self.end

    def next_open(self, at: datetime) -> datetime:
        """The next time the window opens after ``at``, in UTC."""
        local = at.astimezone(self.zone)
        for offset in range(370):  # holidays can close weeks in a row
            day = local.date() + timedelta(days=offset)
            if not self._open_day(day):
                continue
            opening = datetime.combine(day, self.start, tzinfo=self.zone)
            if opening > local:
                return opening.astimezone(UTC)
        raise ValueError(f"window `{self.name}` never opens")  # unreachable: days is non-empty

    def describe(self) -> str:
        return _describe(self.days, self.start, self.end, self.zone.key)


@lru_cache(maxsize=256)
def _describe(days: frozenset[int], start: time, end: time, zone: str) -> str:
    names = ",".join(k for k, v in DAY_INDEX.items() if v in days)
    return f"{names} {start:%H:%M}-{end:%H:%M} {zone}"
