"""Benchmark: a real game server under PEON, Luanti (Minetest) 5.6.1 from Debian's packages,
against the busybox fake game as the baseline, in the same run on the same engine.

It prints the machine (cores, CPU model and flags), the Luanti image (size, a cold build into
a throwaway repository and the cached lookup), then, through PEON's ServerService and the
shipped war plan warplans/luanti.yaml with only its image swapped (as tests/test_real_game.py
runs it): start-to-ready and graceful stop times over a few rounds, the same for the fake game
(ready at once: READY_DELAY=0), and their ratio. Figures only, no targets.

    .venv/bin/python bench/real_game.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import fakegame_variant, make_settings, services_for  # noqa: E402
from tests.engine import FAKEGAME_IMAGE, build_fakegame, ensure_engine  # noqa: E402
from tests.luanti import build_luanti, shipped_plan_with  # noqa: E402

FLAGS = {"avx2", "avx512f", "sha_ni", "aes", "bmi2"}


def machine() -> str:
    model, flags = platform.processor() or platform.machine(), ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = " ".join(sorted(set(line.split(":", 1)[1].split()) & FLAGS))
                break
    return f"{os.cpu_count()} cores, {model}, flags: {flags or '-'}"


async def rounds_of(plan_dir: Path, warplan: str, rounds: int) -> tuple[list[float], list[float]]:
    """(start-to-ready seconds, stop seconds) of `rounds` starts and stops of one server."""
    with tempfile.TemporaryDirectory(prefix="peon-bench-") as tmp:
        settings = make_settings(Path(tmp), warplans_dir=plan_dir)
        name = f"bench-{warplan}-{uuid.uuid4().hex[:6]}"
        ready, stops = [], []
        async with services_for(settings) as svc:
            await svc.servers.create(warplan, name, actor="bench")
            for _ in range(rounds):
                ready.append((await svc.servers.start(name, actor="bench")).seconds)
                began = time.monotonic()
                await svc.servers.stop(name, actor="bench")
                stops.append(time.monotonic() - began)
            await svc.servers.delete(name, actor="bench", purge=True)
        return ready, stops


def show(label: str, values: list[float]) -> str:
    return (
        f"{label} median {statistics.median(values):.2f} s "
        f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ensure_engine()
    client = docker.from_env(timeout=300)
    print(f"machine: {machine()}")

    # Built into a throwaway repository: cold with the packages downloaded into an empty
    # cache, cold with them cached, then found on the engine.
    scratch = f"peon-bench/luanti-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="peon-bench-debs-") as empty:
        fresh = build_luanti(client, cache=Path(empty), repository=scratch)
    client.images.remove(fresh.tag)
    cold = build_luanti(client, repository=scratch)
    try:
        cached = build_luanti(client, repository=scratch)
    finally:
        client.images.remove(cold.tag)
    image = build_luanti(client)  # the tests' image, for the rounds below
    print(
        f"image: Luanti {image.version}, {image.size / 1e6:.1f} MB; built in "
        f"{fresh.seconds:.2f} s with the package download, {cold.seconds:.2f} s from "
        f"downloaded packages; found cached in {cached.seconds:.2f} s"
    )

    build_fakegame(FAKEGAME_IMAGE)
    with tempfile.TemporaryDirectory(prefix="peon-bench-plans-") as tmp:
        (Path(tmp) / "fake").mkdir()
        fake_dir = fakegame_variant(
            Path(tmp) / "fake", env={"DATA_DIR": "/data", "READY_DELAY": "0"}
        )
        luanti_dir = shipped_plan_with(image.tag, Path(tmp) / "luanti")
        base_ready, base_stop = await rounds_of(fake_dir, "fakegame", args.rounds)
        real_ready, real_stop = await rounds_of(luanti_dir, "luanti", args.rounds)
    print(show("baseline fakegame start-to-ready", base_ready))
    print(show("baseline fakegame graceful stop ", base_stop))
    print(show("Luanti start-to-ready           ", real_ready))
    print(show("Luanti graceful stop            ", real_stop))
    ratio_ready = statistics.median(real_ready) / statistics.median(base_ready)
    ratio_stop = statistics.median(real_stop) / statistics.median(base_stop)
    print(f"ratio Luanti / baseline: start-to-ready {ratio_ready:.2f}, stop {ratio_stop:.2f}")
    client.close()


if __name__ == "__main__":
    asyncio.run(main())
