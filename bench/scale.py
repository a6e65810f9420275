"""Benchmark: PEON with hundreds of servers over two Docker engines.

On the real engine plus a second dockerd on this machine (its own socket, data root and
bridge, as the multi-host tests run one), N servers of the test game (the fake game image,
FROM scratch + static busybox: a shell, nc and sleep per container), half on each engine,
10% of them with a war plan whose player query (A2S) is never answered. For each N it prints:

- `/server list` through the real bot (`python -m bot`) and the Discord emulator, and
  `peon server list` (the CLI as a process): latency and engine calls per host;
- the automation tick with every server watched (announce_players): its duration against the
  check interval, its engine calls, and the lateness of a stop warning due while it runs
  (and of one due while no tick runs, same run);
- reconcile (what startup runs): time and engine calls;
- the bot's RSS, and the p99 of a burst of interactions while the bot's own tick runs against
  the same burst while it does not (same bot, same run);

then how each figure grows from the first N to the others, the targets of issue 17 against the
measured figures, and the machine (cores, CPU model, flags). No timed assertions.

Engine calls are counted where they happen: each engine is reached through a small counting
proxy on a unix socket (a process of its own, started here), which logs every HTTP request
line the clients send. Nothing in PEON is patched.

    .venv/bin/python bench/scale.py [--sizes 50,200,500] [--workers 12]

Everything it creates carries its own instance id and names starting `scl-`; it is removed at
the end, the second engine stopped and its bridge deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import docker
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.app import open_services  # noqa: E402
from bot.automation import Automation, UpdateWait, Warning  # noqa: E402
from bot.scheduler import Scheduler  # noqa: E402
from bot.settings import AutomationSettings, Settings, load_settings  # noqa: E402
from tests.discord_emulator import DiscordEmulator, Interaction  # noqa: E402
from tests.engine import FAKEGAME_IMAGE, SecondEngine, build_fakegame, ensure_engine  # noqa: E402

ADMIN, PLAYER = 42, 44
TEST_WARPLANS_DIR = ROOT / "tests" / "warplans"
LOCAL_SOCKET = "/var/run/docker.sock"
SILENT_EVERY = 10  # one server in ten never answers its player query
BOT_INTERVAL = "20s"  # the bot's own tick in the bot phase: often enough that bursts meet it
CHECK_INTERVAL = 30.0  # the default player_check_interval the tick is compared with
QUERY_TIMEOUT = 2.0  # bot.players.QUERY_TIMEOUT: what a silent server costs a serial tick
BURSTS, BURST_SIZE = 14, 20
ANSWER_TIMEOUT = 60.0  # seconds a burst waits for its answers; the rest count as unanswered
MIX: list[tuple[str, str, dict[str, str] | None]] = [
    ("server", "list", {}),
    ("warplan", "list", {}),
    ("server", "status", None),  # of one server (named when the servers exist)
]
REQUEST = re.compile(rb"\r\n(GET|POST|PUT|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")


# --- the counting proxy (runs as its own process) --------------------------------------------


async def proxy_main(listen: str, upstream: str, logfile: str) -> None:
    """Forward a unix socket to the engine's, logging each request line the client sends
    ("<unix time> <method> <path>"), so calls are counted whoever makes them."""
    out = open(logfile, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, scan: bool) -> None:
        carry = b"\r\n"  # the first bytes of a connection start a request line
        try:
            while data := await r.read(65536):
                if scan:
                    buf = carry + data
                    for m in REQUEST.finditer(buf):
                        if m.end() > len(carry):  # not counted with the previous chunk
                            path = m.group(2).decode(errors="replace").split("?")[0]
                            path = re.sub(r"^/v[\d.]+", "", path)
                            out.write(f"{time.time():.4f} {m.group(1).decode()} {path}\n")
                    carry = buf[-4096:]
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                w.close()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_unix_connection(upstream)
        except OSError:
            cw.close()
            return
        await asyncio.gather(pump(cr, uw, True), pump(ur, cw, False))

    with contextlib.suppress(FileNotFoundError):
        os.unlink(listen)
    server = await asyncio.start_unix_server(handle, listen, limit=1 << 20)
    async with server:
        await server.serve_forever()


class CallLog:
    """The requests one proxy logged, read back by time window."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def between(self, t0: float, t1: float) -> list[tuple[float, str, str]]:
        out = []
        for line in self.path.read_text().splitlines():
            ts, method, path = line.split(" ", 2)
            if t0 <= float(ts) <= t1:
                out.append((float(ts), method, path))
        return out


