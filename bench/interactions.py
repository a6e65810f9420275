"""Benchmark: interaction latency of the real bot under Docker load.

Runs PEON's bot as its own process (`python -m bot`) against the Discord emulator on loopback,
with the real Docker engine. Fires N slash commands at once, first with the engine idle
(baseline), then while a 1 GiB volume is streamed out of the engine (`docker cp`) and an image
is built. Prints the median and p99 time from dispatching INTERACTION_CREATE to the bot's
interaction callback, their ratio to the baseline, the bot's worst event-loop stall (from its
own watchdog, via /peon status) and its RSS after READY.

    .venv/bin/python bench/interactions.py [--commands 100]

Targets (issue 3): p99 < 50 ms, largest stall < 100 ms, RSS < 80 MiB.
`--mix help` fires only /peon help (no store, no engine): the framework's own floor.
BENCH_PROFILE=FILE records a py-spy profile (raw collapsed stacks) of the bot during the bursts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import cleanup_instance  # noqa: E402
from tests.discord_emulator import DiscordEmulator  # noqa: E402
from tests.engine import FAKEGAME_IMAGE, build_fakegame, ensure_engine  # noqa: E402

ADMIN, PLAYER = 42, 44
GIB = 1024**3


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


MIXES = {
    "default": [
        ("server", "list", {}),
        ("warplan", "list", {}),
        ("server", "status", {"name": "bench"}),
    ],
    "help": [("peon", "help", {})],
}


async def fire(emu: DiscordEmulator, count: int, mix: str = "default") -> list[float]:
    """Dispatch `count` commands at once; milliseconds from dispatch to first callback."""
    kinds = MIXES[mix] * 3
    interactions = await asyncio.gather(
        *[
            emu.slash(PLAYER, kinds[i % 3][0], subcommand=kinds[i % 3][1], options=kinds[i % 3][2])
            for i in range(count)
        ]
    )
    await asyncio.gather(*[i.answered.wait() for i in interactions])
    await emu.settle(timeout=120)
    return [(emu.callback_times[i.id] - emu.dispatch_times[i.id]) * 1000 for i in interactions]


def start_load(instance: str, workdir: Path) -> list[subprocess.Popen[bytes]]:
    """1 GiB streamed out of the engine and an image build, each repeated until stopped, so
    both are surely running during the burst."""
    client = docker.from_env()
    volume = f"peon-bench-{instance}"
    client.volumes.create(volume, labels={"io.peon.instance": instance})
    # Half random, half compressible text, as game worlds are.
    client.containers.run(
        FAKEGAME_IMAGE,
        entrypoint=[
            "sh",
            "-c",
            "dd if=/dev/urandom of=/v/random bs=1M count=512 2>/dev/null "
            "&& yes 'chunk of world save text' | head -c 536870912 > /v/text",
        ],
        volumes={volume: {"bind": "/v"}},
        remove=True,
    )
    holder = client.containers.create(
        FAKEGAME_IMAGE, volumes={volume: {"bind": "/v"}}, labels={"io.peon.instance": instance}
    )
    client.close()
    ctx = workdir / "build"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {FAKEGAME_IMAGE}\nRUN dd if=/dev/urandom of=/blob bs=1M count=256 2>/dev/null\n"
    )
    copy = f"while :; do docker cp {holder.id}:/v - > /dev/null; done"
    build = (
        f"while :; do DOCKER_BUILDKIT=0 docker build -q --no-cache "
        f"-t peon-bench/{instance}:load {ctx} > /dev/null 2>&1; done"
    )
    return [subprocess.Popen(["sh", "-c", cmd], start_new_session=True) for cmd in (copy, build)]


def stop_load(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait()


def cleanup(instance: str) -> None:
    cleanup_instance(instance)
    client = docker.from_env()
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(f"peon-bench/{instance}:load", force=True)
    client.close()


async def main(count: int, mix: str) -> None:
    ensure_engine()
    build_fakegame(FAKEGAME_IMAGE)
    instance = f"b{uuid.uuid4().hex[:8]}"
    emu = DiscordEmulator()
    await emu.start()
    emu.add_member(ADMIN, "ada", [emu.roles["admin"]])
    emu.add_member(PLAYER, "pia", [emu.roles["player"]])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "peon.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "instance_id": instance,
                    "data_dir": str(work / "data"),
                    "warplans_dir": str(ROOT / "tests" / "warplans"),
                    "docker": {"public_address": "127.0.0.1"},
                    "ports": {"pool": "39000-39099", "bind_address": "127.0.0.1"},
                    "log": {"level": "WARNING"},
                    "discord": {
                        "guilds": {
                            emu.guild_id: {
                                "roles": {
                                    "admin": [emu.roles["admin"]],
                                    "player": [emu.roles["player"]],
                                }
                            }
                        }
                    },
                }
            )
        )
        env = {
            **os.environ,
            "PEON_CONFIG": str(config),
            "DISCORD_TOKEN": emu.token,
            "PEON_DISCORD_API_BASE": emu.api_base,
            "PEON_DISCORD_GATEWAY_URL": emu.gateway_url,
        }
        py = sys.executable
        subprocess.run(
            [py, "-m", "bot.cli", "server", "create", "fakegame", "bench"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [py, "-m", "bot.cli", "server", "start", "bench"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        bot = subprocess.Popen([py, "-m", "bot"], env=env, cwd=ROOT)
        try:
            await asyncio.wait_for(emu.identified.wait(), 60)
            await asyncio.sleep(2.5)  # guild_ready_timeout: READY fires after it
            await emu.settle()
            rss = rss_mib(bot.pid)
            if os.environ.get("BENCH_PROFILE"):  # a py-spy profile of the bot during the bursts
                subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(bot.pid),
                        "-r",
                        "1000",
                        "-d",
                        "8",
                        "--format",
                        "raw",
                        "-o",
                        os.environ["BENCH_PROFILE"],
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(1)
            await fire(emu, 10)  # warm-up: first-call imports and connections
            baseline = await fire(emu, count, mix)
            sequential = [(await fire(emu, 1, mix))[0] for _ in range(30)]
            load = await asyncio.to_thread(start_load, instance, work)
            await asyncio.sleep(3)  # let the copy and the build get going
            t0 = time.monotonic()
            loaded = await fire(emu, count, mix)
            busy = [p.poll() is None for p in load]
            elapsed = time.monotonic() - t0
            status = await emu.slash(PLAYER, "peon", subcommand="status")
            await emu.wait_for(
                lambda: status.original is not None and "Event loop" in status.original.text(), 30
            )
            text = status.original.text() if status.original else ""
            stall = re.search(r"Event loop max stall\n([\d.]+) ms", text)
            stop_load(load)
        finally:
            bot.terminate()
            bot.wait(10)
            subprocess.run(
                [py, "-m", "bot.cli", "server", "delete", "bench", "--purge", "--yes"],
                check=False,
                env=env,
                cwd=ROOT,
                capture_output=True,
            )
            cleanup(instance)
            await emu.close()

    def row(name: str, ms: list[float]) -> str:
        return (
            f"{name:<34} median {statistics.median(ms):6.1f} ms   "
            f"p99 {percentile(ms, 0.99):6.1f} ms   max {max(ms):6.1f} ms"
        )

    print(f"commands fired at once: {count} (mix: {mix})")
    print(row("one at a time (engine idle)", sequential))
    print(row("baseline (engine idle)", baseline))
    print(row("under load (1 GiB cp + build)", loaded))
    print(
        f"load still running during the burst: copy={busy[0]} build={busy[1]} "
        f"(burst took {elapsed:.2f} s)"
    )
    ratio_median = statistics.median(loaded) / statistics.median(baseline)
    ratio_p99 = percentile(loaded, 0.99) / percentile(baseline, 0.99)
    print(f"ratio loaded/baseline: median {ratio_median:.2f}  p99 {ratio_p99:.2f}")
    print(f"bot event loop max stall: {stall.group(1) if stall else '?'} ms (target < 100)")
    print(f"bot RSS after READY: {rss:.1f} MiB (target < 80)")
    print(f"p99 target < 50 ms: {'met' if percentile(loaded, 0.99) < 50 else 'NOT met'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=100)
    parser.add_argument("--mix", choices=sorted(MIXES), default="default")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args.commands, args.mix))
    else:
        uvloop.run(main(args.commands, args.mix))
