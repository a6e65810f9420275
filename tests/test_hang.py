"""Hang detection: a running server that stops answering its query or ready port is announced
with its last log lines, restarted through the crash watch's backoff and audited.

The integration tests run the fake game on the real engine: its console command `hang` kills
its listener while its process stays up. The counting, the probes and the isolation of one
server's check from another's are unit tests (real sockets on loopback, fakes for the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import discord
import pytest
import yaml

import bot.watch
from bot.app import Services
from bot.client import DESCRIPTION_MAX, DiscordNotifier
from bot.fanout import Fanout
from bot.hang import Hang, HangTracker, Probe, answers, describe, probe_for, tcp_answers
from bot.models import ContainerInfo, PortBinding, ServerRecord, ServerState
from bot.settings import CrashSettings
from bot.warplans import WarplanLibrary
from bot.watch import ACTOR, Crash, CrashWatch
from tests.conftest import ROOT, TEST_WARPLANS, make_settings, services_for
from tests.game_responders import A2SResponder, MinecraftResponder
from tests.test_watch import Recorder

WAIT = 60
HOST = "127.0.0.1"
SECRET = "hunter22"


# --- how to ask, from the plan --------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> WarplanLibrary:
    return WarplanLibrary(ROOT / "warplans")


def test_the_plan_says_how_to_ask(shipped: WarplanLibrary) -> None:
    assert probe_for(shipped.get("valheim")) == Probe("a2s", "query")
    assert probe_for(shipped.get("minecraft")) == Probe("minecraft", "game")
    # The test plan counts players from its log, but has a tcp ready port.
    assert probe_for(WarplanLibrary(TEST_WARPLANS).get("fakegame")) == Probe("tcp", "game")
    # Log-only: no query, no ready port: nothing to ask.
    assert probe_for(shipped.get("luanti")) is None


def test_status_says_how_a_server_is_checked_or_why_not(shipped: WarplanLibrary) -> None:
    on = CrashSettings(hang_checks=3, hang_interval="1m")
    text = describe(shipped.get("valheim"), on)
    assert "A2S query (port 'query')" in text and "every 1m" in text and "3 missed" in text
    assert "restarted after 3 missed" in text
    quiet = CrashSettings(hang_checks=2, restart=False)
    assert "announced (restarts are off) after 2 missed" in describe(shipped.get("valheim"), quiet)
    assert describe(shipped.get("luanti"), on).startswith("off: its war plan has no")
    assert describe(shipped.get("valheim"), CrashSettings(hang_checks=0)).startswith("off (")


# --- counting -------------------------------------------------------------------------------


def test_a_server_is_hung_after_n_misses_in_a_row_and_reported_once() -> None:
    t = HangTracker(3)
    assert t.observe("s", "run1", True) is None
    assert [t.observe("s", "run1", False) for _ in range(2)] == [None, None]
    assert t.observe("s", "run1", False) == 3
    # Reported once per run: restarts off leaves it running, and it is not announced again.
    assert t.observe("s", "run1", False) is None


def test_one_answer_resets_the_count() -> None:
    t = HangTracker(3)
    t.observe("s", "r", True)
    for answered in (False, False, True, False, False):
        assert t.observe("s", "r", answered) is None
    assert t.misses("s") == 2
    assert t.observe("s", "r", False) == 3


def test_a_new_run_starts_a_fresh_count() -> None:
    t = HangTracker(2)
    t.observe("s", "r1", True)
    assert t.observe("s", "r1", False) is None
    t.observe("s", "r2", True)  # restarted: the miss before does not carry over
    assert t.observe("s", "r2", False) is None
    assert t.observe("s", "r2", False) == 2


def test_a_run_that_never_answered_is_not_counted() -> None:
    """Not past its ready point as the probe sees it: a query PEON cannot reach (a firewall
    before a remote host, the game's query turned off) must never restart a healthy server."""
    t = HangTracker(2)
    for _ in range(5):
        assert t.observe("s", "r", False) is None
    assert t.misses("s") == 0
    t.observe("s", "r", True)
    t.observe("s", "r", False)
    assert t.observe("s", "r", False) == 2


def test_zero_checks_is_off_and_forgotten_servers_start_again() -> None:
    off = HangTracker(0)
    assert all(off.observe("s", "r", False) is None for _ in range(10))
    t = HangTracker(2)
    t.observe("s", "r", True)
    t.observe("s", "r", False)
    t.keep_only(set())  # it stopped
    assert t.misses("s") == 0


# --- asking, on loopback --------------------------------------------------------------------


async def _serve(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]) -> Any:
    return await asyncio.start_server(handler, HOST, 0)


