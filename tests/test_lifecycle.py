"""The whole server lifecycle against a real Docker Engine with the fake game image."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import docker
import pytest

from bot.app import Services
from bot.models import Phase, ProgressEvent, ServerState
from tests.conftest import fakegame_variant, make_settings, services_for
from tests.engine import FAKEGAME_IMAGE, build_fakegame

pytestmark = pytest.mark.docker


def read_volume_file(client: docker.DockerClient, volume: str, path: str) -> str:
    """Read a file from a volume with a throwaway container of the fake game image."""
    out = client.containers.run(
        FAKEGAME_IMAGE,
        entrypoint=["cat", f"/v/{path}"],
        remove=True,
        volumes={volume: {"bind": "/v", "mode": "ro"}},
    )
    return out.decode()


async def test_create_start_status_logs_stop_update_delete_purge(
    services: Services, dclient: docker.DockerClient
) -> None:
    servers = services.servers
    events: list[ProgressEvent] = []

    async def progress(e: ProgressEvent) -> None:
        events.append(e)

    # create
    record = await servers.create(
        "fakegame",
        "alpha",
        {"world": "Midgard", "password": "hunter2"},
        actor="test",
        progress=progress,
    )
    assert record.state == ServerState.STOPPED
    assert [p.name for p in record.ports] == ["game", "query"]
    pool = services.settings.ports.pool_range
    assert all(p.host in pool for p in record.ports)
    ctr = dclient.containers.get("peon-alpha")
    assert ctr.labels["io.peon.instance"] == services.settings.instance_id
    assert ctr.labels["io.peon.server"] == "alpha"
    assert ctr.labels["io.peon.warplan"] == "fakegame"
    env = dict(e.split("=", 1) for e in ctr.attrs["Config"]["Env"])
    assert env["WORLD_NAME"] == "Midgard" and env["MAX_PLAYERS"] == "8"
    assert env["SERVER_PASSWORD"] == "hunter2" and env["DIFFICULTY"] == "normal"
    assert env["PUBLIC_PORT"] == str(record.ports[0].host)
    assert ctr.attrs["HostConfig"]["Memory"] == 64 * 2**20
    vol = dclient.volumes.get("peon-alpha-world")
    assert vol.attrs["Labels"]["io.peon.server"] == "alpha"

    # start: ready is detected from the log line and the port check
    result = await servers.start("alpha", actor="test", progress=progress)
    assert not result.already_running
    game = record.ports[0].host
    assert result.connect() == f"127.0.0.1:{game}"
    steps = [e.step for e in events if isinstance(e, Phase)]
    assert steps[-3:] == ["starting", "waiting for ready", "ready"]
    logs = await servers.logs("alpha", tail=50)
    assert any("Server ready for players" in line for line in logs)
    with socket.create_connection(("127.0.0.1", game), timeout=5) as s:
        assert b"hello from fakegame" in s.recv(100)

    # players, counted from the log lines of this run
    for command in ("join alice", "join bob", "leave alice"):
        await servers.console("alpha", command, actor="test")
    await asyncio.sleep(0.5)
    count = await servers.players(await servers.status("alpha"))
    assert count is not None and (count.online, count.names) == (1, ("bob",))

    # start again is harmless
    again = await servers.start("alpha", actor="test")
    assert again.already_running

    # status
    st = await servers.status("alpha")
    assert st.state == "running"
    assert st.container is not None and st.container.running
    assert st.usage is not None and st.usage.memory_limit == 64 * 2**20
    assert st.endpoints()[0] == f"127.0.0.1:{game}"
    assert servers.public_variables(st.record)["password"] != "hunter2"

    # stop: the game saves on SIGTERM into its volume
    assert await servers.stop("alpha", actor="test") is True
    assert "Shutting down: SIGTERM" in "\n".join(await servers.logs("alpha"))
    assert read_volume_file(dclient, "peon-alpha-world", "world.sav").startswith(
        "world=Midgard version=1 saves=1"
    )
    assert (await services.store.get_server("alpha")).state == ServerState.STOPPED
    assert await servers.stop("alpha", actor="test") is False

    # update: a newer local image; the container is recreated and the data kept
    old_id = ctr.id
    build_fakegame(FAKEGAME_IMAGE, version="2")
    try:
        upd = await servers.update("alpha", actor="test")
        assert upd.changed and not upd.pulled and not upd.restarted
        new = dclient.containers.get("peon-alpha")
        assert new.id != old_id
        await servers.start("alpha", actor="test")
        assert "Fake game 2 starting world=Midgard" in "\n".join(await servers.logs("alpha"))
        await servers.restart("alpha", actor="test")
        count = await servers.players(await servers.status("alpha"))
        assert count is not None and count.online == 0  # a new run: nobody is on yet
        await servers.stop("alpha", actor="test")
        saved = read_volume_file(dclient, "peon-alpha-world", "world.sav")
        assert saved.startswith("world=Midgard version=2 saves=3"), saved
    finally:
        build_fakegame(FAKEGAME_IMAGE, version="1")

    # delete keeps the data; creating the same name again reattaches it
    result = await servers.delete("alpha", actor="test")
    assert result.kept_volumes == ("peon-alpha-world",) and not result.removed_volumes
    assert not dclient.containers.list(all=True, filters={"name": "peon-alpha"})
    assert await services.store.find_server("alpha") is None
    await servers.create("fakegame", "alpha", {"world": "Midgard"}, actor="test")
    assert "saves=3" in read_volume_file(dclient, "peon-alpha-world", "world.sav")

    # delete --purge removes the volumes too
    purged = await servers.delete("alpha", actor="test", purge=True)
    assert purged.removed_volumes == ("peon-alpha-world",)
    with pytest.raises(docker.errors.NotFound):
        dclient.volumes.get("peon-alpha-world")

    audit = await services.store.audit_log("alpha", limit=50)
    actions = [(a.action, a.ok) for a in reversed(audit)]
    assert actions == [
        ("create", True),
        ("start", True),
        ("console", True),
        ("console", True),
        ("console", True),
        ("start", True),
        ("stop", True),
        ("stop", True),
        ("update", True),
        ("start", True),
        ("restart", True),
        ("stop", True),
        ("delete", True),
        ("create", True),
        ("purge", True),
    ]


async def test_console_stop_and_console_command(
    services: Services, dclient: docker.DockerClient, tmp_path
) -> None:
    """A plan whose stop is a console command on stdin: the game saves and exits by itself."""
    plan_dir = tmp_path / "plans"
    plan_dir.mkdir()
    text = (services.settings.warplans_dir / "fakegame.yaml").read_text()
    text = text.replace("name: fakegame", "name: consolegame").replace(
        "  signal: SIGTERM\n", "  console: stop\n"
    )
    (plan_dir / "consolegame.yaml").write_text(text)
    from bot.warplans import WarplanLibrary

    services.servers.warplans = WarplanLibrary(plan_dir)
    servers = services.servers
    await servers.create("consolegame", "beta", actor="test")
    await servers.start("beta", actor="test")
    await servers.console("beta", "save", actor="test")
    for _ in range(50):
        if "World saved (1)" in "\n".join(await servers.logs("beta")):
            break
        await asyncio.sleep(0.1)
    assert await servers.stop("beta", actor="test")
    logs = "\n".join(await servers.logs("beta"))
    assert "Shutting down: console" in logs and "World saved (2)" in logs
    info = dclient.api.inspect_container("peon-beta")
    assert info["State"]["ExitCode"] == 0  # it exited by itself, not killed


async def test_a_ready_port_counts_only_once_the_game_listens(
    tmp_path: Path, fakegame: str
) -> None:
    """Docker's port proxy accepts on a published port before anything listens inside; a
    ready check that only connects would call the server ready at once."""
    plans = fakegame_variant(
        tmp_path,
        ready={"port": "game", "timeout": 30},
        env={"DATA_DIR": "/data", "READY_DELAY": "4"},
    )
    async with services_for(make_settings(tmp_path, warplans_dir=plans)) as svc:
        await svc.servers.create("fakegame", "portready", actor="test")
        await svc.servers.start("portready", actor="test")
        lines = await svc.servers.logs("portready", tail=20)
        assert any(line.startswith("Server ready for players") for line in lines), lines
