"""The HTTP API served by the running bot (`peon run` with api: set): the real discord.py client
against the emulator, the real engine and store. A start from Discord shows on the API's event
stream; schedules are changed over HTTP through the bot's own automation; the API closes with
the bot."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.settings import ApiSettings
from bot.tokens import TokenService
from tests.conftest import OPERATOR
from tests.discord_emulator import DiscordEmulator
from tests.test_discord_e2e import bot_settings, finished, running_bot, slash

pytestmark = pytest.mark.docker


async def sse_until(http: aiohttp.ClientSession, headers: dict[str, str], after: int,
                    want: Any) -> dict[str, Any]:  # fmt: skip
    async with http.get("/api/v1/events/stream", params={"after": str(after)},
                        headers=headers) as r:  # fmt: skip
        assert r.status == 200
        async with asyncio.timeout(90):
            async for raw in r.content:
                line = raw.decode().strip()
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if want(event):
                        return event
    raise AssertionError("the stream ended")


async def test_the_bot_serves_the_api_and_its_schedules(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    settings = bot_settings(tmp_path, emu).model_copy(
        update={"api": ApiSettings(listen="127.0.0.1:0")}
    )
    async with running_bot(settings, emu) as runner:
        server = runner.bot.api_server
        assert server is not None and server.port > 0
        _, secret = await TokenService(runner.services.store).create(
            "bot-ops", "admin", actor="test"
        )
        auth = {"Authorization": f"Bearer {secret}"}
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{server.port}") as http:
            await runner.services.servers.create("fakegame", "api-bot", actor="test")
            after = await runner.services.store.last_event_id()
            # A start from Discord reaches an API client listening on the stream.
            listening = asyncio.create_task(
                sse_until(http, auth, after, lambda e: e["kind"] == "start" and e["ok"])
            )
            i = await slash(emu, OPERATOR, "start", name="api-bot")
            await finished(emu, i, "ready|joinable|running")
            started = await listening
            assert started["server"] == "api-bot" and started["actor"].startswith("discord:")
            assert started["payload"]["connect"].startswith("127.0.0.1:")

            body = {"kind": "cron", "cron": "0 4 * * *", "action": "restart"}
            async with http.post("/api/v1/servers/api-bot/schedules", json=body,
                                 headers=auth) as r:  # fmt: skip
                made = await r.json()
                assert r.status == 201, made
            assert made["kind"] == "cron" and made["next"][0]["action"] == "restart"
            async with http.put(f"/api/v1/schedules/{made['id']}/pause", json={"paused": True},
                                headers=auth) as r:  # fmt: skip
                assert r.status == 200 and (await r.json())["paused"]
            async with http.get("/api/v1/schedules?server=api-bot", headers=auth) as r:
                listed = (await r.json())["schedules"]
                assert [(s["id"], s["paused"]) for s in listed] == [(made["id"], True)]
            bad = {"kind": "window", "days": "fri-sun"}
            async with http.post("/api/v1/servers/api-bot/schedules", json=bad,
                                 headers=auth) as r:  # fmt: skip
                assert r.status == 422
                assert "start and stop" in (await r.json())["error"]["message"]
            async with http.delete(f"/api/v1/schedules/{made['id']}", headers=auth) as r:
                assert r.status == 200
            assert await runner.services.store.list_schedules("api-bot") == []
            events = await runner.services.store.latest_events("api-bot", 20)
            assert {"schedule-add:cron", "schedule-pause", "schedule-remove"} <= {
                e.kind for e in events if e.actor == "api:bot-ops"
            }
        port = server.port
    # Closed with the bot: nothing listens any more.
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://127.0.0.1:{port}/api/v1/openapi.json")
