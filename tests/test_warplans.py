from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bot.errors import VariableError, WarplanError
from bot.warplans import (
    WarplanLibrary,
    coerce_value,
    evidence_gaps,
    image_tag,
    load_catalog,
    load_warplan,
    needed_facts,
    parse_warplan,
    plan_warnings,
    render_environment,
    resolve_variables,
    uncounted_reason,
    warplan_json_schema,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "warplans"
MINIMAL = {"name": "g", "title": "G", "image": "busybox"}


def test_every_shipped_warplan_loads_and_validates() -> None:
    catalog = load_catalog(SHIPPED)
    assert catalog.errors == []
    assert len(catalog.plans) >= 30
    for plan in catalog.plans.values():
        # A relay-only game (Core Keeper over Steam Datagram Relay) publishes none, and says so.
        assert plan.ports or (
            plan.verified and "relay" in plan.verified.facts.get("ports", "").lower()
        ), f"{plan.name} publishes no port"
        assert plan.volumes, f"{plan.name} keeps no data"
        assert plan.ready.log or plan.ready.port, f"{plan.name} has no ready check"
        assert plan.links, f"{plan.name} does not link the image's documentation"


def test_committed_json_schema_is_current() -> None:
    committed = json.loads((ROOT / "docs" / "warplan.schema.json").read_text())
    assert committed == warplan_json_schema(), "run: peon warplan schema > docs/warplan.schema.json"


def test_test_warplan_loads() -> None:
    plan = load_warplan(Path(__file__).parent / "warplans" / "fakegame.yaml")
    assert (
        plan.console_via == "stdin"
        and plan.stdin_open
        and plan.players is not None
        and plan.save is not None
    )


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({**MINIMAL, "name": "Bad Name"}, "name", "String should match pattern"),
        (
            {**MINIMAL, "ports": [{"name": "g", "container": 70000}]},
            "ports[0].container",
            "must be between 1 and 65535 or 'host'",
        ),
        (
            {**MINIMAL, "ports": [{"name": "g", "container": 1, "protocol": "sctp"}]},
            "ports[0].protocol",
            "'tcp' or 'udp'",
        ),
        ({**MINIMAL, "ports": [{"name": "g", "container": 1, "host": "any"}]}, "ports[0].host", ""),
        (
            {**MINIMAL, "variables": [{"name": "x", "env": "X", "type": "choice"}]},
            "variables[0]",
            "needs a non-empty 'choices'",
        ),
        (
            {
                **MINIMAL,
                "variables": [{"name": "x", "env": "X", "type": "int", "default": 5, "min": 10}],
            },
            "variables[0]",
            "default does not fit",
        ),
        (
            {**MINIMAL, "variables": [{"name": "x", "env": "X", "pattern": "("}]},
            "variables[0].pattern",
            "not a valid regular expression",
        ),
        ({**MINIMAL, "volumes": [{"name": "d", "path": "data"}]}, "volumes[0].path", "absolute"),
        ({**MINIMAL, "ready": {"port": "nope"}}, "(top level)", "ready.port: no port named 'nope'"),
        ({**MINIMAL, "stop": {"signal": "SIGFOO"}}, "stop.signal", "Input should be"),
        ({**MINIMAL, "players": {"protocol": "a2s"}}, "players", "needs 'port'"),
        ({**MINIMAL, "save": {"mode": "exec"}}, "save", "needs 'command'"),
        ({**MINIMAL, "resources": {"memory": "lots"}}, "resources.memory", "not a size"),
        ({**MINIMAL, "surprise": 1}, "surprise", "Extra inputs are not permitted"),
        (
            {**MINIMAL, "env": {"A": "x"}, "variables": [{"name": "a", "env": "A"}]},
            "(top level)",
            "env and variables both set",
        ),
    ],
)
def test_invalid_plan_names_file_field_and_reason(data: dict, field: str, reason: str) -> None:
    with pytest.raises(WarplanError) as info:
        parse_warplan(data, "warplans/g.yaml")
    err = info.value
    assert err.path == "warplans/g.yaml"
    assert err.field == field
    assert reason in err.reason
    assert str(err).startswith(f"warplans/g.yaml: {field}: ")


