"""The HTTP API: the same core services as the bot and the CLI, over HTTP (docs/api.md).

An edge like the cogs: each handler parses, checks the token's permission, calls one core
service and renders; refusals raised in the core are rendered once (bot/api/errors.py).
Served by `peon run` beside the bot, or alone by `peon serve-api`; off unless `api:` is set.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from typing import TYPE_CHECKING

from aiohttp import web

from bot.api.admission import admission
from bot.api.auth import AccessLogger
from bot.api.compat import Compat
from bot.api.dashboard import add_dashboard
from bot.api.errors import render_errors
from bot.api.routes import ROUTES, Api, wrap
from bot.errors import PeonError

if TYPE_CHECKING:
    from bot.app import Services
    from bot.automation import Automation
    from bot.settings import ApiSettings

log = logging.getLogger(__name__)

API_KEY = web.AppKey("api", Api)


class ApiUnavailable(PeonError):
    """The API cannot be served as configured (its address is taken, its TLS files)."""


DEFAULT_MAX_BODY = 65536


def make_app(services: Services, *, automation: Automation | None = None) -> web.Application:
    """The aiohttp application: /api/v1 (ROUTES) and the original PEON's /api/1.0."""
    settings = services.settings.api
    app = web.Application(
        # A few requests at a time: the bot's interactions share this loop (admission.py).
        middlewares=[admission(), render_errors],
        client_max_size=settings.max_body if settings else DEFAULT_MAX_BODY,
    )
    api = Api(services, automation=automation)
    app[API_KEY] = api
    for route in ROUTES:
        # Ids are digits (a bounded number of them: SQLite's integers are 64-bit).
        path = route.path.replace("{id}", r"{id:\d{1,18}}")
        app.router.add_route(route.method, path, wrap(api, route), name=route.name)
    Compat(api).add_to(app)
    add_dashboard(app)  # the web page at / (bot/api/dashboard.py)

    async def on_shutdown(app: web.Application) -> None:
        api.closing.set()  # event streams end; their clients reconnect elsewhere or later

    async def on_cleanup(app: web.Application) -> None:
        await api.operations.close()

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def _tls(settings: ApiSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


class ApiServer:
    """The API listening on its configured address, started and closed with its process."""

    def __init__(self, services: Services, *, automation: Automation | None = None) -> None:
        if services.settings.api is None:
            raise ValueError("the API is not configured")
        self.settings = services.settings.api
        self.app = make_app(services, automation=automation)
        self.runner = web.AppRunner(
            self.app, access_log_class=AccessLogger, shutdown_timeout=2.0,
            access_log=logging.getLogger("peon.api.access"),
            handle_signals=False,
        )  # fmt: skip
        self.port = 0

    @property
    def api(self) -> Api:
        return self.app[API_KEY]

    async def start(self) -> None:
        """Listen; ApiUnavailable (one sentence) when the address or the TLS files fail."""
        host, port = self.settings.address
        try:
            context = _tls(self.settings)
        except (OSError, ssl.SSLError) as e:
            raise ApiUnavailable(
                f"The API cannot load tls_cert/tls_key: {getattr(e, 'strerror', None) or e}."
            ) from None
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=context)
        try:
            await site.start()
        except OSError as e:
            await self.runner.cleanup()
            why = os.strerror(e.errno) if e.errno else str(e)  # not asyncio's long wrapping
            raise ApiUnavailable(
                f"The API cannot listen on {self.settings.listen}: {why.lower()}."
            ) from None
        self.port = self._bound_port() or port
        scheme = "https" if self.settings.tls_cert else "http"
        log.info("API listening on %s://%s:%s", scheme, host, self.port)

    def _bound_port(self) -> int | None:
        for addr in self.runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                return int(addr[1])
        return None

    async def close(self) -> None:
        self.api.closing.set()
        await self.runner.cleanup()


async def serve_api(services: Services, stop: asyncio.Event) -> None:
    """`peon serve-api`: the API without Discord, until `stop` is set."""
    server = ApiServer(services)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.close()
