"""War plans' install step end to end on the real engine: an installer image built locally
from busybox writes the game files into the server's volume; the server starts from them.

A failing or hanging script leaves nothing behind, a reinstall runs it again (after a safety
backup), and an install cut short (a cancelled create, a killed CLI) never leaves a server
that starts half installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from bot import labels
from bot.app import Services
from bot.errors import BackupError, InstallFailed
from bot.models import Phase, ProgressEvent, ServerState
from bot.settings import BackupSettings
from tests.conftest import (
    ADMIN,
    OPERATOR,
    ROOT,
    config_file,
    make_settings,
    peon,
    services_for,
)
from tests.discord_emulator import DiscordEmulator
from tests.images import Images
from tests.test_discord_e2e import answer, bot_settings, refusal, running_bot, slash, until

pytestmark = pytest.mark.docker

SCRIPT = """\
set -e
echo "installing $SERVER_NAME (world $WORLD, port $GAME_PORT, admin $ADMIN_PW) into /mnt/server"
if [ "$MODE" = fail ]; then echo "download failed: 404"; exit 1; fi
if [ "$MODE" = hang ]; then echo "waiting forever"; sleep 600; fi
if [ -f /mnt/server/fail-next ]; then rm /mnt/server/fail-next; echo "mirror down: 503"; exit 1; fi
if [ -f /mnt/server/slow-next ]; then
  rm -f /mnt/server/slow-next /mnt/server/run.sh
  echo "slow download"
  sleep 600
