"""The bot under Discord's real rules (issue 12): the real discord.py client against the
emulator, which answers as Discord does when a rule is broken, with the real engine, the real
scheduler and a real SQLite file. One test per defect found in review."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest
import yaml

from bot.settings import Settings
from tests.conftest import ADMIN, OPERATOR, TEST_WARPLANS, cleanup_instance, fakegame_variant
from tests.discord_emulator import DiscordEmulator, Message
from tests.test_discord_e2e import (
    LONG,
    Runner,
    answer,
    bot_settings,
    channel,
    final_text,
    finished,
    refusal,
    running_bot,
    slash,
    until,
)
from tests.test_schedules_e2e import button, command, e2e_settings, notices, running, text_of

pytestmark = pytest.mark.docker


async def test_a_keep_running_hold_ends_with_the_stop_it_held(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    """Defect 0: the hold outlived its stop; after a restart, catch-up stopped the server as
    "the end of the time kept by Keep running", with players on it."""
    settings = e2e_settings(tmp_path, emu)
    try:
        await hold_then_change_schedule(settings, emu)
        second = Runner(settings, emu)  # a restart: catch-up reads the store
        await second.start()
        try:
            automation = second.bot.automation
            assert automation is not None and automation.pending("alpha") is None
            await asyncio.sleep(10)  # past where the old hold would end, plus its warning
            assert running("alpha")
            assert notices(emu, r"alpha\*\* stopped") == []
        finally:
            await second.stop()
    finally:
        cleanup_instance(settings.instance_id)


async def hold_then_change_schedule(settings: Settings, emu: DiscordEmulator) -> None:
    first = Runner(settings, emu)
    await first.start()
    try:
        servers = first.services.servers
        await servers.create("fakegame", "alpha", {"world": "W"}, actor="test")
        await servers.start("alpha", actor="test")
        i = await command(emu, OPERATOR, "server stop", name="alpha", **{"in": "8s"})
        assert "Cancel with `/schedule remove id:1`" in text_of(i)
        await until(emu, lambda: bool(notices(emu, "stops in")), timeout=20)
        warning = notices(emu, "stops in")[0]
        click = await emu.click(OPERATOR, warning, button(warning, "keep"))
        await click.wait_done()
        assert await first.services.store.keep_until("alpha") is not None
        await command(emu, OPERATOR, "schedule remove", id=1)
        await until(emu, lambda: bool(notices(emu, "will not stop after all")))
        assert await first.services.store.keep_until("alpha") is None  # gone with its stop
    finally:
        await first.stop()


async def test_warning_buttons_act_on_the_stop_they_warned_about(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    """Defect 7: an old Keep running postponed whatever stop was pending, an old Stop now
    stopped today's server, and a failed Stop now replaced the warning with the error."""
    settings = e2e_settings(tmp_path, emu)
    runner = Runner(settings, emu)
    await runner.start()
    try:
        store, automation = runner.services.store, runner.bot.automation
        assert automation is not None
        await runner.services.servers.create("fakegame", "alpha", {"world": "W"}, actor="test")
        await runner.services.servers.start("alpha", actor="test")
        await command(emu, OPERATOR, "server stop", name="alpha", **{"in": "8s"})
        await until(emu, lambda: bool(notices(emu, "stops in")), timeout=20)
        warning = notices(emu, "stops in")[0]
        keep, stop = button(warning, "keep"), button(warning, "stop")
        # The same warning elsewhere (each configured guild's channel gets one, and a click
        # that Discord reported as failed leaves the buttons on screen).
        copy = emu.inject_message("peon", warning.content, components=warning.components)
        click = await emu.click(OPERATOR, warning, keep)
        await click.wait_done()
        held = automation.pending("alpha")
        assert held is not None and held.held
        # The same click again (a retry, or a second member): out of date, nothing changes.
        again = await emu.click(OPERATOR, copy, keep)
        await again.wait_done()
        assert [m.ephemeral for m in again.followups] == [True]
        assert "This warning is out of date" in again.followups[0].text()
        assert automation.pending("alpha") == held
        # Its Stop now is as old: the server keeps running.
        old_stop = await emu.click(OPERATOR, copy, stop)
        await old_stop.wait_done()
        assert "This warning is out of date" in old_stop.followups[0].text()
        assert running("alpha")
        # A button from before warnings were bound to their stop: out of date too.
        legacy = emu.inject_message("peon", "⚠️ **alpha** stops in 5 minutes", components=[
            {"type": 1, "components": [{"type": 2, "style": 4, "label": "Stop now",
                                        "custom_id": "peon:auto:stop:alpha"}]}])  # fmt: skip
        click = await emu.click(OPERATOR, legacy, "peon:auto:stop:alpha")
        await click.wait_done()
        assert "This warning is out of date" in click.followups[0].text()
        assert running("alpha")

        # The next warning (for the held time) has buttons of its own; a Stop now that fails
        # (the server is busy) tells the clicker alone and leaves the warning as it was.
        def later() -> list[Message]:
            return [m for m in notices(emu, "stops in") if m.id > legacy.id]

        await until(emu, lambda: bool(later()), timeout=20)
        second = later()[0]
        await store.acquire("alpha", "backup")
        try:
            click = await emu.click(OPERATOR, second, button(second, "stop"))
            await click.wait_done()
            assert "busy (backup in progress)" in click.followups[0].text()
            assert click.followups[0].ephemeral
            shown = emu.message(second.id)
            assert shown is not None and shown.content == second.content
            assert len(shown.buttons()) == 2
        finally:
            await store.release("alpha")
        click = await emu.click(OPERATOR, second, button(second, "stop"))
        await click.wait_done()
        await until(emu, lambda: "Stopped now by" in (emu.message(second.id) or second).content)
        assert not running("alpha")
    finally:
        await runner.stop()
        cleanup_instance(settings.instance_id)


