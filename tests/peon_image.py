"""PEON's own container image, built from the project's Dockerfile with the real engine.

No registry is reachable here, so the Dockerfile's base (`python:3.11-slim-bookworm`) cannot be
pulled. When the engine lacks it, a stand-in is made from Debian's archive: debootstrap a
minimal bookworm with its python3 (3.11) and venv module, trimmed the way Debian's slim images
are, and `docker import` it. The image is then built with `--build-arg BASE=<that tag>`.

Both images are tagged with a hash of everything that goes into them (the recipe below; the
build context, the base image's id and the build arguments), so a second run finds them on the
engine and builds nothing.

Where a proxy intercepts TLS (this machine's egress does), pip in the build needs the proxy's
CA: the CAs this machine added to its trust store (/usr/local/share/ca-certificates, what
update-ca-certificates reads) go in as the build argument EXTRA_CA_CERTS, which only the build
stage sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml
from docker.models.containers import Container
from docker.utils.build import exclude_paths

from tests.discord_emulator import DiscordEmulator
from tests.engine import random_pool_base

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_REPOSITORY = "peon-test/peon"
BASE_REPOSITORY = "peon-test/python-base"
KEEP_IMAGES = 3  # newest peon-test/peon tags kept; older ones are removed after a build

# The stand-in base: what python:3.11-slim-bookworm holds that PEON's image relies on.
SUITE = "bookworm"
MIRROR = os.environ.get("PEON_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("python3", "python3-venv", "ca-certificates", "netbase", "tzdata")
# What Debian's slim images leave out, and apt's downloads and lists.
TRIM = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
# `docker import` makes an image without any config: give it the official image's.
CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
RECIPE = 1  # bump to rebuild the base when something the hash cannot see changes
LOCAL_CAS = Path("/usr/local/share/ca-certificates")


@dataclass(frozen=True)
class Built:
    """An image on the engine: its tag, id and size, and whether this run built it."""

    tag: str
    id: str
    size: int
    built: bool
    seconds: float


def dockerfile_base() -> str:
    """The default of the Dockerfile's `ARG BASE`: the official image it is built on."""
    m = re.search(r"^ARG BASE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    if m is None:
        raise RuntimeError("the Dockerfile has no `ARG BASE=...` line")
    return m.group(1)


def _has(client: docker.DockerClient, ref: str) -> docker.models.images.Image | None:
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def _built(image: docker.models.images.Image, tag: str, built: bool, t0: float) -> Built:
    return Built(tag, str(image.id), int(image.attrs["Size"]), built, time.monotonic() - t0)


def base_image(client: docker.DockerClient) -> Built:
    """The Dockerfile's own base when the engine has it, else the debootstrapped stand-in."""
    t0 = time.monotonic()
    official = dockerfile_base()
    image = _has(client, official)
    if image is not None:
        return _built(image, official, False, t0)
    recipe = json.dumps([SUITE, MIRROR, PACKAGES, TRIM, CHANGES, RECIPE]).encode()
    tag = f"{BASE_REPOSITORY}:3.11-{SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}"
    image = _has(client, tag)
    if image is not None:
        return _built(image, tag, False, t0)
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise RuntimeError(
            f"The engine has no {official} and none can be pulled; making one needs root and "
            "debootstrap (apt-get install debootstrap)."
        )
    with tempfile.TemporaryDirectory(prefix="peon-base-") as tmp:
        rootfs, archive = Path(tmp) / "rootfs", Path(tmp) / "rootfs.tar"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(rootfs), MIRROR],
            check=True, capture_output=True,
        )  # fmt: skip
        for part in TRIM:
            for child in (rootfs / part).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(archive), "."], check=True
        )
        repository, _, version = tag.partition(":")
        client.api.import_image_from_file(
            str(archive), repository=repository, tag=version, changes=list(CHANGES)
        )
    return _built(client.images.get(tag), tag, True, t0)


def extra_ca_certs() -> str:
    """The CAs this machine added to its trust store, as PEM text ("" when none)."""
    if not LOCAL_CAS.is_dir():
        return ""
    return "".join(p.read_text() for p in sorted(LOCAL_CAS.rglob("*.crt")))


