"""Long operations of the HTTP API: answered 202 at once, run in the background, followed on
the event stream.

Each gets an id. Its start, its steps (Phase progress of the core: pulling, creating,
starting...) and its end are appended to the event stream as `operation` and `progress`
events carrying `payload.operation`, so a client reading /api/v1/events/stream (resumable from
any event id) sees it through, whichever process it is connected to later. The core's own
event for the operation (start, stop, ... by api:NAME) is appended as always.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.aio import Progress
from bot.api.models import OperationAccepted, OperationOut
from bot.errors import PeonError
from bot.events import NewEvent
from bot.models import Phase, ProgressEvent, PullProgress
from bot.store import Store

log = logging.getLogger(__name__)

KEEP = 500  # finished operations remembered for GET /operations/{id}
PULL_EVERY = 1.0  # seconds between pull progress events (a pull reports many per second)

Work = Callable[[Progress], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class _Ctx:
    op_id: str
    action: str
    server: str
    actor: str


class Operations:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.known: OrderedDict[str, OperationOut] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()

    def get(self, op_id: str) -> OperationOut | None:
        return self.known.get(op_id)

    async def launch(self, action: str, server: str, actor: str, work: Work) -> OperationAccepted:
        op_id = uuid.uuid4().hex[:16]
        after = await self.store.last_event_id()
        self.known[op_id] = OperationOut(
            operation=op_id, action=action, server=server, actor=actor, state="running"
        )
        while len(self.known) > KEEP:
            self.known.popitem(last=False)
        c = _Ctx(op_id, action, server, actor)
        await self._event(c, "operation", True, "", state="running")
        task = asyncio.create_task(self._run(c, work))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return OperationAccepted(operation=op_id, action=action, server=server, after=after)

    async def _event(self, c: _Ctx, kind: str, ok: bool, detail: str, **payload: Any) -> None:
        body = {"operation": c.op_id, "action": c.action, **payload}
        await self.store.append_event(NewEvent(kind, c.server, c.actor, ok, detail, body))

    async def _run(self, c: _Ctx, work: Work) -> None:
        last_pull = 0.0

        async def progress(event: ProgressEvent) -> None:
            nonlocal last_pull
            if isinstance(event, Phase):
                await self._event(c, "progress", True, event.detail, step=event.step)
            elif isinstance(event, PullProgress) and time.monotonic() - last_pull >= PULL_EVERY:
                last_pull = time.monotonic()
                share = round(event.fraction or 0.0, 3)
                await self._event(c, "progress", True, "", step="pulling", fraction=share)

        op = self.known.get(c.op_id)
        try:
            result = await work(progress)
        except PeonError as e:
            self._finish(op, "failed", str(e), {})
            await self._event(c, "operation", False, str(e), state="failed")
        except asyncio.CancelledError:
            self._finish(op, "failed", "interrupted: PEON is shutting down", {})
            ended = self._event(c, "operation", False, "interrupted", state="failed")
            await asyncio.shield(ended)
            raise
        except Exception as e:
            log.exception("API operation %s (%s %s) failed", c.op_id, c.action, c.server)
            self._finish(op, "failed", f"PEON failed ({type(e).__name__}); its log says why.", {})
            await self._event(c, "operation", False, type(e).__name__, state="failed")
        else:
            self._finish(op, "done", None, result)
            await self._event(c, "operation", True, "", state="done", result=result)

    def _finish(
        self, op: OperationOut | None, state: str, error: str | None, result: dict[str, Any]
    ) -> None:
        if op is not None:
            self.known[op.operation] = op.model_copy(
                update={"state": state, "error": error, "result": result}
            )

    async def close(self, grace: float = 0.0) -> None:
        """Give running operations `grace` seconds, then cancel them (the core records each
        as failed and the next start's reconcile finishes what it left)."""
        if self.tasks and grace > 0:
            await asyncio.wait(list(self.tasks), timeout=grace)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks))
