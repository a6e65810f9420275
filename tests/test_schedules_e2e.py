"""Schedules end to end: the real bot (discord.py) against the Discord emulator, with the real
engine, the real scheduler and a real SQLite file. Windows end "in seconds" (times with
seconds) and the lead times are seconds, so a whole warn/keep/stop cycle takes ~20 s."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import pytest

from bot.settings import AutomationSettings, Settings
from tests.conftest import ADMIN, OPERATOR, PLAYER, cleanup_instance
from tests.discord_emulator import DiscordEmulator, Interaction, Message
from tests.test_discord_e2e import (
    LONG,
    Runner,
    answer,
    bot_settings,
    channel,
    finished,
    refusal,
    running_bot,
    until,
)

pytestmark = pytest.mark.docker

E2E = AutomationSettings(
    warn_before=["6s", "3s"],
    keep_running="5s",
    catch_up_warning="3s",
    player_check_interval="1s",
    shortest="2s",
)


def e2e_settings(tmp_path: Path, emu: DiscordEmulator) -> Settings:
    s = bot_settings(tmp_path, emu, mention_role=emu.roles["player"])
    return s.model_copy(update={"automation": E2E})


@pytest.fixture
async def peon(tmp_path: Path, emu: DiscordEmulator, fakegame: str) -> AsyncIterator[Runner]:
    async with running_bot(e2e_settings(tmp_path, emu), emu) as runner:
        yield runner


async def command(emu: DiscordEmulator, user: int, path: str, **options: Any) -> Interaction:
    i = await emu.slash(user, path, options=options)
    await i.wait_done(timeout=LONG)
    return i


def text_of(i: Interaction) -> str:
    return i.original.text() if i.original is not None else ""


def clock(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%H:%M:%S")


def notices(emu: DiscordEmulator, pattern: str) -> list[Message]:
    return [m for m in channel(emu, "peon") if re.search(pattern, m.content)]


async def running_game(peon: Runner, name: str = "alpha") -> None:
    servers = peon.services.servers
    await servers.create("fakegame", name, {"world": "W"}, actor="test")
    await servers.start(name, actor="test")


def button(warning: Message, action: str, server: str = "alpha") -> str:
    """The custom_id of a warning's button: it carries the time of the stop it warned about."""
    prefix = f"peon:auto:{action}:{server}:"
    ids = [b["custom_id"] for b in warning.buttons() if b["custom_id"].startswith(prefix)]
    assert len(ids) == 1, warning.buttons()
    return str(ids[0])


def running(name: str) -> bool:
    client = docker.from_env()
    try:
        return bool(client.containers.get(f"peon-{name}").attrs["State"]["Running"])
    finally:
        client.close()


async def test_window_end_warns_keep_running_postpones_then_stops(
    peon: Runner, emu: DiscordEmulator
) -> None:
    await running_game(peon)
    options = {"server": "alpha", "days": "daily", "start": clock(-timedelta(hours=1))}
    # Players may not change schedules; the refusal is ephemeral and saves nothing.
    i = await command(emu, PLAYER, "schedule add window", **options, stop=clock(timedelta(hours=1)))
    assert refusal(i) == "You need the PEON operator role to change schedules."
    assert await peon.services.store.list_schedules() == []

    i = await command(emu, OPERATOR, "schedule add window", **options,
                      stop=clock(timedelta(seconds=12)), timezone="UTC")  # fmt: skip
    text = text_of(i)
    assert "Schedule #1 added" in text and "uptime window daily" in text, text
    assert "next stop" in text

    # /server status shows the next automatic stop.
    i = await command(emu, PLAYER, "server status", name="alpha")
    text = await finished(emu, i, "Next automatic stop")
    assert "stop " in text and "end of its uptime window" in text

    # The first warning: in the channel, mentioning the players' role, with both buttons.
    await until(emu, lambda: bool(notices(emu, "stops in")), timeout=30)
    warning = notices(emu, "stops in")[0]
    assert warning.content.startswith(f"<@&{emu.roles['player']}> ⚠️ **alpha** stops in ")
    assert "end of its uptime window" in warning.content
    labels = [b["label"] for b in warning.buttons()]
    assert labels == ["Keep running +5 seconds", "Stop now"]

    # A player may not postpone here (players_can_postpone is off); an operator may.
    click = await emu.click(PLAYER, warning, button(warning, "keep"))
    await click.wait_done()
    assert refusal(click) == (
        "You need the PEON operator role to keep servers running past an automatic stop."
    )
    click = await emu.click(OPERATOR, warning, button(warning, "keep"))
    await click.wait_done()
    edited = emu.message(warning.id)
    assert edited is not None and f"<@{OPERATOR}> kept it running" in edited.content
    assert edited.buttons() == []
    kept = peon.bot.automation.pending("alpha") if peon.bot.automation else None
    assert kept is not None and kept.held

    # Warned again before the new time, then stopped and announced.
    await until(emu, lambda: bool(notices(emu, r"alpha\*\* stopped")), timeout=40)
    stop_notice = notices(emu, r"alpha\*\* stopped")[0]
    assert stop_notice.content == "⏹️ **alpha** stopped: end of its uptime window."
    later = [m for m in notices(emu, "stops in") if m.id > warning.id]
    assert later, [m.content for m in channel(emu, "peon")]
    assert all(m.id < stop_notice.id for m in later)
    assert not running("alpha")
    assert len(notices(emu, r"alpha\*\* stopped")) == 1  # nothing fired twice
    # In game, the warnings went out through the plan's say command.
    logs = await peon.services.servers.logs("alpha", 100)
    assert any("Broadcast: This server stops in" in line for line in logs)


