"""The store against real SQLite files."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.errors import ServerBusy, ServerExists, ServerNotFound
from bot.models import ApiToken, PortBinding, ServerState, StaleLease
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
    dead = f"{socket.gethostname()}:999999:x"
    assert await store.stale_leases() == [StaleLease("a", "start", dead)]
    record = await store.get_server("a")
    # Not shown as under way: it is what a dead process left.
    assert (record.operation, record.interrupted) == (None, "start")
    # Of two processes that find it, one takes it over; then it is alive (ours) again.
    other = Store(store.path)
    await other.open()
    try:
        lease = (await store.stale_leases())[0]
        assert await other.take_over(lease)
        assert not await store.take_over(lease)
        assert await store.stale_leases() == []
        assert (await store.get_server("a")).operation == "start"
        await other.hand_back(lease)  # could not finish it: dead again for the next try
        assert await store.stale_leases() == [StaleLease("a", "start", dead)]
    finally:
        await other.close()


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


async def test_schedules_rows_follow_their_server(store: Store) -> None:
    from datetime import UTC, datetime

    from bot.errors import ScheduleNotFound

    await make(store, "a")
    spec = {"days": "weekdays", "start": "18:00", "stop": "23:30", "tz": "Europe/Berlin"}
    sched = await store.add_schedule("a", "window", spec, "discord:42")
    assert (sched.server, sched.kind, sched.spec, sched.paused) == ("a", "window", spec, False)
    idle = await store.add_schedule("a", "idle", {"minutes": 15}, "cli:root")
    assert [s.id for s in await store.list_schedules("a")] == [sched.id, idle.id]
    await store.set_schedule_paused(idle.id, True)
    assert (await store.get_schedule(idle.id)).paused
    await store.remove_schedule(idle.id)
    with pytest.raises(ScheduleNotFound, match=f"no schedule #{idle.id}"):
        await store.remove_schedule(idle.id)
    with pytest.raises(ServerNotFound):
        await store.add_schedule("ghost", "idle", {}, "t")
    until = datetime(2026, 11, 21, 23, 30, tzinfo=UTC)
    await store.set_keep_until("a", until)
    assert await store.keep_until("a") == until
    await store.delete_server("a")  # the server's schedules go with it
    assert await store.list_schedules() == []


async def test_migration_2_upgrades_a_version_1_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "\nPRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO servers (name, warplan, image, variables, state, created_at, "
        "updated_at, created_by) VALUES ('old', 'w', 'i', '{}', 'stopped', "
        "'2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00', 't')"
    )
    conn.execute(
        "INSERT INTO ports (server, name, protocol, container_port, host_port) "
        "VALUES ('old', 'game', 'udp', 2456, 30000)"
    )
    conn.commit()
    conn.close()
    s = Store(path)
    await s.open()
    assert await s.schema_version() == len(MIGRATIONS)
    assert await s.keep_until("old") is None  # the old row gained the new column
    await s.add_schedule("old", "idle", {"minutes": 10}, "t")
    assert await s.list_backups("old") == []  # migration 3
    # migration 4: the server and its port live on host "local", as before hosts existed
    old = await s.get_server("old")
    assert old.host == "local" and old.ports == (PortBinding("game", 2456, "udp", 30000),)
    assert await s.taken_ports("local") == {(30000, "udp")}
    assert await s.taken_ports("vps") == set()
    await s.close()


async def test_ports_are_unique_per_host(store: Store) -> None:
    port = [PortBinding("game", 7777, "tcp", 30000)]
    await store.create_server(name="a", warplan="w", image="i", variables={}, ports=port,
                              created_by="t", host="one")  # fmt: skip
    await store.create_server(name="b", warplan="w", image="i", variables={}, ports=port,
                              created_by="t", host="two")  # fmt: skip
    assert (await store.get_server("b")).host == "two"
    with pytest.raises(sqlite3.IntegrityError):
        await store.create_server(name="c", warplan="w", image="i", variables={}, ports=port,
                                  created_by="t", host="two")  # fmt: skip


async def test_a_token_scoped_to_a_server_dies_with_it(store: Store) -> None:
    await make(store, "a")
    await make(store, "b")
    now = datetime.now(UTC)
    await store.add_token(ApiToken("on-a", "operator", "a", now, "t"), "h-a")
    await store.add_token(ApiToken("on-b", "operator", "b", now, "t"), "h-b")
    await store.add_token(ApiToken("all", "admin", None, now, "t"), "h-all")
    await store.delete_server("a")
    assert await store.token_by_hash("h-a") is None
    await make(store, "a")  # a new server of the same name is not the token's server
    assert await store.token_by_hash("h-a") is None
    assert {t.name for t in await store.list_tokens()} == {"on-b", "all"}
