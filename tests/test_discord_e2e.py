"""End to end: the real discord.py client (PEON's bot) against the Discord emulator on
loopback, with the real Docker engine and a real SQLite file behind it."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from pydantic import SecretStr

from bot.app import Services, open_services
from bot.client import PeonBot, point_at
from bot.settings import DiscordSettings, GuildSettings, RoleGrants, Settings
from tests.conftest import ADMIN, NOBODY, OPERATOR, PLAYER, cleanup_instance, make_settings
from tests.discord_emulator import DiscordEmulator, Interaction, Message

pytestmark = pytest.mark.docker

EPHEMERAL = 64
LONG = 60  # seconds a real start/stop may take on a loaded CI machine


class Runner:
    """One PEON bot process (services + client) talking to the emulator."""

    def __init__(self, settings: Settings, emu: DiscordEmulator) -> None:
        self.settings, self.emu = settings, emu
        self.services: Services
        self.bot: PeonBot
        self._cm: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.emu.identified.clear()
        self.emu.point_client()
        point_at(self.settings.discord)
        self._cm = open_services(self.settings)
        self.services = await self._cm.__aenter__()
        self.bot = PeonBot(services=self.services, guild_ready_timeout=0.1)
        token = self.settings.discord_token
        assert token is not None
        self._task = asyncio.create_task(self.bot.start(token.get_secret_value()))
        done, _ = await asyncio.wait(
            [self._task, asyncio.create_task(self.bot.wait_until_ready())],
            timeout=30,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self._task in done:
            self._task.result()  # raise the startup error
        assert self.bot.is_ready()

    async def stop(self) -> None:
        await self.bot.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)
        await self._cm.__aexit__(None, None, None)


def bot_settings(tmp_path: Path, emu: DiscordEmulator, **guild: Any) -> Settings:
    base = make_settings(tmp_path)
    discord_settings = DiscordSettings(
        guilds={
            emu.guild_id: GuildSettings(
                notification_channel=emu.channels["peon"],
                roles=RoleGrants(
                    admin=[emu.roles["admin"]], operator=["operator"], player=[emu.roles["player"]]
                ),
                **guild,
            )
        },
        api_base=emu.api_base,
        gateway_url=emu.gateway_url,
        progress_interval=0.2,
        confirm_timeout=3,
    )
    return base.model_copy(
        update={"discord": discord_settings, "discord_token": SecretStr(emu.token)}
    )


@asynccontextmanager
async def running_bot(settings: Settings, emu: DiscordEmulator) -> AsyncIterator[Runner]:
    """A started bot; stopped, and its containers and volumes removed, afterwards."""
    runner = Runner(settings, emu)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()
        cleanup_instance(runner.settings.instance_id)


@pytest.fixture
async def peon(tmp_path: Path, emu: DiscordEmulator, fakegame: str) -> AsyncIterator[Runner]:
    async with running_bot(bot_settings(tmp_path, emu), emu) as runner:
        yield runner


async def until(emu: DiscordEmulator, check: Callable[[], bool], timeout: float = LONG) -> None:
    await emu.wait_for(check, timeout)
    await emu.settle()


async def slash(
    emu: DiscordEmulator, user: int, sub: str, command: str = "server", **options: Any
) -> Interaction:
    i = await emu.slash(user, command, subcommand=sub, options=options)
    await i.wait_done(timeout=LONG)
    return i


def final_text(i: Interaction) -> str:
    return i.original.text() if i.original is not None else ""


async def finished(emu: DiscordEmulator, i: Interaction, pattern: str) -> str:
    """Wait until the interaction's response (after progress edits) matches `pattern`."""
    await until(emu, lambda: re.search(pattern, final_text(i)) is not None)
    return final_text(i)


def refusal(i: Interaction) -> str:
    """The ephemeral one-sentence answer of a refused interaction."""
    assert i.response_type == 4, i.callbacks
    assert i.original is not None and i.original.ephemeral, i.original
    return i.original.text()


def answer(message: Message | None, yes: bool = True) -> str:
    """The custom_id of a confirmation prompt's Confirm (or Cancel) button."""
    assert message is not None
    end = ":y" if yes else ":n"
    ids = [b["custom_id"] for b in message.buttons() if b["custom_id"].endswith(end)]
    assert len(ids) == 1 and ids[0].startswith("peon:ok:"), message.buttons()
    return str(ids[0])


def channel(emu: DiscordEmulator, name: str) -> list[Message]:
    return emu.channel_messages.get(emu.channels[name], [])


