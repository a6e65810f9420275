"""The Discord emulator against the real discord.py client (a small demo bot defined here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from unittest.mock import ANY

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.discord_emulator import DiscordEmulator, Interaction, Message

GUILD = 1000
FRUITS = ["apple", "banana", "blueberry", "cherry"]
ALICE, BOB = 42, 43
LATE = 0.5  # how long /demo late sleeps before answering


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


class AskAgainModal(discord.ui.Modal, title="Again"):
    answer: discord.ui.TextInput[AskAgainModal] = discord.ui.TextInput(
        label="Answer", custom_id="again"
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(AskModal())  # Discord refuses this


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

        @demo.command(description="Answers after a second")
        async def late(interaction: discord.Interaction) -> None:
            await asyncio.sleep(LATE)
            await interaction.response.send_message("too late")

        @demo.command(description="Asks in a modal that asks again")
        async def again(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(AskAgainModal())

        async def bad_choices(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            if current == "many":
                return [app_commands.Choice(name=f"c{n}", value=f"c{n}") for n in range(26)]
            return [app_commands.Choice(name="n" * 101, value="v" * 101)]

        @demo.command(description="Autocompletes too much")
        @app_commands.autocomplete(thing=bad_choices)
        async def many(interaction: discord.Interaction, thing: str) -> None:
            await interaction.response.send_message(thing)

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
        # Syncing commands to a guild the bot is not in.
        url = f"{emu.api_base}/applications/{emu.app_id}/guilds/999/commands"
        async with http.put(url, headers=auth, json=[]) as r:
            assert r.status == 403
            assert await r.json() == {"message": "Missing Access", "code": 50001}
    assert emu.rejected == [
        (401, 0, "GET", "/users/@me"),
        (403, 50001, "PUT", "/applications/2000/guilds/999/commands"),
    ]


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
    # answers at most ~110 a minute without stalling. (Without the rate limit: 5 posts per 5 s
    # would make this take over two minutes.)
    emu.rate_limit = None
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


# ---------------------------------------------------------------- Discord's rules
async def raw(
    emu: DiscordEmulator, method: str, path: str, body: object = None, *, auth: bool = True
) -> tuple[int, Any, Mapping[str, str]]:
    """One request as a bare HTTP client: (status, JSON or None, headers)."""
    headers = {"Authorization": f"Bot {emu.token}"} if auth else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, emu.api_base + path, json=body, headers=headers) as r,
    ):
        data = await r.json(content_type=None) if r.status != 204 else None
        return r.status, data, dict(r.headers)


async def unanswered(emu: DiscordEmulator, user: int = ALICE) -> Interaction:
    """A component interaction the bot does not answer (no view listens to its custom_id), for
    a test to answer with raw requests."""
    row = {"type": 1, "components": [{"type": 2, "style": 1, "label": "G", "custom_id": "ghost"}]}
    ghost = emu.inject_message("general", "ghost", components=[row])
    inter = await emu.click(user, ghost, "ghost")
    await emu.settle()
    assert inter.callbacks == []
    return inter


def form_error(path: list[str], code: str, message: str) -> dict[str, Any]:
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path):
        errors = {key: errors}
    return {"code": 50035, "message": "Invalid Form Body", "errors": errors}


async def test_first_response_after_the_deadline_is_unknown_interaction(
    emu: DiscordEmulator, bot: DemoBot
) -> None:
    emu.response_deadline = LATE / 2
    i = await emu.slash(ALICE, "demo late")
    await emu.wait_for(lambda: any(r.path.endswith("/callback") for r in emu.requests))
    await emu.settle()
    callback = next(r for r in emu.requests if r.path.endswith("/callback"))
    assert (callback.status, callback.response) == (
        404,
        {"message": "Unknown interaction", "code": 10062},
    )
    assert i.callbacks == [] and not i.answered.is_set()
    assert emu.rejected == [(404, 10062, "POST", callback.path)]
    # The token never became usable for webhooks.
    status, body, _ = await raw(emu, "POST", f"/webhooks/{emu.app_id}/{i.token}?wait=1", {
        "content": "x"
    })  # fmt: skip
    assert (status, body) == (404, {"message": "Unknown Webhook", "code": 10015})


async def test_second_callback_and_wrong_callback_types(emu: DiscordEmulator, bot: DemoBot) -> None:
    c = await unanswered(emu)
    url = f"/interactions/{c.id}/{c.token}/callback?with_response=1"
    status, body, _ = await raw(emu, "POST", url, {"type": 8, "data": {"choices": []}}, auth=False)
    assert status == 400 and body["code"] == 50035
    assert body["errors"]["type"]["_errors"][0]["code"] == "BASE_TYPE_CHOICES"
    assert c.callbacks == []  # a refused first answer leaves the interaction unanswered
    status, _, _ = await raw(emu, "POST", url, {"type": 6}, auth=False)
    assert status == 200 and c.response_type == 6
    status, body, _ = await raw(emu, "POST", url, {"type": 6}, auth=False)
    assert (status, body) == (
        400,
        {"message": "Interaction has already been acknowledged.", "code": 40060},
    )
    path = url.split("?", maxsplit=1)[0]
    assert emu.rejected == [(400, 50035, "POST", path), (400, 40060, "POST", path)]


async def test_modal_cannot_answer_a_modal_submit(emu: DiscordEmulator, bot: DemoBot) -> None:
    i = await emu.slash(ALICE, "demo again")
    await i.wait_done()
    assert i.modal is not None
    s = await emu.submit_modal(ALICE, i.modal["custom_id"], {"again": "yes"})
    await emu.wait_for(lambda: bool(emu.rejected))
    assert s.callbacks == []
    rec = next(r for r in emu.requests if r.path.startswith(f"/interactions/{s.id}/"))
    assert rec.status == 400 and rec.response["code"] == 50035
    [error] = rec.response["errors"]["type"]["_errors"]
    assert error["code"] == "BASE_TYPE_CHOICES" and "MODAL" not in error["message"]
    assert "<InteractionCallbackTypes.UPDATE_MESSAGE: 7>" not in error["message"]  # no message
    assert emu.rejected == [(400, 50035, "POST", rec.path)]


async def test_interaction_token_expires(emu: DiscordEmulator, bot: DemoBot) -> None:
    emu.token_lifetime = 0.5
    i = await emu.slash(ALICE, "demo follow")
    await i.wait_done()
    await emu.wait_for(lambda: len(i.followups) == 2)
    base = f"/webhooks/{emu.app_id}/{i.token}"
    status, _, _ = await raw(emu, "GET", f"{base}/messages/@original")
    assert status == 200
    await asyncio.sleep(0.6)
    expired = {"message": "Invalid Webhook Token", "code": 50027}
    calls = [
        ("GET", f"{base}/messages/@original", None),
        ("PATCH", f"{base}/messages/@original", {"content": "late"}),
        ("PATCH", f"{base}/messages/{i.followups[1].id}", {"content": "late"}),
        ("DELETE", f"{base}/messages/{i.followups[1].id}", None),
        ("POST", f"{base}?wait=1", {"content": "late"}),
    ]
    for method, path, body in calls:
        assert await raw(emu, method, path, body, auth=False) == (401, expired, ANY), path
    assert [r[:3] for r in emu.rejected] == [(401, 50027, m) for m, _, _ in calls]
    assert i.followups[1].content == "step 2"  # nothing changed
    # discord.py sees an HTTPException it can recognise.
    with pytest.raises(discord.HTTPException) as exc:
        await bot.get_channel(3000).send("x" * 2001)  # type: ignore[union-attr]
    assert exc.value.code == 50035


async def test_message_size_limits_in_discord_py_terms(emu: DiscordEmulator, bot: DemoBot) -> None:
    emu.rate_limit = None  # many posts to one channel
    channel = bot.get_channel(3000)
    assert isinstance(channel, discord.TextChannel)
    big = discord.Embed(title="t" * 257, description="d" * 4097)
    big.set_footer(text="f" * 2049).set_author(name="a" * 257)
    big.add_field(name="n" * 257, value="v" * 1025)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"content": "x" * 2001}, ["In content: Must be 2000 or fewer in length."]),
        ({"embed": big}, [
            "In embeds.0.title: Must be 256 or fewer in length.",
            "In embeds.0.description: Must be 4096 or fewer in length.",
            "In embeds.0.footer.text: Must be 2048 or fewer in length.",
            "In embeds.0.author.name: Must be 256 or fewer in length.",
            "In embeds.0.fields.0.name: Must be 256 or fewer in length.",
            "In embeds.0.fields.0.value: Must be 1024 or fewer in length.",
        ]),
        ({"embed": discord.Embed(title="x").add_field(name="n", value="v")}, []),
        ({"embeds": [discord.Embed(description="d" * 4000)] * 2},
         ["In embeds: Embed size exceeds maximum size of 6000"]),
    ]  # fmt: skip
    fields = discord.Embed(title="f")
    for n in range(26):
        fields.add_field(name=str(n), value="v")
    cases.append(({"embed": fields}, ["In embeds.0.fields: Must be 25 or fewer in length."]))
    for kwargs, expected in cases:
        if not expected:
            await channel.send(**kwargs)
            continue
        with pytest.raises(discord.HTTPException) as exc:
            await channel.send(**kwargs)
        assert exc.value.status == 400 and exc.value.code == 50035
        assert sorted(exc.value.text.splitlines()) == sorted(["Invalid Form Body", *expected])
    exact = await raw(emu, "POST", "/channels/3000/messages", {"content": "x" * 2001})
    assert exact[:2] == (400, form_error(
        ["content"], "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."
    ))  # fmt: skip
    eleven = {"embeds": [{"title": "e"}] * 11}  # discord.py itself refuses more than 10
    assert (await raw(emu, "POST", "/channels/3000/messages", eleven))[:2] == (400, form_error(
        ["embeds"], "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."
    ))  # fmt: skip
    # Edits are held to the same limits.
    sent = await channel.send("ok")
    with pytest.raises(discord.HTTPException, match="In content: Must be 2000"):
        await sent.edit(content="y" * 2001)
    assert emu.message(sent.id).content == "ok"  # type: ignore[union-attr]
    assert len(emu.rejected) == len(cases) - 1 + 3
    assert {r[:2] for r in emu.rejected} == {(400, 50035)}


async def test_component_limits(emu: DiscordEmulator, bot: DemoBot) -> None:
    emu.rate_limit = None  # many posts to one channel

    def button(n: int, **extra: Any) -> dict[str, Any]:
        return {"type": 2, "style": 1, "label": f"b{n}", "custom_id": f"c{n}", **extra}

    def row(*components: dict[str, Any]) -> dict[str, Any]:
        return {"type": 1, "components": list(components)}

    options = [{"label": f"o{n}", "value": f"o{n}"} for n in range(26)]
    cases = [
        ([row(button(n)) for n in range(6)], ["components"], "BASE_TYPE_MAX_LENGTH",
         "Must be 5 or fewer in length."),
        ([row(*(button(n) for n in range(6)))], ["components", "0", "components"],
         "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."),
        ([row(button(0, custom_id="c" * 101))], ["components", "0", "components", "0",
         "custom_id"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."),
        ([row(button(0, label="l" * 81))], ["components", "0", "components", "0", "label"],
         "BASE_TYPE_MAX_LENGTH", "Must be 80 or fewer in length."),
        ([row({"type": 3, "custom_id": "s", "options": options})],
         ["components", "0", "components", "0", "options"], "BASE_TYPE_BAD_LENGTH",
         "Must be between 1 and 25 in length."),
    ]  # fmt: skip
    for components, path, code, message in cases:
        body = {"content": "c", "components": components}
        status, answer, _ = await raw(emu, "POST", "/channels/3000/messages", body)
        assert (status, answer) == (400, form_error(path, code, message)), path
    ok = {"content": "c", "components": [row(*(button(n) for n in range(5)))] * 5}
    assert (await raw(emu, "POST", "/channels/3000/messages", ok))[0] == 200
    assert (await raw(emu, "POST", "/channels/3000/messages", {"content": ""}))[:2] == (
        400,
        {"message": "Cannot send an empty message", "code": 50006},
    )


async def test_size_limits_on_interaction_paths(emu: DiscordEmulator, bot: DemoBot) -> None:
    c = await unanswered(emu)
    url = f"/interactions/{c.id}/{c.token}/callback?with_response=1"
    too_long = {"type": 4, "data": {"content": "x" * 2001}}
    status, body, _ = await raw(emu, "POST", url, too_long, auth=False)
    assert (status, body) == (400, form_error(
        ["data", "content"], "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."
    ))  # fmt: skip
    update = {"type": 7, "data": {"embeds": [{"title": "t" * 257}]}}
    status, body, _ = await raw(emu, "POST", url, update, auth=False)
    assert (status, body) == (400, form_error(
        ["data", "embeds", "0", "title"], "BASE_TYPE_MAX_LENGTH", "Must be 256 or fewer in length."
    ))  # fmt: skip
    assert c.callbacks == []
    assert (await raw(emu, "POST", url, {"type": 4, "data": {"content": "ok"}}, auth=False))[
        0
    ] == 200
    hook = f"/webhooks/{emu.app_id}/{c.token}"
    status, body, _ = await raw(emu, "POST", hook + "?wait=1", {"content": "x" * 2001})
    assert (status, body) == (400, form_error(
        ["content"], "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."
    ))  # fmt: skip
    embeds = [{"description": "d" * 4000}, {"description": "d" * 2001}]
    status, body, _ = await raw(emu, "PATCH", hook + "/messages/@original", {"embeds": embeds})
    assert (status, body) == (400, form_error(
        ["embeds"], "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"
    ))  # fmt: skip
    assert c.original is not None and c.original.content == "ok" and c.followups == []


async def test_modal_limits(emu: DiscordEmulator, bot: DemoBot) -> None:
    c = await unanswered(emu)
    url = f"/interactions/{c.id}/{c.token}/callback?with_response=1"
    text = {"type": 4, "custom_id": "i" * 101, "style": 1, "label": "l" * 46,
            "placeholder": "p" * 101, "value": "v" * 4001}  # fmt: skip
    modal = {"type": 9, "data": {"custom_id": "m", "title": "t" * 46,
                                 "components": [{"type": 1, "components": [text]}]}}  # fmt: skip
    status, body, _ = await raw(emu, "POST", url, modal, auth=False)
    assert status == 400 and body["code"] == 50035
    data = body["errors"]["data"]
    assert data["title"]["_errors"][0]["message"] == "Must be 45 or fewer in length."
    field = data["components"]["0"]["components"]["0"]
    assert {k: v["_errors"][0]["message"] for k, v in field.items()} == {
        "custom_id": "Must be between 1 and 100 in length.",
        "label": "Must be 45 or fewer in length.",
        "placeholder": "Must be 100 or fewer in length.",
        "value": "Must be 4000 or fewer in length.",
    }
    labelled = {"type": 9, "data": {"custom_id": "m", "title": "ok", "components": [
        {"type": 18, "label": "L" * 46, "component": {"type": 4, "custom_id": "x", "style": 1}}
    ]}}  # fmt: skip
    status, body, _ = await raw(emu, "POST", url, labelled, auth=False)
    assert (status, body) == (400, form_error(
        ["data", "components", "0", "label"], "BASE_TYPE_MAX_LENGTH",
        "Must be 45 or fewer in length."
    ))  # fmt: skip
    assert c.callbacks == []


async def test_autocomplete_limits(emu: DiscordEmulator, bot: DemoBot) -> None:
    many = await emu.autocomplete(ALICE, "demo many", options={"thing": "many"}, focused="thing")
    await emu.wait_for(lambda: len(emu.rejected) == 1)
    long = await emu.autocomplete(ALICE, "demo many", options={"thing": "long"}, focused="thing")
    await emu.wait_for(lambda: len(emu.rejected) == 2)
    assert many.callbacks == [] and long.callbacks == []
    answers = [r.response for r in emu.requests if r.path.endswith("/callback")]
    assert answers[0] == form_error(
        ["data", "choices"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
    )
    choice = answers[1]["errors"]["data"]["choices"]["0"]
    assert choice["name"]["_errors"][0]["message"] == "Must be between 1 and 100 in length."
    assert choice["value"]["_errors"][0]["message"] == "Must be 100 or fewer in length."


async def test_rate_limit_answers(emu: DiscordEmulator, bot: DemoBot) -> None:
    emu.rate_limit = (2, 0.5)
    path = "/channels/3001/messages"
    first = await raw(emu, "POST", path, {"content": "1"})
    second = await raw(emu, "POST", path, {"content": "2"})
    assert first[0] == second[0] == 200
    assert (first[2]["X-RateLimit-Limit"], first[2]["X-RateLimit-Remaining"]) == ("2", "1")
    assert second[2]["X-RateLimit-Remaining"] == "0"
    assert 0 < float(second[2]["X-RateLimit-Reset-After"]) <= 0.5
    status, body, headers = await raw(emu, "POST", path, {"content": "3"})
    assert status == 429 and set(body) == {"message", "retry_after", "global"}
    assert body["message"] == "You are being rate limited." and body["global"] is False
    assert 0 < body["retry_after"] <= 0.5 and headers["Retry-After"] == "1"
    assert headers["X-RateLimit-Scope"] == "user" and headers["X-RateLimit-Remaining"] == "0"
    assert headers["X-RateLimit-Bucket"] == first[2]["X-RateLimit-Bucket"]
    assert "Via" in headers  # discord.py retries a 429 only when Via is there
    assert emu.rejected == [(429, 0, "POST", path)]
    # Another channel, and edits, have their own buckets; interactions are not limited.
    assert (await raw(emu, "POST", "/channels/3000/messages", {"content": "x"}))[0] == 200
    mid = first[1]["id"]
    for n in range(2):
        edit = await raw(emu, "PATCH", f"{path}/{mid}", {"content": f"e{n}"})
        assert edit[0] == 200
    assert (await raw(emu, "PATCH", f"{path}/{mid}", {"content": "e2"}))[0] == 429
    c = await unanswered(emu)
    await raw(emu, "POST", f"/interactions/{c.id}/{c.token}/callback", {"type": 6}, auth=False)
    for n in range(5):
        hook = f"/webhooks/{emu.app_id}/{c.token}?wait=1"
        assert (await raw(emu, "POST", hook, {"content": str(n)}, auth=False))[0] == 200
    await asyncio.sleep(body["retry_after"])
    assert (await raw(emu, "POST", path, {"content": "3"}))[0] == 200


async def test_discord_py_waits_out_the_rate_limit(emu: DiscordEmulator, bot: DemoBot) -> None:
    emu.rate_limit = (3, 1.0)
    channel = bot.get_channel(3000)
    assert isinstance(channel, discord.TextChannel)
    t0 = time.monotonic()
    await asyncio.gather(*(channel.send(f"m{n}") for n in range(7)))
    elapsed = time.monotonic() - t0
    assert len(emu.channel_messages[3000]) == 7
    assert emu.rejected == []  # it read the headers and never went over
    assert 2.0 <= elapsed < 4.0  # three windows: 3 + 3 + 1, no extra second
    # Another client used the bucket up: discord.py gets a 429, waits retry_after, retries.
    await asyncio.sleep(1.0)
    for n in range(3):
        assert (await raw(emu, "POST", "/channels/3000/messages", {"content": f"r{n}"}))[0] == 200
    t0 = time.monotonic()
    await channel.send("after")
    assert time.monotonic() - t0 < 1.5
    assert emu.rejected == [(429, 0, "POST", "/channels/3000/messages")]
    assert emu.channel_messages[3000][-1].content == "after"


async def test_channel_permissions(emu: DiscordEmulator, bot: DemoBot) -> None:
    guild = bot.get_guild(GUILD)
    assert guild is not None
    channel = guild.get_channel(3001)
    assert isinstance(channel, discord.TextChannel)
    assert channel.permissions_for(guild.me).send_messages
    emu.deny("peon", "view_channel")
    await emu.settle()
    assert not channel.permissions_for(guild.me).view_channel  # CHANNEL_UPDATE arrived
    with pytest.raises(discord.Forbidden) as exc:
        await channel.send("hidden")
    assert (exc.value.code, exc.value.text) == (50001, "Missing Access")
    i = await emu.slash(ALICE, "demo ping", channel="peon")
    assert not discord.Permissions(int(i.payload["app_permissions"])).view_channel
    await i.wait_done()
    emu.allow("peon")
    emu.deny("peon", "send_messages")
    await emu.settle()
    assert channel.permissions_for(guild.me).view_channel
    assert not channel.permissions_for(guild.me).send_messages
    with pytest.raises(discord.Forbidden) as exc:
        await channel.send("mute")
    assert (exc.value.code, exc.value.text) == (50013, "Missing Permissions")
    emu.allow("peon", "send_messages")
    emu.deny("peon", "embed_links")
    sent = await channel.send("plain text is fine")
    with pytest.raises(discord.Forbidden):
        await channel.send(embed=discord.Embed(title="no embeds"))
    with pytest.raises(discord.Forbidden):
        await sent.edit(embed=discord.Embed(title="no embeds"))
    assert await raw(emu, "GET", "/channels/3000") == (200, ANY, ANY)  # other channels: fine
    emu.bot_permissions = discord.Permissions.all()  # Administrator overrides overwrites
    await channel.send(embed=discord.Embed(title="admin"))
    assert [r[:3] for r in emu.rejected] == [
        (403, 50001, "POST"), (403, 50013, "POST"), (403, 50013, "POST"), (403, 50013, "PATCH")
    ]  # fmt: skip


async def test_ephemeral_message_is_edited_only_through_its_token(
    emu: DiscordEmulator, bot: DemoBot
) -> None:
    i = await emu.slash(ALICE, "demo ping")
    j = await emu.slash(ALICE, "demo ping")
    await i.wait_done()
    await j.wait_done()
    assert i.original is not None and i.original.ephemeral
    mid = i.original.id
    unknown = (404, {"message": "Unknown Message", "code": 10008}, ANY)
    other = f"/webhooks/{emu.app_id}/{j.token}/messages/{mid}"
    assert await raw(emu, "PATCH", other, {"content": "hijack"}, auth=False) == unknown
    channel = f"/channels/{i.channel_id}/messages/{mid}"
    assert await raw(emu, "PATCH", channel, {"content": "hijack"}) == unknown
    own = f"/webhooks/{emu.app_id}/{i.token}/messages/{mid}"
    assert (await raw(emu, "PATCH", own, {"content": "mine"}, auth=False))[0] == 200
    assert emu.message(mid).content == "mine"  # type: ignore[union-attr]
    assert [r[:3] for r in emu.rejected] == [(404, 10008, "PATCH")] * 2


async def test_mentions_and_allowed_mentions(emu: DiscordEmulator, bot: DemoBot) -> None:
    emu.rate_limit = None  # many posts to one channel
    content = "<@42> <@!43> <@&4001> @everyone"
    path = "/channels/3000/messages"

    async def pings(body: dict[str, Any], route: str = path) -> frozenset[str]:
        status, answer, _ = await raw(emu, "POST", route, body)
        assert status == 200, answer
        return emu.message(int(answer["id"])).pings  # type: ignore[union-attr]

    everything = {"user:42", "user:43", "role:4001", "everyone"}
    assert await pings({"content": content}) == everything
    assert await pings({"content": content, "allowed_mentions": {"parse": []}}) == set()
    users = {"content": content, "allowed_mentions": {"parse": ["users"]}}
    assert await pings(users) == {"user:42", "user:43"}
    listed = {"content": content, "allowed_mentions": {"users": ["42", "44"], "roles": ["4001"]}}
    assert await pings(listed) == {"user:42", "role:4001"}
    assert await pings({"content": "@here", "allowed_mentions": {"parse": ["everyone"]}}) == {
        "here"
    }
    # Without Mention Everyone, only mentionable roles ping, and @everyone does not.
    emu.bot_permissions &= ~discord.Permissions(mention_everyone=True).value
    emu.add_member(BOB, "bob", [])
    assert await pings({"content": content}) == {"user:42", "user:43"}
    emu.set_mentionable("admin")
    await emu.settle()
    assert await pings({"content": content}) == {"user:42", "user:43", "role:4001"}
    guild = bot.get_guild(GUILD)
    assert guild is not None and guild.get_role(4001).mentionable  # type: ignore[union-attr]
    assert not guild.me.guild_permissions.mention_everyone
    # Replies ping the replied-to author unless allowed_mentions says otherwise.
    theirs = emu.inject_message("general", "question", author_id=ALICE)
    reply = {"content": "answer", "message_reference": {"message_id": str(theirs.id)}}
    assert await pings(reply) == {"user:42"}
    assert await pings({**reply, "allowed_mentions": {"parse": []}}) == set()
    quiet = {**reply, "allowed_mentions": {"parse": [], "replied_user": True}}
    assert await pings(quiet) == {"user:42"}
    # Interaction answers parse only users by default; edits recompute.
    c = await unanswered(emu)
    status, _, _ = await raw(emu, "POST", f"/interactions/{c.id}/{c.token}/callback", {
        "type": 4, "data": {"content": content}
    }, auth=False)  # fmt: skip
    assert status == 200 and c.original is not None
    assert c.original.pings == {"user:42", "user:43"}
    await raw(emu, "PATCH", f"/webhooks/{emu.app_id}/{c.token}/messages/@original", {
        "content": "<@42>", "allowed_mentions": {"parse": []}
    }, auth=False)  # fmt: skip
    assert c.original.pings == set()
    # discord.py's allowed_mentions reach the store, and the message JSON says who was pinged.
    channel = bot.get_channel(3000)
    assert isinstance(channel, discord.TextChannel)
    none = await channel.send(content, allowed_mentions=discord.AllowedMentions.none())
    assert emu.message(none.id).pings == set() and none.mentions == []  # type: ignore[union-attr]
    some = await channel.send(content, allowed_mentions=discord.AllowedMentions(users=True))
    assert {u.id for u in some.mentions} == {42, 43} and not some.mention_everyone
    assert emu.rejected == []
