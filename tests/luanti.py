"""A real Luanti (Minetest) dedicated server image for the tests, from Debian's packages.

No registry is reachable, so the image is put together here, FROM scratch: the server binary of
Debian bookworm's `minetest-server` 5.6.1, every library `ldd` lists (at its own path, taken
from this machine), the builtin Lua and the devtest game of `minetest-data`, and a static
busybox. It honours the contract of the community image warplans/luanti.yaml runs
(lscr.io/linuxserver/luanti, read in linuxserver/docker-luanti 21d6115):

- Dockerfile: `HOME=/config`, `MINETEST_GAME_PATH=/config/.minetest/games`, `EXPOSE
  30000/udp`, `VOLUME /config/.minetest`; the games of the source tree (devtest) go to
  /defaults/games and minetest.conf.example, with IPv6 switched on, to /defaults/minetest.conf.
- init-luanti-config/run: make games/, mods/ and main-config/ in /config/.minetest, copy the
  default config and games there, and own /config by the user `abc` (uid PUID, gid PGID).
- svc-luanti/run: run the server as abc with `--port 30000 --config
  /config/.minetest/main-config/minetest.conf ${CLI_ARGS}`.

What differs: the community image runs s6-overlay as PID 1, which passes the stop signal to
the server; here the entry script `exec`s into the server, so the game itself is PID 1 and
must handle SIGTERM on its own (it does: porting.cpp signal_handler_init).

The packages are fetched once with `apt-get download` into a cache folder; the image's tag
carries a hash of what goes into it (the packages, the libraries, busybox and this module), so
a second run finds it on the engine and builds nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml

from tests.engine import busybox_binary

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = ("minetest-server", "minetest-data")
REPOSITORY = "peon-test/luanti"
CACHE = Path(os.environ.get("PEON_TEST_CACHE") or Path.home() / ".cache" / "peon-tests")
SERVER_BINARY = "usr/lib/minetest/minetestserver"  # /usr/games/minetestserver wraps it
SHARE = "usr/share/games/minetest"
CONF_EXAMPLE = "usr/share/doc/minetest/minetest.conf.example.gz"
# Libraries the server links that a Debian host does not usually have (scripts/test installs
# them; the others, libc to libcurl, come with the base system and docker.io).
HOST_LIBRARIES = ("libluajit-5.1-2", "libleveldb1d", "libspatialindex6")
ENTRYPOINT = """\
#!/bin/sh
# PEON's test stand-in for lscr.io/linuxserver/luanti: its init-luanti-config, then its
# svc-luanti (as the user abc with PUID/PGID), with the server as PID 1.
PUID=${PUID:-911}
PGID=${PGID:-911}
sed -i "s/^abc:x:[0-9]*:[0-9]*:/abc:x:$PUID:$PGID:/" /etc/passwd
sed -i "s/^abc:x:[0-9]*:/abc:x:$PGID:/" /etc/group
mkdir -p /config/.minetest/games /config/.minetest/mods /config/.minetest/main-config
if [ ! -f /config/.minetest/main-config/minetest.conf ]; then
    cp /defaults/minetest.conf /config/.minetest/main-config/minetest.conf
