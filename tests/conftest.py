from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from bot.app import Services, open_services
from bot.settings import DockerSettings, PortSettings, Settings
from tests.discord_emulator import DiscordEmulator
from tests.engine import FAKEGAME_IMAGE, build_fakegame, ensure_engine, random_pool_base
from tests.images import Images

ROOT = Path(__file__).resolve().parent.parent
TEST_WARPLANS = Path(__file__).parent / "warplans"
ADMIN, OPERATOR, PLAYER, NOBODY = 42, 43, 44, 45  # Discord members of the emulated guild


@pytest.fixture(scope="session")
def engine() -> None:
    ensure_engine()


@pytest.fixture(scope="session")
def fakegame(engine: None) -> str:
    return build_fakegame(FAKEGAME_IMAGE)


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    # A random pool per test: leftovers of an earlier run can never collide with this one.
    base = random_pool_base()
    data = {
        "instance_id": f"t{uuid.uuid4().hex[:10]}",
        "data_dir": tmp_path / "data",
        "warplans_dir": TEST_WARPLANS,
        "docker": DockerSettings(public_address="127.0.0.1"),
        # Tests publish on loopback only (network rule in shared/TESTING.md).
        "ports": PortSettings(pool=f"{base}-{base + 99}", bind_address="127.0.0.1"),
        "source": "(tests)",
    }
    data.update(overrides)
    return Settings(**data)  # type: ignore[arg-type]


def fakegame_variant(tmp_path: Path, **changes: Any) -> Path:
    """A war plans folder holding the test plan `fakegame` with top-level `changes` (image,
    env, save, resources...), for tests of how PEON runs a plan of another shape."""
    plan = yaml.safe_load((TEST_WARPLANS / "fakegame.yaml").read_text())
    plan.update(changes)
    folder = tmp_path / "warplans"
    folder.mkdir()
    (folder / "fakegame.yaml").write_text(yaml.safe_dump(plan))
    return folder


def config_file(settings: Settings, path: Path) -> Path:
    """The same settings as a config file for the `peon` CLI."""
    data = settings.model_dump(mode="json", exclude={"source"}, exclude_none=True)
    path.write_text(yaml.safe_dump(data))
    return path


def peon(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The `peon` CLI as its own process, with `config`."""
    env = {**os.environ, "PEON_CONFIG": str(config)}
    env.pop("DISCORD_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip


def cleanup_instance(instance: str, base_url: str | None = None) -> None:
    client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
    flt = {"label": [f"io.peon.instance={instance}"]}
    for c in client.containers.list(all=True, filters=flt):
        c.remove(force=True)
    for v in client.volumes.list(filters=flt):
        v.remove(force=True)
    client.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@asynccontextmanager
async def services_for(settings: Settings) -> AsyncIterator[Services]:
    """Services on real parts; the instance's containers and volumes removed afterwards."""
    try:
        async with open_services(settings) as svc:
            yield svc
    finally:
        cleanup_instance(settings.instance_id)


@pytest.fixture
async def services(settings: Settings, fakegame: str) -> AsyncIterator[Services]:
    async with services_for(settings) as svc:
        yield svc


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts small tmpfs disks (a backup disk that fills up): `tmpfs("2m")` -> its path.
    Needs root (CI runs as root); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        path = tmp_path / f"tmpfs-{len(mounted)}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "peon-test", str(path)],
                       check=True)  # fmt: skip
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def images(engine: None) -> Iterator[Images]:
    """Builds and pulls test images; removes exactly the references it made."""
    client = docker.from_env()
    made = Images(client)
    yield made
    made.cleanup()
    client.close()


@pytest.fixture
def dclient(engine: None) -> docker.DockerClient:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    """The Discord emulator on loopback, with one member per PEON role and one without."""
    e = DiscordEmulator()
    await e.start()
    e.add_member(ADMIN, "ada", [e.roles["admin"]])
    e.add_member(OPERATOR, "otto", [e.roles["operator"]])
    e.add_member(PLAYER, "pia", [e.roles["player"]])
    e.add_member(NOBODY, "nemo", [])
    yield e
    await e.close()
    assert e.errors == []
    # The bot broke none of Discord's rules (deadline, token lifetime, sizes, permissions...).
    assert [r for r in e.rejected if r[1] not in e.expected_codes] == []
