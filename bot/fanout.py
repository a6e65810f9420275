"""Per-server checks run side by side, bounded per host and in total, one at a time per server.

The automation tick, the crash watch's hang checks, the status board and the catch-up at
startup each do one small piece of work per server (count its players, ask whether it still
answers, replan its stop). Done one after another, a single player query that takes its whole
timeout delays every server after it; done all at once, hundreds of servers would flood one
engine and the event loop. `Fanout.each` runs them concurrently under two semaphores (one per
Docker host, one for everything), gives each its own deadline and isolates its failure, and
never starts a server's check of a kind while the previous one still runs (single flight).

No library fits this as it stands: aiometer and asyncio.TaskGroup give a global limit but
neither per-key limits nor skipping a key still in flight, and a TaskGroup cancels every
sibling when one fails, which is exactly what must not happen here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bot.errors import PeonError

log = logging.getLogger(__name__)
T = TypeVar("T")
X = TypeVar("X")


@dataclass
class Round(Generic[T]):
    """What one `each` did: the results of the checks that finished, by key, and the keys
    that failed, ran out of time or were skipped (their previous check still running)."""

    results: dict[Hashable, T] = field(default_factory=dict)
    failed: list[Hashable] = field(default_factory=list)
    timed_out: list[Hashable] = field(default_factory=list)
    skipped: list[Hashable] = field(default_factory=list)


class Fanout:
    """Bounded, isolated, single-flight concurrent checks (one instance shared by the bot's
    services, so the total limit holds across them)."""

    def __init__(self, *, total: int, per_host: int, deadline: float) -> None:
        self.total, self.per_host, self.deadline = total, per_host, deadline
        self._all = asyncio.Semaphore(total)
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._inflight: dict[tuple[str, Hashable], asyncio.Task[object]] = {}

    def _host(self, host: str) -> asyncio.Semaphore:
        sem = self._hosts.get(host)
        if sem is None:
            sem = self._hosts[host] = asyncio.Semaphore(self.per_host)
        return sem

    def _landed(self, slot: tuple[str, Hashable], task: asyncio.Task[object]) -> None:
        if self._inflight.get(slot) is task:
            del self._inflight[slot]

    def busy(self, kind: str, key: Hashable) -> bool:
        """Whether a check of this kind is still running for `key`."""
        task = self._inflight.get((kind, key))
        return task is not None and not task.done()

    async def each(
        self,
        kind: str,
        items: Iterable[X],
        check: Callable[[X], Awaitable[T]],
        *,
        key: Callable[[X], Hashable],
        host: Callable[[X], str],
        deadline: float | None = None,
    ) -> Round[T]:
        """Run `check` on every item, concurrently within the limits; wait for them all.

        Each check gets `deadline` seconds (the fanout's own by default) once it holds its
        slots; waiting for a slot is not counted. A check that raises or runs out of time is
        logged and left out of the results: the others go on regardless.
        """
        limit = self.deadline if deadline is None else deadline
        out: Round[T] = Round()
        started: list[tuple[Hashable, asyncio.Task[object]]] = []
        for item in items:
            k = key(item)
            if self.busy(kind, k):
                out.skipped.append(k)
                continue
            task: asyncio.Task[object] = asyncio.create_task(
                self._one(kind=kind, k=k, host=host(item), limit=limit, check=check, item=item),
                name=f"{kind}:{k}",
            )
            self._inflight[(kind, k)] = task
            task.add_done_callback(functools.partial(self._landed, (kind, k)))
            started.append((k, task))
        if not started:
            return out
        try:
            await asyncio.wait([t for _, t in started])
        except asyncio.CancelledError:
            for _, t in started:  # the caller is going away (the bot closing): so do its checks
                t.cancel()
            raise
        for k, t in started:
            if t.cancelled():
                out.failed.append(k)
                continue
            error = t.exception()
            if isinstance(error, TimeoutError):
                out.timed_out.append(k)
            elif error is not None:
                out.failed.append(k)
            else:
                out.results[k] = t.result()  # type: ignore[assignment]
        if out.timed_out:
            log.info("%s: %d check(s) ran out of time: %s", kind, len(out.timed_out),
                     ", ".join(map(str, out.timed_out[:10])))  # fmt: skip
        if out.skipped:
            log.info("%s: %d check(s) still running from before, not started again: %s",
                     kind, len(out.skipped), ", ".join(map(str, out.skipped[:10])))  # fmt: skip
        return out

    async def _one(
        self,
        *,
        kind: str,
        k: Hashable,
        host: str,
        limit: float,
        check: Callable[[X], Awaitable[T]],
        item: X,
    ) -> T:
        async with self._host(host), self._all:
            try:
                # asyncio.timeout: 3.11's wait_for can swallow a cancellation (the bot closing).
                async with asyncio.timeout(limit):
                    return await check(item)
            except TimeoutError:
                raise
            except PeonError as e:
                log.warning("%s of %s failed: %s", kind, k, e)
                raise
            except Exception:
                log.exception("%s of %s failed", kind, k)
                raise
