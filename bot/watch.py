"""Crash watch: a game server that exits when PEON did not stop it is announced, with its last
log lines, and started again with exponential backoff, up to a configured number of tries.

It follows each Docker host's event stream (a `die` of one of PEON's containers) and, every
time a stream (re)connects, sweeps the records for servers that should run but do not, so a
crash while the stream was down (or the bot was) is not missed. "PEON did not stop it" means:
no PEON operation holds the server's lease and its record still says running; every stop PEON
makes (commands, schedules, updates, backups in stop mode) holds the lease and records the
stop before letting go.

It also asks every running server, every `crash.hang_interval`, whether it still answers (its
player query or ready port, see bot/hang.py): one that runs but misses `crash.hang_checks`
checks in a row is hung, and is announced, restarted and counted like a crash. Servers are
asked concurrently, each within its own deadline, so one that never replies delays no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from bot import labels
from bot.aio import quietly
from bot.camps import Camp
from bot.errors import DockerUnavailable, PeonError
from bot.hang import Hang, HangTracker, Probe, answers, probe_for
from bot.models import ContainerInfo, ServerRecord, ServerState
from bot.servers import ServerService
from bot.settings import CrashSettings
from bot.warplans import WarPlan

log = logging.getLogger(__name__)
# A notice that cannot be posted must not stop the restart.
_quiet = functools.partial(quietly, what="crash notice", logger=log)
ACTOR = "peon:crash-watch"
LOG_LINES = 15
RECONNECT_MAX = 30.0  # seconds between attempts to reach a host's event stream
SUBSCRIBE_SETTLE = 0.5
PROBE_TIMEOUT = 5.0  # seconds for one query or connect; a slow answer is still an answer
CHECK_DEADLINE = 15.0  # seconds for one server's whole check (a2s asks twice); then: no answer

# (probe, plan, host, host ports, server) -> whether it answers; bot.hang.answers, or a fake.
Ask = Callable[[Probe, WarPlan, str, Mapping[str, int], str], Awaitable[bool]]


class CrashNotifier(Protocol):
    async def crashed(self, crash: Crash) -> None:
        """A server exited unexpectedly; `crash.restart_in` says whether and when it restarts."""

    async def recovered(self, server: str, attempt: int, connect: str) -> None: ...

    async def gave_up(self, server: str, attempts: int, error: str | None) -> None: ...


@dataclass(frozen=True)
class Crash:
    server: str
    host: str
    exit_code: int | None
    logs: list[str]
    attempt: int  # 1 for the first restart after a (re)start that had held
    max_attempts: int
    restart_in: float | None  # seconds; None: no restart (disabled or out of tries)
    hang: Hang | None = None  # it still ran but stopped answering (exit_code is None)


def backoff(attempt: int, first: float, cap: float) -> float:
    """Seconds before restart number `attempt` (1-based): first, 2x, 4x, ... up to cap."""
    return float(min(cap, first * 2 ** (attempt - 1)))


class CrashWatch:
    def __init__(
        self,
        *,
        servers: ServerService,
        settings: CrashSettings,
        notifier: CrashNotifier,
        clock: Callable[[], float] = time.monotonic,
        ask: Ask | None = None,
    ) -> None:
        self.servers, self.settings, self.notifier, self.clock = servers, settings, notifier, clock
        self._tasks: list[asyncio.Task[None]] = []
        self._handling: dict[str, asyncio.Task[None]] = {}
        # server -> (restarts so far in the current streak, when the last restart happened)
        self._streak: dict[str, tuple[int, float]] = {}
        self.connected: dict[str, bool] = {}
        self.hangs = HangTracker(settings.hang_checks)
        self._ask: Ask = ask or _ask

    def start(self) -> None:
        self.watch_new_hosts()
        if self.settings.hang_checks:
            self._tasks.append(asyncio.create_task(self._hang_loop(), name="watch-hangs"))

    def watch_new_hosts(self) -> list[str]:
        """Follow the events of every host not followed yet (all of them at start, those a
        reload added later); returns their names."""
        followed = {t.get_name() for t in self._tasks}
        added = []
        for camp in self.servers.camps:
            if f"watch-{camp.name}" not in followed:
                task = asyncio.create_task(self._follow(camp), name=f"watch-{camp.name}")
                self._tasks.append(task)
                added.append(camp.name)
        return added

    async def reconfigure(self, settings: CrashSettings) -> None:
        """Settings from a reload: restarts and backoff follow them from the next crash; the
        hang checks are started, stopped or re-timed."""
        old, self.settings = self.settings, settings
        self.hangs.checks = settings.hang_checks
        if (old.hang_checks > 0, old.hang_interval) == (settings.hang_checks > 0,
                                                         settings.hang_interval):  # fmt: skip
            return
        for task in [t for t in self._tasks if t.get_name() == "watch-hangs"]:
            self._tasks.remove(task)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if settings.hang_checks and self._tasks:  # started (the hosts are followed)
            self._tasks.append(asyncio.create_task(self._hang_loop(), name="watch-hangs"))

    async def close(self) -> None:
        tasks = self._tasks + list(self._handling.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        self._handling.clear()

    async def _follow(self, camp: Camp) -> None:
        delay = 1.0
        while True:
            consume = asyncio.create_task(self._consume(camp))
            try:
                # Let the subscription reach the engine, then sweep: a crash before the
                # subscription is found by the sweep, one after it arrives as an event.
                await asyncio.wait([consume], timeout=SUBSCRIBE_SETTLE)
                if not consume.done():
                    if not self.connected.get(camp.name, True):
                        log.info("crash watch: host %s answers again", camp.name)
                    self.connected[camp.name] = True
                    await self.sweep(camp.name)
                    delay = 1.0
                await consume
            except DockerUnavailable as e:
                if self.connected.get(camp.name, True):
                    log.warning("crash watch lost host %s: %s", camp.name, e)
                self.connected[camp.name] = False
            except PeonError as e:
                log.warning("crash watch on host %s: %s", camp.name, e)
            finally:
                consume.cancel()
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    async def _consume(self, camp: Camp) -> None:
        async for event in camp.driver.events({labels.INSTANCE: self.servers.instance}):
            if event.action == "die":
                self.suspect(event.labels.get(labels.SERVER, ""), event.exit_code)

    async def sweep(self, host: str) -> None:
        """Servers on `host` that should be running but whose container is not: one listing
        of the host (one engine call, whatever the number of servers), then each suspect is
        handled in its own task, so none waits for another."""
        for summary in await self.servers.list_servers(hosts=[host]):
            record = summary.record
            if summary.unreachable or record.state != ServerState.RUNNING or _busy(record):
                continue
            if summary.container is None or not summary.container.running:
                self.suspect(record.name, None)

    def suspect(self, server: str, exit_code: int | None) -> None:
        """A container of `server` stopped; decide (in a task) whether it was a crash."""
        if not server or server in self._handling:
            return
        task = asyncio.create_task(self._handle(server, exit_code), name=f"crash-{server}")
        self._handling[server] = task
        task.add_done_callback(lambda _: self._handling.pop(server, None))

    async def _handle(self, server: str, exit_code: int | None) -> None:
        try:
            await self._crash(server, exit_code)
        except Exception:
            log.exception("crash watch failed for %s", server)

    async def _crash(self, server: str, exit_code: int | None) -> None:
        store = self.servers.store
        record = await store.find_server(server)
        # PEON's own stops hold the lease, then record the stop: neither is a crash.
        if record is None or _busy(record) or record.state != ServerState.RUNNING:
            return
        if await self.servers.is_running(server):
            return  # already back (restarted by someone else)
        if exit_code == 0 and not self.settings.clean_exit_is_crash:
            await store.update_server(server, state=ServerState.STOPPED)
            await store.audit(ACTOR, "exit", server, True, "exited cleanly by itself")
            return
        await self._restart(record, exit_code, None)

    async def _restart(
        self, record: ServerRecord, exit_code: int | None, hang: Hang | None
    ) -> None:
        """Announce a crash (or hang), then restart with backoff until it holds or the tries
        run out. A hung server still runs: it is restarted (stopped first), not started."""
        store, server = self.servers.store, record.name
        tail = await self._last_lines(server)
        s = self.settings
        attempt = self._next_attempt(server)
        if hang is None:
            await store.audit(ACTOR, "crash", server, False, f"exit code {exit_code}")
        else:
            detail = f"no answer to {hang.probe} for {hang.checks} checks in a row"
            await store.audit(ACTOR, "hang", server, False, detail)
        delay = self._delay(attempt)
        await _quiet(self.notifier.crashed(Crash(server, record.host, exit_code, tail, attempt,
                                                 s.max_restarts, delay, hang)))  # fmt: skip
        again = self.servers.start if hang is None else self.servers.restart
        error: str | None = None
        while delay is not None:
            await asyncio.sleep(delay)
            current = await store.find_server(server)
            if current is None or current.state != ServerState.RUNNING or _busy(current):
                return  # deleted, stopped by someone or in someone's hands meanwhile
            self._streak[server] = (attempt, self.clock())
            try:
                result = await again(server, actor=ACTOR)
            except PeonError as e:
                error = str(e)
                log.warning("crash restart %s of %s failed: %s", attempt, server, e)
                # Still meant to run (a failed start records it stopped): a stop made by
                # someone during the next wait is then seen as one.
                await store.update_server(server, state=ServerState.RUNNING)
                attempt += 1
                delay = self._delay(attempt)
                continue
            await _quiet(self.notifier.recovered(server, attempt, result.connect()))
            return
        if hang is not None and not s.restart:
            return  # restarts are off: left running as it is, for someone to look at
        # No (more) restarts: it stays down until someone starts it, and is not retried.
        if hang is None:
            await store.update_server(server, state=ServerState.STOPPED)
        else:
            try:
                await self.servers.stop(server, actor=ACTOR)  # records it stopped
            except PeonError as e:
                log.warning("could not stop hung %s: %s", server, e)
        if s.restart:
            await _quiet(self.notifier.gave_up(server, s.max_restarts, error))

    def _delay(self, attempt: int) -> float | None:
        s = self.settings
        if not s.restart or attempt > s.max_restarts:
            return None
        return backoff(attempt, s.backoff.total_seconds(), s.backoff_max.total_seconds())

    def _next_attempt(self, server: str) -> int:
        count, last = self._streak.get(server, (0, 0.0))
        if count and self.clock() - last >= self.settings.stable.total_seconds():
            count = 0  # it ran long enough since the last restart: a fresh streak
        return count + 1

    async def _last_lines(self, server: str) -> list[str]:
        try:
            # Redacted by ServerService.logs: secret values never reach the notice.
            return (await self.servers.logs(server, tail=LOG_LINES))[-LOG_LINES:]
        except PeonError:
            return []

    # --- hang detection ---------------------------------------------------------------------

    async def _hang_loop(self) -> None:
        every = self.settings.hang_every.total_seconds()
        while True:
            await asyncio.sleep(every)
            try:
                await self.check_hangs()
            except Exception:
                log.exception("hang check failed")

    async def check_hangs(self) -> dict[str, bool]:
        """One round: ask every running server that can be asked, concurrently (within
        the checks limits, each asked within CHECK_DEADLINE), count, and hand the ones that
        missed `hang_checks` in a row to the restart. Returns each asked server's answer."""
        records = [
            r
            for r in await self.servers.store.list_servers()
            if r.state == ServerState.RUNNING and self.connected.get(r.host, True)
        ]
        self.hangs.keep_only({r.name for r in records})
        # Side by side within the checks limits (per host and in total), one at a time per
        # server; one server's failure or silence costs the others nothing.
        done = await self.servers.fanout.each(
            "hang-check",
            [r for r in records if r.name not in self._handling],
            self._check,
            key=lambda r: r.name,
            host=lambda r: r.host,
            deadline=CHECK_DEADLINE + PROBE_TIMEOUT,  # the ask's own deadline, plus an inspect
        )
        return {str(name): answered for name, answered in done.results.items()
                if answered is not None}  # fmt: skip

    async def _check(self, record: ServerRecord) -> bool | None:
        """Ask one server and count the result; None when it was not asked (in an operation,
        paused, not running, a plan with no way to ask, its host down)."""
        if _busy(record):
            return None
        try:
            plan = self.servers.plan_of(record)
            probe = probe_for(plan)
            if probe is None:
                return None
            info = await self.servers.container_of(record)
            if info is None or info.status != "running":
                return None  # gone, exited (the event stream's business) or paused
            host = self.servers.camp_of(record).probe_address
            ports = {p.name: p.host for p in record.ports}
        except PeonError:
            return None
        try:
            async with asyncio.timeout(CHECK_DEADLINE):
                answered = await self._ask(probe, plan, host, ports, record.name)
        except TimeoutError:
            answered = False
        except ValueError as e:  # no host port for the probe's port: nothing to ask
            log.info("hang check of %s skipped: %s", record.name, e)
            return None
        run = _run_of(info)
        missed = self.hangs.observe(record.name, run, answered)
        if missed is not None:
            log.warning(
                "%s is hung: no answer to %s %s times", record.name, probe.describe(), missed
            )
            self._spawn_hang(record.name, run, Hang(probe.describe(), missed))
        return answered

    def _spawn_hang(self, server: str, run: str, hang: Hang) -> None:
        if server in self._handling:
            return
        task = asyncio.create_task(self._handle_hang(server, run, hang), name=f"hang-{server}")
        self._handling[server] = task
        task.add_done_callback(lambda _: self._handling.pop(server, None))

    async def _handle_hang(self, server: str, run: str, hang: Hang) -> None:
        try:
            record = await self.servers.store.find_server(server)
            if record is None or _busy(record) or record.state != ServerState.RUNNING:
                return  # someone took it in hand since the check
            info = await self.servers.container_of(record)
            if info is None or not info.running or _run_of(info) != run:
                return  # it exited (a crash, handled as one) or was restarted meanwhile
            await self._restart(record, None, hang)
        except Exception:
            log.exception("hang handling failed for %s", server)


async def _ask(
    probe: Probe, plan: WarPlan, host: str, ports: Mapping[str, int], server: str
) -> bool:
    return await answers(probe, plan, host, ports, timeout=PROBE_TIMEOUT, server=server)


def _run_of(info: ContainerInfo) -> str:
    """One run of a container: a restart starts a new one (and a fresh count)."""
    return f"{info.id}@{info.started_at.isoformat() if info.started_at else ''}"


def _busy(record: ServerRecord) -> bool:
    """An operation holds the server, live or cut short by a dead process (a killed
    `peon server stop` stopped it on purpose: not a crash to restart)."""
    return bool(record.operation or record.interrupted)
