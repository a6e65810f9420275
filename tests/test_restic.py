"""Backups in restic repositories (bot/restic.py, bot/repositories.py) against the real engine
with the fake game and real repositories on loopback: a local directory, SFTP to Debian's
openssh-server started here with a throwaway key, and S3 on moto's standalone server."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot import volumes as volume_io
from bot.app import Services, open_services
from bot.errors import BackupError
from bot.models import BackupVolume
from bot.repositories import OFFSITE_EVENT, open_repository
from bot.settings import BackupSettings, RepositorySettings, Settings
from tests.conftest import (
    OPERATOR,
    PLAYER,
    ROOT,
    config_file,
    make_settings,
    peon,
    services_for,
)
from tests.discord_emulator import DiscordEmulator
from tests.test_backups import KILLED, MALICIOUS, member, read_file, tar_bytes
from tests.test_discord_e2e import bot_settings, channel, finished, running_bot, slash, until

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic not installed")

PASSWORD_ENV = "PEON_RST_TEST_PASSWORD"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "correct horse battery staple")
    monkeypatch.setenv("PEON_RST_S3_KEY", "testing")
    monkeypatch.setenv("PEON_RST_S3_SECRET", "testing-secret")


def local(path: Path, name: str = "local", **kw: object) -> RepositorySettings:
    return RepositorySettings(name=name, location=str(path), password_env=PASSWORD_ENV, **kw)  # type: ignore[arg-type]


@pytest.fixture
def sftp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Debian's sshd on a loopback port, a throwaway host key and client key; its sftp
    subsystem serves the repository. Yields (port, client key)."""
    if os.geteuid() != 0:
        pytest.skip("sshd needs root here")
    d = tmp_path / "sshd"
    d.mkdir()
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                       check=True)  # fmt: skip
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"PidFile {d / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port)
        yield port, d / "client"
    finally:
        proc.terminate()
        proc.wait(10)


def sftp_repo(
    port: int, key: Path, path: Path, name: str = "sftp", **kw: object
) -> RepositorySettings:
    ssh = (
        f"ssh -i {key} -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o BatchMode=yes -o LogLevel=ERROR root@127.0.0.1 -s sftp"
    )
    return RepositorySettings(name=name, location=f"sftp:root@127.0.0.1:{path}",
                              password_env=PASSWORD_ENV, options=[f"sftp.command={ssh}"], **kw)  # type: ignore[arg-type]  # fmt: skip


def start_moto(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port)
    return proc


