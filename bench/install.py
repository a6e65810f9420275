"""Benchmark: what a war plan's install step costs, against doing the same by hand.

Two busybox images are built locally (a server image and an installer image; no registry is
reachable here). In the same run, rounds alternate:
  create, no install: ServerService.create of a plan without `install:` (the reference)
  create, install:    the same plan with an install step whose script writes the game's start
                      file into the volume (the script itself takes milliseconds, so what is
                      measured is the installer container's overhead)
  baseline:           `docker run --rm -v VOLUME:/mnt/server INSTALLER sh -c SCRIPT` from the
                      shell: the same script in a throwaway container, as one would by hand
Printed: the median of each, the install's overhead on a create, and PEON's install step
(create the installer, put the script in, start, follow its log, wait, keep the log, remove)
as a ratio of the shell baseline.

    .venv/bin/python bench/install.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot import labels  # noqa: E402
from bot.app import open_services  # noqa: E402
from tests.conftest import cleanup_instance, make_settings  # noqa: E402
from tests.engine import ensure_engine  # noqa: E402
from tests.images import Images  # noqa: E402

SCRIPT = """\
set -e
cat > /mnt/server/run.sh <<'EOF'
echo ready
while :; do sleep 1; done
EOF
echo installed
"""


def plan(name: str, server_image: str, installer_image: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "title": name,
        "image": server_image,
        "command": ["/bin/sh", "/data/run.sh"],
        "ports": [{"name": "game", "container": 7000}],
        "volumes": [{"name": "data", "path": "/data"}],
        "ready": {"log": "ready"},
    }
    if installer_image is not None:
        data["install"] = {"image": installer_image, "script": SCRIPT,
                           "mounts": {"data": "/mnt/server"}}  # fmt: skip
    return data


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), "unknown CPU",
    )  # fmt: skip
    return f"machine: {os.cpu_count()} cores, {model}"


async def run(rounds: int) -> None:
    ensure_engine()
    client = docker.from_env()
    images = Images(client)
    server_image, _ = images.build()
    installer_image, _ = images.build()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "warplans"
        folder.mkdir()
        for name, inst in (("bare", None), ("inst", installer_image)):
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(plan(name, server_image, inst)))
        settings = make_settings(Path(tmp), warplans_dir=folder)
        bare: list[float] = []
        inst: list[float] = []
        step: list[float] = []
        shell: list[float] = []
        try:
            async with open_services(settings) as svc:
                for i in range(rounds):
                    for kind, times in (("bare", bare), ("inst", inst)):
                        name = f"ins-bench-{kind}-{i}"
                        t0 = time.monotonic()
                        await svc.servers.create(kind, name, actor="bench")
                        times.append(time.monotonic() - t0)
                        if kind == "inst":
                            step.append((await svc.servers.installs.last(name)).seconds)
                        await svc.servers.delete(name, actor="bench", purge=True)
                    volume = f"peon-ins-bench-shell-{settings.instance_id}-{i}"
                    client.volumes.create(volume, labels={labels.INSTANCE: settings.instance_id})
                    t0 = time.monotonic()
                    subprocess.run(
                        ["docker", "run", "--rm", "-v", f"{volume}:/mnt/server", installer_image,
                         "sh", "-c", SCRIPT],
                        check=True, capture_output=True,
                    )  # fmt: skip
                    shell.append(time.monotonic() - t0)
                    client.volumes.get(volume).remove()
        finally:
            cleanup_instance(settings.instance_id)
            images.cleanup()
            client.close()
    med = statistics.median
    print(machine())
    print(f"rounds: {rounds} (medians; each round makes and purges one server of each kind)")
    print(f"create, no install:      {med(bare):6.3f} s")
    print(f"create, install:         {med(inst):6.3f} s")
    print(f"  overhead of install:   {med(inst) - med(bare):6.3f} s "
          f"({med(inst) / med(bare):.2f}x the create without)")  # fmt: skip
    print(f"install step (its row):  {med(step):6.3f} s")
    print(f"baseline docker run --rm:{med(shell):6.3f} s")
    print(f"  install step / baseline: {med(step) / med(shell):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(run(args.rounds))


if __name__ == "__main__":
    main()