def test_one_bad_plan_does_not_stop_the_others(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text("name: good\ntitle: Good\nimage: busybox\n")
    (tmp_path / "broken.yaml").write_text("name: broken\ntitle: [unclosed\n")
    (tmp_path / "wrongname.yaml").write_text("name: other\ntitle: X\nimage: busybox\n")
    catalog = load_catalog(tmp_path)
    assert catalog.names() == ["good"]
    errors = sorted(str(e) for e in catalog.errors)
    assert errors[0].startswith(f"{tmp_path}/broken.yaml: line ")
    assert errors[1] == f"{tmp_path}/wrongname.yaml: name: must match the file name 'wrongname'"


def test_reload_keeps_last_good_version(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("name: g\ntitle: First\nimage: busybox\n")
    library = WarplanLibrary(tmp_path)
    path.write_text("name: g\ntitle: Second\nimage: busybox\nports: [{name: x}]\n")
    fresh = library.reload()
    assert [e.field for e in fresh.errors] == ["ports[0].container"]
    assert library.get("g").title == "First"
    path.write_text("name: g\ntitle: Third\nimage: busybox\n")
    library.reload()
    assert library.get("g").title == "Third"


def plan_with(*variables: dict) -> object:
    return parse_warplan({**MINIMAL, "variables": list(variables)}, "t.yaml")


def test_resolve_variables_defaults_templates_and_unknowns() -> None:
    plan = parse_warplan(
        {
            **MINIMAL,
            "ports": [{"name": "game", "container": 2456}],
            "env": {"PORT": "{port:game}", "FIXED": True},
            "variables": [
                {"name": "world", "env": "WORLD", "default": "{server}-world"},
                {
                    "name": "players",
                    "env": "MAX",
                    "type": "int",
                    "default": 10,
                    "min": 1,
                    "max": 64,
                },
                {"name": "pvp", "env": "PVP", "type": "bool", "default": False},
                {"name": "pw", "env": "PW", "secret": True, "required": True},
            ],
        },
        "t.yaml",
    )
    values = resolve_variables(plan, {"pw": "s3cret{server}", "pvp": "yes"}, "alpha")
    assert values == {
        "world": "alpha-world",
        "players": "10",
        "pvp": "true",
        "pw": "s3cret{server}",
    }
    env = render_environment(plan, values, "alpha", {"game": 30001})
    # Templates are filled in plan text, never inside a user's secret.
    assert env == {
        "PORT": "30001",
        "FIXED": "true",
        "WORLD": "alpha-world",
        "MAX": "10",
        "PVP": "true",
        "PW": "s3cret{server}",
    }
    with pytest.raises(VariableError, match="'pw': is required"):
        resolve_variables(plan, {}, "alpha")
    with pytest.raises(VariableError, match="no such variable. Known: players, pvp, pw, world"):
        resolve_variables(plan, {"pw": "x", "seed": "1"}, "alpha")


@pytest.mark.parametrize(
    ("spec", "raw", "result"),
    [
        ({"type": "int", "min": 1, "max": 5}, " 3 ", "3"),
        ({"type": "bool"}, "ON", "true"),
        ({"type": "bool"}, "0", "false"),
        ({"type": "choice", "choices": ["a", "b"]}, "b", "b"),
        ({"pattern": "^[a-z]+$"}, "abc", "abc"),
    ],
)
def test_coerce_accepts(spec: dict, raw: str, result: str) -> None:
    var = plan_with({"name": "v", "env": "V", **spec}).variables[0]  # type: ignore[attr-defined]
    assert coerce_value(var, raw) == result


@pytest.mark.parametrize(
    ("spec", "raw", "message"),
    [
        ({"type": "int", "min": 1}, "0", "at least 1"),
        ({"type": "int", "max": 5}, "6", "at most 5"),
        ({"type": "int"}, "1.5", "whole number"),
        ({"type": "bool"}, "maybe", "true or false"),
        ({"type": "choice", "choices": ["a"]}, "A", "one of a"),
        ({"pattern": "^[a-z]+$"}, "ABC", "does not match"),
        ({}, "line\nbreak", "control characters"),
        ({"secret": True, "pattern": "^[a-z]+$"}, "TopSecret", "does not match"),
    ],
)
def test_coerce_refuses_with_reason_and_never_echoes_value(
    spec: dict, raw: str, message: str
) -> None:
    var = plan_with({"name": "v", "env": "V", **spec}).variables[0]  # type: ignore[attr-defined]
    with pytest.raises(VariableError, match=message) as info:
        coerce_value(var, raw)
    assert raw.strip() not in str(info.value) or raw.strip() in ("0", "6")


# --- review: warnings, evidence, generated secrets, uncounted players ---------------------

EVIDENCE = {"version": "1.0", "date": "2026-12-02", "links": ["https://example.org/src"]}
SAFE = {
    **MINIMAL,
    "image": "vendor/game:1.2.3",
    "volumes": [{"name": "data", "path": "/data"}],
    "save": {"mode": "exec", "command": ["save"], "done": "Saved"},
    "verified": EVIDENCE,
}


def warnings_of(**changes: object) -> list[str]:
    return plan_warnings(parse_warplan({**SAFE, **changes}, "warplans/g.yaml"))


def test_a_reviewed_plan_has_no_warnings() -> None:
    assert warnings_of() == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"image": "vendor/game"}, "image: 'vendor/game' follows 'latest'"),
        ({"image": "vendor/game:latest"}, "follows 'latest'"),
        (
            {
                "variables": [
                    {
                        "name": "rcon_password",
                        "env": "RCON_PASSWORD",
                        "secret": True,
                        "default": "changeme",
                    }
                ]
            },
            "variables.rcon_password: a remote-admin password has a default",
        ),
        (
            {"variables": [{"name": "rcon_password", "env": "CS2_RCONPW", "secret": True}]},
            "may be left empty, so the image's own default may apply",
        ),
        ({"env": {"ADMIN_PASSWORD": "hunter2"}}, "env.ADMIN_PASSWORD: a remote-admin password"),
        (
            {"ports": [{"name": "rcon", "container": 27015}]},
            "ports.rcon: a remote-admin port is published",
        ),
        (
            {"ports": [{"name": "tcp", "container": 27015, "description": "RCON (TCP)"}]},
            "ports.tcp: a remote-admin port is published",
        ),
        ({"save": {"mode": "console", "command": "save"}}, "save: no 'done' regex"),
        ({"save": {"mode": "exec", "command": ["x"]}}, "save: no 'done' regex"),
        ({"save": {"mode": "none"}}, "backups of a running server copy files"),
        ({"save": None}, "backups of a running server copy files"),
        (
            {"variables": [{"name": "x", "env": "X"}]},
            "env X: the plan's evidence does not show the image reading it",
        ),
        ({"env": {"DEAD": "1"}}, "env DEAD: the plan's evidence does not show"),
        (
            {"verified": {**EVIDENCE, "image_volumes": ["/data/", "/cache"]}},
            "the image declares VOLUME /cache and the plan does not name it",
        ),
    ],
)
def test_risky_patterns_are_warned(changes: dict, expected: str) -> None:
    data = {**SAFE, **changes}
    data = {k: v for k, v in data.items() if v is not None}  # None: the field left out
    found = plan_warnings(parse_warplan(data, "warplans/g.yaml"))
    assert any(expected in w for w in found), found


