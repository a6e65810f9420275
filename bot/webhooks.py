"""Webhook targets: events POSTed to Discord webhooks, Slack-compatible URLs, ntfy topics or
any HTTP endpoint as signed JSON. The one HTTP client module (aiohttp).

Each target is a consumer of the event stream of its own (`webhook:<name>`): a slow or dead
target only falls behind, it never holds up an operation, the Discord notices or another
target. Delivery is at least once (the JSON shape names the event in `X-Peon-Event`, so a
receiver can drop a repeat). A target answering 5xx, 408 or not at all is tried again by the
feed with growing pauses; 429 waits what Retry-After says; any other 4xx (or a redirect) will
not change by asking again, so that event is dropped and the failure recorded. A target that
keeps failing is shown, with its last error, in `/peon status`; its URL only as scheme and
host, since webhook URLs carry their token in the path.

Nothing secret leaves: the values of a server's secret variables are masked in the text, the
detail and the payload, and so is any payload key that names a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.header import Header
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from bot import __version__, notices
from bot.errors import WarplanNotFound
from bot.events import Event, EventFeed, Transient
from bot.schedules import format_span

if TYPE_CHECKING:
    from bot.settings import WebhookSettings
    from bot.store import Store
    from bot.warplans import WarplanLibrary

log = logging.getLogger(__name__)

RETRY_AFTER_MAX = 300.0  # seconds: a longer Retry-After is a failure, retried by the feed
RATE_LIMIT_TRIES = 5  # 429s in a row for one event before the feed's own backoff takes over
FAILING_AFTER = 3  # failed attempts in a row that make a target "failing" in /peon status
RETRYABLE = frozenset({408, 425, 429})  # 4xx that may pass when asked again
MASK = "••••••"
SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|api_?key|credential", re.IGNORECASE)
DISCORD_CONTENT_MAX = 2000  # Discord's message content limit
NTFY_BODY_MAX = 4096  # bytes: ntfy turns a longer body into an attachment
TEXT_MAX = 3900  # Slack and the JSON's text: a readable notice, not a log dump
LOG_LINES = 10  # last log lines of a crash in the text
USER_AGENT = f"PEON/{__version__} (webhooks)"


def where(url: str) -> str:
    """The URL as it may be shown: scheme and host only (the path holds the token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}/…"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- what to send ---------------------------------------------------------------------------


def describe(event: Event) -> tuple[str, str]:
    """(title, text): one event as people read it, plain text (no markup). A notice whose
    payload is not as expected (another version wrote it) is told as a plain event, never
    left undelivered."""
    try:
        return _describe(event)
    except (KeyError, TypeError, ValueError, AttributeError):
        return _plain(event)


def _plain(event: Event) -> tuple[str, str]:
    done = "done" if event.ok else "failed"
    subject = event.server or "PEON"
    text = f"{subject}: {event.kind} {done}" + (f": {event.detail}" if event.detail else "")
    return f"{subject}: {event.kind} {done}", f"{text} (by {event.actor})"


def _describe(event: Event) -> tuple[str, str]:
    n = notices.Notice(event)
    s, p = n.server, event.payload
    if (connect := n.ready_address()) is not None:
        return f"{s} is ready", f"{s} is ready to join: {connect}"
    kind = event.kind
    if kind == notices.WARNING:
        w = n.warning()
        verb = "stops" if w.action == "stop" else "restarts"
        at = w.at.astimezone(w.zone)
        return (
            f"{s} {verb} soon",
            f"{s} {verb} in {format_span(w.left)} (at {at:%H:%M} {w.zone.key}): {w.why}.",
        )
    if kind == notices.SCHEDULED:
        action = str(p.get("action", ""))
        done = {"stop": "stopped", "restart": "restarted", "start": "started"}.get(action, action)
        text = f"{s} {done}: {p.get('why', '')}."
        if p.get("connect"):
            text += f" Ready to join: {p['connect']}"
        return f"{s} {done}", text
    if kind == notices.SCHEDULE_FAILED:
        return (
            f"{s}: automatic {p.get('action')} failed",
            f"The automatic {p.get('action')} of {s} ({p.get('why')}) failed: {p.get('error')}",
        )
    if kind == notices.CANCELLED:
        return f"{s} keeps running", f"{s} will not {p.get('action')} after all: {p.get('why')}."
    if kind == notices.PLAYERS:
        parts = [f"{', '.join(p['joined'])} joined"] if p.get("joined") else []
        parts += [f"{', '.join(p['left'])} left"] if p.get("left") else []
        return f"{s}: players", f"{s}: {'; '.join(parts)} ({p.get('online')} online)"
    if kind in (notices.CRASHED, notices.HUNG):
        return _crash(n)
    if kind == notices.RECOVERED:
        return f"{s} is back", f"{s} is back (restart {p.get('attempt')}): {p.get('connect')}"
    if kind == notices.GAVE_UP:
        why = f": {p['error']}" if p.get("error") else ""
        return f"{s} stays down", f"{s} stays down after {p.get('attempts')} failed restarts{why}"
    return _plain(event)


