"""Composition: build every core service once from Settings; shared by the CLI and the bot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bot.backups import BackupService
from bot.camps import Camps
from bot.docker_driver import DockerDriver
from bot.installs import InstallService
from bot.servers import ServerService
from bot.settings import Settings
from bot.store import Store
from bot.updates import UpdateService
from bot.warplans import WarplanLibrary


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    camps: Camps
    warplans: WarplanLibrary
    servers: ServerService
    backups: BackupService
    updates: UpdateService

    @property
    def driver(self) -> DockerDriver:
        """The first host's engine: what single-host tools and tests talk to."""
        return self.camps.default.driver


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Open the store and the driver; close them in reverse order."""
    warplans = WarplanLibrary(settings.warplans_dir)
    store = Store(settings.db_path)
    await store.open()
    camps = Camps(settings)
    try:
        installs = InstallService(store=store, instance=settings.instance_id)
        servers = ServerService(
            settings=settings, store=store, camps=camps, warplans=warplans, installs=installs
        )
        backups = BackupService(settings=settings, store=store, servers=servers)

        async def backup_first(server: str, actor: str, trigger: str) -> object:
            return await backups.create_held(server, actor=actor, trigger=trigger)

        servers.backup_hook = backup_first
        servers.recovery_hooks.append(backups.after_interrupted)
        updates = UpdateService(servers=servers, store=store)
        yield Services(settings, store, camps, warplans, servers, backups, updates)
    finally:
        await camps.close()
        await store.close()
