"""The planner, with an injected clock: which automatic stop comes next, how Keep running
holds it, and what a bot that was down catches up on. No sleeping, no Discord, no engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot import rules
from bot.models import Schedule
from bot.rules import Due, Pending
from bot.schedules import IdleTracker, ScheduleError

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # a Friday
LEAD = timedelta(minutes=1)


def sched(sid: int, kind: str, spec: dict[str, Any], paused: bool = False) -> Schedule:
    return Schedule(sid, "alpha", kind, spec, paused, "discord:42", T0)


def window(sid: int, days: str, start: str, stop: str, zone: str = "UTC", **kw: Any) -> Schedule:
    return sched(sid, "window", rules.window_spec(days, start, stop, zone), **kw)


def plan(
    schedules: list[Schedule],
    now: datetime,
    *,
    running: bool = True,
    empty_since: datetime | None = None,
    keep: datetime | None = None,
    current: Pending | None = None,
) -> Pending | None:
    dues = rules.candidates("alpha", schedules, now, running=running, empty_since=empty_since)
    return rules.choose(dues, now, keep_until=keep, current=current, overdue_lead=LEAD)


def test_window_stop_only_for_a_running_server_inside_the_window() -> None:
    w = window(1, "weekdays", "18:00", "23:30", "Europe/Berlin")
    evening = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)  # 19:00 in Berlin
    p = plan([w], evening)
    assert p is not None and p.due.reason == "window" and p.due.action == "stop"
    assert p.at == datetime(2026, 11, 20, 22, 30, tzinfo=UTC)  # 23:30 CET
    assert p.due.why == "end of its uptime window"
    assert plan([w], evening, running=False) is None
    assert plan([w], T0) is None  # a server started by hand outside its window is left alone
    assert (
        plan([window(1, "weekdays", "18:00", "23:30", "Europe/Berlin", paused=True)], evening)
        is None
    )


def test_window_crossing_midnight_stops_the_next_day() -> None:
    w = window(1, "fri", "22:00", "02:00")
    late = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)  # Saturday 01:00, the Friday run
    p = plan([w], late)
    assert p is not None and p.at == datetime(2026, 11, 21, 2, 0, tzinfo=UTC)


def test_window_ending_inside_the_spring_forward_gap() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29: the stop comes just after the gap.
    w = window(1, "sat", "20:00", "02:30", "Europe/Berlin")
    now = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # 00:00 CET on the 29th
    p = plan([w], now)
    assert p is not None and p.at == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST


def test_window_ending_in_the_repeated_fall_back_hour() -> None:
    # 02:30 exists twice in Berlin on 2026-10-25: the first one counts (00:30 UTC).
    w = window(1, "sat", "20:00", "02:30", "Europe/Berlin")
    now = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)
    p = plan([w], now)
    assert p is not None and p.at == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_idle_stop_follows_the_tracker() -> None:
    idle = sched(2, "idle", rules.idle_spec("30m", timedelta(minutes=1)))
    tracker = IdleTracker(timedelta(minutes=30))
    tracker.observe(T0, 2)
    assert plan([idle], T0, empty_since=tracker.empty_since) is None
    tracker.observe(T0 + timedelta(minutes=5), 0)
    tracker.observe(T0 + timedelta(minutes=6), None)  # a failed probe changes nothing
    p = plan([idle], T0 + timedelta(minutes=6), empty_since=tracker.empty_since)
    assert p is not None and p.at == T0 + timedelta(minutes=35)
    assert p.due.why == "nobody played for 30 minutes"
    tracker.observe(T0 + timedelta(minutes=10), 1)  # someone came back
    assert plan([idle], T0 + timedelta(minutes=10), empty_since=tracker.empty_since) is None


def test_earliest_schedule_wins() -> None:
    w = window(1, "daily", "10:00", "20:00")
    timer = sched(3, "timer", rules.timer_spec(T0 + timedelta(hours=2)))
    cron = sched(4, "cron", rules.cron_spec("0 16 * * *", "UTC", "restart", None, False))
    p = plan([w, timer, cron], T0)
    assert p is not None and p.due.reason == "timer" and p.at == T0 + timedelta(hours=2)
    assert p.due.why == "timer set by discord:42"
    p = plan([w, cron], T0)
    assert p is not None and p.due.action == "restart" and p.at == T0 + timedelta(hours=4)
    # A cron restart stands for a stopped server too (it starts it); a window does not.
    p = plan([w, cron], T0, running=False)
    assert p is not None and p.due.reason == "cron"


def test_keep_running_holds_the_stop_and_survives_its_due_time() -> None:
    w = window(1, "daily", "10:00", "12:30")
    p = plan([w], T0)
    assert p is not None and p.at == T0 + timedelta(minutes=30) and not p.held
    keep = p.at + timedelta(hours=1)
    held = plan([w], T0, keep=keep, current=p)
    assert held is not None and held.at == keep and held.held and held.due == p.due
    # Past the window's end the window asks for nothing, but the held stop still stands.
    after = T0 + timedelta(minutes=45)
    by_id = {1: w}
    assert rules.still_valid(held.due, by_id, running=True, empty_since=None)
    again = rules.choose([held.due], after, keep_until=keep, current=held, overdue_lead=LEAD)
    assert again is held  # unchanged: its jobs are left as they are
    # Removing or pausing the schedule, or the server stopping, drops it.
    assert not rules.still_valid(held.due, {}, running=True, empty_since=None)
    assert not rules.still_valid(held.due, by_id, running=False, empty_since=None)


def test_a_hold_postpones_only_the_stop_it_was_given_for() -> None:
    held_stop = Due("alpha", T0 + timedelta(minutes=10), "stop", "timer", "timer", 1)
    keep = T0 + timedelta(hours=1)
    p = rules.choose([held_stop], T0, keep_until=keep, current=None, overdue_lead=LEAD,
                     kept=held_stop.key)  # fmt: skip
    assert p is not None and p.at == keep and p.held
    # A stop planned later (a new timer), before the hold runs out: not postponed by it.
    other = Due("alpha", T0 + timedelta(minutes=20), "stop", "timer", "timer", 2)
    p = rules.choose([other], T0, keep_until=keep, current=None, overdue_lead=LEAD,
                     kept=held_stop.key)  # fmt: skip
    assert p is not None and p.at == other.at and not p.held


def test_an_overdue_stop_is_warned_shortly_not_at_once() -> None:
    timer = sched(3, "timer", rules.timer_spec(T0 - timedelta(minutes=5)))
    p = plan([timer], T0)
    assert p is not None and p.at == T0 + LEAD


def test_catch_up_starts_a_window_that_opened_while_down() -> None:
    w = window(1, "daily", "11:00", "20:00")
    down_from = T0 - timedelta(hours=2)  # 10:00: down before 11:00, back at 12:00
    result = rules.catch_up("alpha", [w], down_from, T0, running=False, keep_until=None)
    assert result.start_why == "its uptime window opened at 11:00 UTC" and result.stops == ()
    # Open already before PEON went down: somebody stopped it by hand; leave it stopped.
    result = rules.catch_up(
        "alpha", [w], T0 - timedelta(minutes=5), T0, running=False, keep_until=None
    )
    assert result.start_why is None


def test_catch_up_stops_after_a_window_ended_while_down() -> None:
    w = window(1, "daily", "06:00", "11:30")
    result = rules.catch_up(
        "alpha", [w], T0 - timedelta(hours=1), T0, running=True, keep_until=None
    )
    assert result.start_why is None
    (due,) = result.stops
    assert due.reason == "catch-up" and due.at == T0 - timedelta(minutes=30)
    assert due.why == "end of its uptime window (at 11:30 UTC)"
    # It becomes a stop one short warning from now.
    p = rules.choose(result.stops, T0, keep_until=None, current=None, overdue_lead=LEAD)
    assert p is not None and p.at == T0 + LEAD
    # Ended before PEON went down: not ours to catch up (someone started it since).
    result = rules.catch_up(
        "alpha", [w], T0 - timedelta(minutes=10), T0, running=True, keep_until=None
    )
    assert result.stops == ()


def test_catch_up_cron_stop_and_hold() -> None:
    cron = sched(4, "cron", rules.cron_spec("0 11 * * *", "UTC", "stop", None, False))
    result = rules.catch_up(
        "alpha",
        [cron],
        T0 - timedelta(hours=2),
        T0,
        running=True,
        keep_until=T0 + timedelta(minutes=20),
    )
    reasons = sorted(d.reason for d in result.stops)
    assert reasons == ["catch-up", "hold"]
    hold = next(d for d in result.stops if d.reason == "hold")
    assert hold.at == T0 + timedelta(minutes=20)
    # The missed stop is held too: Keep running was pressed before the restart.
    p = rules.choose(
        result.stops, T0, keep_until=T0 + timedelta(minutes=20), current=None, overdue_lead=LEAD
    )
    assert p is not None and p.at == T0 + timedelta(minutes=20)


def test_next_runs_for_listing() -> None:
    w = window(1, "daily", "18:00", "23:00")
    assert rules.next_runs(w, T0) == [
        ("start", datetime(2026, 11, 20, 18, tzinfo=UTC)),
        ("stop", datetime(2026, 11, 20, 23, tzinfo=UTC)),
    ]
    cron = sched(4, "cron", rules.cron_spec("30 4 * * mon", "Europe/Berlin", "restart", None, True))
    assert rules.next_runs(cron, T0) == [("restart", datetime(2026, 11, 23, 3, 30, tzinfo=UTC))]
    assert rules.next_runs(window(1, "daily", "18:00", "23:00", paused=True), T0) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: rules.window_spec("funday", "18:00", "23:00", "UTC"),
            "'funday' is not a set of days",
        ),
        (
            lambda: rules.window_spec("daily", "18:00", "24:00", "UTC"),
            "'24:00' is not a time of day",
        ),
        (lambda: rules.window_spec("daily", "18:00", "23:00", "Mars/Olympus"), "not a time zone"),
        (lambda: rules.idle_spec("10s", timedelta(minutes=1)), "between 1 minute and 7 days"),
        (
            lambda: rules.cron_spec("61 * * * *", "UTC", "stop", None, False),
            "is not a cron expression",
        ),
        (
            lambda: rules.cron_spec("0 4 * * *", "UTC", "explode", None, False),
            "not a schedule action",
        ),
        (lambda: rules.cron_spec("0 4 * * *", "UTC", "console", None, False), "needs the command"),
        (lambda: rules.cron_spec("0 4 * * *", "UTC", "stop", "say hi", False), "Only a console"),
    ],
)
def test_bad_schedule_input_is_one_sentence(make: Any, message: str) -> None:
    with pytest.raises(ScheduleError, match=message.replace("(", r"\(")) as e:
        make()
    assert "\n" not in str(e.value)


def test_due_equality_keeps_jobs_stable() -> None:
    d = Due("alpha", T0, "stop", "window", "end of its uptime window", 1)
    current = Pending(d, T0, None)
    assert (
        rules.choose(
            [d], T0 - timedelta(minutes=1), keep_until=None, current=current, overdue_lead=LEAD
        )
        is current
    )
