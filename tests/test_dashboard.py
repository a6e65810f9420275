"""The web dashboard in a real browser: Debian's chromium, headless, driven by Playwright, against
the API served on 127.0.0.1 over the real engine and store. Sign in with a token, see a server
turn running live when the `peon` CLI (another process) starts it, press Stop and see it stop;
the server page shows status, players, log lines (escaped) and backups. Screenshots at a
desktop and a phone size are saved in the test's tmp_path (their paths are printed)."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from bot.api import ApiServer
from bot.app import Services
from bot.settings import ApiSettings
from bot.tokens import TokenService
from tests.conftest import config_file, make_settings, peon, services_for

pytestmark = pytest.mark.docker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
LIVE = 90_000  # ms: a start through the CLI (a process of its own) until the page shows it
SERVER = "web-dash"
NOT_RUNNING = re.compile(r"^(created|exited|stopped)$")  # the engine's words
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium (scripts/test)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


def watch_errors(page: Page) -> list[str]:
    """Console errors and uncaught exceptions (a CSP violation shows up here too)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


async def sign_in(page: Page, base: str, secret: str) -> None:
    await page.goto(base + "/")
    await page.fill("#token", secret)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#who")).to_contain_text("web-")


async def test_the_dashboard_follows_a_cli_start_and_stops_a_server(
    tmp_path: Path, fakegame: str, browser: Browser
) -> None:
    settings = make_settings(tmp_path, api=ApiSettings(listen="127.0.0.1:0"))
    config = config_file(settings, tmp_path / "peon.yaml")
    async with services_for(settings) as svc:
        await svc.servers.create("fakegame", SERVER, actor="test")
        await svc.backups.create(SERVER, actor="test")
        made = TokenService(svc.store)
        _, operator = await made.create("web-op", "operator", actor="test")
        _, player = await made.create("web-player", "player", actor="test")
        server = ApiServer(svc)
        await server.start()
        base = f"http://127.0.0.1:{server.port}"
        try:
            await _desktop(browser, svc, base, config, operator, tmp_path)
            await _phone_player(browser, base, player, tmp_path)
            await _page_headers(base)
        finally:
            await server.close()


async def _desktop(
    browser: Browser, svc: Services, base: str, config: Path, secret: str, out: Path
) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    errors = watch_errors(page)
    await sign_in(page, base, secret)
    assert secret not in page.url
    assert await page.evaluate("sessionStorage.getItem('peon.token')") == secret
    row = page.locator(f"li.server[data-server='{SERVER}']")
    await expect(row.locator(".state")).to_have_text(NOT_RUNNING)
    await expect(page.locator("#live")).to_be_visible()
    # Operators get the three buttons; Start is the one that applies to a stopped server.
    await expect(row.locator("button.start")).to_be_enabled()
    await expect(row.locator("button.stop")).to_be_disabled()

    # The CLI, a process of its own, starts it: the page learns it from the event stream.
    started = await asyncio.to_thread(peon, config, "server", "start", SERVER)
    assert started.returncode == 0, started.stderr
    await expect(row.locator(".state")).to_have_text("running", timeout=LIVE)
    await expect(row.locator("button.stop")).to_be_enabled()

    # A player joins and a hostile line reaches the log: both show, the line as text.
    await svc.servers.console(SERVER, "join alice", actor="test")
    await svc.servers.console(SERVER, f"say {HOSTILE}", actor="test")
    await expect(row.locator(".players")).to_have_text("1 playing", timeout=LIVE)
    shot = out / "dashboard-list.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    await row.locator("a.name").click()
    await expect(page.locator("#d-name")).to_have_text(SERVER)
    await expect(page.locator("#d-status")).to_contain_text("alice")
    await expect(page.locator("#d-logs")).to_contain_text(f"Broadcast: {HOSTILE}", timeout=LIVE)
    assert await page.locator("#d-logs img").count() == 0
    assert await page.title() == "PEON"
    await expect(page.locator("#d-backups tbody tr")).to_have_count(1)
    shot = out / "dashboard-server.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    # Stop from the server page: the state follows to stopped, and the engine agrees.
    await page.locator("#d-actions button.stop").click()
    await expect(page.locator("#d-status dd.state")).to_have_text(NOT_RUNNING, timeout=LIVE)
    assert not await svc.servers.is_running(SERVER)
    await page.click("#home")
    await expect(row.locator(".state")).to_have_text(NOT_RUNNING)
    events = await svc.store.latest_events(SERVER, 20)
    assert any(e.kind == "stop" and e.ok and e.actor == "api:web-op" for e in events)
    assert errors == [], errors
    await context.close()


async def _phone_player(browser: Browser, base: str, secret: str, out: Path) -> None:
    """A player's token on a phone: the list without lifecycle buttons, nothing overflowing."""
    context = await browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
        has_touch=True,
    )  # fmt: skip
    page = await context.new_page()
    errors = watch_errors(page)
    await sign_in(page, base, secret)
    row = page.locator(f"li.server[data-server='{SERVER}']")
    await expect(row.locator(".state")).to_have_text(NOT_RUNNING)
    assert await row.locator("button").count() == 0
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px phone"
    shot = out / "dashboard-phone.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    await row.locator("a.name").click()
    await expect(page.locator("#d-name")).to_have_text(SERVER)
    # Players may not read logs: the page does not offer them.
    await expect(page.locator("#d-logs-box")).to_be_hidden()
    await expect(page.locator("#d-backups tbody tr")).to_have_count(1)
    shot = out / "dashboard-phone-server.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    # Signing out forgets the token.
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('peon.token')") is None
    assert errors == [], errors
    await context.close()


async def _page_headers(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/") as r:
            assert r.status == 200
            csp = r.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        async with http.get(base + "/ui/app.js") as r:
            assert r.status == 200 and r.content_type == "text/javascript"
            assert "innerHTML" not in await r.text()
        async with http.get(base + "/ui/../bot/api/routes.py") as r:
            assert r.status == 404
        async with http.get(base + "/ui/nothing.js") as r:
            assert r.status == 404