fi
cp /id /mnt/server/installer-id
echo x >> /mnt/server/installs
cat > /mnt/server/run.sh <<'EOF'
trap 'echo saving; exit 0' TERM
touch /data/world || exit 3
echo "game ready after $(wc -l < /data/installs) installs as $(id -u)"
while :; do sleep 1; done
EOF
echo "install done"
"""


def plan_data(name: str, server_image: str, installer_image: str, timeout: int) -> dict[str, Any]:
    return {
        "name": name,
        "title": "Installed game",
        "image": server_image,
        "command": ["/bin/sh", "/data/run.sh"],
        "ports": [{"name": "game", "container": 7000}],
        "variables": [
            {"name": "mode", "env": "MODE", "type": "choice", "choices": ["ok", "fail", "hang"]},
            {"name": "world", "env": "WORLD", "default": "{server}-world"},
            {"name": "admin_pw", "env": "ADMIN_PW", "secret": True, "generate": True},
        ],
        "volumes": [
            {"name": "data", "path": "/data"},
            {"name": "cache", "path": "/cache", "backup": False},
        ],
        "ready": {"log": "game ready", "timeout": 60},
        "stop": {"grace": 10},
        "install": {
            "image": installer_image,
            "script": SCRIPT,
            "mounts": {"data": "/mnt/server"},
            "env": {"SERVER_NAME": "{server}", "GAME_PORT": "{port:game}"},
            "timeout": timeout,
        },
    }


@pytest.fixture(scope="module")
def built(engine: None) -> Iterator[tuple[str, str, str]]:
    """(server image, installer image, the installer image's /id): two busybox images."""
    client = docker.from_env()
    made = Images(client)
    server_image, _ = made.build()
    installer_image, _ = made.build()
    marker = client.containers.run(installer_image, ["cat", "/id"], remove=True).decode().strip()
    yield server_image, installer_image, marker
    made.cleanup()
    client.close()


@pytest.fixture
def warplans(tmp_path: Path, built: tuple[str, str, str]) -> Path:
    folder = tmp_path / "warplans"
    folder.mkdir()
    server_image, installer_image, _ = built
    for name, timeout in (("installed", 120), ("installed-quick", 3), ("installed-user", 120)):
        data = plan_data(name, server_image, installer_image, timeout)
        if name == "installed-user":
            data["user"] = "1234:1234"
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return folder


@pytest.fixture
async def svc(tmp_path: Path, warplans: Path) -> AsyncIterator[Services]:
    async with services_for(make_settings(tmp_path, warplans_dir=warplans)) as s:
        yield s


def read_volume(client: docker.DockerClient, image: str, volume: str, path: str) -> str:
    out = client.containers.run(
        image, ["cat", f"/v/{path}"], remove=True, volumes={volume: {"bind": "/v", "mode": "ro"}}
    )
    return bytes(out).decode()


def installers(client: docker.DockerClient, instance: str) -> list[Any]:
    flt = {"label": labels.installer_filter(instance)}
    return list(client.containers.list(all=True, filters=flt))


def leftovers(client: docker.DockerClient, instance: str) -> list[str]:
    flt = {"label": [f"{labels.INSTANCE}={instance}"]}
    return [c.name for c in client.containers.list(all=True, filters=flt)] + [
        v.name for v in client.volumes.list(filters=flt)
    ]


class Recorder:
    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    async def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def steps(self) -> list[tuple[str, str]]:
        return [(e.step, e.detail) for e in self.events if isinstance(e, Phase)]


async def test_create_runs_the_install_and_the_server_starts_from_what_it_installed(
    svc: Services, dclient: docker.DockerClient, built: tuple[str, str, str]
) -> None:
    server_image, installer_image, marker = built
    progress = Recorder()
    record = await svc.servers.create("installed", "ins-ok", actor="test", progress=progress)
    assert record.state == ServerState.STOPPED
    steps = progress.steps()
    assert ("installing", installer_image) in steps
    assert any(s == "installed" for s, _ in steps)
    # The files came from the installer image, into the volume named in `mounts`.
    volume = labels.volume_name("ins-ok", "data")
    assert read_volume(dclient, server_image, volume, "installer-id").strip() == marker
    assert installers(dclient, svc.settings.instance_id) == []  # removed once done

    run = await svc.servers.installs.last("ins-ok")
    assert run.installed and run.ok and run.exit_code == 0
    # The server's environment, install.env with its templates, the secret masked.
    port = record.ports[0].host
    assert f"installing ins-ok (world ins-ok-world, port {port}, admin ••••••)" in run.log
    assert record.variables["admin_pw"] not in run.log
    assert "install done" in run.log

    started = await svc.servers.start("ins-ok", actor="test")
    assert not started.already_running
    assert "game ready after 1 installs as 0" in "\n".join(await svc.servers.logs("ins-ok"))
    # Installed once: a second start does not run the script again.
    await svc.servers.stop("ins-ok", actor="test")
    await svc.servers.start("ins-ok", actor="test")
    assert read_volume(dclient, server_image, volume, "installs").count("x") == 1
    kinds = [(e.kind, e.ok) for e in await svc.store.latest_events("ins-ok", limit=20)]
    assert ("install", True) in kinds


@pytest.mark.parametrize(
    ("plan", "mode", "reason", "last_line"),
    [
        ("installed", "fail", "the script exited with code 1", "download failed: 404"),
        ("installed-quick", "hang", "did not finish within 3 s and was stopped", "waiting forever"),
    ],
)
async def test_a_failed_or_timed_out_install_leaves_nothing_and_shows_the_log(
    svc: Services, dclient: docker.DockerClient, plan: str, mode: str, reason: str, last_line: str
) -> None:
    name = f"ins-{mode}"
    with pytest.raises(InstallFailed) as caught:
        await svc.servers.create(plan, name, {"mode": mode}, actor="test")
    error = caught.value
    assert reason in str(error) and str(error).count(".") <= 2
    assert error.logs[-1] == last_line
    assert any("admin ••••••" in line for line in error.logs)
    # No record, no held port, no container (game or installer), no volume.
    assert await svc.store.find_server(name) is None
    assert await svc.store.taken_ports() == set()
    assert leftovers(dclient, svc.settings.instance_id) == []
    audit = [(e.kind, e.ok) for e in await svc.store.latest_events(name, limit=10)]
    assert ("install", False) in audit and ("create", False) in audit


async def test_reinstall_backs_up_reruns_the_script_and_restarts(
    svc: Services, dclient: docker.DockerClient, built: tuple[str, str, str]
) -> None:
    server_image = built[0]
    await svc.servers.create("installed", "ins-re", actor="test")
    await svc.servers.start("ins-re", actor="test")
    progress = Recorder()
    done = await svc.servers.reinstall("ins-re", actor="test", progress=progress)
    assert done.restarted and done.backup_id is not None
    steps = [s for s, _ in progress.steps()]
    assert steps.index("stopping") < steps.index("backing up") < steps.index("installing")
    assert steps[-1] == "ready"
    backup = await svc.store.get_backup(done.backup_id)
    assert backup.trigger == "before-reinstall" and backup.complete
    volume = labels.volume_name("ins-re", "data")
    assert read_volume(dclient, server_image, volume, "installs").count("x") == 2
    assert "game ready after 2 installs" in "\n".join(await svc.servers.logs("ins-re"))
    kinds = [(e.kind, e.ok) for e in await svc.store.latest_events("ins-re", limit=20)]
    assert ("reinstall", True) in kinds

    # A reinstall that fails says so in one sentence naming the backup to restore; the
    # server is left not installed, and its next start installs again before starting.
    info = dclient.containers.get(labels.container_name("ins-re"))
    info.exec_run(["touch", "/data/fail-next"])
    with pytest.raises(InstallFailed) as caught:
        await svc.servers.reinstall("ins-re", actor="test")
    message = str(caught.value)
    second = max(b.id for b in await svc.store.list_backups("ins-re"))
    assert message == (
        "The reinstall of 'ins-re' failed (the script exited with code 1); restoring backup "
        f"#{second} brings its data back."
    )
    assert caught.value.logs[-1] == "mirror down: 503"
    assert not (await svc.servers.installs.last("ins-re")).installed
    assert installers(dclient, svc.settings.instance_id) == []
    # Restoring the backup it names brings back the installed files: the next start starts
    # them, without installing again (a start without the restore installs first: see the
    # killed reinstall below).
    await svc.backups.restore("ins-re", second, actor="test")
    assert (await svc.servers.installs.last("ins-re")).installed
    await svc.servers.start("ins-re", actor="test")
    assert "game ready after 2 installs" in "\n".join(await svc.servers.logs("ins-re"))


async def test_a_reinstall_whose_backup_is_refused_leaves_the_server_running(
    tmp_path: Path, warplans: Path, dclient: docker.DockerClient
) -> None:
    # No disk has this much free: the safety backup is refused after the server stopped.
    settings = make_settings(
        tmp_path, warplans_dir=warplans, backups=BackupSettings(min_free_mb=2**40)
    )
    async with services_for(settings) as svc:
        await svc.servers.create("installed", "rev-bkfail", actor="test")
        await svc.servers.start("rev-bkfail", actor="test")
        with pytest.raises(BackupError):
            await svc.servers.reinstall("rev-bkfail", actor="test")
        assert await svc.servers.is_running("rev-bkfail")
        assert (await svc.servers.installs.last("rev-bkfail")).installed
        assert "game ready after 1 installs" in "\n".join(await svc.servers.logs("rev-bkfail"))
        assert installers(dclient, settings.instance_id) == []


async def test_a_plan_without_install_step_refuses_reinstall(svc: Services, tmp_path: Path) -> None:
    await svc.servers.create("installed", "ins-none", actor="test")
    plan = yaml.safe_load((svc.settings.warplans_dir / "installed.yaml").read_text())
    del plan["install"]
    (svc.settings.warplans_dir / "installed.yaml").write_text(yaml.safe_dump(plan))
    svc.warplans.reload()
    with pytest.raises(Exception, match="has no install step, so 'ins-none' has nothing"):
        await svc.servers.reinstall("ins-none", actor="test")


async def test_a_create_cancelled_mid_install_leaves_nothing(
    svc: Services, dclient: docker.DockerClient
) -> None:
    instance = svc.settings.instance_id
    task = asyncio.create_task(
        svc.servers.create("installed", "ins-cut", {"mode": "hang"}, actor="test")
    )
    await wait_for_installer_line(dclient, instance, "waiting forever", task)
    # A reconcile meanwhile (another process's, say) leaves an install under way alone.
    report = await svc.servers.reconcile("test")
    assert report.installers == [] and len(installers(dclient, instance)) == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await svc.store.find_server("ins-cut") is None
    assert leftovers(dclient, instance) == []


async def test_a_cli_killed_mid_reinstall_installs_again_at_the_next_start(
    svc: Services, dclient: docker.DockerClient, tmp_path: Path
) -> None:
    instance = svc.settings.instance_id
    await svc.servers.create("installed", "ins-kill", actor="test")
    await svc.servers.start("ins-kill", actor="test")
    dclient.containers.get("peon-ins-kill").exec_run(["touch", "/data/slow-next"])
    await svc.servers.stop("ins-kill", actor="test")

    config = config_file(svc.settings, tmp_path / "peon.yaml")
    env = {**os.environ, "PEON_CONFIG": str(config)}
    env.pop("DISCORD_TOKEN", None)
    cli = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "server", "reinstall", "ins-kill", "--yes"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_for_installer_line(dclient, instance, "slow download", None)
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.communicate(timeout=30)
    # The script had removed the game's start file: what a half-done install leaves.
    assert len(installers(dclient, instance)) == 1
    run = await svc.servers.installs.last("ins-kill")
    assert not run.installed and run.ok is None
    status = await asyncio.to_thread(peon, config, "server", "status", "ins-kill")
    assert "cut short; it installs at its next start" in status.stdout

    report = await svc.servers.reconcile("test")
    assert "ins-kill (reinstall)" in report.interrupted
    assert installers(dclient, instance) == []
    progress = Recorder()
    await svc.servers.start("ins-kill", actor="test", progress=progress)
    steps = [s for s, _ in progress.steps()]
    assert steps.index("installing") < steps.index("starting")
    assert "game ready after 2 installs" in "\n".join(await svc.servers.logs("ins-kill"))

    # The CLI shows the whole log of the last run, and wants a confirmation to reinstall.
    shown = await asyncio.to_thread(peon, config, "server", "install-log", "ins-kill")
    assert shown.returncode == 0 and ": ok, " in shown.stderr
    assert shown.stdout.splitlines()[-1] == "install done" and "admin ••••••" in shown.stdout
    status = await asyncio.to_thread(peon, config, "server", "status", "ins-kill")
    assert re.search(r"^install +installed \S+ \S+ UTC in \d+ s$", status.stdout, re.M)
    refused = await asyncio.to_thread(peon, config, "server", "reinstall", "ins-kill")
    assert refused.returncode == 1
    assert refused.stderr == "peon: Refusing to reinstall without confirmation: pass --yes.\n"


async def test_reconcile_removes_an_installer_left_by_a_dead_process(
    svc: Services, dclient: docker.DockerClient, built: tuple[str, str, str]
) -> None:
    instance = svc.settings.instance_id
    # What a process killed between its installer's start and its removal leaves, for a
    # server whose record is gone (a create it was making, undone by someone else).
    left = dclient.containers.run(
        built[1], ["sleep", "600"], detach=True, name=labels.installer_name("ins-gone"),
        labels=labels.installer_labels(instance, "ins-gone", "installed"),
    )  # fmt: skip
    try:
        report = await svc.servers.reconcile("test")
        assert report.installers == ["ins-gone"]
        assert "removed leftover installers: ins-gone" in report.lines()
        assert installers(dclient, instance) == []
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            left.remove(force=True)


async def test_a_plan_with_a_numeric_user_gets_the_installed_files_owned_by_it(
    svc: Services, dclient: docker.DockerClient, built: tuple[str, str, str]
) -> None:
    """The script runs as root; the game runs as the plan's user and must write its world
    among what was installed (Wings chowns before every boot for the same reason)."""
    await svc.servers.create("installed-user", "ins-user", actor="test")
    await svc.servers.start("ins-user", actor="test")
    assert "game ready after 1 installs as 1234" in "\n".join(await svc.servers.logs("ins-user"))
    volume = labels.volume_name("ins-user", "data")
    out = dclient.containers.run(
        built[0], ["stat", "-c", "%u:%g %n", "/v", "/v/run.sh", "/v/world"], remove=True,
        volumes={volume: {"bind": "/v", "mode": "ro"}},
    )  # fmt: skip
    assert bytes(out).decode().split("\n")[:3] == [
        "1234:1234 /v",
        "1234:1234 /v/run.sh",
        "1234:1234 /v/world",
    ]


async def wait_for_installer_line(
    client: docker.DockerClient, instance: str, line: str, task: asyncio.Task[Any] | None
) -> None:
    """Until the running installer's log shows `line` (the script is where the test wants)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if task is not None and task.done():
            task.result()
            raise AssertionError("the create ended before its installer ran")
        for c in await asyncio.to_thread(installers, client, instance):
            if line in (await asyncio.to_thread(c.logs)).decode():
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"no installer printed {line!r}")


async def test_discord_reinstall_asks_to_confirm_and_refuses_ephemerally(
    tmp_path: Path, warplans: Path, built: tuple[str, str, str], emu: DiscordEmulator
) -> None:
    plain = plan_data("plain", built[0], built[1], 60)
    del plain["install"]
    (warplans / "plain.yaml").write_text(yaml.safe_dump(plain))
    settings = bot_settings(tmp_path, emu).model_copy(update={"warplans_dir": warplans})
    async with running_bot(settings, emu) as bot:
        servers = bot.services.servers
        await servers.create("installed", "ins-dc", actor="test")
        await servers.create("plain", "ins-plain", actor="test")
        # Refusals come at once, ephemeral, before any prompt.
        i = await slash(emu, OPERATOR, "reinstall", name="ins-dc")
        assert refusal(i) == "You need the PEON admin role to reinstall servers."
        i = await slash(emu, ADMIN, "reinstall", name="ins-plain")
        assert refusal(i) == (
            "War plan 'plain' has no install step, so 'ins-plain' has nothing to reinstall."
        )
        i = await slash(emu, ADMIN, "reinstall", name="ins-dc")
        prompt = i.original
        assert prompt is not None and "Reinstall ins-dc?" in prompt.text()
        assert "backs it up" in prompt.text()
        ok = await emu.click(ADMIN, prompt, answer(prompt))
        await ok.wait_done()
        await until(emu, lambda: "Reinstalled **ins-dc**" in emu.message(prompt.id).text())
        (backup,) = await servers.store.list_backups("ins-dc")
        assert f"after backup #{backup.id}." in emu.message(prompt.id).text()
        # The prompt showed the install's progress while it ran, as a create's does.
        assert any("installing" in m.text() for m in i.edits)
        run = await servers.installs.last("ins-dc")
        assert run.installed and run.started_at > backup.created_at


async def test_the_cli_shows_a_failed_installs_last_lines_and_leaves_nothing(
    svc: Services, dclient: docker.DockerClient, tmp_path: Path
) -> None:
    config = config_file(svc.settings, tmp_path / "peon.yaml")
    args = ("server", "create", "installed", "ins-clif", "--set", "mode=fail")
    r = await asyncio.to_thread(peon, config, *args)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert "ins-clif: installing: " in r.stderr  # progress, as for a create or start
    assert lines[-2:] == [
        "  | download failed: 404",
        "peon: The install step of 'ins-clif' failed: the script exited with code 1.",
    ]
    assert await svc.store.find_server("ins-clif") is None
    assert leftovers(dclient, svc.settings.instance_id) == []
