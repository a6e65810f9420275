"""The container image and the compose example read as text: the rules a linter such as
hadolint applies, and that the files agree with each other and with PEON's settings.
tests/test_image.py builds the image and runs it."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from bot.settings import Settings
from tests.conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENTRYPOINT = ROOT / "scripts" / "docker-entrypoint.sh"
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_base_images_are_slim_and_pinned() -> None:
    # `ARG BASE=...` before the first FROM: the default is the official image, which a build
    # may replace (tests/test_image.py passes a local stand-in when no registry answers).
    defaults = dict(
        args.split("=", 1) for op, args in instructions() if op == "ARG" and "=" in args
    )
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], args.split()[0])
        for op, args in instructions()
        if op == "FROM"
    ]
    assert bases and all(b.startswith("python:3.11-slim-") for b in bases), bases
    assert not any(b.endswith(":latest") or ":" not in b for b in bases)


def test_runs_unprivileged_with_a_healthcheck_through_peon_check() -> None:
    ops = instructions()
    assert ("ENTRYPOINT", '["docker-entrypoint"]') in ops
    health = [args for op, args in ops if op == "HEALTHCHECK"]
    assert len(health) == 1 and health[0].endswith('CMD ["docker-entrypoint", "check"]')
    script = ENTRYPOINT.read_text()
    # Privileges are dropped before PEON runs, for `run` and the healthcheck alike.
    assert script.rstrip().endswith(
        'exec setpriv --reuid=peon --regid=peon --init-groups -- peon "$@"'
    )
    assert "stat -c %g" in script  # joins the socket's group instead of running as root
    assert not any(op == "USER" and args in ("root", "0") for op, args in ops)
    assert any(op == "RUN" and "useradd" in args and "peon" in args for op, args in ops)


def test_entrypoint_is_valid_posix_sh() -> None:
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-s", "sh", str(ENTRYPOINT)], check=True)
    assert ENTRYPOINT.stat().st_mode & 0o111, "the entrypoint must be executable"


def test_no_remote_adds_no_pip_cache_and_sources_copied() -> None:
    ops = instructions()
    assert not any(op == "ADD" for op, _ in ops)  # COPY only: nothing fetched at build time
    assert "PIP_NO_CACHE_DIR=1" in DOCKERFILE
    copied = " ".join(args for op, args in ops if op == "COPY")
    for part in ("bot", "cogs", "pyproject.toml", "warplans", "scripts/docker-entrypoint.sh"):
        assert part in copied


def test_compose_mounts_the_socket_and_a_data_volume_and_keeps_the_token_out() -> None:
    peon = COMPOSE["services"]["peon"]
    volumes = peon["volumes"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in volumes
    data = [v for v in volumes if v.endswith(":/data")]
    assert data and data[0].split(":")[0] in COMPOSE["volumes"]
    token = peon["environment"]["DISCORD_TOKEN"]
    assert token.startswith("${DISCORD_TOKEN"), "the token comes from the environment only"
    assert peon["restart"] == "unless-stopped"


def test_stop_grace_covers_the_shutdown_grace() -> None:
    grace = COMPOSE["services"]["peon"]["stop_grace_period"]
    seconds = int(grace.removesuffix("s"))
    assert seconds > Settings().shutdown_grace


@pytest.mark.parametrize("path", ["tests", ".git", "data", ".env"])
def test_build_context_leaves_out_what_the_image_does_not_need(path: str) -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert path in ignored
