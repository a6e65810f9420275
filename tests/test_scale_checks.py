"""The automation tick against the real engine, a real SQLite file and the real APScheduler,
with one server whose player query never answers: the other server is counted, planned and
warned on time while that query still hangs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from bot.automation import Automation, Warning
from bot.scheduler import Scheduler
from bot.settings import AutomationSettings
from tests.conftest import TEST_WARPLANS, make_settings, services_for
from tests.test_automation import Recorder

pytestmark = pytest.mark.docker

SILENT, GAME = "scl-a-silent", "scl-b-game"  # the silent one sorts first: it is asked first


def plans_with_a_silent_one(tmp_path: Path) -> Path:
    """The test plan, and a copy that counts players with A2S on its query port, where the
    fake game listens to nothing: every query waits for its whole timeout."""
    folder = tmp_path / "warplans"
    folder.mkdir()
    plan = yaml.safe_load((TEST_WARPLANS / "fakegame.yaml").read_text())
    (folder / "fakegame.yaml").write_text(yaml.safe_dump(plan))
    silent = {**plan, "name": "fakegame-silent", "players": {"protocol": "a2s", "port": "query"}}
    (folder / "fakegame-silent.yaml").write_text(yaml.safe_dump(silent))
    return folder


class TimedRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.warned_at: dict[str, datetime] = {}

    async def warn(self, warning: Warning) -> None:
        self.warned_at.setdefault(warning.server, datetime.now(UTC))
        await super().warn(warning)


async def test_a_silent_player_query_delays_no_other_servers_count_or_warning(
    tmp_path: Path, fakegame: str
) -> None:
    automation = AutomationSettings(
        warn_before=["3s"],
        shortest="1s",
        player_check_interval="1h",  # ticks: by hand here
    )
    settings = make_settings(
        tmp_path, warplans_dir=plans_with_a_silent_one(tmp_path), automation=automation
    )
    async with services_for(settings) as svc:
        await svc.servers.create("fakegame-silent", SILENT, {}, actor="test")
        await svc.servers.create("fakegame", GAME, {}, actor="test")
        for name in (SILENT, GAME):
            await svc.servers.start(name, actor="test")
        rec = TimedRecorder()
        a = Automation(servers=svc.servers, store=svc.store, scheduler=Scheduler(),
                       settings=svc.settings.automation, notifier=rec)  # fmt: skip
        await a.start()
        try:
            for name in (SILENT, GAME):
                await a.add_idle(name, "4s", "test")
            # When each server's player count came back (the real count, only timed).
            counted: dict[str, datetime] = {}
            real = svc.servers.players_of

            async def timed(summary):  # type: ignore[no-untyped-def]
                try:
                    return await real(summary)
                finally:
                    counted[summary.record.name] = datetime.now(UTC)

            svc.servers.players_of = timed  # type: ignore[method-assign]
            t0 = datetime.now(UTC)
            await a.tick()
            # The silent server's query really hung for its whole timeout ...
            assert counted[SILENT] - t0 >= timedelta(seconds=1.5)
            # ... and the other server was counted meanwhile, not after it.
            seen = a._idle[GAME].empty_since
            assert seen is not None and seen < counted[SILENT]
            assert seen - t0 < timedelta(seconds=1)
            p = a.pending(GAME)
            assert p is not None and p.at == seen + timedelta(seconds=4)
            # Its warning was due 1 s after it was seen empty, while the tick still waited
            # for the silent query: it went out on time all the same.
            await rec.wait(lambda: GAME in rec.warned_at, timeout=10)
            due = p.at - timedelta(seconds=3)
            assert rec.warned_at[GAME] < counted[SILENT]
            assert rec.warned_at[GAME] - due < timedelta(seconds=1)
            # The silent server was never counted, so it is never stopped as idle.
            assert a._idle[SILENT].empty_since is None and a.pending(SILENT) is None
        finally:
            await a.close()
