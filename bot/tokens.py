"""HTTP API tokens: created (shown once), listed, revoked, and checked on every request.

A token is 256 random bits; the store keeps only its SHA-256, which is enough for a secret of
that entropy (a slow password hash guards guessable secrets, not random ones) and lets a
request's token be found with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime

from bot.errors import PeonError
from bot.models import ApiToken
from bot.permissions import ACTIONS, Level, PermissionDenied
from bot.store import Store

PREFIX = "peon_"  # recognisable in a leaked paste (secret scanners match on it)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ROLES: dict[str, Level] = {
    "admin": Level.ADMIN,
    "operator": Level.OPERATOR,
    "player": Level.PLAYER,
}


class TokenError(PeonError):
    """A token that cannot be created as asked; one sentence saying why."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(
        self, name: str, role: str, *, server: str | None = None, actor: str
    ) -> tuple[ApiToken, str]:
        """A new token; returns its record and the token itself, which is never stored."""
        if not NAME_RE.match(name):
            raise TokenError(
                f"'{name[:40]}' is not a valid token name: use 1-64 letters, digits, '_', '.' "
                "or '-'."
            )
        if role not in ROLES:
            raise TokenError(f"The role must be admin, operator or player, not '{role[:20]}'.")
        if server is not None:
            await self.store.get_server(server)  # ServerNotFound for a typo
        token = ApiToken(name, role, server, datetime.now(UTC), actor)
        secret = PREFIX + secrets.token_urlsafe(32)
        await self.store.add_token(token, digest(secret))
        scope = f" server={server}" if server else ""
        await self.store.audit(actor, "token-create", server, True, f"{name} role={role}{scope}")
        return token, secret

    async def list(self) -> list[ApiToken]:
        return await self.store.list_tokens()

    async def revoke(self, name: str, *, actor: str) -> None:
        await self.store.remove_token(name)
        await self.store.audit(actor, "token-revoke", None, True, name)

    async def authenticate(self, secret: str) -> ApiToken | None:
        """The token's record, or None for an unknown or revoked one."""
        if not secret.startswith(PREFIX) or len(secret) > 200:
            return None
        return await self.store.token_by_hash(digest(secret))


def token_level(token: ApiToken, server: str | None) -> Level:
    """What the token may do: its role, on its one server only when it is scoped to one."""
    if token.server is not None and server != token.server:
        return Level.NONE
    return ROLES.get(token.role, Level.NONE)


def check_token(
    token: ApiToken, action: str, server: str | None = None, *, players_can_start: bool = False
) -> None:
    """Raise PermissionDenied unless the token may do `action` (on `server`): the same table
    as Discord's roles (bot/permissions.py), with the API's own players_can_start."""
    needed = ACTIONS[action]
    if action == "start" and players_can_start:
        needed = Level.PLAYER
    if token_level(token, server) < needed:
        raise PermissionDenied(action, needed)
