"""Settings: config/peon.yaml (or --config / PEON_CONFIG) plus the environment.

Secrets come only from the environment (DISCORD_TOKEN) and are held as SecretStr, so they
never print. Validation errors name the file and the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from bot.errors import ConfigError
from bot.ports import parse_pool
from bot.schedules import ScheduleError, parse_duration, parse_zone
from bot.sizes import parse_size

DEFAULT_CONFIG = Path("config/peon.yaml")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DockerSettings(_Model):
    base_url: str | None = Field(
        default=None, description="Engine address; unset means DOCKER_HOST or the local socket."
    )
    timeout: int = Field(default=60, ge=5, le=600)
    public_address: str | None = Field(
        default=None, description="Address players connect to; unset means this host's name."
    )
    probe_address: str = Field(
        default="127.0.0.1", description="Where PEON itself reaches published ports (ready checks)."
    )


class TLSSettings(_Model):
    """Client TLS for a tcp:// engine (what `docker --tlsverify` takes)."""

    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    verify: bool = True


HOST_NAME = r"^[a-z0-9][a-z0-9-]{0,31}$"


class HostSettings(_Model):
    """One Docker host ("camp") PEON places servers on."""

    name: str = Field(pattern=HOST_NAME)
    base_url: str | None = Field(
        default=None,
        description="unix:///var/run/docker.sock, tcp://host:2376 (with tls) or ssh://user@host; "
        "unset means DOCKER_HOST or the local socket.",
    )
    tls: TLSSettings | None = None
    timeout: int = Field(default=60, ge=5, le=600)
    public_address: str | None = Field(
        default=None, description="Address players connect to for servers on this host."
    )
    probe_address: str = Field(
        default="127.0.0.1", description="Where PEON reaches this host's published ports."
    )
    pool: str | None = Field(default=None, description="Port pool; unset means ports.pool.")
    bind_address: str | None = Field(default=None, description="Unset means ports.bind_address.")
    memory: str | None = Field(
        default=None,
        description="Memory PEON may hand out on this host, e.g. 16g; unset means all of it.",
    )

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: str | None) -> str | None:
        if v is not None:
            parse_pool(v)
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None:
            parse_size(v)
        return v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("unix://", "tcp://", "ssh://", "npipe://")):
            raise ValueError("must start with unix://, tcp:// or ssh://")
        return v


class PortSettings(_Model):
    pool: str = "30000-30999"
    bind_address: str = "0.0.0.0"  # noqa: S104 - game servers are meant to be reachable

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: str) -> str:
        parse_pool(v)
        return v

    @property
    def pool_range(self) -> range:
        return parse_pool(self.pool)


