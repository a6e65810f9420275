"""War plans: per-game recipes loaded from warplans/*.yaml into frozen, validated models.

The schema is documented in docs/warplans.md; `warplan_json_schema()` exports it for editors.
A bad file is reported with its path, the field and the reason, and never stops the other
plans from loading.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.configfiles import key_problem
from bot.errors import VariableError, WarplanError, WarplanNotFound
from bot.patterns import compile_pattern
from bot.sizes import parse_size

SLUG = r"^[a-z0-9][a-z0-9-]{0,31}$"
VAR_NAME = r"^[a-z][a-z0-9_]{0,47}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A container user as Docker takes it: a numeric id or a name, each with an optional group.
USER = r"([0-9]+|[a-z_][a-z0-9_.-]{0,31})(:([0-9]+|[a-z_][a-z0-9_.-]{0,31}))?"
UID_MAX = 2**31 - 1
SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL")
# Templates of plan text (env values, command, files): {server}, {memory}, {port:NAME},
# {var:NAME}, {env:NAME}. Anything else in braces is left alone (scripts full of ${...}).
_TEMPLATE = re.compile(
    r"\{(server|memory|port:[a-z0-9-]+|var:[a-z][a-z0-9_]*|env:[A-Za-z_][A-Za-z0-9_]*)\}"
)
_TEMPLATE_LIKE = re.compile(r"\{(port|var|env):([^{}]*)\}")  # to refuse misspelt ones
# A user's value fills only these: a typed {var:...} must never reveal another (secret) value.
_USER_TEMPLATE = re.compile(r"\{(server|port:[a-z0-9-]+)\}")
MIB = 1024**2
FILE_FORMATS = ("text", "properties", "ini", "json", "yaml", "xml", "lines")
GENERATED_BYTES = 18  # a generated secret: 24 URL-safe characters
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}

Slug = Annotated[str, Field(pattern=SLUG)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a valid regular expression ({e})") from e
        # Plans' regexes run with RE2 (bot/patterns.py): one it cannot run is refused at load
        # time, not when a server first prints a line.
        compile_pattern(value)
    return value


class PortSpec(_Model):
    name: Slug
    container: int | Literal["host"] = Field(
        description="The port inside the container, or 'host': the same number as the host "
        "port PEON allocates (for games that listen on, and announce, the port they are given)."
    )
    protocol: Literal["tcp", "udp"] = "tcp"
    host: int | Literal["auto"] = Field(
        default="auto", description="A fixed host port, or 'auto' for one from the port pool."
    )
    same_as: Slug | None = Field(
        default=None,
        description="Take the host port number allocated to this other port of the plan (of "
        "the other protocol): a game listening on one number for both tcp and udp.",
    )
    description: str = ""

    @field_validator("host")
    @classmethod
    def _host_range(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 65535:
            raise ValueError("must be between 1 and 65535 or 'auto'")
        return v

    @field_validator("container")
    @classmethod
    def _container_range(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 65535:
            raise ValueError("must be between 1 and 65535 or 'host'")
        return v

    @model_validator(mode="after")
    def _same_as_auto(self) -> PortSpec:
        if self.same_as is not None and self.host != "auto":
            raise ValueError("'same_as' takes its host port from the other port; leave 'host' out")
        return self


class VariableSpec(_Model):
    name: Annotated[str, Field(pattern=VAR_NAME)]
    env: Annotated[str, Field(pattern=ENV_NAME)] | None = Field(
        default=None,
        description="The environment variable it sets; may be left out when a file of the "
        "plan uses it as {var:NAME} instead.",
    )
    description: str = ""
    type: Literal["string", "int", "bool", "choice"] = "string"
    default: str | int | bool | None = None
    required: bool = False
    secret: bool = False
    pattern: str | None = None
    min: int | None = None
    max: int | None = None
    choices: list[str] | None = None
    generate: bool = Field(
        default=False,
        description="A secret left empty at create gets a random value, stored as the secret.",
    )
    create_only: bool = Field(
        default=False,
        description="Set only when the server is created (e.g. a world name whose change would "
        "start a new world): /server settings and `peon server set` refuse to change it.",
    )

    _pattern_ok = field_validator("pattern")(_check_regex)

    @model_validator(mode="after")
    def _consistent(self) -> VariableSpec:
        if self.type == "choice" and not self.choices:
            raise ValueError("a 'choice' variable needs a non-empty 'choices' list")
        if self.type != "choice" and self.choices:
            raise ValueError("'choices' only applies to type 'choice'")
        if (self.min is not None or self.max is not None) and self.type != "int":
            raise ValueError("'min'/'max' only apply to type 'int'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("'min' is larger than 'max'")
        if self.pattern is not None and self.type != "string":
            raise ValueError("'pattern' only applies to type 'string'")
        if self.generate and not (self.secret and self.type == "string"):
            raise ValueError("'generate' only applies to a secret string")
        if self.generate and (self.required or self.default not in (None, "")):
            raise ValueError("a generated secret has neither 'required' nor a 'default'")
        if self.default is not None and "{server}" not in str(self.default):
            # A default must itself be acceptable, or every create with defaults would fail.
            try:
                coerce_value(self, _default_text(self.default))
            except VariableError as e:
                raise ValueError(f"default does not fit: {e.reason}") from e
        return self

    def default_text(self, server: str) -> str | None:
        """The default as the user would type it, with {server} filled in."""
        if self.default is None:
            return None
        return _default_text(self.default).replace("{server}", server)


def _default_text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class VolumeSpec(_Model):
    name: Slug
    path: str = Field(description="Absolute path inside the container.")
    backup: bool = True

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/"):
            raise ValueError("must be an absolute path without '..'")
        return v


class FileSpec(_Model):
    """A config file written into a volume before each start (or only when missing)."""

    path: str = Field(description="Relative path inside the volume, without '..'.")
    volume: Slug | None = Field(default=None, description="Default: the plan's first volume.")
    format: Literal[FILE_FORMATS] = "text"  # type: ignore[valid-type]
    content: str | None = Field(default=None, description="format text: the whole file.")
    set: dict[str, str | int | float | bool] | None = Field(
        default=None,
        description="Structured formats: key -> value (template); the rest of an existing "
        "file is kept.",
    )
    template: bool = Field(default=True, description="false: written verbatim.")
    mode: str = Field(default="0644", description="Octal permissions as text.")
    when: Literal["always", "missing"] = "always"

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if not v or v.startswith("/") or ".." in v.split("/") or "\0" in v:
            raise ValueError("must be a relative path inside the volume, without '..'")
        norm = posixpath.normpath(v)
        if norm in (".", "") or v.endswith("/"):
            raise ValueError("must name a file")
        return norm

    @field_validator("mode", mode="before")
    @classmethod
    def _octal(cls, v: Any) -> Any:
        # YAML reads an unquoted 0644 as the number 420: only text says what was meant.
        if not isinstance(v, str) or not re.fullmatch(r"0?[0-7]{3,4}", v) or int(v, 8) > 0o7777:
            raise ValueError('must be octal permissions as quoted text, e.g. "0644"')
        return v

    @model_validator(mode="after")
    def _fits(self) -> FileSpec:
        if self.format == "text":
            if self.set is not None:
                raise ValueError("'set' applies to properties, ini, json, yaml, xml and lines; "
                                 "a text file takes 'content'")  # fmt: skip
            if self.content is None:
                raise ValueError("a text file needs 'content'")
            return self
        if self.content is not None:
            raise ValueError(f"format '{self.format}' takes 'set' (keys to change), not 'content'")
        if not self.set:
            raise ValueError(f"format '{self.format}' needs 'set' with at least one key")
        for key in self.set:
            problem = key_problem(self.format, key)
            if problem:
                raise ValueError(f"set: key '{key}' {problem}")
        if self.format == "xml" and len({k.split(".")[0] for k in self.set}) > 1:
            raise ValueError("set: every xml key starts with the same root element")
        return self

    def texts(self) -> list[str]:
        """The plan text that gets templates filled."""
        if not self.template:
            return []
        return [self.content or "", *(v for v in (self.set or {}).values() if isinstance(v, str))]


class ResourcesSpec(_Model):
    memory: str | None = Field(default=None, description="Memory limit, e.g. 4g or 512m.")
    cpus: float | None = Field(default=None, gt=0, le=256)

    @field_validator("memory")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and parse_size(v) < 6 * 1024**2:
            raise ValueError("must be at least 6m (Docker's minimum)")
        return v

    @property
    def memory_bytes(self) -> int | None:
        return parse_size(self.memory) if self.memory else None


class ReadySpec(_Model):
    log: str | None = Field(default=None, description="Regex on the server's log that means ready.")
    port: str | None = Field(default=None, description="Name of a tcp port that must accept.")
    timeout: int = Field(default=300, ge=1, le=7200)

    _log_ok = field_validator("log")(_check_regex)


class StopSpec(_Model):
    signal: Literal[SIGNALS] = "SIGTERM"  # type: ignore[valid-type]
    console: str | None = Field(default=None, description="Command written to the server's stdin.")
    exec: list[str] | None = Field(default=None, description="Command run inside the container.")
    grace: int = Field(default=30, ge=0, le=3600, description="Seconds before the kill.")

    @model_validator(mode="after")
    def _one_way(self) -> StopSpec:
        if self.console is not None and self.exec is not None:
            raise ValueError("give either 'console' or 'exec', not both")
        return self


CONSOLE_COMMAND_MAX = 1000  # Source RCON bodies stay far below 4096 bytes with this


class ConsoleSpec(_Model):
    """How PEON reaches the server's console. Every console use goes this way: `say`, a save
    or stop `command` given as text, cron `console` actions and /server console."""

    via: Literal["stdin", "rcon", "exec"] = Field(
        default="stdin",
        description="stdin: a line on the server's standard input; rcon: Source RCON on a tcp "
        "port of the plan; exec: a program run in the container with the command appended.",
    )
    port: str | None = Field(default=None, description="rcon: name of the plan's RCON tcp port.")
    password: str | None = Field(
        default=None, description="rcon: name of the secret variable that holds the password."
    )
    exec: list[str] | None = Field(
        default=None,
        description="exec: program and arguments run in the container; the command is added "
        "as its last argument (e.g. [rcon-cli]).",
    )
    timeout: int = Field(default=10, ge=1, le=120, description="Seconds to wait for a reply.")

    @model_validator(mode="after")
    def _fits(self) -> ConsoleSpec:
        wants = {"rcon": ("port", "password"), "exec": ("exec",), "stdin": ()}[self.via]
        for name in ("port", "password", "exec"):
            given = getattr(self, name) is not None
            if name in wants and not given:
                raise ValueError(f"via '{self.via}' needs '{name}'")
            if name not in wants and given:
                owner = "exec" if name == "exec" else "rcon"
                raise ValueError(f"'{name}' only applies to via '{owner}'")
        if self.exec is not None and not self.exec:
            raise ValueError("'exec' needs a program")
        return self


class UncountedWhen(_Model):
    """A configuration in which the plan's player count is known to be wrong."""

    env: Annotated[str, Field(pattern=ENV_NAME)]
    pattern: str = Field(description="Regex searched in the server's value of `env`.")
    reason: str = Field(min_length=1, description="One sentence: why players cannot be counted.")

    _pattern_ok = field_validator("pattern")(_check_regex)


