"""/server ...: thin adapters from interactions to ServerService."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.aio import Progress
from bot.automation import Automation
from bot.client import (
    CONTENT_MAX,
    Access,
    Embed,
    clip,
    code_block,
    escape,
    mention_actors,
    render_error,
)
from bot.consoles import check_command
from bot.errors import ServerBusy, ServerExists, ServerNotFound, ServerStateError
from bot.models import ServerState
from bot.schedules import ScheduleError, format_span
from bot.servers import ServerService, validate_name
from bot.warplans import (
    CONSOLE_COMMAND_MAX,
    VariableSpec,
    WarPlan,
    WarplanLibrary,
    change_variables,
    coerce_value,
)
from cogs.audit import audit_page
from cogs.common import (
    INFO,
    MAX_CHOICES,
    OK,
    ProgressMessage,
    actor,
    ask_confirmation,
    list_embed,
    logs_block,
    players_text,
    server_autocomplete,
    started_embed,
    status_embed,
    when_text,
)

if TYPE_CHECKING:
    from bot.client import PeonBot

log = logging.getLogger(__name__)

MODAL_FIELDS = 5  # Discord allows five text inputs per modal
FORM_LIFETIME = 900  # seconds a create form (and its Continue button) is kept
FORM_GONE = (
    "This form is from before PEON restarted, or older than 15 minutes, so what was typed "
    "is gone; start again with /server {kind}."
)


@dataclass
class CreateSession:
    """A create (or a settings change: `current` holds the server's non-secret values)
    waiting for its variables form(s); lives only as long as the forms do."""

    user_id: int
    plan: WarPlan
    name: str
    host: str | None = None
    values: dict[str, str] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: float = field(default_factory=time.monotonic)
    current: dict[str, str] | None = None

    @property
    def kind(self) -> str:
        return "create" if self.current is None else "settings"

    @property
    def expired(self) -> bool:
        return time.monotonic() - self.started > FORM_LIFETIME

    @property
    def pages(self) -> list[list[VariableSpec]]:
        v = self.plan.variables
        return [v[i : i + MODAL_FIELDS] for i in range(0, len(v), MODAL_FIELDS)]


class VariablesModal(discord.ui.Modal):
    def __init__(self, cog: ServersCog, session: CreateSession, page: int) -> None:
        pages = session.pages
        step = f" ({page + 1}/{len(pages)})" if len(pages) > 1 else ""
        what = "Create" if session.current is None else "Settings of"
        super().__init__(
            title=f"{what} {session.name}{step}"[:45],
            timeout=FORM_LIFETIME,
            custom_id=f"peon:{session.kind}:{session.id}:{page}",
        )
        self.cog, self.session, self.page = cog, session, page
        self.inputs: dict[str, discord.ui.TextInput[VariablesModal]] = {}
        # What each field showed: a settings change sends only the fields edited.
        self.shown: dict[str, str] = {}
        for var in pages[page]:
            if session.current is None:
                default = var.default_text(session.name)
                required = var.required and default is None
            else:
                default = session.current.get(var.name)  # never a secret: not in `current`
                required = False  # empty: back to the default (a secret: kept as it is)
            hint = var.description
            if var.choices:
                hint = f"One of: {', '.join(var.choices)}"
            elif var.type == "int" and (var.min is not None or var.max is not None):
                hint = (
                    f"{hint} ({var.min if var.min is not None else '…'}-"
                    f"{var.max if var.max is not None else '…'})".strip()
                )
            if session.current is not None and var.secret:
                hint = "Empty keeps the current one"
            elif session.current is not None and var.create_only:
                hint = "Set when the server was created; cannot change"
            text_input: discord.ui.TextInput[VariablesModal] = discord.ui.TextInput(
                label=(var.name + (" (secret)" if var.secret else ""))[:45],
                custom_id=var.name,
                placeholder=hint[:100] or None,
                default=None if var.secret else default,
                required=required,
                max_length=1024,
            )
            self.shown[var.name] = "" if var.secret or default is None else default
            self.inputs[var.name] = text_input
            self.add_item(text_input)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        for name, text_input in self.inputs.items():
            value = text_input.value.strip()
            spec = self.session.plan.variable(name)  # the form was built from the plan
            if self.session.current is not None and value != self.shown[name].strip():
                # Edited: emptied means the default; an empty secret is never "edited".
                self.session.values[name] = coerce_value(spec, value) if value and spec else ""
            elif value and spec is not None and self.session.current is None:
                self.session.values[name] = coerce_value(spec, value)  # refuses early
        if self.page + 1 < len(self.session.pages):
            view = ContinueView(self.cog, self.session, self.page + 1)
            await interaction.response.send_message(
                f"Step {self.page + 1} of {len(self.session.pages)} saved.",
                view=view,
                ephemeral=True,
            )
            return
        if self.session.current is not None:
            await self.cog.run_settings(interaction, self.session)
            return
        await self.cog.run_create(interaction, self.session)

    async def on_error(  # type: ignore[override]  # discord.py's Modal narrows it too
        self, interaction: discord.Interaction[Any], error: Exception
    ) -> None:
        await render_error(interaction, error)


class ContinueView(discord.ui.View):
    def __init__(self, cog: ServersCog, session: CreateSession, page: int) -> None:
        super().__init__(timeout=FORM_LIFETIME)
        self.cog, self.session, self.page = cog, session, page
        self.go.custom_id = f"peon:{session.kind}-next:{session.id}:{page}"

    @discord.ui.button(label="Continue", style=discord.ButtonStyle.primary)
    async def go(self, interaction: discord.Interaction[Any], _: discord.ui.Button[Any]) -> None:
        if interaction.user.id != self.session.user_id:
            await interaction.response.send_message("This form is someone else's.", ephemeral=True)
            return
        await interaction.response.send_modal(VariablesModal(self.cog, self.session, self.page))

    async def on_error(
        self, interaction: discord.Interaction[Any], error: Exception, item: discord.ui.Item[Any]
    ) -> None:
        await render_error(interaction, error)


PANEL_ACTIONS = {
    "start": ("Start", discord.ButtonStyle.success),
    "stop": ("Stop", discord.ButtonStyle.danger),
    "restart": ("Restart", discord.ButtonStyle.primary),
    "status": ("Status", discord.ButtonStyle.secondary),
}


class PanelButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"peon:panel:(?P<action>start|stop|restart|status):"
    r"(?P<server>[a-z0-9][a-z0-9-]{0,31})",
):
    """A control-panel button; its custom_id carries action and server, so it keeps working
    after the bot restarts (registered with add_dynamic_items)."""

    def __init__(self, action: str, server: str) -> None:
        label, style = PANEL_ACTIONS[action]
        super().__init__(
            discord.ui.Button(label=label, style=style, custom_id=f"peon:panel:{action}:{server}")
        )
        self.action, self.server = action, server

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> PanelButton:
        return cls(match["action"], match["server"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = interaction.client.get_cog("ServersCog")
        try:
            if not isinstance(cog, ServersCog):
                raise RuntimeError("ServersCog is not loaded")
            await cog.panel_action(interaction, self.action, self.server)
        except Exception as e:
            await render_error(interaction, e)


def board_start_button(server: str) -> discord.ui.Item[Any]:
    """The status board's Start button for a server: the panel's, named after the server."""
    button = PanelButton("start", server)
    button.item.label = f"Start {server}"
    return button


def panel_view(server: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in PANEL_ACTIONS:
        view.add_item(PanelButton(action, server))
    return view


class ServersCog(commands.Cog, name="ServersCog"):
    server = app_commands.Group(name="server", description="Game servers", guild_only=True)

    def __init__(self, bot: PeonBot) -> None:
        self.servers: ServerService = bot.services.servers
        self.warplans: WarplanLibrary = bot.services.warplans
        self.access: Access = bot.access
        self.automation: Automation | None = bot.automation
        self.bot = bot  # its Discord settings, as /peon reload leaves them
        self.sessions: dict[str, CreateSession] = {}  # create forms open in this process

    # --- helpers ----------------------------------------------------------------------------

    @property
    def interval(self) -> float:
        return self.bot.discord_settings.progress_interval

    @property
    def confirm_timeout(self) -> int:
        return self.bot.discord_settings.confirm_timeout

    @property
    def lifetime(self) -> float:
        return self.bot.discord_settings.interaction_lifetime

    async def _precheck(self, name: str) -> None:
        """Refuse before deferring, so refusals stay ephemeral and instant."""
        record = await self.servers.store.get_server(name)
        if record.operation:
            raise ServerBusy(name, record.operation)

    async def _long(
        self, interaction: discord.Interaction[Any], action: str, name: str, title: str
    ) -> ProgressMessage:
        self.access.check(interaction, action, name)
        await self._precheck(name)
        await interaction.response.defer(thinking=True)
        return ProgressMessage(interaction, title, self.interval, lifetime=self.lifetime)

    async def warplan_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        current = current.lower()
        plans = self.warplans.catalog.plans.values()
        hits = [p for p in plans if current in p.name or current in p.title.lower()]
        return [
            app_commands.Choice(name=f"{p.title} ({p.name})"[:100], value=p.name)
            for p in hits[:MAX_CHOICES]
        ]

    # --- create -----------------------------------------------------------------------------

    async def host_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        names = [n for n in self.servers.camps.names if current.lower() in n]
        return [app_commands.Choice(name=n, value=n) for n in names[:MAX_CHOICES]]

    @server.command(name="create", description="Create a game server from a war plan")
    @app_commands.describe(
        warplan="The game's war plan",
        name="Server name: a-z, 0-9, -",
        host="Docker host to run it on (default: the one with the most free memory)",
    )
    @app_commands.autocomplete(warplan=warplan_autocomplete, host=host_autocomplete)
    async def create(
        self,
        interaction: discord.Interaction[Any],
        warplan: str,
        name: str,
        host: str | None = None,
    ) -> None:
        self.access.check(interaction, "create")
        validate_name(name)
        plan = self.warplans.get(warplan)
        if host is not None:
            self.servers.camps.get(host)  # an unknown host is refused before any form
        if await self.servers.store.find_server(name) is not None:
            raise ServerExists(name)
        session = CreateSession(interaction.user.id, plan, name, host)
        self.sessions = {k: v for k, v in self.sessions.items() if not v.expired}
        self.sessions[session.id] = session
        if not plan.variables:
            await self.run_create(interaction, session)
            return
        await interaction.response.send_modal(VariablesModal(self, session, 0))

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """A create form (or its Continue button) whose session this process does not hold:
        discord.py would leave it unanswered ("This interaction failed"); say what happened."""
        data: Any = interaction.data or {}
        custom_id = str(data.get("custom_id", ""))
        kind, _, rest = custom_id.partition(":")[2].partition(":")
        if kind not in ("create", "create-next", "settings", "settings-next"):
            return
        session = self.sessions.get(rest.partition(":")[0])
        if session is not None and not session.expired:
            return  # its modal or view answers it
        with contextlib.suppress(discord.HTTPException):
            await interaction.response.send_message(
                FORM_GONE.format(kind=kind.removesuffix("-next")), ephemeral=True
            )

    async def run_create(
        self, interaction: discord.Interaction[Any], session: CreateSession
    ) -> None:
        # The session stays listed until it expires: on_interaction must not take this very
        # submit for one it does not know (answering it a second time).
        await interaction.response.defer(thinking=True)
        progress = ProgressMessage(
            interaction, f"Creating {session.name}", self.interval, lifetime=self.lifetime
        )
        record = await self.servers.create(
            session.plan.name,
            session.name,
            session.values,
            actor=actor(interaction),
            host=session.host,
            progress=progress,
        )
        ports = "\n".join(f"`{p.host}/{p.protocol}` ({p.name})" for p in record.ports) or "—"
        embed = Embed(
            title=f"Created {record.name}",
            description=f"{session.plan.title}. Start it with `/server start name:{record.name}`.",
            colour=OK,
        )
        embed.add_field(name="Ports", value=ports)
        if len(self.servers.camps) > 1:
            embed.add_field(name="Host", value=record.host)
        await progress.finish(embed)

    # --- settings ---------------------------------------------------------------------------

    @server.command(name="settings", description="Change a server's settings (data kept)")
    @app_commands.autocomplete(name=server_autocomplete)
    async def settings(self, interaction: discord.Interaction[Any], name: str) -> None:
        self.access.check(interaction, "settings", name)
        await self._precheck(name)
        record = await self.servers.store.get_server(name)
        plan = self.servers.plan_of(record)
        if not plan.variables:
            raise ServerStateError(f"War plan '{plan.name}' has no settings to change.")
        secret = {v.name for v in plan.variables if v.secret}
        current = {k: v for k, v in record.variables.items() if k not in secret}
        session = CreateSession(interaction.user.id, plan, name, current=current)
        self.sessions = {k: v for k, v in self.sessions.items() if not v.expired}
        self.sessions[session.id] = session
        await interaction.response.send_modal(VariablesModal(self, session, 0))

    async def run_settings(
        self, interaction: discord.Interaction[Any], session: CreateSession
    ) -> None:
        name = session.name
        self.access.check(interaction, "settings", name)  # roles may have changed since
        await self._precheck(name)
        record = await self.servers.store.get_server(name)
        # Refusals (a create-only setting, a value that no longer fits) stay ephemeral.
        _, changed = change_variables(
            self.servers.plan_of(record), record.variables, session.values, name
        )
        await interaction.response.defer(ephemeral=not changed, thinking=True)
        progress = ProgressMessage(
            interaction, f"Changing the settings of {name}", self.interval, lifetime=self.lifetime
        )
        result = await self.servers.change_settings(
            name, session.values, actor=actor(interaction), progress=progress
        )
        if not result.changed:
            text = f"Nothing changed: **{name}** already has these settings."
        else:
            names = ", ".join(f"`{c}`" for c in result.changed)
            again = " It was running and is ready again." if result.restarted else ""
            text = f"Changed {names} of **{name}**; recreated with its data kept.{again}"
        await progress.finish(Embed(description=text, colour=OK))

    # --- lifecycle --------------------------------------------------------------------------

    @server.command(name="start", description="Start a server and wait until it is joinable")
    @app_commands.autocomplete(name=server_autocomplete)
    async def start(self, interaction: discord.Interaction[Any], name: str) -> None:
        progress = await self._long(interaction, "start", name, f"Starting {name}")
        result = await self.servers.start(name, actor=actor(interaction), progress=progress)
        await progress.finish(started_embed(result))

    @server.command(name="stop", description="Stop a server gracefully (it saves first)")
    @app_commands.describe(
        after="Stop later instead: in 30m, 1h30m …", at="Stop later instead: at HH:MM"
    )
    @app_commands.rename(after="in")
    @app_commands.autocomplete(name=server_autocomplete)
    async def stop(
        self,
        interaction: discord.Interaction[Any],
        name: str,
        after: str | None = None,
        at: str | None = None,
    ) -> None:
        if after is not None or at is not None:
            await self._stop_later(interaction, name, after, at)
            return
        progress = await self._long(interaction, "stop", name, f"Stopping {name}")
        stopped = await self.servers.stop(name, actor=actor(interaction), progress=progress)
        text = f"**{name}** stopped." if stopped else f"**{name}** was not running."
        await progress.finish(Embed(description=text, colour=OK))

    async def _stop_later(
        self, interaction: discord.Interaction[Any], name: str, after: str | None, at: str | None
    ) -> None:
        self.access.check(interaction, "stop", name)
        automation = self._automation()
        record = await self.servers.store.get_server(name)
        if record.state != ServerState.RUNNING:  # the common refusal, instant and ephemeral
            raise ScheduleError(f"{name} is not running, so there is nothing to stop.")
        await interaction.response.defer(thinking=True)  # the timer asks Docker: answer first
        view = await automation.add_timer(
            name, after=after, at=at, zone=None, actor=actor(interaction)
        )
        when = view.next_runs[0][1]
        leads = ", ".join(format_span(x) for x in automation.leads)
        text = (
            f"**{name}** stops at {when_text(when, view.zone)}; the channel is warned "
            f"{leads} before. Cancel with `/schedule remove id:{view.schedule.id}`."
        )
        await interaction.edit_original_response(embed=Embed(description=text, colour=OK))

    def _automation(self) -> Automation:
        if self.automation is None:
            raise RuntimeError("automation is not running")
        return self.automation

    @server.command(name="restart", description="Stop and start a server")
    @app_commands.autocomplete(name=server_autocomplete)
    async def restart(self, interaction: discord.Interaction[Any], name: str) -> None:
        progress = await self._long(interaction, "restart", name, f"Restarting {name}")
        result = await self.servers.restart(name, actor=actor(interaction), progress=progress)
        await progress.finish(started_embed(result))

    @server.command(name="update", description="Pull the newest image and recreate (data kept)")
    @app_commands.describe(when="now, or empty: as soon as nobody plays")
    @app_commands.autocomplete(name=server_autocomplete)
    async def update(
        self,
        interaction: discord.Interaction[Any],
        name: str,
        when: Literal["now", "empty"] = "now",
    ) -> None:
        if when == "empty":
            await self._update_when_empty(interaction, name)
            return
        progress = await self._long(interaction, "update", name, f"Updating {name}")
        result = await self.servers.update(name, actor=actor(interaction), progress=progress)
        what = "a new image" if result.changed else "the same image (already up to date)"
        again = " It was running and is ready again." if result.restarted else ""
        await progress.finish(
            Embed(description=f"**{name}** now runs {what}; its data is kept.{again}", colour=OK)
        )

    async def _update_when_empty(self, interaction: discord.Interaction[Any], name: str) -> None:
        self.access.check(interaction, "update", name)
        automation = self._automation()
        automation.refuse_uncounted(await self.servers.store.get_server(name))
        await interaction.response.defer(thinking=True)  # counting players asks the game
        req = await automation.update_when_empty(name, actor=actor(interaction))
        until = when_text(req.until, automation.zone)
        if req.already:
            text = f"An update of **{name}** already waits for nobody to play (until {until})."
        elif req.now:
            text = f"Nobody plays on **{name}**: it updates now; the channel hears when it is done."
        else:
            then = (
                "this update is skipped"
                if req.when_busy == "skip"
                else "the channel is warned and it updates anyway"
            )
            on = f"{req.online} playing" if req.online is not None else "players not counted"
            text = (
                f"**{name}** updates as soon as nobody plays ({on} now). If players are still "
                f"on {until}, {then}."
            )
        await interaction.edit_original_response(embed=Embed(description=text, colour=OK))

    @server.command(name="status", description="State, address, uptime, CPU and memory")
    @app_commands.autocomplete(name=server_autocomplete)
    async def status(self, interaction: discord.Interaction[Any], name: str) -> None:
        self.access.check(interaction, "status", name)
        await self.servers.store.get_server(name)
        await interaction.response.defer(thinking=True)  # CPU sampling takes about a second
        st = await self.servers.status(name)
        count = await self.servers.players(st)
        players = players_text(count) if count is not None else None
        await interaction.edit_original_response(
            embed=status_embed(
                st,
                players=players,
                next_stop=self._next_stop(name),
                show_host=len(self.servers.camps) > 1,
            )
        )

    def _next_stop(self, name: str) -> str | None:
        p = self.automation.pending(name) if self.automation is not None else None
        if p is None:
            return None
        zone = p.due.zone or self._automation().zone
        return f"{p.due.action} {when_text(p.at, zone)}: {mention_actors(p.due.why)}"

    @server.command(name="logs", description="The server's last log lines (only you see them)")
    @app_commands.autocomplete(name=server_autocomplete)
    async def logs(
        self,
        interaction: discord.Interaction[Any],
        name: str,
        lines: app_commands.Range[int, 1, 200] = 30,
    ) -> None:
        self.access.check(interaction, "logs", name)
        await self.servers.store.get_server(name)
        await interaction.response.defer(ephemeral=True, thinking=True)
        text = logs_block(await self.servers.logs(name, lines))
        await interaction.edit_original_response(content=text)

    @server.command(name="console", description="Send one console command (only you see it)")
    @app_commands.describe(command="One command for the game's console, e.g. list or save")
    @app_commands.autocomplete(name=server_autocomplete)
    async def console(
        self,
        interaction: discord.Interaction[Any],
        name: str,
        command: app_commands.Range[str, 1, CONSOLE_COMMAND_MAX],
    ) -> None:
        self.access.check(interaction, "console", name)
        check_command(command)
        await self.servers.store.get_server(name)
        await interaction.response.defer(ephemeral=True, thinking=True)
        reply = await self.servers.console(name, command, actor=actor(interaction))
        head = f"Sent to **{name}** {reply.how}: {escape(clip(command, 200))}\n"
        room = CONTENT_MAX - len(head)
        body = code_block(reply.text.splitlines(), room) if reply.text.strip() else "(no reply)"
        await interaction.edit_original_response(content=head + body)

    @server.command(name="audit", description="What happened to a server, newest first")
    @app_commands.autocomplete(name=server_autocomplete)
    async def audit(self, interaction: discord.Interaction[Any], name: str) -> None:
        self.access.check(interaction, "audit", name)
        embed, view = await audit_page(self.servers.store, name, None)
        if view is None:
            await interaction.response.send_message(embed=embed, ephemeral=True)
        else:
            await interaction.response.send_message(embed=embed, view=view, ephemeral=True)

    @server.command(name="list", description="All game servers")
    async def list_servers(self, interaction: discord.Interaction[Any]) -> None:
        self.access.check(interaction, "list")
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(
            embed=list_embed(
                await self.servers.list_servers(),
                show_host=len(self.servers.camps) > 1,
                kept=[k.server for k in await self.servers.kept_data()],
            )
        )

    @server.command(name="delete", description="Delete a server (asks to confirm)")
    @app_commands.describe(purge="Also delete its data (worlds, saves); cannot be undone")
    @app_commands.autocomplete(name=server_autocomplete)
    async def delete(
        self, interaction: discord.Interaction[Any], name: str, purge: bool = False
    ) -> None:
        self.access.check(interaction, "delete", name)
        kind = "purge" if purge else "delete"
        if purge and await self.servers.store.find_server(name) is None:
            # A plain delete kept its data: purge:true removes that.
            kept = [k for k in await self.servers.kept_data() if k.server == name]
            if not kept:
                raise ServerNotFound(name)
            volumes = ", ".join(v for k in kept for v in k.volumes)
            what = f"the data kept from the deleted server **{name}** ({volumes})"
            kind = "purgekept"  # confirmed, it never deletes a server made since
        else:
            await self._precheck(name)
            data = "and **all its data**" if purge else "(its data volumes are kept)"
            what = f"**{name}** {data}"
        embed = Embed(
            title=f"Delete {name}?",
            description=f"<@{interaction.user.id}>, confirm deleting {what}. "
            f"This expires in {self.confirm_timeout} s.",
            colour=discord.Colour.red() if purge else discord.Colour.orange(),
        )
        await ask_confirmation(
            interaction,
            kind=kind,
            arg=name,
            label="Delete",
            embed=embed,
            timeout=self.confirm_timeout,
            undone=self.confirm_texts(kind, name)[1],
        )

    @server.command(
        name="reinstall", description="Run the war plan's install step again (asks to confirm)"
    )
    @app_commands.autocomplete(name=server_autocomplete)
    async def reinstall(self, interaction: discord.Interaction[Any], name: str) -> None:
        self.access.check(interaction, "reinstall", name)
        await self._precheck(name)
        plan = await self.servers.require_install(name)
        backup = " and backs it up" if any(v.backup for v in plan.volumes) else ""
        embed = Embed(
            title=f"Reinstall {name}?",
            description=f"<@{interaction.user.id}>, confirm running the install step of "
            f"**{name}** again: it stops the server{backup}, and the script may overwrite its "
            f"files. This expires in {self.confirm_timeout} s.",
            colour=discord.Colour.orange(),
        )
        await ask_confirmation(
            interaction,
            kind="reinstall",
            arg=name,
            label="Reinstall",
            embed=embed,
            timeout=self.confirm_timeout,
            undone=self.confirm_texts("reinstall", name)[1],
        )

    # Confirmable: the prompt's buttons come back here, also after a restart.
    confirm_kinds = ("delete", "purge", "purgekept", "reinstall")

    def confirm_texts(self, kind: str, arg: str) -> tuple[str, str]:
        if kind == "reinstall":
            return f"Reinstalling {arg}…", f"**{arg}** was not reinstalled"
        if kind == "purgekept":
            return f"Deleting the data kept from {arg}…", f"the data kept from **{arg}** stays"
        return f"Deleting {arg}…", f"**{arg}** was not deleted"

    async def confirmed(
        self, interaction: discord.Interaction[Any], kind: str, arg: str, progress: Progress
    ) -> str:
        if kind == "reinstall":
            self.access.check(interaction, "reinstall", arg)  # roles may have changed since
            # An install may take minutes: its steps and the script's latest line show.
            done = await self.servers.reinstall(arg, actor=actor(interaction), progress=progress)
            backup = f" after backup #{done.backup_id}" if done.backup_id is not None else ""
            again = " It was running and is ready again." if done.restarted else ""
            return f"Reinstalled **{arg}** in {done.seconds:.0f} s{backup}.{again}"
        self.access.check(interaction, "delete", arg)  # roles may have changed since
        if kind == "purgekept":
            await self.servers.purge_kept(arg, actor=actor(interaction))
            return f"Deleted the data kept from **{arg}**."
        result = await self.servers.delete(arg, actor=actor(interaction), purge=kind == "purge")
        if result.removed_volumes:
            return f"Deleted **{arg}** and its data."
        return (
            f"Deleted **{arg}**. Its data is kept; creating a server named `{arg}` again reuses it."
        )

    @server.command(name="panel", description="Post Start/Stop/Restart/Status buttons")
    @app_commands.autocomplete(name=server_autocomplete)
    async def panel(self, interaction: discord.Interaction[Any], name: str) -> None:
        self.access.check(interaction, "panel", name)
        record = await self.servers.store.get_server(name)
        embed = Embed(
            title=f"{record.name} control panel",
            description=f"War plan: {record.warplan}",
            colour=INFO,
        )
        await interaction.response.send_message(embed=embed, view=panel_view(name))

    async def panel_action(
        self, interaction: discord.Interaction[Any], action: str, name: str
    ) -> None:
        self.access.check(interaction, action, name)
        if action == "status":
            await self.servers.store.get_server(name)
            await interaction.response.defer(ephemeral=True, thinking=True)
            st = await self.servers.status(name)
            await interaction.edit_original_response(
                embed=status_embed(
                    st, next_stop=self._next_stop(name), show_host=len(self.servers.camps) > 1
                )
            )
            return
        await self._precheck(name)
        await interaction.response.defer(ephemeral=True, thinking=True)
        title = {"start": "Starting", "stop": "Stopping", "restart": "Restarting"}[action]
        progress = ProgressMessage(
            interaction, f"{title} {name}", self.interval, lifetime=self.lifetime
        )
        if action == "stop":
            stopped = await self.servers.stop(name, actor=actor(interaction), progress=progress)
            text = f"**{name}** stopped." if stopped else f"**{name}** was not running."
            await progress.finish(Embed(description=text, colour=OK))
            return
        call = self.servers.start if action == "start" else self.servers.restart
        result = await call(name, actor=actor(interaction), progress=progress)
        await progress.finish(started_embed(result))
