"""Benchmark: PEON's backup and restore of 1 GiB of world data, against the shell baseline.

A fake game server gets 1 GiB in its data volume (half random, half text, as game worlds
are). Then, in the same run and on the same data:
  baseline: docker cp CONTAINER:/data - | zstd -1 -T0 > file
  PEON:     `peon backup create` (a separate process, zstd level 1 like the baseline)
  restore:  `peon backup restore --yes`
Prints wall times, the ratio PEON/baseline and PEON's peak RSS (from wait4's rusage).

    .venv/bin/python bench/backup.py [--mib 1024] [--rounds 2]

Targets (issue 5): ratio <= 1.15, peak RSS < 150 MiB.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import TEST_WARPLANS, cleanup_instance  # noqa: E402
from tests.engine import FAKEGAME_IMAGE, build_fakegame, ensure_engine  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
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
        rows = []
        for r in range(args.rounds):
            target = work / f"baseline-{r}.tar.zst"
            t0 = time.monotonic()
            subprocess.run(
                ["bash", "-c", f"docker cp peon-bench:/data - | zstd -q -1 -T0 > {target}"],
                check=True,
            )
            baseline = time.monotonic() - t0
            size_b = target.stat().st_size
            target.unlink()
            peon_s, rss, out = run_measured([*peon, "backup", "create", "bench"], env)
            rows.append((baseline, peon_s, rss, size_b, out.strip()))
            print(
                f"round {r + 1}: baseline {baseline:.2f} s ({size_b / 2**20:.0f} MiB) | "
                f"PEON {peon_s:.2f} s, peak RSS {rss:.0f} MiB | ratio {peon_s / baseline:.2f} "
                f"| {out.strip()}"
            )
        best_base = min(r[0] for r in rows)
        best_peon = min(r[1] for r in rows)
        peak = max(r[2] for r in rows)
        restore_s, restore_rss, _ = run_measured(
            [*peon, "backup", "restore", "bench", "1", "--yes"], env
        )
        print(
            f"\nbackup: PEON {best_peon:.2f} s vs baseline {best_base:.2f} s -> ratio "
            f"{best_peon / best_base:.2f} (target <= 1.15); peak RSS {peak:.0f} MiB (target < 150)"
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
