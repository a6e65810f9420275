"""Benchmark: PEON's backup and restore of 1 GiB of world data, against the shell baseline.

A fake game server gets 1 GiB in its data volume (half random, half text, as game worlds
are). Then, in the same run and on the same data:
  baseline: docker cp CONTAINER:/data - | zstd -1 -T0 > file
  PEON engine: BackupService.create in a child process (zstd level 1 like the baseline),
            made to take the engine's tar stream (`get_archive`), as it does for a remote
            engine or a volume directory it may not read; the clock runs around the backup
            itself, as it runs inside the bot, and the peak RSS is the whole child's (wait4's
            rusage).
  PEON direct: the same, reading the volume's directory (bot/volumes.py), as PEON does by
            itself when the engine is local and the directory readable.
  restore:  BackupService.restore of the first backup in a child process: verify it, take
            the safety backup of the current data, replace the volume, start the server.
Rounds alternate the three; the best of each is compared, because this machine's vCPUs see
steal time that swings single runs by seconds. Also printed: what hashing 1 GiB costs with
SHA-256 and with BLAKE3 on this CPU (SHA-256 is fast only with SHA extensions, sha_ni;
BLAKE3, PEON's checksum, uses SIMD present on every x86-64 and ARM CPU).

    .venv/bin/python bench/backup.py [--mib 1024] [--rounds 3]

Targets (issue 17): PEON <= 1.0x the baseline, <= 0.6x reading directly; the restore of
1 GiB, its safety backup included, <= 2x the backup's time; peak RSS < 150 MiB.
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
import uuid
from pathlib import Path
from typing import Any

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


def engine_cpu() -> float:
    """CPU seconds of the default engine (the dockerd without --host): it makes the tar of a
    `docker cp` and of PEON's engine path, so it counts on their side."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or (proc / "comm").read_text().strip() != "dockerd":
                continue
            if b"--host" in (proc / "cmdline").read_bytes():
                continue  # a second engine of some test, not the one measured
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / hz
        except OSError:
            continue
    return total


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


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


def child(mode: str, config: str, name: str) -> None:
    """One backup (mode engine or direct) or restore through the real services, timed around
    the call; prints seconds, CPU seconds (this process's threads and the engine's), the
    machine's steal seconds, and the audit's detail."""
    if mode == "engine":
        import bot.volumes  # noqa: PLC0415

        locate = bot.volumes.locate

        async def through_engine(*args: object) -> bot.volumes.Source:
            return (await locate(*args)).engine("the bench asked for the engine")  # type: ignore[arg-type]

        bot.volumes.locate = through_engine  # type: ignore[assignment]

    async def run() -> None:
        async with open_services(load_settings(Path(config))) as services:
            cpu0, start = machine_cpu(), time.monotonic()
            own0, engine0 = time.process_time(), engine_cpu()
            if mode == "restore":
                first = min(b.id for b in await services.backups.list(name))
                await services.backups.restore(name, first, actor="bench")
            else:
                await services.backups.create(name, actor="bench")
            seconds, cpu1 = time.monotonic() - start, machine_cpu()
            own = time.process_time() - own0 + engine_cpu() - engine0
            detail = (await services.store.audit_log(name, 1))[0].detail
            print(f"{seconds:.3f} {own:.2f} {cpu1[1] - cpu0[1]:.2f} {detail}")

    asyncio.run(run())


