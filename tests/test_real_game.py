"""A real game server under PEON, end to end: Luanti (Minetest) 5.6.1 from Debian's packages
(tests/luanti.py builds the image), run by the shipped war plan warplans/luanti.yaml with only
its image swapped for the local one, through PEON's own services on the real engine.

The world carries a small mod of the test's (a world mod, as a server admin installs one): at
every boot it counts the boot in the world's mod storage and logs the counts; in the game's
shutdown hook it counts a clean shutdown. The engine writes mod storage to disk only at its
periodic save and at the end of a clean shutdown, so the counts say which world a server
loaded and whether its last stop saved. It also has the map around the origin generated, so
the world has map blocks to save.
"""

from __future__ import annotations

import asyncio
import io
import re
import sqlite3
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest
import zstandard

from bot.app import Services
from bot.errors import StartFailed
from bot.models import Backup, ServerState
from bot.settings import Settings
from tests.conftest import make_settings, services_for
from tests.luanti import LuantiImage, build_luanti, shipped_plan_with

pytestmark = pytest.mark.docker

DATA = "/config/.minetest"  # the plan's volume
WORLD = f"{DATA}/worlds/world"  # the server's default world
READY = re.compile(r'ACTION\[Main\]: Server for gameid="devtest" listening on \[::\]:30000\.')
SIGTERM = "INFO: signal_handler(): got SIGTERM, shutting down."
SHUTTING_DOWN = "ACTION[Main]: Server: Shutting down"

PROBE_MOD = {
    "mod.conf": "name = peon_probe\ndescription = PEON's test: counts boots and clean shutdowns\n",
    "init.lua": """\
local storage = minetest.get_mod_storage()
local boots = storage:get_int("boots") + 1
storage:set_int("boots", boots)
minetest.log("action", "peon_probe: boot " .. boots .. " after "
    .. storage:get_int("shutdowns") .. " clean shutdowns")
minetest.register_on_shutdown(function()
    local n = storage:get_int("shutdowns") + 1
    storage:set_int("shutdowns", n)
    minetest.log("action", "peon_probe: clean shutdown " .. n)
end)
-- Generate (or load) the map around the origin, as a player arriving there would.
minetest.after(0, function()
    minetest.emerge_area({x = -8, y = -8, z = -8}, {x = 7, y = 7, z = 7},
        function(_, _, remaining)
            if remaining == 0 then
                minetest.log("action", "peon_probe: spawn area emerged")
            end
        end)
end)
""",
}


@pytest.fixture(scope="module")
def luanti(engine: None) -> Iterator[LuantiImage]:
    client = docker.from_env(timeout=300)
    image = build_luanti(client)
    client.close()
    yield image


def luanti_settings(tmp_path: Path, luanti: LuantiImage) -> Settings:
    """Test settings whose war plans are the shipped Luanti plan on the local image."""
    return make_settings(tmp_path, warplans_dir=shipped_plan_with(luanti.tag, tmp_path / "plans"))


def put_probe(ctr: docker.models.containers.Container) -> None:
    """Install the probe as a world mod, owned by the server's user (PUID 1000)."""
    buf = io.BytesIO()
    base = "worlds/world/worldmods/peon_probe"
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("worlds", "worlds/world", "worlds/world/worldmods", base):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, 1000, 1000
            tar.addfile(info)
        for name, text in PROBE_MOD.items():
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size, info.mode, info.uid, info.gid = len(text), 0o644, 1000, 1000
            tar.addfile(info, io.BytesIO(text.encode()))
    assert ctr.put_archive(DATA, buf.getvalue())


