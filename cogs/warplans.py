"""/warplan ...: browse the war plans in force."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import Access, Embed
from bot.warplans import WarplanLibrary
from cogs.common import INFO

if TYPE_CHECKING:
    from bot.client import PeonBot


class WarplansCog(commands.Cog, name="WarplansCog"):
    warplan = app_commands.Group(name="warplan", description="Game recipes", guild_only=True)

    def __init__(self, bot: PeonBot) -> None:
        self.warplans: WarplanLibrary = bot.services.warplans
        self.access: Access = bot.access

    async def name_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        current = current.lower()
        return [
            app_commands.Choice(name=f"{p.title} ({p.name})"[:100], value=p.name)
            for p in self.warplans.catalog.plans.values()
            if current in p.name or current in p.title.lower()
        ][:25]

    @warplan.command(name="list", description="Games PEON can deploy")
    async def list_plans(self, interaction: discord.Interaction[Any]) -> None:
        self.access.check(interaction, "warplan")
        plans = self.warplans.catalog.plans.values()
        lines = [f"**{p.title}** · `{p.name}` · {p.image}" for p in plans]
        embed = Embed(
            title="War plans",
            colour=INFO,
            description="\n".join(lines)[:4000] or "No war plans loaded.",
        )
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @warplan.command(name="show", description="One war plan: ports, settings, data")
    @app_commands.autocomplete(name=name_autocomplete)
    async def show(self, interaction: discord.Interaction[Any], name: str) -> None:
        self.access.check(interaction, "warplan")
        plan = self.warplans.get(name)
        embed = Embed(
            title=f"{plan.title} (`{plan.name}`)",
            description=plan.description[:4000] or None,
            colour=INFO,
        )
        embed.add_field(name="Image", value=f"`{plan.image}`", inline=False)
        embed.add_field(
            name="Ports",
            value="\n".join(
                f"{p.name}: {p.container}/{p.protocol} → {'auto' if p.host == 'auto' else p.host}"
                for p in plan.ports
            )
            or "—",
        )
        embed.add_field(
            name="Data",
            value="\n".join(
                f"{v.name}: `{v.path}`{' (backed up)' if v.backup else ''}" for v in plan.volumes
            )
            or "—",
        )
        if plan.variables:
            embed.add_field(
                name="Settings",
                inline=False,
                value="\n".join(
                    f"`{v.name}` ({v.type}{', required' if v.required else ''}"
                    f"{', secret' if v.secret else ''}) {v.description}"[:200]
                    for v in plan.variables
                )[:1024],
            )
        if plan.links:
            embed.add_field(name="Docs", value="\n".join(plan.links)[:1024], inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)
