"""Benchmark: PEON's container image. How big it is, how long it takes to build, and how long a
container takes from `docker start` to logged in to Discord and to healthy.

Build times, each printed:
  base:   the Dockerfile's base, or the debootstrapped stand-in when no registry answers
          (tests/peon_image.py); made once per machine.
  hash:   what the tests do: found on the engine under the content-hash tag of its inputs,
          or built (from whatever layers the engine has cached).
  layers: built again, every step from the engine's layer cache.
  cold:   (--cold) built without the layer cache: pip fetches and installs everything.
Then `--rounds` containers, each with a fresh data volume, run as compose.yaml says against the
Discord emulator on 127.0.0.1 (the real engine socket mounted), are started, timed to logged
in and to healthy (the image's `peon check`, run every --health-interval s), and stopped.

    .venv/bin/python bench/image.py [--rounds 3] [--cold] [--health-interval 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import docker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import TEST_WARPLANS  # noqa: E402
from tests.discord_emulator import DiscordEmulator  # noqa: E402
from tests.engine import ensure_engine  # noqa: E402
from tests.peon_image import (  # noqa: E402
    Built,
    base_image,
    build_peon,
    engine_socket,
    run_like_compose,
    wait_healthy,
    write_config,
)


def show(what: str, image: Built) -> None:
    done = f"built in {image.seconds:.1f} s" if image.built else f"found in {image.seconds:.2f} s"
    print(f"{what:7} {done:>18}  {image.tag}  {image.size / 1e6:.0f} MB")


async def one_start(
    client: docker.DockerClient, image: str, health_interval: float, folder: Path
) -> tuple[float, float, float]:
    """(to logged in, to healthy, docker stop) in seconds, for a fresh container."""
    emu = DiscordEmulator()
    await emu.start()
    run = uuid.uuid4().hex[:8]
    labels = {"io.peon.bench-run": run}
    port = int(urlsplit(emu.api_base).port or 0)
    write_config(folder / run, emu, port, f"bench{run}")
    volume = client.volumes.create(f"peon-bench-data-{run}", labels=labels)
    container = run_like_compose(
        client, image, f"peon-bench-{run}",
        sources={
            "/var/run/docker.sock": str(engine_socket()),
            "peon-data": str(volume.name),
            "./config": str(folder / run),
            "./warplans": str(TEST_WARPLANS),
        },
        env={**os.environ, "DISCORD_TOKEN": emu.token},
        labels=labels,
        health_interval=health_interval,
    )  # fmt: skip
    try:
        t0 = time.monotonic()
        await asyncio.to_thread(container.start)
        await asyncio.wait_for(emu.identified.wait(), 120)
        logged_in = time.monotonic() - t0
        await wait_healthy(container, 120)
        healthy = time.monotonic() - t0
        t = time.monotonic()
        await asyncio.to_thread(container.stop, timeout=90)
        return logged_in, healthy, time.monotonic() - t
    finally:
        container.remove(force=True)
        volume.remove(force=True)
        await emu.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also build without the layer cache")
    parser.add_argument("--health-interval", type=float, default=0.5)
    args = parser.parse_args()
    ensure_engine()
    client = docker.from_env(timeout=900)
    engine = client.version()
    print(f"engine {engine['Version']}, {os.cpu_count()} CPUs")

    base = base_image(client)
    show("base", base)
    show("hash", build_peon(client, base))
    show("layers", build_peon(client, base, rebuild=True))
    if args.cold:
        show("cold", build_peon(client, base, nocache=True))
    image = build_peon(client, base)
    print(
        f"image {image.size / 1e6:.0f} MB: base {base.size / 1e6:.0f} MB, PEON and its "
        f"dependencies {(image.size - base.size) / 1e6:.0f} MB"
    )

    rows = []
    with tempfile.TemporaryDirectory(prefix="peon-bench-") as tmp:
        for n in range(args.rounds):
            row = asyncio.run(one_start(client, image.tag, args.health_interval, Path(tmp)))
            rows.append(row)
            print(
                f"round {n + 1}: logged in {row[0]:.2f} s, healthy {row[1]:.2f} s, "
                f"docker stop {row[2]:.2f} s"
            )
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(
        f"median of {len(rows)}: start to logged in {med[0]:.2f} s, to healthy {med[1]:.2f} s "
        f"(checks every {args.health_interval} s), docker stop {med[2]:.2f} s"
    )
    client.close()


if __name__ == "__main__":
    main()
