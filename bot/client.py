"""The Discord client: the only Discord code in bot/ (the cogs hold the commands).

`PeonTree.on_error` is the one place errors become messages; `PeonBot.setup_hook` checks the
engine and the database, reconciles, loads the cogs and syncs commands before the gateway
connects.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import platform
import re
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot import __version__, notices
from bot.api import ApiServer
from bot.app import Services
from bot.automation import Automation, Warning
from bot.board import UNKNOWN, Board, BoardBuilder
from bot.errors import PeonError
from bot.events import Event, EventFeed, Transient
from bot.logs import reconfigure_logging, redact_in_logs
from bot.models import BoardMessage
from bot.notices import EventNotifier, Notice
from bot.permissions import Level, Member, check, level_of
from bot.reloading import Reloader, ReloadReport
from bot.scheduler import Scheduler
from bot.schedules import format_span
from bot.settings import DiscordSettings, GuildSettings, Settings, load_settings
from bot.watch import Crash, CrashWatch
from bot.webhooks import Webhooks

log = logging.getLogger(__name__)

APOLOGY = (
    "Sorry, something went wrong inside PEON. Nothing more is shown here; an admin can find "
    "the details in PEON's log."
)
ERROR_COLOUR = discord.Colour.red()
LOOP_PROBE_INTERVAL = 0.05  # seconds between event-loop lateness probes
LOOP_STALL_WARNING = 0.1  # a stall this long delays interactions noticeably: log it


# Discord's message limits (discord-api-docs, resources/message "Embed Limits"; content 2000).
CONTENT_MAX = 2000
TITLE_MAX, DESCRIPTION_MAX, FIELDS_MAX = 256, 4096, 25
FIELD_NAME_MAX, FIELD_VALUE_MAX, FOOTER_MAX, AUTHOR_MAX = 256, 1024, 2048, 256
EMBED_TOTAL_MAX = 6000
LOG_EMBED_CHARS = 3900  # log lines in an embed description, with room for the fences


def escape(text: str) -> str:
    """Text from outside (player names, log lines) shown as typed: no markdown, no pings."""
    return unmention(str(discord.utils.escape_markdown(text)))


def unmention(text: str) -> str:
    """Mentions made inert with a zero-width space (any id length, unlike discord.py's
    escape_mentions); allowed_mentions already keeps them from pinging, this keeps them from
    rendering as mentions."""
    return (
        text.replace("<@", "<\u200b@")
        .replace("<#", "<\u200b#")
        .replace("@everyone", "@\u200beveryone")
        .replace("@here", "@\u200bhere")
    )


def code_block(lines: list[str], limit: int) -> str:
    """Lines as a code block of at most `limit` characters in all, the newest kept. Fences
    inside are broken up first, so the cut can never leave the block open."""
    text = "\n".join(lines).replace("```", "`\u200b``")
    text = unmention(text)
    room = limit - len("```\n\n```")
    if len(text) > room:
        text = "…" + text[-(room - 1) :]
    return f"```\n{text or '(no output yet)'}\n```"


def clip(text: str, limit: int) -> str:
    """Text cut to `limit` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Embed(discord.Embed):
    """Every embed PEON sends: discord.py serialises embeds with to_dict(), so fitting them
    there caps each part to Discord's limits whatever data (players, logs, plans) they were
    built from, instead of a 400 and an apology."""

    def to_dict(self) -> Any:
        return fit_embed_dict(dict(super().to_dict()))


def fit_embed_dict(d: dict[str, Any]) -> dict[str, Any]:
    """Cap each part, then the total: the description is shortened first, then fields are
    dropped from the end (the last kept one says how many more there were)."""
    for key, limit in (("title", TITLE_MAX), ("description", DESCRIPTION_MAX)):
        if key in d:
            d[key] = clip(str(d[key]), limit)
    for key, sub, limit in (("footer", "text", FOOTER_MAX), ("author", "name", AUTHOR_MAX)):
        if key in d and sub in d[key]:
            d[key] = {**d[key], sub: clip(str(d[key][sub]), limit)}
    fields = [
        {**f, "name": clip(str(f["name"]), FIELD_NAME_MAX),
         "value": clip(str(f["value"]), FIELD_VALUE_MAX)}
        for f in d.get("fields", [])
    ][:FIELDS_MAX]  # fmt: skip

    def total() -> int:
        parts = [
            d.get("title", ""),
            d.get("description", ""),
            d.get("footer", {}).get("text", ""),
            d.get("author", {}).get("name", ""),
        ]
        return sum(map(len, parts)) + sum(len(f["name"]) + len(f["value"]) for f in fields)

    over = total() - EMBED_TOTAL_MAX
    if over > 0 and d.get("description"):
        keep = max(len(d["description"]) - over, min(len(d["description"]), 200))
        d["description"] = clip(d["description"], keep)
    dropped = 0
    while total() > EMBED_TOTAL_MAX and fields:
        fields.pop()
        dropped += 1
    if dropped and fields:
        last = fields[-1]
        note = f"\n… and {dropped} more not shown"
        fields[-1] = {**last, "value": clip(last["value"], FIELD_VALUE_MAX - len(note)) + note}
        while total() > EMBED_TOTAL_MAX and len(fields) > 1:
            fields.pop(-2)
    if "fields" in d or fields:
        d["fields"] = fields
    return d


class StartupError(Exception):
    """The bot cannot start; str() is one sentence for the admin's terminal."""