def _crash(n: notices.Notice) -> tuple[str, str]:
    c = n.crash()
    if c.restart_in is not None:
        then = (
            f"Restarting in {format_span(timedelta(seconds=c.restart_in))} "
            f"(try {c.attempt} of {c.max_attempts})."
        )
    elif c.max_attempts and c.attempt > c.max_attempts:
        then = f"Not restarting: it failed again after {c.max_attempts} restarts."
    else:
        then = "Not restarting (restarts are off)."
    if c.hang is not None:
        title = f"{c.server} hung"
        text = f"{c.server} is running but stopped answering {c.hang.probe} "
        text += f"({c.hang.checks} checks in a row). {then}"
    else:
        code = "" if c.exit_code is None else f" (exit code {c.exit_code})"
        title, text = f"{c.server} crashed", f"{c.server} stopped unexpectedly{code}. {then}"
    if c.logs:
        text += "\nLast log lines:\n" + "\n".join(line[:300] for line in c.logs[-LOG_LINES:])
    return title, text


@dataclass(frozen=True)
class Request:
    body: bytes
    headers: dict[str, str]


def _discord_escape(text: str) -> str:
    """Outside text (player names, log lines) shown as typed: no markdown, no mentions."""
    text = re.sub(r"([\\*_~`|\[\]])", r"\\\1", text)
    text = re.sub(r"^(\s*)([>#-])", r"\1\\\2", text, flags=re.MULTILINE)
    return text.replace("@", "@\u200b").replace("<", "<\u200b")


def _header(value: str) -> str:
    """A header value as ntfy reads it: ASCII as is, anything else RFC 2047-encoded."""
    value = " ".join(value.split())
    if value.isascii():
        return value
    return Header(value, "utf-8").encode(maxlinelen=10_000)


NTFY_TAGS = {
    notices.CRASHED: "rotating_light", notices.HUNG: "ice_cube", notices.GAVE_UP: "stop_sign",
    notices.SCHEDULE_FAILED: "x", notices.WARNING: "warning", notices.RECOVERED: "repeat",
    notices.PLAYERS: "wave", notices.CANCELLED: "white_check_mark",
}  # fmt: skip
URGENT = frozenset({notices.CRASHED, notices.HUNG, notices.GAVE_UP, notices.SCHEDULE_FAILED})


def render(kind: str, event: Event, *, secret: bytes | None = None, instance: str = "") -> Request:
    """The request body and headers for one target shape (the event already masked)."""
    title, text = describe(event)
    headers = {"User-Agent": USER_AGENT}
    if kind == "discord":
        content = clip(_discord_escape(text), DISCORD_CONTENT_MAX)
        message = {"content": content, "allowed_mentions": {"parse": []}}
        headers["Content-Type"] = "application/json"
        return Request(json.dumps(message).encode(), headers)
    if kind == "slack":
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        headers["Content-Type"] = "application/json"
        return Request(json.dumps({"text": clip(escaped, TEXT_MAX)}).encode(), headers)
    if kind == "ntfy":
        raw = text.encode()
        if len(raw) > NTFY_BODY_MAX:
            raw = raw[: NTFY_BODY_MAX - 3].decode(errors="ignore").encode() + "…".encode()
        ready = notices.Notice(event).ready_address() is not None
        tag = "white_check_mark" if ready else NTFY_TAGS.get(event.kind, "")
        tags = ",".join(t for t in (tag, "peon", event.kind) if t)
        headers |= {"Title": _header(title), "Tags": tags, "Content-Type": "text/plain"}
        if event.kind in URGENT or not event.ok:
            headers["Priority"] = "high"
        return Request(raw, headers)
    document = {
        "id": event.id, "at": event.at.isoformat(), "kind": event.kind, "server": event.server,
        "actor": event.actor, "ok": event.ok, "detail": event.detail, "payload": event.payload,
        "text": clip(text, TEXT_MAX),
    }  # fmt: skip
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str).encode()
    headers |= {"Content-Type": "application/json", "X-Peon-Event": str(event.id)}
    if instance:
        headers["X-Peon-Instance"] = instance
    if secret is not None:
        headers["X-Peon-Signature"] = "sha256=" + sign(secret, body)
    return Request(body, headers)


