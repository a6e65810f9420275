"""Settings after create, kept data and /peon reload from Discord: the real discord.py client
(PEON's bot) against the Discord emulator, the real engine and a real SQLite file."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from tests.conftest import ADMIN, OPERATOR, PLAYER, TEST_WARPLANS, config_file
from tests.discord_emulator import DiscordEmulator
from tests.test_discord_e2e import (
    EPHEMERAL,
    Runner,
    answer,
    bot_settings,
    finished,
    refusal,
    running_bot,
    slash,
    until,
)

pytestmark = pytest.mark.docker


def unique() -> str:
    return f"set-{uuid.uuid4().hex[:6]}"


def inputs(modal: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["custom_id"]: c for row in modal["components"] for c in row["components"]}


async def test_settings_form_prefilled_changes_keep_data_and_refuse_create_only(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str, dclient: docker.DockerClient
) -> None:
    plan = yaml.safe_load((TEST_WARPLANS / "fakegame.yaml").read_text())
    for v in plan["variables"]:
        v["create_only"] = v["name"] == "world"
    folder = tmp_path / "warplans"
    folder.mkdir()
    (folder / "fakegame.yaml").write_text(yaml.safe_dump(plan))
    settings = bot_settings(tmp_path, emu).model_copy(update={"warplans_dir": folder})
    name = unique()
    async with running_bot(settings, emu) as peon:
        servers = peon.services.servers
        await servers.create("fakegame", name, {"password": "old-secret"}, actor="test")
        await servers.start(name, actor="test")
        before = dclient.containers.get(f"peon-{name}").id

        i = await slash(emu, OPERATOR, "settings", name=name)
        assert refusal(i) == "You need the PEON admin role to change server settings."

        i = await slash(emu, ADMIN, "settings", name=name)
        assert i.response_type == 9 and i.modal is not None
        assert i.modal["title"] == f"Settings of {name}"
        shown = inputs(i.modal)
        assert {k: v.get("value") for k, v in shown.items()} == {
            "world": f"{name}-world",
            "max_players": "8",
            "password": None,  # a secret is never sent back
            "difficulty": "normal",
        }
        assert shown["password"]["placeholder"] == "Empty keeps the current one"
        assert not any(c.get("required") for c in shown.values())

        # A create-only setting: refused at once, only the user sees it, nothing changes.
        sub = await emu.submit_modal(ADMIN, i.modal["custom_id"], {
            "world": "elsewhere", "max_players": "8", "password": "", "difficulty": "normal",
        })  # fmt: skip
        await sub.wait_done()
        assert refusal(sub) == (
            "Variable 'world': is set only when the server is created; create another server "
            "to use another value."
        )

        # Untouched fields are not changes; an empty secret keeps the old one.
        i = await slash(emu, ADMIN, "settings", name=name)
        sub = await emu.submit_modal(ADMIN, i.modal["custom_id"], {
            "world": f"{name}-world", "max_players": "12", "password": "", "difficulty": "hard",
        })  # fmt: skip
        await sub.wait_done()
        text = await finished(emu, sub, "Changed")
        assert text.startswith(f"Changed `difficulty`, `max_players` of **{name}**")
        assert "ready again" in text and "old-secret" not in text
        record = await peon.services.store.get_server(name)
        assert record.variables == {
            "world": f"{name}-world", "max_players": "12", "password": "old-secret",
            "difficulty": "hard",
        }  # fmt: skip
        after = dclient.containers.get(f"peon-{name}")
        assert after.id != before and after.status == "running"
        assert "MAX_PLAYERS=12" in after.attrs["Config"]["Env"]
        (event,) = await peon.services.store.latest_events(name, 1)
        assert (event.kind, event.actor) == ("settings", f"discord:{ADMIN}")
        assert event.payload["changed"] == ["difficulty", "max_players"]

        # Nothing edited: nothing happens, and only the user is told so.
        i = await slash(emu, ADMIN, "settings", name=name)
        sub = await emu.submit_modal(ADMIN, i.modal["custom_id"], {
            "world": f"{name}-world", "max_players": "12", "password": "", "difficulty": "hard",
        })  # fmt: skip
        await sub.wait_done()
        text = await finished(emu, sub, "Nothing changed")
        assert sub.original is not None and sub.original.ephemeral
        assert dclient.containers.get(f"peon-{name}").id == after.id


async def test_kept_data_is_listed_and_purged_from_discord(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str, dclient: docker.DockerClient
) -> None:
    name = unique()
    async with running_bot(bot_settings(tmp_path, emu), emu) as peon:
        await peon.services.servers.create("fakegame", name, actor="test")
        await peon.services.servers.delete(name, actor="test")

        i = await slash(emu, PLAYER, "list")
        text = await finished(emu, i, "kept data")
        assert f"kept data: `{name}`" in text

        i = await slash(emu, ADMIN, "delete", name=name)  # no purge: there is no server
        assert refusal(i) == f"There is no server named '{name}'."
        i = await slash(emu, ADMIN, "delete", name=name, purge=True)
        prompt = i.original
        assert prompt is not None and not prompt.ephemeral
        assert f"the data kept from the deleted server **{name}** (peon-{name}-world)" in (
            prompt.text()
        )
        ok = await emu.click(ADMIN, prompt, answer(prompt))
        await ok.wait_done()
        done = f"Deleted the data kept from **{name}**."
        await until(emu, lambda: done in emu.message(prompt.id).text())
        volumes = dclient.volumes.list(filters={"label": [f"io.peon.server={name}"]})
        assert volumes == []
        i = await slash(emu, PLAYER, "list")
        assert "kept data" not in await finished(emu, i, "No servers yet")


async def test_reload_applies_what_it_can_and_names_what_needs_a_restart(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    base = bot_settings(tmp_path, emu)
    config = config_file(base, tmp_path / "peon.yaml")
    settings = base.model_copy(update={"source": str(config)})
    runner = Runner(settings, emu)
    await runner.start()
    try:
        bot = runner.bot
        assert bot.automation is not None and bot.crash_watch is not None
        data = yaml.safe_load(config.read_text())
        data["automation"]["warn_before"] = ["5m", "30s"]
        data["crash"]["max_restarts"] = 7
        data["crash"]["hang_checks"] = 0
        data["backups"]["keep_last"] = 2
        data["data_dir"] = str(tmp_path / "elsewhere")
        guild = data["discord"]["guilds"][str(emu.guild_id)]
        guild["roles"]["admin"].append("operator")  # operators become PEON admins
        config.write_text(yaml.safe_dump(data))

        i = await slash(emu, PLAYER, "reload", command="peon")
        assert refusal(i) == "You need the PEON admin role to reload the configuration."
        i = await slash(emu, ADMIN, "reload", command="peon")
        text = await finished(emu, i, "Needs a restart")
        assert i.original is not None and i.original.flags & EPHEMERAL
        applied = text.split("Applied\n", 1)[1].split("\n", 1)[0]
        assert applied == (
            "`automation.warn_before`, `backups.keep_last`, `crash.hang_checks`, "
            f"`crash.max_restarts`, `discord.guilds.{emu.guild_id}.roles.admin`"
        )
        assert "Needs a restart (the old value stays until then)\n`data_dir`" in text
        assert bot.automation.leads[0].total_seconds() == 300
        assert bot.crash_watch.settings.max_restarts == 7
        assert not [t for t in bot.crash_watch._tasks if t.get_name() == "watch-hangs"]
        assert runner.services.backups.policy.last == 2
        assert bot.settings.data_dir == base.data_dir  # kept until a restart
        assert runner.services.servers.settings.crash.max_restarts == 7

        # Nothing new in the file: nothing applied; the restart-only change is still named.
        # The new grant is in force: an operator may reload now.
        i = await slash(emu, OPERATOR, "reload", command="peon")
        text = await finished(emu, i, "Needs a restart")
        assert "nothing changed in the config" in text and "`data_dir`" in text

        # A broken file changes nothing, in one sentence only the admin sees.
        config.write_text("crash: [\n")
        i = await slash(emu, ADMIN, "reload", command="peon")
        text = await finished(emu, i, "peon.yaml")
        assert i.original is not None and i.original.flags & EPHEMERAL
        assert bot.crash_watch.settings.max_restarts == 7
    finally:
        await runner.stop()