@pytest.fixture
def s3() -> Iterator[int]:
    """moto's standalone S3 on a loopback port; yields the port."""
    port = free_port()
    proc = start_moto(port)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def s3_repo(port: int, name: str = "s3", **kw: object) -> RepositorySettings:
    return RepositorySettings(
        name=name, location=f"s3:http://127.0.0.1:{port}/peon-rst/repo", password_env=PASSWORD_ENV,
        env={"AWS_ACCESS_KEY_ID": "PEON_RST_S3_KEY", "AWS_SECRET_ACCESS_KEY": "PEON_RST_S3_SECRET"},
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
async def game(fakegame: str) -> AsyncIterator[None]:
    yield None


async def running(svc: Services, name: str) -> None:
    await svc.servers.create("fakegame", name, {"world": "Midgard"}, actor="test")
    await svc.servers.start(name, actor="test")


async def sh(svc: Services, name: str, command: str) -> str:
    info = await svc.servers.container_of(await svc.store.get_server(name))
    assert info is not None
    code, out = await svc.driver.exec(info.id, ["sh", "-c", command], timeout=120)
    assert code == 0, out
    return out


def settings_with(
    tmp_path: Path, repository: RepositorySettings | None, *offsite: RepositorySettings
) -> Settings:
    return make_settings(
        tmp_path, backups=BackupSettings(repository=repository, offsite=list(offsite))
    )


async def round_trip(svc: Services, name: str, source: str | None = None) -> None:
    """Backup, change a little, backup, restore the first, restore the second: each restore
    gives back exactly the files of its backup (read from `source` when given)."""
    await running(svc, name)
    await sh(svc, name, "head -c 32000000 /dev/urandom > /data/big && echo one > /data/note")
    first = await svc.backups.create(name, actor="test")
    await sh(svc, name, "echo two > /data/note && head -c 100000 /dev/urandom >> /data/big")
    second = await svc.backups.create(name, actor="test")
    assert first.stored and second.stored and second.added is not None
    # The second stored only what changed (the note and the appended tail; chunks of the
    # 4 MB file before the change are shared).
    assert second.added < (first.added or 0) / 2, (first.added, second.added)
    big2 = await sh(svc, name, "md5sum /data/big")
    await sh(svc, name, "echo three > /data/note")
    if source is not None:  # read from the offsite copy: the others lose theirs
        for b in (first, second):
            b = await svc.store.get_backup(b.id)
            await svc.backups.repos.forget(b, [n for n in b.stored if n != source])
    await svc.backups.restore(name, first.id, actor="test")
    assert (await read_file(svc, name, "/data/note")).strip() == "one"
    await svc.backups.restore(name, second.id, actor="test")
    assert (await read_file(svc, name, "/data/note")).strip() == "two"
    assert await sh(svc, name, "md5sum /data/big") == big2
    assert await svc.servers.is_running(name)


@pytest.mark.docker
@pytest.mark.parametrize("via", ["directory", "engine"])
async def test_round_trip_through_a_local_repository(
    tmp_path: Path, game: None, via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if via == "engine":  # as for a remote engine, or a volume directory PEON may not read
        locate = volume_io.locate

        async def through_engine(*args: object) -> volume_io.Source:
            return (await locate(*args)).engine("the test asked for the engine")  # type: ignore[arg-type]

        monkeypatch.setattr(volume_io, "locate", through_engine)
    async with services_for(settings_with(tmp_path, local(tmp_path / "repo"))) as svc:
        await round_trip(svc, "rst-local")
        files = {v.file for b in await svc.backups.list("rst-local") for v in b.volumes}
        assert (
            all(f.startswith("/") for f in files) if via == "directory" else files == {"world.tar"}
        )
        listed = await svc.backups.list("rst-local")
        assert all(b.where == "local" for b in listed)
        repo = svc.backups.repos.repo("local")
        ids = {s for b in listed for s in b.stored["local"].values()}
        assert {s.short_id for s in await repo.snapshots()} == ids  # no stray snapshot


@pytest.mark.docker
async def test_round_trip_through_sftp(tmp_path: Path, game: None, sftp: tuple[int, Path]) -> None:
    port, key = sftp
    repo = sftp_repo(port, key, tmp_path / "remote" / "repo")
    async with services_for(settings_with(tmp_path, repo)) as svc:
        await round_trip(svc, "rst-sftp")
    assert (tmp_path / "remote" / "repo" / "config").exists()


@pytest.mark.docker
async def test_round_trip_through_s3(tmp_path: Path, game: None, s3: int) -> None:
    async with services_for(settings_with(tmp_path, s3_repo(s3))) as svc:
        await round_trip(svc, "rst-s3")


@pytest.mark.docker
async def test_offsite_copies_to_sftp_and_s3_restore_from_either(
    tmp_path: Path, game: None, sftp: tuple[int, Path], s3: int
) -> None:
    port, key = sftp
    settings = settings_with(
        tmp_path, local(tmp_path / "repo"), sftp_repo(port, key, tmp_path / "remote" / "repo"),
        s3_repo(s3, keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0),
    )  # fmt: skip
    async with services_for(settings) as svc:
        await round_trip(svc, "rst-off", source="sftp")
        # The safety backups of the restores are copied by the retry (the bot's loop).
        await svc.backups.repos.retry_offsite()
        listed = await svc.backups.list("rst-off")
        # s3 keeps one backup (its own retention); sftp keeps them all, like local.
        assert sum("s3" in b.stored for b in listed) == 1
        assert all("sftp" in b.stored for b in listed)
        newest = listed[0]
        await svc.backups.repos.forget(newest, [n for n in newest.stored if n != "s3"])
        await sh(svc, "rst-off", "echo four > /data/note")
        await svc.backups.restore("rst-off", newest.id, actor="test")
        assert (await read_file(svc, "rst-off", "/data/note")).strip() != "four"
        checks = await svc.backups.repos.check()
        assert [(c.repository, c.ok) for c in checks] == [
            ("local", True),
            ("sftp", True),
            ("s3", True),
        ], checks
    # The CLI shows where each backup is and what it added; `peon backup check` passes.
    cfg = config_file(settings, tmp_path / "peon.yaml")
    out = peon(cfg, "backup", "list", "rst-off")
    assert out.returncode == 0 and "STORED IN" in out.stdout and "sftp" in out.stdout, out
    out = peon(cfg, "backup", "check")
    assert out.returncode == 0 and out.stdout.count(": ok:") == 3, out
    assert "correct horse" not in out.stdout + out.stderr


@pytest.mark.docker
async def test_unreachable_offsite_is_announced_and_retried(tmp_path: Path, game: None) -> None:
    port = free_port()  # nothing listens there yet
    settings = settings_with(tmp_path, local(tmp_path / "repo"), s3_repo(port))
    async with services_for(settings) as svc:
        await running(svc, "rst-down")
        b = await svc.backups.create("rst-down", actor="test")
        assert b.where == "local"  # the backup is made; the upload failed
        events = [e for e in await svc.store.latest_events("rst-down") if e.kind == OFFSITE_EVENT]
        assert len(events) == 1 and not events[0].ok
        assert "cannot be reached" in events[0].detail and "\n" not in events[0].detail
        assert "testing-secret" not in events[0].detail
        await svc.backups.create("rst-down", actor="test")  # announced once per backup
        moto = start_moto(port)
        try:
            await svc.backups.repos.retry_offsite()
        finally:
            moto.terminate()
            moto.wait(10)
        assert all("s3" in x.stored for x in await svc.backups.list("rst-down"))
        kinds = [(e.kind, e.ok) for e in await svc.store.latest_events("rst-down")]
        assert kinds.count((OFFSITE_EVENT, True)) == 2 and kinds.count((OFFSITE_EVENT, False)) == 2


@pytest.mark.docker
async def test_unreachable_primary_refuses_in_one_sentence_and_keeps_everything(
    tmp_path: Path, game: None
) -> None:
    repo = s3_repo(free_port(), name="local")
    async with services_for(settings_with(tmp_path, repo)) as svc:
        await running(svc, "rst-unr")
        with pytest.raises(BackupError, match=r"cannot be reached.*nothing was lost") as e:
            await svc.backups.create("rst-unr", actor="test")
        assert str(e.value).count(". ") <= 1 and "testing-secret" not in str(e.value)
        assert await svc.backups.list("rst-unr") == []
        assert await svc.store.list_backups("rst-unr", complete=False) == []
        assert await svc.servers.is_running("rst-unr")


@pytest.mark.docker
async def test_full_repository_refuses_and_loses_nothing(
    tmp_path: Path, game: None, tmpfs: object
) -> None:
    disk = tmpfs("12m")  # type: ignore[operator]
    async with services_for(settings_with(tmp_path, local(disk / "repo"))) as svc:
        await running(svc, "rst-full")
        await sh(svc, "rst-full", "echo small > /data/note")
        kept = await svc.backups.create("rst-full", actor="test")
        await sh(svc, "rst-full", "head -c 30000000 /dev/urandom > /data/big")
        with pytest.raises(BackupError, match=r"is full.*nothing was lost"):
            await svc.backups.create("rst-full", actor="test")
        assert [b.id for b in await svc.backups.list("rst-full")] == [kept.id]
        assert await svc.store.list_backups("rst-full", complete=False) == []
        repo = svc.backups.repos.repo("local")
        assert len(await repo.snapshots()) == 1
        # The earlier backup still restores (the big file did not exist then); the failed
        # backup's partial data is gone after the next prune (restic's own clean-up).
        await sh(svc, "rst-full", "rm /data/big && echo changed > /data/note")
        await svc.backups.restore("rst-full", kept.id, actor="test")
        assert (await read_file(svc, "rst-full", "/data/note")).strip() == "small"


@pytest.mark.docker
async def test_killed_backup_leaves_no_listed_snapshot(tmp_path: Path, game: None) -> None:
    settings = settings_with(tmp_path, local(tmp_path / "repo"))
    async with services_for(settings) as svc:
        await running(svc, "rst-kill")
        await sh(svc, "rst-kill", "head -c 300000000 /dev/urandom > /data/big")
        script = KILLED.replace('"alpha"', '"rst-kill"')
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-c", script, settings.model_dump_json()],
                                env=env, cwd=ROOT)  # fmt: skip
        try:
            data = tmp_path / "repo" / "data"
            for _ in range(600):
                if data.exists() and sum(1 for p in data.rglob("*") if p.is_file()) >= 3:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the backup never started writing")
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)
        await asyncio.sleep(1)  # restic, killed with its parent, is gone
        repo = svc.backups.repos.repo("local")
        assert await repo.snapshots() == []
        assert await svc.backups.list("rst-kill") == []
        await svc.backups.recover()
        assert await svc.store.list_backups("rst-kill", complete=False) == []
        # The repository is usable again (no stale lock in the way).
        b = await svc.backups.create("rst-kill", actor="test")
        assert [s.short_id for s in await repo.snapshots()] == list(b.stored["local"].values())


