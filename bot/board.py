"""The live status board's content: every server's state, address, players, uptime and next
automatic stop, as plain data. Knows nothing of Discord; the bot renders a `Board` into a
message and the presence summary, and edits them only when what it renders changed.

Nothing here holds the current time: uptime is the moment a server started and the next stop
the moment it happens (Discord shows both relative to each reader), so a board built twice
with nothing changed in between is equal, and the bot has nothing to edit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bot.docker_driver import SingleFlight
from bot.errors import PeonError, WarplanNotFound
from bot.models import ServerStatus
from bot.players import PlayerCount
from bot.rules import Pending
from bot.servers import ServerService, ServerSummary

log = logging.getLogger(__name__)

PLAYER_QUERY_TIMEOUT = 5.0  # seconds one server's player count may take before it is left out
UNKNOWN = "unknown"  # the state of a server whose Docker host does not answer


@dataclass(frozen=True)
class BoardRow:
    """One server as the board shows it."""

    name: str
    title: str  # the war plan's title (its name when the plan is gone)
    state: str  # running, exited, created, missing, an operation (start...) or "unknown"
    host: str
    addresses: tuple[str, ...]  # "address:port protocol"
    players: PlayerCount | None  # None: not running, or its plan cannot count them
    since: datetime | None  # running since (uptime), None when not running
    next_stop: tuple[str, datetime] | None  # (stop|restart, when) of the automatic stop
    startable: bool  # stopped, on a host that answers, no operation under way

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class Board:
    rows: tuple[BoardRow, ...]
    hosts: int = 1  # Docker hosts configured (the host is shown when there are several)

    @property
    def up(self) -> int:
        return sum(1 for r in self.rows if r.running)

    @property
    def playing(self) -> int:
        return sum(r.players.online for r in self.rows if r.players is not None)

    def summary(self) -> str:
        """'3 servers up, 7 playing': the bot's presence."""
        if not self.rows:
            return "No servers yet"
        servers = "server" if self.up == 1 else "servers"
        return f"{self.up} {servers} up, {self.playing} playing"


class BoardBuilder:
    """Builds the board from the servers (their containers, players) and the automation's
    pending stops. A host that does not answer makes only its servers `unknown`; a player
    query that fails or hangs leaves only that server's players out."""

    def __init__(
        self,
        servers: ServerService,
        pending: Callable[[str], Pending | None] | None = None,
        *,
        query_timeout: float = PLAYER_QUERY_TIMEOUT,
    ) -> None:
        self.servers = servers
        self.pending = pending
        self.query_timeout = query_timeout
        self._flight = SingleFlight()

    async def build(self) -> Board:
        """One listing per host, then the rows side by side within the checks limits (per
        host and in total). Builds asked for while one runs share it (single flight)."""
        return await self._flight.run("board", self._build)

    async def _build(self) -> Board:
        summaries = await self.servers.list_servers()
        done = await self.servers.fanout.each(
            "board",
            summaries,
            self._row,
            key=lambda s: s.record.name,
            host=lambda s: s.record.host,
            # Its player query has its own, shorter timeout; this only bounds the rest.
            deadline=self.query_timeout + self.servers.fanout.deadline,
        )
        rows = [done.results.get(s.record.name) or self._bare(s) for s in summaries]
        return Board(tuple(rows), hosts=len(self.servers.camps))

    def _bare(self, s: ServerSummary) -> BoardRow:
        """A row from the listing alone, for a server whose row could not be made."""
        record = s.record
        camp = self.servers.camp_of(record)
        addresses = tuple(f"{camp.address}:{p.host} {p.protocol}" for p in record.ports)
        state = UNKNOWN if s.unreachable else s.state
        return BoardRow(record.name, record.warplan, state, record.host, addresses,
                        None, None, None, False)  # fmt: skip

    async def _row(self, s: ServerSummary) -> BoardRow:
        record = s.record
        camp = self.servers.camp_of(record)
        addresses = tuple(f"{camp.address}:{p.host} {p.protocol}" for p in record.ports)
        try:
            title = self.servers.warplans.get(record.warplan).title
        except WarplanNotFound:
            title = record.warplan
        if s.unreachable:
            return BoardRow(record.name, title, UNKNOWN, record.host, addresses,
                            None, None, None, False)  # fmt: skip
        state = s.state
        info = s.container
        running = info is not None and info.running and not record.operation
        players = await self._players(s) if running else None
        pending = self.pending(record.name) if self.pending is not None and running else None
        return BoardRow(
            name=record.name,
            title=title,
            state=state,
            host=record.host,
            addresses=addresses,
            players=players,
            since=info.started_at if running and info is not None else None,
            next_stop=(pending.due.action, pending.at) if pending is not None else None,
            startable=not record.operation and state in ("exited", "created", "missing"),
        )

    async def _players(self, s: ServerSummary) -> PlayerCount | None:
        status = ServerStatus(s.record, s.container, None, "")
        try:
            # asyncio.timeout: 3.11's wait_for can swallow a cancellation (the bot closing).
            async with asyncio.timeout(self.query_timeout):
                return await self.servers.players(status)
        except (TimeoutError, PeonError) as e:
            log.info("board: players of %s not counted: %s", s.record.name, e)
            return None
