"""Patterns the shipped war plans rely on, on the real engine with the fake game:

- a PID 1 that kills the game shortly after forwarding SIGTERM (factorio's runuser) cuts its
  shutdown save; signalling the game itself (`pkill -TERM -x factorio`) lets it finish;

- an image whose PID 1 is a shell without a trap (CS2, TF2, Abiotic Factor) drops SIGTERM, so
  the game is never told to save; `stop.exec: kill -TERM -1` reaches it;
- a configuration whose player count is known to be wrong (Valheim with crossplay) is never
  counted, and an idle schedule for it is refused with the plan's reason.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from bot.app import Services
from bot.automation import Automation
from bot.scheduler import Scheduler
from bot.schedules import ScheduleError
from tests.conftest import ROOT, fakegame_variant, make_settings, services_for
from tests.engine import busybox_binary

# PID 1 is a shell that runs the game as a child and traps nothing, like `bash entry.sh`.
SHELL_PID1 = ["/bin/sh", "-c", "sh /game.sh; echo wrapper done"]
UNCOUNTED = "Hard mode hides its players from the query."


@asynccontextmanager
async def game_with(tmp_path: Path, **changes: Any) -> AsyncIterator[Services]:
    folder = fakegame_variant(tmp_path, **changes)
    async with services_for(make_settings(tmp_path, warplans_dir=folder)) as svc:
        yield svc


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def log_of(svc: Services, name: str) -> str:
    record = await svc.store.get_server(name)
    info = await svc.servers.container_of(record)
    assert info is not None
    return "\n".join(await svc.driver.logs(info.id, tail=200))


@pytest.mark.docker
async def test_a_shell_pid1_drops_sigterm_so_the_game_never_saves(
    tmp_path: Path, fakegame: str
) -> None:
    async with game_with(
        tmp_path, entrypoint=SHELL_PID1, stop={"signal": "SIGTERM", "grace": 3}
    ) as svc:
        name = unique("sig")
        await svc.servers.create("fakegame", name, {}, actor="test")
        await svc.servers.start(name, actor="test")
        await svc.servers.stop(name, actor="test")
        log = await log_of(svc, name)
        assert "Shutting down" not in log and "World saved" not in log  # killed, unsaved


@pytest.mark.docker
async def test_kill_minus_one_reaches_the_game_behind_a_shell_pid1(
    tmp_path: Path, fakegame: str
) -> None:
    stop = {"exec": ["sh", "-c", "kill -TERM -1"], "grace": 20}
    async with game_with(tmp_path, entrypoint=SHELL_PID1, stop=stop) as svc:
        name = unique("kil")
        await svc.servers.create("fakegame", name, {}, actor="test")
        await svc.servers.start(name, actor="test")
        await svc.servers.stop(name, actor="test")
        log = await log_of(svc, name)
        assert "Shutting down: SIGTERM" in log and "World saved (1)" in log
        assert "wrapper done" in log  # PID 1 went on to its end: a clean exit, not a kill
        record = await svc.store.get_server(name)
        info = await svc.servers.container_of(record)
        assert info is not None and not info.running and info.exit_code == 0


@pytest.mark.docker
async def test_a_configuration_with_a_wrong_count_is_not_counted_and_refuses_idle(
    tmp_path: Path, fakegame: str
) -> None:
    players = {
        "protocol": "log",
        "join": "Player joined: (?P<name>\\S+)",
        "leave": "Player left: (?P<name>\\S+)",
        "uncounted_when": [{"env": "DIFFICULTY", "pattern": "^hard$", "reason": UNCOUNTED}],
    }
    async with game_with(tmp_path, players=players) as svc:
        hard, normal = unique("hrd"), unique("nrm")
        await svc.servers.create("fakegame", hard, {"difficulty": "hard"}, actor="test")
        await svc.servers.create("fakegame", normal, {}, actor="test")
        await svc.servers.start(hard, actor="test")
        await svc.servers.console(hard, f"join alice{hard}", actor="test")
        assert await svc.servers.player_count(hard) == (True, None)  # never a wrong 0 or 1
        assert not svc.servers.counts_players(await svc.store.get_server(hard))
        assert svc.servers.counts_players(await svc.store.get_server(normal))

        auto = Automation(
            servers=svc.servers,
            backups=svc.backups,
            store=svc.store,
            scheduler=Scheduler(),
            settings=svc.settings.automation,
            notifier=None,  # type: ignore[arg-type]
        )
        with pytest.raises(ScheduleError) as refused:
            await auto.add_idle(hard, "30m", "test")
        assert str(refused.value) == f"{hard} cannot stop when idle: {UNCOUNTED}"
        view = await auto.add_idle(normal, "30m", "test")
        assert view is not None


# Like runuser on SIGTERM: forward it to the game, then kill the game 2 s later.
RUNUSER_LIKE = """#!/bin/sh
trap 'kill -TERM $child; sleep 2; kill -KILL $child 2>/dev/null' TERM
/usr/local/bin/factorio & child=$!
wait $child; wait $child
"""
# A game whose shutdown save takes 4 s; its process name is "factorio" (the script's name).
SLOW_SAVER = """#!/bin/sh
trap 'echo "Saving map"; sleep 4; echo saved > /data/saved; echo "Save done"; exit 0' TERM
echo "game up"
while true; do sleep 1 & wait $!; done
"""
# The factorio image has procps' pkill; busybox has none, so the test image gets the part of it
# the plan uses: `pkill -TERM -x NAME`.
PKILL = """#!/bin/sh
sig=$1; name=$3; found=1
for p in /proc/[0-9]*; do
  [ "$(cat $p/comm 2>/dev/null)" = "$name" ] && kill $sig "${p#/proc/}" && found=0
