"""The original PEON orchestrator's API 1.0, for its existing clients, mapped onto war plans.

Seen in the-peon-project/peon-orc: documentation/api/1.0/peon-api-v1.0.yml (the Swagger 2.0
document at commit 431b5f2^, before it moved to the main project) for the paths and the create
payload, and app/modules/api_v1.py + servers.py (server_get_server) for the answers:

- `GET /api/1.0/servers`, `POST /api/1.0/servers` with {game_uid, servername, description,
  settings: [{type: env|json|txt, name, content}]}: the war plan named game_uid, a server named
  servername; created, then started unless `start_later` is true (as the original did).
- `PUT /api/1.0/server/{start|stop|restart}/{game_uid}.{servername}`,
  `GET /api/1.0/server/get/{game_uid}.{servername}`,
  `DELETE /api/1.0/server/destroy/{game_uid}.{servername}` (body {eradicate: "True"} also
  deletes the data).

The original authenticated with an `X-Api-Key` header: accepted here as a PEON API token
(as is `Authorization: Bearer`). Answers keep the original's shapes (a server object, or
{status, info}); refusals carry both {status: "error", info} and PEON's {error: {code,
message}}. env settings become the plan's variables (matched by environment name or variable
name); json and txt settings reach the plan's `files:` through the variables their keys are
templated from (file_to_variables), and are refused with 422 where they cannot.
"""

from __future__ import annotations

import json
import posixpath
import re
from datetime import UTC
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from bot.api import models as m
from bot.api.auth import authenticate
from bot.api.errors import ApiError, code_of, status_of
from bot.api.routes import Api, Handler
from bot.errors import PeonError
from bot.models import ServerRecord
from bot.servers import ServerSummary, validate_name
from bot.warplans import WarPlan, resolve_variables

TRUE = ("true", "1", "yes")


def _description_key(record: ServerRecord) -> str:
    """Where a server's description is kept: keyed by its creation too, so a later server of
    the same name (made by Discord, the CLI or /api/v1, which never clear it) starts blank."""
    created = record.created_at.astimezone(UTC).isoformat(timespec="milliseconds")  # as stored
    return f"compat:description:{record.name}:{created}"


def _refusal(status: int, code: str, message: str) -> web.Response:
    body = {"status": "error", "info": message, "error": {"code": code, "message": message}}
    return web.json_response(body, status=status)


def env_to_variables(plan: WarPlan, content: Any) -> dict[str, str]:
    """An env setting's {NAME: value} as the plan's variables: NAME is a variable's
    environment name or its own name."""
    if not isinstance(content, dict):
        raise ApiError(422, "invalid_body", "An env setting's content must be an object.")
    by_key: dict[str, str] = {}
    for v in plan.variables:
        by_key[v.name.lower()] = v.name
        if v.env:
            by_key[v.env.lower()] = v.name
    out: dict[str, str] = {}
    for key, value in content.items():
        name = by_key.get(str(key).lower())
        if name is None:
            known = ", ".join(sorted(v.name for v in plan.variables)) or "none"
            raise ApiError(422, "unknown_setting",
                           f"War plan '{plan.name}' has no setting '{str(key)[:40]}' "
                           f"(its settings: {known}).")  # fmt: skip
        out[name] = "" if value is None else str(value)
    return out


VAR_ONLY = re.compile(r"^\{var:([a-z][a-z0-9_]{0,47})\}$")


