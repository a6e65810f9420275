"""Settings after create and kept data, on real parts: the core (ServerService) and the `peon`
CLI as a process of its own, against the real engine and a real SQLite file."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from pathlib import Path

import docker
import pytest
import yaml

from bot.app import Services
from bot.camps import Camps
from bot.errors import ServerExists, VariableError
from bot.logs import configure_logging, reconfigure_logging, redact_in_logs
from bot.models import ServerState
from bot.reloading import changed_settings, split_restart
from bot.settings import LogSettings, Settings
from tests.conftest import (
    TEST_WARPLANS,
    config_file,
    fakegame_variant,
    make_settings,
    peon,
    services_for,
)

pytestmark = pytest.mark.docker

WORLD_FIXED = (
    "Variable 'world': is set only when the server is created; create another server to use "
    "another value."
)


def unique(prefix: str = "set") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def create_only_world(tmp_path: Path) -> Path:
    """The fake game's plan with its world name marked create-only."""
    plan = yaml.safe_load((TEST_WARPLANS / "fakegame.yaml").read_text())
    variables = [{**v, "create_only": True} if v["name"] == "world" else v
                 for v in plan["variables"]]  # fmt: skip
    return fakegame_variant(tmp_path, variables=variables)


def in_volume(dclient: docker.DockerClient, name: str, command: str) -> str:
    out = dclient.containers.get(f"peon-{name}").exec_run(["sh", "-c", command])
    assert out.exit_code == 0, out.output
    return str(out.output.decode()).strip()


async def test_a_settings_change_recreates_the_container_keeps_its_data_and_says_who(
    services: Services, dclient: docker.DockerClient
) -> None:
    servers, name = services.servers, unique()
    await servers.create("fakegame", name, {"password": "first-secret"}, actor="test")
    await servers.start(name, actor="test")
    in_volume(dclient, name, "echo kept > /data/marker")
    before = dclient.containers.get(f"peon-{name}")

    result = await servers.change_settings(
        name, {"max_players": "16", "password": "second-secret"}, actor="discord:42"
    )

    assert result.changed == ("max_players", "password") and result.restarted
    after = dclient.containers.get(f"peon-{name}")
    assert after.id != before.id and after.status == "running"
    env = dict(e.split("=", 1) for e in after.attrs["Config"]["Env"])
    assert env["MAX_PLAYERS"] == "16" and env["SERVER_PASSWORD"] == "second-secret"
    assert env["WORLD_NAME"] == f"{name}-world"  # untouched settings stay
    assert in_volume(dclient, name, "cat /data/marker") == "kept"
    assert "before-settings" in {b.trigger for b in await services.backups.list(name)}
    (event,) = await services.store.latest_events(name, 1)
    assert (event.kind, event.actor, event.ok) == ("settings", "discord:42", True)
    assert event.payload["changed"] == ["max_players", "password"]
    assert event.detail == "changed max_players, password"
    shown = json.dumps([event.detail, event.payload])
    assert "second-secret" not in shown and "first-secret" not in shown
    audit = await services.store.audit_log(name, 1)
    assert (audit[0].action, audit[0].actor) == ("settings", "discord:42")

    # An empty secret keeps the one it had; the server stays running throughout.
    result = await servers.change_settings(
        name, {"password": "", "difficulty": "hard"}, actor="test"
    )
    assert result.changed == ("difficulty",)
    record = await services.store.get_server(name)
    assert record.variables["password"] == "second-secret"
    assert record.variables["difficulty"] == "hard"
    recreated = dclient.containers.get(f"peon-{name}").id

    # The same values again: nothing is touched, and it says so.
    result = await servers.change_settings(
        name, {"max_players": "16", "password": "", "difficulty": "hard"}, actor="test"
    )
    assert result.changed == () and not result.restarted
    assert dclient.containers.get(f"peon-{name}").id == recreated
    (event,) = await services.store.latest_events(name, 1)
    assert (event.kind, event.detail, event.payload["changed"]) == ("settings", "no change", [])

    # Validated as at create.
    with pytest.raises(VariableError, match=r"^Variable 'max_players': must be at most 64\.$"):
        await servers.change_settings(name, {"max_players": "500"}, actor="test")
    with pytest.raises(VariableError, match="this war plan has no such variable"):
        await servers.change_settings(name, {"colour": "red"}, actor="test")
    assert dclient.containers.get(f"peon-{name}").id == recreated


