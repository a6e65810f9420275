"""`peon warplan validate` as a plan author runs it: warnings for risky patterns, the count of
unverified facts, and --strict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

RISKY = {
    "name": "risky",
    "title": "Risky",
    "image": "vendor/game",
    "ports": [{"name": "rcon", "container": 27015}],
    "variables": [{"name": "rcon_password", "env": "RCON_PASSWORD", "default": "changeme"}],
    "volumes": [{"name": "data", "path": "/data"}],
    "save": {"mode": "console", "command": "save"},
}


def validate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "peon.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    env = {**os.environ, "PEON_CONFIG": str(config)}
    env.pop("DISCORD_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "warplan", "validate", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_shipped_plans_validate_without_warnings_and_count_what_is_unverified(
    tmp_path: Path,
) -> None:
    r = validate(tmp_path, "--strict", str(ROOT / "warplans"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning:" not in r.stdout
    assert r.stdout.count("ok: ") >= 30
    assert "warplans/factorio.yaml (Factorio, 2 unverified)" in r.stdout


def test_risky_plan_is_warned_and_strict_fails(tmp_path: Path) -> None:
    plan = tmp_path / "risky.yaml"
    plan.write_text(yaml.safe_dump(RISKY))
    r = validate(tmp_path, str(plan))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stdout.splitlines() if line.startswith("warning: ")]
    expected = [
        "image: 'vendor/game' follows 'latest'",
        "variables.rcon_password: a remote-admin password has a default",
        "ports.rcon: a remote-admin port is published",
        "save: no 'done' regex",
        "env RCON_PASSWORD: the plan's evidence does not show the image reading it",
    ]
    for text in expected:
        assert any(text in w for w in warnings), (text, warnings)
    assert all(w.startswith(f"warning: {plan}: ") for w in warnings)
    assert validate(tmp_path, "--strict", str(plan)).returncode == 1