def hash_cost(block: bytes, mib: int) -> dict[str, float]:
    """CPU seconds to hash `mib` MiB with SHA-256 and with BLAKE3 on one core."""
    out = {}
    for name, make in (("SHA-256", hashlib.sha256), ("BLAKE3", blake3.blake3)):
        t0 = time.process_time()
        digest: Any = make()
        for _ in range(mib):
            digest.update(block)
        digest.hexdigest()
        out[name] = time.process_time() - t0
    return out


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    flags: set[str] = set()
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    shown = [f for f in ("sha_ni", "avx2", "avx512f", "avx512vl") if f in flags]
    print(
        f"machine: {os.cpu_count()} cores, {model}; CPU flags that matter: "
        f"{', '.join(shown) or 'none'}; SHA extensions: {'yes' if 'sha_ni' in flags else 'no'}"
    )
    ensure_engine()
    build_fakegame(FAKEGAME_IMAGE)
    instance = f"bench{uuid.uuid4().hex[:8]}"
    # Container names are engine-wide (peon-<server>): a name of this run only.
    server = f"bench-{instance[5:]}"
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
        subprocess.run([*peon, "server", "create", "fakegame", server, "--set", "world=B"],
                       env=env, cwd=ROOT, check=True, capture_output=True)  # fmt: skip
        subprocess.run([*peon, "server", "start", server], env=env, cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        half = args.mib // 2
        fill = (
            f"dd if=/dev/urandom of=/data/random bs=1M count={half} 2>/dev/null && "
            f"yes 'chunk of world save text, player positions and inventories' "
            f"| head -c {half * 2**20} > /data/text"
        )
        subprocess.run(["docker", "exec", f"peon-{server}", "sh", "-c", fill], check=True)
        print(f"data: {args.mib} MiB in the volume (half random, half text)")

        def shell(pipeline: str) -> tuple[float, int, float, float]:
            target = work / "baseline.tar.zst"
            cpu0, t0, kids0, engine0 = machine_cpu(), time.monotonic(), os.times(), engine_cpu()
            subprocess.run(["bash", "-o", "pipefail", "-c", pipeline.format(out=target)],
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            seconds, cpu1, size = time.monotonic() - t0, machine_cpu(), target.stat().st_size
            kids1 = os.times()
            own = (kids1.children_user - kids0.children_user + kids1.children_system
                   - kids0.children_system + engine_cpu() - engine0)  # fmt: skip
            target.unlink()
            return seconds, size, own, cpu1[1] - cpu0[1]

        rows = []
        print(f"load average before: {load()} (other work on the machine slows every side)")
        for r in range(args.rounds):
            base_s, size_b, base_cpu, base_steal = shell(
                f"docker cp peon-{server}:/data - | zstd -q -1 -T0 > {{out}}"
            )
            got = {}
            for mode in ("engine", "direct"):
                _, rss, out = run_measured([sys.executable, __file__, "--child", mode,
                                            str(config), server], env)  # fmt: skip
                secs, cpu, steal, detail = out.split(" ", 3)
                got[mode] = (float(secs), float(cpu), float(steal), rss, detail.strip())
            rows.append((base_s, got["engine"][0], got["direct"][0],
                         max(got["engine"][3], got["direct"][3]), base_cpu, got["engine"][1],
                         got["direct"][1]))  # fmt: skip
            e, d = got["engine"], got["direct"]
            print(
                f"round {r + 1}: baseline {base_s:.2f} s, {base_cpu:.1f} CPU s, steal "
                f"{base_steal:.1f} s | PEON engine {e[0]:.2f} s, {e[1]:.1f} CPU s, steal "
                f"{e[2]:.1f} s, peak RSS {e[3]:.0f} MiB, ratio {e[0] / base_s:.2f} | PEON "
                f"direct {d[0]:.2f} s, {d[1]:.1f} CPU s, steal {d[2]:.1f} s, peak RSS "
                f"{d[3]:.0f} MiB, ratio {d[0] / base_s:.2f}"
            )
            print(f"  audit: engine run: {e[4]} | direct run: {d[4]}")
        best_base = min(r[0] for r in rows)
        best_engine = min(r[1] for r in rows)
        best_direct = min(r[2] for r in rows)
        peak = max(r[3] for r in rows)
        med_engine = statistics.median(r[1] / r[0] for r in rows)
        med_direct = statistics.median(r[2] / r[0] for r in rows)
        cpu_base, cpu_engine, cpu_direct = (min(r[i] for r in rows) for i in (4, 5, 6))
        _, restore_rss, out = run_measured(
            [sys.executable, __file__, "--child", "restore", str(config), server], env
        )
        restore_s, restore_cpu, restore_steal = (float(x) for x in out.split(" ", 3)[:3])
        hashes = hash_cost(os.urandom(1 << 20), 1024)
        print(f"\nsummary ({size_b / 2**20:.0f} MiB archive; best of {args.rounds}, "
              "median per-round ratios in brackets):")  # fmt: skip
        print(
            f"  baseline docker cp | zstd -1 -T0: {best_base:.2f} s\n"
            f"  PEON through the engine: {best_engine:.2f} s -> ratio "
            f"{best_engine / best_base:.2f} [{med_engine:.2f}] (target <= 1.0)\n"
            f"  PEON reading directly:   {best_direct:.2f} s -> ratio "
            f"{best_direct / best_base:.2f} [{med_direct:.2f}] (target <= 0.6)\n"
            f"  CPU seconds (own threads + the engine's; least of the rounds): baseline "
            f"{cpu_base:.2f}, PEON engine {cpu_engine:.2f} ({cpu_engine / cpu_base:.2f}x), PEON "
            f"direct {cpu_direct:.2f} ({cpu_direct / cpu_base:.2f}x)\n"
            f"  restore with its safety backup: {restore_s:.2f} s, {restore_cpu:.1f} CPU s, "
            f"steal {restore_steal:.1f} s = {restore_s / best_direct:.2f}x the direct backup "
            f"(target <= 2.0), peak RSS {restore_rss:.0f} MiB\n"
            f"  peak RSS of a backup: {peak:.0f} MiB (target < 150)\n"
            f"  hashing 1 GiB on one core: SHA-256 {hashes['SHA-256']:.2f} CPU s, BLAKE3 "
            f"{hashes['BLAKE3']:.2f} CPU s (BLAKE3 / SHA-256 = "
            f"{hashes['BLAKE3'] / hashes['SHA-256']:.2f}; "
            f"{'with' if 'sha_ni' in flags else 'without'} SHA extensions)\n"
            f"  load average after: {load()}"
        )
    finally:
        cleanup_instance(instance)
        subprocess.run(["rm", "-rf", str(work)], check=False)


# --- restic repositories (issue 19) ----------------------------------------------------------
# .venv/bin/python bench/backup.py --restic [--mib 1024]
# A 1 GiB world of 64 region-style files (half random, half text) backed up into a local
# restic repository (backups.repository) three times: first, unchanged, after 5% of the data
# changed (4 random files' first 13 MiB rewritten, 52 MiB, as players moving through a few
# regions); then the newest restored. Baselines in the same run: `docker cp` of the volume out
# (to /dev/null) and of the same tar back in. Targets: unchanged <= 0.15x the first's time
# and < 1% added on disk; 5% changed <= 0.3x and <= 8% added; restore <= 1.5x docker cp in.


def restic_child(mode: str, config: str, name: str) -> None:
    """One backup or restore (of the newest backup) through the real services, timed around
    the call; prints seconds."""

    async def run() -> None:
        async with open_services(load_settings(Path(config))) as services:
            start = time.monotonic()
            if mode == "restore":
                newest = max(b.id for b in await services.backups.list(name))
                await services.backups.restore(name, newest, actor="bench")
            else:
                await services.backups.create(name, actor="bench")
            print(f"{time.monotonic() - start:.3f}")

    asyncio.run(run())


def restic_main() -> None:
    if sys.argv[2:3] == ["--child"]:
        restic_child(sys.argv[3], sys.argv[4], sys.argv[5])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--restic", action="store_true")
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    flags: set[str] = set()
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    shown = [f for f in ("aes", "avx2", "avx512f", "sha_ni") if f in flags]
    restic = subprocess.run(["restic", "version"], capture_output=True, text=True, check=True)
    print(f"machine: {os.cpu_count()} cores, {model}; CPU flags that matter (restic's AES and "
          f"SHA-256): {', '.join(shown) or 'none'}; load {Path('/proc/loadavg').read_text()[:14]}"
          f"\n{restic.stdout.strip()}")  # fmt: skip
    ensure_engine()
    build_fakegame(FAKEGAME_IMAGE)
    instance = f"bench{uuid.uuid4().hex[:8]}"
    server = f"bench-{instance[5:]}"
    work = Path(tempfile.mkdtemp(prefix="peon-bench-restic-"))
    repo = work / "repo"
    base = random.randrange(20000, 60000, 100)
    config = work / "peon.yaml"
    config.write_text(yaml.safe_dump({
        "instance_id": instance, "data_dir": str(work / "data"),
        "warplans_dir": str(TEST_WARPLANS),
        "ports": {"pool": f"{base}-{base + 99}", "bind_address": "127.0.0.1"},
        "backups": {"keep_last": 100, "min_free_mb": 0, "repository": {
            "location": str(repo), "password_env": "PEON_BENCH_RESTIC_PASSWORD"}},
    }))  # fmt: skip
    env = {**os.environ, "PEON_CONFIG": str(config), "PYTHONPATH": str(ROOT),
           "PEON_BENCH_RESTIC_PASSWORD": uuid.uuid4().hex}  # fmt: skip
    peon = [sys.executable, "-m", "bot.cli"]
    container = f"peon-{server}"

    def du() -> int:
        return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())

    def timed(*cmd: str, stdin: Any = None) -> float:
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, stdin=stdin, stdout=subprocess.DEVNULL)
        return time.monotonic() - t0

    def peon_op(mode: str) -> float:
        _, _, out = run_measured([sys.executable, __file__, "--restic", "--child", mode,
                                  str(config), server], env)  # fmt: skip
        return float(out.split()[0])

    try:
        subprocess.run([*peon, "server", "create", "fakegame", server, "--set", "world=B"],
                       env=env, cwd=ROOT, check=True, capture_output=True)  # fmt: skip
        subprocess.run([*peon, "server", "start", server], env=env, cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        files, each = 64, args.mib // 64
        fill = (
            f"mkdir -p /data/region && for i in $(seq 1 {files // 2}); do "
            f"dd if=/dev/urandom of=/data/region/r$i.mca bs=1M count={each} 2>/dev/null; "
            f"yes 'chunk of world save text, player positions and inventories' "
            f"| head -c {each * 2**20} > /data/region/t$i.dat; done"
        )
        subprocess.run(["docker", "exec", container, "sh", "-c", fill], check=True)
        print(f"data: {files * each} MiB in {files} files (half random, half text)")
        cp_out = timed("bash", "-c", f"docker cp {container}:/data - > {work / 'data.tar'}")
        with (work / "data.tar").open("rb") as tar_in:
            cp_in = timed("docker", "cp", "-", f"{container}:/", stdin=tar_in)
        (work / "data.tar").unlink()
        first = peon_op("create")
        size1 = du()
        unchanged = peon_op("create")
        size2 = du()
        change = " && ".join(
            f"dd if=/dev/urandom of=/data/region/r{i}.mca bs=1M count={each * 13 // 16} "
            "conv=notrunc 2>/dev/null"
            for i in range(1, 5)
        )
        subprocess.run(["docker", "exec", container, "sh", "-c", change], check=True)
        changed = peon_op("create")
        size3 = du()
        restore = peon_op("restore")
        changed_mib = 4 * (each * 13 // 16)
        world = files * each * 2**20  # "added" is a share of the world's size
        print(
            f"\nbaselines: docker cp out {cp_out:.2f} s, docker cp in {cp_in:.2f} s\n"
            f"first backup: {first:.2f} s, repository {size1 / 2**20:.0f} MiB (restic "
            f"compresses the text half)\n"
            f"unchanged: {unchanged:.2f} s = {unchanged / first:.3f}x the first (target <= "
            f"0.15), added {(size2 - size1) / 2**20:.2f} MiB = "
            f"{100 * (size2 - size1) / world:.2f}% of the world (target < 1%)\n"
            f"{changed_mib} MiB ({100 * changed_mib / (files * each):.0f}%) changed: "
            f"{changed:.2f} s = {changed / first:.3f}x (target <= 0.3), added "
            f"{(size3 - size2) / 2**20:.1f} MiB = {100 * (size3 - size2) / world:.1f}% of the "
            f"world (target <= 8%)\n"
            f"restore (verify, safety backup, stop, write back, start): {restore:.2f} s = "
            f"{restore / cp_in:.2f}x docker cp in (target <= 1.5), {restore / cp_out:.2f}x "
            f"docker cp out"
        )
    finally:
        cleanup_instance(instance)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--restic"]:
        restic_main()
    else:
        main()
