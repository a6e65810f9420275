"""The /api/v1 handlers: each parses, checks the token's permission, calls one core service and
renders through a model of bot/api/models.py. The route table at the bottom is also what the
OpenAPI document is generated from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from bot import rules
from bot.aio import Progress
from bot.api import models as m
from bot.api.auth import TOKEN_KEY, RateLimiter, authenticate
from bot.api.errors import ApiError
from bot.api.operations import Operations
from bot.errors import PeonError, ServerBusy, ServerExists, ShuttingDown
from bot.events import Event
from bot.models import ApiToken, Backup, Schedule, ServerRecord
from bot.permissions import ACTIONS, Level, PermissionDenied
from bot.servers import ServerSummary, validate_name
from bot.tokens import TokenService, check_token, token_level
from bot.warplans import change_variables, resolve_variables

if TYPE_CHECKING:
    from bot.app import Services
    from bot.automation import Automation, ScheduleView
    from bot.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SSE_POLL = 0.5  # seconds; events other processes commit are found by polling
SSE_KEEPALIVE = 15.0  # seconds between comment lines, so proxies keep an idle stream open
EVENTS_LIMIT = 500
# Integer query parameters' bounds: checked by the handlers and stated in the OpenAPI document
# (bot/api/openapi.py), so a client generating requests from it sends only accepted values.
QUERY_BOUNDS = {"tail": (1, 2000), "limit": (1, EVENTS_LIMIT), "after": (0, 2**62)}


class SchedulesReadOnly(PeonError):
    def __init__(self) -> None:
        super().__init__(
            "Schedules are changed through the running bot (peon run); this process serves "
            "the API without it."
        )


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    name: str  # the handler's method name; also the OpenAPI operationId
    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    public: bool = False
    query: tuple[tuple[str, str, str], ...] = ()  # (name, type, description)
    stream: bool = False  # text/event-stream


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        text=model.model_dump_json(), status=status, content_type="application/json"
    )


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}."


def _int_query(request: web.Request, name: str, default: int) -> int:
    lo, hi = QUERY_BOUNDS[name]
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "invalid_query", f"{name} must be a whole number.") from None
    if not lo <= value <= hi:
        raise ApiError(422, "invalid_query", f"{name} must be between {lo} and {hi}.")
    return value


def server_out(s: ServerSummary) -> m.ServerOut:
    r = s.record
    return m.ServerOut(
        name=r.name, warplan=r.warplan, host=r.host, state=s.state, operation=r.operation,
        ports=[m.PortOut(name=p.name, host=p.host, container=p.container, protocol=p.protocol)
               for p in r.ports],
        created_at=r.created_at, created_by=r.created_by,
    )  # fmt: skip


def backup_out(b: Backup) -> m.BackupOut:
    return m.BackupOut(
        id=b.id, server=b.server, created_at=b.created_at, complete=b.complete, size=b.size,
        seconds=b.seconds, trigger=b.trigger, actor=b.actor, locked=b.locked, warplan=b.warplan,
    )  # fmt: skip


def event_out(e: Event, full: bool) -> m.EventOut:
    if not full:
        return m.EventOut(id=e.id, at=e.at, kind=e.kind, server=e.server, ok=e.ok)
    return m.EventOut(
        id=e.id, at=e.at, kind=e.kind, server=e.server, ok=e.ok, actor=e.actor,
        detail=e.detail, payload=e.payload,
    )  # fmt: skip


class Api:
    """The handlers, over the services built once by the composition root."""

    def __init__(
        self,
        services: Services,
        *,
        automation: Automation | None = None,
        closing: asyncio.Event | None = None,
    ) -> None:
        self.services = services
        self.automation = automation
        self.tokens = TokenService(services.store)
        settings = services.settings.api
        rate, burst = (settings.rate, settings.burst) if settings else (10.0, 40)
        self.limiter = RateLimiter(rate, burst)
        self.players_can_start = bool(settings and settings.players_can_start)
        self.operations = Operations(services.store)
        self.closing = closing or asyncio.Event()

    # --- helpers ----------------------------------------------------------------------------

    def token(self, request: web.Request) -> ApiToken:
        return request[TOKEN_KEY]

    def allow(self, request: web.Request, action: str, server: str | None = None) -> ApiToken:
        token = self.token(request)
        check_token(token, action, server, players_can_start=self.players_can_start)
        return token

    @staticmethod
    def actor(token: ApiToken) -> str:
        return f"api:{token.name}"

    @staticmethod
    async def body(request: web.Request, model: type[T]) -> T:
        raw = await request.read()  # 413 past the app's client_max_size
        if not raw.strip():
            data: Any = {}
        else:
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "bad_json", "The request body is not valid JSON.") from None
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise ApiError(422, "invalid_body", _first_error(e)) from None

    async def _idle_server(self, name: str) -> ServerRecord:
        """The server, refused at once (not after a 202) when busy or while PEON drains."""
        if self.services.servers.draining:
            raise ShuttingDown()
        record = await self.services.store.get_server(name)
        if record.operation is not None:
            raise ServerBusy(name, record.operation)
        return record

    async def _launch(
        self, request: web.Request, action: str, server: str,
        work: Callable[[str, Progress], Awaitable[dict[str, Any]]],
    ) -> web.Response:  # fmt: skip
        actor = self.actor(self.token(request))

        async def run(progress: Progress) -> dict[str, Any]:
            return await work(actor, progress)

        accepted = await self.operations.launch(action, server, actor, run)
        return _json(accepted, 202)

    # --- servers ----------------------------------------------------------------------------

    async def list_servers(self, request: web.Request) -> web.Response:
        token = self.token(request)
        self.allow(request, "list", token.server)
        found = await self.services.servers.list_servers()
        if token.server is not None:
            found = [s for s in found if s.record.name == token.server]
        return _json(m.ServerList(servers=[server_out(s) for s in found]))

    async def get_server(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.allow(request, "status", name)
        servers = self.services.servers
        st = await servers.status(name)
        summary = ServerSummary(st.record, st.container)
        count = await servers.players(st) if st.container and st.container.running else None
        u = st.usage
        detail = m.ServerDetail(
            **server_out(summary).model_dump(), address=st.address,
            health=st.container.health if st.container else None,
            cpu_percent=u.cpu_percent if u else None, memory_bytes=u.memory_bytes if u else None,
            memory_limit=u.memory_limit if u else None,
            players_online=count.online if count else None,
            players=list(count.names) if count else [],
            variables=servers.public_variables(st.record),
        )  # fmt: skip
        return _json(detail)

    async def create_server(self, request: web.Request) -> web.Response:
        self.allow(request, "create")
        body = await self.body(request, m.ServerCreate)
        svc = self.services
        if svc.servers.draining:
            raise ShuttingDown()
        # Everything a create can refuse for its input is checked before the 202.
        validate_name(body.name)
        plan = svc.warplans.get(body.warplan)
        resolve_variables(plan, body.variables, body.name)
        if body.host is not None:
            svc.camps.get(body.host)
        if await svc.store.find_server(body.name) is not None:
            raise ServerExists(body.name)

        async def work(actor: str, progress: Progress) -> dict[str, Any]:
            record = await svc.servers.create(
                body.warplan, body.name, body.variables, actor=actor, host=body.host,
                progress=progress,
            )  # fmt: skip
            return {"host": record.host, "ports": {p.name: p.host for p in record.ports}}

        return await self._launch(request, "create", body.name, work)

    async def _lifecycle(self, request: web.Request, action: str) -> web.Response:
        name = request.match_info["name"]
        self.allow(request, action, name)
        await self._idle_server(name)
        servers = self.services.servers

        async def work(actor: str, progress: Progress) -> dict[str, Any]:
            if action == "stop":
                return {"was_running": await servers.stop(name, actor=actor, progress=progress)}
            call = servers.start if action == "start" else servers.restart
            result = await call(name, actor=actor, progress=progress)
            return {"connect": result.connect(), "already_running": result.already_running,
                    "seconds": round(result.seconds, 1)}  # fmt: skip

        return await self._launch(request, action, name, work)

    async def start_server(self, request: web.Request) -> web.Response:
        return await self._lifecycle(request, "start")

    async def stop_server(self, request: web.Request) -> web.Response:
        return await self._lifecycle(request, "stop")

    async def restart_server(self, request: web.Request) -> web.Response:
        return await self._lifecycle(request, "restart")

    async def update_server(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.allow(request, "update", name)
        body = await self.body(request, m.UpdateIn)
        await self._idle_server(name)
        servers = self.services.servers

        async def work(actor: str, progress: Progress) -> dict[str, Any]:
            r = await servers.update(name, actor=actor, pull=body.pull, progress=progress)
            return {"changed": r.changed, "restarted": r.restarted, "pulled": r.pulled}

        return await self._launch(request, "update", name, work)

    async def delete_server(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.allow(request, "delete", name)
        purge = request.query.get("purge", "false").lower()
        if purge not in ("true", "false"):
            raise ApiError(422, "invalid_query", "purge must be true or false.")
        await self._idle_server(name)
        servers = self.services.servers

        async def work(actor: str, progress: Progress) -> dict[str, Any]:
            d = await servers.delete(name, actor=actor, purge=purge == "true")
            return {"kept_volumes": list(d.kept_volumes),
                    "removed_volumes": list(d.removed_volumes)}  # fmt: skip

        return await self._launch(request, "purge" if purge == "true" else "delete", name, work)

    async def server_logs(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.allow(request, "logs", name)
        tail = _int_query(request, "tail", 100)
        lines = await self.services.servers.logs(name, tail)
        return _json(m.LogsOut(server=name, lines=lines))

    async def server_console(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        token = self.allow(request, "console", name)
        body = await self.body(request, m.ConsoleIn)
        reply = await self.services.servers.console(name, body.command, actor=self.actor(token))
        return _json(m.ConsoleOut(server=name, how=reply.how, reply=reply.text))

    async def get_settings(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.allow(request, "status", name)
        record = await self.services.store.get_server(name)
        variables = self.services.servers.public_variables(record)
        return _json(m.SettingsOut(server=name, variables=variables))

    async def change_settings(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.allow(request, "settings", name)
        body = await self.body(request, m.SettingsIn)
        record = await self._idle_server(name)
        servers = self.services.servers
        change_variables(servers.plan_of(record), record.variables, body.variables, name)

        async def work(actor: str, progress: Progress) -> dict[str, Any]:
            r = await servers.change_settings(name, body.variables, actor=actor, progress=progress)
            return {"changed": list(r.changed), "restarted": r.restarted}

        return await self._launch(request, "settings", name, work)

    async def get_operation(self, request: web.Request) -> web.Response:
        op = self.operations.get(request.match_info["operation"])
        if op is None:
            raise ApiError(404, "operation_not_found",
                           "There is no such operation (or PEON restarted since).")  # fmt: skip
        self.allow(request, "status", op.server)
        return _json(op)

    # --- backups ----------------------------------------------------------------------------

    async def _listing_scope(self, request: web.Request) -> str | None:
        """The server a listing is for: ?server=, else the token's own one (a token for one
        server lists only that one's); a server that does not exist is a 404, not []."""
        server = request.query.get("server") or self.token(request).server
        self.allow(request, "list", server)
        if server is not None:
            await self.services.store.get_server(server)
        return server

    async def list_backups(self, request: web.Request) -> web.Response:
        server = await self._listing_scope(request)
        found = await self.services.backups.list(server)
        return _json(m.BackupList(backups=[backup_out(b) for b in found]))

    async def create_backup(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.allow(request, "backup", name)
        await self._idle_server(name)
        backups = self.services.backups

        async def work(actor: str, progress: Progress) -> dict[str, Any]:
            b = await backups.create(name, actor=actor)
            return {"backup": b.id, "size": b.size, "seconds": round(b.seconds, 1)}

        return await self._launch(request, "backup", name, work)

    async def restore_backup(self, request: web.Request) -> web.Response:
        b = await self.services.store.get_backup(int(request.match_info["id"]))
        self.allow(request, "restore", b.server)
        await self._idle_server(b.server)
        backups = self.services.backups

        async def work(actor: str, progress: Progress) -> dict[str, Any]:
            safety = await backups.restore(b.server, b.id, actor=actor)
            return {"backup": b.id, "safety_backup": safety.id if safety else None}

        return await self._launch(request, "restore", b.server, work)

    async def delete_backup(self, request: web.Request) -> web.Response:
        b = await self.services.store.get_backup(int(request.match_info["id"]))
        token = self.allow(request, "restore", b.server)
        await self.services.backups.delete(b.id, self.actor(token))
        return _json(m.Deleted(deleted=f"backup #{b.id}"))

    async def lock_backup(self, request: web.Request) -> web.Response:
        b = await self.services.store.get_backup(int(request.match_info["id"]))
        token = self.allow(request, "backup", b.server)
        body = await self.body(request, m.LockIn)
        b = await self.services.backups.set_locked(b.id, body.locked, self.actor(token))
        return _json(backup_out(b))

    # --- schedules --------------------------------------------------------------------------

    def _schedule_out(self, view: ScheduleView | None, s: Schedule) -> m.ScheduleOut:
        if view is not None:
            description, runs = view.description, view.next_runs
        else:
            description = rules.rule_of(s).describe()
            runs = [] if s.paused else rules.next_runs(s, datetime.now(UTC))
        return m.ScheduleOut(
            id=s.id, server=s.server, kind=s.kind, description=description, paused=s.paused,
            created_by=s.created_by, next=[m.ScheduleRun(action=a, at=w) for a, w in runs],
        )  # fmt: skip

    async def list_schedules(self, request: web.Request) -> web.Response:
        server = await self._listing_scope(request)
        if self.automation is not None:
            views = await self.automation.list(server)
            out = [self._schedule_out(v, v.schedule) for v in views]
        else:
            found = await self.services.store.list_schedules(server)
            out = [self._schedule_out(None, s) for s in found]
        return _json(m.ScheduleList(schedules=out))

    def _automation(self) -> Automation:
        if self.automation is None:
            raise SchedulesReadOnly()
        return self.automation

    async def create_schedule(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        token = self.allow(request, "schedule", name)
        b = await self.body(request, m.ScheduleCreate)
        auto, actor = self._automation(), self.actor(token)

        def need(**fields: str | None) -> None:
            missing = [k for k, v in fields.items() if not v]
            if missing:
                raise ApiError(422, "invalid_body",
                               f"A {b.kind} schedule needs {' and '.join(missing)}.")  # fmt: skip

        if b.kind == "window":
            need(days=b.days, start=b.start, stop=b.stop)
            view = await auto.add_window(name, days=b.days or "", start=b.start or "",
                                         stop=b.stop or "", zone=b.zone, actor=actor)  # fmt: skip
        elif b.kind == "idle":
            need(after=b.after)
            view = await auto.add_idle(name, b.after or "", actor)
        elif b.kind == "cron":
            need(cron=b.cron)
            view = await auto.add_cron(
                name, b.cron or "", b.action, zone=b.zone, command=b.command,
                only_when_running=b.only_when_running, actor=actor,
            )  # fmt: skip
        else:
            view = await auto.add_timer(name, after=b.after, at=b.at, zone=b.zone, actor=actor,
                                        action=b.action)  # fmt: skip
        return _json(self._schedule_out(view, view.schedule), 201)

    async def delete_schedule(self, request: web.Request) -> web.Response:
        s = await self.services.store.get_schedule(int(request.match_info["id"]))
        token = self.allow(request, "schedule", s.server)
        await self._automation().remove(s.id, self.actor(token))
        return _json(m.Deleted(deleted=f"schedule #{s.id}"))

    async def pause_schedule(self, request: web.Request) -> web.Response:
        s = await self.services.store.get_schedule(int(request.match_info["id"]))
        token = self.allow(request, "schedule", s.server)
        body = await self.body(request, m.PauseIn)
        view = await self._automation().set_paused(s.id, body.paused, self.actor(token))
        return _json(self._schedule_out(view, view.schedule))

    # --- war plans and hosts ----------------------------------------------------------------

    def _warplan_out(self, name: str) -> m.WarplanOut:
        plan = self.services.warplans.get(name)
        return m.WarplanOut(
            name=plan.name, title=plan.title, description=plan.description, image=plan.image,
            variables=[
                m.VariableOut(
                    name=v.name, description=v.description, type=v.type, required=v.required,
                    secret=v.secret, choices=v.choices,
                    default=None if v.secret or v.default is None else str(v.default),
                )
                for v in plan.variables
            ],
        )  # fmt: skip

    async def list_warplans(self, request: web.Request) -> web.Response:
        self.allow(request, "warplan")
        lib = self.services.warplans
        return _json(m.WarplanList(
            warplans=[self._warplan_out(n) for n in lib.names()],
            errors=[str(e) for e in lib.catalog.errors],
        ))  # fmt: skip

    async def get_warplan(self, request: web.Request) -> web.Response:
        self.allow(request, "warplan")
        return _json(self._warplan_out(request.match_info["name"]))

    async def list_hosts(self, request: web.Request) -> web.Response:
        self.allow(request, "list")
        if self.token(request).server is not None:
            raise ApiError(403, "permission_denied",
                           "A token for one server cannot see the Docker hosts.")  # fmt: skip
        health = await self.services.servers.host_health()
        return _json(m.HostList(hosts=[
            m.HostOut(
                name=h.name, reachable=h.reachable, error=h.error,
                version=h.engine.version if h.engine else None, servers=h.servers,
                allocated_memory=h.allocated, memory=h.engine.memory if h.engine else None,
                cpus=h.engine.cpus if h.engine else None,
            ) for h in health
        ]))  # fmt: skip

    # --- events -----------------------------------------------------------------------------

    def _event_scope(self, request: web.Request) -> tuple[str | None, bool]:
        """(server filter, full detail): a token for one server sees only its events; who
        may not read the audit log sees what happened, not who did it or the details."""
        token = self.token(request)
        server = request.query.get("server") or token.server
        self.allow(request, "list", server)
        if token.server is not None and server != token.server:
            raise ApiError(403, "permission_denied", "This token is for another server.")
        return server, token_level(token, server) >= Level.OPERATOR

    async def list_events(self, request: web.Request) -> web.Response:
        server, full = self._event_scope(request)
        store = self.services.store
        limit = _int_query(request, "limit", 100)
        if "after" in request.query:
            after = _int_query(request, "after", 0)
            found = await store.events_after(after, limit, server)
        else:
            found = list(reversed(await store.latest_events(server, limit)))
        return _json(m.EventList(events=[event_out(e, full) for e in found]))

    async def stream_events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events from an event id on: Last-Event-ID (a reconnecting EventSource
        sends it) or ?after=, else only what happens from now on."""
        server, full = self._event_scope(request)
        store = self.services.store
        raw = request.headers.get("Last-Event-ID")
        if raw is not None and not (raw.isdigit() and len(raw) <= 18):
            raise ApiError(422, "invalid_header", "Last-Event-ID must be an event id.")
        if raw is not None:
            position = int(raw)
        elif "after" in request.query:
            position = _int_query(request, "after", 0)
        else:
            position = await store.last_event_id()
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass each event on as it comes
        })  # fmt: skip
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        with contextlib.suppress(ConnectionResetError):  # the client went away: the normal end
            await self._stream(response, store, server, full, position)
        return response

    async def _stream(
        self, response: web.StreamResponse, store: Store, server: str | None, full: bool,
        position: int,
    ) -> None:  # fmt: skip
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while not self.closing.is_set():
            seen = store.generation
            batch = await store.events_after(position, 200, server)
            for e in batch:
                data = event_out(e, full).model_dump_json()
                await response.write(f"id: {e.id}\nevent: {e.kind}\ndata: {data}\n\n".encode())
                position = e.id
            if batch:
                quiet_since = loop.time()
                continue
            if loop.time() - quiet_since >= SSE_KEEPALIVE:
                await response.write(b": keep-alive\n\n")
                quiet_since = loop.time()
            await store.wait_for_events(SSE_POLL, seen)

    async def whoami(self, request: web.Request) -> web.Response:
        token = self.token(request)
        may = []
        for action in ACTIONS:
            with contextlib.suppress(PermissionDenied):
                check_token(token, action, token.server,
                            players_can_start=self.players_can_start)  # fmt: skip
                may.append(action)
        return _json(m.TokenOut(name=token.name, role=token.role, server=token.server, may=may))

    async def openapi(self, request: web.Request) -> web.Response:
        from bot.api.openapi import document  # noqa: PLC0415 - built on first request

        return web.json_response(document())


Q_SERVER = ("server", "string", "Only this server's.")
ROUTES: list[Route] = [
    Route("GET", "/api/v1/openapi.json", "openapi", "This document", public=True),
    Route("GET", "/api/v1/token", "whoami", "The calling token and what it may do",
          response=m.TokenOut),
    Route("GET", "/api/v1/servers", "list_servers", "List servers", response=m.ServerList),
    Route("POST", "/api/v1/servers", "create_server", "Create a server from a war plan",
          body=m.ServerCreate, response=m.OperationAccepted, status=202),
    Route("GET", "/api/v1/servers/{name}", "get_server", "A server's status",
          response=m.ServerDetail),
    Route("DELETE", "/api/v1/servers/{name}", "delete_server",
          "Delete a server (data kept unless purge=true)", response=m.OperationAccepted,
          status=202, query=(("purge", "boolean", "Also delete its data volumes."),)),
    Route("POST", "/api/v1/servers/{name}/start", "start_server", "Start, until joinable",
          response=m.OperationAccepted, status=202),
    Route("POST", "/api/v1/servers/{name}/stop", "stop_server", "Stop gracefully",
          response=m.OperationAccepted, status=202),
    Route("POST", "/api/v1/servers/{name}/restart", "restart_server", "Stop and start",
          response=m.OperationAccepted, status=202),
    Route("POST", "/api/v1/servers/{name}/update", "update_server",
          "Pull a newer image and recreate, data kept", body=m.UpdateIn,
          response=m.OperationAccepted, status=202),
    Route("GET", "/api/v1/servers/{name}/logs", "server_logs", "Last log lines (secrets masked)",
          response=m.LogsOut, query=(("tail", "integer", "How many lines, 1-2000."),)),
    Route("POST", "/api/v1/servers/{name}/console", "server_console", "Send a console command",
          body=m.ConsoleIn, response=m.ConsoleOut),
    Route("GET", "/api/v1/servers/{name}/settings", "get_settings",
          "Its settings (secrets masked)", response=m.SettingsOut),
    Route("PATCH", "/api/v1/servers/{name}/settings", "change_settings",
          "Change settings; recreated, data kept", body=m.SettingsIn,
          response=m.OperationAccepted, status=202),
    Route("POST", "/api/v1/servers/{name}/backups", "create_backup", "Back it up now",
          response=m.OperationAccepted, status=202),
    Route("POST", "/api/v1/servers/{name}/schedules", "create_schedule", "Add a schedule",
          body=m.ScheduleCreate, response=m.ScheduleOut, status=201),
    Route("GET", "/api/v1/operations/{operation}", "get_operation", "A long operation's state",
          response=m.OperationOut),
    Route("GET", "/api/v1/backups", "list_backups", "Backups, newest first",
          response=m.BackupList, query=(Q_SERVER,)),
    Route("POST", "/api/v1/backups/{id}/restore", "restore_backup",
          "Replace its server's data with this backup", response=m.OperationAccepted,
          status=202),
    Route("PUT", "/api/v1/backups/{id}/lock", "lock_backup", "Lock or unlock (never pruned)",
          body=m.LockIn, response=m.BackupOut),
    Route("DELETE", "/api/v1/backups/{id}", "delete_backup", "Delete a backup",
          response=m.Deleted),
    Route("GET", "/api/v1/schedules", "list_schedules", "Schedules and their next runs",
          response=m.ScheduleList, query=(Q_SERVER,)),
    Route("PUT", "/api/v1/schedules/{id}/pause", "pause_schedule", "Pause or resume",
          body=m.PauseIn, response=m.ScheduleOut),
    Route("DELETE", "/api/v1/schedules/{id}", "delete_schedule", "Remove a schedule",
          response=m.Deleted),
    Route("GET", "/api/v1/warplans", "list_warplans", "War plans", response=m.WarplanList),
    Route("GET", "/api/v1/warplans/{name}", "get_warplan", "One war plan",
          response=m.WarplanOut),
    Route("GET", "/api/v1/hosts", "list_hosts", "Docker hosts", response=m.HostList),
    Route("GET", "/api/v1/events", "list_events", "Events (the audit log), oldest first",
          response=m.EventList,
          query=(Q_SERVER, ("after", "integer", "Those after this event id."),
                 ("limit", "integer", "At most this many, 1-500 (default 100)."))),
    Route("GET", "/api/v1/events/stream", "stream_events",
          "Server-Sent Events, resumable with Last-Event-ID or ?after=", response=m.EventOut,
          stream=True, query=(Q_SERVER, ("after", "integer", "Start after this event id."))),
]  # fmt: skip


def wrap(api: Api, route: Route) -> Handler:
    handler: Handler = getattr(api, route.name)
    if route.public:
        return handler

    async def guarded(request: web.Request) -> web.StreamResponse:
        await authenticate(request, api.tokens, api.limiter)
        return await handler(request)

    return guarded
