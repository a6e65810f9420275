"""A Source RCON client: one connection per command (connect, authenticate, run, close).

Framing follows the Valve Developer wiki "Source RCON Protocol": each packet is a little-endian
int32 size (counting what follows it), int32 id, int32 type, a NUL-terminated body and one empty
NUL. Types: SERVERDATA_AUTH 3, SERVERDATA_AUTH_RESPONSE 2, SERVERDATA_EXECCOMMAND 2,
SERVERDATA_RESPONSE_VALUE 0. A failed login answers with id -1; a server may send an empty
RESPONSE_VALUE before the AUTH_RESPONSE. A reply too long for one packet is split; the wiki's
way to find its end is to send an empty RESPONSE_VALUE after the command: the server answers
it only once the command's packets are out, so every packet before that answer belongs to the
reply. Minecraft (wiki.vg "RCON") answers the same probe with "Unknown request 0", which ends
the reply just as well.

Why not the `rcon` package (2.4.9): its asyncio reader uses StreamReader.read(n), which may
return fewer bytes than asked when a packet spans TCP segments, and then misreads every packet
after it; exact reads are the whole difficulty of this protocol, so the client is small and ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from dataclasses import dataclass

from bot.errors import PeonError

AUTH = 3
AUTH_RESPONSE = 2
EXECCOMMAND = 2
RESPONSE_VALUE = 0
MAX_PACKET = 4096  # the wiki's largest packet a server sends (size field included)
MAX_REPLY = 1 << 20  # stop reading a runaway reply at 1 MiB
# A body this long may have been split: only then does PEON send the end-of-reply probe, so a
# server that ignores the probe (some do) still answers short commands at once.
SPLIT_HINT = MAX_PACKET - 14 - 96

_header = struct.Struct("<ii")
_ids = itertools.count(1)


class RconError(PeonError):
    """A console command over RCON that did not go through; one sentence for the user."""


@dataclass(frozen=True)
class Packet:
    id: int
    type: int
    body: bytes

    def encode(self) -> bytes:
        payload = _header.pack(self.id, self.type) + self.body + b"\0\0"
        return struct.pack("<i", len(payload)) + payload


async def read_packet(reader: asyncio.StreamReader) -> Packet:
    """Read exactly one packet; a size outside the protocol's bounds is a broken stream."""
    (size,) = struct.unpack("<i", await reader.readexactly(4))
    if not 10 <= size <= MAX_REPLY:
        raise ValueError(f"RCON packet size {size} is out of bounds")
    data = await reader.readexactly(size)
    packet_id, packet_type = _header.unpack(data[:8])
    # The body ends at its NUL; servers that get the padding wrong still give their text.
    body = data[8:].split(b"\0", 1)[0]
    return Packet(packet_id, packet_type, body)


def next_id() -> int:
    return next(_ids) % 0x7FFFFFFF or 1


async def run(
    host: str,
    port: int,
    password: str,
    command: str,
    *,
    timeout: float = 10.0,
    server: str = "the server",
    expect_reply: bool = True,
) -> str:
    """Run one command and return the server's reply as text.

    With expect_reply False (a `say`, or a `stop` after which a server may drop the
    connection), a command that went out counts as done even when no answer comes before the
    timeout or the connection closes: the protocol promises a reply, not every server sends one.
    """
    where = f"{host}:{port}"
    sent = asyncio.Event()  # set once the command is out: then, without expect_reply, done
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as e:
                raise RconError(
                    f"The RCON port of {server} ({where}) refused the connection; the server "
                    "may still be starting."
                ) from e
            try:
                return await _converse(
                    reader,
                    writer,
                    password,
                    command,
                    server=server,
                    expect_reply=expect_reply,
                    sent=sent,
                )
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        if sent.is_set() and not expect_reply:
            return ""
        raise RconError(f"{server} did not answer over RCON within {timeout:g} s.") from None
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        raise RconError(f"{server} closed the RCON connection before answering.") from e
    except (ValueError, UnicodeError) as e:
        raise RconError(f"{server} sent a reply that is not RCON ({e}).") from e


async def _converse(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    password: str,
    command: str,
    *,
    server: str,
    expect_reply: bool,
    sent: asyncio.Event,
) -> str:
    login = next_id()
    writer.write(Packet(login, AUTH, password.encode()).encode())
    await writer.drain()
    while True:
        packet = await read_packet(reader)
        if packet.type != AUTH_RESPONSE:
            continue  # the empty RESPONSE_VALUE Source servers send first
        if packet.id == -1:
            raise RconError(
                f"{server} refused the RCON password; check its RCON password variable."
            )
        if packet.id == login:
            break
    request = next_id()
    writer.write(Packet(request, EXECCOMMAND, command.encode()).encode())
    await writer.drain()
    sent.set()
    if not expect_reply:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await _reply_packet(reader, request)
        return ""
    first = await _reply_packet(reader, request)
    parts = [first.body]
    if len(first.body) >= SPLIT_HINT:
        probe = next_id()
        writer.write(Packet(probe, RESPONSE_VALUE, b"").encode())
        await writer.drain()
        total = len(first.body)
        while (packet := await read_packet(reader)).id != probe:
            if packet.id == request:
                parts.append(packet.body)
                total += len(packet.body)
                if total > MAX_REPLY:
                    break
    return b"".join(parts).decode("utf-8", errors="replace")


async def _reply_packet(reader: asyncio.StreamReader, request: int) -> Packet:
    while True:
        packet = await read_packet(reader)
        if packet.id == request and packet.type == RESPONSE_VALUE:
            return packet
