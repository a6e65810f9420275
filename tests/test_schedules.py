"""Uptime windows and schedule input, with an injected clock (no sleeping)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.schedules import (
    ScheduleError,
    UptimeWindow,
    format_days,
    next_clock_time,
    parse_clock,
    parse_days,
    parse_duration,
    parse_zone,
)

BERLIN = ZoneInfo("Europe/Berlin")


def local(y: int, mo: int, d: int, h: int, mi: int = 0, zone: ZoneInfo = BERLIN) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=zone)


def test_weekday_evening_window() -> None:
    w = UptimeWindow.parse("weekdays", "18:00", "23:30", "Europe/Berlin")
    assert w.describe() == "weekdays 18:00-23:30 Europe/Berlin"
    fri_evening = local(2026, 11, 20, 19)  # a Friday
    assert w.is_open(fri_evening)
    assert w.next_stop(fri_evening) == local(2026, 11, 20, 23, 30)
    assert w.next_start(fri_evening) == local(2026, 11, 23, 18)  # Monday
    assert not w.is_open(local(2026, 11, 21, 19))  # Saturday
    assert not w.is_open(local(2026, 11, 20, 23, 30))  # stop is exclusive
    assert w.is_open(local(2026, 11, 20, 18))  # start is inclusive
    assert w.next_start(fri_evening).tzinfo == UTC


def test_window_crossing_midnight_belongs_to_its_start_day() -> None:
    w = UptimeWindow.parse("fri,sat", "20:00", "02:00", "Europe/Berlin")
    assert w.crosses_midnight and w.describe().endswith("(next day) Europe/Berlin")
    assert w.is_open(local(2026, 11, 21, 1))  # Saturday 01:00, from Friday's run
    assert w.is_open(local(2026, 11, 22, 1))  # Sunday 01:00, from Saturday's run
    assert not w.is_open(local(2026, 11, 23, 1))  # Monday 01:00: Sunday has no run
    assert w.next_stop(local(2026, 11, 21, 1)) == local(2026, 11, 21, 2)
    assert w.next_start(local(2026, 11, 21, 1)) == local(2026, 11, 21, 20)


def test_full_day_windows_merge_into_one_interval() -> None:
    w = UptimeWindow.parse("daily", "00:00", "00:00", "UTC")
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    assert w.is_open(now)
    assert w.next_stop(now) > now + timedelta(days=5)  # no stop at each midnight


def test_spring_forward_day() -> None:
    """Europe/Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST; the night is an hour short."""
    w = UptimeWindow.parse("sat", "22:00", "06:00", "Europe/Berlin")
    start, stop = w.current(local(2026, 3, 29, 1))
    assert start == datetime(2026, 3, 28, 21, tzinfo=UTC)  # 22:00 CET
    assert stop == datetime(2026, 3, 29, 4, tzinfo=UTC)  # 06:00 CEST
    assert stop - start == timedelta(hours=7)
    # A start time inside the gap happens just after it (02:30 does not exist that night).
    gap = UptimeWindow.parse("sun", "02:30", "05:00", "Europe/Berlin")
    begin, _ = gap.current(local(2026, 3, 29, 4))
    assert begin.astimezone(BERLIN).strftime("%H:%M %Z") == "03:30 CEST"


def test_fall_back_day() -> None:
    """Europe/Berlin 2026-10-25: 03:00 CEST falls back to 02:00 CET; the night is longer."""
    w = UptimeWindow.parse("sat", "22:00", "06:00", "Europe/Berlin")
    start, stop = w.current(local(2026, 10, 25, 1))
    assert stop - start == timedelta(hours=9)
    # An ambiguous time (02:30 happens twice) means its first occurrence.
    twice = UptimeWindow.parse("sun", "02:30", "04:00", "Europe/Berlin")
    begin, _ = twice.current(datetime(2026, 10, 25, 2, tzinfo=UTC))
    assert begin == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST


def test_next_clock_time_today_or_tomorrow_across_dst() -> None:
    now = datetime(2026, 3, 28, 22, tzinfo=UTC)  # 23:00 CET on the night clocks change
    nxt = next_clock_time(time(9, 0), BERLIN, now)
    assert nxt == datetime(2026, 3, 29, 7, tzinfo=UTC)  # 09:00 CEST
    assert next_clock_time(time(23, 30), BERLIN, now) == datetime(2026, 3, 28, 22, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("weekdays", {0, 1, 2, 3, 4}),
        ("Sat, Sun", {5, 6}),
        ("fri-mon", {4, 5, 6, 0}),
        ("daily", set(range(7))),
        ("wed", {2}),
        ("monday,friday", {0, 4}),
    ],
)
def test_parse_days(text: str, days: set[int]) -> None:
    assert parse_days(text) == days


def test_format_days() -> None:
    assert format_days(parse_days("mon-fri")) == "weekdays"
    assert format_days(parse_days("mon,wed")) == "mon,wed"
    assert format_days(parse_days("daily")) == "daily"


@pytest.mark.parametrize(
    ("text", "minutes"), [("30m", 30), ("1h30m", 90), ("2h", 120), ("1d", 1440), (" 90m ", 90)]
)
def test_parse_duration(text: str, minutes: int) -> None:
    assert parse_duration(text) == timedelta(minutes=minutes)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: parse_zone("Mars/Olympus"), "'Mars/Olympus' is not a time zone"),
        (lambda: parse_clock("25:00"), "'25:00' is not a time of day; use HH:MM"),
        (lambda: parse_clock("7pm"), "is not a time of day"),
        (lambda: parse_days("someday"), "'someday' is not a set of days"),
        (lambda: parse_days(","), "Give at least one day"),
        (lambda: parse_duration("soon"), "'soon' is not a duration"),
        (lambda: parse_duration("30s"), "between 1 minute and 30 days"),
        (lambda: parse_duration("31d"), "between 1 minute and 30 days"),
    ],
)
def test_bad_input_is_one_clear_sentence(call, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        call()


def test_idle_tracker_needs_the_whole_limit_of_empty_counts() -> None:
    from bot.schedules import IdleTracker

    t0 = datetime(2026, 11, 21, 20, tzinfo=UTC)
    idle = IdleTracker(timedelta(minutes=15))
    assert not idle.observe(t0, 0)
    assert not idle.observe(t0 + timedelta(minutes=10), None)  # a failed probe changes nothing
    assert not idle.observe(t0 + timedelta(minutes=14), 0)
    assert idle.observe(t0 + timedelta(minutes=15), 0)
    assert not idle.observe(t0 + timedelta(minutes=16), 2)  # someone joined: clock resets
    assert not idle.observe(t0 + timedelta(minutes=17), 0)
    assert idle.observe(t0 + timedelta(minutes=32), 0)
    idle.reset()
    assert idle.empty_since is None


def test_warning_times_default_leads_and_catch_up() -> None:
    from bot.schedules import warning_times

    now = datetime(2026, 11, 21, 20, tzinfo=UTC)
    stop = now + timedelta(minutes=30)
    assert warning_times(stop, now) == [
        (stop - timedelta(minutes=10), timedelta(minutes=10)),
        (stop - timedelta(minutes=1), timedelta(minutes=1)),
    ]
    soon = now + timedelta(minutes=5)  # the 10-minute lead is already past
    assert warning_times(soon, now) == [(soon - timedelta(minutes=1), timedelta(minutes=1))]
    sooner = now + timedelta(seconds=30)  # every lead past: one warning now
    assert warning_times(sooner, now) == [(now, timedelta(seconds=30))]
    assert warning_times(now - timedelta(minutes=1), now) == []  # the stop itself is past
