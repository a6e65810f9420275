"""Docker hosts ("camps"): one DockerDriver each, their health, and where a new server goes.

Every server lives on one host (its record's `host`); every action on it goes to that host's
engine. A host that does not answer makes only its own servers unavailable: the others never
wait on it, and it is used again as soon as it answers.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from bot.docker_driver import DockerDriver
from bot.errors import HostNotFound, NoHostFits, PeonError
from bot.models import EngineInfo
from bot.ports import parse_pool
from bot.settings import HostSettings, Settings
from bot.sizes import parse_size

HEALTH_TIMEOUT = 5.0  # seconds a health probe waits for one host before calling it down


@dataclass(frozen=True)
class Camp:
    name: str
    settings: HostSettings
    driver: DockerDriver
    pool: range
    bind_address: str
    address: str  # what players connect to
    probe_address: str  # where PEON reaches published ports

    @property
    def memory_cap(self) -> int | None:
        return parse_size(self.settings.memory) if self.settings.memory else None


@dataclass(frozen=True)
class CampHealth:
    name: str
    engine: EngineInfo | None  # None: unreachable
    error: str  # one sentence, when unreachable
    servers: int
    allocated: int  # bytes of memory limits of PEON's servers placed here

    @property
    def reachable(self) -> bool:
        return self.engine is not None

    @property
    def capacity(self) -> int:
        return self.engine.memory if self.engine else 0


class Camps:
    def __init__(self, settings: Settings) -> None:
        self._camps: dict[str, Camp] = {}
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> list[str]:
        """Take the hosts of `settings` (at startup, and on a reload): a host not known yet
        gets its engine; a known one keeps its engine (how it is reached changes only with a
        restart) and takes its new pool, addresses and memory. Returns the hosts added."""
        several = len(settings.camps) > 1
        camps: dict[str, Camp] = {}
        added = []
        for h in settings.camps:
            known = self._camps.get(h.name)
            if known is None:
                added.append(h.name)
                driver = DockerDriver(
                    h.base_url, h.timeout, host=h.name if several else None, tls=h.tls
                )
            else:
                driver = known.driver
            camps[h.name] = Camp(
                name=h.name,
                settings=h,
                driver=driver,
                pool=parse_pool(h.pool) if h.pool else settings.ports.pool_range,
                bind_address=h.bind_address or settings.ports.bind_address,
                address=h.public_address or _default_address(h),
                probe_address=h.probe_address,
            )
        # Hosts gone from the list keep theirs: their servers still live there.
        self._camps = {**{k: v for k, v in self._camps.items() if k not in camps}, **camps}
        return added

    @property
    def names(self) -> list[str]:
        return list(self._camps)

    @property
    def default(self) -> Camp:
        return next(iter(self._camps.values()))

    def __iter__(self) -> Iterator[Camp]:
        return iter(self._camps.values())

    def __len__(self) -> int:
        return len(self._camps)

    def get(self, name: str) -> Camp:
        camp = self._camps.get(name)
        if camp is None:
            raise HostNotFound(name, self.names)
        return camp

    async def health(self, allocated: Mapping[str, tuple[int, int]]) -> list[CampHealth]:
        """Ping every host at once, each bounded by HEALTH_TIMEOUT. `allocated` maps a host to
        (servers, bytes of memory limits) there, from the store."""

        async def one(camp: Camp) -> CampHealth:
            count, memory = allocated.get(camp.name, (0, 0))
            try:
                info = await asyncio.wait_for(camp.driver.ping(), HEALTH_TIMEOUT)
            except TimeoutError:
                error = f"Docker host '{camp.name}' did not answer within {HEALTH_TIMEOUT:.0f} s."
                return CampHealth(camp.name, None, error, count, memory)
            except PeonError as e:
                return CampHealth(camp.name, None, str(e), count, memory)
            return CampHealth(camp.name, info, "", count, memory)

        return list(await asyncio.gather(*(one(c) for c in self._camps.values())))

    async def place(self, memory: int | None, allocated: Mapping[str, tuple[int, int]]) -> Camp:
        """The reachable host with the most free memory (its memory, or its configured cap,
        minus the limits of PEON's servers already there) that fits `memory`; ties go to the
        host listed first."""
        if len(self._camps) == 1:
            return self.default
        health = await self.health(allocated)
        fits: list[tuple[int, Camp]] = []  # (free memory, host), in config order
        for h in health:
            if h.reachable:
                camp = self._camps[h.name]
                free = (camp.memory_cap or h.capacity) - h.allocated
                if memory is None or free >= memory:
                    fits.append((free, camp))
        if not fits:
            raise NoHostFits(memory, [h.name for h in health if not h.reachable])
        return max(fits, key=lambda f: f[0])[1]  # max keeps the first of equals

    async def close(self) -> None:
        for camp in self._camps.values():
            await camp.driver.close()


def _default_address(h: HostSettings) -> str:
    url = h.base_url or ""
    if url.startswith(("tcp://", "ssh://")):
        # The engine's own host name is where its published ports are.
        netloc = url.split("://", 1)[1].rsplit("@", 1)[-1]
        return netloc.split(":", 1)[0].strip("[]") or socket.gethostname()
    return socket.gethostname()


def allocation(records: Iterable[tuple[str, int | None]]) -> dict[str, tuple[int, int]]:
    """(host, memory limit) per server -> host: (servers, bytes)."""
    out: dict[str, tuple[int, int]] = {}
    for host, memory in records:
        count, total = out.get(host, (0, 0))
        out[host] = (count + 1, total + (memory or 0))
    return out
