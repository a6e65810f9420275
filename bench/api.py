"""Benchmark: the HTTP API under 500 concurrent GET /api/v1/servers, served by the running bot,
and what that load does to the bot's Discord interaction latency.

Runs PEON's bot as its own process (`python -m bot`, with `api:` set, so the bot's own event
loop serves the API) against the Discord emulator on loopback and the real Docker engine, as
bench/interactions.py does (its `fire` measures an interaction: from dispatching
INTERACTION_CREATE to the bot's callback). The API load comes from a separate process (this
file with --worker), so the load generator's own CPU does not sit on the emulator's loop:

  1. API alone: rounds of 500 concurrent GETs; p50/p99 per request.
  2. Bot idle: interactions one at a time and in bursts (baseline).
  3. The same interactions while the worker keeps 500 GETs in flight, round after round.
  4. The same again with the load on `peon serve-api`, a second process beside the bot.

The API admits a few requests at a time (bot/api/admission.py); without that, 3. measured
p50 98-142 ms against 3 ms idle for one interaction at a time on a 2-core machine.

Prints p50/p99 of each, the ratio loaded/idle of the interaction latency (issue 16's target:
within 1.2x) and the machine. No assertion on time.

    .venv/bin/python bench/api.py [--concurrency 500] [--rounds 5] [--servers 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from interactions import ADMIN, PLAYER, fire, percentile  # noqa: E402

from tests.conftest import cleanup_instance  # noqa: E402
from tests.discord_emulator import DiscordEmulator  # noqa: E402
from tests.engine import FAKEGAME_IMAGE, build_fakegame, ensure_engine  # noqa: E402

PATH = "/api/v1/servers"
BURST = 50  # interactions fired at once in a burst
SEQUENTIAL = 40  # interactions one at a time


# --- the load worker (its own process) ----------------------------------------------------


async def one_round(http: aiohttp.ClientSession, headers: dict[str, str], n: int) -> list[float]:
    async def get() -> float:
        t0 = time.perf_counter()
        async with http.get(PATH, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"GET {PATH} answered {r.status}")
        return (time.perf_counter() - t0) * 1000

    return list(await asyncio.gather(*[get() for _ in range(n)]))


async def worker(base: str, token: str, concurrency: int, rounds: int, out: Path) -> None:
    """`rounds` rounds of `concurrency` concurrent GETs (0: until SIGTERM); milliseconds of
    each request written to `out` as JSON after every round."""
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=0)  # all of them in flight at once
    done: list[float] = []
    async with aiohttp.ClientSession(base, connector=connector) as http:
        await one_round(http, headers, 20)  # warm-up: connections, first-call work
        n = 0
        while rounds == 0 or n < rounds:
            done += await one_round(http, headers, concurrency)
            out.write_text(json.dumps(done))
            n += 1


# --- the bench ----------------------------------------------------------------------------


def machine() -> str:
    model, flags = "?", ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "?":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            have = set(line.split(":", 1)[1].split())
            flags = " ".join(f for f in ("avx2", "avx512f", "sha_ni", "aes") if f in have)
    loop = "uvloop" if _has_uvloop() else "asyncio"
    return (
        f"machine: {os.cpu_count()} cores, {model}, flags: {flags or '-'}; "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, bot loop {loop}"
    )


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_api(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(f"{base}/api/v1/openapi.json") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{base} did not answer")


def row(name: str, ms: list[float]) -> str:
    return (
        f"{name:<44} n={len(ms):<5} p50 {statistics.median(ms):7.1f} ms   "
        f"p99 {percentile(ms, 0.99):7.1f} ms   max {max(ms):7.1f} ms"
    )


async def interactions(emu: DiscordEmulator, bursts: int) -> tuple[list[float], list[float]]:
    """(one at a time, in bursts of BURST): milliseconds to the bot's callback."""
    single: list[float] = []
    for _ in range(SEQUENTIAL):
        single += await fire(emu, 1)
        await asyncio.sleep(0.05)
    burst: list[float] = []
    for _ in range(bursts):
        burst += await fire(emu, BURST)
    return single, burst


