"""Hang detection (what LinuxGSM's monitor does): how to ask a running server whether it still
answers, and the count of checks it missed in a row.

How to ask comes from the war plan: its A2S or Minecraft player query (on the players port),
else a TCP connection to its ready port; a plan with neither (log-only) cannot be asked, so
hang detection is off for its servers. The crash watch (bot/watch.py) runs the checks and
restarts what hangs; this module does no Docker and no Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from bot.players import ProbeFailed, count_players
from bot.settings import CrashSettings
from bot.warplans import WarPlan

# A port that accepts and then closes at once without a byte is Docker's port proxy finding
# nothing listening behind it (measured: the EOF comes within milliseconds). A server that
# listens holds the connection open, or greets; this long is enough to tell the two apart.
TCP_SETTLE = 1.0


@dataclass(frozen=True)
class Probe:
    """How to ask a server whether it answers: a query protocol or a TCP connect, on one of
    the plan's ports (by name)."""

    kind: Literal["a2s", "minecraft", "tcp"]
    port: str

    def describe(self) -> str:
        return {
            "a2s": f"its A2S query (port '{self.port}')",
            "minecraft": f"its Minecraft status ping (port '{self.port}')",
            "tcp": f"a TCP connection to its ready port '{self.port}'",
        }[self.kind]


@dataclass(frozen=True)
class Hang:
    """A server that runs but missed `checks` checks in a row."""

    probe: str  # what it stopped answering, as Probe.describe() says it
    checks: int


def probe_for(plan: WarPlan) -> Probe | None:
    """The plan's way to ask: its player query, else its ready port; None for log-only plans."""
    players = plan.players
    if players is not None and players.protocol in ("a2s", "minecraft") and players.port:
        return Probe(players.protocol, players.port)
    if plan.ready.port:
        return Probe("tcp", plan.ready.port)
    return None


def describe(plan: WarPlan, settings: CrashSettings) -> str:
    """One line for status: how the server is checked, or why it is not."""
    probe = probe_for(plan)
    if probe is None:
        return "off: its war plan has no player query or ready port to ask"
    if not settings.hang_checks:
        return "off (crash.hang_checks is 0)"
    then = "restarted" if settings.restart else "announced (restarts are off)"
    return (
        f"{probe.describe()} every {settings.hang_interval}; {then} after "
        f"{settings.hang_checks} missed in a row"
    )


async def answers(
    probe: Probe,
    plan: WarPlan,
    host: str,
    host_ports: Mapping[str, int],
    *,
    timeout: float,
    server: str | None = None,
) -> bool:
    """Whether the server answers `probe` at `host` now. ValueError when the server has no
    host port for the probe's port (nothing to ask)."""
    if probe.kind != "tcp":
        if plan.players is None:
            raise ValueError("the plan has no player query")
        try:
            await count_players(plan.players, host, host_ports, timeout=timeout, server=server)
        except ProbeFailed:
            return False
        return True
    port = host_ports.get(probe.port)
    if port is None:
        raise ValueError(f"the plan's ready port '{probe.port}' has no host port")
    return await tcp_answers(host, port, timeout)


async def tcp_answers(host: str, port: int, timeout: float) -> bool:
    """A connection is accepted and not closed at once without a byte (see TCP_SETTLE)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        data = await asyncio.wait_for(reader.read(1), min(TCP_SETTLE, timeout))
    except TimeoutError:
        return True  # it holds the connection open: something listens
    except OSError:
        return False  # reset
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return bool(data)


@dataclass
class _Run:
    run: str
    misses: int = 0
    answered: bool = False
    reported: bool = False


class HangTracker:
    """Missed checks in a row per server and container run. Pure: the caller asks, then
    reports each result with `observe`.

    A run (a container start) is counted only once it is past its ready point as the probe
    sees it: it answered once. A server whose query PEON never reaches (a firewall before a
    remote host's query port, a game with its query turned off) is then never restarted for
    it, at the price of not catching a server that was hung before the watch first saw it
    answer. One answer resets the count; a new run starts afresh; a run is reported once.
    """

    def __init__(self, checks: int) -> None:
        self.checks = checks
        self._runs: dict[str, _Run] = {}

    def observe(self, server: str, run: str, answered: bool) -> int | None:
        """Record one check; the number of misses when this one makes the server hung."""
        state = self._runs.get(server)
        if state is None or state.run != run:
            state = self._runs[server] = _Run(run)
        if answered:
            state.misses, state.answered = 0, True
            return None
        if not state.answered or state.reported or self.checks <= 0:
            return None
        state.misses += 1
        if state.misses < self.checks:
            return None
        state.reported = True
        return state.misses

    def misses(self, server: str) -> int:
        state = self._runs.get(server)
        return state.misses if state else 0

    def keep_only(self, servers: set[str]) -> None:
        """Forget the servers not in `servers` (stopped, deleted): a check skipped for an
        operation or a backup's pause neither counts nor resets."""
        for name in set(self._runs) - servers:
            del self._runs[name]
