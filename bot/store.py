"""SQLite state: the only module that imports aiosqlite.

WAL mode, numbered migrations applied at open. Holds server records, their host port
reservations (UNIQUE per port/protocol, so two servers can never share one), the audit log and
per-server operation leases (so a second operation, from this process or the CLI, is refused).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from bot.errors import (
    BackupNotFound,
    ScheduleNotFound,
    ServerBusy,
    ServerExists,
    ServerNotFound,
    TokenExists,
    TokenNotFound,
)
from bot.events import Event, NewEvent, event_from_row
from bot.models import (
    ApiToken,
    AuditEntry,
    Backup,
    BackupVolume,
    BoardMessage,
    InstallRecord,
    PortBinding,
    Schedule,
    ServerRecord,
    ServerState,
    StaleLease,
)

MIGRATIONS: list[str] = [
    # 1: servers, their ports, audit log
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE servers (
        name TEXT PRIMARY KEY,
        warplan TEXT NOT NULL,
        image TEXT NOT NULL,
        variables TEXT NOT NULL,
        state TEXT NOT NULL,
        container_id TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        op TEXT,
        op_owner TEXT,
        op_started TEXT,
        pending_volumes TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE ports (
        server TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
        container_port INTEGER NOT NULL,
        host_port INTEGER NOT NULL,
        PRIMARY KEY (server, name),
        UNIQUE (host_port, protocol)
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        server TEXT,
        ok INTEGER NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_server ON audit(server, id);
    """,
    # 2: schedules (the source of truth; scheduler jobs are rebuilt from them at startup) and
    # the per-server hold that "Keep running" buttons set against automatic stops.
    """
    CREATE TABLE schedules (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        server TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('window', 'idle', 'cron', 'timer')),
        spec TEXT NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX schedules_server ON schedules(server, id);
    ALTER TABLE servers ADD COLUMN keep_until TEXT;
    """,
    # 3: backups. No foreign key to servers: a backup (the one taken before a purge above all)
    # outlives its server. A row is written before its directory gets its final name and
    # marked complete after, so a backup cut short is never listed as one.
    """
    CREATE TABLE backups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        server TEXT NOT NULL,
        dir TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        complete INTEGER NOT NULL DEFAULT 0,
        size INTEGER NOT NULL DEFAULT 0,
        seconds REAL NOT NULL DEFAULT 0,
        trigger TEXT NOT NULL,
        actor TEXT NOT NULL,
        locked INTEGER NOT NULL DEFAULT 0,
        warplan TEXT NOT NULL,
        image TEXT NOT NULL,
        volumes TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX backups_server ON backups(server, created_at);
    """,
    # 4: several Docker hosts. Each server lives on one host; host ports are unique per host
    # (two hosts may publish the same port), so the ports table is rebuilt with its host.
    """
    ALTER TABLE servers ADD COLUMN host TEXT NOT NULL DEFAULT 'local';
    CREATE TABLE ports_v4 (
        server TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
        container_port INTEGER NOT NULL,
        host_port INTEGER NOT NULL,
        host TEXT NOT NULL DEFAULT 'local',
        PRIMARY KEY (server, name),
        UNIQUE (host, host_port, protocol)
    );
    INSERT INTO ports_v4 (server, name, protocol, container_port, host_port, host)
        SELECT p.server, p.name, p.protocol, p.container_port, p.host_port, s.host
        FROM ports p JOIN servers s ON s.name = p.server;
    DROP TABLE ports;
    ALTER TABLE ports_v4 RENAME TO ports;
    """,
    # 5: crash safety. A backup row names the process writing it, so only a dead writer's
    # partial backup is removed; a server being restored records what it restores from, so a
    # restore cut short is finished (or rolled back) instead of leaving a half-written world.
    """
    ALTER TABLE backups ADD COLUMN owner TEXT;
    ALTER TABLE servers ADD COLUMN restoring TEXT;
    ALTER TABLE servers ADD COLUMN keep_due TEXT;
    """,
    # 6: one event stream. Every audit row becomes an event (same ids), so the audit log and
    # what consumers (notices, the board, webhooks) saw can never disagree; each consumer keeps
    # its position in event_cursors.
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        server TEXT,
        actor TEXT NOT NULL,
        ok INTEGER NOT NULL DEFAULT 1,
        detail TEXT NOT NULL DEFAULT '',
        payload TEXT NOT NULL DEFAULT '{}'
    );
    INSERT INTO events (id, at, kind, server, actor, ok, detail)
        SELECT id, at, action, server, actor, ok, detail FROM audit ORDER BY id;
    DROP TABLE audit;
    CREATE INDEX events_server ON events(server, id);
    CREATE TABLE event_cursors (consumer TEXT PRIMARY KEY, position INTEGER NOT NULL);
    """,
    # 7: the live status board: one message per guild, found again after a restart, with a
    # digest of what it shows so an unchanged board is not edited.
    """
    CREATE TABLE boards (
        guild_id INTEGER PRIMARY KEY,
        channel_id INTEGER NOT NULL,
        message_id INTEGER,
        digest TEXT NOT NULL DEFAULT '',
        updated_at TEXT NOT NULL
    );
    """,
    # install step (bot/installs.py): whether a server's war plan install script has run to
    # the end. Set to 0 before the installer starts and to 1 in the same write that records
    # its success, so a process killed mid-install leaves 0 and the next start installs
    # again instead of starting a half-installed server. No row: nothing to install (a server
    # made before its plan had an install step). The installer's whole log (secrets masked)
    # is kept for `peon server install-log`.
    """
    CREATE TABLE installs (
        server TEXT PRIMARY KEY REFERENCES servers(name) ON DELETE CASCADE,
        installed INTEGER NOT NULL DEFAULT 0,
        image TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        ok INTEGER,
        exit_code INTEGER,
        seconds REAL NOT NULL DEFAULT 0,
        log TEXT NOT NULL DEFAULT ''
    );
    """,
    # restic repositories (bot/repositories.py): where each backup is stored, as
    # {repository: {volume: snapshot id}} ('{}' for the .tar.zst files of older backups),
    # and the bytes it added to its repository (NULL: a full copy, its size).
    """
    ALTER TABLE backups ADD COLUMN stored TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE backups ADD COLUMN added INTEGER;
    """,
    # HTTP API tokens (bot/tokens.py): only a SHA-256 of each token is kept, so the
    # database never holds one that works; a revoked token's row is deleted.
    """
    CREATE TABLE api_tokens (
        name TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        server TEXT,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL
    );
    -- A token scoped to a server dies with it: a later server of the same name is not the
    -- one the token was given for.
    CREATE TRIGGER api_tokens_die_with_their_server AFTER DELETE ON servers
    BEGIN
        DELETE FROM api_tokens WHERE server = OLD.name;
    END;
    """,
]

_SERVER_COLUMNS = (
    "name, warplan, image, variables, state, container_id, created_at, updated_at, created_by, "
    "op, host, op_owner, restoring"
)
SQL_SERVER = f"SELECT {_SERVER_COLUMNS} FROM servers WHERE name = ?"  # noqa: S608 - constant
SQL_SERVERS = f"SELECT {_SERVER_COLUMNS} FROM servers ORDER BY name"  # noqa: S608 - constant
_PORT_COLUMNS = "SELECT server, name, container_port, protocol, host_port FROM ports"
SQL_PORTS = f"{_PORT_COLUMNS} ORDER BY server, rowid"
SQL_SERVER_PORTS = f"{_PORT_COLUMNS} WHERE server = ? ORDER BY rowid"
SQL_INSERT_SERVER = (
    "INSERT INTO servers (name, warplan, image, variables, state, created_at, updated_at, "
    "created_by, op, op_owner, op_started, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SQL_INSERT_PORT = (
    "INSERT INTO ports (server, name, protocol, container_port, host_port, host) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
SQL_ACQUIRE = (
    "UPDATE servers SET op = ?, op_owner = ?, op_started = ? WHERE name = ? AND op IS NULL"
)
SQL_RELEASE = (
    "UPDATE servers SET op = NULL, op_owner = NULL, op_started = NULL "
    "WHERE name = ? AND op_owner = ?"
)
# Compare-and-swap: of several processes that find the same dead lease, one takes it over.
SQL_TAKE_OVER = "UPDATE servers SET op_owner = ?, op_started = ? WHERE name = ? AND op_owner = ?"
SQL_SCHEDULES = "SELECT id, server, kind, spec, paused, created_by, created_at FROM schedules"
SQL_BACKUPS = (
    "SELECT id, server, dir, created_at, complete, size, seconds, trigger, actor, locked, "
    "warplan, image, volumes, owner, stored, added FROM backups"
)
SQL_EVENT = (
    "INSERT INTO events (at, kind, server, actor, ok, detail, payload) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
SQL_EVENTS = "SELECT id, at, kind, server, actor, ok, detail, payload FROM events"
SQL_TOKENS = "SELECT name, role, server, created_at, created_by FROM api_tokens"


# Set inside Store.transaction: the task's own statements belong to its transaction.
_IN_TX: ContextVar[bool] = ContextVar("peon_store_in_transaction", default=False)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


class Store:
    """Owns one aiosqlite connection; every method is a small transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        # Identifies this process's leases: host, pid and the process's start time, so a
        # restarted bot that got the same pid (pid 1 in a container) sees its old leases as
        # stale while every Store of one live process agrees they are its own.
        self.owner = _owner_id(os.getpid())
        # One connection serves every task of the process: a transaction's statements must
        # not interleave with another task's, which would join (or commit) it.
        self._tx_lock = asyncio.Lock()
        # Feeds of this process wake as soon as it appends; other processes' events are
        # found by polling (SQLite tells no one).
        self.generation = 0
        self._waiters: set[asyncio.Event] = set()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: explicit BEGIN where a transaction spans statements, so no implicit
        # transaction ever holds the write lock against the CLI or another process.
        db = await aiosqlite.connect(self.path, timeout=10, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=10000")
            await self._migrate(db)
        except BaseException:
            await db.close()
            raise
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Several statements as one: all or none, other tasks' writes waiting outside."""
        async with self._tx_lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            token = _IN_TX.set(True)
            try:
                yield db
            except BaseException:
                await db.rollback()
                raise
            else:
                await db.commit()
            finally:
                _IN_TX.reset(token)

    async def _write(self, sql: str, args: Iterable[Any] = ()) -> aiosqlite.Cursor:
        """One writing statement, never inside another task's transaction."""
        if _IN_TX.get():
            return await self.db.execute(sql, tuple(args))
        async with self._tx_lock:
            return await self.db.execute(sql, tuple(args))

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("Store.open() was not called")
        return self._db

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        version = (await (await db.execute("PRAGMA user_version")).fetchone() or (0,))[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # One transaction per migration: a crash mid-way leaves the previous version.
            await db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")

    async def schema_version(self) -> int:
        row = await (await self.db.execute("PRAGMA user_version")).fetchone()
        return int(row[0]) if row else 0

    # --- meta -------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        cur = await self.db.execute("SELECT value FROM meta WHERE key = ?", (key,))
        row = await cur.fetchone()
        return str(row[0]) if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await self._write(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # --- servers ----------------------------------------------------------------------------

    async def create_server(
        self,
        *,
        name: str,
        warplan: str,
        image: str,
        variables: dict[str, str],
        ports: Iterable[PortBinding],
        created_by: str,
        host: str = "local",
        state: ServerState = ServerState.CREATING,
        operation: str = "create",
    ) -> ServerRecord:
        """Insert a record in state CREATING with its ports reserved (on its host), holding the
        'create' lease (or in `state`, holding `operation`: a purge of kept data holds the
        name of a deleted server this way).

        Raises ServerExists for a taken name; sqlite3.IntegrityError from the ports table
        means another process reserved one of the ports first.
        """
        now = _ts(utcnow())
        async with self.transaction() as db:
            exists = await (
                await db.execute("SELECT 1 FROM servers WHERE name = ?", (name,))
            ).fetchone()
            if exists:
                raise ServerExists(name)
            await db.execute(
                SQL_INSERT_SERVER,
                (
                    name,
                    warplan,
                    image,
                    json.dumps(variables),
                    state.value,
                    now,
                    now,
                    created_by,
                    operation,
                    self.owner,
                    now,
                    host,
                ),
            )
            for p in ports:
                await db.execute(
                    SQL_INSERT_PORT, (name, p.name, p.protocol, p.container, p.host, host)
                )
        return await self.get_server(name)

    async def find_server(self, name: str) -> ServerRecord | None:
        row = await (await self.db.execute(SQL_SERVER, (name,))).fetchone()
        if row is None:
            return None
        ports = await self._ports(name)
        return _record(row, ports.get(name, ()))

    async def get_server(self, name: str) -> ServerRecord:
        record = await self.find_server(name)
        if record is None:
            raise ServerNotFound(name)
        return record

    async def list_servers(self) -> list[ServerRecord]:
        rows = await (await self.db.execute(SQL_SERVERS)).fetchall()
        ports = await self._ports(None)
        return [_record(r, ports.get(r[0], ())) for r in rows]

    async def _ports(self, server: str | None) -> dict[str, tuple[PortBinding, ...]]:
        out: dict[str, list[PortBinding]] = {}
        sql, args = (SQL_PORTS, ()) if server is None else (SQL_SERVER_PORTS, (server,))
        for srv, pname, cport, proto, hport in await (await self.db.execute(sql, args)).fetchall():
            out.setdefault(srv, []).append(PortBinding(pname, cport, proto, hport))
        return {k: tuple(v) for k, v in out.items()}

    async def taken_ports(self, host: str = "local") -> set[tuple[int, str]]:
        sql = "SELECT host_port, protocol FROM ports WHERE host = ?"
        rows = await (await self.db.execute(sql, (host,))).fetchall()
        return {(int(r[0]), str(r[1])) for r in rows}

    async def update_server(
        self, name: str, *, event: NewEvent | None = None, **fields: Any
    ) -> None:
        """Change a server's record; with `event`, the event is appended in the same
        transaction (an outbox: the change and its event are both there, or neither)."""
        allowed = {"state", "container_id", "image", "variables", "warplan", "pending_volumes"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update {unknown}")
        for key in ("variables", "pending_volumes"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        if "state" in fields:
            fields["state"] = ServerState(fields["state"]).value
        sets = ", ".join(f"{k} = ?" for k in fields)
        async with self.transaction() as db:
            cur = await db.execute(
                f"UPDATE servers SET {sets}, updated_at = ? WHERE name = ?",  # noqa: S608 - keys vetted
                (*fields.values(), _ts(utcnow()), name),
            )
            if cur.rowcount == 0:
                raise ServerNotFound(name)
            if event is not None:
                await db.execute(SQL_EVENT, event.row(_ts(utcnow())))
        if event is not None:
            self._notify()

    async def pending_volumes(self, name: str) -> list[str]:
        """Volumes a create made (or was about to make): what a crashed create must remove."""
        row = await (
            await self.db.execute("SELECT pending_volumes FROM servers WHERE name = ?", (name,))
        ).fetchone()
        return list(json.loads(row[0])) if row else []

    async def delete_server(self, name: str) -> None:
        await self._write("DELETE FROM servers WHERE name = ?", (name,))

    # --- operation leases -------------------------------------------------------------------

    async def acquire(self, name: str, operation: str) -> None:
        """Take the server's operation lease or raise ServerBusy (never queue)."""
        cur = await self._write(SQL_ACQUIRE, (operation, self.owner, _ts(utcnow()), name))
        if cur.rowcount == 1:
            return
        record = await self.get_server(name)  # raises ServerNotFound
        raise ServerBusy(name, record.operation or "another operation")

    async def release(self, name: str) -> None:
        await self._write(SQL_RELEASE, (name, self.owner))

    async def finish_operation(self, name: str, event: NewEvent) -> None:
        """Release the lease and record how the operation ended, together: a process killed
        in between leaves neither a free server without its event nor an event for a server
        still held."""
        async with self.transaction() as db:
            await db.execute(SQL_RELEASE, (name, self.owner))
            await db.execute(SQL_EVENT, event.row(_ts(utcnow())))
        self._notify()

    async def stale_leases(self, name: str | None = None) -> list[StaleLease]:
        """Leases whose owner process is gone (all, or the one server's)."""
        sql = "SELECT name, op, op_owner FROM servers WHERE op IS NOT NULL"
        args: tuple[str, ...] = ()
        if name is not None:
            sql, args = sql + " AND name = ?", (name,)
        rows = await (await self.db.execute(sql, args)).fetchall()
        return [
            StaleLease(r[0], r[1], r[2] or "")
            for r in rows
            if r[2] != self.owner and not _owner_alive(r[2])
        ]

    async def take_over(self, lease: StaleLease) -> bool:
        """Make a dead process's lease ours (its operation kept, so others still see the
        server busy while we finish or undo it). False when another process was first."""
        cur = await self._write(SQL_TAKE_OVER, (self.owner, _ts(utcnow()), lease.name, lease.owner))
        if cur.rowcount == 0 and lease.owner == "":  # NULL owner (written by a very old PEON)
            cur = await self._write(
                "UPDATE servers SET op_owner = ?, op_started = ? "
                "WHERE name = ? AND op_owner IS NULL AND op IS NOT NULL",
                (self.owner, _ts(utcnow()), lease.name),
            )
        return cur.rowcount == 1

    async def hand_back(self, lease: StaleLease) -> None:
        """Give a taken-over lease back to its dead owner: what we could not finish stays for
        the next attempt to find."""
        await self._write(SQL_TAKE_OVER, (lease.owner or None, None, lease.name, self.owner))

    # --- restores in progress ---------------------------------------------------------------

    async def set_restoring(self, name: str, marker: dict[str, Any] | None) -> None:
        """What a restore is writing into the server's volumes (None: nothing). Set before
        the first volume is touched and cleared after the last is written."""
        cur = await self._write(
            "UPDATE servers SET restoring = ? WHERE name = ?",
            (json.dumps(marker, sort_keys=True) if marker is not None else None, name),
        )
        if cur.rowcount == 0:
            raise ServerNotFound(name)

    async def restoring_backups(self) -> set[int]:
        """Backups that an unfinished restore reads from or falls back to: never pruned."""
        rows = await (
            await self.db.execute("SELECT restoring FROM servers WHERE restoring IS NOT NULL")
        ).fetchall()
        held: set[int] = set()
        for (text,) in rows:
            marker = json.loads(text)
            held.update(int(marker[k]) for k in ("backup", "safety") if marker.get(k))
        return held

    # --- schedules --------------------------------------------------------------------------

    async def add_schedule(
        self, server: str, kind: str, spec: dict[str, Any], created_by: str
    ) -> Schedule:
        await self.get_server(server)  # ServerNotFound rather than a foreign-key error
        cur = await self._write(
            "INSERT INTO schedules (server, kind, spec, created_by, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (server, kind, json.dumps(spec, sort_keys=True), created_by, _ts(utcnow())),
        )
        return await self.get_schedule(int(cur.lastrowid or 0))

    async def get_schedule(self, schedule_id: int) -> Schedule:
        cur = await self.db.execute(f"{SQL_SCHEDULES} WHERE id = ?", (schedule_id,))
        row = await cur.fetchone()
        if row is None:
            raise ScheduleNotFound(schedule_id)
        return _schedule(row)

    async def list_schedules(self, server: str | None = None) -> list[Schedule]:
        sql, args = (
            (f"{SQL_SCHEDULES} ORDER BY server, id", ())
            if server is None
            else (f"{SQL_SCHEDULES} WHERE server = ? ORDER BY id", (server,))
        )
        return [_schedule(r) for r in await (await self.db.execute(sql, args)).fetchall()]

    async def remove_schedule(self, schedule_id: int) -> None:
        cur = await self._write("DELETE FROM schedules WHERE id = ?", (schedule_id,))
        if cur.rowcount == 0:
            raise ScheduleNotFound(schedule_id)

    async def set_schedule_paused(self, schedule_id: int, paused: bool) -> None:
        cur = await self._write(
            "UPDATE schedules SET paused = ? WHERE id = ?", (int(paused), schedule_id)
        )
        if cur.rowcount == 0:
            raise ScheduleNotFound(schedule_id)

    async def set_keep_until(
        self, server: str, until: datetime | None, due: str | None = None
    ) -> None:
        """A Keep running hold: until when, and the key of the automatic stop it holds (a
        hold applies to that stop only, never to one planned after it)."""
        cur = await self._write(
            "UPDATE servers SET keep_until = ?, keep_due = ? WHERE name = ?",
            (_ts(until) if until else None, due if until else None, server),
        )
        if cur.rowcount == 0:
            raise ServerNotFound(server)

    async def kept_due(self, server: str) -> str | None:
        cur = await self.db.execute("SELECT keep_due FROM servers WHERE name = ?", (server,))
        row = await cur.fetchone()
        if row is None:
            raise ServerNotFound(server)
        return str(row[0]) if row[0] else None

    async def keep_until(self, server: str) -> datetime | None:
        cur = await self.db.execute("SELECT keep_until FROM servers WHERE name = ?", (server,))
        row = await cur.fetchone()
        if row is None:
            raise ServerNotFound(server)
        return _dt(row[0]) if row[0] else None

    # --- backups ----------------------------------------------------------------------------

    async def begin_backup(
        self, server: str, directory: str, *, trigger: str, actor: str, warplan: str, image: str
    ) -> int:
        cur = await self._write(
            "INSERT INTO backups (server, dir, created_at, trigger, actor, warplan, image, owner) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (server, directory, _ts(utcnow()), trigger, actor, warplan, image, self.owner),
        )
        return int(cur.lastrowid or 0)

    async def finish_backup(
        self, backup_id: int, size: int, seconds: float, volumes: list[dict[str, Any]]
    ) -> Backup:
        await self._write(
            "UPDATE backups SET complete = 1, size = ?, seconds = ?, volumes = ? WHERE id = ?",
            (size, seconds, json.dumps(volumes, sort_keys=True), backup_id),
        )
        return await self.get_backup(backup_id)

    async def set_backup_stored(
        self, backup_id: int, stored: dict[str, dict[str, str]], added: int | None = None
    ) -> None:
        """Where a backup's snapshots are (and, once, the bytes it added)."""
        await self._write(
            "UPDATE backups SET stored = ?, added = COALESCE(?, added) WHERE id = ?",
            (json.dumps(stored, sort_keys=True), added, backup_id),
        )

    async def unfinish_backup(self, backup_id: int) -> None:
        """Unlist a backup about to be removed, as this process's incomplete one."""
        await self._write(
            "UPDATE backups SET complete = 0, owner = ? WHERE id = ?", (self.owner, backup_id)
        )

    async def get_backup(self, backup_id: int) -> Backup:
        cur = await self.db.execute(f"{SQL_BACKUPS} WHERE id = ?", (backup_id,))
        row = await cur.fetchone()
        if row is None:
            raise BackupNotFound(backup_id)
        return _backup(row)

    async def list_backups(
        self, server: str | None = None, *, complete: bool = True
    ) -> list[Backup]:
        sql = f"{SQL_BACKUPS} WHERE complete = ?"
        args: list[Any] = [int(complete)]
        if server is not None:
            sql += " AND server = ?"
            args.append(server)
        rows = await (
            await self.db.execute(f"{sql} ORDER BY created_at DESC, id DESC", args)
        ).fetchall()
        return [_backup(r) for r in rows]

    async def unfinished_backups(
        self, server: str | None = None
    ) -> tuple[list[Backup], list[Backup]]:
        """Backups not completed, as (abandoned, in progress): abandoned when the writing
        process is gone (killed, or the machine restarted), what `BackupService.recover`
        removes; a live writer's are left alone."""
        abandoned: list[Backup] = []
        live: list[Backup] = []
        for b in await self.list_backups(server, complete=False):
            dead = b.owner != self.owner and not _owner_alive(b.owner)
            (abandoned if dead else live).append(b)
        return abandoned, live

    async def delete_backup(self, backup_id: int) -> None:
        await self._write("DELETE FROM backups WHERE id = ?", (backup_id,))

    async def set_backup_locked(self, backup_id: int, locked: bool) -> None:
        cur = await self._write(
            "UPDATE backups SET locked = ? WHERE id = ?", (int(locked), backup_id)
        )
        if cur.rowcount == 0:
            raise BackupNotFound(backup_id)

    # --- installs ---------------------------------------------------------------------------

    async def begin_install(self, server: str, image: str) -> None:
        """Mark the server not installed, its installer about to run (its last log kept
        until this run finishes)."""
        await self._write(
            "INSERT INTO installs (server, installed, image, started_at) VALUES (?, 0, ?, ?) "
            "ON CONFLICT(server) DO UPDATE SET installed = 0, image = excluded.image, "
            "started_at = excluded.started_at, finished_at = NULL, ok = NULL, exit_code = NULL",
            (server, image, _ts(utcnow())),
        )

    async def finish_install(
        self, server: str, *, ok: bool, exit_code: int | None, seconds: float, log: str
    ) -> None:
        await self._write(
            "UPDATE installs SET installed = ?, ok = ?, exit_code = ?, seconds = ?, log = ?, "
            "finished_at = ? WHERE server = ?",
            (int(ok), int(ok), exit_code, seconds, log, _ts(utcnow()), server),
        )

    async def mark_installed(self, server: str) -> None:
        """Installed again without a run (its data came back from a backup of that state)."""
        await self._write("UPDATE installs SET installed = 1 WHERE server = ?", (server,))

    async def get_install(self, server: str) -> InstallRecord | None:
        row = await (
            await self.db.execute(
                "SELECT server, installed, image, started_at, finished_at, ok, exit_code, "
                "seconds, log FROM installs WHERE server = ?",
                (server,),
            )
        ).fetchone()
        if row is None:
            return None
        return InstallRecord(
            server=row[0], installed=bool(row[1]), image=row[2], started_at=_dt(row[3]),
            finished_at=_dt(row[4]) if row[4] else None,
            ok=None if row[5] is None else bool(row[5]), exit_code=row[6],
            seconds=float(row[7]), log=row[8],
        )  # fmt: skip

    # --- audit ------------------------------------------------------------------------------

    async def audit(
        self,
        actor: str,
        action: str,
        server: str | None,
        ok: bool,
        detail: str = "",
        *,
        payload: dict[str, Any] | None = None,
    ) -> int:
        """An event that is an audit row: who did what to which server, and how it went."""
        return await self.append_event(NewEvent(action, server, actor, ok, detail, payload or {}))

    # --- events -----------------------------------------------------------------------------

    async def append_event(self, event: NewEvent) -> int:
        cur = await self._write(SQL_EVENT, event.row(_ts(utcnow())))
        self._notify()
        return int(cur.lastrowid or 0)

    def _notify(self) -> None:
        self.generation += 1
        for waiter in self._waiters:
            waiter.set()

    async def events_after(
        self, position: int, limit: int = 200, server: str | None = None
    ) -> list[Event]:
        return await self._events(f"{SQL_EVENTS} WHERE id > ?", position, server, "", limit)

    async def latest_events(
        self, server: str | None = None, limit: int = 50, before: int | None = None
    ) -> list[Event]:
        """The newest events first (of one server), older than `before` when paging."""
        bound = before if before is not None else 2**62
        return await self._events(f"{SQL_EVENTS} WHERE id < ?", bound, server, " DESC", limit)

    async def _events(
        self, sql: str, bound: int, server: str | None, order: str, limit: int
    ) -> list[Event]:
        args: list[Any] = [bound]
        if server is not None:
            sql += " AND server = ?"
            args.append(server)
        cur = await self.db.execute(f"{sql} ORDER BY id{order} LIMIT ?", (*args, limit))
        return [event_from_row(r) for r in await cur.fetchall()]

    async def last_event_id(self) -> int:
        row = await (await self.db.execute("SELECT MAX(id) FROM events")).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def cursor(self, consumer: str) -> int | None:
        sql = "SELECT position FROM event_cursors WHERE consumer = ?"
        row = await (await self.db.execute(sql, (consumer,))).fetchone()
        return int(row[0]) if row else None

    async def set_cursor(self, consumer: str, position: int) -> None:
        await self._write(
            "INSERT INTO event_cursors (consumer, position) VALUES (?, ?) "
            "ON CONFLICT(consumer) DO UPDATE SET position = excluded.position",
            (consumer, position),
        )

    async def wait_for_events(self, timeout: float, seen: int) -> None:
        """Return once this process has appended an event since generation `seen`, or after
        `timeout`, whichever comes first."""
        if self.generation != seen:
            return
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            # Not wait_for: on 3.11 it can swallow a cancellation that arrives as the waiter
            # is set, and a feed being closed would then wait on forever.
            async with asyncio.timeout(timeout):
                await waiter.wait()
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    # --- API tokens -------------------------------------------------------------------------

    async def add_token(self, token: ApiToken, digest: str) -> None:
        try:
            await self._write(
                "INSERT INTO api_tokens (name, hash, role, server, created_at, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (token.name, digest, token.role, token.server, _ts(token.created_at),
                 token.created_by),
            )  # fmt: skip
        except aiosqlite.IntegrityError:
            raise TokenExists(token.name) from None

    async def token_by_hash(self, digest: str) -> ApiToken | None:
        sql = f"{SQL_TOKENS} WHERE hash = ?"
        row = await (await self.db.execute(sql, (digest,))).fetchone()
        return _token(row) if row else None

    async def list_tokens(self) -> list[ApiToken]:
        rows = await (await self.db.execute(f"{SQL_TOKENS} ORDER BY name")).fetchall()
        return [_token(r) for r in rows]

    async def remove_token(self, name: str) -> None:
        cur = await self._write("DELETE FROM api_tokens WHERE name = ?", (name,))
        if cur.rowcount == 0:
            raise TokenNotFound(name)

    # --- status boards ----------------------------------------------------------------------

    async def list_boards(self) -> list[BoardMessage]:
        sql = "SELECT guild_id, channel_id, message_id, digest FROM boards ORDER BY guild_id"
        rows = await (await self.db.execute(sql)).fetchall()
        return [BoardMessage(int(r[0]), int(r[1]), r[2], str(r[3])) for r in rows]

    async def set_board(self, board: BoardMessage) -> None:
        await self._write(
            "INSERT INTO boards (guild_id, channel_id, message_id, digest, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(guild_id) DO UPDATE SET "
            "channel_id = excluded.channel_id, message_id = excluded.message_id, "
            "digest = excluded.digest, updated_at = excluded.updated_at",
            (board.guild_id, board.channel_id, board.message_id, board.digest, _ts(utcnow())),
        )

    async def remove_board(self, guild_id: int) -> bool:
        cur = await self._write("DELETE FROM boards WHERE guild_id = ?", (guild_id,))
        return cur.rowcount > 0

    async def audit_log(self, server: str | None = None, limit: int = 50) -> list[AuditEntry]:
        sql = "SELECT id, at, actor, kind, server, ok, detail FROM events"
        args: tuple[Any, ...] = ()
        if server is not None:
            sql += " WHERE server = ?"
            args = (server,)
        rows = await (
            await self.db.execute(f"{sql} ORDER BY id DESC LIMIT ?", (*args, limit))
        ).fetchall()
        return [AuditEntry(r[0], _dt(r[1]), r[2], r[3], r[4], bool(r[5]), r[6]) for r in rows]


def _token(row: Any) -> ApiToken:
    return ApiToken(row[0], row[1], row[2], _dt(row[3]), row[4])


def _backup(row: Any) -> Backup:
    return Backup(
        id=int(row[0]),
        server=row[1],
        dir=row[2],
        created_at=_dt(row[3]),
        complete=bool(row[4]),
        size=int(row[5]),
        seconds=float(row[6]),
        trigger=row[7],
        actor=row[8],
        locked=bool(row[9]),
        warplan=row[10],
        image=row[11],
        volumes=tuple(BackupVolume(**v) for v in json.loads(row[12])),
        owner=row[13],
        stored=json.loads(row[14] or "{}"),
        added=None if row[15] is None else int(row[15]),
    )


def _schedule(row: Any) -> Schedule:
    return Schedule(
        id=int(row[0]),
        server=row[1],
        kind=row[2],
        spec=json.loads(row[3]),
        paused=bool(row[4]),
        created_by=row[5],
        created_at=_dt(row[6]),
    )


def _record(row: Any, ports: tuple[PortBinding, ...]) -> ServerRecord:
    # A dead process's lease is not an operation under way: the record says what it left
    # (`interrupted`), and the next operation on the server finishes or undoes it.
    alive = row[9] is not None and _owner_alive(row[11])
    return ServerRecord(
        name=row[0],
        warplan=row[1],
        image=row[2],
        variables=json.loads(row[3]),
        state=ServerState(row[4]),
        container_id=row[5],
        created_at=_dt(row[6]),
        updated_at=_dt(row[7]),
        created_by=row[8],
        operation=row[9] if alive else None,
        interrupted=None if alive else row[9],
        restoring=json.loads(row[12]) if row[12] else None,
        host=row[10],
        ports=ports,
    )


def _process_started(pid: int) -> str:
    """The kernel's start time of a process (field 22 of /proc/PID/stat), '' if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces: count fields after its closing paren.
    return stat.rpartition(")")[2].split()[19]


def _owner_id(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_process_started(pid)}"


def _owner_alive(owner: str | None) -> bool:
    """A lease owner is alive if this host runs a process with that pid and start time.

    Leases from another host cannot be checked and are presumed alive: only this host's dead
    processes are cleaned up automatically.
    """
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname():
        return True
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    return _owner_id(pid) == f"{host}:{pid}:{started}" and _process_started(pid) != ""
