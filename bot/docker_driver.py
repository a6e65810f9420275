"""The Docker Engine, through docker-py: the only module that imports `docker`.

docker-py is synchronous, so every call runs in this driver's thread pool and the event loop
never blocks. Results are PEON's own frozen dataclasses, never docker-py objects; docker-py and
requests errors are translated here into bot.errors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import json
import logging
import tarfile
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, TypeVar

import docker
import docker.errors
import docker.tls
import requests.exceptions
from docker.types import LogConfig
from docker.utils import parse_repository_tag

from bot.errors import (
    ContainerMissing,
    DockerError,
    DockerUnavailable,
    ImageUnavailable,
    PeonError,
    UpdateCheckFailed,
)
from bot.models import (
    ContainerEvent,
    ContainerInfo,
    EngineInfo,
    ImageInfo,
    PullProgress,
    Usage,
    VolumeInfo,
)
from bot.settings import TLSSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_THREADS = 32  # log followers and pulls hold a thread each; keep room for quick calls
ARCHIVE_CHUNK = 1 << 20  # bytes per read or write when streaming volume archives
LOG_MAX_SIZE = "20m"  # game servers are chatty: bound json-file logs per container
LOG_MAX_FILES = "3"
ERROR_TEXT_LIMIT = 300
MIN_API_VERSION = "1.24"  # only to ask an engine its own version (Docker 1.12 and later)


class NotFoundInEngine(DockerError):
    """The engine has no such object; callers turn it into a precise domain error."""


@dataclass(frozen=True)
class VolumeOnDisk:
    """Where a volume's files lie on this machine, as the engine tells it, or why PEON cannot
    read them there (then `mountpoint` is None and `reason` says why, for the backup's log)."""

    mountpoint: str | None
    reason: str = ""
    mtime: str = ""  # the engine's RFC 3339 mtime of the path in the container, to compare


@dataclass(frozen=True)
class FoundFile:
    """A file read from a container: its bytes and owner, or why it cannot be used."""

    data: bytes | None
    owner: tuple[int, int]
    problem: str | None = None


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    labels: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    ports: dict[str, tuple[str, int]] = field(default_factory=dict)  # "7777/udp" -> (ip, port)
    volumes: dict[str, str] = field(default_factory=dict)  # volume name -> container path
    memory: int | None = None
    cpus: float | None = None
    stop_signal: str = "SIGTERM"
    stdin_open: bool = False
    user: str | None = None  # "UID[:GID]" or a name; None: the image's own USER


def _parse_time(text: str | None) -> datetime | None:
    if not text or text.startswith("0001-01-01"):
        return None
    # Docker gives RFC 3339 with nanoseconds; Python takes at most microseconds.
    head, _, rest = text.partition(".")
    if rest:
        frac = "".join(ch for ch in rest if ch.isdigit())[:6]
        tz = rest[len("".join(ch for ch in rest if ch.isdigit())) :] or "Z"
        text = f"{head}.{frac}{tz}"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 1] + "…"


def _explain(e: docker.errors.APIError) -> str:
    return _short(e.explanation or str(e))


