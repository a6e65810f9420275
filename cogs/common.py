"""What the cogs share: access checks, progress messages and embeds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast
from zoneinfo import ZoneInfo

import discord
from discord import app_commands

from bot.aio import Progress
from bot.client import (
    CONTENT_MAX,
    FIELD_VALUE_MAX,
    Embed,
    PeonBot,
    clip,
    code_block,
    escape,
    render_error,
    timestamp,
)
from bot.models import (
    Phase,
    ProgressEvent,
    PullProgress,
    ServerStatus,
    StartResult,
    human_duration,
)
from bot.players import PlayerCount
from bot.servers import ServerSummary

log = logging.getLogger(__name__)

BAR_WIDTH = 20
OK = discord.Colour.green()
INFO = discord.Colour.blurple()
WARN = discord.Colour.orange()
STATE_COLOURS = {
    "running": OK,
    "exited": discord.Colour.dark_grey(),
    "created": discord.Colour.dark_grey(),
    "missing": discord.Colour.red(),
}
MAX_CHOICES = 25  # Discord shows at most 25 autocomplete choices


def actor(interaction: discord.Interaction[Any]) -> str:
    return f"discord:{interaction.user.id}"


def pull_bar(p: PullProgress) -> str:
    frac = p.fraction or 0.0
    filled = round(frac * BAR_WIDTH)
    size = f" · {p.current / 1e6:.0f}/{p.total / 1e6:.0f} MB" if p.total else ""
    return (
        f"`{'█' * filled}{'░' * (BAR_WIDTH - filled)}` {frac * 100:.0f}%{size}"
        f" · {p.layers_done}/{p.layers} layers"
    )


class ProgressMessage:
    """Shows an operation's progress without ever holding it up, for as long as it runs.

    The operation only records its state here (`__call__` never waits on Discord): a
    background task shows the newest state, at most one edit every `interval` seconds, so a
    slow or rate-limited Discord cannot delay a server operation. An interaction token works
    for `lifetime` seconds; before it runs out the progress moves to a regular message in the
    channel, which the bot edits with its own token, and the token is not used again. The
    outcome (`finish`) is shown wherever the progress is, and posted in the channel if
    nothing else can show it."""

    def __init__(
        self,
        interaction: discord.Interaction[Any],
        title: str,
        interval: float,
        *,
        lifetime: float,
    ) -> None:
        self.interaction = interaction
        self.title = title
        self.interval = interval
        self.steps: list[str] = []
        self.bar: str | None = None
        # Move with a margin: an edit sent just before expiry may arrive after it.
        margin = min(60.0, lifetime / 5)
        self.switch_at = interaction.created_at + timedelta(seconds=lifetime - margin)
        self.moved: discord.Message | None = None  # the channel message, once moved
        self._dirty = asyncio.Event()
        # Running from the start: the move must happen even if the operation reports nothing.
        self._task: asyncio.Task[None] | None = asyncio.create_task(self._show_changes())
        interaction.extras["peon_progress"] = self  # render_error ends the progress here

    def embed(self) -> discord.Embed:
        lines = [f"✅ {s}" for s in self.steps[:-1]] + [f"⏳ {s}" for s in self.steps[-1:]]
        if self.bar:
            lines.append(self.bar)
        return Embed(title=self.title, description="\n".join(lines) or "…", colour=INFO)

    async def __call__(self, event: ProgressEvent) -> None:
        if isinstance(event, PullProgress):
            self.bar = pull_bar(event)
        elif isinstance(event, Phase):
            if event.step == "ready":
                return
            self.bar = None if event.step != "pulling" else self.bar
            self.steps.append(event.step + (f": {event.detail}" if event.detail else ""))
        self._dirty.set()

    def token_alive(self) -> bool:
        return self.moved is None and datetime.now(UTC) < self.switch_at

    async def _show_changes(self) -> None:
        while True:
            left = (self.switch_at - datetime.now(UTC)).total_seconds()
            if self.moved is None and left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), left)  # wake up to move
            else:
                await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._show(self.embed(), None)
            except discord.HTTPException:
                log.warning("could not show progress of %s", self.title, exc_info=True)
            await asyncio.sleep(self.interval)  # Discord rate-limits edits

    async def _show(self, embed: discord.Embed, view: discord.ui.View | None) -> None:
        kwargs: dict[str, Any] = {"embed": embed}
        if view is not None:
            kwargs["view"] = view
        if self.token_alive():
            await self.interaction.edit_original_response(content=None, **kwargs)
            return
        if self.moved is None:
            await self._move(embed)
        if self.moved is not None:
            await self.moved.edit(**kwargs)

    async def _move(self, embed: discord.Embed) -> None:
        channel = self.interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            return
        user = self.interaction.user.id
        self.moved = await channel.send(
            content=f"<@{user}>'s request continues here.",
            embed=embed,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        with contextlib.suppress(discord.HTTPException):  # the token may be gone already
            await self.interaction.edit_original_response(
                content=f"Continued in {self.moved.jump_url}", embed=None, view=None
            )

    async def finish(self, embed: discord.Embed, view: discord.ui.View | None = None) -> None:
        """Show the outcome (or an error); never raises, so notices after it still go out."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self._show(embed, view)
            return
        except discord.HTTPException:
            log.warning("could not show the outcome of %s; posting it", self.title, exc_info=True)
        channel = self.interaction.channel
        if isinstance(channel, discord.abc.Messageable):
            with contextlib.suppress(discord.HTTPException):
                await channel.send(embed=embed, allowed_mentions=discord.AllowedMentions.none())


