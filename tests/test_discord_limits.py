"""Messages built from data of unbounded size stay inside Discord's limits (pure logic)."""

from __future__ import annotations

from bot.client import Embed, code_block, escape
from bot.players import PlayerCount
from cogs.common import players_text


def embed_total(d: dict) -> int:
    fields = d.get("fields", [])
    return (
        len(d.get("title", "")) + len(d.get("description", ""))
        + len(d.get("footer", {}).get("text", "")) + len(d.get("author", {}).get("name", ""))
        + sum(len(f["name"]) + len(f["value"]) for f in fields)
    )  # fmt: skip


def test_every_part_and_the_total_are_capped() -> None:
    e = Embed(title="t" * 300, description="d" * 5000)
    for i in range(40):
        e.add_field(name=f"n{i}" * 200, value="v" * 2000)
    e.set_footer(text="f" * 3000)
    e.set_author(name="a" * 300)
    d = e.to_dict()
    assert len(d["title"]) == 256 and len(d["footer"]["text"]) == 2048
    assert len(d["author"]["name"]) == 256 and len(d["fields"]) <= 25
    assert all(len(f["name"]) <= 256 and len(f["value"]) <= 1024 for f in d["fields"])
    assert embed_total(d) <= 6000
    assert d["fields"][-1]["value"].endswith("more not shown")


def test_a_long_plan_description_gives_way_to_its_settings() -> None:
    """/warplan show of a plan with a long description and many settings: 6364 characters
    before; the description is shortened first."""
    e = Embed(title="Plan", description="x" * 4000)
    for i in range(12):
        e.add_field(name=f"setting{i}", value="y" * 190)
    d = e.to_dict()
    assert embed_total(d) <= 6000 and len(d["fields"]) == 12
    assert d["description"].endswith("…")


def test_small_embeds_are_untouched() -> None:
    e = Embed(title="ok", description="fine")
    e.add_field(name="a", value="b")
    assert e.to_dict()["fields"] == [{"name": "a", "value": "b", "inline": True}]
    assert e.to_dict()["description"] == "fine"


def test_players_field_fits_and_names_cannot_ping() -> None:
    names = tuple(f"player_{i:03d}_with_a_long_name" for i in range(80))
    role = "<@&123456789012345678>"  # ids are 17-20 digits
    text = players_text(PlayerCount(80, 100, (*names, role, "@everyone", "**bold**"), "log"))
    assert len(text) <= 1024 and text.startswith("80/100 (") and " more)" in text
    few = players_text(PlayerCount(2, 8, (role, "**x**"), "a2s"))
    assert role not in few and "**x**" not in few
    assert escape("@everyone") != "@everyone"


def test_log_block_never_left_open() -> None:
    lines = ["```", "x" * 5000, "@here ```"]
    block = code_block(lines, 2000)
    assert len(block) <= 2000 and block.startswith("```\n") and block.endswith("\n```")
    assert block.count("```") == 2 and "@here" not in block
