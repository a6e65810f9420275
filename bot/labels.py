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


def instance_filter(instance: str, server: str | None = None) -> list[str]:
    """Docker `label=` filters selecting this instance's objects (and one server's)."""
    out = [f"{MANAGED}=true", f"{INSTANCE}={instance}"]
    if server is not None:
        out.append(f"{SERVER}={server}")
    return out


def container_name(server: str) -> str:
    return f"peon-{server}"


def volume_name(server: str, volume: str) -> str:
    return f"peon-{server}-{volume}"