# --- tests ------------------------------------------------------------------------------------


async def test_commands_sync_to_the_guild_and_list(peon: Runner, emu: DiscordEmulator) -> None:
    groups = {c["name"]: {o["name"] for o in c.get("options", [])} for c in emu.commands}
    assert groups["server"] == {
        "create",
        "settings",
        "start",
        "stop",
        "restart",
        "update",
        "status",
        "logs",
        "console",
        "audit",
        "list",
        "delete",
        "panel",
        "reinstall",
    }
    assert groups["warplan"] == {"list", "show"}
    assert groups["peon"] == {"status", "help", "reload", "board"}
    assert emu.global_commands == []  # global sync only when configured
    i = await slash(emu, PLAYER, "list")
    assert "No servers yet" in await finished(emu, i, "No servers yet")


async def test_warplan_commands_and_autocomplete(peon: Runner, emu: DiscordEmulator) -> None:
    i = await slash(emu, PLAYER, "list", command="warplan")
    assert i.original is not None and i.original.ephemeral
    assert "Fake Game" in i.original.text()
    i = await slash(emu, PLAYER, "show", command="warplan", name="fakegame")
    text = i.original.text() if i.original else ""
    assert "peon-test/fakegame:latest" in text and "game: 7777/tcp → auto" in text
    assert "`password` (string, secret)" in text
    i = await emu.autocomplete(
        ADMIN,
        "server",
        subcommand="create",
        options={"warplan": "fake", "name": ""},
        focused="warplan",
    )
    await i.wait_done()
    assert i.choices == [{"name": "Fake Game (fakegame)", "value": "fakegame"}]


async def test_create_with_modal_then_lifecycle(
    peon: Runner, emu: DiscordEmulator, dclient: docker.DockerClient
) -> None:
    i = await slash(emu, ADMIN, "create", warplan="fakegame", name="alpha")
    assert i.response_type == 9
    modal = i.modal
    assert modal is not None and modal["title"] == "Create alpha"
    inputs = {c["custom_id"]: c for row in modal["components"] for c in row["components"]}
    assert list(inputs) == ["world", "max_players", "password", "difficulty"]
    assert inputs["world"]["value"] == "alpha-world"
    assert "value" not in inputs["password"] or not inputs["password"]["value"]
    assert inputs["difficulty"]["placeholder"] == "One of: easy, normal, hard"
    sub = await emu.submit_modal(
        ADMIN,
        modal["custom_id"],
        {"world": "Vinland", "max_players": "12", "password": "s3cret-pass", "difficulty": ""},
    )
    await sub.wait_done()
    assert sub.response_type == 5  # deferred: answered at once, then edited
    text = await finished(emu, sub, "Created alpha")
    assert "s3cret-pass" not in text
    record = await peon.services.store.get_server("alpha")
    assert record.variables == {
        "world": "Vinland",
        "max_players": "12",
        "password": "s3cret-pass",
        "difficulty": "normal",
    }
    assert dclient.containers.get("peon-alpha").labels["io.peon.server"] == "alpha"

    # autocomplete of server names
    i = await emu.autocomplete(
        PLAYER, "server", subcommand="status", options={"name": "al"}, focused="name"
    )
    await i.wait_done()
    assert i.choices == [{"name": "alpha", "value": "alpha"}]

    # start: deferred, progress edits, final answer, notice in the notification channel
    i = await slash(emu, OPERATOR, "start", name="alpha")
    assert i.response_type == 5
    text = await finished(emu, i, "alpha is ready to join")
    game = record.ports[0].host
    assert f"127.0.0.1:{game}" in text
    steps = [m.text() for m in i.edits]
    assert any("waiting for ready" in s for s in steps), steps
    await until(emu, lambda: any("ready to join" in m.text() for m in channel(emu, "peon")))
    notice = channel(emu, "peon")[-1].text()
    assert notice == f"**alpha** is ready to join: `127.0.0.1:{game}`"

    await peon.services.servers.console("alpha", "join alice", actor="test")
    i = await slash(emu, PLAYER, "status", name="alpha")
    text = await finished(emu, i, "State")
    assert "Players\n1 (alice)" in text
    assert "running" in text and f"127.0.0.1:{game}" in text and "MiB / 64 MiB" in text
    assert "s3cret-pass" not in text

    i = await slash(emu, OPERATOR, "logs", name="alpha", lines=5)
    text = await finished(emu, i, "Server ready")
    assert i.original is not None and i.original.ephemeral

    i = await slash(emu, OPERATOR, "stop", name="alpha")
    await finished(emu, i, "alpha\\*\\* stopped")

    i = await slash(emu, OPERATOR, "update", name="alpha")
    await finished(emu, i, "data is kept")

    audit = await peon.services.store.audit_log("alpha")
    assert {a.actor for a in audit} == {f"discord:{ADMIN}", f"discord:{OPERATOR}", "test"}
    assert [a.action for a in reversed(audit)] == ["create", "start", "console", "stop", "update"]


