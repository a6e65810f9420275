"""Notices as events: what the automation and the crash watch tell people is appended to the
event stream (and so to the audit log); the bot's Discord notifier, webhooks and any other
consumer read it from there, each at its own pace.

`EventNotifier` is what the core services are given as their notifier: appending is all it
does, so a slow Discord never holds up a stop, and a notice made by one process (the CLI)
reaches the bot of another. `Notice` turns an event back into what a consumer renders.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot import updates
from bot.automation import UpdateWait, Warning
from bot.events import Event, NewEvent
from bot.hang import Hang
from bot.store import Store
from bot.watch import ACTOR as WATCH_ACTOR
from bot.watch import Crash

SCHEDULE_ACTOR = "peon:schedule"

# Event kinds that are notices (besides operations such as start, whose `connect` payload
# says the server became joinable).
WARNING, SCHEDULED, SCHEDULE_FAILED, CANCELLED, PLAYERS = (
    "warning",
    "scheduled",
    "schedule-failed",
    "warning-cancelled",
    "players",
)
CRASHED, HUNG, RECOVERED, GAVE_UP = "crashed", "hung", "recovered", "gave-up"
UPDATE_AVAILABLE = updates.UPDATE_AVAILABLE  # recorded by the update checks themselves
UPDATE_WAITING, UPDATE_DONE, UPDATE_SKIPPED = "update-waiting", "update-done", "update-skipped"
UPDATE_KINDS = frozenset({UPDATE_AVAILABLE, UPDATE_WAITING, UPDATE_DONE, UPDATE_SKIPPED})
OFFSITE = "backup-offsite"  # an offsite copy failed (ok=False) or went through after all
NOTICE_KINDS = UPDATE_KINDS | frozenset(
    {WARNING, SCHEDULED, SCHEDULE_FAILED, CANCELLED, PLAYERS, CRASHED, HUNG, RECOVERED, GAVE_UP,
     OFFSITE}
)  # fmt: skip
READY_KINDS = frozenset({"start", "restart"})
# Operations after which the automation replans the server (its automatic stop may change).
REPLAN_KINDS = frozenset(
    {"create", "start", "stop", "restart", "update", "settings", "delete", "purge"}
)


class EventNotifier:
    """The automation's Notifier and the crash watch's CrashNotifier, as events."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _append(
        self, kind: str, server: str, actor: str, detail: str, **payload: Any
    ) -> None:
        await self.store.append_event(NewEvent(kind, server, actor, True, detail, payload))

    # --- automation -------------------------------------------------------------------------

    async def warn(self, warning: Warning) -> None:
        await self._append(
            WARNING,
            warning.server,
            SCHEDULE_ACTOR,
            f"{warning.action} at {warning.at.isoformat(timespec='seconds')}: {warning.why}",
            action=warning.action,
            at=warning.at.isoformat(),
            left=warning.left.total_seconds(),
            why=warning.why,
            zone=warning.zone.key,
            keep_for=warning.keep_for.total_seconds(),
        )

    async def acted(self, server: str, action: str, why: str, connect: str | None) -> None:
        await self._append(
            SCHEDULED, server, SCHEDULE_ACTOR, f"{action}: {why}", action=action, why=why,
            connect=connect,
        )  # fmt: skip

    async def failed(self, server: str, action: str, why: str, error: str) -> None:
        await self._append(
            SCHEDULE_FAILED, server, SCHEDULE_ACTOR, f"{action} failed: {error}", action=action,
            why=why, error=error,
        )  # fmt: skip

    async def cancelled(self, server: str, action: str, why: str) -> None:
        await self._append(
            CANCELLED, server, SCHEDULE_ACTOR, f"no {action}: {why}", action=action, why=why
        )

    async def players(self, server: str, joined: list[str], left: list[str], online: int) -> None:
        await self._append(
            PLAYERS, server, SCHEDULE_ACTOR, f"{online} online", joined=joined, left=left,
            online=online,
        )  # fmt: skip

    async def update_waiting(self, wait: UpdateWait, online: int | None, when_busy: str) -> None:
        until = wait.until.astimezone(UTC).isoformat()
        await self._append(
            UPDATE_WAITING, wait.server, wait.actor, f"until {until}: {wait.why}", why=wait.why,
            online=online, until=until, when_busy=when_busy,
        )  # fmt: skip

    async def update_done(self, server: str, why: str, changed: bool, restarted: bool) -> None:
        image = "new image" if changed else "same image"
        await self._append(
            UPDATE_DONE, server, SCHEDULE_ACTOR, f"{image}: {why}", why=why, changed=changed,
            restarted=restarted,
        )  # fmt: skip

    async def update_skipped(self, server: str, why: str, reason: str) -> None:
        await self._append(
            UPDATE_SKIPPED, server, SCHEDULE_ACTOR, f"{reason}: {why}", why=why, reason=reason
        )

    # --- crash watch ------------------------------------------------------------------------

    async def crashed(self, crash: Crash) -> None:
        kind = HUNG if crash.hang is not None else CRASHED
        code = "" if crash.exit_code is None else f"exit code {crash.exit_code}"
        detail = f"{crash.hang.probe}, {crash.hang.checks} checks" if crash.hang else code
        await self._append(kind, crash.server, WATCH_ACTOR, detail, crash=asdict(crash))

    async def recovered(self, server: str, attempt: int, connect: str) -> None:
        await self._append(
            RECOVERED, server, WATCH_ACTOR, f"restart {attempt}", attempt=attempt, connect=connect
        )

    async def gave_up(self, server: str, attempts: int, error: str | None) -> None:
        await self._append(
            GAVE_UP, server, WATCH_ACTOR, error or f"{attempts} restarts", attempts=attempts,
            error=error,
        )  # fmt: skip


@dataclass(frozen=True)
class Notice:
    """An event as a consumer renders it."""

    event: Event

    @property
    def p(self) -> dict[str, Any]:
        return self.event.payload

    @property
    def server(self) -> str:
        return self.event.server or ""

    def warning(self) -> Warning:
        p = self.p
        return Warning(
            server=self.server,
            action=str(p["action"]),
            at=datetime.fromisoformat(str(p["at"])),
            left=timedelta(seconds=float(p["left"])),
            why=str(p["why"]),
            zone=ZoneInfo(str(p["zone"])),
            keep_for=timedelta(seconds=float(p["keep_for"])),
        )

    def crash(self) -> Crash:
        c = dict(self.p["crash"])
        hang = c.pop("hang", None)
        return Crash(**c, hang=Hang(**hang) if hang else None)

    def ready_address(self) -> str | None:
        """For an operation that made the server joinable by hand (not the automation's or
        the crash watch's, which say so in their own notices): its address."""
        if self.event.kind not in READY_KINDS or not self.event.ok:
            return None
        if self.event.actor.startswith("peon:"):
            return None
        connect = self.p.get("connect")
        return str(connect) if connect else None