def context_digest() -> str:
    """A hash of the build context as the engine receives it (.dockerignore applied)."""
    ignore = ROOT / ".dockerignore"
    patterns = [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    digest = hashlib.sha256()
    for rel in sorted(exclude_paths(str(ROOT), patterns)):
        path = ROOT / rel
        if path.is_file() and not path.is_symlink():
            digest.update(f"{rel}\0{path.stat().st_mode & 0o111}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def build_peon(
    client: docker.DockerClient, base: Built, *, rebuild: bool = False, nocache: bool = False
) -> Built:
    """Build the project's Dockerfile on `base`, unless an image of the same inputs is there
    (`rebuild`: build anyway, from the engine's layer cache unless `nocache`)."""
    t0 = time.monotonic()
    args = {"BASE": base.tag}
    ca = extra_ca_certs()
    if ca:
        args["EXTRA_CA_CERTS"] = ca
    key = json.dumps([context_digest(), base.id, args]).encode()
    tag = f"{IMAGE_REPOSITORY}:{hashlib.sha256(key).hexdigest()[:12]}"
    image = None if rebuild or nocache else _has(client, tag)
    if image is not None:
        return _built(image, tag, False, t0)
    log: list[str] = []
    for event in client.api.build(
        path=str(ROOT), tag=tag, buildargs=args, rm=True, forcerm=True, nocache=nocache,
        pull=False, decode=True,
    ):  # fmt: skip
        log.append(event.get("stream", ""))
        if "error" in event:
            tail = "".join(log)[-4000:]
            raise RuntimeError(f"building the image failed: {event['error']}\n{tail}")
    prune(client, keep=tag)
    return _built(client.images.get(tag), tag, True, t0)


def prune(client: docker.DockerClient, keep: str) -> None:
    """Remove all but the newest few images of earlier builds (one a change of the sources);
    one that a container of another run still uses stays."""
    images = sorted(
        client.images.list(name=IMAGE_REPOSITORY), key=lambda i: i.attrs["Created"], reverse=True
    )
    for old in images[KEEP_IMAGES:]:
        for ref in old.tags:
            if ref != keep:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(ref)


# --- the container, as compose.yaml runs it ------------------------------------------------------

COMPOSE_SERVICE = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["peon"]


def compose_seconds(text: str) -> int:
    """A compose duration such as `stop_grace_period: 90s`."""
    m = re.fullmatch(r"(\d+)s", text)
    if m is None:
        raise ValueError(f"{text!r}: only whole seconds are read here")
    return int(m.group(1))


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}` and `${VAR:?message}`."""

    def one(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise KeyError(f"{m.group(1)}: {m.group(2) or 'not set'}")
        return env[m.group(1)]

    return re.sub(r"\$\{(\w+)(?::\?([^}]*))?\}", one, value)


def run_like_compose(
    client: docker.DockerClient, image: str, name: str, *, sources: Mapping[str, str],
    env: Mapping[str, str], labels: Mapping[str, str], health_interval: float,
) -> Container:  # fmt: skip
    """Create the `peon` service's container as compose.yaml describes it. `sources` replaces
    the host side of each volume (this run's socket, data volume and config folder); `env` is
    the environment compose would read `${...}` from. Only the healthcheck runs more often
    (`docker run --health-interval`): the image's own `peon check`."""
    volumes: dict[str, dict[str, str]] = {}
    for spec in COMPOSE_SERVICE["volumes"]:
        source, target, *mode = spec.split(":")
        volumes[sources[source]] = {"bind": target, "mode": mode[0] if mode else "rw"}
    logging = COMPOSE_SERVICE.get("logging", {})
    environment = COMPOSE_SERVICE["environment"]
    return client.containers.create(
        image,
        name=name,
        labels=dict(labels),
        environment={k: interpolate(str(v), env) for k, v in environment.items()},
        volumes=volumes,
        network_mode=COMPOSE_SERVICE.get("network_mode"),
        restart_policy={"Name": COMPOSE_SERVICE["restart"]},
        log_config={"type": logging.get("driver", "json-file"), "config": logging.get("options")},
        healthcheck={"interval": int(health_interval * 1e9)},
    )


def write_config(folder: Path, emu: DiscordEmulator, discord_port: int, instance: str) -> None:
    """The config folder compose mounts: a peon.yaml with the emulator (reached through
    `discord_port`) as Discord and loopback for every game port. Readable by everyone, as
    the bot runs as uid 10001."""
    folder.mkdir()
    pool = random_pool_base()
    guild = {
        "notification_channel": emu.channels["peon"],
        "roles": {role: [emu.roles[role]] for role in ("admin", "operator", "player")},
    }
    config = {
        "instance_id": instance,
        "docker": {"public_address": "127.0.0.1", "probe_address": "127.0.0.1"},
        "ports": {"pool": f"{pool}-{pool + 99}", "bind_address": "127.0.0.1"},
        "discord": {
            "api_base": f"http://127.0.0.1:{discord_port}/api/v10",
            "gateway_url": f"ws://127.0.0.1:{discord_port}/",
            "progress_interval": 0.2,
            "guilds": {emu.guild_id: guild},
        },
    }
    (folder / "peon.yaml").write_text(yaml.safe_dump(config))
    folder.chmod(0o755)
    (folder / "peon.yaml").chmod(0o644)


async def state_of(container: Container) -> dict[str, Any]:
    """The container's State, fresh from the engine (without blocking the event loop)."""
    await asyncio.to_thread(container.reload)
    return dict(container.attrs["State"])


async def wait_healthy(container: Container, timeout: float) -> None:
    """Wait until the engine calls the container healthy; raise with its logs otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        state = await state_of(container)
        health = state.get("Health") or {}
        if health.get("Status") == "healthy":
            return
        if not state["Running"] or time.monotonic() > deadline:
            logs = (await asyncio.to_thread(container.logs, tail=60)).decode(errors="replace")
            checks = [c.get("Output", "") for c in health.get("Log", [])[-2:]]
            raise RuntimeError(
                f"{container.name} is not healthy ({state['Status']}, {health.get('Status')})"
                f":\n{logs}\nlast checks: {checks}"
            )
        await asyncio.sleep(0.05)


def engine_socket() -> Path:
    """The engine's Unix socket, as docker-py finds it (DOCKER_HOST or the default)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise RuntimeError(f"the engine is not on a local Unix socket ({host})")
    return Path(host.removeprefix("unix://"))


class Relay:
    """Passes every connection to `listen` through to `target`, byte for byte, from its own
    event loop in a thread (blocking Docker calls in a test never stall it). Addresses are a
    Unix socket path or ("127.0.0.1", port); port 0 picks a free one (see `port`). `delay`
    holds each chunk toward the target that many seconds: a server far away."""

    def __init__(
        self, listen: Path | tuple[str, int], target: Path | tuple[str, int], delay: float = 0.0
    ) -> None:
        self.listen, self.target, self.delay = listen, target, delay
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    async def _listen(self) -> None:
        if isinstance(self.listen, Path):
            self._server = await asyncio.start_unix_server(self._accept, path=str(self.listen))
        else:
            self._server = await asyncio.start_server(self._accept, *self.listen)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if isinstance(self.target, Path):
                up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(
                _pipe(reader, up_writer, self.delay), _pipe(up_reader, writer, 0.0)
            )
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    def stop(self) -> None:
        """Close the listener and every connection through it; stop the thread."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
        if isinstance(self.listen, Path):
            with contextlib.suppress(FileNotFoundError):
                self.listen.unlink()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class SocketProxy(Relay):
    """A Unix socket at `path`, owned by root:`gid` with mode 660, in front of the engine's
    socket, as a socket proxy (or a host whose docker group has its own number) gives it."""

    def __init__(self, path: Path, gid: int) -> None:
        super().__init__(path, engine_socket())
        self.path, self.gid = path, gid

    def start(self) -> None:
        super().start()
        os.chown(self.path, 0, self.gid)
        os.chmod(self.path, 0o660)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy until EOF, then pass the half-close on (an attach or a build stream relies on it).
    With a delay, each chunk is written `delay` s after it was read, in order."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def write() -> None:
        while True:
            at, data = await queue.get()
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            await asyncio.sleep(at + delay - time.monotonic())
            writer.write(data)
            await writer.drain()

    with contextlib.suppress(OSError, RuntimeError):  # the other side went away first
        writer_task = asyncio.create_task(write())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((time.monotonic(), data))
            queue.put_nowait((time.monotonic(), b""))
            await writer_task
        finally:
            writer_task.cancel()
            await asyncio.gather(writer_task, return_exceptions=True)
