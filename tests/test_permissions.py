from __future__ import annotations

import pytest

from bot.permissions import ACTIONS, Level, Member, PermissionDenied, check, level_of
from bot.settings import GuildSettings, RoleGrants

GUILD = GuildSettings(
    roles=RoleGrants(admin=[4001], operator=["Moderator"], player=["@everyone"]),
    servers={"alpha": RoleGrants(operator=[4999])},
)


def member(*roles: int | str, admin: bool = False) -> Member:
    return Member(
        frozenset(r for r in roles if isinstance(r, int)),
        frozenset({"@everyone", *(r for r in roles if isinstance(r, str))}),
        admin,
    )


def test_levels_by_role_id_name_and_discord_admin() -> None:
    assert level_of(GUILD, member(4001)) == Level.ADMIN
    assert level_of(GUILD, member("Moderator")) == Level.OPERATOR
    assert level_of(GUILD, member()) == Level.PLAYER
    assert level_of(GUILD, member(admin=True)) == Level.ADMIN
    no_admin = GUILD.model_copy(update={"discord_admins_are_admins": False})
    assert level_of(no_admin, member(admin=True)) == Level.PLAYER
    assert level_of(None, member(4001)) == Level.NONE


def test_per_server_grant_only_applies_to_that_server() -> None:
    crew = member(4999)
    check(GUILD, crew, "stop", "alpha")
    with pytest.raises(PermissionDenied, match="You need the PEON operator role to stop servers"):
        check(GUILD, crew, "stop", "beta")


def test_players_can_start_only_when_allowed() -> None:
    with pytest.raises(PermissionDenied, match="operator role to start servers"):
        check(GUILD, member(), "start", "alpha")
    check(GUILD.model_copy(update={"players_can_start": True}), member(), "start", "alpha")


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_matrix(action: str) -> None:
    for who, level in (
        (member(4001), Level.ADMIN),
        (member("Moderator"), Level.OPERATOR),
        (member(), Level.PLAYER),
    ):
        if level >= ACTIONS[action]:
            check(GUILD, who, action, "x")
        else:
            with pytest.raises(PermissionDenied):
                check(GUILD, who, action, "x")
    nobody = GuildSettings(roles=RoleGrants(admin=[1]))
    with pytest.raises(PermissionDenied):
        check(nobody, Member(frozenset(), frozenset({"@everyone"})), action)
