"""APScheduler 3.x, behind a small interface: the only module that imports apscheduler.

Jobs are rebuilt from the schedules table at startup (the table is the source of truth), so
the job store is APScheduler's in-memory one. Every job coalesces and has a misfire grace time:
after a pause of the event loop or a clock jump, a missed run fires once, not once per miss.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.schedules import ScheduleError

log = logging.getLogger(__name__)

MISFIRE_GRACE = 300  # seconds late a job may still run (a bot busy for minutes still acts)

Job = Callable[[], Awaitable[None]]


def cron_trigger(expr: str, zone: ZoneInfo) -> CronTrigger:
    """A crontab expression ('0 4 * * *') in a time zone; ScheduleError when invalid."""
    try:
        return CronTrigger.from_crontab(expr.strip(), timezone=zone)
    except (ValueError, TypeError) as e:
        raise ScheduleError(
            f"'{expr}' is not a cron expression ({e}); use five fields: minute hour day "
            "month weekday, e.g. '0 4 * * *' for 04:00 daily."
        ) from None


def next_cron(expr: str, zone: ZoneInfo, now: datetime) -> datetime | None:
    """When the cron expression fires next after `now`."""
    fire: datetime | None = cron_trigger(expr, zone).get_next_fire_time(None, now)
    return fire


class Scheduler:
    """Named jobs on the running event loop. Start it in setup_hook, never at import."""

    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE}
        )
        self._scheduler.add_listener(self._on_error, EVENT_JOB_ERROR)

    def start(self) -> None:
        if not self._scheduler.running:
            self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def at(self, job_id: str, when: datetime, job: Job) -> None:
        """Run `job` once at `when` (replacing a job with the same id)."""
        self._add(job_id, DateTrigger(run_date=when), job)

    def every(self, job_id: str, interval: timedelta, job: Job) -> None:
        self._add(job_id, IntervalTrigger(seconds=interval.total_seconds()), job)

    def cron(self, job_id: str, expr: str, zone: ZoneInfo, job: Job) -> None:
        self._add(job_id, cron_trigger(expr, zone), job)

    def cancel(self, job_id: str) -> bool:
        try:
            self._scheduler.remove_job(job_id)
        except JobLookupError:
            return False
        return True

    def cancel_prefix(self, prefix: str) -> int:
        """Cancel every job whose id starts with `prefix` (e.g. all jobs of one schedule)."""
        jobs = [j.id for j in self._scheduler.get_jobs() if j.id.startswith(prefix)]
        for job_id in jobs:
            self.cancel(job_id)
        return len(jobs)

    def next_run(self, job_id: str) -> datetime | None:
        job = self._scheduler.get_job(job_id)
        return job.next_run_time if job is not None else None

    def job_ids(self) -> list[str]:
        return sorted(j.id for j in self._scheduler.get_jobs())

    def _add(self, job_id: str, trigger: Any, job: Job) -> None:
        # APScheduler awaits only coroutine *functions*; a lambda returning a coroutine would
        # be called in a thread and its coroutine dropped, so wrap every job in one.
        async def run() -> None:
            await job()

        self._scheduler.add_job(run, trigger=trigger, id=job_id, replace_existing=True, name=job_id)

    @staticmethod
    def _on_error(event: JobExecutionEvent) -> None:
        # Jobs call services that report their own failures; this catches the rest.
        log.error("scheduled job %s failed", event.job_id, exc_info=event.exception)
