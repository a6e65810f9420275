"""The event stream end to end: the bot (`python -m bot`, a process of its own, the real
discord.py client against the emulator) and the `peon` CLI (another process) on one SQLite
file and the real engine. What the CLI does reaches Discord; a bot killed while it posts a
notice posts it exactly once after its restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml

from bot.settings import Settings
from tests.conftest import (
    OPERATOR,
    PLAYER,
    ROOT,
    cleanup_instance,
    config_file,
    make_settings,
    peon,
)
from tests.discord_emulator import DiscordEmulator, Message
from tests.test_discord_e2e import bot_settings, refusal, running_bot

pytestmark = pytest.mark.docker


def write_config(settings: Settings, path: Path) -> Path:
    data = settings.model_dump(mode="json", exclude={"source", "discord_token"}, exclude_none=True)
    path.write_text(yaml.safe_dump(data))
    return path


@asynccontextmanager
async def bot_process(
    config: Path, emu: DiscordEmulator, *, logged_in: bool = True
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m bot` with `config` (logged in to the emulator unless `logged_in` is False);
    stopped afterwards if alive. Its log goes to bot.log beside the config."""
    emu.identified.clear()
    env = {**os.environ, "PEON_CONFIG": str(config), "DISCORD_TOKEN": emu.token}
    with (config.parent / "bot.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", env=env, cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        if logged_in:
            await asyncio.wait_for(emu.identified.wait(), 60)
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def notices(emu: DiscordEmulator, test: Callable[[str], bool]) -> list[Message]:
    return [m for m in emu.channel_messages.get(emu.channels["peon"], []) if test(m.text())]


async def cli(config: Path, *args: str) -> None:
    r = await asyncio.to_thread(peon, config, *args)
    assert r.returncode == 0, r.stderr


async def test_cli_events_reach_the_bot_and_a_killed_delivery_posts_once(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    settings = bot_settings(tmp_path, emu)
    config = write_config(settings, tmp_path / "peon.yaml")
    ready = lambda text: text.startswith("**evt-a** is ready to join")  # noqa: E731
    try:
        async with bot_process(config, emu):
            # A start from the CLI, another process: the bot announces it.
            await cli(config, "server", "create", "fakegame", "evt-a")
            await cli(config, "server", "start", "evt-a")
            await emu.wait_for(lambda: len(notices(emu, ready)) == 1, 30)

        # The bot is down; the CLI restarts the server: the event waits in the stream.
        await cli(config, "server", "restart", "evt-a")
        assert len(notices(emu, ready)) == 1

        # Killed the moment Discord has made the message, before the bot hears back (so
        # before it can record that it delivered the event). Its notices go out as soon as
        # it starts, before it logs in to the gateway.
        started: list[asyncio.subprocess.Process] = []

        def kill(msg: Message) -> None:
            if ready(msg.text()) and started and started[0].returncode is None:
                started[0].kill()

        emu.on_create = kill
        async with bot_process(config, emu, logged_in=False) as bot:
            started.append(bot)
            await asyncio.wait_for(bot.wait(), 60)
        emu.on_create = None
        assert bot.returncode == -signal.SIGKILL
        assert len(notices(emu, ready)) == 2

        async with bot_process(config, emu):
            # Delivered again after the restart, with the same nonce: Discord hands back
            # the message it made, and no second one appears.
            await emu.wait_for(lambda: emu.nonce_hits == 1, 30)
            await emu.settle()
            assert len(notices(emu, ready)) == 2
            # Later events are delivered as usual.
            await cli(config, "server", "restart", "evt-a")
            await emu.wait_for(lambda: len(notices(emu, ready)) == 3, 30)
    finally:
        cleanup_instance(settings.instance_id)


async def test_peon_events_prints_and_follows_what_other_processes_record(
    tmp_path: Path, fakegame: str
) -> None:
    settings = make_settings(tmp_path)
    config = config_file(settings, tmp_path / "peon.yaml")
    try:
        await cli(config, "server", "create", "fakegame", "evt-cli")
        r = await asyncio.to_thread(peon, config, "events", "evt-cli")
        assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("#")
        assert " evt-cli create ok by cli:" in r.stdout

        follow = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "events", "--follow", "--json", "-n", "1",
            env={**os.environ, "PEON_CONFIG": str(config)}, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert follow.stdout is not None
        try:
            first = json.loads(await asyncio.wait_for(follow.stdout.readline(), 30))
            assert (first["kind"], first["server"]) == ("create", "evt-cli")
            await cli(config, "server", "start", "evt-cli")  # another process
            started = json.loads(await asyncio.wait_for(follow.stdout.readline(), 30))
            assert (started["kind"], started["ok"]) == ("start", True)
            assert started["payload"]["connect"].startswith("127.0.0.1:")
        finally:
            follow.send_signal(signal.SIGINT)
            await asyncio.wait_for(follow.wait(), 10)
        r = await asyncio.to_thread(peon, config, "events", "-n", "0")
        assert r.returncode == 2 and "--limit must be at least 1" in r.stderr
    finally:
        cleanup_instance(settings.instance_id)


async def test_server_audit_in_discord_is_paged(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    async with running_bot(bot_settings(tmp_path, emu), emu) as bot:
        await bot.services.servers.create("fakegame", "evt-aud", actor="test")
        for n in range(20):
            await bot.services.store.audit("test", "console", "evt-aud", True, f"say {n}")
        i = await emu.slash(OPERATOR, "server", subcommand="audit", options={"name": "evt-aud"})
        await i.wait_done()
        assert i.original is not None and i.original.ephemeral
        first = i.original.embeds[0]
        assert first["title"] == "Audit log of evt-aud"
        assert first["description"].count("\n") == 14  # a page of 15, newest first
        assert "say 19" in first["description"].splitlines()[0]
        (older,) = [b["custom_id"] for b in i.original.buttons()]
        click = await emu.click(OPERATOR, i.original, older)
        await click.wait_done()
        page = click.original.embeds[0]["description"]  # type: ignore[union-attr]
        assert "say 4" in page.splitlines()[0] and "create" in page.splitlines()[-1]
        denied = await emu.slash(PLAYER, "server", subcommand="audit", options={"name": "evt-aud"})
        await denied.wait_done()
        assert refusal(denied) == "You need the PEON operator role to read the audit log."
        missing = await emu.slash(OPERATOR, "server", subcommand="audit", options={"name": "nope"})
        await missing.wait_done()
        assert refusal(missing) == "There is no server named 'nope'."
