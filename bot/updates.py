"""Update checks: does a server's image have a newer build in its registry? Asked without
pulling, by comparing the digest the registry gives for the plan's tag now with the digests
the local image was pulled by (its RepoDigests).

A check that finds one records an "update-available" event; `new` in its payload says this
remote digest had not been recorded for the server before, so consumers (the Discord notices)
tell people once per new image, however often a cron checks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.events import NewEvent
from bot.models import ImageInfo
from bot.servers import ServerService
from bot.store import Store

log = logging.getLogger(__name__)

UPDATE_AVAILABLE = "update-available"
SEEN_KEY = "updates.seen:{server}"  # meta: the last remote digest recorded as available


@dataclass(frozen=True)
class UpdateCheck:
    server: str
    image: str
    remote: str  # the registry's digest for the tag
    local: str | None  # the digest the local image was pulled by (None: never pulled)
    # The server's container runs an older image than the local one (another server on the
    # same image was updated, or someone pulled it by hand): an update would recreate it.
    behind_local: bool = False
    new: bool = False  # first time this remote digest was found for this server

    @property
    def available(self) -> bool:
        return self.local != self.remote or self.behind_local


def _repository(ref: str) -> str:
    """The repository part of an image reference, as Docker normalises it, so that
    `itzg/minecraft-server:java21` and `docker.io/itzg/minecraft-server@sha256:…` compare
    equal (and `ubuntu` with `docker.io/library/ubuntu`)."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:  # a tag, not a registry's port
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        name = name.removeprefix(prefix)
    return name.removeprefix("library/")


def local_digest(image: str, info: ImageInfo | None, remote: str) -> str | None:
    """The digest the local image was pulled by from the image's own repository (the
    remote one when it is among them: an image may be known by several)."""
    if info is None:
        return None
    repo = _repository(image)
    digests = [
        d.split("@", 1)[1]
        for d in info.repo_digests
        if "@" in d and _repository(d.split("@", 1)[0]) == repo
    ]
    if remote in digests:
        return remote
    return digests[0] if digests else None


class UpdateService:
    """Checks servers' images against their registries."""

    def __init__(self, *, servers: ServerService, store: Store) -> None:
        self.servers, self.store = servers, store

    async def check(self, name: str, *, actor: str) -> UpdateCheck:
        """Ask the server's registry (through the server's own Docker host) without pulling;
        record "update-available" when it has a different image. UpdateCheckFailed when the
        registry cannot be asked."""
        record = await self.store.get_server(name)
        plan = self.servers.plan_of(record)
        driver = self.servers.driver_of(record)
        remote = await driver.registry_digest(plan.image)
        info = await driver.image_info(plan.image)
        container = await self.servers.container_of(record)
        behind = info is not None and container is not None and container.image_id != info.id
        local = local_digest(plan.image, info, remote)
        check = UpdateCheck(name, plan.image, remote, local, behind)
        if not check.available:
            return check
        key = SEEN_KEY.format(server=name)
        seen = f"{plan.image}@{remote}"
        new = await self.store.get_meta(key) != seen
        check = UpdateCheck(check.server, check.image, remote, check.local, behind, new)
        detail = f"{plan.image}: registry {remote[:19]}, local {(check.local or 'none')[:19]}"
        await self.store.append_event(
            NewEvent(
                UPDATE_AVAILABLE, name, actor, True, detail,
                {"image": plan.image, "local": check.local, "remote": remote,
                 "behind_local": behind, "new": new},
            )
        )  # fmt: skip
        if new:
            await self.store.set_meta(key, seen)
        log.info("%s: update available (%s)", name, detail)
        return check
