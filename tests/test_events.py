"""The event stream on real SQLite files: the outbox (a change and its event together), the
audit log as events, consumers with their own positions, and events from another process."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.errors import ServerNotFound
from bot.events import GIVE_UP_AFTER, Event, EventFeed, NewEvent, Transient
from bot.models import ServerState
from bot.store import MIGRATIONS, Store
from tests.conftest import ROOT


@pytest.fixture
async def store(tmp_path: Path):
    s = Store(tmp_path / "peon.db")
    await s.open()
    yield s
    await s.close()


async def make(store: Store, name: str) -> None:
    await store.create_server(
        name=name, warplan="w", image="i", variables={}, ports=(), created_by="t"
    )
    await store.release(name)


async def test_audit_rows_of_an_older_database_become_events(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:5]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 5")
    db.execute(
        "INSERT INTO audit (id, at, actor, action, server, ok, detail) VALUES "
        "(7, '2026-01-02T03:04:05.000+00:00', 'cli:root', 'start', 'alpha', 1, ''), "
        "(9, '2026-01-02T03:05:00.000+00:00', 'discord:1', 'stop', 'alpha', 0, 'busy')"
    )
    db.commit()
    db.close()
    store = Store(path)
    await store.open()
    try:
        log = await store.audit_log("alpha")
        assert [(e.id, e.actor, e.action, e.ok, e.detail) for e in log] == [
            (9, "discord:1", "stop", False, "busy"),
            (7, "cli:root", "start", True, ""),
        ]
        assert await store.last_event_id() == 9
        new = await store.audit("t", "create", "beta", True)
        assert new == 10  # ids go on from the audit log's
    finally:
        await store.close()


async def test_a_change_and_its_event_are_written_together_or_not_at_all(store: Store) -> None:
    await make(store, "alpha")
    before = await store.last_event_id()
    await store.update_server(
        "alpha", state=ServerState.RUNNING, event=NewEvent("ready", "alpha", "t", payload={"a": 1})
    )
    [event] = await store.events_after(before)
    assert (event.kind, event.server, event.payload) == ("ready", "alpha", {"a": 1})
    assert (await store.get_server("alpha")).state == ServerState.RUNNING
    with pytest.raises(ServerNotFound):
        await store.update_server("ghost", state="stopped", event=NewEvent("stopped", "ghost", "t"))
    assert await store.events_after(event.id) == []


async def test_another_tasks_write_never_joins_an_open_transaction(store: Store) -> None:
    """One connection serves every task: a write during another task's transaction must wait
    for it, so the transaction's rollback cannot take that write with it."""
    await make(store, "alpha")
    inside = asyncio.Event()

    async def failing_transaction() -> None:
        async with store.transaction() as db:
            await db.execute("UPDATE servers SET image = 'changed' WHERE name = 'alpha'")
            inside.set()
            await asyncio.sleep(0.2)  # the other task writes now, if it can
            raise RuntimeError("undo")

    task = asyncio.create_task(failing_transaction())
    await inside.wait()
    event_id = await store.audit("t", "console", "alpha", True, "say hi")
    with pytest.raises(RuntimeError):
        await task
    assert (await store.get_server("alpha")).image == "i"  # rolled back
    assert [e.id for e in await store.events_after(event_id - 1)] == [event_id]  # kept


async def test_a_feed_starts_at_the_end_keeps_its_position_and_filters(store: Store) -> None:
    await store.audit("t", "create", "old", True)  # history: a new consumer does not get it
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    feed = EventFeed(store, "notices", handler, kinds={"ready", "crashed"}, poll=0.05)
    await feed.start()
    try:
        await store.append_event(NewEvent("ready", "a", "t"))
        await store.append_event(NewEvent("console", "a", "t"))  # not this consumer's kind
        await store.append_event(NewEvent("crashed", "a", "peon:watch", ok=False))
        await asyncio.wait_for(_until(lambda: len(seen) == 2), 5)
    finally:
        await feed.close()
    assert [e.kind for e in seen] == ["ready", "crashed"]
    assert await store.cursor("notices") == await store.last_event_id()

    # A restarted consumer goes on from its position: nothing twice, nothing lost.
    await store.append_event(NewEvent("ready", "b", "t"))
    again: list[Event] = []

    async def handler2(event: Event) -> None:
        again.append(event)

    feed = EventFeed(store, "notices", handler2, kinds={"ready"})
    await feed.start()
    try:
        await asyncio.wait_for(_until(lambda: len(again) == 1), 5)
    finally:
        await feed.close()
    assert [(e.kind, e.server) for e in again] == [("ready", "b")]


