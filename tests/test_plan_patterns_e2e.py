"""Patterns the shipped war plans rely on, on the real engine with the fake game:

- an image whose PID 1 is a shell without a trap (CS2, TF2, Abiotic Factor) drops SIGTERM, so
  the game is never told to save; `stop.exec: kill -TERM -1` reaches it;
- a configuration whose player count is known to be wrong (Valheim with crossplay) is never
  counted, and an idle schedule for it is refused with the plan's reason.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.app import Services
from bot.automation import Automation
from bot.scheduler import Scheduler
from bot.schedules import ScheduleError
from tests.conftest import TEST_WARPLANS, make_settings, services_for

# PID 1 is a shell that runs the game as a child and traps nothing, like `bash entry.sh`.
SHELL_PID1 = ["/bin/sh", "-c", "sh /game.sh; echo wrapper done"]
UNCOUNTED = "Hard mode hides its players from the query."


@asynccontextmanager
async def game_with(tmp_path: Path, **changes: Any) -> AsyncIterator[Services]:
    plan = yaml.safe_load((TEST_WARPLANS / "fakegame.yaml").read_text())
    plan.update(changes)
    folder = tmp_path / "warplans"
    folder.mkdir()
    (folder / "fakegame.yaml").write_text(yaml.safe_dump(plan))
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