def start_proxy(listen: Path, upstream: str, log: Path) -> subprocess.Popen[bytes]:
    log.touch()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--proxy", str(listen), upstream, str(log)],
        start_new_session=True,
    )
    for _ in range(600):  # its imports take a few seconds on a busy machine
        if listen.exists():
            return proc
        time.sleep(0.05)
    raise RuntimeError("the counting proxy did not start")


# --- machine, engines, servers -----------------------------------------------------------------


def machine() -> str:
    model, flags = "?", set[str]()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "?":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    wanted = ["avx2", "avx512f", "sha_ni", "aes"]
    have = " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return (
        f"machine: {os.cpu_count()} cores, {model}, {have}, {int(mem) // 1024} MiB RAM, "
        f"Python {platform.python_version()}, kernel {platform.release()}"
    )


class ScaleEngine(SecondEngine):
    """The second engine on a bridge of its own (not the hosts tests' one, which may run at
    the same time), wide enough for hundreds of containers."""

    BRIDGE = "peon-scl-br"
    BRIDGE_ADDRESS = "10.226.0.1/22"

    def remove(self) -> None:
        self.stop()
        subprocess.run(["ip", "link", "del", self.BRIDGE], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def warplans(folder: Path) -> Path:
    folder.mkdir()
    plan = yaml.safe_load((TEST_WARPLANS_DIR / "fakegame.yaml").read_text())
    (folder / "fakegame.yaml").write_text(yaml.safe_dump(plan))
    silent = {**plan, "name": "fakegame-silent", "players": {"protocol": "a2s", "port": "query"}}
    (folder / "fakegame-silent.yaml").write_text(yaml.safe_dump(silent))
    return folder


def config(work: Path, instance: str, sockets: list[Path], emu: DiscordEmulator | None) -> Path:
    data: dict[str, Any] = {
        "instance_id": instance,
        "data_dir": str(work / "data"),
        "warplans_dir": str(work / "warplans"),
        "hosts": [
            {
                "name": "local",
                "base_url": f"unix://{sockets[0]}",
                "pool": "42000-43999",
                "public_address": "127.0.0.1",
            },
            {
                "name": "second",
                "base_url": f"unix://{sockets[1]}",
                "pool": "44000-45999",
                "public_address": "127.0.0.1",
            },
        ],
        "ports": {"bind_address": "127.0.0.1"},
        "log": {"level": "WARNING"},
        "automation": {"player_check_interval": BOT_INTERVAL, "announce_players": True},
    }
    if emu is not None:
        roles = {"admin": [emu.roles["admin"]], "player": [emu.roles["player"]]}
        data["discord"] = {"guilds": {emu.guild_id: {"roles": roles}}}
    path = work / "peon.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def server_names(run: str, n: int) -> list[str]:
    return [f"scl-{run}-{i:03d}" for i in range(n)]


async def grow(settings: Settings, names: list[str], have: int, workers: int) -> float:
    """Create and start the servers past the first `have`, `workers` at a time; seconds."""
    t0 = time.monotonic()
    bound = asyncio.Semaphore(workers)
    failed: list[str] = []
    async with open_services(settings) as svc:

        async def one(i: int, name: str) -> None:
            plan = "fakegame-silent" if i % SILENT_EVERY == 0 else "fakegame"
            async with bound:
                try:
                    host = "local" if i % 2 == 0 else "second"
                    await svc.servers.create(plan, name, {}, actor="bench", host=host)
                    await svc.servers.start(name, actor="bench")
                except Exception as e:
                    failed.append(f"{name}: {e}")

        await asyncio.gather(*(one(i, n) for i, n in enumerate(names) if i >= have))
    if failed:
        print(f"  {len(failed)} server(s) could not be made, e.g. {failed[0]}", flush=True)
    return time.monotonic() - t0


def cleanup(instance: str, base_urls: list[str | None]) -> None:
    def engine(url: str | None) -> None:
        client = docker.DockerClient(base_url=url, timeout=120) if url else docker.from_env()
        flt = {"label": [f"io.peon.instance={instance}"]}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda c: c.remove(force=True),
                          client.containers.list(all=True, filters=flt)))  # fmt: skip
            list(pool.map(lambda v: v.remove(force=True), client.volumes.list(filters=flt)))
        client.close()

    for url in base_urls:
        with contextlib.suppress(Exception):
            engine(url)


