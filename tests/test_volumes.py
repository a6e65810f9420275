"""A volume's tar stream read directly from its directory against the engine's own, on the
real engine: the same members (names, modes, owners, times, links, devices), a backup made
either way, the fallback when PEON may not read the directory, and a restore of a backup
that was read directly."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from bot import labels
from bot.app import Services
from bot.volumes import (
    NotDirect,
    _ns,
    _why_not_here,
    locate,
    stream,
    unpack,
    write_back,
    write_tar,
)
from tests.conftest import ROOT, make_settings, services_for

NOBODY = 65534

# Everything the engine's archive distinguishes: owners, modes (setuid, sticky), a hard link,
# symlinks in and up, a FIFO, a device, a socket (left out), a long and a non-ASCII name,
# an old mtime, a file with a capability (kept as a PAX record), an empty directory.
POPULATE = textwrap.dedent(
    """
    set -e
    cd /data
    mkdir -p sub/deep empty
    echo owned > owned && chown 1000:1001 owned && chmod 640 owned
    ln owned hard
    ln -s owned sym && ln -s ../owned sub/up
    chmod 4755 sub && chmod 1777 empty
    touch -d '2001-02-03 04:05:06' sub/deep
    echo x > 'ümlaut ñ'
    long=$(printf 'x%.0s' $(seq 1 120))/$(printf 'y%.0s' $(seq 1 60))
    mkdir -p "$long" && echo long > "$long/f"
    head -c 3000000 /dev/urandom > sub/deep/big
    mkfifo fifo
    mknod null c 1 3
    """
)


def members(data: bytes) -> list[tuple[object, ...]]:
    """What a restore makes of each member (the engine's mode field also carries file-type
    bits, which tar's type flag says again: the permission bits are compared)."""
    rows = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isfile() else None
            body = hashlib.sha256(f.read()).hexdigest() if f else ""
            cap = m.pax_headers.get("SCHILY.xattr.security.capability", "")
            rows.append((m.name, m.type, m.mode & 0o7777, m.uid, m.gid, m.mtime, m.linkname,
                         m.size, m.devmajor, m.devminor, cap, body))  # fmt: skip
    return rows


def read_backup(path: Path) -> bytes:
    with zstandard.ZstdDecompressor().stream_reader(path.open("rb")) as r:
        return r.read()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A data directory an unprivileged user may reach (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="dvb-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def engine_tar(svc: Services, cid: str) -> bytes:
    buf = io.BytesIO()
    await svc.driver.read_archive(cid, "/data", buf)
    return buf.getvalue()


@pytest.mark.docker
async def test_direct_reading_gives_the_engines_archive_and_a_fallback_when_unreadable(
    shared_dir: Path, fakegame: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("runs PEON as another user, which needs root")
    settings = make_settings(shared_dir)
    name = "dvb-same"
    async with services_for(settings) as svc:
        await svc.servers.create("fakegame", name, {"world": "Midgard"}, actor="test")
        await svc.servers.start(name, actor="test")
        record = await svc.store.get_server(name)
        info = await svc.servers.container_of(record)
        assert info is not None
        code, out = await svc.driver.exec(info.id, ["sh", "-c", POPULATE], timeout=60)
        assert code == 0, out
        await svc.servers.stop(name, actor="test")  # the data holds still from here on
        volume = labels.volume_name(name, "world")

        # The two streams of the volume, member for member.
        source = await locate(svc.driver, info.id, volume, "/data")
        assert source.direct, source.reason
        direct = io.BytesIO()
        await stream(svc.driver, info.id, source, direct)
        through_engine = await engine_tar(svc, info.id)
        mine, theirs = members(direct.getvalue()), members(through_engine)
        assert mine == theirs
        names = [m[0] for m in mine]
        assert "data/fifo" in names and "data/null" in names and "data/hard" in names
        assert {m[0]: m[6] for m in mine}["data/sub/up"] == "../owned"

        # A backup made by PEON reads directly and says so in its audit.
        made = await svc.backups.create(name, actor="test")
        (entry,) = [e for e in await svc.store.audit_log(name, 5) if e.action == "backup"]
        assert "world read directly" in entry.detail, entry.detail
        direct_file = settings.backup_dir / made.dir / made.volumes[0].file
        assert members(read_backup(direct_file)) == theirs

        # PEON as an unprivileged user in the socket's group (as its image runs): the
        # volume's directory is out of its reach, so the backup goes through the engine.
        docker_gid = os.stat("/var/run/docker.sock").st_gid
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(shared_dir)], check=True)
        config = shared_dir / "peon.yaml"
        config.write_text(settings.model_dump_json())
        child = textwrap.dedent(
            f"""
            import asyncio
            from pathlib import Path
            from bot.app import open_services
            from bot.settings import Settings

            async def main():
                settings = Settings.model_validate_json(Path({str(config)!r}).read_text())
                async with open_services(settings) as svc:
                    b = await svc.backups.create({name!r}, actor="nobody")
                    print(b.id)

            asyncio.run(main())
            """
        )
        run = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={docker_gid}",
             sys.executable, "-c", child],
            env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(shared_dir)},
            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        fallback = await svc.store.get_backup(int(run.stdout.split()[-1]))
        entry = next(e for e in await svc.store.audit_log(name, 5) if e.actor == "nobody")
        assert "world through the engine (PEON may not read" in entry.detail, entry.detail
        engine_file = settings.backup_dir / fallback.dir / fallback.volumes[0].file
        assert members(read_backup(engine_file)) == theirs


