"""Image VOLUMEs a plan does not name, on the real engine: PEON names them per server, so
create, start, update and delete leave no anonymous volume behind and lose no data."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from bot.errors import DockerError
from bot.servers import image_volume_id
from tests.conftest import fakegame_variant, make_settings, services_for
from tests.engine import fakegame_context

UNDECLARED = ["/cache", "/var/lib/game"]  # declared by the image, not by the plan
# Declared by the image too, spelled with a trailing slash (7 Days to Die's image does): the
# plan's /data volume covers it, and no second mount may be made there.
DECLARED = ["/data/"]


@pytest.fixture
def volume_image(engine: None) -> Iterator[str]:
    """The fake game with two VOLUMEs of its own (FROM scratch + static busybox)."""
    client = docker.from_env(timeout=120)
    tag = f"peon-test/volumes:{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory() as ctx:
        fakegame_context(Path(ctx))
        with (Path(ctx) / "Dockerfile").open("a") as dockerfile:
            dockerfile.write("".join(f"VOLUME {p}\n" for p in [*UNDECLARED, *DECLARED]))
        client.images.build(path=ctx, tag=tag, rm=True, forcerm=True)
    try:
        yield tag
    finally:
        client.images.remove(tag, force=True)
        client.close()


def mounts(client: docker.DockerClient, server: str) -> dict[str, str]:
    (ctr,) = client.containers.list(all=True, filters={"label": f"io.peon.server={server}"})
    return {m["Destination"]: m["Name"] for m in ctr.attrs["Mounts"] if m["Type"] == "volume"}


@pytest.mark.docker
async def test_undeclared_image_volumes_are_named_kept_across_update_and_purged(
    tmp_path: Path, volume_image: str
) -> None:
    folder = fakegame_variant(tmp_path, image=volume_image)
    settings = make_settings(tmp_path, warplans_dir=folder)
    name = f"iv{uuid.uuid4().hex[:8]}"
    client = docker.from_env()
    async with services_for(settings) as svc:
        await svc.servers.create("fakegame", name, {}, actor="test")
        first = mounts(client, name)
        expected = {p: f"peon-{name}-{image_volume_id(p)}" for p in UNDECLARED}
        assert first == {"/data": f"peon-{name}-world", **expected}  # nothing anonymous
        for vol in first.values():
            labels = client.volumes.get(vol).attrs["Labels"]
            assert labels["io.peon.instance"] == settings.instance_id
            assert labels["io.peon.server"] == name

        await svc.servers.start(name, actor="test")
        record = await svc.store.get_server(name)
        info = await svc.servers.container_of(record)
        assert info is not None
        code, out = await svc.driver.exec(
            info.id, ["sh", "-c", "echo kept > /cache/f && echo kept > /var/lib/game/f"]
        )
        assert code == 0, out

        result = await svc.servers.update(name, actor="test", pull=False)
        assert result.restarted
        assert mounts(client, name) == first  # the same volumes, reattached
        info = await svc.servers.container_of(await svc.store.get_server(name))
        assert info is not None and info.running
        code, out = await svc.driver.exec(info.id, ["cat", "/cache/f", "/var/lib/game/f"])
        assert (code, out.split()) == (0, ["kept", "kept"])  # no data lost

        # Deleted, the data stays like the plan's own volumes; creating again reattaches it.
        deleted = await svc.servers.delete(name, actor="test")
        assert set(deleted.kept_volumes) == set(first.values())
        await svc.servers.create("fakegame", name, {}, actor="test")
        await svc.servers.start(name, actor="test")
        info = await svc.servers.container_of(await svc.store.get_server(name))
        assert info is not None
        code, out = await svc.driver.exec(info.id, ["cat", "/cache/f"])
        assert (code, out.strip()) == (0, "kept")

        purged = await svc.servers.delete(name, actor="test", purge=True)
        assert set(purged.removed_volumes) == set(first.values())
        for vol in first.values():
            with pytest.raises(docker.errors.NotFound):
                client.volumes.get(vol)
    client.close()


@pytest.mark.docker
async def test_a_failed_create_removes_the_image_volumes_it_made(
    tmp_path: Path, volume_image: str
) -> None:
    # 6m: valid for the plan, then refused below
    folder = fakegame_variant(tmp_path, image=volume_image, resources={"memory": "6m"})
    settings = make_settings(tmp_path, warplans_dir=folder)
    name = f"iv{uuid.uuid4().hex[:8]}"
    client = docker.from_env()
    async with services_for(settings) as svc:
        original = svc.driver.create_container

        async def refuse(spec: object) -> str:
            raise RuntimeError("engine refused")

        svc.driver.create_container = refuse  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            await svc.servers.create("fakegame", name, {}, actor="test")
        svc.driver.create_container = original  # type: ignore[method-assign]
        left = client.volumes.list(filters={"label": f"io.peon.server={name}"})
        assert left == []
    client.close()


@pytest.mark.docker
async def test_a_create_refused_over_another_instances_volume_leaves_that_volume(
    tmp_path: Path, fakegame: str
) -> None:
    """Two PEON instances on one engine: B's create of a name whose kept volume belongs to A
    is refused, and its rollback must not remove A's data."""
    name = f"iv{uuid.uuid4().hex[:8]}"
    client = docker.from_env()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with services_for(make_settings(tmp_path / "a")) as a:
        await a.servers.create("fakegame", name, {}, actor="test")
        await a.servers.delete(name, actor="test")  # the data is kept
        kept = client.volumes.get(f"peon-{name}-world")
        async with services_for(make_settings(tmp_path / "b")) as b:
            with pytest.raises(DockerError, match="does not belong to this server"):
                await b.servers.create("fakegame", name, {}, actor="test")
        kept.reload()  # still there, with A's labels
        assert kept.attrs["Labels"]["io.peon.instance"] == a.settings.instance_id
    client.close()
