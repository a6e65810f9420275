"""The `peon` command: admin CLI over the same services the bot uses.

Exit codes: 0 success, 1 a one-line error, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from bot import __version__, rules
from bot.app import Services, open_services
from bot.errors import ConfigError, InstallFailed, PeonError, StartFailed, WarplanError
from bot.events import Event
from bot.importers import import_file
from bot.models import (
    Backup,
    InstallRecord,
    Phase,
    ProgressEvent,
    PullProgress,
    human_duration,
)
from bot.players import format_players
from bot.settings import Settings, config_path, load_settings
from bot.store import Store
from bot.tokens import TokenService
from bot.warplans import (
    dump_warplan,
    load_catalog,
    load_warplan,
    plan_warnings,
    unverified_facts,
    warplan_json_schema,
)

log = logging.getLogger("peon")
BAR_WIDTH = 30


class UsageError(Exception):
    """Bad command-line usage: exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peon", description="Run game servers as Docker containers.")
    p.add_argument("--config", help="config file (default: $PEON_CONFIG or config/peon.yaml)")
    p.add_argument("--version", action="version", version=f"peon {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="group", required=True)

    wp = sub.add_parser("warplan", help="war plans: per-game recipes")
    wsub = wp.add_subparsers(dest="action", required=True)
    wsub.add_parser("list", help="list loaded plans and files that failed")
    s = wsub.add_parser("show", help="show one plan")
    s.add_argument("name")
    s = wsub.add_parser(
        "validate", help="validate a plan file or a folder of them; warn about risky patterns"
    )
    s.add_argument("path")
    s.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    s = wsub.add_parser(
        "import", help="convert a PEON recipe (folder or plan.json) or a Pterodactyl egg"
    )
    s.add_argument("path")
    s.add_argument("--image", help="run this image instead of the one the recipe names")
    s.add_argument("--name", help="the war plan's name (default: from the recipe)")
    s.add_argument("-o", "--output", help="write here (default: warplans/<name>.yaml)")
    s.add_argument("--stdout", action="store_true", help="print instead of writing a file")
    s = wsub.add_parser("schema", help="print the war plan JSON Schema")

    sv = sub.add_parser("server", help="game servers")
    ssub = sv.add_subparsers(dest="action", required=True)
    s = ssub.add_parser("create", help="create a server from a war plan")
    s.add_argument("warplan")
    s.add_argument("name")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a war plan variable (repeatable)",
    )
    s.add_argument("--host", help="Docker host to create it on (default: most free memory)")
    for action in ("start", "stop", "restart", "status"):
        s = ssub.add_parser(action, help=f"{action} a server")
        s.add_argument("name")
    s = ssub.add_parser("logs", help="last log lines")
    s.add_argument("name")
    s.add_argument("-n", "--tail", type=int, default=100)
    s = ssub.add_parser("update", help="pull a newer image and recreate, keeping data")
    s.add_argument("name")
    how = s.add_mutually_exclusive_group()
    how.add_argument("--no-pull", action="store_true", help="recreate from the local image")
    how.add_argument(
        "--check", action="store_true", help="only ask the registry whether there is a newer image"
    )
    s = ssub.add_parser("delete", help="delete a server (data kept unless --purge)")
    s.add_argument("name")
    s.add_argument("--purge", action="store_true", help="also delete its data volumes")
    s.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    s = ssub.add_parser("console", help="send a console command to a running server")
    s.add_argument("name")
    s.add_argument("command")
    s = ssub.add_parser(
        "set", help="change settings (war plan variables); recreates it, keeping its data"
    )
    s.add_argument("name")
    s.add_argument("values", nargs="+", metavar="KEY=VALUE",
                   help="KEY= puts a setting back to its default (a secret: keeps it)")  # fmt: skip
    s = ssub.add_parser(
        "reinstall", help="run the war plan's install step again (backs the data up first)"
    )
    s.add_argument("name")
    s.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    s = ssub.add_parser("install-log", help="the whole log of the server's last install step")
    s.add_argument("name")
    s = ssub.add_parser("purge", help="delete the data a plain delete kept")
    s.add_argument("name")
    s.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    s = ssub.add_parser("list", help="list servers")
    s.add_argument("--kept", action="store_true", help="data kept from deleted servers instead")
    s = ssub.add_parser("audit", help="recent audit log")
    s.add_argument("name", nargs="?")
    s.add_argument("-n", "--limit", type=int, default=20)

    ev = sub.add_parser("events", help="the event stream: what happened, oldest first")
    ev.add_argument("name", nargs="?", help="only this server's")
    ev.add_argument("-n", "--limit", type=int, default=20, help="the last N (default 20)")
    ev.add_argument("--since", type=int, metavar="ID", help="those after event ID instead")
    ev.add_argument("-f", "--follow", action="store_true", help="keep printing new ones")
    ev.add_argument("--json", action="store_true", help="one JSON object per line")

    sc = sub.add_parser("schedule", help="schedules (change them in Discord)")
    scsub = sc.add_subparsers(dest="action", required=True)
    s = scsub.add_parser("list", help="schedules and when each acts next")
    s.add_argument("name", nargs="?", help="only this server's")

    bk = sub.add_parser("backup", help="backups of server data")
    bsub = bk.add_subparsers(dest="action", required=True)
    s = bsub.add_parser("create", help="back a server up now")
    s.add_argument("name")
    s = bsub.add_parser("list", help="backups, newest first")
    s.add_argument("name", nargs="?")
    s = bsub.add_parser("restore", help="replace a server's data with a backup")
    s.add_argument("name")
    s.add_argument("id", type=int)
    s.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    s = bsub.add_parser("delete", help="delete a backup")
    s.add_argument("id", type=int)
    for action in ("lock", "unlock"):
        s = bsub.add_parser(action, help=f"{action} a backup (locked ones are never pruned)")
        s.add_argument("id", type=int)
    s = bsub.add_parser("check", help="verify the backup repositories' integrity (restic check)")
    s.add_argument("repository", nargs="?", help="only this one (default: all)")
    s.add_argument("--read-data", metavar="SHARE", help="also read back this share, e.g. 10%%")

    tk = sub.add_parser("token", help="HTTP API tokens (docs/api.md)")
    tsub = tk.add_subparsers(dest="action", required=True)
    s = tsub.add_parser("create", help="create a token; it is shown once")
    s.add_argument("name")
    s.add_argument("--role", required=True, choices=["admin", "operator", "player"])
    s.add_argument("--server", help="only for this server")
    tsub.add_parser("list", help="tokens (never the tokens themselves)")
    s = tsub.add_parser("revoke", help="revoke a token: it stops working at once")
    s.add_argument("name")

    sub.add_parser("check", help="check config, war plans, database and Docker")
    sub.add_parser("run", help="run the Discord bot (and the HTTP API when api: is set)")
    sub.add_parser("serve-api", help="serve the HTTP API alone, without Discord")
    return p


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return f"cli:uid{os.getuid()}"


