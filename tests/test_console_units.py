"""Pure logic of the console: what a person may send, how free text is quoted into a plan's
command, and what a plan's `console:` block must hold."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bot.consoles import ConsoleError, check_command, fill_message
from bot.warplans import CONSOLE_COMMAND_MAX, WarPlan


@pytest.mark.parametrize(
    ("command", "sentence"),
    [
        ("", "The console command is empty."),
        ("   ", "The console command is empty."),
        ("say hi\nstop", "contains a line break or another control character"),
        ("say hi\rstop", "contains a line break or another control character"),
        ("say \x1b[31mred", "contains a line break or another control character"),
        ("x" * (CONSOLE_COMMAND_MAX + 1), f"the most is {CONSOLE_COMMAND_MAX}."),
    ],
)
def test_bad_commands_are_refused_in_one_sentence(command: str, sentence: str) -> None:
    with pytest.raises(ConsoleError) as e:
        check_command(command)
    assert sentence in str(e.value) and str(e.value).count(". ") == 0


def test_a_good_command_is_kept_as_typed() -> None:
    assert check_command('  kick bob "too loud"  ') == 'kick bob "too loud"'


def test_free_text_cannot_break_out_of_a_quoted_argument() -> None:
    line = fill_message('say "{message}"', 'hi" ; quit ; say "\nstop')
    assert line == "say \"hi' ; quit ; say ' stop\""
    assert line.count('"') == 2 and "\n" not in line


def test_free_text_cannot_start_a_second_command_outside_quotes() -> None:
    line = fill_message("say {message}", "server closes; quit\r\nstop")
    assert line == "say server closes, quit stop"


def test_free_text_is_clipped_to_the_command_limit() -> None:
    line = fill_message("broadcast {message}", "a" * 5000)
    assert len(line) == CONSOLE_COMMAND_MAX and line.endswith("…")


def _plan(**changes: Any) -> WarPlan:
    raw: dict[str, Any] = {
        "name": "g",
        "title": "G",
        "image": "example/g:1",
        "ports": [{"name": "game", "container": 1}, {"name": "rcon", "container": 2}],
        "variables": [
            {"name": "rcon_password", "env": "RCON_PW", "secret": True, "generate": True}
        ],
    }
    raw.update(changes)
    return WarPlan.model_validate(raw)


def test_an_rcon_console_names_a_tcp_port_and_a_secret() -> None:
    plan = _plan(console={"via": "rcon", "port": "rcon", "password": "rcon_password"})
    assert plan.console_via == "rcon" and plan.rcon_port == "rcon" and not plan.stdin_open


@pytest.mark.parametrize(
    ("console", "variables", "message"),
    [
        ({"via": "rcon", "port": "rcon"}, None, "via 'rcon' needs 'password'"),
        ({"via": "rcon", "port": "nope", "password": "rcon_password"}, None, "no port named"),
        ({"via": "rcon", "port": "rcon", "password": "nope"}, None, "no variable named 'nope'"),
        (
            {"via": "rcon", "port": "rcon", "password": "pw"},
            [{"name": "pw", "env": "PW"}],
            "variable 'pw' must be secret",
        ),
        ({"via": "exec"}, None, "via 'exec' needs 'exec'"),
        ({"via": "stdin", "exec": ["rcon-cli"]}, None, "'exec' only applies to via 'exec'"),
        ({"via": "exec", "exec": ["x"], "port": "rcon"}, None, "'port' only applies to via 'rcon'"),
    ],
)
def test_bad_console_blocks_are_refused(
    console: dict[str, Any], variables: list[dict[str, Any]] | None, message: str
) -> None:
    changes: dict[str, Any] = {"console": console}
    if variables is not None:
        changes["variables"] = variables
    with pytest.raises(ValidationError, match=message):
        _plan(**changes)


def test_an_rcon_console_on_a_udp_port_is_refused() -> None:
    with pytest.raises(ValidationError, match="RCON needs a tcp port"):
        _plan(
            ports=[{"name": "rcon", "container": 2, "protocol": "udp"}],
            console={"via": "rcon", "port": "rcon", "password": "rcon_password"},
        )


def test_without_a_console_block_the_console_is_stdin_when_the_plan_uses_one() -> None:
    assert _plan(say="say {message}").console_via == "stdin"
    assert _plan(say="say {message}").stdin_open
    assert _plan().console_via is None