# --- in-process measurements: reconcile, the tick, warnings ------------------------------------


class Recorder:
    """A notifier that notes when each warning arrived."""

    def __init__(self) -> None:
        self.warned: dict[str, float] = {}

    async def warn(self, warning: Warning) -> None:
        self.warned.setdefault(warning.server, time.time())

    async def acted(self, server: str, action: str, why: str, connect: str | None) -> None: ...
    async def failed(self, server: str, action: str, why: str, error: str) -> None: ...
    async def cancelled(self, server: str, action: str, why: str) -> None: ...
    async def players(
        self, server: str, joined: list[str], left: list[str], online: int
    ) -> None: ...
    async def update_waiting(
        self, wait: UpdateWait, online: int | None, when_busy: str
    ) -> None: ...
    async def update_done(self, server: str, why: str, changed: bool, restarted: bool) -> None: ...
    async def update_skipped(self, server: str, why: str, reason: str) -> None: ...


def per_host(logs: list[CallLog], t0: float, t1: float) -> list[int]:
    return [len(log.between(t0, t1)) for log in logs]


async def warning_lateness(
    a: Automation, rec: Recorder, server: str, during_tick: bool
) -> tuple[float, bool]:
    """Plan a stop whose 10 s warning is due in 2 s; with `during_tick`, start a tick 0.5 s
    before it. Seconds the warning came after its time, and whether a tick was running."""
    view = await a.add_timer(server, after="12s", at=None, zone=None, actor="bench")
    pending = a.pending(server)
    assert pending is not None
    due = (pending.at - timedelta(seconds=10)).timestamp()
    tick_span = (0.0, 0.0)
    if during_tick:
        await asyncio.sleep(max(0.0, due - 0.5 - time.time()))
        t0 = time.time()
        await a.tick()
        tick_span = (t0, time.time())
    while server not in rec.warned and time.time() < due + 30:
        await asyncio.sleep(0.01)
    arrived = rec.warned.pop(server, float("nan"))
    await a.remove(view.schedule.id, "bench")
    return arrived - due, tick_span[0] <= arrived <= tick_span[1]