def _flatten(content: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted keys of a plan's files: set."""
    out: dict[str, Any] = {}
    for key, value in content.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def file_to_variables(plan: WarPlan, setting: m.CompatSetting) -> dict[str, str]:
    """A json or txt setting as the plan's variables, through its `files:` (SCHEMA of issue
    15): the file whose path (or its last part) is the setting's name; a json key whose
    `set:` template is exactly {var:NAME}, or a text file whose content is exactly
    {var:NAME}, sets that variable. Anything else cannot be mapped and is refused."""

    def refuse(why: str) -> ApiError:
        return ApiError(422, "setting_not_mapped",
                        f"The {setting.type} setting '{setting.name[:40]}' cannot be applied: "
                        f"{why}.")  # fmt: skip

    files = plan.files
    spec = next((f for f in files if setting.name in (f.path, posixpath.basename(f.path))), None)
    if spec is None:
        names = ", ".join(f.path for f in files) or "none"
        raise refuse(f"war plan '{plan.name}' writes no file of that name (its files: {names})")
    if setting.type == "txt":
        found = VAR_ONLY.match(spec.content or "") if spec.format == "text" else None
        if found is None or not isinstance(setting.content, str):
            raise refuse("its file is not written whole from one variable")
        return {found[1]: setting.content}
    if not isinstance(setting.content, dict):
        raise refuse("its content must be an object")
    out: dict[str, str] = {}
    for key, value in _flatten(setting.content).items():
        found = VAR_ONLY.match(str((spec.set or {}).get(key, "")))
        if found is None or isinstance(value, list):
            raise refuse(f"key '{key[:40]}' is not set from a variable of the plan")
        text = json.dumps(value) if isinstance(value, bool) else str(value)  # true, not True
        out[found[1]] = "" if value is None else text
    return out


class Compat:
    def __init__(self, api: Api) -> None:
        self.api = api

    def guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                await authenticate(request, self.api.tokens, self.api.limiter, api_key=True)
                return await handler(request)
            except ApiError as e:
                resp = _refusal(e.status, e.code, str(e))
                resp.headers.update(e.headers)
                return resp
            except PeonError as e:
                return _refusal(status_of(e), code_of(e), str(e))

        return guarded

    async def _out(self, record: ServerRecord) -> m.CompatServerOut:
        servers = self.api.services.servers
        info = await servers.container_of(record)
        state = ServerSummary(record, info).state
        description = await self.api.services.store.get_meta(_description_key(record))
        return m.CompatServerOut(
            game_uid=record.warplan, servername=record.name,
            container_state=info.status if info else "missing", server_state=state,
            description=description or "", server_config=servers.public_variables(record),
        )  # fmt: skip

    def _uid(self, request: web.Request) -> tuple[str, str]:
        """`{game_uid}.{servername}` -> the server's name, checked against its war plan."""
        game, sep, name = request.match_info["uid"].partition(".")
        if not sep:
            raise ApiError(400, "bad_server_uid",
                           "Name the server as {game_uid}.{servername}.")  # fmt: skip
        validate_name(name)
        return game, name

    async def _record(self, request: web.Request, action: str) -> ServerRecord:
        game, name = self._uid(request)
        self.api.allow(request, action, name)
        record = await self.api.services.store.get_server(name)
        if record.warplan != game:
            raise ApiError(
                404,
                "server_not_found",
                f"Server '{name}' runs war plan '{record.warplan}', not '{game[:40]}'.",
            )
        return record

    async def list_servers(self, request: web.Request) -> web.Response:
        token = self.api.allow(request, "list", self.api.token(request).server)
        records = await self.api.services.store.list_servers()
        out = [await self._out(r) for r in records if token.server in (None, r.name)]
        return web.json_response([o.model_dump(mode="json") for o in out])

    async def create_server(self, request: web.Request) -> web.Response:
        token = self.api.allow(request, "create")
        raw = await self.api.body(request, m.CompatServerCreate)
        svc, actor = self.api.services, self.api.actor(token)
        validate_name(raw.servername)
        plan = svc.warplans.get(raw.game_uid)
        values: dict[str, str] = {}
        for s in raw.settings:
            if s.type == "env":
                values.update(env_to_variables(plan, s.content))
            else:
                values.update(file_to_variables(plan, s))
        resolve_variables(plan, values, raw.servername)  # 422 before anything is made
        record = await svc.servers.create(plan.name, raw.servername, values, actor=actor)
        if raw.description:
            await svc.store.set_meta(_description_key(record), raw.description)
        if str(raw.start_later).lower() not in TRUE:
            await svc.servers.start(record.name, actor=actor)
        record = await svc.store.get_server(record.name)
        return web.json_response((await self._out(record)).model_dump(mode="json"))

    async def get_server(self, request: web.Request) -> web.Response:
        record = await self._record(request, "status")
        return web.json_response((await self._out(record)).model_dump(mode="json"))

    async def act(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ("start", "stop", "restart"):
            raise ApiError(
                404,
                "unsupported_action",
                f"Unsupported action [{action[:20]}]: use start, stop or restart.",
            )
        record = await self._record(request, action)
        servers, actor = self.api.services.servers, self.api.actor(self.api.token(request))
        if action == "stop":
            await servers.stop(record.name, actor=actor)
        elif action == "start":
            await servers.start(record.name, actor=actor)
        else:
            await servers.restart(record.name, actor=actor)
        record = await self.api.services.store.get_server(record.name)
        return web.json_response((await self._out(record)).model_dump(mode="json"))

    async def destroy(self, request: web.Request) -> web.Response:
        record = await self._record(request, "delete")
        data: Any = {}
        if request.can_read_body:
            data = await self.api.body(request, _Destroy)
        purge = str(getattr(data, "eradicate", "")).lower() in TRUE
        actor = self.api.actor(self.api.token(request))
        await self.api.services.servers.delete(record.name, actor=actor, purge=purge)
        await self.api.services.store.set_meta(_description_key(record), "")
        note = f"Server {record.warplan}.{record.name} was removed."
        note += " Its data was deleted too." if purge else " Its data was kept."
        return web.json_response(m.CompatStatus(status="success", info=note).model_dump())

    def add_to(self, app: web.Application) -> None:
        g = self.guard
        app.router.add_get("/api/1.0/servers", g(self.list_servers))
        app.router.add_post("/api/1.0/servers", g(self.create_server))
        app.router.add_get("/api/1.0/server/get/{uid}", g(self.get_server))
        app.router.add_put("/api/1.0/server/{action}/{uid}", g(self.act))
        app.router.add_delete("/api/1.0/server/destroy/{uid}", g(self.destroy))


class _Destroy(BaseModel):
    eradicate: str | bool = False
