"""Real Docker Engine for the tests: reuse one that answers, else start dockerd."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import docker.errors

FAKEGAME_DIR = Path(__file__).parent / "fakegame"
FAKEGAME_IMAGE = "peon-test/fakegame:latest"
STARTUP_SECONDS = 60


def _answers() -> bool:
    try:
        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except docker.errors.DockerException:
        return False
    return True


def ensure_engine() -> None:
    """Make sure an engine answers; start a background dockerd when we may."""
    if _answers():
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0 or os.environ.get("DOCKER_HOST"):
        raise RuntimeError(
            "No Docker engine answers and none can be started here "
            "(install docker.io and run as root, or start dockerd)."
        )
    log = Path(tempfile.gettempdir()) / "peon-tests-dockerd.log"
    with log.open("ab") as out:
        subprocess.Popen([dockerd], stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if _answers():
            return
        time.sleep(0.5)
    raise RuntimeError(f"dockerd did not answer within {STARTUP_SECONDS} s; see {log}")


def busybox_binary() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.exists():
            out = (
                subprocess.run(
                    ["file", "-L", str(path)], capture_output=True, text=True, check=False
                ).stdout
                if shutil.which("file")
                else "static"
            )
            if "dynamically" not in out:
                return path
    raise RuntimeError(
        "A static busybox is needed to build test images: apt-get install busybox-static"
    )


def build_fakegame(tag: str = FAKEGAME_IMAGE, version: str = "1") -> str:
    """Build the fake game image FROM scratch + static busybox; returns the image id."""
    client = docker.from_env(timeout=120)
    with tempfile.TemporaryDirectory() as ctx:
        for name in ("Dockerfile", "game.sh"):
            shutil.copy(FAKEGAME_DIR / name, Path(ctx) / name)
        shutil.copy(busybox_binary(), Path(ctx) / "busybox")
        image, _ = client.images.build(
            path=ctx, tag=tag, buildargs={"GAME_VERSION": version}, rm=True, forcerm=True
        )
    client.close()
    return str(image.id)
