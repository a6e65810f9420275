"""restic, the deduplicating backup engine: the only module that runs the `restic` program.

One `Restic` is one repository (a path, sftp:, s3:, rclone:, rest:). Every call is an asyncio
subprocess, so the event loop never waits on it; data flows through OS pipes that a worker
thread (the Docker driver's archive stream) writes or reads, so memory stays flat.

The repository password is handed over in the child's environment (RESTIC_PASSWORD, or
RESTIC_PASSWORD_FILE), never on the command line, and restic's error output is reduced to
one sentence with any credentials in the location removed before it is shown or logged.

JSON shapes relied on (restic 0.14.0, Debian bookworm's): `backup --json` ends with a
`{"message_type": "summary", "data_added", "total_bytes_processed", "snapshot_id"}` line
(internal/ui/backup/json.go summaryOutput; snapshot_id is the short id, which every command
takes); `snapshots --json` is a list of {id, short_id, time, paths, hostname, tags, original}
(cmd/restic/cmd_snapshots.go, internal/restic/snapshot.go); `stats --json` has total_size
(cmd/restic/cmd_stats.go). `copy` and `check` have no JSON in 0.14: their exit code counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from bot.errors import BackupError

log = logging.getLogger(__name__)

BINARY = "restic"
# restic reads stdin in 1 MiB-ish blocks; a bigger pipe buffer lets the engine's stream run
# ahead of chunking a little.
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
_PR_SET_PDEATHSIG = 1


class RepositoryError(BackupError):
    """A repository could not be used; str() is one sentence without secrets."""


class RepositoryUnreachable(RepositoryError):
    pass


class RepositoryFull(RepositoryError):
    pass


class PartlyRead(RepositoryError):
    """restic stored a snapshot but could not read some files (exit code 3): the caller
    forgets `snapshot` and reads the data another way."""

    def __init__(self, message: str, snapshot: str) -> None:
        super().__init__(message)
        self.snapshot = snapshot


@dataclass(frozen=True)
class Stored:
    """One snapshot written by `backup`: its id, bytes read, bytes new to the repository."""

    snapshot: str
    size: int
    added: int


@dataclass(frozen=True)
class Snapshot:
    id: str
    short_id: str
    time: str
    paths: tuple[str, ...]
    hostname: str
    tags: tuple[str, ...]
    original: str | None


def _die_with_parent() -> None:
    # A restic reading a backup from a pipe takes the pipe's end for the end of the data: if
    # PEON were killed mid-backup, restic would store a truncated world as a whole snapshot.
    # Killed with its parent, it writes none (restic commits a snapshot only at the end).
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def redact_location(location: str) -> str:
    """A repository location without the user:password a URL may carry."""
    return re.sub(r"//[^/@\s]+@", "//***@", location)


class Restic:
    def __init__(
        self,
        location: str,
        *,
        name: str,
        password: str | None = None,
        password_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        options: Sequence[str] = (),
        cache_dir: Path | None = None,
        binary: str = BINARY,
    ) -> None:
        if not password and password_file is None:
            raise RepositoryError(f"Repository '{name}' has no password set.")
        self.location, self.name, self.binary = location, name, binary
        self._password, self._password_file = password, password_file
        self._env = dict(env or {})
        self._options = list(options)
        self._cache_dir = cache_dir
        self._ready = False
        self._ready_lock = asyncio.Lock()

    # --- plumbing ---------------------------------------------------------------------------

    def env(self, prefix: str = "RESTIC") -> dict[str, str]:
        """The child's environment: this repository's password (and the backend's own
        variables) under `prefix` (RESTIC, or RESTIC_FROM for `copy`'s source)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env.update(self._env)
        if self._password:
            env[f"{prefix}_PASSWORD"] = self._password
        else:
            env[f"{prefix}_PASSWORD_FILE"] = str(self._password_file)
        return env

    def _argv(self, args: Sequence[str]) -> list[str]:
        argv = [self.binary, "--repo", self.location, "--no-cache" if not self._cache_dir else
                f"--cache-dir={self._cache_dir}"]  # fmt: skip
        for o in self._options:
            argv += ["--option", o]
        return argv + list(args)

    async def _spawn(
        self, args: Sequence[str], *, stdin: Any = asyncio.subprocess.DEVNULL,
        stdout: Any = asyncio.subprocess.PIPE, env: Mapping[str, str] | None = None,
    ) -> asyncio.subprocess.Process:  # fmt: skip
        try:
            return await asyncio.create_subprocess_exec(
                *self._argv(args),
                stdin=stdin,
                stdout=stdout,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env or self.env()),
                preexec_fn=_die_with_parent,  # only prctl: safe between fork and exec
            )
        except FileNotFoundError:
            raise RepositoryError(
                "The restic program is not installed; install it (Debian: apt-get install "
                "restic) to use backup repositories."
            ) from None

    async def run(
        self, args: Sequence[str], *, env: Mapping[str, str] | None = None, what: str = ""
    ) -> str:
        """Run one restic command to its end; its stdout, or a RepositoryError."""
        await self.ensure()
        return await self._run(args, env=env, what=what)

    async def _run(
        self, args: Sequence[str], *, env: Mapping[str, str] | None = None, what: str = ""
    ) -> str:
        proc = await self._spawn(args, env=env)
        try:
            out, err = await proc.communicate()
        except BaseException:
            await _kill(proc)
            raise
        if proc.returncode != 0:
            raise self.error(err.decode(errors="replace"), what or args[0])
        return out.decode(errors="replace")

    def error(self, stderr: str, what: str) -> RepositoryError:
        """restic's complaint as one sentence: unreachable, full, or what it said last."""
        text = stderr.lower()
        where = f"the backup repository '{self.name}'"
        if any(s in text for s in ("no space left", "disk quota", "quotaexceeded",
                                   "entitytoolarge", "insufficient storage")):  # fmt: skip
            return RepositoryFull(
                f"{where[0].upper()}{where[1:]} is full, so the {what} did not finish; "
                "nothing was lost: free space there (or lower its retention) and try again."
            )
        if any(s in text for s in ("connection refused", "no such host", "dial tcp",
                                   "i/o timeout", "connection reset", "ssh command exited",
                                   "unable to start the sftp session", "network is unreachable",
                                   "connection closed")):  # fmt: skip
            return RepositoryUnreachable(
                f"{where[0].upper()}{where[1:]} cannot be reached, so the {what} did not "
                "finish; nothing was lost: check that it is up and try again."
            )
        if "wrong password" in text:
            return RepositoryError(
                f"The password of {where} is wrong, so the {what} did not finish."
            )
        last = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        said = redact_location(last[-1])[:200] if last else "no reason given"
        return RepositoryError(f"The {what} in {where} failed: restic said '{said}'.")

    async def ensure(self) -> None:
        """Create the repository on first use (restic init), once per process."""
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            proc = await self._spawn(["cat", "config"])
            _, err = await proc.communicate()
            if proc.returncode != 0:
                text = err.decode(errors="replace")
                missing = ("does not exist", "is there a repository", "no such file",
                           "nosuchbucket", "not found")  # fmt: skip
                if not any(s in text.lower() for s in missing):
                    raise self.error(text, "opening")
                await self._run(["init"], what="creation")
                log.info("initialised the backup repository '%s'", self.name)
            self._ready = True

    # --- commands ---------------------------------------------------------------------------

    async def backup_stream(
        self,
        filename: str,
        feed: Callable[[BinaryIO], Awaitable[Any]],
        *,
        tags: Sequence[str],
        host: str,
        at: datetime,
    ) -> Stored:
        """Store what `feed` writes (from a worker thread) as one file of a new snapshot.
        If `feed` fails, restic is killed before it commits: no snapshot is left."""
        await self.ensure()
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            import fcntl  # noqa: PLC0415 - Linux only; the bot runs on Linux

            fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        args = ["backup", "--json", "--stdin", "--stdin-filename", filename, "--host", host,
                "--time", at.astimezone().strftime("%Y-%m-%d %H:%M:%S")]  # fmt: skip
        for t in tags:
            args += ["--tag", t]
        try:
            proc = await self._spawn(args, stdin=r)
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        sink = os.fdopen(w, "wb", buffering=0)
        talk = asyncio.ensure_future(proc.communicate())
        try:
            await feed(sink)
        except BrokenPipeError:
            # restic stopped reading: it failed (a full or unreachable repository), and its
            # own complaint says why.
            with contextlib.suppress(OSError):
                sink.close()
            try:
                async with asyncio.timeout(30):
                    out, err = await talk
            except TimeoutError:
                await _kill(proc)
                raise RepositoryError(
                    f"restic stopped reading the backup for '{self.name}'."
                ) from None
            raise self.error(err.decode(errors="replace"), "backup") from None
        except BaseException:
            # Killed before the pipe closes: restic would take the end of the pipe for the
            # end of the data and store a truncated volume as a snapshot.
            await _kill(proc)
            with contextlib.suppress(OSError):
                sink.close()
            with contextlib.suppress(BaseException):
                await talk
            raise
        try:
            await asyncio.to_thread(sink.close)
            out, err = await talk
        except BaseException:
            await _kill(proc)
            raise
        if proc.returncode != 0:
            raise self.error(err.decode(errors="replace"), "backup")
        stored = _summary(out.decode(errors="replace"))
        if stored is None:
            raise RepositoryError(f"restic stored a backup in '{self.name}' but did not say so.")
        return stored

    async def backup_paths(
        self, paths: Sequence[str], *, tags: Sequence[str], host: str, at: datetime
    ) -> Stored:
        """Back up directories as they are on disk. Files whose size, times and inode match
        the last snapshot of the same host and paths are not read again: a backup of a
        world that barely changed takes a moment."""
        await self.ensure()
        args = ["backup", "--json", "--host", host,
                "--time", at.astimezone().strftime("%Y-%m-%d %H:%M:%S")]  # fmt: skip
        for t in tags:
            args += ["--tag", t]
        proc = await self._spawn([*args, "--", *paths])
        try:
            out, err = await proc.communicate()
        except BaseException:
            await _kill(proc)
            raise
        stored = _summary(out.decode(errors="replace"))
        if proc.returncode == 3 and stored is not None:  # snapshot made, some files unread
            raise PartlyRead(self.error(err.decode(errors="replace"), "backup").args[0],
                             stored.snapshot)  # fmt: skip
        if proc.returncode != 0:
            raise self.error(err.decode(errors="replace"), "backup")
        if stored is None:
            raise RepositoryError(f"restic stored a backup in '{self.name}' but did not say so.")
        return stored

    async def dump(
        self, snapshot: str, filename: str, consume: Callable[[BinaryIO], Awaitable[Any]]
    ) -> None:
        """Stream one file of a snapshot into `consume` (which reads it in a worker thread).
        restic checks each block against its hash as it reads it; a read that fails or is
        cut short raises, also when `consume` already finished."""
        await self.ensure()
        r, w = os.pipe()
        try:
            proc = await self._spawn(["dump", snapshot, f"/{filename}"], stdout=w)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        source = os.fdopen(r, "rb")
        errors = asyncio.ensure_future(proc.stderr.read())  # type: ignore[union-attr]
        try:
            try:
                await consume(source)
            finally:
                await asyncio.to_thread(source.close)
            await proc.wait()
            err = await errors
        except BaseException:
            await _kill(proc)
            errors.cancel()
            raise
        if proc.returncode != 0:
            raise self.error(err.decode(errors="replace"), "restore")

    async def snapshots(self, *tags: str) -> list[Snapshot]:
        args = ["snapshots", "--json"]
        for t in tags:
            args += ["--tag", t]
        raw = json.loads(await self.run(args, what="listing") or "[]") or []
        return [
            Snapshot(
                s["id"],
                s.get("short_id", s["id"][:8]),
                s.get("time", ""),
                tuple(s.get("paths") or ()),
                s.get("hostname", ""),
                tuple(s.get("tags") or ()),
                s.get("original"),
            )
            for s in raw
        ]

    async def forget(self, snapshots: Sequence[str], *, prune: bool = True) -> None:
        """Remove snapshots (and, with prune, the data only they used)."""
        if snapshots:
            await self.run(["forget", *(["--prune"] if prune else []), *snapshots],
                           what="clean-up")  # fmt: skip

    async def tag(self, snapshots: Sequence[str], *, add: str = "", remove: str = "") -> None:
        if not snapshots:
            return
        args = ["tag"] + (["--add", add] if add else []) + (["--remove", remove] if remove else [])
        await self.run(args + list(snapshots), what="tagging")

    async def copy_from(self, source: Restic, snapshots: Sequence[str]) -> None:
        """Copy snapshots of `source` into this repository (only the data it lacks)."""
        if not snapshots:
            return
        await source.ensure()
        env = self.env()
        env.update(source.env("RESTIC_FROM"))
        env.update(self.env())
        args = ["copy", "--from-repo", source.location]
        for o in source._options:
            if o not in self._options:
                args += ["--option", o]
        await self.run(args + list(snapshots), env=env, what="offsite copy")

    async def check(self, *, read_data_subset: str | None = None) -> str:
        args = ["check"] + ([f"--read-data-subset={read_data_subset}"] if read_data_subset else [])
        return await self.run(args, what="check")

    async def stats(self, mode: str = "raw-data") -> dict[str, Any]:
        out = await self.run(["stats", "--json", "--mode", mode], what="size count")
        data: dict[str, Any] = json.loads(out)
        return data

    async def unlock(self) -> None:
        """Remove locks a killed restic left (only stale ones: restic keeps live ones)."""
        await self.run(["unlock"], what="unlock")


def _summary(out: str) -> Stored | None:
    """The `summary` line of `backup --json`."""
    for line in reversed(out.splitlines()):
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if isinstance(msg, dict) and msg.get("message_type") == "summary":
                return Stored(
                    str(msg["snapshot_id"]),
                    int(msg.get("total_bytes_processed", 0)),
                    int(msg.get("data_added", 0)),
                )
    return None


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(BaseException):
            await proc.wait()