def test_what_is_not_risky_is_not_warned() -> None:
    # A required or generated admin secret; evidence for each env; an image without version
    # tags that says so; a backup with nothing to back up and no save.
    ok = warnings_of(
        image="vendor/game:latest",
        verified={**EVIDENCE, "version_tags": False, "env": {"A": "x", "B": "y"}},
        variables=[
            {"name": "admin_password", "env": "A", "secret": True, "required": True},
            {"name": "rcon_password", "env": "B", "secret": True, "generate": True},
        ],
    )
    assert ok == []
    # The image's `VOLUME /data/` is the plan's /data (the engine cleans the path).
    assert warnings_of(verified={**EVIDENCE, "image_volumes": ["/data/"]}) == []
    no_backup = {**SAFE, "volumes": [{"name": "d", "path": "/d", "backup": False}]}
    del no_backup["save"]
    assert plan_warnings(parse_warplan(no_backup, "warplans/g.yaml")) == []


def test_generated_secret_is_random_per_server_and_kept_when_given() -> None:
    plan = parse_warplan(
        {
            **MINIMAL,
            "variables": [{"name": "rcon", "env": "RCON", "secret": True, "generate": True}],
        },
        "warplans/g.yaml",
    )
    a = resolve_variables(plan, {}, "a")["rcon"]
    b = resolve_variables(plan, {"rcon": ""}, "b")["rcon"]
    assert len(a) >= 20 and a != b
    assert resolve_variables(plan, {"rcon": "mine"}, "c")["rcon"] == "mine"


