"""Schedule maths: uptime windows, durations, clock times. Pure: every function takes `now`.

Times are aware datetimes; results are in UTC (how they are stored), and are shown in the
schedule's own time zone. Daylight-saving rules, by zoneinfo: a start or stop time that does
not exist on a spring-forward day happens at the same instant as one hour later (just after
the gap); one that exists twice on a fall-back day happens at its first occurrence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.errors import PeonError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_ALIASES = {
    "daily": frozenset(range(7)),
    "everyday": frozenset(range(7)),
    "weekdays": frozenset(range(5)),
    "weekends": frozenset({5, 6}),
}
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
MAX_TIMER = timedelta(days=30)


class ScheduleError(PeonError):
    """Bad schedule input: one sentence naming what is wrong and how to write it."""


def parse_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"'{name}' is not a time zone; use a name such as Europe/Berlin or UTC."
        ) from None


def parse_clock(text: str) -> time:
    """'18:00' (seconds are accepted too, '18:00:30', for windows that must end precisely)."""
    m = _CLOCK.match(text.strip())
    h, mi, sec = (int(g) if g else 0 for g in m.groups()) if m else (99, 0, 0)
    if h > 23 or mi > 59 or sec > 59:
        raise ScheduleError(f"'{text}' is not a time of day; use HH:MM, e.g. 18:00.")
    return time(h, mi, sec)


def format_clock(clock: time) -> str:
    return f"{clock:%H:%M:%S}" if clock.second else f"{clock:%H:%M}"


def parse_days(text: str) -> frozenset[int]:
    """'mon-fri', 'weekdays', 'sat,sun', 'fri-mon' (wraps), 'daily' -> weekday numbers."""
    spec = text.strip().lower().replace(" ", "")
    if spec in DAY_ALIASES:
        return DAY_ALIASES[spec]
    days: set[int] = set()
    for part in filter(None, spec.split(",")):
        first, _, last = part.partition("-")
        try:
            a = DAY_NAMES.index(first[:3])
            b = DAY_NAMES.index(last[:3]) if last else a
        except ValueError:
            raise ScheduleError(
                f"'{text}' is not a set of days; use e.g. mon-fri, sat,sun, weekdays or daily."
            ) from None
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    if not days:
        raise ScheduleError("Give at least one day, e.g. mon-fri or daily.")
    return frozenset(days)


def format_days(days: frozenset[int]) -> str:
    for alias, members in DAY_ALIASES.items():
        if days == members and alias != "everyday":
            return alias
    return ",".join(DAY_NAMES[d] for d in sorted(days))


def parse_duration(
    text: str,
    minimum: timedelta = timedelta(minutes=1),
    maximum: timedelta = MAX_TIMER,
    what: str = "A timer",
) -> timedelta:
    """'30m', '1h30m', '2h', '45s', '1d' -> timedelta within [minimum, maximum]."""
    m = _DURATION.match(text.strip().lower().replace(" ", ""))
    if not text.strip() or not m or not any(m.groups()):
        raise ScheduleError(f"'{text}' is not a duration; use e.g. 30m, 1h30m or 2h.")
    d, h, mins, s = (int(g) if g else 0 for g in m.groups())
    delta = timedelta(days=d, hours=h, minutes=mins, seconds=s)
    if not minimum <= delta <= maximum:
        raise ScheduleError(
            f"{what} must be between {format_span(minimum)} and {format_span(maximum)}."
        )
    return delta


def format_span(delta: timedelta) -> str:
    """timedelta -> '1 minute', '10 minutes', '1 h 30 min' for messages."""
    total = round(delta.total_seconds())
    units = (("day", "d", 86400), ("hour", "h", 3600), ("minute", "min", 60), ("second", "s", 1))
    parts = []
    for name, short, size in units:
        n, total = divmod(total, size)
        if n:
            parts.append((n, name, short))
    if len(parts) == 1:
        n, name, _ = parts[0]
        return f"{n} {name}{'s' if n != 1 else ''}"
    return " ".join(f"{n} {short}" for n, _, short in parts) or "0 seconds"


def next_clock_time(clock: time, zone: ZoneInfo, now: datetime) -> datetime:
    """The next moment the wall clock in `zone` shows `clock` (today if still ahead)."""
    local_now = now.astimezone(zone)
    candidate = _at(local_now.date(), clock, zone)
    if candidate <= now:
        candidate = _at(local_now.date() + timedelta(days=1), clock, zone)
    return candidate


def _at(day: date, clock: time, zone: ZoneInfo) -> datetime:
    """Local wall-clock time -> UTC, with the DST rules in the module docstring."""
    local = datetime.combine(day, clock, tzinfo=zone)
    # Round-tripping through UTC normalises a time inside a spring-forward gap.
    return local.astimezone(UTC)


@dataclass(frozen=True)
class UptimeWindow:
    """The server runs from `start` to `stop` on each of `days` (the days a run starts), in
    `zone`. A stop at or before the start means the run ends the next day (crosses midnight);
    start == stop means a full 24 hours."""

    days: frozenset[int]
    start: time
    stop: time
    zone: ZoneInfo

    @classmethod
    def parse(cls, days: str, start: str, stop: str, zone: str) -> UptimeWindow:
        return cls(parse_days(days), parse_clock(start), parse_clock(stop), parse_zone(zone))

    @property
    def crosses_midnight(self) -> bool:
        return self.stop <= self.start

    def describe(self) -> str:
        tail = " (next day)" if self.crosses_midnight else ""
        return (
            f"{format_days(self.days)} {format_clock(self.start)}-{format_clock(self.stop)}"
            f"{tail} {self.zone.key}"
        )

    def runs(
        self, around: datetime, back: int = 2, ahead: int = 8
    ) -> list[tuple[datetime, datetime]]:
        """Every (start, stop) in UTC whose start day is within [around-back, around+ahead]."""
        local_day = around.astimezone(self.zone).date()
        out = []
        for offset in range(-back, ahead + 1):
            day = local_day + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            begin = _at(day, self.start, self.zone)
            end = _at(day + timedelta(days=1 if self.crosses_midnight else 0), self.stop, self.zone)
            if end > begin:  # a run swallowed by a DST gap has no length: skip it
                out.append((begin, end))
        return out

    def intervals(self, now: datetime) -> list[tuple[datetime, datetime]]:
        """The runs near `now`, with overlapping or back-to-back runs merged (a daily
        00:00-00:00 window is one long interval, not a stop and start at midnight)."""
        merged: list[tuple[datetime, datetime]] = []
        for begin, end in sorted(self.runs(now)):
            if merged and begin <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((begin, end))
        return merged

    def current(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The interval `now` falls in (start inclusive, stop exclusive), if any."""
        return next(((b, e) for b, e in self.intervals(now) if b <= now < e), None)

    def is_open(self, now: datetime) -> bool:
        return self.current(now) is not None

    def next_start(self, now: datetime) -> datetime | None:
        """The next start after `now` (None only if no day is selected)."""
        return next((b for b, _ in self.intervals(now) if b > now), None)

    def next_stop(self, now: datetime) -> datetime | None:
        """When the current interval ends, else when the next one does."""
        return next((e for _, e in self.intervals(now) if e > now), None)


