"""The bot under Discord's real rules (issue 12): the real discord.py client against the
emulator, which answers as Discord does when a rule is broken, with the real engine, the real
scheduler and a real SQLite file. One test per defect found in review."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import OPERATOR, cleanup_instance
from tests.discord_emulator import DiscordEmulator
from tests.test_discord_e2e import Runner, until
from tests.test_schedules_e2e import command, e2e_settings, notices, running, text_of

pytestmark = pytest.mark.docker


async def test_a_keep_running_hold_ends_with_the_stop_it_held(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    """Defect 0: the hold outlived its stop; after a restart, catch-up stopped the server as
    "the end of the time kept by Keep running", with players on it."""
    settings = e2e_settings(tmp_path, emu)
    first = Runner(settings, emu)
    await first.start()
    try:
        servers = first.services.servers
        await servers.create("fakegame", "alpha", {"world": "W"}, actor="test")
        await servers.start("alpha", actor="test")
        i = await command(emu, OPERATOR, "server stop", name="alpha", **{"in": "8s"})
        assert "Cancel with `/schedule remove id:1`" in text_of(i)
        await until(emu, lambda: bool(notices(emu, "stops in")), timeout=20)
        click = await emu.click(OPERATOR, notices(emu, "stops in")[0], "peon:auto:keep:alpha")
        await click.wait_done()
        assert await first.services.store.keep_until("alpha") is not None
        i = await command(emu, OPERATOR, "schedule remove", id=1)
        await until(emu, lambda: bool(notices(emu, "will not stop after all")))
        assert await first.services.store.keep_until("alpha") is None  # gone with its stop
    finally:
        await first.stop()
    second = Runner(settings, emu)  # a restart: catch-up reads the store
    await second.start()
    try:
        automation = second.bot.automation
        assert automation is not None and automation.pending("alpha") is None
        # Past where the old hold would have ended, plus the catch-up warning.
        await asyncio.sleep(10)
        assert running("alpha")
        assert notices(emu, r"alpha\*\* stopped") == []
    finally:
        await second.stop()
        cleanup_instance(settings.instance_id)
