"""A Discord-compatible HTTP + gateway server on 127.0.0.1 for end-to-end tests.

The real, unpatched discord.py client logs in to it: `point_client()` redirects
`discord.http.Route.BASE` and `DiscordWebSocket.DEFAULT_GATEWAY` here. The test then plays the
users (`slash`, `autocomplete`, `click`, `submit_modal`) and asserts on what the bot answered
(`Interaction.callbacks`, `.original`, `.followups`, `channel_messages`, `requests`).
The protocol facts this relies on are recorded in shared/DISCORD-EMULATION.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import BodyPartReader, WSMsgType, web

JSONDict = dict[str, Any]
DISCORD_EPOCH_MS = 1_420_070_400_000
EPHEMERAL = 1 << 6
LOADING = 1 << 7  # the "Bot is thinking..." state of a deferred (type 5) response
ADMINISTRATOR = 1 << 3
ALL_PERMISSIONS = discord.Permissions.all().value
BASIC_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, read_message_history=True, embed_links=True,
    attach_files=True, add_reactions=True, use_application_commands=True,
).value  # fmt: skip
HEARTBEAT_MS = 41_250
# discord.py sends at most 110 gateway frames a minute per connection (GatewayRatelimiter) and
# answers our barrier op 1 through that limiter: past it, its receive loop stalls for seconds.
BARRIER_BUDGET = 100
NOT_FOUND = {"message": "404: Not Found", "code": 0}


def _iso_from_snowflake(snowflake: int) -> str:
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _walk(components: list[JSONDict]) -> Iterator[JSONDict]:
    """Every component, nested ones included (action rows, sections, labels, containers)."""
    for c in components:
        yield c
        yield from _walk(c.get("components") or [])
        yield from _walk([x for x in (c.get("accessory"), c.get("component")) if x])


def _route_pattern(template: str) -> re.Pattern[str]:
    """'/channels/{channel}' -> a regex with named groups; ids are digits."""
    special = {"token": r"[^/]+", "message": r"@original|\d+"}

    def group(m: re.Match[str]) -> str:
        return f"(?P<{m[1]}>{special.get(m[1], r'[0-9]+')})"

    return re.compile(re.sub(r"\{(\w+)\}", group, template))


def _json(status: int, payload: Any) -> web.Response:
    if payload is None:
        return web.Response(status=204)
    # Exactly "application/json": discord.http.json_or_text compares the header verbatim and
    # web.json_response would append "; charset=utf-8".
    body = json.dumps(payload).encode()
    return web.Response(status=status, body=body, headers={"Content-Type": "application/json"})


class ApiError(Exception):
    """Raised by route handlers; becomes a Discord-style JSON error response."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Recorded:
    """One HTTP request the bot made. `path` is relative to the API base (`/channels/3000/...`)."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    at: float  # time.monotonic() at arrival
    files: dict[str, bytes] = field(default_factory=dict)  # multipart uploads, filename -> bytes


@dataclass
class Message:
    """A message as the emulator stores it. An edit makes a new object with the same id."""

    id: int
    channel_id: int
    content: str
    embeds: list[JSONDict]
    components: list[JSONDict]
    flags: int
    author_id: int
    attachments: list[JSONDict] = field(default_factory=list)
    edited_timestamp: str | None = None
    deleted: bool = False

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    def buttons(self) -> list[JSONDict]:
        """Every button (type 2), flattened out of rows/sections, with `disabled` defaulted."""
        return [{"disabled": False, **c} for c in _walk(self.components) if c.get("type") == 2]

    def text(self) -> str:
        """Content, embed titles/descriptions/fields and text displays, one per line."""
        parts = [self.content]
        for e in self.embeds:
            parts += [e.get("title") or "", e.get("description") or ""]
            for f in e.get("fields") or []:
                parts += [f.get("name") or "", f.get("value") or ""]
        parts += [c.get("content") or "" for c in _walk(self.components) if c.get("type") == 10]
        return "\n".join(p for p in parts if p)


@dataclass(eq=False)
class Interaction:
    """One interaction the emulator dispatched, and what the bot answered."""

    emulator: DiscordEmulator = field(repr=False)
    id: int
    token: str = field(repr=False)
    kind: int  # 2 command, 3 component, 4 autocomplete, 5 modal submit
    user_id: int
    channel_id: int
    payload: JSONDict = field(repr=False)  # the INTERACTION_CREATE `d`
    source: Message | None = field(repr=False)  # the message of a clicked component / modal
    callbacks: list[JSONDict] = field(default_factory=list)
    original: Message | None = None
    edits: list[Message] = field(default_factory=list, repr=False)
    followups: list[Message] = field(default_factory=list, repr=False)
    answered: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    seq: int = field(default=0, repr=False)  # of its INTERACTION_CREATE

    @property
    def response_type(self) -> int | None:
        return self.callbacks[0].get("type") if self.callbacks else None

    @property
    def modal(self) -> JSONDict | None:
        return self.callbacks[0].get("data") if self.response_type == 9 else None

    @property
    def choices(self) -> list[JSONDict]:
        if self.response_type != 8:
            return []
        return list((self.callbacks[0].get("data") or {}).get("choices") or [])

    async def wait_done(self, timeout: float = 10) -> None:
        """Wait for the first callback, then `settle()`. A bot that sleeps between its callback
        and a later edit is not waited for: use `DiscordEmulator.wait_for` for that."""
        deadline = time.monotonic() + timeout
        await asyncio.wait_for(self.answered.wait(), timeout)
        await self.emulator.settle(timeout=max(0.0, deadline - time.monotonic()))


Handler = Callable[..., Awaitable[tuple[int, Any]]]


class DiscordEmulator:
    """One guild and one bot on 127.0.0.1. See the module docstring."""

    def __init__(self, *, guild_id: int = 1000, app_id: int = 2000, bot_user_id: int = 2000,
                 channels: dict[str, int] | None = None,
                 roles: dict[str, int] | None = None) -> None:  # fmt: skip
        self.guild_id, self.app_id, self.bot_user_id = guild_id, app_id, bot_user_id
        self.channels = dict(channels or {"general": 3000, "peon": 3001})
        self.roles = dict(roles or {"admin": 4001, "operator": 4002, "player": 4003})
        self.token = "emu." + secrets.token_urlsafe(24)
        self.api_base = self.gateway_url = ""
        self.requests: list[Recorded] = []
        self.commands: list[JSONDict] = []
        self.global_commands: list[JSONDict] = []
        self.channel_messages: dict[int, list[Message]] = {}
        self.identified = asyncio.Event()
        self.interactions: dict[int, Interaction] = {}
        self.dispatch_times: dict[int, float] = {}
        self.callback_times: dict[int, float] = {}
        self.errors: list[str] = []  # emulator bugs, answered 400: assert it stays empty
        self._by_token: dict[str, Interaction] = {}
        self._messages: dict[int, Message] = {}
        self._members: dict[int, tuple[str, list[int]]] = {}
        self._command_ids: dict[tuple[int | None, str, int], int] = {}
        self._last_id = 0
        self._bot_role = self._snowflake()  # the bot's managed role
        self._inflight, self._last_activity = 0, 0.0  # HTTP activity, for settle()
        self._sockets: set[web.WebSocketResponse] = set()
        self._live: web.WebSocketResponse | None = None  # the identified/resumed connection
        self._send_lock = asyncio.Lock()
        self._seq, self._session_id = 0, ""
        self._parsed_seq = 0  # highest seq the client is known to have parsed
        self._barrier_times: list[float] = []  # barriers sent on the live connection
        self._history: list[JSONDict] = []  # sent dispatches, replayed on RESUME
        self._barriers: list[tuple[int, asyncio.Future[None]]] = []
        self._resumed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._saved: tuple[str, yarl.URL] | None = None
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/users/@me", self._get_me),
            ("GET", "/oauth2/applications/@me", self._get_app),
            ("GET PUT", "/applications/{app}/commands", self._commands),
            ("GET PUT", "/applications/{app}/guilds/{guild}/commands", self._commands),
            ("GET", "/guilds/{guild}", self._get_guild),
            ("GET", "/guilds/{guild}/members/{user}", self._get_member),
            ("GET", "/channels/{channel}", self._get_channel),
            ("POST", "/channels/{channel}/typing", self._typing),
            ("GET", "/channels/{channel}/messages", self._channel_history),
            ("POST", "/channels/{channel}/messages", self._post_message),
            ("GET PATCH DELETE", "/channels/{channel}/messages/{message}", self._channel_msg),
            ("POST", "/interactions/{iid}/{token}/callback", self._callback),
            ("POST", "/webhooks/{app}/{token}", self._followup),
            ("GET PATCH DELETE", "/webhooks/{app}/{token}/messages/{message}", self._webhook_msg),
        ]
        self._routes: list[tuple[list[str], re.Pattern[str], Handler]] = [
            (methods.split(), _route_pattern(path), handler) for methods, path, handler in routes
        ]

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port; the API is under /api/v{N}, the gateway at /."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/", self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._http)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.api_base = f"http://127.0.0.1:{port}/api/v10"
        self.gateway_url = f"ws://127.0.0.1:{port}/"

    async def close(self) -> None:
        """Stop serving (close the bot first, or it keeps reconnecting); undo point_client()."""
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1001), 2)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._saved and self.api_base == discord.http.Route.BASE:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved

    def point_client(self) -> None:
        """Point discord.py (process-wide) at this emulator; call after start(), before
        bot.start(). `discord.http._set_api_version()` resets `Route.BASE`: call this again
        after anything that calls it."""
        ws_cls = discord.gateway.DiscordWebSocket
        self._saved = self._saved or (discord.http.Route.BASE, ws_cls.DEFAULT_GATEWAY)
        discord.http.Route.BASE = self.api_base
        ws_cls.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

    def add_member(self, user_id: int, name: str, role_ids: list[int]) -> None:
        """Add or update a member. Members added after IDENTIFY are not announced on the
        gateway (default intents lack GUILD_MEMBERS), but interactions carry them."""
        self._members[user_id] = (name, list(role_ids))

    def inject_message(self, channel: str | int, content: str = "", *,
                       components: list[JSONDict] | None = None,
                       embeds: list[JSONDict] | None = None,
                       author_id: int | None = None) -> Message:  # fmt: skip
        """Store a channel message as if posted before this run (e.g. a persistent view's panel
        from an earlier bot process). Nothing is sent to the bot."""
        body = {"content": content, "components": components or [], "embeds": embeds or []}
        msg = self._new_message(self._channel_id(channel), body, {}, author_id)
        self.channel_messages.setdefault(msg.channel_id, []).append(msg)
        return msg

    def message(self, message_id: int) -> Message | None:
        """The current state of any stored message."""
        return self._messages.get(message_id)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        """Poll `predicate` every 10 ms until true (for bots that sleep between edits)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met")
            await asyncio.sleep(0.01)

    async def settle(self, quiet: float = 0.05, timeout: float = 10) -> None:
        """Wait until the bot has parsed every dispatch sent so far (gateway barrier), then until
        no HTTP request is in flight nor arrived for `quiet` s; again if dispatches went out
        meanwhile. The quiet window is needed because a request arriving is not the bot being
        done: it registers a View only after parsing the response."""
        deadline = time.monotonic() + timeout
        while True:
            seq = self._seq
            await self._barrier(deadline)
            parsed = time.monotonic()  # the bot may only now start a request for what it parsed
            while self._inflight or time.monotonic() - max(self._last_activity, parsed) < quiet:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not settled: {self._inflight} request(s) in flight")
                await asyncio.sleep(0.005)
            if seq == self._seq:
                return

    async def _barrier(self, deadline: float) -> None:
        """Send op 1; the client answers op 1 with the last seq it processed. It sets its seq and
        parses a dispatch synchronously and sends from the event loop, so an answer >= our last
        seq means every dispatch so far has been parsed. Skipped when that is already known (a
        callback proves its interaction and everything before it was parsed); past the
        client's send budget, a 0.1 s sleep stands in for it."""
        ws, target, now = self._live, self._seq, time.monotonic()
        if ws is None or ws.closed or self._parsed_seq >= target:
            return
        self._barrier_times = [t for t in self._barrier_times if now - t < 60]
        if len(self._barrier_times) >= BARRIER_BUDGET:
            await asyncio.sleep(0.1)
            return
        self._barrier_times.append(now)
        entry = (target, asyncio.get_running_loop().create_future())
        self._barriers.append(entry)
        try:
            await self._send(ws, {"op": 1, "d": None, "s": None, "t": None})
            await asyncio.wait_for(entry[1], max(0.0, deadline - time.monotonic()))
        finally:
            self._barriers.remove(entry)

    async def restart_gateway(self, timeout: float = 10) -> None:
        """Close the gateway connection (code 4000); returns once the client has RESUMEd."""
        ws = self._live
        if ws is None:
            raise RuntimeError("no identified gateway connection")
        self._resumed.clear()
        self._live = None
        await ws.close(code=4000, message=b"restart")
        await asyncio.wait_for(self._resumed.wait(), timeout)

    # ----------------------------------------------------------------- users' actions
    async def slash(self, user_id: int, command: str, *, subcommand: str | None = None,
                    group: str | None = None, options: Mapping[str, Any] | None = None,
                    channel: str | int = "general") -> Interaction:  # fmt: skip
        """Invoke a synced chat command; `command` may carry the path ("demo ping",
        "server admin wipe"). Returns once dispatched: use `wait_done()`."""
        data = self._command_data(user_id, command, subcommand, group, options or {}, None)
        return await self._interact(2, user_id, self._channel_id(channel), data)

    async def autocomplete(self, user_id: int, command: str, *, subcommand: str | None = None,
                           group: str | None = None, options: Mapping[str, Any], focused: str,
                           channel: str | int = "general") -> Interaction:  # fmt: skip
        """Autocomplete (type 4); the focused option's value is sent as typed (a string)."""
        data = self._command_data(user_id, command, subcommand, group, options, focused)
        return await self._interact(4, user_id, self._channel_id(channel), data)

    async def click(self, user_id: int, message: Message, custom_id: str,
                    channel: str | int | None = None, *,
                    values: list[str] | None = None) -> Interaction:  # fmt: skip
        """Click a button (or choose `values` in a select) on a stored message, in its current
        state. LookupError if the component is not there, ValueError if it is disabled."""
        current = self._messages.get(message.id, message)
        comp = next((c for c in _walk(current.components) if c.get("custom_id") == custom_id), None)
        if comp is None:
            raise LookupError(f"no component {custom_id!r} on message {current.id}")
        if comp.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled")
        data: JSONDict = {"custom_id": custom_id, "component_type": comp.get("type", 2)}
        if values is not None:
            data["values"] = values
        cid = current.channel_id if channel is None else self._channel_id(channel)
        return await self._interact(3, user_id, cid, data, current)

    async def submit_modal(self, user_id: int, custom_id: str,
                           values: Mapping[str, str | list[str]], *,
                           message: Message | None = None,
                           channel: str | int = "general") -> Interaction:  # fmt: skip
        """Submit a modal (type 5). The components mirror the last modal the bot showed with
        this custom_id (action rows or labels); values of unknown inputs get action rows."""
        shown = [
            cb["data"]
            for i in self.interactions.values()
            for cb in i.callbacks[:1]
            if cb.get("type") == 9 and cb.get("data", {}).get("custom_id") == custom_id
        ]
        unused = dict(values)

        def answer(c: JSONDict) -> JSONDict:
            value = unused.pop(c["custom_id"], "")
            if c.get("type", 4) == 4:
                return {"type": 4, "custom_id": c["custom_id"], "value": value}
            vals = value if isinstance(value, list) else [value]
            return {"type": c["type"], "custom_id": c["custom_id"], "values": vals}

        rows: list[JSONDict] = []
        for c in shown[-1].get("components", []) if shown else []:
            if c.get("type") == 1:
                rows.append({"type": 1, "components": [answer(x) for x in c["components"]]})
            elif c.get("type") == 18 and "custom_id" in c.get("component", {}):
                rows.append({"type": 18, "component": answer(c["component"])})
        rows += [{"type": 1, "components": [answer({"custom_id": k})]} for k in list(unused)]
        current = None if message is None else self._messages.get(message.id, message)
        cid = self._channel_id(channel) if current is None else current.channel_id
        data = {"custom_id": custom_id, "components": rows}
        return await self._interact(5, user_id, cid, data, current)

    # ----------------------------------------------------------------- payload builders
    def _snowflake(self) -> int:
        now = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last_id = max(self._last_id + 1, now)
        return self._last_id

    def _channel_id(self, channel: str | int) -> int:
        if isinstance(channel, int):
            return channel
        if channel not in self.channels:
            raise LookupError(f"unknown channel {channel!r}")
        return self.channels[channel]

    def _user_json(self, user_id: int) -> JSONDict:
        bot = user_id == self.bot_user_id
        name = "peon-test-bot" if bot else self._members.get(user_id, (f"user{user_id}",))[0]
        return {"id": str(user_id), "username": name, "discriminator": "0", "global_name": name,
                "avatar": None, "bot": bot}  # fmt: skip

    def _member_roles(self, user_id: int) -> list[int]:
        if user_id == self.bot_user_id:
            return [self._bot_role]
        return self._members.get(user_id, ("", []))[1]

    def _permissions(self, user_id: int) -> int:
        """Administrators (the "admin" role, the bot) get every bit, as Discord computes it."""
        admin = self.roles.get("admin")
        if user_id == self.bot_user_id or admin in self._member_roles(user_id):
            return ALL_PERMISSIONS
        return BASIC_PERMISSIONS

    # fmt: off
    def _member_json(self, user_id: int, *, user: bool = True) -> JSONDict:
        d: JSONDict = {
            "roles": [str(r) for r in self._member_roles(user_id)], "flags": 0,
            "joined_at": _iso_from_snowflake(self._bot_role), "deaf": False, "mute": False,
            "pending": False, "nick": None, "avatar": None, "premium_since": None,
            "communication_disabled_until": None, "permissions": str(self._permissions(user_id)),
        }
        return {**d, "user": self._user_json(user_id)} if user else d

    def _roles_json(self) -> list[JSONDict]:
        """@everyone (id = guild id), the configured roles ("admin" is administrator), and the
        bot's managed role."""
        named = [("@everyone", self.guild_id), *self.roles.items(), ("peon", self._bot_role)]
        out = []
        for position, (name, rid) in enumerate(named):
            perms = BASIC_PERMISSIONS | (ADMINISTRATOR if name == "admin" else 0)
            bot = rid == self._bot_role
            out.append({
                "id": str(rid), "name": name, "position": position, "color": 0, "hoist": False,
                "permissions": str(ALL_PERMISSIONS if bot else perms), "managed": bot,
                "mentionable": False, "icon": None, "unicode_emoji": None, "flags": 0,
                **({"tags": {"bot_id": str(self.bot_user_id)}} if bot else {}),
            })
        return out

    def _channel_json(self, channel_id: int) -> JSONDict:
        names = {cid: n for n, cid in self.channels.items()}
        if channel_id not in names:
            raise ApiError(404, 10003, "Unknown Channel")
        return {
            "id": str(channel_id), "type": 0, "guild_id": str(self.guild_id),
            "name": names[channel_id], "position": list(names).index(channel_id),
            "permission_overwrites": [], "topic": None, "nsfw": False, "parent_id": None,
            "rate_limit_per_user": 0, "last_message_id": None,
        }

    def _guild_json(self) -> JSONDict:
        return {
            "id": str(self.guild_id), "name": "PEON Test Guild", "icon": None, "owner_id": "1",
            "features": [], "roles": self._roles_json(), "emojis": [], "stickers": [],
            "preferred_locale": "en-US", "verification_level": 0, "afk_timeout": 300,
            "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0,
            "nsfw_level": 0, "premium_tier": 0, "system_channel_id": None,
        }

    def _message_json(self, m: Message) -> JSONDict:
        return {
            "id": str(m.id), "type": 0, "channel_id": str(m.channel_id), "content": m.content,
            "author": self._user_json(m.author_id), "timestamp": _iso_from_snowflake(m.id),
            "edited_timestamp": m.edited_timestamp, "tts": False, "mention_everyone": False,
            "mentions": [], "mention_roles": [], "attachments": m.attachments,
            "embeds": m.embeds, "pinned": False, "components": m.components, "flags": m.flags,
        }

    def _interaction_json(self, iid: int, token: str, kind: int, user_id: int, channel_id: int,
                          data: JSONDict, message: Message | None) -> JSONDict:
        """INTERACTION_CREATE `d`. Without version, application_id, attachment_size_limit or
        member.flags, gateway parsing raises KeyError and kills the bot; `channel` must be a
        full object or interaction.channel is None."""
        payload: JSONDict = {
            "id": str(iid), "application_id": str(self.app_id), "type": kind, "data": data,
            "guild_id": str(self.guild_id), "channel_id": str(channel_id),
            "guild": {"id": str(self.guild_id), "locale": "en-US", "features": []},
            "channel": {**self._channel_json(channel_id), "permissions": str(BASIC_PERMISSIONS)},
            "member": self._member_json(user_id), "token": token, "version": 1,
            "app_permissions": str(ALL_PERMISSIONS), "locale": "en-US", "guild_locale": "en-US",
            "entitlements": [], "authorizing_integration_owners": {"0": str(self.guild_id)},
            "context": 0, "attachment_size_limit": 25 * 1024 * 1024,
        }
        if message is not None:
            payload["message"] = self._message_json(message)
        return payload

    def _ready_json(self) -> JSONDict:
        return {
            "v": 10, "user": {**self._user_json(self.bot_user_id), "flags": 0, "verified": True},
            "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "session_id": self._session_id, "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.app_id), "flags": 0}, "shard": [0, 1],
            "private_channels": [], "relationships": [], "presences": [],
        }

    def _guild_create_json(self) -> JSONDict:
        members = [self._member_json(u) for u in [self.bot_user_id, *self._members]]
        return {
            **self._guild_json(), "unavailable": False, "large": False,
            "member_count": len(members), "joined_at": _iso_from_snowflake(self._bot_role),
            "channels": [self._channel_json(c) for c in self.channels.values()],
            "members": members, "threads": [], "voice_states": [], "presences": [],
            "stage_instances": [], "guild_scheduled_events": [],
        }

    def _new_message(self, channel_id: int, body: JSONDict, files: dict[str, bytes],
                     author: int | None) -> Message:
        get = body.get
        msg = Message(self._snowflake(), channel_id, get("content") or "", get("embeds") or [],
                      get("components") or [], int(get("flags") or 0),
                      self.bot_user_id if author is None else author, self._uploads(files))
        self._messages[msg.id] = msg
        return msg
    # fmt: on

    def _find_command(self, name: str) -> JSONDict:
        for cmd in [*self.commands, *self.global_commands]:
            if cmd["name"] == name and cmd.get("type", 1) == 1:
                return cmd
        raise LookupError(f"command /{name} is not synced")

    def _command_data(self, user_id: int, command: str, subcommand: str | None,
                      group: str | None, options: Mapping[str, Any],
                      focused: str | None) -> JSONDict:  # fmt: skip
        """`data` of a chat command built from its synced definition: data.id, data.guild_id
        (discord.py finds guild commands by it), option types from the definitions. Enforces
        default_member_permissions, as Discord hides such commands from other users."""
        name, *path = command.split()
        if path:
            group, subcommand = (path[0], path[1]) if len(path) == 2 else (None, path[0])
        cmd = self._find_command(name)
        required = cmd.get("default_member_permissions")
        if required is not None and self._permissions(user_id) & int(required) != int(required):
            raise PermissionError(f"user {user_id} cannot use /{name}")
        built: list[JSONDict] = []
        target, defs = built, cmd.get("options") or []
        for part, kind in ((group, 2), (subcommand, 1)):
            if part is None:
                continue
            d = next((o for o in defs if o["name"] == part and o["type"] == kind), None)
            if d is None:
                raise LookupError(f"/{name} has no {'group' if kind == 2 else 'subcommand'} {part}")
            node: JSONDict = {"type": kind, "name": part, "options": []}
            target.append(node)
            target, defs = node["options"], d.get("options") or []
        resolved: dict[str, JSONDict] = {}
        for opt_name, value in options.items():
            d = next((o for o in defs if o["name"] == opt_name), None)
            if d is None or d["type"] in (1, 2):
                raise LookupError(f"/{command} has no option {opt_name!r}")
            target.append(self._option(d, value, opt_name == focused, resolved))
        data: JSONDict = {"id": cmd["id"], "name": name, "type": 1, "options": built}
        if "guild_id" in cmd:
            data["guild_id"] = cmd["guild_id"]
        if resolved:
            data["resolved"] = resolved
        return data

    def _option(
        self, d: JSONDict, value: Any, focused: bool, resolved: dict[str, JSONDict]
    ) -> JSONDict:
        """One option value; users/channels/roles (an id or anything with .id) get `resolved`."""
        kind: int = d["type"]
        opt: JSONDict = {"type": kind, "name": d["name"]}
        if focused:
            return {**opt, "value": str(value), "focused": True}
        if kind in (6, 7, 8, 9):  # user, channel, role, mentionable
            sid = int(getattr(value, "id", value))
            if kind == 8 or (kind == 9 and sid in self.roles.values()):
                role = next(r for r in self._roles_json() if r["id"] == str(sid))
                resolved.setdefault("roles", {})[str(sid)] = role
            elif kind == 7:
                ch = {**self._channel_json(sid), "permissions": str(ALL_PERMISSIONS)}
                resolved.setdefault("channels", {})[str(sid)] = ch
            else:
                resolved.setdefault("users", {})[str(sid)] = self._user_json(sid)
                member = self._member_json(sid, user=False)
                resolved.setdefault("members", {})[str(sid)] = member
            return {**opt, "value": str(sid)}
        conv: dict[int, Callable[[Any], Any]] = {4: int, 5: bool, 10: float}
        return {**opt, "value": conv.get(kind, str)(value)}

    async def _interact(
        self, kind: int, user_id: int, channel_id: int, data: JSONDict, msg: Message | None = None
    ) -> Interaction:
        if not self.identified.is_set():
            raise RuntimeError("the bot has not identified yet")
        iid, token = self._snowflake(), secrets.token_urlsafe(32)
        payload = self._interaction_json(iid, token, kind, user_id, channel_id, data, msg)
        inter = Interaction(self, iid, token, kind, user_id, channel_id, payload, msg)
        self.interactions[iid] = self._by_token[token] = inter
        self.dispatch_times[iid] = time.monotonic()
        inter.seq = await self._dispatch("INTERACTION_CREATE", payload)
        return inter

    # ----------------------------------------------------------------- message store
    def _uploads(self, files: dict[str, bytes]) -> list[JSONDict]:
        out = []
        for name, blob in files.items():
            aid = self._snowflake()
            url = f"{self.api_base}/attachments/{aid}/{name}"
            out.append({"id": str(aid), "filename": name, "size": len(blob), "url": url,
                        "proxy_url": url, "content_type": "application/octet-stream"})  # fmt: skip
        return out

    def _edited(self, msg: Message, body: JSONDict, files: dict[str, bytes]) -> Message:
        """Apply a PATCH/type 7 body: absent keys are kept, ephemeral stays, loading clears."""
        changes: JSONDict = {}
        for key, empty in (("content", ""), ("embeds", []), ("components", [])):
            if key in body:
                changes[key] = body[key] if body[key] is not None else empty
        if "attachments" in body or files:
            keep = {str(a.get("id")) for a in body.get("attachments") or []}
            kept = [a for a in msg.attachments if a["id"] in keep]
            changes["attachments"] = kept + self._uploads(files)
        flags = (int(body.get("flags") or msg.flags) | (msg.flags & EPHEMERAL)) & ~LOADING
        edited = datetime.now(UTC).isoformat()
        return replace(msg, **changes, flags=flags, edited_timestamp=edited)

    def _replace(self, new: Message) -> None:
        """Store a new state of a message everywhere it appears: channel list (removed when
        deleted), interaction originals (and their `edits`), follow-ups."""
        self._messages[new.id] = new
        lst = self.channel_messages.get(new.channel_id, [])
        lst[:] = [new if m.id == new.id else m for m in lst if not (m.id == new.id and new.deleted)]
        for inter in self.interactions.values():
            if inter.original is not None and inter.original.id == new.id:
                inter.original = new
                if not new.deleted:
                    inter.edits.append(new)
            inter.followups = [new if m.id == new.id else m for m in inter.followups]

    def _set_original(self, inter: Interaction, msg: Message) -> None:
        inter.original = msg
        inter.edits.append(msg)

    # ----------------------------------------------------------------- HTTP
    async def _http(self, request: web.Request) -> web.StreamResponse:
        """The REST API: record, authenticate, route. Errors are Discord JSON and never 5xx
        (discord.py retries 5xx with multi-second sleeps)."""
        m = re.fullmatch(r"/api/v\d+(/.*)", request.path)
        if m is None:
            return _json(404, NOT_FOUND)
        path, at = m.group(1), time.monotonic()
        self._inflight += 1
        self._last_activity = at
        try:
            body, files = await self._read_body(request)
            rec = Recorded(request.method, path, dict(request.query), body, at, files)
            self.requests.append(rec)
            public = path.startswith(("/webhooks/", "/interactions/"))
            if not public and request.headers.get("Authorization") != f"Bot {self.token}":
                return _json(401, {"message": "401: Unauthorized", "code": 0})
            for methods, pattern, handler in self._routes:
                if request.method in methods and (mm := pattern.fullmatch(path)):
                    return _json(*await handler(rec, **mm.groupdict()))
            return _json(404, NOT_FOUND)
        except ApiError as e:
            return _json(e.status, {"message": e.message, "code": e.code})
        except Exception as e:  # an emulator bug must not look like an outage (5xx retries)
            self.errors.append(f"{request.method} {path}: {e!r}")
            return _json(400, {"message": f"emulator error: {e!r}", "code": 50035})
        finally:
            self._inflight -= 1
            self._last_activity = time.monotonic()

    @staticmethod
    async def _read_body(request: web.Request) -> tuple[Any, dict[str, bytes]]:
        """JSON body, or multipart: `payload_json` plus uploaded files."""
        if not request.body_exists:
            return None, {}
        if not request.content_type.startswith("multipart/"):
            raw = await request.read()
            return (json.loads(raw) if raw else None), {}
        body, files = None, {}
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            data = await part.read()
            if part.name == "payload_json":
                body = json.loads(data)
            else:
                files[part.filename or part.name or "file"] = bytes(data)
        return body, files

    def _check(self, app: str | None = None, guild: str | None = None) -> None:
        if app is not None and int(app) != self.app_id:
            raise ApiError(404, 10002, "Unknown Application")
        if guild is not None and int(guild) != self.guild_id:
            raise ApiError(404, 10004, "Unknown Guild")

    async def _get_me(self, rec: Recorded) -> tuple[int, Any]:
        return 200, {**self._user_json(self.bot_user_id), "flags": 0, "verified": True}

    async def _get_app(self, rec: Recorded) -> tuple[int, Any]:
        owner = {"id": "1", "username": "owner", "discriminator": "0", "avatar": None}
        return 200, {"id": str(self.app_id), "name": "peon-test-app", "description": "",
                     "icon": None, "bot_public": True, "bot_require_code_grant": False,
                     "owner": owner, "verify_key": "0" * 64, "flags": 0, "team": None}  # fmt: skip

    async def _commands(self, rec: Recorded, app: str, guild: str | None = None) -> tuple[int, Any]:
        """GET, or PUT (bulk overwrite): echo with id (stable per name, as on Discord),
        application_id, version and guild_id."""
        self._check(app, guild)
        gid = int(guild) if guild else None
        if rec.method == "GET":
            return 200, self.commands if gid else self.global_commands
        synced = []
        for cmd in rec.json or []:
            cid = self._command_ids.setdefault(
                (gid, cmd["name"], cmd.get("type", 1)), self._snowflake()
            )
            out = {"description": "", "type": 1, "default_member_permissions": None, **cmd}
            out.update(id=str(cid), application_id=str(self.app_id), version=str(self._snowflake()))
            synced.append(out if gid is None else {**out, "guild_id": str(gid)})
        if gid is None:
            self.global_commands = synced
        else:
            self.commands = synced
        return 200, synced

    async def _get_guild(self, rec: Recorded, guild: str) -> tuple[int, Any]:
        self._check(guild=guild)
        return 200, self._guild_json()

    async def _get_member(self, rec: Recorded, guild: str, user: str) -> tuple[int, Any]:
        self._check(guild=guild)
        if int(user) not in self._members and int(user) != self.bot_user_id:
            raise ApiError(404, 10007, "Unknown Member")
        return 200, self._member_json(int(user))

    async def _get_channel(self, rec: Recorded, channel: str) -> tuple[int, Any]:
        return 200, self._channel_json(int(channel))

    async def _typing(self, rec: Recorded, channel: str) -> tuple[int, Any]:
        self._channel_json(int(channel))
        return 204, None

    async def _channel_history(self, rec: Recorded, channel: str) -> tuple[int, Any]:
        self._channel_json(int(channel))
        msgs = self.channel_messages.get(int(channel), [])[::-1][: int(rec.query.get("limit", 50))]
        return 200, [self._message_json(m) for m in msgs]

    async def _post_message(self, rec: Recorded, channel: str) -> tuple[int, Any]:
        """Also dispatches MESSAGE_CREATE, as Discord does (the bot must ignore bot authors)."""
        cid = int(channel)
        self._channel_json(cid)
        msg = self._new_message(cid, rec.json or {}, rec.files, None)
        self.channel_messages.setdefault(cid, []).append(msg)
        member = self._member_json(msg.author_id, user=False)
        event = {**self._message_json(msg), "guild_id": str(self.guild_id), "member": member}
        await self._dispatch("MESSAGE_CREATE", event)
        return 200, self._message_json(msg)

    async def _channel_msg(self, rec: Recorded, channel: str, message: str) -> tuple[int, Any]:
        msg = self._messages.get(int(message))
        if msg is None or msg.deleted or msg.channel_id != int(channel) or msg.ephemeral:
            raise ApiError(404, 10008, "Unknown Message")
        return self._message_op(rec, msg)

    def _message_op(self, rec: Recorded, msg: Message) -> tuple[int, Any]:
        if rec.method == "PATCH":
            msg = self._edited(msg, rec.json or {}, rec.files)
            self._replace(msg)
        elif rec.method == "DELETE":
            self._replace(replace(msg, deleted=True))
            return 204, None
        return 200, self._message_json(msg)

    async def _callback(self, rec: Recorded, iid: str, token: str) -> tuple[int, Any]:
        """Interaction response. The client sends with_response=1 and needs the callback JSON
        back (a 204 makes discord.py raise TypeError); it registers views under
        response_message_id. A second callback is refused, as on Discord."""
        inter = self.interactions.get(int(iid))
        if inter is None or inter.token != token:
            raise ApiError(404, 10062, "Unknown interaction")
        body = rec.json or {}
        inter.callbacks.append(body)
        self.callback_times.setdefault(inter.id, rec.at)
        self._parsed_seq = max(self._parsed_seq, inter.seq)
        if len(inter.callbacks) > 1:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        kind, data = body.get("type"), body.get("data") or {}
        msg: Message | None = None
        if kind == 4:
            msg = self._new_message(inter.channel_id, data, rec.files, None)
            self._set_original(inter, msg)
        elif kind == 5:
            flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            msg = self._new_message(inter.channel_id, {"flags": flags}, {}, None)
            self._set_original(inter, msg)
        elif kind in (6, 7) and inter.source is not None:  # the component's message is @original
            msg = self._messages.get(inter.source.id, inter.source)
            if kind == 6:
                self._set_original(inter, msg)
            else:
                inter.original = msg
                msg = self._edited(msg, data, rec.files)
                self._replace(msg)
        elif kind not in (8, 9):
            inter.callbacks.pop()
            raise ApiError(400, 50035, f"Invalid callback type {kind} for interaction {inter.kind}")
        inter.answered.set()
        ephemeral = bool(msg and msg.ephemeral)
        response: JSONDict = {"id": str(inter.id), "type": inter.kind,
                              "response_message_loading": kind == 5,
                              "response_message_ephemeral": ephemeral}  # fmt: skip
        resource: JSONDict = {"type": kind}
        if msg is not None:
            response["response_message_id"] = str(msg.id)
            resource["message"] = self._message_json(msg)
        return 200, {"interaction": response, "resource": resource}

    def _interaction_for(self, app: str, token: str) -> Interaction:
        inter = self._by_token.get(token)
        if inter is None or int(app) != self.app_id or not inter.callbacks:
            raise ApiError(404, 10015, "Unknown Webhook")
        return inter

    async def _followup(self, rec: Recorded, app: str, token: str) -> tuple[int, Any]:
        """A follow-up. As on Discord, the first one after a thinking defer (type 5) replaces
        the "thinking" original (same id, the defer's ephemerality); it is listed in both."""
        inter = self._interaction_for(app, token)
        body, orig = rec.json or {}, inter.original
        if orig is not None and orig.flags & LOADING and inter.response_type == 5:
            flags = int(body.get("flags") or 0) & ~EPHEMERAL
            msg = self._edited(orig, {**body, "flags": flags}, rec.files)
            self._replace(msg)
        else:
            msg = self._new_message(inter.channel_id, body, rec.files, None)
        inter.followups.append(msg)
        wait = rec.query.get("wait", "").lower() in ("1", "true")
        return (200, self._message_json(msg)) if wait else (204, None)

    async def _webhook_msg(
        self, rec: Recorded, app: str, token: str, message: str
    ) -> tuple[int, Any]:
        inter = self._interaction_for(app, token)
        owned = [m for m in (inter.original, *inter.followups) if m is not None]
        if message != "@original":
            owned = [m for m in owned if m.id == int(message)]
        if not owned or owned[0].deleted:
            raise ApiError(404, 10008, "Unknown Message")
        return self._message_op(rec, self._messages.get(owned[0].id, owned[0]))

    # ----------------------------------------------------------------- gateway
    async def _send(self, ws: web.WebSocketResponse, frame: JSONDict) -> None:
        async with self._send_lock:
            if not ws.closed:
                await ws.send_str(json.dumps(frame))

    async def _dispatch(self, event: str, data: JSONDict) -> int:
        """Number, keep (for RESUME) and send a dispatch. Only the live connection gets it;
        while the client reconnects it is queued and replayed on RESUME."""
        async with self._send_lock:
            self._seq += 1
            frame = {"op": 0, "t": event, "s": self._seq, "d": data}
            self._history = [*self._history[-999:], frame]
            if self._live is not None and not self._live.closed:
                await self._live.send_str(json.dumps(frame))
            return self._seq

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        """Plain TEXT frames: the client accepts them whatever compression it asked for."""
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._send(ws, {"op": 10, "d": {"heartbeat_interval": HEARTBEAT_MS}})
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_gateway(ws, json.loads(msg.data))
        finally:
            self._sockets.discard(ws)
            if self._live is ws:
                self._live = None
        return ws

    async def _on_gateway(self, ws: web.WebSocketResponse, frame: JSONDict) -> None:
        op, d = frame.get("op"), frame.get("d") or {}
        if op == 1:  # a heartbeat, or the answer to our barrier request
            await self._send(ws, {"op": 11})
            if ws is self._live:
                self._parsed_seq = max(self._parsed_seq, frame.get("d") or 0)
            for target, fut in self._barriers:
                if self._parsed_seq >= target and not fut.done():
                    fut.set_result(None)
        elif op == 2:
            if d.get("token") != self.token:
                await ws.close(code=4004, message=b"Authentication failed.")
                return
            async with self._send_lock:
                self._session_id, self._seq, self._history = secrets.token_hex(16), 0, []
                self._live, self._parsed_seq, self._barrier_times = ws, 0, []
            await self._dispatch("READY", self._ready_json())
            await self._dispatch("GUILD_CREATE", self._guild_create_json())
            self.identified.set()
        elif op == 6:
            if d.get("session_id") != self._session_id or d.get("token") != self.token:
                await self._send(ws, {"op": 9, "d": False})
                return
            async with self._send_lock:
                self._live, self._barrier_times = ws, []  # a new client socket, a new budget
                for old in self._history:
                    if old["s"] > (d.get("seq") or 0):
                        await ws.send_str(json.dumps(old))
            await self._dispatch("RESUMED", {})
            self._resumed.set()
        elif op == 8:
            members = [self._member_json(u) for u in [self.bot_user_id, *self._members]]
            await self._dispatch("GUILD_MEMBERS_CHUNK", {
                "guild_id": str(self.guild_id), "members": members, "chunk_index": 0,
                "chunk_count": 1, "not_found": [], "nonce": d.get("nonce"),
            })  # fmt: skip
