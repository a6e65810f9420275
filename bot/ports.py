"""Host port allocation: pure choice over a pool, plus a probe of what the host holds."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping

from bot.errors import PortUnavailable

Taken = set[tuple[int, str]]


def parse_pool(text: str) -> range:
    """'30000-30999' -> range(30000, 31000)."""
    lo, sep, hi = text.partition("-")
    try:
        start, end = int(lo), int(hi if sep else lo)
    except ValueError:
        raise ValueError(f"'{text}' is not a port range such as 30000-30999") from None
    if not 1 <= start <= end <= 65535:
        raise ValueError(f"'{text}' is not within 1-65535 with start <= end")
    return range(start, end + 1)


def choose_ports(
    wanted: Iterable[tuple[str, str, int | None]],
    pool: range,
    taken: Taken,
    is_free: Callable[[int, str], bool],
    same: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Pick a host port for each (name, protocol, fixed-or-None).

    Fixed ports must be free; `auto` ports take the lowest free pool port for their protocol.
    A port is free when no PEON server holds it (`taken`) and the host does not (`is_free`).
    `same` maps a port to another one whose number it shares (a tcp and a udp port a game
    listens on together): that number must be free for both protocols.
    """
    same = dict(same or {})
    chosen: dict[str, int] = {}
    held = set(taken)
    every = list(wanted)
    wanted = [w for w in every if w[0] not in same]
    protos = {name: [proto] for name, proto, _ in wanted}
    for name, proto, _ in every:
        if name in same:
            protos[same[name]].append(proto)

    def usable(port: int, name: str) -> bool:
        return all((port, p) not in held and is_free(port, p) for p in protos[name])

    for name, _proto, fixed in wanted:
        if fixed is None:
            continue
        if not usable(fixed, name):
            both = "/".join(protos[name])
            raise PortUnavailable(f"Port {fixed}/{both} (for '{name}') is already in use.")
        chosen[name] = fixed
        held.update((fixed, p) for p in protos[name])
    for name, _proto, fixed in wanted:
        if fixed is not None:
            continue
        port = next((p for p in pool if usable(p, name)), None)
        if port is None:
            both = "/".join(protos[name])
            raise PortUnavailable(
                f"No free {both} port is left in the pool {pool.start}-{pool.stop - 1}."
            )
        chosen[name] = port
        held.update((port, p) for p in protos[name])
    for follower, leader in same.items():
        chosen[follower] = chosen[leader]
    return chosen


def host_port_free(port: int, proto: str, address: str = "0.0.0.0") -> bool:  # noqa: S104
    """Whether this host could bind the port now (anything else holding it makes it unusable)."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True
