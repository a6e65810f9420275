"""PEON's real image (the project's Dockerfile, built with the real engine) run the way
compose.yaml runs it: the Docker socket mounted, a data volume, config and war plans read-only,
the token from the environment, the host's network. The bot talks to the Discord emulator on
127.0.0.1 and makes its game servers on this engine through the mounted socket.

The socket is a proxy owned by a group id the image has never heard of, as on hosts whose
docker group has a number of its own (scripts/docker-entrypoint.sh must find and join it).
Figures (image size, build and start-up times) are printed, not asserted; bench/image.py
measures them more closely.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import docker
import pytest
import yaml
from docker.models.containers import Container

from tests.conftest import (
    ADMIN,
    OPERATOR,
    PLAYER,
    ROOT,
    TEST_WARPLANS,
    cleanup_instance,
    fakegame_variant,
)
from tests.discord_emulator import DiscordEmulator, Interaction
from tests.peon_image import (
    COMPOSE_SERVICE,
    Built,
    Relay,
    SocketProxy,
    base_image,
    build_peon,
    compose_seconds,
    run_like_compose,
    state_of,
    wait_healthy,
    write_config,
)

pytestmark = [pytest.mark.docker, pytest.mark.image]

PEON_UID = 10001
SOCKET_GID = 47193  # in no image's /etc/group
HEALTH_INTERVAL = 1.0  # seconds; the image says 60
DISCORD_LATENCY = 0.2  # seconds added to each request to the emulator, as from a real host
LONG = 120  # seconds: a start on a loaded CI machine
READY_DELAY = 4  # seconds the game takes to get ready: long enough to kill PEON meanwhile


@dataclass(frozen=True)
class PeonImages:
    base: Built
    peon: Built


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Figures on the terminal, whatever pytest captures (benchmarks print, tests don't time)."""
    plugins = request.config.pluginmanager
    capture, reporter = plugins.get_plugin("capturemanager"), plugins.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[image] {line}")


def how(image: Built) -> str:
    return f"built in {image.seconds:.1f} s" if image.built else "found on the engine"


@pytest.fixture(scope="module")
def peon_images(engine: None, request: pytest.FixtureRequest) -> PeonImages:
    client = docker.from_env(timeout=900)
    try:
        base = base_image(client)
        peon = build_peon(client, base)
    finally:
        client.close()
    report(request, f"base {base.tag}: {how(base)}; image {peon.tag}: {how(peon)}")
    return PeonImages(base, peon)


# --- the image and the compose file -------------------------------------------------------------


def test_image_is_lean_without_compilers_pip_or_build_secrets(
    peon_images: PeonImages, dclient: docker.DockerClient, request: pytest.FixtureRequest
) -> None:
    script = (
        "for x in gcc cc c++ make ld pip pip3; do command -v $x; done; "
        "ls -d /root/.cache /tmp/ca.pem /venv/lib/python3*/site-packages/pip 2>/dev/null; "
        "id peon; /venv/bin/python -c 'import bot, cogs, discord, docker, re2, zstandard'; "
        "echo ok"
    )
    out = dclient.containers.run(
        peon_images.peon.tag, ["-c", script], entrypoint="sh", user="0", remove=True
    ).decode()
    words = out.split()
    assert words[-1] == "ok", out
    assert "uid=10001(peon)" in out and "gid=10001(peon)" in out, out
    # No compiler, no pip (and so no pip cache), not the CA the build was given: no paths.
    assert [w for w in words if w.startswith("/")] == [], out
    history = dclient.api.history(peon_images.peon.tag)
    assert not any("BEGIN CERTIFICATE" in str(h.get("CreatedBy")) for h in history)
    report(request, f"image size {peon_images.peon.size / 1e6:.0f} MB")


