"""/peon ...: the bot itself: status, help, reload."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import FIELD_VALUE_MAX, Access, Embed, clip, escape, timestamp
from bot.permissions import ACTIONS, Level, needed_for
from cogs.common import INFO, OK, WARN

if TYPE_CHECKING:
    from bot.client import PeonBot

HELP = [
    ("/server list", "list"),
    ("/server status name", "status"),
    ("/server start name", "start"),
    ("/server stop name", "stop"),
    ("/server restart name", "restart"),
    ("/server update name", "update"),
    ("/server logs name", "logs"),
    ("/server create warplan name", "create"),
    ("/server settings name", "settings"),
    ("/server delete name", "delete"),
    ("/server panel name", "panel"),
    ("/peon board channel", "board"),
    ("/warplan list · /warplan show", "warplan"),
    ("/peon reload", "reload"),
]


class PeonCog(commands.Cog, name="PeonCog"):
    peon = app_commands.Group(name="peon", description="About PEON", guild_only=True)

    def __init__(self, bot: PeonBot) -> None:
        self.bot = bot  # status reports the client itself: latency, versions
        self.access: Access = bot.access

    @peon.command(name="status", description="Bot, Docker engine and versions")
    async def status(self, interaction: discord.Interaction[Any]) -> None:
        self.access.check(interaction, "list")
        await interaction.response.defer(ephemeral=True, thinking=True)
        services = self.bot.services
        embed = Embed(title="PEON status", colour=OK)
        lines = []
        health = await services.servers.host_health()
        for h in health:
            name = f"**{h.name}**: " if len(health) > 1 else ""
            if h.engine is None:
                lines.append(f"🔴 {name}{h.error} ({h.servers} servers)")
                embed.colour = WARN
                continue
            e = h.engine
            lines.append(
                f"🟢 {name}Docker {e.version} · {e.containers_running} containers running"
                f" · {h.servers} servers · memory {_gib(h.allocated)}/{_gib(e.memory)} GiB "
                "allocated"
            )
        servers = await services.store.list_servers()
        embed.add_field(
            name="Docker hosts" if len(lines) > 1 else "Docker engine",
            value="\n".join(lines)[:1024],
            inline=False,
        )
        embed.add_field(name="Servers", value=str(len(servers)))
        embed.add_field(name="War plans", value=str(len(services.warplans.names())))
        embed.add_field(name="Gateway latency", value=f"{self.bot.latency * 1000:.0f} ms")
        embed.add_field(
            name="Event loop max stall", value=f"{self.bot.max_loop_stall * 1000:.1f} ms"
        )
        embed.add_field(
            name="Versions",
            inline=False,
            value=" · ".join(f"{k} {v}" for k, v in self.bot.versions().items()),
        )
        if hooks := self.bot.webhooks.status():
            lines = []
            for w in hooks:
                head = f"**{w.name}** ({w.kind}, {w.where})"
                if w.failing and w.failing_since is not None:
                    embed.colour = WARN
                    since, error = timestamp(w.failing_since), escape(w.last_error or "")
                    lines.append(f"🔴 {head}: failing since {since}, {w.failures} tries in a "
                                 f"row: {error}")  # fmt: skip
                else:
                    dropped = f", {w.dropped} dropped" if w.dropped else ""
                    lines.append(f"🟢 {head}: {w.delivered} sent{dropped}")
            embed.add_field(name="Webhooks", value="\n".join(lines)[:1024], inline=False)
        problems = self.bot.notice_problems()
        if problems:
            embed.colour = WARN
            embed.add_field(name="Notices", value="\n".join(f"⚠️ {p}" for p in problems),
                            inline=False)  # fmt: skip
        await interaction.edit_original_response(embed=embed)

    @peon.command(name="help", description="What you can do here")
    async def help(self, interaction: discord.Interaction[Any]) -> None:
        level = self.access.level(interaction)
        guild = self.access.settings.guilds.get(interaction.guild_id or 0)
        lines = []
        for usage, action in HELP:
            mark = "✅" if level >= needed_for(guild, action) else "🔒"
            lines.append(f"{mark} `{usage}` ({ACTIONS[action].name.lower()})")
        embed = Embed(
            title="PEON: game servers from Discord",
            colour=INFO,
            description=f"Your PEON role here: **{level.name.lower()}**.\n\n" + "\n".join(lines),
        )
        if level == Level.NONE:
            embed.set_footer(text="Ask an admin for a role PEON knows (config/peon.yaml).")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @peon.command(name="board", description="Post the live status board in a channel (admin)")
    @app_commands.describe(
        channel="Where to post it (it moves there from where it was); leave out to take it down"
    )
    async def board(
        self, interaction: discord.Interaction[Any], channel: discord.TextChannel | None = None
    ) -> None:
        self.access.check(interaction, "board")
        keeper, guild_id = self.bot.board, interaction.guild_id
        if keeper is None or guild_id is None:
            raise RuntimeError("the status board is not running")
        await interaction.response.defer(ephemeral=True, thinking=True)  # it asks every host
        if channel is not None:
            await keeper.place(guild_id, channel.id)
            text = (
                f"The status board is now in {channel.mention}; it changes by itself as "
                "servers start, stop and fill up."
            )
        elif await keeper.remove(guild_id):
            text = "The status board was taken down."
        else:
            text = "There is no status board here; name a channel to post one."
        await interaction.edit_original_response(embed=Embed(description=text, colour=OK))

    @peon.command(name="reload", description="Re-read config and war plans (admin)")
    async def reload(self, interaction: discord.Interaction[Any]) -> None:
        self.access.check(interaction, "reload")
        await interaction.response.defer(ephemeral=True, thinking=True)  # may sync commands
        report = await self.bot.reload()  # a broken config: ConfigError, nothing changed
        embed = Embed(title="Reloaded", colour=OK)
        applied = ", ".join(f"`{p}`" for p in report.applied) or "nothing changed in the config"
        embed.add_field(name="Applied", value=clip(applied, FIELD_VALUE_MAX), inline=False)
        notes = [n for section, lines in report.notes.items() if section != "webhooks"
                 for n in lines]  # fmt: skip
        if notes:
            embed.add_field(name="Also", value=clip("\n".join(notes), FIELD_VALUE_MAX))
        if hooks := report.notes.get("webhooks"):
            embed.add_field(name="Webhooks applied", value=clip(escape(", ".join(hooks)), 1024))
        if report.restart:
            embed.colour = WARN
            restart = ", ".join(f"`{p}`" for p in report.restart)
            embed.add_field(
                name="Needs a restart (the old value stays until then)",
                value=clip(restart, FIELD_VALUE_MAX),
                inline=False,
            )
        if report.failed:
            embed.colour = WARN
            failed = "\n".join(escape(f) for f in report.failed)
            embed.add_field(name="Not applied (see the log)", value=clip(failed, FIELD_VALUE_MAX),
                            inline=False)  # fmt: skip
        plans = report.warplans
        if plans is not None:
            embed.add_field(name="War plans", value=f"{len(plans.plans)} valid")
            if plans.errors:
                embed.colour = WARN
                embed.add_field(
                    name="Not reloaded (the last good version stays in force)",
                    inline=False,
                    value=clip("\n".join(f"`{e}`" for e in plans.errors), FIELD_VALUE_MAX),
                )
        await interaction.edit_original_response(embed=embed)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"
