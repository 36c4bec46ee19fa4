"""Maintenance windows as pure functions of (window spec, now): parsing with errors that name the
field, windows across midnight, across both DST changes, and the next opening."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.errors import Invalid
from shared.windows import canonical, is_open, next_open, parse_window, parse_windows


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_parsing_and_canonical_spelling() -> None:
    assert canonical(["mon-fri 22:00-04:00 Europe/Berlin", "Sat 0:00-24:00 UTC", "Fri-Mon 01:00-02:00 UTC",
                      "daily 09:00-17:30 America/New_York", "Mon,Wed,Fri 12:00-00:00 UTC",
                      "Mon-Fri 22:00-04:00 Europe/Berlin"]) == [
        "Mon-Fri 22:00-04:00 Europe/Berlin", "Sat 00:00-24:00 UTC", "Mon,Fri-Sun 01:00-02:00 UTC",
        "Daily 09:00-17:30 America/New_York", "Mon,Wed,Fri 12:00-24:00 UTC"]
    for bad, words in (("Mon-Fri 22:00 Europe/Berlin", "DAYS HH:MM-HH:MM ZONE"),
                       ("Moon 22:00-04:00 UTC", "not a day"), ("Mon 25:00-04:00 UTC", "outside"),
                       ("Mon 10:00-10:00 UTC", "same time"), ("Mon 22:00-04:00 Mars/Olympus", "IANA"),
                       ("Mon 22:61-23:00 UTC", "outside")):
        with pytest.raises(Invalid, match=words) as info:
            parse_windows(["Sat 00:00-24:00 UTC", bad])
        assert info.value.field == "windows[1]"
    with pytest.raises(Invalid, match="at most 16"):
        parse_windows(["Sat 00:00-24:00 UTC"] * 17)


def test_a_window_across_midnight_belongs_to_the_day_it_opens() -> None:
    nights = [parse_window("Mon-Fri 22:00-04:00 UTC")]
    assert not is_open(nights, at("2026-03-02T21:59:59+00:00"))  # Monday evening
    assert is_open(nights, at("2026-03-02T22:00:00+00:00"))
    assert is_open(nights, at("2026-03-03T03:59:59+00:00"))  # Tuesday early: Monday's night
    assert not is_open(nights, at("2026-03-03T04:00:00+00:00"))
    assert is_open(nights, at("2026-03-07T03:00:00+00:00"))  # Saturday early: Friday's night
    assert not is_open(nights, at("2026-03-07T22:30:00+00:00"))  # Saturday night: not in Mon-Fri
    assert not is_open(nights, at("2026-03-02T01:00:00+00:00"))  # Monday early: Sunday's night
    assert next_open(nights, at("2026-03-07T04:00:00+00:00")) == at("2026-03-09T22:00:00+00:00")
    assert next_open(nights, at("2026-03-03T01:00:00+00:00")) == at("2026-03-03T01:00:00+00:00")  # open now


def test_a_night_window_follows_wall_clock_time_across_both_dst_changes() -> None:
    berlin = [parse_window("Sat 22:00-04:00 Europe/Berlin")]
    # Clocks go forward on Sunday 2026-03-29 at 02:00 CET: the night lasts five real hours.
    assert not is_open(berlin, at("2026-03-28T20:59:00+00:00"))
    assert is_open(berlin, at("2026-03-28T21:00:00+00:00"))  # 22:00 CET
    assert is_open(berlin, at("2026-03-29T01:59:00+00:00"))  # 03:59 CEST
    assert not is_open(berlin, at("2026-03-29T02:00:00+00:00"))  # 04:00 CEST
    # Clocks go back on Sunday 2026-10-25 at 03:00 CEST: seven real hours.
    assert not is_open(berlin, at("2026-10-24T19:59:00+00:00"))
    assert is_open(berlin, at("2026-10-24T20:00:00+00:00"))  # 22:00 CEST
    assert is_open(berlin, at("2026-10-25T02:59:00+00:00"))  # 03:59 CET
    assert not is_open(berlin, at("2026-10-25T03:00:00+00:00"))  # 04:00 CET
    # A window starting in the hour that does not exist opens at the first minute that does.
    skipped = [parse_window("Sun 02:30-05:00 Europe/Berlin")]
    assert next_open(skipped, at("2026-03-28T12:00:00+00:00")) == at("2026-03-29T01:30:00+00:00")  # 03:30 CEST
    # New York changes on another day (2026-03-08): the same local hours, another UTC offset.
    office = [parse_window("Daily 09:00-17:00 America/New_York")]
    assert not is_open(office, at("2026-03-07T13:30:00+00:00"))  # 08:30 EST
    assert is_open(office, at("2026-03-09T13:30:00+00:00"))  # 09:30 EDT
    assert next_open(office, at("2026-03-08T22:00:00+00:00")) == at("2026-03-09T13:00:00+00:00")
