"""Host port allocation: pure choice over a pool, plus a probe of what the host holds."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

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
) -> dict[str, int]:
    """Pick a host port for each (name, protocol, fixed-or-None).

    Fixed ports must be free; `auto` ports take the lowest free pool port for their protocol.
    A port is free when no PEON server holds it (`taken`) and the host does not (`is_free`).
    """
    chosen: dict[str, int] = {}
    held = set(taken)
    wanted = list(wanted)
    for name, proto, fixed in wanted:
        if fixed is None:
            continue
        if (fixed, proto) in held or not is_free(fixed, proto):
            raise PortUnavailable(f"Port {fixed}/{proto} (for '{name}') is already in use.")
        chosen[name] = fixed
        held.add((fixed, proto))
    for name, proto, fixed in wanted:
        if fixed is not None:
            continue
        port = next((p for p in pool if (p, proto) not in held and is_free(p, proto)), None)
        if port is None:
            raise PortUnavailable(
                f"No free {proto} port is left in the pool {pool.start}-{pool.stop - 1}."
            )
        chosen[name] = port
        held.add((port, proto))
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
