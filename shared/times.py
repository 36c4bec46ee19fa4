"""Times on the wire are UTC RFC 3339 with microseconds; durations from people are `500ms`, `10s`..."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from shared.errors import Invalid

_NUMBER = r"\d+(?:\.\d+)?"
_DURATION_RE = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h|d))+|{_NUMBER}")
_PART_RE = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_MAX = 366 * 24 * 3600.0  # a year and a day: longer is a typo, and overflows date arithmetic


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only clock edge code should read)."""
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339, UTC, microseconds, `Z` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str, field: str = "time") -> datetime:
    """Parse an RFC 3339 time; a time without a zone is refused rather than guessed."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"{text!r} is not an RFC 3339 time (e.g. 2026-01-02T03:04:05Z)", field=field) from None
    if moment.tzinfo is None:
        raise Invalid(f"{text!r} has no time zone; add Z or an offset", field=field)
    return moment.astimezone(UTC)


def parse_duration(text: str | float | int, field: str = "duration") -> float:
    """Seconds from `500ms`, `10s`, `5m`, `1h`, `30d`, compound forms such as `1h30m`, or a plain
    number of seconds (0 to 366 days): the one duration parser of every flag, setting and query."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        compact = text.strip().replace(" ", "")
        if _DURATION_RE.fullmatch(compact) is None:
            raise Invalid(f"{text!r} is not a duration (use e.g. 500ms, 10s, 5m, 1h30m, 30d)", field=field)
        parts = _PART_RE.findall(compact)
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in parts) if parts else float(compact)
    if seconds < 0:
        raise Invalid("a duration cannot be negative", field=field)
    if not seconds <= DURATION_MAX:  # also refuses NaN
        raise Invalid(f"{text!r} is longer than the longest duration accepted (366 days)", field=field)
    return seconds

