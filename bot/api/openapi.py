"""The OpenAPI 3.1 document of /api/v1, generated from the route table (bot/api/routes.py) and
the pydantic models the handlers validate with (bot/api/models.py): never written twice."""

from __future__ import annotations

import functools
import re
from typing import Any

from pydantic.json_schema import models_json_schema

from bot import __version__
from bot.api import models as m
from bot.api.routes import QUERY_BOUNDS, ROUTES, Route

REF = "#/components/schemas/{model}"
ERRORS = {
    "400": "Bad JSON.",
    "401": "No token, or an unknown or revoked one.",
    "403": "The token's role may not do this.",
    "404": "No such server, backup, schedule or war plan.",
    "409": "Not now: the server is busy, exists already, or is in the wrong state.",
    "413": "The body is over the size limit.",
    "422": "Invalid values.",
    "429": "Too many requests for this token; see Retry-After.",
    "502": "An image could not be pulled from its registry.",
    "503": "PEON is shutting down or Docker is unreachable.",
}


def _ref(model: type[Any]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _query(name: str, kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind}
    if name in QUERY_BOUNDS:
        schema["minimum"], schema["maximum"] = QUERY_BOUNDS[name]
    return schema


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.name, "summary": route.summary,
                          "tags": [route.path.split("/")[3]]}  # fmt: skip
    params = [
        {"name": p, "in": "path", "required": True,
         "schema": {"type": "integer", "minimum": 0} if p == "id" else
                   {"type": "string", "pattern": m.SERVER_NAME} if p == "name" and
                   "servers" in route.path else {"type": "string"}}
        for p in re.findall(r"{(\w+)}", route.path)
    ]  # fmt: skip
    params += [
        {"name": n, "in": "query", "required": False, "description": d, "schema": _query(n, t)}
        for n, t, d in route.query
    ]
    if route.stream:
        params.append({"name": "Last-Event-ID", "in": "header", "required": False,
                       "schema": {"type": "string", "pattern": r"^\d+$"}})  # fmt: skip
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": route.body not in (m.UpdateIn,),
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
    if route.stream:
        content: dict[str, Any] = {"text/event-stream": {"schema": {"type": "string"}, "x-data":
                                                         _ref(m.EventOut)}}  # fmt: skip
    elif route.response is not None:
        content = {"application/json": {"schema": _ref(route.response)}}
    else:
        content = {"application/json": {"schema": {"type": "object"}}}
    responses: dict[str, Any] = {str(route.status): {"description": route.summary,
                                                     "content": content}}  # fmt: skip
    if not route.public:
        for code, text in ERRORS.items():
            responses[code] = {
                "description": text,
                "content": {"application/json": {"schema": _ref(m.ErrorOut)}},
            }
        op["security"] = [{"bearer": []}]
    op["responses"] = responses
    return op


@functools.cache
def document() -> dict[str, Any]:
    _, defs = models_json_schema([(model, "validation") for model in m.MODELS], ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "PEON API",
            "version": __version__,
            "description": "Game servers as Docker containers, over HTTP. Tokens: "
            "`peon token create NAME --role admin|operator|player`. See docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
