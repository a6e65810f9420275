"""/schedule ... and the buttons on stop warnings: thin adapters to Automation."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import rules
from bot.automation import Automation, ScheduleView
from bot.client import Access, Embed, clip, render_error
from bot.rules import CRON_ACTIONS
from bot.schedules import format_span
from bot.servers import ServerService
from cogs.common import INFO, MAX_CHOICES, OK, actor, server_autocomplete, when_text

if TYPE_CHECKING:
    from bot.client import PeonBot

KIND_ICONS = {"window": "🕒", "idle": "💤", "cron": "🔁", "timer": "⏲️"}


def schedule_line(view: ScheduleView) -> str:
    s = view.schedule
    head = f"{KIND_ICONS.get(s.kind, '')} `#{s.id}` **{s.server}** · {view.description}"
    if s.paused:
        return f"{head} · ⏸️ paused"
    runs = " · ".join(f"next {label} {when_text(w, view.zone)}" for label, w in view.next_runs)
    return f"{head}" + (f"\n  {runs}" if runs else "")


def schedules_embed(views: list[ScheduleView], title: str) -> discord.Embed:
    embed = Embed(title=title, colour=INFO)
    if not views:
        embed.description = "No schedules. Add one with `/schedule add window|idle|cron`."
    else:
        embed.description = "\n".join(schedule_line(v) for v in views)[:4000]
    return embed


class WarningButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"peon:auto:(?P<action>keep|stop):(?P<server>[a-z0-9][a-z0-9-]{0,31})"
    r"(?::(?P<at>\d+))?",
):
    """A button on a stop warning; survives bot restarts (registered with add_dynamic_items).
    Its custom_id carries the time of the stop it warned about, so it acts on that stop only;
    buttons from before that (no time) are answered as out of date."""

    def __init__(
        self, action: str, server: str, at: int | None, keep_for: timedelta | None = None
    ) -> None:
        if action == "keep":
            label = f"Keep running +{format_span(keep_for)}" if keep_for else "Keep running"
            style = discord.ButtonStyle.success
        else:
            label, style = "Stop now", discord.ButtonStyle.danger
        custom_id = f"peon:auto:{action}:{server}" + (f":{at}" if at is not None else "")
        super().__init__(discord.ui.Button(label=label[:80], style=style, custom_id=custom_id))
        self.action, self.server, self.at = action, server, at

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> WarningButton:
        return cls(match["action"], match["server"], int(match["at"]) if match["at"] else None)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = interaction.client.get_cog("SchedulesCog")
        try:
            if not isinstance(cog, SchedulesCog):
                raise RuntimeError("SchedulesCog is not loaded")
            await cog.warning_action(interaction, self.action, self.server, self.at)
        except Exception as e:
            await render_error(interaction, e)


def warning_view(server: str, keep_for: timedelta, at: datetime) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    stamp = int(at.timestamp())
    view.add_item(WarningButton("keep", server, stamp, keep_for))
    view.add_item(WarningButton("stop", server, stamp))
    return view


class SchedulesCog(commands.Cog, name="SchedulesCog"):
    schedule = app_commands.Group(
        name="schedule", description="When servers start and stop by themselves", guild_only=True
    )
    add = app_commands.Group(name="add", description="Add a schedule", parent=schedule)

    def __init__(self, bot: PeonBot) -> None:
        if bot.automation is None:
            raise RuntimeError("automation must be built before the schedules cog")
        self.automation: Automation = bot.automation
        self.servers: ServerService = bot.services.servers
        self.access: Access = bot.access

    @property
    def zone(self) -> str:
        """Where times typed without a zone are, as /peon reload leaves it."""
        return self.automation.settings.timezone

    async def schedule_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[int]]:
        views = await self.automation.list()
        out = []
        for v in views:
            label = f"#{v.schedule.id} {v.schedule.server}: {v.description}"
            if current.strip("#") in label:
                out.append(app_commands.Choice(name=label[:100], value=v.schedule.id))
        return out[:MAX_CHOICES]

    async def _answer_first(self, interaction: discord.Interaction[Any]) -> None:
        """Called once the input is known good (refusals so far were instant and ephemeral):
        what follows may ask Docker, which may be slow, and Discord wants an answer in 3 s."""
        await interaction.response.defer(thinking=True)

    async def _added(self, interaction: discord.Interaction[Any], view: ScheduleView) -> None:
        embed = Embed(
            title=f"Schedule #{view.schedule.id} added", description=schedule_line(view), colour=OK
        )
        await interaction.edit_original_response(embed=embed)

    # --- add --------------------------------------------------------------------------------

    @add.command(name="window", description="Keep a server up on given days between two times")
    @app_commands.describe(
        server="The game server",
        days="mon-fri, weekdays, weekends, sat,sun, daily, fri-mon …",
        start="Start time, HH:MM",
        stop="Stop time, HH:MM (earlier than start: the next day)",
        timezone="e.g. Europe/Berlin; default from config",
    )
    @app_commands.autocomplete(server=server_autocomplete)
    async def add_window(
        self,
        interaction: discord.Interaction[Any],
        server: str,
        days: str,
        start: str,
        stop: str,
        timezone: str | None = None,
    ) -> None:
        self.access.check(interaction, "schedule", server)
        await self.servers.store.get_server(server)
        rules.window_spec(days, start, stop, timezone or self.zone)  # refused before deferring
        await self._answer_first(interaction)
        view = await self.automation.add_window(
            server, days=days, start=start, stop=stop, zone=timezone, actor=actor(interaction)
        )
        await self._added(interaction, view)

    @add.command(name="idle", description="Stop a server when nobody has played for a while")
    @app_commands.describe(server="The game server", after="e.g. 30m, 1h")
    @app_commands.autocomplete(server=server_autocomplete)
    async def add_idle(
        self, interaction: discord.Interaction[Any], server: str, after: str
    ) -> None:
        self.access.check(interaction, "schedule", server)
        await self.servers.store.get_server(server)
        rules.idle_spec(after, self.automation.settings.minimum)
        await self._answer_first(interaction)
        view = await self.automation.add_idle(server, after, actor(interaction))
        await self._added(interaction, view)

    @add.command(name="cron", description="Start, stop, restart or send a command on a cron")
    @app_commands.describe(
        server="The game server",
        expression="minute hour day month weekday, e.g. 0 4 * * *",
        action="What to do",
        command="For console: the command to send",
        timezone="e.g. Europe/Berlin; default from config",
        only_when_running="Skip when the server is not running",
    )
    @app_commands.choices(action=[app_commands.Choice(name=a, value=a) for a in CRON_ACTIONS])
    @app_commands.autocomplete(server=server_autocomplete)
    async def add_cron(
        self,
        interaction: discord.Interaction[Any],
        server: str,
        expression: str,
        action: str,
        command: str | None = None,
        timezone: str | None = None,
        only_when_running: bool = False,
    ) -> None:
        self.access.check(interaction, "schedule", server)
        await self.servers.store.get_server(server)
        rules.cron_spec(expression, timezone or self.zone, action, command, only_when_running)
        if action == "update":  # refused before deferring, so the refusal stays ephemeral
            self.automation.refuse_uncounted(await self.servers.store.get_server(server))
        await self._answer_first(interaction)
        view = await self.automation.add_cron(
            server,
            expression,
            action,
            zone=timezone,
            command=command,
            only_when_running=only_when_running,
            actor=actor(interaction),
        )
        await self._added(interaction, view)

    # --- list / remove / pause / resume -----------------------------------------------------

    @schedule.command(name="list", description="Schedules and when each acts next")
    @app_commands.autocomplete(server=server_autocomplete)
    async def list_schedules(
        self, interaction: discord.Interaction[Any], server: str | None = None
    ) -> None:
        self.access.check(interaction, "list")
        views = await self.automation.list(server)
        title = f"Schedules of {server}" if server else "Schedules"
        await interaction.response.send_message(embed=schedules_embed(views, title))

    @schedule.command(name="remove", description="Remove a schedule (or cancel a timer)")
    @app_commands.describe(id="The schedule's number, see /schedule list")
    @app_commands.autocomplete(id=schedule_autocomplete)
    async def remove(self, interaction: discord.Interaction[Any], id: int) -> None:
        s = await self.automation.store.get_schedule(id)
        self.access.check(interaction, "schedule", s.server)
        await self._answer_first(interaction)
        await self.automation.remove(id, actor(interaction))
        text = f"Removed schedule #{id} of **{s.server}**."
        await interaction.edit_original_response(embed=Embed(description=text, colour=OK))

    @schedule.command(name="pause", description="Pause a schedule without removing it")
    @app_commands.autocomplete(id=schedule_autocomplete)
    async def pause(self, interaction: discord.Interaction[Any], id: int) -> None:
        await self._set_paused(interaction, id, True)

    @schedule.command(name="resume", description="Resume a paused schedule")
    @app_commands.autocomplete(id=schedule_autocomplete)
    async def resume(self, interaction: discord.Interaction[Any], id: int) -> None:
        await self._set_paused(interaction, id, False)

    async def _set_paused(
        self, interaction: discord.Interaction[Any], schedule_id: int, paused: bool
    ) -> None:
        s = await self.automation.store.get_schedule(schedule_id)
        self.access.check(interaction, "schedule", s.server)
        await self._answer_first(interaction)
        view = await self.automation.set_paused(schedule_id, paused, actor(interaction))
        title = f"Schedule #{schedule_id} {'paused' if paused else 'resumed'}"
        await interaction.edit_original_response(
            embed=Embed(title=title, description=schedule_line(view), colour=OK)
        )

    # --- warning buttons --------------------------------------------------------------------

    async def warning_action(
        self, interaction: discord.Interaction[Any], action: str, server: str, at: int | None
    ) -> None:
        """Answered at once (a deferred update), then acted on; a refusal or failure is told
        to the clicker alone and leaves the warning and its buttons as they are."""
        self.access.check(interaction, "postpone" if action == "keep" else "stop", server)
        await interaction.response.defer()
        # No time in the custom_id: a button from before warnings were bound to their stop.
        warned = (
            datetime.fromtimestamp(at, UTC) if at is not None else datetime.min.replace(tzinfo=UTC)
        )
        who = f"<@{interaction.user.id}>"
        original = interaction.message.content if interaction.message else ""
        if action == "keep":
            p = await self.automation.postpone(server, actor(interaction), warned)
            zone = p.due.zone or self.automation.zone
            note = f"→ {who} kept it running: now {p.due.action}s at {when_text(p.at, zone)}."
        else:
            stopped = await self.automation.stop_now(server, actor(interaction), warned)
            result = "stopped" if stopped else "was not running"
            note = f"→ Stopped now by {who}: **{server}** {result}."
        await interaction.edit_original_response(content=clip(f"{original}\n{note}", 2000),
                                                 view=None)  # fmt: skip