async def test_a_create_only_setting_is_refused_from_the_core_and_the_cli(
    tmp_path: Path, fakegame: str, dclient: docker.DockerClient
) -> None:
    settings = make_settings(tmp_path, warplans_dir=create_only_world(tmp_path))
    config = config_file(settings, tmp_path / "peon.yaml")
    name = unique()
    async with services_for(settings) as svc:
        await svc.servers.create("fakegame", name, {"world": "first"}, actor="test")
        container = dclient.containers.get(f"peon-{name}").id
        with pytest.raises(VariableError) as refused:
            await svc.servers.change_settings(name, {"world": "second"}, actor="test")
        assert str(refused.value) == WORLD_FIXED
        # Back to the default is a change too.
        with pytest.raises(VariableError):
            await svc.servers.change_settings(name, {"world": ""}, actor="test")
        assert (await svc.store.get_server(name)).variables["world"] == "first"
        assert dclient.containers.get(f"peon-{name}").id == container
        (event,) = await svc.store.latest_events(name, 1)
        assert (event.kind, event.ok, event.detail) == ("settings", False, WORLD_FIXED)

        r = peon(config, "server", "set", name, "world=second")
        assert (r.returncode, r.stderr) == (1, f"peon: {WORLD_FIXED}\n")
        # The same value given with others is no change of it.
        r = peon(config, "server", "set", name, "world=first", "max_players=10")
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{name}: changed max_players; recreated, data kept\n"
        r = peon(config, "server", "set", name, "max_players=10")
        assert r.stdout == f"{name}: nothing changed (it already has these settings)\n"
        r = peon(config, "server", "set", name, "max_players")
        assert r.returncode == 2 and "set takes KEY=VALUE, got 'max_players'" in r.stderr
        record = await svc.store.get_server(name)
        assert record.variables["max_players"] == "10" and record.variables["world"] == "first"
        audit = [(a.action, a.ok) for a in await svc.store.audit_log(name, 4)]
        assert audit[:3] == [("settings", True), ("settings", True), ("settings", False)]


async def test_kept_data_is_listed_and_purged_from_the_cli(
    tmp_path: Path, fakegame: str, dclient: docker.DockerClient
) -> None:
    settings: Settings = make_settings(tmp_path)
    config = config_file(settings, tmp_path / "peon.yaml")
    one, two = unique(), unique()
    async with services_for(settings) as svc:
        for name in (one, two):
            await svc.servers.create("fakegame", name, actor="test")
            await svc.servers.delete(name, actor="test")  # the data is kept
        kept = {k.server: k for k in await svc.servers.kept_data()}
        assert set(kept) == {one, two}
        assert kept[one].warplan == "fakegame" and f"peon-{one}-world" in kept[one].volumes

        r = peon(config, "server", "list", "--kept")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["SERVER", "WAR", "PLAN", "VOLUMES"]
        assert any(line.startswith(one) and f"peon-{one}-world" in line for line in lines)

        r = peon(config, "server", "purge", one)  # no terminal to confirm on
        assert (r.returncode, r.stderr) == (
            1, "peon: Refusing to purge without confirmation: pass --yes.\n"
        )  # fmt: skip
        r = peon(config, "server", "purge", one, "--yes")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"purged {one}: removed volumes peon-{one}-world")
        # `delete --purge` of a deleted name purges its kept data the same way.
        r = peon(config, "server", "delete", two, "--purge", "--yes")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"purged {two}: removed volumes peon-{two}-world")
        flt = {"label": [f"io.peon.instance={settings.instance_id}"]}
        assert dclient.volumes.list(filters=flt) == []
        assert await svc.servers.kept_data() == []
        assert await svc.store.find_server(one) is None
        (event,) = await svc.store.latest_events(one, 1)
        assert (event.kind, event.ok, event.payload["kept"]) == ("purge", True, True)
        assert event.actor.startswith("cli:")

        r = peon(config, "server", "purge", "ghost", "--yes")
        assert (r.returncode, r.stderr) == (
            1, "peon: There is no server and no kept data named 'ghost'.\n"
        )  # fmt: skip