async def test_a_tcp_port_answers_when_it_holds_the_connection_or_greets() -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # waits for the client, as game ports do
        writer.close()

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()

    for handler in (hold, greet):
        server = await _serve(handler)
        port = server.sockets[0].getsockname()[1]
        try:
            assert await tcp_answers(HOST, port, 2)
        finally:
            server.close()
            await server.wait_closed()
        assert not await tcp_answers(HOST, port, 2)  # nothing listens any more


async def test_a_tcp_port_closed_at_once_without_a_byte_is_no_answer() -> None:
    """What Docker's port proxy does when nothing listens behind a published port."""

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await _serve(close)
    try:
        assert not await tcp_answers(HOST, server.sockets[0].getsockname()[1], 2)
    finally:
        server.close()
        await server.wait_closed()


async def test_query_probes_ask_with_the_players_protocol(shipped: WarplanLibrary) -> None:
    valheim, minecraft = shipped.get("valheim"), shipped.get("minecraft")
    async with A2SResponder([]) as a2s:
        port = a2s.port
        assert await answers(Probe("a2s", "query"), valheim, HOST, {"query": port}, timeout=1)
    assert not await answers(Probe("a2s", "query"), valheim, HOST, {"query": port}, timeout=0.5)
    async with MinecraftResponder(0, 20, []) as mc:
        port = mc.port
        assert await answers(Probe("minecraft", "game"), minecraft, HOST, {"game": port}, timeout=1)
    assert not await answers(Probe("minecraft", "game"), minecraft, HOST, {"game": port}, timeout=1)


# --- one server's check does not hold up another's ------------------------------------------


class _FakeServers:
    """Just what check_hangs reads, for two servers on one host."""

    def __init__(self, names: list[str]) -> None:
        now = datetime.now(UTC)
        self.plan = WarplanLibrary(TEST_WARPLANS).get("fakegame")
        self.records = [
            ServerRecord(n, "fakegame", "img", {}, ServerState.RUNNING, f"c-{n}",
                         (PortBinding("game", 7777, "tcp", 30000 + i),), now, now, "test")
            for i, n in enumerate(names)
        ]  # fmt: skip
        self.store = self
        self.started = now - timedelta(hours=1)
        self.fanout = Fanout(total=4, per_host=4, deadline=60)

    async def list_servers(self) -> list[ServerRecord]:
        return self.records

    def plan_of(self, record: ServerRecord) -> Any:
        return self.plan

    async def container_of(self, record: ServerRecord) -> ContainerInfo:
        return ContainerInfo(record.container_id or "", record.name, "img", "sha", "running",
                             None, self.started, None, None, {})  # fmt: skip

    def camp_of(self, record: ServerRecord) -> Any:
        return type("Camp", (), {"probe_address": HOST})()


async def test_a_check_that_never_returns_times_out_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bot.watch, "CHECK_DEADLINE", 0.5)
    slow_started, slow_cancelled = asyncio.Event(), asyncio.Event()
    fast_saw_slow_pending: list[bool] = []

    first_round = True

    async def ask(probe: Probe, plan: Any, host: str, ports: Any, server: str) -> bool:
        if first_round:
            return True  # both seen answering: their misses count from now on
        if server == "slow":
            slow_started.set()
            try:
                await asyncio.sleep(3600)
            finally:
                slow_cancelled.set()
        # Concurrent: the slow check has begun and is still waiting when this one answers.
        await asyncio.wait_for(slow_started.wait(), 5)
        fast_saw_slow_pending.append(not slow_cancelled.is_set())
        return True

    watch = CrashWatch(
        servers=_FakeServers(["slow", "fast"]),  # type: ignore[arg-type]
        settings=CrashSettings(hang_checks=3),
        notifier=None,  # type: ignore[arg-type]
        ask=ask,
    )
    assert await watch.check_hangs() == {"slow": True, "fast": True}
    first_round = False
    assert await watch.check_hangs() == {"slow": False, "fast": True}
    assert fast_saw_slow_pending == [True]
    assert (watch.hangs.misses("slow"), watch.hangs.misses("fast")) == (1, 0)


# --- the notice -----------------------------------------------------------------------------