@pytest.mark.parametrize(
    "variable",
    [
        {"name": "x", "env": "X", "generate": True},
        {"name": "x", "env": "X", "secret": True, "generate": True, "required": True},
        {"name": "x", "env": "X", "secret": True, "generate": True, "default": "changeme"},
    ],
)
def test_generate_only_for_optional_secret_strings(variable: dict) -> None:
    with pytest.raises(WarplanError):
        parse_warplan({**MINIMAL, "variables": [variable]}, "warplans/g.yaml")


def test_save_after_and_command_shapes() -> None:
    for bad, reason in [
        ({"mode": "pause", "after": "save-on"}, "'after' only applies"),
        ({"mode": "exec", "command": "save-all"}, "needs 'command' as a list"),
        ({"mode": "exec", "command": ["a"], "after": "save-on"}, "needs 'after' as a list"),
        ({"mode": "console", "command": ["save"]}, "needs 'command' as one line"),
    ]:
        with pytest.raises(WarplanError, match=reason):
            parse_warplan({**MINIMAL, "save": bad}, "warplans/g.yaml")


def test_uncounted_players_by_setting() -> None:
    plan = parse_warplan(
        {
            **MINIMAL,
            "ports": [{"name": "q", "container": 1, "protocol": "udp"}],
            "variables": [{"name": "crossplay", "env": "CROSSPLAY", "type": "bool"}],
            "players": {
                "protocol": "a2s",
                "port": "q",
                "uncounted_when": [
                    {"env": "CROSSPLAY", "pattern": "^true$", "reason": "A2S says 0."}
                ],
            },
        },
        "warplans/g.yaml",
    )
    assert uncounted_reason(plan, {"CROSSPLAY": "true"}) == "A2S says 0."
    assert uncounted_reason(plan, {"CROSSPLAY": "false"}) is None
    with pytest.raises(WarplanError, match="never sets NOPE"):
        parse_warplan(
            {**MINIMAL, "players": {"protocol": "log", "join": "j", "leave": "l",
                                    "uncounted_when": [{"env": "NOPE", "pattern": "x",
                                                        "reason": "r"}]}},
            "warplans/g.yaml",
        )  # fmt: skip


def test_image_tag() -> None:
    assert image_tag("itzg/minecraft-server") is None
    assert image_tag("localhost:5000/game") is None
    assert image_tag("localhost:5000/game:2.1") == "2.1"
    assert image_tag("game@sha256:abc") == "@sha256:abc"


# Evidence names where it was read (a URL, a file of the image, its README, an issue), or says
# that it could not be checked.
SOURCE = (
    r"https?://|[\w-]+\.(sh|conf|cfg|cs|rb|json|ya?ml|txt|ini|log|md)\b|Dockerfile|Containerfile"
    r"|README|/|issue|unverified"
)


def test_every_shipped_plan_carries_evidence_for_each_fact_it_relies_on() -> None:
    catalog = load_catalog(SHIPPED)
    assert len(catalog.plans) >= 30
    for plan in catalog.plans.values():
        assert evidence_gaps(plan) == [], plan.name
        assert plan_warnings(plan) == [], plan.name
        assert plan.verified is not None
        for fact in needed_facts(plan):
            text = plan.verified.facts[fact]
            # Evidence names its source, or says it could not be checked.
            assert re.search(SOURCE, text, re.I), (
                plan.name, fact, text)  # fmt: skip


def test_a_regex_re2_cannot_run_is_refused_at_load() -> None:
    with pytest.raises(WarplanError, match="linear time") as info:
        parse_warplan({**MINIMAL, "ready": {"log": "Server is up(?! to date)"}}, "warplans/g.yaml")
    assert info.value.field == "ready.log"


def test_the_factorio_branches_differ_only_in_image() -> None:
    stable = load_warplan(SHIPPED / "factorio.yaml")
    experimental = load_warplan(SHIPPED / "factorio-experimental.yaml")
    assert stable.image.endswith(":stable") and experimental.image.endswith(":latest")
    parts = ("ports", "env", "variables", "volumes", "ready", "stop", "players", "save", "say")
    for part in (*parts, "console"):
        assert getattr(stable, part) == getattr(experimental, part), part