class PlayersSpec(_Model):
    protocol: Literal["a2s", "minecraft", "log"]
    port: str | None = Field(default=None, description="Name of the port to query.")
    join: str | None = None
    leave: str | None = None
    uncounted_when: list[UncountedWhen] = Field(
        default_factory=list,
        description="Configurations in which the count is wrong: idle schedules are refused.",
    )

    _join_ok = field_validator("join")(_check_regex)
    _leave_ok = field_validator("leave")(_check_regex)

    @model_validator(mode="after")
    def _fits(self) -> PlayersSpec:
        if self.protocol == "log" and not (self.join and self.leave):
            raise ValueError("protocol 'log' needs both 'join' and 'leave' regexes")
        if self.protocol != "log" and not self.port:
            raise ValueError(f"protocol '{self.protocol}' needs 'port'")
        return self


class SaveSpec(_Model):
    mode: Literal["console", "exec", "pause", "stop", "none"] = "console"
    command: str | list[str] | None = None
    done: str | None = Field(
        default=None,
        description="Regex confirming the save, on the log (and, for exec, the command's output).",
    )
    after: str | list[str] | None = Field(
        default=None,
        description="Run after the archive, also when the backup fails (e.g. save-on).",
    )
    timeout: int = Field(default=60, ge=1, le=3600)

    _done_ok = field_validator("done")(_check_regex)

    @model_validator(mode="after")
    def _fits(self) -> SaveSpec:
        if self.mode in ("console", "exec") and not self.command:
            raise ValueError(f"mode '{self.mode}' needs 'command'")
        if self.after is not None and self.mode not in ("console", "exec"):
            raise ValueError("'after' only applies to modes 'console' and 'exec'")
        for what, value in (("command", self.command), ("after", self.after)):
            if self.mode == "exec" and isinstance(value, str):
                raise ValueError(f"mode 'exec' needs '{what}' as a list (program and arguments)")
            if self.mode == "console" and isinstance(value, list):
                raise ValueError(f"mode 'console' needs '{what}' as one line of text")
        return self


