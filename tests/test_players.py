"""Player counting: A2S and Minecraft queries against local responders, and log tracking."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import cast

import pytest

from bot.app import Services
from bot.errors import PeonError
from bot.players import (
    LogPlayerTracker,
    PlayerCount,
    ProbeFailed,
    count_players,
    query_a2s,
    query_minecraft,
)
from bot.warplans import PlayersSpec, WarplanLibrary
from tests.conftest import TEST_WARPLANS
from tests.game_responders import A2SResponder, MinecraftResponder

HOST = "127.0.0.1"
PLAYERS = [("alice", 12, 340.5), ("bob", 3, 61.0)]

# What tests/fakegame/game.sh prints around the console commands "join NAME"/"leave NAME".
FAKEGAME_LOG = [
    "Fake game 1 starting world=alpha-world max_players=8",
    "Server ready for players on port 7777",
    "Player joined: alice",
    "Player joined: bob",
    "unknown command: hello",
    "Player left: alice",
    "World saved (1)",
]


def fakegame_spec() -> PlayersSpec:
    players = WarplanLibrary(TEST_WARPLANS).get("fakegame").players
    assert players is not None
    return players


@pytest.fixture
async def a2s_server() -> AsyncIterator[A2SResponder]:
    async with A2SResponder(PLAYERS, max_players=16) as responder:
        yield responder


@pytest.fixture
async def mc_server() -> AsyncIterator[MinecraftResponder]:
    async with MinecraftResponder(2, 20, ["Steve", "Alex"]) as responder:
        yield responder


@pytest.fixture
def silent_udp_port() -> Iterator[int]:
    """A bound UDP port that never answers: the query can only time out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]


def closed_port(kind: socket.SocketKind) -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- A2S ------------------------------------------------------------------------------------


async def test_a2s_reports_count_max_and_names_through_the_challenge(
    a2s_server: A2SResponder,
) -> None:
    count = await query_a2s(HOST, a2s_server.port)
    assert count == PlayerCount(2, 16, ("alice", "bob"), "a2s")
    # Both A2S_INFO and A2S_PLAYER went through the S2C_CHALLENGE handshake.
    assert a2s_server.challenges_sent == 2
    assert a2s_server.requests == [0x54, 0x54, 0x55, 0x55]


async def test_a2s_works_with_a_server_that_sends_no_challenge() -> None:
    async with A2SResponder(PLAYERS, max_players=10, challenge=False) as responder:
        count = await query_a2s(HOST, responder.port)
    assert count == PlayerCount(2, 10, ("alice", "bob"), "a2s")
    assert responder.challenges_sent == 0
    assert responder.requests == [0x54, 0x55]


async def test_a2s_count_follows_players_joining_and_leaving(a2s_server: A2SResponder) -> None:
    a2s_server.set_players([*PLAYERS, ("carol", 0, 1.5)])
    assert (await query_a2s(HOST, a2s_server.port)).names == ("alice", "bob", "carol")
    a2s_server.set_players([])
    assert await query_a2s(HOST, a2s_server.port) == PlayerCount(0, 16, (), "a2s")


async def test_a2s_skips_the_player_list_when_nobody_is_online() -> None:
    async with A2SResponder([]) as responder:
        assert (await query_a2s(HOST, responder.port)).online == 0
    assert 0x55 not in responder.requests


async def test_a2s_keeps_the_count_when_the_player_list_is_disabled() -> None:
    async with A2SResponder(PLAYERS, answer_players=False) as responder:
        count = await query_a2s(HOST, responder.port, timeout=0.3)
    assert count == PlayerCount(2, 16, (), "a2s")


async def test_a2s_silent_port_fails_quickly_with_a_clear_message(silent_udp_port: int) -> None:
    began = time.monotonic()
    with pytest.raises(ProbeFailed) as caught:
        await query_a2s(HOST, silent_udp_port, timeout=0.5)
    assert time.monotonic() - began < 2
    assert str(caught.value) == (
        f"The a2s player query at {HOST}:{silent_udp_port} failed: no reply within 0.5s."
    )
    assert isinstance(caught.value, PeonError)


async def test_a2s_closed_port_is_refused() -> None:
    port = closed_port(socket.SOCK_DGRAM)
    with pytest.raises(ProbeFailed, match="connection refused"):
        await query_a2s(HOST, port, timeout=0.5)


async def test_a2s_garbage_reply_is_reported_as_such() -> None:
    class Junk(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(b"\xff\xff\xff\xffZ not a2s", addr)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Junk, local_addr=(HOST, 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        with pytest.raises(ProbeFailed, match="not an A2S_INFO answer"):
            await query_a2s(HOST, port, timeout=0.5)
    finally:
        transport.close()


# --- Minecraft ------------------------------------------------------------------------------


async def test_minecraft_reports_count_max_and_names(mc_server: MinecraftResponder) -> None:
    count = await query_minecraft(HOST, mc_server.port)
    assert count == PlayerCount(2, 20, ("Steve", "Alex"), "minecraft")
    (handshake,) = mc_server.handshakes
    assert (handshake.address, handshake.port, handshake.next_state) == (HOST, mc_server.port, 1)


async def test_minecraft_count_follows_set_players(mc_server: MinecraftResponder) -> None:
    mc_server.set_players(3, ["Steve", "Alex", "Notch"], max=30)
    assert await query_minecraft(HOST, mc_server.port) == PlayerCount(
        3, 30, ("Steve", "Alex", "Notch"), "minecraft"
    )
    mc_server.set_players(0, [])
    assert await query_minecraft(HOST, mc_server.port) == PlayerCount(0, 30, (), "minecraft")


async def test_minecraft_responder_answers_the_ping(mc_server: MinecraftResponder) -> None:
    from mcstatus import JavaServer

    latency = await JavaServer(HOST, mc_server.port, timeout=1).async_ping(ping_token=42)
    assert latency >= 0 and mc_server.pings == 1


async def test_minecraft_closed_port_is_refused_quickly() -> None:
    port = closed_port(socket.SOCK_STREAM)
    began = time.monotonic()
    with pytest.raises(ProbeFailed) as caught:
        await query_minecraft(HOST, port, timeout=0.5)
    assert time.monotonic() - began < 2
    assert str(caught.value) == (
        f"The minecraft player query at {HOST}:{port} failed: "
        "connection refused (nothing listens on that port)."
    )


async def test_minecraft_garbage_reply_is_reported_as_such() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"\x05\x00\x03abc")  # a status packet whose JSON is 'abc'
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, HOST, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ProbeFailed, match="not a Minecraft status answer"):
            await query_minecraft(HOST, port, timeout=0.5)
    finally:
        server.close()