def sign(secret: bytes, body: bytes) -> str:
    """Hex HMAC-SHA256 of the body (what X-Peon-Signature carries after 'sha256=')."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


# --- secrets --------------------------------------------------------------------------------


def masked(value: Any, values: list[str], names: frozenset[str]) -> Any:
    """`value` with every secret value replaced, and every key that names a secret (a
    variable the plan marks secret, or password/token/...) holding only the mask."""
    if isinstance(value, str):
        for secret in values:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {
            k: MASK if (k in names or SECRET_KEY.search(str(k))) and v not in (None, "")
            else masked(v, values, names)
            for k, v in value.items()
        }  # fmt: skip
    if isinstance(value, list | tuple):
        return [masked(v, values, names) for v in value]
    return value


class Secrets:
    """The secret variables of each server, from its record and war plan."""

    def __init__(self, store: Store, warplans: WarplanLibrary | None) -> None:
        self.store, self.warplans = store, warplans

    async def of(self, server: str | None) -> tuple[list[str], frozenset[str]]:
        record = await self.store.find_server(server) if server else None
        if record is None:
            return [], frozenset()
        try:
            if self.warplans is None:
                raise WarplanNotFound(record.warplan)
            plan = self.warplans.get(record.warplan)
            names = frozenset(v.name for v in plan.variables if v.secret)
        except WarplanNotFound:
            names = frozenset(record.variables)  # unknown plan: any of them may be secret
        values = [v for k, v in record.variables.items() if k in names and len(v) >= 3]
        return sorted(values, key=len, reverse=True), names

    async def mask(self, event: Event) -> Event:
        values, names = await self.of(event.server)
        return replace(
            event,
            detail=masked(event.detail, values, names),
            payload=masked(event.payload, values, names),
        )


# --- delivery -------------------------------------------------------------------------------


class DeliveryError(Transient):
    """A delivery that failed in a way that may pass later (retried by the feed). Its text
    never holds the URL or a secret."""


@dataclass(frozen=True)
class TargetStatus:
    name: str
    kind: str
    where: str
    delivered: int
    dropped: int
    failures: int  # failed attempts in a row
    last_error: str | None
    failing_since: datetime | None

    @property
    def failing(self) -> bool:
        return self.failures >= FAILING_AFTER


def retry_after(headers: Any, body: bytes) -> float:
    """Seconds a 429 asks to wait: the Retry-After header (seconds or an HTTP date), else a
    JSON body's retry_after (Discord's), else 1."""
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, (when - datetime.now(UTC)).total_seconds())
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return max(0.0, float(json.loads(body)["retry_after"]))
    return 1.0


class Target:
    """One configured webhook: what it wants, how it is sent, how it fares."""

    def __init__(
        self,
        settings: WebhookSettings,
        session: Callable[[], aiohttp.ClientSession],
        secrets: Secrets,
        instance: str,
    ) -> None:
        self.settings, self._session, self.secrets, self.instance = (
            settings, session, secrets, instance,
        )  # fmt: skip
        if settings.url is None:  # load_settings fills it from url_env
            raise ValueError(f"webhook {settings.name} has no URL")
        self.url = settings.url.get_secret_value()
        self.key = settings.secret.get_secret_value().encode() if settings.secret else None
        wanted = set(settings.events)
        self.ready, self.notices = "ready" in wanted, "notices" in wanted
        self.explicit = frozenset(wanted - {"ready", "notices"})
        self.delivered = self.dropped = self.failures = 0
        self.last_error: str | None = None
        self.failing_since: datetime | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def consumer(self) -> str:
        return f"webhook:{self.name}"

    def feed_kinds(self) -> frozenset[str] | None:
        """The kinds its feed hands over (None: every kind)."""
        if "*" in self.explicit:
            return None
        kinds = set(self.explicit)
        if self.notices:
            kinds |= notices.NOTICE_KINDS
        if self.ready:
            kinds |= notices.READY_KINDS
        return frozenset(kinds)

    def wants(self, event: Event) -> bool:
        if self.settings.servers and event.server not in self.settings.servers:
            return False
        if "*" in self.explicit or event.kind in self.explicit:
            return True
        if self.notices and event.kind in notices.NOTICE_KINDS:
            return True
        return self.ready and notices.Notice(event).ready_address() is not None

    def status(self) -> TargetStatus:
        s = self.settings
        return TargetStatus(
            s.name, s.kind, where(self.url), self.delivered, self.dropped, self.failures,
            self.last_error, self.failing_since,
        )  # fmt: skip

    def _scrub(self, text: str) -> str:
        """An error as it may be logged and shown: no URL, no token, no key, one line."""
        parts = urlsplit(self.url)
        for secret in (self.url, parts.path, parts.query, parts.password or ""):
            if len(secret) > 1:
                text = text.replace(secret, "/…")
        if self.key:
            text = text.replace(self.key.decode(errors="ignore"), MASK)
        return clip(" ".join(text.split()), 300)

    def _failed(self, error: str) -> str:
        self.failures += 1
        self.last_error = error
        if self.failing_since is None:
            self.failing_since = datetime.now(UTC)
        return error

    async def deliver(self, event: Event) -> None:
        """Send one event (the feed's handler). Raises DeliveryError for what may pass when
        tried again; drops, logged and recorded, what will not."""
        if not self.wants(event):
            return
        request = render(
            self.settings.kind, await self.secrets.mask(event), secret=self.key,
            instance=self.instance,
        )  # fmt: skip
        for _ in range(RATE_LIMIT_TRIES):
            status, headers, body = await self._post(request)
            if 200 <= status < 300:
                self.delivered += 1
                self.failures, self.last_error, self.failing_since = 0, None, None
                return
            reason = self._scrub(body.decode(errors="replace"))
            error = self._failed(f"HTTP {status}" + (f": {reason}" if reason else ""))
            if status == 429:
                wait = retry_after(headers, body)
                if wait > RETRY_AFTER_MAX:
                    raise DeliveryError(f"{error} (asked to wait {wait:.0f} s)")
                log.info("webhook %s: rate limited, waiting %.1f s", self.name, wait)
                await asyncio.sleep(wait)
                continue
            if status >= 500 or status in RETRYABLE:
                raise DeliveryError(error)
            # Another 4xx or a redirect: asking again gets the same answer.
            self.dropped += 1
            log.warning("webhook %s: event #%s dropped: %s", self.name, event.id, error)
            return
        raise DeliveryError(f"{self.last_error} ({RATE_LIMIT_TRIES} times in a row)")

    async def _post(self, request: Request) -> tuple[int, Any, bytes]:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        try:
            async with self._session().post(
                self.url, data=request.body, headers=request.headers, timeout=timeout,
                allow_redirects=False,
            ) as response:  # fmt: skip
                body = await response.content.read(2048)
                return response.status, response.headers, body
        except TimeoutError:
            error = f"no answer within {self.settings.timeout:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            error = self._scrub(f"{type(e).__name__}: {e}")
        raise DeliveryError(self._failed(f"{where(self.url)} {error}"))


class Webhooks:
    """Every configured target, each an EventFeed of its own; started by the bot."""

    def __init__(
        self,
        targets: Iterable[WebhookSettings],
        store: Store,
        warplans: WarplanLibrary | None = None,
        *,
        instance: str = "",
    ) -> None:
        self.store, self.instance = store, instance
        self.secrets = Secrets(store, warplans)
        self.settings = list(targets)
        self.targets: dict[str, Target] = {}
        self.feeds: dict[str, EventFeed] = {}
        self._http: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def start(self) -> None:
        for settings in self.settings:
            await self._start(settings)

    async def _start(self, settings: WebhookSettings) -> None:
        target = Target(settings, self.session, self.secrets, self.instance)
        feed = EventFeed(self.store, target.consumer, target.deliver, kinds=target.feed_kinds())
        await feed.start()
        self.targets[target.name], self.feeds[target.name] = target, feed

    async def reload(self, targets: Iterable[WebhookSettings]) -> list[str]:
        """Apply a new list: changed and removed targets are stopped, new ones started (at
        their stored position: a target renamed is a new consumer). Returns what changed."""
        fresh = {t.name: t for t in targets}
        changed = []
        for name in list(self.targets):
            if fresh.get(name) != self.targets[name].settings:
                await self.feeds.pop(name).close()
                del self.targets[name]
                changed.append(name)
        for name, settings in fresh.items():
            if name not in self.targets:
                await self._start(settings)
                if name not in changed:
                    changed.append(name)
        self.settings = list(fresh.values())
        return sorted(changed)

    def status(self) -> list[TargetStatus]:
        return [t.status() for t in self.targets.values()]

    async def drain(self) -> None:
        """Deliver what is committed so far to every target (tests, shutdown)."""
        for feed in self.feeds.values():
            await feed.drain()

    async def close(self) -> None:
        for feed in self.feeds.values():
            await feed.close()
        self.feeds.clear()
        self.targets.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None