done
exit $found
"""


@pytest.fixture
def runuser_image(engine: None) -> Iterator[str]:
    client = docker.from_env(timeout=120)
    tag = f"peon-test/runuser:{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy(busybox_binary(), Path(ctx) / "busybox")
        (Path(ctx) / "wrapper").write_text(RUNUSER_LIKE)
        (Path(ctx) / "factorio").write_text(SLOW_SAVER)
        (Path(ctx) / "pkill").write_text(PKILL)
        (Path(ctx) / "Dockerfile").write_text(
            "FROM scratch\n"
            "COPY busybox /bin/busybox\n"
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
            "COPY wrapper /wrapper\n"
            "COPY factorio pkill /usr/local/bin/\n"
            'RUN ["/bin/sh", "-c", "chmod +x /wrapper /usr/local/bin/* && mkdir /data"]\n'
            'ENTRYPOINT ["/wrapper"]\n'
        )
        client.images.build(path=ctx, tag=tag, rm=True, forcerm=True)
    try:
        yield tag
    finally:
        client.images.remove(tag, force=True)
        client.close()


async def saved(svc: Services, name: str) -> bool:
    record = await svc.store.get_server(name)
    info = await svc.servers.container_of(record)
    assert info is not None
    client = docker.from_env()
    try:
        ctr = client.containers.get(info.id)
        try:
            bits, _ = ctr.get_archive("/data/saved")
        except docker.errors.NotFound:
            return False
        return bool(b"".join(bits))
    finally:
        client.close()


@pytest.mark.docker
@pytest.mark.parametrize(
    ("stop", "finishes"),
    [
        ({"signal": "SIGTERM", "grace": 20}, False),  # the wrapper kills the save after 2 s
        ({"exec": ["pkill", "-TERM", "-x", "factorio"], "grace": 20}, True),  # the factorio plan
    ],
)
async def test_a_wrapper_that_kills_its_child_cuts_the_save_unless_the_game_is_signalled(
    tmp_path: Path, runuser_image: str, stop: dict[str, Any], finishes: bool
) -> None:
    changes = {
        "image": runuser_image,
        "ready": {"log": "game up", "timeout": 30},
        "stop": stop,
    }
    async with game_with(tmp_path, **changes) as svc:
        name = unique("ru")
        await svc.servers.create("fakegame", name, {}, actor="test")
        await svc.servers.start(name, actor="test")
        await svc.servers.stop(name, actor="test")
        log = await log_of(svc, name)
        assert "Saving map" in log  # the game heard the stop either way
        assert ("Save done" in log) is finishes
        assert await saved(svc, name) is finishes


@pytest.mark.docker
async def test_a_failing_stop_command_falls_back_to_the_signal_at_once(
    tmp_path: Path, runuser_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    changes = {
        "image": runuser_image,
        "ready": {"log": "game up", "timeout": 30},
        "stop": {"exec": ["pkill", "-TERM", "-x", "no-such-game"], "grace": 20},
    }
    async with game_with(tmp_path, **changes) as svc:
        name = unique("nf")
        await svc.servers.create("fakegame", name, {}, actor="test")
        await svc.servers.start(name, actor="test")
        await svc.servers.stop(name, actor="test")
        assert f"stop command for {name} failed (exit 1" in caplog.text
        assert "ignored its stop command" not in caplog.text  # no wasted grace
        assert "Saving map" in await log_of(svc, name)  # the signal reached it instead


@pytest.mark.docker
async def test_a_ready_line_printed_at_once_is_seen_on_every_start(
    tmp_path: Path, fakegame: str
) -> None:
    """The engine stamps a line printed at once before the container's StartedAt (3 of 5
    starts measured); reading from StartedAt missed it and the start timed out."""
    changes = {
        "entrypoint": ["/bin/sh", "-c", "echo instant-ready; exec sh /game.sh"],
        "ready": {"log": "instant-ready", "timeout": 10},
    }
    async with game_with(tmp_path, **changes) as svc:
        name = unique("rdy")
        await svc.servers.create("fakegame", name, {}, actor="test")
        for _ in range(4):
            await svc.servers.start(name, actor="test")
            await svc.servers.stop(name, actor="test")


# A stand-in for the factorio image's rcon: /server-save writes NAME.tmp.zip, then renames it.
FAKE_RCON = """#!/bin/sh
[ "$1" = /server-save ] || exit 2
cd /factorio/saves && (echo map > w.tmp.zip; sleep 2; mv w.tmp.zip w.zip) &
"""


@pytest.mark.docker
@pytest.mark.parametrize(("rcon", "confirmed"), [(FAKE_RCON, True), ("#!/bin/sh\nexit 3\n", False)])
def test_the_factorio_save_command_confirms_only_a_written_save(
    fakegame: str, rcon: str, confirmed: bool
) -> None:
    """The shipped factorio plan's save command, run against a stand-in rcon: it answers
    `done` once a new .zip is there and no .tmp.zip is left, and fails when rcon fails."""
    plan = yaml.safe_load((ROOT / "warplans" / "factorio.yaml").read_text())
    command = plan["save"]["command"]
    client = docker.from_env()
    ctr = client.containers.run(
        fakegame,
        entrypoint=["/bin/sh", "-c", "mkdir -p /tmp /factorio/saves /usr/local/bin; sleep 120"],
        detach=True,
        labels={"io.peon.test": "factorio-save"},
    )
    try:
        ctr.exec_run(["sh", "-c", "echo old > /factorio/saves/w.zip"])
        script = rcon.replace("'", "'\\''")
        ctr.exec_run(["sh", "-c", f"printf '%s' '{script}' > /usr/local/bin/rcon"])
        ctr.exec_run(["chmod", "+x", "/usr/local/bin/rcon"])
        code, out = ctr.exec_run(command)
        assert (code == 0) is confirmed, out
        assert (plan["save"]["done"] in out.decode()) is confirmed
    finally:
        ctr.remove(force=True)
        client.close()