FACTS = (
    "ready",
    "stop",
    "save",
    "volumes",
    "ports",
    "players",
    "say",
    "console",
    "entrypoint",
    "command",
)


class Evidence(_Model):
    """Where the plan's facts about its image were checked: per fact a short note with its
    source, or one that starts with "unverified" and says what could not be checked."""

    version: str = Field(min_length=1, description="Image version, tag or source commit read.")
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="When it was checked.")
    links: list[str] = Field(default_factory=list, description="Sources read.")
    version_tags: bool = Field(
        default=True, description="Whether the image publishes version-pinned tags."
    )
    image_volumes: list[str] = Field(
        default_factory=list, description="The image's own VOLUME paths (image inspect)."
    )
    facts: dict[str, str] = Field(default_factory=dict, description="Per fact: the evidence.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Per environment variable: where the image reads it."
    )

    @field_validator("facts")
    @classmethod
    def _known_facts(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(FACTS))
        if unknown:
            raise ValueError(f"unknown facts {unknown}; known: {', '.join(FACTS)}")
        return v


INSTALL_SCRIPT_MAX = 256 * 1024  # characters; Pterodactyl's longest egg scripts are ~20 KB


class InstallSpec(_Model):
    """A script run once, in a separate installer container, against the server's volumes
    before its first start (and again on reinstall): Pterodactyl's installation step."""

    image: str = Field(
        min_length=1, pattern=r"^[^\s]+$", description="The installer image (pulled if absent)."
    )
    entrypoint: str = Field(
        default="/bin/sh",
        description="The program that runs the script, with its arguments if any (e.g. bash).",
    )
    script: str = Field(
        min_length=1,
        max_length=INSTALL_SCRIPT_MAX,
        description="Written into the installer container and run by the entrypoint.",
    )
    mounts: dict[str, str] | None = Field(
        default=None,
        description="Plan volume name -> path in the installer (default: the plan's paths).",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment (templates allowed), on top of the server's own.",
    )
    timeout: int = Field(default=900, ge=1, le=6 * 3600, description="Seconds; then killed.")

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: str(x) if isinstance(x, float) else
                    _default_text(x) if isinstance(x, bool | int) else x
                    for k, x in v.items()}  # fmt: skip
        return v

    @field_validator("entrypoint")
    @classmethod
    def _program(cls, v: str) -> str:
        try:
            parts = shlex.split(v)
        except ValueError as e:
            raise ValueError(f"cannot be split into program and arguments ({e})") from None
        if not parts:
            raise ValueError("needs a program (e.g. /bin/sh or bash)")
        return v

    @field_validator("mounts")
    @classmethod
    def _paths(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for name, path in (v or {}).items():
            if not path.startswith("/") or ".." in path.split("/"):
                raise ValueError(f"{name}: must be an absolute path without '..'")
            if posixpath.normpath(path) == "/":
                raise ValueError(f"{name}: cannot be mounted over /")
        if v is not None:
            _unique("mounts (path)", [posixpath.normpath(p) for p in v.values()])
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not re.match(ENV_NAME, key):
                raise ValueError(f"'{key}' is not a valid environment variable name")
        return v

    def command(self) -> list[str]:
        """The installer's command line: the entrypoint with the script's path last."""
        return [*shlex.split(self.entrypoint), INSTALL_SCRIPT_PATH]


INSTALL_SCRIPT_PATH = "/peon-install/install.sh"


class WarPlan(_Model):
    name: Slug
    title: str = Field(min_length=1)
    description: str = ""
    image: str = Field(min_length=1, pattern=r"^[^\s]+$")
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    ports: list[PortSpec] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    variables: list[VariableSpec] = Field(default_factory=list)
    volumes: list[VolumeSpec] = Field(default_factory=list)
    files: list[FileSpec] = Field(
        default_factory=list, description="Config files written into volumes before a start."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    ready: ReadySpec = Field(default_factory=ReadySpec)
    stop: StopSpec = Field(default_factory=StopSpec)
    players: PlayersSpec | None = None
    save: SaveSpec | None = None
    say: str | None = Field(
        default=None,
        description="Console command that shows {message} to the players in game (warnings).",
    )
    console: ConsoleSpec | None = Field(
        default=None,
        description="How PEON reaches the console (stdin when not given and the plan uses one).",
    )
    user: str | None = Field(
        default=None,
        description="Run the container as this user: UID[:GID] or a name the image knows "
        "(e.g. 1000:1000); files PEON writes into volumes are owned by it when numeric.",
    )
    links: list[str] = Field(default_factory=list, description="Documentation of the image.")
    verified: Evidence | None = Field(
        default=None, description="Where the plan's facts about the image were checked."
    )
    install: InstallSpec | None = Field(
        default=None,
        description="A script run once in an installer container before the first start.",
    )

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, v: Any) -> Any:
        # YAML turns `true`/`2456` into bool/int; the container wants text.
        if isinstance(v, dict):
            return {
                k: _default_text(x)
                if isinstance(x, bool | int)
                else str(x)
                if isinstance(x, float)
                else x
                for k, x in v.items()
            }
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(USER, v):
            raise ValueError("must be UID[:GID] (e.g. 1000:1000) or a user[:group] name")
        if v is not None and any(p.isdigit() and int(p) > UID_MAX for p in v.split(":")):
            raise ValueError(f"a numeric id must be at most {UID_MAX}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> WarPlan:
        _unique("ports", [p.name for p in self.ports])
        _unique(
            "ports (container port/protocol)",
            [f"{p.container}/{p.protocol}" for p in self.ports if p.container != "host"],
        )
        _unique("ports (same_as)", [p.same_as for p in self.ports if p.same_as])
        by_name = {p.name: p for p in self.ports}
        for p in self.ports:
            leader = by_name.get(p.same_as or "")
            if p.same_as is not None and leader is None:
                raise ValueError(f"ports.{p.name}.same_as: no port named '{p.same_as}'")
            if leader is not None and (leader.same_as is not None or leader is p):
                raise ValueError(f"ports.{p.name}.same_as: '{leader.name}' must have its own port")
            if leader is not None and leader.protocol == p.protocol:
                raise ValueError(
                    f"ports.{p.name}.same_as: '{leader.name}' has the same protocol; one number "
                    "is shared only by a tcp and a udp port"
                )
        _unique("variables", [v.name for v in self.variables])
        _unique("variables (env)", [v.env for v in self.variables if v.env])
        _unique("volumes", [v.name for v in self.volumes])
        _unique("volumes (path)", [v.path for v in self.volumes])
        for key in self.env:
            if not re.match(ENV_NAME, key):
                raise ValueError(f"env: '{key}' is not a valid environment variable name")
        clash = set(self.env) & {v.env for v in self.variables if v.env}
        if clash:
            raise ValueError(f"env and variables both set {sorted(clash)}")
        port_names = {p.name for p in self.ports}
        if self.ready.port is not None:
            ready_port = next((p for p in self.ports if p.name == self.ready.port), None)
            if ready_port is None:
                raise ValueError(f"ready.port: no port named '{self.ready.port}'")
            if ready_port.protocol != "tcp":
                raise ValueError("ready.port: a port check needs a tcp port")
        if self.players and self.players.port and self.players.port not in port_names:
            raise ValueError(f"players.port: no port named '{self.players.port}'")
        if self.players is not None:
            envs = set(self.env) | {v.env for v in self.variables if v.env}
            for rule in self.players.uncounted_when:
                if rule.env not in envs:
                    raise ValueError(f"players.uncounted_when: the plan never sets {rule.env}")
        if self.say is not None and "{message}" not in self.say:
            raise ValueError("say: must contain {message}, where the warning text goes")
        if self.console is not None and self.console.via == "rcon":
            rcon_port = next((p for p in self.ports if p.name == self.console.port), None)
            if rcon_port is None:
                raise ValueError(f"console.port: no port named '{self.console.port}'")
            if rcon_port.protocol != "tcp":
                raise ValueError("console.port: RCON needs a tcp port")
            secret = self.variable(self.console.password or "")
            if secret is None:
                raise ValueError(f"console.password: no variable named '{self.console.password}'")
            if not secret.secret:
                raise ValueError(f"console.password: variable '{secret.name}' must be secret")
        if self.install is not None:
            volume_names = [v.name for v in self.volumes]
            if not volume_names:
                raise ValueError("install: needs a volume of the plan to install into")
            for vol in self.install.mounts or {}:
                if vol not in volume_names:
                    raise ValueError(f"install.mounts: no volume named '{vol}'")
        texts = [
            *self.env.values(),
            *(str(v.default) for v in self.variables),
            *(self.command or []),
            *(self.entrypoint or []),
        ]
        for text in texts:
            self._check_templates("", text)
        for key, value in (self.install.env if self.install else {}).items():
            self._check_templates(f"install.env.{key}: ", value)
        for key, value in self.env.items():
            if "{env:" in value:
                raise ValueError(f"env.{key}: {{env:...}} is for files and commands; use "
                                 "{var:NAME} or the value itself")  # fmt: skip
        self._check_files()
        return self

    def _check_templates(self, where: str, text: str) -> None:
        envs = set(self.env) | {v.env for v in self.variables if v.env}
        for m in _TEMPLATE_LIKE.finditer(text):
            kind, name = m.groups()
            if not _TEMPLATE.fullmatch(m.group(0)):
                raise ValueError(f"{where}template {m.group(0)} is not a valid reference")
            if kind == "port" and name not in {p.name for p in self.ports}:
                raise ValueError(f"{where}template {{port:{name}}} names no port")
            if kind == "var" and self.variable(name) is None:
                raise ValueError(f"{where}template {{var:{name}}} names no variable")
            if kind == "env" and name not in envs:
                raise ValueError(
                    f"{where}template {{env:{name}}} names no environment variable of the plan"
                )

    def _check_files(self) -> None:
        volumes = [v.name for v in self.volumes]
        if self.files and not volumes:
            raise ValueError("files: the plan has no volume to write them into")
        used: set[str] = set()
        for i, spec in enumerate(self.files):
            volume = spec.volume or volumes[0]
            if volume not in volumes:
                raise ValueError(f"files[{i}].volume: no volume named '{volume}'")
            for text in spec.texts():
                self._check_templates(f"files[{i}]: ", text)
                used |= {m.group(1) for m in re.finditer(r"\{var:([a-z][a-z0-9_]*)\}", text)}
        _unique("files", [f"{s.volume or volumes[0]}:{s.path}" for s in self.files])
        for var in self.variables:
            if var.env is None and var.name not in used:
                raise ValueError(
                    f"variables.{var.name}: needs 'env', or a file of the plan that uses "
                    f"{{var:{var.name}}}"
                )

    @property
    def uses_console(self) -> bool:
        """Whether PEON sends the server console commands (or the plan names a console)."""
        return (
            self.console is not None
            or self.stop.console is not None
            or self.say is not None
            or (self.save is not None and self.save.mode == "console")
        )

    @property
    def console_via(self) -> Literal["stdin", "rcon", "exec"] | None:
        """The console's transport, or None when the plan has no console."""
        if self.console is not None:
            return self.console.via
        return "stdin" if self.uses_console else None

    @property
    def stdin_open(self) -> bool:
        """Whether the container needs an open stdin for console commands."""
        return self.console_via == "stdin"

    @property
    def rcon_port(self) -> str | None:
        """The name of the port PEON speaks RCON to, if any."""
        spec = self.console
        return spec.port if spec is not None and spec.via == "rcon" else None

    def variable(self, name: str) -> VariableSpec | None:
        return next((v for v in self.variables if v.name == name), None)


def _unique(what: str, names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what}: duplicate {', '.join(dupes)}")


def coerce_value(spec: VariableSpec, raw: str) -> str:
    """Check one user-typed value against its variable; return the text for the environment."""
    text = raw.strip()
    if spec.type == "int":
        try:
            number = int(text)
        except ValueError:
            raise VariableError(spec.name, "must be a whole number.") from None
        if spec.min is not None and number < spec.min:
            raise VariableError(spec.name, f"must be at least {spec.min}.")
        if spec.max is not None and number > spec.max:
            raise VariableError(spec.name, f"must be at most {spec.max}.")
        return str(number)
    if spec.type == "bool":
        if text.lower() in _TRUE:
            return "true"
        if text.lower() in _FALSE:
            return "false"
        raise VariableError(spec.name, "must be true or false.")
    if spec.type == "choice":
        choices = spec.choices or []  # non-empty: guaranteed by the model validator
        if text not in choices:
            raise VariableError(spec.name, f"must be one of {', '.join(choices)}.")
        return text
    if len(text) > 1024:
        raise VariableError(spec.name, "is longer than 1024 characters.")
    if any(ord(c) < 32 for c in text):
        raise VariableError(spec.name, "must not contain control characters.")
    if spec.pattern is not None and not re.fullmatch(spec.pattern, text):
        # The pattern may reveal the shape of a secret, never its value: both are safe to show.
        raise VariableError(spec.name, f"does not match the pattern {spec.pattern}.")
    return text


def _refuse_unknown(plan: WarPlan, given: Mapping[str, str]) -> None:
    known = {v.name for v in plan.variables}
    for name in given:
        if name not in known:
            hint = f" Known: {', '.join(sorted(known))}." if known else ""
            raise VariableError(name, f"this war plan has no such variable.{hint}")


def resolve_variables(plan: WarPlan, given: Mapping[str, str], server: str) -> dict[str, str]:
    """Validate what a user chose against the plan; return every variable's value by name.

    Unknown names are refused; missing ones take the default ({server} filled in); a required
    variable without a value and without a default is refused.
    """
    _refuse_unknown(plan, given)
    values: dict[str, str] = {}
    for spec in plan.variables:
        raw = given.get(spec.name)
        if raw is None or (raw.strip() == "" and spec.type != "string"):
            raw = spec.default_text(server)
        if spec.generate and (raw is None or raw.strip() == ""):
            # Never the image's own default (a remote-admin password everyone knows): a
            # random one, kept as the server's secret like a typed one.
            raw = secrets.token_urlsafe(GENERATED_BYTES)
        if raw is None or (spec.required and raw.strip() == ""):
            if spec.required:
                raise VariableError(spec.name, "is required.")
            continue
        values[spec.name] = coerce_value(spec, raw)
    return values


def change_variables(
    plan: WarPlan, current: Mapping[str, str], given: Mapping[str, str], server: str
) -> tuple[dict[str, str], list[str]]:
    """A settings change of an existing server: its variables with `given` applied and
    validated as at create, and the names of those whose value changed (sorted).

    An empty value keeps a secret as it is and puts any other variable back to its default.
    Changing a `create_only` variable is refused; one the server never had (the plan gained
    it later) is left unset unless given.
    """
    _refuse_unknown(plan, given)
    merged = dict(current)
    for name, raw in given.items():
        spec = plan.variable(name)
        if raw.strip():
            merged[name] = raw
        elif spec is not None and not spec.secret:
            merged.pop(name, None)
    values = resolve_variables(plan, merged, server)
    for spec in plan.variables:
        if spec.create_only and spec.name not in given:
            if spec.name in current:
                values[spec.name] = current[spec.name]
            else:
                values.pop(spec.name, None)
    changed = sorted(k for k in values.keys() | current.keys() if values.get(k) != current.get(k))
    for name in changed:
        spec = plan.variable(name)
        if spec is not None and spec.create_only:
            raise VariableError(
                name,
                "is set only when the server is created; create another server to use "
                "another value.",
            )
    return values, changed


def fill_template(
    text: str,
    server: str,
    host_ports: Mapping[str, int],
    *,
    variables: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    memory: int | None = None,
) -> str:
    """Replace {server}, {port:NAME} (the host port given to port NAME), {memory} (MiB of
    `memory` bytes, empty without a limit), {var:NAME} and {env:NAME} (from `variables` and
    `env`; left as written when those are not given). Single pass: a filled-in value is
    never read as a template."""

    def sub(m: re.Match[str]) -> str:
        kind, _, name = m.group(1).partition(":")
        if kind == "server":
            return server
        if kind == "port":
            return str(host_ports.get(name, ""))
        if kind == "memory":
            return "" if memory is None else str(memory // MIB)
        source = variables if kind == "var" else env
        return m.group(0) if source is None else source.get(name, "")

    return _TEMPLATE.sub(sub, text)


def variable_texts(
    plan: WarPlan, values: Mapping[str, str], server: str, host_ports: Mapping[str, int]
) -> dict[str, str]:
    """Each variable's value as the server uses it: a secret as typed (braces in a password
    are not templates), any other with only {server} and {port:NAME} filled."""

    def basic(m: re.Match[str]) -> str:
        ref = m.group(1)
        return server if ref == "server" else str(host_ports.get(ref[5:], ""))

    out: dict[str, str] = {}
    for spec in plan.variables:
        if spec.name in values:
            value = values[spec.name]
            out[spec.name] = value if spec.secret else _USER_TEMPLATE.sub(basic, value)
    return out


def render_environment(
    plan: WarPlan, values: Mapping[str, str], server: str, host_ports: Mapping[str, int]
) -> dict[str, str]:
    """Build the container environment: fixed env plus variables, with templates filled in."""
    texts = variable_texts(plan, values, server, host_ports)
    memory = plan.resources.memory_bytes
    env = {
        k: fill_template(v, server, host_ports, variables=texts, memory=memory)
        for k, v in plan.env.items()
    }
    for spec in plan.variables:
        if spec.env and spec.name in texts:
            env[spec.env] = texts[spec.name]
    return env


@dataclass(frozen=True)
class Templates:
    """Everything plan text may refer to, for one server: fills files, commands, scripts."""

    server: str
    ports: Mapping[str, int]
    variables: Mapping[str, str]
    env: Mapping[str, str]
    memory: int | None

    def fill(self, text: str) -> str:
        return fill_template(
            text, self.server, self.ports, variables=self.variables, env=self.env,
            memory=self.memory,
        )  # fmt: skip


def templates_for(
    plan: WarPlan, values: Mapping[str, str], server: str, host_ports: Mapping[str, int]
) -> Templates:
    return Templates(
        server=server,
        ports=dict(host_ports),
        variables=variable_texts(plan, values, server, host_ports),
        env=render_environment(plan, values, server, host_ports),
        memory=plan.resources.memory_bytes,
    )


def secret_names(plan: WarPlan) -> set[str]:
    return {v.name for v in plan.variables if v.secret}


def uncounted_reason(plan: WarPlan, env: Mapping[str, str]) -> str | None:
    """Why the plan's player count is wrong for a server with this environment, or None."""
    if plan.players is None:
        return None
    for rule in plan.players.uncounted_when:
        if re.search(rule.pattern, env.get(rule.env, "")):
            return rule.reason
    return None


# ---------------------------------------------------------------------------------------------
# Review: risky patterns and missing evidence

_ADMIN_SECRET = re.compile(r"(RCON|ADMIN|SUPERUSER|OWNER).*(PASS|PW|PWD|SECRET|TOKEN)", re.I)
_ADMIN_PORT = re.compile(r"rcon|telnet|admin", re.I)
_ADMIN_DESCRIPTION = re.compile(r"\s*(rcon|telnet|admin|remote.admin|web.?admin)\b", re.I)


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None when untagged; a digest counts as pinned)."""
    if "@" in image:
        return "@" + image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def _is_admin_secret(env: str, name: str = "") -> bool:
    return bool(_ADMIN_SECRET.search(env) or _ADMIN_SECRET.search(name.replace("_", "")))


def plan_warnings(plan: WarPlan) -> list[str]:
    """Risky patterns a review of the shipped plans found; each one sentence, safe to print."""
    out: list[str] = []
    ev = plan.verified
    tag = image_tag(plan.image)
    if tag in (None, "latest") and (ev is None or ev.version_tags):
        out.append(
            f"image: '{plan.image}' follows 'latest'; pin one of the image's version tags (or "
            "set verified.version_tags: false if it publishes none)."
        )
    for key, value in plan.env.items():
        if _is_admin_secret(key) and value:
            out.append(f"env.{key}: a remote-admin password is fixed in the plan; make it a "
                       "required or generated secret variable.")  # fmt: skip
    for var in plan.variables:
        if not _is_admin_secret(var.env or "", var.name):
            continue
        if var.default not in (None, ""):
            out.append(f"variables.{var.name}: a remote-admin password has a default; make it "
                       "required or generated.")  # fmt: skip
        elif not (var.required or var.generate):
            out.append(
                f"variables.{var.name}: a remote-admin password may be left empty, so the "
                "image's own default may apply; make it required or generated."
            )
        elif not var.secret:
            out.append(f"variables.{var.name}: a remote-admin password is not secret.")
    for port in plan.ports:
        # By its name, or a description that says what it is first ("RCON (TCP)").
        if port.name == plan.rcon_port:
            continue  # PEON's own console: published only where PEON reaches the host
        if _ADMIN_PORT.search(port.name) or _ADMIN_DESCRIPTION.match(port.description):
            out.append(
                f"ports.{port.name}: a remote-admin port is published; make it the plan's RCON "
                "console (console.port), published only where PEON reaches the host, or use it "
                "from inside the container (exec)."
            )
    save = plan.save
    if save is not None and save.mode in ("console", "exec") and save.done is None:
        out.append(
            "save: no 'done' regex, so a backup cannot tell the save finished and archives "
            "after a fixed pause."
        )
    if any(v.backup for v in plan.volumes) and (save is None or save.mode == "none"):
        out.append(
            "save: backups of a running server copy files the game may be writing; give a save "
            "command with 'done', or mode pause or stop."
        )
    evidenced = set(ev.env) if ev else set()
    for env in [*plan.env, *(v.env for v in plan.variables if v.env)]:
        if env not in evidenced:
            out.append(f"env {env}: the plan's evidence does not show the image reading it "
                       "(verified.env).")  # fmt: skip
    paths = {posixpath.normpath(v.path) for v in plan.volumes}
    for path in ev.image_volumes if ev else []:
        if posixpath.normpath(path) not in paths:
            out.append(f"volumes: the image declares VOLUME {path} and the plan does not name "
                       "it; PEON keeps it as a named volume that is never backed up.")  # fmt: skip
    return out


def needed_facts(plan: WarPlan) -> list[str]:
    """The facts about its image that this plan relies on, each needing evidence."""
    facts = ["volumes", "ports", "stop"]
    if plan.ready.log or plan.ready.port:
        facts.append("ready")
    if plan.save is not None:
        facts.append("save")
    if plan.players is not None:
        facts.append("players")
    if plan.say is not None:
        facts.append("say")
    if plan.console is not None:
        facts.append("console")
    if plan.entrypoint:
        facts.append("entrypoint")
    if plan.command:
        facts.append("command")
    return facts


def evidence_gaps(plan: WarPlan) -> list[str]:
    """Facts and variables the plan relies on without evidence, as field names."""
    ev = plan.verified
    if ev is None:
        return ["verified"]
    gaps = [f"verified.facts.{f}" for f in needed_facts(plan) if not ev.facts.get(f, "").strip()]
    for env in [*plan.env, *(v.env for v in plan.variables if v.env)]:
        if not ev.env.get(env, "").strip():
            gaps.append(f"verified.env.{env}")
    if not ev.links:
        gaps.append("verified.links")
    return gaps


def unverified_facts(plan: WarPlan) -> list[str]:
    """Evidence entries that say they could not be verified."""
    ev = plan.verified
    if ev is None:
        return []
    items = [*(("facts." + k, v) for k, v in ev.facts.items()),
             *(("env." + k, v) for k, v in ev.env.items())]  # fmt: skip
    return [k for k, v in items if v.strip().lower().startswith("unverified")]


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class Catalog:
    """Every plan that loaded, plus one error per file that did not."""

    plans: dict[str, WarPlan] = field(default_factory=dict)
    errors: list[WarplanError] = field(default_factory=list)
    sources: dict[str, Path] = field(default_factory=dict)

    def get(self, name: str) -> WarPlan:
        try:
            return self.plans[name]
        except KeyError:
            raise WarplanNotFound(name) from None

    def names(self) -> list[str]:
        return sorted(self.plans)


def _field_of(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in (
            "int",
            "str",
            "bool",
            "literal['auto']",
            "literal['host']",
            "function-after[_host_range()]",
            "function-after[_container_range()]",
        ):
            continue  # pydantic's union branch names say nothing to a plan author
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_warplan(data: Any, path: str) -> WarPlan:
    """Validate already-parsed YAML/JSON data as a plan; errors name file, field, reason."""
    if not isinstance(data, dict):
        raise WarplanError(path, "", "must be a mapping of fields (name, title, image, ...)")
    try:
        return WarPlan.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        reason = err["msg"].removeprefix("Value error, ")
        raise WarplanError(path, _field_of(err["loc"]), reason) from None


def load_warplan(path: Path) -> WarPlan:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise WarplanError(str(path), "", f"cannot be read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise WarplanError(str(path), where, str(problem)) from None
    plan = parse_warplan(data, str(path))
    if plan.name != path.stem:
        raise WarplanError(str(path), "name", f"must match the file name '{path.stem}'")
    return plan


def load_catalog(directory: Path) -> Catalog:
    """Load every warplans/*.yaml; a bad file is recorded and skipped."""
    catalog = Catalog()
    if not directory.is_dir():
        catalog.errors.append(WarplanError(str(directory), "", "is not a directory"))
        return catalog
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            plan = load_warplan(path)
        except WarplanError as e:
            catalog.errors.append(e)
            continue
        catalog.plans[plan.name] = plan
        catalog.sources[plan.name] = path
    return catalog


def warplan_json_schema() -> dict[str, Any]:
    schema = WarPlan.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "PEON war plan"
    return schema


def dump_warplan(plan: WarPlan) -> str:
    data = plan.model_dump(mode="json", exclude_defaults=True)
    data = {"name": plan.name, "title": plan.title, "image": plan.image, **data}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


class WarplanLibrary:
    """The plans in force. `reload()` re-reads the folder; a file that no longer validates
    is reported and its last good version stays in force."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.catalog = load_catalog(directory)

    def reload(self) -> Catalog:
        fresh = load_catalog(self.directory)
        plans = dict(fresh.plans)
        sources = dict(fresh.sources)
        for err in fresh.errors:
            stem = Path(err.path).stem
            if stem in self.catalog.plans and stem not in plans:
                plans[stem] = self.catalog.plans[stem]
                sources[stem] = self.catalog.sources[stem]
        self.catalog = Catalog(plans=plans, errors=list(fresh.errors), sources=sources)
        return fresh

    def get(self, name: str) -> WarPlan:
        return self.catalog.get(name)

    def names(self) -> list[str]:
        return self.catalog.names()