async def test_the_hang_notice_names_what_stopped_answering_and_fits_discord() -> None:
    sent: list[tuple[str, discord.Embed | None, bool]] = []

    class Capture(DiscordNotifier):
        async def announce(self, text: str, *, embed: Any = None, view: Any = None,
                           mention: bool = False) -> list[discord.Message]:  # fmt: skip
            sent.append((text, embed, mention))
            return []

    notifier = Capture(None)  # type: ignore[arg-type]
    hang = Hang("a TCP connection to its ready port 'game'", 3)
    logs = ["x" * 260 + " ```@everyone" for _ in range(15)]  # over 3900 in all
    await notifier.crashed(Crash("hang-x", "local", None, logs, 1, 3, 10.0, hang))
    await notifier.crashed(Crash("hang-x", "local", None, [], 4, 3, None, hang))
    (first, embed, mention), (last, _, _) = sent
    assert "stopped answering a TCP connection" in first and "3 checks in a row" in first
    assert "Restarting in 10 seconds" in first and mention
    assert embed is not None
    description = embed.to_dict()["description"]
    assert len(description) <= DESCRIPTION_MAX and description.count("```") == 2
    assert "@everyone" not in description  # made inert
    assert "hung again after 3 restarts" in last and "Stopping it" in last


# --- on the real engine ---------------------------------------------------------------------


def plans_with_a_blind_one(tmp_path: Path) -> Path:
    """The test plan, and `fakegame-blind`: the same game with no ready port (and players
    counted from its log), so nothing can ask it whether it answers."""
    folder = tmp_path / "warplans"
    folder.mkdir()
    plan = yaml.safe_load((TEST_WARPLANS / "fakegame.yaml").read_text())
    (folder / "fakegame.yaml").write_text(yaml.safe_dump(plan))
    blind = {**plan, "name": "fakegame-blind", "ready": {"log": plan["ready"]["log"]}}
    (folder / "fakegame-blind.yaml").write_text(yaml.safe_dump(blind))
    return folder


def crash_settings(**changes: Any) -> CrashSettings:
    base: dict[str, Any] = {
        "max_restarts": 2,
        "backoff_first": "1s",
        "backoff_limit": "2s",
        "stable_after": "1h",
        "hang_checks": 3,
        "hang_interval": "1h",  # rounds are run by the test unless it says otherwise
    }
    return CrashSettings(**{**base, **changes})


@pytest.fixture
async def svc(tmp_path: Path, fakegame: str) -> AsyncIterator[Services]:
    settings = make_settings(
        tmp_path, crash=crash_settings(), warplans_dir=plans_with_a_blind_one(tmp_path)
    )
    async with services_for(settings) as s:
        yield s


@contextlib.asynccontextmanager
async def watching(svc: Services, notes: Recorder) -> AsyncIterator[CrashWatch]:
    watch = CrashWatch(servers=svc.servers, settings=svc.settings.crash, notifier=notes)
    watch.start()
    try:
        async with asyncio.timeout(WAIT):
            while not watch.connected.get("local"):
                await asyncio.sleep(0.1)
        yield watch
    finally:
        await watch.close()


async def started_at(svc: Services, name: str) -> datetime | None:
    info = await svc.servers.container_of(await svc.store.get_server(name))
    assert info is not None and info.running
    return info.started_at


async def console(svc: Services, name: str, command: str, echo: str) -> None:
    """Send a console command and wait until the game has acted on it (its log says `echo`)."""
    info = await svc.servers.container_of(await svc.store.get_server(name))
    assert info is not None
    await svc.driver.send_console(info.id, command)
    async with asyncio.timeout(WAIT):
        while not any(echo in line for line in await svc.servers.logs(name, tail=20)):
            await asyncio.sleep(0.1)


async def listen_again(svc: Services, name: str) -> None:
    """The game answers again: a new listener on its port, started inside the container."""
    info = await svc.servers.container_of(await svc.store.get_server(name))
    assert info is not None
    listener = "nc -ll -p 7777 -e echo back >/dev/null 2>&1 </dev/null &"
    code, _ = await svc.driver.exec(info.id, ["sh", "-c", listener])
    assert code == 0
    # Asked directly (not through the watch, whose misses would count): it is listening.
    record = await svc.store.get_server(name)
    port = next(p.host for p in record.ports if p.name == "game")
    async with asyncio.timeout(WAIT):
        while not await tcp_answers(HOST, port, 2):
            await asyncio.sleep(0.1)


def audit_of(rows: list[Any]) -> list[tuple[str, str]]:
    return [(a.actor, a.action) for a in rows]


