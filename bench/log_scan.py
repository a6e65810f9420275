"""Benchmark: counting players from a long log, Python's backtracking `re` (the baseline, what
PEON used before) against RE2 (bot/patterns.py), with the Terraria join/leave patterns.

Lines are what a busy Terraria (TShock) server logs, plus chat lines a player can make long
(one colon-free 400-character message is enough to make the old pattern quadratic). It prints
the CPU time of one status call's replay (20,000 lines) each way, their ratio, and the
event-loop stall a replay causes now that it runs in a thread (PEON's LogPlayerTracker.replay
through asyncio.to_thread), measured as the worst lateness of a 5 ms ticker during it.

    .venv/bin/python bench/log_scan.py [--lines 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.players import LogPlayerTracker

JOIN = r"(?:Broadcast: )?(?P<name>[^:]+?) has joined\."
LEAVE = r"(?:Broadcast: )?(?P<name>[^:]+?) has left\."


def machine() -> str:
    flags = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(sorted(have & {"avx2", "avx512f", "sha_ni", "bmi2"}))
                break
    return f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, flags: {flags}"


def log_lines(n: int) -> list[str]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.05:
            out.append(f"Broadcast: player{i % 50} has joined.")
        elif kind < 0.10:
            out.append(f"Broadcast: player{i % 50} has left.")
        elif kind < 0.30:  # long chat without a colon after the name
            out.append(f"<player{i % 50}> " + "gg well played " * 27)
        else:
            out.append(f"[Server API] Info Saving world... {i}")
    return out


def python_re(lines: list[str]) -> float:
    join, leave = re.compile(JOIN), re.compile(LEAVE)
    start = time.process_time()
    online: set[str] = set()
    for line in lines:
        if m := join.search(line):
            online.add(m["name"])
        elif m := leave.search(line):
            online.discard(m["name"])
    return time.process_time() - start


def peon(lines: list[str]) -> tuple[float, int]:
    start = time.process_time()
    count = LogPlayerTracker(JOIN, LEAVE).replay(lines)
    return time.process_time() - start, count.online


async def stall(lines: list[str]) -> float:
    """Worst lateness of a 5 ms ticker while a replay runs the way PEON runs it."""
    worst, done = 0.0, False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - t - 0.005)

    task = asyncio.create_task(ticker())
    await asyncio.to_thread(LogPlayerTracker(JOIN, LEAVE).replay, lines)
    done = True
    await task
    return worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=20000)
    args = parser.parse_args()
    lines = log_lines(args.lines)
    print(f"machine: {machine()}; python {platform.python_version()}")
    base = min(python_re(lines) for _ in range(3))
    ours = min(peon(lines)[0] for _ in range(3))
    print(f"replay of {len(lines)} lines: re (baseline) {base * 1000:.0f} ms CPU, "
          f"RE2 {ours * 1000:.0f} ms CPU, ratio {ours / base:.3f}")  # fmt: skip
    print(
        f"event-loop stall during a replay (in a thread): {asyncio.run(stall(lines)) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
