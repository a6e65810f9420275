"""Composition: build every core service once from Settings; shared by the CLI and the bot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bot.backups import BackupService
from bot.docker_driver import DockerDriver
from bot.servers import ServerService
from bot.settings import Settings
from bot.store import Store
from bot.warplans import WarplanLibrary


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    driver: DockerDriver
    warplans: WarplanLibrary
    servers: ServerService
    backups: BackupService


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Open the store and the driver; close them in reverse order."""
    warplans = WarplanLibrary(settings.warplans_dir)
    store = Store(settings.db_path)
    await store.open()
    driver = DockerDriver(settings.docker.base_url, settings.docker.timeout)
    try:
        servers = ServerService(settings=settings, store=store, driver=driver, warplans=warplans)
        backups = BackupService(settings=settings, store=store, driver=driver, servers=servers)

        async def backup_first(server: str, actor: str, trigger: str) -> object:
            return await backups.create_held(server, actor=actor, trigger=trigger)

        servers.backup_hook = backup_first
        yield Services(settings, store, driver, warplans, servers, backups)
    finally:
        await driver.close()
        await store.close()