def _translate(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn docker-py and transport errors into domain errors (runs inside the worker thread)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except docker.errors.NotFound as e:
            raise NotFoundInEngine(_explain(e)) from e
        except docker.errors.APIError as e:
            raise DockerError(f"The Docker engine refused: {_explain(e)}") from e
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise DockerUnavailable(_short(type(e).__name__)) from e
        except docker.errors.DockerException as e:
            raise DockerUnavailable(_short(str(e))) from e

    return wrapper


class SingleFlight:
    """Concurrent identical read-only calls share one in-flight call.

    Thirty members pressing /server list at once cost the engine one request, and the bot
    parses one answer instead of thirty (parsing in worker threads holds the GIL and would
    delay the event loop). Only for reads: a result is a fresh answer, never a cached one.
    """

    def __init__(self) -> None:
        self._inflight: dict[Hashable, asyncio.Future[Any]] = {}

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(call())
            self._inflight[key] = future
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
        # Shielded: one caller giving up (a cancelled interaction) does not cancel the others.
        result: T = await asyncio.shield(future)
        return result


class PullAggregator:
    """Folds the engine's per-layer pull events into one PullProgress."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.layers: dict[str, tuple[int, int, bool]] = {}  # id -> (current, total, done)
        self.status = "pulling"

    def feed(self, event: dict[str, Any]) -> PullProgress:
        if "error" in event:
            raise ImageUnavailable(self.image, _short(str(event["error"])))
        status = str(event.get("status", ""))
        layer = event.get("id")
        if status.startswith(("Digest:", "Status:")):
            self.status = status
        # "Pulling from <repo>" carries the tag as its id: a header, not a layer.
        if not layer or status.startswith("Pulling from"):
            return self.snapshot()
        cur, tot, done = self.layers.get(layer, (0, 0, False))
        if not done:
            detail = event.get("progressDetail") or {}
            if status == "Downloading" and detail.get("total"):
                cur, tot = int(detail.get("current", 0)), int(detail["total"])
            elif status in (
                "Download complete",
                "Verifying Checksum",
                "Extracting",
                "Pull complete",
                "Already exists",
            ):
                cur = tot
            done = status in ("Pull complete", "Already exists")
        self.layers[layer] = (cur, tot, done)
        return self.snapshot()

    def snapshot(self) -> PullProgress:
        cur = sum(c for c, _, _ in self.layers.values())
        tot = sum(t for _, t, _ in self.layers.values())
        done = sum(1 for *_, d in self.layers.values() if d)
        return PullProgress(self.image, cur, tot, done, len(self.layers), self.status)


class DockerDriver:
    """Async facade over one Docker Engine."""

    def __init__(
        self,
        base_url: str | None = None,
        timeout: int = 60,
        *,
        host: str | None = None,
        tls: TLSSettings | None = None,
    ) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.host = host  # named in "unreachable" errors when PEON has several hosts
        self.tls = tls
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="docker")
        self._flights = SingleFlight()
        self._maps_ids: bool | None = None  # rootless or userns-remap engine: asked once

    # --- plumbing ---------------------------------------------------------------------------

    def _docker(self) -> docker.DockerClient:
        # Built lazily in a worker thread: docker-py negotiates the API version with a request,
        # which must not happen on the event loop or at import time.
        with self._client_lock:
            if self._client is None:
                if self.base_url:
                    self._client = self._remote_client(self.base_url)
                else:
                    # Honours DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH.
                    self._client = docker.from_env(timeout=self.timeout, version="auto")
            return self._client

    def _remote_client(self, url: str) -> docker.DockerClient:
        tls = self._tls_config()
        # ssh:// through the system's ssh client: ~/.ssh/config, agents and known_hosts work
        # as they do for `docker -H ssh://`.
        common: dict[str, Any] = {
            "base_url": url,
            "timeout": self.timeout,
            "tls": tls,
            "use_ssh_client": url.startswith("ssh://"),
        }
        if not (isinstance(tls, docker.tls.TLSConfig) and tls.ca_cert):
            return docker.DockerClient(version="auto", **common)
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the CA a session was given
        # (psf/requests#3829), and version="auto" asks before we could stop it: the host's own
        # CA must win, so ask its API version with the environment ignored, then build the
        # client for that version.
        probe = docker.APIClient(version=MIN_API_VERSION, **common)
        probe.trust_env = False
        try:
            version = str(probe.version(api_version=False)["ApiVersion"])
        finally:
            probe.close()
        client = docker.DockerClient(version=version, **common)
        client.api.trust_env = False
        return client

    def _tls_config(self) -> docker.tls.TLSConfig | bool:
        t = self.tls
        if t is None:
            return False
        cert = (str(t.client_cert), str(t.client_key)) if t.client_cert and t.client_key else None
        return docker.tls.TLSConfig(
            client_cert=cert, ca_cert=str(t.ca_cert) if t.ca_cert else None, verify=t.verify
        )

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(_translate(fn), *args, **kwargs)
        try:
            return await loop.run_in_executor(self._pool, call)
        except DockerUnavailable as e:
            if self.host is None or e.host is not None:
                raise
            raise DockerUnavailable(e.detail, host=self.host) from e

    async def close(self) -> None:
        client = self._client
        if client is not None:
            await self._run(client.close)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- engine -----------------------------------------------------------------------------

    async def ping(self) -> EngineInfo:
        def call() -> EngineInfo:
            c = self._docker()
            c.ping()
            v = c.version()
            info = c.info()
            return EngineInfo(
                version=str(v.get("Version", "?")),
                api_version=str(v.get("ApiVersion", "?")),
                os=f"{info.get('OperatingSystem', '?')} ({info.get('Architecture', '?')})",
                containers_running=int(info.get("ContainersRunning", 0)),
                memory=int(info.get("MemTotal", 0)),
                cpus=int(info.get("NCPU", 0)),
            )

        return await self._run(call)

    async def published_ports(self) -> set[tuple[int, str]]:
        """Host ports published by any container on this engine, PEON's or not."""

        def call() -> set[tuple[int, str]]:
            out: set[tuple[int, str]] = set()
            for c in self._docker().api.containers(all=True):
                for p in c.get("Ports") or []:
                    if p.get("PublicPort"):
                        out.add((int(p["PublicPort"]), str(p.get("Type", "tcp"))))
            return out

        return await self._run(call)

    # --- images -----------------------------------------------------------------------------

    async def image_info(self, image: str) -> ImageInfo | None:
        def call() -> ImageInfo | None:
            try:
                img = self._docker().images.get(image)
            except docker.errors.ImageNotFound:
                return None
            attrs = img.attrs
            return ImageInfo(
                id=img.id,
                tags=tuple(img.tags),
                repo_digests=tuple(attrs.get("RepoDigests") or ()),
                created=str(attrs.get("Created", "")),
            )

        return await self._run(call)

    async def image_volumes(self, image: str) -> tuple[str, ...]:
        """The paths the image declares as VOLUME; empty when the image is missing."""

        def call() -> tuple[str, ...]:
            try:
                img = self._docker().images.get(image)
            except docker.errors.ImageNotFound:
                return ()
            config = img.attrs.get("Config") or {}
            return tuple(sorted(config.get("Volumes") or {}))

        return await self._run(call)

    async def unnamed_mounts(self, ref: str, prefix: str) -> dict[str, str]:
        """Container path -> volume name of the container's volumes not named `prefix`...:
        the anonymous volumes Docker made for image VOLUMEs."""

        def call() -> dict[str, str]:
            try:
                attrs = self._docker().api.inspect_container(ref)
            except docker.errors.NotFound:
                return {}
            return {
                str(m.get("Destination")): str(m.get("Name"))
                for m in attrs.get("Mounts") or []
                if m.get("Type") == "volume" and not str(m.get("Name", "")).startswith(prefix)
            }

        return await self._run(call)

    async def registry_digest(self, image: str) -> str:
        """The digest the image's registry gives for its tag now, without pulling: what a
        pull would fetch (the engine asks the registry, with its own credentials)."""

        def call() -> str:
            try:
                data = self._docker().images.get_registry_data(image)
            except docker.errors.APIError as e:
                raise _registry_error(image, e) from e
            return str(data.id)

        return await self._run(call)

    async def pull(
        self, image: str, progress: Callable[[PullProgress], Awaitable[None]] | None = None
    ) -> ImageInfo:
        """Pull an image, reporting aggregated progress; a registry error names the image."""
        repo, tag = parse_repository_tag(image)
        if not tag:
            tag = "latest"
        aggregator = PullAggregator(image)
        queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def stream() -> None:
            try:
                if "@" in image:
                    events: Iterator[dict[str, Any]] = self._docker().api.pull(
                        image, stream=True, decode=True
                    )
                else:
                    events = self._docker().api.pull(repo, tag=tag, stream=True, decode=True)
                for event in events:
                    loop.call_soon_threadsafe(queue.put_nowait, event)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except BaseException as e:
                loop.call_soon_threadsafe(queue.put_nowait, e)

        worker = loop.run_in_executor(self._pool, stream)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise _pull_error(image, item) from item
                snapshot = aggregator.feed(item)
                if progress is not None:
                    await progress(snapshot)
        finally:
            with contextlib.suppress(BaseException):
                await worker
        info = await self.image_info(image)
        if info is None:
            raise ImageUnavailable(image, "the engine reported success but has no such image")
        return info

    # --- volumes ----------------------------------------------------------------------------

    async def ensure_volume(self, name: str, labels: dict[str, str]) -> bool:
        """Create the volume unless it exists; True when this call created it.

        An existing volume is reused only if it carries the same PEON server labels, so data
        kept from a deleted server comes back, and nobody else's volume is ever taken over.
        """

        def call() -> bool:
            c = self._docker()
            try:
                vol = c.volumes.get(name)
            except docker.errors.NotFound:
                c.volumes.create(name=name, labels=labels)
                return True
            have = vol.attrs.get("Labels") or {}
            keys = ("io.peon.instance", "io.peon.server", "io.peon.volume")
            if any(have.get(k) != labels.get(k) for k in keys):
                raise DockerError(f"Volume '{name}' exists and does not belong to this server.")
            return False

        return await self._run(call)

    async def remove_volume(self, name: str, owner: dict[str, str] | None = None) -> bool:
        """Remove a volume; with `owner`, only if it carries those labels (a volume of the
        same name may belong to another PEON instance sharing the engine)."""

        def call() -> bool:
            try:
                vol = self._docker().volumes.get(name)
                have = vol.attrs.get("Labels") or {}
                if owner is not None and any(have.get(k) != v for k, v in owner.items()):
                    return False
                vol.remove(force=True)
            except docker.errors.NotFound:
                return False
            return True

        return await self._run(call)

    async def list_volumes(self, label_filters: list[str]) -> list[VolumeInfo]:
        def call() -> list[VolumeInfo]:
            vols = self._docker().volumes.list(filters={"label": label_filters})
            return [
                VolumeInfo(
                    v.name, dict(v.attrs.get("Labels") or {}), str(v.attrs.get("Mountpoint", ""))
                )
                for v in vols
            ]

        return await self._run(call)

    # --- containers -------------------------------------------------------------------------

    async def create_container(self, spec: ContainerSpec) -> str:
        def call() -> str:
            c = self._docker().containers.create(
                spec.image,
                name=spec.name,
                command=spec.command,
                entrypoint=spec.entrypoint,
                environment=spec.env,
                labels=spec.labels,
                ports=dict(spec.ports),
                volumes={vol: {"bind": path, "mode": "rw"} for vol, path in spec.volumes.items()},
                mem_limit=spec.memory,
                nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
                stop_signal=spec.stop_signal,
                stdin_open=spec.stdin_open,
                user=spec.user,
                tty=False,
                detach=True,
                log_config=LogConfig(
                    type="json-file", config={"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES}
                ),
            )
            return str(c.id)

        return await self._run(call)

    async def inspect(self, ref: str) -> ContainerInfo | None:
        def call() -> ContainerInfo | None:
            try:
                attrs = self._docker().api.inspect_container(ref)
            except docker.errors.NotFound:
                return None
            return _container_info(attrs)

        return await self._flights.run(("inspect", ref), lambda: self._run(call))

    async def list_containers(
        self, label_filters: list[str], *, detailed: bool = False
    ) -> list[ContainerInfo]:
        """Containers matching the labels. The list endpoint's summary has state, labels,
        image and published ports; `detailed` adds an inspect per container (environment,
        start time), which only adoption needs."""

        def call() -> list[ContainerInfo]:
            api = self._docker().api
            out = []
            for summary in api.containers(all=True, filters={"label": label_filters}):
                if not detailed:
                    out.append(_summary_info(summary))
                    continue
                try:
                    out.append(_container_info(api.inspect_container(summary["Id"])))
                except docker.errors.NotFound:
                    continue  # removed between list and inspect
            return out

        key = ("list", tuple(label_filters), detailed)
        return list(await self._flights.run(key, lambda: self._run(call)))

    async def start(self, ref: str) -> None:
        await self._run(self._container_call, ref, "start")

    async def stop(self, ref: str, grace: int) -> None:
        """Send the container's stop signal, then SIGKILL after `grace` seconds."""
        # docker-py's own HTTP timeout must outlast the grace period.
        await self._run(self._container_call, ref, "stop", timeout=grace)

    async def kill(self, ref: str, signal: str = "SIGKILL") -> None:
        await self._run(self._container_call, ref, "kill", signal=signal)

    async def remove(self, ref: str, force: bool = False) -> bool:
        def call() -> bool:
            try:
                self._docker().api.remove_container(ref, force=force, v=False)
            except docker.errors.NotFound:
                return False
            return True

        return await self._run(call)

    async def wait(self, ref: str, timeout: float) -> int | None:
        """Wait for the container to exit; its exit code, or None when it is still running."""

        def call() -> int | None:
            try:
                result = self._docker().api.wait(ref, timeout=timeout)
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as e:
                if isinstance(e, requests.exceptions.ConnectionError) and "timed out" not in str(e):
                    raise
                return None
            return int(result.get("StatusCode", -1))

        return await self._run(call)

    async def send_console(self, ref: str, text: str) -> None:
        """Write one line to the container's stdin (it must have been created with stdin open)."""

        def call() -> None:
            sock = self._docker().api.attach_socket(ref, params={"stdin": 1, "stream": 1})
            try:
                raw = getattr(sock, "_sock", sock)
                raw.sendall(text.rstrip("\n").encode() + b"\n")
            finally:
                sock.close()

        await self._run(call)

    async def exec(self, ref: str, command: list[str], timeout: float = 60) -> tuple[int, str]:
        def call() -> tuple[int, str]:
            api = self._docker().api
            exec_id = api.exec_create(ref, command, stdout=True, stderr=True)["Id"]
            output = api.exec_start(exec_id, demux=False)
            code = api.exec_inspect(exec_id).get("ExitCode")
            text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
            return (int(code) if code is not None else -1, text)

        return await asyncio.wait_for(self._run(call), timeout)

    async def logs(
        self, ref: str, tail: int | str = 100, since: datetime | None = None
    ) -> list[str]:
        """The last `tail` lines ("all" for every one), optionally only those after `since`."""

        def call() -> list[str]:
            api = self._docker().api
            params: dict[str, Any] = {"stdout": 1, "stderr": 1, "tail": tail}
            if since is not None:
                params["since"] = docker.utils.datetime_to_timestamp(since)
            # Not api.logs(): it inspects the container first to learn whether it has a TTY,
            # one more engine call per read (the player count reads every watched server's
            # log each tick). PEON creates every container without one (create_container).
            res = api._get(api._url("/containers/{0}/logs", ref), params=params, stream=False)
            data: bytes = api._get_result_tty(False, res, False)
            return data.decode(errors="replace").splitlines()

        return await self._run(call)

    async def follow_logs(
        self, ref: str, since: datetime | None = None
    ) -> AsyncGenerator[str, None]:
        """Yield log lines as the container writes them; ends when the container stops."""

        def open_stream() -> Any:
            return self._docker().api.logs(
                ref,
                stdout=True,
                stderr=True,
                stream=True,
                follow=True,
                # A float keeps the sub-second part docker-py drops from a datetime: a
                # confirmation line printed just before `since` must not count.
                since=since.timestamp() if since is not None else None,
            )

        buf = [b""]

        def lines(chunk: bytes | None) -> list[str]:
            if chunk is None:  # end of stream: what is left is the last line
                return [buf[0].decode(errors="replace")] if buf[0] else []
            *done, buf[0] = (buf[0] + chunk).split(b"\n")
            return [line.decode(errors="replace") for line in done]

        async for line in self._stream(ref, open_stream, lines):
            yield line

    async def events(self, labels: dict[str, str]) -> AsyncIterator[ContainerEvent]:
        """Yield the engine's container lifecycle events (start, die, ...) for containers
        with these labels, as they happen, until the engine goes away (DockerUnavailable)."""

        def open_stream() -> Any:
            flt = {"type": "container", "label": [f"{k}={v}" for k, v in labels.items()]}
            return self._docker().api.events(filters=flt, decode=True)

        def parse(event: dict[str, Any] | None) -> list[ContainerEvent]:
            if event is None:
                return []
            attrs = (event.get("Actor") or {}).get("Attributes") or {}
            code = attrs.get("exitCode")
            return [
                ContainerEvent(
                    action=str(event.get("Action") or event.get("status") or ""),
                    container_id=str((event.get("Actor") or {}).get("ID") or event.get("id")),
                    labels={str(k): str(v) for k, v in attrs.items()},
                    exit_code=int(code) if code is not None and str(code).isdigit() else None,
                )
            ]

        async for event in self._stream("events", open_stream, parse):
            yield event

    async def _stream(
        self, ref: str, open_stream: Callable[[], Any], items: Callable[[Any], list[T]]
    ) -> AsyncIterator[T]:
        """Run a blocking docker-py stream in a worker thread and yield what `items` makes of
        each chunk (and of None, at the end). Leaving the iterator closes the stream, which
        frees the thread even if the engine stays silent."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[T] | BaseException | None] = asyncio.Queue()
        holder: dict[str, Any] = {}

        def pump() -> None:
            try:
                stream = open_stream()
                holder["stream"] = stream
                for chunk in stream:
                    if out := items(chunk):
                        loop.call_soon_threadsafe(queue.put_nowait, out)
                if out := items(None):
                    loop.call_soon_threadsafe(queue.put_nowait, out)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except BaseException as e:
                if holder.get("closed"):
                    loop.call_soon_threadsafe(queue.put_nowait, None)
                else:
                    loop.call_soon_threadsafe(queue.put_nowait, e)

        worker = loop.run_in_executor(self._pool, _translate(pump))
        try:
            while True:
                batch = await queue.get()
                if batch is None:
                    return
                if isinstance(batch, docker.errors.NotFound):
                    raise ContainerMissing(ref) from batch
                if isinstance(batch, BaseException):
                    raise DockerUnavailable(_short(str(batch)), host=self.host) from batch
                for item in batch:
                    yield item
        finally:
            holder["closed"] = True
            stream = holder.get("stream")
            if stream is not None:
                with contextlib.suppress(Exception):
                    await loop.run_in_executor(self._pool, stream.close)
            worker.cancel()

    async def stats(self, ref: str) -> Usage | None:
        def call() -> Usage | None:
            try:
                s = self._docker().api.stats(ref, stream=False)
            except docker.errors.NotFound:
                return None
            return usage_from_stats(s)

        # The engine samples for about a second: everyone asking meanwhile shares the answer.
        return await self._flights.run(("stats", ref), lambda: self._run(call))

    async def pause(self, ref: str) -> None:
        await self._run(self._container_call, ref, "pause")

    async def unpause(self, ref: str) -> None:
        await self._run(self._container_call, ref, "unpause")

    async def read_archive(self, ref: str, path: str, out: BinaryIO) -> int:
        """Stream a tar of `path` in the container into `out`, chunk by chunk, all in a
        worker thread: memory stays at one chunk whatever the size. Returns bytes read."""

        def call() -> int:
            try:
                stream, _ = self._docker().api.get_archive(ref, path, chunk_size=ARCHIVE_CHUNK)
            except docker.errors.NotFound as e:
                raise ContainerMissing(ref) from e
            total = 0
            for chunk in stream:
                out.write(chunk)
                total += len(chunk)
            return total

        return await self._run(call)

    async def path_exists(self, ref: str, path: str) -> bool:
        """Whether `path` exists in the container: the engine's stat (HEAD), no archive."""

        def call() -> bool:
            api = self._docker().api
            resp = api.head(api._url("/containers/{0}/archive", ref), params={"path": path})
            if resp.status_code == 404:
                # The same status says "no such container" and "no such path": tell them apart.
                api.inspect_container(ref)
                return False
            api._raise_for_status(resp)
            return True

        return await self._run(call)

    async def read_file(self, ref: str, path: str, limit: int) -> FoundFile | None:
        """One file of the container (a created one too: its volumes are mounted for this),
        read whole when it is a regular file of at most `limit` bytes; None when absent."""

        def call() -> FoundFile | None:
            try:
                stream, stat = self._docker().api.get_archive(ref, path, chunk_size=ARCHIVE_CHUNK)
            except docker.errors.NotFound as e:
                if "no such container" in _explain(e).lower():
                    raise ContainerMissing(ref) from e
                return None
            if int(stat.get("size") or 0) > limit:
                stream.close()
                return FoundFile(None, (0, 0), f"is larger than {limit // 1024**2} MiB")
            raw = b"".join(stream)
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                member = tar.next()
                if member is None or not member.isfile():
                    return FoundFile(None, (0, 0), "is not a regular file")
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                return FoundFile(data, (member.uid, member.gid))

        return await self._run(call)

    async def write_archive(self, ref: str, path: str, data: BinaryIO) -> None:
        """Extract a tar read from `data` (streamed, chunked upload) into `path`."""

        def call() -> None:
            def chunks() -> Iterator[bytes]:
                while block := data.read(ARCHIVE_CHUNK):
                    yield block

            try:
                ok = self._docker().api.put_archive(ref, path, chunks())
            except docker.errors.NotFound as e:
                raise ContainerMissing(ref) from e
            if not ok:
                raise DockerError(f"The Docker engine did not accept the archive for {path}.")

        await self._run(call)

    async def volume_on_disk(self, ref: str, path: str, volume: str) -> VolumeOnDisk:
        """Whether the files of `volume` (mounted at `path` in container `ref`) can be read
        from this machine's disk with the same meaning the engine's archive gives them: the
        engine answers on a local unix socket, maps no user ids (rootless, userns-remap),
        and keeps the volume as a plain directory (local driver, no mount options). Also the
        engine's own mtime of `path`, which the caller compares with its directory's, so a
        socket forwarded from another machine can never pass for this one's engine."""

        def call() -> VolumeOnDisk:
            api = self._docker().api
            # docker-py names every unix-socket engine so (ssh and npipe get other names).
            if api.base_url != "http+docker://localhost":
                return VolumeOnDisk(None, "the engine is not reached through a local socket")
            if self._maps_ids is None:
                options = " ".join(api.info().get("SecurityOptions") or [])
                self._maps_ids = "name=rootless" in options or "name=userns" in options
            if self._maps_ids:
                return VolumeOnDisk(None, "the engine maps user ids (rootless or userns-remap)")
            try:
                vol = api.inspect_volume(volume)
            except docker.errors.NotFound:
                return VolumeOnDisk(None, f"the engine has no volume {volume}")
            if vol.get("Driver") != "local" or vol.get("Options"):
                return VolumeOnDisk(None, "the volume is not a plain local directory")
            try:
                resp = api.head(api._url("/containers/{0}/archive", ref), params={"path": path})
                api._raise_for_status(resp)
            except docker.errors.NotFound as e:
                raise ContainerMissing(ref) from e
            stat = json.loads(base64.b64decode(resp.headers["X-Docker-Container-Path-Stat"]))
            return VolumeOnDisk(str(vol.get("Mountpoint") or ""), mtime=str(stat.get("mtime")))

        return await self._run(call)

    def _container_call(self, ref: str, method: str, **kwargs: Any) -> None:
        api = self._docker().api
        try:
            getattr(api, method)(ref, **kwargs)
        except docker.errors.NotFound as e:
            raise ContainerMissing(ref) from e


_UNREACHABLE = ("no such host", "dial tcp", "timeout", "connection refused", "TLS handshake")


def _registry_error(image: str, error: docker.errors.APIError) -> PeonError:
    text = _explain(error)
    if any(s in text for s in _UNREACHABLE):
        return UpdateCheckFailed(image, f"its registry could not be reached ({text})")
    if isinstance(error, docker.errors.NotFound) or any(
        s in text for s in ("denied", "unauthorized", "not found", "unknown")
    ):
        return UpdateCheckFailed(image, f"its registry has no such image or denied access ({text})")
    return UpdateCheckFailed(image, text)


def _pull_error(image: str, error: BaseException) -> PeonError:
    if isinstance(error, ImageUnavailable):
        return error
    if isinstance(error, docker.errors.NotFound):
        return ImageUnavailable(image, "no such image, or the registry denied access")
    if isinstance(error, docker.errors.APIError):
        text = _explain(error)
        if any(s in text for s in _UNREACHABLE):
            return ImageUnavailable(image, f"the registry could not be reached ({text})")
        if "denied" in text or "not found" in text or "manifest unknown" in text:
            return ImageUnavailable(image, "no such image, or the registry denied access")
        return ImageUnavailable(image, text)
    if isinstance(error, requests.exceptions.ConnectionError | docker.errors.DockerException):
        return DockerUnavailable(_short(str(error)))
    if isinstance(error, PeonError):
        return error
    return ImageUnavailable(image, _short(str(error)))


def _summary_info(summary: dict[str, Any]) -> ContainerInfo:
    names = summary.get("Names") or [""]
    host_ports = {
        f"{p['PrivatePort']}/{p.get('Type', 'tcp')}": int(p["PublicPort"])
        for p in summary.get("Ports") or []
        if p.get("PublicPort")
    }
    return ContainerInfo(
        id=str(summary["Id"]),
        name=str(names[0]).lstrip("/"),
        image=str(summary.get("Image", "")),
        image_id=str(summary.get("ImageID", "")),
        status=str(summary.get("State", "unknown")),
        health=None,
        started_at=None,
        finished_at=None,
        exit_code=None,
        labels=dict(summary.get("Labels") or {}),
        host_ports=host_ports,
    )


def _container_info(attrs: dict[str, Any]) -> ContainerInfo:
    state = attrs.get("State") or {}
    cfg = attrs.get("Config") or {}
    env: dict[str, str] = {}
    for item in cfg.get("Env") or []:
        k, _, v = item.partition("=")
        env[k] = v
    host_ports: dict[str, int] = {}
    bindings = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    for cport, binds in bindings.items():
        for b in binds or []:
            if b.get("HostPort"):
                host_ports[cport] = int(b["HostPort"])
    health = (state.get("Health") or {}).get("Status")
    running = bool(state.get("Running"))
    return ContainerInfo(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name", "")).lstrip("/"),
        image=str(cfg.get("Image", "")),
        image_id=str(attrs.get("Image", "")),
        status=str(state.get("Status", "unknown")),
        health=health,
        started_at=_parse_time(state.get("StartedAt")),
        finished_at=_parse_time(state.get("FinishedAt")),
        exit_code=None if running else state.get("ExitCode"),
        labels=dict(cfg.get("Labels") or {}),
        env=env,
        host_ports=host_ports,
    )


def usage_from_stats(s: dict[str, Any]) -> Usage:
    """CPU percent over the engine's sampling interval and memory without page cache."""
    cpu, pre = s.get("cpu_stats") or {}, s.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (
        pre.get("cpu_usage") or {}
    ).get("total_usage", 0)
    sys_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or [1])
    percent = (cpu_delta / sys_delta) * online * 100.0 if sys_delta > 0 and cpu_delta > 0 else 0.0
    mem = s.get("memory_stats") or {}
    detail = mem.get("stats") or {}
    cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))
    used = max(0, int(mem.get("usage", 0)) - int(cache))
    return Usage(round(percent, 1), used, int(mem.get("limit", 0)))