def compose_command() -> list[str] | None:
    """The engine's compose: the `docker compose` plugin, else Debian's docker-compose (v1)."""
    plugin = ["docker", "compose"]
    if shutil.which("docker") and subprocess.run(
        [*plugin, "version"], capture_output=True, check=False
    ).returncode == 0:  # fmt: skip
        return plugin
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_file_is_valid_for_the_engines_compose() -> None:
    compose = compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    cmd = [*compose, "-f", str(ROOT / "compose.yaml"), "config"]
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    missing = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert missing.returncode != 0 and "set DISCORD_TOKEN" in missing.stderr, missing
    ok = subprocess.run(
        cmd, capture_output=True, text=True, env={**env, "DISCORD_TOKEN": "t0k"}, check=False
    )
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)["services"]["peon"]
    assert resolved["environment"]["DISCORD_TOKEN"] == "t0k"
    assert resolved["network_mode"] == "host"


# --- the container ------------------------------------------------------------------------------


def process_ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid and Groups of a process, as the host's /proc shows them."""
    ids = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            ids[key] = [int(x) for x in value.split()]
    return ids


async def answered(emu: DiscordEmulator, i: Interaction, pattern: str) -> str:
    """The interaction's response once it (after any progress edits) matches `pattern`."""

    def text() -> str:
        return i.original.text() if i.original is not None else ""

    try:
        await emu.wait_for(lambda: re.search(pattern, text()) is not None, LONG)
    except TimeoutError:
        pytest.fail(f"no answer matching {pattern!r}: {[m.text() for m in i.edits]}")
    await emu.settle()
    return text()


async def command(emu: DiscordEmulator, user: int, sub: str, **options: str) -> Interaction:
    i = await emu.slash(user, "server", subcommand=sub, options=options)
    await i.wait_done(LONG)
    return i


def notices(emu: DiscordEmulator) -> list[str]:
    return [m.text() for m in emu.channel_messages.get(emu.channels["peon"], [])]


@pytest.fixture
def run_id(engine: None) -> Iterator[str]:
    """A name for this run's things; whatever carries it is removed afterwards."""
    rid = uuid.uuid4().hex[:8]
    yield rid
    client = docker.from_env()
    for c in client.containers.list(all=True, filters={"label": f"io.peon.test-run={rid}"}):
        c.remove(force=True)
    cleanup_instance(f"img{rid}")  # the game servers it made
    for v in client.volumes.list(filters={"label": f"io.peon.test-run={rid}"}):
        v.remove(force=True)
    client.close()


