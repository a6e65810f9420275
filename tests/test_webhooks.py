"""Alerts beyond one channel: webhook targets (Discord, Slack-compatible, ntfy, signed JSON) as
consumers of the event stream, POSTing to real HTTP servers on loopback; and each server's
notices in its own Discord channel. The first tests run on a real SQLite file and a real
aiohttp sink; the last ones run the bot against the Discord emulator and the real engine."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from pydantic import SecretStr

from bot import events
from bot.errors import ConfigError
from bot.events import NewEvent
from bot.notices import EventNotifier
from bot.settings import Settings, WebhookSettings, load_settings
from bot.store import Store
from bot.warplans import WarplanLibrary
from bot.watch import Crash
from bot.webhooks import FAILING_AFTER, Webhooks, _header, where
from tests.conftest import PLAYER, TEST_WARPLANS, cleanup_instance, peon
from tests.discord_emulator import DiscordEmulator
from tests.test_discord_e2e import bot_settings, channel, final_text, running_bot, slash, until

KEY = "whk-signing-key-0123456789"
PASSWORD = "hunter2-very-secret"  # the fake game's secret variable


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Sink:
    """A webhook receiver on 127.0.0.1: records every POST; answers per path from a script of
    (status, headers, body), then 200."""

    base: str = ""
    hits: list[Hit] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, str], str]]] = field(default_factory=dict)
    always: dict[str, int] = field(default_factory=dict)  # path -> status for every request

    def url(self, path: str) -> str:
        return self.base + path

    def at(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(Hit(request.path, dict(request.headers), await request.read(),
                             time.monotonic()))  # fmt: skip
        if request.path in self.always:
            # A body that echoes the URL, as some error pages do: it must not be shown.
            return web.Response(status=self.always[request.path], text=f"boom at {request.url}")
        queue = self.script.get(request.path) or []
        if queue:
            status, headers, text = queue.pop(0)
            return web.Response(status=status, headers=headers, text=text)
        return web.Response(status=200, text="ok")


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = Sink()
    app = web.Application()
    app.router.add_post("/{tail:.*}", s.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    s.base = f"http://127.0.0.1:{port}"
    yield s
    await runner.cleanup()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "peon.db")
    await s.open()
    # A server of the fake game with its secret variable set, as a create records it.
    await s.create_server(
        name="whk-a", warplan="fakegame", image="i", ports=(), created_by="t",
        variables={"password": PASSWORD, "world": "w", "max_players": "8"},
    )  # fmt: skip
    await s.release("whk-a")
    yield s
    await s.close()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The feed's backoff, shortened: 0.05 s, 0.1 s, ... instead of 1 s, 2 s, ..."""
    monkeypatch.setattr(events, "RETRY_FIRST", 0.05)


def hook(name: str, kind: str, url: str, **more: Any) -> WebhookSettings:
    secret = {"secret": SecretStr(KEY)} if kind == "json" else {}
    return WebhookSettings(name=name, kind=kind, url=SecretStr(url), **secret, **more)  # type: ignore[arg-type]


async def started(store: Store, *targets: WebhookSettings) -> Webhooks:
    hub = Webhooks(targets, store, WarplanLibrary(TEST_WARPLANS), instance="whk")
    await hub.start()
    return hub


async def ready(store: Store, server: str = "whk-a", actor: str = "discord:42") -> int:
    """A start by hand that made the server joinable (what ServerService.start records)."""
    return await store.append_event(
        NewEvent("start", server, actor, True, "", {"connect": "127.0.0.1:20001"})
    )


def crash(server: str = "whk-a", **kw: Any) -> Crash:
    logs = [f"[server] admin password is {PASSWORD}", "segfault <@&4001> @everyone"]
    return Crash(**{"server": server, "host": "local", "exit_code": 139, "logs": logs,
                    "attempt": 1, "max_attempts": 3, "restart_in": 10.0, **kw})  # fmt: skip