def point_at(settings: DiscordSettings) -> None:
    """Send REST and gateway traffic to a Discord-compatible server (tests, self-hosted)."""
    if settings.api_base:
        discord.http.Route.BASE = settings.api_base.rstrip("/")
    if settings.gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


def error_text(error: BaseException) -> str | None:
    """What the user is told; None for an unexpected error (logged, answered with APOLOGY).

    Order: a domain error (its own sentence), then a failed check, then anything else.
    """
    original = getattr(error, "original", error)
    if isinstance(original, PeonError):
        return str(original)
    if isinstance(original, app_commands.CheckFailure):
        return "You don't have permission to do that here."
    return None


async def render_error(interaction: discord.Interaction[Any], error: BaseException) -> None:
    """Answer the interaction with the error: ephemeral when nothing was sent yet, else the
    deferred response is edited so the progress message ends with the reason."""
    text = error_text(error)
    if text is None:
        log.error("unexpected error in %s", _describe(interaction), exc_info=error)
        text = APOLOGY
    embed = Embed(description=text, colour=ERROR_COLOUR)
    progress = interaction.extras.get("peon_progress")
    if progress is not None:  # it knows whether the token still works, and where to write
        await progress.finish(embed)
        return
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(embed=embed, ephemeral=True)
        elif interaction.response.type == discord.InteractionResponseType.deferred_message_update:
            # A button answered with a deferred update: its message (a public warning, a
            # panel) stays as it is; only the clicker hears of the failure.
            await interaction.followup.send(embed=embed, ephemeral=True)
        else:
            await interaction.edit_original_response(content=None, embed=embed, view=None)
    except discord.HTTPException:
        log.warning("could not deliver an error to %s", _describe(interaction), exc_info=True)


def _describe(interaction: discord.Interaction[Any]) -> str:
    command = interaction.command.qualified_name if interaction.command else "component"
    return f"{command} by user {interaction.user.id}"


class NotConfigured(PeonError):
    def __init__(self) -> None:
        super().__init__(
            "PEON is not set up for this Discord server; an admin must add its id under "
            "discord.guilds in config/peon.yaml."
        )


class Access:
    """Permission checks against the guild settings in force (replaced on /peon reload)."""

    def __init__(self, settings: DiscordSettings) -> None:
        self.settings = settings

    def guild(self, interaction: discord.Interaction[Any]) -> GuildSettings:
        guild = self.settings.guilds.get(interaction.guild_id or 0)
        if guild is None:
            raise NotConfigured()
        return guild

    @staticmethod
    def member(interaction: discord.Interaction[Any]) -> Member:
        user = interaction.user
        roles = getattr(user, "roles", [])
        perms = getattr(user, "guild_permissions", None)
        # Member.roles only lists roles already in the guild cache (cold right after a
        # start); the ids in the interaction's own member payload are always there.
        raw_ids = {int(r) for r in getattr(user, "_roles", ())}
        return Member(
            role_ids=frozenset({r.id for r in roles} | raw_ids),
            role_names=frozenset({"@everyone", *(r.name for r in roles)}),
            discord_admin=bool(perms and perms.administrator),
        )

    def check(
        self, interaction: discord.Interaction[Any], action: str, server: str | None = None
    ) -> None:
        check(self.guild(interaction), self.member(interaction), action, server)

    def level(self, interaction: discord.Interaction[Any], server: str | None = None) -> Level:
        return level_of(
            self.settings.guilds.get(interaction.guild_id or 0), self.member(interaction), server
        )


class PeonTree(app_commands.CommandTree["PeonBot"]):
    async def on_error(
        self, interaction: discord.Interaction[PeonBot], error: app_commands.AppCommandError
    ) -> None:
        await render_error(interaction, error)


_ACTOR = re.compile(r"\bdiscord:(\d+)")
ACTION_ICONS = {"stop": "⏹️", "restart": "🔄", "start": "▶️", "console": "⌨️"}


def mention_actors(text: str) -> str:
    """'timer set by discord:42' -> 'timer set by <@42>' (core services name actors so)."""
    return _ACTOR.sub(r"<@\1>", text)


def timestamp(when: Any, style: str = "R") -> str:
    """Discord renders <t:…> in each reader's own time zone."""
    return f"<t:{int(when.timestamp())}:{style}>"


WarningView = Callable[[str, timedelta, datetime], discord.ui.View]