async def in_process(settings: Settings, logs: list[CallLog], names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with open_services(settings) as svc:
        await svc.servers.reconcile("bench")  # warm: connections, the first listing
        times, calls = [], []
        for _ in range(3):
            t0 = time.time()
            await svc.servers.reconcile("bench")
            t1 = time.time()
            times.append(t1 - t0)
            calls.append(per_host(logs, t0, t1))
        out["reconcile_s"] = statistics.median(times)
        out["reconcile_calls"] = min(calls, key=sum)
        auto = AutomationSettings(announce_players=True, warn_before=["10s"], shortest="1s",
                                  player_check_interval="1h")  # fmt: skip
        rec = Recorder()
        a = Automation(servers=svc.servers, store=svc.store, scheduler=Scheduler(),
                       settings=auto, notifier=rec)  # fmt: skip
        t0 = time.time()
        await a.start()
        out["auto_start_s"] = time.time() - t0
        try:
            await a.tick()  # the first count of every server
            ticks, tick_calls = [], []
            for _ in range(3):
                t0 = time.time()
                await a.tick()
                t1 = time.time()
                ticks.append(t1 - t0)
                tick_calls.append(per_host(logs, t0, t1))
            out["tick_s"] = statistics.median(ticks)
            out["tick_calls"] = min(tick_calls, key=sum)
            quiet = [n for i, n in enumerate(names) if i % SILENT_EVERY]
            out["warn_idle_s"], _ = await warning_lateness(a, rec, quiet[0], False)
            out["warn_tick_s"], out["warn_in_tick"] = await warning_lateness(a, rec, quiet[1], True)
        finally:
            await a.close()
    return out


def cli_list(cfg: Path, logs: list[CallLog]) -> dict[str, Any]:
    env = {**os.environ, "PEON_CONFIG": str(cfg)}
    times, calls = [], []
    for _ in range(3):
        t0 = time.time()
        cmd = [sys.executable, "-m", "bot.cli", "server", "list"]
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
        t1 = time.time()
        if done.returncode:
            raise RuntimeError(f"peon server list failed: {done.stderr.strip()[-300:]}")
        times.append(t1 - t0)
        calls.append(per_host(logs, t0, t1))
    # The interpreter's own start and imports, for scale: the same process doing nothing.
    floors = []
    for _ in range(3):
        t0 = time.time()
        subprocess.run([sys.executable, "-c", "import bot.cli"], cwd=ROOT, check=True)
        floors.append(time.time() - t0)
    floor = statistics.median(floors)
    return {
        "cli_s": statistics.median(times),
        "cli_calls": min(calls, key=sum),
        "cli_floor_s": floor,
    }


# --- the bot: /server list, bursts during its tick and without, RSS ----------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def listed(i: Interaction) -> bool:
    return i.original is not None and "Game servers" in i.original.text()


def tick_marks(logs: list[CallLog], t0: float, t1: float, besides: str) -> list[float]:
    """When the bot's periodic checks (its tick, its status board) counted players by log:
    `/logs` requests of any server but `besides`, the one the bursts ask the status of."""
    return sorted(
        ts
        for log in logs
        for ts, _, path in log.between(t0, t1)
        if path.endswith("/logs") and besides not in path
    )


def container_id(name: str, base_urls: list[str | None]) -> str:
    for url in base_urls:
        client = docker.DockerClient(base_url=url) if url else docker.from_env()
        try:
            return str(client.containers.get(f"peon-{name}").id)
        except docker.errors.NotFound:
            continue
        finally:
            client.close()
    raise RuntimeError(f"no container for {name}")


async def bot_phase(
    cfg: Path, emu: DiscordEmulator, logs: list[CallLog], name: str, name_id: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    env = {
        **os.environ,
        "PEON_CONFIG": str(cfg),
        "DISCORD_TOKEN": emu.token,
        "PEON_DISCORD_API_BASE": emu.api_base,
        "PEON_DISCORD_GATEWAY_URL": emu.gateway_url,
    }
    logfile = cfg.parent / "bot.log"
    logfile.unlink(missing_ok=True)  # this N's bot only
    t0 = time.time()
    with logfile.open("ab") as sink:
        bot = subprocess.Popen([sys.executable, "-m", "bot"], env=env, cwd=ROOT, stdout=sink,
                               stderr=sink)  # fmt: skip
    try:
        await asyncio.wait_for(emu.identified.wait(), 180)
        out["bot_ready_s"] = time.time() - t0
        await asyncio.sleep(2.5)  # guild_ready_timeout: READY fires after it
        with contextlib.suppress(TimeoutError):
            await emu.settle(timeout=60)
        print(f"  bot ready after {out['bot_ready_s']:.1f} s; /server list ...", flush=True)

        # /server list, in windows where the bot's own tick makes no request.
        lats: list[float] = []
        calls: list[list[int]] = []
        for _ in range(60):
            if len(lats) >= 5:
                break
            await asyncio.sleep(0.2)
            now = time.time()
            if any(per_host(logs, now - 0.3, now)):
                continue
            i = await emu.slash(PLAYER, "server", subcommand="list")
            try:
                await emu.wait_for(functools.partial(listed, i), ANSWER_TIMEOUT)
            except TimeoutError:
                continue
            done = time.time()
            lat = time.monotonic() - emu.dispatch_times[i.id]
            start = done - lat
            window = [x for log in logs for x in log.between(start, done)]
            if any(p.endswith("/logs") or (p.endswith("/json") and "/containers/" in p
                   and not p.endswith("/containers/json")) for _, _, p in window):  # fmt: skip
                continue  # a tick's counting came in between: not only the list's calls
            lats.append(lat)
            calls.append(per_host(logs, start, done))
        if len(lats) < 3:
            # The bot's own checks kept the engines busy all along (hundreds of servers):
            # measure anyway, and count only the list's own requests (containers, volumes).
            for _ in range(3):
                i = await emu.slash(PLAYER, "server", subcommand="list")
                await emu.wait_for(functools.partial(listed, i), ANSWER_TIMEOUT)
                done = time.time()
                lat = time.monotonic() - emu.dispatch_times[i.id]
                lats.append(lat)
                calls.append([
                    sum(1 for _, _, p in log.between(done - lat, done)
                        if p in ("/containers/json", "/volumes"))
                    for log in logs
                ])  # fmt: skip
                await asyncio.sleep(0.5)
            out["list_busy"] = True
        out["list_s"] = statistics.median(lats) if lats else float("nan")
        out["list_calls"] = min(calls, key=sum) if calls else ["?", "?"]

        # Bursts, back to back for a while: some meet the bot's tick, some do not.
        kinds = [(c, s, o if o is not None else {"name": name}) for c, s, o in MIX]
        bursts: list[tuple[float, float, list[float]]] = []
        unanswered = 0
        print(f"  {BURSTS} bursts of {BURST_SIZE} interactions ...", flush=True)
        for _ in range(BURSTS):
            b0 = time.time()
            inter = await asyncio.gather(*[
                emu.slash(PLAYER, kinds[k % 3][0], subcommand=kinds[k % 3][1],
                          options=kinds[k % 3][2])
                for k in range(BURST_SIZE)
            ])  # fmt: skip
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ANSWER_TIMEOUT):
                    await asyncio.gather(*[i.answered.wait() for i in inter])
            b1 = time.time()
            answered = [i for i in inter if i.id in emu.callback_times]
            unanswered += len(inter) - len(answered)
            ms = [(emu.callback_times[i.id] - emu.dispatch_times[i.id]) * 1000 for i in answered]
            bursts.append((b0, b1, ms))
            with contextlib.suppress(TimeoutError):
                await emu.settle(timeout=30)
            await asyncio.sleep(1.5)
        marks = tick_marks(logs, bursts[0][0] - 10, time.time(), name_id)
        during, idle = [], []
        for b0, b1, ms in bursts:
            # A tick lasts at least the silent servers' query timeout after its first count.
            if any(b0 - QUERY_TIMEOUT <= m <= b1 for m in marks):
                during += ms
            elif not any(b0 - QUERY_TIMEOUT - 1 <= m <= b1 + 0.2 for m in marks):
                idle += ms
        out["burst_idle_p99"] = percentile(idle, 0.99) if idle else float("nan")
        out["burst_tick_p99"] = percentile(during, 0.99) if during else float("nan")
        out["bursts"] = (len(idle) // BURST_SIZE, len(during) // BURST_SIZE)
        out["unanswered"] = unanswered
        out["rss_mib"] = rss_mib(bot.pid)
        # APScheduler skips a tick still running when the next is due: the bot's ticks that
        # overran its interval.
        out["bot_ticks_overran"] = logfile.read_text(errors="replace").count("auto:tick (trigger")
    finally:
        bot.terminate()
        try:
            bot.wait(30)
        except subprocess.TimeoutExpired:
            bot.kill()
            bot.wait()
    return out


# --- report ----------------------------------------------------------------------------------


def fmt(v: Any) -> str:
    if isinstance(v, list):
        return "+".join(map(str, v))
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


ROWS = [
    ("/server list (bot) latency s", "list_s", None),
    ("/server list engine calls local+second", "list_calls", "<= 2 per host"),
    ("  (engines busy: only list endpoints counted)", "list_busy", None),
    ("peon server list wall time s", "cli_s", None),
    ("  python -c 'import bot.cli' alone s", "cli_floor_s", None),
    ("peon server list engine calls", "cli_calls", "<= 2 per host"),
    ("reconcile (startup) s", "reconcile_s", "< 10 at N=200, linear"),
    ("reconcile engine calls", "reconcile_calls", None),
    ("automation start (catch-up) s", "auto_start_s", None),
    ("tick duration s", "tick_s", f"< {CHECK_INTERVAL / 2:g} (0.5x {CHECK_INTERVAL:g} s) at N=200"),
    ("tick engine calls", "tick_calls", None),
    ("warning lateness, no tick s", "warn_idle_s", None),
    ("warning lateness, during a tick s", "warn_tick_s", "< 1"),
    ("  that warning came while the tick ran", "warn_in_tick", None),
    ("bot start to gateway ready s", "bot_ready_s", None),
    ("bot RSS MiB", "rss_mib", "< 120 at N=200"),
    (f"bot ticks that overran its {BOT_INTERVAL} interval", "bot_ticks_overran", None),
    ("burst p99, no tick ms", "burst_idle_p99", None),
    ("burst p99, during the bot's tick ms", "burst_tick_p99", None),
    ("bursts measured (no tick, during)", "bursts", None),
    (f"interactions unanswered after {ANSWER_TIMEOUT:g} s", "unanswered", "0"),
    ("creating + starting the servers added s", "grow_s", None),
]


def growth(base: Any, value: Any) -> str:
    """value / base for numbers (sums for per-host lists), blank for anything else."""

    def total(v: Any) -> Any:
        if isinstance(v, list):
            return sum(v) if all(isinstance(x, int) for x in v) else None
        return v

    num, den = total(value), total(base)
    if isinstance(num, bool) or not isinstance(num, int | float):
        return ""
    if not isinstance(den, int | float) or not den:
        return ""
    return f"{num / den:.2f}x"


def report(results: dict[int, dict[str, Any]]) -> None:
    sizes = sorted(results)
    first = sizes[0]
    print("\n=== bench/scale.py summary ===")
    head = f"{'figure':<44}" + "".join(f"{'N=' + str(n):>12}" for n in sizes)
    head += "".join(f"{'x ' + str(first) + '->' + str(n):>12}" for n in sizes[1:])
    print(head + "   target")
    for label, key, target in ROWS:
        vals = [results[n].get(key, "?") for n in sizes]
        line = f"{label:<44}" + "".join(f"{fmt(v):>12}" for v in vals)
        for v in vals[1:]:
            line += f"{growth(vals[0], v):>12}"
        print(line + (f"   {target}" if target else ""))
    for n in sizes:
        r = results[n]
        idle = r.get("burst_idle_p99") or float("nan")
        ratio = r["burst_tick_p99"] / idle
        r["burst_ratio"] = ratio
        print(f"N={n}: burst p99 during tick / without = {ratio:.2f} (target <= 1.2); "
              f"tick / check interval = {r['tick_s'] / CHECK_INTERVAL:.3f} (target < 0.5); "
              f"serial baseline for this tick's silent servers alone: "
              f"{n // SILENT_EVERY * QUERY_TIMEOUT:.0f} s")  # fmt: skip
    n = 200 if 200 in results else sizes[-1]
    r = results[n]

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"\ntargets at N={n}:")
    print(f"  /server list calls per host <= 2: {r['list_calls']} -> "
          f"{met(all(isinstance(c, int) and c <= 2 for c in r['list_calls']))}")  # fmt: skip
    print(f"  peon server list calls per host <= 2: {r['cli_calls']} -> "
          f"{met(all(c <= 2 for c in r['cli_calls']))}")  # fmt: skip
    print(f"  tick < 0.5x interval: {r['tick_s']:.2f} s / {CHECK_INTERVAL:g} s -> "
          f"{met(r['tick_s'] < CHECK_INTERVAL / 2)}")  # fmt: skip
    print(f"  warning lateness during a tick < 1 s: {r['warn_tick_s']:.3f} s -> "
          f"{met(r['warn_tick_s'] < 1)}")  # fmt: skip
    print(f"  reconcile < 10 s: {r['reconcile_s']:.2f} s -> {met(r['reconcile_s'] < 10)}")
    print(f"  bot RSS < 120 MiB: {r['rss_mib']:.1f} MiB -> {met(r['rss_mib'] < 120)}")
    print(f"  burst p99 during tick <= 1.2x without: {r['burst_ratio']:.2f} -> "
          f"{met(r['burst_ratio'] <= 1.2)}")  # fmt: skip


# --- main ------------------------------------------------------------------------------------


async def main(sizes: list[int], workers: int) -> None:
    print(machine(), flush=True)
    ensure_engine()
    build_fakegame(FAKEGAME_IMAGE)
    run = uuid.uuid4().hex[:4]
    instance = f"scl{run}"
    work = Path(tempfile.mkdtemp(prefix="peon-scl-"))
    second = ScaleEngine(Path(f"/tmp/scl-e2-{run}"))
    proxies: list[subprocess.Popen[bytes]] = []
    results: dict[int, dict[str, Any]] = {}
    try:
        second.start()
        build_fakegame(FAKEGAME_IMAGE, base_url=second.base_url)
        sockets = [work / "local.sock", work / "second.sock"]
        logs = [CallLog(work / "local.calls"), CallLog(work / "second.calls")]
        proxies = [start_proxy(sockets[0], LOCAL_SOCKET, logs[0].path),
                   start_proxy(sockets[1], str(second.socket), logs[1].path)]  # fmt: skip
        warplans(work / "warplans")
        cfg = config(work, instance, sockets, None)
        settings = load_settings(cfg, env={})
        names = server_names(run, max(sizes))
        have = 0
        for n in sizes:
            print(f"\n--- N={n}: creating and starting {n - have} more servers ...", flush=True)
            r: dict[str, Any] = {"grow_s": await grow(settings, names[:n], have, workers)}
            have = n
            print(f"  made in {r['grow_s']:.0f} s; measuring in process ...", flush=True)
            r |= await in_process(settings, logs, names[:n])
            r |= cli_list(cfg, logs)
            print("  measuring the bot ...", flush=True)
            emu = DiscordEmulator()
            await emu.start()
            emu.add_member(ADMIN, "ada", [emu.roles["admin"]])
            emu.add_member(PLAYER, "pia", [emu.roles["player"]])
            try:
                bot_cfg = config(work, instance, sockets, emu)
                cid = container_id(names[1], [None, second.base_url])
                r |= await bot_phase(bot_cfg, emu, logs, names[1], cid)
            finally:
                await emu.close()
            results[n] = r
            print("  " + ", ".join(f"{k}={fmt(v)}" for k, v in r.items()), flush=True)
    finally:
        for p in proxies:
            p.terminate()
        print("\ncleaning up ...", flush=True)
        cleanup(instance, [None, second.base_url])
        second.remove()
        shutil.rmtree(work, ignore_errors=True)
        if results:  # also what was measured before an interruption
            report(results)
            print(f"\nmeasured sizes: {sorted(results)}; reproduce: .venv/bin/python "
                  f"bench/scale.py --sizes {','.join(map(str, sizes))}")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--proxy":
        asyncio.run(proxy_main(*sys.argv[2:5]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200", help="numbers of servers, e.g. 50,200,500")
    parser.add_argument("--workers", type=int, default=12, help="servers made at once")
    args = parser.parse_args()
    asyncio.run(main([int(x) for x in args.sizes.split(",")], args.workers))