async def test_timer_stop_now_and_schedule_commands(peon: Runner, emu: DiscordEmulator) -> None:
    await running_game(peon)
    i = await command(emu, OPERATOR, "server stop", name="alpha", **{"in": "4s"})
    text = await finished(emu, i, "stops at")  # a deferred answer: read it once edited
    assert "**alpha** stops at" in text and "Cancel with `/schedule remove id:1`" in text
    await until(emu, lambda: bool(notices(emu, "stops in")), timeout=20)
    warning = notices(emu, "stops in")[0]
    assert f"timer set by <@{OPERATOR}>" in warning.content
    click = await emu.click(OPERATOR, warning, button(warning, "stop"))
    await click.wait_done()
    await until(emu, lambda: "Stopped now by" in (emu.message(warning.id) or warning).content)
    assert not running("alpha")
    i = await command(emu, PLAYER, "schedule list")
    assert "No schedules" in text_of(i)  # the timer is gone with the stop

    # Invalid input: one ephemeral sentence each, nothing saved.
    for path, options, message in [
        ("schedule add window", {"server": "alpha", "days": "funday", "start": "18:00",
                                 "stop": "23:00"}, "'funday' is not a set of days"),
        ("schedule add window", {"server": "alpha", "days": "daily", "start": "18:00",
                                 "stop": "23:00", "timezone": "Mars/Base"}, "not a time zone"),
        ("schedule add cron", {"server": "alpha", "expression": "0 25 * * *",
                               "action": "restart"}, "is not a cron expression"),
        ("schedule add idle", {"server": "alpha", "after": "soon"}, "'soon' is not a duration"),
        ("schedule remove", {"id": 77}, "There is no schedule #77."),
        ("server stop", {"name": "alpha", "in": "30m"}, "alpha is not running"),
    ]:  # fmt: skip
        i = await command(emu, ADMIN, path, **options)
        assert message in refusal(i), (path, refusal(i))
    assert await peon.services.store.list_schedules() == []

    # add / list / pause / resume / remove
    i = await command(emu, OPERATOR, "schedule add cron", server="alpha",
                      expression="0 4 * * *", action="restart", timezone="Europe/Berlin",
                      only_when_running=True)  # fmt: skip
    assert "Schedule #" in text_of(i), text_of(i)
    sid = (await peon.services.store.list_schedules())[0].id
    i = await command(emu, PLAYER, "schedule list")
    text = text_of(i)
    assert f"`#{sid}` **alpha** · restart at cron `0 4 * * *` Europe/Berlin" in text
    assert "next restart" in text and "04:00 Europe/Berlin" in text
    i = await command(emu, OPERATOR, "schedule pause", id=sid)
    assert "paused" in text_of(i)
    assert (await peon.services.store.get_schedule(sid)).paused
    i = await command(emu, OPERATOR, "schedule resume", id=sid)
    assert "resumed" in text_of(i) and "next restart" in text_of(i)
    ac = await emu.autocomplete(PLAYER, "schedule remove", options={"id": ""}, focused="id")
    await ac.wait_done()
    assert ac.choices and ac.choices[0]["value"] == sid
    i = await command(emu, OPERATOR, "schedule remove", id=sid)
    assert f"Removed schedule #{sid}" in text_of(i)
    assert await peon.services.store.list_schedules() == []