@pytest.mark.docker
async def test_a_backup_read_directly_restores_owners_modes_and_links(
    shared_dir: Path, fakegame: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.backups")
    settings = make_settings(shared_dir)
    name = "dvb-restore"
    async with services_for(settings) as svc:
        await svc.servers.create("fakegame", name, {"world": "Midgard"}, actor="test")
        await svc.servers.start(name, actor="test")
        record = await svc.store.get_server(name)
        info = await svc.servers.container_of(record)
        assert info is not None
        # The special files are left out: a restore refuses them (tests/test_backups.py).
        populate = POPULATE.replace("mkfifo fifo", "").replace("mknod null c 1 3", "")
        code, out = await svc.driver.exec(info.id, ["sh", "-c", populate], timeout=60)
        assert code == 0, out
        made = await svc.backups.create(name, actor="test")
        (entry,) = [e for e in await svc.store.audit_log(name, 5) if e.action == "backup"]
        assert "world read directly" in entry.detail, entry.detail
        saved = members(read_backup(settings.backup_dir / made.dir / made.volumes[0].file))

        code, out = await svc.driver.exec(
            info.id, ["sh", "-c", "rm -rf /data/sub /data/owned && echo new > /data/sym"]
        )
        assert code == 0, out
        await svc.backups.restore(name, made.id, actor="test")
        assert await svc.servers.is_running(name)
        # As root on the engine's machine the restore writes into the new volume directly.
        assert f"restore of {name}: volume world written directly" in caplog.text
        await svc.servers.stop(name, actor="test")
        info = await svc.servers.container_of(await svc.store.get_server(name))
        assert info is not None
        restored = {m[0]: m for m in members(await engine_tar(svc, info.id))}
        # The stop after the restore saved the game's own files again; the rest is as saved.
        for m in saved:
            if m[0] in ("data/world.sav", "data/counter", "data"):
                continue
            assert restored[m[0]] == m, m[0]
        assert restored["data/owned"][6] == "data/hard"  # still one file with two names


def test_write_tar_refuses_to_go_on_past_a_file_it_may_not_read(tmp_path: Path) -> None:
    """An unreadable file half-way raises Unreadable (the backup then starts that volume
    again through the engine), as an unprivileged user on a real directory."""
    if os.geteuid() != 0:
        pytest.skip("switches to another user, which needs root")
    tree = Path(tempfile.mkdtemp(prefix="dvb-", dir="/tmp"))
    try:
        tree.chmod(0o755)
        (tree / "a").write_text("readable")
        (tree / "b").write_text("secret")
        (tree / "b").chmod(0o600)
        code = textwrap.dedent(
            f"""
            import io
            from pathlib import Path
            from bot.volumes import Unreadable, write_tar
            try:
                write_tar(Path({str(tree)!r}), "data", io.BytesIO())
            except Unreadable as e:
                print("unreadable", e)
            """
        )
        run = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             sys.executable, "-c", code],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert run.stdout.strip() == f"unreadable {tree / 'b'}", run.stderr
        # As root the same tree is read through, b included.
        data = io.BytesIO()
        write_tar(tree, "data", data)
        assert [m[0] for m in members(data.getvalue())] == ["data", "data/a", "data/b"]
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def test_a_directory_is_taken_for_the_engines_only_when_its_times_match(tmp_path: Path) -> None:
    st = tmp_path.stat()
    whole, frac = divmod(st.st_mtime_ns, 10**9)
    text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"
    assert _ns(text) == st.st_mtime_ns
    assert _why_not_here(tmp_path, text) == ""
    other = datetime.fromtimestamp(whole + 1, UTC).strftime("%Y-%m-%dT%H:%M:%S") + "+00:00"
    assert "is not the engine's" in _why_not_here(tmp_path, other)
    assert "cannot be read here" in _why_not_here(tmp_path / "gone", text)
    assert _ns("2026-12-02T16:16:17.5+01:00") == _ns("2026-12-02T15:16:17.500000000Z")


