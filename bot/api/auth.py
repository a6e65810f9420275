"""Who is calling: the bearer token, its rate limit, and the access log line.

Tokens come only in a header (`Authorization: Bearer ...`, or `X-Api-Key` for the original
PEON clients' routes), never in a URL, so the request line aiohttp logs never holds one. The
access log names the token, not the secret.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from bot.api.errors import ApiError
from bot.models import ApiToken
from bot.tokens import TokenService

log = logging.getLogger("peon.api.access")

TOKEN_KEY = web.RequestKey("token", ApiToken)


@dataclass
class _Bucket:
    level: float
    at: float


class RateLimiter:
    """A token bucket per API token: `rate` requests a second, bursts up to `burst`.

    Hand-written (a dozen lines) rather than a dependency: aiohttp has none built in, and the
    libraries that do (aiolimiter, limits) either wait instead of refusing or bring storage
    back-ends PEON does not need.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """0 when allowed (one request taken), else seconds until the next is."""
        now = time.monotonic()
        b = self.buckets.setdefault(key, _Bucket(float(self.burst), now))
        b.level = min(float(self.burst), b.level + (now - b.at) * self.rate)
        b.at = now
        if b.level >= 1:
            b.level -= 1
            return 0.0
        return (1 - b.level) / self.rate

    def forget(self, key: str) -> None:
        self.buckets.pop(key, None)


def bearer(request: web.Request, *, api_key: bool = False) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if api_key and request.headers.get("X-Api-Key"):
        return request.headers["X-Api-Key"].strip()
    return None


UNAUTHORIZED = "Give a valid API token in the Authorization header: 'Bearer peon_...'."


async def authenticate(
    request: web.Request, tokens: TokenService, limiter: RateLimiter, *, api_key: bool = False
) -> ApiToken:
    """The request's token (401 without a valid one), with one request taken from its rate
    (429 with Retry-After when it has none left)."""
    secret = bearer(request, api_key=api_key)
    token = await tokens.authenticate(secret) if secret else None
    if token is None:
        what = "no" if secret is None else "an unknown or revoked"
        raise ApiError(
            401, "unauthorized", f"This request has {what} API token. {UNAUTHORIZED}",
            {"WWW-Authenticate": 'Bearer realm="peon"'},
        )  # fmt: skip
    request[TOKEN_KEY] = token
    wait = limiter.take(token.name)
    if wait > 0:
        raise ApiError(
            429, "rate_limited",
            f"Token '{token.name}' sent too many requests; try again in {math.ceil(wait)} s.",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )  # fmt: skip
    return token


class AccessLogger(AbstractAccessLogger):
    """One line per request: who (the token's name), what (method and path, without the
    query), the status and how long it took. Never a header, so never a token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        token = request.get(TOKEN_KEY) if isinstance(request, web.Request) else None
        name = token.name if token is not None else "-"
        self.logger.info(
            "%s %s %s %s %.1f ms token=%s",
            request.remote, request.method, request.path, response.status, time * 1000, name,
        )  # fmt: skip
