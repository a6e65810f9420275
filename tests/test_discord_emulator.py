"""The Discord emulator against the real discord.py client (a small demo bot defined here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.discord_emulator import DiscordEmulator, Message

GUILD = 1000
FRUITS = ["apple", "banana", "blueberry", "cherry"]
ALICE, BOB = 42, 43


class PersistentView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Persist", custom_id="demo:persist", style=discord.ButtonStyle.primary)
    async def persist(
        self, interaction: discord.Interaction, button: discord.ui.Button[PersistentView]
    ) -> None:
        await interaction.response.send_message("persisted", ephemeral=True)


class ClickView(discord.ui.View):
    @discord.ui.button(label="Click me", custom_id="demo:click")
    async def click(
        self, interaction: discord.Interaction, button: discord.ui.Button[ClickView]
    ) -> None:
        button.disabled = True
        await interaction.response.edit_message(content="clicked", view=self)

    @discord.ui.button(label="Later", custom_id="demo:later")
    async def later(
        self, interaction: discord.Interaction, button: discord.ui.Button[ClickView]
    ) -> None:
        await interaction.response.defer()  # type 6 on a component: @original is its message
        await interaction.edit_original_response(content="later")


class AskModal(discord.ui.Modal, title="Ask"):
    answer: discord.ui.TextInput[AskModal] = discord.ui.TextInput(
        label="Answer", custom_id="answer"
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"you said {self.answer.value}")


class DemoBot(commands.Bot):
    def __init__(self) -> None:
        super().__init__(
            command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.1
        )

    async def setup_hook(self) -> None:
        demo = app_commands.Group(name="demo", description="Demo commands")

        @demo.command(description="Answers pong")
        async def ping(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("pong", ephemeral=True)

        @demo.command(description="Defers, then edits")
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await asyncio.sleep(0.2)
            await interaction.edit_original_response(content="done")

        async def fruit_choices(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=f, value=f) for f in FRUITS if f.startswith(current)]

        @demo.command(description="Pick a fruit")
        @app_commands.autocomplete(fruit=fruit_choices)
        async def pick(interaction: discord.Interaction, fruit: str, count: int = 1) -> None:
            await interaction.response.send_message(f"picked {count} {fruit}")

        @demo.command(description="Asks in a modal")
        async def ask(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(AskModal())

        @demo.command(description="Shows a button")
        async def button(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("press", view=ClickView())

        @demo.command(description="Deferred, then two follow-ups")
        async def follow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            await interaction.followup.send("step 1")
            await interaction.followup.send("step 2", embed=discord.Embed(title="Two"))

        @demo.command(description="Posts the persistent panel")
        async def panel(interaction: discord.Interaction) -> None:
            assert isinstance(interaction.channel, discord.TextChannel)
            await interaction.channel.send("panel", view=PersistentView())
            await interaction.response.send_message("posted", ephemeral=True)

        @demo.command(description="Who am I")
        async def whoami(
            interaction: discord.Interaction, target: discord.Member | None = None
        ) -> None:
            user = target or interaction.user
            assert isinstance(user, discord.Member)
            roles = ",".join(r.name for r in user.roles if not r.is_default())
            admin = interaction.permissions.administrator
            await interaction.response.send_message(f"{user.name} admin={admin} roles={roles}")

        self.add_view(PersistentView())
        guild = discord.Object(GUILD)
        self.tree.add_command(demo, guild=guild)
        await self.tree.sync(guild=guild)


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    emulator = DiscordEmulator()
    emulator.add_member(ALICE, "alice", [emulator.roles["admin"]])
    await emulator.start()
    emulator.point_client()
    yield emulator
    await emulator.close()
    assert emulator.errors == []


async def start_bot(emu: DiscordEmulator, token: str) -> tuple[DemoBot, asyncio.Task[None]]:
    bot = DemoBot()
    task = asyncio.create_task(bot.start(token))
    deadline = time.monotonic() + 10
    while not bot.is_ready():
        if task.done():
            await task  # raises what start() raised
        assert time.monotonic() < deadline, "bot did not become ready"
        await asyncio.sleep(0.01)
    return bot, task


@pytest.fixture
async def bot(emu: DiscordEmulator) -> AsyncIterator[DemoBot]:
    demo, task = await start_bot(emu, emu.token)
    yield demo
    await demo.close()
    await asyncio.wait_for(task, 10)


async def test_login_and_sync(emu: DiscordEmulator, bot: DemoBot) -> None:
    assert emu.identified.is_set()
    assert bot.user is not None and bot.user.id == emu.bot_user_id
    assert [c["name"] for c in emu.commands] == ["demo"]
    subs = {o["name"] for o in emu.commands[0]["options"]}
    assert {"ping", "slow", "pick", "ask", "button", "follow", "panel"} <= subs
    paths = [(r.method, r.path) for r in emu.requests]
    assert paths[:3] == [
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
        ("PUT", "/applications/2000/guilds/1000/commands"),
    ]
    guild = bot.get_guild(GUILD)
    assert guild is not None
    assert {c.name for c in guild.text_channels} == {"general", "peon"}
    assert {r.name for r in guild.roles} >= {"admin", "operator", "player"}


async def test_ping_ephemeral(emu: DiscordEmulator, bot: DemoBot) -> None:
    i = await emu.slash(ALICE, "demo", subcommand="ping")
    await i.wait_done()
    assert i.response_type == 4
    assert i.original is not None and i.original.content == "pong" and i.original.ephemeral
    assert emu.callback_times[i.id] >= emu.dispatch_times[i.id]


async def test_defer_then_edit(emu: DiscordEmulator, bot: DemoBot) -> None:
    i = await emu.slash(ALICE, "demo slow")
    await i.wait_done()
    assert i.response_type == 5
    assert i.original is not None and i.original.flags & 128  # still thinking
    await emu.wait_for(lambda: i.original is not None and i.original.content == "done")
    assert [m.content for m in i.edits] == ["", "done"]
    assert i.edits[0].id == i.edits[1].id
    assert any(r.method == "PATCH" and r.path.endswith("/messages/@original") for r in emu.requests)


async def test_autocomplete_and_typed_options(emu: DiscordEmulator, bot: DemoBot) -> None:
    a = await emu.autocomplete(
        ALICE, "demo", subcommand="pick", options={"fruit": "b"}, focused="fruit"
    )
    await a.wait_done()
    assert a.response_type == 8
    assert [c["name"] for c in a.choices] == ["banana", "blueberry"]
    i = await emu.slash(ALICE, "demo", subcommand="pick", options={"fruit": "banana", "count": 3})
    await i.wait_done()
    assert i.original is not None and i.original.content == "picked 3 banana"
    assert not i.original.ephemeral
    with pytest.raises(LookupError):
        await emu.slash(ALICE, "demo", subcommand="pick", options={"colour": "red"})


async def test_modal(emu: DiscordEmulator, bot: DemoBot) -> None:
    i = await emu.slash(ALICE, "demo", subcommand="ask")
    await i.wait_done()
    assert i.response_type == 9 and i.modal is not None
    assert i.modal["title"] == "Ask"
    s = await emu.submit_modal(ALICE, i.modal["custom_id"], {"answer": "forty-two"})
    await s.wait_done()
    assert s.original is not None and s.original.content == "you said forty-two"


async def test_button_updates_message(emu: DiscordEmulator, bot: DemoBot) -> None:
    i = await emu.slash(BOB, "demo", subcommand="button")
    await i.wait_done()
    assert i.original is not None
    btn = i.original.buttons()[0]
    assert btn["custom_id"] == "demo:click" and btn["label"] == "Click me" and not btn["disabled"]
    c = await emu.click(BOB, i.original, "demo:click")
    await c.wait_done()
    assert c.response_type == 7
    assert c.original is not None and c.original.content == "clicked"
    assert i.original.content == "clicked" and i.original.buttons()[0]["disabled"]
    assert [m.content for m in i.edits] == ["press", "clicked"]
    with pytest.raises(ValueError, match="disabled"):
        await emu.click(BOB, i.original, "demo:click")


async def test_persistent_view(emu: DiscordEmulator, bot: DemoBot) -> None:
    # A panel left over from an earlier bot process: only bot.add_view() can answer it.
    row = {
        "type": 1,
        "components": [{"type": 2, "style": 1, "label": "Persist", "custom_id": "demo:persist"}],
    }
    old = emu.inject_message("peon", "old panel", components=[row])
    c = await emu.click(BOB, old, "demo:persist")
    await c.wait_done()
    assert c.original is not None and c.original.content == "persisted" and c.original.ephemeral
    # And one posted now through the channel.
    i = await emu.slash(BOB, "demo", subcommand="panel", channel="peon")
    await i.wait_done()
    panel: Message = emu.channel_messages[3001][-1]
    assert panel.content == "panel" and panel.buttons()[0]["custom_id"] == "demo:persist"
    c2 = await emu.click(BOB, panel, "demo:persist")
    await c2.wait_done()
    assert c2.original is not None and c2.original.content == "persisted"


async def test_component_on_channel_message(emu: DiscordEmulator, bot: DemoBot) -> None:
    channel = bot.get_channel(3001)
    assert isinstance(channel, discord.TextChannel)
    await channel.send("press", view=ClickView())
    await emu.settle()  # the view is registered once the bot parsed the POST response
    msg = emu.channel_messages[3001][-1]
    later = await emu.click(ALICE, msg, "demo:later")
    await later.wait_done()
    assert later.response_type == 6
    await emu.wait_for(lambda: emu.channel_messages[3001][-1].content == "later")
    assert [m.content for m in later.edits] == ["press", "later"]
    click = await emu.click(ALICE, msg, "demo:click")
    await click.wait_done()
    assert click.response_type == 7
    current = emu.channel_messages[3001][-1]
    assert current.id == msg.id and current.content == "clicked"
    assert [b["disabled"] for b in current.buttons()] == [True, False]
    assert emu.message(msg.id) == current


async def test_followups(emu: DiscordEmulator, bot: DemoBot) -> None:
    i = await emu.slash(ALICE, "demo", subcommand="follow")
    await i.wait_done()
    await emu.wait_for(lambda: len(i.followups) == 2)
    assert [m.content for m in i.followups] == ["step 1", "step 2"]
    # The first follow-up after a thinking defer replaces the "thinking" message.
    assert i.original is not None and i.original.id == i.followups[0].id
    assert i.original.content == "step 1" and i.original.ephemeral and not i.original.flags & 128
    assert i.followups[1].text() == "step 2\nTwo"


async def test_members_roles_permissions(emu: DiscordEmulator, bot: DemoBot) -> None:
    emu.add_member(BOB, "bob", [emu.roles["player"]])
    a = await emu.slash(ALICE, "demo", subcommand="whoami")
    b = await emu.slash(BOB, "demo", subcommand="whoami")
    t = await emu.slash(BOB, "demo", subcommand="whoami", options={"target": ALICE})
    for i in (a, b, t):
        await i.wait_done()
    assert a.original is not None and a.original.content == "alice admin=True roles=admin"
    assert b.original is not None and b.original.content == "bob admin=False roles=player"
    assert t.original is not None and t.original.content == "alice admin=False roles=admin"


async def test_rest_routes_from_the_bot(emu: DiscordEmulator, bot: DemoBot) -> None:
    channel = await bot.fetch_channel(3000)
    assert isinstance(channel, discord.TextChannel) and channel.name == "general"
    sent = await channel.send("hello", file=discord.File(__file__, filename="t.py"))
    stored = emu.channel_messages[3000][-1]
    assert stored.id == sent.id and stored.content == "hello"
    assert stored.attachments[0]["filename"] == "t.py"
    assert emu.requests[-1].files["t.py"].startswith(b'"""The Discord emulator')
    fetched = await channel.fetch_message(sent.id)
    assert fetched.content == "hello"
    await fetched.edit(content="edited")
    assert emu.channel_messages[3000][-1].content == "edited"
    await fetched.delete()
    assert emu.channel_messages[3000] == []
    member = await bot.get_guild(GUILD).fetch_member(ALICE)  # type: ignore[union-attr]
    assert member.name == "alice"
    with pytest.raises(discord.NotFound):
        await bot.get_guild(GUILD).fetch_member(999)  # type: ignore[union-attr]


