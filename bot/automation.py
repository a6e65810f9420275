"""Automation: uptime windows, idle shutdown, cron actions and timers, run by the scheduler.

Schedules are rows in the store (the source of truth); the jobs are rebuilt from them when
`start()` runs. Jobs call services, never Discord: what users must hear goes through a
`Notifier`, which the bot implements (tests can record it). Every automatic stop or restart
is announced ahead through the notifier at the configured lead times and, in game, through
the war plan's `say` command; "Keep running" postpones it, "Stop now" brings it forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from bot import rules
from bot.aio import quietly
from bot.backups import BackupService
from bot.errors import PeonError, ServerBusy, ServerNotFound
from bot.models import Schedule, ServerRecord
from bot.players import PlayerCount
from bot.rules import CronRule, Due, IdleRule, Pending, WindowRule
from bot.scheduler import Scheduler
from bot.schedules import (
    IdleTracker,
    ScheduleError,
    format_span,
    next_clock_time,
    parse_clock,
    parse_duration,
    parse_zone,
    warning_times,
)
from bot.servers import ServerService, ServerSummary
from bot.settings import AutomationSettings
from bot.store import Store
from bot.updates import UpdateService

log = logging.getLogger(__name__)
# Jobs report through the notifier; an error there must not kill the job.
_quiet = functools.partial(quietly, what="automation step", logger=log)

HEARTBEAT_KEY = "automation.last_seen"
UPDATES_KEY = "automation.updates"  # the updates waiting for their server to be empty
UPDATE_ACTOR = "peon:update"
BUSY_RETRY = timedelta(minutes=1)  # an automatic action that met a running operation retries
RETRY_WINDOW = timedelta(minutes=1)  # a timer this close to an existing one is a retry
# A warned update is planned this much beyond its first lead, so that warning is still ahead
# when the plan is armed.
UPDATE_WARN_SLACK = timedelta(seconds=1)


@dataclass(frozen=True)
class Warning:
    server: str
    action: str  # stop | restart
    at: datetime
    left: timedelta
    why: str
    zone: ZoneInfo
    keep_for: timedelta


class Notifier(Protocol):
    """What automation tells people; the Discord bot posts it in the notification channel."""

    async def warn(self, warning: Warning) -> None: ...

    async def acted(self, server: str, action: str, why: str, connect: str | None) -> None:
        """An automatic start, stop or restart happened (connect: the address, if up)."""

    async def failed(self, server: str, action: str, why: str, error: str) -> None: ...

    async def cancelled(self, server: str, action: str, why: str) -> None:
        """A warned stop will not happen after all (players came back, schedule removed)."""

    async def players(
        self, server: str, joined: list[str], left: list[str], online: int
    ) -> None: ...

    async def update_waiting(self, wait: UpdateWait, online: int | None, when_busy: str) -> None:
        """An update waits for the players to leave (at most until `wait.until`; then, as
        `when_busy` says, warned and done or skipped)."""

    async def update_done(self, server: str, why: str, changed: bool, restarted: bool) -> None:
        """An update asked to wait for an empty server happened."""

    async def update_skipped(self, server: str, why: str, reason: str) -> None:
        """Players were still on when the wait ran out, and updates are set to be skipped."""


@dataclass(frozen=True)
class UpdateWait:
    """An update waiting for its server to be empty (kept in the store across restarts)."""

    server: str
    since: datetime
    until: datetime
    why: str
    actor: str


@dataclass(frozen=True)
class UpdateRequest:
    """What asking for an update when nobody plays did."""

    server: str
    now: bool  # nobody played: the update started at once
    online: int | None  # players on when asked (None: could not be counted)
    until: datetime  # players still on then: warned and updated anyway, or skipped
    when_busy: str  # automation.update_when_busy
    already: bool = False  # an update of this server was already waiting


@dataclass(frozen=True)
class ScheduleView:
    schedule: Schedule
    description: str
    next_runs: list[tuple[str, datetime]]
    zone: ZoneInfo


Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Automation:
    def __init__(
        self,
        *,
        servers: ServerService,
        backups: BackupService | None = None,
        updates: UpdateService | None = None,
        store: Store,
        scheduler: Scheduler,
        settings: AutomationSettings,
        notifier: Notifier,
        clock: Clock = _utcnow,
    ) -> None:
        self.servers, self.store, self.scheduler = servers, store, scheduler
        self.backups, self.updates = backups, updates
        self.settings, self.notifier, self.clock = settings, notifier, clock
        self.leads = settings.leads
        self.zone = settings.zone
        self._pending: dict[str, Pending] = {}
        self._forced: dict[str, list[Due]] = defaultdict(list)  # catch-up stops
        self._idle: dict[str, IdleTracker] = {}
        self._seen_names: dict[str, set[str]] = {}
        self._updates: dict[str, UpdateWait] = {}
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        # Listings are numbered; a replan that asked the engine itself records the number
        # current then, so a tick's listing never overrides what was learnt after it.
        self._listing = 0
        self._fresh: dict[str, int] = {}

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild every job from the schedules table, then catch up on what happened while
        PEON was not running, then start the scheduler and the player watch."""
        now = self.clock()
        seen_text = await self.store.get_meta(HEARTBEAT_KEY)
        last_seen = datetime.fromisoformat(seen_text) if seen_text else now
        schedules = await self.store.list_schedules()
        await self._load_updates()
        by_server: dict[str, list[Schedule]] = defaultdict(list)
        for s in schedules:
            by_server[s.server].append(s)
            self._arm(s)
        self.scheduler.start()
        self._started = True
        # One listing per host, then every server's catch-up side by side (bounded): with
        # hundreds of scheduled servers, one after another would hold up the bot's start.
        listed = {s.record.name: s for s in await self.servers.list_servers()}

        async def catch_up(server: str) -> None:
            await self._catch_up(server, by_server[server], last_seen, now, listed.get(server))

        await self.servers.fanout.each(
            "catch-up", sorted(by_server), catch_up, key=str, host=self._host_of(listed)
        )
        await self._beat()
        self.scheduler.every("auto:tick", self.settings.check_interval, self.tick)

    async def close(self) -> None:
        self.scheduler.shutdown()
        for task in list(self._tasks):
            task.cancel()
        if self._started:
            try:
                await self._beat()
            except Exception:  # closing must not fail on a store that is already gone
                log.warning("could not record the automation heartbeat", exc_info=True)

    async def _beat(self) -> None:
        await self.store.set_meta(HEARTBEAT_KEY, self.clock().isoformat())

    def reconfigure(self, settings: AutomationSettings) -> None:
        """Settings from a reload. The warnings still ahead of each planned stop follow the
        new leads (none is sent again, nor one whose time has passed), the player watch its
        new interval; schedules keep the time zones they were made with."""
        old, self.settings = self.settings, settings
        self.leads, self.zone = settings.leads, settings.zone
        if self._started and settings.check_interval != old.check_interval:
            self.scheduler.every("auto:tick", settings.check_interval, self.tick)
        if settings.leads == old.leads:
            return
        now = self.clock()
        for server, p in self._pending.items():
            self.scheduler.cancel_prefix(f"auto:stop:{server}:warn")
            for i, (when, left) in enumerate(warning_times(p.at, now, self.leads)):
                if when > now:
                    self.scheduler.at(f"auto:stop:{server}:warn{i}", when,
                                      functools.partial(self._warn, server, p, left))  # fmt: skip

    async def _catch_up(
        self,
        server: str,
        rows: list[Schedule],
        last_seen: datetime,
        now: datetime,
        listed: ServerSummary | None = None,
    ) -> None:
        try:
            if listed is not None and not listed.unreachable:
                running = listed.container is not None and listed.container.running
            else:
                running = await self.servers.is_running(server)
            keep = await self.store.keep_until(server)
        except PeonError as e:
            log.warning("schedules of %s not checked at startup: %s", server, e)
            return
        result = rules.catch_up(server, rows, last_seen, now, running=running, keep_until=keep)
        self._forced[server] = list(result.stops)
        if result.start_why is not None:
            log.info("starting %s: %s while PEON was offline", server, result.start_why)
            self._spawn(self._auto_start(server, result.start_why))
        else:
            await self.replan(server, running=running)

    # --- arming jobs ------------------------------------------------------------------------

    def _arm(self, s: Schedule) -> None:
        """Jobs of one schedule that are not automatic stops (those come from `replan`)."""
        self.scheduler.cancel_prefix(f"auto:s{s.id}:")
        if s.paused:
            return
        rule = rules.rule_of(s)
        now = self.clock()
        if isinstance(rule, WindowRule):
            start = rule.window.next_start(now)
            if start is not None:
                self.scheduler.at(
                    f"auto:s{s.id}:open", start, functools.partial(self._window_open, s.id)
                )
        elif isinstance(rule, CronRule) and rule.action not in rules.STOPPING:
            self.scheduler.cron(
                f"auto:s{s.id}:cron", rule.expr, rule.zone, functools.partial(self._cron, s.id)
            )

    async def replan(
        self,
        server: str,
        *,
        running: bool | None = None,
        rows: list[Schedule] | None = None,
    ) -> Pending | None:
        """Recompute the server's next automatic stop and (re)arm its warnings and its stop.
        `running`: whether it runs, as a listing just said (else the engine is asked);
        `rows`: its schedules, as just read (else the store is asked)."""
        async with self._locks[server]:
            return await self._replan(server, running, rows)

    async def _replan(
        self, server: str, listed: bool | None = None, read: list[Schedule] | None = None
    ) -> Pending | None:
        now = self.clock()
        current = self._pending.get(server)
        try:
            rows = await self.store.list_schedules(server) if read is None else read
            if listed is None:
                self._fresh[server] = self._listing
                running = await self.servers.is_running(server)
            else:
                running = listed
            keep = await self.store.keep_until(server)
            kept = await self.store.kept_due(server)
        except ServerNotFound:
            self._forget(server)
            return None
        except PeonError as e:
            # The engine is unreachable: keep what is planned and try again at the next tick.
            log.warning("cannot plan the automatic stops of %s: %s", server, e)
            return current
        tracker = self._idle.get(server)
        empty_since = tracker.empty_since if tracker is not None else None
        by_id = {s.id: s for s in rows}
        dues = rules.candidates(server, rows, now, running=running, empty_since=empty_since)
        forced = [
            d
            for d in self._forced.get(server, [])
            if rules.still_valid(d, by_id, running=running, empty_since=empty_since)
        ]
        self._forced[server] = forced
        dues += forced
        if (
            current is not None
            and current.due.at <= now
            and rules.still_valid(current.due, by_id, running=running, empty_since=empty_since)
        ):
            dues.append(current.due)  # its time has come (or it is held): keep it
        new = rules.choose(
            dues,
            now,
            keep_until=keep,
            current=current,
            overdue_lead=self.settings.catch_up_lead,
            kept=kept,
        )
        if keep is not None and (new is None or new.hold is None):
            # The stop it held is gone (fired, stopped by hand, schedule changed) or it ran
            # out: a stale hold must not postpone a later stop, nor stop the server after a
            # restart as "the end of the time kept".
            await self.store.set_keep_until(server, None)
        if new is current:
            return new
        self.scheduler.cancel_prefix(f"auto:stop:{server}:")
        if new is None:
            self._pending.pop(server, None)
            if current is not None and running and current.due.action in rules.STOPPING:
                await _quiet(
                    self.notifier.cancelled(server, current.due.action, self._cancel_why(current))
                )
            return None
        self._pending[server] = new
        self._arm_pending(server, new)
        log.info(
            "%s: automatic %s at %s (%s)", server, new.due.action, new.at.isoformat(), new.due.why
        )
        return new

    def _arm_pending(self, server: str, p: Pending) -> None:
        """The jobs of a pending stop: its warnings still ahead, and the stop itself."""
        for i, (when, left) in enumerate(warning_times(p.at, self.clock(), self.leads)):
            self.scheduler.at(
                f"auto:stop:{server}:warn{i}", when, functools.partial(self._warn, server, p, left)
            )
        self.scheduler.at(
            f"auto:stop:{server}:fire", p.at, functools.partial(self._fire, server, p)
        )

    @staticmethod
    def _cancel_why(p: Pending) -> str:
        return "players are back" if p.due.reason == "idle" else "its schedule changed"

    def _forget(self, server: str) -> None:
        self.scheduler.cancel_prefix(f"auto:stop:{server}:")
        self._pending.pop(server, None)
        self._forced.pop(server, None)
        self._idle.pop(server, None)
        self._seen_names.pop(server, None)
        self._updates.pop(server, None)

    # --- the jobs ---------------------------------------------------------------------------

    async def _warn(self, server: str, p: Pending, left: timedelta) -> None:
        if self._pending.get(server) is not p:
            return
        if not await self._running(server):
            return  # nothing to warn about: a stopped server (a restart would just start it)
        zone = p.due.zone or self.zone
        warning = Warning(server, p.due.action, p.at, left, p.due.why, zone, self.settings.keep_for)
        await _quiet(self.notifier.warn(warning))
        verb = {"stop": "stops", "update": "restarts to update"}.get(p.due.action, "restarts")
        text = f"This server {verb} in {format_span(left)} ({p.due.why})."
        try:
            await self.servers.say(server, text)
        except PeonError as e:
            log.info("in-game warning for %s not sent: %s", server, e)

    async def _fire(self, server: str, p: Pending) -> None:
        async with self._locks[server]:
            if self._pending.get(server) is not p:
                return  # replaced or cancelled since this job was armed
            del self._pending[server]
            self._forced[server] = [d for d in self._forced.get(server, []) if d != p.due]
        skip = await self._only_when_running(p.due)
        await self._act(
            server, p.due.action, p.due.why, p.due, actor=f"peon:{p.due.reason}", skip_if_down=skip
        )
        if p.due.reason == "timer" and p.due.schedule_id is not None:
            with contextlib.suppress(PeonError):  # removed meanwhile
                await self.store.remove_schedule(p.due.schedule_id)
        await self._beat()
        await _quiet(self.replan(server))

    async def _act(
        self,
        server: str,
        action: str,
        why: str,
        due: Due | None,
        *,
        actor: str,
        skip_if_down: bool = False,
    ) -> None:
        """Run one automatic start/stop/restart and say what happened."""
        tracker = self._idle.get(server)
        try:
            if action == "stop":
                if await self.servers.stop(server, actor=actor):
                    await _quiet(self.notifier.acted(server, "stop", why, None))
            elif action == "restart":
                if skip_if_down and not await self.servers.is_running(server):
                    log.info("%s: restart skipped, the server is not running", server)
                    return
                result = await self.servers.restart(server, actor=actor)
                await _quiet(self.notifier.acted(server, "restart", why, result.connect()))
            elif action == "update":
                await self._update_now(server)  # says itself what happened
            else:
                started = await self.servers.start(server, actor=actor)
                if not started.already_running:
                    await _quiet(self.notifier.acted(server, "start", why, started.connect()))
        except ServerBusy:
            if due is not None:
                retry = Due(
                    due.server,
                    self.clock() + BUSY_RETRY,
                    due.action,
                    due.reason,
                    due.why,
                    None,
                    due.zone,
                )
                self._forced[server].append(retry)
                log.info("%s is busy; automatic %s retried in a minute", server, action)
        except ServerNotFound:
            self._forget(server)
        except PeonError as e:
            await _quiet(self.notifier.failed(server, action, why, str(e)))
        finally:
            if tracker is not None:
                tracker.reset()

    async def _only_when_running(self, due: Due) -> bool:
        if due.reason != "cron" or due.schedule_id is None:
            return False
        try:
            rule = rules.rule_of(await self.store.get_schedule(due.schedule_id))
        except PeonError:
            return True
        return isinstance(rule, CronRule) and rule.only_when_running

    async def _window_open(self, schedule_id: int) -> None:
        try:
            s = await self.store.get_schedule(schedule_id)
        except PeonError:
            return
        self._arm(s)  # the next opening
        await self._auto_start(s.server, "start of its uptime window")

    async def _auto_start(self, server: str, why: str) -> None:
        await self._act(server, "start", why, None, actor="peon:window")
        await self._beat()
        await _quiet(self.replan(server))

    async def _cron(self, schedule_id: int) -> None:
        try:
            s = await self.store.get_schedule(schedule_id)
        except PeonError:
            return
        rule = rules.rule_of(s)
        if not isinstance(rule, CronRule) or s.paused:
            return
        running = await self._running(s.server)
        if rule.only_when_running and not running:
            log.info("%s: cron %s skipped, the server is not running", s.server, rule.action)
            return
        why = f"scheduled {rule.action} (`{rule.expr}`)"
        if rule.action in ("update", "update-check"):
            try:
                if rule.action == "update":
                    await self.update_when_empty(s.server, actor="peon:cron", why=why)
                elif self.updates is not None:
                    await self.updates.check(s.server, actor="peon:cron")
            except PeonError as e:
                await _quiet(self.notifier.failed(s.server, rule.action, why, str(e)))
            return
        if rule.action in ("console", "backup"):
            try:
                if rule.action == "backup" and self.backups is not None:
                    await self.backups.create(s.server, actor="peon:cron", trigger="schedule")
                elif rule.command:
                    await self.servers.console(s.server, rule.command, actor="peon:cron")
            except PeonError as e:
                await _quiet(self.notifier.failed(s.server, rule.action, why, str(e)))
            return
        await self._act(s.server, rule.action, why, None, actor="peon:cron")
        await _quiet(self.replan(s.server))

    async def tick(self) -> None:
        """Every check interval: record that PEON is up, count players where an idle limit or
        announcements need them, and replan every scheduled server (a server started or
        stopped by hand gets, or loses, its automatic stop here).

        The servers are listed once per host, then checked side by side within the checks
        limits (`servers.fanout`): each within its own deadline, a failure or a silent player
        query of one delaying no other, and a server whose check from the last tick still
        runs is not checked again meanwhile."""
        await self._beat()
        # What a killed `peon` process left (a lease, a partial backup) is cleaned up here,
        # not at the bot's next restart.
        await _quiet(self.servers.recover_interrupted("peon:tick"))
        if self.backups is not None:
            await _quiet(self.backups.recover())
        # Numbered before anything is read: a replan that asks for itself from now on wins.
        self._listing += 1
        listing = self._listing
        schedules = await self.store.list_schedules()
        idle = {s.server: rules.rule_of(s) for s in schedules if s.kind == "idle" and not s.paused}
        rows: dict[str, list[Schedule]] = defaultdict(list)
        for s in schedules:
            rows[s.server].append(s)
        listed = {s.record.name: s for s in await self.servers.list_servers()}
        fanout, host = self.servers.fanout, self._host_of(listed)
        await fanout.each("update-wait", sorted(self._updates), self._update_step, key=str,
                          host=host)  # fmt: skip
        watched = set(idle)
        if self.settings.announce_players:
            watched |= {s.record.name for s in listed.values()
                        if self.servers.counts_players(s.record)}  # fmt: skip

        async def check(server: str) -> None:
            summary = listed.get(server)
            if summary is not None and summary.unreachable:
                return  # its host does not answer: what is planned stands until it does
            if server in watched and summary is not None:
                rule = idle.get(server)
                await self._watch(server, rule if isinstance(rule, IdleRule) else None, summary)
            if server not in rows and server not in self._pending and not self._forced.get(server):
                return  # no schedule, nothing planned: nothing to replan (and no store reads)
            # The listing says whether it runs, unless a replan asked the engine since.
            running = None
            if summary is not None and self._fresh.get(server, 0) < listing:
                running = summary.container is not None and summary.container.running
            # Its schedules as read above, unless they may have changed since (a replan that
            # asked the engine itself may follow a change made meanwhile).
            read = rows.get(server, []) if running is not None else None
            await _quiet(self.replan(server, running=running, rows=read))

        everyone = watched | set(rows) | set(self._pending) | set(self._forced)
        await fanout.each("players", sorted(everyone), check, key=str, host=host)
        for gone in set(self._idle) - set(idle):
            del self._idle[gone]

    @staticmethod
    def _host_of(listed: dict[str, ServerSummary]) -> Callable[[str], str]:
        def host(server: str) -> str:
            summary = listed.get(server)
            return summary.record.host if summary is not None else ""

        return host

    async def _watch(self, server: str, rule: IdleRule | None, summary: ServerSummary) -> None:
        info = summary.container
        running = info is not None and info.running
        try:
            count = await self.servers.players_of(summary) if running else None
        except PeonError as e:
            log.info("players of %s not counted: %s", server, e)
            return
        if rule is not None:
            tracker = self._idle.get(server)
            if tracker is None or tracker.limit != rule.limit:
                tracker = self._idle[server] = IdleTracker(rule.limit)
            if not running:
                tracker.reset()
            else:
                tracker.observe(self.clock(), count.online if count is not None else None)
        if self.settings.announce_players:
            await self._announce(server, running, count)

    async def _announce(self, server: str, running: bool, count: PlayerCount | None) -> None:
        if not running:
            self._seen_names.pop(server, None)
            return
        if count is None:
            return
        names = set(count.names)
        before = self._seen_names.get(server)
        self._seen_names[server] = names
        if before is None or before == names:
            return
        joined, left = sorted(names - before), sorted(before - names)
        await _quiet(self.notifier.players(server, joined, left, count.online))

    # --- what members do --------------------------------------------------------------------

    def pending(self, server: str) -> Pending | None:
        return self._pending.get(server)

    def _check_warned(self, server: str, warned: datetime | None) -> Pending:
        """The pending stop, refused unless it is the one a warning (and its buttons) was
        about (`warned`: the time the warning gave; None, any): an old warning's button must
        not act on today's stop, and a retried click must not act twice."""
        p = self._pending.get(server)
        if warned is not None and (p is None or int(p.at.timestamp()) != int(warned.timestamp())):
            now = (
                f"it now {'stops' if p.due.action == 'stop' else 'restarts'} at "
                f"{p.at.astimezone(p.due.zone or self.zone):%H:%M}"
                if p is not None
                else "no automatic stop is pending"
            )
            raise ScheduleError(f"This warning is out of date: for {server}, {now}.")
        if p is None:
            raise ScheduleError(f"No automatic stop is pending for {server}.")
        return p

    async def postpone(self, server: str, actor: str, warned: datetime | None = None) -> Pending:
        """Keep running: hold the pending automatic stop for `keep_running` more."""
        async with self._locks[server]:
            p = self._check_warned(server, warned)
            until = max(p.at, self.clock()) + self.settings.keep_for
            # Whole seconds: what is stored (and shown) is exactly what is planned.
            until = until.replace(microsecond=0) + timedelta(seconds=1 if until.microsecond else 0)
            await self.store.set_keep_until(server, until, p.due.key)
            # Replanned under the same lock: a second click sees the new time, not the old.
            new = await self._replan(server)
        await self.store.audit(actor, "postpone", server, True, f"until {until.isoformat()}")
        if new is None:  # the stop went away meanwhile (schedule removed, server stopped)
            raise ScheduleError(f"No automatic stop is pending for {server} any more.")
        return new

    async def stop_now(self, server: str, actor: str, warned: datetime | None = None) -> bool:
        """Stop now instead of at the pending time; False when it was not running."""
        async with self._locks[server]:
            if warned is not None:
                self._check_warned(server, warned)
            p = self._pending.pop(server, None)
            self.scheduler.cancel_prefix(f"auto:stop:{server}:")
        try:
            stopped = await self.servers.stop(server, actor=actor)
        except BaseException:
            if p is not None:  # not stopped (busy, engine down): the planned stop stands
                async with self._locks[server]:
                    self._pending.setdefault(server, p)
                    self._arm_pending(server, p)
            raise
        if p is not None and p.due.reason == "timer" and p.due.schedule_id is not None:
            with contextlib.suppress(PeonError):
                await self.store.remove_schedule(p.due.schedule_id)
        await self.replan(server)
        return stopped

    async def touch(self, server: str) -> None:
        """A member started or stopped the server: its automatic stop may have changed."""
        self._idle.pop(server, None)
        await _quiet(self.replan(server))

    # --- updates when nobody plays ----------------------------------------------------------

    async def update_when_empty(
        self, server: str, *, actor: str, why: str | None = None
    ) -> UpdateRequest:
        """Update the server as soon as nobody plays: now when it is empty (or stopped), else
        at the first check that finds it empty, waiting at most `update_wait`. Players still
        on then: warned like any automatic stop and updated, or skipped (`update_when_busy`)."""
        record = await self.store.get_server(server)
        self.refuse_uncounted(record)
        mode = self.settings.update_when_busy
        existing = self._updates.get(server)
        if existing is not None:  # asked again (or a retried command): one wait
            return UpdateRequest(server, False, None, existing.until, mode, already=True)
        running, count = await self.servers.player_count(server)
        online = (count.online if count is not None else None) if running else 0
        now = self.clock()
        why = why or f"update asked by {actor}"
        wait = UpdateWait(server, now, now + self.settings.update_limit, why, actor)
        self._updates[server] = wait
        await self._save_updates()
        if online == 0:
            self._spawn(self._update_now(server))
            return UpdateRequest(server, True, online, wait.until, mode)
        log.info("%s: update waits for the players to leave (%s)", server, why)
        await _quiet(self.notifier.update_waiting(wait, online, mode))
        return UpdateRequest(server, False, online, wait.until, mode)

    def waiting_update(self, server: str) -> UpdateWait | None:
        return self._updates.get(server)

    def _require_counted(self, record: ServerRecord, what: str, cannot: str) -> None:
        """Refuse, in one sentence, what needs a player count when the server has none (it
        would always look empty, or never)."""
        uncounted = self.servers.uncounted_reason(record)
        if uncounted is not None:
            raise ScheduleError(f"{record.name} cannot {what}: {uncounted}")
        if not self.servers.counts_players(record):
            raise ScheduleError(
                f"War plan '{record.warplan}' cannot count players, so {record.name} {cannot}"
            )

    def refuse_uncounted(self, record: ServerRecord) -> None:
        """Refuse, in one sentence, to wait for a server to be empty when its players cannot
        be counted (it would never look empty)."""
        self._require_counted(
            record, "update when nobody plays", "cannot update when nobody plays; update it now "
            "instead.",
        )  # fmt: skip

    async def _update_step(self, server: str) -> None:
        """One check of a waiting update, at each tick."""
        wait = self._updates.get(server)
        if wait is None:
            return
        try:
            running, count = await self.servers.player_count(server)
        except ServerNotFound:
            self._updates.pop(server, None)
            await self._save_updates()
            return
        except PeonError as e:
            log.info("players of %s not counted for its update: %s", server, e)
            return
        if not running or (count is not None and count.online == 0):
            await self._update_now(server)
            return
        now = self.clock()
        if now < wait.until:
            return
        players = "players were still on" if count is None else f"{count.online} still playing"
        after = f"{players} after {format_span(wait.until - wait.since)}"
        skip = self.settings.update_when_busy == "skip"
        async with self._locks[server]:
            if self._updates.get(server) is not wait:
                return  # it began (its warned time came) while the players were counted
            if skip:
                del self._updates[server]
            elif any(d.action == "update" for d in self._forced[server]):
                return  # already warned: it happens at its time (or as soon as they leave)
            else:
                lead = max(self.leads, default=self.settings.catch_up_lead) + UPDATE_WARN_SLACK
                why = f"{wait.why}; {after}"
                self._forced[server].append(Due(server, now + lead, "update", "update", why))
        if skip:
            await self._save_updates()
            log.info("%s: update skipped, %s", server, after)
            await _quiet(self.notifier.update_skipped(server, wait.why, after))
            return
        await _quiet(self.replan(server))

    async def _update_now(self, server: str) -> None:
        """Run a waiting update (its wait and any warned update end here) and say so."""
        async with self._locks[server]:
            wait = self._updates.pop(server, None)
            if wait is None:
                return  # done already (players left just as its warned time came)
            self._forced[server] = [d for d in self._forced.get(server, []) if d.action != "update"]
            p = self._pending.get(server)
            if p is not None and p.due.action == "update":
                del self._pending[server]
                self.scheduler.cancel_prefix(f"auto:stop:{server}:")
        # The wait stays in the store until the update ends: one cut short by a shutdown or a
        # crash is done again after the restart.
        try:
            result = await self.servers.update(server, actor=UPDATE_ACTOR)
        except ServerBusy:
            # Another operation (a backup, a member's start): the next tick tries again.
            self._updates.setdefault(server, wait)
            log.info("%s is busy; its update is tried again at the next check", server)
            return
        except ServerNotFound:
            self._forget(server)
            await self._save_updates()
            return
        except PeonError as e:
            await self._save_updates()
            await _quiet(self.notifier.failed(server, "update", wait.why, str(e)))
            return
        finally:
            if (tracker := self._idle.get(server)) is not None:
                tracker.reset()
        await self._save_updates()
        log.info("%s updated: %s", server, wait.why)
        await _quiet(self.notifier.update_done(server, wait.why, result.changed, result.restarted))
        await _quiet(self.replan(server))

    async def _save_updates(self) -> None:
        data = {
            w.server: {"since": w.since.isoformat(), "until": w.until.isoformat(),
                       "why": w.why, "actor": w.actor}
            for w in self._updates.values()
        }  # fmt: skip
        await self.store.set_meta(UPDATES_KEY, json.dumps(data, sort_keys=True))

    async def _load_updates(self) -> None:
        text = await self.store.get_meta(UPDATES_KEY)
        for server, w in (json.loads(text) if text else {}).items():
            self._updates[server] = UpdateWait(
                server,
                datetime.fromisoformat(w["since"]),
                datetime.fromisoformat(w["until"]),
                str(w["why"]),
                str(w["actor"]),
            )

    # --- managing schedules -----------------------------------------------------------------

    async def add_window(
        self, server: str, *, days: str, start: str, stop: str, zone: str | None, actor: str
    ) -> ScheduleView:
        await self.store.get_server(server)
        spec = rules.window_spec(days, start, stop, zone or self.settings.timezone)
        s = await self._add(server, "window", spec, actor)
        rule = rules.rule_of(s)
        if (
            isinstance(rule, WindowRule)
            and rule.window.is_open(self.clock())
            and not await self._running(server)
        ):
            self._spawn(self._auto_start(server, "its uptime window is open"))
        return await self._view(s)

    async def add_idle(self, server: str, after: str, actor: str) -> ScheduleView:
        record = await self.store.get_server(server)
        self._require_counted(record, "stop when idle", "cannot stop when idle.")
        spec = rules.idle_spec(after, self.settings.minimum)
        existing = [s for s in await self.store.list_schedules(server) if s.kind == "idle"]
        if existing:
            raise ScheduleError(
                f"{server} already stops when idle (schedule {existing[0].id}); remove that "
                "one first."
            )
        return await self._view(await self._add(server, "idle", spec, actor))

    async def add_cron(
        self,
        server: str,
        expr: str,
        action: str,
        *,
        zone: str | None,
        command: str | None,
        only_when_running: bool,
        actor: str,
    ) -> ScheduleView:
        await self.store.get_server(server)
        spec = rules.cron_spec(
            expr, zone or self.settings.timezone, action, command, only_when_running
        )
        if action == "console":
            await self.servers.require_console(server)
        if action == "update":
            self.refuse_uncounted(await self.store.get_server(server))
        return await self._view(await self._add(server, "cron", spec, actor))

    async def add_timer(
        self,
        server: str,
        *,
        after: str | None,
        at: str | None,
        zone: str | None,
        actor: str,
        action: str = "stop",
    ) -> ScheduleView:
        await self.store.get_server(server)
        if (after is None) == (at is None):
            raise ScheduleError("Give either in (e.g. 30m) or at (e.g. 21:30), not both.")
        now = self.clock()
        if after is not None:
            when = now + parse_duration(after, self.settings.minimum)
        else:
            clock = parse_clock(at or "")
            when = next_clock_time(clock, parse_zone(zone or self.settings.timezone), now)
            if when - now < self.settings.minimum:
                shortest = format_span(self.settings.minimum)
                raise ScheduleError(f"{at} is less than {shortest} away; pick a later time.")
        if not await self._running(server):
            raise ScheduleError(f"{server} is not running, so there is nothing to stop.")
        return await self._view(
            await self._add(server, "timer", rules.timer_spec(when, action), actor)
        )

    async def _add(self, server: str, kind: str, spec: dict[str, object], actor: str) -> Schedule:
        same = await self._same_schedule(server, kind, spec)
        if same is not None:
            return same  # a retried command (Discord said it did not respond): added once
        s = await self.store.add_schedule(server, kind, spec, actor)
        await self.store.audit(actor, f"schedule-add:{kind}", server, True, f"#{s.id}")
        self._arm(s)
        await self.replan(server)
        return s

    async def _same_schedule(
        self, server: str, kind: str, spec: dict[str, object]
    ) -> Schedule | None:
        for s in await self.store.list_schedules(server):
            if s.kind != kind:
                continue
            if s.spec == spec:
                return s
            if kind == "timer" and s.spec.get("action") == spec.get("action"):
                # "in 30m" asked twice a few seconds apart is the same timer.
                gap = datetime.fromisoformat(str(s.spec["at"])) - datetime.fromisoformat(
                    str(spec["at"])
                )
                if abs(gap) < RETRY_WINDOW:
                    return s
        return None

    async def remove(self, schedule_id: int, actor: str) -> Schedule:
        s = await self.store.get_schedule(schedule_id)
        await self.store.remove_schedule(schedule_id)
        await self.store.audit(actor, "schedule-remove", s.server, True, f"#{s.id}")
        self.scheduler.cancel_prefix(f"auto:s{s.id}:")
        await self.replan(s.server)
        return s

    async def set_paused(self, schedule_id: int, paused: bool, actor: str) -> ScheduleView:
        s = await self.store.get_schedule(schedule_id)
        await self.store.set_schedule_paused(schedule_id, paused)
        verb = "schedule-pause" if paused else "schedule-resume"
        await self.store.audit(actor, verb, s.server, True, f"#{s.id}")
        s = await self.store.get_schedule(schedule_id)
        self._arm(s)
        await self.replan(s.server)
        return await self._view(s)

    async def list(self, server: str | None = None) -> list[ScheduleView]:
        if server is not None:
            await self.store.get_server(server)
        return [await self._view(s) for s in await self.store.list_schedules(server)]

    async def _view(self, s: Schedule) -> ScheduleView:
        rule = rules.rule_of(s)
        now = self.clock()
        runs = rules.next_runs(s, now)
        p = self._pending.get(s.server)
        if isinstance(rule, IdleRule) and p is not None and p.due.schedule_id == s.id:
            runs = [("stop", p.at)]
        elif p is not None and p.due.schedule_id == s.id and p.held:
            runs = [(a, p.at if a == p.due.action else w) for a, w in runs]
        return ScheduleView(s, rule.describe(), runs, rules.schedule_zone(s, self.zone))

    # --- helpers ----------------------------------------------------------------------------

    async def _running(self, server: str) -> bool:
        try:
            return await self.servers.is_running(server)
        except PeonError:
            return False

    def _spawn(self, aw: Awaitable[None]) -> None:
        async def run() -> None:
            await _quiet(aw)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
