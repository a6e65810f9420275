"""Reload: read the config file again and hand every changed setting to what can take it while
running; name each one that needs a restart instead.

Knows nothing of Discord. Whoever owns a part of the running process registers an applier for
the settings it can take (`Reloader.on`): the bot for its Discord settings, the automation,
the crash watch, the backups, the hosts. A changed setting no applier took, or one fixed for
the life of the process (where the data lives, the instance's labels), is reported as needing
a restart, and keeps its old value until then, so what runs and what `settings` say agree.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bot.settings import Settings
from bot.warplans import Catalog

log = logging.getLogger(__name__)

# Taken at startup and kept until the next one: what PEON's data, labels and connections are.
RESTART_ONLY = (
    "instance_id",
    "data_dir",
    "warplans_dir",
    "docker.base_url",
    "docker.timeout",
    "discord.api_base",
    "discord.gateway_url",
    "backups.dir",
)
# Per host: how its engine is reached (a host added is applied; one removed needs a restart).
HOST_RESTART_ONLY = ("base_url", "tls", "timeout")

# An applier gets (settings in force, new settings); it may return lines worth reporting.
Applier = Callable[[Settings, Settings], Awaitable[Iterable[str] | None] | Iterable[str] | None]


@dataclass
class ReloadReport:
    """What a reload changed: applied (dotted setting names), needing a restart, and those
    whose applier failed (with why); `notes` are lines the appliers reported."""

    settings: Settings
    applied: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    warplans: Catalog | None = None  # what the war plans folder held (the bot reads it too)


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths to leaves; `hosts` keyed by host name; lists are leaves."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, raw in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            value = {h["name"]: h for h in raw} if path == "hosts" and raw else raw
            if isinstance(value, dict):
                out.update(_flat(value, path))  # an empty one adds nothing
            else:
                out[path] = value
        return out
    return {prefix: data}


def _dump(settings: Settings) -> dict[str, Any]:
    # Python values, not JSON: a SecretStr (a webhook's URL) compares by its secret there.
    return settings.model_dump(exclude={"source", "discord_token"})


def changed_settings(old: Settings, new: Settings) -> list[str]:
    """The settings that differ, by dotted name (a whole host or guild when added/removed)."""
    a, b = _flat(_dump(old)), _flat(_dump(new))
    paths = sorted(p for p in a.keys() | b.keys() if a.get(p, _MISSING) != b.get(p, _MISSING))
    return _collapse(paths, a, b)


_MISSING = object()


def _collapse(paths: list[str], a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """A host or guild added or removed is one change, not one per field."""
    out: list[str] = []
    for p in paths:
        parts = p.split(".")
        unit = None
        if parts[0] == "hosts" and len(parts) > 2:
            unit = ".".join(parts[:2])
        elif parts[:2] == ["discord", "guilds"] and len(parts) > 3:
            unit = ".".join(parts[:3])
        if unit is not None:
            in_a = any(k.startswith(unit + ".") for k in a)
            in_b = any(k.startswith(unit + ".") for k in b)
            if in_a != in_b:
                if unit not in out:
                    out.append(unit)
                continue
        out.append(p)
    return out


def split_restart(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """The new settings with what only a restart can change kept as it is, and the names of
    those kept (they differ in the file)."""
    data, was = _dump(new), _dump(old)
    kept: list[str] = []
    for path in RESTART_ONLY:
        section, _, key = path.rpartition(".")
        src, dst = (was.get(section), data.get(section)) if section else (was, data)
        if isinstance(src, dict) and isinstance(dst, dict) and src.get(key) != dst.get(key):
            dst[key] = src.get(key)
            kept.append(path)
    if bool(old.hosts) != bool(new.hosts):
        # From one engine (docker:) to a list of hosts or back: the servers' hosts change.
        data["hosts"], data["docker"] = was["hosts"], was["docker"]
        kept.append("hosts")
    else:
        before = {h["name"]: h for h in was["hosts"]}
        hosts = []
        for h in data["hosts"]:
            prior = before.pop(h["name"], None)
            if prior is not None:
                for key in HOST_RESTART_ONLY:
                    if prior.get(key) != h.get(key):
                        h[key] = prior.get(key)
                        kept.append(f"hosts.{h['name']}.{key}")
            hosts.append(h)
        for name, prior in before.items():  # removed: its servers still live there
            hosts.append(prior)
            kept.append(f"hosts.{name}")
        data["hosts"] = hosts
    effective = Settings.model_validate({**data, "source": new.source})
    effective = effective.model_copy(update={"discord_token": old.discord_token})
    return effective, kept


class Reloader:
    """Holds the settings in force and applies new ones from `load`."""

    def __init__(self, settings: Settings, load: Callable[[], Settings]) -> None:
        self.settings = settings
        self._load = load
        self._appliers: list[tuple[tuple[str, ...], Applier]] = []

    def on(self, prefixes: str | tuple[str, ...], apply: Applier) -> None:
        """Call `apply(old, new)` when a setting under one of `prefixes` (top-level sections
        of the config) changed, once per reload however many did. Should it raise, those
        sections keep their old values and are reported as failed."""
        self._appliers.append(((prefixes,) if isinstance(prefixes, str) else prefixes, apply))

    async def reload(self) -> ReloadReport:
        """Read the file (a ConfigError leaves everything as it was) and apply what changed."""
        fresh = await asyncio.to_thread(self._load)
        old = self.settings
        effective, restart = split_restart(old, fresh)
        changed = changed_settings(old, effective)
        report = ReloadReport(effective, restart=list(restart))
        taken: set[str] = set()
        failed: list[str] = []
        for prefixes, apply in self._appliers:
            mine = [p for p in changed if any(p == x or p.startswith(x + ".") for x in prefixes)]
            if not mine:
                continue
            taken.update(mine)
            try:
                result = apply(old, effective)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as e:
                log.exception("reload: applying %s failed", ", ".join(mine))
                report.failed.extend(f"{p} ({e})" for p in mine)
                failed.extend(prefixes)
                continue
            report.applied.extend(mine)
            if result:
                report.notes.setdefault(prefixes[0], []).extend(result)
        report.restart.extend(p for p in changed if p not in taken)
        report.applied.sort()
        report.restart.sort()
        if failed:
            # Still the old values: the next reload tries them again.
            data, was = _dump(effective), _dump(old)
            data.update({k: was[k] for k in failed if k in was})
            effective = Settings.model_validate({**data, "source": effective.source})
            effective = effective.model_copy(update={"discord_token": old.discord_token})
            report.settings = effective
        self.settings = effective
        return report