@pytest.mark.docker
async def test_malicious_snapshots_are_refused_before_the_server_is_touched(
    tmp_path: Path, game: None
) -> None:
    async with services_for(settings_with(tmp_path, local(tmp_path / "repo"))) as svc:
        await running(svc, "rst-evil")
        await sh(svc, "rst-evil", "echo mine > /data/note")
        repo = svc.backups.repos.repo("local")
        for i, (case, members) in enumerate(MALICIOUS.items()):
            data = tar_bytes([member("data", tarfile.DIRTYPE), *members])

            async def feed(sink: object, data: bytes = data) -> None:
                await asyncio.to_thread(sink.write, data)  # type: ignore[attr-defined]

            bid = await svc.store.begin_backup(
                "rst-evil", f"rst-evil/evil-{i}", trigger="manual", actor="t",
                warplan="fakegame", image="x",
            )  # fmt: skip
            got = await repo.backup_stream("world.tar", feed, tags=["evil"], host="rst-evil",
                                           at=datetime.now(UTC))  # fmt: skip
            await svc.store.set_backup_stored(bid, {"local": {"world": got.snapshot}}, got.added)
            vol = BackupVolume("world", "/data", "world.tar", len(data))
            await svc.store.finish_backup(bid, len(data), 0.1, [vol.__dict__])
            with pytest.raises(BackupError, match="the archive was refused"):
                await svc.backups.restore("rst-evil", bid, actor="test")
            assert case
        assert (await read_file(svc, "rst-evil", "/data/note")).strip() == "mine"
        # A link out of the volume in the world itself (read from its directory) is refused
        # at restore like one in an archive.
        await sh(svc, "rst-evil", "ln -s /etc/shadow /data/evil")
        linked = await svc.backups.create("rst-evil", actor="test")
        with pytest.raises(BackupError, match="links outside the volume"):
            await svc.backups.restore("rst-evil", linked.id, actor="test")
        assert await svc.servers.is_running("rst-evil")
        assert all(b.trigger != "before-restore" for b in await svc.backups.list("rst-evil"))


