"""How many API requests are handled at once: a few, so the bot beside them stays quick.

`peon run` serves the API on the bot's own event loop. Every request in progress puts its
callbacks on that loop's ready queue, and a Discord interaction waits behind all of them: with
500 concurrent GET /api/v1/servers, an interaction answered in 3 ms idle took 100 ms and more
(bench/api.py). Admitting MAX_IN_FLIGHT requests at a time keeps that queue short; the others
wait parked (no CPU) in the order they came. Throughput stays the same, since the loop was
the bottleneck anyway; only the queueing moves out of the bot's way.

Not counted, as they spend their time waiting rather than on the loop: event streams (open
as long as their client listens) and the original PEON's create/start/stop/restart/destroy
routes (they answer when the operation is done, minutes later). A request that waits on the
engine (a server's status samples its CPU for about a second) does hold its slot: the limit is
a few times the number of cores, not one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

MAX_IN_FLIGHT = 4  # bench/api.py: 4 kept interactions within 1.2x of idle, 8 did not (2x)
STREAM = "/api/v1/events/stream"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def counted(request: web.Request) -> bool:
    if request.path == STREAM:
        return False
    return not (request.path.startswith("/api/1.0/") and request.method != "GET")


def admission(limit: int = MAX_IN_FLIGHT) -> Middleware:
    """A middleware handling at most `limit` requests (event streams aside) at a time."""
    gate = asyncio.Semaphore(limit)

    @web.middleware
    async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not counted(request):
            return await handler(request)
        async with gate:
            return await handler(request)

    return admit
