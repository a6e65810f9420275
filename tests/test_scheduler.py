"""The APScheduler wrapper on a real event loop (short real delays, no mocks)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.scheduler import Scheduler, cron_trigger, next_cron
from bot.schedules import ScheduleError

BERLIN = ZoneInfo("Europe/Berlin")


async def test_jobs_fire_can_be_replaced_and_cancelled() -> None:
    scheduler = Scheduler()
    scheduler.start()
    fired: list[str] = []
    done = asyncio.Event()

    async def job(name: str) -> None:
        fired.append(name)
        if len(fired) == 2:
            done.set()

    soon = datetime.now(UTC) + timedelta(seconds=0.3)
    scheduler.at("s1:stop", soon, lambda: job("first"))
    scheduler.at("s1:stop", soon, lambda: job("replaced"))  # same id: replaces
    scheduler.at("s2:warn", soon, lambda: job("other"))
    scheduler.at("s3:gone", soon, lambda: job("cancelled"))
    assert scheduler.next_run("s1:stop") == soon
    assert scheduler.cancel("s3:gone") and not scheduler.cancel("s3:gone")
    assert scheduler.job_ids() == ["s1:stop", "s2:warn"]
    await asyncio.wait_for(done.wait(), 5)
    assert sorted(fired) == ["other", "replaced"]
    scheduler.every("tick", timedelta(hours=1), lambda: job("tick"))
    scheduler.cron("s9:backup", "0 4 * * *", BERLIN, lambda: job("cron"))
    assert scheduler.cancel_prefix("s9:") == 1 and scheduler.job_ids() == ["tick"]
    scheduler.shutdown()


def test_cron_validation_and_next_fire_in_the_schedules_zone() -> None:
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)  # 13:00 in Berlin
    assert next_cron("0 4 * * *", BERLIN, now) == datetime(2026, 11, 22, 3, tzinfo=UTC)
    assert next_cron("30 18 * * mon-fri", BERLIN, now) == datetime(2026, 11, 23, 17, 30, tzinfo=UTC)
    with pytest.raises(ScheduleError, match="'61 \\* \\* \\* \\*' is not a cron expression"):
        cron_trigger("61 * * * *", BERLIN)
    with pytest.raises(ScheduleError, match="use five fields"):
        cron_trigger("every day", BERLIN)


async def test_missed_runs_coalesce_into_one() -> None:
    """A loop that was blocked past several interval runs fires the job once, not once per
    missed run: nothing automatic fires twice after a stall or a clock jump."""
    import time

    scheduler = Scheduler()
    scheduler.start()
    fired: list[float] = []

    async def job() -> None:
        fired.append(time.monotonic())

    scheduler.every("tick", timedelta(seconds=0.4), job)
    await asyncio.sleep(0.05)
    time.sleep(2.1)  # block the loop through five runs
    woke = time.monotonic()
    await asyncio.sleep(1.0)
    scheduler.shutdown()
    burst = [t for t in fired if t - woke < 0.2]  # what the backlog produced
    assert len(burst) == 1, fired
    # ... and the schedule goes on at its normal pace afterwards.
    assert all(b - a > 0.1 for a, b in itertools.pairwise(fired)), fired