@pytest.mark.docker
async def test_old_tar_zst_backups_stay_listed_and_restore(tmp_path: Path, game: None) -> None:
    plain = make_settings(tmp_path)
    async with services_for(plain) as svc:
        await running(svc, "rst-old")
        await sh(svc, "rst-old", "echo old > /data/note")
        old = await svc.backups.create("rst-old", actor="test")
        assert old.where == "files" and not old.stored
        # The same PEON with a repository configured (as after an upgrade): the server and
        # its backup are still there; new backups go to the repository.
        upgraded = plain.model_copy(
            update={"backups": BackupSettings(repository=local(tmp_path / "repo"))}
        )
        async with open_services(upgraded) as svc2:
            new = await svc2.backups.create("rst-old", actor="test")
            assert new.where == "local"
            listed = await svc2.backups.list("rst-old")
            assert {b.id: b.where for b in listed} == {old.id: "files", new.id: "local"}
            await sh(svc2, "rst-old", "echo newer > /data/note")
            await svc2.backups.restore("rst-old", old.id, actor="test")
            assert (await read_file(svc2, "rst-old", "/data/note")).strip() == "old"
            await svc2.backups.restore("rst-old", new.id, actor="test")
            assert (await read_file(svc2, "rst-old", "/data/note")).strip() == "old"