fi
if [ ! -d /config/.minetest/games/minimal ]; then
    cp -pr /defaults/games/* /config/.minetest/games/
fi
chown -R abc:abc /config
exec start-stop-daemon -S -c abc:abc -x /usr/lib/minetest/minetestserver -- \\
    --port 30000 --config /config/.minetest/main-config/minetest.conf $CLI_ARGS
"""

# The user abc of the linuxserver base image; the entry script gives it PUID and PGID.
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nabc:x:911:911::/config:/bin/false\n"

CHANGES = [
    "ENV HOME=/config",
    "ENV MINETEST_GAME_PATH=/config/.minetest/games",
    "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    "EXPOSE 30000/udp",
    "VOLUME /config/.minetest",
    'ENTRYPOINT ["/bin/sh", "/luanti-init"]',
]


@dataclass(frozen=True)
class LuantiImage:
    tag: str
    version: str  # of minetest-server
    size: int  # bytes, as the engine counts them
    built: bool  # False when the engine already had it
    seconds: float  # to find or build it (downloads included)


@dataclass(frozen=True)
class _Entry:
    path: str  # in the image, without the leading slash
    mode: int
    data: bytes | None = None
    source: Path | None = None
    link: str | None = None  # a symlink's target


def debs(cache: Path = CACHE) -> dict[str, Path]:
    """The packages' .deb files, downloaded with apt-get into `cache` when not there yet."""
    folder = cache / "debs"
    found = {p: sorted(folder.glob(f"{p}_*.deb")) for p in PACKAGES}
    missing = [p for p, files in found.items() if not files]
    if missing:
        if shutil.which("apt-get") is None:
            raise RuntimeError(f"apt-get is needed to fetch {' '.join(missing)} (Debian)")
        folder.mkdir(parents=True, exist_ok=True)
        run = _download(missing, folder)
        if run.returncode and os.geteuid() == 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            run = _download(missing, folder)
        if run.returncode:
            raise RuntimeError(f"apt-get download {' '.join(missing)} failed: {run.stderr}")
        found = {p: sorted(folder.glob(f"{p}_*.deb")) for p in PACKAGES}
    return {p: files[-1] for p, files in found.items()}


def _download(packages: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", "download", *packages], cwd=folder, capture_output=True, text=True
    )


def _libraries(binary: Path) -> list[tuple[str, Path]]:
    """(path the loader looks at, file to copy) for every library `ldd` lists."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    missing = re.findall(r"^\s*(\S+) => not found", out, re.MULTILINE)
    if missing:
        raise RuntimeError(
            f"The Luanti server needs libraries this machine lacks ({', '.join(missing)}): "
            f"apt-get install {' '.join(HOST_LIBRARIES)} (scripts/test does)"
        )
    paths = re.findall(r"(?:=> |^\s*)(/\S+) \(0x", out, re.MULTILINE)
    return [(p, Path(os.path.realpath(p))) for p in paths]


def _tree(root: Path, into: str) -> list[_Entry]:
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = Path(folder).relative_to(root)
        out.append(_Entry(into if rel == Path() else f"{into}/{rel.as_posix()}", 0o755))
        for name in sorted(files):
            src = Path(folder) / name
            path = f"{into}/{(rel / name).as_posix()}"
            if src.is_symlink():
                out.append(_Entry(path, 0o777, link=os.readlink(src)))
            else:
                out.append(_Entry(path, 0o755 if os.access(src, os.X_OK) else 0o644, source=src))
    return out


def _entries(extracted: Path, libraries: list[tuple[str, Path]]) -> list[_Entry]:
    busybox = busybox_binary()
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    conf = gzip.decompress((extracted / CONF_EXAMPLE).read_bytes()).decode()
    # As the community image's Dockerfile does to its default config.
    conf = conf.replace("# enable_ipv6 = true", "enable_ipv6 = true")
    conf = conf.replace("# ipv6_server = false", "ipv6_server = true")
    entries = [
        _Entry("bin/busybox", 0o755, source=busybox),
        *(_Entry(f"bin/{a}", 0o777, link="busybox") for a in applets if a != "busybox"),
        _Entry("etc/passwd", 0o644, PASSWD),
        _Entry("etc/group", 0o644, b"root:x:0:\nabc:x:911:\n"),
        _Entry("tmp", 0o1777),
        _Entry("config/.minetest", 0o755),
        _Entry("luanti-init", 0o755, ENTRYPOINT.encode()),
        _Entry("defaults/minetest.conf", 0o644, conf.encode()),
        _Entry(SERVER_BINARY, 0o755, source=extracted / SERVER_BINARY),
        *(_Entry(at.lstrip("/"), 0o755, source=src) for at, src in libraries),
        *_tree(extracted / SHARE / "builtin", f"{SHARE}/builtin"),
        *_tree(extracted / SHARE / "games" / "devtest", "defaults/games/devtest"),
    ]  # fmt: skip
    have = {e.path for e in entries}
    parents = {str(p) for e in entries for p in Path(e.path).parents if str(p) != "."}
    return [_Entry(p, 0o755) for p in sorted(parents - have)] + entries


def _write_tar(entries: list[_Entry], target: Path) -> None:
    with tarfile.open(target, "w") as tar:
        for e in entries:
            info = tarfile.TarInfo(e.path)
            info.mode = e.mode & 0o7777
            if e.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, e.link
                tar.addfile(info)
            elif e.data is not None:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            elif e.source is not None:
                info.size = e.source.stat().st_size
                with e.source.open("rb") as f:
                    tar.addfile(info, f)
            else:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)


def build_luanti(
    client: docker.DockerClient, cache: Path = CACHE, repository: str = REPOSITORY
) -> LuantiImage:
    """The image on the engine `client` talks to; built only when its inputs changed."""
    began = time.monotonic()
    files = debs(cache)
    version = subprocess.run(
        ["dpkg-deb", "-f", str(files["minetest-server"]), "Version"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="peon-luanti-") as tmp:
        extracted = Path(tmp) / "root"
        # The server's package alone tells the libraries; the data is unpacked to build.
        subprocess.run(["dpkg-deb", "-x", str(files[PACKAGES[0]]), str(extracted)], check=True)
        libraries = _libraries(extracted / SERVER_BINARY)
        digest = _digest([*files.values(), busybox_binary()], libraries)
        tag = f"{repository}:{version.split('+', 1)[0]}-{digest[:16]}"
        with contextlib.suppress(docker.errors.ImageNotFound):
            image = client.images.get(tag)
            return LuantiImage(tag, version, _size(image), False, time.monotonic() - began)
        subprocess.run(["dpkg-deb", "-x", str(files[PACKAGES[1]]), str(extracted)], check=True)
        rootfs = Path(tmp) / "rootfs.tar"
        _write_tar(_entries(extracted, libraries), rootfs)
        repo, name = tag.split(":")
        with rootfs.open("rb") as f:
            client.api.import_image(src=f, repository=repo, tag=name, changes=CHANGES)
    image = client.images.get(tag)
    _drop_stale(client, repository, tag)
    return LuantiImage(tag, version, _size(image), True, time.monotonic() - began)


def _digest(files: list[Path], libraries: list[tuple[str, Path]]) -> str:
    """A hash of everything the image is made of: this module (the recipe), the packages,
    busybox and each library with the path it is loaded from."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for at, path in [(p.name, p) for p in files] + libraries:
        h.update(f"\0{at}\0".encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _size(image: Any) -> int:
    return int(image.attrs.get("Size") or 0)


def _drop_stale(client: docker.DockerClient, repository: str, keep: str) -> None:
    """Remove this image's builds older than a day (another checkout's test run may be using
    a recent one; a container still using one keeps it)."""
    day_ago = datetime.now(UTC) - timedelta(days=1)
    for image in client.images.list(name=repository):
        created = datetime.fromisoformat(image.attrs["Created"][:19]).replace(tzinfo=UTC)
        for tag in image.tags:
            if tag != keep and created < day_ago:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(tag)


def shipped_plan_with(image: str, folder: Path) -> Path:
    """A war plans folder holding the shipped warplans/luanti.yaml, unchanged but its image."""
    plan = yaml.safe_load((ROOT / "warplans" / "luanti.yaml").read_text())
    plan["image"] = image
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "luanti.yaml").write_text(yaml.safe_dump(plan))
    return folder
