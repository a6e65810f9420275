"""Small game-query servers for the tests, bound to 127.0.0.1 on a free port.

A2SResponder speaks Valve's Source server queries (A2S_INFO, A2S_PLAYER, with the
S2C_CHALLENGE handshake); MinecraftResponder speaks the Java Server List Ping. Layouts follow
the Valve Developer wiki "Server queries" page and wiki.vg "Server List Ping", cross-checked
with the parsers of python-a2s (a2s/info.py, a2s/players.py) and mcstatus
(_protocol/java_client.py). Neither splits packets: test replies stay far below 1400 bytes.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

HEADER = b"\xff\xff\xff\xff"  # single-packet header (-1)
A2S_INFO = 0x54
A2S_PLAYER = 0x55
S2C_CHALLENGE = 0x41
S2A_INFO = 0x49
S2A_PLAYER = 0x44
INFO_PAYLOAD = b"Source Engine Query\0"


def _cstring(text: str) -> bytes:
    return text.encode() + b"\0"


class A2SResponder(asyncio.DatagramProtocol):
    """A Source game server's query port: answers A2S_INFO and A2S_PLAYER over UDP."""

    def __init__(
        self,
        players: list[tuple[str, int, float]],
        *,
        max_players: int = 16,
        name: str = "PEON test server",
        map: str = "de_peon",
        folder: str = "peon",
        game: str = "PEON Test",
        app_id: int = 0,
        version: str = "1.0.0.0",
        challenge: bool = True,
        answer_players: bool = True,
    ) -> None:
        self.players = list(players)
        self.max_players = max_players
        self.name, self.map, self.folder, self.game = name, map, folder, game
        self.app_id, self.version = app_id, version
        self.challenge = challenge
        self.answer_players = answer_players  # False: like servers that disable A2S_PLAYER
        # Never 0 or -1: those are what clients send when they have no challenge yet.
        self._challenge = random.randrange(1, 0xFFFFFFFF).to_bytes(4, "little")
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.challenges_sent = 0
        self.requests: list[int] = []  # request kinds in arrival order

    async def start(self) -> Self:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def set_players(self, players: list[tuple[str, int, float]]) -> None:
        self.players = list(players)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 5 or not data.startswith(HEADER):
            return  # not a query: a real server stays silent too
        kind, body = data[4], data[5:]
        self.requests.append(kind)
        if kind == A2S_INFO and body.startswith(INFO_PAYLOAD):
            # Since 2020 Source servers answer a bare A2S_INFO with a challenge; the client
            # repeats the request with the 4 challenge bytes appended.
            if self.challenge and body[len(INFO_PAYLOAD) :] != self._challenge:
                self._send_challenge(addr)
            else:
                self._send(self._info(), addr)
        elif kind == A2S_PLAYER and len(body) >= 4 and self.answer_players:
            # A2S_PLAYER always carries a challenge field; -1 (or a stale value) asks for one.
            if self.challenge and body[:4] != self._challenge:
                self._send_challenge(addr)
            else:
                self._send(self._player_list(), addr)

    def _send(self, payload: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(HEADER + payload, addr)

    def _send_challenge(self, addr: tuple[str, int]) -> None:
        self.challenges_sent += 1
        self._send(bytes([S2C_CHALLENGE]) + self._challenge, addr)

    def _info(self) -> bytes:
        return b"".join(
            [
                bytes([S2A_INFO, 17]),  # header, protocol version
                _cstring(self.name),
                _cstring(self.map),
                _cstring(self.folder),
                _cstring(self.game),
                struct.pack("<H", self.app_id),  # Steam app id (short)
                bytes([len(self.players), self.max_players, 0]),  # players, max players, bots
                b"d",  # server type: dedicated
                b"l",  # environment: Linux
                bytes([0, 0]),  # visibility: public; VAC: unsecured
                _cstring(self.version),
                bytes([0]),  # extra data flag: no optional fields follow
            ]
        )

    def _player_list(self) -> bytes:
        out = bytearray([S2A_PLAYER, len(self.players)])
        for index, (name, score, duration) in enumerate(self.players):
            out += bytes([index]) + _cstring(name) + struct.pack("<lf", score, duration)
        return bytes(out)


def encode_varint(value: int) -> bytes:
    """Minecraft VarInt: 7 bits a byte, low groups first; negatives as 32-bit two's complement."""
    value &= 0xFFFFFFFF
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """Read a VarInt at `pos`; return (value, position after it)."""
    result = 0
    for shift in range(0, 35, 7):
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result - (1 << 32) if result & (1 << 31) else result), pos
    raise ValueError("VarInt longer than 5 bytes")