def test_password_never_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    repo = open_repository(local(tmp_path / "repo"), None)
    argv = repo._argv(["snapshots"])
    assert "correct horse battery staple" not in " ".join(argv)
    assert repo.env()["RESTIC_PASSWORD"] == "correct horse battery staple"
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(BackupError, match=f"{PASSWORD_ENV}; it is not set"):
        open_repository(local(tmp_path / "repo"), None)


@pytest.mark.docker
async def test_from_discord_backup_list_and_a_failed_upload_announced(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    base = bot_settings(tmp_path, emu)
    backups = BackupSettings(repository=local(tmp_path / "repo"), offsite=[s3_repo(free_port())])
    async with running_bot(base.model_copy(update={"backups": backups}), emu) as bot:
        await running(bot.services, "rst-dc")
        i = await slash(emu, OPERATOR, "create", command="backup", server="rst-dc")
        text = await finished(emu, i, "Backed up")
        assert "backup #" in text
        i = await slash(emu, PLAYER, "list", command="backup", server="rst-dc")
        listed = await finished(emu, i, "local")
        assert "MiB)" in listed and "manual" in listed  # size added, where stored
        # The upload to the unreachable offsite repository is announced in the channel.
        await until(emu, lambda: any("could not be copied to s3" in m.text()
                                     for m in channel(emu, "peon")))  # fmt: skip
        notice = next(m.text() for m in channel(emu, "peon") if "copied to s3" in m.text())
        assert "cannot be reached" in notice and "testing-secret" not in notice


@pytest.mark.docker
async def test_restore_reads_each_snapshot_once_and_leaves_no_spool(
    tmp_path: Path, game: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verify pass spools the tar it reads; the write-back reads that spool, so each
    volume's snapshot is dumped once (a spy around the real `restic dump` counts them), and
    the spool is gone afterwards."""
    from bot.restic import Restic

    dumped: list[str] = []
    real_dump = Restic.dump

    async def counting(self: Restic, snapshot: str, filename: str, consume: object) -> None:
        dumped.append(snapshot)
        await real_dump(self, snapshot, filename, consume)  # type: ignore[arg-type]

    monkeypatch.setattr(Restic, "dump", counting)
    async with services_for(settings_with(tmp_path, local(tmp_path / "repo"))) as svc:
        await running(svc, "rsr-once")
        await sh(
            svc, "rsr-once", "head -c 8000000 /dev/urandom > /data/big && echo one > /data/note"
        )
        big = await sh(svc, "rsr-once", "md5sum /data/big")
        b = await svc.backups.create("rsr-once", actor="test")
        await sh(svc, "rsr-once", "echo two > /data/note && rm /data/big")
        dumped.clear()
        await svc.backups.restore("rsr-once", b.id, actor="test")
        assert sorted(dumped) == sorted(b.stored["local"].values())  # once per volume
        assert (await read_file(svc, "rsr-once", "/data/note")).strip() == "one"
        assert await sh(svc, "rsr-once", "md5sum /data/big") == big
        assert await svc.servers.is_running("rsr-once")
        left = [p for p in svc.settings.backup_dir.rglob("*") if "restore-spool" in p.name]
        assert left == []


@pytest.mark.docker
async def test_restore_without_room_to_spool_refuses_before_the_server_is_touched(
    tmp_path: Path, game: None, tmpfs: object
) -> None:
    disk = tmpfs("8m")  # type: ignore[operator]
    settings = make_settings(
        tmp_path,
        backups=BackupSettings(repository=local(tmp_path / "repo"), dir=disk, min_free_mb=0),
    )
    async with services_for(settings) as svc:
        await running(svc, "rsr-room")
        await sh(
            svc, "rsr-room", "head -c 20000000 /dev/urandom > /data/big && echo one > /data/note"
        )
        b = await svc.backups.create("rsr-room", actor="test")
        await sh(svc, "rsr-room", "echo two > /data/note")
        with pytest.raises(BackupError, match=r"^Not enough disk space to restore backup #") as e:
            await svc.backups.restore("rsr-room", b.id, actor="test")
        assert str(e.value).count(". ") == 0
        assert (await read_file(svc, "rsr-room", "/data/note")).strip() == "two"
        assert await svc.servers.is_running("rsr-room")
        assert [x.id for x in await svc.backups.list("rsr-room")] == [b.id]  # no safety backup
        assert list(disk.rglob("*restore-spool*")) == []
