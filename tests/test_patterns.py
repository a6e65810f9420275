"""War plan regexes run with RE2 (pure logic)."""

from __future__ import annotations

import pytest

from bot.patterns import compile_pattern
from bot.players import LogPlayerTracker


def test_named_groups_and_search_behave_as_with_re() -> None:
    p = compile_pattern(r"(?:Broadcast: )?(?P<name>[^:]+?) has joined\.")
    m = p.search("[12:00] Broadcast: Bob the Builder has joined.")
    assert m is not None and m.group("name") == "Bob the Builder"  # as `re` finds it
    assert "name" in p.groupindex
    tracker = LogPlayerTracker(r"Player joined: (?P<name>\S+)", r"Player left: (?P<name>\S+)")
    count = tracker.replay(["Player joined: ada", "Player joined: bob", "Player left: ada"])
    assert count.names == ("bob",)


@pytest.mark.parametrize("pattern", [r"Server is up(?! to date)", r"(?<=x)y", r"(a)\1"])
def test_patterns_that_need_backtracking_are_refused_in_one_sentence(pattern: str) -> None:
    with pytest.raises(ValueError, match="not a regular expression PEON can run in linear time"):
        compile_pattern(pattern)


def test_a_hostile_line_is_matched_without_backtracking() -> None:
    """The Terraria join pattern over a long colon-free chat line: quadratic with `re`; RE2
    answers (no timing asserted here, see bench/log_scan.py for the figures)."""
    p = compile_pattern(r"(?:Broadcast: )?(?P<name>[^:]+?) has joined\.")
    assert p.search("gg " * 20000) is None