@pytest.mark.docker
async def test_a_hung_server_is_announced_restarted_and_audited_and_no_other_is_touched(
    svc: Services,
) -> None:
    await svc.servers.create("fakegame", "hang-a", {"password": SECRET}, actor="test")
    await svc.servers.create("fakegame", "hang-b", {}, actor="test")
    await svc.servers.create("fakegame-blind", "hang-c", {}, actor="test")
    for name in ("hang-a", "hang-b", "hang-c"):
        await svc.servers.start(name, actor="test")
    before = {n: await started_at(svc, n) for n in ("hang-a", "hang-b", "hang-c")}
    notes = Recorder()
    async with watching(svc, notes) as watch:
        # The blind plan is never asked; the others answer.
        assert await watch.check_hangs() == {"hang-a": True, "hang-b": True}
        await console(svc, "hang-a", f"say {SECRET}", "Broadcast:")
        await console(svc, "hang-a", "hang", "no longer answering")
        await console(svc, "hang-c", "hang", "no longer answering")

        for _ in range(2):
            assert await watch.check_hangs() == {"hang-a": False, "hang-b": True}
        await asyncio.sleep(0.5)
        assert notes.events == []  # two misses of three: nothing yet
        assert await watch.check_hangs() == {"hang-a": False, "hang-b": True}
        await notes.until(lambda: "recovered" in notes.kinds())

        crash = notes.events[0][1]
        assert isinstance(crash, Crash) and crash.server == "hang-a"
        assert crash.hang == Hang("a TCP connection to its ready port 'game'", 3)
        assert (crash.exit_code, crash.attempt, crash.restart_in) == (None, 1, 1.0)
        assert any("no longer answering" in line for line in crash.logs)
        assert any("Broadcast: ••••••" in line for line in crash.logs)
        assert not any(SECRET in line for line in crash.logs)  # redacted
        assert notes.events[1] == ("recovered", ("hang-a", 1))

        # Restarted: a new run of its container, answering again.
        assert await started_at(svc, "hang-a") != before["hang-a"]
        for _ in range(4):  # the blind one, still not answering, is never treated as hung
            assert await watch.check_hangs() == {"hang-a": True, "hang-b": True}
        await asyncio.sleep(0.5)
    assert notes.kinds() == ["crashed", "recovered"]
    audit = audit_of(await svc.store.audit_log("hang-a"))
    assert audit.count((ACTOR, "hang")) == 1 and audit.count((ACTOR, "restart")) == 1
    for other in ("hang-b", "hang-c"):
        assert await started_at(svc, other) == before[other]
        assert not any(actor == ACTOR for actor, _ in audit_of(await svc.store.audit_log(other)))
    status = await svc.servers.status("hang-c")
    assert status.hang_check is not None and status.hang_check.startswith("off: ")
    status = await svc.servers.status("hang-a")
    assert status.hang_check is not None and "ready port 'game'" in status.hang_check


@pytest.mark.docker
async def test_a_single_miss_followed_by_an_answer_resets_the_count(svc: Services) -> None:
    await svc.servers.create("fakegame", "hang-r", {}, actor="test")
    await svc.servers.start("hang-r", actor="test")
    first = await started_at(svc, "hang-r")
    notes = Recorder()
    async with watching(svc, notes) as watch:
        assert await watch.check_hangs() == {"hang-r": True}
        await console(svc, "hang-r", "hang", "no longer answering")
        assert await watch.check_hangs() == {"hang-r": False}
        assert await watch.check_hangs() == {"hang-r": False}
        assert watch.hangs.misses("hang-r") == 2
        await listen_again(svc, "hang-r")
        assert await watch.check_hangs() == {"hang-r": True}  # one answer...
        assert watch.hangs.misses("hang-r") == 0  # ...resets the count
        info = await svc.servers.container_of(await svc.store.get_server("hang-r"))
        assert info is not None
        await svc.driver.exec(info.id, ["killall", "nc"])  # it stops answering again
        assert await watch.check_hangs() == {"hang-r": False}
        assert await watch.check_hangs() == {"hang-r": False}
        await asyncio.sleep(0.5)
        assert notes.events == [] and await started_at(svc, "hang-r") == first
        assert await watch.check_hangs() == {"hang-r": False}  # the third in a row
        await notes.until(lambda: "recovered" in notes.kinds())
    assert await started_at(svc, "hang-r") != first


@pytest.mark.docker
async def test_the_running_watch_finds_a_hang_by_itself(tmp_path: Path, fakegame: str) -> None:
    crash = crash_settings(hang_checks=2, hang_interval="1s")
    async with services_for(make_settings(tmp_path, crash=crash)) as svc:
        await svc.servers.create("fakegame", "hang-l", {}, actor="test")
        await svc.servers.start("hang-l", actor="test")
        first = await started_at(svc, "hang-l")
        notes = Recorder()
        async with watching(svc, notes) as watch:
            # Seen answering in this run: from now on, misses count.
            assert await watch.check_hangs() == {"hang-l": True}
            await console(svc, "hang-l", "hang", "no longer answering")
            await notes.until(lambda: "recovered" in notes.kinds())
        hung = notes.events[0][1]
        assert isinstance(hung, Crash) and hung.hang is not None and hung.hang.checks == 2
        assert notes.kinds() == ["crashed", "recovered"]
        assert await started_at(svc, "hang-l") != first