class DiscordNotifier:
    """Posts notices in each configured guild's notification channel (or the server's own,
    `server_channels`): a consumer of the event stream (bot/notices.py), so what the core,
    the CLI or another process recorded reaches people without them knowing Discord."""

    def __init__(self, bot: PeonBot) -> None:
        self.bot = bot
        self.warning_view: WarningView | None = None  # set by the schedules cog
        self._event: Event | None = None  # the event being delivered: its messages' nonce

    async def deliver(self, event: Event) -> None:
        """Render one event as its notice. Each message carries a nonce made of the event and
        the channel, which Discord enforces: an event delivered again after a restart (the
        position is saved after delivery) returns the message already posted."""
        notice = Notice(event)
        self._event = event
        try:
            if (connect := notice.ready_address()) is not None:
                await self.server_ready(notice.server, connect)
            elif event.kind == notices.WARNING:
                await self.warn(notice.warning())
            elif event.kind == notices.SCHEDULED:
                p = notice.p
                await self.acted(notice.server, p["action"], p["why"], p.get("connect"))
            elif event.kind == notices.SCHEDULE_FAILED:
                p = notice.p
                await self.failed(notice.server, p["action"], p["why"], p["error"])
            elif event.kind == notices.CANCELLED:
                await self.cancelled(notice.server, notice.p["action"], notice.p["why"])
            elif event.kind == notices.PLAYERS:
                p = notice.p
                await self.players(notice.server, p["joined"], p["left"], p["online"])
            elif event.kind in (notices.CRASHED, notices.HUNG):
                await self.crashed(notice.crash())
            elif event.kind == notices.RECOVERED:
                await self.recovered(notice.server, notice.p["attempt"], notice.p["connect"])
            elif event.kind == notices.GAVE_UP:
                await self.gave_up(notice.server, notice.p["attempts"], notice.p.get("error"))
            elif event.kind in notices.UPDATE_KINDS:
                await self.update_notice(notice)
            elif event.kind == notices.OFFSITE:
                mark = "📦" if event.ok else "⚠️"
                await self.announce(f"{mark} **{notice.server}**: {event.detail}")
        finally:
            self._event = None

    def _nonce(self, channel: int) -> str | None:
        if self._event is None:
            return None
        key = f"{self.bot.settings.instance_id}:{self._event.id}:{channel}"
        # Discord takes nonces of up to 25 characters.
        return base64.b32encode(hashlib.sha256(key.encode()).digest()).decode()[:25]

    async def announce(
        self,
        text: str,
        *,
        embed: discord.Embed | None = None,
        view: discord.ui.View | None = None,
        mention: bool = False,
        server: str | None = None,
    ) -> list[discord.Message]:
        """Post in each guild's channel for `server` (default: the event's server)."""
        sent = []
        retry: Exception | None = None
        if server is None and self._event is not None:
            server = self._event.server
        for gid, guild in self.bot.discord_settings.guilds.items():
            channel_id = guild.channel_for(server)
            if channel_id is None:
                continue
            content = text
            # Nothing pings but the role the admin chose for notices, whatever names or log
            # text the message holds.
            allowed = discord.AllowedMentions.none()
            if mention and guild.mention_role is not None:
                content = f"<@&{guild.mention_role}> {text}"
                allowed = discord.AllowedMentions(
                    everyone=False, users=False, roles=[discord.Object(guild.mention_role)]
                )
            try:
                channel = self.bot.get_channel(channel_id) or (
                    await self.bot.fetch_channel(channel_id)
                )
                if isinstance(channel, discord.abc.Messageable):
                    kwargs: dict[str, Any] = {
                        "content": clip(content, CONTENT_MAX),
                        "allowed_mentions": allowed,
                    }
                    if embed is not None:
                        kwargs["embed"] = embed
                    if view is not None:
                        kwargs["view"] = view
                    if (nonce := self._nonce(channel_id)) is not None:
                        kwargs["nonce"] = nonce
                    sent.append(await channel.send(**kwargs))
            except discord.HTTPException as e:
                log.warning(
                    "cannot post in channel %s of guild %s",
                    channel_id,
                    gid,
                    exc_info=True,
                )
                if e.status >= 500:
                    retry = e  # Discord's trouble, not ours: the event is delivered again
            except (OSError, aiohttp.ClientError) as e:
                log.warning("cannot reach Discord to post in guild %s: %s", gid, e)
                retry = e
        if retry is not None:
            # Every guild was tried; a retry re-sends with the same nonces, so the guilds
            # that got it already get the same message back instead of a second one.
            raise Transient(f"Discord did not take the notice: {retry}") from retry
        return sent

    async def server_ready(self, server: str, connect: str) -> None:
        await self.announce(f"**{server}** is ready to join: `{connect}`")

    # --- the automation Notifier ------------------------------------------------------------

    async def warn(self, warning: Warning) -> None:
        verb = {"stop": "stops", "update": "restarts to update"}.get(warning.action, "restarts")
        local = warning.at.astimezone(warning.zone)
        text = (
            f"⚠️ **{warning.server}** {verb} in {format_span(warning.left)} "
            f"(at {local:%H:%M} {warning.zone.key}, {timestamp(warning.at)}): "
            f"{mention_actors(warning.why)}."
        )
        view = (
            self.warning_view(warning.server, warning.keep_for, warning.at)
            if self.warning_view
            else None
        )
        await self.announce(text, view=view, mention=True)

    async def acted(self, server: str, action: str, why: str, connect: str | None) -> None:
        done = {"stop": "stopped", "restart": "restarted", "start": "started"}.get(action, action)
        text = f"{ACTION_ICONS.get(action, '')} **{server}** {done}: {mention_actors(why)}."
        if connect:
            text += f" Ready to join: `{connect}`"
        await self.announce(text)

    async def failed(self, server: str, action: str, why: str, error: str) -> None:
        await self.announce(
            f"❌ The automatic {action} of **{server}** ({mention_actors(why)}) failed: {error}"
        )

    async def cancelled(self, server: str, action: str, why: str) -> None:
        await self.announce(f"✅ **{server}** will not {action} after all: {why}.")

    async def players(self, server: str, joined: list[str], left: list[str], online: int) -> None:
        parts = [f"{', '.join(map(escape, joined))} joined"] if joined else []
        parts += [f"{', '.join(map(escape, left))} left"] if left else []
        await self.announce(f"👋 **{server}**: {'; '.join(parts)} ({online} online)")

    async def update_notice(self, notice: Notice) -> None:
        """An update found by a check (once per new image), waiting for players to leave,
        done or skipped."""
        kind, p, server = notice.event.kind, notice.p, notice.server
        why = mention_actors(str(p.get("why", "")))
        if kind == notices.UPDATE_AVAILABLE:
            if not p.get("new", True):
                return  # this image was announced already; a cron checks again and again
            text = (
                f"🆕 **{server}** has an update: its registry has a new `{clip(p['image'], 200)}`."
                f" Update with `/server update name:{server}` (`when:empty` waits for the "
                "players to leave)."
            )
        elif kind == notices.UPDATE_WAITING:
            online = p.get("online")
            on = f"{online} playing" if online is not None else "players could not be counted"
            until = datetime.fromisoformat(str(p["until"]))
            then = (
                "the update is skipped"
                if p.get("when_busy") == "skip"
                else "it is warned and updated anyway"
            )
            text = (
                f"⏳ **{server}** updates as soon as nobody plays ({on}): {why}. If players "
                f"are still on {timestamp(until)}, {then}."
            )
        elif kind == notices.UPDATE_DONE:
            what = "a new image" if p.get("changed") else "the same image (it was up to date)"
            again = " It is running again." if p.get("restarted") else ""
            text = f"⬆️ **{server}** was updated to {what}: {why}.{again}"
        else:
            text = f"⏭️ The update of **{server}** was skipped: {p.get('reason')} ({why})."
        await self.announce(text)

    # --- the crash watch's CrashNotifier ----------------------------------------------------

    async def crashed(self, crash: Crash) -> None:
        code = "" if crash.exit_code is None else f" (exit code {crash.exit_code})"
        hang = crash.hang
        if crash.restart_in is not None:
            then = (
                f"Restarting in {format_span(timedelta(seconds=crash.restart_in))} "
                f"(try {crash.attempt} of {crash.max_attempts})."
            )
        elif crash.max_attempts and crash.attempt > crash.max_attempts:
            again = "hung" if hang else "crashed"
            then = f"Not restarting: it {again} again after {crash.max_attempts} restarts."
            if hang:
                then += " Stopping it."
        elif hang:
            then = "Restarting is off: it is left running for you to look at."
        else:
            then = "Restarting crashed servers is off; start it when it is fixed."
        if hang:
            text = (
                f"🧊 **{crash.server}** is running but stopped answering {hang.probe} "
                f"({hang.checks} checks in a row). {then}"
            )
        else:
            text = f"💥 **{crash.server}** stopped unexpectedly{code}. {then}"
        embed = None
        if crash.logs:
            block = code_block([line[:300] for line in crash.logs], LOG_EMBED_CHARS)
            embed = Embed(title="Last log lines", description=block)
        await self.announce(text, embed=embed, mention=True)

    async def recovered(self, server: str, attempt: int, connect: str) -> None:
        await self.announce(f"🔁 **{server}** is back (restart {attempt}): `{connect}`")

    async def gave_up(self, server: str, attempts: int, error: str | None) -> None:
        why = f": {error}" if error else ""
        await self.announce(
            f"🛑 **{server}** stays down after {attempts} failed restarts{why}", mention=True
        )


