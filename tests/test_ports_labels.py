from __future__ import annotations

import socket

import pytest

from bot import labels
from bot.errors import PortUnavailable
from bot.ports import choose_ports, host_port_free, parse_pool


def always(_: int, __: str) -> bool:
    return True


def test_parse_pool() -> None:
    assert parse_pool("30000-30002") == range(30000, 30003)
    assert parse_pool("7777") == range(7777, 7778)
    for bad in ("a-b", "10-5", "0-10", "65000-70000"):
        with pytest.raises(ValueError, match="is not"):
            parse_pool(bad)


def test_auto_ports_take_lowest_free_per_protocol() -> None:
    chosen = choose_ports(
        [("game", "udp", None), ("query", "udp", None), ("rcon", "tcp", None)],
        range(100, 110),
        {(100, "udp")},
        always,
    )
    assert chosen == {"game": 101, "query": 102, "rcon": 100}


def test_fixed_ports_first_and_never_reused_by_auto() -> None:
    chosen = choose_ports([("a", "tcp", None), ("b", "tcp", 100)], range(100, 103), set(), always)
    assert chosen == {"b": 100, "a": 101}


def test_host_held_ports_are_skipped_and_fixed_conflicts_refused() -> None:
    busy = {105}
    chosen = choose_ports([("a", "tcp", None)], range(105, 107), set(), lambda p, _: p not in busy)
    assert chosen == {"a": 106}
    with pytest.raises(PortUnavailable, match="Port 105/tcp \\(for 'b'\\) is already in use"):
        choose_ports([("b", "tcp", 105)], range(1, 2), set(), lambda p, _: p not in busy)
    with pytest.raises(PortUnavailable, match="Port 1/udp"):
        choose_ports([("b", "udp", 1)], range(1, 2), {(1, "udp")}, always)


def test_pool_exhaustion_is_one_clear_sentence() -> None:
    with pytest.raises(PortUnavailable, match="No free udp port is left in the pool 10-11"):
        choose_ports([("a", "udp", None)], range(10, 12), {(10, "udp"), (11, "udp")}, always)


def test_host_port_probe_sees_real_listeners() -> None:
    for kind, proto in ((socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            assert not host_port_free(port, proto, "127.0.0.1")
        assert host_port_free(port, proto, "127.0.0.1")


def test_labels_are_namespaced_and_filterable() -> None:
    got = labels.server_labels("prod", "alpha", "valheim")
    assert got == {
        "io.peon.managed": "true",
        "io.peon.instance": "prod",
        "io.peon.server": "alpha",
        "io.peon.warplan": "valheim",
        "io.peon.role": "game",
    }
    vol = labels.volume_labels("prod", "alpha", "valheim", "world")
    assert vol["io.peon.volume"] == "world" and vol["io.peon.role"] == "data"
    assert labels.instance_filter("prod") == ["io.peon.managed=true", "io.peon.instance=prod"]
    assert labels.instance_filter("prod", "alpha")[-1] == "io.peon.server=alpha"
    assert labels.container_name("alpha") == "peon-alpha"
    assert labels.volume_name("alpha", "world") == "peon-alpha-world"