def files_of(tar_bytes: bytes, top: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {
            m.name.removeprefix(top + "/"): tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def world_on_disk(ctr: docker.models.containers.Container) -> dict[str, bytes]:
    """The world's files as they are in the volume (read through the engine)."""
    stream, _ = ctr.get_archive(WORLD)
    return files_of(b"".join(stream), "world")


def world_in_backup(settings: Settings, backup: Backup) -> dict[str, bytes]:
    """The world's files in a backup's archive of the plan's volume."""
    (volume,) = backup.volumes
    with (settings.backup_dir / backup.dir / volume.file).open("rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    return files_of(data, ".minetest/worlds/world")


def map_blocks(world: dict[str, bytes], tmp_path: Path) -> int:
    db = tmp_path / f"map-{uuid.uuid4().hex[:6]}.sqlite"
    db.write_bytes(world["map.sqlite"])
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM blocks").fetchone()[0])


def probe_counts(world: dict[str, bytes], tmp_path: Path) -> dict[str, int]:
    """The probe's counters from the world's mod storage (worlds/world/mod_storage.sqlite)."""
    db = tmp_path / f"mod_storage-{uuid.uuid4().hex[:6]}.sqlite"
    db.write_bytes(world["mod_storage.sqlite"])
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, value FROM entries WHERE modname = 'peon_probe'")
        return {bytes(k).decode(): int(bytes(v)) for k, v in rows}


def meta(world: dict[str, bytes], file: str, key: str) -> str:
    text = world[file].decode()
    found = re.search(rf"^{key} = (.*)$", text, re.MULTILINE)
    assert found, f"{key} not in {file}"
    return found[1]


def index_of(lines: list[str], text: str) -> int:
    found = [i for i, line in enumerate(lines) if text in line]
    assert found, f"{text!r} not in the log: {lines}"
    return found[0]


async def wait_for_line(services: Services, name: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in "\n".join(await services.servers.logs(name, tail=2000)):
        assert time.monotonic() < deadline, f"no {text!r} in {timeout} s"
        await asyncio.sleep(0.2)


async def logs_since(services: Services, name: str, mark: int) -> list[str]:
    """The server's log lines after the first `mark` of them (the container keeps its log
    across stops and starts)."""
    return (await services.servers.logs(name, tail=2000))[mark:]


@contextmanager
def engine_events(client: docker.DockerClient, server: str) -> Iterator[list[str]]:
    """The starts and deaths of the server's containers while the block runs, in order."""
    seen: list[str] = []
    since = f"{time.time():.6f}"
    yield seen
    events = client.events(
        since=since, until=f"{time.time():.6f}", decode=True,
        filters={"label": f"io.peon.server={server}", "type": "container"},
    )  # fmt: skip
    seen += [e["Action"] for e in events if e["Action"] in ("start", "die")]


async def test_luanti_end_to_end_through_the_shipped_plan(
    tmp_path: Path, luanti: LuantiImage, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = luanti_settings(tmp_path, luanti)
    name = f"luanti-e2e-{uuid.uuid4().hex[:6]}"  # container names are engine-wide
    client = docker.from_env()
    async with services_for(settings) as services:
        servers, backups = services.servers, services.backups
        plan = services.warplans.get("luanti")
        assert plan.image == luanti.tag and plan.save is not None and plan.save.mode == "stop"

        # create: the plan's port, volume and environment on the real image
        record = await servers.create("luanti", name, actor="test")
        assert record.state == ServerState.STOPPED
        assert [(p.container, p.protocol) for p in record.ports] == [(30000, "udp")]
        ctr = client.containers.get(f"peon-{name}")
        env = dict(e.split("=", 1) for e in ctr.attrs["Config"]["Env"])
        assert env["CLI_ARGS"] == "--gameid devtest" and env["PUID"] == "1000"
        assert {m["Destination"] for m in ctr.attrs["Mounts"]} == {DATA}
        put_probe(ctr)

        # start until the real ready line
        started = await servers.start(name, actor="test")
        lines = await servers.logs(name, tail=200)
        assert any(READY.search(line) for line in lines), lines
        assert any("peon_probe: boot 1 after 0 clean shutdowns" in line for line in lines)

        # status and logs
        status = await servers.status(name)
        assert status.state == "running" and status.container is not None
        assert status.usage is not None and status.usage.memory_bytes > 0
        assert status.endpoints() == [f"127.0.0.1:{record.ports[0].host}"]
        players = await servers.players(status)
        assert players is not None and players.online == 0
        await wait_for_line(services, name, "peon_probe: spawn area emerged")

        # a backup: the plan saves by stopping the server, which saves on SIGTERM and exits
        mark = len(await servers.logs(name, tail=2000))
        first = await backups.create(name, actor="test")
        after = await logs_since(services, name, mark)
        order = [SIGTERM, SHUTTING_DOWN, "peon_probe: clean shutdown 1", "boot 2 after 1"]
        at = [index_of(after, text) for text in order]
        assert at == sorted(at), after
        assert any(READY.search(line) for line in after[at[-1] :])  # and it was started again
        saved = world_in_backup(settings, first)
        assert {"map.sqlite", "world.mt", "env_meta.txt", "map_meta.txt"} <= set(saved)
        assert "gameid = devtest" in saved["world.mt"].decode()
        assert probe_counts(saved, tmp_path) == {"boots": 1, "shutdowns": 1}
        assert map_blocks(saved, tmp_path) > 0
        seed = meta(saved, "map_meta.txt", "seed")
        assert (await servers.status(name)).state == "running"

        # a graceful stop: the container exits by itself, with 0, well inside the grace
        await asyncio.sleep(3)  # game time passes (env_meta.txt counts seconds run)
        mark = len(await servers.logs(name, tail=2000))
        began = time.monotonic()
        assert await servers.stop(name, actor="test") is True
        stop_seconds = time.monotonic() - began
        ctr.reload()
        state = ctr.attrs["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 0, state
        assert not state["OOMKilled"]
        assert stop_seconds < plan.stop.grace
        after = await logs_since(services, name, mark)
        assert any(SHUTTING_DOWN in line for line in after), after
        assert any("peon_probe: clean shutdown 2" in line for line in after), after
        stopped = world_on_disk(ctr)
        assert probe_counts(stopped, tmp_path) == {"boots": 2, "shutdowns": 2}
        game_time = int(meta(stopped, "env_meta.txt", "game_time"))
        assert game_time >= 3

        # a restart loads that world, not a new one
        mark = len(await servers.logs(name, tail=2000))
        again = await servers.start(name, actor="test")
        after = await logs_since(services, name, mark)
        assert any("peon_probe: boot 3 after 2 clean shutdowns" in line for line in after)
        await servers.restart(name, actor="test")  # the restart operation: stop, then start
        ctr.reload()
        reloaded = world_on_disk(ctr)
        assert meta(reloaded, "map_meta.txt", "seed") == seed
        assert int(meta(reloaded, "env_meta.txt", "game_time")) >= game_time
        assert probe_counts(reloaded, tmp_path)["shutdowns"] == 3

        # an update (the image is local: nothing to pull) backs up, recreates, keeps the world;
        # one stop and one start: the server is stopped before the backup its plan saves by
        # stopping, not started by that backup only to be stopped again
        with engine_events(client, name) as update_events:
            updated = await servers.update(name, actor="test")
        assert updated.restarted and update_events == ["die", "start"]
        (before_update,) = [b for b in await backups.list(name) if b.trigger == "before-update"]
        kept = world_in_backup(settings, before_update)
        assert probe_counts(kept, tmp_path) == {"boots": 4, "shutdowns": 4}
        lines = await servers.logs(name, tail=200)  # the new container's
        assert any("peon_probe: boot 5 after 4 clean shutdowns" in line for line in lines), lines

        # a restore brings the first backup's world back (boot 1, one clean shutdown), with
        # one stop and one start as well
        with engine_events(client, name) as restore_events:
            safety = await backups.restore(name, first.id, actor="test")
        assert restore_events == ["die", "start"]
        assert safety is not None
        ahead = world_in_backup(settings, safety)
        assert probe_counts(ahead, tmp_path) == {"boots": 5, "shutdowns": 5}
        ctr = client.containers.get(f"peon-{name}")  # the restore recreated it
        lines = await servers.logs(name, tail=200)
        assert any("peon_probe: boot 2 after 1 clean shutdowns" in line for line in lines), lines
        assert (await servers.status(name)).state == "running"
        assert meta(world_on_disk(ctr), "map_meta.txt", "seed") == seed

        # delete with purge: nothing of it is left on the engine
        volumes = [v.name for v in client.volumes.list(filters={"label": f"io.peon.server={name}"})]
        assert volumes
        with engine_events(client, name) as purge_events:
            result = await servers.delete(name, actor="test", purge=True)
        assert purge_events == ["die"]  # stopped once, before its last backup
        assert set(result.removed_volumes) == set(volumes) and result.kept_volumes == ()
        (last,) = [b for b in await backups.list(name) if b.trigger == "before-purge"]
        gone = world_in_backup(settings, last)
        assert probe_counts(gone, tmp_path) == {"boots": 2, "shutdowns": 2}
        flt = {"label": [f"io.peon.instance={settings.instance_id}"]}
        assert client.containers.list(all=True, filters=flt) == []
        assert client.volumes.list(filters=flt) == []
        assert await services.store.find_server(name) is None
    client.close()

    with capsys.disabled():
        print(
            f"\nLuanti {luanti.version} ({luanti.size / 1e6:.0f} MB image, "
            f"{'built' if luanti.built else 'found'} in {luanti.seconds:.1f} s): "
            f"start to ready {started.seconds:.2f} s (restart {again.seconds:.2f} s), "
            f"graceful stop {stop_seconds:.2f} s, backup {first.seconds:.2f} s"
        )


async def test_luanti_that_cannot_start_fails_at_once_with_its_own_error(
    tmp_path: Path, luanti: LuantiImage
) -> None:
    settings = luanti_settings(tmp_path, luanti)
    name = f"luanti-bad-{uuid.uuid4().hex[:6]}"
    async with services_for(settings) as services:
        servers = services.servers
        await servers.create("luanti", name, {"cli_args": "--gameid nosuchgame"}, actor="test")
        # Seen when its log ends (not "not ready after 300 s", the plan's ready timeout).
        with pytest.raises(StartFailed, match="exited with code 1") as failed:
            await servers.start(name, actor="test")
        assert any('Game "nosuchgame" not found' in line for line in failed.value.logs)
        assert (await servers.status(name)).state == "exited"
        await servers.delete(name, actor="test", purge=True)


async def test_luanti_world_argument_named_by_the_plan_makes_that_world(
    tmp_path: Path, luanti: LuantiImage
) -> None:
    """The plan's cli_args help names `--world PATH` for another world, because `--worldname`
    of a world that does not exist yet is ignored: the server runs worlds/world instead."""
    settings = luanti_settings(tmp_path, luanti)
    async with services_for(settings) as services:
        servers = services.servers
        (cli,) = [v for v in services.warplans.get("luanti").variables if v.name == "cli_args"]
        assert "--world /config/.minetest/worlds/NAME" in cli.description
        for args, world in (
            ("--gameid devtest --world /config/.minetest/worlds/islands", "islands"),
            ("--gameid devtest --worldname islands", "world"),
        ):
            name = f"luanti-world-{uuid.uuid4().hex[:6]}"
            await servers.create("luanti", name, {"cli_args": args}, actor="test")
            await servers.start(name, actor="test")
            lines = await servers.logs(name, tail=100)
            assert any(f"World at [{DATA}/worlds/{world}]" in line for line in lines), lines
            await servers.delete(name, actor="test", purge=True)
