"""Seeded fault injection: real `peon` processes on the real engine, cut short at random moments.

Each round starts one operation (create, start, stop, restart, update, backup, restore, delete,
purge) as a `peon` process and SIGKILLs it a random moment after it takes the server's lease.
One more kind of round stops the engine itself mid-operation (a second dockerd, never the
engine the other tests use), and one runs backups into a full disk (a small tmpfs). After each
fault the promises PEON makes are checked:

 (a) every labelled container belongs to a record or is reported by the reconcile;
 (b) no server stays busy for a dead owner: the next `peon` process is not refused as busy and
     `peon server list` does not show the dead operation as the server's state;
 (c) every listed backup's files exist and match their checksums, and nothing partial is left
     after the next operation and the next start (`BackupService.recover()`);
 (d) the world is the state before or a backup's state, never empty or half-written, unless a
     purge completed with its last copy (then a complete 'before-purge' backup holds it);
 (e) the server can be started and stopped again.

PEON_FAULT_SEED picks the schedule (operations, kill moments, states; default random) and
PEON_FAULT_ROUNDS how many rounds run (default 18: every operation twice; e.g. 50 for a longer
local run; one engine-stop round per 9 of them). Every finding names the seed, the round, the
operation, the fault's delay and the server's state before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import docker
import docker.errors
import pytest
import yaml
import zstandard

from bot import labels
from bot.app import open_services
from bot.settings import BackupSettings, HostSettings, Settings
from tests.conftest import ROOT, cleanup_instance, make_settings
from tests.engine import FAKEGAME_IMAGE, SecondEngine, build_fakegame

pytestmark = pytest.mark.docker

OPS = ("create", "start", "stop", "restart", "update", "backup", "restore", "delete", "purge")
DEFAULT_ROUNDS = 18  # every operation twice: about 2.5 of the file's 3 minutes here
# Seconds after the child takes its lease within which the fault lands, with the server
# stopped / running before it: a little longer than each operation held its lease on the
# 2-core machine this was written on (an 8 MiB world, a game ready one second after it
# starts), so faults land throughout the operation and now and then just after it.
WINDOW = {
    "create": (0.05, 0.05),
    "start": (1.5, 1.5),
    "stop": (0.25, 0.25),
    "restart": (1.7, 1.7),
    "update": (0.2, 1.9),
    "backup": (0.17, 0.17),
    "restore": (0.35, 3.0),
    "delete": (0.02, 0.3),
    "purge": (0.15, 0.55),
}
# The state the server is in before the operation; other operations get a random one.
BEFORE = {"create": False, "start": False, "stop": True, "restart": True}
PAYLOAD = 8 << 20  # random bytes in each world: backups and restores take measurable time
KEEP_LAST = 2  # a restore round holds exactly this many backups and restores the oldest
CHURN = frozenset({"counter", "world.sav"})  # the game rewrites these at every save
OP_TIMEOUT = 120  # seconds; only so a hung `peon` fails the round instead of the run
LEASE_TIMEOUT = 60
TRACEBACK = "Traceback (most recent call last)"
SIZE = re.compile(r"\d+(\.\d+)? ?([KMGT]i?)?B\b")  # "1.2 MiB", "512 B"


# --- what the rounds look at ----------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """A volume's content as far as PEON promises anything: the files the test wrote (path,
    SHA-256) and which of the game's own save files exist (their content changes at every
    save, so only their presence is compared)."""

    files: frozenset[tuple[str, str]]
    saves: frozenset[str]
    marker: str | None

    @property
    def whole(self) -> bool:
        return self.saves == CHURN

    def describe(self) -> str:
        if not self.files and not self.saves:
            return "an empty world"
        missing = sorted(CHURN - self.saves)
        gaps = f", without {', '.join(missing)}" if missing else ""
        return f"world '{self.marker or '(no marker)'}' ({len(self.files)} files{gaps})"


def _world(entries: Iterator[tuple[str, bytes]]) -> World:
    files, saves, marker = set(), set(), None
    for rel, data in entries:
        if rel in CHURN:
            saves.add(rel)
            continue
        files.add((rel, hashlib.sha256(data).hexdigest()))
        if rel == "marker":
            marker = data.decode(errors="replace").strip()
    return World(frozenset(files), frozenset(saves), marker)


def read_world(root: Path) -> World:
    """The world in a volume, read from its mountpoint (we are root on the engine's machine)."""

    def entries() -> Iterator[tuple[str, bytes]]:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                yield path.relative_to(root).as_posix(), path.read_bytes()

    return _world(entries())


def archive_world(path: Path) -> World:
    """The world a backup archive holds: a zstd tar whose top directory is the volume's."""

    def entries() -> Iterator[tuple[str, bytes]]:
        with (
            path.open("rb") as raw,
            zstandard.ZstdDecompressor().stream_reader(raw) as stream,
            tarfile.open(fileobj=stream, mode="r|") as tar,
        ):
            for member in tar:
                f = tar.extractfile(member) if member.isfile() else None
                if f is not None:
                    yield member.name.partition("/")[2], f.read()

    return _world(entries())


@dataclass(frozen=True)
class BackupRow:
    id: int
    server: str
    dir: str
    complete: bool
    trigger: str
    volumes: list[dict[str, object]]


def read_db(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Read the SQLite file as another process would, never holding it open."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        return conn.execute(sql, args).fetchall()


def lease_of(db: Path, name: str) -> str | None:
    try:
        rows = read_db(db, "SELECT op FROM servers WHERE name = ?", name)
    except sqlite3.OperationalError:
        return None  # the first process has not made the file or its tables yet
    return str(rows[0][0]) if rows and rows[0][0] else None


def backup_rows(db: Path, server: str | None = None) -> list[BackupRow]:
    if not db.exists():
        return []  # no `peon` has run yet
    sql = "SELECT id, server, dir, complete, trigger, volumes FROM backups"
    rows = read_db(db, f"{sql} WHERE server = ?", server) if server else read_db(db, sql)
    return [
        BackupRow(int(str(i)), str(s), str(d), bool(c), str(t), json.loads(str(v)))
        for i, s, d, c, t, v in rows
    ]


def checksum_matches(path: Path, volume: dict[str, object]) -> bool:
    """The archive matches the checksum its row records: BLAKE3, or SHA-256 (older backups)."""
    digest: Any = blake3.blake3() if volume.get("blake3") else hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return bool(digest.hexdigest() == (volume.get("blake3") or volume.get("sha256")))


async def _recover(settings: Settings) -> list[str]:
    async with open_services(settings) as svc:
        return await svc.backups.recover()


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(nothing)"


def stderr_summary(text: str) -> str:
    lines = text.strip().splitlines()
    traceback = ", a traceback" if TRACEBACK in text else ""
    return f"{len(lines)} lines on stderr{traceback}, ending: {last_line(text)}"


# --- the install under test -----------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    seed: int
    index: int
    op: str
    delay: float
    running: bool  # the server's state before the operation
    server: str
    fault: str  # "kill" or "engine_stop"

    @property
    def tag(self) -> str:
        state = "none" if self.op == "create" else "running" if self.running else "stopped"
        return (
            f"seed={self.seed} round={self.index} op={self.op} "
            f"{self.fault}_after={self.delay:.3f}s before={state}"
        )


def schedule(seed: int, count: int, prefix: str, fault: str) -> list[Round]:
    """The seeded rounds: every operation once per pass, in a shuffled order."""
    rng = random.Random(f"{seed}:{fault}")
    ops: list[str] = []
    while len(ops) < count:
        batch = list(OPS)
        rng.shuffle(batch)
        ops += batch
    out = []
    for i, op in enumerate(ops[:count]):
        running = BEFORE.get(op, rng.random() < 0.5)
        delay = round(rng.uniform(0, WINDOW[op][running]), 3)
        out.append(Round(seed, i, op, delay, running, f"{prefix}-{i}", fault))
    return out


@dataclass
class Lab:
    """One PEON install: its config file, the engine its servers live on, and what broke."""

    settings: Settings
    seed: int
    base_url: str | None = None
    findings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.config = self.settings.data_dir.parent / "peon-faults.yaml"
        self.config.write_text(yaml.safe_dump(self.settings.model_dump(mode="json")))

    @property
    def db(self) -> Path:
        return self.settings.db_path

    @property
    def backup_dir(self) -> Path:
        return self.settings.backup_dir

    # the CLI, as a user runs it

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bot.cli", "--config", str(self.config), *args]

    @functools.cached_property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEON_")}
        env.pop("DISCORD_TOKEN", None)
        return {**env, "PYTHONPATH": str(ROOT)}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=OP_TIMEOUT,
            check=False,
        )

    def must(self, where: str, *args: str) -> str:
        """A step of the setup: it failing is no finding but a broken round."""
        r = self.run(*args)
        assert r.returncode == 0, f"[{where}] setup `peon {' '.join(args)}` failed: {r.stderr}"
        return r.stdout

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=ROOT,
        )

    def listed(self) -> dict[str, str]:
        """`peon server list`: server name -> the state it shows."""
        r = self.run("server", "list")
        assert r.returncode == 0, f"seed={self.seed}: `peon server list` failed: {r.stderr}"
        return {row.split()[0]: row.split()[2] for row in r.stdout.splitlines()[1:] if row}

    # the engine, asked directly

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.base_url) if self.base_url else docker.from_env()

    def labelled(self) -> dict[str, str]:
        """The instance's containers: container name -> the server its label names."""
        client = self.client()
        try:
            flt = {"label": [f"{labels.INSTANCE}={self.settings.instance_id}"]}
            # sparse: the list's own data, no inspect of each container, which races with a
            # removal the engine is still finishing for a killed process
            found = client.containers.list(all=True, filters=flt, sparse=True)
            return {
                c.attrs["Names"][0].lstrip("/"): (c.attrs.get("Labels") or {}).get(
                    labels.SERVER, ""
                )
                for c in found
            }
        finally:
            client.close()

    def mountpoint(self, server: str) -> Path | None:
        client = self.client()
        try:
            volume = client.volumes.get(labels.volume_name(server, "world"))
        except docker.errors.NotFound:
            return None
        finally:
            client.close()
        return Path(volume.attrs["Mountpoint"])

    def world(self, server: str) -> World | None:
        root = self.mountpoint(server)
        return None if root is None else read_world(root)

    def write_world(self, server: str, label: str, size: int = PAYLOAD) -> World:
        """Give the server a world of its own: random bytes and a marker naming them."""
        root = self.mountpoint(server)
        assert root is not None, f"seed={self.seed}: {server} has no world volume"
        rng = random.Random(f"{self.seed}:{server}:{label}")
        (root / "payload.bin").write_bytes(rng.randbytes(size))
        (root / "marker").write_text(f"seed={self.seed} server={server} {label}\n")
        for name in CHURN:  # as the game leaves them after its first save
            if not (root / name).exists():
                (root / name).write_text("0\n")
        return read_world(root)

    # findings

    def check(self, ok: bool, where: str, invariant: str, detail: str) -> bool:
        if not ok:
            self.findings.append(f"[{where}] {invariant}: {detail}")
        return ok

    def report(self, rounds: int) -> str:
        return (
            f"{len(self.findings)} broken promise(s); the schedule replays with "
            f"PEON_FAULT_SEED={self.seed} PEON_FAULT_ROUNDS={rounds}:\n  "
            + "\n  ".join(self.findings)
        )

    def check_backups(self, where: str, server: str | None, *, settled: bool) -> dict[int, World]:
        """(c) Every listed backup of the server (of all: None) is whole; once `settled`
        (after the next operation and a start's recover()), nothing partial is left either.
        Returns the worlds the whole ones hold."""
        worlds: dict[int, World] = {}
        rows = backup_rows(self.db, server)
        for row in (r for r in rows if r.complete):
            self.check(bool(row.volumes), where, "(c) listed backup", f"#{row.id} has no files")
            for v in row.volumes:
                path = self.backup_dir / row.dir / str(v["file"])
                if not self.check(
                    path.is_file(), where, "(c) listed backup", f"#{row.id} is missing {path}"
                ):
                    continue
                if self.check(
                    checksum_matches(path, v),
                    where,
                    "(c) listed backup",
                    f"#{row.id}: {path} does not match its checksum",
                ):
                    worlds[row.id] = archive_world(path)
        if settled and server is not None:
            incomplete = [r.id for r in rows if not r.complete]
            self.check(not incomplete, where, "(c) partial left", f"incomplete rows {incomplete}")
            partial = sorted(str(p) for p in self.backup_dir.glob(f"{server}/*.partial"))
            self.check(not partial, where, "(c) partial left", f"directories {partial}")
            kept = {r.dir for r in rows if r.complete}
            base = self.backup_dir / server
            stray = sorted(
                str(p)
                for p in (base.iterdir() if base.is_dir() else [])
                if p.relative_to(self.backup_dir).as_posix() not in kept
                and not p.name.endswith(".partial")
            )
            self.check(not stray, where, "(c) partial left", f"directories of no backup {stray}")
        return worlds


