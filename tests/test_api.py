"""The HTTP API against the real engine and a real SQLite store, over a real listening socket
on 127.0.0.1 (ApiServer, as `peon run` and `peon serve-api` start it): every route, the
permission matrix per role, tokens and their revocation, bad input changing nothing, secrets
never returned or logged, the event stream resumed from an id, and the original PEON's
/api/1.0 routes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest
import yaml

from bot.api import ApiServer
from bot.api.openapi import document
from bot.api.routes import ROUTES
from bot.app import Services
from bot.errors import ConfigError
from bot.models import ServerState
from bot.settings import ApiSettings, Settings, load_settings
from bot.store import Store
from bot.tokens import TokenService, digest
from tests.conftest import (
    ROOT,
    TEST_WARPLANS,
    cleanup_instance,
    config_file,
    make_settings,
    peon,
    services_for,
)

pytestmark = pytest.mark.docker

PASSWORD = "hunter2-very-secret"  # a test value that must never come back


@dataclass
class Api:
    svc: Services
    server: ApiServer
    http: aiohttp.ClientSession
    tokens: dict[str, str]  # role -> the token itself

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@asynccontextmanager
async def _open(settings: Settings) -> AsyncIterator[Api]:
    async with services_for(settings) as svc:
        server = ApiServer(svc)
        await server.start()
        try:
            made = TokenService(svc.store)
            tokens = {
                role: (await made.create(f"t-{role}", role, actor="test"))[1]
                for role in ("admin", "operator", "player")
            }
            base = f"http://127.0.0.1:{server.port}"
            async with aiohttp.ClientSession(base_url=base) as http:
                yield Api(svc, server, http, tokens)
        finally:
            await server.close()


@pytest.fixture
async def api(tmp_path: Path, fakegame: str) -> AsyncIterator[Api]:
    settings = make_settings(tmp_path, api=ApiSettings(listen="127.0.0.1:0", rate=1000, burst=1000))
    async with _open(settings) as a:
        yield a


async def call(
    api: Api, method: str, path: str, role: str | None = "admin", **kw: Any
) -> tuple[int, Any]:
    headers = {**(api.auth(role) if role else {}), **kw.pop("headers", {})}
    async with api.http.request(method, path, headers=headers, **kw) as r:
        text = await r.text()
        assert "Traceback" not in text
        return r.status, (json.loads(text) if text else None)


async def read_events(
    api: Api,
    until: Callable[[dict[str, Any]], bool],
    *,
    role: str = "admin",
    after: int | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 90,
) -> list[dict[str, Any]]:
    """SSE messages (data parsed, with their `id:` line) until one satisfies `until`."""
    params = {"after": str(after)} if after is not None else {}
    got: list[dict[str, Any]] = []
    hdrs = {**api.auth(role), **(headers or {})}
    async with api.http.get("/api/v1/events/stream", params=params, headers=hdrs) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        block: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    continue
                if line:
                    key, _, value = line.partition(": ")
                    block[key] = value
                    continue
                if "data" in block:
                    event = json.loads(block["data"])
                    assert block["id"] == str(event["id"])
                    assert block["event"] == event["kind"]
                    got.append(event)
                    if until(event):
                        return got
                block = {}
    raise AssertionError("the stream ended")


async def run_op(api: Api, method: str, path: str, role: str = "admin", **kw: Any) -> dict:
    """A long operation: 202, then its end on the event stream; returns that event."""
    status, body = await call(api, method, path, role, **kw)
    assert status == 202, body
    op = body["operation"]
    events = await read_events(
        api,
        lambda e: (
            e["kind"] == "operation"
            and e["payload"]["operation"] == op
            and e["payload"]["state"] != "running"
        ),
        role=role,
        after=body["after"],
    )
    return events[-1]


def engine_objects(instance: str) -> tuple[list[str], list[str]]:
    client = docker.from_env()
    try:
        flt = {"label": [f"io.peon.instance={instance}"]}
        return (
            [c.name for c in client.containers.list(all=True, filters=flt)],
            [v.name for v in client.volumes.list(filters=flt)],
        )
    finally:
        client.close()


# --- tokens -------------------------------------------------------------------------------


async def test_no_token_a_wrong_one_or_a_revoked_one_is_401(api: Api) -> None:
    status, body = await call(api, "GET", "/api/v1/servers", None)
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert body["error"]["message"].endswith(".")
    status, _ = await call(api, "GET", "/api/v1/servers", None,
                           headers={"Authorization": "Bearer peon_nope"})  # fmt: skip
    assert status == 401
    status, _ = await call(api, "GET", "/api/v1/servers", "player")
    assert status == 200
    await TokenService(api.svc.store).revoke("t-player", actor="test")
    status, body = await call(api, "GET", "/api/v1/servers", "player")
    assert status == 401
    assert "revoked" in body["error"]["message"]
    # A token in the URL is not a token: it would end up in access logs.
    status, _ = await call(api, "GET", f"/api/v1/servers?token={api.tokens['admin']}", None)
    assert status == 401


async def test_tokens_are_stored_hashed_and_the_revoke_is_audited(api: Api) -> None:
    path = api.svc.settings.db_path
    raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))  # with the WAL
    rows = sqlite3.connect(path).execute("SELECT hash FROM api_tokens").fetchall()
    for token in api.tokens.values():
        assert token.encode() not in raw
        assert (digest(token),) in rows
    events = await api.svc.store.latest_events(None, 20)
    assert {e.kind for e in events} >= {"token-create"}
    await TokenService(api.svc.store).revoke("t-operator", actor="cli:test")
    last = (await api.svc.store.latest_events(None, 1))[0]
    assert (last.kind, last.actor, last.detail) == ("token-revoke", "cli:test", "t-operator")


def test_token_cli_shows_a_token_once_lists_and_revokes(tmp_path: Path) -> None:
    cfg = config_file(make_settings(tmp_path), tmp_path / "peon.yaml")
    made = peon(cfg, "token", "create", "site", "--role", "player")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("peon_") and len(secret) > 40
    assert "shown only this once" in made.stderr
    again = peon(cfg, "token", "create", "site", "--role", "admin")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    listed = peon(cfg, "token", "list")
    assert "site" in listed.stdout and "player" in listed.stdout
    assert secret not in listed.stdout + listed.stderr
    bad = peon(cfg, "token", "create", "x", "--role", "player", "--server", "api-none")
    assert bad.returncode == 1 and "no server named" in bad.stderr
    revoked = peon(cfg, "token", "revoke", "site")
    assert revoked.returncode == 0
    assert "site" not in peon(cfg, "token", "list").stdout
    assert peon(cfg, "token", "revoke", "site").returncode == 1


# --- permissions ----------------------------------------------------------------------------


async def test_the_permission_matrix_follows_the_discord_roles(api: Api) -> None:
    await api.svc.servers.create("fakegame", "api-perm", actor="test")
    before = await api.svc.store.last_event_id()
    state = (await api.svc.servers.status("api-perm")).state
    # (method, path, json body, the lowest role allowed)
    cases: list[tuple[str, str, Any, str]] = [
        ("GET", "/api/v1/servers", None, "player"),
        ("GET", "/api/v1/servers/api-perm", None, "player"),
        ("GET", "/api/v1/servers/api-perm/settings", None, "player"),
        ("GET", "/api/v1/warplans", None, "player"),
        ("GET", "/api/v1/warplans/fakegame", None, "player"),
        ("GET", "/api/v1/hosts", None, "player"),
        ("GET", "/api/v1/backups", None, "player"),
        ("GET", "/api/v1/schedules", None, "player"),
        ("GET", "/api/v1/events", None, "player"),
        ("GET", "/api/v1/servers/api-perm/logs", None, "operator"),
        ("POST", "/api/v1/servers/api-perm/console", {"command": "list"}, "operator"),
        ("POST", "/api/v1/servers/api-perm/start", None, "operator"),
        ("POST", "/api/v1/servers/api-perm/update", {}, "operator"),
        ("POST", "/api/v1/servers/api-perm/backups", None, "operator"),
        ("PATCH", "/api/v1/servers/api-perm/settings", {"variables": {"x": "1"}}, "admin"),
        ("DELETE", "/api/v1/servers/api-perm", None, "admin"),
        ("POST", "/api/v1/servers", {"warplan": "fakegame", "name": "Bad Name"}, "admin"),
    ]
    order = ["player", "operator", "admin"]
    for method, path, body, lowest in cases:
        for role in order[: order.index(lowest)]:
            status, answer = await call(api, method, path, role, json=body)
            assert status == 403, (method, path, role, answer)
            assert answer["error"]["code"] == "permission_denied"
            assert f"PEON {lowest} role" in answer["error"]["message"]
    # Refused calls changed nothing: no event, the server as it was.
    assert await api.svc.store.last_event_id() == before
    assert (await api.svc.servers.status("api-perm")).state == state
    # The lowest role allowed gets through the check (reads answer 200 at once).
    for method, path, body, lowest in cases:
        if method == "GET":
            status, answer = await call(api, method, path, lowest, json=body)
            assert status == 200, (path, answer)
    # Players see what happened, not who did it or the details; operators see all.
    _, events = await call(api, "GET", "/api/v1/events?after=0", "player")
    assert events["events"] and all(e["actor"] is None for e in events["events"])
    _, events = await call(api, "GET", "/api/v1/events?after=0", "operator")
    assert all(e["actor"] for e in events["events"])


async def test_a_token_for_one_server_acts_on_that_server_only(api: Api) -> None:
    for name in ("api-one", "api-two"):
        await api.svc.servers.create("fakegame", name, actor="test")
    _, secret = await TokenService(api.svc.store).create(
        "scoped", "operator", server="api-one", actor="test"
    )
    own = {"Authorization": f"Bearer {secret}"}
    status, body = await call(api, "GET", "/api/v1/servers", None, headers=own)
    assert status == 200
    assert [s["name"] for s in body["servers"]] == ["api-one"]
    status, _ = await call(api, "GET", "/api/v1/servers/api-two", None, headers=own)
    assert status == 403
    status, _ = await call(api, "POST", "/api/v1/servers/api-two/start", None, headers=own)
    assert status == 403
    status, _ = await call(api, "GET", "/api/v1/events?server=api-two", None, headers=own)
    assert status == 403
    status, _ = await call(api, "GET", "/api/v1/servers/api-one/logs", None, headers=own)
    assert status == 200
    status, _ = await call(api, "GET", "/api/v1/hosts", None, headers=own)
    assert status == 403


# --- the lifecycle over HTTP ------------------------------------------------------------------


async def test_every_server_route_with_progress_on_the_event_stream(api: Api) -> None:
    body = {"warplan": "fakegame", "name": "api-life",
            "variables": {"password": PASSWORD, "max_players": "4"}}  # fmt: skip
    done = await run_op(api, "POST", "/api/v1/servers", json=body)
    assert done["ok"] and done["payload"]["state"] == "done"
    assert done["actor"] == "api:t-admin"
    status, server = await call(api, "GET", "/api/v1/servers/api-life", "player")
    assert status == 200 and server["state"] in ("created", "stopped")
    assert server["variables"]["password"] == "••••••"
    assert server["variables"]["max_players"] == "4"

    after = await api.svc.store.last_event_id()
    done = await run_op(api, "POST", "/api/v1/servers/api-life/start", "operator")
    assert done["ok"], done
    assert done["payload"]["result"]["connect"].startswith("127.0.0.1:")
    # The steps came on the stream between the 202 and the end, tagged with the operation.
    steps = [
        e["payload"]["step"]
        for e in (await call(api, "GET", f"/api/v1/events?after={after}"))[1]["events"]
        if e["kind"] == "progress" and e["payload"]["operation"] == done["payload"]["operation"]
    ]
    assert "starting" in steps
    status, op = await call(api, "GET", f"/api/v1/operations/{done['payload']['operation']}")
    assert status == 200 and op["state"] == "done"
    _, server = await call(api, "GET", "/api/v1/servers/api-life")
    assert server["state"] == "running" and server["players_online"] == 0

    status, logs = await call(api, "GET", "/api/v1/servers/api-life/logs?tail=50", "operator")
    assert status == 200 and any("ready" in line for line in logs["lines"])
    status, reply = await call(api, "POST", "/api/v1/servers/api-life/console", "operator",
                               json={"command": "save"})  # fmt: skip
    assert status == 200, reply
    assert reply["how"] == "on its console"
    status, busy = await call(api, "GET", "/api/v1/servers/api-life/logs?tail=0", "operator")
    assert status == 422 and busy["error"]["code"] == "invalid_query"

    done = await run_op(api, "POST", "/api/v1/servers/api-life/backups", "operator")
    assert done["ok"], done
    backup_id = done["payload"]["result"]["backup"]
    status, listed = await call(api, "GET", "/api/v1/backups?server=api-life", "player")
    assert [b["id"] for b in listed["backups"]] == [backup_id]
    status, locked = await call(api, "PUT", f"/api/v1/backups/{backup_id}/lock", "operator",
                                json={"locked": True})  # fmt: skip
    assert status == 200 and locked["locked"]
    status, refused = await call(api, "DELETE", f"/api/v1/backups/{backup_id}")
    assert status == 409 and "locked" in refused["error"]["message"]

    done = await run_op(api, "POST", "/api/v1/servers/api-life/restart", "operator")
    assert done["ok"], done
    done = await run_op(api, "PATCH", "/api/v1/servers/api-life/settings",
                        json={"variables": {"max_players": "6"}})  # fmt: skip
    assert done["ok"] and done["payload"]["result"]["changed"] == ["max_players"]
    _, settings = await call(api, "GET", "/api/v1/servers/api-life/settings")
    assert settings["variables"]["max_players"] == "6"
    assert settings["variables"]["password"] == "••••••"

    done = await run_op(api, "POST", f"/api/v1/backups/{backup_id}/restore")
    assert done["ok"], done
    done = await run_op(api, "POST", "/api/v1/servers/api-life/update", json={"pull": False})
    assert done["ok"], done
    done = await run_op(api, "POST", "/api/v1/servers/api-life/stop", "operator")
    assert done["ok"] and done["payload"]["result"]["was_running"]
    _, server = await call(api, "GET", "/api/v1/servers/api-life")
    assert server["state"] == "exited"  # the container's own word, as Docker says it

    await call(api, "PUT", f"/api/v1/backups/{backup_id}/lock", json={"locked": False})
    status, _ = await call(api, "DELETE", f"/api/v1/backups/{backup_id}")
    assert status == 200
    done = await run_op(api, "DELETE", "/api/v1/servers/api-life?purge=true")
    assert done["ok"], done
    status, gone = await call(api, "GET", "/api/v1/servers/api-life")
    assert status == 404 and gone["error"]["code"] == "server_not_found"
    assert engine_objects(api.svc.settings.instance_id) == ([], [])
    # Every change is in the audit log with the token's name.
    actors = {e.actor for e in await api.svc.store.latest_events("api-life", 200)}
    assert actors >= {"api:t-admin", "api:t-operator"}


async def test_a_failed_operation_ends_failed_on_the_stream(api: Api) -> None:
    await api.svc.servers.create("fakegame", "api-fail", actor="test")
    async with api.svc.servers.operation("api-fail", "backup", "test"):
        status, body = await call(api, "POST", "/api/v1/servers/api-fail/start")
        assert status == 409 and body["error"]["code"] == "server_busy"
    # Refused as it ends: the console of a stopped server.
    status, body = await call(api, "POST", "/api/v1/servers/api-fail/console",
                              json={"command": "save"})  # fmt: skip
    assert status == 409 and "not running" in body["error"]["message"]


async def test_schedules_and_war_plans_and_hosts(api: Api) -> None:
    await api.svc.servers.create("fakegame", "api-sched", actor="test")
    status, body = await call(api, "GET", "/api/v1/schedules?server=api-sched")
    assert status == 200 and body["schedules"] == []
    # `peon serve-api` runs no automation: schedules are changed through the bot.
    status, body = await call(api, "POST", "/api/v1/servers/api-sched/schedules",
                              json={"kind": "idle", "after": "30m"})  # fmt: skip
    assert status == 409 and body["error"]["code"] == "schedules_read_only"
    status, plan = await call(api, "GET", "/api/v1/warplans/fakegame", "player")
    assert status == 200
    secret = next(v for v in plan["variables"] if v["name"] == "password")
    assert secret["secret"] and secret["default"] is None
    status, missing = await call(api, "GET", "/api/v1/warplans/nope")
    assert status == 404 and missing["error"]["code"] == "warplan_not_found"
    status, hosts = await call(api, "GET", "/api/v1/hosts")
    assert status == 200 and hosts["hosts"][0]["reachable"]
    assert hosts["hosts"][0]["servers"] == 1


# --- refusals -----------------------------------------------------------------------------


async def test_bad_input_is_refused_and_changes_nothing(api: Api) -> None:
    instance = api.svc.settings.instance_id
    before = await api.svc.store.last_event_id()
    bad = [
        (b"{not json", 400, "bad_json"),
        (b"[1, 2]", 422, "invalid_body"),
        (json.dumps({"warplan": "fakegame", "name": "api-x", "extra": 1}).encode(), 422, None),
        (json.dumps({"warplan": "fakegame", "name": "API X"}).encode(), 422, None),
        (json.dumps({"warplan": "nope", "name": "api-x"}).encode(), 404, "warplan_not_found"),
        (json.dumps({"warplan": "fakegame", "name": "api-x",
                     "variables": {"max_players": "999"}}).encode(), 422, "variable_error"),
        (json.dumps({"warplan": "fakegame", "name": "api-x",
                     "variables": {"nope": "1"}}).encode(), 422, None),
        (json.dumps({"warplan": "fakegame", "name": "api-x", "host": "mars"}).encode(), 404,
         "host_not_found"),
        (b"{" + b'"a": "' + b"x" * 70000 + b'"}', 413, None),
    ]  # fmt: skip
    for raw, status, code in bad:
        got, body = await call(api, "POST", "/api/v1/servers", data=raw,
                               headers={"Content-Type": "application/json"})  # fmt: skip
        assert got == status, (raw[:60], body)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        if code:
            assert body["error"]["code"] == code
    assert await api.svc.store.list_servers() == []
    assert await api.svc.store.last_event_id() == before
    assert engine_objects(instance) == ([], [])
    status, body = await call(api, "GET", "/api/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await call(api, "PUT", "/api/v1/servers")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    status, body = await call(api, "GET", "/api/v1/backups/99999999999999999999")
    assert status in (404, 405)
    status, body = await call(api, "DELETE", "/api/v1/servers/api-none?purge=maybe")
    assert status == 422


async def test_rate_limit_per_token_answers_429_with_retry_after(
    tmp_path: Path, fakegame: str
) -> None:
    settings = make_settings(tmp_path, api=ApiSettings(listen="127.0.0.1:0", rate=0.5, burst=3))
    async with _open(settings) as api:
        statuses = []
        for _ in range(4):
            async with api.http.get("/api/v1/warplans", headers=api.auth("player")) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
                    body = await r.json()
                    assert body["error"]["code"] == "rate_limited"
        assert statuses == [200, 200, 200, 429]
        status, _ = await call(api, "GET", "/api/v1/warplans", "operator")  # its own bucket
        assert status == 200


# --- secrets ------------------------------------------------------------------------------


async def test_secrets_are_never_returned_nor_logged(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = {"warplan": "fakegame", "name": "api-secret", "variables": {"password": PASSWORD}}
    await run_op(api, "POST", "/api/v1/servers", json=body)
    await run_op(api, "POST", "/api/v1/servers/api-secret/start")
    answers = []
    for path in (
        "/api/v1/servers", "/api/v1/servers/api-secret", "/api/v1/servers/api-secret/settings",
        "/api/v1/servers/api-secret/logs?tail=500", "/api/v1/events?after=0&limit=500",
        "/api/v1/warplans", "/api/1.0/servers",
    ):  # fmt: skip
        status, answer = await call(api, "GET", path)
        assert status == 200, path
        answers.append(json.dumps(answer))
    await call(
        api, "POST", "/api/v1/servers/api-secret/console", json={"command": f"say {PASSWORD}"}
    )
    await run_op(api, "POST", "/api/v1/servers/api-secret/stop")
    everything = "\n".join(answers) + "\n" + "\n".join(r.getMessage() for r in caplog.records)
    assert PASSWORD not in everything
    for token in api.tokens.values():
        assert token not in "\n".join(r.getMessage() for r in caplog.records)
    access = [r.getMessage() for r in caplog.records if r.name == "peon.api.access"]
    assert any("/api/v1/servers/api-secret" in line and "token=t-admin" in line
               for line in access)  # fmt: skip
    events = await api.svc.store.latest_events("api-secret", 100)
    assert all(PASSWORD not in (e.detail + json.dumps(e.payload)) for e in events)


# --- the event stream ---------------------------------------------------------------------


async def test_the_event_stream_resumes_from_an_event_id(api: Api) -> None:
    store = api.svc.store
    first = await store.audit("test", "alpha", None, True, "one")
    await store.audit("test", "beta", None, True, "two")
    third = await store.audit("test", "gamma", None, False, "three")
    got = await read_events(api, lambda e: e["id"] == third, after=first - 1)
    assert [e["kind"] for e in got] == ["alpha", "beta", "gamma"]
    assert got[-1]["ok"] is False and got[-1]["detail"] == "three"
    # A reconnecting EventSource sends Last-Event-ID: it takes over from ?after=.
    got = await read_events(api, lambda e: e["id"] == third, after=0,
                            headers={"Last-Event-ID": str(first)})  # fmt: skip
    assert [e["kind"] for e in got] == ["beta", "gamma"]

    # Live: events appended while a client listens (this process wakes it; another's are
    # found by polling).
    async def later() -> int:
        await asyncio.sleep(0.3)
        return await store.audit("test", "delta", None, True, "")

    task = asyncio.create_task(later())
    got = await read_events(api, lambda e: e["kind"] == "delta", after=third)
    assert got[-1]["id"] == await task
    # Players get the stream without actors and details.
    got = await read_events(api, lambda e: e["id"] == third, role="player", after=first)
    assert all(e["actor"] is None and e["detail"] is None for e in got)
    status, _ = await call(api, "GET", "/api/v1/events/stream",
                           headers={"Last-Event-ID": "x"})  # fmt: skip
    assert status == 422


# --- the OpenAPI document -----------------------------------------------------------------


async def test_the_openapi_document_lists_every_route_from_the_models(api: Api) -> None:
    status, doc = await call(api, "GET", "/api/v1/openapi.json", None)  # public
    assert status == 200
    assert doc == json.loads(json.dumps(document()))
    assert doc["openapi"].startswith("3.")
    for route in ROUTES:
        assert route.method.lower() in doc["paths"][route.path], route.path
    text = json.dumps(doc)
    for ref in {r.split("/")[-1] for r in _refs(doc)}:
        assert ref in doc["components"]["schemas"], ref
    create = doc["components"]["schemas"]["ServerCreate"]
    assert create["additionalProperties"] is False
    assert "pattern" in create["properties"]["name"]
    assert "peon_" not in text.replace("'Bearer peon_...'", "")


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in _refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


# --- compatibility with the original PEON's API 1.0 -----------------------------------------


async def test_the_original_peon_create_start_stop_and_destroy(api: Api) -> None:
    key = {"X-Api-Key": api.tokens["admin"]}
    payload = {
        "game_uid": "fakegame",
        "servername": "api-orig",
        "description": "My PEON fake server",
        "settings": [{"type": "env", "name": "Environment Variables",
                      "content": {"MAX_PLAYERS": "5", "SERVER_PASSWORD": PASSWORD}}],
    }  # fmt: skip
    status, server = await call(api, "POST", "/api/1.0/servers", None, json=payload, headers=key)
    assert status == 200, server
    assert server["game_uid"] == "fakegame" and server["servername"] == "api-orig"
    assert server["server_state"] == "running" and server["container_state"] == "running"
    assert server["description"] == "My PEON fake server"
    assert server["server_config"]["max_players"] == "5"
    assert server["server_config"]["password"] == "••••••"
    record = await api.svc.store.get_server("api-orig")
    assert record.variables["password"] == PASSWORD and record.created_by == "api:t-admin"

    status, server = await call(api, "PUT", "/api/1.0/server/stop/fakegame.api-orig", None,
                                headers=key)  # fmt: skip
    assert status == 200 and server["server_state"] == "exited"
    status, server = await call(api, "PUT", "/api/1.0/server/start/fakegame.api-orig", None,
                                headers=key)  # fmt: skip
    assert status == 200 and server["server_state"] == "running"
    status, listed = await call(api, "GET", "/api/1.0/servers", None, headers=key)
    assert [s["servername"] for s in listed] == ["api-orig"]
    status, body = await call(api, "PUT", "/api/1.0/server/start/othergame.api-orig", None,
                              headers=key)  # fmt: skip
    assert status == 404 and body["status"] == "error"
    status, body = await call(api, "PUT", "/api/1.0/server/stop/fakegame.api-orig", "player")
    assert status == 403 and body["status"] == "error" and body["info"]
    status, body = await call(api, "DELETE", "/api/1.0/server/destroy/fakegame.api-orig", None,
                              headers=key, json={"eradicate": "True"})  # fmt: skip
    assert status == 200 and body["status"] == "success"
    assert await api.svc.store.find_server("api-orig") is None
    assert engine_objects(api.svc.settings.instance_id) == ([], [])

    # A later server of the same name never shows an earlier one's description, whichever
    # way that one was deleted.
    payload |= {"start_later": "true", "settings": []}
    status, server = await call(api, "POST", "/api/1.0/servers", None, json=payload, headers=key)
    assert status == 200 and server["description"] == "My PEON fake server"
    await api.svc.servers.delete("api-orig", actor="test", purge=True)
    payload["description"] = ""
    status, server = await call(api, "POST", "/api/1.0/servers", None, json=payload, headers=key)
    assert status == 200 and server["description"] == "", server
    await api.svc.servers.delete("api-orig", actor="test", purge=True)


async def test_original_file_settings_and_unknown_ones_are_refused_whole(api: Api) -> None:
    key = {"X-Api-Key": api.tokens["admin"]}
    base = {"game_uid": "fakegame", "servername": "api-files", "description": ""}
    for settings, code in (
        ([{"type": "json", "name": "a.json", "content": {"k": "v"}}], "setting_not_mapped"),
        ([{"type": "txt", "name": "motd.txt", "content": "hello"}], "setting_not_mapped"),
        ([{"type": "env", "name": "env", "content": {"NOPE": "1"}}], "unknown_setting"),
        ([{"type": "env", "name": "env", "content": {"MAX_PLAYERS": "0"}}], "variable_error"),
        ([{"type": "yaml", "name": "x", "content": ""}], "invalid_body"),
    ):
        status, body = await call(api, "POST", "/api/1.0/servers", None,
                                  json={**base, "settings": settings}, headers=key)  # fmt: skip
        assert status == 422, body
        assert body["status"] == "error" and body["error"]["code"] == code
    status, body = await call(api, "POST", "/api/1.0/servers", None,
                              json={**base, "game_uid": "nope"}, headers=key)  # fmt: skip
    assert status == 404
    status, _ = await call(api, "GET", "/api/1.0/servers", None)
    assert status == 401
    assert await api.svc.store.list_servers() == []
    assert engine_objects(api.svc.settings.instance_id) == ([], [])


async def test_original_json_and_txt_settings_reach_the_plans_files(
    tmp_path: Path, fakegame: str
) -> None:
    plan = yaml.safe_load((TEST_WARPLANS / "fakegame.yaml").read_text())
    plan["variables"] += [
        {"name": "motd", "description": "Message of the day", "default": "hi"},
        {"name": "pvp", "type": "bool", "default": False},
        {"name": "rules", "default": ""},
    ]
    plan["files"] = [
        {"path": "config/server.json", "format": "json",
         "set": {"motd": "{var:motd}", "game.pvp": "{var:pvp}", "fixed": 1}},
        {"path": "rules.txt", "content": "{var:rules}"},
    ]  # fmt: skip
    folder = tmp_path / "warplans"
    folder.mkdir()
    (folder / "fakegame.yaml").write_text(yaml.safe_dump(plan))
    settings = make_settings(tmp_path, warplans_dir=folder, api=ApiSettings(listen="127.0.0.1:0"))
    async with _open(settings) as api:
        key = {"X-Api-Key": api.tokens["admin"]}
        payload = {
            "game_uid": "fakegame", "servername": "api-files", "description": "",
            "settings": [
                {"type": "json", "name": "server.json",
                 "content": {"motd": "Welcome", "game": {"pvp": True}}},
                {"type": "txt", "name": "rules.txt", "content": "Be nice."},
            ],
        }  # fmt: skip
        refused = {**payload, "settings": [{"type": "json", "name": "server.json",
                                            "content": {"fixed": 2}}]}  # fmt: skip
        status, body = await call(api, "POST", "/api/1.0/servers", None, json=refused,
                                  headers=key)  # fmt: skip
        assert status == 422 and body["error"]["code"] == "setting_not_mapped"
        assert "fixed" in body["info"]
        status, server = await call(api, "POST", "/api/1.0/servers", None, json=payload,
                                    headers=key)  # fmt: skip
        assert status == 200, server
        record = await api.svc.store.get_server("api-files")
        assert (record.variables["motd"], record.variables["pvp"]) == ("Welcome", "true")
        assert record.variables["rules"] == "Be nice."
        client = docker.from_env()
        try:
            ctr = client.containers.get(record.container_id)
            written = json.loads(ctr.exec_run("cat /data/config/server.json").output)
            assert written == {"motd": "Welcome", "game": {"pvp": True}, "fixed": 1}
            assert ctr.exec_run("cat /data/rules.txt").output.decode() == "Be nice."
        finally:
            client.close()


# --- configuration and `peon serve-api` ---------------------------------------------------


def test_a_non_loopback_listen_without_tls_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "peon.yaml"
    cfg.write_text("api:\n  listen: 0.0.0.0:8080\n")
    with pytest.raises(ConfigError, match="not loopback"):
        load_settings(cfg, {})
    cfg.write_text("api:\n  listen: 0.0.0.0:8080\n  allow_insecure: true\n")
    assert load_settings(cfg, {}).api is not None
    cfg.write_text("log: {level: INFO}\n")
    assert load_settings(cfg, {}).api is None  # off unless configured


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_api_serves_alone_and_stops_on_sigterm(tmp_path: Path, fakegame: str) -> None:
    port = _free_port()
    settings = make_settings(tmp_path, api=ApiSettings(listen=f"127.0.0.1:{port}"))
    cfg = config_file(settings, tmp_path / "peon.yaml")
    made = peon(cfg, "token", "create", "ops", "--role", "admin")
    secret = made.stdout.strip()
    env = {**os.environ, "PEON_CONFIG": str(cfg)}
    env.pop("DISCORD_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve-api"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        async with http.get(
                            f"http://127.0.0.1:{port}/api/v1/servers",
                            headers={"Authorization": f"Bearer {secret}"},
                        ) as r:
                            assert r.status == 200
                            assert await r.json() == {"servers": []}
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.2)
            # A create under way when SIGTERM comes gets shutdown_grace to finish.
            body = {"warplan": "fakegame", "name": "rev-drain",
                    "variables": {"password": PASSWORD}}  # fmt: skip
            async with http.post(
                f"http://127.0.0.1:{port}/api/v1/servers", json=body,
                headers={"Authorization": f"Bearer {secret}"},
            ) as r:  # fmt: skip
                assert r.status == 202, await r.text()
        # Once its record is made (the create holds the server), PEON is told to stop.
        store = Store(settings.db_path)
        await store.open()
        try:
            async with asyncio.timeout(30):
                while await store.find_server("rev-drain") is None:
                    await asyncio.sleep(0.05)
        finally:
            await store.close()
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, err
        assert secret not in out + err
        assert "/api/v1/servers 200" in err and "token=ops" in err
        assert "interrupted" not in err
        async with services_for(settings) as svc:
            record = await svc.store.get_server("rev-drain")
            assert record.state == ServerState.STOPPED and record.operation is None
    finally:
        if proc.poll() is None:
            proc.kill()
        cleanup_instance(settings.instance_id)


def test_serve_api_on_a_taken_address_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(tmp_path, api=ApiSettings(listen=f"127.0.0.1:{port}"))
        cfg = config_file(settings, tmp_path / "peon.yaml")
        ran = peon(cfg, "serve-api")
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines()[-1] == (
        f"peon: The API cannot listen on 127.0.0.1:{port}: address already in use."
    )
    assert "Traceback" not in ran.stderr
    off = peon(config_file(make_settings(tmp_path), tmp_path / "off.yaml"), "serve-api")
    assert off.returncode == 1 and "The API is off" in off.stderr
