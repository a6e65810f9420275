"""Frozen value objects shared by the services and the edges (CLI, cogs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class ServerState(StrEnum):
    """What PEON last knew of a server; `status()` adds what the engine says now."""

    CREATING = "creating"  # record and port reservations written, container not yet made
    STOPPED = "stopped"
    RUNNING = "running"
    MISSING = "missing"  # the record's container vanished outside PEON
    DELETING = "deleting"


def human_duration(seconds: float | None) -> str:
    """'3m 05s', '2h 07m', '4d 3h'; '-' when unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d {h}h" if d else f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s"


@dataclass(frozen=True)
class PortBinding:
    name: str
    container: int
    protocol: str
    host: int

    def __str__(self) -> str:
        return f"{self.name} {self.host}/{self.protocol}"


@dataclass(frozen=True)
class ServerRecord:
    name: str
    warplan: str
    image: str
    variables: dict[str, str]
    state: ServerState
    container_id: str | None
    ports: tuple[PortBinding, ...]
    created_at: datetime
    updated_at: datetime
    created_by: str
    operation: str | None = None  # held by a live process
    host: str = "local"  # the Docker host ("camp") the server lives on
    interrupted: str | None = None  # the operation of a dead process that still holds the lease
    restoring: dict[str, Any] | None = None  # an unfinished restore: {"backup", "safety"}


@dataclass(frozen=True)
class StaleLease:
    """A lease whose owner process is gone."""

    name: str
    operation: str
    owner: str


@dataclass(frozen=True)
class BoardMessage:
    """Where a guild's status board is posted, and a digest of what it shows."""

    guild_id: int
    channel_id: int
    message_id: int | None  # None: to be posted (again) at the next refresh
    digest: str  # of the last payload sent; the same payload is not sent again


@dataclass(frozen=True)
class Schedule:
    """One schedule row: kind is window|idle|cron|timer; spec holds its settings."""

    id: int
    server: str
    kind: str
    spec: dict[str, Any]
    paused: bool
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class BackupVolume:
    """One volume's archive inside a backup: `file` (relative to the backup's directory)
    is a zstd-compressed tar of the volume, as the engine exports it from `path`."""

    name: str
    path: str
    file: str
    size: int
    # The archive's checksum: BLAKE3 since it is fast on every CPU (several GB/s on one core
    # with SIMD, where SHA-256 without SHA extensions cost as much CPU as compressing);
    # SHA-256 in backups made before, which stay verifiable.
    sha256: str = ""
    blake3: str = ""


@dataclass(frozen=True)
class Backup:
    id: int
    server: str
    dir: str
    created_at: datetime
    complete: bool
    size: int
    seconds: float
    trigger: str  # manual | schedule | before-{update,settings,restore,purge}
    actor: str
    locked: bool
    warplan: str
    image: str
    volumes: tuple[BackupVolume, ...]
    owner: str | None = None  # the process writing it, while incomplete
    # Repository backups: {repository: {volume: restic snapshot id}}; {} for .tar.zst files.
    stored: dict[str, dict[str, str]] = field(default_factory=dict, hash=False, compare=False)
    added: int | None = None  # bytes new to the repository (None: a full copy, `size`)

    @property
    def where(self) -> str:
        """Where it is stored: its repositories, or 'files' (a .tar.zst per volume)."""
        return ", ".join(sorted(self.stored)) if self.stored else "files"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    server: str | None
    ok: bool
    detail: str


@dataclass(frozen=True)
class EngineInfo:
    version: str
    api_version: str
    os: str
    containers_running: int
    memory: int = 0  # bytes the engine's machine has
    cpus: int = 0


@dataclass(frozen=True)
class ContainerEvent:
    """One container lifecycle event from an engine (start, die, stop, ...)."""

    action: str
    container_id: str
    labels: dict[str, str]
    exit_code: int | None = None


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    created: str


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    image: str
    image_id: str
    status: str  # created|running|paused|restarting|removing|exited|dead
    health: str | None
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    labels: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    host_ports: dict[str, int] = field(default_factory=dict)  # "7777/tcp" -> 30001

    @property
    def running(self) -> bool:
        return self.status in ("running", "restarting", "paused")


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    labels: dict[str, str]
    mountpoint: str


@dataclass(frozen=True)
class Usage:
    cpu_percent: float
    memory_bytes: int
    memory_limit: int


@dataclass(frozen=True)
class ServerStatus:
    record: ServerRecord
    container: ContainerInfo | None
    usage: Usage | None
    address: str
    hang_check: str | None = None  # how the crash watch asks it whether it hangs, or why not

    @property
    def state(self) -> str:
        if self.record.operation:
            return self.record.operation
        if self.container is None:
            return "missing" if self.record.state != ServerState.CREATING else "creating"
        return self.container.status

    def uptime(self, now: datetime) -> float | None:
        c = self.container
        if c is None or not c.running or c.started_at is None:
            return None
        return max(0.0, (now - c.started_at).total_seconds())

    def endpoints(self) -> list[str]:
        return [f"{self.address}:{p.host}" for p in self.record.ports]


@dataclass(frozen=True)
class PullProgress:
    image: str
    current: int
    total: int
    layers_done: int
    layers: int
    status: str

    @property
    def fraction(self) -> float | None:
        return self.current / self.total if self.total else None


@dataclass(frozen=True)
class Phase:
    """A step of a long operation, for progress displays."""

    server: str
    step: str  # pulling|creating|starting|waiting for ready|stopping|ready|...
    detail: str = ""


ProgressEvent = PullProgress | Phase


@dataclass(frozen=True)
class StartResult:
    name: str
    address: str
    ports: tuple[PortBinding, ...]
    seconds: float
    already_running: bool = False

    def connect(self) -> str:
        main = self.ports[0] if self.ports else None
        return f"{self.address}:{main.host}" if main else self.address


@dataclass(frozen=True)
class ReconcileReport:
    adopted: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # containers we could not adopt
    missing: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    finished_deletes: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)  # hosts (and servers) left as they were
    installers: list[str] = field(default_factory=list)  # a dead process's installers removed

    def lines(self) -> list[str]:
        out = []
        for label, names in (
            ("adopted", self.adopted),
            ("orphaned containers (no war plan)", self.orphans),
            ("missing containers", self.missing),
            ("rolled back unfinished creates", self.rolled_back),
            ("finished interrupted deletes", self.finished_deletes),
            ("interrupted operations", self.interrupted),
            ("removed leftover installers", self.installers),
            ("not reconciled, host unreachable", self.unreachable),
        ):
            if names:
                out.append(f"{label}: {', '.join(sorted(names))}")
        return out


@dataclass(frozen=True)
class InstallRecord:
    """A server's install step: whether it completed, and its last run (log secrets masked)."""

    server: str
    installed: bool
    image: str
    started_at: datetime
    finished_at: datetime | None
    ok: bool | None  # None: never finished (running, or its process was killed)
    exit_code: int | None
    seconds: float
    log: str


@dataclass(frozen=True)
class ApiToken:
    """An HTTP API token as stored: never the token itself (only its hash is kept)."""

    name: str
    role: str  # admin | operator | player
    server: str | None  # the one server it is for; None: every server
    created_at: datetime
    created_by: str