async def test_container_runs_as_compose_says_and_keeps_everything_across_a_restart(
    peon_images: PeonImages, fakegame: str, emu: DiscordEmulator, dclient: docker.DockerClient,
    tmp_path: Path, run_id: str, request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    instance, server, labels = f"img{run_id}", f"img-{run_id}", {"io.peon.test-run": run_id}
    emulator = ("127.0.0.1", int(urlsplit(emu.api_base).port or 0))
    discord = Relay(("127.0.0.1", 0), emulator, delay=DISCORD_LATENCY)
    socket = SocketProxy(tmp_path / "docker.sock", gid=SOCKET_GID)
    discord.start()
    socket.start()
    try:
        write_config(tmp_path / "config", emu, discord.port, instance)
        plan = yaml.safe_load((TEST_WARPLANS / "fakegame.yaml").read_text())
        plans = fakegame_variant(tmp_path, env={**plan["env"], "READY_DELAY": str(READY_DELAY)})
        data = dclient.volumes.create(f"peon-image-data-{run_id}", labels=labels)

        def compose_up() -> Container:
            return run_like_compose(
                dclient, peon_images.peon.tag, f"peon-image-{run_id}",
                sources={
                    "/var/run/docker.sock": str(socket.path),
                    "peon-data": str(data.name),
                    "./config": str(tmp_path / "config"),
                    "./warplans": str(plans),
                },
                env={**os.environ, "DISCORD_TOKEN": emu.token},
                labels=labels,
                health_interval=HEALTH_INTERVAL,
            )  # fmt: skip

        container = compose_up()
        t0 = time.monotonic()
        await asyncio.to_thread(container.start)
        await emu.wait_for(emu.identified.is_set, LONG)
        logged_in = time.monotonic() - t0
        await wait_healthy(container, LONG)
        healthy = time.monotonic() - t0

        # Unprivileged, in the socket's unknown group (not root's); config and plans read-only.
        ids = process_ids((await state_of(container))["Pid"])
        assert ids["Uid"] == [PEON_UID] * 4 and ids["Gid"] == [PEON_UID] * 4, ids
        assert SOCKET_GID in ids["Groups"] and 0 not in ids["Groups"], ids
        mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        assert not mounts["/config"]["RW"] and not mounts["/app/warplans"]["RW"], mounts
        assert mounts["/data"]["Name"] == data.name

        # Commands synced; a game server made and started from Discord, through the socket.
        await emu.wait_for(lambda: any(c["name"] == "server" for c in emu.commands), LONG)
        i = await command(emu, ADMIN, "create", warplan="fakegame", name=server)
        assert i.modal is not None, i.callbacks
        form = await emu.submit_modal(ADMIN, i.modal["custom_id"], {"max_players": "4"})
        await form.wait_done(LONG)
        await answered(emu, form, f"Created {server}")
        through_socket = socket.connections
        await answered(emu, await command(emu, OPERATOR, "start", name=server), "ready to join")
        game = dclient.containers.get(f"peon-{server}")
        assert game.labels["io.peon.instance"] == instance and game.status == "running"
        assert socket.connections > through_socket

        # `docker stop` while a restart runs: it is finished and answered, then PEON exits 0
        # within the grace compose gives it. The game server runs on without the bot.
        i = await command(emu, OPERATOR, "restart", name=server)
        assert i.response_type == 5  # deferred: the restart is under way
        grace = compose_seconds(COMPOSE_SERVICE["stop_grace_period"])
        t = time.monotonic()
        await asyncio.to_thread(container.stop, timeout=grace)
        stop_seconds = time.monotonic() - t
        state = await state_of(container)
        logs = container.logs().decode(errors="replace")
        assert state["ExitCode"] == 0 and stop_seconds < grace, logs
        assert "shutting down" in logs and "interrupted" not in logs, logs
        await answered(emu, i, f"{server} is ready to join")
        ready = f"**{server}** is ready to join"
        assert sum(ready in n for n in notices(emu)) == 2, notices(emu)
        game.reload()
        started_at = game.attrs["State"]["StartedAt"]
        assert game.status == "running"

        # Started again, it reconciles and keeps the server: record, container, state.
        emu.identified.clear()
        t = time.monotonic()
        await asyncio.to_thread(container.start)
        await emu.wait_for(emu.identified.is_set, LONG)
        await wait_healthy(container, LONG)
        again = time.monotonic() - t
        text = await answered(emu, await command(emu, PLAYER, "status", name=server), "State")
        assert "running" in text, text
        assert server in await answered(emu, await command(emu, PLAYER, "list"), server)
        game.reload()
        assert game.status == "running" and game.attrs["State"]["StartedAt"] == started_at

        # Killed while a restart waits for the game, then made anew on the same volume (as
        # `compose up` does after an update): the new container takes over what the dead
        # one left (its lease) and the server can be stopped and started again.
        i = await command(emu, OPERATOR, "restart", name=server)
        await emu.wait_for(lambda: any("waiting for ready" in m.text() for m in i.edits), LONG)
        await asyncio.to_thread(container.remove, force=True)
        emu.identified.clear()
        container = compose_up()
        await asyncio.to_thread(container.start)
        await emu.wait_for(emu.identified.is_set, LONG)
        await wait_healthy(container, LONG)
        logs = container.logs().decode(errors="replace")
        assert f"{server} (restart)" in logs, logs  # reconciled: the interrupted restart
        i = await command(emu, OPERATOR, "stop", name=server)
        await answered(emu, i, f"{server}\\*\\* (stopped|was not running)")
        i = await command(emu, OPERATOR, "start", name=server)
        await answered(emu, i, f"{server} is ready to join")
        assert dclient.containers.get(f"peon-{server}").id == game.id

        await asyncio.to_thread(container.stop, timeout=grace)
        assert (await state_of(container))["ExitCode"] == 0
    finally:
        socket.stop()
        discord.stop()
    report(
        request,
        f"start to logged in {logged_in:.1f} s, to healthy {healthy:.1f} s (checks every "
        f"{HEALTH_INTERVAL:.0f} s); docker stop during a restart {stop_seconds:.1f} s; "
        f"started again to healthy {again:.1f} s",
    )
