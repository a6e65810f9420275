"""/backup ...: thin adapters to BackupService."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.aio import Progress
from bot.backups import BackupService
from bot.client import Access, Embed, timestamp
from bot.models import Backup
from bot.servers import ServerService
from cogs.common import (
    INFO,
    MAX_CHOICES,
    OK,
    ProgressMessage,
    actor,
    ask_confirmation,
    server_autocomplete,
)

if TYPE_CHECKING:
    from bot.client import PeonBot

log = logging.getLogger(__name__)


def backup_line(b: Backup) -> str:
    lock = " 🔒" if b.locked else ""
    added = "" if b.added is None else f" (+{b.added / 2**20:.1f} MiB)"
    return (
        f"`#{b.id}` {timestamp(b.created_at, 'f')} · {b.size / 2**20:.1f} MiB{added} · "
        f"{b.trigger} · {b.where}{lock}"
    )


class BackupsCog(commands.Cog, name="BackupsCog"):
    backup = app_commands.Group(name="backup", description="Backups of server data",
                                guild_only=True)  # fmt: skip

    def __init__(self, bot: PeonBot) -> None:
        self.backups: BackupService = bot.services.backups
        self.servers: ServerService = bot.services.servers
        self.access: Access = bot.access
        self.bot = bot  # its Discord settings, as /peon reload leaves them

    @property
    def confirm_timeout(self) -> int:
        return self.bot.discord_settings.confirm_timeout

    @property
    def interval(self) -> float:
        return self.bot.discord_settings.progress_interval

    @property
    def lifetime(self) -> float:
        return self.bot.discord_settings.interaction_lifetime

    async def backup_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[int]]:
        server = getattr(interaction.namespace, "server", None)
        out = []
        for b in await self.backups.list(server or None):
            label = (
                f"#{b.id} {b.server} {b.created_at:%Y-%m-%d %H:%M} UTC · "
                f"{b.size / 2**20:.1f} MiB · {b.trigger}"
            )
            if current.strip("#") in label:
                out.append(app_commands.Choice(name=label[:100], value=b.id))
        return out[:MAX_CHOICES]

    @backup.command(name="create", description="Back a server up now")
    @app_commands.autocomplete(server=server_autocomplete)
    async def create(self, interaction: discord.Interaction[Any], server: str) -> None:
        self.access.check(interaction, "backup", server)
        await self.servers.store.get_server(server)
        await interaction.response.defer(thinking=True)
        progress = ProgressMessage(
            interaction, f"Backing up {server}", self.interval, lifetime=self.lifetime
        )
        b = await self.backups.create(server, actor=actor(interaction))
        await progress.finish(
            Embed(
                description=f"Backed up **{server}**: backup #{b.id}, {b.size / 2**20:.1f} MiB "
                f"in {b.seconds:.1f} s.",
                colour=OK,
            )
        )

    @backup.command(name="list", description="A server's backups, newest first")
    @app_commands.autocomplete(server=server_autocomplete)
    async def list_backups(self, interaction: discord.Interaction[Any], server: str) -> None:
        self.access.check(interaction, "list")
        await self.servers.store.get_server(server)
        backups = await self.backups.list(server)
        embed = Embed(title=f"Backups of {server}", colour=INFO)
        embed.description = (
            "\n".join(backup_line(b) for b in backups)[:4000]
            or "No backups yet. Make one with `/backup create`."
        )
        await interaction.response.send_message(embed=embed)

    @backup.command(name="restore", description="Replace a server's data with a backup")
    @app_commands.autocomplete(server=server_autocomplete)
    @app_commands.autocomplete(backup=backup_autocomplete)
    async def restore(
        self, interaction: discord.Interaction[Any], server: str, backup: int
    ) -> None:
        self.access.check(interaction, "restore", server)
        b = await self.backups.get_for(server, backup)
        embed = Embed(
            title=f"Restore {server}?",
            description=f"<@{interaction.user.id}>, confirm replacing the data of **{server}** "
            f"with backup #{b.id} from {timestamp(b.created_at, 'f')}. The server is stopped "
            f"for it, and its current data is backed up first. This expires in "
            f"{self.confirm_timeout} s.",
            colour=discord.Colour.orange(),
        )
        await ask_confirmation(
            interaction,
            kind="restore",
            arg=f"{server}.{b.id}",
            label="Restore",
            embed=embed,
            timeout=self.confirm_timeout,
            undone=f"**{server}** was not restored",
        )

    # Confirmable: the prompt's buttons come back here, also after a restart.
    confirm_kinds = ("restore",)

    def confirm_texts(self, kind: str, arg: str) -> tuple[str, str]:
        server = arg.partition(".")[0]
        return f"Restoring {server}…", f"**{server}** was not restored"

    async def confirmed(
        self, interaction: discord.Interaction[Any], kind: str, arg: str, progress: Progress
    ) -> str:
        server, _, backup_id = arg.partition(".")
        self.access.check(interaction, "restore", server)  # roles may have changed since
        safety = await self.backups.restore(server, int(backup_id), actor=actor(interaction))
        kept = f" The data it had before is backup #{safety.id}." if safety else ""
        return f"Restored **{server}** from backup #{backup_id}.{kept}"

    @backup.command(name="delete", description="Delete a backup")
    @app_commands.autocomplete(backup=backup_autocomplete)
    async def delete(self, interaction: discord.Interaction[Any], backup: int) -> None:
        b = await self.backups.store.get_backup(backup)
        self.access.check(interaction, "restore", b.server)
        await self.backups.delete(backup, actor(interaction))
        await interaction.response.send_message(
            embed=Embed(description=f"Deleted backup #{backup} of **{b.server}**.", colour=OK)
        )

    @backup.command(name="lock", description="Lock or unlock a backup (locked: never pruned)")
    @app_commands.autocomplete(backup=backup_autocomplete)
    async def lock(self, interaction: discord.Interaction[Any], backup: int,
                   locked: bool = True) -> None:  # fmt: skip
        b = await self.backups.store.get_backup(backup)
        self.access.check(interaction, "backup", b.server)
        b = await self.backups.set_locked(backup, locked, actor(interaction))
        state = "locked: it is never pruned" if b.locked else "unlocked"
        await interaction.response.send_message(
            embed=Embed(description=f"Backup #{b.id} of **{b.server}** is {state}.", colour=OK)
        )
