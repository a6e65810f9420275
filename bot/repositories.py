"""Backup repositories: where backups go when `backups.repository` is set, and their offsite
copies (`backups.offsite`), on restic (bot/restic.py).

A backup is one restic snapshot per volume, each holding `<volume>.tar`: the same tar stream
PEON archived as .tar.zst before, so a restore still checks every member before the server
is touched. restic's content-defined chunking stores only the chunks a repository lacks, so a
backup of a world that changed little adds little.

Every snapshot carries tags naming its server, backup, volume and trigger; a backup's row
says where its snapshots are ({repository: {volume: snapshot}}). Retention is PEON's own
policy (bot/backups.py to_prune, the rules of `restic forget --keep-*`), applied per
repository to the backups stored there, and the snapshots it drops are forgotten by id: a
backup's volumes go together, and a locked backup neither goes nor uses up a slot (restic's
--keep-tag counts it in the slots). Locked snapshots also carry the `peon-locked` tag, so a
`restic forget --keep-tag peon-locked` run by hand keeps them too.

Offsite copies (`restic copy`) run after a backup, outside the server's lease, and again
every `retry_minutes` while one is missing: a failure is announced (a `backup-offsite`
event) and never blocks or fails the server's backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tarfile
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, cast

from bot import labels
from bot import volumes as volume_io
from bot.docker_driver import DockerDriver
from bot.errors import BackupError, PeonError
from bot.events import NewEvent
from bot.models import Backup, BackupVolume
from bot.restic import PartlyRead, RepositoryError, Restic, Stored
from bot.settings import RepositorySettings, Settings
from bot.store import Store

log = logging.getLogger(__name__)

ACTOR = "peon:offsite"
OFFSITE_EVENT = "backup-offsite"
LOCKED_TAG = "peon-locked"
COPY_BLOCK = 1 << 20
# A restore's spool of a volume's tar, in the server's backup folder (see verify()).
SPOOL = ".restore-spool-"

Prune = Callable[[Iterable[Backup], Any], list[Backup]]


@dataclass(frozen=True)
class CheckResult:
    repository: str
    ok: bool
    detail: str


def open_repository(r: RepositorySettings, cache_dir: Path | None) -> Restic:
    """A Restic for configured settings; the password is read from the environment now."""
    password = None if r.password_file else os.environ.get(r.password_env, "")
    if r.password_file is None and not password:
        raise RepositoryError(
            f"Repository '{r.name}' needs its password in the environment variable "
            f"{r.password_env}; it is not set."
        )
    env = {}
    for key, var in r.env.items():
        if var not in os.environ:
            raise RepositoryError(
                f"Repository '{r.name}' takes {key} from the environment variable {var}; it "
                "is not set."
            )
        env[key] = os.environ[var]
    return Restic(r.location, name=r.name, password=password, password_file=r.password_file,
                  env=env, options=r.options, cache_dir=cache_dir)  # fmt: skip


class Repositories:
    def __init__(self, *, settings: Settings, store: Store, prune_rule: Prune, policy_of:
                 Callable[[RepositorySettings | None], Any]) -> None:  # fmt: skip
        self.store = store
        self._prune_rule, self._policy_of = prune_rule, policy_of
        self._copying = asyncio.Lock()
        self._failing: set[tuple[int, str]] = set()  # (backup, repository) announced as failing
        self._unpruned: set[str] = set()  # repositories with forgotten snapshots' data left
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        self.settings = settings
        b = settings.backups
        self.instance = settings.instance_id
        cache = settings.data_dir / "restic-cache"
        self.primary_settings = b.repository
        self.offsite_settings = list(b.offsite)
        self._repos: dict[str, Restic] = {}
        self._cache = cache
        self._errors: dict[str, str] = {}
        for r in ([b.repository] if b.repository else []) + list(b.offsite):
            try:
                self._repos[r.name] = open_repository(r, cache)
            except RepositoryError as e:
                # Said when the repository is used; PEON starts without it.
                self._errors[r.name] = str(e)
                log.warning("%s", e)

    @property
    def enabled(self) -> bool:
        return self.primary_settings is not None

    @property
    def primary(self) -> str:
        return self.primary_settings.name if self.primary_settings else ""

    def repo(self, name: str) -> Restic:
        if name in self._repos:
            return self._repos[name]
        raise RepositoryError(
            self._errors.get(name, f"There is no backup repository named '{name}' in the config.")
        )

    def names(self) -> list[str]:
        return [r.name for r in ([self.primary_settings] if self.primary_settings else [])] + [
            r.name for r in self.offsite_settings
        ]

    def tags(self, server: str, backup_id: int, trigger: str, volume: str) -> list[str]:
        return [f"peon-server={server}", self.backup_tag(backup_id), f"peon-trigger={trigger}",
                f"peon-volume={volume}"]  # fmt: skip

    def backup_tag(self, backup_id: int) -> str:
        # The instance keeps two PEONs sharing a repository apart (backup ids are per database).
        return f"peon-backup={self.instance}-{backup_id}"

    # --- backing up -------------------------------------------------------------------------

    async def store_volume(
        self, *, server: str, backup_id: int, trigger: str, volume: str, at: datetime,
        feed: Callable[[BinaryIO], Awaitable[Any]],
    ) -> Stored:  # fmt: skip
        """Stream one volume's tar into the primary repository as a snapshot of its own."""
        return await self.repo(self.primary).backup_stream(
            f"{volume}.tar", feed, tags=self.tags(server, backup_id, trigger, volume),
            host=server, at=at,
        )  # fmt: skip

    async def back_up(
        self, driver: DockerDriver, cid: str, *, server: str, backup_id: int, trigger: str,
        volume: str, path: str, at: datetime,
    ) -> tuple[Stored, str]:  # fmt: skip
        """One volume into the primary repository: its directory when the engine is local and
        PEON may read it (bot/volumes.py; restic then skips unchanged files without reading
        them), else the engine's tar stream. Returns what was stored and the snapshot's file
        (the directory, or `<volume>.tar`)."""
        source = await volume_io.locate(driver, cid, labels.volume_name(server, volume), path)
        if source.mountpoint is not None:
            try:
                stored = await self.store_directory(
                    server=server, backup_id=backup_id, trigger=trigger, volume=volume, at=at,
                    directory=source.mountpoint,
                )  # fmt: skip
                return stored, str(source.mountpoint)
            except PartlyRead as e:
                log.info("backup of %s: volume %s through the engine (%s)", server, volume, e)

        async def feed(sink: BinaryIO) -> None:
            await driver.read_archive(cid, path, sink)

        stored = await self.store_volume(server=server, backup_id=backup_id, trigger=trigger,
                                         volume=volume, at=at, feed=feed)  # fmt: skip
        return stored, f"{volume}.tar"

    async def store_directory(
        self, *, server: str, backup_id: int, trigger: str, volume: str, at: datetime,
        directory: Path,
    ) -> Stored:  # fmt: skip
        """Back up one volume's directory as it is on disk (the engine is local and PEON may
        read it): unchanged files are not even read again. Raises PartlyRead (its snapshot
        forgotten) when some file could not be read, for the caller to use the engine."""
        repo = self.repo(self.primary)
        try:
            return await repo.backup_paths(
                [str(directory)], tags=self.tags(server, backup_id, trigger, volume), host=server,
                at=at,
            )  # fmt: skip
        except PartlyRead as e:
            await repo.forget([e.snapshot])
            raise

    async def forget_unfinished(self, backup_ids: Iterable[int]) -> None:
        """Forget what backups cut short stored (a killed PEON's restic is killed with it and
        stores nothing, but volumes finished before the kill were stored)."""
        ids = list(backup_ids)
        if not ids or not self.enabled:
            return
        repo = self.repo(self.primary)
        await repo.unlock()
        for backup_id in ids:
            found = await repo.snapshots(self.backup_tag(backup_id))
            await repo.forget([s.id for s in found])

    # --- restoring --------------------------------------------------------------------------

    def _sources(self, b: Backup) -> list[str]:
        """The repositories holding the backup, the primary first."""
        return sorted(b.stored, key=lambda n: (n != self.primary, n))

    async def verify(
        self, b: Backup, check: Callable[[BinaryIO, str], object], spool_dir: Path
    ) -> tuple[str, dict[str, BinaryIO]]:
        """Read every volume of the backup through `check` (restic verifies each block's
        hash as it reads), keeping what was read in a spool file per volume, so the restore
        writes back these very bytes rather than reading the snapshot again (each `restic
        dump` costs ~11 s per GiB). Returns the repository it was read from (the primary, or
        an offsite copy when the primary lacks it or cannot be reached) and the spools, by
        volume, at their start; the caller closes them.

        The spools are unnamed files in `spool_dir` (O_TMPFILE, or created and unlinked at
        once): closing one frees its space, and a bot killed mid-restore leaves nothing
        behind for recover() to find."""
        reasons = []
        for name in self._sources(b):
            spools: dict[str, BinaryIO] = {}
            try:
                for v in b.volumes:
                    top = v.path.rstrip("/").rsplit("/", 1)[-1]
                    spool = await asyncio.to_thread(_spool, spool_dir)
                    spools[v.name] = spool

                    async def consume(f: BinaryIO, top: str = top, spool: BinaryIO = spool) -> None:
                        await asyncio.to_thread(
                            _check_all, check, cast(BinaryIO, _Tee(f, spool)), top
                        )

                    await self._tar_of(name, b, v, consume)
                    await asyncio.to_thread(spool.seek, 0)
            except RepositoryError as e:
                await _close_all(spools)
                reasons.append(str(e))
                continue
            except BaseException:
                await _close_all(spools)
                raise
            return name, spools
        raise BackupError(
            " ".join(reasons) or f"Backup #{b.id} is in no repository; it cannot be restored."
        )

    async def write_volume(
        self, v: BackupVolume, spool: BinaryIO, *, driver: DockerDriver, cid: str, volume: str
    ) -> str:
        """Write the volume's verified tar (its spool from verify()) into container `cid`'s
        new, empty volume: straight into its directory when the engine is local and PEON may
        (bot/volumes.py write_back: never through a link, owners as numbers), else through
        the engine. Returns how, for the log."""
        where = await volume_io.locate(driver, cid, volume, v.path)
        top = PurePosixPath(v.path).name
        if where.mountpoint is not None:
            directory = where.mountpoint
            why = await asyncio.to_thread(volume_io.can_write, directory)
            if not why:
                try:
                    await asyncio.to_thread(_write_all, spool, directory, top)
                    return "written directly"
                except volume_io.NotDirect as e:
                    why = str(e)
                    await asyncio.to_thread(volume_io.empty, directory)  # the engine starts afresh
            where = where.engine(why)
        await asyncio.to_thread(spool.seek, 0)
        await driver.write_archive(cid, str(PurePosixPath(v.path).parent), spool)
        return where.describe()

    async def _tar_of(
        self, name: str, b: Backup, v: BackupVolume, consume: Callable[[BinaryIO], Awaitable[Any]]
    ) -> None:
        """Hand `consume` the volume's tar stream as the engine exports it (top directory =
        the volume path's last part): the stored tar itself, or for a snapshot of the
        volume's directory (its `file` is that directory), restic's tar of it renamed."""
        snapshot = b.stored[name][v.name]
        if not v.file.startswith("/"):
            await self.repo(name).dump(snapshot, v.file, consume)
            return
        top = v.path.rstrip("/").rsplit("/", 1)[-1]

        async def renamed(src: BinaryIO) -> None:
            r, w = os.pipe()
            reader, writer = os.fdopen(r, "rb"), os.fdopen(w, "wb")

            def rename() -> None:
                try:
                    retar(src, writer, v.file.strip("/"), top)
                finally:
                    with contextlib.suppress(OSError):  # the reader gave up first
                        writer.close()

            try:
                await asyncio.gather(asyncio.to_thread(rename), consume(reader))
            finally:
                await asyncio.to_thread(reader.close)

        await self.repo(name).dump(snapshot, v.file, renamed)

    # --- retention, deletion, locks -----------------------------------------------------------

    async def prune(self, server: str, held: set[int]) -> list[Backup]:
        """Apply each repository's retention to the server's backups stored there; returns
        the rows to delete (stored nowhere any more). Failures are logged and retried at the
        next backup: nothing is forgotten half-way."""
        gone = []
        for name in self.names():
            if name not in self._repos:
                continue
            stored = [b for b in await self.store.list_backups(server) if name in b.stored]
            policy = self._policy_of(self._settings_of(name))
            for b in self._prune_rule(stored, policy):
                if b.id in held:
                    continue
                try:
                    rest = await self.forget(b, [name])
                except PeonError as e:
                    log.warning("backup #%s not pruned from %s: %s", b.id, name, e)
                    continue
                log.info("pruned backup #%s of %s from %s", b.id, server, name)
                if not rest:
                    gone.append(b)
        return gone

    async def forget(self, b: Backup, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """Forget the backup's snapshots in these repositories; returns where it still is."""
        stored = dict(b.stored)
        for name in names:
            if name in stored:
                # Forgetting is quick; freeing the data (prune) rewrites packs and takes the
                # repository's exclusive lock: it runs after the server's lease (prune_data).
                await self.repo(name).forget(list(stored[name].values()), prune=False)
                self._unpruned.add(name)
                del stored[name]
                await self.store.set_backup_stored(b.id, stored)
        return stored

    async def mark_locked(self, b: Backup, locked: bool) -> None:
        """Tag (or untag) the backup's snapshots peon-locked; best effort: PEON's own
        retention reads the row's lock, this is for restic run by hand."""
        for name, snaps in b.stored.items():
            try:
                repo = self.repo(name)
                ids = list(snaps.values())
                await (
                    repo.tag(ids, add=LOCKED_TAG) if locked else repo.tag(ids, remove=LOCKED_TAG)
                )
                # restic tag rewrites snapshots under new ids
                found = await repo.snapshots(self.backup_tag(b.id))
                stored = dict(b.stored)
                stored[name] = {_volume(s.tags): s.short_id for s in found}
                await self.store.set_backup_stored(b.id, stored)
                b = await self.store.get_backup(b.id)
            except PeonError as e:
                log.warning("backup #%s: %s not tagged in %s: %s", b.id, LOCKED_TAG, name, e)

    async def prune_data(self) -> None:
        """Free the data only forgotten snapshots used (restic prune), in each repository
        that has some; a failure is logged and tried again after the next backup."""
        for name in sorted(self._unpruned):
            try:
                await self.repo(name).run(["prune"], what="clean-up")
            except PeonError as e:
                log.warning("repository %s not pruned yet: %s", name, e)
                continue
            self._unpruned.discard(name)

    def _settings_of(self, name: str) -> RepositorySettings | None:
        for r in self.offsite_settings:
            if r.name == name:
                return r
        return None  # the primary: the backups' own retention

    # --- offsite ------------------------------------------------------------------------------

    def offsite_for(self, server: str) -> list[RepositorySettings]:
        return [r for r in self.offsite_settings if not r.servers or server in r.servers]

    async def send_offsite(self, b: Backup) -> list[str]:
        """Copy a backup to each offsite repository that wants it and lacks it, then apply
        that repository's retention. Never raises: a failure is announced once per backup
        and repository (an event), and tried again by `retry_offsite`. Returns what failed."""
        failed = []
        async with self._copying:
            for r in self.offsite_for(b.server):
                b = await self.store.get_backup(b.id)
                if r.name in b.stored or self.primary not in b.stored:
                    continue
                try:
                    await self._copy(b, r.name)
                except PeonError as e:
                    failed.append(r.name)
                    if (b.id, r.name) not in self._failing:
                        self._failing.add((b.id, r.name))
                        await self._announce(b, r.name, False, str(e))
                    log.warning("offsite copy of backup #%s to %s failed: %s", b.id, r.name, e)
                    continue
                if (b.id, r.name) in self._failing:
                    self._failing.discard((b.id, r.name))
                    await self._announce(b, r.name, True, "")
        return failed

    async def _copy(self, b: Backup, name: str) -> None:
        target, source = self.repo(name), self.repo(self.primary)
        ids = list(b.stored[self.primary].values())
        await target.ensure()
        await target.copy_from(source, ids)
        found = await target.snapshots(self.backup_tag(b.id))
        copied = {_volume(s.tags): s.short_id for s in found}
        if set(copied) != set(b.stored[self.primary]):
            raise RepositoryError(f"The offsite copy to '{name}' is incomplete; it is retried.")
        stored = dict(b.stored)
        stored[name] = copied
        await self.store.set_backup_stored(b.id, stored)
        log.info("backup #%s of %s copied to %s", b.id, b.server, name)

    async def _announce(self, b: Backup, name: str, ok: bool, error: str) -> None:
        detail = (
            f"backup #{b.id} copied to {name} after all"
            if ok
            else f"backup #{b.id} could not be copied to {name}: {error} It is tried again."
        )
        await self.store.append_event(
            NewEvent(
                OFFSITE_EVENT,
                b.server,
                ACTOR,
                ok,
                detail,
                {"backup": b.id, "repository": name, "error": error},
            )
        )

    async def retry_offsite(self) -> None:
        """Copy every backup still missing from an offsite repository that wants it."""
        if not self.enabled or not self.offsite_settings:
            return
        for b in reversed(await self.store.list_backups()):
            missing = any(r.name not in b.stored for r in self.offsite_for(b.server))
            if self.primary in b.stored and missing and not await self.send_offsite(b):
                await self.prune_offsite(b.server)

    async def prune_offsite(self, server: str) -> None:
        for b in await self.prune_all(server):
            await self.store.delete_backup(b.id)

    async def prune_all(self, server: str) -> list[Backup]:
        return await self.prune(server, await self.store.restoring_backups())

    async def keep_offsite(self) -> None:
        """The bot's loop: retry missing offsite copies every `retry_minutes`."""
        if not self.enabled or not self.offsite_settings:
            return
        while True:
            minutes = min((r.retry_minutes for r in self.offsite_settings), default=10)
            await asyncio.sleep(minutes * 60)
            try:
                await self.retry_offsite()
                await self.prune_data()
            except Exception:
                log.exception("offsite retry failed")

    # --- checks -----------------------------------------------------------------------------

    async def check(self, name: str | None = None, *, read_data: str | None = None) -> list[
            CheckResult]:  # fmt: skip
        """`restic check` each repository (or one): its structure, and with read_data
        (e.g. '10%') that share of its data read back and hashed."""
        names = [name] if name else self.names()
        if not names:
            raise BackupError(
                "No backup repository is configured (backups.repository); .tar.zst backups "
                "are checked against their checksum at each restore."
            )
        out = []
        for n in names:
            try:
                await self.repo(n).check(read_data_subset=read_data)
                stats = await self.repo(n).stats()
                size = int(stats.get("total_size", 0))
                out.append(CheckResult(n, True, f"no errors; {size / 2**20:.1f} MiB stored"))
            except PeonError as e:
                out.append(CheckResult(n, False, str(e)))
        return out


def retar(src: BinaryIO, dst: BinaryIO, prefix: str, top: str) -> None:
    """Copy the tar `restic dump` gives of a directory (members named after its absolute
    path, the directory itself left out) as the engine's tar of the volume: members under
    `top`, the top directory first. Links keep their targets; the member checks run on
    the result, as on any archive."""
    with (
        tarfile.open(fileobj=src, mode="r|", bufsize=COPY_BLOCK) as tin,
        tarfile.open(fileobj=dst, mode="w|", bufsize=COPY_BLOCK,
                     format=tarfile.PAX_FORMAT) as tout,
    ):  # fmt: skip
        tout.copybufsize = COPY_BLOCK  # type: ignore[attr-defined]  # 16 KiB by default
        root = tarfile.TarInfo(top)
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        tout.addfile(root)
        for m in tin:
            name = m.name.rstrip("/")
            if name != prefix and not name.startswith(prefix + "/"):
                raise BackupError(
                    f"The snapshot member '{m.name[:120]}' lies outside the volume; the "
                    "archive was refused."
                )
            m.name = top + name[len(prefix) :]
            if m.islnk() and m.linkname.startswith(prefix + "/"):
                m.linkname = top + m.linkname[len(prefix) :]
            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
    while src.read(COPY_BLOCK):  # restic's padding after the tar's end
        pass


def _write_all(spool: BinaryIO, directory: Path, top: str) -> None:
    spool.seek(0)
    volume_io.write_back(spool, directory, top)


def _spool(directory: Path) -> BinaryIO:
    return tempfile.TemporaryFile(dir=directory, prefix=SPOOL)


class _Tee:
    """A reader that copies what it reads into `spool`; a spool that cannot be written (disk
    full) refuses the restore with one sentence, before the server is touched."""

    def __init__(self, source: BinaryIO, spool: BinaryIO) -> None:
        self.source, self.spool = source, spool

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        try:
            self.spool.write(data)
        except OSError as e:
            raise BackupError(
                f"The backup could not be read for the restore ({e.strerror}); nothing was "
                "restored."
            ) from None
        return data


async def _close_all(files: dict[str, BinaryIO]) -> None:
    for f in files.values():
        await asyncio.to_thread(f.close)


def _check_all(check: Callable[[BinaryIO, str], object], f: BinaryIO, top: str) -> None:
    check(f, top)
    # The tar's end is not the file's: read the padding after it too, so restic finishes
    # writing (and reports) rather than meeting a closed pipe.
    while f.read(1 << 20):
        pass


def _volume(tags: Iterable[str]) -> str:
    for t in tags:
        if t.startswith("peon-volume="):
            return t.split("=", 1)[1]
    return ""
