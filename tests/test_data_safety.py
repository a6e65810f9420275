"""Data safety under faults, one regression test per defect of issue 20, against the real
engine, real SQLite files and real `peon` processes killed with SIGKILL:

1. restoring the oldest backup when retention would prune it;
2. a restore killed while it writes the volume: the next operation finishes it;
3. a purge killed during its last copy keeps the data;
4. a dead process's lease blocks nothing: the next operation (CLI or a running bot's
   services) cleans up after it, with no restart;
5. a full backup disk is one sentence, and nothing partial is left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import blake3
import docker
import pytest

from bot.app import Services
from bot.errors import BackupError
from bot.models import ServerState
from bot.settings import BackupSettings, Settings
from tests.conftest import ROOT, config_file, make_settings, peon, services_for

pytestmark = pytest.mark.docker

# Runs one operation in a process of its own, as `peon` would, so it can be killed.
CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from bot.app import open_services
    from bot.settings import Settings

    async def main():
        settings = Settings.model_validate_json(sys.argv[1])
        op, name = sys.argv[2], sys.argv[3]
        async with open_services(settings) as svc:
            if op == "restore":
                await svc.backups.restore(name, int(sys.argv[4]), actor="child")
            elif op == "purge":
                await svc.servers.delete(name, actor="child", purge=True)
            elif op == "update":
                await svc.servers.update(name, actor="child", pull=False)
            else:
                raise SystemExit(f"unknown op {op}")

    asyncio.run(main())
    """
)
BIG = 200_000_000  # bytes of random data: long enough to write that a kill lands inside


@pytest.fixture
async def svc(tmp_path: Path, fakegame: str) -> AsyncIterator[Services]:
    """Long-lived services: what a running bot holds while other processes come and go."""
    settings = make_settings(
        tmp_path,
        backups=BackupSettings(
            keep_last=3, keep_daily=0, keep_weekly=0, keep_monthly=0, min_free_mb=0
        ),
    )
    async with services_for(settings) as s:
        yield s


def db_row(db: Path, sql: str, *args: object) -> tuple[object, ...] | None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute(sql, args).fetchone()
    return tuple(row) if row else None


async def shell(svc: Services, name: str, script: str) -> str:
    record = await svc.store.get_server(name)
    info = await svc.servers.container_of(record)
    assert info is not None and info.running
    code, out = await svc.driver.exec(info.id, ["sh", "-c", script], timeout=180)
    assert code == 0, out
    return out


async def world(svc: Services, name: str) -> str:
    """What identifies the world: the marker and the digest of the big file."""
    return await shell(svc, name, "cat /data/marker; sha256sum /data/big 2>/dev/null || true")


async def kill_child_when(
    settings: Settings, args: list[str], ready: Callable[[], bool], what: str
) -> None:
    """Run CHILD with `args`; SIGKILL it as soon as `ready()` holds (polled every 10 ms)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", CHILD, settings.model_dump_json(), *args]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    try:
        for _ in range(12000):
            if await asyncio.to_thread(ready):
                break
            if proc.poll() is not None:
                pytest.fail(f"the child finished ({proc.returncode}) before {what}")
            await asyncio.sleep(0.01)
        else:
            pytest.fail(f"never saw {what}")
        proc.send_signal(signal.SIGKILL)
    finally:
        await asyncio.to_thread(proc.wait, 30)
    assert proc.returncode == -signal.SIGKILL


def partial_backup_written(settings: Settings, name: str) -> Callable[[], bool]:
    def ready() -> bool:
        found = list((settings.backup_dir / name).glob("*.partial/*.tar.zst"))
        return any(p.stat().st_size > 1 << 20 for p in found)

    return ready


async def backups_intact(svc: Services) -> None:
    """Every listed backup's files match their checksums; nothing partial is left."""
    for b in await svc.backups.list():
        for v in b.volumes:
            data = (svc.settings.backup_dir / b.dir / v.file).read_bytes()
            assert blake3.blake3(data).hexdigest() == v.blake3, f"backup #{b.id}"
    assert not list(svc.settings.backup_dir.glob("*/*.partial"))
    assert await svc.store.list_backups(complete=False) == []


