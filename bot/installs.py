"""Install steps: a war plan's `install:` script, run in a separate installer container.

As Pterodactyl does for its eggs: the script runs once, from an image of its own (a full
distribution with curl or steamcmd, where the game image may have neither), against the
server's volumes, before the server's first start; again on a reinstall. The store records
whether it ran to the end (`installs.installed`), written 0 before the installer starts and 1
with its success, so a process killed mid-install leaves a server that installs again at its
next start and is never started half installed.

Installer containers carry labels of their own (labels.installer_labels), never those of a
game container, so nothing that looks for a server's container can pick one up; a killed
process's installer is removed by the recovery of its lease or by reconcile.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import shlex
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bot import labels
from bot.aio import Progress, emit_progress, quietly
from bot.configfiles import numeric_owner
from bot.docker_driver import ContainerSpec, DockerDriver
from bot.errors import InstallFailed, ServerStateError
from bot.models import InstallRecord, Phase, ServerRecord
from bot.store import Store
from bot.warplans import INSTALL_SCRIPT_PATH, WarPlan, fill_template, variable_texts

log = logging.getLogger(__name__)
_quiet = functools.partial(quietly, what="installer cleanup", logger=log)

INSTALL_LOG_MAX = 512 * 1024  # characters of the installer's log kept (its end)
LOG_TAIL_ON_FAILURE = 20  # lines shown with a refusal
_BACKUP_KEY = "install.backup.{}"  # meta: the safety backup of an installed server
PROGRESS_EVERY = 1.0  # seconds between progress lines taken from the installer's log
PROGRESS_LINE_MAX = 200
EXIT_WAIT = 30.0  # seconds the engine may take to report the exit once the log has ended

Redact = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class InstallResult:
    server: str
    image: str
    seconds: float  # from creating the installer container to its removal
    script_seconds: float  # from its start to its exit: the script's own run


def installer_mounts(plan: WarPlan) -> dict[str, str]:
    """Plan volume name -> path in the installer: `install.mounts`, else the plan's paths."""
    spec = plan.install
    if spec is None:
        return {}
    return dict(spec.mounts) if spec.mounts is not None else {v.name: v.path for v in plan.volumes}


