"""PEON killed or stopped at bad moments, against the real engine and a real SQLite file.

- SIGKILL during create and during start (another process, as `peon` would be): a restart's
  reconcile leaves no orphaned container or volume, no stuck lease, records that match the
  engine, and the schedules as they were. (SIGKILL during a backup: tests/test_backups.py.)
- SIGTERM to a running bot (`python -m bot`, a real process talking to the Discord emulator):
  the operation under way finishes, the bot exits 0, game servers keep running, and its log
  is one key=value line per event with the token nowhere in it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest
import yaml

from bot.app import Services, open_services
from bot.errors import ShuttingDown
from bot.models import ServerState
from bot.settings import Settings
from tests.conftest import OPERATOR, ROOT, cleanup_instance, make_settings, services_for
from tests.discord_emulator import DiscordEmulator
from tests.test_discord_e2e import bot_settings, slash

pytestmark = pytest.mark.docker

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from bot.app import open_services
    from bot.settings import Settings

    async def main():
        settings = Settings.model_validate_json(sys.argv[1])
        async with open_services(settings) as svc:
            if sys.argv[2] == "create":
                await svc.servers.create("fakegame", sys.argv[3], {"world": "K"}, actor="kid")
            else:
                await svc.servers.start(sys.argv[3], actor="kid")

    asyncio.run(main())
    """
)


@pytest.fixture
async def svc(tmp_path: Path, fakegame: str) -> AsyncIterator[Services]:
    async with services_for(make_settings(tmp_path)) as s:
        yield s


def lease_of(db: Path, name: str) -> str | None:
    """The operation holding the server's lease, read as another process would."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute("SELECT op FROM servers WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


async def kill_during(settings: Settings, action: str, name: str, op: str, after: float) -> bool:
    """Run `action` in a child process; SIGKILL it `after` seconds into holding the lease.
    False when it finished first (a create takes a fraction of a second)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", CHILD, settings.model_dump_json(), action, name]
    proc = subprocess.Popen(args, env=env, cwd=ROOT)
    try:
        for _ in range(1500):
            if settings.db_path.exists() and lease_of(settings.db_path, name) == op:
                break
            if proc.poll() is not None:
                pytest.fail(f"the child finished before it was killed ({proc.returncode})")
            await asyncio.sleep(0.01)
        else:
            pytest.fail(f"the child never took the {op} lease")
        await asyncio.sleep(after)
        proc.send_signal(signal.SIGKILL)
    finally:
        await asyncio.to_thread(proc.wait, 30)
    assert proc.returncode in (0, -signal.SIGKILL)
    return proc.returncode == -signal.SIGKILL


def engine_objects(instance: str, server: str) -> tuple[list[str], list[str]]:
    client = docker.from_env()
    flt = {"label": [f"io.peon.instance={instance}", f"io.peon.server={server}"]}
    try:
        containers = [c.name for c in client.containers.list(all=True, filters=flt)]
        volumes = [v.name for v in client.volumes.list(filters=flt)]
    finally:
        client.close()
    return containers, volumes


async def assert_consistent(svc: Services, name: str) -> None:
    """Either no trace of the server at all, or a record that matches the engine."""
    containers, volumes = engine_objects(svc.settings.instance_id, name)
    record = await svc.store.find_server(name)
    if record is None:
        assert (containers, volumes) == ([], []), "orphans left behind"
        return
    assert record.operation is None
    assert len(containers) == 1 and volumes == [f"peon-{name}-world"]
    running = await svc.servers.is_running(name)
    assert record.state == (ServerState.RUNNING if running else ServerState.STOPPED)


async def test_sigkill_during_create_and_start_then_reconcile(svc: Services) -> None:
    # A schedule of another server: it must come through every crash untouched.
    await svc.servers.create("fakegame", "anchor", {"world": "A"}, actor="test")
    sid = (await svc.store.add_schedule("anchor", "idle", {"minutes": 30}, "test")).id
    rolled_back = []
    for i, after in enumerate((0.0, 0.02, 0.05, 0.1, 0.2)):
        name = f"kc{i}"
        await kill_during(svc.settings, "create", name, "create", after)
        cut_short = lease_of(svc.settings.db_path, name) == "create"
        report = await svc.servers.reconcile("peon:startup")
        await assert_consistent(svc, name)
        if cut_short:  # killed mid-create: undone, never kept half-made
            assert report.rolled_back == [name]
            assert await svc.store.find_server(name) is None
            rolled_back.append(name)
    assert rolled_back  # at least the earliest kill caught a create half-way

    await svc.servers.create("fakegame", "ks", {"world": "S"}, actor="test")
    assert await kill_during(svc.settings, "start", "ks", "start", 0.3)
    assert lease_of(svc.settings.db_path, "ks") == "start"  # the dead process still holds it
    report = await svc.servers.reconcile("peon:startup")
    assert "ks (start)" in report.interrupted
    await assert_consistent(svc, "ks")
    await svc.servers.start("ks", actor="test")  # usable right away
    assert await svc.servers.is_running("ks")
    schedule = await svc.store.get_schedule(sid)
    assert (schedule.server, schedule.kind, schedule.paused) == ("anchor", "idle", False)


async def test_sigterm_lets_the_operation_finish_and_leaves_games_running(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    settings = bot_settings(tmp_path, emu)
    try:
        async with open_services(settings) as s:
            await s.servers.create("fakegame", "keep", {"world": "K"}, actor="test")
            await s.servers.start("keep", actor="test")
        config = tmp_path / "peon.yaml"
        config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
        log = tmp_path / "bot.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PEON_CONFIG": str(config),
            "DISCORD_TOKEN": emu.token,
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bot"], env=env, cwd=ROOT, stdout=out, stderr=out
            )
        try:
            async with asyncio.timeout(60):
                await emu.identified.wait()
                while not emu.commands:  # synced: the bot is taking commands
                    await asyncio.sleep(0.05)
            i = await slash(emu, OPERATOR, "restart", name="keep")
            assert i.response_type == 5  # deferred: the restart is under way
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log.read_text()
        assert code == 0, text
        async with open_services(settings) as s:
            audit = [(a.action, a.ok) for a in await s.store.audit_log("keep")]
            assert audit[0] == ("restart", True), audit  # finished, not cut off
            record = await s.store.get_server("keep")
            assert record.operation is None
            assert await s.servers.is_running("keep")  # the bot does not own its lifetime
        lines = [line for line in text.splitlines() if line.strip()]
        assert any('msg="shutting down"' in line and "signal=SIGTERM" in line for line in lines)
        assert all(line.startswith("ts=") for line in lines), text
        assert emu.token not in text
    finally:
        cleanup_instance(settings.instance_id)


async def test_drain_records_what_outlives_the_grace_and_refuses_new_work(svc: Services) -> None:
    await svc.servers.create("fakegame", "slow", {"world": "S"}, actor="test")
    holding, release = asyncio.Event(), asyncio.Event()

    async def long_operation() -> None:
        async with svc.servers.operation("slow", "backup", "test"):
            holding.set()
            await release.wait()

    task = asyncio.create_task(long_operation())
    await holding.wait()
    assert await svc.servers.drain(0.2) == ["slow (backup)"]
    audit = await svc.store.audit_log("slow")
    assert (audit[0].actor, audit[0].action, audit[0].ok, audit[0].detail) == (
        "peon:shutdown",
        "backup",
        False,
        "interrupted by shutdown",
    )
    with pytest.raises(ShuttingDown) as e:
        await svc.servers.start("slow", actor="test")
    assert str(e.value) == "PEON is restarting; try again in a minute."
    release.set()
    await task