async def started_with_big_world(svc: Services, name: str, marker: str) -> None:
    await svc.servers.create("fakegame", name, {"world": "W"}, actor="test")
    await svc.servers.start(name, actor="test")
    await shell(svc, name, f"head -c {BIG} /dev/urandom > /data/big; echo {marker} > /data/marker")


# --- 1 ------------------------------------------------------------------------------------


async def test_restoring_the_oldest_backup_under_retention_restores_it(svc: Services) -> None:
    await svc.servers.create("fakegame", "alpha", {"world": "W"}, actor="test")
    await svc.servers.start("alpha", actor="test")
    made = []
    for i in range(3):  # keep_last: 3, so the safety backup would push the oldest out
        await shell(svc, "alpha", f"echo v{i} > /data/marker")
        made.append(await svc.backups.create("alpha", actor="test"))
    oldest = made[0]
    safety = await svc.backups.restore("alpha", oldest.id, actor="test")
    assert (await world(svc, "alpha")).strip() == "v0"
    assert await svc.servers.is_running("alpha")
    listed = {b.id for b in await svc.backups.list("alpha")}
    assert oldest.id in listed and safety is not None and safety.id in listed
    await backups_intact(svc)
    # Once the restore is over, retention applies again: the next backup prunes as usual.
    await svc.backups.create("alpha", actor="test")
    assert len(await svc.backups.list("alpha")) == 3


async def test_a_backup_being_restored_cannot_be_deleted(svc: Services) -> None:
    await svc.servers.create("fakegame", "alpha", {"world": "W"}, actor="test")
    await svc.servers.start("alpha", actor="test")
    b = await svc.backups.create("alpha", actor="test")
    async with svc.backups._opened(b):
        with pytest.raises(BackupError, match=r"^Backup #\d+ is being restored; "):
            await svc.backups.delete(b.id, "test")
    await svc.backups.delete(b.id, "test")  # once it is done, it can go


# --- 2 ------------------------------------------------------------------------------------


async def test_restore_killed_while_writing_is_finished_by_the_next_operation(
    svc: Services, dclient: docker.DockerClient
) -> None:
    await started_with_big_world(svc, "alpha", "v1")
    before = await world(svc, "alpha")
    b = await svc.backups.create("alpha", actor="test")
    await shell(svc, "alpha", "rm /data/big; echo v2 > /data/marker")
    old_container = (await svc.store.get_server("alpha")).container_id
    labels = ["io.peon.server=alpha", f"io.peon.instance={svc.settings.instance_id}"]

    def recreated() -> bool:
        # The volume was removed and the container made anew: the world is being written.
        # sparse: no inspect of each one, which races with the removal being watched for
        found = dclient.containers.list(all=True, filters={"label": labels}, sparse=True)
        return bool(found) and found[0].id != old_container

    await kill_child_when(svc.settings, ["restore", "alpha", str(b.id)], recreated, "recreate")
    # No restart, no reconcile: the next operation of this (long-lived) process finishes it.
    await svc.servers.start("alpha", actor="test")
    assert await world(svc, "alpha") == before
    record = await svc.store.get_server("alpha")
    assert record.operation is None and record.interrupted is None and record.restoring is None
    await backups_intact(svc)
    await svc.servers.stop("alpha", actor="test")
    await svc.servers.start("alpha", actor="test")
    assert await world(svc, "alpha") == before


# --- 3 ------------------------------------------------------------------------------------


async def test_purge_killed_during_its_last_copy_keeps_the_data(svc: Services) -> None:
    await started_with_big_world(svc, "alpha", "keep-me")
    before = await world(svc, "alpha")
    await kill_child_when(
        svc.settings, ["purge", "alpha"], partial_backup_written(svc.settings, "alpha"),
        "the last copy being written",
    )  # fmt: skip
    report = await svc.servers.reconcile("peon:startup")  # what a restart did
    assert report.finished_deletes == [] and report.interrupted == ["alpha (purge)"]
    record = await svc.store.get_server("alpha")
    assert record.state != ServerState.DELETING and record.operation is None
    await svc.servers.start("alpha", actor="test")
    assert await world(svc, "alpha") == before
    await backups_intact(svc)
    assert await svc.backups.list("alpha") == []  # the half-written copy is not listed