async def main(concurrency: int, rounds: int, servers: int) -> None:
    ensure_engine()
    build_fakegame(FAKEGAME_IMAGE)
    instance = f"b{uuid.uuid4().hex[:8]}"
    port = free_port()
    emu = DiscordEmulator()
    await emu.start()
    emu.add_member(ADMIN, "ada", [emu.roles["admin"]])
    emu.add_member(PLAYER, "pia", [emu.roles["player"]])
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "peon.yaml"
        settings = {
            "instance_id": instance,
            "data_dir": str(work / "data"),
            "warplans_dir": str(ROOT / "tests" / "warplans"),
            "docker": {"public_address": "127.0.0.1"},
            "ports": {"pool": "39100-39199", "bind_address": "127.0.0.1"},
            "log": {"level": "WARNING"},
            # The rate limit is per token; one token sends all 500 here, so it is lifted.
            "api": {"listen": f"127.0.0.1:{port}", "rate": 10000, "burst": 100000},
            "discord": {"guilds": {emu.guild_id: {"roles": {
                "admin": [emu.roles["admin"]], "player": [emu.roles["player"]],
            }}}},
        }  # fmt: skip
        config.write_text(yaml.safe_dump(settings))
        config2, port2 = work / "serve-api.yaml", free_port()
        env = {
            **os.environ,
            "PEON_CONFIG": str(config),
            "DISCORD_TOKEN": emu.token,
            "PEON_DISCORD_API_BASE": emu.api_base,
            "PEON_DISCORD_GATEWAY_URL": emu.gateway_url,
        }

        def cli(*args: str) -> str:
            done = subprocess.run([py, "-m", "bot.cli", *args], env=env, cwd=ROOT, check=True,
                                  capture_output=True, text=True)  # fmt: skip
            return done.stdout

        # "bench" is the server the interaction mix asks about (/server status name:bench).
        names = ["bench"] + [f"bench-{i}" for i in range(1, servers)]
        for name in names:
            cli("server", "create", "fakegame", name)
        cli("server", "start", "bench")
        found = re.search(r"peon_[A-Za-z0-9_-]+", cli("token", "create", "bench-api",
                                                       "--role", "admin"))  # fmt: skip
        assert found, "peon token create printed no token"
        token = found.group(0)
        base = f"http://127.0.0.1:{port}"

        def load(rounds: int, out: Path, url: str = base) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [py, __file__, "--worker", url, token, str(concurrency), str(rounds), str(out)],
                cwd=ROOT,
            )  # fmt: skip

        bot = subprocess.Popen([py, "-m", "bot"], env=env, cwd=ROOT)
        try:
            await asyncio.wait_for(emu.identified.wait(), 60)
            await asyncio.sleep(2.5)  # guild_ready_timeout: READY fires after it
            await emu.settle()
            await fire(emu, 10)  # warm-up

            # 1. The API alone.
            alone_file = work / "alone.json"
            alone_proc = load(rounds, alone_file)
            await asyncio.to_thread(alone_proc.wait)
            api_alone = json.loads(alone_file.read_text())

            # 2. The bot idle.
            idle_single, idle_burst = await interactions(emu, 3)

            # 3. The same, with 500 GETs in flight all along.
            during_file = work / "during.json"
            during_proc = load(0, during_file)
            while not during_file.exists():  # its warm-up done and a first round in
                await asyncio.sleep(0.1)
            loaded_single, loaded_burst = await interactions(emu, 3)
            still = during_proc.poll() is None
            during_proc.terminate()
            await asyncio.to_thread(during_proc.wait)
            api_during = json.loads(during_file.read_text())

            # 4. The same load on `peon serve-api`, a process of its own beside the bot (same
            # store and engine): what a host with heavy API clients can run instead.
            api2 = {**settings["api"], "listen": f"127.0.0.1:{port2}"}
            config2.write_text(yaml.safe_dump({**settings, "api": api2}))
            apart = subprocess.Popen([py, "-m", "bot.cli", "serve-api"], cwd=ROOT,
                                     env={**env, "PEON_CONFIG": str(config2)})  # fmt: skip
            apart_file = work / "apart.json"
            try:
                await wait_for_api(f"http://127.0.0.1:{port2}")
                apart_proc = load(0, apart_file, f"http://127.0.0.1:{port2}")
                while not apart_file.exists():
                    await asyncio.sleep(0.1)
                apart_single, apart_burst = await interactions(emu, 3)
                apart_proc.terminate()
                await asyncio.to_thread(apart_proc.wait)
            finally:
                apart.terminate()
                await asyncio.to_thread(apart.wait, 30)
            api_apart = json.loads(apart_file.read_text())
        finally:
            bot.terminate()
            await asyncio.to_thread(bot.wait, 30)
            for name in names:
                subprocess.run([py, "-m", "bot.cli", "server", "delete", name, "--purge",
                                "--yes"], env=env, cwd=ROOT, check=False,
                               capture_output=True)  # fmt: skip
            cleanup_instance(instance)
            await emu.close()

    print(machine())
    print(f"GET {PATH}: {concurrency} concurrent, {servers} servers; bot = `python -m bot`")
    print(row(f"API alone ({rounds} rounds of {concurrency})", api_alone))
    print(row("API during the interactions", api_during))
    print(row("interactions one at a time, bot idle", idle_single))
    print(row("interactions one at a time, API loaded", loaded_single))
    print(row(f"interactions in bursts of {BURST}, bot idle", idle_burst))
    print(row(f"interactions in bursts of {BURST}, API loaded", loaded_burst))
    print(row("API on peon serve-api beside the bot", api_apart))
    print(row("interactions one at a time, serve-api loaded", apart_single))
    print(row(f"interactions in bursts of {BURST}, serve-api loaded", apart_burst))
    print(f"API load still running at the end of the interactions: {still}")
    for name, idle, loaded in (("one at a time", idle_single, loaded_single),
                               ("bursts", idle_burst, loaded_burst),
                               ("one at a time, API in serve-api", idle_single, apart_single),
                               ("bursts, API in serve-api", idle_burst, apart_burst)):  # fmt: skip
        r50 = statistics.median(loaded) / statistics.median(idle)
        r99 = percentile(loaded, 0.99) / percentile(idle, 0.99)
        verdict = "within" if r50 <= 1.2 else "NOT within"
        print(f"interaction latency loaded/idle ({name}): p50 {r50:.2f}x  p99 {r99:.2f}x "
              f"(target 1.2x: p50 {verdict})")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        base, token, n, rounds, out = sys.argv[2:7]
        asyncio.run(worker(base, token, int(n), int(rounds), Path(out)))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--servers", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.concurrency, args.rounds, args.servers))
