"""A backup's save step on the real engine: `done` is honoured for exec saves too (on the
command's output or the log), and `after` (Minecraft's save-on) runs after the archive, also
when the save is not confirmed."""

from __future__ import annotations

import io
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from bot.app import Services
from bot.errors import BackupError
from tests.conftest import fakegame_variant, make_settings, services_for

FLAG = "/data/autosave"
SAVE_OFF = ["sh", "-c", f"echo off > {FLAG}"]
SAVE_ON = ["sh", "-c", f"echo on > {FLAG}"]
# Container and volume names are engine-wide: unique per run, beside other tests' servers.
NAME = f"sc{uuid.uuid4().hex[:8]}"


def plan_dir(tmp_path: Path, save: dict[str, Any]) -> Path:
    return fakegame_variant(tmp_path, save=save)


async def game(tmp_path: Path, save: dict[str, Any]) -> AsyncIterator[Services]:
    settings = make_settings(tmp_path, warplans_dir=plan_dir(tmp_path, save))
    async with services_for(settings) as svc:
        await svc.servers.create("fakegame", NAME, {}, actor="test")
        await svc.servers.start(NAME, actor="test")
        yield svc


async def flag(svc: Services) -> str:
    info = await svc.servers.container_of(await svc.store.get_server(NAME))
    assert info is not None
    code, out = await svc.driver.exec(info.id, ["cat", FLAG])
    assert code == 0, out
    return out.strip()


def archived(svc: Services, backup_dir: str, member: str) -> str:
    path = next((svc.settings.backup_dir / backup_dir).glob("world*"))
    raw = zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        f = tar.extractfile(member)
        assert f is not None
        return f.read().decode().strip()


@pytest.mark.docker
async def test_exec_save_confirmed_by_output_archives_with_autosave_off_then_turns_it_on(
    tmp_path: Path, fakegame: str
) -> None:
    save = {
        "mode": "exec",
        "command": ["sh", "-c", f"echo off > {FLAG}; echo 'Saved the game'"],
        "done": "Saved the game",
        "after": SAVE_ON,
        "timeout": 10,
    }
    async for svc in game(tmp_path, save):
        b = await svc.backups.create(NAME, actor="test")
        assert archived(svc, b.dir, "data/autosave") == "off"  # archived while saving was off
        assert await flag(svc) == "on"  # and turned back on afterwards


@pytest.mark.docker
async def test_exec_save_waits_for_done_in_the_log(tmp_path: Path, fakegame: str) -> None:
    # The confirmation comes later, on the server's own log (PID 1's stdout), not the output.
    late = "(sleep 2; echo 'World flushed') > /proc/1/fd/1 &"
    save = {"mode": "exec", "command": ["sh", "-c", late], "done": "World flushed", "timeout": 15}
    async for svc in game(tmp_path, save):
        b = await svc.backups.create(NAME, actor="test")
        assert b.complete
        logs = await svc.servers.logs(NAME, 50)
        assert any("World flushed" in line for line in logs)


@pytest.mark.docker
async def test_unconfirmed_exec_save_makes_no_backup_and_still_runs_after(
    tmp_path: Path, fakegame: str
) -> None:
    # Before, an exec save ignored `done`: this backup would have been made unconfirmed.
    save = {"mode": "exec", "command": SAVE_OFF, "done": "never printed", "after": SAVE_ON,
            "timeout": 2}  # fmt: skip
    async for svc in game(tmp_path, save):
        with pytest.raises(BackupError, match="did not confirm its save within 2 s"):
            await svc.backups.create(NAME, actor="test")
        assert await svc.backups.list(NAME) == []
        assert await flag(svc) == "on"  # autosave is not left off by a failed backup


@pytest.mark.docker
async def test_console_save_with_after_line(tmp_path: Path, fakegame: str) -> None:
    save = {"mode": "console", "command": "save", "done": "World saved", "after": "say save-on",
            "timeout": 10}  # fmt: skip
    async for svc in game(tmp_path, save):
        await svc.backups.create(NAME, actor="test")
        logs = await svc.servers.logs(NAME, 50)
        saved = max(i for i, line in enumerate(logs) if "World saved" in line)
        assert any("Broadcast: save-on" in line for line in logs[saved:]), logs
