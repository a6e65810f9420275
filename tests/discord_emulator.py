"""A Discord-compatible HTTP + gateway server on 127.0.0.1 for end-to-end tests.

The real, unpatched discord.py client logs in to it: `point_client()` redirects
`discord.http.Route.BASE` and `DiscordWebSocket.DEFAULT_GATEWAY` here. The test then plays the
users (`slash`, `autocomplete`, `click`, `submit_modal`) and asserts on what the bot answered
(`Interaction.callbacks`, `.original`, `.followups`, `channel_messages`, `requests`).
The protocol facts this relies on are recorded in shared/DISCORD-EMULATION.md.

It answers as Discord does when the bot breaks one of Discord's rules (checked against
discord/discord-api-docs; each check names its page) and lists every such answer in
`rejected` as (status, code, method, path), so a test can assert the bot broke none:
- a first interaction response after `response_deadline` (3 s): 404 10062 Unknown interaction;
  a second one: 400 40060; a callback type the interaction does not take (a modal answering a
  modal submit): 400 50035;
- a webhook call on a token older than `token_lifetime` (900 s): 401 50027;
- a message, embed, component, modal or autocomplete choice over Discord's size limits: 400
  50035 with Discord's `errors` object; an empty new message: 400 50006;
- more than `rate_limit` (5 per 5 s) message posts, or edits, in one channel: 429 with
  `retry_after` and the X-RateLimit headers discord.py reads (it waits and retries);
- a channel the bot may not see (`deny(channel, "view_channel")`): 403 50001; may not post in,
  or post embeds in: 403 50013;
- an ephemeral message edited through another token or the channel: 404 10008;
- a channel webhook (`add_webhook`) executed with a wrong token: 401 50027; more than
  `rate_limit` executions of one webhook: 429, as for the bot's own posts.
- a presence update (gateway op 3) Discord cannot decode: the connection is closed, 4002.
Each stored `Message` records its `allowed_mentions` and `pings` (who it notifies); every
presence the bot sets is kept in `presences` (`presence_texts()`), and `delete_message` deletes
a message as a member would (MESSAGE_DELETE, or silently: the bot learns of it from a 404).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
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
VIEW_CHANNEL, SEND_MESSAGES, EMBED_LINKS = 1 << 10, 1 << 11, 1 << 14
MENTION_EVERYONE = 1 << 17
IS_COMPONENTS_V2 = 1 << 15
ALL_PERMISSIONS = discord.Permissions.all().value
BASIC_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, read_message_history=True, embed_links=True,
    attach_files=True, add_reactions=True, use_application_commands=True,
).value  # fmt: skip
HEARTBEAT_MS = 41_250
NONCE_WINDOW = 300.0  # seconds an enforced nonce is remembered ("the past few minutes")
# discord.py sends at most 110 gateway frames a minute per connection (GatewayRatelimiter) and
# answers our barrier op 1 through that limiter: past it, its receive loop stalls for seconds.
BARRIER_BUDGET = 100
NOT_FOUND = {"message": "404: Not Found", "code": 0}
# The interaction callback types, named as Discord names them in its BASE_TYPE_CHOICES error
# (seen in Rapptz/discord.py#9187: a modal answering a modal submit).
CALLBACK_TYPES = {1: "PONG", 4: "CHANNEL_MESSAGE_WITH_SOURCE",
                  5: "DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE", 6: "DEFERRED_UPDATE_MESSAGE",
                  7: "UPDATE_MESSAGE", 8: "APPLICATION_COMMAND_AUTOCOMPLETE_RESULT", 9: "MODAL",
                  10: "PREMIUM_UPSELL"}  # fmt: skip
# Which callback types each interaction type accepts (interactions/receiving-and-responding:
# MODAL is "not available for MODAL_SUBMIT and PING interactions"; autocomplete answers with 8).
ALLOWED_CALLBACKS = {2: (4, 5, 9, 10), 3: (4, 5, 6, 7, 9, 10), 4: (8,), 5: (4, 5, 6, 7, 10)}
MENTION = re.compile(r"<@(!|&)?(\d+)>|@(everyone|here)")


def _iso_from_snowflake(snowflake: int) -> str:
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _walk(components: list[JSONDict]) -> Iterator[JSONDict]:
    """Every component, nested ones included (action rows, sections, labels, containers)."""
    for c in components:
        yield c
        yield from _walk(c.get("components") or [])
        yield from _walk([x for x in (c.get("accessory"), c.get("component")) if x])


def _walk_paths(
    components: list[JSONDict], path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], JSONDict]]:
    """`_walk` with each component's path in the body (`("components", "0", "components", "1")`),
    as Discord names fields in its form errors."""
    for n, c in enumerate(components):
        here = (*path, str(n))
        yield here, c
        yield from _walk_paths(c.get("components") or [], (*here, "components"))
        for key in ("accessory", "component"):
            if c.get(key):
                yield (*here, key), c[key]
                yield from _walk_paths(c[key].get("components") or [], (*here, key, "components"))


class FormErrors:
    """Discord's 400 "Invalid Form Body" (code 50035): `errors` nests the JSON path of each bad
    field down to `_errors: [{code, message}]`, array indices as strings (developers/reference
    "Error Messages"; e.g. {"embeds": {"_errors": [{"code": "MAX_EMBED_SIZE_EXCEEDED", ...}]}}
    quoted in NelsonDane/auto-rsa#451, "components[N].components[BASE_TYPE_BAD_LENGTH]" for a
    row of six buttons)."""

    def __init__(self, prefix: tuple[str, ...] = ()) -> None:
        self.prefix = prefix
        self.errors: JSONDict = {}

    def add(self, path: tuple[str, ...], code: str, message: str) -> None:
        node = self.errors
        for key in (*self.prefix, *path):
            node = node.setdefault(key, {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def node(self) -> JSONDict:
        """The errors under the prefix so far."""
        node = self.errors
        for key in self.prefix:
            node = node.get(key, {})
        return node

    def max_len(self, path: tuple[str, ...], value: Any, limit: int) -> None:
        """A string or array longer than `limit`."""
        if isinstance(value, (str, list)) and len(value) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def bad_len(self, path: tuple[str, ...], value: Any, low: int, high: int) -> None:
        """A string or array outside low..high."""
        if isinstance(value, (str, list)) and not low <= len(value) <= high:
            self.add(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")

    def raise_if_any(self) -> None:
        if self.errors:
            raise ApiError(400, 50035, "Invalid Form Body", errors=self.errors)


def _check_message(body: JSONDict, errors: FormErrors) -> None:
    """The size limits of a message body (create or edit): resources/message "Embed Limits" and
    create-message params, components/reference. `errors` carries the path prefix ("data" for
    an interaction callback)."""
    errors.max_len(("content",), body.get("content"), 2000)
    if body.get("nonce") is not None:
        errors.max_len(("nonce",), str(body["nonce"]), 25)  # "up to 25 characters"
    embeds = body.get("embeds") or []
    errors.max_len(("embeds",), embeds, 10)
    total = 0
    for n, e in enumerate(embeds):
        at = ("embeds", str(n))
        footer, author = e.get("footer") or {}, e.get("author") or {}
        texts = [
            (("title",), e.get("title"), 256),
            (("description",), e.get("description"), 4096),
            (("footer", "text"), footer.get("text"), 2048),
            (("author", "name"), author.get("name"), 256),
        ]
        fields = e.get("fields") or []
        errors.max_len((*at, "fields"), fields, 25)
        for k, f in enumerate(fields):
            texts.append((("fields", str(k), "name"), f.get("name"), 256))
            texts.append((("fields", str(k), "value"), f.get("value"), 1024))
        for path, text, limit in texts:
            errors.max_len((*at, *path), text, limit)
            total += len(text) if isinstance(text, str) else 0
    # All embeds of the message together; checked once each field is within its own limit
    # (discord.py's error flattening shows only a node's `_errors`, not its children).
    if total > 6000 and "embeds" not in errors.node():
        message = "Embed size exceeds maximum size of 6000"
        errors.add(("embeds",), "MAX_EMBED_SIZE_EXCEEDED", message)
    components = body.get("components") or []
    if not int(body.get("flags") or 0) & IS_COMPONENTS_V2:
        errors.max_len(("components",), components, 5)  # "Legacy messages allow up to 5 rows"
    for path, c in _walk_paths(components, ("components",)):
        _check_component(path, c, errors)


def _check_component(path: tuple[str, ...], c: JSONDict, errors: FormErrors) -> None:
    """One component of a message or a modal (components/reference)."""
    kind = c.get("type")
    if "custom_id" in c:
        errors.bad_len((*path, "custom_id"), c["custom_id"], 1, 100)
    if kind == 1:  # action row: up to 5 buttons or one select
        errors.bad_len((*path, "components"), c.get("components") or [], 1, 5)
    elif kind == 2:
        errors.max_len((*path, "label"), c.get("label"), 80)
    elif kind in (3, 5, 6, 7, 8):  # selects
        errors.max_len((*path, "placeholder"), c.get("placeholder"), 150)
        if kind == 3:
            options = c.get("options") or []
            errors.bad_len((*path, "options"), options, 1, 25)
            for n, o in enumerate(options):
                for key in ("label", "value", "description"):
                    errors.max_len((*path, "options", str(n), key), o.get(key), 100)
    elif kind == 4:  # text input (modals)
        errors.max_len((*path, "label"), c.get("label"), 45)
        errors.max_len((*path, "placeholder"), c.get("placeholder"), 100)
        errors.max_len((*path, "value"), c.get("value"), 4000)
    elif kind == 18:  # label (modals)
        errors.max_len((*path, "label"), c.get("label"), 45)
        errors.max_len((*path, "description"), c.get("description"), 100)


def _check_modal(data: JSONDict, errors: FormErrors) -> None:
    """interactions/receiving-and-responding "Modal": custom_id 1-100, title 45, 1-5
    components; text inputs and labels per components/reference."""
    errors.bad_len(("custom_id",), data.get("custom_id"), 1, 100)
    errors.max_len(("title",), data.get("title"), 45)
    components = data.get("components") or []
    errors.bad_len(("components",), components, 1, 5)
    for path, c in _walk_paths(components, ("components",)):
        _check_component(path, c, errors)


def _check_choices(data: JSONDict, errors: FormErrors) -> None:
    """Autocomplete result: at most 25 choices, name 1-100, a string value up to 100
    (application-commands "Application Command Option Choice Structure")."""
    choices = data.get("choices") or []
    errors.max_len(("choices",), choices, 25)
    for n, ch in enumerate(choices):
        errors.bad_len(("choices", str(n), "name"), ch.get("name"), 1, 100)
        errors.max_len(("choices", str(n), "value"), ch.get("value"), 100)


def _route_pattern(template: str) -> re.Pattern[str]:
    """'/channels/{channel}' -> a regex with named groups; ids are digits."""
    special = {"token": r"[^/]+", "message": r"@original|\d+"}

    def group(m: re.Match[str]) -> str:
        return f"(?P<{m[1]}>{special.get(m[1], r'[0-9]+')})"

    return re.compile(re.sub(r"\{(\w+)\}", group, template))


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    if payload is None:
        return web.Response(status=204, headers=headers)
    # Exactly "application/json": discord.http.json_or_text compares the header verbatim and
    # web.json_response would append "; charset=utf-8".
    body = json.dumps(payload).encode()
    all_headers = {**(headers or {}), "Content-Type": "application/json"}
    return web.Response(status=status, body=body, headers=all_headers)


class ApiError(Exception):
    """Raised by route handlers; becomes a Discord-style JSON error response
    ({"message", "code"} and, for form errors, "errors"; topics/opcodes-and-status-codes)."""

    def __init__(self, status: int, code: int, message: str, *, errors: JSONDict | None = None,
                 payload: JSONDict | None = None,
                 headers: Mapping[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.payload = payload or {"message": message, "code": code}
        if errors:
            self.payload["errors"] = errors
        self.headers = dict(headers or {})


@dataclass
class Recorded:
    """One HTTP request the bot made. `path` is relative to the API base (`/channels/3000/...`)."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    at: float  # time.monotonic() at arrival
    files: dict[str, bytes] = field(default_factory=dict)  # multipart uploads, filename -> bytes
    status: int | None = None  # what the emulator answered
    response: Any = field(default=None, repr=False)  # the JSON it answered
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # extra response headers


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
    allowed_mentions: JSONDict | None = None  # as sent with the body that made this state
    pings: frozenset[str] = frozenset()  # who it notifies: "user:42", "role:4001", "everyone"...
    reply_to: int | None = None  # message_reference.message_id

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
                 roles: dict[str, int] | None = None,
                 response_deadline: float = 3.0, token_lifetime: float = 900.0,
                 rate_limit: tuple[int, float] | None = (5, 5.0),
                 bot_permissions: int = ALL_PERMISSIONS & ~ADMINISTRATOR) -> None:  # fmt: skip
        """`response_deadline`: seconds from INTERACTION_CREATE to the first callback (else 404
        10062). `token_lifetime`: seconds an interaction token works for webhooks (else 401
        50027). `rate_limit`: (requests, seconds) per channel for message posts, and separately
        for message edits; None disables. `bot_permissions`: the bot's role in the guild (every
        permission but Administrator by default, so channel overwrites apply to it). All four can
        be changed on the instance at any time."""
        self.guild_id, self.app_id, self.bot_user_id = guild_id, app_id, bot_user_id
        self.response_deadline, self.token_lifetime = response_deadline, token_lifetime
        self.rate_limit = rate_limit
        self._bot_permissions = bot_permissions
        # Every answer that is Discord refusing a request for breaking a rule: (status, code,
        # method, path). GET 404s (lookups of unknown things) are not listed.
        self.rejected: list[tuple[int, int, str, str]] = []
        # Codes a test provokes on purpose; any other refusal fails the `emu` fixture.
        self.expected_codes: set[int] = set()
        self._denied: dict[int, int] = {}  # channel -> permission bits denied to the bot's role
        self._mentionable: set[int] = set()  # role ids
        self._buckets: dict[tuple[str, int], tuple[float, int]] = {}  # -> (window start, count)
        self._nonces: dict[str, tuple[float, int]] = {}  # enforced nonce -> (when, message id)
        self.nonce_hits = 0  # creates answered with the message an earlier one made
        self.on_create: Callable[[Message], None] | None = None
        self.webhooks: dict[int, tuple[str, int]] = {}  # channel webhook id -> (token, channel)
        self._pending: set[asyncio.Task[int]] = set()  # dispatches started by sync methods
        self.channels = dict(channels or {"general": 3000, "peon": 3001})
        self.roles = dict(roles or {"admin": 4001, "operator": 4002, "player": 4003})
        self.token = "emu." + secrets.token_urlsafe(24)
        self.api_base = self.gateway_url = ""
        self.requests: list[Recorded] = []
        self.commands: list[JSONDict] = []
        self.global_commands: list[JSONDict] = []
        self.channel_messages: dict[int, list[Message]] = {}
        self.identified = asyncio.Event()
        # Every presence the bot set, oldest first: IDENTIFY's `presence` and each op 3 `d`
        # (topics/gateway-events "Update Presence"); `presence_texts()` reads them.
        self.presences: list[JSONDict] = []
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

    def add_webhook(self, channel: str | int) -> str:
        """A channel webhook, as an admin makes one in the channel's settings (resources/webhook
        "Create Webhook"); returns its URL (which holds its token)."""
        wid, token = self._snowflake(), secrets.token_urlsafe(51)
        self.webhooks[wid] = (token, self._channel_id(channel))
        return f"{self.api_base}/webhooks/{wid}/{token}"

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

    @property
    def bot_permissions(self) -> int:
        """The permission bits of the bot's role (guild-wide); setting it sends
        GUILD_ROLE_UPDATE."""
        return self._bot_permissions

    @bot_permissions.setter
    def bot_permissions(self, value: int | discord.Permissions) -> None:
        self._bot_permissions = value.value if isinstance(value, discord.Permissions) else value
        self._role_updated(self._bot_role)

    def deny(self, channel: str | int, *names: str) -> None:
        """Deny the bot's role permissions in a channel ("view_channel", "send_messages",
        "embed_links", or any discord.Permissions name), as a permission overwrite that the
        channel JSON carries (CHANNEL_UPDATE is sent to a connected bot) and that the routes
        enforce: no View Channel -> 403 50001 on every channel route; no Send Messages -> 403
        50013 on posts; no Embed Links -> 403 50013 on a post or edit with embeds."""
        cid = self._channel_id(channel)
        self._channel_json(cid)  # unknown channel -> ApiError
        bits = discord.Permissions(**dict.fromkeys(names, True)).value
        self._denied[cid] = self._denied.get(cid, 0) | bits
        self._channel_updated(cid)

    def allow(self, channel: str | int, *names: str) -> None:
        """Undo `deny` for these permissions (no names: all of them)."""
        cid = self._channel_id(channel)
        bits = discord.Permissions(**dict.fromkeys(names, True)).value if names else -1
        self._denied[cid] = self._denied.get(cid, 0) & ~bits
        self._channel_updated(cid)

    def set_mentionable(self, role: str | int, mentionable: bool = True) -> None:
        """Let anyone ping a role (roles JSON `mentionable`); sends GUILD_ROLE_UPDATE."""
        rid = role if isinstance(role, int) else self.roles[role]
        if mentionable:
            self._mentionable.add(rid)
        else:
            self._mentionable.discard(rid)
        self._role_updated(rid)

    def channel_permissions(self, channel: str | int) -> int:
        """The bot's permission bits in a channel, computed as Discord does for one role
        overwrite: Administrator means everything, else @everyone | bot role, minus denials."""
        base = BASIC_PERMISSIONS | self._bot_permissions
        if base & ADMINISTRATOR:
            return ALL_PERMISSIONS
        return base & ~self._denied.get(self._channel_id(channel), 0)

    def _channel_updated(self, channel_id: int) -> None:
        event = {**self._channel_json(channel_id), "guild_id": str(self.guild_id)}
        self._notify("CHANNEL_UPDATE", event)

    def _role_updated(self, role_id: int) -> None:
        role = next(r for r in self._roles_json() if r["id"] == str(role_id))
        self._notify("GUILD_ROLE_UPDATE", {"guild_id": str(self.guild_id), "role": role})

    def _notify(self, event: str, data: JSONDict) -> None:
        """Dispatch from a synchronous method: started as a task; settle() waits for it."""
        if not self.identified.is_set():
            return  # GUILD_CREATE will carry the current state
        task = asyncio.get_running_loop().create_task(self._dispatch(event, data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

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
            if self._pending:
                await asyncio.wait(list(self._pending), timeout=max(0, deadline - time.monotonic()))
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
        if user_id in self.webhooks:  # a webhook message's author
            return {"id": str(user_id), "username": "Captain Hook", "discriminator": "0000",
                    "avatar": None, "bot": True}  # fmt: skip
        bot = user_id == self.bot_user_id
        name = "peon-test-bot" if bot else self._members.get(user_id, (f"user{user_id}",))[0]
        return {"id": str(user_id), "username": name, "discriminator": "0", "global_name": name,
                "avatar": None, "bot": bot}  # fmt: skip

    def _member_roles(self, user_id: int) -> list[int]:
        if user_id == self.bot_user_id:
            return [self._bot_role]
        return self._members.get(user_id, ("", []))[1]

    def _permissions(self, user_id: int) -> int:
        """Administrators (the "admin" role) get every bit, as Discord computes it; the bot has
        @everyone's and its role's."""
        admin = self.roles.get("admin")
        if user_id == self.bot_user_id:
            base = BASIC_PERMISSIONS | self._bot_permissions
            return ALL_PERMISSIONS if base & ADMINISTRATOR else base
        if admin in self._member_roles(user_id):
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
                "permissions": str(self._bot_permissions if bot else perms), "managed": bot,
                "mentionable": rid in self._mentionable, "icon": None, "unicode_emoji": None,
                "flags": 0,
                **({"tags": {"bot_id": str(self.bot_user_id)}} if bot else {}),
            })
        return out

    def _channel_json(self, channel_id: int) -> JSONDict:
        names = {cid: n for n, cid in self.channels.items()}
        if channel_id not in names:
            raise ApiError(404, 10003, "Unknown Channel")
        denied = self._denied.get(channel_id, 0)
        overwrites = [{"id": str(self._bot_role), "type": 0, "allow": "0", "deny": str(denied)}]
        return {
            "id": str(channel_id), "type": 0, "guild_id": str(self.guild_id),
            "name": names[channel_id], "position": list(names).index(channel_id),
            "permission_overwrites": overwrites if denied else [], "topic": None, "nsfw": False,
            "parent_id": None,
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
        users = [int(p[5:]) for p in sorted(m.pings) if p.startswith("user:")]
        roles = [p[5:] for p in sorted(m.pings) if p.startswith("role:")]
        d: JSONDict = {
            "id": str(m.id), "type": 0, "channel_id": str(m.channel_id), "content": m.content,
            "author": self._user_json(m.author_id), "timestamp": _iso_from_snowflake(m.id),
            "edited_timestamp": m.edited_timestamp, "tts": False,
            "mention_everyone": bool({"everyone", "here"} & m.pings),
            "mentions": [self._user_json(u) for u in users], "mention_roles": roles,
            "attachments": m.attachments, "embeds": m.embeds, "pinned": False,
            "components": m.components, "flags": m.flags,
        }
        if m.reply_to is not None:
            d["message_reference"] = {"type": 0, "message_id": str(m.reply_to),
                                      "channel_id": str(m.channel_id),
                                      "guild_id": str(self.guild_id)}
        return d

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
            "app_permissions": str(self.channel_permissions(channel_id)), "locale": "en-US",
            "guild_locale": "en-US",
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
                     author: int | None, *, webhook: bool = False) -> Message:
        """`webhook`: made through an interaction or webhook, whose default allowed_mentions
        parse only users (resources/message "Default Settings for Allowed Mentions")."""
        get = body.get
        reply = (get("message_reference") or {}).get("message_id")
        msg = Message(self._snowflake(), channel_id, get("content") or "", get("embeds") or [],
                      get("components") or [], int(get("flags") or 0),
                      self.bot_user_id if author is None else author, self._uploads(files),
                      allowed_mentions=get("allowed_mentions"),
                      reply_to=None if reply is None else int(reply))
        msg = replace(msg, pings=self._pings(msg, webhook=webhook))
        self._messages[msg.id] = msg
        return msg
    # fmt: on

    def _pings(self, msg: Message, *, webhook: bool) -> frozenset[str]:
        """Who a message notifies, per resources/message "Allowed Mentions Object": mentions in
        the content (and text displays) filtered by allowed_mentions (absent: parse everything
        in a channel message, only users through interactions and webhooks; `parse` and
        `users`/`roles` lists; `replied_user`). A role pings only if mentionable or the bot may
        Mention Everyone; @everyone/@here need Mention Everyone."""
        texts = [msg.content, *(c.get("content") or "" for c in _walk(msg.components)
                                if c.get("type") == 10)]  # fmt: skip
        users: list[int] = []
        roles: list[int] = []
        everyone: list[str] = []
        for m in MENTION.finditer("\n".join(texts)):
            if m[3]:
                everyone.append(m[3])
            elif m[1] == "&":
                roles.append(int(m[2]))
            else:
                users.append(int(m[2]))
        allowed = msg.allowed_mentions
        if allowed is None:
            parse = {"users"} if webhook else {"users", "roles", "everyone"}
            replied = not webhook
        else:
            parse = set(allowed.get("parse") or [])
            replied = bool(allowed.get("replied_user"))
        listed = {int(x) for x in (allowed or {}).get("users") or []}
        listed_roles = {int(x) for x in (allowed or {}).get("roles") or []}
        may_everyone = bool(self.channel_permissions(msg.channel_id) & MENTION_EVERYONE)
        out = {f"user:{u}" for u in users if "users" in parse or u in listed}
        out |= {f"role:{r}" for r in roles if ("roles" in parse or r in listed_roles)
                and (r in self._mentionable or may_everyone)}  # fmt: skip
        if "everyone" in parse and may_everyone:
            out |= set(everyone)
        target = self._messages.get(msg.reply_to) if msg.reply_to is not None else None
        if replied and target is not None and target.author_id != msg.author_id:
            out.add(f"user:{target.author_id}")
        return frozenset(out)

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

    def _edited(self, msg: Message, body: JSONDict, files: dict[str, bytes], *,
                webhook: bool) -> Message:  # fmt: skip
        """Apply a PATCH/type 7 body: absent keys are kept, ephemeral stays, loading clears.
        Mentions are recomputed when content or components change, with the edit's
        allowed_mentions or the defaults (resources/message "Edit Message")."""
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
        new = replace(msg, **changes, flags=flags, edited_timestamp=edited)
        if "content" in body or "components" in body:
            new = replace(new, allowed_mentions=body.get("allowed_mentions"))
            new = replace(new, pings=self._pings(new, webhook=webhook))
        return new

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
        rec: Recorded | None = None
        self._inflight += 1
        self._last_activity = at
        try:
            body, files = await self._read_body(request)
            rec = Recorded(request.method, path, dict(request.query), body, at, files)
            self.requests.append(rec)
            public = path.startswith(("/webhooks/", "/interactions/"))
            if not public and request.headers.get("Authorization") != f"Bot {self.token}":
                raise ApiError(401, 0, "401: Unauthorized")
            for methods, pattern, handler in self._routes:
                if request.method in methods and (mm := pattern.fullmatch(path)):
                    status, payload = await handler(rec, **mm.groupdict())
                    rec.status, rec.response = status, payload
                    return _json(status, payload, rec.headers)
            rec.status = 404
            return _json(404, NOT_FOUND)
        except ApiError as e:
            if rec is not None:
                rec.status, rec.response = e.status, e.payload
            if not (e.status == 404 and request.method == "GET"):  # a lookup is no violation
                self.rejected.append((e.status, e.code, request.method, path))
            return _json(e.status, e.payload, e.headers)
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
        application_id, version and guild_id. A guild the bot is not in: 403 50001 Missing
        Access, as Discord answers (Rapptz/discord.py#8106)."""
        self._check(app)
        if guild is not None and int(guild) != self.guild_id:
            raise ApiError(403, 50001, "Missing Access")
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
        self._require(int(channel), VIEW_CHANNEL)
        return 200, self._channel_json(int(channel))

    async def _typing(self, rec: Recorded, channel: str) -> tuple[int, Any]:
        self._require(int(channel), VIEW_CHANNEL | SEND_MESSAGES)
        return 204, None

    async def _channel_history(self, rec: Recorded, channel: str) -> tuple[int, Any]:
        self._require(int(channel), VIEW_CHANNEL)
        msgs = self.channel_messages.get(int(channel), [])[::-1][: int(rec.query.get("limit", 50))]
        return 200, [self._message_json(m) for m in msgs]

    def _require(self, channel_id: int, bits: int, body: JSONDict | None = None) -> None:
        """The bot's channel permissions (topics/opcodes-and-status-codes: 50001 Missing Access,
        50013 Missing Permissions; resources/message "Create Message" needs SEND_MESSAGES, an
        embed needs EMBED_LINKS as discord/discord-api-docs#2601 shows). Unknown channel: 404."""
        self._channel_json(channel_id)
        perms = self.channel_permissions(channel_id)
        if not perms & VIEW_CHANNEL:
            raise ApiError(403, 50001, "Missing Access")
        if body and body.get("embeds"):
            bits |= EMBED_LINKS
        if bits & ~perms:
            raise ApiError(403, 50013, "Missing Permissions")

    def _rate_limited(self, rec: Recorded, channel_id: int) -> None:
        """Per-channel limit on message posts (and, in their own bucket, edits): a fixed window
        of `rate_limit[1]` s from its first request. Headers as topics/rate-limits documents;
        discord.py (http.py) reads X-Ratelimit-Remaining/-Reset-After/-Bucket from every answer
        and pre-emptively sleeps Reset-After when none remain; on a 429 it sleeps the body's
        `retry_after` and retries, but only if the answer has a `Via` header (without it,
        it takes the 429 for a Cloudflare ban and raises): Discord's carry `Via: 1.1 google`.
        Times are rounded up to the millisecond so a client never retries early."""
        if self.rate_limit is None:
            return
        limit, per = self.rate_limit
        key, now = (rec.method, channel_id), time.monotonic()
        start, count = self._buckets.get(key, (now, 0))
        if now - start >= per:
            start, count = now, 0
        reset_after = math.ceil((start + per - now) * 1000) / 1000
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - count - 1)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": f"emu{rec.method.lower()}channelmessages",
            "Via": "1.1 google",
        }
        if count >= limit:
            text = "You are being rate limited."
            body = {"message": text, "retry_after": reset_after, "global": False}
            headers["Retry-After"] = str(math.ceil(reset_after))
            headers["X-RateLimit-Scope"] = "user"
            raise ApiError(429, 0, text, payload=body, headers=headers)
        self._buckets[key] = (start, count + 1)
        rec.headers.update(headers)

    async def _post_message(self, rec: Recorded, channel: str) -> tuple[int, Any]:
        """Also dispatches MESSAGE_CREATE, as Discord does (the bot must ignore bot authors)."""
        cid = int(channel)
        body = rec.json or {}
        self._channel_json(cid)
        self._rate_limited(rec, cid)
        self._require(cid, SEND_MESSAGES, body)
        self._validate(body, FormErrors(), create=True, files=rec.files)
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            # resources/message "Create Message": with enforce_nonce, a nonce (at most 25
            # characters) is checked for uniqueness "in the past few minutes"; a message the
            # same author made with it is returned, and no new one is created.
            prior = self._nonces.get(str(nonce))
            if prior is not None and time.monotonic() - prior[0] < NONCE_WINDOW:
                self.nonce_hits += 1
                return 200, self._message_json(self._messages[prior[1]])
        msg = self._new_message(cid, body, rec.files, None)
        if nonce is not None:
            self._nonces[str(nonce)] = (time.monotonic(), msg.id)
        self.channel_messages.setdefault(cid, []).append(msg)
        if self.on_create is not None:
            self.on_create(msg)  # a test's hook: e.g. kill the bot before it hears back
        member = self._member_json(msg.author_id, user=False)
        event = {**self._message_json(msg), "guild_id": str(self.guild_id), "member": member}
        await self._dispatch("MESSAGE_CREATE", event)
        return 200, self._message_json(msg)

    def _validate(self, body: JSONDict, errors: FormErrors, *, create: bool,
                  files: dict[str, bytes]) -> None:  # fmt: skip
        """400 50035 when a message body breaks a size limit; a new message needs something to
        show (50006 "Cannot send an empty message", topics/opcodes-and-status-codes)."""
        _check_message(body, errors)
        errors.raise_if_any()
        if create and not (body.get("content") or body.get("embeds") or body.get("components")
                           or files or body.get("sticker_ids") or body.get("poll")):  # fmt: skip
            raise ApiError(400, 50006, "Cannot send an empty message")

    async def _channel_msg(self, rec: Recorded, channel: str, message: str) -> tuple[int, Any]:
        cid = int(channel)
        self._channel_json(cid)
        if rec.method == "PATCH":
            self._rate_limited(rec, cid)
        self._require(cid, VIEW_CHANNEL, rec.json if rec.method == "PATCH" else None)
        msg = self._messages.get(int(message))
        if msg is None or msg.deleted or msg.channel_id != cid or msg.ephemeral:
            raise ApiError(404, 10008, "Unknown Message")
        return self._message_op(rec, msg, webhook=False)

    def _message_op(self, rec: Recorded, msg: Message, *, webhook: bool) -> tuple[int, Any]:
        if rec.method == "PATCH":
            self._validate(rec.json or {}, FormErrors(), create=False, files=rec.files)
            msg = self._edited(msg, rec.json or {}, rec.files, webhook=webhook)
            self._replace(msg)
        elif rec.method == "DELETE":
            self._replace(replace(msg, deleted=True))
            return 204, None
        return 200, self._message_json(msg)

    async def _callback(self, rec: Recorded, iid: str, token: str) -> tuple[int, Any]:
        """Interaction response. The client sends with_response=1 and needs the callback JSON
        back (a 204 makes discord.py raise TypeError); it registers views under
        response_message_id. Refused as on Discord (interactions/receiving-and-responding):
        after `response_deadline` (3 s) or the token's lifetime, 404 10062 Unknown interaction;
        a second callback, 400 40060; a type the interaction does not take (a modal answering a
        modal submit), 400 50035 BASE_TYPE_CHOICES on `type` (Rapptz/discord.py#9187); a payload
        over a limit, 400 50035 with errors under `data`. A refused first callback is not
        recorded in `callbacks` (the interaction stays unanswered)."""
        inter = self.interactions.get(int(iid))
        if inter is None or inter.token != token:
            raise ApiError(404, 10062, "Unknown interaction")
        age = rec.at - self.dispatch_times[inter.id]
        if age > self.token_lifetime or (not inter.callbacks and age > self.response_deadline):
            raise ApiError(404, 10062, "Unknown interaction")
        body = rec.json or {}
        if inter.callbacks:
            inter.callbacks.append(body)
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        kind, data = body.get("type"), body.get("data") or {}
        allowed = ALLOWED_CALLBACKS.get(inter.kind, ())
        if inter.source is None:  # nothing to update: no message behind the interaction
            allowed = tuple(k for k in allowed if k not in (6, 7))
        if kind not in allowed:
            choices = ", ".join(f"<InteractionCallbackTypes.{CALLBACK_TYPES[k]}: {k}>"
                                for k in allowed)  # fmt: skip
            errors = FormErrors()
            errors.add(("type",), "BASE_TYPE_CHOICES", f"Value must be one of {{{choices}}}.")
            errors.raise_if_any()
        if kind in (4, 7):
            self._validate(data, FormErrors(("data",)), create=kind == 4, files=rec.files)
        elif kind == 8:
            errors = FormErrors(("data",))
            _check_choices(data, errors)
            errors.raise_if_any()
        elif kind == 9:
            errors = FormErrors(("data",))
            _check_modal(data, errors)
            errors.raise_if_any()
        inter.callbacks.append(body)
        self.callback_times.setdefault(inter.id, rec.at)
        self._parsed_seq = max(self._parsed_seq, inter.seq)
        msg: Message | None = None
        if kind == 4:
            msg = self._new_message(inter.channel_id, data, rec.files, None, webhook=True)
            self._set_original(inter, msg)
        elif kind == 5:
            flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            msg = self._new_message(inter.channel_id, {"flags": flags}, {}, None, webhook=True)
            self._set_original(inter, msg)
        elif kind in (6, 7) and inter.source is not None:  # the component's message is @original
            msg = self._messages.get(inter.source.id, inter.source)
            if kind == 6:
                self._set_original(inter, msg)
            else:
                inter.original = msg
                msg = self._edited(msg, data, rec.files, webhook=True)
                self._replace(msg)
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

    def _interaction_for(self, rec: Recorded, app: str, token: str) -> Interaction:
        """The interaction behind a webhook token. Past `token_lifetime`: 401 50027 Invalid
        Webhook Token (interactions/receiving-and-responding: tokens are valid for 15 minutes;
        code in topics/opcodes-and-status-codes). Never acknowledged (late or not yet): 404
        10015 Unknown Webhook (a token Discord has not registered, discord-api-docs#7220)."""
        inter = self._by_token.get(token)
        if inter is None or int(app) != self.app_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        if rec.at - self.dispatch_times[inter.id] > self.token_lifetime:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if not inter.callbacks:
            raise ApiError(404, 10015, "Unknown Webhook")
        return inter

    async def _followup(self, rec: Recorded, app: str, token: str) -> tuple[int, Any]:
        """A follow-up, or a channel webhook's execution (the same route). As on Discord, the
        first follow-up after a thinking defer (type 5) replaces the "thinking" original (same
        id, the defer's ephemerality); it is listed in both."""
        if int(app) in self.webhooks:
            return await self._execute_webhook(rec, int(app), token)
        inter = self._interaction_for(rec, app, token)
        body, orig = rec.json or {}, inter.original
        self._validate(body, FormErrors(), create=True, files=rec.files)
        if orig is not None and orig.flags & LOADING and inter.response_type == 5:
            flags = int(body.get("flags") or 0) & ~EPHEMERAL
            msg = self._edited(orig, {**body, "flags": flags}, rec.files, webhook=True)
            self._replace(msg)
        else:
            msg = self._new_message(inter.channel_id, body, rec.files, None, webhook=True)
        inter.followups.append(msg)
        wait = rec.query.get("wait", "").lower() in ("1", "true")
        return (200, self._message_json(msg)) if wait else (204, None)

    async def _execute_webhook(self, rec: Recorded, wid: int, token: str) -> tuple[int, Any]:
        """resources/webhook "Execute Webhook": no bot authorization, the token in the path (a
        wrong one: 401 50027 Invalid Webhook Token); a message body as for Create Message, whose
        allowed_mentions default to users only; 204 unless `wait=true`, then the message.
        Rate limited per webhook."""
        known, cid = self.webhooks[wid]
        if not secrets.compare_digest(token, known):
            raise ApiError(401, 50027, "Invalid Webhook Token")
        body = rec.json or {}
        self._rate_limited(rec, wid)
        self._validate(body, FormErrors(), create=True, files=rec.files)
        msg = self._new_message(cid, body, rec.files, wid, webhook=True)
        self.channel_messages.setdefault(cid, []).append(msg)
        event = {**self._message_json(msg), "guild_id": str(self.guild_id),
                 "webhook_id": str(wid)}  # fmt: skip
        await self._dispatch("MESSAGE_CREATE", event)
        wait = rec.query.get("wait", "").lower() in ("1", "true")
        return (200, {**self._message_json(msg), "webhook_id": str(wid)}) if wait else (204, None)

    async def _webhook_msg(
        self, rec: Recorded, app: str, token: str, message: str
    ) -> tuple[int, Any]:
        """A message of this interaction only (its original and follow-ups): an ephemeral
        message cannot be reached through another token (nor the channel routes)."""
        inter = self._interaction_for(rec, app, token)
        owned = [m for m in (inter.original, *inter.followups) if m is not None]
        if message != "@original":
            owned = [m for m in owned if m.id == int(message)]
        if not owned or owned[0].deleted:
            raise ApiError(404, 10008, "Unknown Message")
        return self._message_op(rec, self._messages.get(owned[0].id, owned[0]), webhook=True)

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

    async def _presence_update(self, ws: web.WebSocketResponse, d: JSONDict) -> None:
        """Op 3 Update Presence (topics/gateway-events): `since` (?integer), `activities`
        (array), `status` (online, dnd, idle, invisible, offline), `afk` (boolean); of an
        activity "bot users are only able to set name, state, type, and url", type 0-5. A
        payload Discord cannot decode closes the connection with 4002 Decode error
        (topics/opcodes-and-status-codes)."""
        activities = d.get("activities")
        ok = (
            isinstance(activities, list)
            and d.get("status") in ("online", "dnd", "idle", "invisible", "offline")
            and isinstance(d.get("afk"), bool)
            and (d.get("since") is None or isinstance(d.get("since"), int | float))
            and all(
                isinstance(a, dict) and isinstance(a.get("name"), str)
                and a.get("type") in range(6) and set(a) <= {"name", "state", "type", "url"}
                for a in activities
            )
        )  # fmt: skip
        if not ok:
            self.rejected.append((4002, 4002, "GATEWAY", "op 3"))
            await ws.close(code=4002, message=b"Decode error")
            return
        self.presences.append(dict(d))

    def presence_texts(self) -> list[str]:
        """The text each recorded presence shows: a custom status's `state`, else the first
        activity's name ("" without one)."""
        out = []
        for p in self.presences:
            acts = p.get("activities") or ([p["game"]] if p.get("game") else [])
            first = acts[0] if acts else {}
            out.append(str(first.get("state") or first.get("name") or ""))
        return out

    async def delete_message(self, message_id: int, *, notify: bool = True) -> None:
        """A member (a moderator) deletes a message. Discord then sends MESSAGE_DELETE {id,
        channel_id, guild_id} (topics/gateway-events "Message Delete"); `notify=False` is a
        deletion the bot missed (it was disconnected): it finds out from a 404 10008."""
        msg = self._messages[message_id]
        self._replace(replace(msg, deleted=True))
        if notify:
            await self._dispatch("MESSAGE_DELETE", {"id": str(msg.id),
                                                    "channel_id": str(msg.channel_id),
                                                    "guild_id": str(self.guild_id)})  # fmt: skip

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
            if d.get("presence"):
                self.presences.append(dict(d["presence"]))
            async with self._send_lock:
                self._session_id, self._seq, self._history = secrets.token_hex(16), 0, []
                self._live, self._parsed_seq, self._barrier_times = ws, 0, []
            await self._dispatch("READY", self._ready_json())
            await self._dispatch("GUILD_CREATE", self._guild_create_json())
            self.identified.set()
        elif op == 3:
            await self._presence_update(ws, d)
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
