"""The API's admission limit (bot/api/admission.py) over a real socket on 127.0.0.1: no more
than the limit of requests are handled at once, the rest wait and are all answered, and event
streams are not counted."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bot.api.admission import admission, counted


async def test_requests_beyond_the_limit_wait_their_turn_and_streams_do_not_count() -> None:
    inside = peak = 0
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await asyncio.sleep(0.05)
        inside -= 1
        return web.Response(text="ok")

    async def stream(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="streamed")

    app = web.Application(middlewares=[admission(2)])
    app.router.add_get("/api/v1/servers", slow)
    app.router.add_get("/api/v1/events/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:

            async def get(path: str) -> str:
                async with http.get(path) as r:
                    assert r.status == 200
                    return await r.text()

            # Three open streams would take every slot if they counted.
            streams = [asyncio.create_task(get("/api/v1/events/stream")) for _ in range(3)]
            await asyncio.sleep(0.1)
            answers = await asyncio.gather(*[get("/api/v1/servers") for _ in range(10)])
            assert answers == ["ok"] * 10
            assert peak == 2
            # The original PEON's operations answer when done: they do not hold a slot either.
            assert not counted(make_mocked_request("PUT", "/api/1.0/server/start/fakegame.x"))
            assert counted(make_mocked_request("GET", "/api/1.0/servers"))
            release.set()
            assert await asyncio.gather(*streams) == ["streamed"] * 3
    finally:
        await runner.cleanup()