def _parse_sets(items: Sequence[str], what: str = "--set") -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{what} takes KEY=VALUE, got '{item}'")
        out[key.strip()] = value
    return out


class ProgressPrinter:
    """Pull progress as a bar on a terminal, plain step lines otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._bar_open = False

    async def __call__(self, event: ProgressEvent) -> None:
        if isinstance(event, PullProgress):
            if not self.tty:
                return
            frac = event.fraction or 0.0
            filled = int(frac * BAR_WIDTH)
            mb = f"{event.current / 1e6:.0f}/{event.total / 1e6:.0f} MB" if event.total else ""
            self.stream.write(
                f"\r  [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                f"{frac * 100:3.0f}% {mb} ({event.layers_done}/{event.layers} "
                "layers)"
            )
            self.stream.flush()
            self._bar_open = True
            return
        if not isinstance(event, Phase):
            return
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        detail = f": {event.detail}" if event.detail else ""
        self.stream.write(f"{event.server}: {event.step}{detail}\n")
        self.stream.flush()


def _install_state(run: InstallRecord) -> str:
    when = f"{run.started_at:%Y-%m-%d %H:%M} UTC"
    if run.installed:
        return f"installed {when} in {run.seconds:.0f} s"
    last = "cut short" if run.ok is None else f"failed (exit code {run.exit_code})"
    return f"not installed: the run of {when} {last}; it installs at its next start"


def _table(rows: list[list[str]], out: IO[str]) -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def _confirm(question: str, expected: str, stdin: IO[str], out: IO[str]) -> bool:
    out.write(f"{question} Type '{expected}' to confirm: ")
    out.flush()
    return stdin.readline().strip() == expected


def _confirmed(
    yes: bool, verb: str, question: str, expected: str, *, stdin: IO[str], out: IO[str]
) -> bool:
    """Whether to go ahead: --yes, or the person typed `expected`. Refused in one sentence
    when there is no terminal to ask on (a script must say --yes); "cancelled" on a no."""
    if yes:
        return True
    if not stdin.isatty():
        raise PeonError(f"Refusing to {verb} without confirmation: pass --yes.")
    if _confirm(question, expected, stdin, sys.stderr):
        return True
    out.write("cancelled\n")
    return False


async def _warplan(args: argparse.Namespace, settings: Settings, out: IO[str]) -> int:
    if args.action == "list":
        catalog = load_catalog(settings.warplans_dir)
        _table(
            [["NAME", "TITLE", "IMAGE"]]
            + [[p.name, p.title, p.image] for p in catalog.plans.values()],
            out,
        )
        for err in catalog.errors:
            out.write(f"error: {err}\n")
        return 1 if catalog.errors else 0
    if args.action == "show":
        catalog = load_catalog(settings.warplans_dir)
        out.write(dump_warplan(catalog.get(args.name)))
        return 0
    if args.action == "validate":
        path = Path(args.path)
        if path.is_dir():
            catalog = load_catalog(path)
            checked = [(catalog.sources[n], catalog.plans[n]) for n in catalog.names()]
            errors = list(catalog.errors)
        else:
            checked, errors = [(path, load_warplan(path))], []
        warned = 0
        for source, plan in checked:
            notes = plan_warnings(plan)
            unverified = unverified_facts(plan)
            extra = f", {len(unverified)} unverified" if unverified else ""
            out.write(f"ok: {source} ({plan.title}{extra})\n")
            for note in notes:
                out.write(f"warning: {source}: {note}\n")
            warned += len(notes)
        for err in errors:
            out.write(f"error: {err}\n")
        failed = bool(errors) or not checked or (args.strict and warned > 0)
        return 1 if failed else 0
    if args.action == "schema":
        out.write(json.dumps(warplan_json_schema(), indent=2) + "\n")
        return 0
    if args.action == "import":
        # Reads the recipe's whole actions/ folder: off the loop, like all file work.
        result = await asyncio.to_thread(
            import_file, Path(args.path), image=args.image, name=args.name
        )
        for item in result.unmapped:
            sys.stderr.write(f"not mapped: {item}\n")
        if result.untested:
            sys.stderr.write("untested: the recipe says nobody has run it; check it first\n")
        if args.stdout:
            out.write(result.yaml_text)
            return 0
        target = (
            Path(args.output)
            if args.output
            else (settings.warplans_dir / f"{result.plan.name}.yaml")
        )
        if target.exists():
            raise PeonError(f"{target} already exists; choose another --output.")
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(result.yaml_text, encoding="utf-8")
        tmp.replace(target)  # no half-written plan is ever picked up by the loader
        out.write(f"wrote {target} (war plan '{result.plan.name}')\n")
        return 0
    raise UsageError(f"unknown warplan action {args.action}")


async def _server(args: argparse.Namespace, svc: Services, out: IO[str], stdin: IO[str]) -> int:
    servers = svc.servers
    actor = _actor()
    progress = ProgressPrinter(sys.stderr)
    if args.action not in ("list", "status", "logs", "audit", "install-log"):
        report = await servers.reconcile(actor)
        for line in report.lines():
            sys.stderr.write(f"reconciled: {line}\n")
    if args.action == "create":
        values = _parse_sets(args.set)
        record = await servers.create(
            args.warplan, args.name, values, actor=actor, host=args.host, progress=progress
        )
        ports = ", ".join(f"{p.name} {p.host}/{p.protocol}" for p in record.ports) or "none"
        where = f" on host {record.host}" if len(svc.camps) > 1 else ""
        out.write(
            f"created {record.name} from {record.warplan}{where} (ports: {ports}); "
            f"start it with: peon server start {record.name}\n"
        )
        return 0
    if args.action in ("start", "restart"):
        call = servers.start if args.action == "start" else servers.restart
        try:
            result = await call(args.name, actor=actor, progress=progress)
        except StartFailed as e:
            for line in e.logs[-10:]:
                sys.stderr.write(f"  | {line}\n")
            raise
        if result.already_running:
            out.write(f"{args.name} is already running at {result.connect()}\n")
        else:
            out.write(f"{args.name} is ready at {result.connect()} (in {result.seconds:.1f} s)\n")
        return 0
    if args.action == "stop":
        stopped = await servers.stop(args.name, actor=actor, progress=progress)
        out.write(f"{args.name} stopped\n" if stopped else f"{args.name} was not running\n")
        return 0
    if args.action == "status":
        st = await servers.status(args.name)
        now = datetime.now(UTC)
        rows = [
            ["name", st.record.name],
            ["war plan", st.record.warplan],
            ["state", st.state],
            *([["host", st.record.host]] if len(svc.camps) > 1 else []),
            ["uptime", human_duration(st.uptime(now))],
            [
                "address",
                ", ".join(f"{st.address}:{p.host}/{p.protocol} ({p.name})" for p in st.record.ports)
                or "-",
            ],
        ]
        if st.container and st.container.health:
            rows.append(["health", st.container.health])
        if st.usage:
            mem = f"{st.usage.memory_bytes / 2**20:.0f} MiB"
            if st.usage.memory_limit:
                mem += f" / {st.usage.memory_limit / 2**20:.0f} MiB"
            rows += [["cpu", f"{st.usage.cpu_percent:.1f}%"], ["memory", mem]]
        count = await servers.players(st)
        if count is not None:
            rows.append(["players", format_players(count)])
        if st.hang_check is not None:
            rows.append(["hang check", st.hang_check])
        run = await svc.store.get_install(args.name)
        if run is not None:
            rows.append(["install", _install_state(run)])
        for k, v in servers.public_variables(st.record).items():
            rows.append([f"var {k}", v])
        _table(rows, out)
        return 0
    if args.action == "logs":
        for line in await servers.logs(args.name, args.tail):
            out.write(line + "\n")
        return 0
    if args.action == "update" and args.check:
        check = await svc.updates.check(args.name, actor=actor)
        if check.available:
            local = check.local or "none (not pulled from it)"
            behind = "; its container runs an older image" if check.behind_local else ""
            out.write(
                f"{args.name}: update available for {check.image} (registry {check.remote}, "
                f"local {local}{behind}); update with: peon server update {args.name}\n"
            )
        else:
            out.write(f"{args.name} is up to date ({check.image} {check.remote})\n")
        return 0
    if args.action == "update":
        updated = await servers.update(
            args.name, actor=actor, pull=not args.no_pull, progress=progress
        )
        what = "new image" if updated.changed else "same image"
        again = ", restarted" if updated.restarted else ""
        out.write(f"{args.name} updated ({what}{again}); data kept\n")
        return 0
    if args.action == "purge" or (
        args.action == "delete" and args.purge and await svc.store.find_server(args.name) is None
    ):
        return await _purge_kept(args, svc, out, stdin)
    if args.action == "set":
        changed = await servers.change_settings(
            args.name, _parse_sets(args.values, "set"), actor=actor, progress=progress
        )
        if not changed.changed:
            out.write(f"{args.name}: nothing changed (it already has these settings)\n")
            return 0
        again = ", restarted" if changed.restarted else ""
        out.write(
            f"{args.name}: changed {', '.join(changed.changed)}; recreated{again}, data kept\n"
        )
        return 0
    if args.action == "delete":
        record = await svc.store.get_server(args.name)
        what = "and ALL ITS DATA " if args.purge else "(data volumes are kept) "
        question = f"Delete server '{record.name}' {what}?"
        if not _confirmed(args.yes, "delete", question, record.name, stdin=stdin, out=out):
            return 1
        deleted = await servers.delete(args.name, actor=actor, purge=args.purge)
        if deleted.removed_volumes:
            out.write(f"deleted {args.name} and its volumes {', '.join(deleted.removed_volumes)}\n")
        else:
            kept = ", ".join(deleted.kept_volumes) or "none"
            out.write(
                f"deleted {args.name}; data kept in volumes: {kept} "
                f"(create '{args.name}' again to reuse it)\n"
            )
        return 0
    if args.action == "reinstall":
        # Before asking: a plan without an install step is refused at once.
        plan = await servers.require_install(args.name)
        backed_up = "; its data is backed up first" if any(v.backup for v in plan.volumes) else ""
        question = (
            f"Run the install step of '{args.name}' again (it stops the server and may "
            f"overwrite its files{backed_up})?"
        )
        if not _confirmed(args.yes, "reinstall", question, args.name, stdin=stdin, out=out):
            return 1
        done = await servers.reinstall(args.name, actor=actor, progress=progress)
        backup = f"; backup #{done.backup_id} taken first" if done.backup_id is not None else ""
        again = ", restarted" if done.restarted else ""
        out.write(f"{args.name} reinstalled in {done.seconds:.1f} s{backup}{again}\n")
        return 0
    if args.action == "install-log":
        run = await servers.installs.last(args.name)
        how = (
            "running or cut short"
            if run.ok is None
            else ("ok" if run.ok else f"failed (exit code {run.exit_code})")
        )
        sys.stderr.write(
            f"{args.name}: install from {run.image} at {run.started_at:%Y-%m-%d %H:%M:%S} UTC: "
            f"{how}, {run.seconds:.1f} s\n"
        )
        if run.log:
            out.write(run.log.rstrip("\n") + "\n")
        return 0
    if args.action == "console":
        reply = await servers.console(args.name, args.command, actor=actor)
        out.write(f"sent to {args.name} {reply.how}\n")
        if reply.text.strip():
            out.write(reply.text.rstrip("\n") + "\n")
        return 0
    if args.action == "list" and args.kept:
        rows = [["SERVER", "WAR PLAN", "VOLUMES"] + (["HOST"] if len(svc.camps) > 1 else [])]
        for data in await servers.kept_data():
            host = [data.host] if len(svc.camps) > 1 else []
            rows.append([data.server, data.warplan or "-", ", ".join(data.volumes), *host])
        _table(rows, out)
        return 0
    if args.action == "list":
        several = len(svc.camps) > 1
        rows = [["NAME", "WAR PLAN", "STATE", "PORTS"] + (["HOST"] if several else [])]
        for s in await servers.list_servers():
            ports = ",".join(f"{p.host}/{p.protocol}" for p in s.record.ports) or "-"
            host = [s.record.host] if several else []
            rows.append([s.record.name, s.record.warplan, s.state, ports, *host])
        _table(rows, out)
        return 0
    if args.action == "audit":
        rows = [["WHEN", "ACTOR", "ACTION", "SERVER", "RESULT"]]
        for entry in await svc.store.audit_log(args.name, args.limit):
            rows.append(
                [
                    entry.at.strftime("%Y-%m-%d %H:%M:%S"),
                    entry.actor,
                    entry.action,
                    entry.server or "-",
                    # Successes show their detail too: what a console command sent.
                    ("ok" if entry.ok else "failed")
                    + (f": {entry.detail}" if entry.detail else ""),
                ]
            )
        _table(rows, out)
        return 0
    raise UsageError(f"unknown server action {args.action}")


async def _purge_kept(args: argparse.Namespace, svc: Services, out: IO[str], stdin: IO[str]) -> int:
    """`purge NAME`: a server's data for good, whether the server still exists or a plain
    delete kept its data."""
    record = await svc.store.find_server(args.name)
    kept = [k for k in await svc.servers.kept_data() if k.server == args.name]
    if record is None and not kept:
        raise PeonError(f"There is no server and no kept data named '{args.name}'.")
    what = (
        f"server '{args.name}' and ALL ITS DATA"
        if record is not None
        else f"the kept data of '{args.name}' ({', '.join(v for k in kept for v in k.volumes)})"
    )
    question = f"Delete {what} for good?"
    if not _confirmed(args.yes, "purge", question, args.name, stdin=stdin, out=out):
        return 1
    if record is None:  # never a server created since the question
        deleted = await svc.servers.purge_kept(args.name, actor=_actor())
    else:
        deleted = await svc.servers.delete(args.name, actor=_actor(), purge=True)
    removed = ", ".join(deleted.removed_volumes) or "none"
    out.write(f"purged {args.name}: removed volumes {removed}\n")
    return 0


async def _schedule(args: argparse.Namespace, svc: Services, out: IO[str]) -> int:
    """Read-only: the running bot owns the jobs, so schedules are changed through it."""
    if args.name is not None:
        await svc.store.get_server(args.name)
    now = datetime.now(UTC)
    rows = [["ID", "SERVER", "SCHEDULE", "NEXT"]]
    for s in await svc.store.list_schedules(args.name):
        zone = rules.schedule_zone(s, svc.settings.automation.zone)
        runs = rules.next_runs(s, now)
        nxt = ", ".join(f"{a} {w.astimezone(zone):%a %d %b %H:%M} {zone.key}" for a, w in runs)
        if s.paused:
            nxt = "paused"
        rows.append([str(s.id), s.server, rules.rule_of(s).describe(), nxt or "-"])
    _table(rows, out)
    return 0


def backup_row(b: Backup) -> list[str]:
    return [
        str(b.id),
        b.server,
        b.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        f"{b.size / 2**20:.1f} MiB",
        f"{b.seconds:.1f} s",
        b.trigger,
        "locked" if b.locked else "",
        "" if b.added is None else f"{b.added / 2**20:.1f} MiB",
        b.where,
    ]


async def _backup(args: argparse.Namespace, svc: Services, out: IO[str], stdin: IO[str]) -> int:
    actor = _actor()
    backups = svc.backups
    if args.action == "create":
        b = await backups.create(args.name, actor=actor)
        out.write(f"backup #{b.id} of {b.server}: {b.size / 2**20:.1f} MiB in {b.seconds:.1f} s\n")
        return 0
    if args.action == "list":
        if args.name is not None:
            await svc.store.get_server(args.name)
        rows = [["ID", "SERVER", "CREATED (UTC)", "SIZE", "TOOK", "TRIGGER", "LOCKED", "ADDED",
                 "STORED IN"]]  # fmt: skip
        _table(rows + [backup_row(b) for b in await backups.list(args.name)], out)
        return 0
    if args.action == "restore":
        b = await svc.store.get_backup(args.id)
        question = (
            f"Replace the data of '{args.name}' with backup #{b.id} from "
            f"{b.created_at:%Y-%m-%d %H:%M} UTC?"
        )
        if not _confirmed(args.yes, "restore", question, args.name, stdin=stdin, out=out):
            return 1
        safety = await backups.restore(args.name, args.id, actor=actor)
        kept = f"; the data before it is backup #{safety.id}" if safety else ""
        out.write(f"restored {args.name} from backup #{b.id}{kept}\n")
        return 0
    if args.action == "check":
        results = await backups.repos.check(args.repository, read_data=args.read_data)
        for r in results:
            out.write(f"{r.repository}: {'ok' if r.ok else 'FAILED'}: {r.detail}\n")
        return 0 if all(r.ok for r in results) else 1
    if args.action == "delete":
        b = await backups.delete(args.id, actor)
        out.write(f"deleted backup #{b.id} of {b.server}\n")
        return 0
    b = await backups.set_locked(args.id, args.action == "lock", actor)
    out.write(f"backup #{b.id} {'locked' if b.locked else 'unlocked'}\n")
    return 0


async def _check(settings: Settings, out: IO[str]) -> int:
    failed = False
    out.write(f"config: ok ({settings.source})\n")
    catalog = load_catalog(settings.warplans_dir)
    if catalog.errors:
        failed = True
        out.write(f"warplans: {len(catalog.plans)} loaded, {len(catalog.errors)} failed\n")
        for err in catalog.errors:
            out.write(f"  error: {err}\n")
    else:
        out.write(f"warplans: ok ({len(catalog.plans)} loaded from {settings.warplans_dir})\n")
    try:
        async with open_services(settings) as svc:
            out.write(
                f"database: ok ({settings.db_path}, schema v{await svc.store.schema_version()})\n"
            )
            health = await svc.servers.host_health()
            for h in health:
                label = "docker" if len(health) == 1 else f"docker host {h.name}"
                if h.engine is None:
                    failed = True
                    out.write(f"{label}: {h.error}\n")
                    continue
                e = h.engine
                out.write(f"{label}: ok (Docker {e.version}, API {e.api_version}, {e.os})\n")
    except Exception as e:
        failed = True
        out.write(f"database: cannot open {settings.db_path} ({e})\n")
    token = "set" if settings.discord_token else "not set (needed by 'peon run')"
    out.write(f"discord token: {token}\n")
    return 1 if failed else 0


async def _events(args: argparse.Namespace, settings: Settings, out: IO[str]) -> int:
    """Only the database: the stream is readable while Docker is down."""
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    store = Store(settings.db_path)
    await store.open()
    try:
        if args.since is not None:
            events = await store.events_after(args.since, 1000, args.name)
        else:
            events = list(reversed(await store.latest_events(args.name, args.limit)))
        position = events[-1].id if events else args.since
        if position is None:
            position = await store.last_event_id()
        while True:
            for e in events:
                out.write(_event_text(e, as_json=args.json) + "\n")
                position = e.id
            out.flush()
            if not args.follow:
                return 0
            # Polling: the bot and other CLI processes write from their own connections.
            await store.wait_for_events(EVENTS_POLL, store.generation)
            events = await store.events_after(position, 1000, args.name)
    finally:
        await store.close()


EVENTS_POLL = 0.5


def _event_text(e: Event, *, as_json: bool) -> str:
    if as_json:
        return json.dumps(
            {"id": e.id, "at": e.at.isoformat(), "kind": e.kind, "server": e.server,
             "actor": e.actor, "ok": e.ok, "detail": e.detail, "payload": e.payload},
            sort_keys=True,
        )  # fmt: skip
    result = "ok" if e.ok else "failed"
    detail = f" {e.detail}" if e.detail else ""
    at = e.at.strftime("%Y-%m-%d %H:%M:%S")
    return f"#{e.id} {at} {e.server or '-'} {e.kind} {result} by {e.actor}{detail}"


async def _main(args: argparse.Namespace, settings: Settings, out: IO[str], stdin: IO[str]) -> int:
    if args.group == "warplan":
        return await _warplan(args, settings, out)
    if args.group == "check":
        return await _check(settings, out)
    if args.group == "server":
        async with open_services(settings) as svc:
            return await _server(args, svc, out, stdin)
    if args.group == "backup":
        async with open_services(settings) as svc:
            return await _backup(args, svc, out, stdin)
    if args.group == "schedule":
        async with open_services(settings) as svc:
            return await _schedule(args, svc, out)
    if args.group == "events":
        return await _events(args, settings, out)
    if args.group == "token":
        return await _token(args, settings, out)
    if args.group == "serve-api":
        return await _serve_api(settings)
    raise UsageError(f"unknown command {args.group}")


async def _token(args: argparse.Namespace, settings: Settings, out: IO[str]) -> int:
    """Only the database: tokens are made while the bot runs or not."""
    store = Store(settings.db_path)
    await store.open()
    try:
        tokens = TokenService(store)
        if args.action == "create":
            token, secret = await tokens.create(
                args.name, args.role, server=args.server, actor=_actor()
            )
            scope = f" for server {token.server}" if token.server else ""
            out.write(f"{secret}\n")
            sys.stderr.write(
                f"token '{token.name}' ({token.role}{scope}) created; it is shown only this "
                "once: send it as 'Authorization: Bearer <token>'\n"
            )
            return 0
        if args.action == "revoke":
            await tokens.revoke(args.name, actor=_actor())
            out.write(f"token '{args.name}' revoked\n")
            return 0
        rows = [["NAME", "ROLE", "SERVER", "CREATED (UTC)", "BY"]]
        for t in await tokens.list():
            when = t.created_at.strftime("%Y-%m-%d %H:%M")
            rows.append([t.name, t.role, t.server or "*", when, t.created_by])
        _table(rows, out)
        return 0
    finally:
        await store.close()


async def _serve_api(settings: Settings) -> int:
    """`peon serve-api`: the HTTP API without Discord, until SIGTERM or SIGINT."""
    if settings.api is None:
        raise PeonError(
            "The API is off: add `api: {listen: 127.0.0.1:8080}` to the config (see docs/api.md)."
        )
    from bot.api import serve_api  # noqa: PLC0415 - aiohttp's server only when serving
    from bot.logs import configure_logging  # noqa: PLC0415

    # As `peon run`: INFO lines (the access log among them), secrets redacted.
    configure_logging(settings.log, settings.secret_values())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with open_services(settings) as svc:
        closing: list[asyncio.Task[None]] = []

        async def shutdown() -> None:
            # As `peon run`: operations under way (an API create mid-install, say) get
            # shutdown_grace to end before the API closes, which cancels what is left.
            for item in await svc.servers.drain(settings.shutdown_grace):
                log.warning("operation interrupted by shutdown: %s", item)
            stop.set()

        def on_signal() -> None:
            if not closing:  # a second signal while draining changes nothing
                closing.append(asyncio.create_task(shutdown()))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await serve_api(svc, stop)
    return 0


def main(
    argv: Sequence[str] | None = None,
    *,
    out: IO[str] | None = None,
    stdin: IO[str] | None = None,
    env: dict[str, str] | None = None,
) -> int:
    out = out or sys.stdout
    stdin = stdin or sys.stdin
    parser = _parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    logging.basicConfig(
        # Errors are one line each (the contract of a CLI); the steps behind them, cleanup
        # warnings included, only with -v.
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings(
            config_path(args.config, env or os.environ), env if env is not None else None
        )
        if args.group == "run":
            from bot.__main__ import run_bot  # noqa: PLC0415 - discord.py loads only for the bot

            return run_bot(settings)
        return asyncio.run(_main(args, settings, out, stdin))
    except UsageError as e:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"peon: error: {e}\n")
        return 2
    except (PeonError, ConfigError, WarplanError) as e:
        if isinstance(e, InstallFailed):
            for line in e.logs[-10:]:  # the installer's last lines (secrets masked)
                sys.stderr.write(f"  | {line}\n")
        sys.stderr.write(f"peon: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("peon: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
