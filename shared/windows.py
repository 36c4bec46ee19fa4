"""Maintenance windows: when a site (and so its devices) may be given a new desired state.

A window is written `DAYS HH:MM-HH:MM ZONE`, e.g. `Mon-Fri 22:00-04:00 Europe/Berlin` or
`Sat 00:00-24:00 UTC`. DAYS is a day (`Mon`), a range (`Mon-Fri`, `Fri-Mon` wraps), a comma list of
those (`Mon,Wed,Sat-Sun`) or `Daily`; ZONE is an IANA time zone. The times are wall-clock times
in that zone, so DST is followed: `22:00-04:00 Europe/Berlin` is 22:00 to 04:00 Berlin time on
every night, five real hours on the night clocks go forward and seven on the night they go back.
An end at or before the start crosses midnight: the window belongs to the day it opens on, so
`Mon-Fri 22:00-04:00` is open from Monday 22:00 to Saturday 04:00 on each of those nights.
A start inside the hour skipped by a DST change is read with the offset before the change
(Python's `fold=0`), so that night's window opens at the first existing minute after it.

Pure: every answer is a function of (windows, now); nothing here reads a clock. No windows at all
means always open.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from shared.errors import Invalid

DEVICE_LABEL = "maintenance-window"  # a device label whose value (windows joined by `;`) overrides its site's
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MAX_WINDOWS = 16
HORIZON_DAYS = 8  # how far `next_open` looks: every weekly window opens within 8 days
_WINDOW_RE = re.compile(r"^\s*(\S+)\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s+(\S+)\s*$")


class Window(msgspec.Struct, frozen=True):
    """One weekly window: the days it opens on (0 = Monday), start and end in minutes after local
    midnight (end 1440 = 24:00; end <= start crosses midnight) and its IANA zone."""

    days: tuple[int, ...]
    start: int
    end: int
    zone: str

    @property
    def text(self) -> str:
        """The canonical spelling (what is stored in events)."""
        return f"{_days_text(self.days)} {_hhmm(self.start)}-{_hhmm(self.end)} {self.zone}"

    def intervals(self, around: datetime, days_before: int = 1, days_after: int = HORIZON_DAYS,
                  ) -> Iterator[tuple[datetime, datetime]]:
        """The window's openings as UTC (start, end) pairs, for the local days around `around`."""
        zone = _zone(self.zone)
        today = around.astimezone(zone).date()
        for offset in range(-days_before, days_after + 1):
            day = today + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opens = _local(day, self.start, zone)
            closes = _local(day if self.end > self.start else day + timedelta(days=1), self.end, zone)
            if closes > opens:  # empty only when both ends fall in a skipped DST hour
                yield opens, closes


def _local(day: date, minutes: int, zone: ZoneInfo) -> datetime:
    if minutes == 24 * 60:
        day, minutes = day + timedelta(days=1), 0
    return datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=zone).astimezone(UTC)


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _days_text(days: tuple[int, ...]) -> str:
    if len(days) == 7:
        return "Daily"
    runs: list[list[int]] = []
    for day in days:
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(DAYS[r[0]] if len(r) == 1 else f"{DAYS[r[0]]}-{DAYS[r[-1]]}" for r in runs)


def _parse_days(text: str, spec: str, field: str) -> tuple[int, ...]:
    if text.lower() in ("daily", "*"):
        return tuple(range(7))
    names = {name.lower(): i for i, name in enumerate(DAYS)}
    days: set[int] = set()
    for part in text.split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(e.lower() not in names for e in ends):
            raise Invalid(f"{part!r} in window {spec!r} is not a day or a day range; write days as "
                          f"Mon-Fri, Sat, Mon,Wed,Fri or Daily", field=field)
        first, last = names[ends[0].lower()], names[ends[-1].lower()]
        day = first
        days.add(day)
        while day != last:  # a range may wrap: Fri-Mon
            day = (day + 1) % 7
            days.add(day)
    return tuple(sorted(days))


def parse_window(text: str, field: str = "windows") -> Window:
    """`Mon-Fri 22:00-04:00 Europe/Berlin` -> Window; Invalid names `field` and what is wrong."""
    match = _WINDOW_RE.match(text)
    if match is None:
        raise Invalid(f"{text!r} is not a maintenance window; write it as `DAYS HH:MM-HH:MM ZONE`, e.g. "
                      f"`Mon-Fri 22:00-04:00 Europe/Berlin` or `Sat 00:00-24:00 UTC`", field=field)
    days_text, h1, m1, h2, m2, zone = match.groups()
    days = _parse_days(days_text, text, field)
    start, end = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
    if int(m1) > 59 or int(m2) > 59 or start >= 24 * 60 or end > 24 * 60:
        raise Invalid(f"window {text!r} has a time outside 00:00-24:00", field=field)
    if start == end:
        raise Invalid(f"window {text!r} opens and closes at the same time; for a whole day write "
                      f"00:00-24:00", field=field)
    try:
        _zone(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"window {text!r}: {zone!r} is not an IANA time zone (e.g. Europe/Berlin, UTC)",
                      field=field) from None
    return Window(days, start, end or 24 * 60, zone)  # an end at 00:00 is midnight: 24:00


def parse_windows(texts: Iterable[str], field: str = "windows") -> tuple[Window, ...]:
    """Several windows (a site is open when any of them is)."""
    windows = tuple(parse_window(text, f"{field}[{i}]") for i, text in enumerate(texts))
    if len(windows) > MAX_WINDOWS:
        raise Invalid(f"at most {MAX_WINDOWS} windows", field=field)
    return windows


def parse_label_windows(value: str, field: str = f"labels.{DEVICE_LABEL}") -> tuple[Window, ...]:
    """The windows of a device's `maintenance-window` label: `Mon-Fri 22:00-04:00 Europe/Berlin; Sat ...`."""
    return parse_windows([part for part in value.split(";") if part.strip()], field)


def canonical(texts: Iterable[str], field: str = "windows") -> list[str]:
    """The windows' canonical spellings, in order, duplicates dropped (what events store)."""
    return list(dict.fromkeys(w.text for w in parse_windows(texts, field)))


def is_open(windows: Sequence[Window], now: datetime) -> bool:
    """Is `now` inside one of `windows`? (No windows: always.)"""
    if not windows:
        return True
    return any(opens <= now < closes for w in windows for opens, closes in w.intervals(now, 1, 1))


def next_open(windows: Sequence[Window], now: datetime) -> datetime | None:
    """`now` when open, else the next moment one of `windows` opens (None: none within 8 days)."""
    if is_open(windows, now):
        return now
    starts = [opens for w in windows for opens, _ in w.intervals(now, 1) if opens > now]
    return min(starts, default=None)