def signed(h: Hit) -> bool:
    expected = "sha256=" + hmac.new(KEY.encode(), h.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(h.headers.get("X-Peon-Signature", ""), expected)


# --- delivery on real parts: a SQLite stream and an HTTP sink ------------------------------


async def test_json_target_gets_signed_events_it_asked_for_with_secrets_masked(
    store: Store, sink: Sink
) -> None:
    hub = await started(store, hook("audit", "json", sink.url("/audit")))
    try:
        first = await ready(store)
        await store.append_event(NewEvent("stop", "whk-a", "discord:42"))  # not a notice
        await EventNotifier(store).crashed(crash())
        # A payload naming a secret (as a settings change might): masked by its key.
        await store.append_event(
            NewEvent("hung", "whk-a", "peon:crash-watch", False, f"pw {PASSWORD}",
                     {"crash": {**vars(crash(hang=None)), "logs": []},
                      "rcon_password": "abc123", "admin_token": "t0k3n"})
        )  # fmt: skip
        await hub.drain()
    finally:
        await hub.close()
    hits = sink.at("/audit")
    assert [h.json()["kind"] for h in hits] == ["start", "crashed", "hung"]
    for h in hits:
        assert signed(h), h.headers
        doc = h.json()
        assert h.headers["X-Peon-Event"] == str(doc["id"])  # the receiver's idempotency key
        assert h.headers["X-Peon-Instance"] == "whk"
        assert set(doc) >= {"id", "at", "kind", "server", "actor", "ok", "detail", "payload"}
        assert PASSWORD not in h.body.decode()
    start, crashed, hung = (h.json() for h in hits)
    assert start["id"] == first and start["actor"] == "discord:42"
    assert start["payload"] == {"connect": "127.0.0.1:20001"}
    assert start["text"] == "whk-a is ready to join: 127.0.0.1:20001"
    assert crashed["payload"]["crash"]["logs"][0] == "[server] admin password is ••••••"
    assert hung["detail"] == "pw ••••••"
    assert hung["payload"]["rcon_password"] == hung["payload"]["admin_token"] == "••••••"
    # Changing one byte breaks the signature.
    assert not signed(Hit("/", hits[0].headers, hits[0].body.replace(b"whk-a", b"whk-b"), 0))


async def test_discord_slack_and_ntfy_shapes(store: Store, sink: Sink) -> None:
    hub = await started(
        store,
        hook("chat", "discord", sink.url("/discord")),
        hook("team", "slack", sink.url("/slack")),
        hook("phone", "ntfy", sink.url("/ntfy"), events=["crashed", "players"]),
    )
    try:
        await ready(store)
        await EventNotifier(store).players("whk-a", ["Zoë", "<@&4001> @everyone"], [], 2)
        await EventNotifier(store).crashed(crash())
        await hub.drain()
    finally:
        await hub.close()
    discord = [h.json() for h in sink.at("/discord")]
    assert discord[0] == {"content": "whk-a is ready to join: 127.0.0.1:20001",
                          "allowed_mentions": {"parse": []}}  # fmt: skip
    joined = discord[1]["content"]
    assert "<@&" not in joined and "@everyone" not in joined and "Zoë" in joined
    assert "stopped unexpectedly (exit code 139)" in discord[2]["content"]
    assert all(len(d["content"]) <= 2000 for d in discord)
    slack = [h.json() for h in sink.at("/slack")]
    assert slack[0] == {"text": "whk-a is ready to join: 127.0.0.1:20001"}
    assert "&lt;@&amp;4001&gt;" in slack[1]["text"]  # Slack's escaping of & < >
    ntfy = sink.at("/ntfy")
    assert len(ntfy) == 2  # asked for crashed and players only, not the ready notice
    players, crashed = ntfy
    assert players.body.decode().startswith("whk-a: Zoë, ")
    assert players.headers["Title"] == "whk-a: players"
    assert crashed.headers["Title"] == "whk-a crashed"
    assert crashed.headers["Priority"] == "high"
    assert crashed.headers["Tags"] == "rotating_light,peon,crashed"
    assert PASSWORD not in crashed.body.decode() and "••••••" in crashed.body.decode()
    # A title out of ASCII goes as RFC 2047, which ntfy decodes.
    assert str(make_header(decode_header(_header("Zoë's server 🎮")))) == "Zoë's server 🎮"


async def test_a_failing_target_is_retried_until_it_takes_the_event(
    store: Store, sink: Sink, fast_retries: None
) -> None:
    sink.script["/flaky"] = [(500, {}, "down"), (503, {}, "busy")]
    hub = await started(store, hook("flaky", "json", sink.url("/flaky")))
    try:
        await ready(store)
        await hub.drain()  # the feed retries the same event with its backoff
        [status] = hub.status()
    finally:
        await hub.close()
    hits = sink.at("/flaky")
    assert len(hits) == 3
    assert len({h.body for h in hits}) == 1 and all(signed(h) for h in hits)
    assert (status.delivered, status.failures, status.last_error) == (1, 0, None)


async def test_a_4xx_is_not_retried_and_a_429_waits_for_its_retry_after(
    store: Store, sink: Sink, fast_retries: None
) -> None:
    sink.script["/picky"] = [(404, {}, "no such hook"), (429, {"Retry-After": "1"}, "slow down")]
    hub = await started(store, hook("picky", "slack", sink.url("/picky")))
    try:
        await ready(store)  # 404: dropped at once, never asked again
        await ready(store)  # 429: sent again after the second it asked for
        await hub.drain()
        [status] = hub.status()
    finally:
        await hub.close()
    hits = sink.at("/picky")
    assert len(hits) == 3
    assert hits[1].body == hits[2].body  # the same event, asked again
    assert hits[2].at - hits[1].at >= 0.95
    assert (status.delivered, status.dropped, status.failures) == (1, 1, 0)


async def test_a_target_that_keeps_failing_says_why_without_its_url(
    store: Store, sink: Sink, fast_retries: None
) -> None:
    token = "/api/webhooks/123/s3cr3t-t0ken"
    sink.always[token] = 500
    dead = "http://127.0.0.1:9/hooks/another-s3cr3t"  # nothing listens on port 9 (discard)
    hub = await started(store, hook("down", "discord", sink.url(token)),
                        hook("gone", "ntfy", dead))  # fmt: skip
    try:
        await ready(store)
        deadline = time.monotonic() + 10
        while any(s.failures < FAILING_AFTER for s in hub.status()):
            assert time.monotonic() < deadline, hub.status()
            await asyncio.sleep(0.05)
        down, gone = hub.status()
    finally:
        await hub.close()
    assert down.failing and down.where == f"{sink.base}/…"
    assert down.last_error is not None and down.last_error.startswith("HTTP 500: boom at")
    assert "s3cr3t" not in down.last_error and "/api/webhooks" not in down.last_error
    assert gone.failing and gone.where == "http://127.0.0.1:9/…"
    assert gone.last_error is not None and "s3cr3t" not in gone.last_error
    assert down.delivered == gone.delivered == 0


async def test_which_events_a_target_takes(store: Store, sink: Sink) -> None:
    hub = await started(
        store,
        hook("ready", "slack", sink.url("/ready"), events=["ready"]),
        hook("all", "slack", sink.url("/all"), events=["*"], servers=["whk-a"]),
    )
    try:
        await ready(store)
        await ready(store, actor="peon:crash-watch")  # its own notice says "back"
        await store.append_event(NewEvent("start", "whk-a", "discord:1", False, "busy"))
        await ready(store, server="whk-other")
        # A notice whose payload this version cannot read is still sent, as a plain event.
        await store.append_event(NewEvent("warning", "whk-a", "peon:schedule", True, "soon"))
        await hub.drain()
    finally:
        await hub.close()
    texts = [h.json()["text"] for h in sink.at("/ready")]
    assert texts == [
        "whk-a is ready to join: 127.0.0.1:20001",
        "whk-other is ready to join: 127.0.0.1:20001",
    ]
    everything = [h.json()["text"] for h in sink.at("/all")]  # of whk-a, none of whk-other
    assert len(everything) == 4
    assert everything[-1] == "whk-a: warning done: soon (by peon:schedule)"


# --- configuration ----------------------------------------------------------------------------


def config(tmp_path: Path, webhooks: list[dict[str, Any]]) -> Path:
    path = tmp_path / "peon.yaml"
    path.write_text(yaml.safe_dump({"webhooks": webhooks}))
    return path


def test_webhook_settings_take_secrets_from_the_environment_only(tmp_path: Path) -> None:
    url = "https://discord.com/api/webhooks/1/tok-en"
    env = {"WHK_KEY": KEY, "WHK_URL": "https://hooks.slack.com/services/T/B/xyz"}
    s = load_settings(config(tmp_path, [
        {"name": "audit", "kind": "json", "url": "https://example.org/in", "secret_env": "WHK_KEY"},
        {"name": "team", "kind": "slack", "url_env": "WHK_URL"},
        {"name": "chat", "kind": "discord", "url": url},
    ]), env)  # fmt: skip
    audit, team, _chat = s.webhooks
    assert audit.secret is not None and audit.secret.get_secret_value() == KEY
    assert team.url is not None and team.url.get_secret_value() == env["WHK_URL"]
    assert audit.events == ["notices", "ready"]
    shown = repr(s) + json.dumps(s.model_dump(mode="json"))
    assert "tok-en" not in shown and KEY not in shown and "xyz" not in shown
    assert set(s.secret_values()) >= {url, KEY, env["WHK_URL"]}
    # What /peon reload does with settings (bot/reloading.py) keeps the key and the URLs.
    again = Settings.model_validate({**s.model_dump(exclude={"source"}), "source": s.source})
    assert again.webhooks == s.webhooks
    assert where(url) == "https://discord.com/…"

    def refused(hooks: list[dict[str, Any]], env: dict[str, str] | None = None) -> str:
        with pytest.raises(ConfigError) as e:
            load_settings(config(tmp_path, hooks), env or {})
        return str(e.value)

    assert "webhooks.0.secret" in refused(
        [{"name": "a", "kind": "json", "url": "https://x/", "secret": "in-the-file"}]
    )
    assert "needs secret_env" in refused([{"name": "a", "kind": "json", "url": "https://x/"}])
    assert "WHK_KEY is not set" in refused(
        [{"name": "a", "kind": "json", "url": "https://x/", "secret_env": "WHK_KEY"}]
    )
    assert "needs url or url_env" in refused([{"name": "a", "kind": "ntfy"}])
    assert "not both" in refused(
        [{"name": "a", "kind": "ntfy", "url": "https://x/", "url_env": "WHK_URL"}], env
    )
    assert "https://" in refused([{"name": "a", "kind": "ntfy", "url": "ftp://x/"}])
    assert "listed twice" in refused([{"name": "a", "kind": "ntfy", "url": "https://x/"}] * 2)


# --- through the bot: the Discord emulator and the real engine ---------------------------------


@pytest.mark.docker
async def test_notices_follow_their_servers_channel_and_reach_every_webhook(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str, sink: Sink, fast_retries: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    emu.channels["whk"] = 3005  # a channel for whk-a only (before the bot connects)
    discord_hook = emu.add_webhook("general")  # a Discord webhook target, through the emulator
    hooks = [
        hook("audit", "json", sink.url("/audit")),
        hook("chat", "discord", discord_hook),
        hook("down", "slack", sink.url("/services/T0/B0/s3cr3t")),
    ]
    sink.always["/services/T0/B0/s3cr3t"] = 500
    settings = bot_settings(tmp_path, emu, server_channels={"whk-a": emu.channels["whk"]})
    settings = settings.model_copy(update={"webhooks": hooks})
    # The CLI is another process: it records events and delivers none (the bot does).
    cfg = settings.model_dump(mode="json", exclude={"source", "discord_token"}, exclude_none=True)
    cfg["webhooks"] = [{"name": "audit", "kind": "json", "url": sink.url("/audit"),
                        "secret_env": "WHK_KEY"}]  # fmt: skip
    path = tmp_path / "peon.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("WHK_KEY", KEY)
    try:
        async with running_bot(settings, emu) as runner:
            for args in (("server", "create", "fakegame", "whk-a"), ("server", "start", "whk-a")):
                r = await asyncio.to_thread(peon, path, *args)
                assert r.returncode == 0, r.stderr
            ready_text = "**whk-a** is ready to join"
            await until(emu, lambda: any(ready_text in m.text() for m in channel(emu, "whk")))
            # A notice of another server goes to the guild's channel.
            await EventNotifier(runner.services.store).recovered("whk-b", 1, "127.0.0.1:1")
            await until(emu, lambda: any("whk-b" in m.text() for m in channel(emu, "peon")))
            assert not any("whk-a" in m.text() for m in channel(emu, "peon"))
            assert not any("whk-b" in m.text() for m in channel(emu, "whk"))

            # The Discord webhook posted in its channel, as a webhook, pinging nobody.
            await until(emu, lambda: len(channel(emu, "general")) == 2)
            posted = [m.content for m in channel(emu, "general")]
            assert posted[0].startswith("whk-a is ready to join: 127.0.0.1:")
            assert posted[1] == "whk-b is back (restart 1): 127.0.0.1:1"
            assert all(m.author_id in emu.webhooks and not m.pings for m in channel(emu, "general"))
            # The JSON target got the start, signed, once (not again from the CLI).
            await until(emu, lambda: len(sink.at("/audit")) == 2)
            start = sink.at("/audit")[0]
            assert signed(start) and start.json()["kind"] == "start"
            assert start.json()["actor"].startswith("cli:")

            # The target that keeps failing is in /peon status, with its error, not its URL.
            await until(emu, lambda: len(sink.at("/services/T0/B0/s3cr3t")) >= FAILING_AFTER)
            i = await slash(emu, PLAYER, "status", command="peon")
            text = final_text(i)
            assert "🔴 **down** (slack, http://127.0.0.1:" in text, text
            assert "tries in a row: HTTP 500: boom at" in text
            assert "🟢 **audit** (json, " in text and "🟢 **chat** (discord, " in text
            assert "s3cr3t" not in text and "/services/" not in text
    finally:
        cleanup_instance(settings.instance_id)