# --- one round --------------------------------------------------------------------------------


class Fault:
    """What happens to the running `peon` process: SIGKILL by default."""

    def hit(self, proc: subprocess.Popen[str]) -> bool:
        """Strike now; True if the operation was still running."""
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        return True

    def heal(self) -> None:
        """Undo what the fault did to the machine once the process has ended."""


class EngineStop(Fault):
    """The engine goes down (a service manager's SIGTERM) under the running process, which
    must end by itself; the engine comes back afterwards."""

    def __init__(self, engine: SecondEngine) -> None:
        self.engine = engine

    def hit(self, proc: subprocess.Popen[str]) -> bool:
        running = proc.poll() is None
        self.engine.stop()
        return running

    def heal(self) -> None:
        if not self.engine.answers():
            self.engine.start()


def prepare(lab: Lab, rnd: Round) -> tuple[World | None, int | None]:
    """The server in its state before the operation: (its world, the backup to restore)."""
    name, where = rnd.server, rnd.tag
    if rnd.op == "create":
        return None, None
    lab.must(where, "server", "create", "fakegame", name, "--set", f"world=W{rnd.index}")
    target = None
    if rnd.op == "restore":
        # Exactly keep_last backups, restoring the oldest: the safety backup a restore takes
        # first must not prune the backup being restored.
        for k in range(KEEP_LAST):
            lab.write_world(name, f"backup-{k}")
            lab.must(where, "backup", "create", name)
        target = min(r.id for r in backup_rows(lab.db, name) if r.complete)
    before = lab.write_world(name, "before")
    if rnd.running:
        lab.must(where, "server", "start", name)
    return before, target


