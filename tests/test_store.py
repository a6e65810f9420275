"""The store against real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.errors import ServerBusy, ServerExists, ServerNotFound
from bot.models import PortBinding, ServerState
from bot.store import MIGRATIONS, Store


@pytest.fixture
async def store(tmp_path: Path):
    s = Store(tmp_path / "sub" / "peon.db")
    await s.open()
    yield s
    await s.close()


async def make(store: Store, name: str, *ports: PortBinding) -> None:
    await store.create_server(
        name=name, warplan="w", image="i", variables={"a": "1"}, ports=ports, created_by="t"
    )
    await store.release(name)


async def test_migrations_wal_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "peon.db"
    s = Store(path)
    await s.open()
    assert await s.schema_version() == len(MIGRATIONS)
    await s.set_meta("k", "v")
    await s.close()
    s = Store(path)
    await s.open()  # migrations are not applied twice
    assert await s.get_meta("k") == "v"
    await s.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_create_holds_create_lease_and_ports(store: Store) -> None:
    rec = await store.create_server(
        name="a",
        warplan="w",
        image="i",
        variables={"x": "y"},
        ports=[PortBinding("game", 7777, "udp", 30000)],
        created_by="t",
    )
    assert rec.state == ServerState.CREATING and rec.operation == "create"
    assert rec.ports == (PortBinding("game", 7777, "udp", 30000),)
    assert await store.taken_ports() == {(30000, "udp")}
    with pytest.raises(ServerExists):
        await make(store, "a")


async def test_same_host_port_and_protocol_cannot_be_held_twice(store: Store) -> None:
    await make(store, "a", PortBinding("game", 1, "udp", 30000))
    await make(store, "b", PortBinding("game", 1, "tcp", 30000))  # other protocol: fine
    with pytest.raises(sqlite3.IntegrityError):
        await make(store, "c", PortBinding("game", 1, "udp", 30000))
    assert await store.find_server("c") is None  # the whole insert rolled back


async def test_delete_frees_ports(store: Store) -> None:
    await make(store, "a", PortBinding("game", 1, "udp", 30000))
    await store.delete_server("a")
    assert await store.taken_ports() == set()


async def test_lease_refuses_second_operation(store: Store) -> None:
    await make(store, "a")
    await store.acquire("a", "start")
    with pytest.raises(ServerBusy, match="start in progress"):
        await store.acquire("a", "stop")
    await store.release("a")
    await store.acquire("a", "stop")
    with pytest.raises(ServerNotFound):
        await store.acquire("nope", "stop")


async def test_lease_from_another_process_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "peon.db"
    one, two = Store(path), Store(path)
    await one.open()
    await two.open()
    await make(one, "a")
    await one.acquire("a", "update")
    with pytest.raises(ServerBusy, match="update in progress"):
        await two.acquire("a", "start")
    # The owner is alive (this very process), so the lease is not stale for either.
    assert await two.stale_leases() == []
    await one.close()
    await two.close()


async def test_dead_owner_lease_is_stale(store: Store) -> None:
    import socket

    await make(store, "a")
    await store.db.execute(
        "UPDATE servers SET op='start', op_owner=? WHERE name='a'",
        (f"{socket.gethostname()}:999999:x",),
    )
    assert await store.stale_leases() == [("a", "start")]
    await store.break_lease("a")
    assert await store.stale_leases() == []


async def test_update_and_audit(store: Store) -> None:
    await make(store, "a")
    await store.update_server("a", state=ServerState.RUNNING, container_id="abc")
    rec = await store.get_server("a")
    assert rec.state == ServerState.RUNNING and rec.container_id == "abc"
    with pytest.raises(ValueError, match="cannot update"):
        await store.update_server("a", op="hijack")
    with pytest.raises(ServerNotFound):
        await store.update_server("zzz", state=ServerState.STOPPED)
    await store.audit("cli:root", "start", "a", True)
    await store.audit("discord:42", "stop", "a", False, "busy")
    log = await store.audit_log("a")
    assert [(e.actor, e.action, e.ok, e.detail) for e in log] == [
        ("discord:42", "stop", False, "busy"),
        ("cli:root", "start", True, ""),
    ]
