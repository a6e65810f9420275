"""Player counts: ask a game server (A2S or Minecraft's status ping) or follow its log.

A pure core module: no Discord, no Docker. The caller supplies the host and the host ports
of the server's published ports; for log counting it owns the log stream and feeds a
LogPlayerTracker, because only the caller knows when the container (re)starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import a2s  # type: ignore[import-untyped]  # python-a2s ships no type information
from mcstatus import JavaServer

from bot.errors import PeonError
from bot.patterns import compile_pattern
from bot.warplans import PlayersSpec

QUERY_TIMEOUT = 2.0  # seconds per request; a poller asks again later, so fail fast
REASON_LIMIT = 120
# Servers that hide their player list fill the sample with text lines under the nil UUID.
NIL_UUID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class PlayerCount:
    online: int
    max: int | None
    names: tuple[str, ...]
    source: str  # "a2s", "minecraft" or "log"


class ProbeFailed(PeonError):
    """A player query got no answer, or an answer that is not the protocol's."""

    def __init__(self, protocol: str, address: str, reason: str, server: str | None = None) -> None:
        self.protocol, self.address, self.reason, self.server = protocol, address, reason, server
        if server:
            text = f"Server '{server}' did not answer the {protocol} player query at {address}"
        else:
            text = f"The {protocol} player query at {address} failed"
        super().__init__(f"{text}: {reason}.")


def _reason(error: BaseException, timeout: float, garbage: str) -> str:
    # TimeoutError first: in 3.11 it is an OSError, and asyncio.TimeoutError is the same class.
    if isinstance(error, TimeoutError):
        return f"no reply within {timeout:g}s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(error, OSError) and error.errno is not None:
        return " ".join((error.strerror or type(error).__name__).split())[:REASON_LIMIT]
    # mcstatus reports malformed replies as plain OSError/ValueError, python-a2s as
    # BrokenMessageError: to the operator, all mean the port speaks something else.
    return garbage


async def query_a2s(
    host: str, port: int, timeout: float = QUERY_TIMEOUT, *, server: str | None = None
) -> PlayerCount:
    """Ask a Source/Steam server for its player count (A2S_INFO) and names (A2S_PLAYER)."""
    address = (host, port)
    try:
        # python-a2s answers the S2C_CHALLENGE handshake itself; `timeout` bounds each reply.
        info = await a2s.ainfo(address, timeout=timeout)
    except (OSError, a2s.BrokenMessageError) as e:
        reason = _reason(e, timeout, "the reply was not an A2S_INFO answer")
        raise ProbeFailed("a2s", f"{host}:{port}", reason, server) from e
    online, slots = int(info.player_count), int(info.max_players)
    names: tuple[str, ...] = ()
    if online:
        try:
            players = await a2s.aplayers(address, timeout=timeout)
        except (OSError, a2s.BrokenMessageError):
            # Many servers disable A2S_PLAYER; the count from A2S_INFO still stands.
            players = []
        # Source lists players still connecting with an empty name.
        names = tuple(str(p.name) for p in players if p.name)
    return PlayerCount(online, slots, names, "a2s")


async def query_minecraft(
    host: str, port: int, timeout: float = QUERY_TIMEOUT, *, server: str | None = None
) -> PlayerCount:
    """Ask a Minecraft Java server for its players with the Server List Ping."""
    try:
        # One try: mcstatus retries on the same connection, which tripled the wait on a
        # silent server; the caller polls again anyway.
        status = await JavaServer(host, port, timeout=timeout).async_status(tries=1)
    except (OSError, ValueError, TypeError, KeyError) as e:
        reason = _reason(e, timeout, "the reply was not a Minecraft status answer")
        raise ProbeFailed("minecraft", f"{host}:{port}", reason, server) from e
    sample = status.players.sample or []
    names = tuple(p.name for p in sample if p.name and p.id != NIL_UUID)
    return PlayerCount(status.players.online, status.players.max, names, "minecraft")


async def count_players(
    spec: PlayersSpec,
    host: str,
    host_ports: Mapping[str, int],
    *,
    timeout: float = QUERY_TIMEOUT,
    server: str | None = None,
) -> PlayerCount:
    """Query a server as its war plan says; host_ports maps a plan port name to its host port."""
    if spec.protocol == "log":
        raise ValueError("log counting needs a LogPlayerTracker fed by the server's log stream")
    port = host_ports.get(spec.port or "")
    if port is None:
        raise ValueError(f"the plan's players port '{spec.port}' has no host port")
    if spec.protocol == "a2s":
        return await query_a2s(host, port, timeout, server=server)
    return await query_minecraft(host, port, timeout, server=server)


class LogPlayerTracker:
    """Count players from join/leave log lines; feed it every line, reset it on restart."""

    def __init__(self, join: str, leave: str) -> None:
        self._join = compile_pattern(join)
        self._leave = compile_pattern(leave)
        self._online: set[str] = set()

    @classmethod
    def from_spec(cls, spec: PlayersSpec) -> LogPlayerTracker:
        if not (spec.join and spec.leave):
            raise ValueError("log counting needs both 'join' and 'leave' regexes")
        return cls(spec.join, spec.leave)

    def feed(self, line: str) -> str | None:
        """Take one log line; 'join:NAME' or 'leave:NAME' when it was one, else None."""
        for kind, pattern in (("join", self._join), ("leave", self._leave)):
            # search, not match: real log lines carry timestamps and levels before the text.
            m = pattern.search(line)
            if m is None:
                continue
            name = (m.group("name") if "name" in pattern.groupindex else m.group(0)) or ""
            name = name.strip()
            if not name:
                return None
            if kind == "join":
                self._online.add(name)
            else:
                # A leave of someone who joined before tracking began must not go negative.
                self._online.discard(name)
            return f"{kind}:{name}"
        return None

    def replay(self, lines: list[str]) -> PlayerCount:
        """Feed a run's log and count: CPU work for many lines, so callers on the event loop
        run it in a thread."""
        for line in lines:
            self.feed(line)
        return self.count()

    def reset(self) -> None:
        """Forget everyone: the server restarted, so nobody is online."""
        self._online.clear()

    def count(self) -> PlayerCount:
        return PlayerCount(len(self._online), None, tuple(sorted(self._online)), "log")


def format_players(count: PlayerCount) -> str:
    """'2/10 (alice, bob)', '0/8', '3' (unknown maximum)."""
    total = f"{count.online}/{count.max}" if count.max is not None else str(count.online)
    return f"{total} ({', '.join(count.names)})" if count.names else total