def players_text(count: PlayerCount, limit: int = FIELD_VALUE_MAX) -> str:
    """'2/10 (alice, bob)' with names escaped, and as many names as fit in a field; the rest
    counted ("… and 40 more")."""
    total = f"{count.online}/{count.max}" if count.max is not None else str(count.online)
    names = [escape(n) for n in count.names]
    for shown in range(len(names), -1, -1):
        more = f", … and {len(names) - shown} more" if shown < len(names) else ""
        listed = ", ".join(names[:shown]) + more
        text = f"{total} ({listed})" if names else total
        if len(text) <= limit:
            return text
    return total


def when_text(when: datetime, zone: ZoneInfo) -> str:
    """A time in a schedule's zone, with Discord's relative rendering after it."""
    local = when.astimezone(zone)
    return f"{local:%a %d %b %H:%M} {zone.key} ({timestamp(when)})"


def status_embed(
    st: ServerStatus,
    *,
    players: str | None = None,
    next_stop: str | None = None,
    show_host: bool = False,
) -> discord.Embed:
    now = datetime.now(UTC)
    state = st.state
    embed = Embed(
        title=f"{st.record.name} · {st.record.warplan}", colour=STATE_COLOURS.get(state, WARN)
    )
    embed.add_field(name="State", value=state)
    embed.add_field(name="Uptime", value=human_duration(st.uptime(now)))
    if show_host:
        embed.add_field(name="Host", value=st.record.host)
    embed.add_field(
        name="Address",
        value="\n".join(f"`{st.address}:{p.host}` {p.protocol} ({p.name})" for p in st.record.ports)
        or "—",
        inline=False,
    )
    if st.usage is not None:
        mem = f"{st.usage.memory_bytes / 2**20:.0f} MiB"
        if st.usage.memory_limit:
            mem += f" / {st.usage.memory_limit / 2**20:.0f} MiB"
        embed.add_field(name="CPU", value=f"{st.usage.cpu_percent:.1f}%")
        embed.add_field(name="Memory", value=mem)
    if st.container is not None and st.container.health:
        embed.add_field(name="Health", value=st.container.health)
    if players is not None:
        embed.add_field(name="Players", value=players)
    if next_stop is not None:
        embed.add_field(name="Next automatic stop", value=next_stop, inline=False)
    if st.hang_check is not None:
        embed.add_field(name="Hang check", value=st.hang_check, inline=False)
    return embed


def list_embed(
    summaries: list[ServerSummary], *, show_host: bool = False, kept: Sequence[str] = ()
) -> discord.Embed:
    """Every server, one line each; `kept`: names of deleted servers whose data is kept."""
    embed = Embed(title="Game servers", colour=INFO)
    if kept:
        names = ", ".join(f"`{k}`" for k in dict.fromkeys(kept))
        embed.add_field(
            name="Kept data",
            value=clip(f"kept data: {names} (create the name again to reuse it, or "
                       "`/server delete name: purge:true` to delete it)", FIELD_VALUE_MAX),
            inline=False,
        )  # fmt: skip
    if not summaries:
        embed.description = "No servers yet. An admin can create one with `/server create`."
        return embed
    lines = []
    for s in summaries:
        ports = ", ".join(f"{p.host}/{p.protocol}" for p in s.record.ports) or "—"
        icon = "🟢" if s.state == "running" else "⚪" if s.state in ("exited", "created") else "🟠"
        host = f" · on {s.record.host}" if show_host else ""
        lines.append(f"{icon} **{s.record.name}** · {s.record.warplan} · {s.state} · {ports}{host}")
    embed.description = "\n".join(lines)[:4000]
    return embed


def started_embed(result: StartResult) -> discord.Embed:
    if result.already_running:
        return Embed(
            title=f"{result.name} is already running",
            description=f"Connect to `{result.connect()}`",
            colour=OK,
        )
    return Embed(
        title=f"{result.name} is ready to join",
        description=f"Connect to `{result.connect()}` (ready in {result.seconds:.0f} s)",
        colour=OK,
    )


def logs_block(lines: list[str]) -> str:
    return code_block(lines, CONTENT_MAX)


