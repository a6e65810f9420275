"""Bad input and failures against the real engine: one clear error, nothing left behind."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import docker
import pytest

from bot.app import Services, open_services
from bot.errors import (
    ImageUnavailable,
    InvalidServerName,
    PortUnavailable,
    ServerBusy,
    ServerExists,
    ServerNotFound,
    StartFailed,
    VariableError,
    WarplanNotFound,
)
from bot.models import ServerState
from bot.warplans import WarplanLibrary
from tests.conftest import cleanup_instance, make_settings

pytestmark = pytest.mark.docker


def leftovers(client: docker.DockerClient, instance: str) -> tuple[list[str], list[str]]:
    flt = {"label": [f"io.peon.instance={instance}"]}
    return (
        [c.name for c in client.containers.list(all=True, filters=flt)],
        [v.name for v in client.volumes.list(filters=flt)],
    )


def write_plan(directory: Path, name: str, **replace: str) -> None:
    text = (Path(__file__).parent / "warplans" / "fakegame.yaml").read_text()
    text = text.replace("name: fakegame", f"name: {name}")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    (directory / f"{name}.yaml").write_text(text)


@pytest.mark.parametrize(
    ("name", "values", "error", "message"),
    [
        ("Bad_Name", {}, InvalidServerName, "not a valid server name"),
        ("a" * 33, {}, InvalidServerName, "not a valid server name"),
        ("", {}, InvalidServerName, "not a valid server name"),
        ("ok", {"max_players": "65"}, VariableError, "must be at most 64"),
        ("ok", {"max_players": "lots"}, VariableError, "must be a whole number"),
        ("ok", {"difficulty": "insane"}, VariableError, "must be one of easy, normal, hard"),
        ("ok", {"world": "a b"}, VariableError, "does not match the pattern"),
        ("ok", {"seed": "42"}, VariableError, "no such variable"),
    ],
)
async def test_bad_input_is_refused_and_leaves_nothing(
    services: Services,
    dclient: docker.DockerClient,
    name: str,
    values: dict[str, str],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        await services.servers.create("fakegame", name, values, actor="test")
    assert leftovers(dclient, services.settings.instance_id) == ([], [])
    assert await services.store.list_servers() == []
    assert await services.store.taken_ports() == set()
    refused = await services.store.audit_log()
    assert len(refused) == 1 and not refused[0].ok


async def test_unknown_warplan_and_server(services: Services) -> None:
    with pytest.raises(WarplanNotFound, match="no war plan named 'nope'"):
        await services.servers.create("nope", "x", actor="test")
    for call in (services.servers.start, services.servers.stop):
        with pytest.raises(ServerNotFound, match="no server named 'ghost'"):
            await call("ghost", actor="test")
    with pytest.raises(ServerNotFound):
        await services.servers.status("ghost")


async def test_duplicate_name_refused(services: Services) -> None:
    await services.servers.create("fakegame", "dup", actor="test")
    with pytest.raises(ServerExists, match="already exists"):
        await services.servers.create("fakegame", "dup", actor="test")


async def test_missing_image_names_it_and_rolls_back(
    services: Services, dclient: docker.DockerClient, tmp_path: Path
) -> None:
    write_plan(
        tmp_path,
        "ghostgame",
        **{"image: peon-test/fakegame:latest": "image: peon-test/does-not-exist:1.0"},
    )
    services.servers.warplans = WarplanLibrary(tmp_path)
    with pytest.raises(ImageUnavailable, match="peon-test/does-not-exist:1.0"):
        await services.servers.create("ghostgame", "ghost", actor="test")
    assert leftovers(dclient, services.settings.instance_id) == ([], [])
    assert await services.store.list_servers() == []


async def test_failure_after_volumes_rolls_back_ours_and_spares_others(
    services: Services, dclient: docker.DockerClient
) -> None:
    """The engine refuses the container (its name is taken by a non-PEON container) after the
    volume was made: the volume, record and ports go; the foreign container is untouched."""
    foreign = dclient.containers.create("peon-test/fakegame:latest", name="peon-bad")
    try:
        with pytest.raises(Exception, match="(?i)conflict|already in use"):
            await services.servers.create("fakegame", "bad", actor="test")
        assert leftovers(dclient, services.settings.instance_id) == ([], [])
        assert await services.store.list_servers() == []
        assert await services.store.taken_ports() == set()
        assert dclient.containers.get("peon-bad").id == foreign.id
    finally:
        foreign.remove(force=True)


async def test_fixed_port_held_by_another_process_is_refused(
    services: Services, dclient: docker.DockerClient, tmp_path: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        write_plan(
            tmp_path,
            "fixedgame",
            **{
                "    container: 7777\n    protocol: tcp\n    host: auto": (
                    f"    container: 7777\n    protocol: tcp\n    host: {port}"
                )
            },
        )
        services.servers.warplans = WarplanLibrary(tmp_path)
        with pytest.raises(PortUnavailable, match=f"Port {port}/tcp"):
            await services.servers.create("fixedgame", "fixed", actor="test")
    assert leftovers(dclient, services.settings.instance_id) == ([], [])


async def test_two_servers_never_share_ports_and_pool_exhaustion(
    tmp_path: Path, fakegame: str, dclient: docker.DockerClient
) -> None:
    settings = make_settings(tmp_path)
    base = settings.ports.pool_range.start
    settings = settings.model_copy(
        update={"ports": settings.ports.model_copy(update={"pool": f"{base}-{base + 3}"})}
    )
    try:
        async with open_services(settings) as svc:
            a, b = await asyncio.gather(
                svc.servers.create("fakegame", "one", actor="test"),
                svc.servers.create("fakegame", "two", actor="test"),
            )
            used = [(p.host, p.protocol) for p in (*a.ports, *b.ports)]
            assert len(set(used)) == 4
            # tcp and udp are separate spaces: 2 tcp + 2 udp fill a pool of 4 ports per protocol
            # only halfway; two more servers fill it, the next is refused and leaves nothing.
            await svc.servers.create("fakegame", "three", actor="test")
            await svc.servers.create("fakegame", "four", actor="test")
            with pytest.raises(PortUnavailable, match="No free tcp port"):
                await svc.servers.create("fakegame", "five", actor="test")
            assert await svc.store.find_server("five") is None
            assert "peon-five" not in leftovers(dclient, settings.instance_id)[0]
    finally:
        cleanup_instance(settings.instance_id)


async def test_second_operation_is_refused_as_busy(services: Services) -> None:
    servers = services.servers
    await servers.create("fakegame", "busy", actor="test")
    first = asyncio.create_task(servers.start("busy", actor="test"))
    await asyncio.sleep(0.2)
    with pytest.raises(ServerBusy, match="busy \\(start in progress\\)"):
        await servers.stop("busy", actor="test")
    await first
    await servers.stop("busy", actor="test")


async def test_crash_on_start_reports_logs(services: Services, tmp_path: Path) -> None:
    write_plan(
        tmp_path,
        "crashgame",
        **{"  DATA_DIR: /data\n": "  DATA_DIR: /data\n  CRASH_ON_START: no license\n"},
    )
    services.servers.warplans = WarplanLibrary(tmp_path)
    await services.servers.create("crashgame", "crashy", actor="test")
    with pytest.raises(StartFailed, match="exited with code 3") as info:
        await services.servers.start("crashy", actor="test")
    assert any("fatal: no license" in line for line in info.value.logs)
    assert (await services.store.get_server("crashy")).state == ServerState.STOPPED


async def test_ready_timeout_is_reported(services: Services, tmp_path: Path) -> None:
    write_plan(
        tmp_path,
        "slowgame",
        **{
            "  DATA_DIR: /data\n": "  DATA_DIR: /data\n  READY_DELAY: '30'\n",
            "  timeout: 30\n": "  timeout: 2\n",
        },
    )
    services.servers.warplans = WarplanLibrary(tmp_path)
    await services.servers.create("slowgame", "slow", actor="test")
    with pytest.raises(StartFailed, match="not ready after 2 s"):
        await services.servers.start("slow", actor="test")


async def test_start_recreates_a_container_removed_outside_peon(
    services: Services, dclient: docker.DockerClient
) -> None:
    await services.servers.create("fakegame", "phoenix", actor="test")
    dclient.containers.get("peon-phoenix").remove(force=True)
    report = await services.servers.reconcile()
    assert report.missing == ["phoenix"]
    assert (await services.store.get_server("phoenix")).state == ServerState.MISSING
    await services.servers.start("phoenix", actor="test")
    assert dclient.containers.get("peon-phoenix").status == "running"


async def test_reconcile_adopts_labelled_container_without_record(
    services: Services, dclient: docker.DockerClient, tmp_path: Path
) -> None:
    record = await services.servers.create("fakegame", "stray", {"world": "Lost"}, actor="test")
    # Lose the database, as if the data dir had been wiped: the labelled container remains.
    await services.store.delete_server("stray")
    report = await services.servers.reconcile()
    assert report.adopted == ["stray"]
    adopted = await services.store.get_server("stray")
    assert adopted.ports == record.ports
    assert adopted.variables["world"] == "Lost"
    # An unknown plan cannot be adopted: reported, never deleted.
    await services.store.delete_server("stray")
    services.servers.warplans = WarplanLibrary(tmp_path)
    report = await services.servers.reconcile()
    assert report.orphans == ["peon-stray"]
    assert dclient.containers.get("peon-stray")


async def test_reconcile_rolls_back_a_create_interrupted_by_a_crash(
    services: Services, dclient: docker.DockerClient
) -> None:
    """A create whose process died after writing the record and volume: rolled back."""
    from bot import labels
    from bot.models import PortBinding
    from bot.store import Store

    crashed = Store(services.settings.db_path)
    await crashed.open()
    crashed.owner = "ghost-host-that-is-this-host:999999:dead"
    crashed.owner = f"{socket.gethostname()}:999999:dead"  # a pid that cannot be alive
    await crashed.create_server(
        name="halfway",
        warplan="fakegame",
        image="x",
        variables={},
        ports=[PortBinding("game", 7777, "tcp", 45001)],
        created_by="test",
    )
    await crashed.update_server("halfway", pending_volumes=["peon-halfway-world"])
    await crashed.close()
    dclient.volumes.create(
        "peon-halfway-world",
        labels=labels.volume_labels(services.settings.instance_id, "halfway", "fakegame", "world"),
    )
    report = await services.servers.reconcile()
    assert report.rolled_back == ["halfway"]
    assert await services.store.find_server("halfway") is None
    assert leftovers(dclient, services.settings.instance_id) == ([], [])
    assert await services.store.taken_ports() == set()