async def _read_varint(reader: asyncio.StreamReader) -> int:
    data = b""
    for _ in range(5):
        data += await reader.readexactly(1)
        if not data[-1] & 0x80:
            return decode_varint(data)[0]
    raise ValueError("VarInt longer than 5 bytes")


def _packet(packet_id: int, payload: bytes) -> bytes:
    body = encode_varint(packet_id) + payload
    return encode_varint(len(body)) + body


@dataclass(frozen=True)
class Handshake:
    protocol: int
    address: str
    port: int
    next_state: int


class _TcpResponder:
    """A TCP server on 127.0.0.1 on a free port; `_serve` handles one connection."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class MinecraftResponder(_TcpResponder):
    """A Minecraft Java server's status side: handshake, status request, ping, over TCP."""

    def __init__(
        self,
        online: int,
        max: int,
        names: list[str],
        version: str = "1.21",
        protocol: int = 767,
        motd: str = "A PEON test server",
    ) -> None:
        super().__init__()
        self.online, self.max, self.names = online, max, list(names)
        self.version, self.protocol, self.motd = version, protocol, motd
        self.handshakes: list[Handshake] = []
        self.pings = 0

    def set_players(self, online: int, names: list[str], max: int | None = None) -> None:
        self.online, self.names = online, list(names)
        if max is not None:
            self.max = max

    def status_json(self) -> dict[str, object]:
        players: dict[str, object] = {"max": self.max, "online": self.online}
        if self.names:  # vanilla omits the sample when nobody is online
            players["sample"] = [
                {"name": n, "id": str(uuid.uuid3(uuid.NAMESPACE_OID, n))} for n in self.names
            ]
        return {
            "version": {"name": self.version, "protocol": self.protocol},
            "players": players,
            "description": {"text": self.motd},
        }

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        state = 0  # 0 handshaking, 1 status
        try:
            while True:
                length = await _read_varint(reader)
                data = await reader.readexactly(length)
                packet_id, pos = decode_varint(data)
                if state == 0 and packet_id == 0x00:
                    state = self._handshake(data, pos)
                    if state != 1:
                        return  # login (2) is not spoken here
                elif state == 1 and packet_id == 0x00:
                    text = json.dumps(self.status_json()).encode()
                    writer.write(_packet(0x00, encode_varint(len(text)) + text))
                    await writer.drain()
                elif state == 1 and packet_id == 0x01:
                    # Pong echoes the client's 8-byte token; the exchange ends there.
                    self.pings += 1
                    writer.write(_packet(0x01, data[pos : pos + 8]))
                    await writer.drain()
                    return
                else:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            return  # client went away or sent garbage: drop it like a real server
        finally:
            self._writers.discard(writer)
            writer.close()

    def _handshake(self, data: bytes, pos: int) -> int:
        protocol, pos = decode_varint(data, pos)
        size, pos = decode_varint(data, pos)
        address = data[pos : pos + size].decode()
        pos += size
        (port,) = struct.unpack(">H", data[pos : pos + 2])
        next_state, _ = decode_varint(data, pos + 2)
        self.handshakes.append(Handshake(protocol, address, port, next_state))
        return next_state


