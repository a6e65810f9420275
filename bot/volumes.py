"""A volume's files as one tar stream: read straight from the volume's directory on this
machine when that is safe, else through the engine's archive API (`get_archive`).

The engine's stream is the reference: it costs the engine a tar, an HTTP transfer and
docker-py's chunking (about 10 s per GiB measured here, against 3.3 s for `tar | zstd` of the
same directory). Reading directly writes the same archive, member for member (see
`write_tar`), so a backup made either way restores the same way, and anyone holding a tar
stream of a volume (the .tar.zst backups, a restic repository reading stdin) can use either.

Direct reading is chosen only when the engine is on this machine's unix socket, maps no user
ids, keeps the volume as a plain local directory, and that directory is readable here and is
the engine's (its mtime matches the engine's own stat of the mounted path). A file that turns
out unreadable half-way raises `Unreadable`: the caller starts that volume again through the
engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import stat
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from bot.docker_driver import DockerDriver

CHUNK = 1 << 20  # bytes per read from a file: large enough that a write costs little
BLOCK = tarfile.BLOCKSIZE
# The only extended attribute the engine's archive carries (moby pkg/archive
# ReadSecurityXattrToTarHeader): file capabilities, as a PAX record.
CAPABILITY = "security.capability"


class Writable(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


class Unreadable(Exception):
    """A path below the volume's directory cannot be read by PEON (permissions)."""


@dataclass(frozen=True)
class Source:
    """Where one volume's tar stream comes from: its directory (`mountpoint`) or, when that is
    None, the engine; `reason` says why the engine (for the backup's audit and log)."""

    path: str  # the volume's path in the container
    mountpoint: Path | None
    reason: str = ""

    @property
    def direct(self) -> bool:
        return self.mountpoint is not None

    def describe(self, verb: str = "read") -> str:
        if self.mountpoint is not None:
            return f"{verb} directly"
        return f"through the engine ({self.reason})"

    def engine(self, reason: str) -> Source:
        return Source(self.path, None, reason)


async def locate(driver: DockerDriver, cid: str, volume: str, path: str) -> Source:
    """Where to read the volume `volume`, mounted at `path` in container `cid`, from."""
    disk = await driver.volume_on_disk(cid, path, volume)
    if disk.mountpoint is None:
        return Source(path, None, disk.reason)
    mountpoint = Path(disk.mountpoint)
    reason = await asyncio.to_thread(_why_not_here, mountpoint, disk.mtime)
    return Source(path, None if reason else mountpoint, reason)


def _why_not_here(mountpoint: Path, engine_mtime: str) -> str:
    try:
        st = mountpoint.stat()
        os.listdir(mountpoint)
    except PermissionError:
        return f"PEON may not read {mountpoint}"
    except OSError as e:
        return f"{mountpoint} cannot be read here ({e.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return f"{mountpoint} is not a directory here"
    # Nanoseconds: a directory of another machine or engine does not share them by chance.
    if _ns(engine_mtime) != st.st_mtime_ns:
        return f"{mountpoint} here is not the engine's (their times differ)"
    return ""


