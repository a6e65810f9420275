"""ServerService: the lifecycle of game servers, driven by the CLI, the bot and the scheduler.

Knows nothing of Discord. Each mutating operation holds the server's lease in the store (a
second one is refused as busy, whichever process asks), writes one audit row, and is written so
that a crash at any instant leaves state that `reconcile()` can make consistent: the container
is always derivable from the record (war plan + variables + ports), so a start recreates a
missing container, and a half-done create or delete is rolled back or finished.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import posixpath
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bot import labels
from bot.aio import Progress, emit_progress, quietly
from bot.camps import Camp, CampHealth, Camps, allocation
from bot.configfiles import FileWriter
from bot.consoles import Console, ConsoleError, ConsoleReply, check_command, fill_message
from bot.docker_driver import ContainerSpec, DockerDriver
from bot.errors import (
    ContainerMissing,
    DockerError,
    DockerUnavailable,
    InstallFailed,
    InvalidServerName,
    PeonError,
    ServerBusy,
    ServerExists,
    ServerNotFound,
    ServerStateError,
    ShuttingDown,
    StartFailed,
    WarplanNotFound,
)
from bot.events import NewEvent
from bot.fanout import Fanout
from bot.hang import describe as describe_hang_check
from bot.hang import tcp_answers
from bot.installs import InstallResult, InstallService, installer_env
from bot.models import (
    ContainerInfo,
    Phase,
    PortBinding,
    PullProgress,
    ReconcileReport,
    ServerRecord,
    ServerState,
    ServerStatus,
    StaleLease,
    StartResult,
    VolumeInfo,
)
from bot.patterns import Pattern, compile_pattern
from bot.players import LogPlayerTracker, PlayerCount, count_players
from bot.ports import choose_ports, host_port_free
from bot.settings import Settings
from bot.store import Store
from bot.warplans import (
    ConsoleSpec,
    WarPlan,
    WarplanLibrary,
    change_variables,
    render_environment,
    resolve_variables,
    templates_for,
    uncounted_reason,
)

log = logging.getLogger(__name__)
# Best-effort cleanup step: logged, never masking the original error.
_quiet = functools.partial(quietly, what="cleanup step", logger=log)
ROLLBACK_SETTLE = 1.0  # seconds; see _rollback_create

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
LOG_TAIL_ON_FAILURE = 20
PORT_CHECK_INTERVAL = 0.5
NO_READY_CHECK_SETTLE = 2.0  # without a ready check, a server that survives this long is up
READY_LOG_SLACK = timedelta(seconds=2)  # log lines may be stamped before StartedAt
MAX_LOG_TAIL = 2000
PLAYER_LOG_LINES = 20000  # log lines replayed to count players (the scheduler will follow live)


@dataclass
class Operation:
    """What an operation reports in its event, filled in by its body."""

    detail: str = ""
    payload: dict[str, Any] = field(default_factory=dict)

    def joinable(self, result: StartResult) -> None:
        """The server (re)started: consumers announce it ready at this address."""
        if not result.already_running:
            self.payload.update(connect=result.connect(), seconds=round(result.seconds, 1))


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise InvalidServerName(name)
    return name


@dataclass(frozen=True)
class ServerSummary:
    record: ServerRecord
    container: ContainerInfo | None
    unreachable: bool = False  # its Docker host did not answer

    @property
    def state(self) -> str:
        if self.unreachable:
            return "unreachable"
        return ServerStatus(self.record, self.container, None, "").state


@dataclass(frozen=True)
class DeleteResult:
    name: str
    kept_volumes: tuple[str, ...]
    removed_volumes: tuple[str, ...]


@dataclass(frozen=True)
class KeptData:
    """Data volumes a plain delete kept: their server record is gone."""

    server: str
    host: str
    warplan: str
    volumes: tuple[str, ...]


@dataclass(frozen=True)
class SettingsResult:
    name: str
    changed: tuple[str, ...]  # variable names, never values
    restarted: bool


@dataclass(frozen=True)
class ReinstallResult:
    name: str
    seconds: float
    backup_id: int | None  # the safety backup taken first, if the plan backs volumes up
    restarted: bool


@dataclass(frozen=True)
class UpdateResult:
    name: str
    old_image_id: str | None
    new_image_id: str
    pulled: bool
    restarted: bool

    @property
    def changed(self) -> bool:
        return self.old_image_id != self.new_image_id


class ServerService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        camps: Camps,
        warplans: WarplanLibrary,
        installs: InstallService | None = None,
    ) -> None:
        self.settings = settings
        # War plans' install steps (bot/installs.py), run before a server's first start.
        self.installs = installs or InstallService(store=store, instance=settings.instance_id)
        self.store = store
        self.camps = camps
        self.warplans = warplans
        self.instance = settings.instance_id
        # Serialises port choice within this process; the UNIQUE constraint covers others.
        self._allocation = asyncio.Lock()
        # Operations of this process by server; emptied as they end (graceful shutdown).
        self.in_flight: dict[str, str] = {}
        self.draining = False
        # Set by the composition root: backs a server up inside an operation that is about to
        # replace or destroy its data (update, purge). (server, actor, trigger)
        self.backup_hook: Callable[[str, str, str], Awaitable[object]] | None = None
        # Set by the composition root: clean up after a dead process's operation on a server
        # (its partial backups, an unfinished restore). Run with the taken-over lease held.
        self.recovery_hooks: list[Callable[[ServerRecord], Awaitable[None]]] = []
        # Per-server checks (player counts, hang checks, the board, catch-up) share one set of
        # limits, so together they never flood an engine or the event loop.
        c = settings.checks
        self.fanout = Fanout(total=c.concurrency, per_host=c.per_host, deadline=c.deadline)
        self.files = FileWriter()

    # --- helpers ----------------------------------------------------------------------------

    def camp_of(self, record: ServerRecord) -> Camp:
        """The Docker host the server lives on (every action on it goes there)."""
        return self.camps.get(record.host)

    def driver_of(self, record: ServerRecord) -> DockerDriver:
        return self.camp_of(record).driver

    @asynccontextmanager
    async def _operation(self, name: str, operation: str, actor: str) -> AsyncIterator[Operation]:
        """Hold the server's lease and write exactly one event (audit row) for the operation;
        on success in the same transaction that releases the lease, with what the body put
        in the yielded Operation (e.g. the address a start made joinable)."""
        try:
            self._refuse_when_draining()
            await self._acquire(name, operation, actor)
        except PeonError as e:
            await self.store.audit(
                actor, operation, name if NAME_RE.match(name) else None, False, str(e)
            )
            raise
        self.in_flight[name] = operation
        op = Operation()
        try:
            yield op
        except BaseException as e:
            detail = str(e) if isinstance(e, PeonError) else f"{type(e).__name__}"
            await _quiet(self.store.audit(actor, operation, name, False, detail))
            raise
        else:
            event = NewEvent(operation, name, actor, True, op.detail, op.payload)
            await self.store.finish_operation(name, event)
        finally:
            await _quiet(self.store.release(name))
            self.in_flight.pop(name, None)

    async def _acquire(self, name: str, operation: str, actor: str) -> None:
        """Take the lease. One held by a dead process does not block: what that process left
        is finished or undone first (as a restart's reconcile would), then the lease is ours."""
        try:
            await self.store.acquire(name, operation)
            return
        except ServerBusy:
            stale = await self.store.stale_leases(name)
            if not stale or not await self.recover(stale[0], actor):
                raise
        await self.store.acquire(name, operation)  # ServerNotFound when a create was undone

    async def recover(self, lease: StaleLease, actor: str) -> str | None:
        """Finish or undo what a dead process's operation left, then free its lease. Returns
        the report line's kind, or None when another process took it over first. On failure
        (its host is down, say) the lease goes back to the dead owner for the next attempt."""
        if not await self.store.take_over(lease):
            return None
        name, op = lease.name, lease.operation
        try:
            record = await self.store.get_server(name)
            if op == "create":
                await self._rollback_create(name, settle=ROLLBACK_SETTLE)
                kind, detail = "rolled_back", "interrupted create undone"
            elif op in ("delete", "purge") and record.state == ServerState.DELETING:
                # Past its point of no return (a purge only once its last copy is complete).
                await self._finish_delete(name, purge=op == "purge")
                kind, detail = "finished_deletes", f"interrupted {op} finished"
            else:
                info = await self._current_container(record)
                if info is not None and info.status == "paused":
                    await self.driver_of(record).unpause(info.id)  # a backup's pause, cut short
                # Its installer, if it died mid-install: the server stays not installed and
                # installs again at its next start.
                await self.installs.remove_leftovers(self.driver_of(record), name)
                for hook in self.recovery_hooks:
                    await hook(record)
                kind = "interrupted"
                detail = f"interrupted {op} released" + (
                    "; the data was kept" if op in ("delete", "purge") else ""
                )
                await self.store.release(name)
        except BaseException:
            await _quiet(self.store.hand_back(lease))
            raise
        await self.store.audit(actor, "recover", name, True, detail)
        log.warning("%s: %s (its process died)", name, detail)
        return kind

    def _refuse_when_draining(self) -> None:
        if self.draining:
            raise ShuttingDown()

    async def drain(self, timeout: float, actor: str = "peon:shutdown") -> list[str]:
        """Stop taking operations and wait up to `timeout` seconds for those running to end.
        What is still running then is recorded as interrupted (its lease stays, so the next
        start's reconcile finishes or undoes it); returns those, as "name (operation)"."""
        self.draining = True
        deadline = asyncio.get_running_loop().time() + timeout
        while self.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        left = dict(self.in_flight)
        for name, op in left.items():
            await _quiet(self.store.audit(actor, op, name, False, "interrupted by shutdown"))
        return [f"{name} ({op})" for name, op in left.items()]

    def operation(
        self, name: str, operation: str, actor: str
    ) -> AbstractAsyncContextManager[Operation]:
        """The server's lease plus one audit row, for operations outside this service (backup,
        restore): inside it, use the *_held methods."""
        return self._operation(name, operation, actor)

    async def stop_held(self, name: str) -> bool:
        """Graceful stop for a caller that holds the server's lease."""
        return await self._stop(name, None)

    async def start_held(self, name: str) -> StartResult:
        """Start and wait until ready, for a caller that holds the server's lease."""
        return await self._start(name, None)

    async def recreate_held(self, name: str, remove_volumes: list[str]) -> ContainerInfo:
        """Remove the (stopped) container and the given volumes, then create both anew,
        empty, for a caller that holds the lease (a restore fills them next)."""
        record = await self.store.get_server(name)
        plan = self._plan_for(record)
        info = await self._current_container(record)
        if info is not None:
            if info.running:
                raise ServerStateError(f"Server '{name}' must be stopped first.")
            await self.driver_of(record).remove(info.id)
        for vol in remove_volumes:
            await self.driver_of(record).remove_volume(labels.volume_name(name, vol))
        return await self._ensure_container(await self.store.get_server(name), plan, None)

    def plan_of(self, record: ServerRecord) -> WarPlan:
        return self._plan_for(record)

    async def container_of(self, record: ServerRecord) -> ContainerInfo | None:
        return await self._current_container(record)

    def _plan_for(self, record: ServerRecord) -> WarPlan:
        try:
            return self.warplans.get(record.warplan)
        except WarplanNotFound:
            raise ServerStateError(
                f"Server '{record.name}' uses war plan '{record.warplan}', which is not loaded; "
                "restore the plan file or run 'peon check'."
            ) from None

    async def _mounts(self, driver: DockerDriver, server: str, plan: WarPlan) -> dict[str, str]:
        """Volume id -> container path: the plan's volumes, plus one named volume for every
        VOLUME the image declares at a path the plan does not name. Docker would make those
        anonymous volumes, left behind at every recreate (update, restore) with their data
        out of reach; named, they follow the server like its other volumes."""
        mounts = {v.name: v.path for v in plan.volumes}
        # Compared as the engine does (it cleans `VOLUME /dir/` to /dir): a second mount at
        # the same place would make the create fail.
        named = {posixpath.normpath(p) for p in mounts.values()}
        for raw in await driver.image_volumes(plan.image):
            path = posixpath.normpath(raw)
            if path not in named:
                named.add(path)
                mounts[image_volume_id(path)] = path
        return mounts

    async def _write_files(
        self, record: ServerRecord, plan: WarPlan, container: str, *, only_missing: bool = False
    ) -> None:
        """Write the plan's config files into the server's volumes through its (stopped)
        container; a file that cannot be written refuses the step with nothing written."""
        if not plan.files:
            return
        host_ports = {p.name: p.host for p in record.ports}
        await self.files.write(
            self.driver_of(record), container, plan,
            templates_for(plan, record.variables, record.name, host_ports),
            server=record.name, only_missing=only_missing,
        )  # fmt: skip

    def _container_spec(
        self, record: ServerRecord, plan: WarPlan, mounts: dict[str, str]
    ) -> ContainerSpec:
        host_ports = {p.name: p.host for p in record.ports}
        templates = templates_for(plan, record.variables, record.name, host_ports)
        camp = self.camp_of(record)

        def binding(port: str) -> str:
            # The RCON port is PEON's, not the players': published only on the address PEON
            # reaches the host by (loopback for the local engine), when that is an address.
            if port == plan.rcon_port and _is_ip(camp.probe_address):
                return camp.probe_address
            return camp.bind_address

        return ContainerSpec(
            name=labels.container_name(record.name),
            image=plan.image,
            labels=labels.server_labels(self.instance, record.name, plan.name),
            env=dict(templates.env),
            command=[templates.fill(c) for c in plan.command] if plan.command else None,
            entrypoint=[templates.fill(c) for c in plan.entrypoint] if plan.entrypoint else None,
            ports={f"{p.container}/{p.protocol}": (binding(p.name), p.host) for p in record.ports},
            volumes={labels.volume_name(record.name, vid): path for vid, path in mounts.items()},
            memory=plan.resources.memory_bytes,
            cpus=plan.resources.cpus,
            stop_signal=plan.stop.signal,
            stdin_open=plan.stdin_open,
            user=plan.user,
        )

    async def _ensure_image(
        self, driver: DockerDriver, image: str, server: str, progress: Progress | None
    ) -> None:
        if await driver.image_info(image) is not None:
            return
        await emit_progress(progress, Phase(server, "pulling", image))

        async def on_pull(p: PullProgress) -> None:
            await emit_progress(progress, p)

        await driver.pull(image, on_pull)

    async def _current_container(self, record: ServerRecord) -> ContainerInfo | None:
        driver = self.driver_of(record)
        if record.container_id:
            info = await driver.inspect(record.container_id)
            if info is not None:
                return info
        # Found by label, never by name: the record may predate a recreate.
        found = await driver.list_containers(labels.instance_filter(self.instance, record.name))
        # The list gives a summary; the caller needs start time and exit code too.
        return await driver.inspect(found[0].id) if found else None

    async def _ensure_container(
        self, record: ServerRecord, plan: WarPlan, progress: Progress | None
    ) -> ContainerInfo:
        info = await self._current_container(record)
        driver = self.driver_of(record)
        if info is None:
            await self._ensure_image(driver, plan.image, record.name, progress)
            await emit_progress(progress, Phase(record.name, "creating", "container was missing"))
            mounts = await self._mounts(driver, record.name, plan)
            for vid in mounts:
                await driver.ensure_volume(
                    labels.volume_name(record.name, vid),
                    labels.volume_labels(self.instance, record.name, plan.name, vid),
                )
            cid = await driver.create_container(self._container_spec(record, plan, mounts))
            info = await driver.inspect(cid)
            if info is None:
                raise ContainerMissing(cid)
        if info.id != record.container_id:
            await self.store.update_server(record.name, container_id=info.id)
        return info

    # --- create -----------------------------------------------------------------------------

    async def create(
        self,
        warplan: str,
        name: str,
        values: dict[str, str] | None = None,
        *,
        actor: str,
        host: str | None = None,
        progress: Progress | None = None,
    ) -> ServerRecord:
        """Create a server from a war plan, on `host` or else on the host with the most free
        memory; on any failure nothing is left behind."""
        try:
            self._refuse_when_draining()
            validate_name(name)
            plan = self.warplans.get(warplan)
            variables = resolve_variables(plan, values or {}, name)
            if await self._existing(name, actor):
                raise ServerExists(name)
            camp = self.camps.get(host) if host else await self._place(plan)
            await self._ensure_image(camp.driver, plan.image, name, progress)
            if plan.install is not None:
                await self._ensure_image(camp.driver, plan.install.image, name, progress)
            record = await self._reserve(camp, plan, name, variables, actor)
            self.in_flight[name] = "create"
        except PeonError as e:
            await self.store.audit(
                actor, "create", name if NAME_RE.match(name or "") else None, False, str(e)
            )
            raise
        try:
            await emit_progress(progress, Phase(name, "creating"))
            volumes = await camp.driver.list_volumes(labels.instance_filter(self.instance, name))
            existing = {v.name for v in volumes}
            mounts = await self._mounts(camp.driver, name, plan)
            for vid, path in mounts.items():
                if vid not in {v.name for v in plan.volumes}:
                    log.info(
                        "%s: image VOLUME %s kept in volume %s (not in backups; name it in the "
                        "war plan to back it up)", name, path, labels.volume_name(name, vid),
                    )  # fmt: skip
            new = [
                labels.volume_name(name, vid)
                for vid in mounts
                if labels.volume_name(name, vid) not in existing
            ]
            # Written before the volumes exist, so a crash mid-create knows what to remove.
            await self.store.update_server(name, pending_volumes=new)
            info = await self._ensure_container(record, plan, None)
            if plan.install is not None:
                # At create, as Pterodactyl does: a script that fails leaves no server.
                await self._install(record, plan, actor, progress)
            await self._write_files(record, plan, info.id, only_missing=True)
            await self.store.update_server(
                name, state=ServerState.STOPPED, pending_volumes=[], container_id=info.id
            )
        except BaseException as e:
            await _quiet(self._rollback_create(name))
            detail = str(e) if isinstance(e, PeonError) else type(e).__name__
            await _quiet(self.store.audit(actor, "create", name, False, detail))
            self.in_flight.pop(name, None)
            raise
        await self.store.release(name)
        where = f" host={camp.name}" if len(self.camps) > 1 else ""
        await self.store.audit(actor, "create", name, True, f"warplan={plan.name}{where}")
        self.in_flight.pop(name, None)
        return await self.store.get_server(name)

    async def _existing(self, name: str, actor: str) -> bool:
        """Whether the name is taken; a create whose process died does not take it."""
        record = await self.store.find_server(name)
        if record is not None and record.interrupted:
            for lease in await self.store.stale_leases(name):
                await self.recover(lease, actor)
            record = await self.store.find_server(name)
        return record is not None

    async def allocation(self) -> dict[str, tuple[int, int]]:
        """Per host: (servers, bytes of their plans' memory limits)."""
        rows = []
        for r in await self.store.list_servers():
            plan = self._plan_or_none(r)
            rows.append((r.host, plan.resources.memory_bytes if plan else None))
        return allocation(rows)

    async def host_health(self) -> list[CampHealth]:
        """Every Docker host: reachable or why not, with what PEON placed there."""
        return await self.camps.health(await self.allocation())

    async def _place(self, plan: WarPlan) -> Camp:
        return await self.camps.place(plan.resources.memory_bytes, await self.allocation())

    async def _reserve(
        self, camp: Camp, plan: WarPlan, name: str, variables: dict[str, str], actor: str
    ) -> ServerRecord:
        wanted = [
            (p.name, p.protocol, None if p.host == "auto" else int(p.host)) for p in plan.ports
        ]
        same = {p.name: p.same_as for p in plan.ports if p.same_as}
        # A port free on this machine says nothing of another machine's.
        local = (camp.settings.base_url or "unix://").startswith("unix://")

        def free(port: int, proto: str) -> bool:
            return host_port_free(port, proto, camp.bind_address) if local else True

        async with self._allocation:
            for attempt in range(3):
                taken = (
                    await self.store.taken_ports(camp.name) | await camp.driver.published_ports()
                )
                chosen = await asyncio.to_thread(choose_ports, wanted, camp.pool, taken, free, same)
                bindings = [
                    PortBinding(
                        p.name,
                        # 'host': the game listens on (and announces) the port players use.
                        chosen[p.name] if p.container == "host" else p.container,
                        p.protocol,
                        chosen[p.name],
                    )
                    for p in plan.ports
                ]
                try:
                    return await self.store.create_server(
                        name=name,
                        warplan=plan.name,
                        image=plan.image,
                        variables=variables,
                        ports=bindings,
                        created_by=actor,
                        host=camp.name,
                    )
                except sqlite3.IntegrityError:
                    # Another process reserved one of these ports between our read and write.
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    async def _rollback_create(self, name: str, settle: float = 0.0) -> None:
        """Remove what a create made. `settle`: for a create whose process died, look again
        after that many seconds: a request it sent just before dying may still be completing
        in the engine, and what it makes must not outlive the rollback."""
        record = await self.store.find_server(name)
        if record is None:
            return
        driver = self.driver_of(record)
        pending = await self.store.pending_volumes(name)
        passes = 2 if settle else 1
        for attempt in range(passes):
            if attempt:
                await asyncio.sleep(settle)
            for info in await driver.list_containers(labels.instance_filter(self.instance, name)):
                await driver.remove(info.id, force=True)
            await self.installs.remove_leftovers(driver, name)  # it mounts the volumes too
            owner = {labels.INSTANCE: self.instance, labels.SERVER: name}
            for vol in pending:
                try:
                    # Only ours: a create refused because another instance owns a volume of
                    # that name must not remove that instance's data.
                    await driver.remove_volume(vol, owner=owner)
                except DockerError:
                    # In use by a container the engine was still creating: the last pass
                    # removes that container first.
                    if attempt == passes - 1:
                        raise
        await self.store.delete_server(name)

    # --- start / stop / restart ------------------------------------------------------------

    async def start(
        self, name: str, *, actor: str, progress: Progress | None = None
    ) -> StartResult:
        async with self._operation(name, "start", actor) as op:
            result = await self._start(name, progress, actor=actor)
            op.joinable(result)
            return result

    async def _start(
        self, name: str, progress: Progress | None, *, actor: str = "peon"
    ) -> StartResult:
        began = time.monotonic()
        record = await self.store.get_server(name)
        plan = self._plan_for(record)
        info = await self._ensure_container(record, plan, progress)
        address = self.camp_of(record).address
        if info.running:
            await self.store.update_server(name, state=ServerState.RUNNING)
            return StartResult(name, address, record.ports, 0.0, already_running=True)
        if await self.installs.needed(name, plan):
            # Its install never finished (a killed process, a failed reinstall): never start
            # a half-installed server.
            await self._install(record, plan, actor, progress)
        await self._write_files(record, plan, info.id)
        await emit_progress(progress, Phase(name, "starting"))
        driver = self.driver_of(record)
        await driver.start(info.id)
        started = await driver.inspect(info.id)
        await self.store.update_server(name, state=ServerState.RUNNING)
        await emit_progress(progress, Phase(name, "waiting for ready"))
        await self._wait_ready(record, plan, info.id, _ready_since(info, started))
        result = StartResult(name, address, record.ports, time.monotonic() - began)
        await emit_progress(progress, Phase(name, "ready", result.connect()))
        return result

    async def _wait_ready(
        self, record: ServerRecord, plan: WarPlan, cid: str, since: datetime | None
    ) -> None:
        ready = plan.ready
        try:
            async with asyncio.timeout(ready.timeout):
                if ready.log:
                    await self._wait_log(record, cid, compile_pattern(ready.log), since)
                if ready.port:
                    port = next(p for p in record.ports if p.name == ready.port)
                    await self._wait_port(record, cid, port.host)
                if not ready.log and not ready.port:
                    await asyncio.sleep(NO_READY_CHECK_SETTLE)
                    await self._fail_if_exited(record, cid)
        except TimeoutError:
            tail = await _quiet_logs(self.driver_of(record), cid)
            raise StartFailed(
                record.name,
                f"not ready after {ready.timeout} s; it is still running, see its logs",
                tail,
            ) from None

    async def _wait_log(
        self, record: ServerRecord, cid: str, pattern: Pattern, since: datetime | None
    ) -> None:
        driver = self.driver_of(record)
        async for line in driver.follow_logs(cid, since=since):
            if pattern.search(line):
                return
        # The log stream ends only when the container stops.
        await self._fail_if_exited(record, cid)
        raise StartFailed(
            record.name, "its log ended before the ready line", await _quiet_logs(driver, cid)
        )

    async def _wait_port(self, record: ServerRecord, cid: str, port: int) -> None:
        host = self.camp_of(record).probe_address
        # Not a bare connect: Docker's port proxy accepts on the published port even while
        # nothing listens inside, then hangs up at once (what tcp_answers tells apart).
        while not await tcp_answers(host, port, 2):
            await self._fail_if_exited(record, cid)
            await asyncio.sleep(PORT_CHECK_INTERVAL)

    async def _fail_if_exited(self, record: ServerRecord, cid: str) -> None:
        name, driver = record.name, self.driver_of(record)
        info = await driver.inspect(cid)
        if info is None:
            raise StartFailed(name, "its container disappeared")
        if not info.running:
            await self.store.update_server(name, state=ServerState.STOPPED)
            raise StartFailed(
                name, f"it exited with code {info.exit_code}", await _quiet_logs(driver, cid)
            )

    async def stop(self, name: str, *, actor: str, progress: Progress | None = None) -> bool:
        """Stop gracefully per the war plan; False when it was not running."""
        async with self._operation(name, "stop", actor):
            return await self._stop(name, progress)

    async def _stop(self, name: str, progress: Progress | None) -> bool:
        record = await self.store.get_server(name)
        info = await self._current_container(record)
        if info is None or not info.running:
            if record.state == ServerState.RUNNING:
                await self.store.update_server(name, state=ServerState.STOPPED)
            return False
        await emit_progress(progress, Phase(name, "stopping"))
        await self._graceful_stop(record, info)
        await self.store.update_server(name, state=ServerState.STOPPED)
        return True

    async def _graceful_stop(self, record: ServerRecord, info: ContainerInfo) -> None:
        try:
            plan: WarPlan | None = self._plan_for(record)
        except ServerStateError:
            plan = None  # the plan is gone; fall back to Docker's stop
        driver = self.driver_of(record)
        if plan is None:
            await driver.stop(info.id, grace=30)
            return
        stop = plan.stop
        if stop.console is None and stop.exec is None:
            await driver.stop(info.id, grace=stop.grace)
            return
        failed: str | None = None
        try:
            if stop.console is not None:
                console = self.console_of(record, plan, info.id)
                await console.send(stop.console, reply=False, ending=True)
            elif stop.exec is not None:
                code, output = await driver.exec(info.id, stop.exec, timeout=max(stop.grace, 5))
                if code != 0:
                    # A stop command that did not run (missing tool, nothing matched) would
                    # otherwise cost the whole grace before the fallback.
                    failed = f"exit {code}: {output.strip()[-200:]}"
        except (PeonError, TimeoutError) as e:
            failed = str(e)
        if failed is not None:
            log.warning(
                "stop command for %s failed (%s); using the stop signal", record.name, failed
            )
            await driver.stop(info.id, grace=stop.grace)
            return
        if await driver.wait(info.id, timeout=stop.grace) is None:
            log.warning("%s ignored its stop command for %ss; stopping it", record.name, stop.grace)
            await driver.stop(info.id, grace=5)

    async def restart(
        self, name: str, *, actor: str, progress: Progress | None = None
    ) -> StartResult:
        async with self._operation(name, "restart", actor) as op:
            await self._stop(name, progress)
            result = await self._start(name, progress, actor=actor)
            op.joinable(result)
            return result

    # --- install ----------------------------------------------------------------------------

    async def _install(
        self, record: ServerRecord, plan: WarPlan, actor: str, progress: Progress | None
    ) -> InstallResult:
        """Run the plan's install step; the server's volumes exist (its container was made)."""
        assert plan.install is not None  # noqa: S101 - callers check
        driver = self.driver_of(record)
        await self._ensure_image(driver, plan.install.image, record.name, progress)
        host_ports = {p.name: p.host for p in record.ports}
        # The environment the game container gets, as the container spec renders it.
        server_env = self._container_spec(record, plan, {}).env
        return await self.installs.run(
            driver=driver,
            record=record,
            plan=plan,
            env=installer_env(plan, server_env, record.name, host_ports, record.variables),
            redact=functools.partial(self.redact, record),
            actor=actor,
            progress=progress,
        )

    async def require_install(self, name: str) -> WarPlan:
        """The server's plan; refused in one sentence when it has no install step."""
        record = await self.store.get_server(name)
        plan = self._plan_for(record)
        if plan.install is None:
            raise ServerStateError(
                f"War plan '{plan.name}' has no install step, so '{name}' has nothing to reinstall."
            )
        return plan

    async def reinstall(
        self, name: str, *, actor: str, progress: Progress | None = None
    ) -> ReinstallResult:
        """Run the plan's install step again: stop the server, back it up when its plan backs
        volumes up, install, and start it again if it was running. On failure the server is
        left not installed (its next start installs again) and the refusal names the backup
        to restore."""
        async with self._operation(name, "reinstall", actor) as op:
            record = await self.store.get_server(name)
            plan = await self.require_install(name)
            assert plan.install is not None  # noqa: S101 - checked just above
            driver = self.driver_of(record)
            # The installer image first: a pull that fails leaves the server as it was.
            await self._ensure_image(driver, plan.install.image, name, progress)
            info = await self._ensure_container(record, plan, progress)
            was_running = info.running
            if info.running:
                await emit_progress(progress, Phase(name, "stopping"))
                await self._graceful_stop(record, info)
                await self.store.update_server(name, state=ServerState.STOPPED)
            backup_id: int | None = None
            if self.backup_hook is not None and any(v.backup for v in plan.volumes):
                await emit_progress(progress, Phase(name, "backing up"))
                try:
                    backup = await self.backup_hook(name, actor, "before-reinstall")
                except BaseException:
                    # Refused before the script touched anything: running again, as it was.
                    if was_running:
                        await _quiet(self._start(name, None, actor=actor))
                    raise
                backup_id = getattr(backup, "id", None)
                if backup_id is not None:
                    await self.installs.remember_backup(name, backup_id)
            op.payload["backup"] = backup_id
            try:
                result = await self._install(record, plan, actor, progress)
            except InstallFailed as e:
                restore = (
                    # Edge-neutral: restored by /backup restore or peon backup restore alike.
                    f"; restoring backup #{backup_id} brings its data back"
                    if backup_id is not None
                    else " (its plan backs no volume up, so there is no backup to restore)"
                )
                raise InstallFailed(
                    name, e.reason, e.logs,
                    f"The reinstall of '{name}' failed ({e.reason}){restore}.",
                ) from None  # fmt: skip
            op.detail = f"{plan.install.image} in {result.seconds:.1f} s"
            op.payload.update(seconds=round(result.seconds, 1), restarted=was_running)
            if was_running:
                op.joinable(await self._start(name, progress, actor=actor))
            return ReinstallResult(name, result.seconds, backup_id, was_running)

    # --- read-only --------------------------------------------------------------------------

    async def list_servers(self, hosts: Iterable[str] | None = None) -> list[ServerSummary]:
        """Every server (or those on `hosts`) with its container, at one engine call per
        host whatever the number of servers; a server on an unreachable host is listed with
        `unreachable` set instead of failing the whole list."""
        records = await self.store.list_servers()
        if hosts is not None:
            wanted = set(hosts)
            records = [r for r in records if r.host in wanted]
        asked = {r.host for r in records} & set(self.camps.names)

        async def containers_on(host: str) -> list[ContainerInfo] | None:
            try:
                # A host that hangs is as good as down: it must not hold up the whole list.
                async with asyncio.timeout(self.settings.checks.deadline):
                    return await self.camps.get(host).driver.list_containers(
                        labels.instance_filter(self.instance)
                    )
            except (DockerUnavailable, TimeoutError):
                return None

        found = dict(zip(asked, await asyncio.gather(*map(containers_on, asked)), strict=True))
        out = []
        for r in records:
            on_host = found.get(r.host)
            by_server = {c.labels.get(labels.SERVER): c for c in on_host or []}
            out.append(ServerSummary(r, by_server.get(r.name), unreachable=on_host is None))
        return out

    async def status(self, name: str) -> ServerStatus:
        record = await self.store.get_server(name)
        info = await self._current_container(record)
        driver = self.driver_of(record)
        usage = await driver.stats(info.id) if info is not None and info.running else None
        plan = self._plan_or_none(record)
        hang = describe_hang_check(plan, self.settings.crash) if plan is not None else None
        return ServerStatus(record, info, usage, self.camp_of(record).address, hang)

    async def players(self, status: ServerStatus) -> PlayerCount | None:
        """Who is playing on a running server, per its war plan; None when it cannot tell
        (no `players` in the plan, not running, or the query failed: status still shows)."""
        return await self._players(status.record, status.container)

    async def player_count(self, name: str) -> tuple[bool, PlayerCount | None]:
        """(running, players) without sampling CPU: what the idle watch polls."""
        record = await self.store.get_server(name)
        info = await self._current_container(record)
        running = info is not None and info.running
        return running, (await self._players(record, info) if running else None)

    async def players_of(self, summary: ServerSummary) -> PlayerCount | None:
        """Who plays on a listed server (`list_servers`), without asking the engine again
        unless its plan counts from the log (which needs the time its run started)."""
        return await self._players(summary.record, summary.container)

    async def is_running(self, name: str) -> bool:
        record = await self.store.get_server(name)
        info = await self._current_container(record)
        return info is not None and info.running

    def counts_players(self, record: ServerRecord) -> bool:
        """Whether the server's war plan says how to count its players, and the count is right
        for the server's settings (see `uncounted_reason`)."""
        try:
            plan = self.warplans.get(record.warplan)
        except WarplanNotFound:
            return False
        return plan.players is not None and self.uncounted_reason(record) is None

    def uncounted_reason(self, record: ServerRecord) -> str | None:
        """One sentence saying why this server's players cannot be counted with its settings
        (e.g. Valheim with crossplay: A2S always reports 0), or None."""
        try:
            plan = self.warplans.get(record.warplan)
        except WarplanNotFound:
            return None
        host_ports = {p.name: p.host for p in record.ports}
        env = render_environment(plan, record.variables, record.name, host_ports)
        return uncounted_reason(plan, env)

    async def _players(
        self, record: ServerRecord, info: ContainerInfo | None
    ) -> PlayerCount | None:
        try:
            plan = self.warplans.get(record.warplan)
        except WarplanNotFound:
            return None
        if plan.players is None or info is None or not info.running:
            return None
        if self.uncounted_reason(record) is not None:
            return None  # a wrong count (0 on a full server) must never feed an idle stop
        spec = plan.players
        try:
            if spec.protocol == "log":
                if info.started_at is None:  # a list summary: its start time needs an inspect
                    found = await self.driver_of(record).inspect(info.id)
                    if found is None or not found.running:
                        return None
                    info = found
                tracker = LogPlayerTracker.from_spec(spec)
                # Replay this run's log: joins and leaves since the container last started,
                # bounded so a status call never reads a long-running server's whole log.
                lines = await self.driver_of(record).logs(
                    info.id, tail=PLAYER_LOG_LINES, since=info.started_at
                )
                return await asyncio.to_thread(tracker.replay, lines)
            ports = {p.name: p.host for p in record.ports}
            return await count_players(
                spec, self.camp_of(record).probe_address, ports, server=record.name
            )
        except (PeonError, ValueError) as e:
            log.info("player count for %s unavailable: %s", record.name, e)
            return None

    async def say(self, name: str, message: str) -> bool:
        """Show `message` in game through the plan's `say` console command, when it has one.
        Best effort and lease-free: a warning must not wait for, or block, an operation."""
        record = await self.store.get_server(name)
        try:
            plan = self._plan_for(record)
        except ServerStateError:
            return False
        info = await self._current_container(record)
        if plan.say is None or info is None or not info.running:
            return False
        await self.console_of(record, plan, info.id).send(
            fill_message(plan.say, message), reply=False
        )
        return True

    def console_of(self, record: ServerRecord, plan: WarPlan, container: str) -> Console:
        """The server's console, by the plan's transport (stdin when the plan names none)."""
        spec = plan.console or ConsoleSpec()
        if spec.via != "rcon":
            return Console(record.name, spec, self.driver_of(record), container)
        return Console(
            record.name,
            spec,
            self.driver_of(record),
            container,
            rcon_host=self.camp_of(record).probe_address,
            rcon_port=next((p.host for p in record.ports if p.name == spec.port), None),
            rcon_password=record.variables.get(spec.password or ""),
        )

    async def logs(self, name: str, tail: int = 100) -> list[str]:
        record = await self.store.get_server(name)
        info = await self._current_container(record)
        if info is None:
            raise ServerStateError(f"Server '{name}' has no container, so no logs; start it first.")
        lines = await self.driver_of(record).logs(info.id, tail=max(1, min(tail, MAX_LOG_TAIL)))
        return self.redact(record, lines)

    def redact(self, record: ServerRecord, lines: list[str]) -> list[str]:
        """Log lines with the values of secret variables masked: a game that echoes its
        password must not put it in a Discord message."""
        secret = self._secret_names(record)
        values = sorted(
            (v for k, v in record.variables.items() if k in secret and len(v) >= 3),
            key=len,
            reverse=True,
        )
        if not values:
            return lines
        pattern = re.compile("|".join(map(re.escape, values)))
        return [pattern.sub("••••••", line) for line in lines]

    def _secret_names(self, record: ServerRecord) -> set[str]:
        try:
            plan = self.warplans.get(record.warplan)
        except WarplanNotFound:
            return set(record.variables)  # unknown plan: treat everything as possibly secret
        return {v.name for v in plan.variables if v.secret}

    async def require_console(self, name: str) -> None:
        """Refuse, in one sentence, a server whose war plan gives it no console."""
        record = await self.store.get_server(name)
        plan = self._plan_for(record)
        if plan.console_via is None:
            raise ConsoleError(
                f"War plan '{plan.name}' gives {name} no console (no stdin, RCON or exec)."
            )

    async def console(self, name: str, command: str, *, actor: str) -> ConsoleReply:
        """Send one console command the plan's way; return the reply with secrets masked.

        Lease-free, like `say`: a command must not wait for a long backup, and it cannot
        change what an operation relies on. Every command is audited with who sent it.
        """
        text = check_command(command)
        record = await self.store.get_server(name)
        shown = " ".join(self.redact(record, [text]))
        try:
            await self.require_console(name)
            plan = self._plan_for(record)
            info = await self._current_container(record)
            if info is None or not info.running:
                raise ServerStateError(f"Server '{name}' is not running.")
            reply = await self.console_of(record, plan, info.id).send(text)
        except PeonError as e:
            await _quiet(self.store.audit(actor, "console", name, False, f"{shown}: {e}"))
            raise
        await self.store.audit(actor, "console", name, True, shown)
        return ConsoleReply(
            plan.console_via or "stdin", "\n".join(self.redact(record, reply.splitlines()))
        )

    # --- update -----------------------------------------------------------------------------

    async def update(
        self, name: str, *, actor: str, pull: bool = True, progress: Progress | None = None
    ) -> UpdateResult:
        """Pull a newer image (if the image came from a registry), recreate, keep the data."""
        async with self._operation(name, "update", actor):
            record = await self.store.get_server(name)
            plan = self._plan_for(record)
            driver = self.driver_of(record)
            local = await driver.image_info(plan.image)
            pulled = False
            if pull and (local is None or local.repo_digests):
                # Pull before touching the server: a registry error leaves it as it was.
                await emit_progress(progress, Phase(name, "pulling", plan.image))

                async def on_pull(p: PullProgress) -> None:
                    await emit_progress(progress, p)

                local = await driver.pull(plan.image, on_pull)
                pulled = True
            elif local is None:
                await self._ensure_image(driver, plan.image, name, progress)
                local = await driver.image_info(plan.image)
            if local is None:
                raise ServerStateError(f"Image '{plan.image}' is not available for '{name}'.")
            info = await self._current_container(record)
            old_image = info.image_id if info else None
            was_running = bool(info and info.running)
            if info is not None:
                await self._back_up_before(
                    record, info, trigger="before-update", actor=actor, plan=plan, progress=progress
                )
                info = await self._current_container(record) or info
                if info.running:
                    await emit_progress(progress, Phase(name, "stopping"))
                    await self._graceful_stop(record, info)
                for path, vol in (await driver.unnamed_mounts(info.id, "peon-")).items():
                    # A container made before PEON named image VOLUMEs: its anonymous volume
                    # stays (data is never thrown away), and is said out loud.
                    log.warning(
                        "%s: anonymous volume %s (image VOLUME %s) is left behind by this "
                        "recreate; copy what you need from it, then 'docker volume rm' it",
                        name, vol, path,
                    )  # fmt: skip
                await driver.remove(info.id, force=True)
            await self.store.update_server(
                name, image=plan.image, container_id=None, state=ServerState.STOPPED
            )
            record = await self.store.get_server(name)
            await self._ensure_container(record, plan, progress)
            if was_running:
                await self._start(name, progress)
            return UpdateResult(name, old_image, local.id, pulled, was_running)

    async def _backup_first(
        self,
        name: str,
        actor: str,
        trigger: str,
        plan: WarPlan | None,
        progress: Progress | None = None,
    ) -> None:
        if self.backup_hook is None or plan is None or not any(v.backup for v in plan.volumes):
            return
        await emit_progress(progress, Phase(name, "backing up"))
        await self.backup_hook(name, actor, trigger)

    async def _back_up_before(
        self,
        record: ServerRecord,
        info: ContainerInfo,
        *,
        trigger: str,
        actor: str,
        plan: WarPlan | None,
        progress: Progress | None = None,
    ) -> None:
        """The backup an operation takes before it replaces or removes the data. A running
        server whose plan saves by stopping (Luanti's) is stopped first: its backup would
        otherwise start it again, only for the operation to stop it (a real game's whole
        start-up, for nothing). Should that backup fail, it is started again, as it was."""
        stop_first = info.running and plan is not None and saves_by_stopping(plan)
        if stop_first:
            await self._stop(record.name, progress)
        try:
            await self._backup_first(record.name, actor, trigger, plan, progress)
        except BaseException:
            if stop_first:
                await _quiet(self._start(record.name, None))
            raise

    def _plan_or_none(self, record: ServerRecord) -> WarPlan | None:
        try:
            return self._plan_for(record)
        except ServerStateError:
            return None

    # --- settings ---------------------------------------------------------------------------

    async def change_settings(
        self,
        name: str,
        values: Mapping[str, str],
        *,
        actor: str,
        progress: Progress | None = None,
    ) -> SettingsResult:
        """Change a server's variables, validated as at create (an empty secret keeps the old
        one; a create-only variable is refused), and recreate its container with them keeping
        all its data: backed up first, stopped gracefully, recreated, and started again if it
        was running. Same values: nothing is touched. The event names the variables changed,
        never their values."""
        async with self._operation(name, "settings", actor) as op:
            record = await self.store.get_server(name)
            plan = self._plan_for(record)
            variables, changed = change_variables(plan, record.variables, values, name)
            op.payload["changed"] = changed
            if not changed:
                op.detail = "no change"
                return SettingsResult(name, (), restarted=False)
            op.detail = "changed " + ", ".join(changed)
            driver = self.driver_of(record)
            # The image first: without it the container could not be made again.
            await self._ensure_image(driver, plan.image, name, progress)
            info = await self._current_container(record)
            was_running = bool(info and info.running)
            if info is not None:
                await self._back_up_before(
                    record, info, trigger="before-settings", actor=actor, plan=plan,
                    progress=progress,
                )  # fmt: skip
                info = await self._current_container(record) or info
                if info.running:
                    await emit_progress(progress, Phase(name, "stopping"))
                    await self._graceful_stop(record, info)
                await self._remove_for_recreate(record, info)
            # A process killed before this line leaves the old values and no container: the
            # next start makes it from the record, as it was.
            await self.store.update_server(
                name, variables=variables, container_id=None, state=ServerState.STOPPED
            )
            await self._ensure_container(await self.store.get_server(name), plan, progress)
            op.payload["restarted"] = was_running
            if was_running:
                await self._start(name, progress)
            return SettingsResult(name, tuple(changed), restarted=was_running)

    async def _remove_for_recreate(self, record: ServerRecord, info: ContainerInfo) -> None:
        """Remove a stopped container that is made again from the record next (its named
        volumes stay)."""
        driver = self.driver_of(record)
        for path, vol in (await driver.unnamed_mounts(info.id, "peon-")).items():
            # Made before PEON named image VOLUMEs: the anonymous volume stays, said out loud.
            log.warning(
                "%s: anonymous volume %s (image VOLUME %s) is left behind by this recreate; "
                "copy what you need from it, then 'docker volume rm' it", record.name, vol, path,
            )  # fmt: skip
        await driver.remove(info.id, force=True)

    # --- kept data --------------------------------------------------------------------------

    async def kept_data(self) -> list[KeptData]:
        """The data volumes of this instance whose server is gone (a plain delete keeps them),
        by server and host. Hosts that do not answer are left out."""
        names = {r.name for r in await self.store.list_servers()}

        async def volumes_on(camp: Camp) -> list[VolumeInfo]:
            try:
                return await camp.driver.list_volumes(labels.instance_filter(self.instance))
            except DockerUnavailable:
                return []

        found = await asyncio.gather(*(volumes_on(c) for c in self.camps))
        out = []
        for camp, volumes in zip(self.camps, found, strict=True):
            by_server: dict[str, list[VolumeInfo]] = {}
            for v in volumes:
                server = v.labels.get(labels.SERVER, "")
                if NAME_RE.match(server) and server not in names:
                    by_server.setdefault(server, []).append(v)
            for server, vols in by_server.items():
                plan = vols[0].labels.get(labels.WARPLAN, "")
                out.append(KeptData(server, camp.name, plan, tuple(sorted(v.name for v in vols))))
        return sorted(out, key=lambda k: (k.server, k.host))

    async def purge_kept(self, name: str, *, actor: str) -> DeleteResult:
        """Remove the data a plain delete kept; ServerExists if the name is a server (again).
        The name is held meanwhile by a record in state DELETING with the 'purge' lease, so no
        create can take the volumes back half removed, and a process killed midway has the
        purge finished by the next reconcile (as any purge past its point of no return)."""
        try:
            self._refuse_when_draining()
            validate_name(name)
            if await self.store.find_server(name) is not None:
                raise ServerExists(name)
            kept = [k for k in await self.kept_data() if k.server == name]
            if not kept:
                raise ServerNotFound(name)
            await self.store.create_server(
                name=name, warplan=kept[0].warplan, image="", variables={}, ports=[],
                created_by=actor, host=kept[0].host, state=ServerState.DELETING,
                operation="purge",
            )  # fmt: skip
        except PeonError as e:
            await self.store.audit(
                actor, "purge", name if NAME_RE.match(name or "") else None, False, str(e)
            )
            raise
        self.in_flight[name] = "purge"
        owner = {labels.INSTANCE: self.instance, labels.SERVER: name}
        removed: list[str] = []
        try:
            for k in kept:
                driver = self.camps.get(k.host).driver
                for vol in k.volumes:
                    if await driver.remove_volume(vol, owner=owner):
                        removed.append(vol)
            await self.store.delete_server(name)
        except BaseException as e:
            # What is left is listed as kept data again, to purge once the cause is fixed.
            await _quiet(self.store.delete_server(name))
            detail = str(e) if isinstance(e, PeonError) else type(e).__name__
            await _quiet(self.store.audit(actor, "purge", name, False, detail))
            raise
        finally:
            self.in_flight.pop(name, None)
        await self.store.audit(
            actor, "purge", name, True, "kept data: " + ", ".join(removed),
            payload={"volumes": removed, "kept": True},
        )  # fmt: skip
        return DeleteResult(name, (), tuple(removed))

    # --- delete -----------------------------------------------------------------------------

    async def delete(self, name: str, *, actor: str, purge: bool = False) -> DeleteResult:
        """Remove the container (after a graceful stop); keep the data unless `purge`. A purge
        of a name without a server removes the data a plain delete kept."""
        if purge and NAME_RE.match(name or "") and await self.store.find_server(name) is None:
            return await self.purge_kept(name, actor=actor)
        operation = "purge" if purge else "delete"
        async with self._operation(name, operation, actor):
            record = await self.store.get_server(name)
            info = await self._current_container(record)
            if purge and info is not None:
                # The data is about to go for good: keep one last copy (a failure stops here).
                plan = self._plan_or_none(record)
                await self._back_up_before(
                    record, info, trigger="before-purge", actor=actor, plan=plan
                )
                info = await self._current_container(record)
            await self.store.update_server(name, state=ServerState.DELETING)
            if info is not None and info.running:
                await self._graceful_stop(record, info)  # so the world is saved first
            return await self._finish_delete(name, purge)

    async def _finish_delete(self, name: str, purge: bool) -> DeleteResult:
        driver = self.driver_of(await self.store.get_server(name))
        for info in await driver.list_containers(labels.instance_filter(self.instance, name)):
            await driver.remove(info.id, force=True)
        await self.installs.remove_leftovers(driver, name)
        volumes = await driver.list_volumes(labels.instance_filter(self.instance, name))
        removed: list[str] = []
        if purge:
            for vol in volumes:
                await driver.remove_volume(vol.name)
                removed.append(vol.name)
        await self.store.delete_server(name)
        kept = tuple(v.name for v in volumes if v.name not in removed)
        return DeleteResult(name, kept, tuple(removed))

    # --- reconcile --------------------------------------------------------------------------

    async def recover_interrupted(self, actor: str) -> ReconcileReport:
        """Finish or undo the operations of dead processes (all servers): what a restart's
        reconcile does first, and a running bot does every check interval, so what a killed
        CLI left never waits for a restart."""
        report = ReconcileReport()
        for lease in await self.store.stale_leases():
            try:
                kind = await self.recover(lease, actor)
            except DockerUnavailable as e:
                # Its host is down: the lease stays for the next attempt to finish.
                report.unreachable.append(f"{lease.name} ({e})")
                continue
            except PeonError as e:
                report.unreachable.append(f"{lease.name} ({lease.operation}): {e}")
                continue
            if kind == "interrupted":
                report.interrupted.append(f"{lease.name} ({lease.operation})")
            elif kind is not None:
                getattr(report, kind).append(lease.name)
        return report

    async def reconcile(self, actor: str = "peon") -> ReconcileReport:
        """Make the records and the engine agree after a crash or outside changes.

        Unfinished creates are rolled back, unfinished deletes finished, other interrupted
        operations released; records whose container vanished are marked missing; labelled
        containers without a record are adopted when their war plan is loaded, else reported.
        Nothing with data is deleted silently.
        """
        report = await self.recover_interrupted(actor)
        records = await self.store.list_servers()
        # Hosts side by side: one that does not answer delays no other.
        await asyncio.gather(*(self._reconcile_host(camp, records, report, actor)
                               for camp in self.camps))  # fmt: skip
        return report

    async def _reconcile_host(
        self, camp: Camp, records: list[ServerRecord], report: ReconcileReport, actor: str
    ) -> None:
        """One host's part of `reconcile`: one engine call to list its containers (the
        summary has state and id), plus an inspect of each container to adopt only."""
        try:
            containers = await camp.driver.list_containers(labels.instance_filter(self.instance))
        except DockerUnavailable as e:
            # Nothing is known of its servers: they keep their records as they are.
            report.unreachable.append(str(e))
            return
        by_server = {c.labels.get(labels.SERVER, ""): c for c in containers}
        for record in records:
            if record.host != camp.name or record.operation:
                continue  # another host's, or a live operation in another process owns it
            info = by_server.pop(record.name, None)
            if info is None:
                if record.state not in (ServerState.MISSING, ServerState.CREATING):
                    await self.store.update_server(record.name, state=ServerState.MISSING)
                    report.missing.append(record.name)
                continue
            state = ServerState.RUNNING if info.running else ServerState.STOPPED
            if state != record.state or info.id != record.container_id:
                await self.store.update_server(record.name, state=state, container_id=info.id)
                report.refreshed.append(record.name)
        # Installers of a dead process (none of a live operation's): the server stays not
        # installed, so its next start installs again.
        report.installers.extend(await self.installs.remove_leftovers(camp.driver, idle_only=True))
        for server, info in by_server.items():
            # Adoption reads the container's environment and port bindings: inspect it.
            detailed = await camp.driver.inspect(info.id) if _adoptable(server) else None
            if detailed is not None and await self._adopt(camp, server, detailed, actor):
                report.adopted.append(server)
            else:
                report.orphans.append(info.name)

    async def _adopt(self, camp: Camp, server: str, info: ContainerInfo, actor: str) -> bool:
        plan_name = info.labels.get(labels.WARPLAN, "")
        if not NAME_RE.match(server) or plan_name not in self.warplans.names():
            return False
        plan = self.warplans.get(plan_name)
        bindings: list[PortBinding] = []
        for p in plan.ports:
            if p.container == "host":
                # Published on its own number: the lowest such port not yet given to another.
                given = {(b.container, b.protocol) for b in bindings}
                same = sorted(
                    int(c) for key, h in info.host_ports.items()
                    for c, proto in [key.split("/")]
                    if proto == p.protocol and int(c) == h and (h, proto) not in given
                )  # fmt: skip
                if not same:
                    return False
                bindings.append(PortBinding(p.name, same[0], p.protocol, same[0]))
                continue
            host = info.host_ports.get(f"{p.container}/{p.protocol}")
            if host is None:
                return False
            bindings.append(PortBinding(p.name, p.container, p.protocol, host))
        variables = {v.name: info.env[v.env] for v in plan.variables if v.env in info.env}
        try:
            await self.store.create_server(
                name=server,
                warplan=plan.name,
                image=info.image,
                variables=variables,
                ports=bindings,
                created_by="adopted",
                host=camp.name,
            )
        except (PeonError, sqlite3.IntegrityError):
            return False
        state = ServerState.RUNNING if info.running else ServerState.STOPPED
        await self.store.update_server(server, state=state, container_id=info.id)
        await self.store.release(server)
        await self.store.audit(actor, "adopt", server, True, f"container {info.name}")
        return True

    def public_variables(self, record: ServerRecord) -> dict[str, str]:
        """The record's variables for display: secrets masked."""
        secret = self._secret_names(record)
        return {k: ("••••••" if k in secret else v) for k, v in record.variables.items()}


def _adoptable(server: str) -> bool:
    return bool(NAME_RE.match(server))


def saves_by_stopping(plan: WarPlan) -> bool:
    """Whether the plan's backups stop the server to save it (and start it again after)."""
    return plan.save is not None and plan.save.mode == "stop"


def _ready_since(before: ContainerInfo, started: ContainerInfo | None) -> datetime | None:
    """Where to read the log for the ready line: from a moment before StartedAt (the engine
    stamps a line printed at once earlier than StartedAt, measured here in 3 of 5 starts), but
    never before the previous run of the container ended."""
    if started is None or started.started_at is None:
        return None
    since = started.started_at - READY_LOG_SLACK
    if before.finished_at is not None and before.finished_at > since:
        since = before.finished_at
    return since


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def image_volume_id(path: str) -> str:
    """A stable volume id for an image VOLUME path the plan does not name: readable, and
    unique (two paths that slug alike differ in the hash)."""
    slug = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")[:16].strip("-") or "root"
    return f"image-{slug}-{hashlib.sha256(path.encode()).hexdigest()[:6]}"


async def _quiet_logs(driver: DockerDriver, cid: str) -> list[str]:
    try:
        return await driver.logs(cid, tail=LOG_TAIL_ON_FAILURE)
    except PeonError:
        return []