async def test_restart_mid_window_keeps_the_schedule_and_catches_up(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    settings = e2e_settings(tmp_path, emu)
    first = Runner(settings, emu)
    await first.start()
    try:
        await first.services.servers.create("fakegame", "alpha", {"world": "W"}, actor="test")
        # The window opens 4 s from now, while the bot is down.
        start, stop = clock(timedelta(seconds=4)), clock(timedelta(hours=2))
        i = await command(emu, ADMIN, "schedule add window", server="alpha", days="daily",
                          start=start, stop=stop)  # fmt: skip
        assert "Schedule #1 added" in text_of(i)
        i = await command(emu, PLAYER, "schedule list")
        before = text_of(i)
    finally:
        await first.stop()
    await asyncio.sleep(6)
    assert not running("alpha")

    second = Runner(settings, emu)  # a new process: same database
    await second.start()
    try:
        await until(emu, lambda: bool(notices(emu, r"alpha\*\* started")), timeout=LONG)
        notice = notices(emu, r"alpha\*\* started")[0].content
        assert notice.startswith("▶️ **alpha** started: its uptime window opened at ")
        assert "Ready to join: `127.0.0.1:" in notice
        assert running("alpha")
        i = await command(emu, PLAYER, "schedule list")
        after = text_of(i)
        # Same schedule, same next stop; the start has happened so only the next one shows.
        stop_part = re.search(r"next stop [^(]+", before)
        assert stop_part is not None and stop_part.group(0) in after, (before, after)
        assert "`#1` **alpha** · uptime window daily" in after
        p = second.bot.automation.pending("alpha") if second.bot.automation else None
        assert p is not None and p.due.reason == "window"
    finally:
        await second.stop()
        cleanup_instance(settings.instance_id)


async def test_backup_commands_with_confirmation(peon: Runner, emu: DiscordEmulator) -> None:
    await running_game(peon)
    i = await command(emu, PLAYER, "backup create", server="alpha")
    assert refusal(i) == "You need the PEON operator role to back servers up."
    i = await command(emu, OPERATOR, "backup create", server="alpha")
    text = await finished(emu, i, "Backed up")
    assert re.search(r"Backed up \*\*alpha\*\*: backup #1, [\d.]+ MiB in [\d.]+ s\.", text), text
    i = await command(emu, PLAYER, "backup list", server="alpha")
    assert "`#1`" in text_of(i) and "manual" in text_of(i)
    ac = await emu.autocomplete(ADMIN, "backup restore", options={"server": "alpha", "backup": ""},
                                focused="backup")  # fmt: skip
    await ac.wait_done()
    assert ac.choices and ac.choices[0]["value"] == 1
    i = await command(emu, OPERATOR, "backup restore", server="alpha", backup=1)
    assert refusal(i) == "You need the PEON admin role to restore or delete backups."
    i = await command(emu, ADMIN, "backup restore", server="alpha", backup=1)
    prompt = i.original
    assert prompt is not None and "Restore alpha?" in prompt.text()
    other = await emu.click(OPERATOR, prompt, answer(prompt))
    await other.wait_done()
    assert refusal(other) == f"Only <@{ADMIN}> can confirm or cancel this."
    ok = await emu.click(ADMIN, prompt, answer(prompt))
    await ok.wait_done()
    await until(emu, lambda: "Restored **alpha** from backup #1" in
                (emu.message(prompt.id) or prompt).text())  # fmt: skip
    assert "The data it had before is backup #2." in (emu.message(prompt.id) or prompt).text()
    assert running("alpha")
    i = await command(emu, ADMIN, "backup lock", backup=1)
    assert "is locked: it is never pruned" in text_of(i)
    i = await command(emu, ADMIN, "backup delete", backup=1)
    assert refusal(i) == "Backup #1 is locked; unlock it first."
    i = await command(emu, ADMIN, "backup restore", server="alpha", backup=99)
    assert refusal(i) == "There is no backup #99."