def op_args(rnd: Round, target: int | None) -> list[str]:
    name = rnd.server
    return {
        "create": ["server", "create", "fakegame", name, "--set", f"world=W{rnd.index}"],
        "start": ["server", "start", name],
        "stop": ["server", "stop", name],
        "restart": ["server", "restart", name],
        "update": ["server", "update", name],
        "backup": ["backup", "create", name],
        "restore": ["backup", "restore", name, str(target), "--yes"],
        "delete": ["server", "delete", name, "--yes"],
        "purge": ["server", "delete", name, "--purge", "--yes"],
    }[rnd.op]


def took_lease(lab: Lab, rnd: Round, proc: subprocess.Popen[str]) -> bool:
    """Wait until the child holds the operation's lease; False if it ended before we saw it
    (done or refused already: the fault comes too late)."""
    deadline = time.monotonic() + LEASE_TIMEOUT  # a hang guard, not a timing assertion
    while lease_of(lab.db, rnd.server) != rnd.op:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"[{rnd.tag}] the operation never took its lease"
        time.sleep(0.005)
    return True


def strike(lab: Lab, rnd: Round, fault: Fault, args: list[str]) -> None:
    """Run the operation and fault it `rnd.delay` seconds after it takes its lease."""
    where = rnd.tag
    proc = lab.spawn(*args)
    hit, holding = False, False
    try:
        if took_lease(lab, rnd, proc):
            time.sleep(rnd.delay)
            holding = lease_of(lab.db, rnd.server) == rnd.op
            hit = fault.hit(proc)
        try:
            _, err = proc.communicate(timeout=OP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            lab.check(False, where, "(b) hung", f"`peon {' '.join(args)}` never ended")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        fault.heal()
    # Shown with a failure (pytest prints a failing test's output): where each fault landed.
    landed = "after it ended"
    if hit:
        landed = "while it held its lease" if holding else "after it let go of its lease"
    print(f"{where}: the fault landed {landed}; exit {proc.returncode}")
    if not hit:
        lab.check(
            proc.returncode == 0,
            where,
            "operation failed without a fault",
            f"exit {proc.returncode}: {last_line(err)}",
        )
    elif proc.returncode != -signal.SIGKILL:  # it saw the fault and ended by itself
        lab.check(
            proc.returncode in (0, 1) and TRACEBACK not in err,
            where,
            "one-line error",
            f"exit {proc.returncode} after the fault; {stderr_summary(err)}",
        )


def check_world(
    lab: Lab, rnd: Round, stage: str, before: World | None, allowed: dict[int, World]
) -> None:
    """(d) The world is the state before or a backup's, whole; gone only after a purge that
    left a complete before-purge backup holding it."""
    where = f"{rnd.tag} {stage}"
    world = lab.world(rnd.server)
    if before is None:  # a create: there was no world before it
        lab.check(
            world is None or not world.files,
            where,
            "(d) world",
            f"a new server has {world.describe() if world else '-'}",
        )
        return
    if world is None:
        if rnd.op != "purge":
            lab.check(False, where, "(d) world", f"the data is gone after a {rnd.op}")
            return
        # The last copy may also have been taken by whatever finished the purge.
        now = lab.check_backups(where, rnd.server, settled=False)
        holders = [
            r.id
            for r in backup_rows(lab.db, rnd.server)
            if r.complete and r.trigger == "before-purge"
            and (w := now.get(r.id)) is not None and w.files == before.files and w.whole
        ]  # fmt: skip
        lab.check(
            bool(holders),
            where,
            "(d) world",
            "the purge removed the data without a complete before-purge backup holding it",
        )
        return
    states = [before, *allowed.values()]
    lab.check(
        world.whole and any(world.files == s.files for s in states),
        where,
        "(d) world",
        f"{world.describe()} is neither the state before ({before.describe()}) nor one of "
        f"backups {sorted(allowed)}",
    )


def play(lab: Lab, rnd: Round, fault: Fault) -> None:
    name, where = rnd.server, rnd.tag
    before, target = prepare(lab, rnd)
    # Worlds a restore may bring back: the backups there were before the operation...
    allowed = lab.check_backups(where, name, settled=False)
    strike(lab, rnd, fault, op_args(rnd, target))

    # Right after the fault, nothing restarted.
    listing = lab.listed()
    lab.check(
        listing.get(name) != rnd.op,
        where,
        "(b) dead operation shown",
        f"`peon server list` shows {name} as '{listing.get(name)}'",
    )
    unlisted = {c: s for c, s in lab.labelled().items() if s not in listing}
    # ...and those the operation itself made (a safety backup), not the ones made from here on.
    allowed |= lab.check_backups(f"{where} after the fault", name, settled=False)
    # The world is judged from the next operation on, not right now: a restore killed while
    # writing leaves a half-written volume that PEON promises to finish at the next operation.

    # (b) The next operation, by a new process: the backup command reconciles nothing first.
    if name in listing:
        r = lab.run("backup", "create", name)
        lab.check(
            "busy" not in r.stderr.lower(),
            where,
            "(b) busy for a dead owner",
            f"`peon backup create {name}`: {last_line(r.stderr)}",
        )
        lab.check(
            TRACEBACK not in r.stderr,
            where,
            "one-line error",
            f"`peon backup create {name}`: {stderr_summary(r.stderr)}",
        )
    r = lab.run("server", "start", name)
    reported = "\n".join(line for line in r.stderr.splitlines() if line.startswith("reconciled:"))
    now = lab.labelled()
    listing = lab.listed()
    for container, server in unlisted.items():
        lab.check(
            container not in now or server in listing or container in reported,
            where,
            "(a) orphan container",
            f"{container} (server {server}) has no record and the reconcile did not report it",
        )
    lab.check(
        "busy" not in r.stderr.lower(),
        where,
        "(b) busy for a dead owner",
        f"`peon server start {name}`: {last_line(r.stderr)}",
    )
    check_world(lab, rnd, "after the next operation", before, allowed)
    lab.check_backups(f"{where} after the next operation", name, settled=True)

    # (e) Usable again: started (created again if the operation removed it) and stopped.
    if name in listing:
        lab.check(
            r.returncode == 0,
            where,
            "(e) cannot start",
            f"`peon server start {name}`: {last_line(r.stderr)}",
        )
    elif lab.check(
        rnd.op in ("create", "delete", "purge"),
        where,
        "(d) server lost",
        f"{name} has no record after a {rnd.op}",
    ):
        for args in (
            ("server", "create", "fakegame", name, "--set", f"world=W{rnd.index}"),
            ("server", "start", name),
        ):
            r = lab.run(*args)
            lab.check(
                r.returncode == 0,
                where,
                "(e) cannot use the name again",
                f"`peon {' '.join(args)}`: {last_line(r.stderr)}",
            )
    r = lab.run("server", "stop", name)
    lab.check(
        r.returncode == 0, where, "(e) cannot stop", f"`peon server stop`: {last_line(r.stderr)}"
    )
    if rnd.op not in ("create", "purge"):  # a delete keeps the data for the name's next server
        check_world(lab, rnd, "after a start and a stop", before, allowed)

    # (c) Nothing partial after the next start of PEON either (the bot runs recover() then).
    asyncio.run(_recover(lab.settings))
    lab.check_backups(f"{where} after recover()", name, settled=True)
    leftover = {c: s for c, s in lab.labelled().items() if s not in lab.listed()}
    lab.check(not leftover, where, "(a) orphan container", f"no record for {leftover}")
    # Its ports go back to the pool (a long run must not run out); its volume stays till the
    # end. Best effort: a failure here was already reported above.
    lab.run("server", "delete", name, "--yes")


# --- the tests --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed() -> int:
    text = os.environ.get("PEON_FAULT_SEED")
    value = int(text) if text else random.SystemRandom().randrange(2**32)
    print(f"PEON_FAULT_SEED={value}")
    return value


@pytest.fixture(scope="module")
def rounds() -> int:
    return int(os.environ.get("PEON_FAULT_ROUNDS", DEFAULT_ROUNDS))


def test_sigkill_at_random_moments_keeps_the_promises(
    tmp_path: Path, fakegame: str, seed: int, rounds: int
) -> None:
    settings = make_settings(tmp_path, backups=BackupSettings(keep_last=KEEP_LAST))
    lab = Lab(settings, seed)
    try:
        for rnd in schedule(seed, rounds, f"f{uuid.uuid4().hex[:6]}", "kill"):
            play(lab, rnd, Fault())
        lab.check_backups(f"seed={seed} at the end", None, settled=False)
    finally:
        cleanup_instance(settings.instance_id)
    if lab.findings:
        pytest.fail(lab.report(rounds), pytrace=False)


@pytest.fixture(scope="module")
def engine_two(engine: None) -> Iterator[SecondEngine]:
    """A second dockerd this module may stop and start (as tests/test_hosts.py does)."""
    root = Path(f"/tmp/pf2-{uuid.uuid4().hex[:6]}")  # short: containerd's socket path
    second = SecondEngine(root)
    second.start()
    try:
        build_fakegame(FAKEGAME_IMAGE, base_url=second.base_url)
        yield second
    finally:
        second.stop()
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["ip", "link", "del", SecondEngine.BRIDGE], capture_output=True, check=False)