class LogSettings(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = Field(
        default="text", description="text: one key=value line per event (logfmt); json: one object."
    )


RoleRef = int | str  # a Discord role id, or its name ("@everyone" for every member)


class RoleGrants(_Model):
    """Roles granting each capability. Higher capabilities include the lower ones."""

    admin: list[RoleRef] = Field(default_factory=list)
    operator: list[RoleRef] = Field(default_factory=list)
    player: list[RoleRef] = Field(default_factory=list)


class GuildSettings(_Model):
    notification_channel: int | None = Field(
        default=None, description="Channel id for ready/stop notices and warnings."
    )
    roles: RoleGrants = Field(default_factory=RoleGrants)
    players_can_start: bool = Field(default=False, description="Let players start servers.")
    discord_admins_are_admins: bool = Field(
        default=True, description="Members with Discord's Administrator permission are admins."
    )
    servers: dict[str, RoleGrants] = Field(
        default_factory=dict, description="Extra grants for single servers."
    )
    mention_role: int | None = Field(
        default=None, description="Role id mentioned in warnings before automatic stops."
    )
    players_can_postpone: bool = Field(
        default=False, description="Let players press 'Keep running' on stop warnings."
    )
    server_channels: dict[str, int] = Field(
        default_factory=dict,
        description="Server name -> channel id for that server's notices, instead of "
        "notification_channel.",
    )

    def channel_for(self, server: str | None) -> int | None:
        """Where a server's notices go: its own channel, else the guild's."""
        if server is not None and server in self.server_channels:
            return self.server_channels[server]
        return self.notification_channel

    @property
    def channels(self) -> list[int]:
        """Every channel PEON posts notices in, the guild's first."""
        found = [self.notification_channel, *self.server_channels.values()]
        return list(dict.fromkeys(c for c in found if c is not None))


class DiscordSettings(_Model):
    guilds: dict[int, GuildSettings] = Field(
        default_factory=dict, description="Guild id -> settings; commands sync to these."
    )
    sync_global: bool = Field(default=False, description="Also sync commands globally (slow).")
    api_base: str | None = Field(default=None, description="Discord REST base URL override.")
    gateway_url: str | None = Field(default=None, description="Gateway URL override.")
    progress_interval: float = Field(
        default=1.5, ge=0.2, le=30, description="Seconds between progress edits (rate limits)."
    )
    confirm_timeout: int = Field(default=60, ge=1, le=900)
    interaction_lifetime: float = Field(
        default=900,
        ge=1,
        le=900,
        description="Seconds an interaction token works (Discord: 15 minutes). Long operations "
        "move their progress to a channel message before it runs out; lower only to test.",
    )
    board_interval: float = Field(
        default=5,
        ge=0.2,
        le=300,
        description="Least seconds between two edits of a status board: changes in between "
        "are shown together (Discord rate-limits edits).",
    )
    board_refresh: float = Field(
        default=30,
        ge=1,
        le=3600,
        description="Seconds between rebuilds of the status board and presence without an "
        "event (player counts change without one).",
    )


def _span(text: str, lo: timedelta = timedelta(seconds=1)) -> timedelta:
    return parse_duration(text, lo, timedelta(days=30), "A duration")


def _check_span(v: str) -> str:
    try:
        _span(v)
    except ScheduleError as e:  # pydantic reports ValueErrors with the field's name
        raise ValueError(str(e)) from None
    return v


class AutomationSettings(_Model):
    """Schedules: uptime windows, idle shutdown, timers and the warnings before stops."""

    timezone: str = Field(default="UTC", description="Zone for times typed without one.")
    warn_before: list[str] = Field(
        default_factory=lambda: ["10m", "1m"], description="Warnings before automatic stops."
    )
    keep_running: str = Field(default="1h", description="How long 'Keep running' postpones.")
    catch_up_warning: str = Field(
        default="1m", description="Warning lead for a stop missed while PEON was down."
    )
    player_check_interval: str = Field(default="30s", description="How often players are counted.")
    shortest: str = Field(
        default="1m", description="The shortest idle limit or timer members may set."
    )
    announce_players: bool = Field(default=False, description="Post joins and leaves.")
    update_wait: str = Field(
        default="2h",
        description="How long an update 'when empty' (cron update, /server update when:empty) "
        "waits for the last player to leave.",
    )
    update_when_busy: Literal["warn-and-update", "skip"] = Field(
        default="warn-and-update",
        description="When players are still on after update_wait: warn like an automatic stop, "
        "then update; or skip this update.",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            parse_zone(v)
        except ScheduleError as e:  # pydantic reports ValueErrors with the field's name
            raise ValueError(str(e)) from None
        return v

    _durations = field_validator(
        "keep_running", "catch_up_warning", "player_check_interval", "shortest", "update_wait"
    )(_check_span)

    @field_validator("warn_before")
    @classmethod
    def _leads(cls, v: list[str]) -> list[str]:
        for item in v:
            _check_span(item)
        return v

    @property
    def zone(self) -> ZoneInfo:
        return parse_zone(self.timezone)

    @property
    def leads(self) -> tuple[timedelta, ...]:
        return tuple(sorted((_span(x) for x in self.warn_before), reverse=True))

    @property
    def keep_for(self) -> timedelta:
        return _span(self.keep_running)

    @property
    def catch_up_lead(self) -> timedelta:
        return _span(self.catch_up_warning)

    @property
    def check_interval(self) -> timedelta:
        return _span(self.player_check_interval)

    @property
    def minimum(self) -> timedelta:
        return _span(self.shortest)

    @property
    def update_limit(self) -> timedelta:
        return _span(self.update_wait)


class ChecksSettings(_Model):
    """How many per-server checks (player counts, hang checks, the status board, catch-up at
    startup) run at once, and how long one may take: one slow server never delays another."""

    concurrency: int = Field(
        default=32, ge=1, le=1000, description="Checks running at once, all hosts together."
    )
    per_host: int = Field(
        default=16, ge=1, le=1000, description="Checks running at once on one Docker host."
    )
    deadline: float = Field(
        default=10, ge=1, le=300, description="Seconds one server's check may take; then skipped."
    )


class CrashSettings(_Model):
    """Crash watch: what happens when a game server exits without PEON stopping it."""

    restart: bool = Field(default=True, description="Start a crashed server again.")
    max_restarts: int = Field(default=3, ge=0, le=100, description="Tries before giving up.")
    backoff_first: str = Field(default="10s", description="Wait before the first restart.")
    backoff_limit: str = Field(default="5m", description="Longest wait (it doubles each try).")
    stable_after: str = Field(
        default="10m", description="Running this long after a restart starts a fresh count."
    )
    clean_exit_is_crash: bool = Field(
        default=True, description="Exit code 0 without a stop from PEON counts as a crash."
    )
    hang_checks: int = Field(
        default=3,
        ge=0,
        le=100,
        description="A running server that misses this many checks in a row (its player query "
        "or ready port) is hung: announced and restarted like a crash. 0: off.",
    )
    hang_interval: str = Field(default="1m", description="How often running servers are asked.")

    _durations = field_validator("backoff_first", "backoff_limit", "stable_after", "hang_interval")(
        _check_span
    )

    @property
    def backoff(self) -> timedelta:
        return _span(self.backoff_first)

    @property
    def backoff_max(self) -> timedelta:
        return _span(self.backoff_limit)

    @property
    def stable(self) -> timedelta:
        return _span(self.stable_after)

    @property
    def hang_every(self) -> timedelta:
        return _span(self.hang_interval)


class RepositorySettings(_Model):
    """A restic repository backups are stored in: deduplicated (a backup costs what changed),
    compressed, encrypted with a password that comes only from the environment."""

    name: str = Field(default="local", pattern=HOST_NAME,
                      description="Names it in /backup list and peon backup check.")  # fmt: skip
    location: str = Field(
        description="A directory, sftp:user@host:/path, s3:https://host/bucket/path, "
        "rclone:remote:path or rest:https://host/ (restic's --repo)."
    )
    password_env: str = Field(
        default="PEON_RESTIC_PASSWORD",
        description="Environment variable holding the repository's password.",
    )
    password_file: Path | None = Field(
        default=None, description="A file holding the password, instead of password_env."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="The backend's variables, each from an environment variable of PEON's "
        "(AWS_SECRET_ACCESS_KEY: PEON_S3_SECRET), so no credential is written in the file.",
    )
    options: list[str] = Field(
        default_factory=list, description="restic -o options, e.g. sftp.command=..."
    )
    servers: list[str] = Field(
        default_factory=list, description="Offsite: only these servers' backups (empty: all)."
    )
    keep_last: int | None = Field(
        default=None, ge=1, le=1000, description="Offsite retention; unset: the backups' own."
    )
    keep_daily: int | None = Field(default=None, ge=0, le=1000)
    keep_weekly: int | None = Field(default=None, ge=0, le=1000)
    keep_monthly: int | None = Field(default=None, ge=0, le=1000)
    retry_minutes: int = Field(
        default=10, ge=1, le=1440, description="Offsite: how often a failed copy is tried again."
    )


class BackupSettings(_Model):
    """Where backups go and how many are kept (like restic's forget policy)."""

    dir: Path | None = Field(default=None, description="Unset: <data_dir>/backups.")
    keep_last: int = Field(default=5, ge=1, le=1000)
    keep_daily: int = Field(default=7, ge=0, le=1000)
    keep_weekly: int = Field(default=4, ge=0, le=1000)
    keep_monthly: int = Field(default=6, ge=0, le=1000)
    level: int = Field(default=3, ge=1, le=19, description="zstd level (1 fastest).")
    min_free_mb: int = Field(default=512, ge=0, description="Free space to leave on the disk.")
    repository: RepositorySettings | None = Field(
        default=None,
        description="Store new backups in this restic repository (deduplicated) instead of "
        "as .tar.zst files; those stay listable and restorable.",
    )
    offsite: list[RepositorySettings] = Field(
        default_factory=list,
        description="Repositories every backup is copied to after it is made (needs "
        "repository), each with its own retention.",
    )


WEBHOOK_KINDS = ("discord", "slack", "ntfy", "json")


class WebhookSettings(_Model):
    """One webhook target: the events it wants, POSTed in its service's shape."""

    name: str = Field(pattern=HOST_NAME, description="Names the target in /peon status and logs.")
    kind: Literal["discord", "slack", "ntfy", "json"] = Field(
        description="discord: a Discord channel webhook; slack: Slack-compatible {text}; ntfy: "
        "a topic URL; json: the event as JSON, signed with HMAC-SHA256."
    )
    url: SecretStr | None = Field(
        default=None, description="Where to POST (it holds the target's token: never shown)."
    )
    url_env: str | None = Field(
        default=None, description="Environment variable holding the URL, instead of url."
    )
    secret_env: str | None = Field(
        default=None, description="json: environment variable holding the HMAC-SHA256 key."
    )
    events: list[str] = Field(
        default_factory=lambda: ["notices", "ready"],
        description="Event kinds to send: notices (warnings, crashes... as in Discord), ready "
        "(a start by hand that made the server joinable), any event kind (start, stop, "
        "backup...), or * for every event.",
    )
    servers: list[str] = Field(default_factory=list, description="Only these servers; empty: all.")
    timeout: float = Field(default=10, ge=1, le=120, description="Seconds per request.")
    secret: SecretStr | None = None  # filled from secret_env; never written in the file

    @field_serializer("secret", when_used="json")
    def _unsaid(self, v: SecretStr | None) -> None:
        return None  # a dump for people or a file never holds the key, not even masked

    @field_validator("events")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        for kind in v:
            if kind != "*" and not re.fullmatch(r"[a-z][a-z0-9:_-]{0,63}", kind):
                raise ValueError(f"'{kind}' is not an event kind")
        return v

    @field_validator("url")
    @classmethod
    def _http(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must start with https:// or http://")
        return v

    @model_validator(mode="after")
    def _complete(self) -> WebhookSettings:
        if self.url is None and self.url_env is None:
            raise ValueError(f"webhook '{self.name}' needs url or url_env")
        if self.kind == "json" and self.secret_env is None and self.secret is None:
            raise ValueError(
                f"webhook '{self.name}' (json) needs secret_env: the environment variable "
                "holding the key its payloads are signed with"
            )
        return self


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class ApiSettings(_Model):
    """The HTTP API (bot/api/): off unless this section is present."""

    listen: str = Field(
        default="127.0.0.1:8080", description="host:port to listen on; [::1]:8080 for IPv6."
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain: serve HTTPS.")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    allow_insecure: bool = Field(
        default=False,
        description="Serve plain HTTP on an address other than loopback (tokens then cross "
        "the network readable: only behind a TLS-terminating proxy on the same host).",
    )
    max_body: int = Field(default=65536, ge=1024, le=16 * 2**20, description="Bytes per request.")
    rate: float = Field(default=10.0, gt=0, le=10000, description="Requests/second per token.")
    burst: int = Field(default=40, ge=1, le=100000, description="Requests a token may bunch.")
    players_can_start: bool = Field(default=False, description="Let player tokens start servers.")

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @model_validator(mode="after")
    def _safe(self) -> ApiSettings:
        host, _ = parse_listen(self.listen)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give tls_cert and tls_key together")
        if host not in LOOPBACK_HOSTS and self.tls_cert is None and not self.allow_insecure:
            raise ValueError(
                f"{host} is not loopback: tokens would cross the network in clear text; give "
                "tls_cert and tls_key, or set allow_insecure: true behind a TLS proxy"
            )
        return self


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8080' or '[::1]:8080' -> (host, port); port 0 takes a free one."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen must be host:port, got '{text}'")
    return host, int(port)


def _unique_names(what: str, names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} names must be unique; '{dupes[0]}' is listed twice")


class Settings(_Model):
    instance_id: str = Field(default="peon", pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    data_dir: Path = Path("data")
    warplans_dir: Path = Path("warplans")
    docker: DockerSettings = Field(default_factory=DockerSettings)
    hosts: list[HostSettings] = Field(
        default_factory=list, description="Several Docker hosts; unset means one, from docker:."
    )
    ports: PortSettings = Field(default_factory=PortSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    automation: AutomationSettings = Field(default_factory=AutomationSettings)
    backups: BackupSettings = Field(default_factory=BackupSettings)
    crash: CrashSettings = Field(default_factory=CrashSettings)
    checks: ChecksSettings = Field(default_factory=ChecksSettings)
    webhooks: list[WebhookSettings] = Field(
        default_factory=list, description="Webhook targets events are POSTed to."
    )
    shutdown_grace: int = Field(
        default=60, ge=0, le=3600, description="Seconds running operations get on SIGTERM."
    )
    api: ApiSettings | None = Field(
        default=None, description="The HTTP API; unset means off (see docs/api.md)."
    )
    source: str = Field(default="(defaults)", exclude=True)
    discord_token: SecretStr | None = Field(default=None, exclude=True)

    @field_validator("hosts")
    @classmethod
    def _unique_hosts(cls, v: list[HostSettings]) -> list[HostSettings]:
        _unique_names("host", [h.name for h in v])
        return v

    @field_validator("webhooks")
    @classmethod
    def _unique_webhooks(cls, v: list[WebhookSettings]) -> list[WebhookSettings]:
        _unique_names("webhook", [w.name for w in v])
        return v

    def secret_values(self) -> list[str]:
        """Every secret the settings hold, for the log's redaction."""
        found = [self.discord_token] + [s for w in self.webhooks for s in (w.url, w.secret)]
        return [s.get_secret_value() for s in found if s is not None and s.get_secret_value()]

    @property
    def camps(self) -> list[HostSettings]:
        """The Docker hosts, in config order: `hosts:`, or the single `docker:` engine, named
        'local' (the name servers created before hosts existed carry)."""
        if self.hosts:
            return list(self.hosts)
        d = self.docker
        return [
            HostSettings(
                name="local",
                base_url=d.base_url,
                timeout=d.timeout,
                public_address=d.public_address,
                probe_address=d.probe_address,
            )
        ]

    @property
    def db_path(self) -> Path:
        return self.data_dir / "peon.db"

    @property
    def backup_dir(self) -> Path:
        return self.backups.dir or self.data_dir / "backups"


def config_path(cli_value: str | None, env: Mapping[str, str]) -> Path:
    return Path(cli_value or env.get("PEON_CONFIG") or DEFAULT_CONFIG)


def load_settings(path: Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read the YAML file and apply environment overrides; relative dirs are relative to CWD."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark is not None else ""
            problem = str(getattr(e, "problem", "invalid YAML"))
            raise ConfigError(str(path), where, problem) from None
        except OSError as e:
            raise ConfigError(str(path), "", f"cannot be read ({e.strerror})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(str(path), "", "must be a mapping of settings")
        data = loaded or {}
    elif env.get("PEON_CONFIG") or path != DEFAULT_CONFIG:
        raise ConfigError(str(path), "", "does not exist")
    if env.get("PEON_DATA_DIR"):
        data["data_dir"] = env["PEON_DATA_DIR"]
    if env.get("PEON_WARPLANS_DIR"):
        data["warplans_dir"] = env["PEON_WARPLANS_DIR"]
    if env.get("PEON_INSTANCE_ID"):
        data["instance_id"] = env["PEON_INSTANCE_ID"]
    for key, var in (
        ("api_base", "PEON_DISCORD_API_BASE"),
        ("gateway_url", "PEON_DISCORD_GATEWAY_URL"),
    ):
        if env.get(var):
            discord = data.get("discord")
            data["discord"] = {**(discord if isinstance(discord, dict) else {}), key: env[var]}
    token = env.get("DISCORD_TOKEN")
    try:
        settings = Settings.model_validate({**data, "source": str(path)})
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ConfigError(str(path), field, err["msg"].removeprefix("Value error, ")) from None
    if token:
        settings = settings.model_copy(update={"discord_token": SecretStr(token.strip())})
    if settings.webhooks:
        hooks = _webhook_secrets(path, data.get("webhooks"), settings.webhooks, env)
        settings = settings.model_copy(update={"webhooks": hooks})
    return settings


def _webhook_secrets(
    path: Path, raw: Any, hooks: list[WebhookSettings], env: Mapping[str, str]
) -> list[WebhookSettings]:
    """Fill each webhook's secret (and url_env's URL) from the environment. A secret written
    in the file itself is refused: secrets come only from the environment."""
    out = []
    for i, hook in enumerate(hooks):
        entry = raw[i] if isinstance(raw, list) and isinstance(raw[i], dict) else {}
        if entry.get("secret") is not None:
            raise ConfigError(
                str(path), f"webhooks.{i}.secret",
                "put the key in an environment variable and name it with secret_env",
            )  # fmt: skip
        if entry.get("url") is not None and entry.get("url_env") is not None:
            raise ConfigError(str(path), f"webhooks.{i}.url_env", "give url or url_env, not both")
        update: dict[str, SecretStr] = {}
        for field, key in (("secret_env", "secret"), ("url_env", "url")):
            var = getattr(hook, field)
            if var is None:
                continue
            value = env.get(var, "").strip()
            if not value:
                raise ConfigError(
                    str(path), f"webhooks.{i}.{field}", f"the environment variable {var} is not set"
                )
            if key == "url" and not value.startswith(("http://", "https://")):
                raise ConfigError(str(path), f"webhooks.{i}.{field}",
                                  f"{var} must start with https:// or http://")  # fmt: skip
            update[key] = SecretStr(value)
        out.append(hook.model_copy(update=update) if update else hook)
    return out