_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def _ns(text: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time with up to 9 decimals (Go's
    RFC3339Nano, which Python's parser would cut to microseconds)."""
    m = _TIME.match(text)
    if not m:
        return None
    whole = datetime.fromisoformat(m[1] + ("+00:00" if m[3] == "Z" else m[3]))
    return int(whole.timestamp()) * 10**9 + int((m[2] or "").ljust(9, "0"))


async def stream(driver: DockerDriver, cid: str, source: Source, out: Writable) -> int:
    """Write the volume's tar stream into `out` (off the event loop); returns its bytes.
    Raises Unreadable when direct reading meets a file PEON may not read."""
    if source.mountpoint is None:
        return await driver.read_archive(cid, source.path, out)  # type: ignore[arg-type]
    stop = threading.Event()
    try:
        return await asyncio.to_thread(
            write_tar, source.mountpoint, PurePosixPath(source.path).name, out, stop.is_set
        )
    finally:
        stop.set()  # cancelled: the thread stops at its next chunk


def write_tar(
    root: Path, top: str, out: Writable, stopped: Callable[[], bool] = lambda: False
) -> int:
    """Write a tar of the directory `root` into `out` as the engine's `get_archive` of the
    volume's path does (moby pkg/archive TarWithOptions with a rebased name): the top member
    is `top` (root's own mode, owner and time), then every entry depth-first in byte order
    of names; modes with setuid/setgid/sticky, numeric owners, mtimes cut to seconds,
    symlinks as they are, a second name of a file as a hard link to the first, character and
    block devices and FIFOs kept, sockets left out, file capabilities as a PAX record; PAX
    headers for long or non-ASCII names. Owner names are left empty (the engine takes them
    from the container's /etc/passwd; extraction, the engine's included, uses the numbers).
    A file that shrinks while read is padded with zeros and one that grows is cut at the size
    its header gave, as GNU tar does, so the archive is always well-formed.

    Memory: one chunk, the names of one directory per level, and the first name of each
    multiply-linked file."""
    written = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    links: dict[tuple[int, int], str] = {}

    def emit(data: bytes | memoryview) -> None:
        nonlocal written
        out.write(data)
        written += len(data)

    def add(path: bytes, name: str) -> bool:
        """One member; True when it is a directory to descend into."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False  # removed since its directory was listed: the engine skips it too
        except PermissionError as e:
            raise Unreadable(os.fsdecode(path)) from e
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            return False  # tar has no sockets; the engine leaves them out
        info = tarfile.TarInfo(name)
        fd = None
        if stat.S_ISREG(mode):
            try:
                # No following: a file replaced by a link since the listing is not read
                # through it.
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
            except PermissionError as e:
                raise Unreadable(os.fsdecode(path)) from e
            except OSError as e:
                if e.errno == errno.ELOOP:
                    return False
                raise
            st = os.fstat(fd)
        try:
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.uname = info.gname = ""
            info.mtime = st.st_mtime_ns // 10**9
            key = (st.st_dev, st.st_ino)
            if not stat.S_ISDIR(mode) and st.st_nlink > 1 and key in links:
                info.type, info.linkname, info.size = tarfile.LNKTYPE, links[key], 0
            elif stat.S_ISREG(mode):
                info.type, info.size = tarfile.REGTYPE, st.st_size
            elif stat.S_ISDIR(mode):
                info.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.fsdecode(os.readlink(path))
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            elif stat.S_ISFIFO(mode):
                info.type = tarfile.FIFOTYPE
            else:
                return False
            if not stat.S_ISDIR(mode) and st.st_nlink > 1 and key not in links:
                links[key] = name
            try:
                cap = os.getxattr(path, CAPABILITY, follow_symlinks=False)
            except OSError:
                cap = b""  # none, or a filesystem without extended attributes
            if cap:
                info.pax_headers = {
                    f"SCHILY.xattr.{CAPABILITY}": cap.decode("utf-8", "surrogateescape")
                }
            emit(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            if fd is not None and info.type == tarfile.REGTYPE:
                _copy(fd, info.size, view, emit, stopped)
            return info.type == tarfile.DIRTYPE
        finally:
            if fd is not None:
                os.close(fd)

    def listing(path: bytes) -> list[bytes]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []
        except PermissionError as e:
            raise Unreadable(os.fsdecode(path)) from e

    root_b = os.fsencode(root)
    add(root_b, top)
    # Depth-first without recursion (worlds can nest deeper than Python's stack): each
    # level is a directory's sorted names and where its walk stands.
    stack: list[tuple[bytes, str, list[bytes], int]] = [(root_b, top, listing(root_b), 0)]
    while stack:
        path, name, names, i = stack[-1]
        if i == len(names):
            stack.pop()
            continue
        stack[-1] = (path, name, names, i + 1)
        if stopped():
            raise asyncio.CancelledError
        child = os.path.join(path, names[i])
        child_name = f"{name}/{os.fsdecode(names[i])}"
        if add(child, child_name):
            stack.append((child, child_name, listing(child), 0))
    emit(bytes(2 * BLOCK))  # the end-of-archive marker: two empty blocks
    return written


def _copy(
    fd: int,
    size: int,
    view: memoryview,
    emit: Callable[[bytes | memoryview], None],
    stopped: Callable[[], bool],
) -> None:
    """Exactly `size` bytes of the file, then zeros to the end of its last block."""
    left = size
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    while left > 0:
        if stopped():
            raise asyncio.CancelledError
        n = os.readv(fd, [view[: min(left, len(view))]])
        if n == 0:  # the file shrank while read
            emit(bytes(min(left, len(view))))
            left -= min(left, len(view))
            continue
        emit(view[:n])
        left -= n
    if size % BLOCK:
        emit(bytes(BLOCK - size % BLOCK))


# --- writing a volume back ------------------------------------------------------------------


class NotDirect(Exception):
    """An archive this side does not write itself (an unusual layout); str() says what, and
    the caller lets the engine write it instead."""


def can_write(mountpoint: Path) -> str:
    """Why PEON cannot write a restore straight into this (new) volume directory; "" if
    it can: it must be root (owners are restored as numbers) and find the directory empty
    (the engine fills a new volume with the image's files at its path; over those, the
    engine's extraction is the reference)."""
    if os.geteuid() != 0:
        return "PEON is not root, so it cannot give files their owners"
    try:
        if os.listdir(mountpoint):
            return "the new volume already holds the image's files"
    except OSError as e:
        return f"{mountpoint} cannot be read here ({e.strerror})"
    return ""


async def unpack(
    driver: DockerDriver, cid: str, source: Source, open_reader: Callable[[], BinaryIO]
) -> Source:
    """Write a verified tar of the volume (from `open_reader()`, a new reader at the start of
    the archive) into the volume: into its directory when `source` is direct and that
    directory is fit for it, else through the engine (put_archive into the path's parent).
    Returns how it was written."""
    if source.mountpoint is not None:
        mountpoint = source.mountpoint
        why = await asyncio.to_thread(can_write, mountpoint)
        if not why:
            reader = await asyncio.to_thread(open_reader)
            try:
                await asyncio.to_thread(
                    write_back, reader, mountpoint, PurePosixPath(source.path).name
                )
                return source
            except NotDirect as e:
                why = str(e)
                # Only what this restore wrote is there (the directory was empty): the
                # engine starts again from an empty volume.
                await asyncio.to_thread(empty, mountpoint)
        source = source.engine(why)
    reader = await asyncio.to_thread(open_reader)
    await driver.write_archive(cid, str(PurePosixPath(source.path).parent), reader)
    return source


def write_back(reader: BinaryIO, root: Path, top: str) -> int:
    """Extract a tar of the volume (verified before: see bot.backups.check_members) into its
    empty directory `root`, as the engine's extraction would: numeric owners, modes with
    setuid/setgid/sticky, mtimes, symlinks, hard links, file capabilities. Returns members.

    Never writes through a link: every member's parent must be a directory this call made
    (the engine's archives list a directory before what it holds), every name is created
    new (O_EXCL, O_NOFOLLOW), and a hard link's target must be a file this call made. Any
    archive that does not fit these rules raises NotDirect before anything is written
    outside `root` (nothing ever is)."""
    dirs: dict[str, int] = {top: 0}  # directories made -> their mtime, set once all is in
    made: set[str] = set()  # files and links made (a hard link may name only those)
    count = 0
    buf = bytearray(CHUNK)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        # 1 MiB reads: tarfile's default 10 KiB blocks cost twice the CPU of the rest.
        with tarfile.open(fileobj=reader, mode="r|", bufsize=CHUNK) as tar:
            for m in tar:
                count += 1
                parts = PurePosixPath(m.name).parts
                name = "/".join(parts)
                if parts == (top,) and m.isdir():
                    _own(root_fd, m, None)
                    dirs[top] = int(m.mtime)
                    continue
                parent = "/".join(parts[:-1])
                if len(parts) < 2 or parts[0] != top or parent not in dirs:
                    raise NotDirect(f"the archive lists {m.name[:120]} before its directory")
                if name in dirs or name in made:
                    raise NotDirect(f"the archive lists {m.name[:120]} twice")
                rel = os.path.join(*parts[1:])
                _make(root_fd, rel, m, tar=tar, buf=buf, made=made)
                if m.isdir():
                    dirs[name] = int(m.mtime)
                else:
                    made.add(name)
        # Directory times last (writing inside one changes its time), deepest first.
        for name in sorted(dirs, key=lambda n: n.count("/"), reverse=True):
            rel = os.path.join(*PurePosixPath(name).parts[1:]) if name != top else "."
            os.utime(rel, ns=(dirs[name] * 10**9,) * 2, dir_fd=root_fd, follow_symlinks=False)
    except tarfile.TarError as e:
        raise NotDirect(f"the archive could not be read here ({e})") from None
    finally:
        os.close(root_fd)
    return count


def _make(
    root_fd: int,
    rel: str,
    m: tarfile.TarInfo,
    *,
    tar: tarfile.TarFile,
    buf: bytearray,
    made: set[str],
) -> None:
    times = (int(m.mtime) * 10**9,) * 2
    if m.isdir():
        os.mkdir(rel, 0o700, dir_fd=root_fd)
        fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
        try:
            _own(fd, m, None)
        finally:
            os.close(fd)
    elif m.isfile():
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(rel, flags, 0o600, dir_fd=root_fd)
        try:
            src = tar.extractfile(m)
            view = memoryview(buf)
            while src is not None and (n := src.readinto(buf)):  # type: ignore[attr-defined]
                os.write(fd, view[:n])
            _own(fd, m, times)
        finally:
            os.close(fd)
    elif m.issym():
        os.symlink(m.linkname, rel, dir_fd=root_fd)
        os.chown(rel, m.uid, m.gid, dir_fd=root_fd, follow_symlinks=False)
        os.utime(rel, ns=times, dir_fd=root_fd, follow_symlinks=False)
    elif m.islnk():
        target = "/".join(PurePosixPath(m.linkname).parts)
        if target not in made:
            raise NotDirect(f"the hard link {m.name[:120]} names no file made before it")
        source = os.path.join(*PurePosixPath(target).parts[1:])
        os.link(source, rel, src_dir_fd=root_fd, dst_dir_fd=root_fd, follow_symlinks=False)
    else:
        raise NotDirect(f"{m.name[:120]} is a special file")


def _own(fd: int, m: tarfile.TarInfo, times: tuple[int, int] | None) -> None:
    """Owner first (a chown clears setuid bits and capabilities), then mode, capability."""
    os.fchown(fd, m.uid, m.gid)
    os.fchmod(fd, m.mode & 0o7777)
    cap = m.pax_headers.get(f"SCHILY.xattr.{CAPABILITY}")
    if cap:
        os.setxattr(fd, CAPABILITY, cap.encode("utf-8", "surrogateescape"))
    if times is not None:
        os.utime(fd, ns=times)


def empty(root: Path) -> None:
    """Remove everything below `root` (never following links), keeping `root` itself."""
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