def test_engine_stopped_mid_operation_keeps_the_promises(
    tmp_path: Path, engine_two: SecondEngine, seed: int, rounds: int
) -> None:
    # One host, the second engine; a short engine timeout so nothing waits long on it.
    host = HostSettings(
        name="two", base_url=engine_two.base_url, public_address="127.0.0.1", timeout=10
    )
    settings = make_settings(tmp_path, hosts=[host], backups=BackupSettings(keep_last=KEEP_LAST))
    lab = Lab(settings, seed, base_url=engine_two.base_url)
    count = max(1, rounds // len(OPS))
    try:
        for rnd in schedule(seed, count, f"e{uuid.uuid4().hex[:6]}", "engine_stop"):
            play(lab, rnd, EngineStop(engine_two))
    finally:
        if not engine_two.answers():
            engine_two.start()
        cleanup_instance(settings.instance_id, base_url=engine_two.base_url)
    if lab.findings:
        pytest.fail(lab.report(rounds), pytrace=False)


@pytest.fixture
def small_disk(tmpfs: Callable[[str], Path]) -> Path:
    """A 2 MiB backups.dir: full while the archive is being written."""
    return tmpfs("2m")


def test_full_backup_disk_is_one_sentence_and_leaves_nothing(
    tmp_path: Path, small_disk: Path, fakegame: str, seed: int
) -> None:
    # min_free_mb 0: the space check passes on the first small backup's size, so the disk
    # fills up while the archive is being written, as a real full disk does.
    backups = BackupSettings(dir=small_disk, min_free_mb=0, keep_last=KEEP_LAST)
    settings = make_settings(tmp_path, backups=backups)
    lab = Lab(settings, seed)
    name = f"full-{uuid.uuid4().hex[:6]}"
    try:
        lab.must(f"seed={seed}", "server", "create", "fakegame", name, "--set", "world=Full")
        lab.write_world(name, "small", size=1024)
        lab.must(f"seed={seed}", "server", "start", name)
        lab.must(f"seed={seed}", "backup", "create", name)
        (first,) = [r.id for r in backup_rows(lab.db, name) if r.complete]
        before = lab.write_world(name, "big", size=3 * 2**20)  # random: it cannot compress
        for args in (
            ("backup", "create", name),
            ("server", "update", name),
            ("backup", "restore", name, str(first), "--yes"),
            ("server", "delete", name, "--purge", "--yes"),
        ):
            where = f"seed={seed} full disk: peon {' '.join(args)}"
            r = lab.run(*args)
            lines = r.stderr.strip().splitlines()
            errors = [line for line in lines if line.startswith("peon: ")]
            # Progress lines ("NAME: backing up") may come first; the error is one line.
            lab.check(r.returncode == 1, where, "exit 1", f"exit {r.returncode}")
            lab.check(
                TRACEBACK not in r.stderr and len(errors) == 1 and lines[-1:] == errors,
                where,
                "one sentence",
                stderr_summary(r.stderr),
            )
            if args[:2] == ("backup", "create"):  # nothing else to say: no progress lines
                lab.check(len(lines) == 1, where, "one line", f"{len(lines)} lines on stderr")
            message = errors[0] if errors else ""
            lab.check(
                str(small_disk) in message and SIZE.search(message) is not None,
                where,
                "names the directory and the space needed",
                repr(message),
            )
            lab.check_backups(where, name, settled=True)
            listed = [r.id for r in backup_rows(lab.db, name) if r.complete]
            lab.check(listed == [first], where, "nothing listed", f"backups {listed}")
            world = lab.world(name)
            lab.check(
                world is not None and world.whole and world.files == before.files,
                where,
                "(d) world",
                f"{world.describe() if world else 'no volume'} instead of {before.describe()}",
            )
            state = lab.listed().get(name, "gone")
            lab.check(state == "running", where, "left as it was", f"{name} is {state}")
        for args in (("server", "stop", name), ("server", "start", name)):
            r = lab.run(*args)
            lab.check(r.returncode == 0, f"seed={seed} full disk", "(e)", last_line(r.stderr))
        lab.run("server", "stop", name)
    finally:
        cleanup_instance(settings.instance_id)
    if lab.findings:
        pytest.fail(lab.report(1), pytrace=False)
