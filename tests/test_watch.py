"""Crash watch against the real engine: the fake game crashing (exit 3) is announced with its
last lines and restarted with backoff until the tries run out; PEON's own stops are not
crashes; a crash while nobody watched is found by the sweep."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.app import Services
from bot.models import ServerState
from bot.settings import CrashSettings
from bot.watch import Crash, CrashWatch, backoff
from tests.conftest import make_settings, services_for

WAIT = 60


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n, 10, 45) for n in (1, 2, 3, 4)] == [10, 20, 40, 45]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.changed = asyncio.Event()

    def _add(self, kind: str, value: object) -> None:
        self.events.append((kind, value))
        self.changed.set()

    async def crashed(self, crash: Crash) -> None:
        self._add("crashed", crash)

    async def recovered(self, server: str, attempt: int, connect: str) -> None:
        self._add("recovered", (server, attempt))

    async def gave_up(self, server: str, attempts: int, error: str | None) -> None:
        self._add("gave_up", (server, attempts))

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not check():
                self.changed.clear()
                await self.changed.wait()

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


@pytest.fixture
async def svc(tmp_path: Path, fakegame: str) -> AsyncIterator[Services]:
    crash = CrashSettings(max_restarts=2, backoff_first="1s", backoff_limit="2s", stable_after="1h")
    async with services_for(make_settings(tmp_path, crash=crash)) as s:
        yield s


async def crash_it(svc: Services, name: str) -> None:
    """The game dies by itself (its console 'crash' command exits 3): no PEON operation."""
    info = await svc.servers.container_of(await svc.store.get_server(name))
    assert info is not None and info.running
    await svc.driver.send_console(info.id, "crash")


@pytest.mark.docker
async def test_crash_is_announced_and_restarted_with_backoff_then_given_up(
    svc: Services,
) -> None:
    await svc.servers.create("fakegame", "boom", {"world": "B"}, actor="test")
    await svc.servers.start("boom", actor="test")
    notes = Recorder()
    watch = CrashWatch(servers=svc.servers, settings=svc.settings.crash, notifier=notes)
    watch.start()
    try:
        async with asyncio.timeout(WAIT):
            while not watch.connected.get("local"):
                await asyncio.sleep(0.1)
        # PEON's own stop and start are not crashes.
        await svc.servers.stop("boom", actor="test")
        await svc.servers.start("boom", actor="test")

        await crash_it(svc, "boom")
        await notes.until(lambda: "recovered" in notes.kinds())
        first = notes.events[0][1]
        assert isinstance(first, Crash)
        assert (first.exit_code, first.attempt, first.restart_in) == (3, 1, 1.0)
        assert any("crashing" in line for line in first.logs)
        assert notes.events[1] == ("recovered", ("boom", 1))
        assert await svc.servers.is_running("boom")

        await crash_it(svc, "boom")  # the streak goes on: the wait doubles
        await notes.until(lambda: notes.kinds().count("recovered") == 2)
        second = notes.events[2][1]
        assert isinstance(second, Crash) and (second.attempt, second.restart_in) == (2, 2.0)

        await crash_it(svc, "boom")  # out of tries: announced, left down, no loop
        await notes.until(lambda: "gave_up" in notes.kinds())
        third = notes.events[4][1]
        assert isinstance(third, Crash) and third.restart_in is None
        assert not await svc.servers.is_running("boom")
        assert (await svc.store.get_server("boom")).state == ServerState.STOPPED
        audit = [(a.actor, a.action) for a in await svc.store.audit_log("boom")]
        assert audit.count(("peon:crash-watch", "crash")) == 3
        assert audit.count(("peon:crash-watch", "start")) == 2
    finally:
        await watch.close()
    assert notes.kinds() == ["crashed", "recovered", "crashed", "recovered", "crashed", "gave_up"]


@pytest.mark.docker
async def test_a_crash_nobody_watched_is_found_when_the_watch_starts(svc: Services) -> None:
    await svc.servers.create("fakegame", "quiet", {"world": "Q"}, actor="test")
    await svc.servers.start("quiet", actor="test")
    await crash_it(svc, "quiet")
    async with asyncio.timeout(WAIT):
        while await svc.servers.is_running("quiet"):
            await asyncio.sleep(0.2)
    notes = Recorder()
    watch = CrashWatch(servers=svc.servers, settings=svc.settings.crash, notifier=notes)
    watch.start()
    try:
        await notes.until(lambda: "recovered" in notes.kinds())
    finally:
        await watch.close()
    crash = notes.events[0][1]
    assert isinstance(crash, Crash) and crash.exit_code is None and crash.attempt == 1
    assert await svc.servers.is_running("quiet")