async def test_a_failing_handler_is_retried_and_holds_its_position(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.events.RETRY_FIRST", 0.01)
    calls: list[int] = []

    async def flaky(event: Event) -> None:
        calls.append(event.id)
        if len(calls) < 3:
            raise ConnectionError("Discord is down")

    feed = EventFeed(store, "flaky", flaky)
    await feed.start()
    try:
        first = await store.append_event(NewEvent("ready", "a", "t"))
        await feed.drain()
    finally:
        await feed.close()
    assert calls == [first, first, first] and feed.failing is None
    assert await store.cursor("flaky") == first


async def test_events_another_process_appends_reach_a_running_feed(
    store: Store, tmp_path: Path
) -> None:
    """The CLI and the bot are two processes on one database: the CLI's events must reach
    the bot's consumers without a restart."""
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    feed = EventFeed(store, "bot", handler, poll=0.1)
    await feed.start()
    script = textwrap.dedent(
        f"""
        import asyncio
        from pathlib import Path
        from bot.events import NewEvent
        from bot.store import Store

        async def main():
            s = Store(Path({str(store.path)!r}))
            await s.open()
            await s.append_event(NewEvent("ready", "cli-server", "cli:root", payload={{"x": 1}}))
            await s.close()

        asyncio.run(main())
        """
    )
    try:
        subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)
        await asyncio.wait_for(_until(lambda: len(seen) == 1), 5)
    finally:
        await feed.close()
    assert (seen[0].kind, seen[0].actor, seen[0].payload) == ("ready", "cli:root", {"x": 1})


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.02)


async def test_a_passing_failure_is_retried_past_the_give_up_count(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discord or a webhook down for long: the event waits, it is never skipped."""
    monkeypatch.setattr("bot.events.RETRY_FIRST", 0.001)
    monkeypatch.setattr("bot.events.RETRY_MAX", 0.001)
    calls: list[int] = []

    async def down_for_a_while(event: Event) -> None:
        calls.append(event.id)
        if len(calls) <= 3 * GIVE_UP_AFTER:
            raise Transient("503 Service Unavailable")

    async def broken(event: Event) -> None:
        raise TypeError("a bug")

    first = await store.append_event(NewEvent("ready", "a", "t"))
    feed = EventFeed(store, "patient", down_for_a_while)
    await feed.drain()
    assert len(calls) == 3 * GIVE_UP_AFTER + 1 and feed.failing is None
    assert await store.cursor("patient") == first
    feed = EventFeed(store, "buggy", broken)
    assert await feed.drain() == 1  # skipped after GIVE_UP_AFTER tries, the stream goes on
    assert feed.failing is not None and feed.position == first


async def test_a_feed_closes_even_when_an_event_arrives_as_it_is_cancelled(store: Store) -> None:
    """asyncio.wait_for on 3.11 can swallow a cancellation that races with the awaited event;
    a feed closed just as an event wakes it must still stop."""

    async def handler(event: Event) -> None:
        pass

    for n in range(50):
        feed = EventFeed(store, f"closing-{n}", handler, poll=30)
        await feed.start()
        await asyncio.sleep(0.01)  # the feed now waits for events
        store._notify()  # an append wakes it (the waiter is set)...
        async with asyncio.timeout(5):
            await feed.close()  # ...and it is cancelled in the same step
