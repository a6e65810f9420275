"""Schedule rules and the planner: what each schedule row means, which automatic stop or
restart comes next, and what was missed while PEON was down. Pure: every function takes `now`,
so all of it is tested with an injected clock.

One automatic stop (or restart) is pending per server at a time: the earliest one any of its
schedules asks for. A "Keep running" hold (`keep_until`) postpones whichever it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot.consoles import check_command
from bot.models import Schedule
from bot.scheduler import next_cron
from bot.schedules import (
    ScheduleError,
    UptimeWindow,
    format_span,
    parse_duration,
    parse_zone,
)

CRON_ACTIONS = ("start", "stop", "restart", "backup", "console", "update", "update-check")
STOPPING = ("stop", "restart")  # actions that end a session: warned first, postponable
MAX_IDLE = timedelta(days=7)


@dataclass(frozen=True)
class WindowRule:
    window: UptimeWindow

    def describe(self) -> str:
        return f"uptime window {self.window.describe()}"


@dataclass(frozen=True)
class IdleRule:
    limit: timedelta

    def describe(self) -> str:
        return f"stop after {format_span(self.limit)} without players"


@dataclass(frozen=True)
class CronRule:
    expr: str
    zone: ZoneInfo
    action: str
    command: str | None
    only_when_running: bool

    def describe(self) -> str:
        what = f"console `{self.command}`" if self.action == "console" else self.action
        if self.action == "update":
            what = "update when nobody plays"
        cond = " (only when running)" if self.only_when_running else ""
        return f"{what} at cron `{self.expr}` {self.zone.key}{cond}"


@dataclass(frozen=True)
class TimerRule:
    at: datetime
    action: str

    def describe(self) -> str:
        return f"{self.action} once at {self.at:%Y-%m-%d %H:%M:%S} UTC"


Rule = WindowRule | IdleRule | CronRule | TimerRule


def window_spec(days: str, start: str, stop: str, zone: str) -> dict[str, Any]:
    """Validate a window; the spec stored for it (as typed, so it shows as typed)."""
    UptimeWindow.parse(days, start, stop, zone)
    return {"days": days.strip(), "start": start.strip(), "stop": stop.strip(), "zone": zone}


def idle_spec(after: str, minimum: timedelta) -> dict[str, Any]:
    limit = parse_duration(after, minimum, MAX_IDLE, "An idle limit")
    return {"after": int(limit.total_seconds())}


def cron_spec(
    expr: str, zone: str, action: str, command: str | None, only_when_running: bool
) -> dict[str, Any]:
    if action not in CRON_ACTIONS:
        raise ScheduleError(f"'{action}' is not a schedule action; use one of {CRON_ACTIONS}.")
    if action == "console" and not (command and command.strip()):
        raise ScheduleError("A console action needs the command to send.")
    if action != "console" and command:
        raise ScheduleError("Only a console action takes a command.")
    if action == "console" and command:
        check_command(command)  # a newline would be a second command, every time it fires
    next_cron(expr, parse_zone(zone), datetime.now(UTC))  # validates the expression
    return {
        "expr": " ".join(expr.split()),
        "zone": zone,
        "action": action,
        "command": command.strip() if command else None,
        "only_when_running": only_when_running,
    }


def timer_spec(at: datetime, action: str = "stop") -> dict[str, Any]:
    return {"at": at.astimezone(UTC).isoformat(), "action": action}


def rule_of(schedule: Schedule) -> Rule:
    spec = schedule.spec
    if schedule.kind == "window":
        return WindowRule(
            UptimeWindow.parse(spec["days"], spec["start"], spec["stop"], spec["zone"])
        )
    if schedule.kind == "idle":
        return IdleRule(timedelta(seconds=int(spec["after"])))
    if schedule.kind == "cron":
        return CronRule(
            spec["expr"],
            parse_zone(spec["zone"]),
            spec["action"],
            spec.get("command"),
            bool(spec.get("only_when_running")),
        )
    return TimerRule(datetime.fromisoformat(spec["at"]), spec.get("action", "stop"))


@dataclass(frozen=True)
class Due:
    """An automatic stop or restart one schedule asks for. `why` is a noun phrase shown in
    warnings and in the announcement ("end of its uptime window")."""

    server: str
    at: datetime
    action: str
    reason: str  # window | idle | cron | timer | catch-up | hold
    why: str
    schedule_id: int | None = None
    zone: ZoneInfo | None = None

    @property
    def key(self) -> str:
        """Identifies this stop across restarts: what a Keep running hold is bound to."""
        return f"{self.reason}:{self.schedule_id or 0}:{self.action}:{self.at.isoformat()}"


@dataclass(frozen=True)
class Pending:
    """The automatic stop that will happen: `due` held back to `at` by a Keep running."""

    due: Due
    at: datetime
    hold: datetime | None

    @property
    def server(self) -> str:
        return self.due.server

    @property
    def held(self) -> bool:
        return self.at > self.due.at


def candidates(
    server: str,
    schedules: Iterable[Schedule],
    now: datetime,
    *,
    running: bool,
    empty_since: datetime | None,
) -> list[Due]:
    """Every automatic stop/restart the server's active schedules ask for next. Windows and
    idle limits only stop a running server; cron restarts and timers stand either way (a
    restart may start a stopped server, a timer is removed when it comes)."""
    out = []
    for s in schedules:
        if s.paused:
            continue
        rule = rule_of(s)
        if isinstance(rule, WindowRule):
            current = rule.window.current(now) if running else None
            if current is not None:
                out.append(
                    Due(
                        server,
                        current[1],
                        "stop",
                        "window",
                        "end of its uptime window",
                        s.id,
                        rule.window.zone,
                    )
                )
        elif isinstance(rule, IdleRule):
            if running and empty_since is not None:
                why = f"nobody played for {format_span(rule.limit)}"
                out.append(Due(server, empty_since + rule.limit, "stop", "idle", why, s.id))
        elif isinstance(rule, CronRule):
            if rule.action in STOPPING:
                fire = next_cron(rule.expr, rule.zone, now)
                if fire is not None:
                    why = f"scheduled {rule.action} (`{rule.expr}`)"
                    out.append(Due(server, fire, rule.action, "cron", why, s.id, rule.zone))
        else:
            who = s.created_by
            out.append(Due(server, rule.at, rule.action, "timer", f"timer set by {who}", s.id))
    return out


def still_valid(
    due: Due, schedules: Mapping[int, Schedule], *, running: bool, empty_since: datetime | None
) -> bool:
    """Whether a stop whose time has come (held or about to fire) still stands."""
    if due.schedule_id is not None:
        s = schedules.get(due.schedule_id)
        if s is None or s.paused:
            return False
    if due.reason == "idle" and empty_since is None:
        return False
    return running or due.action == "restart" or due.reason == "timer"


def choose(
    dues: Iterable[Due],
    now: datetime,
    *,
    keep_until: datetime | None,
    current: Pending | None,
    overdue_lead: timedelta,
    kept: str | None = None,
) -> Pending | None:
    """The next automatic stop: the earliest due one, held until `keep_until` when that hold
    was given for it (`kept`: the held stop's key; None, a hold given for whichever). The current
    pending stop is returned unchanged when nothing about it changed (its jobs stay as they
    are); a stop already overdue is moved to `now + overdue_lead`, so it is still warned."""
    first = min(dues, key=lambda d: (d.at, d.schedule_id or 0), default=None)
    if first is None:
        return None
    applies = keep_until is not None and keep_until > first.at and kept in (None, first.key)
    hold = keep_until if applies else None
    if current is not None and current.due == first and current.hold == hold:
        return current
    at = hold or first.at
    if at < now:
        at = now + overdue_lead
    return Pending(first, at, hold)


@dataclass(frozen=True)
class CatchUp:
    """What a bot that was down from `last_seen` to `now` must do for one server."""

    start_why: str | None
    stops: tuple[Due, ...]


def catch_up(
    server: str,
    schedules: Iterable[Schedule],
    last_seen: datetime,
    now: datetime,
    *,
    running: bool,
    keep_until: datetime | None,
) -> CatchUp:
    """A window that opened while PEON was down and is still open starts the server; a stop
    time (window end, cron stop) that passed while it was down stops it, after a short
    warning; a Keep running hold that outlives the restart ends in a stop when it runs out.
    Cron starts, restarts and console commands that were missed are not replayed."""
    start_why: str | None = None
    stops: list[Due] = []
    for s in schedules:
        if s.paused:
            continue
        rule = rule_of(s)
        if isinstance(rule, WindowRule):
            w = rule.window
            current = w.current(now)
            if current is None and running:
                ended = [e for _, e in w.intervals(now) if last_seen < e <= now]
                if ended:
                    why = f"end of its uptime window (at {_local(ended[-1], w.zone)})"
                    stops.append(Due(server, ended[-1], "stop", "catch-up", why, s.id, w.zone))
            elif current is not None and not running and last_seen < current[0]:
                start_why = f"its uptime window opened at {_local(current[0], w.zone)}"
        elif isinstance(rule, CronRule) and rule.action == "stop" and running:
            fire = next_cron(rule.expr, rule.zone, last_seen)
            if fire is not None and fire <= now:
                why = f"scheduled stop (`{rule.expr}`) missed while PEON was offline"
                stops.append(Due(server, fire, "stop", "catch-up", why, s.id, rule.zone))
    if running and keep_until is not None and keep_until > now:
        why = "end of the time kept by Keep running"
        stops.append(Due(server, keep_until, "stop", "hold", why))
    return CatchUp(start_why, tuple(stops))


def _local(when: datetime, zone: ZoneInfo) -> str:
    return f"{when.astimezone(zone):%H:%M} {zone.key}"


def next_runs(schedule: Schedule, now: datetime) -> list[tuple[str, datetime]]:
    """What a schedule does next, for /schedule list: (label, when in UTC)."""
    if schedule.paused:
        return []
    rule = rule_of(schedule)
    if isinstance(rule, WindowRule):
        out = []
        stop = rule.window.next_stop(now)
        start = rule.window.next_start(now)
        if start is not None:
            out.append(("start", start))
        if stop is not None:
            out.append(("stop", stop))
        return sorted(out, key=lambda x: x[1])
    if isinstance(rule, CronRule):
        fire = next_cron(rule.expr, rule.zone, now)
        return [(rule.action, fire)] if fire is not None else []
    if isinstance(rule, TimerRule):
        return [(rule.action, rule.at)]
    return []


def schedule_zone(schedule: Schedule, default: ZoneInfo) -> ZoneInfo:
    rule = rule_of(schedule)
    if isinstance(rule, WindowRule):
        return rule.window.zone
    if isinstance(rule, CronRule):
        return rule.zone
    return default
