"""Automation against the real engine, a real SQLite file and the real APScheduler: idle
shutdown from the fake game's join/leave lines, timers, cron console commands, join/leave
announcements and catch-up after downtime. The notifier here records what Discord would be
told (the Discord side is covered end to end in test_schedules_e2e.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import pytest

from bot.app import Services
from bot.automation import HEARTBEAT_KEY, Automation, Warning
from bot.scheduler import Scheduler
from bot.settings import AutomationSettings
from tests.conftest import make_settings, services_for

pytestmark = pytest.mark.docker

FAST = AutomationSettings(
    warn_before=["3s", "1s"],
    keep_running="4s",
    catch_up_warning="2s",
    player_check_interval="1s",
    shortest="1s",
    announce_players=True,
)


@dataclass
class Recorder:
    """A Notifier that keeps what it was told, in order."""

    events: list[tuple[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _add(self, kind: str, value: Any) -> None:
        self.events.append((kind, value))
        self.changed.set()

    async def warn(self, warning: Warning) -> None:
        self._add("warn", warning)

    async def acted(self, server: str, action: str, why: str, connect: str | None) -> None:
        self._add("acted", (server, action, why, connect))

    async def failed(self, server: str, action: str, why: str, error: str) -> None:
        self._add("failed", (server, action, why, error))

    async def cancelled(self, server: str, action: str, why: str) -> None:
        self._add("cancelled", (server, action, why))

    async def players(self, server: str, joined: list[str], left: list[str], online: int) -> None:
        self._add("players", (server, joined, left, online))

    def of(self, kind: str) -> list[Any]:
        return [v for k, v in self.events if k == kind]

    async def wait(self, check: Callable[[], bool], timeout: float = 30) -> None:
        async def loop() -> None:
            while not check():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


@pytest.fixture
async def svc(tmp_path: Path, fakegame: str) -> AsyncIterator[Services]:
    async with services_for(make_settings(tmp_path, automation=FAST)) as s:
        yield s


@pytest.fixture
async def auto(svc: Services) -> AsyncIterator[tuple[Automation, Recorder]]:
    rec = Recorder()
    a = Automation(
        servers=svc.servers,
        backups=svc.backups,
        store=svc.store,
        scheduler=Scheduler(),
        settings=svc.settings.automation,
        notifier=rec,
    )
    await a.start()
    yield a, rec
    await a.close()


async def running_game(svc: Services, name: str = "alpha") -> None:
    await svc.servers.create("fakegame", name, {"world": "Midgard"}, actor="test")
    await svc.servers.start(name, actor="test")


def container_log(name: str) -> str:
    client = docker.from_env()
    try:
        return str(client.containers.get(f"peon-{name}").logs().decode())
    finally:
        client.close()


async def test_idle_shutdown_warns_in_channel_and_game_then_stops(
    svc: Services, auto: tuple[Automation, Recorder]
) -> None:
    a, rec = auto
    await running_game(svc)
    await svc.servers.console("alpha", "join alice", actor="test")
    view = await a.add_idle("alpha", "4s", "discord:42")
    assert view.description == "stop after 4 seconds without players"
    await rec.wait(lambda: ("players", ("alpha", ["alice"], [], 1)) in rec.events)
    await asyncio.sleep(2)
    assert a.pending("alpha") is None  # alice is playing: no stop planned
    await svc.servers.console("alpha", "leave alice", actor="test")
    await rec.wait(lambda: bool(rec.of("acted")), timeout=40)
    warnings = rec.of("warn")
    assert warnings, rec.events
    assert all(w.server == "alpha" and w.action == "stop" for w in warnings)
    assert warnings[0].why == "nobody played for 4 seconds"
    assert rec.of("acted") == [("alpha", "stop", "nobody played for 4 seconds", None)]
    assert ("players", ("alpha", [], ["alice"], 0)) in rec.events
    assert not await svc.servers.is_running("alpha")
    # The warning reached the players through the plan's `say` console command.
    assert "Broadcast: This server stops in" in container_log("alpha")
    audit = await svc.store.audit_log("alpha")
    assert any(e.actor == "peon:idle" and e.action == "stop" and e.ok for e in audit)


async def test_players_back_cancel_the_idle_stop(
    svc: Services, auto: tuple[Automation, Recorder]
) -> None:
    a, rec = auto
    await running_game(svc)
    await a.add_idle("alpha", "6s", "test")
    await rec.wait(lambda: a.pending("alpha") is not None)  # empty from the start
    await svc.servers.console("alpha", "join bob", actor="test")
    await rec.wait(lambda: bool(rec.of("cancelled")))
    assert rec.of("cancelled") == [("alpha", "stop", "players are back")]
    assert a.pending("alpha") is None
    assert await svc.servers.is_running("alpha")


async def test_timer_keep_running_then_stop(
    svc: Services, auto: tuple[Automation, Recorder]
) -> None:
    a, rec = auto
    await running_game(svc)
    view = await a.add_timer("alpha", after="5s", at=None, zone=None, actor="discord:42")
    first = a.pending("alpha")
    assert first is not None and first.due.reason == "timer"
    await rec.wait(lambda: bool(rec.of("warn")))
    kept = await a.postpone("alpha", "discord:43")
    assert timedelta(seconds=4) <= kept.at - first.at <= timedelta(seconds=5) and kept.held
    assert await svc.store.keep_until("alpha") == kept.at
    await rec.wait(lambda: bool(rec.of("acted")), timeout=30)
    stopped_at = datetime.now(UTC)
    assert stopped_at >= kept.at
    assert rec.of("acted") == [("alpha", "stop", "timer set by discord:42", None)]
    # Warned again before the postponed time; the timer is gone once it has fired.
    assert any(w.at == kept.at for w in rec.of("warn"))
    assert [s.id for s in await svc.store.list_schedules("alpha")] == []
    assert view.schedule.kind == "timer"
    audit = [(e.actor, e.action) for e in await svc.store.audit_log("alpha")]
    assert ("discord:43", "postpone") in audit and ("peon:timer", "stop") in audit


async def test_stop_now_and_refusals_leave_nothing(
    svc: Services, auto: tuple[Automation, Recorder]
) -> None:
    a, rec = auto
    await running_game(svc)
    await a.add_timer("alpha", after="1h", at=None, zone=None, actor="test")
    assert await a.stop_now("alpha", "discord:43")
    assert a.pending("alpha") is None and await svc.store.list_schedules("alpha") == []
    assert rec.of("acted") == []  # a member's stop is answered in place, not announced
    # Refusals: one sentence each, nothing saved.
    cases: list[tuple[Any, str]] = [
        (a.add_timer("alpha", after="5m", at=None, zone=None, actor="t"), "is not running"),
        (a.add_timer("alpha", after=None, at=None, zone=None, actor="t"), "either in"),
        (
            a.add_window("alpha", days="daily", start="9", stop="10:00", zone=None, actor="t"),
            "not a time of day",
        ),
        (
            a.add_cron(
                "alpha",
                "* * *",
                "stop",
                zone=None,
                command=None,
                only_when_running=False,
                actor="t",
            ),
            "not a cron expression",
        ),
        (
            a.add_cron(
                "alpha",
                "0 4 * * *",
                "console",
                zone=None,
                command="say hi\nstop",
                only_when_running=False,
                actor="t",
            ),
            "contains a line break or another control character",
        ),
        (a.add_idle("ghost", "30m", "t"), "There is no server named 'ghost'."),
        (a.postpone("alpha", "t"), "No automatic stop is pending for alpha."),
        (a.remove(999, "t"), "There is no schedule #999."),
    ]
    for call, message in cases:
        with pytest.raises(Exception, match=message) as e:
            await call
        assert "\n" not in str(e.value)
    assert await svc.store.list_schedules() == []


async def test_cron_console_only_when_running(
    svc: Services, auto: tuple[Automation, Recorder]
) -> None:
    a, rec = auto
    await running_game(svc)
    view = await a.add_cron(
        "alpha",
        "*/5 * * * *",
        "console",
        zone="Europe/Berlin",
        command="save",
        only_when_running=True,
        actor="test",
    )
    assert (
        view.description == "console `save` at cron `*/5 * * * *` Europe/Berlin (only when running)"
    )
    assert view.next_runs[0][0] == "console"
    assert f"auto:s{view.schedule.id}:cron" in a.scheduler.job_ids()
    # Run the job body now rather than wait for the clock.
    await a._cron(view.schedule.id)
    await asyncio.sleep(1)
    assert "World saved" in container_log("alpha")
    await svc.servers.stop("alpha", actor="test")
    await a._cron(view.schedule.id)  # skipped: not running
    assert rec.of("failed") == []
    await a.set_paused(view.schedule.id, True, "test")
    assert f"auto:s{view.schedule.id}:cron" not in a.scheduler.job_ids()


async def test_catch_up_after_downtime(svc: Services) -> None:
    """PEON down from 'last seen' until now: a window that ended meanwhile stops a running
    server after a short warning; a window that opened meanwhile starts a stopped one."""
    await running_game(svc, "alpha")
    await svc.servers.create("fakegame", "beta", {"world": "B"}, actor="test")
    now = datetime.now(UTC)
    clock = (now - timedelta(minutes=1)).strftime("%H:%M:%S")
    ended = (now - timedelta(seconds=20)).strftime("%H:%M:%S")
    opened = (now - timedelta(seconds=30)).strftime("%H:%M:%S")
    later = (now + timedelta(hours=2)).strftime("%H:%M:%S")
    await svc.store.add_schedule(
        "alpha", "window", {"days": "daily", "start": clock, "stop": ended, "zone": "UTC"}, "t"
    )
    await svc.store.add_schedule(
        "beta", "window", {"days": "daily", "start": opened, "stop": later, "zone": "UTC"}, "t"
    )
    await svc.store.set_meta(HEARTBEAT_KEY, (now - timedelta(seconds=40)).isoformat())
    rec = Recorder()
    a = Automation(
        servers=svc.servers,
        store=svc.store,
        scheduler=Scheduler(),
        settings=svc.settings.automation,
        notifier=rec,
    )
    try:
        await a.start()
        p = a.pending("alpha")
        assert p is not None and p.due.reason == "catch-up"
        assert p.due.why.startswith("end of its uptime window (at ")
        await rec.wait(lambda: len(rec.of("acted")) == 2, timeout=60)
        acted = {v[0]: v for v in rec.of("acted")}
        assert acted["alpha"][1] == "stop"
        assert acted["beta"][1] == "start" and acted["beta"][2].startswith(
            "its uptime window opened at"
        )
        assert [w.server for w in rec.of("warn")] == ["alpha"]
        assert not await svc.servers.is_running("alpha")
        assert await svc.servers.is_running("beta")
        # beta now has its window's stop planned; nothing fires twice.
        pb = a.pending("beta")
        assert pb is not None and pb.due.reason == "window"
        await asyncio.sleep(2)
        assert len(rec.of("acted")) == 2
    finally:
        await a.close()
    seen = await svc.store.get_meta(HEARTBEAT_KEY)
    assert seen is not None and datetime.fromisoformat(seen) > now


async def test_cron_backup_and_its_failure_is_announced(
    svc: Services, auto: tuple[Automation, Recorder]
) -> None:
    a, rec = auto
    await running_game(svc)
    view = await a.add_cron("alpha", "0 3 * * *", "backup", zone=None, command=None,
                            only_when_running=False, actor="test")  # fmt: skip
    assert view.description == "backup at cron `0 3 * * *` UTC"
    await a._cron(view.schedule.id)  # the job body, now rather than at 03:00
    (b,) = await svc.backups.list("alpha")
    assert b.trigger == "schedule" and b.actor == "peon:cron"
    # The container vanishes behind PEON's back: the next scheduled backup fails, and says so.
    client = docker.from_env()
    try:
        client.containers.get("peon-alpha").remove(force=True)
    finally:
        client.close()
    await a._cron(view.schedule.id)
    ((server, action, why, error),) = rec.of("failed")
    assert (server, action, why) == ("alpha", "backup", "scheduled backup (`0 3 * * *`)")
    assert error == "Server 'alpha' has no container; start it once, then back it up."
