"""Unit tests of bot/fanout.py: the limits per host and in total, single flight per server,
and one check's failure or silence costing the others nothing (pure asyncio, no engine)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.errors import PeonError
from bot.fanout import Fanout


class Gauge:
    """Counts checks running at once, overall and per host."""

    def __init__(self) -> None:
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.total = self.total_peak = 0

    async def hold(self, host: str, seconds: float) -> None:
        self.now[host] = self.now.get(host, 0) + 1
        self.total += 1
        self.peak[host] = max(self.peak.get(host, 0), self.now[host])
        self.total_peak = max(self.total_peak, self.total)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now[host] -= 1
            self.total -= 1


async def test_checks_run_side_by_side_within_the_host_and_total_limits() -> None:
    fan = Fanout(total=5, per_host=3, deadline=5)
    gauge = Gauge()
    items = [(f"a{i}", "alpha") for i in range(10)] + [(f"b{i}", "beta") for i in range(10)]

    async def check(item: tuple[str, str]) -> str:
        await gauge.hold(item[1], 0.02)
        return item[0].upper()

    done = await fan.each("t", items, check, key=lambda i: i[0], host=lambda i: i[1])
    assert done.results == {name: name.upper() for name, _ in items}
    assert gauge.peak == {"alpha": 3, "beta": 3}  # both hosts reached their own limit
    assert gauge.total_peak == 5  # and together never more than the total


async def test_a_failing_or_silent_server_delays_no_other() -> None:
    fan = Fanout(total=4, per_host=4, deadline=0.3)
    finished: dict[str, float] = {}
    t0 = time.monotonic()

    async def check(name: str) -> str:
        if name == "silent":
            await asyncio.sleep(60)  # never answers: cut at the deadline
        if name == "broken":
            raise PeonError("the engine said no")
        if name == "buggy":
            raise RuntimeError("a bug")
        finished[name] = time.monotonic() - t0
        return "ok"

    done = await fan.each(
        "t", ["silent", "broken", "buggy", "fine"], check, key=str, host=lambda _: "h"
    )
    assert done.results == {"fine": "ok"}
    assert done.timed_out == ["silent"]
    assert sorted(map(str, done.failed)) == ["broken", "buggy"]
    # The healthy server was done long before the silent one's deadline ran out.
    assert finished["fine"] < 0.3
    assert time.monotonic() - t0 < 5  # and the round itself ended at that deadline


async def test_a_check_still_running_is_not_started_again() -> None:
    fan = Fanout(total=8, per_host=8, deadline=5)
    release = asyncio.Event()
    calls: list[str] = []

    async def check(name: str) -> str:
        calls.append(name)
        if name == "slow":
            await release.wait()
        return name

    first = asyncio.create_task(fan.each("t", ["slow"], check, key=str, host=lambda _: "h"))
    await asyncio.sleep(0.01)
    assert fan.busy("t", "slow")
    second = await fan.each("t", ["slow", "quick"], check, key=str, host=lambda _: "h")
    assert second.skipped == ["slow"] and second.results == {"quick": "quick"}
    # Another kind of check of the same server is not held up by this one.
    other = await fan.each("u", ["slow"], lambda n: asyncio.sleep(0, n), key=str,
                           host=lambda _: "h")  # fmt: skip
    assert other.results == {"slow": "slow"}
    release.set()
    assert (await first).results == {"slow": "slow"}
    assert not fan.busy("t", "slow")
    assert calls == ["slow", "quick"]


async def test_waiting_for_a_slot_does_not_count_against_the_deadline() -> None:
    fan = Fanout(total=1, per_host=1, deadline=0.2)

    async def check(name: str) -> str:
        await asyncio.sleep(0.1)
        return name

    # Five checks one after another take 0.5 s in all, each well within its own 0.2 s.
    done = await fan.each("t", list("abcde"), check, key=str, host=lambda _: "h")
    assert sorted(map(str, done.results)) == list("abcde") and not done.timed_out


async def test_cancelling_the_round_cancels_its_checks() -> None:
    fan = Fanout(total=2, per_host=2, deadline=30)
    cancelled: list[str] = []

    async def check(name: str) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    task = asyncio.create_task(fan.each("t", ["a", "b", "c"], check, key=str, host=str))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert sorted(cancelled) == ["a", "b"]  # the two running; "c" never started
    assert not any(fan.busy("t", k) for k in "abc")