async def test_http_rules(emu: DiscordEmulator) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{emu.api_base}/users/@me", headers={"Authorization": "Bot nope"}
        ) as r:
            assert r.status == 401 and r.headers["Content-Type"] == "application/json"
            assert await r.json() == {"message": "401: Unauthorized", "code": 0}
        auth = {"Authorization": f"Bot {emu.token}"}
        async with http.get(f"{emu.api_base}/no/such/route", headers=auth) as r:
            assert r.status == 404 and r.headers["Content-Type"] == "application/json"


async def test_wrong_token(emu: DiscordEmulator) -> None:
    bot = DemoBot()
    try:
        with pytest.raises(discord.LoginFailure):
            await bot.start("wrong-token")
    finally:
        await bot.close()
    assert emu.requests[-1].path == "/users/@me"
    assert not emu.identified.is_set()


async def test_settle(emu: DiscordEmulator, bot: DemoBot) -> None:
    t0 = time.monotonic()
    await emu.settle()
    assert time.monotonic() - t0 < 1  # idle: returns after the quiet window
    i = await emu.slash(ALICE, "demo", subcommand="button")
    assert i.callbacks == []  # dispatched, not answered yet
    await emu.settle()
    # Settled means the callback arrived and the bot parsed its answer (view registered).
    assert i.response_type == 4 and i.original is not None
    c = await emu.click(ALICE, i.original, "demo:click")
    await emu.settle()
    assert c.response_type == 7
    with pytest.raises(TimeoutError):
        await emu.settle(quiet=1, timeout=0.2)


