"""The event stream: what happened, appended to SQLite with the state change it describes.

Every operation, notice-worthy moment (ready, crashed, warning issued...) and audit row is one
event. Producers (the core services, from the bot or the CLI) append; consumers (Discord
notices, the automation's replanning, the status board, webhooks) each keep their own position
in the stream and read it with an `EventFeed`. A consumer never blocks a producer: it reads
what is committed, at its own pace, and a slow or failing one only falls behind.

Delivery is at least once: a consumer's position moves after its handler returned, so a
process killed mid-delivery delivers that event again after restart. Handlers make that
exactly once where it matters (Discord messages carry the event id as an enforced nonce).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.store import Store

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5  # how often a feed looks for events other processes committed
BATCH = 200
RETRY_FIRST, RETRY_MAX = 1.0, 60.0  # a failing handler's backoff, seconds
GIVE_UP_AFTER = 8  # attempts at an event whose handler fails for no passing reason (a bug)


class Transient(Exception):
    """A handler's failure that passes (Discord or a webhook down, the network): the event
    is retried, its backoff capped, until it goes through; never skipped, never lost."""


@dataclass(frozen=True)
class Event:
    id: int
    at: datetime
    kind: str
    server: str | None
    actor: str
    ok: bool = True
    detail: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewEvent:
    """An event not yet appended (no id, no time)."""

    kind: str
    server: str | None
    actor: str
    ok: bool = True
    detail: str = ""
    payload: dict[str, Any] = field(default_factory=dict)

    def row(self, at: str) -> tuple[Any, ...]:
        payload = json.dumps(self.payload, sort_keys=True, default=str)
        return (at, self.kind, self.server, self.actor, int(self.ok), self.detail, payload)


def event_from_row(row: Iterable[Any]) -> Event:
    id_, at, kind, server, actor, ok, detail, payload = row
    return Event(
        int(id_),
        datetime.fromisoformat(at).astimezone(UTC),
        str(kind),
        server,
        str(actor),
        bool(ok),
        str(detail),
        json.loads(payload) if payload else {},
    )


Handler = Callable[[Event], Awaitable[None]]


class EventFeed:
    """One consumer's reading of the stream, from its stored position.

    A consumer seen for the first time starts at the end of the stream (what happened before
    it existed is history, not news). `kinds` filters what reaches the handler; the position
    still moves over the rest.
    """

    def __init__(
        self,
        store: Store,
        consumer: str,
        handler: Handler,
        *,
        kinds: Iterable[str] | None = None,
        poll: float = POLL_INTERVAL,
    ) -> None:
        self.store, self.consumer, self.handler = store, consumer, handler
        self.kinds = frozenset(kinds) if kinds is not None else None
        self.poll = poll
        self.position = 0
        self.failing: str | None = None  # the last handler error, while it keeps failing
        self._task: asyncio.Task[None] | None = None
        self._draining = asyncio.Lock()

    async def start(self) -> None:
        position = await self.store.cursor(self.consumer)
        if position is None:
            position = await self.store.last_event_id()
            await self.store.set_cursor(self.consumer, position)
        self.position = position
        self._task = asyncio.create_task(self._run(), name=f"events:{self.consumer}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # asyncio.wait: the task's CancelledError stays in it, while a cancellation of
            # close() itself still reaches the caller.
            await asyncio.wait([self._task])
            self._task = None

    async def drain(self) -> int:
        """Deliver every event committed so far; returns how many reached the handler."""
        delivered = 0
        async with self._draining:  # the feed's own loop and a caller never deliver twice
            while True:
                batch = await self.store.events_after(self.position, BATCH)
                if not batch:
                    return delivered
                for event in batch:
                    if self.kinds is None or event.kind in self.kinds:
                        await self._deliver(event)
                        delivered += 1
                    self.position = event.id
                    await self.store.set_cursor(self.consumer, event.id)

    async def _deliver(self, event: Event) -> None:
        delay, attempt = RETRY_FIRST, 0
        while True:
            attempt += 1
            try:
                await self.handler(event)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.failing = f"{type(e).__name__}: {e}"
                log.warning(
                    "%s: event #%s (%s) failed (attempt %s): %s",
                    self.consumer, event.id, event.kind, attempt, self.failing,
                )  # fmt: skip
                # A passing failure waits as long as it lasts; any other (a bug in the
                # handler) must not hold every later event back.
                if not isinstance(e, Transient) and attempt >= GIVE_UP_AFTER:
                    log.error("%s: skipping event #%s after %s attempts",
                              self.consumer, event.id, attempt)  # fmt: skip
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            else:
                self.failing = None
                return

    async def _run(self) -> None:
        while True:
            seen = self.store.generation
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: reading the event stream failed", self.consumer)
            await self.store.wait_for_events(self.poll, seen)
