"""/server audit: a server's latest events, paged with Older/Newest buttons whose custom ids
carry the page (so they keep working after the bot restarts)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

import discord

from bot.client import Embed, clip, escape, mention_actors, render_error, timestamp
from bot.errors import ServerNotFound
from bot.events import Event
from bot.store import Store
from cogs.common import INFO

if TYPE_CHECKING:
    from bot.client import PeonBot

PAGE = 15
DETAIL_MAX = 160


def event_line(e: Event) -> str:
    mark = "✅" if e.ok else "❌"
    detail = f": {escape(clip(e.detail, DETAIL_MAX))}" if e.detail else ""
    return f"{timestamp(e.at, 'f')} {mark} **{e.kind}** by {mention_actors(e.actor)}{detail}"


async def audit_page(
    store: Store, server: str, before: int | None
) -> tuple[Embed, discord.ui.View | None]:
    """The page of `server`'s events older than `before` (the newest page without it)."""
    events = await store.latest_events(server, PAGE + 1, before)
    if not events and before is None and await store.find_server(server) is None:
        raise ServerNotFound(server)
    more = len(events) > PAGE
    events = events[:PAGE]
    embed = Embed(
        title=f"Audit log of {server}",
        description="\n".join(map(event_line, events)) or "Nothing recorded yet.",
        colour=INFO,
    )
    if events:
        embed.set_footer(text=f"Events #{events[-1].id} to #{events[0].id}")
    view = discord.ui.View(timeout=None)
    if more:
        view.add_item(AuditButton(server, events[-1].id))
    if before is not None:
        view.add_item(AuditButton(server, None))
    return embed, (view if view.children else None)


class AuditButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"peon:audit:(?P<server>[a-z0-9][a-z0-9-]{0,31}):(?P<before>\d*)",
):
    """Older (a page before an event id) or Newest (no id)."""

    def __init__(self, server: str, before: int | None) -> None:
        label = "Older" if before is not None else "Newest"
        super().__init__(
            discord.ui.Button(
                label=label,
                style=discord.ButtonStyle.secondary,
                custom_id=f"peon:audit:{server}:{before if before is not None else ''}",
            )
        )
        self.server, self.before = server, before

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> AuditButton:
        return cls(match["server"], int(match["before"]) if match["before"] else None)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = cast("PeonBot", interaction.client)
        try:
            bot.access.check(interaction, "audit", self.server)  # roles may have changed
            embed, view = await audit_page(bot.services.store, self.server, self.before)
            await interaction.response.edit_message(embed=embed, view=view)
        except Exception as e:
            await render_error(interaction, e)
