"""Several Docker hosts, against two real engines on this machine (../shared/TESTING.md):
placement, routing, one engine down (its servers only), recovery, and a bot that keeps running
through an engine restart."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest

from bot.app import Services, open_services
from bot.errors import DockerUnavailable, NoHostFits, ServerNotFound
from bot.settings import HostSettings, Settings, TLSSettings
from tests.conftest import ADMIN, OPERATOR, PLAYER, cleanup_instance, make_settings
from tests.discord_emulator import DiscordEmulator
from tests.engine import FAKEGAME_IMAGE, SecondEngine, build_fakegame
from tests.test_discord_e2e import bot_settings, final_text, finished, running_bot, slash

pytestmark = pytest.mark.docker
ANSWER = 30  # seconds: far above "a few", only so a hang fails instead of blocking the run


@pytest.fixture(scope="module")
def engine2(fakegame: str) -> Iterator[SecondEngine]:
    root = Path(f"/tmp/pd2-{uuid.uuid4().hex[:6]}")
    second = SecondEngine(root)
    second.start()
    build_fakegame(FAKEGAME_IMAGE, base_url=second.base_url)
    yield second
    second.stop()
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["ip", "link", "del", SecondEngine.BRIDGE], capture_output=True, check=False)


def two_hosts(settings: Settings, engine2: SecondEngine) -> Settings:
    # Both engines publish on this one machine, so each gets its own pool (two machines
    # could share one).
    base = settings.ports.pool_range.start
    other = base + 6000  # still below the ephemeral ports (see make_settings)
    hosts = [
        HostSettings(name="one", public_address="127.0.0.1", memory="1g"),
        HostSettings(
            name="two",
            base_url=engine2.base_url,
            public_address="127.0.0.1",
            memory="1g",
            pool=f"{other}-{other + 99}",
        ),
    ]
    return settings.model_copy(update={"hosts": hosts})


def on_engine(base_url: str | None, instance: str) -> set[str]:
    """Server names of the instance's containers on one engine (asked directly)."""
    client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
    try:
        found = client.containers.list(
            all=True, filters={"label": [f"io.peon.instance={instance}"]}
        )
        return {c.labels["io.peon.server"] for c in found}
    finally:
        client.close()


def cleanup_both(instance: str, engine2: SecondEngine) -> None:
    cleanup_instance(instance)
    if engine2.answers():
        cleanup_instance(instance, base_url=engine2.base_url)


@pytest.fixture
async def svc2(tmp_path: Path, engine2: SecondEngine) -> AsyncIterator[Services]:
    settings = two_hosts(make_settings(tmp_path), engine2)
    try:
        async with open_services(settings) as svc:
            yield svc
    finally:
        if not engine2.answers():
            engine2.start()
        cleanup_both(settings.instance_id, engine2)


async def test_placement_routing_outage_and_recovery(svc2: Services, engine2: SecondEngine) -> None:
    servers, instance = svc2.servers, svc2.settings.instance_id
    # Equal hosts: the first listed wins; then the other has more memory free (64m placed).
    a = await servers.create("fakegame", "alpha", {"world": "A"}, actor="test")
    b = await servers.create("fakegame", "bravo", {"world": "B"}, actor="test")
    c = await servers.create("fakegame", "charlie", {"world": "C"}, actor="test", host="two")
    assert (a.host, b.host, c.host) == ("one", "two", "two")
    assert on_engine(None, instance) == {"alpha"}
    assert on_engine(engine2.base_url, instance) == {"bravo", "charlie"}
    # Every later action goes to the server's own engine.
    await servers.start("alpha", actor="test")
    await servers.start("bravo", actor="test")
    assert any("Server ready" in line for line in await servers.logs("bravo"))
    health = {h.name: h for h in await servers.host_health()}
    assert health["one"].reachable and health["two"].reachable
    assert (health["one"].servers, health["two"].servers) == (1, 2)
    assert health["two"].allocated == 2 * 64 * 2**20

    engine2.stop()
    # Its servers answer at once with a sentence naming the host; the others are unaffected.
    async with asyncio.timeout(ANSWER):
        with pytest.raises(DockerUnavailable) as e:
            await servers.status("bravo")
    assert str(e.value).startswith("Docker host 'two' is unreachable")
    assert "\n" not in str(e.value)
    async with asyncio.timeout(ANSWER):
        assert (await servers.status("alpha")).state == "running"
        states = {s.record.name: s.state for s in await servers.list_servers()}
    assert states == {"alpha": "running", "bravo": "unreachable", "charlie": "unreachable"}
    health = {h.name: h for h in await servers.host_health()}
    assert not health["two"].reachable and health["one"].reachable
    # New servers go where they can run; asking for the dead host is refused, leaving nothing.
    d = await servers.create("fakegame", "delta", {"world": "D"}, actor="test")
    assert d.host == "one"
    with pytest.raises(DockerUnavailable):
        await servers.create("fakegame", "echo", {"world": "E"}, actor="test", host="two")
    with pytest.raises(ServerNotFound):
        await svc2.store.get_server("echo")
    # A reconcile while it is down leaves its servers' records as they were.
    report = await servers.reconcile("test")
    assert report.missing == [] and any("two" in line for line in report.unreachable)
    assert (await svc2.store.get_server("bravo")).state.value == "running"

    # Back by itself, with no restart of PEON: the same services work again.
    engine2.start()
    async with asyncio.timeout(ANSWER):
        st = await servers.status("bravo")
    assert st.state == "exited"  # the engine stopped its containers when it went down
    await servers.start("bravo", actor="test")
    assert (await servers.status("bravo")).state == "running"
    assert on_engine(engine2.base_url, instance) == {"bravo", "charlie"}