BOARD_NAMES = 10  # player names shown per server on the status board; the rest are counted
BOARD_BUTTONS = 25  # Discord: 5 rows of 5 buttons
BOARD_STATES = {
    "running": "🟢 Running", "exited": "⚪ Stopped", "created": "⚪ Stopped",
    "missing": "🟠 Container missing (a start recreates it)", "start": "⏳ Starting…",
    "stop": "⏳ Stopping…", "restart": "⏳ Restarting…", "update": "⏳ Updating…",
    "create": "⏳ Being created…", "delete": "⏳ Being deleted…", "backup": "⏳ Backing up…",
    "restore": "⏳ Restoring…",
}  # fmt: skip
StartButton = Callable[[str], discord.ui.Item[Any]]


class BoardChannelError(PeonError):
    def __init__(self, channel_id: int) -> None:
        super().__init__(
            f"PEON cannot post in <#{channel_id}>; it needs View Channel, Send Messages and "
            "Embed Links there."
        )


def board_embed(board: Board) -> discord.Embed:
    """The board's message: a field per server. Times are Discord timestamps, so an unchanged
    board renders the same whenever it is built."""
    embed = Embed(title="Game servers", colour=discord.Colour.blurple())
    if not board.rows:
        embed.description = "No servers yet. An admin can create one with `/server create`."
    for row in board.rows:
        if row.state == UNKNOWN:
            lines = [f"❔ Unknown: its Docker host {row.host} does not answer"]
        else:
            state = BOARD_STATES.get(row.state, f"🟠 {row.state}")
            lines = [state + (f" · started {timestamp(row.since)}" if row.since else "")]
        if row.addresses:
            lines.append(" · ".join(f"`{a.split()[0]}` {a.split()[1]}" for a in row.addresses))
        if row.players is not None:
            p = row.players
            total = f"{p.online}/{p.max}" if p.max is not None else str(p.online)
            names = [escape(n) for n in p.names[:BOARD_NAMES]]
            if len(p.names) > BOARD_NAMES:
                names.append(f"and {len(p.names) - BOARD_NAMES} more")
            lines.append(f"👥 {total} playing" + (f": {', '.join(names)}" if names else ""))
        if row.next_stop is not None:
            action, at = row.next_stop
            verb = {"stop": "⏹️ Stops", "restart": "🔄 Restarts"}.get(action, f"⏱️ {action}")
            lines.append(f"{verb} {timestamp(at)}")
        if board.hosts > 1:
            lines.append(f"on {row.host}")
        embed.add_field(name=f"{row.name} · {row.title}", value="\n".join(lines), inline=False)
    embed.set_footer(text=board.summary())
    return embed