async def server_autocomplete(
    interaction: discord.Interaction[Any], current: str
) -> list[app_commands.Choice[str]]:
    """Server names for any command's server option: prefix matches first, then the other
    matches. A free function (discord.py passes no cog), shared by every cog."""
    bot = cast(PeonBot, interaction.client)
    current = current.lower()
    names = [r.name for r in await bot.services.store.list_servers()]
    hits = [n for n in names if n.startswith(current)] + [
        n for n in names if current in n and not n.startswith(current)
    ]
    return [app_commands.Choice(name=n, value=n) for n in hits[:MAX_CHOICES]]


class Confirmable(Protocol):
    """A cog whose destructive actions are confirmed with ConfirmButtons."""

    confirm_kinds: tuple[str, ...]
    interval: float
    lifetime: float

    def confirm_texts(self, kind: str, arg: str) -> tuple[str, str]:
        """(what is being done, "… was not deleted") for the prompt's outcomes."""
        ...

    async def confirmed(
        self, interaction: discord.Interaction[Any], kind: str, arg: str, progress: Progress
    ) -> str:
        """Do it, its steps shown through `progress`; the sentence that ends the prompt."""
        ...


class ConfirmButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"peon:ok:(?P<kind>[a-z]+):(?P<arg>[a-z0-9][a-z0-9.-]{0,47}):(?P<user>\d{1,20}):"
    r"(?P<until>\d{1,12}):(?P<yes>[yn])",
):
    """Confirm or Cancel on a destructive action's prompt. Its custom_id holds all the answer
    needs (what, on what, whose, until when), so a prompt still works after the bot restarts
    and says so once it has expired, instead of an unanswered click."""

    def __init__(
        self, kind: str, arg: str, user: int, until: int, yes: bool, label: str = "Confirm"
    ) -> None:
        custom_id = f"peon:ok:{kind}:{arg}:{user}:{until}:{'y' if yes else 'n'}"
        style = discord.ButtonStyle.danger if yes else discord.ButtonStyle.secondary
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=(label if yes else "Cancel")[:80], style=style, custom_id=custom_id
        )
        super().__init__(button)
        self.kind, self.arg, self.user, self.until, self.yes = kind, arg, user, until, yes

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ConfirmButton:
        return cls(match["kind"], match["arg"], int(match["user"]), int(match["until"]),
                   match["yes"] == "y")  # fmt: skip

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        try:
            await self._answer(interaction)
        except Exception as e:
            await render_error(interaction, e)

    async def _answer(self, interaction: discord.Interaction[Any]) -> None:
        cog = next(
            (c for c in interaction.client.cogs.values()
             if self.kind in getattr(c, "confirm_kinds", ())),
            None,
        )  # fmt: skip
        if cog is None:
            raise RuntimeError(f"no cog confirms {self.kind}")
        handler = cast(Confirmable, cog)
        if interaction.user.id != self.user:
            await interaction.response.send_message(
                f"Only <@{self.user}> can confirm or cancel this.", ephemeral=True
            )
            return
        doing, undone = handler.confirm_texts(self.kind, self.arg)
        if not self.yes or time.time() > self.until:
            why = "Cancelled" if not self.yes else "Confirmation expired"
            await interaction.response.edit_message(
                embed=Embed(description=f"{why}; {undone}.", colour=INFO), view=None
            )
            return
        await interaction.response.edit_message(embed=Embed(title=doing, colour=INFO), view=None)
        # A restore or purge can outlive the click's token: the outcome still shows.
        progress = ProgressMessage(interaction, doing, handler.interval, lifetime=handler.lifetime)
        text = await handler.confirmed(interaction, self.kind, self.arg, progress)
        await progress.finish(Embed(description=text, colour=OK))


async def ask_confirmation(
    interaction: discord.Interaction[Any],
    *,
    kind: str,
    arg: str,
    label: str,
    embed: discord.Embed,
    timeout: float,
    undone: str,
) -> None:
    """Post a prompt with Confirm/Cancel for `kind` on `arg`; at `timeout` it says it expired
    (unless answered), and a click after that is told the same, even after a restart."""
    until = int(time.time() + timeout)
    user = interaction.user.id
    view = discord.ui.View(timeout=None)
    view.add_item(ConfirmButton(kind, arg, user, until, True, label))
    view.add_item(ConfirmButton(kind, arg, user, until, False))
    await interaction.response.send_message(embed=embed, view=view)
    message = await interaction.original_response()

    async def expire() -> None:
        await asyncio.sleep(timeout)
        try:
            current = await message.fetch()
            if current.components:  # still unanswered
                expired = Embed(description=f"Confirmation expired; {undone}.", colour=INFO)
                await message.edit(embed=expired, view=None)
        except discord.HTTPException:
            log.warning("could not expire a confirmation (%s %s)", kind, arg)

    cast(PeonBot, interaction.client).spawn(expire())
