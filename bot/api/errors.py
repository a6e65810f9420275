"""One JSON error shape for every refusal of the HTTP API, rendered once here.

`{"error": {"code": "server_not_found", "message": "There is no server named 'x'."}}`: the
code is stable (the error's class name in snake case), the message one sentence from the core
(bot/errors.py). Nothing else leaves: an unexpected exception is logged here and answered with
a sentence and its code only, never a traceback.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.consoles import ConsoleError
from bot.errors import (
    BackupNotFound,
    ConfirmationRequired,
    DockerUnavailable,
    HostNotFound,
    ImageUnavailable,
    InvalidServerName,
    NoHostFits,
    PeonError,
    PortUnavailable,
    ScheduleNotFound,
    ServerBusy,
    ServerExists,
    ServerNotFound,
    ServerStateError,
    ShuttingDown,
    TokenNotFound,
    VariableError,
    WarplanError,
    WarplanNotFound,
)
from bot.permissions import PermissionDenied
from bot.schedules import ScheduleError

log = logging.getLogger(__name__)

# Checked in order: the first class an error is an instance of gives its HTTP status.
STATUS: list[tuple[type[PeonError], int]] = [
    (PermissionDenied, 403),
    (ServerNotFound, 404),
    (BackupNotFound, 404),
    (ScheduleNotFound, 404),
    (WarplanNotFound, 404),
    (HostNotFound, 404),
    (TokenNotFound, 404),
    (InvalidServerName, 422),
    (VariableError, 422),
    (WarplanError, 422),
    (ScheduleError, 422),
    (ConsoleError, 422),
    (ServerBusy, 409),
    (ServerExists, 409),
    (ServerStateError, 409),
    (ConfirmationRequired, 409),
    (PortUnavailable, 409),
    (NoHostFits, 409),
    (ShuttingDown, 503),
    (DockerUnavailable, 503),
    (ImageUnavailable, 502),
]


class ApiError(PeonError):
    """A refusal of the HTTP edge itself (bad JSON, no token, too many requests)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        self.status, self.code, self.headers = status, code, headers or {}
        super().__init__(message)


def code_of(error: BaseException) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


def status_of(error: PeonError) -> int:
    for cls, status in STATUS:
        if isinstance(error, cls):
            return status
    return 409  # a core refusal of what cannot be done now (a backup error, say)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers, dumps=json.dumps)


HTTP_SENTENCES = {
    404: "There is no such API route; see /api/v1/openapi.json.",
    405: "This route does not take that method; see /api/v1/openapi.json.",
    413: "The request body is too large.",
}


@web.middleware
async def render_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Render a refusal raised anywhere below as the one error shape."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, str(e), e.headers)
    except PeonError as e:
        return error_response(status_of(e), code_of(e), str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = re.sub(r"\W+", "_", e.reason.lower()).strip("_")
        message = HTTP_SENTENCES.get(e.status, f"{e.reason}.")
        headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        return error_response(e.status, code, message, headers)
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        log.exception("API request %s %s failed", request.method, request.path)
        return error_response(
            500, "internal_error", "PEON failed to answer this request; its log says why."
        )