async def test_settle_beyond_client_gateway_budget(emu: DiscordEmulator, bot: DemoBot) -> None:
    # Every channel post dispatches MESSAGE_CREATE, so every settle() needs a barrier; the client
    # answers at most ~110 a minute without stalling.
    channel = bot.get_channel(3000)
    assert isinstance(channel, discord.TextChannel)
    t0 = time.monotonic()
    for n in range(130):
        await channel.send(f"m{n}")
        await emu.settle(quiet=0, timeout=2)
    assert time.monotonic() - t0 < 15
    i = await emu.slash(ALICE, "demo ping")
    await i.wait_done(timeout=2)
    assert i.original is not None and i.original.content == "pong"


async def test_restart_gateway_resumes(emu: DiscordEmulator, bot: DemoBot) -> None:
    await emu.restart_gateway()
    i = await emu.slash(ALICE, "demo", subcommand="ping")
    await i.wait_done()
    assert i.original is not None and i.original.content == "pong"


async def test_dispatch_to_callback_latency(emu: DiscordEmulator, bot: DemoBot) -> None:
    latencies = []
    for _ in range(20):
        i = await emu.slash(ALICE, "demo", subcommand="ping")
        await i.wait_done()
        latencies.append(emu.callback_times[i.id] - emu.dispatch_times[i.id])
    assert sorted(latencies)[10] < 0.5