async def test_placement_refuses_when_no_host_has_room(
    tmp_path: Path, engine2: SecondEngine, fakegame: str
) -> None:
    settings = two_hosts(make_settings(tmp_path), engine2)
    hosts = [h.model_copy(update={"memory": "100m"}) for h in settings.hosts]
    settings = settings.model_copy(update={"hosts": hosts})
    try:
        async with open_services(settings) as svc:
            await svc.servers.create("fakegame", "a1", {"world": "A"}, actor="test")
            await svc.servers.create("fakegame", "a2", {"world": "A"}, actor="test")
            with pytest.raises(NoHostFits) as e:
                await svc.servers.create("fakegame", "a3", {"world": "A"}, actor="test")
            assert str(e.value) == "No Docker host has 64 MiB of memory free for this server."
            assert await svc.store.find_server("a3") is None
    finally:
        cleanup_both(settings.instance_id, engine2)


async def test_engine_restart_under_a_running_bot(
    tmp_path: Path, emu: DiscordEmulator, engine2: SecondEngine
) -> None:
    settings = two_hosts(bot_settings(tmp_path, emu), engine2)
    try:
        async with running_bot(settings, emu):
            i = await slash(emu, ADMIN, "create", warplan="fakegame", name="gamma", host="two")
            # fakegame asks for its variables in a form first.
            assert i.modal is not None
            sub = await emu.submit_modal(
                ADMIN,
                i.modal["custom_id"],
                {"world": "G", "max_players": "4", "password": "", "difficulty": ""},
            )
            await sub.wait_done()
            assert "Host" in await finished(emu, sub, "Created gamma")
            assert on_engine(engine2.base_url, settings.instance_id) == {"gamma"}
            i = await slash(emu, PLAYER, "status", command="peon")
            text = await finished(emu, i, "two")
            assert "🟢 **one**" in text and "🟢 **two**" in text

            # In a thread: the bot shares this event loop and must not stall meanwhile.
            await asyncio.to_thread(engine2.stop)
            i = await slash(emu, PLAYER, "status", name="gamma")
            text = await finished(emu, i, "unreachable")
            assert text.startswith("Docker host 'two' is unreachable"), text
            i = await slash(emu, PLAYER, "list")
            assert "**gamma** · fakegame · unreachable" in await finished(emu, i, "gamma")
            assert "on two" in final_text(i)
            i = await slash(emu, PLAYER, "status", command="peon")
            assert "🔴 **two**: Docker host 'two' is unreachable" in await finished(emu, i, "🔴")

            await asyncio.to_thread(engine2.start)
            i = await slash(emu, OPERATOR, "start", name="gamma")
            await finished(emu, i, "ready")
    finally:
        if not engine2.answers():
            engine2.start()
        cleanup_both(settings.instance_id, engine2)


async def test_a_tls_host_is_reached_with_its_certificates_and_refused_without(
    tmp_path: Path, engine2: SecondEngine, fakegame: str
) -> None:
    t = engine2.tls_dir
    base = make_settings(tmp_path)
    pool = base.ports.pool_range.start + 6000
    hosts = [
        HostSettings(
            name="vps",
            base_url=engine2.tcp_url,
            public_address="127.0.0.1",
            pool=f"{pool}-{pool + 99}",
            tls=TLSSettings(
                ca_cert=t / "ca.pem", client_cert=t / "cert.pem", client_key=t / "key.pem"
            ),
        ),
        # The engine verifies clients: without a certificate of its CA it refuses the handshake.
        HostSettings(
            name="nocert", base_url=engine2.tcp_url, tls=TLSSettings(ca_cert=t / "ca.pem")
        ),
    ]
    settings = base.model_copy(update={"hosts": hosts})
    try:
        async with open_services(settings) as svc:
            health = {h.name: h for h in await svc.servers.host_health()}
            assert health["vps"].reachable
            assert not health["nocert"].reachable
            assert health["nocert"].error.startswith("Docker host 'nocert' is unreachable")
            record = await svc.servers.create(
                "fakegame", "secure", {"world": "T"}, actor="test", host="vps"
            )
            assert record.host == "vps"
            await svc.servers.start("secure", actor="test")
            assert (await svc.servers.status("secure")).state == "running"
            assert on_engine(engine2.base_url, settings.instance_id) == {"secure"}
    finally:
        cleanup_both(settings.instance_id, engine2)
