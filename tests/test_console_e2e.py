"""The game console on the real engine: over Source RCON (the fake game's rcond, written from
the protocol's documentation), on stdin and through a program in the container; from the
services, the CLI and Discord (the real discord.py client against the emulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from bot.automation import Automation
from bot.consoles import ConsoleError
from bot.errors import ServerStateError
from bot.rcon import RconError
from bot.scheduler import Scheduler
from bot.settings import GuildSettings, PortSettings, RoleGrants
from tests.conftest import (
    ADMIN,
    PLAYER,
    TEST_WARPLANS,
    cleanup_instance,
    config_file,
    fakegame_variant,
    make_settings,
    peon,
    services_for,
)
from tests.discord_emulator import DiscordEmulator, Interaction
from tests.test_automation import Recorder
from tests.test_discord_e2e import bot_settings, finished, refusal, running_bot

pytestmark = pytest.mark.docker

EPHEMERAL = 64


def rcon_changes(**more: Any) -> dict[str, Any]:
    """The test plan with its console on Source RCON: the port PEON speaks to, a generated
    secret password the game reads, and stop and save going over RCON too."""
    plan = yaml.safe_load((TEST_WARPLANS / "fakegame.yaml").read_text())
    changes: dict[str, Any] = {
        "ports": [*plan["ports"], {"name": "rcon", "container": 27015, "protocol": "tcp"}],
        "env": {**plan["env"], "RCON_PORT": "27015"},
        "variables": [
            *plan["variables"],
            {"name": "rcon_password", "env": "RCON_PASSWORD", "secret": True, "generate": True},
        ],
        "console": {"via": "rcon", "port": "rcon", "password": "rcon_password", "timeout": 5},
        "stop": {"signal": "SIGTERM", "console": "stop", "grace": 10},
        # The game port is published on another loopback address here, so the ready check
        # goes to the RCON port, which PEON reaches on its probe address.
        "ready": {"log": "Server ready for players", "port": "rcon", "timeout": 30},
    }
    changes.update(more)
    return changes


async def test_console_over_rcon(tmp_path: Path, fakegame: str) -> None:
    settings = make_settings(
        tmp_path,
        warplans_dir=fakegame_variant(tmp_path, **rcon_changes()),
        ports=PortSettings(pool=make_settings(tmp_path).ports.pool, bind_address="127.0.0.2"),
    )
    async with services_for(settings) as svc:
        servers = svc.servers
        await servers.create("fakegame", "rc-a", actor="test")
        await servers.start("rc-a", actor="test")
        record = await svc.store.get_server("rc-a")
        password = record.variables["rcon_password"]
        assert len(password) >= 20

        # RCON is PEON's port: published only on the address PEON reaches the host by.
        client = docker.from_env()
        bindings = client.api.inspect_container(record.container_id)["HostConfig"]["PortBindings"]
        client.close()
        assert bindings["27015/tcp"][0]["HostIp"] == "127.0.0.1"
        assert bindings["7777/tcp"][0]["HostIp"] == "127.0.0.2"

        reply = await servers.console("rc-a", "echo hello there", actor="alice")
        assert (reply.via, reply.text, reply.how) == ("rcon", "hello there", "over RCON")
        big = await servers.console("rc-a", "big 20000", actor="alice")
        assert len(big.text) == 20000  # five packets, reassembled in order

        masked = await servers.console("rc-a", f"echo pw={password}", actor="alice")
        assert masked.text == "pw=••••••"
        log = await svc.store.audit_log("rc-a", limit=10)
        consoles = [e for e in log if e.action == "console"]
        assert [e.actor for e in consoles] == ["alice"] * 3
        assert consoles[0].detail == "echo pw=••••••" and consoles[-1].detail == "echo hello there"
        assert all(password not in e.detail for e in log)

        # A warning with quotes and line breaks is one `say`, not a second command.
        assert await servers.say("rc-a", 'closing" ; stop\nstop')
        lines = await servers.logs("rc-a", tail=20)
        assert "Broadcast: closing' , stop stop" in lines
        assert await servers.is_running("rc-a")

        # A backup saves over RCON and waits for the game's confirmation on the log.
        backup = await svc.backups.create("rc-a", actor="test")
        assert backup.size > 0
        assert any(line.startswith("World saved") for line in await servers.logs("rc-a", 20))

        # A wrong password is one sentence, and audited as failed.
        await svc.store.update_server(
            "rc-a", variables={**record.variables, "rcon_password": "not-it"}
        )
        with pytest.raises(RconError) as e:
            await servers.console("rc-a", "echo x", actor="bob")
        assert str(e.value) == "rc-a refused the RCON password; check its RCON password variable."
        await svc.store.update_server("rc-a", variables=record.variables)

        # The stop goes over RCON; the game exits by itself, before the grace.
        assert await servers.stop("rc-a", actor="test")
        client = docker.from_env()
        state = client.api.inspect_container(record.container_id)["State"]
        client.close()
        assert state["ExitCode"] == 0 and not state["OOMKilled"]
        assert "Shutting down: console" in await servers.logs("rc-a", 5)
        with pytest.raises(ServerStateError) as stopped:
            await servers.console("rc-a", "echo x", actor="bob")
        assert str(stopped.value) == "Server 'rc-a' is not running."


async def test_console_on_stdin_through_exec_and_without_one(tmp_path: Path, fakegame: str) -> None:
    async with services_for(make_settings(tmp_path)) as svc:
        await svc.servers.create("fakegame", "st-a", actor="test")
        await svc.servers.start("st-a", actor="test")
        reply = await svc.servers.console("st-a", "join bob", actor="alice")
        assert reply.via == "stdin" and "Player joined: bob" in reply.text.splitlines()

        for bad, sentence in [
            ("say hi\nstop", "contains a line break or another control character"),
            ("", "The console command is empty."),
            ("x" * 1001, "the most is 1000."),
        ]:
            with pytest.raises(ConsoleError, match=sentence):
                await svc.servers.console("st-a", bad, actor="alice")
        assert await svc.servers.is_running("st-a")
        refused = [e for e in await svc.store.audit_log("st-a") if e.action == "console"]
        assert len(refused) == 1  # only the command that went out

    for sub in ("exec", "none"):
        (tmp_path / sub).mkdir()
    exec_plan = fakegame_variant(
        tmp_path / "exec", console={"via": "exec", "exec": ["echo", "exec-console:"]}
    )
    async with services_for(make_settings(tmp_path / "exec", warplans_dir=exec_plan)) as svc:
        await svc.servers.create("fakegame", "ex-a", actor="test")
        await svc.servers.start("ex-a", actor="test")
        reply = await svc.servers.console("ex-a", "status now", actor="alice")
        assert (reply.via, reply.text.strip()) == ("exec", "exec-console: status now")

    none_plan = fakegame_variant(
        tmp_path / "none",
        say=None,
        save={"mode": "pause"},
        ready={"log": "Server ready for players", "timeout": 30},
    )
    async with services_for(make_settings(tmp_path / "none", warplans_dir=none_plan)) as svc:
        await svc.servers.create("fakegame", "no-a", actor="test")
        await svc.servers.start("no-a", actor="test")
        with pytest.raises(ConsoleError) as e:
            await svc.servers.console("no-a", "save", actor="alice")
        assert str(e.value) == (
            "War plan 'fakegame' gives no-a no console (no stdin, RCON or exec)."
        )
        # A cron console action on it is refused when it is set up, not each time it fires.
        automation = Automation(
            servers=svc.servers,
            backups=svc.backups,
            store=svc.store,
            scheduler=Scheduler(),
            settings=svc.settings.automation,
            notifier=Recorder(),
        )
        with pytest.raises(ConsoleError, match="gives no-a no console"):
            await automation.add_cron(
                "no-a", "0 4 * * *", "console", zone=None, command="save",
                only_when_running=False, actor="test",
            )  # fmt: skip
        assert await svc.store.list_schedules("no-a") == []


def test_cli_console_over_rcon(tmp_path: Path, fakegame: str) -> None:
    settings = make_settings(tmp_path, warplans_dir=fakegame_variant(tmp_path, **rcon_changes()))
    config = config_file(settings, tmp_path / "peon.yaml")
    try:
        assert peon(config, "server", "create", "fakegame", "rc-cli").returncode == 0
        assert peon(config, "server", "start", "rc-cli").returncode == 0
        r = peon(config, "server", "console", "rc-cli", "echo hi from the CLI")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "sent to rc-cli over RCON\nhi from the CLI\n"
        r = peon(config, "server", "console", "rc-cli", "say a\nstop")
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.strip().count("\n") == 0 and "control character" in r.stderr
        audit = peon(config, "server", "audit", "rc-cli").stdout
        assert "console" in audit and "ok: echo hi from the CLI" in audit
    finally:
        cleanup_instance(settings.instance_id)


async def console(emu: DiscordEmulator, user: int, name: str, command: str) -> Interaction:
    # Not tests.test_discord_e2e.slash: its own `command` parameter names the command group.
    i = await emu.slash(
        user, "server", subcommand="console", options={"name": name, "command": command}
    )
    await i.wait_done(timeout=60)
    return i


async def test_discord_console_respects_per_server_grants(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    base = bot_settings(tmp_path, emu)
    guild = base.discord.guilds[emu.guild_id]
    grants = {"rc-d": RoleGrants(operator=[emu.roles["player"]])}
    guilds = {emu.guild_id: GuildSettings(**{**guild.model_dump(), "servers": grants})}
    settings = base.model_copy(
        update={
            "warplans_dir": fakegame_variant(tmp_path, **rcon_changes()),
            "discord": base.discord.model_copy(update={"guilds": guilds}),
        }
    )
    async with running_bot(settings, emu) as peon:
        await peon.services.servers.create("fakegame", "rc-d", actor="test")
        await peon.services.servers.create("fakegame", "rc-other", actor="test")
        await peon.services.servers.start("rc-d", actor="test")

        i = await console(emu, PLAYER, "rc-d", "echo **hi** <@1>")
        assert i.response_type == 5 and i.original is not None and i.original.ephemeral
        text = await finished(emu, i, "Sent to")  # the deferred answer, once edited
        assert text.startswith("Sent to **rc-d** over RCON: echo \\*\\*hi\\*\\*")
        assert "```\n**hi** <\u200b@1>\n```" in text

        i = await console(emu, PLAYER, "rc-other", "echo hi")
        assert refusal(i).startswith("You need the PEON operator role to ")

        i = await console(emu, ADMIN, "rc-d", "say a\nstop")
        assert refusal(i) == (
            "The console command contains a line break or another control character; send one "
            "command at a time."
        )
        i = await console(emu, ADMIN, "rc-other", "echo hi")
        assert "Server 'rc-other' is not running." in await finished(emu, i, "not running")
        assert i.original.ephemeral  # type: ignore[union-attr]
        actors = [
            e.actor for e in await peon.services.store.audit_log("rc-d") if e.action == "console"
        ]
        assert len(actors) == 1 and actors[0].startswith("discord:")
