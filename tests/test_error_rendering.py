"""The one error renderer: what a user is told for each kind of error (pure logic)."""

from __future__ import annotations

from discord import app_commands

from bot.client import APOLOGY, error_text
from bot.errors import ServerBusy
from bot.permissions import Level, PermissionDenied


def test_domain_errors_are_shown_as_their_sentence() -> None:
    wrapped = app_commands.CommandInvokeError.__new__(app_commands.CommandInvokeError)
    wrapped.original = ServerBusy("alpha", "start")
    assert error_text(wrapped) == (
        "Server 'alpha' is busy (start in progress); try again when it finishes."
    )
    assert error_text(PermissionDenied("stop", Level.OPERATOR)) == (
        "You need the PEON operator role to stop servers."
    )


def test_failed_checks_and_unexpected_errors() -> None:
    assert error_text(app_commands.CheckFailure()) == "You don't have permission to do that here."
    # Anything else: no detail reaches the user (it may hold paths, ids or secrets).
    assert error_text(RuntimeError("password=hunter2 at /srv/x")) is None
    assert "hunter2" not in APOLOGY
