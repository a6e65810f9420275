"""The one place that names and labels what PEON creates in Docker.

Everything PEON lists or cleans up is found by these labels, never by guessing names.
"""

from __future__ import annotations

NAMESPACE = "io.peon"
MANAGED = f"{NAMESPACE}.managed"
INSTANCE = f"{NAMESPACE}.instance"
SERVER = f"{NAMESPACE}.server"
WARPLAN = f"{NAMESPACE}.warplan"
VOLUME = f"{NAMESPACE}.volume"
ROLE = f"{NAMESPACE}.role"
INSTALLER = f"{NAMESPACE}.installer"  # an installer container: the server it installs


def server_labels(instance: str, server: str, warplan: str) -> dict[str, str]:
    return {
        MANAGED: "true",
        INSTANCE: instance,
        SERVER: server,
        WARPLAN: warplan,
        ROLE: "game",
    }


def volume_labels(instance: str, server: str, warplan: str, volume: str) -> dict[str, str]:
    return {**server_labels(instance, server, warplan), VOLUME: volume, ROLE: "data"}


def installer_labels(instance: str, server: str, warplan: str) -> dict[str, str]:
    """An installer container's labels. Deliberately without MANAGED and SERVER: everything
    that finds a server's game container by `instance_filter` must never pick an installer."""
    return {INSTANCE: instance, INSTALLER: server, WARPLAN: warplan, ROLE: "installer"}


def installer_filter(instance: str, server: str | None = None) -> list[str]:
    out = [f"{ROLE}=installer", f"{INSTANCE}={instance}"]
    out.append(f"{INSTALLER}={server}" if server is not None else INSTALLER)
    return out


def instance_filter(instance: str, server: str | None = None) -> list[str]:
    """Docker `label=` filters selecting this instance's objects (and one server's)."""
    out = [f"{MANAGED}=true", f"{INSTANCE}={instance}"]
    if server is not None:
        out.append(f"{SERVER}={server}")
    return out


def container_name(server: str) -> str:
    return f"peon-{server}"


def installer_name(server: str) -> str:
    # '.' cannot occur in a server name, so no server's container can ever take this name.
    return f"peon-{server}.install"


def volume_name(server: str, volume: str) -> str:
    return f"peon-{server}-{volume}"
