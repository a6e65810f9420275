"""The live status board and the bot's presence: the board's content (bot/board.py) from real
parts, then the real discord.py client against the emulator, with the real engine and the fake
game. The board is edited when something on it changes, and only then; it survives restarts,
comes back when deleted, and the presence sums it up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest

from bot.app import open_services
from bot.board import UNKNOWN, Board, BoardBuilder, BoardRow
from bot.client import board_embed
from bot.players import PlayerCount
from bot.settings import AutomationSettings, HostSettings, Settings
from tests.conftest import ADMIN, NOBODY, OPERATOR, PLAYER, cleanup_instance, make_settings
from tests.discord_emulator import DiscordEmulator, Message, Recorded
from tests.test_discord_e2e import Runner, bot_settings, finished, refusal, slash, until

TITLE = "Game servers"


def row(name: str, state: str = "running", **kw: object) -> BoardRow:
    values: dict[str, object] = {
        "title": "Fake Game", "host": "local", "addresses": ("127.0.0.1:20001 tcp",),
        "players": None, "since": None, "next_stop": None, "startable": False,
    }  # fmt: skip
    values.update(kw)
    return BoardRow(name, state=state, **values)  # type: ignore[arg-type]


# --- the board's content ----------------------------------------------------------------------


def test_summary_counts_servers_up_and_players() -> None:
    crowd = PlayerCount(5, 10, (), "a2s")
    two = PlayerCount(2, None, ("alice", "bob"), "log")
    board = Board((row("a", players=crowd), row("b", players=two), row("c", "exited"),
                   row("d", UNKNOWN), row("e")))  # fmt: skip
    assert board.summary() == "3 servers up, 7 playing"
    assert Board((row("a"),)).summary() == "1 server up, 0 playing"
    assert Board(()).summary() == "No servers yet"


def test_board_renders_names_escaped_and_capped_and_times_as_discord_timestamps() -> None:
    names = ("*bold*", *(f"p{n}" for n in range(14)))
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    board = Board((
        row("alpha", players=PlayerCount(15, 20, names, "log"), since=when,
            next_stop=("stop", when)),
        row("bravo", UNKNOWN),
    ))  # fmt: skip
    embed = board_embed(board).to_dict()
    alpha, bravo = embed["fields"]
    assert alpha["name"] == "alpha · Fake Game"
    stamp = f"<t:{int(when.timestamp())}:R>"
    assert alpha["value"].splitlines() == [
        f"🟢 Running · started {stamp}",
        "`127.0.0.1:20001` tcp",
        "👥 15/20 playing: \\*bold\\*, p0, p1, p2, p3, p4, p5, p6, p7, p8, and 5 more",
        f"⏹️ Stops {stamp}",
    ]
    assert bravo["value"].startswith("❔ Unknown: its Docker host local does not answer")
    assert embed["footer"]["text"] == "1 server up, 15 playing"
    # Built again with nothing changed: the same payload (no clock in it).
    assert board_embed(board).to_dict() == embed


@pytest.mark.docker
async def test_servers_on_an_unreachable_host_are_unknown(tmp_path: Path, fakegame: str) -> None:
    # A second host nobody answers at (a closed port on loopback).
    hosts = [
        HostSettings(name="home", public_address="127.0.0.1"),
        HostSettings(name="gone", base_url="tcp://127.0.0.1:9", public_address="127.0.0.1"),
    ]
    settings = make_settings(tmp_path, hosts=hosts)  # fmt: skip
    try:
        async with open_services(settings) as svc:
            await svc.servers.create("fakegame", "brd-here", actor="test", host="home")
            record = await svc.servers.store.get_server("brd-here")
            await svc.store.create_server(
                name="brd-there", warplan="fakegame", image=record.image, variables={},
                ports=[], created_by="test", host="gone",
            )  # fmt: skip
            await svc.store.release("brd-there")
            board = await BoardBuilder(svc.servers).build()
    finally:
        cleanup_instance(settings.instance_id)
    states = {r.name: (r.state, r.startable) for r in board.rows}
    assert states == {"brd-here": ("created", True), "brd-there": (UNKNOWN, False)}
    text = "\n".join(f["value"] for f in board_embed(board).to_dict()["fields"])
    assert "❔ Unknown: its Docker host gone does not answer" in text
    assert "on gone" in text  # several hosts: each server says where it is


# --- through Discord ----------------------------------------------------------------------------


def board_settings(tmp_path: Path, emu: DiscordEmulator, *, refresh: float,
                   announce: bool = False) -> Settings:  # fmt: skip
    base = bot_settings(tmp_path, emu, players_can_start=True)
    # At most one edit a second per board: within Discord's 5 edits per 5 s in a channel.
    discord_settings = base.discord.model_copy(
        update={"board_interval": 1.0, "board_refresh": refresh}
    )
    automation = AutomationSettings(player_check_interval="1s", announce_players=announce)
    return base.model_copy(update={"discord": discord_settings, "automation": automation})


def boards(emu: DiscordEmulator) -> list[Message]:
    """The status boards in #general (deleted ones are gone from the list)."""
    msgs = emu.channel_messages.get(emu.channels["general"], [])
    return [m for m in msgs if m.embeds and m.embeds[0].get("title") == TITLE]