async def test_prompts_and_forms_outlive_a_restart(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    """Defect 8: confirmation buttons and the create form were in-memory views; after a
    restart a click got no answer ("This interaction failed")."""
    settings = bot_settings(tmp_path, emu).model_copy(
        update={"discord": bot_settings(tmp_path, emu).discord.model_copy(
            update={"confirm_timeout": 4})}
    )  # fmt: skip
    first = Runner(settings, emu)
    await first.start()
    try:
        try:
            for name in ("one", "two"):
                await first.services.servers.create("fakegame", name, actor="test")
            delete_one = await slash(emu, ADMIN, "delete", name="one")
            delete_two = await slash(emu, ADMIN, "delete", name="two")
            form = await slash(emu, ADMIN, "create", warplan="fakegame", name="three")
            assert form.modal is not None
        finally:
            await first.stop()
        second = Runner(settings, emu)  # a new process: no views in memory
        await second.start()
        try:
            ok = await emu.click(ADMIN, delete_one.original, answer(delete_one.original))
            await ok.wait_done()
            await until(emu, lambda: "Deleted **one**" in emu.message(ok.original.id).text())
            assert await second.services.store.find_server("one") is None
            # The form typed before the restart: one sentence, not silence.
            sub = await emu.submit_modal(ADMIN, form.modal["custom_id"], {"world": "W"})
            await sub.wait_done()
            assert refusal(sub).startswith("This form is from before PEON restarted")
            assert await second.services.store.find_server("three") is None
            # A prompt past its expiry (its timer died with the first process): said so.
            await asyncio.sleep(4)
            late = await emu.click(ADMIN, delete_two.original, answer(delete_two.original))
            await late.wait_done()
            shown = emu.message(delete_two.original.id)
            assert shown is not None and "Confirmation expired" in shown.text()
            assert shown.buttons() == []
            assert await second.services.store.find_server("two") is not None
        finally:
            await second.stop()
    finally:
        cleanup_instance(settings.instance_id)


async def test_sync_global_does_not_show_every_command_twice(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    """Defect 9: with sync_global the commands were synced globally and copied into each
    configured guild, so members saw each one twice."""
    base = bot_settings(tmp_path, emu)
    settings = base.model_copy(
        update={"discord": base.discord.model_copy(update={"sync_global": True})}
    )
    async with running_bot(settings, emu):
        names = {c["name"] for c in emu.global_commands}
        assert {"server", "schedule", "backup", "peon"} <= names
        assert emu.commands == []  # nothing in the guild on top of the global ones
    async with running_bot(base, emu):  # back to guild commands only: the global ones go
        assert {c["name"] for c in emu.commands} >= {"server", "peon"}
        assert emu.global_commands == []


def slow_plan(tmp_path: Path, ready_delay: int) -> Path:
    """The test plan, the fake game taking `ready_delay` s to be ready."""
    env = yaml.safe_load((TEST_WARPLANS / "fakegame.yaml").read_text())["env"]
    return fakegame_variant(tmp_path, env={**env, "READY_DELAY": str(ready_delay)})


async def test_an_operation_longer_than_the_token_ends_in_the_channel(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    """Defect 1: past the token's lifetime every edit got 401 and the outcome and the ready
    notice were lost. Lifetime here: 3 s (Discord: 15 minutes), and the bot is told so."""
    emu.token_lifetime = 3
    base = bot_settings(tmp_path, emu)
    settings = base.model_copy(update={
        "warplans_dir": slow_plan(tmp_path, 8),
        "discord": base.discord.model_copy(update={"interaction_lifetime": 3}),
    })  # fmt: skip
    async with running_bot(settings, emu) as peon:
        await peon.services.servers.create("fakegame", "slow", actor="test")
        i = await slash(emu, OPERATOR, "start", name="slow")
        # Moved before the token died: the original points at a channel message...
        await until(emu, lambda: "Continued in" in final_text(i), timeout=10)
        moved = [m for m in channel(emu, "general") if "request continues here" in m.content]
        assert len(moved) == 1 and moved[0].pings == frozenset()
        # ...which shows the outcome, and the ready notice is posted.
        await until(emu, lambda: "is ready to join" in emu.message(moved[0].id).text(), LONG)
        await until(emu, lambda: any("**slow** is ready to join" in m.content
                                     for m in channel(emu, "peon")))  # fmt: skip
        assert [r for r in emu.rejected if r[0] == 401] == []  # a dead token was never used


@pytest.fixture
async def peon(tmp_path: Path, emu: DiscordEmulator, fakegame: str) -> AsyncIterator[Runner]:
    async with running_bot(bot_settings(tmp_path, emu), emu) as runner:
        yield runner


async def test_a_slow_discord_does_not_slow_a_start(peon: Runner, emu: DiscordEmulator) -> None:
    """Defect 6: progress edits were awaited inside the Docker operation."""
    await peon.services.servers.create("fakegame", "lag", actor="test")
    delayed = 0

    def slow(handler: Any) -> Any:
        async def wrapped(rec: Any, **kw: Any) -> Any:
            nonlocal delayed
            if rec.method == "PATCH":
                delayed += 1
                await asyncio.sleep(3)  # Discord answering each edit in 3 s
            return await handler(rec, **kw)

        return wrapped

    emu._routes = [(m, p, slow(h) if h == emu._webhook_msg else h) for m, p, h in emu._routes]
    i = await emu.slash(OPERATOR, "server", subcommand="start", options={"name": "lag"})

    async def started() -> bool:
        log = await peon.services.store.audit_log("lag", 5)
        return any(e.action == "start" and e.ok for e in log)

    while not await started():
        await asyncio.sleep(0.05)
    # The server was ready while Discord still had the first edits to answer.
    assert "is ready to join" not in final_text(i)
    await finished(emu, i, "is ready to join")
    assert delayed >= 1


async def test_status_of_a_full_server_fits_and_names_do_not_ping(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    """Defects 3 and 4: 64+ players passed the 1024-character field limit (400, then the
    apology); player names went raw into announcements, pinging roles."""
    settings = e2e_settings(tmp_path, emu)
    settings = settings.model_copy(update={
        "automation": settings.automation.model_copy(update={"announce_players": True})
    })  # fmt: skip
    async with running_bot(settings, emu) as peon:
        servers = peon.services.servers
        await servers.create("fakegame", "crowd", actor="test")
        await servers.start("crowd", actor="test")
        role = emu.roles["admin"]
        hostile = [f"<@&{role}>", "@everyone", "**loud**"]
        for name in hostile:
            await servers.console("crowd", f"join {name}", actor="test")
        await until(emu, lambda: bool(notices(emu, "joined")), timeout=20)
        for n in range(70):
            await servers.console("crowd", f"join player_{n:02d}_with_a_rather_long_name",
                                  actor="test")  # fmt: skip
        i = await command(emu, OPERATOR, "server status", name="crowd")
        text = await finished(emu, i, "Players")
        assert ("more" in text and "73/" in text) or "73 (" in text, text
        for m in channel(emu, "peon"):
            assert m.pings <= {f"role:{emu.roles['player']}"}, (m.content, m.pings)
        joined = notices(emu, "joined")[0].content
        assert f"<@&{role}>" not in joined and "**loud**" not in joined
        assert emu.rejected == []


async def test_schedule_commands_answer_while_docker_is_slow(
    peon: Runner, emu: DiscordEmulator
) -> None:
    """Defect 2: /schedule add called Docker before answering; with a slow engine Discord
    said "The application did not respond" although the schedule was saved."""
    servers = peon.services.servers
    await servers.create("fakegame", "sched", actor="test")
    dockerd = int(subprocess.check_output(["pidof", "dockerd"]).split()[0])
    os.kill(dockerd, signal.SIGSTOP)  # the engine hangs, as a loaded host's does
    try:
        i = await emu.slash(OPERATOR, "schedule add window", options={
            "server": "sched", "days": "daily", "start": "08:00", "stop": "09:00"})  # fmt: skip
        await asyncio.wait_for(i.answered.wait(), 3)
    finally:
        await asyncio.sleep(4)  # past Discord's deadline with the engine still hung
        os.kill(dockerd, signal.SIGCONT)
    await finished(emu, i, "Schedule #1 added")
    assert [r for r in emu.rejected if r[1] == 10062] == []
    assert len(await peon.services.store.list_schedules("sched")) == 1


async def test_unmentionable_notice_role_is_reported(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    """Defect 9: a mention role that is not mentionable, with no Mention Everyone, notifies
    nobody; PEON says so in /peon status (and its log at startup)."""
    emu.bot_permissions &= ~discord.Permissions(mention_everyone=True).value
    emu.set_mentionable("player", False)
    async with running_bot(e2e_settings(tmp_path, emu), emu):
        i = await emu.slash(ADMIN, "peon", subcommand="status")
        await i.wait_done()
        text = await finished(emu, i, "Notices")
        assert "@player is not mentionable" in text
