"""Benchmark: PEON's backup and restore of 1 GiB of world data, against the shell baseline.

A fake game server gets 1 GiB in its data volume (half random, half text, as game worlds
are). Then, in the same run and on the same data:
  baseline: docker cp CONTAINER:/data - | zstd -1 -T0 > file
  PEON:     BackupService.create in a child process (zstd level 1 like the baseline); the
            clock runs around the backup itself, as it runs inside the bot, and the peak RSS
            is the whole child's (wait4's rusage). The full `peon backup create` command,
            Python's start-up included, is timed once as well.
  restore:  `peon backup restore --yes`
Rounds alternate baseline and PEON; the best of each is compared, because this machine's
vCPUs see steal time that swings single runs by seconds.

    .venv/bin/python bench/backup.py [--mib 1024] [--rounds 5]

Targets (issue 5): ratio <= 1.15, peak RSS < 150 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path

import blake3
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.app import open_services  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from tests.conftest import TEST_WARPLANS, cleanup_instance  # noqa: E402
from tests.engine import FAKEGAME_IMAGE, build_fakegame, ensure_engine  # noqa: E402


def machine_cpu() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far, from /proc/stat: the engine's
    tar work counts as much as ours, and steal shows when the host starved this VM."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = f[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, stdout) of one child process."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.strip()}")
    return seconds, usage.ru_maxrss / 1024, out


class _NoDigest:
    """For the informative run without the checksum only: isolates what hashing costs."""

    def update(self, data: bytes) -> None:
        pass

    def hexdigest(self) -> str:
        return "0" * 64


def child(config: str, name: str, *, checksum: bool = True) -> None:
    """One backup through the real services, timed around the call; prints the seconds."""
    if not checksum:
        import bot.backups  # noqa: PLC0415

        bot.backups.blake3 = types.SimpleNamespace(blake3=_NoDigest)  # type: ignore[assignment,attr-defined]

    async def run() -> None:
        async with open_services(load_settings(Path(config))) as services:
            cpu0, start = machine_cpu(), time.monotonic()
            await services.backups.create(name, actor="bench")
            seconds, cpu1 = time.monotonic() - start, machine_cpu()
            print(f"{seconds:.3f} {cpu1[0] - cpu0[0]:.2f} {cpu1[1] - cpu0[1]:.2f}")

    asyncio.run(run())


def main() -> None:
    if sys.argv[1:2] in (["--child"], ["--child-no-checksum"]):
        child(sys.argv[2], sys.argv[3], checksum=sys.argv[1] == "--child")
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    shown = [f for f in ("sha_ni", "avx2", "avx512f", "avx512vl") if f in flags]
    print(f"machine: {os.cpu_count()} cores; CPU flags that matter: {', '.join(shown) or 'none'}")
    ensure_engine()
    build_fakegame(FAKEGAME_IMAGE)
    instance = f"bench{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="peon-bench-"))
    base = random.randrange(20000, 60000, 100)
    config = work / "peon.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "instance_id": instance,
                "data_dir": str(work / "data"),
                "warplans_dir": str(TEST_WARPLANS),
                "ports": {"pool": f"{base}-{base + 99}", "bind_address": "127.0.0.1"},
                "backups": {"level": 1, "keep_last": 100, "min_free_mb": 0},
            }
        )
    )
    env = {**os.environ, "PEON_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    peon = [sys.executable, "-m", "bot.cli"]
    try:
        subprocess.run([*peon, "server", "create", "fakegame", "bench", "--set", "world=B"],
                       env=env, cwd=ROOT, check=True, capture_output=True)  # fmt: skip
        subprocess.run([*peon, "server", "start", "bench"], env=env, cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        half = args.mib // 2
        fill = (
            f"dd if=/dev/urandom of=/data/random bs=1M count={half} 2>/dev/null && "
            f"yes 'chunk of world save text, player positions and inventories' "
            f"| head -c {half * 2**20} > /data/text"
        )
        subprocess.run(["docker", "exec", "peon-bench", "sh", "-c", fill], check=True)
        print(f"data: {args.mib} MiB in the volume (half random, half text)")

        def shell(pipeline: str) -> tuple[float, int, float, float]:
            target = work / "baseline.tar.zst"
            cpu0, t0 = machine_cpu(), time.monotonic()
            subprocess.run(["bash", "-o", "pipefail", "-c", pipeline.format(out=target)],
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            seconds, cpu1, size = time.monotonic() - t0, machine_cpu(), target.stat().st_size
            target.unlink()
            return seconds, size, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]

        rows = []
        for r in range(args.rounds):
            base_s, size_b, base_cpu, base_steal = shell(
                "docker cp peon-bench:/data - | zstd -q -1 -T0 > {out}"
            )
            # The same pipeline when it also computes the SHA-256 PEON records (for context).
            hashed = shell("docker cp peon-bench:/data - | zstd -q -1 -T0 | tee {out} | sha256sum")
            _, rss, out = run_measured([sys.executable, __file__, "--child", str(config),
                                        "bench"], env)  # fmt: skip
            peon_s, peon_cpu, peon_steal = (float(x) for x in out.split())
            _, _, out = run_measured([sys.executable, __file__, "--child-no-checksum",
                                      str(config), "bench"], env)  # fmt: skip
            bare_s = float(out.split()[0])
            rows.append((base_s, peon_s, rss, hashed[0], bare_s))
            print(
                f"round {r + 1}: baseline {base_s:.2f} s, {base_cpu:.1f} CPU s, steal "
                f"{base_steal:.1f} s | PEON {peon_s:.2f} s, {peon_cpu:.1f} CPU s, steal "
                f"{peon_steal:.1f} s, peak RSS {rss:.0f} MiB | ratio {peon_s / base_s:.2f} | "
                f"baseline + sha256sum {hashed[0]:.2f} s | PEON without a checksum {bare_s:.2f} s"
            )
        best_base = min(r[0] for r in rows)
        best_peon = min(r[1] for r in rows)
        best_hashed = min(r[3] for r in rows)
        best_bare = min(r[4] for r in rows)
        median = statistics.median(r[1] / r[0] for r in rows)
        peak = max(r[2] for r in rows)
        block = os.urandom(1 << 20)
        hash_s = {}
        for name, make in (("SHA-256", hashlib.sha256), ("BLAKE3", blake3.blake3)):
            t0 = time.monotonic()
            digest = make()
            for _ in range(size_b >> 20):
                digest.update(block)
            hash_s[name] = time.monotonic() - t0
        cli_s, cli_rss, cli_out = run_measured([*peon, "backup", "create", "bench"], env)
        print(
            f"\nbackup: PEON {best_peon:.2f} s vs baseline {best_base:.2f} s (best of "
            f"{args.rounds}) -> ratio {best_peon / best_base:.2f}, median per-round ratio "
            f"{median:.2f} (target <= 1.15); peak RSS {peak:.0f} MiB (target < 150)"
        )
        print(
            f"context: the checksum of the {size_b / 2**20:.0f} MiB archive alone takes "
            f"{hash_s['BLAKE3']:.2f} CPU s with BLAKE3 (PEON's), {hash_s['SHA-256']:.2f} with "
            f"SHA-256 (before; ratio {hash_s['BLAKE3'] / hash_s['SHA-256']:.2f}); PEON without a "
            f"checksum (informative only) {best_bare:.2f} s, ratio "
            f"{best_bare / best_base:.2f}; the baseline with sha256sum {best_hashed:.2f} s "
            f"(PEON/that {best_peon / best_hashed:.2f}); the whole `peon backup create` "
            f"command with "
            f"Python's start-up {cli_s:.2f} s, peak RSS {cli_rss:.0f} MiB ({cli_out.strip()})"
        )
        restore_s, restore_rss, _ = run_measured(
            [*peon, "backup", "restore", "bench", "1", "--yes"], env
        )
        print(
            f"restore (safety backup of the current data + verify + replace + start): "
            f"{restore_s:.2f} s, peak RSS {restore_rss:.0f} MiB"
        )
    finally:
        cleanup_instance(instance)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