def edits(emu: DiscordEmulator, message_id: int) -> list[Recorded]:
    """The bot's edits of one message that Discord accepted."""
    path = f"/channels/{emu.channels['general']}/messages/{message_id}"
    return [r for r in emu.requests if r.method == "PATCH" and r.path == path and r.status == 200]


def shown(emu: DiscordEmulator, message_id: int) -> str:
    msg = emu.message(message_id)
    return msg.text() if msg is not None and not msg.deleted else ""


async def place(emu: DiscordEmulator) -> Message:
    i = await slash(emu, ADMIN, "board", command="peon", channel=emu.channels["general"])
    await finished(emu, i, "status board is now in")
    assert i.original is not None and i.original.ephemeral
    await until(emu, lambda: len(boards(emu)) == 1)
    return boards(emu)[0]


async def test_board_is_edited_on_start_joins_and_stop_and_at_no_other_time(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    # Events only (no timer): the players' joins reach the board as `players` events.
    settings = board_settings(tmp_path, emu, refresh=3600, announce=True)
    runner = Runner(settings, emu)
    await runner.start()
    try:
        servers = runner.services.servers
        await servers.create("fakegame", "brd-a", actor="test")
        # Only admins post the board.
        for user in (OPERATOR, NOBODY):
            i = await slash(emu, user, "board", command="peon", channel=emu.channels["general"])
            assert refusal(i).startswith("You need the PEON admin role")
        # A channel PEON may not post in is refused in one sentence.
        emu.deny("general", "send_messages")
        emu.expected_codes.add(50013)
        i = await slash(emu, ADMIN, "board", command="peon", channel=emu.channels["general"])
        text = await finished(emu, i, "cannot post")
        assert text == (f"PEON cannot post in <#{emu.channels['general']}>; it needs View "
                        "Channel, Send Messages and Embed Links there.")  # fmt: skip
        assert i.original is not None and i.original.ephemeral and boards(emu) == []
        emu.allow("general")

        board = await place(emu)
        assert "brd-a · Fake Game" in shown(emu, board.id)
        assert "⚪ Stopped" in shown(emu, board.id)
        assert [b["label"] for b in emu.message(board.id).buttons()] == ["Start brd-a"]
        await asyncio.sleep(1.5)  # the events before it (the create) change nothing on it
        assert edits(emu, board.id) == []
        start = 0

        # A player starts it from the board's button.
        click = await emu.click(PLAYER, emu.message(board.id), "peon:panel:start:brd-a")
        await finished(emu, click, "brd-a is ready to join")
        await until(emu, lambda: "🟢 Running" in shown(emu, board.id))
        assert emu.message(board.id).buttons() == []  # running: nothing to start
        assert len(edits(emu, board.id)) - start == 1
        automation = runner.bot.automation
        assert automation is not None
        # The idle watch has seen it running (joins before that would not be announced).
        await emu.wait_for(lambda: "brd-a" in automation._seen_names, 30)

        await servers.console("brd-a", "join alice", actor="test")
        await until(emu, lambda: "👥 1 playing: alice" in shown(emu, board.id))
        await servers.console("brd-a", "join bob", actor="test")
        await until(emu, lambda: "👥 2 playing: alice, bob" in shown(emu, board.id))
        assert len(edits(emu, board.id)) - start == 3

        # Nothing on it changes: events (a console command, a status) and player checks come
        # and go, and the board is left alone.
        await servers.console("brd-a", "save", actor="test")
        i = await slash(emu, PLAYER, "status", name="brd-a")
        await finished(emu, i, "State")
        await asyncio.sleep(3)
        assert len(edits(emu, board.id)) - start == 3

        i = await slash(emu, OPERATOR, "stop", name="brd-a")
        await finished(emu, i, "brd-a\\*\\* stopped")
        await until(emu, lambda: "⚪ Stopped" in shown(emu, board.id))
        await asyncio.sleep(2)
        run = edits(emu, board.id)[start:]
        print(f"\nstatus board edits over start, 2 players joining and stop: {len(run)} "
              f"(of the one board message; {len(boards(emu))} board posted)")  # fmt: skip
        assert len(run) == 4
        assert len(boards(emu)) == 1
        assert all(b.at - a.at >= 0.99 for a, b in pairwise(run))

        # The presence sums the board up, sent only when that changed.
        texts = emu.presence_texts()
        assert all(a != b for a, b in pairwise(texts)), texts
        assert [t for t in texts if t != "No servers yet"] == [
            "0 servers up, 0 playing",
            "1 server up, 0 playing",
            "1 server up, 1 playing",
            "1 server up, 2 playing",
            "0 servers up, 0 playing",
        ]
    finally:
        await runner.stop()
        cleanup_instance(settings.instance_id)


async def test_board_survives_restarts_and_comes_back_when_deleted(
    tmp_path: Path, emu: DiscordEmulator, fakegame: str
) -> None:
    # The timer alone shows joins here (players are not announced).
    settings = board_settings(tmp_path, emu, refresh=1)
    runner = Runner(settings, emu)
    await runner.start()
    try:
        servers = runner.services.servers
        await servers.create("fakegame", "brd-b", actor="test")
        await servers.start("brd-b", actor="test")
        board = await place(emu)
        await servers.console("brd-b", "join carol", actor="test")
        await until(emu, lambda: "playing: carol" in shown(emu, board.id))

        await runner.stop()
        runner = Runner(settings, emu)
        await runner.start()
        await until(emu, lambda: emu.presence_texts()[-1:] == ["1 server up, 1 playing"])
        before = len(edits(emu, board.id))
        await asyncio.sleep(2.5)  # two refreshes: nothing changed, so no edit
        assert len(edits(emu, board.id)) == before
        servers = runner.services.servers
        # Two joins in quick succession: shown together, or one edit a second apart.
        await servers.console("brd-b", "join dave", actor="test")
        await asyncio.sleep(0.3)
        await servers.console("brd-b", "join frank", actor="test")
        await until(emu, lambda: "playing: carol, dave, frank" in shown(emu, board.id))
        run = edits(emu, board.id)[before:]
        assert 1 <= len(run) <= 2 and all(b.at - a.at >= 0.99 for a, b in pairwise(run))
        assert [b.id for b in boards(emu)] == [board.id]  # the same message, edited

        # Deleted by a member: posted again at once.
        await emu.delete_message(board.id)
        await until(emu, lambda: len(boards(emu)) == 1 and boards(emu)[0].id != board.id)
        second = boards(emu)[0]
        assert "playing: carol, dave, frank" in second.text()

        # Deleted while the bot did not hear of it: Discord answers the next edit with 404
        # Unknown Message, and the board is posted again.
        emu.expected_codes.add(10008)
        await emu.delete_message(second.id, notify=False)
        await servers.console("brd-b", "join erin", actor="test")
        await until(emu, lambda: len(boards(emu)) == 1 and boards(emu)[0].id != second.id)
        third = boards(emu)[0]
        await until(emu, lambda: "playing: carol, dave, erin, frank" in shown(emu, third.id))

        # Deleted while the bot was down: found at startup and posted again.
        await runner.stop()
        await emu.delete_message(third.id, notify=False)
        runner = Runner(settings, emu)
        await runner.start()
        await until(emu, lambda: len(boards(emu)) == 1 and boards(emu)[0].id != third.id)
        stored = await runner.services.store.list_boards()
        assert [(b.channel_id, b.message_id) for b in stored] == [
            (emu.channels["general"], boards(emu)[0].id)
        ]

        # Taken down: gone, and not posted again.
        i = await slash(emu, ADMIN, "board", command="peon")
        await finished(emu, i, "taken down")
        await asyncio.sleep(1.5)
        assert boards(emu) == [] and await runner.services.store.list_boards() == []
    finally:
        await runner.stop()
        cleanup_instance(settings.instance_id)