DEFAULT_LEADS = (timedelta(minutes=10), timedelta(minutes=1))


@dataclass
class IdleTracker:
    """Decides when a server has been empty long enough to stop.

    A failed probe (`online is None`) neither starts nor resets the clock: a server must be
    seen empty for the whole `limit`, never stopped because a query timed out.
    """

    limit: timedelta
    empty_since: datetime | None = None

    def observe(self, now: datetime, online: int | None) -> bool:
        """Record one count; True once the server has been empty for `limit`."""
        if online is None:
            return False
        if online > 0:
            self.empty_since = None
            return False
        if self.empty_since is None:
            self.empty_since = now
        return now - self.empty_since >= self.limit

    def reset(self) -> None:
        """After a start or stop: nobody has been seen yet."""
        self.empty_since = None


def warning_times(
    stop_at: datetime, now: datetime, leads: tuple[timedelta, ...] = DEFAULT_LEADS
) -> list[tuple[datetime, timedelta]]:
    """When to warn before an automatic stop, and the time left each warning announces.

    Leads already past are dropped; if every lead is past but the stop is still ahead (a
    bot that was down, a postponement shorter than the leads), one warning goes out now.
    """
    ahead = [(stop_at - lead, lead) for lead in sorted(leads, reverse=True) if stop_at - lead > now]
    if not ahead and stop_at > now:
        ahead = [(now, stop_at - now)]
    return ahead
