"""Who may do what: Discord roles (ids or names, from config) mapped to capabilities.

Pure logic over plain values so it is tested without Discord; the cogs pass the member's
role ids and names in.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum

from bot.errors import PeonError
from bot.settings import GuildSettings, RoleGrants


class Level(IntEnum):
    NONE = 0
    PLAYER = 1
    OPERATOR = 2
    ADMIN = 3


# The capability each action needs. "start" and "postpone" may drop to PLAYER per guild
# (players_can_start, players_can_postpone).
ACTIONS: dict[str, Level] = {
    "list": Level.PLAYER,
    "status": Level.PLAYER,
    "warplan": Level.PLAYER,
    "start": Level.OPERATOR,
    "stop": Level.OPERATOR,
    "restart": Level.OPERATOR,
    "update": Level.OPERATOR,
    "logs": Level.OPERATOR,
    "console": Level.OPERATOR,
    "audit": Level.OPERATOR,
    "postpone": Level.OPERATOR,
    "backup": Level.OPERATOR,
    "restore": Level.ADMIN,
    "schedule": Level.OPERATOR,
    "create": Level.ADMIN,
    "settings": Level.ADMIN,
    "delete": Level.ADMIN,
    "reinstall": Level.ADMIN,
    "panel": Level.ADMIN,
    "board": Level.ADMIN,
    "reload": Level.ADMIN,
}

VERBS = {
    "list": "list servers",
    "status": "see server status",
    "warplan": "see war plans",
    "start": "start servers",
    "stop": "stop servers",
    "restart": "restart servers",
    "update": "update servers",
    "logs": "read server logs",
    "console": "send console commands",
    "audit": "read the audit log",
    "postpone": "keep servers running past an automatic stop",
    "backup": "back servers up",
    "restore": "restore or delete backups",
    "schedule": "change schedules",
    "create": "create servers",
    "settings": "change server settings",
    "delete": "delete servers",
    "reinstall": "reinstall servers",
    "panel": "post control panels",
    "board": "post the status board",
    "reload": "reload the configuration",
}


class PermissionDenied(PeonError):
    def __init__(self, action: str, needed: Level) -> None:
        self.action, self.needed = action, needed
        super().__init__(
            f"You need the PEON {needed.name.lower()} role to {VERBS.get(action, action)}."
        )


@dataclass(frozen=True)
class Member:
    """What the permission check needs to know about a Discord member."""

    role_ids: frozenset[int]
    role_names: frozenset[str]
    discord_admin: bool = False


def _granted(grants: RoleGrants, member: Member) -> Level:
    def match(refs: Collection[int | str]) -> bool:
        return any(
            (r in member.role_ids) if isinstance(r, int) else (r in member.role_names) for r in refs
        )

    for level, refs in (
        (Level.ADMIN, grants.admin),
        (Level.OPERATOR, grants.operator),
        (Level.PLAYER, grants.player),
    ):
        if match(refs):
            return level
    return Level.NONE


def level_of(guild: GuildSettings | None, member: Member, server: str | None = None) -> Level:
    if guild is None:
        return Level.NONE
    level = _granted(guild.roles, member)
    if guild.discord_admins_are_admins and member.discord_admin:
        level = Level.ADMIN
    if server is not None and server in guild.servers:
        level = max(level, _granted(guild.servers[server], member))
    return level


def needed_for(guild: GuildSettings | None, action: str) -> Level:
    needed = ACTIONS[action]
    if guild is not None and (
        (action == "start" and guild.players_can_start)
        or (action == "postpone" and guild.players_can_postpone)
    ):
        return Level.PLAYER
    return needed


def check(
    guild: GuildSettings | None, member: Member, action: str, server: str | None = None
) -> None:
    """Raise PermissionDenied unless the member may do `action` (on `server`)."""
    needed = needed_for(guild, action)
    if level_of(guild, member, server) < needed:
        raise PermissionDenied(action, needed)
