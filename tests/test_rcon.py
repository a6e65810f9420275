"""The Source RCON client against a responder on loopback written from the protocol's
documentation (tests/game_responders.py RconResponder): a real TCP conversation each time."""

from __future__ import annotations

import asyncio
import socket

import pytest

from bot import rcon
from bot.rcon import RconError
from tests.game_responders import RconResponder

PASSWORD = "s3cret-pw"


async def test_runs_a_command_and_returns_the_reply() -> None:
    async with RconResponder(PASSWORD) as server:
        reply = await rcon.run("127.0.0.1", server.port, PASSWORD, "status", server="alpha")
    assert reply == "ran: status"
    assert server.logins == [True] and server.commands == ["status"]


@pytest.mark.parametrize("flavour", ["source", "minecraft"])
async def test_a_long_reply_split_over_packets_comes_back_whole(flavour: str) -> None:
    text = "".join(f"line {n:05d} of a long player list\n" for n in range(700))  # ~22 KiB
    async with RconResponder(PASSWORD, lambda _: text, flavour=flavour) as server:
        reply = await rcon.run("127.0.0.1", server.port, PASSWORD, "players", server="alpha")
    assert reply == text
    assert len(text) > 5 * 4096


async def test_packets_arriving_in_small_pieces_are_read_exactly() -> None:
    text = "x" * 9000 + "end"
    async with RconResponder(PASSWORD, lambda _: text, chunk=7) as server:
        reply = await rcon.run("127.0.0.1", server.port, PASSWORD, "dump", server="alpha")
        again = await rcon.run("127.0.0.1", server.port, PASSWORD, "dump", server="alpha")
    assert reply == text and again == text


async def test_a_short_reply_needs_no_end_probe() -> None:
    """A server that ignores the empty probe packet (some do) still answers short commands."""
    async with RconResponder(PASSWORD, flavour="minecraft") as server:
        reply = await rcon.run("127.0.0.1", server.port, PASSWORD, "list", server="alpha")
    assert reply == "ran: list"


async def test_a_wrong_password_is_one_sentence_without_the_password() -> None:
    async with RconResponder(PASSWORD) as server:
        with pytest.raises(RconError) as e:
            await rcon.run("127.0.0.1", server.port, "wrong-pw", "status", server="alpha")
    assert str(e.value) == "alpha refused the RCON password; check its RCON password variable."
    assert "wrong-pw" not in str(e.value) and server.commands == []


async def test_a_closed_port_is_one_sentence() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the connection is refused
        with pytest.raises(RconError) as e:
            await rcon.run("127.0.0.1", port, PASSWORD, "status", server="alpha")
    assert str(e.value) == (
        f"The RCON port of alpha (127.0.0.1:{port}) refused the connection; the server may "
        "still be starting."
    )


async def test_a_server_that_does_not_answer_times_out_in_one_sentence() -> None:
    async with RconResponder(PASSWORD, silent={"hang"}) as server:
        started = asyncio.get_running_loop().time()
        with pytest.raises(RconError) as e:
            await rcon.run("127.0.0.1", server.port, PASSWORD, "hang", timeout=0.5, server="alpha")
        waited = asyncio.get_running_loop().time() - started
    assert str(e.value) == "alpha did not answer over RCON within 0.5 s."
    assert waited < 5


async def test_a_stop_that_drops_the_connection_counts_as_done_only_when_expected() -> None:
    async with RconResponder(PASSWORD, drop={"stop"}) as server:
        assert (
            await rcon.run(
                "127.0.0.1", server.port, PASSWORD, "stop", server="alpha", expect_reply=False
            )
            == ""
        )
        with pytest.raises(RconError, match="closed the RCON connection before answering"):
            await rcon.run("127.0.0.1", server.port, PASSWORD, "stop", server="alpha")


async def test_a_command_without_an_answer_counts_as_sent_only_when_none_is_needed() -> None:
    """`say` needs no reply: a server that sends none costs the timeout, not an error."""
    async with RconResponder(PASSWORD, silent={"say hi"}) as server:
        assert (
            await rcon.run(
                "127.0.0.1", server.port, PASSWORD, "say hi", timeout=0.3, expect_reply=False
            )
            == ""
        )
        assert server.commands == ["say hi"]
    async with RconResponder("other") as server:  # the command never went out
        with pytest.raises(RconError, match="refused the RCON password"):
            await rcon.run("127.0.0.1", server.port, PASSWORD, "say hi", expect_reply=False)


async def test_garbage_on_the_port_is_not_taken_for_a_reply() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(RconError, match="sent a reply that is not RCON"):
            await rcon.run("127.0.0.1", port, PASSWORD, "status", server="alpha")
    finally:
        server.close()


def test_packets_encode_as_the_wiki_shows() -> None:
    # The wiki's example: size 10 + body, id, type, body, NUL, NUL.
    packet = rcon.Packet(7, rcon.EXECCOMMAND, b"status").encode()
    assert packet == (
        (16).to_bytes(4, "little")
        + (7).to_bytes(4, "little")
        + (2).to_bytes(4, "little")
        + b"status\0\0"
    )
