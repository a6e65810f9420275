"""The `peon` CLI as a user runs it: a real subprocess, real engine, real SQLite file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.store import MIGRATIONS
from tests.conftest import ROOT, TEST_WARPLANS, cleanup_instance, make_settings
from tests.test_import_peon import PEON_VALHEIM


@pytest.fixture
def peon(tmp_path: Path):
    settings = make_settings(tmp_path)
    config = tmp_path / "peon.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "instance_id": settings.instance_id,
                "data_dir": str(tmp_path / "data"),
                "warplans_dir": str(TEST_WARPLANS),
                "docker": {"public_address": "127.0.0.1"},
                "ports": {"pool": settings.ports.pool, "bind_address": "127.0.0.1"},
            }
        )
    )

    def run(
        *args: str, stdin: str = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "PEON_CONFIG": str(config), **(env or {})}
        full_env.pop("DISCORD_TOKEN", None)
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=full_env,
            cwd=ROOT,
            timeout=120,
            check=False,
        )

    yield run
    cleanup_instance(settings.instance_id)


@pytest.mark.docker
def test_cli_lifecycle(peon, fakegame: str) -> None:
    r = peon(
        "server",
        "create",
        "fakegame",
        "cli-one",
        "--set",
        "world=Cli",
        "--set",
        "password=pw-never-printed",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("created cli-one from fakegame (ports: game ")
    r = peon("server", "start", "cli-one")
    assert r.returncode == 0, r.stderr
    assert "cli-one is ready at 127.0.0.1:" in r.stdout
    assert "cli-one: waiting for ready" in r.stderr
    r = peon("server", "list")
    assert r.returncode == 0 and re.search(
        r"^cli-one +fakegame +running +\d+/tcp,\d+/udp$", r.stdout, re.M
    )
    r = peon("server", "status", "cli-one")
    assert r.returncode == 0
    assert re.search(r"^state +running$", r.stdout, re.M)
    assert re.search(r"^var world +Cli$", r.stdout, re.M)
    assert re.search(r"^memory +\d+ MiB / 64 MiB$", r.stdout, re.M)
    assert "pw-never-printed" not in r.stdout + r.stderr
    r = peon("server", "logs", "cli-one", "-n", "5")
    assert "Server ready for players" in r.stdout
    r = peon("server", "start", "cli-one")
    assert r.returncode == 0 and "already running" in r.stdout
    r = peon("server", "stop", "cli-one")
    assert r.returncode == 0 and r.stdout == "cli-one stopped\n"
    # A plan without an install step is refused before any confirmation is asked for.
    r = peon("server", "reinstall", "cli-one")
    assert r.returncode == 1
    assert r.stderr == (
        "peon: War plan 'fakegame' has no install step, so 'cli-one' has nothing to reinstall.\n"
    )
    # Deleting needs confirmation: no terminal and no --yes is refused, nothing happens.
    r = peon("server", "delete", "cli-one")
    assert r.returncode == 1
    assert r.stderr == "peon: Refusing to delete without confirmation: pass --yes.\n"
    r = peon("server", "delete", "cli-one", "--purge", "--yes")
    assert r.returncode == 0 and "deleted cli-one and its volumes peon-cli-one-world" in r.stdout
    r = peon("server", "audit", "cli-one")
    assert r.returncode == 0
    lines = r.stdout.splitlines()[1:]
    assert [line.split()[3] for line in lines] == ["purge", "stop", "start", "start", "create"]
    assert "failed: Refusing" not in r.stdout  # a refusal at the edge never reached the core


@pytest.mark.docker
@pytest.mark.parametrize(
    ("args", "code", "stderr"),
    [
        (
            ("server", "create", "fakegame", "Bad_Name"),
            1,
            "peon: 'Bad_Name' is not a valid server name: use 1-32 characters from a-z, 0-9 "
            "and '-', starting with a letter or digit.\n",
        ),
        (
            ("server", "create", "fakegame", "x", "--set", "max_players=99"),
            1,
            "peon: Variable 'max_players': must be at most 64.\n",
        ),
        (("server", "create", "fakegame", "x", "--set", "novalue"), 2, None),
        (("server", "start", "ghost"), 1, "peon: There is no server named 'ghost'.\n"),
        (("server", "frobnicate", "x"), 2, None),
    ],
)
def test_cli_errors_are_one_line_with_exit_codes(
    peon, fakegame: str, args: tuple[str, ...], code: int, stderr: str | None
) -> None:
    r = peon(*args)
    assert r.returncode == code, r.stderr
    if stderr is not None:
        assert r.stderr == stderr
    assert "Traceback" not in r.stderr
    assert peon("server", "list").stdout.count("\n") <= 1  # only the header: nothing created


def test_cli_warplans(peon, tmp_path: Path) -> None:
    r = peon("warplan", "list")
    assert r.returncode == 0 and "fakegame  Fake Game  peon-test/fakegame:latest" in r.stdout
    r = peon("warplan", "show", "fakegame")
    assert r.returncode == 0 and yaml.safe_load(r.stdout)["name"] == "fakegame"
    r = peon("warplan", "validate", str(ROOT / "warplans"))
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("ok: ") >= 10
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntitle: Bad\nimage: x\nports:\n  - name: g\n    container: 0\n")
    r = peon("warplan", "validate", str(bad))
    assert r.returncode == 1
    assert r.stderr == (f"peon: {bad}: ports[0].container: must be between 1 and 65535 or 'host'\n")
    r = peon("warplan", "schema")
    assert json.loads(r.stdout)["title"] == "PEON war plan"


def test_cli_imports_peon_plan(peon, tmp_path: Path) -> None:
    src = tmp_path / "valheim" / "plan.json"
    src.parent.mkdir()
    src.write_text(json.dumps(PEON_VALHEIM))
    out = tmp_path / "valheim.yaml"
    r = peon("warplan", "import", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "not mapped: ports[1:]: 2 alternative port group(s) not used" in r.stderr
    assert r.stdout == f"wrote {out} (war plan 'valheim')\n"
    assert peon("warplan", "validate", str(out)).returncode == 0
    r = peon("warplan", "import", str(src), "-o", str(out))
    assert r.returncode == 1 and "already exists" in r.stderr


@pytest.mark.docker
def test_cli_check(peon, engine: None) -> None:
    r = peon("check")
    assert r.returncode == 0, r.stdout
    lines = r.stdout.splitlines()
    assert lines[0].startswith("config: ok")
    assert lines[1].startswith("warplans: ok (1 loaded")
    assert lines[2].startswith("database: ok") and f"schema v{len(MIGRATIONS)}" in lines[2]
    assert lines[3].startswith("docker: ok (Docker ")
    assert lines[4] == "discord token: not set (needed by 'peon run')"


def test_cli_check_reports_unreachable_docker(peon) -> None:
    r = peon("check", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert r.returncode == 1
    docker_line = next(line for line in r.stdout.splitlines() if line.startswith("docker:"))
    assert docker_line.startswith("docker: The Docker engine is unreachable")


def test_cli_run_without_token_says_how_to_get_one(peon) -> None:
    r = peon("run")
    assert r.returncode == 1
    assert r.stderr.startswith("peon: DISCORD_TOKEN is not set: create an application at ")
    assert r.stderr.count("\n") == 1


@pytest.mark.docker
def test_cli_schedule_list(peon, tmp_path: Path, fakegame: str) -> None:
    import asyncio

    from bot import rules
    from bot.store import Store

    assert peon("server", "create", "fakegame", "sched", "--set", "world=S").returncode == 0

    async def add() -> None:
        store = Store(tmp_path / "data" / "peon.db")
        await store.open()
        try:
            spec = rules.window_spec("weekdays", "18:00", "23:30", "Europe/Berlin")
            await store.add_schedule("sched", "window", spec, "discord:42")
            cron = rules.cron_spec("0 4 * * *", "UTC", "restart", None, True)
            s = await store.add_schedule("sched", "cron", cron, "discord:42")
            await store.set_schedule_paused(s.id, True)
        finally:
            await store.close()

    asyncio.run(add())
    r = peon("schedule", "list")
    assert r.returncode == 0, r.stderr
    assert re.search(
        r"^1 +sched +uptime window weekdays 18:00-23:30 Europe/Berlin +(start|stop) "
        r"\w{3} \d\d \w{3} \d\d:\d\d Europe/Berlin",
        r.stdout,
        re.M,
    ), r.stdout
    paused = r"^2 +sched +restart at cron `0 4 \* \* \*` UTC \(only when running\) +paused$"
    assert re.search(paused, r.stdout, re.M), r.stdout
    r = peon("schedule", "list", "ghost")
    assert r.returncode == 1 and r.stderr == "peon: There is no server named 'ghost'.\n"


@pytest.mark.docker
def test_cli_backup_create_list_restore(peon, fakegame: str) -> None:
    assert peon("server", "create", "fakegame", "bk", "--set", "world=B").returncode == 0
    assert peon("server", "start", "bk").returncode == 0
    r = peon("backup", "create", "bk")
    assert r.returncode == 0, r.stderr
    assert re.match(r"^backup #1 of bk: [\d.]+ MiB in [\d.]+ s$", r.stdout)
    r = peon("backup", "list")
    # ... TRIGGER, LOCKED (blank), ADDED (blank: a full copy), STORED IN (files: .tar.zst)
    row = r"^1 +bk +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +[\d.]+ MiB +[\d.]+ s +manual +files$"
    assert re.search(row, r.stdout, re.M), r.stdout
    r = peon("backup", "restore", "bk", "1")  # no terminal: refuses without --yes
    assert r.returncode == 1
    assert r.stderr == "peon: Refusing to restore without confirmation: pass --yes.\n"
    r = peon("backup", "restore", "bk", "1", "--yes")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "restored bk from backup #1; the data before it is backup #2\n"
    assert peon("backup", "lock", "1").stdout == "backup #1 locked\n"
    r = peon("backup", "delete", "1")
    assert r.returncode == 1 and r.stderr == "peon: Backup #1 is locked; unlock it first.\n"
    r = peon("backup", "restore", "bk", "99", "--yes")
    assert r.returncode == 1 and r.stderr == "peon: There is no backup #99.\n"