def tar_of(*members: tuple[str, bytes, str]) -> io.BytesIO:
    """A tar of (name, type, link) members, files holding b"x"."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, link in members:
            m = tarfile.TarInfo(name)
            m.type, m.linkname = kind, link
            m.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            if kind == tarfile.REGTYPE:
                m.size = 1
                tar.addfile(m, io.BytesIO(b"x"))
            else:
                tar.addfile(m)
    buf.seek(0)
    return buf


D, F, S, H = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE

# Archives check_members lets through (every link's text stays inside the volume) that
# could still write outside it if followed: writing back never goes through a link.
THROUGH_LINKS = {
    "a file below a symlink": [("data", D, ""), ("data/l", S, "."), ("data/l/x", F, "")],
    "a symlink's name again": [("data", D, ""), ("data/l", S, "x"), ("data/l", F, "")],
    "a hard link to a symlink's path": [
        ("data", D, ""), ("data/q", S, "."), ("data/h", H, "data/q/x")],
    "a file before its directory": [("data", D, ""), ("data/sub/x", F, "")],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(THROUGH_LINKS))
def test_writing_back_never_goes_through_a_link(tmp_path: Path, case: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("writes owners, which needs root")
    root = tmp_path / "vol" / "_data"
    root.mkdir(parents=True)
    with pytest.raises(NotDirect):
        write_back(tar_of(*THROUGH_LINKS[case]), root, "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol"]
    assert [p.name for p in (tmp_path / "vol").iterdir()] == ["_data"]


def test_a_tree_written_back_reads_as_the_same_archive(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("writes owners, which needs root")
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "owned").write_bytes(os.urandom(3 * (1 << 20) + 7))
    os.chown(src / "owned", 1000, 1001)
    (src / "owned").chmod(0o640)
    os.link(src / "owned", src / "hard")
    (src / "sym").symlink_to("owned")
    (src / "sub" / "up").symlink_to("../owned")
    (src / "sub").chmod(0o4755)
    os.utime(src / "sub" / "deep", (981173106, 981173106))
    first = io.BytesIO()
    write_tar(src, "data", first)
    dst = tmp_path / "dst"
    dst.mkdir()
    first.seek(0)
    assert write_back(first, dst, "data") == 7
    again = io.BytesIO()
    write_tar(dst, "data", again)
    assert members(again.getvalue()) == members(first.getvalue())


@pytest.mark.docker
async def test_an_archive_not_written_directly_is_written_by_the_engine_from_empty(
    shared_dir: Path, fakegame: str
) -> None:
    """An archive that writing back refuses half-way (here a file listed before its
    directory, which the engine's extraction accepts): what was written is removed and the
    engine writes the whole archive into the volume."""
    if os.geteuid() != 0:
        pytest.skip("writes owners, which needs root")
    settings = make_settings(shared_dir)
    name = "dvb-unpack"
    async with services_for(settings) as svc:
        await svc.servers.create("fakegame", name, {"world": "Midgard"}, actor="test")
        info = await svc.servers.container_of(await svc.store.get_server(name))
        assert info is not None  # created, never started: its volume is empty
        volume = labels.volume_name(name, "world")
        source = await locate(svc.driver, info.id, volume, "/data")
        assert source.direct, source.reason
        data = tar_of(("data", D, ""), ("data/a", F, ""), ("data/sub/x", F, "")).getvalue()
        got = await unpack(svc.driver, info.id, source, lambda: io.BytesIO(data))
        assert not got.direct and "before its directory" in got.reason, got
        names = [m[0] for m in members(await engine_tar(svc, info.id))]
        assert names == ["data", "data/a", "data/sub", "data/sub/x"]
