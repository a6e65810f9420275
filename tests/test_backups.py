"""Backups against the real engine with the fake game: consistency through the save command,
restore round trip, retention, refused archives, corruption, and a backup killed half-way."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import blake3
import pytest
import zstandard

from bot.app import Services
from bot.backups import Retention, _ArchiveFile, check_members, to_prune
from bot.errors import BackupError
from bot.models import Backup, BackupVolume
from bot.settings import BackupSettings
from tests.conftest import ROOT, fakegame_variant, make_settings, services_for

T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)


def backup(i: int, at: datetime, locked: bool = False) -> Backup:
    return Backup(
        i, "alpha", f"alpha/{i}", at, True, 1, 0.1, "manual", "t", locked, "fg", "img", ()
    )


def test_retention_keeps_last_and_generations_never_locked() -> None:
    # One backup every 6 hours for 40 days, newest first; #1 (the oldest) is locked.
    backups = [backup(i, T0 - timedelta(hours=6 * (160 - i)), locked=i == 1) for i in range(1, 161)]
    pruned = {b.id for b in to_prune(backups, Retention(last=3, daily=7, weekly=4, monthly=2))}
    kept = [b for b in backups if b.id not in pruned]
    assert 1 not in pruned  # locked
    newest = sorted(backups, key=lambda b: b.created_at)[-3:]
    assert all(b.id not in pruned for b in newest)
    days = {b.created_at.date() for b in kept if not b.locked}
    assert len(days) >= 7
    # 3 last + 7 daily (overlapping the last ones' day) + 4 weekly + 2 monthly, at most.
    assert len(kept) <= 1 + 3 + 7 + 4 + 2
    assert to_prune(backups[:2], Retention(last=5)) == []


def tar_bytes(members: list[tarfile.TarInfo], payload: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            if m.isfile():
                m.size = len(payload)
                tar.addfile(m, io.BytesIO(payload))
            else:
                tar.addfile(m)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = kind
    m.linkname = link
    return m


MALICIOUS = {
    "absolute path": [member("/etc/passwd")],
    "dot-dot": [member("data/../../escape")],
    "other top": [member("elsewhere/file")],
    "symlink out": [member("data/link", tarfile.SYMTYPE, "../../etc")],
    "absolute symlink": [member("data/link", tarfile.SYMTYPE, "/etc/shadow")],
    "hardlink out": [member("data/hard", tarfile.LNKTYPE, "etc/passwd")],
    "device": [member("data/dev", tarfile.CHRTYPE)],
    "fifo": [member("data/pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_unsafe_members_are_refused(case: str) -> None:
    data = tar_bytes([member("data", tarfile.DIRTYPE), *MALICIOUS[case]])
    with pytest.raises(BackupError, match="the archive was refused") as e:
        check_members(io.BytesIO(data), "data")
    assert "\n" not in str(e.value)


def test_safe_members_pass() -> None:
    data = tar_bytes(
        [
            member("data", tarfile.DIRTYPE),
            member("data/world.sav"),
            member("data/sub", tarfile.DIRTYPE),
            member("data/sub/link", tarfile.SYMTYPE, "../world.sav"),
            member("data/hard", tarfile.LNKTYPE, "data/world.sav"),
        ]
    )
    assert check_members(io.BytesIO(data), "data") == 5


def test_archive_file_hashes_what_it_writes(tmp_path: Path) -> None:
    blocks = [os.urandom(300_000) for _ in range(40)]
    sink = _ArchiveFile(tmp_path / "a.tar.zst")
    for b in blocks:
        sink.write(b)
    size, digest = sink.close()
    data = (tmp_path / "a.tar.zst").read_bytes()
    assert size == len(data) == sum(map(len, blocks))
    assert digest == blake3.blake3(data).hexdigest()


def test_archive_file_reports_a_full_disk_without_hanging() -> None:
    """The writer thread fails (ENOSPC); the compressing side hears of it instead of
    blocking on a full queue, and close() raises too."""
    sink = _ArchiveFile(Path("/dev/full"))
    with pytest.raises(OSError):
        for _ in range(200):  # far more than the queue holds
            sink.write(b"x" * (1 << 20))
        sink.close()
    sink.abort()


# --- against the engine ---------------------------------------------------------------------


async def running_game(svc: Services, name: str = "alpha") -> None:
    await svc.servers.create("fakegame", name, {"world": "Midgard"}, actor="test")
    await svc.servers.start(name, actor="test")


async def read_file(svc: Services, name: str, path: str) -> str:
    record = await svc.store.get_server(name)
    info = await svc.servers.container_of(record)
    assert info is not None
    code, out = await svc.driver.exec(info.id, ["cat", path])
    assert code == 0, out
    return out


@pytest.mark.docker
async def test_backup_of_a_running_server_then_restore_round_trip(services: Services) -> None:
    svc = services
    await running_game(svc)
    b = await svc.backups.create("alpha", actor="discord:42")
    # Consistency: the plan's save command ran (its confirmation line is in the log) first.
    logs = await svc.servers.logs("alpha", 50)
    assert any("World saved (1)" in line for line in logs), logs
    assert b.complete and b.trigger == "manual" and b.warplan == "fakegame" and b.size > 0
    (vol,) = b.volumes
    path = svc.settings.backup_dir / b.dir / vol.file
    assert blake3.blake3(path.read_bytes()).hexdigest() == vol.blake3 and not vol.sha256
    with (
        zstandard.ZstdDecompressor().stream_reader(path.open("rb")) as r,
        tarfile.open(fileobj=r, mode="r|") as tar,
    ):
        names = tar.getnames()
    assert "data/world.sav" in names and "data/counter" in names
    saved = await read_file(svc, "alpha", "/data/world.sav")
    assert "saves=1" in saved
    assert await svc.servers.is_running("alpha")  # back in its previous state

    # Change the world, then restore: the files are those of the backup again.
    await svc.servers.console("alpha", "save", actor="test")
    await asyncio.sleep(1)
    assert "saves=2" in await read_file(svc, "alpha", "/data/world.sav")
    safety = await svc.backups.restore("alpha", b.id, actor="discord:42")
    assert safety is not None and safety.trigger == "before-restore"
    assert await svc.servers.is_running("alpha")  # it was running, so it runs again
    # The stop before the restore saved once more, into the data that was then replaced.
    assert "saves=1" in await read_file(svc, "alpha", "/data/world.sav")
    listed = await svc.backups.list("alpha")
    assert [x.id for x in listed] == [safety.id, b.id]

    # A backup made before BLAKE3 (its row names a SHA-256) is verified and restored too.
    legacy = [
        {
            **v.__dict__,
            "blake3": "",
            "sha256": hashlib.sha256(
                (svc.settings.backup_dir / b.dir / v.file).read_bytes()
            ).hexdigest(),
        }
        for v in b.volumes
    ]
    await svc.store.finish_backup(b.id, b.size, b.seconds, legacy)
    (old,) = (await svc.store.get_backup(b.id)).volumes
    assert old.sha256 and not old.blake3
    await svc.servers.console("alpha", "save", actor="test")
    await asyncio.sleep(1)
    await svc.backups.restore("alpha", b.id, actor="test")
    assert "saves=1" in await read_file(svc, "alpha", "/data/world.sav")


@pytest.mark.docker
async def test_refused_and_corrupt_archives_leave_the_data_untouched(services: Services) -> None:
    svc = services
    await running_game(svc)
    good = await svc.backups.create("alpha", actor="test")
    before = await read_file(svc, "alpha", "/data/world.sav")
    for case, members in MALICIOUS.items():
        data = zstandard.ZstdCompressor().compress(
            tar_bytes([member("data", tarfile.DIRTYPE), *members])
        )
        rel = f"alpha/evil-{case.replace(' ', '-')}"
        (svc.settings.backup_dir / rel).mkdir(parents=True)
        (svc.settings.backup_dir / rel / "world.tar.zst").write_bytes(data)
        bid = await svc.store.begin_backup(
            "alpha", rel, trigger="manual", actor="t", warplan="fakegame", image="x"
        )
        vol = BackupVolume("world", "/data", "world.tar.zst", len(data),
                           hashlib.sha256(data).hexdigest())  # fmt: skip
        await svc.store.finish_backup(bid, len(data), 0.1, [vol.__dict__])
        with pytest.raises(BackupError, match="the archive was refused"):
            await svc.backups.restore("alpha", bid, actor="test")
    # Corrupt: one flipped byte in a real backup.
    path = svc.settings.backup_dir / good.dir / good.volumes[0].file
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(BackupError, match="corrupt"):
        await svc.backups.restore("alpha", good.id, actor="test")
    assert await read_file(svc, "alpha", "/data/world.sav") == before
    assert await svc.servers.is_running("alpha")
    # No safety backups were taken for refused restores: nothing was touched.
    assert all(b.trigger != "before-restore" for b in await svc.backups.list("alpha"))


@pytest.mark.docker
async def test_pruning_keeps_locked_and_update_backs_up_first(services: Services) -> None:
    svc = services
    await running_game(svc)
    svc.backups.policy = Retention(last=2, daily=0, weekly=0, monthly=0)
    first = await svc.backups.create("alpha", actor="test")
    await svc.backups.set_locked(first.id, True, "test")
    for _ in range(3):
        await svc.backups.create("alpha", actor="test")
    listed = await svc.backups.list("alpha")
    assert len(listed) == 3 and first.id in {b.id for b in listed}
    with pytest.raises(BackupError, match="is locked"):
        await svc.backups.delete(first.id, "test")
    dirs = sorted(p.name for p in (svc.settings.backup_dir / "alpha").iterdir())
    assert len(dirs) == 3  # pruned backups' files are gone too
    await svc.servers.update("alpha", actor="test", pull=False)
    triggers = [b.trigger for b in await svc.backups.list("alpha")]
    assert "before-update" in triggers


KILLED = textwrap.dedent(
    """
    import asyncio, sys
    from bot.app import open_services
    from bot.settings import Settings

    async def main():
        settings = Settings.model_validate_json(sys.argv[1])
        async with open_services(settings) as svc:
            await svc.backups.create("alpha", actor="test")

    asyncio.run(main())
    """
)


@pytest.mark.docker
async def test_backup_killed_half_way_leaves_nothing_valid_looking(services: Services) -> None:
    svc = services
    await running_game(svc)
    record = await svc.store.get_server("alpha")
    info = await svc.servers.container_of(record)
    assert info is not None
    code, out = await svc.driver.exec(
        info.id, ["sh", "-c", "head -c 300000000 /dev/urandom > /data/big"], timeout=120
    )
    assert code == 0, out
    data = svc.settings.model_dump_json()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, data], env=env, cwd=ROOT)
    try:
        partial = svc.settings.backup_dir / "alpha"
        for _ in range(600):
            found = list(partial.glob("*.partial/*.tar.zst")) if partial.exists() else []
            if found and found[0].stat().st_size > 0:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the backup never started writing")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert await svc.backups.list("alpha") == []  # nothing listed as a backup
    leftovers = list((svc.settings.backup_dir / "alpha").iterdir())
    assert leftovers and all(p.name.endswith(".partial") for p in leftovers)
    removed = await svc.backups.recover()
    assert removed and not list((svc.settings.backup_dir / "alpha").iterdir())
    assert await svc.store.list_backups("alpha", complete=False) == []


@pytest.mark.docker
async def test_backup_refused_when_the_disk_lacks_room(tmp_path: Path, fakegame: str) -> None:
    from bot.app import open_services
    from bot.settings import BackupSettings
    from tests.conftest import cleanup_instance, make_settings

    settings = make_settings(tmp_path, backups=BackupSettings(min_free_mb=2**40))
    try:
        async with open_services(settings) as svc:
            await running_game(svc)
            with pytest.raises(
                BackupError, match=r"^Not enough disk space for a backup of alpha: "
            ):
                await svc.backups.create("alpha", actor="test")
            assert await svc.backups.list("alpha") == []
            assert not any((settings.backup_dir / "alpha").glob("*"))
            assert await svc.servers.is_running("alpha")
    finally:
        cleanup_instance(settings.instance_id)


@pytest.mark.docker
async def test_a_server_stopped_for_its_backup_is_started_again_when_that_backup_fails(
    tmp_path: Path, fakegame: str, tmpfs: Callable[[str], Path]
) -> None:
    # A plan that saves by stopping: update, restore and purge stop the server before their
    # backup. On a backup disk too small for that backup, each fails and leaves it running.
    settings = make_settings(
        tmp_path,
        warplans_dir=fakegame_variant(tmp_path, save={"mode": "stop"}),
        backups=BackupSettings(dir=tmpfs("2m"), min_free_mb=0),
    )
    async with services_for(settings) as svc:
        await running_game(svc)
        first = await svc.backups.create("alpha", actor="test")
        record = await svc.store.get_server("alpha")
        info = await svc.servers.container_of(record)
        assert info is not None
        # 3 MiB of random bytes: they cannot compress into the 2 MiB disk.
        code, out = await svc.driver.exec(
            info.id, ["sh", "-c", "head -c 3145728 /dev/urandom > /data/big && echo kept"]
        )
        assert code == 0, out
        for operation in (
            lambda: svc.servers.update("alpha", actor="test"),
            lambda: svc.backups.restore("alpha", first.id, actor="test"),
            lambda: svc.servers.delete("alpha", actor="test", purge=True),
        ):
            with pytest.raises(BackupError, match="Not enough disk space"):
                await operation()
            assert await svc.servers.is_running("alpha")
            assert "world=Midgard" in await read_file(svc, "alpha", "/data/world.sav")
            code, _ = await svc.driver.exec(info.id, ["test", "-s", "/data/big"])
            assert code == 0  # the same container, with the data it had