async def test_purge_past_its_last_copy_is_finished(svc: Services) -> None:
    """The other side: a purge whose last copy completed is finished by the next start."""
    await svc.servers.create("fakegame", "alpha", {"world": "W"}, actor="test")
    await svc.servers.start("alpha", actor="test")
    db = svc.settings.db_path
    await kill_child_when(
        svc.settings, ["purge", "alpha"],
        lambda: db_row(db, "SELECT state FROM servers WHERE name = 'alpha'") == ("deleting",),
        "the purge's point of no return",
    )  # fmt: skip
    report = await svc.servers.reconcile("peon:startup")
    assert report.finished_deletes == ["alpha"]
    assert await svc.store.find_server("alpha") is None
    (last,) = await svc.backups.list("alpha")
    assert last.trigger == "before-purge"
    await backups_intact(svc)


# --- 4 ------------------------------------------------------------------------------------


async def test_a_dead_processs_lease_blocks_nothing(svc: Services, tmp_path: Path) -> None:
    config = config_file(svc.settings, tmp_path / "peon.yaml")
    await started_with_big_world(svc, "alpha", "u1")
    before = await world(svc, "alpha")
    await kill_child_when(
        svc.settings, ["update", "alpha"], partial_backup_written(svc.settings, "alpha"),
        "the update's backup being written",
    )  # fmt: skip
    # The CLI, no reconcile and no restart in between: the list shows the server's real
    # state, not the dead update...
    r = peon(config, "server", "list")
    assert r.returncode == 0, r.stderr
    assert "update" not in r.stdout and " running " in r.stdout, r.stdout
    # ...and a backup is not refused as busy; what the dead update left is cleaned up.
    r = peon(config, "backup", "create", "alpha")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("backup #"), r.stdout
    await backups_intact(svc)
    assert await world(svc, "alpha") == before
    audit = [(e.action, e.detail) for e in await svc.store.audit_log("alpha", 5)]
    assert ("recover", "interrupted update released") in audit

    # A running bot (these services, opened before) is not blocked either.
    await kill_child_when(
        svc.settings, ["update", "alpha"], partial_backup_written(svc.settings, "alpha"),
        "the update's backup being written",
    )  # fmt: skip
    assert (await svc.store.get_server("alpha")).interrupted == "update"
    await svc.backups.create("alpha", actor="discord:42")
    await backups_intact(svc)
    await svc.servers.restart("alpha", actor="test")
    assert await world(svc, "alpha") == before


# --- 5 ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmpfs: Callable[[str], Path]) -> Path:
    """A 32 MiB backup disk that fills up."""
    return tmpfs("32m")


async def test_a_full_backup_disk_is_one_sentence(
    tmp_path: Path, fakegame: str, small_disk: Path
) -> None:
    settings = make_settings(tmp_path, backups=BackupSettings(dir=small_disk, min_free_mb=0))
    config = config_file(settings, tmp_path / "peon.yaml")
    async with services_for(settings) as svc:
        await started_with_big_world(svc, "alpha", "full")
        r = peon(config, "backup", "create", "alpha")
        assert r.returncode == 1
        lines = r.stderr.splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith(
            f"peon: Not enough disk space for a backup of alpha: {small_disk} filled up after "
        ), lines
        assert "Traceback" not in r.stderr and "Errno" not in r.stderr
        assert await svc.backups.list("alpha") == []
        assert not list(small_disk.glob("*/*"))
        await backups_intact(svc)
        assert await svc.servers.is_running("alpha")  # put back as it was (save-on etc.)
        assert (await world(svc, "alpha")).startswith("full")
