"""Real image pulls, from a registry on 127.0.0.1 serving images exported from the engine."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from bot.app import Services
from bot.errors import ImageUnavailable
from bot.models import Phase, ProgressEvent, PullProgress
from bot.warplans import WarplanLibrary
from tests.engine import FAKEGAME_IMAGE
from tests.images import Images
from tests.registry import LocalRegistry
from tests.test_discord_e2e import ADMIN, Runner, bot_settings, finished

pytestmark = pytest.mark.docker

PAD_BYTES = 600_000  # a layer of its own, so the pull has something to download
THROTTLE = 300_000  # bytes/s: the download takes about two seconds and reports progress


def build_game(images: Images, version: str) -> str:
    """The fake game plus a fresh random layer; returns the local tag."""
    tag = f"peon-test/pullsrc:{uuid.uuid4().hex[:12]}"
    steps = f"echo {uuid.uuid4().hex} > /id && head -c {PAD_BYTES} /dev/urandom > /pad"
    with tempfile.TemporaryDirectory() as ctx:
        (Path(ctx) / "Dockerfile").write_text(
            f"FROM {FAKEGAME_IMAGE}\nENV GAME_VERSION={version}\n"
            f"RUN {json.dumps(['/bin/sh', '-c', steps])}\n"
        )
        images.client.images.build(path=ctx, tag=tag, rm=True, forcerm=True)
    images.refs.append(tag)
    return tag


def publish(images: Images, registry: LocalRegistry, version: str) -> str:
    src = build_game(images, version)
    ref = registry.push_local(src, "peon-test/pullgame", "latest")
    images.drop(src)  # else the engine has the config already and downloads nothing
    return ref


def forget_pulled(images: Images, ref: str) -> None:
    """Record the pulled reference and its digests for cleanup."""
    try:
        image = images.client.images.get(ref)
    except docker.errors.ImageNotFound:
        return
    images.refs.append(ref)
    images.refs += [
        d for d in image.attrs.get("RepoDigests") or [] if d.startswith(ref.rsplit(":", 1)[0] + "@")
    ]


@pytest.fixture
async def registry(engine: None) -> AsyncIterator[LocalRegistry]:
    async with LocalRegistry(throttle_bytes_per_s=THROTTLE) as reg:
        yield reg


def plan_dir(tmp_path: Path, image: str) -> Path:
    directory = tmp_path / "plans"
    directory.mkdir()
    text = (Path(__file__).parent / "warplans" / "fakegame.yaml").read_text()
    text = text.replace("name: fakegame", "name: pullgame").replace(
        "image: peon-test/fakegame:latest", f"image: {image}"
    )
    (directory / "pullgame.yaml").write_text(text)
    return directory


async def test_create_pulls_a_missing_image_with_progress_and_update_pulls_the_new_one(
    images: Images,  # first: torn down last, after the servers using its images
    registry: LocalRegistry,
    services: Services,
    tmp_path: Path,
    dclient: docker.DockerClient,
) -> None:
    ref = publish(images, registry, "7")
    services.servers.warplans = WarplanLibrary(plan_dir(tmp_path, ref))
    events: list[ProgressEvent] = []

    async def progress(e: ProgressEvent) -> None:
        events.append(e)

    try:
        await services.servers.create("pullgame", "puller", actor="test", progress=progress)
        assert Phase("puller", "pulling", ref) in events
        pulls = [e for e in events if isinstance(e, PullProgress)]
        assert any(0 < p.current < p.total for p in pulls), "no partial download was reported"
        assert pulls[-1].layers and pulls[-1].layers_done == pulls[-1].layers
        assert registry.pulls == ["peon-test/pullgame:latest"]
        await services.servers.start("puller", actor="test")
        assert "Fake game 7 starting" in "\n".join(await services.servers.logs("puller"))
        await services.servers.stop("puller", actor="test")
        old = dclient.containers.get("peon-puller")

        # A newer image behind the same tag: update pulls it, recreates, keeps the world.
        new_ref = publish(images, registry, "8")
        assert new_ref == ref
        await services.servers.start("puller", actor="test")
        result = await services.servers.update("puller", actor="test")
        assert result.pulled and result.changed and result.restarted
        assert dclient.containers.get("peon-puller").id != old.id
        logs = "\n".join(await services.servers.logs("puller"))
        assert "Fake game 8 starting" in logs
        await services.servers.stop("puller", actor="test")
        saved = dclient.containers.run(
            FAKEGAME_IMAGE,
            entrypoint=["cat", "/v/world.sav"],
            remove=True,
            volumes={"peon-puller-world": {"bind": "/v"}},
        ).decode()
        # Saves from both versions (the data was kept), one of them by the backup taken
        # before the update.
        assert "version=8 saves=4" in saved
    finally:
        forget_pulled(images, ref)


async def test_registry_failure_on_update_names_the_image_and_leaves_the_server_running(
    images: Images,  # first: torn down last, after the servers using its images
    registry: LocalRegistry,
    services: Services,
    tmp_path: Path,
    dclient: docker.DockerClient,
) -> None:
    ref = publish(images, registry, "1")
    services.servers.warplans = WarplanLibrary(plan_dir(tmp_path, ref))
    try:
        await services.servers.create("pullgame", "steady", actor="test")
        await services.servers.start("steady", actor="test")
        before = dclient.containers.get("peon-steady")
        registry.fail_next = 1
        with pytest.raises(ImageUnavailable, match=f"Image '{ref}' could not be pulled"):
            await services.servers.update("steady", actor="test")
        after = dclient.containers.get("peon-steady")
        assert after.id == before.id and after.status == "running"
        audit = await services.store.audit_log("steady", limit=1)
        assert not audit[0].ok and ref in audit[0].detail
    finally:
        forget_pulled(images, ref)


async def test_discord_create_shows_pull_progress_as_a_bar(
    tmp_path: Path, registry: LocalRegistry, images: Images, fakegame: str
) -> None:
    from tests.discord_emulator import DiscordEmulator

    ref = publish(images, registry, "3")
    emu = DiscordEmulator()
    await emu.start()
    emu.add_member(ADMIN, "ada", [emu.roles["admin"]])
    settings = bot_settings(tmp_path, emu).model_copy(
        update={"warplans_dir": plan_dir(tmp_path, ref)}
    )
    runner = Runner(settings, emu)
    await runner.start()
    try:
        i = await emu.slash(
            ADMIN, "server", subcommand="create", options={"warplan": "pullgame", "name": "barred"}
        )
        await i.wait_done()
        sub = await emu.submit_modal(ADMIN, i.modal["custom_id"], {})
        await sub.wait_done()
        await finished(emu, sub, "Created barred")
        texts = [m.text() for m in sub.edits]
        assert any(f"pulling: {ref}" in t for t in texts), texts
        bars = [t for t in texts if "░" in t and "layers" in t]
        assert bars, texts  # at least one edit drew the download bar
    finally:
        await runner.stop()
        await emu.close()
        forget_pulled(images, ref)
        from tests.conftest import cleanup_instance

        cleanup_instance(settings.instance_id)


def test_cli_progress_bar_on_a_terminal() -> None:
    import asyncio
    import io

    from bot.cli import ProgressPrinter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    printer = ProgressPrinter(out)
    asyncio.run(printer(Phase("a", "pulling", "img")))
    asyncio.run(printer(PullProgress("img", 50_000_000, 100_000_000, 1, 3, "pulling")))
    asyncio.run(printer(Phase("a", "creating")))
    assert out.getvalue() == (
        "a: pulling: img\n"
        "\r  [###############...............]  50% 50/100 MB (1/3 layers)\n"
        "a: creating\n"
    )
    plain = io.StringIO()
    asyncio.run(ProgressPrinter(plain)(PullProgress("img", 1, 2, 0, 1, "pulling")))
    assert plain.getvalue() == ""  # no bar when not on a terminal