async def test_bad_input_is_refused_ephemerally_and_leaves_nothing(
    peon: Runner, emu: DiscordEmulator, dclient: docker.DockerClient
) -> None:
    i = await slash(emu, ADMIN, "create", warplan="fakegame", name="Bad_Name")
    assert "is not a valid server name" in refusal(i)
    i = await slash(emu, ADMIN, "create", warplan="nope", name="x")
    assert refusal(i) == "There is no war plan named 'nope'."
    i = await slash(emu, OPERATOR, "start", name="ghost")
    assert refusal(i) == "There is no server named 'ghost'."
    i = await slash(emu, ADMIN, "create", warplan="fakegame", name="beta")
    sub = await emu.submit_modal(ADMIN, i.modal["custom_id"], {"max_players": "500"})
    await sub.wait_done()
    assert refusal(sub) == "Variable 'max_players': must be at most 64."
    assert await peon.services.store.list_servers() == []
    flt = {"label": [f"io.peon.instance={peon.settings.instance_id}"]}
    assert dclient.containers.list(all=True, filters=flt) == []
    assert dclient.volumes.list(filters=flt) == []


async def test_delete_confirmation(peon: Runner, emu: DiscordEmulator) -> None:
    servers = peon.services.servers
    for name in ("one", "two", "three"):
        await servers.create("fakegame", name, actor="test")

    # someone else clicking is refused; cancel keeps the server
    i = await slash(emu, ADMIN, "delete", name="one")
    prompt = i.original
    assert prompt is not None and not prompt.ephemeral and "Delete one?" in prompt.text()
    other = await emu.click(OPERATOR, prompt, answer(prompt))
    await other.wait_done()
    assert refusal(other) == f"Only <@{ADMIN}> can confirm or cancel this."
    cancel = await emu.click(ADMIN, prompt, answer(prompt, yes=False))
    await cancel.wait_done()
    assert "Cancelled; **one** was not deleted." in emu.message(prompt.id).text()
    assert await servers.store.find_server("one") is not None

    # confirm deletes, keeping data unless purge
    i = await slash(emu, ADMIN, "delete", name="two", purge=True)
    ok = await emu.click(ADMIN, i.original, answer(i.original))
    await ok.wait_done()
    await until(emu, lambda: "Deleted **two** and its data." in emu.message(i.original.id).text())
    assert await servers.store.find_server("two") is None

    # expiry: nothing deleted, the buttons go away
    i = await slash(emu, ADMIN, "delete", name="three")
    await until(emu, lambda: "expired" in emu.message(i.original.id).text(), timeout=10)
    assert emu.message(i.original.id).buttons() == []
    assert await servers.store.find_server("three") is not None