class BoardKeeper:
    """Keeps each guild's status board message, and the bot's presence, showing the board.

    A consumer of the event stream (every event makes it look again) and of a timer (player
    counts change without events). It sends only what changed: a board is edited when its
    rendered payload differs from the last one sent (a digest kept in the database, so a
    restart edits nothing that did not change), at most once every `interval` seconds per
    board (changes in between are shown together). A board deleted in Discord is posted again.
    """

    def __init__(self, bot: PeonBot, builder: BoardBuilder) -> None:
        self.bot, self.builder, self.store = bot, builder, bot.services.store
        self.start_button: StartButton | None = None  # set by the servers cog
        self.boards: dict[int, BoardMessage] = {}
        self.board: Board | None = None  # the last one built
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one update, placement or removal at a time
        self._edited: dict[int, float] = {}  # guild -> loop time of its board's last send
        self._later: asyncio.TimerHandle | None = None
        self._failed: dict[int, str] = {}  # guild -> digest whose send failed (logged once)
        self._presence: str | None = None  # what the gateway was last told
        self._task: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        return self.bot.discord_settings.board_interval

    async def start(self) -> None:
        """Load the boards and check their messages still exist (a board deleted while PEON
        was down is posted again), then keep them up to date."""
        for b in await self.store.list_boards():
            self.boards[b.guild_id] = b
            if b.message_id is None:
                continue
            try:
                channel = self.bot.get_partial_messageable(b.channel_id)
                await channel.fetch_message(b.message_id)
            except discord.NotFound:
                self.boards[b.guild_id] = BoardMessage(b.guild_id, b.channel_id, None, "")
            except (discord.HTTPException, OSError, aiohttp.ClientError) as e:
                log.warning("cannot look up the status board of guild %s: %s", b.guild_id, e)
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="status-board")

    async def close(self) -> None:
        if self._later is not None:
            self._later.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def poke(self) -> None:
        """Something may have changed: look again (now, or when the interval allows)."""
        self._wake.set()

    async def on_event(self, event: Event) -> None:
        self.poke()

    def reconnected(self) -> None:
        """A new gateway session starts with no presence: send it again."""
        self._presence = None
        self.poke()

    def deleted(self, message_id: int) -> None:
        """A message was deleted in Discord: if it was a board, post it again."""
        for gid, b in self.boards.items():
            if b.message_id == message_id:
                self.boards[gid] = BoardMessage(gid, b.channel_id, None, "")
                self.poke()

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event is set, and close() then waits for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.bot.discord_settings.board_refresh):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.update()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("status board: update failed")

    async def update(self) -> None:
        board = await self.builder.build()
        async with self._lock:
            self.board = board
            for gid in list(self.boards):
                if gid in self.bot.discord_settings.guilds:
                    await self._show(gid, board)
        await self._set_presence(board.summary())

    def render(
        self, board: Board, guild_id: int
    ) -> tuple[discord.Embed, discord.ui.View | None, str]:
        """The board for one guild: embed, Start buttons (for stopped servers, where players
        may start them), and the digest of that payload."""
        embed = board_embed(board)
        guild = self.bot.discord_settings.guilds.get(guild_id)
        view = None
        if self.start_button is not None and guild is not None and guild.players_can_start:
            startable = [r.name for r in board.rows if r.startable][:BOARD_BUTTONS]
            if startable:
                view = discord.ui.View(timeout=None)
                for name in startable:
                    view.add_item(self.start_button(name))
        payload = {"embeds": [embed.to_dict()], "components": view.to_components() if view else []}
        text = json.dumps(payload, sort_keys=True, default=str)
        return embed, view, hashlib.sha256(text.encode()).hexdigest()

    async def _show(self, gid: int, board: Board) -> None:
        b = self.boards[gid]
        embed, view, digest = self.render(board, gid)
        if digest == b.digest and b.message_id is not None:
            return  # nothing on it changed
        loop = asyncio.get_running_loop()
        wait = self._edited.get(gid, -math.inf) + self.interval - loop.time()
        if wait > 0 and b.message_id is not None:
            if self._later is None:  # coalesce: look again once the interval allows
                self._later = loop.call_later(wait, self._retry)
            return
        channel = self.bot.get_partial_messageable(b.channel_id, guild_id=gid)
        try:
            if b.message_id is not None:
                try:
                    await channel.get_partial_message(b.message_id).edit(embed=embed, view=view)
                    message_id: int = b.message_id
                except discord.NotFound as e:
                    if e.code != 10008:  # Unknown Message: deleted, so posted again below
                        raise
                    log.warning("the status board of guild %s was deleted; posting it again", gid)
                    message_id = (await self._post(channel, embed, view)).id
            else:
                message_id = (await self._post(channel, embed, view)).id
        except (discord.HTTPException, OSError, aiohttp.ClientError) as e:
            if self._failed.get(gid) != digest:
                log.warning("cannot show the status board of guild %s in channel %s: %s",
                            gid, b.channel_id, e)  # fmt: skip
            self._failed[gid] = digest
            return
        self._failed.pop(gid, None)
        self._edited[gid] = loop.time()
        self.boards[gid] = BoardMessage(gid, b.channel_id, message_id, digest)
        await self.store.set_board(self.boards[gid])

    def _retry(self) -> None:
        self._later = None
        self.poke()

    @staticmethod
    async def _post(
        channel: discord.PartialMessageable, embed: discord.Embed, view: discord.ui.View | None
    ) -> discord.Message:
        if view is None:
            return await channel.send(embed=embed)
        return await channel.send(embed=embed, view=view)

    async def place(self, guild_id: int, channel_id: int) -> None:
        """Post the guild's board in `channel_id`; the one posted before is deleted."""
        board = await self.builder.build()
        async with self._lock:
            embed, view, digest = self.render(board, guild_id)
            channel = self.bot.get_partial_messageable(channel_id, guild_id=guild_id)
            try:
                message = await self._post(channel, embed, view)
            except discord.Forbidden as e:
                raise BoardChannelError(channel_id) from e
            old = self.boards.get(guild_id)
            self.boards[guild_id] = BoardMessage(guild_id, channel_id, message.id, digest)
            self._edited[guild_id] = asyncio.get_running_loop().time()
            await self.store.set_board(self.boards[guild_id])
            if old is not None and old.message_id is not None:
                await self._delete(old.channel_id, old.message_id)
        self.poke()  # the board used may be a little old

    async def remove(self, guild_id: int) -> bool:
        """Take the guild's board down; False when it had none."""
        async with self._lock:
            old = self.boards.pop(guild_id, None)
            await self.store.remove_board(guild_id)
            if old is not None and old.message_id is not None:
                await self._delete(old.channel_id, old.message_id)
        return old is not None

    async def _delete(self, channel_id: int, message_id: int) -> None:
        channel = self.bot.get_partial_messageable(channel_id)
        try:
            await channel.get_partial_message(message_id).delete()
        except discord.NotFound:
            pass  # deleted already
        except discord.HTTPException as e:
            log.warning("cannot delete the old status board in channel %s: %s", channel_id, e)

    async def _set_presence(self, text: str) -> None:
        """The bot's presence: the board's summary, sent when it changed (and once more after
        each new gateway session)."""
        if text == self._presence or not self.bot.is_ready():
            return
        try:
            await self.bot.change_presence(activity=discord.CustomActivity(name=text))
        except (discord.DiscordException, OSError) as e:
            log.warning("cannot set the presence: %s", e)
            return
        self._presence = text


