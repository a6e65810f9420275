"""Domain errors.

Every subclass of PeonError has a str() that is one sentence safe to show to the person who
caused it: no secrets, no tracebacks. The edges (CLI, Discord error handler) render them once.
"""

from __future__ import annotations


class PeonError(Exception):
    """Base of every error PEON shows to a user."""


class ConfigError(PeonError):
    def __init__(self, path: str, field: str, reason: str) -> None:
        self.path, self.field, self.reason = path, field, reason
        super().__init__(f"{path}: {field}: {reason}" if field else f"{path}: {reason}")


class WarplanError(PeonError):
    """A war plan file that does not validate; names the file, the field and the reason."""

    def __init__(self, path: str, field: str, reason: str) -> None:
        self.path, self.field, self.reason = path, field, reason
        super().__init__(f"{path}: {field}: {reason}" if field else f"{path}: {reason}")


class WarplanNotFound(PeonError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"There is no war plan named '{name}'.")


class InvalidServerName(PeonError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"'{_clip(name)}' is not a valid server name: use 1-32 characters from a-z, 0-9 "
            "and '-', starting with a letter or digit."
        )


class ServerExists(PeonError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"A server named '{name}' already exists.")


class ServerNotFound(PeonError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"There is no server named '{_clip(name)}'.")


class BackupNotFound(PeonError):
    def __init__(self, backup_id: int) -> None:
        self.backup_id = backup_id
        super().__init__(f"There is no backup #{backup_id}.")


class BackupError(PeonError):
    """A backup or restore that cannot be done; one sentence saying why."""


class ScheduleNotFound(PeonError):
    def __init__(self, schedule_id: int) -> None:
        self.schedule_id = schedule_id
        super().__init__(f"There is no schedule #{schedule_id}.")


class ShuttingDown(PeonError):
    def __init__(self) -> None:
        super().__init__("PEON is restarting; try again in a minute.")


class ServerBusy(PeonError):
    def __init__(self, name: str, operation: str) -> None:
        self.name, self.operation = name, operation
        super().__init__(
            f"Server '{name}' is busy ({operation} in progress); try again when it finishes."
        )


class ServerStateError(PeonError):
    """The action does not fit the server's current state (e.g. logs of a never-started one)."""


class VariableError(PeonError):
    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__(f"Variable '{_clip(name)}': {reason}")


class PortUnavailable(PeonError):
    """No host port can be given to a server (pool exhausted, fixed port taken)."""


class DockerUnavailable(PeonError):
    def __init__(self, detail: str = "", *, host: str | None = None) -> None:
        self.detail, self.host = detail, host
        msg = f"Docker host '{host}' is unreachable" if host else "The Docker engine is unreachable"
        super().__init__(f"{msg}: {detail}" if detail else f"{msg}.")


class HostNotFound(PeonError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(
            f"There is no Docker host named '{_clip(name)}' (hosts: {', '.join(known)})."
        )


class NoHostFits(PeonError):
    def __init__(self, memory: int | None, down: list[str]) -> None:
        need = f"{memory / 2**20:.0f} MiB of memory" if memory else "a reachable engine"
        extra = f" ({', '.join(down)} unreachable)" if down else ""
        super().__init__(f"No Docker host has {need} free for this server{extra}.")


class DockerError(PeonError):
    """The engine refused a request; carries the engine's own explanation."""


class ImageUnavailable(PeonError):
    def __init__(self, image: str, reason: str) -> None:
        self.image, self.reason = image, reason
        super().__init__(f"Image '{image}' could not be pulled: {reason}")


class UpdateCheckFailed(PeonError):
    """The registry could not say whether an image has an update (unreachable, unknown)."""

    def __init__(self, image: str, reason: str) -> None:
        self.image, self.reason = image, reason
        super().__init__(f"Cannot check image '{image}' for updates: {reason.rstrip('.')}.")


class ContainerMissing(PeonError):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"Container '{ref}' no longer exists.")


class StartFailed(PeonError):
    """The server did not become ready; carries its last log lines for the operator."""

    def __init__(self, name: str, reason: str, logs: list[str] | None = None) -> None:
        self.name, self.reason = name, reason
        self.logs = logs or []
        super().__init__(f"Server '{name}' did not become ready: {reason}")


class InstallFailed(PeonError):
    """A war plan's install script failed or timed out; carries the installer's last log
    lines (secrets masked). `message` replaces the default sentence (a reinstall's names the
    backup to restore)."""

    def __init__(
        self, name: str, reason: str, logs: list[str] | None = None, message: str | None = None
    ) -> None:
        self.name, self.reason = name, reason
        self.logs = logs or []
        super().__init__(message or f"The install step of '{name}' failed: {reason}.")


class ConfigFileError(PeonError):
    """A war plan's file that cannot be rendered or merged; nothing was written. `reason`
    follows "it" and never quotes the file (it may hold secrets)."""

    def __init__(self, server: str, path: str, reason: str) -> None:
        self.server, self.path, self.reason = server, path, reason
        super().__init__(
            f"Server '{server}' cannot use its file {_clip(path, 80)}: it {reason}; "
            "nothing was written."
        )


class ConfirmationRequired(PeonError):
    """A destructive action was asked for without its confirmation."""


class TokenExists(PeonError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"An API token named '{_clip(name)}' already exists; revoke it first.")


class TokenNotFound(PeonError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"There is no API token named '{_clip(name)}'.")


def _clip(text: str, limit: int = 40) -> str:
    """Keep user-supplied text short in messages so a refusal stays one line."""
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