async def test_panel_buttons_work_after_a_bot_restart(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    settings = bot_settings(tmp_path, emu)
    first = Runner(settings, emu)
    await first.start()
    try:
        await first.services.servers.create("fakegame", "gamma", actor="test")
        i = await slash(emu, ADMIN, "panel", name="gamma")
        panel = i.original
        assert panel is not None
        assert [b["custom_id"] for b in panel.buttons()] == [
            "peon:panel:start:gamma",
            "peon:panel:stop:gamma",
            "peon:panel:restart:gamma",
            "peon:panel:status:gamma",
        ]
        click = await emu.click(OPERATOR, panel, "peon:panel:start:gamma")
        await click.wait_done()
        await finished(emu, click, "gamma is ready to join")
        assert click.original is not None and click.original.ephemeral
    finally:
        await first.stop()

    second = Runner(settings, emu)  # a new process: same database, same panel message
    await second.start()
    try:
        click = await emu.click(PLAYER, panel, "peon:panel:status:gamma")
        await click.wait_done()
        await finished(emu, click, "running")
        click = await emu.click(OPERATOR, panel, "peon:panel:stop:gamma")
        await click.wait_done()
        await finished(emu, click, "gamma\\*\\* stopped")
        click = await emu.click(PLAYER, panel, "peon:panel:start:gamma")
        await click.wait_done()
        assert refusal(click) == "You need the PEON operator role to start servers."
    finally:
        await second.stop()
        cleanup_instance(settings.instance_id)


MUTATING = [
    ("start", "operator"),
    ("stop", "operator"),
    ("restart", "operator"),
    ("update", "operator"),
    ("logs", "operator"),
    ("delete", "admin"),
    ("panel", "admin"),
    ("create", "admin"),
    ("status", "player"),
    ("list", "player"),
]
USERS = {ADMIN: "admin", OPERATOR: "operator", PLAYER: "player", NOBODY: None}
RANK = {None: 0, "player": 1, "operator": 2, "admin": 3}


async def test_permission_matrix_for_commands_and_buttons(
    peon: Runner, emu: DiscordEmulator
) -> None:
    await peon.services.servers.create("fakegame", "matrix", actor="test")
    admin_panel = await slash(emu, ADMIN, "panel", name="matrix")
    for command, needed in MUTATING:
        for user, role in USERS.items():
            options: dict[str, Any] = {"name": "matrix"}
            if command == "create":
                options = {"warplan": "fakegame", "name": "matrix2"}
            elif command == "list":
                options = {}
            i = await slash(emu, user, command, **options)
            allowed = RANK[role] >= RANK[needed]
            if not allowed:
                assert refusal(i).startswith(f"You need the PEON {needed} role to "), (
                    command,
                    role,
                )
                continue
            assert i.response_type in (4, 5, 9), (command, role, i.callbacks)
            if i.response_type == 4:
                assert (
                    not i.original.ephemeral
                    or command == "logs"
                    or "Delete" not in i.original.text()
                )
            if i.response_type == 5:  # a deferred operation: wait for it to end
                await until(
                    emu,
                    lambda i=i: bool(i.edits) and "⏳" not in final_text(i) and final_text(i) != "",
                )
            if command == "delete":
                cancel = await emu.click(user, i.original, answer(i.original, yes=False))
                await cancel.wait_done()
    for action in ("start", "stop", "restart", "status"):
        needed = "player" if action == "status" else "operator"
        for user, role in USERS.items():
            click = await emu.click(user, admin_panel.original, f"peon:panel:{action}:matrix")
            await click.wait_done()
            if RANK[role] < RANK[needed]:
                assert refusal(click).startswith(f"You need the PEON {needed} role"), (action, role)
            else:
                assert click.response_type == 5, (action, role, click.callbacks)
                await until(
                    emu,
                    lambda c=click: (
                        bool(c.edits) and "⏳" not in final_text(c) and final_text(c) != ""
                    ),
                )
    assert await peon.services.store.find_server("matrix2") is None  # create stopped at modal


async def test_peon_status_help_and_reload(
    peon: Runner, emu: DiscordEmulator, tmp_path: Path
) -> None:
    i = await slash(emu, PLAYER, "status", command="peon")
    text = await finished(emu, i, "Docker engine")
    assert "🟢 Docker " in text and "discord.py" in text
    i = await slash(emu, PLAYER, "help", command="peon")
    text = i.original.text() if i.original else ""
    assert "Your PEON role here: **player**" in text
    assert "✅ `/server list` (player)" in text and "🔒 `/server stop name` (operator)" in text
    i = await slash(emu, NOBODY, "help", command="peon")
    assert "Your PEON role here: **none**" in (i.original.text() if i.original else "")

    # reload: a plan that no longer validates is reported; its last good version stays
    plans = tmp_path / "plans"
    plans.mkdir()
    good = (Path(__file__).parent / "warplans" / "fakegame.yaml").read_text()
    (plans / "fakegame.yaml").write_text(good)
    peon.services.warplans.directory = plans
    config = tmp_path / "peon.yaml"
    config.write_text(yaml.safe_dump({"discord": peon.settings.discord.model_dump(mode="json")}))
    peon.bot.settings = peon.settings.model_copy(update={"source": str(config)})
    (plans / "fakegame.yaml").write_text(good.replace("container: 7777", "container: 99999"))
    i = await slash(emu, OPERATOR, "reload", command="peon")
    assert refusal(i) == "You need the PEON admin role to reload the configuration."
    i = await slash(emu, ADMIN, "reload", command="peon")
    text = i.original.text() if i.original else ""
    assert "the last good version stays in force" in text
    assert "fakegame.yaml: ports[0].container: must be between 1 and 65535 or 'host'" in text
    assert peon.services.warplans.get("fakegame").ports[0].container == 7777


async def test_unconfigured_guild_is_told_how_to_fix_it(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    """Commands synced globally reach a guild PEON has no settings for; a configured guild the
    bot is not in (999) is skipped with a warning instead of stopping the bot."""
    emu.expected_codes.add(50001)  # the sync to guild 999: Missing Access, on purpose
    settings = bot_settings(tmp_path, emu)
    settings = settings.model_copy(
        update={
            "discord": settings.discord.model_copy(
                update={"guilds": {999: GuildSettings()}, "sync_global": True}
            )
        }
    )
    runner = Runner(settings, emu)
    await runner.start()
    try:
        assert {c["name"] for c in emu.global_commands} == {
            "server",
            "schedule",
            "backup",
            "warplan",
            "peon",
        }
        i = await emu.slash(ADMIN, "server", subcommand="list")
        await i.wait_done()
        assert refusal(i) == (
            "PEON is not set up for this Discord server; an admin must add its id under "
            "discord.guilds in config/peon.yaml."
        )
    finally:
        await runner.stop()


async def test_create_form_in_several_steps_for_many_variables(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    text = (Path(__file__).parent / "warplans" / "fakegame.yaml").read_text()
    extra = "".join(
        f"  - name: extra{n}\n    env: EXTRA_{n}\n    default: x{n}\n" for n in range(3)
    )
    text = text.replace("name: fakegame", "name: biggame").replace(
        "volumes:\n", extra + "volumes:\n", 1
    )
    (plans / "biggame.yaml").write_text(text)
    settings = bot_settings(tmp_path, emu).model_copy(update={"warplans_dir": plans})
    runner = Runner(settings, emu)
    await runner.start()
    try:
        i = await slash(emu, ADMIN, "create", warplan="biggame", name="big")
        first = i.modal
        assert first is not None and first["title"] == "Create big (1/2)"
        assert len([c for row in first["components"] for c in row["components"]]) == 5
        step = await emu.submit_modal(ADMIN, first["custom_id"], {"world": "Huge"})
        await step.wait_done()
        assert step.original is not None and step.original.ephemeral
        assert step.original.text() == "Step 1 of 2 saved."
        button = step.original.buttons()[0]
        assert button["label"] == "Continue"
        go = await emu.click(ADMIN, step.original, button["custom_id"])
        await go.wait_done()
        second = go.modal
        assert second is not None and second["title"] == "Create big (2/2)"
        names = [c["custom_id"] for row in second["components"] for c in row["components"]]
        assert names == ["extra1", "extra2"]
        done = await emu.submit_modal(ADMIN, second["custom_id"], {"extra2": "custom"})
        await done.wait_done()
        await finished(emu, done, "Created big")
        record = await runner.services.store.get_server("big")
        assert record.variables["world"] == "Huge"
        assert record.variables["extra0"] == "x0" and record.variables["extra2"] == "custom"
    finally:
        await runner.stop()
        cleanup_instance(settings.instance_id)


async def run_bot_process(tmp_path: Path, emu: DiscordEmulator, **env: str) -> tuple[int, str]:
    """Run `python -m bot` against the emulator as a user would; (exit code, stderr)."""
    config = tmp_path / "peon.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "warplans_dir": str(Path(__file__).parent / "warplans"),
            }
        )
    )
    full = {
        **os.environ,
        "PEON_CONFIG": str(config),
        "DISCORD_TOKEN": emu.token,
        "PEON_DISCORD_API_BASE": emu.api_base,
        "PEON_DISCORD_GATEWAY_URL": emu.gateway_url,
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        env=full,
        cwd=Path(__file__).resolve().parent.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_wrong_token_is_one_line_and_exit_1(
    tmp_path: Path, emu: DiscordEmulator, engine: None
) -> None:
    emu.expected_codes.add(0)  # 401 Unauthorized for the wrong token, on purpose
    code, err = await run_bot_process(tmp_path, emu, DISCORD_TOKEN="not-the-token")
    assert code == 1
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("peon: Discord rejected DISCORD_TOKEN: copy the bot's token")
    )
    assert "not-the-token" not in err


async def test_docker_unreachable_at_startup_is_one_line_and_exit_1(
    tmp_path: Path, emu: DiscordEmulator
) -> None:
    code, err = await run_bot_process(
        tmp_path, emu, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock"
    )
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("peon: The Docker engine is unreachable"), err
    assert last.endswith("PEON needs it to run; check DOCKER_HOST or the socket.")
    assert "Traceback" not in err