# --- Source RCON ------------------------------------------------------------------------------
# From the Valve Developer wiki "Source RCON Protocol": packets are int32 size, int32 id,
# int32 type, NUL-terminated body, one empty NUL, all little-endian. SERVERDATA_AUTH (3) is
# answered with an empty SERVERDATA_RESPONSE_VALUE (0) and then SERVERDATA_AUTH_RESPONSE (2)
# carrying the request id, or -1 for a wrong password. SERVERDATA_EXECCOMMAND (2) is answered
# with RESPONSE_VALUE packets of at most 4096 bytes each; an empty RESPONSE_VALUE from the
# client is mirrored, followed by a packet whose body is 0x00000001 0x00000000 (the wiki's
# multi-packet trick). The Minecraft flavour (wiki.vg "RCON") skips the empty packet before the
# auth response and answers the probe with "Unknown request 0".

RCON_AUTH, RCON_AUTH_RESPONSE, RCON_EXEC, RCON_RESPONSE = 3, 2, 2, 0


def rcon_packet(packet_id: int, packet_type: int, body: bytes) -> bytes:
    payload = struct.pack("<ii", packet_id, packet_type) + body + b"\0\0"
    return struct.pack("<i", len(payload)) + payload


class RconResponder(_TcpResponder):
    """A Source RCON server on 127.0.0.1 with commands answered by `reply(command)`.

    `chunk` writes every packet in pieces of that many bytes with a pause between them, so a
    client that reads fewer bytes than a packet holds is caught. `silent` commands get no
    answer at all (a server that hangs); `drop` commands close the connection (a `stop`).
    """

    def __init__(
        self,
        password: str,
        reply: Callable[[str], str] | None = None,
        *,
        flavour: str = "source",
        chunk: int | None = None,
        silent: set[str] | frozenset[str] = frozenset(),
        drop: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        self.password, self.flavour, self.chunk = password, flavour, chunk
        self.reply = reply or (lambda command: f"ran: {command}")
        self.silent, self.drop = set(silent), set(drop)
        self.commands: list[str] = []
        self.logins: list[bool] = []

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if self.chunk is None:
            writer.write(data)
        else:
            for at in range(0, len(data), self.chunk):
                writer.write(data[at : at + self.chunk])
                await writer.drain()
                await asyncio.sleep(0.001)
        await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        authed = False
        try:
            while True:
                (size,) = struct.unpack("<i", await reader.readexactly(4))
                data = await reader.readexactly(size)
                packet_id, packet_type = struct.unpack("<ii", data[:8])
                body = data[8:-2].decode()
                if packet_type == RCON_AUTH:
                    authed = body == self.password
                    self.logins.append(authed)
                    out = b"" if self.flavour != "source" else rcon_packet(packet_id, 0, b"")
                    out += rcon_packet(packet_id if authed else -1, RCON_AUTH_RESPONSE, b"")
                    await self._send(writer, out)
                    if not authed:
                        return
                elif not authed:
                    return
                elif packet_type == RCON_EXEC:
                    self.commands.append(body)
                    if body in self.silent:
                        continue
                    if body in self.drop:
                        return
                    text = self.reply(body).encode()
                    pieces = [text[at : at + 4096] for at in range(0, len(text), 4096)] or [b""]
                    out = b"".join(rcon_packet(packet_id, RCON_RESPONSE, p) for p in pieces)
                    await self._send(writer, out)
                elif packet_type == RCON_RESPONSE:
                    if self.flavour == "source":
                        out = rcon_packet(packet_id, RCON_RESPONSE, b"")
                        out += rcon_packet(
                            packet_id, RCON_RESPONSE, b"\x00\x00\x00\x01\x00\x00\x00\x00"
                        )
                    else:
                        out = rcon_packet(packet_id, RCON_RESPONSE, b"Unknown request 0")
                    await self._send(writer, out)
        except (asyncio.IncompleteReadError, ConnectionError, UnicodeError, struct.error):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