# --- dispatch -------------------------------------------------------------------------------


async def test_count_players_queries_the_port_the_plan_names(
    a2s_server: A2SResponder, mc_server: MinecraftResponder
) -> None:
    ports = {"game": closed_port(socket.SOCK_STREAM), "query": a2s_server.port}
    a2s_spec = PlayersSpec(protocol="a2s", port="query")
    assert (await count_players(a2s_spec, HOST, ports)).source == "a2s"
    mc_spec = PlayersSpec(protocol="minecraft", port="java")
    assert (await count_players(mc_spec, HOST, {"java": mc_server.port})).online == 2


async def test_count_players_names_the_server_when_it_fails(silent_udp_port: int) -> None:
    spec = PlayersSpec(protocol="a2s", port="query")
    with pytest.raises(ProbeFailed) as caught:
        await count_players(spec, HOST, {"query": silent_udp_port}, timeout=0.3, server="alpha")
    assert str(caught.value) == (
        f"Server 'alpha' did not answer the a2s player query at {HOST}:{silent_udp_port}: "
        "no reply within 0.3s."
    )


async def test_count_players_refuses_log_plans_and_unknown_ports() -> None:
    with pytest.raises(ValueError, match="LogPlayerTracker"):
        await count_players(fakegame_spec(), HOST, {"game": 1})
    with pytest.raises(ValueError, match="'query' has no host port"):
        await count_players(PlayersSpec(protocol="a2s", port="query"), HOST, {"game": 1})


# --- log ------------------------------------------------------------------------------------


def test_log_tracker_follows_the_fake_games_log_lines() -> None:
    tracker = LogPlayerTracker.from_spec(fakegame_spec())
    events = [tracker.feed(line) for line in FAKEGAME_LOG]
    assert events == [None, None, "join:alice", "join:bob", None, "leave:alice", None]
    assert tracker.count() == PlayerCount(1, None, ("bob",), "log")


def test_log_tracker_never_goes_negative_nor_counts_twice() -> None:
    tracker = LogPlayerTracker.from_spec(fakegame_spec())
    assert tracker.feed("Player left: ghost") == "leave:ghost"
    assert tracker.count().online == 0
    tracker.feed("Player joined: bob")
    tracker.feed("Player joined: bob")
    assert tracker.count().online == 1


def test_log_tracker_reset_means_nobody_is_online() -> None:
    tracker = LogPlayerTracker.from_spec(fakegame_spec())
    for line in FAKEGAME_LOG:
        tracker.feed(line)
    tracker.reset()
    assert tracker.count() == PlayerCount(0, None, (), "log")


def test_log_tracker_finds_lines_behind_a_prefix_and_without_a_name_group() -> None:
    tracker = LogPlayerTracker(r"\w+ connected", r"\w+ disconnected")
    assert tracker.feed("[12:00:01] INFO steve connected") == "join:steve connected"
    assert tracker.feed("[12:00:09] INFO steve disconnected") == "leave:steve disconnected"
    assert tracker.count().online == 1  # the whole match is the name, so they differ


def test_log_tracker_needs_both_regexes() -> None:
    with pytest.raises(ValueError, match="both"):
        LogPlayerTracker.from_spec(PlayersSpec(protocol="a2s", port="query"))


# --- real engine ----------------------------------------------------------------------------


@pytest.mark.docker
async def test_log_tracker_counts_the_real_fake_game(services: Services) -> None:
    servers = services.servers
    await servers.create("fakegame", "players", actor="test")
    await servers.start("players", actor="test")
    for command in ("join alice", "join bob", "leave alice"):
        await servers.console("players", command, actor="test")
    container = (await servers.status("players")).container
    assert container is not None
    tracker = LogPlayerTracker.from_spec(fakegame_spec())
    events = []
    async with asyncio.timeout(30):
        # follow_logs is an async generator: closing it on break frees its worker thread now.
        stream = cast(AsyncGenerator[str, None], services.driver.follow_logs(container.id))
        async with contextlib.aclosing(stream) as lines:
            async for line in lines:
                if (event := tracker.feed(line)) is not None:
                    events.append(event)
                if event == "leave:alice":
                    break
    assert events == ["join:alice", "join:bob", "leave:alice"]
    assert tracker.count() == PlayerCount(1, None, ("bob",), "log")


def test_format_players() -> None:
    from bot.players import PlayerCount, format_players

    assert format_players(PlayerCount(2, 10, ("alice", "bob"), "a2s")) == "2/10 (alice, bob)"
    assert format_players(PlayerCount(0, 8, (), "minecraft")) == "0/8"
    assert format_players(PlayerCount(3, None, (), "log")) == "3"
