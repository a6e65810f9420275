"""Updates when empty, on real parts: update checks against a real Registry V2 server on
127.0.0.1 (tests/registry.py) without pulling, updates that wait for the fake game's players
(counted from its log: the console's "join alice" / "leave alice") through the automation
with the real scheduler, SQLite and event stream, and the same end to end in Discord."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import docker
import pytest

from bot.app import Services
from bot.automation import Automation
from bot.events import Event
from bot.notices import EventNotifier
from bot.scheduler import Scheduler
from bot.schedules import ScheduleError
from bot.settings import AutomationSettings, Settings
from tests.conftest import (
    OPERATOR,
    PLAYER,
    config_file,
    fakegame_variant,
    make_settings,
    peon,
    services_for,
)
from tests.discord_emulator import DiscordEmulator
from tests.images import Images
from tests.registry import LocalRegistry
from tests.test_discord_e2e import bot_settings, channel, refusal, running_bot, slash, until
from tests.test_pull import forget_pulled, plan_dir, publish

pytestmark = pytest.mark.docker


def fast(**changes: object) -> AutomationSettings:
    base = {
        "warn_before": ["3s", "1s"],
        "catch_up_warning": "1s",
        "player_check_interval": "1s",
        "shortest": "1s",
        "update_wait": "30s",
    }
    return AutomationSettings(**{**base, **changes})  # type: ignore[arg-type]


@pytest.fixture
async def registry(engine: None) -> AsyncIterator[LocalRegistry]:
    async with LocalRegistry() as reg:
        yield reg


@asynccontextmanager
async def automation(svc: Services, settings: AutomationSettings) -> AsyncIterator[Automation]:
    """The automation as the bot runs it: notices go to the event stream."""
    a = Automation(
        servers=svc.servers,
        backups=svc.backups,
        updates=svc.updates,
        store=svc.store,
        scheduler=Scheduler(),
        settings=settings,
        notifier=EventNotifier(svc.store),
    )
    await a.start()
    try:
        yield a
    finally:
        await a.close()


async def events(svc: Services, server: str, kind: str) -> list[Event]:
    return [e for e in reversed(await svc.store.latest_events(server, 200)) if e.kind == kind]


async def wait_event(svc: Services, server: str, kind: str, timeout: float = 40) -> Event:
    async with asyncio.timeout(timeout):
        while not (found := await events(svc, server, kind)):
            await asyncio.sleep(0.2)
    return found[-1]


def container_id(client: docker.DockerClient, server: str) -> str:
    return str(client.containers.get(f"peon-{server}").id)


async def playing_game(svc: Services, name: str) -> None:
    await svc.servers.create("fakegame", name, actor="test")
    await svc.servers.start(name, actor="test")
    await svc.servers.console(name, "join alice", actor="test")


# --- update checks ------------------------------------------------------------------------------


async def test_check_compares_the_registry_digest_without_pulling(
    images: Images,  # first: torn down last, after the servers using its images
    registry: LocalRegistry,
    tmp_path: Path,
    dclient: docker.DockerClient,
    fakegame: str,
) -> None:
    ref = publish(images, registry, "1")
    settings = make_settings(tmp_path, warplans_dir=plan_dir(tmp_path, ref))
    config = config_file(settings, tmp_path / "peon.yaml")

    async def cli(*args: str) -> tuple[int, str, str]:
        r = await asyncio.to_thread(peon, config, *args)
        return r.returncode, r.stdout, r.stderr

    try:
        async with services_for(settings) as svc:
            assert (await cli("server", "create", "pullgame", "upd-chk"))[0] == 0  # pulls it
            code, out, err = await cli("server", "update", "--check", "upd-chk")
            assert code == 0, err
            assert out.startswith(f"upd-chk is up to date ({ref} sha256:")
            assert await events(svc, "upd-chk", "update-available") == []
            pulled = dclient.images.get(ref).id

            # A new image behind the same tag: found, recorded, and nothing pulled.
            publish(images, registry, "2")
            code, out, err = await cli("server", "update", "--check", "upd-chk")
            assert code == 0, err
            assert out.startswith(f"upd-chk: update available for {ref} (registry sha256:")
            assert dclient.images.get(ref).id == pulled
            (found,) = await events(svc, "upd-chk", "update-available")
            p = found.payload
            assert p["image"] == ref and p["new"] is True and p["local"] != p["remote"]
            assert f"registry {p['remote']}" in out and f"local {p['local']}" in out
            assert p["local"] in " ".join(dclient.images.get(ref).attrs["RepoDigests"])

            # Checked again (a daily cron): recorded again, but not as news.
            check = await svc.updates.check("upd-chk", actor="test")
            assert check.available and not check.new and check.remote == p["remote"]
            assert dclient.images.get(ref).id == pulled

            # After the update, the check agrees with the registry.
            result = await svc.servers.update("upd-chk", actor="test")
            assert result.pulled and result.changed
            assert not (await svc.updates.check("upd-chk", actor="test")).available

            # The registry goes away: one sentence, exit 1.
            await registry.close()
            code, out, err = await cli("server", "update", "--check", "upd-chk")
            assert code == 1 and out == ""
            assert err.count("\n") == 1, err
            assert err.startswith(f"peon: Cannot check image '{ref}' for updates: its registry ")
            assert "could not be reached" in err
    finally:
        forget_pulled(images, ref)


# --- updates when nobody plays ------------------------------------------------------------------


async def test_cron_update_waits_for_the_players_to_leave(
    tmp_path: Path, fakegame: str, dclient: docker.DockerClient
) -> None:
    async with (
        services_for(make_settings(tmp_path)) as svc,
        automation(svc, fast()) as a,
    ):
        await playing_game(svc, "upd-wait")
        before = container_id(dclient, "upd-wait")
        view = await a.add_cron(
            "upd-wait", "0 4 * * *", "update", zone=None, command=None,
            only_when_running=False, actor="discord:42",
        )  # fmt: skip
        assert view.description == "update when nobody plays at cron `0 4 * * *` UTC"
        await a._cron(view.schedule.id)  # the job body, now rather than at 04:00
        waiting = await wait_event(svc, "upd-wait", "update-waiting")
        assert waiting.payload["online"] == 1
        assert waiting.payload["when_busy"] == "warn-and-update"
        assert waiting.actor == "peon:cron"
        assert waiting.payload["why"] == "scheduled update (`0 4 * * *`)"
        assert a.waiting_update("upd-wait") is not None

        await asyncio.sleep(3)  # three checks find alice still playing
        assert container_id(dclient, "upd-wait") == before
        assert await events(svc, "upd-wait", "update-done") == []

        await svc.servers.console("upd-wait", "leave alice", actor="test")
        done = await wait_event(svc, "upd-wait", "update-done")
        assert done.payload["restarted"] is True
        assert container_id(dclient, "upd-wait") != before
        assert await svc.servers.is_running("upd-wait")
        (update,) = await events(svc, "upd-wait", "update")
        assert update.ok and update.actor == "peon:update"
        assert a.waiting_update("upd-wait") is None


async def test_update_of_a_busy_server_is_skipped_or_warned_and_done(
    tmp_path: Path, fakegame: str, dclient: docker.DockerClient
) -> None:
    async with services_for(make_settings(tmp_path)) as svc:
        await playing_game(svc, "upd-busy")
        before = container_id(dclient, "upd-busy")

        async with automation(svc, fast(update_wait="2s", update_when_busy="skip")) as a:
            req = await a.update_when_empty("upd-busy", actor="discord:42")
            assert (req.now, req.online, req.when_busy) == (False, 1, "skip")
            again = await a.update_when_empty("upd-busy", actor="discord:42")
            assert again.already  # one wait, however often it is asked
            skipped = await wait_event(svc, "upd-busy", "update-skipped")
            assert skipped.payload["reason"] == "1 still playing after 2 seconds"
            assert skipped.payload["why"] == "update asked by discord:42"
            assert a.waiting_update("upd-busy") is None
        assert container_id(dclient, "upd-busy") == before

        async with automation(svc, fast(update_wait="2s")) as a:
            await a.update_when_empty("upd-busy", actor="discord:42")
            # Like any automatic stop: warned at the lead times, then done, alice or not.
            warning = await wait_event(svc, "upd-busy", "warning")
            assert warning.payload["action"] == "update"
            assert warning.payload["why"] == (
                "update asked by discord:42; 1 still playing after 2 seconds"
            )
            said = "Broadcast: This server restarts to update in 3 seconds"
            async with asyncio.timeout(5):
                while said not in "\n".join(await svc.servers.logs("upd-busy")):
                    await asyncio.sleep(0.1)
            await wait_event(svc, "upd-busy", "update-done")
            assert len(await events(svc, "upd-busy", "warning")) == 2  # 3 s and 1 s before
        assert container_id(dclient, "upd-busy") != before


async def test_a_waiting_update_survives_a_restart_and_a_stopped_server_updates_at_once(
    tmp_path: Path, fakegame: str, dclient: docker.DockerClient
) -> None:
    async with services_for(make_settings(tmp_path)) as svc:
        await playing_game(svc, "upd-keep")
        before = container_id(dclient, "upd-keep")
        async with automation(svc, fast()) as a:
            await a.update_when_empty("upd-keep", actor="test")
        async with automation(svc, fast()) as a:  # the bot restarted: the wait is still there
            assert a.waiting_update("upd-keep") is not None
            await svc.servers.stop("upd-keep", actor="test")  # nobody plays a stopped server
            await wait_event(svc, "upd-keep", "update-done")
        assert container_id(dclient, "upd-keep") != before
        assert not await svc.servers.is_running("upd-keep")  # updated, left as it was

        async with automation(svc, fast()) as a:
            req = await a.update_when_empty("upd-keep", actor="test")
            assert req.now and req.online == 0
            async with asyncio.timeout(30):
                while len(await events(svc, "upd-keep", "update-done")) < 2:
                    await asyncio.sleep(0.2)


async def test_a_server_whose_players_cannot_be_counted_cannot_wait_for_empty(
    tmp_path: Path, fakegame: str
) -> None:
    settings = make_settings(tmp_path, warplans_dir=fakegame_variant(tmp_path, players=None))
    async with services_for(settings) as svc, automation(svc, fast()) as a:
        await svc.servers.create("fakegame", "upd-blind", actor="test")
        refused = (
            "War plan 'fakegame' cannot count players, so upd-blind cannot update when nobody "
            "plays; update it now instead."
        )
        with pytest.raises(ScheduleError) as e:
            await a.update_when_empty("upd-blind", actor="test")
        assert str(e.value) == refused
        with pytest.raises(ScheduleError) as e:
            await a.add_cron(
                "upd-blind", "0 4 * * *", "update", zone=None, command=None,
                only_when_running=False, actor="test",
            )  # fmt: skip
        assert str(e.value) == refused
        assert await svc.store.list_schedules("upd-blind") == []


# --- in Discord ---------------------------------------------------------------------------------


def notices(emu: DiscordEmulator, start: str) -> list[str]:
    return [m.text() for m in channel(emu, "peon") if m.text().startswith(start)]


async def test_discord_update_when_empty_and_update_notices(
    images: Images,  # first: torn down last, after the servers using its images
    registry: LocalRegistry,
    tmp_path: Path,
    emu: DiscordEmulator,
    fakegame: str,
) -> None:
    ref = publish(images, registry, "1")
    base: Settings = bot_settings(tmp_path, emu)
    settings = base.model_copy(
        update={"automation": fast(), "warplans_dir": plan_dir(tmp_path, ref)}
    )
    try:
        async with running_bot(settings, emu) as bot:
            svc, auto = bot.services, bot.bot.automation
            assert auto is not None
            await svc.servers.create("pullgame", "upd-dc", actor="test")
            await svc.servers.start("upd-dc", actor="test")
            await svc.servers.console("upd-dc", "join alice", actor="test")

            # A cron check finds the new image once, however often it runs.
            check = await auto.add_cron(
                "upd-dc", "0 5 * * *", "update-check", zone=None, command=None,
                only_when_running=False, actor="test",
            )  # fmt: skip
            await auto._cron(check.schedule.id)  # up to date: nothing to say
            publish(images, registry, "2")
            await auto._cron(check.schedule.id)
            await auto._cron(check.schedule.id)
            await until(emu, lambda: len(notices(emu, "🆕 **upd-dc** has an update")) == 1)

            denied = await slash(emu, PLAYER, "update", name="upd-dc", when="empty")
            assert refusal(denied).startswith("You need the PEON operator role to ")
            i = await slash(emu, OPERATOR, "update", name="upd-dc", when="empty")
            assert i.original is not None
            assert i.original.text().startswith(
                "**upd-dc** updates as soon as nobody plays (1 playing now). If players are "
                "still on "
            )
            await until(emu, lambda: len(notices(emu, "⏳ **upd-dc** updates as soon")) == 1)
            assert f"<@{OPERATOR}>" in notices(emu, "⏳")[0]

            await svc.servers.console("upd-dc", "leave alice", actor="test")
            await until(emu, lambda: len(notices(emu, "⬆️ **upd-dc** was updated")) == 1)
            (done,) = notices(emu, "⬆️")
            assert "to a new image" in done and "It is running again." in done
            assert "Fake game 2 starting" in "\n".join(await svc.servers.logs("upd-dc"))
            await auto._cron(check.schedule.id)  # now up to date again
            await emu.settle()
            assert len(notices(emu, "🆕")) == 1
    finally:
        forget_pulled(images, ref)
