"""The web dashboard: one static page (bot/api/web/: HTML, a small JS module, CSS) served by the
API's own aiohttp app, talking to /api/v1 with the token the user types in (docs/api.md).

No build step and no framework: the files are package data, read once when the app is built.
The page's Content-Security-Policy allows only its own script, style and API (no inline code,
no other origin), so even a server name or log line that slipped past the page's escaping
could not run as script.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

FILES = {  # what is served, and as what; nothing else under /ui/ exists
    "app.js": "text/javascript",
    "style.css": "text/css",
}
CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",  # the API, the event stream included
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",  # the login form is handled by the script, never submitted
    "frame-ancestors 'none'",
])  # fmt: skip
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # A new PEON version's page is picked up at once (the files are tiny).
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files("bot.api").joinpath("web", name).read_bytes()


def add_dashboard(app: web.Application) -> None:
    """Serve the dashboard at / and its files at /ui/NAME."""
    index = _read("index.html")
    files = {name: (_read(name), kind) for name, kind in FILES.items()}

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=index, content_type="text/html", charset="utf-8",
                            headers=HEADERS)  # fmt: skip

    async def asset(request: web.Request) -> web.Response:
        found = files.get(request.match_info["file"])
        if found is None:
            raise web.HTTPNotFound()
        body, kind = found
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=HEADERS)

    app.router.add_get("/", page, name="dashboard")
    app.router.add_get("/ui/{file}", asset, name="dashboard_file")