class PeonBot(commands.Bot):
    services: Services
    settings: Settings
    notifier: DiscordNotifier

    def __init__(self, *, services: Services, guild_ready_timeout: float = 2.0) -> None:
        # PEON never joins voice channels: the missing voice libraries are not worth a warning.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),  # no privileged intents needed
            tree_cls=PeonTree,
            help_command=None,
            guild_ready_timeout=guild_ready_timeout,
            # Nothing pings unless a message says so (announce() allows the notice role).
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.services = services
        self.settings = services.settings
        self.discord_settings = services.settings.discord
        self.notifier = DiscordNotifier(self)
        self.automation: Automation | None = None
        self.crash_watch: CrashWatch | None = None
        self.feeds: list[EventFeed] = []
        self.webhooks = Webhooks(
            self.settings.webhooks, services.store, services.warplans,
            instance=self.settings.instance_id,
        )  # fmt: skip
        self.board: BoardKeeper | None = None  # the status boards and the presence
        self.engine_version = "?"
        self.max_loop_stall = 0.0  # seconds; the worst event-loop stall since start
        self._watchdog: asyncio.Task[None] | None = None
        self.access = Access(self.discord_settings)
        self.reloader = Reloader(self.settings, lambda: load_settings(Path(self.settings.source)))
        self._background: set[asyncio.Task[None]] = set()
        self.api_server: ApiServer | None = None  # the HTTP API, when api: is set

    def spawn(self, aw: Coroutine[Any, Any, None]) -> None:
        """Run a background step (a prompt's expiry); held until done, cancelled at close."""
        task = asyncio.create_task(aw)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def guild_settings(self, guild_id: int | None) -> GuildSettings | None:
        return self.discord_settings.guilds.get(guild_id) if guild_id is not None else None

    async def setup_hook(self) -> None:
        # Cogs imported here: bot/ must not depend on cogs/ at import time.
        from cogs.audit import AuditButton  # noqa: PLC0415
        from cogs.backups import BackupsCog  # noqa: PLC0415
        from cogs.common import ConfirmButton  # noqa: PLC0415
        from cogs.peon import PeonCog  # noqa: PLC0415
        from cogs.schedules import SchedulesCog, WarningButton, warning_view  # noqa: PLC0415
        from cogs.servers import PanelButton, ServersCog, board_start_button  # noqa: PLC0415
        from cogs.warplans import WarplansCog  # noqa: PLC0415

        health = await self.services.servers.host_health()
        up = [h for h in health if h.engine is not None]
        if not up and len(health) == 1:
            raise StartupError(
                f"{health[0].error} PEON needs it to run; check DOCKER_HOST or the socket."
            )
        if not up:
            detail = " ".join(h.error for h in health)
            raise StartupError(
                f"No Docker host answers: {detail} PEON needs one to run; check hosts: in the "
                "config."
            )
        for h in health:
            if h.engine is None:
                log.warning("docker host %s is unreachable at startup: %s", h.name, h.error)
        self.engine_version = up[0].engine.version if up[0].engine else "?"
        try:
            await self.services.store.schema_version()
        except Exception as e:
            raise StartupError(f"The database {self.settings.db_path} does not answer: {e}") from e
        report = await self.services.servers.reconcile("peon:startup")
        for line in report.lines():
            log.warning("reconcile: %s", line)
        for line in await self.services.backups.recover():
            log.warning("removed what an interrupted backup left: %s", line)
        # The core tells people things by appending events; this bot's notifier reads them
        # back (as would any other consumer), so notices of the CLI reach Discord too.
        events = EventNotifier(self.services.store)
        self.automation = Automation(
            servers=self.services.servers,
            backups=self.services.backups,
            updates=self.services.updates,
            store=self.services.store,
            scheduler=Scheduler(),
            settings=self.settings.automation,
            notifier=events,
        )
        self.notifier.warning_view = warning_view
        self.board = BoardKeeper(self, BoardBuilder(self.services.servers, self.automation.pending))
        self.board.start_button = board_start_button
        await self.add_cog(ServersCog(self))
        await self.add_cog(SchedulesCog(self))
        await self.add_cog(BackupsCog(self))
        await self.add_cog(WarplansCog(self))
        await self.add_cog(PeonCog(self))
        self.add_dynamic_items(PanelButton, WarningButton, ConfirmButton, AuditButton)
        await self.sync_commands()
        # After the commands: catching up may start servers and post in the channel.
        await self.automation.start()
        self.crash_watch = CrashWatch(
            servers=self.services.servers, settings=self.settings.crash, notifier=events
        )
        self.crash_watch.start()
        store = self.services.store
        self.feeds = [
            EventFeed(store, "discord-notices", self.notifier.deliver,
                      kinds=notices.NOTICE_KINDS | notices.READY_KINDS),
            EventFeed(store, "automation-replan", self._replan, kinds=notices.REPLAN_KINDS),
        ]  # fmt: skip
        # The status boards and the presence look again after every event (and on a timer).
        self.feeds.append(EventFeed(store, "status-board", self.board.on_event))
        for feed in self.feeds:
            await feed.start()
        await self.webhooks.start()  # each target a consumer of its own (bot/webhooks.py)
        await self.board.start()
        self._register_reload()
        self._watchdog = asyncio.create_task(self._watch_loop(), name="loop-watchdog")
        if self.settings.api is not None:
            # Last: every consumer runs, and the API's schedule routes go through automation.
            self.api_server = ApiServer(self.services, automation=self.automation)
            try:
                await self.api_server.start()
            except PeonError as e:  # its address taken, its TLS files unreadable
                self.api_server = None
                raise StartupError(str(e)) from None
        # Offsite copies that failed are tried again on their own schedule (never by a cog).
        self.spawn(self.services.backups.repos.keep_offsite())

    # --- /peon reload -----------------------------------------------------------------------

    def _register_reload(self) -> None:
        """Who takes which settings on a reload; any other change is reported as needing a
        restart (bot/reloading.py)."""
        services, r = self.services, self.reloader
        r.on("discord", self._reload_discord)
        r.on("log", lambda old, new: reconfigure_logging(new.log, new.secret_values()))
        r.on("shutdown_grace", lambda old, new: None)  # read when the signal comes
        r.on("backups", lambda old, new: services.backups.reconfigure(new))
        r.on(("hosts", "docker", "ports"), self._reload_hosts)
        if self.automation is not None:
            automation = self.automation
            r.on("automation", lambda old, new: automation.reconfigure(new.automation))
        if self.crash_watch is not None:
            watch = self.crash_watch
            r.on("crash", lambda old, new: watch.reconfigure(new.crash))
        r.on("webhooks", self._reload_webhooks)

    async def _reload_discord(self, old: Settings, new: Settings) -> list[str]:
        self.discord_settings = new.discord
        self.access.settings = new.discord
        if self.board is not None:
            self.board.poke()  # its Start buttons follow players_can_start
        before = (set(old.discord.guilds), old.discord.sync_global)
        if before == (set(new.discord.guilds), new.discord.sync_global):
            return []
        await self.sync_commands()
        await self._clear_unconfigured()
        return ["commands synced to the guilds configured now"]

    async def _reload_webhooks(self, old: Settings, new: Settings) -> list[str]:
        redact_in_logs(new.secret_values())  # their new URLs and keys: never logged
        return await self.webhooks.reload(new.webhooks)

    def _reload_hosts(self, old: Settings, new: Settings) -> list[str]:
        added = self.services.camps.reconfigure(new)
        if self.crash_watch is not None:
            self.crash_watch.watch_new_hosts()
        return [f"host {name} added" for name in added]

    async def reload(self) -> ReloadReport:
        """/peon reload: the config file and the war plans again. What can change while
        running is applied, the rest named as needing a restart; a broken config file changes
        nothing (ConfigError), a broken war plan keeps its last good version."""
        report = await self.reloader.reload()
        self.settings = self.services.servers.settings = report.settings
        report.warplans = await asyncio.to_thread(self.services.warplans.reload)
        return report

    async def _watch_loop(self) -> None:
        """Measure how late the event loop wakes us: a blocking call anywhere shows up here."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LOOP_PROBE_INTERVAL)
            stall = loop.time() - before - LOOP_PROBE_INTERVAL
            self.max_loop_stall = max(self.max_loop_stall, stall)
            if stall > LOOP_STALL_WARNING:
                log.warning("event loop stalled for %.0f ms", stall * 1000)

    async def close(self) -> None:
        if self.api_server is not None:
            await self.api_server.close()  # first: no new operation starts while closing
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in list(self._background):
            task.cancel()
        if self.board is not None:
            await self.board.close()
        for feed in self.feeds:
            await feed.close()
        await self.webhooks.close()
        if self.crash_watch is not None:
            await self.crash_watch.close()
        if self.automation is not None:
            await self.automation.close()
        await super().close()

    async def _replan(self, event: Event) -> None:
        """A server was started, stopped, created or removed by a member or the CLI: its
        automatic stops may have changed. (The automation's own actions replan themselves.)"""
        by_hand = event.ok and not event.actor.startswith("peon:")
        if self.automation is not None and event.server is not None and by_hand:
            await self.automation.touch(event.server)
            if self.board is not None:
                self.board.poke()  # it shows the next automatic stop

    async def sync_commands(self) -> None:
        # Global commands show in every guild; copied into a configured guild as well they
        # would show twice there. So: global only with sync_global, else per guild.
        for gid in self.discord_settings.guilds:
            guild = discord.Object(gid)
            self.tree.clear_commands(guild=guild)
            if not self.discord_settings.sync_global:
                self.tree.copy_global_to(guild=guild)
            try:
                synced = await self.tree.sync(guild=guild)
            except (discord.NotFound, discord.Forbidden) as e:
                # A wrong id or a guild the bot was not invited to must not stop the others.
                log.warning(
                    "cannot sync commands to guild %s (%s): is the bot invited there "
                    "with the applications.commands scope?",
                    gid,
                    e.text or e.status,
                )
                continue
            log.info("synced %d commands to guild %s", len(synced), gid)
        if self.discord_settings.sync_global:
            await self.tree.sync()
        elif self.application_id is not None and await self.tree.fetch_commands():
            # Left from a run with sync_global: they would show beside the guild's own.
            await self.http.bulk_upsert_global_commands(self.application_id, payload=[])
            log.info("removed PEON's global commands (sync_global is off)")

    async def on_ready(self) -> None:
        log.info(
            "logged in as %s (%s) in %d guilds",
            self.user,
            getattr(self.user, "id", "?"),
            len(self.guilds),
        )
        if self.board is not None:
            self.board.reconnected()  # a new gateway session: the presence is sent again
        await self._clear_unconfigured()
        for line in self.notice_problems():
            log.warning("%s", line)

    async def _clear_unconfigured(self) -> None:
        """A guild removed from the config keeps the commands synced to it before, which
        then answer "not set up": remove them (the guilds are known once connected)."""
        for guild in self.guilds:
            if guild.id in self.discord_settings.guilds:
                continue
            try:
                if await self.tree.fetch_commands(guild=guild):
                    self.tree.clear_commands(guild=guild)
                    await self.tree.sync(guild=guild)
                    log.info("removed PEON's commands from unconfigured guild %s", guild.id)
            except discord.HTTPException as e:
                log.warning("cannot check the commands of guild %s: %s", guild.id, e)

    def notice_problems(self) -> list[str]:
        """Why notices would not reach people: the channel cannot be seen or written in, or
        the mention role would not ping (Discord notifies a role mention only when the role
        is mentionable or the bot may mention everyone). One sentence each."""
        out = []
        for gid, settings in self.discord_settings.guilds.items():
            guild = self.get_guild(gid)
            if guild is None or not settings.channels:
                continue
            me = guild.me
            for channel_id in settings.channels:  # the guild's, then servers' own
                channel = guild.get_channel(channel_id)
                if channel is None:
                    out.append(f"The notification channel {channel_id} of guild {gid} is not "
                               "one PEON can see (it needs View Channel).")  # fmt: skip
                elif me is not None:
                    perms = channel.permissions_for(me)
                    missing = [
                        label
                        for label, ok in (("View Channel", perms.view_channel),
                                          ("Send Messages", perms.send_messages),
                                          ("Embed Links", perms.embed_links))
                        if not ok
                    ]  # fmt: skip
                    if missing:
                        out.append(f"PEON lacks {', '.join(missing)} in #{channel.name}, so "
                                   "its notices cannot be posted there.")  # fmt: skip
            if settings.mention_role is not None and me is not None:
                role = guild.get_role(settings.mention_role)
                if role is None:
                    out.append(f"The mention role {settings.mention_role} does not exist in "
                               f"guild {guild.name}.")  # fmt: skip
                elif not role.mentionable and not me.guild_permissions.mention_everyone:
                    out.append(f"The role @{role.name} is not mentionable and PEON may not "
                               "mention everyone, so notices will not ping it; make the role "
                               "mentionable.")  # fmt: skip
        return out

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        if self.board is not None:
            self.board.deleted(payload.message_id)  # a board is posted again

    async def on_message(self, message: discord.Message) -> None:
        """PEON has slash commands only: a message mentioning it ("@PEON hi") is not a
        command to look up (and log an error for)."""

    def versions(self) -> dict[str, str]:
        return {
            "PEON": __version__,
            "discord.py": discord.__version__,
            "Python": platform.python_version(),
            "Docker engine": self.engine_version,
        }