async def test_a_purge_of_kept_data_killed_midway_is_finished_by_the_next_reconcile(
    services: Services, dclient: docker.DockerClient
) -> None:
    """The name is held by a record in state deleting with the purge lease: a dead process's
    purge is finished (never left half done, nor a create reattaching half the data)."""
    servers, name = services.servers, unique()
    await servers.create("fakegame", name, actor="test")
    await servers.delete(name, actor="test")
    await services.store.create_server(
        name=name, warplan="fakegame", image="", variables={}, ports=[], created_by="test",
        state=ServerState.DELETING, operation="purge",
    )  # fmt: skip
    # As if its process had died: the lease's owner (this host, pid 999999) is gone.
    await services.store.db.execute(
        "UPDATE servers SET op_owner = ? WHERE name = ?", (f"{socket.gethostname()}:999999:x", name)
    )
    await services.store.db.commit()
    report = await servers.reconcile("test")
    assert name in report.finished_deletes
    flt = {"label": [f"io.peon.instance={services.settings.instance_id}"]}
    assert dclient.volumes.list(filters=flt) == []
    assert await services.store.find_server(name) is None

    # A purge of kept data confirmed after the name became a server again removes nothing.
    await servers.create("fakegame", name, actor="test")
    with pytest.raises(ServerExists):
        await servers.purge_kept(name, actor="test")
    assert len(dclient.volumes.list(filters=flt)) == 1


def test_reload_splits_what_applies_live_from_what_needs_a_restart() -> None:
    old = Settings.model_validate({
        "hosts": [{"name": "home"}, {"name": "vps", "base_url": "tcp://192.0.2.7:2376"}],
        "automation": {"warn_before": ["10m", "1m"]},
    })  # fmt: skip
    new = Settings.model_validate({
        "data_dir": "/elsewhere",
        "hosts": [{"name": "home", "pool": "40000-40099", "base_url": "unix:///other.sock"},
                  {"name": "attic", "base_url": "ssh://peon@attic.lan"}],
        "automation": {"warn_before": ["5m"]},
        "discord": {"guilds": {"123": {"notification_channel": 5}}},
    })  # fmt: skip
    effective, restart = split_restart(old, new)
    assert sorted(restart) == ["data_dir", "hosts.home.base_url", "hosts.vps"]
    # What needs a restart keeps its old value until then; the rest is the file's.
    assert effective.data_dir == old.data_dir
    assert [(h.name, h.base_url, h.pool) for h in effective.hosts] == [
        ("home", None, "40000-40099"),
        ("attic", "ssh://peon@attic.lan", None),
        ("vps", "tcp://192.0.2.7:2376", None),
    ]
    assert changed_settings(old, effective) == [
        "automation.warn_before", "discord.guilds.123", "hosts.attic", "hosts.home.pool",
    ]  # fmt: skip


def test_hosts_added_by_a_reload_get_an_engine_and_the_others_keep_theirs() -> None:
    old = Settings.model_validate({"hosts": [{"name": "home"}]})
    camps = Camps(old)
    home = camps.get("home").driver
    new = Settings.model_validate({
        "hosts": [{"name": "home", "public_address": "play.example.org"},
                  {"name": "attic", "base_url": "ssh://peon@attic.lan"}],
    })  # fmt: skip
    effective, _ = split_restart(old, new)
    assert camps.reconfigure(effective) == ["attic"]
    assert camps.get("home").driver is home and camps.get("home").address == "play.example.org"
    assert camps.names == ["home", "attic"]


def test_a_reload_changes_the_log_format_and_what_it_redacts_without_other_handlers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging(LogSettings(), ["tok-123"])
        theirs = logging.NullHandler()
        root.addHandler(theirs)
        log = logging.getLogger("set-test")
        redact_in_logs(["tok-123", "https://hooks.example/abc"])  # a webhook reloaded
        reconfigure_logging(LogSettings(format="json", level="WARNING"))
        log.info("not shown at WARNING")
        log.warning("posting to https://hooks.example/abc with tok-123")
        (line,) = capsys.readouterr().err.splitlines()
        assert json.loads(line)["msg"] == "posting to [redacted] with [redacted]"
        assert theirs.formatter is None  # handlers PEON did not make are left alone
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