def installer_env(
    plan: WarPlan,
    server_env: Mapping[str, str],
    server: str,
    host_ports: Mapping[str, int],
    variables: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The server's rendered environment plus `install.env` (templates filled, {env:NAME}
    from the server's environment and {var:NAME} from `variables`; it wins)."""
    spec = plan.install
    extra = spec.env if spec is not None else {}
    texts = variable_texts(plan, variables or {}, server, host_ports)
    memory = plan.resources.memory_bytes

    def fill(text: str) -> str:
        return fill_template(
            text, server, host_ports, variables=texts, env=server_env, memory=memory
        )

    return {**server_env, **{k: fill(v) for k, v in extra.items()}}


def installer_command(plan: WarPlan) -> list[str]:
    """The installer's command: the entrypoint running the script; then, when the plan runs
    its game as a numeric user, the installed volumes handed to that user. The script runs as
    root, the game as `user`: Wings likewise chowns a server's files to its container user
    before every boot (server/power.go, check_permissions_on_boot, default true)."""
    spec = plan.install
    if spec is None:
        return []
    owner = numeric_owner(plan.user)
    if owner is None:
        return spec.command()
    paths = " ".join(shlex.quote(p) for p in installer_mounts(plan).values())
    chown = f"chown -R {owner[0]}:{owner[1]} {paths}"
    return ["/bin/sh", "-c", f"{shlex.join(spec.command())} && {chown}"]


def script_archive(script: str) -> bytes:
    """A tar holding the script at INSTALL_SCRIPT_PATH (relative to /), executable."""
    # Eggs written on Windows carry CRLF: a '\r' at each line's end breaks every shell.
    data = script.replace("\r\n", "\n").encode()
    folder, _, filename = INSTALL_SCRIPT_PATH.strip("/").rpartition("/")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entry = tarfile.TarInfo(folder)
        entry.type, entry.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(entry)
        entry = tarfile.TarInfo(f"{folder}/{filename}")
        entry.size, entry.mode = len(data), 0o755
        tar.addfile(entry, io.BytesIO(data))
    return buf.getvalue()


class InstallService:
    """Runs install steps and keeps their outcome and log in the store."""

    def __init__(self, *, store: Store, instance: str) -> None:
        self.store = store
        self.instance = instance

    async def needed(self, name: str, plan: WarPlan) -> bool:
        """Whether the server must run its install step before it may start."""
        if plan.install is None:
            return False
        record = await self.store.get_install(name)
        return record is not None and not record.installed

    async def remember_backup(self, name: str, backup_id: int) -> None:
        """Note a safety backup taken while the server was installed (or had nothing to
        install): restoring exactly that backup makes the server installed again."""
        record = await self.store.get_install(name)
        if record is None or record.installed:
            await self.store.set_meta(_BACKUP_KEY.format(name), str(backup_id))

    async def restored(self, name: str, backup_id: int) -> None:
        """A backup was written back: the one taken before a reinstall, while the server was
        installed, brings back installed files, so its next start does not install again
        (the refusal of a failed reinstall names that backup to restore)."""
        if await self.store.get_meta(_BACKUP_KEY.format(name)) == str(backup_id):
            await self.store.mark_installed(name)

    async def last(self, name: str) -> InstallRecord:
        """The server's last install run; ServerStateError when it never had one."""
        record = await self.store.get_install(name)
        if record is None:
            raise ServerStateError(f"Server '{name}' has never run an install step.")
        return record

    async def run(
        self,
        *,
        driver: DockerDriver,
        record: ServerRecord,
        plan: WarPlan,
        env: Mapping[str, str],
        redact: Redact,
        actor: str,
        progress: Progress | None = None,
    ) -> InstallResult:
        """Run the plan's install script against the server's volumes (they exist: the
        caller made the server's container first) and wait for it, at most its timeout.
        The image must be present. Raises InstallFailed with the log's last lines; the
        installer container is removed in every case, also when cancelled."""
        spec = plan.install
        if spec is None:
            raise ServerStateError(f"War plan '{plan.name}' has no install step.")
        name = record.name
        began = time.monotonic()
        await self.store.begin_install(name, spec.image)
        await self.remove_leftovers(driver, name)  # an earlier run's, cut short
        await emit_progress(progress, Phase(name, "installing", spec.image))
        mounts = installer_mounts(plan)
        cid = await driver.create_container(
            ContainerSpec(
                name=labels.installer_name(name),
                image=spec.image,
                labels=labels.installer_labels(self.instance, name, plan.name),
                env=dict(env),
                entrypoint=installer_command(plan),
                volumes={labels.volume_name(name, vol): path for vol, path in mounts.items()},
            )
        )
        code: int | None = None
        reason: str | None = None
        script_seconds = 0.0
        lines: list[str] = []
        try:
            archive = await asyncio.to_thread(script_archive, spec.script)
            await driver.write_archive(cid, "/", io.BytesIO(archive))
            started = time.monotonic()
            await driver.start(cid)
            try:
                async with asyncio.timeout(spec.timeout):
                    await self._follow(driver, cid, name, redact, progress)
                    code = await driver.wait(cid, EXIT_WAIT)
            except TimeoutError:
                await _quiet(driver.kill(cid))
                reason = f"it did not finish within {spec.timeout} s and was stopped"
            script_seconds = time.monotonic() - started
            if reason is None and code != 0:
                reason = (
                    f"the script exited with code {code}"
                    if code is not None
                    else "the installer did not exit after its log ended"
                )
            lines = redact(await driver.logs(cid, tail="all"))
        finally:
            await _quiet(driver.remove(cid, force=True))
        seconds = time.monotonic() - began
        text = "\n".join(lines)[-INSTALL_LOG_MAX:]
        ok = reason is None
        await self.store.finish_install(
            name, ok=ok, exit_code=code, seconds=round(seconds, 2), log=text
        )
        payload = {"image": spec.image, "seconds": round(seconds, 1), "exit_code": code}
        if not ok:
            await self.store.audit(actor, "install", name, False, str(reason), payload=payload)
            raise InstallFailed(name, str(reason), lines[-LOG_TAIL_ON_FAILURE:])
        await self.store.audit(
            actor, "install", name, True, f"{spec.image} in {seconds:.1f} s", payload=payload
        )
        await emit_progress(progress, Phase(name, "installed", f"in {seconds:.1f} s"))
        return InstallResult(name, spec.image, seconds, script_seconds)

    async def _follow(
        self,
        driver: DockerDriver,
        cid: str,
        name: str,
        redact: Redact,
        progress: Progress | None,
    ) -> None:
        """Read the installer's log until it exits; show its latest line now and then (a
        Discord message cannot take every line of a download)."""
        shown = 0.0
        async for line in driver.follow_logs(cid):
            now = time.monotonic()
            if progress is not None and line.strip() and now - shown >= PROGRESS_EVERY:
                shown = now
                text = redact([line.strip()])[0][:PROGRESS_LINE_MAX]
                await emit_progress(progress, Phase(name, "installing", text))

    async def remove_leftovers(
        self, driver: DockerDriver, server: str | None = None, *, idle_only: bool = False
    ) -> list[str]:
        """Remove installer containers of this instance (of one server); returns the servers
        they were for. `idle_only`: only those whose server has no live operation (an install
        under way), read from the store right before each removal, so a create that another
        process began since the caller looked is never cut short."""
        removed = []
        for info in await driver.list_containers(labels.installer_filter(self.instance, server)):
            owner = info.labels.get(labels.INSTALLER, "")
            if idle_only:
                record = await self.store.find_server(owner)
                if record is not None and record.operation:
                    continue
            await driver.remove(info.id, force=True)
            removed.append(owner)
        return removed
