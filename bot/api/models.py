"""The HTTP API's request and response bodies: what handlers validate with and render through,
and what the OpenAPI document is generated from (bot/api/openapi.py), so the two never drift."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SERVER_NAME = r"^[a-z0-9][a-z0-9-]{0,31}$"


class _In(BaseModel):
    """A request body: unknown fields are refused, so a typo is never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Out):
    code: str = Field(description="Stable machine-readable name, e.g. server_not_found.")
    message: str = Field(description="One sentence for the person who made the request.")


class ErrorOut(_Out):
    error: ErrorDetail


class PortOut(_Out):
    name: str
    host: int
    container: int
    protocol: str


class ServerOut(_Out):
    name: str
    warplan: str
    host: str = Field(description="The Docker host it lives on.")
    state: str = Field(description="running, stopped, missing, unreachable, creating...")
    operation: str | None = Field(description="The operation holding it now, if any.")
    ports: list[PortOut]
    created_at: datetime
    created_by: str


class ServerList(_Out):
    servers: list[ServerOut]


class ServerDetail(ServerOut):
    address: str = Field(description="Where players connect.")
    health: str | None = None
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    memory_limit: int | None = None
    players_online: int | None = Field(
        default=None, description="Players on it now, when its war plan can count them."
    )
    players: list[str] = Field(default_factory=list)
    variables: dict[str, str] = Field(description="Its settings; secret ones masked.")


class ServerCreate(_In):
    warplan: str = Field(min_length=1, max_length=64)
    name: str = Field(pattern=SERVER_NAME)
    variables: dict[str, str] = Field(default_factory=dict, max_length=100)
    host: str | None = Field(default=None, description="Docker host; unset: most free memory.")


class UpdateIn(_In):
    pull: bool = Field(default=True, description="false: recreate from the local image.")


class SettingsIn(_In):
    variables: dict[str, str] = Field(
        min_length=1, max_length=100,
        description="Variables to change; an empty value puts one back to its default.",
    )  # fmt: skip


class SettingsOut(_Out):
    server: str
    variables: dict[str, str] = Field(description="Secret ones masked.")


# What bot/consoles.py check_command accepts: something besides white space, and no line break
# or other control character. Stated in the document only; the core refuses with its sentence.
CONSOLE_COMMAND = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"


class ConsoleIn(_In):
    command: str = Field(
        min_length=1, max_length=1000, json_schema_extra={"pattern": CONSOLE_COMMAND}
    )


class ConsoleOut(_Out):
    server: str
    how: str = Field(description="How it was sent, e.g. on its console.")
    reply: str


class LogsOut(_Out):
    server: str
    lines: list[str]


class OperationAccepted(_Out):
    operation: str = Field(description="Its id; its progress and end come on /api/v1/events.")
    action: str
    server: str
    after: int = Field(description="Read /api/v1/events?after=this to follow it.")


class OperationOut(_Out):
    operation: str
    action: str
    server: str
    actor: str
    state: Literal["running", "done", "failed"]
    error: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)


class BackupOut(_Out):
    id: int
    server: str
    created_at: datetime
    complete: bool
    size: int
    seconds: float
    trigger: str
    actor: str
    locked: bool
    warplan: str


class BackupList(_Out):
    backups: list[BackupOut]


class LockIn(_In):
    locked: bool


class ScheduleRun(_Out):
    action: str
    at: datetime


class ScheduleOut(_Out):
    id: int
    server: str
    kind: str
    description: str
    paused: bool
    created_by: str
    next: list[ScheduleRun]


class ScheduleList(_Out):
    schedules: list[ScheduleOut]


class ScheduleCreate(_In):
    """One of: window (days, start, stop), idle (after), cron (cron, action), timer (after or
    at, action); as /schedule add in Discord."""

    kind: Literal["window", "idle", "cron", "timer"]
    days: str | None = Field(default=None, max_length=64, description="window: e.g. fri-sun")
    start: str | None = Field(default=None, max_length=16, description="window: e.g. 18:00")
    stop: str | None = Field(default=None, max_length=16, description="window: e.g. 23:30")
    after: str | None = Field(default=None, max_length=32, description="idle/timer: e.g. 30m")
    at: str | None = Field(default=None, max_length=16, description="timer: HH:MM")
    cron: str | None = Field(default=None, max_length=128, description="cron: 5 fields")
    action: Literal["start", "stop", "restart", "update", "console"] = "stop"
    command: str | None = Field(default=None, max_length=500, description="cron console")
    only_when_running: bool = False
    zone: str | None = Field(default=None, max_length=64)


class PauseIn(_In):
    paused: bool


class VariableOut(_Out):
    name: str
    description: str
    type: str
    default: str | None = Field(description="Never shown for secret variables.")
    required: bool
    secret: bool
    choices: list[str] | None = None


class WarplanOut(_Out):
    name: str
    title: str
    description: str
    image: str
    variables: list[VariableOut]


class WarplanList(_Out):
    warplans: list[WarplanOut]
    errors: list[str] = Field(description="Plan files that failed to load.")


class HostOut(_Out):
    name: str
    reachable: bool
    error: str
    version: str | None
    servers: int
    allocated_memory: int
    memory: int | None
    cpus: int | None


class HostList(_Out):
    hosts: list[HostOut]


class EventOut(_Out):
    """One event of the stream (also each SSE message's data). Player tokens get no actor,
    detail or payload."""

    id: int
    at: datetime
    kind: str
    server: str | None
    ok: bool
    actor: str | None = None
    detail: str | None = None
    payload: dict[str, Any] | None = None


class EventList(_Out):
    events: list[EventOut]


class Deleted(_Out):
    deleted: str


class TokenOut(_Out):
    """The calling token: what a client (the dashboard) shows and which buttons it offers."""

    name: str
    role: str
    server: str | None = Field(description="The one server it is for, if any.")
    may: list[str] = Field(description="Actions it may take (start, stop, logs...).")


# The original PEON orchestrator's API 1.0 (the-peon-project/peon-orc, commit 431b5f2^,
# documentation/api/1.0/peon-api-v1.0.yml: definitions servers, servers.settings.*).


class CompatSetting(BaseModel):
    type: Literal["env", "json", "txt"]
    name: str = Field(max_length=200)
    content: Any


class CompatServerCreate(BaseModel):
    # Extra fields (start_later...) are accepted as the original did.
    game_uid: str = Field(min_length=1, max_length=64)
    servername: str = Field(min_length=1, max_length=64)
    description: str = Field(default="", max_length=500)
    settings: list[CompatSetting] = Field(default_factory=list, max_length=50)
    start_later: bool | str = Field(default=False, description="Create without starting.")


class CompatServerOut(BaseModel):
    game_uid: str
    servername: str
    container_state: str
    server_state: str
    description: str
    server_config: dict[str, str]
    time: int | None = None


class CompatStatus(BaseModel):
    status: Literal["success", "error"]
    info: str


MODELS: list[type[BaseModel]] = [
    ErrorOut, ServerList, ServerDetail, ServerCreate, UpdateIn, SettingsIn, SettingsOut,
    ConsoleIn, ConsoleOut, LogsOut, OperationAccepted, OperationOut, BackupList, BackupOut,
    LockIn, ScheduleList, ScheduleOut, ScheduleCreate, PauseIn, WarplanList, WarplanOut,
    HostList, EventList, EventOut, Deleted, TokenOut, CompatServerCreate, CompatServerOut,
    CompatStatus,
]  # fmt: skip
