"""Unit tests of config file rendering and merging (pure logic; no engine)."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import pytest

from bot.configfiles import (
    MergeError,
    file_tar,
    ini_key,
    key_problem,
    numeric_owner,
    render_file,
)
from bot.errors import WarplanError
from bot.warplans import FileSpec, WarPlan, parse_warplan, render_environment, templates_for


def spec(**data: Any) -> FileSpec:
    return FileSpec.model_validate({"path": "f", **data})


def render(fmt: str, existing: str | None, values: dict[str, Any], **extra: Any) -> str:
    s = spec(format=fmt, set=values, **extra)
    raw = existing.encode() if existing is not None else None
    return render_file(s, raw, lambda t: t.replace("{var:motd}", "Hi")).decode()


# --- text -------------------------------------------------------------------------------------


def test_text_fills_templates_and_leaves_other_braces() -> None:
    s = spec(content="motd={var:motd}\nsh=${HOME} {x}\n")
    out = render_file(s, b"old", lambda t: t.replace("{var:motd}", "Hi")).decode()
    assert out == "motd=Hi\nsh=${HOME} {x}\n"


def test_text_without_template_is_verbatim() -> None:
    s = spec(content="echo {var:motd}\n", template=False)
    assert render_file(s, None, lambda t: "X") == b"echo {var:motd}\n"


# --- properties -------------------------------------------------------------------------------


def test_properties_sets_keys_and_keeps_comments_order_and_separators() -> None:
    old = "#Minecraft server properties\n# note\nmotd = Old\nlevel-seed=\nmax-players:10\n"
    out = render("properties", old, {"motd": "{var:motd}", "max-players": 20, "new-key": "v"})
    assert out == (
        "#Minecraft server properties\n# note\nmotd = Hi\nlevel-seed=\nmax-players:20\nnew-key=v\n"
    )


def test_properties_replaces_a_continued_value_and_escapes_like_wings() -> None:
    old = "a=one \\\n   two\nb=2\n"
    out = render("properties", old, {"a": "line\nnext \\ é", "key with space": " x"})
    assert out == "a=line\\nnext \\\\ \\u00e9\nb=2\nkey\\ with\\ space=\\ x\n"


def test_properties_matches_escaped_keys() -> None:
    out = render("properties", "my\\:key=1\n", {"my:key": "2"})
    assert out == "my\\:key=2\n"


def test_properties_new_file() -> None:
    assert render("properties", None, {"server-port": "25565"}) == "server-port=25565\n"


# --- ini --------------------------------------------------------------------------------------


def test_ini_key_split_like_wings() -> None:
    assert ini_key("server.port") == ("server", "port")
    assert ini_key("a.b.c") == ("a", "b.c")
    assert ini_key("[/Script/Engine.GameSession].MaxPlayers") == (
        "/Script/Engine.GameSession",
        "MaxPlayers",
    )
    assert ini_key("top") == (None, "top")


def test_ini_keeps_comments_duplicates_and_spacing() -> None:
    old = (
        "; top comment\nglobal=1\n\n[/Script/Engine.GameSession]\n# players\nMaxPlayers=10\n"
        "+ServerActors=a\n+ServerActors=b\n"
    )
    out = render(
        "ini",
        old,
        {
            "[/Script/Engine.GameSession].MaxPlayers": 32,
            "global": "2",
            "[/Script/Engine.GameSession].Motd": "{var:motd}",
            "Other.key": "v",
        },
    )
    assert out == (
        "; top comment\nglobal=2\n\n[/Script/Engine.GameSession]\n# players\nMaxPlayers=32\n"
        "+ServerActors=a\n+ServerActors=b\nMotd=Hi\n[Other]\nkey=v\n"
    )


def test_ini_keeps_spaces_around_equals_when_the_file_has_them() -> None:
    out = render("ini", "[s]\na = 1\n", {"s.a": "2", "s.b": "3"})
    assert out == "[s]\na = 2\nb = 3\n"


def test_ini_refuses_a_line_break_and_bad_files() -> None:
    with pytest.raises(MergeError, match="line break"):
        render("ini", "[s]\n", {"s.a": "x\ny"})
    with pytest.raises(MergeError, match="not a valid INI file"):
        render("ini", "[s]\n=secret-value\n", {"s.a": "1"})


# --- json -------------------------------------------------------------------------------------


def test_json_sets_dotted_paths_keeps_other_keys_order_and_indent() -> None:
    old = (
        '{\n    "z": 1,\n    "server": {"port": 1, "name": "x"},\n'
        '    "list": [{"a": 1}, {"a": 2}]\n}\n'
    )
    out = render(
        "json",
        old,
        {"server.port": "2456", "server.motd": "{var:motd}", "list.*.a": "7", "new.deep": True},
    )
    assert json.loads(out) == {
        "z": 1,
        "server": {"port": 2456, "name": "x", "motd": "Hi"},
        "list": [{"a": 7}, {"a": 7}],
        "new": {"deep": True},
    }
    assert list(json.loads(out)) == ["z", "server", "list", "new"]
    assert '\n    "z": 1' in out and out.endswith("\n")


def test_json_keeps_text_type_of_an_existing_text_value() -> None:
    out = render("json", '{"version": "1"}', {"version": "2", "count": "3", "on": "true"})
    assert json.loads(out) == {"version": "2", "count": 3, "on": True}


def test_json_list_index() -> None:
    out = render("json", '{"a": [{"b": 1}, {"b": 2}]}', {"a[1].b": "5", "c[0]": "x"})
    assert json.loads(out) == {"a": [{"b": 1}, {"b": 5}], "c": ["x"]}


def test_json_refuses_invalid_files_without_quoting_them() -> None:
    with pytest.raises(MergeError) as e:
        render("json", '{"password": "hunter2",', {"a": "1"})
    assert "line 1" in str(e.value) and "hunter2" not in str(e.value)
    with pytest.raises(MergeError, match="no mapping"):
        render("json", '{"a": 5}', {"a.b": "1"})


def test_json_new_file() -> None:
    assert render("json", None, {"a.b": "x"}) == '{\n  "a": {\n    "b": "x"\n  }\n}\n'


# --- yaml -------------------------------------------------------------------------------------


def test_yaml_keeps_comments_and_order() -> None:
    old = "# settings\nserver:\n  port: 1  # the port\n  name: x\nworlds:\n  a: {seed: 1}\n"
    out = render("yaml", old, {"server.port": "2457", "worlds.*.seed": "9", "motd": "{var:motd}"})
    assert out == (
        # ruamel keeps a comment's column: the longer value takes one of its spaces.
        "# settings\nserver:\n  port: 2457 # the port\n  name: x\nworlds:\n  a: {seed: 9}\n"
        "motd: Hi\n"
    )


def test_yaml_refuses_invalid_files() -> None:
    with pytest.raises(MergeError, match=r"not valid YAML \(line"):
        render("yaml", "a: [1,\nb: 2\n", {"a": "1"})


def test_yaml_new_file() -> None:
    assert render("yaml", "", {"a.b": "1"}) == "a:\n  b: 1\n"


# --- xml --------------------------------------------------------------------------------------


def test_xml_sets_text_and_attributes_and_keeps_comments() -> None:
    old = (
        '<?xml version="1.0"?>\n<!-- top -->\n<Config>\n  <!-- name -->\n  <Name>x</Name>\n'
        '  <Port value="1"/>\n</Config>\n'
    )
    out = render(
        "xml",
        old,
        {"Config.Name": "{var:motd}", "Config.Port": "[value='2']", "Config.Max": "8"},
    )
    assert out == (
        '<?xml version="1.0"?>\n<!-- top -->\n<Config>\n  <!-- name -->\n  <Name>Hi</Name>\n'
        '  <Port value="2" />\n  <Max>8</Max>\n</Config>\n'
    )


def test_xml_attribute_form_comes_from_the_plan_not_the_value() -> None:
    s = spec(format="xml", set={"R.A": "{var:x}"})
    out = render_file(s, None, lambda t: "[evil='1']").decode()
    assert "<A>[evil='1']</A>" in out


def test_xml_wildcard_changes_existing_elements_only() -> None:
    out = render("xml", "<R><W><P>1</P></W><W><P>2</P></W><W/></R>", {"R.*.P": "5"})
    assert out == "<R><W><P>5</P></W><W><P>5</P></W><W /></R>\n"


def test_xml_refuses_entities_and_other_roots() -> None:
    bomb = '<!DOCTYPE r [<!ENTITY a "aaaa">]><r>&a;</r>'
    with pytest.raises(MergeError, match="entities"):
        render("xml", bomb, {"r.x": "1"})
    with pytest.raises(MergeError, match="root element <Other>"):
        render("xml", "<Other/>", {"R.x": "1"})
    with pytest.raises(MergeError, match="not valid XML"):
        render("xml", "<R>", {"R.x": "1"})


def test_xml_namespaces_keep_their_prefixes_and_keys_use_local_names() -> None:
    old = '<Project xmlns="urn:x" xmlns:xsi="urn:i">\n  <A xsi:nil="true" />\n</Project>\n'
    out = render("xml", old, {"Project.A": "2", "Project.B": "3"})
    assert out == (
        '<Project xmlns="urn:x" xmlns:xsi="urn:i">\n  <A xsi:nil="true">2</A>\n  <B>3</B>\n'
        "</Project>\n"
    )


def test_xml_new_file() -> None:
    out = render("xml", None, {"R.A.B": "1"})
    assert out == '<?xml version="1.0" encoding="utf-8"?>\n<R>\n  <A>\n    <B>1</B>\n  </A>\n</R>\n'


# --- bytes and owners --------------------------------------------------------------------------


def test_crlf_and_bom_are_kept() -> None:
    s = spec(format="properties", set={"a": "2"})
    out = render_file(s, "\ufeffa=1\r\nb=1\r\n".encode(), str)
    assert out == "\ufeffa=2\r\nb=1\r\n".encode()


def test_non_utf8_is_refused() -> None:
    with pytest.raises(MergeError, match="UTF-8"):
        render_file(spec(format="json", set={"a": "1"}), b"\xff\xfe{", str)


def test_tar_holds_one_whole_file_with_mode_and_owner() -> None:
    data = file_tar("conf/a.json", b"{}", 0o640, (1000, 1000))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        (member,) = tar.getmembers()
        assert (member.name, member.mode, member.uid, member.gid, member.size) == (
            "conf/a.json", 0o640, 1000, 1000, 2,
        )  # fmt: skip


def test_tar_makes_missing_folders_first_owned_like_the_file() -> None:
    data = file_tar("a/b/c.txt", b"x", 0o644, (7, 8), folders=("a", "a/b"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = [(m.name, m.isdir(), m.uid, m.gid) for m in tar.getmembers()]
    assert got == [("a", True, 7, 8), ("a/b", True, 7, 8), ("a/b/c.txt", False, 7, 8)]


def test_numeric_owner() -> None:
    assert numeric_owner("1000:1001") == (1000, 1001)
    assert numeric_owner("1000") == (1000, 0)
    assert numeric_owner("steam") is None
    assert numeric_owner(None) is None


def test_key_problems() -> None:
    assert key_problem("json", "a.b.*.c[2]") is None
    assert key_problem("json", "a..b")
    assert key_problem("xml", "*.a")
    assert key_problem("xml", "R.1bad")
    assert key_problem("ini", ".x")
    assert key_problem("properties", "a b") is None


# --- the model --------------------------------------------------------------------------------

BASE = {
    "name": "g",
    "title": "G",
    "image": "img:1",
    "ports": [{"name": "game", "container": 7777}],
    "volumes": [{"name": "data", "path": "/data"}, {"name": "cfg", "path": "/cfg"}],
    "env": {"MEM": "{memory}"},
    "resources": {"memory": "512m"},
    "variables": [
        {"name": "motd", "default": "hello {server}"},
        {"name": "pw", "env": "PW", "secret": True},
    ],
}


def plan(*files: dict[str, Any], **extra: Any) -> WarPlan:
    return parse_warplan({**BASE, "files": list(files), **extra}, "g.yaml")


def test_templates_fill_var_env_port_memory_and_server() -> None:
    p = plan({"path": "a.txt", "content": "{var:motd} {env:PW} {port:game} {memory} {server}"})
    t = templates_for(p, {"motd": "hi {server}", "pw": "s{x}"}, "cfg-a", {"game": 20001})
    assert t.fill(p.files[0].content or "") == "hi cfg-a s{x} 20001 512 cfg-a"
    assert render_environment(p, {"motd": "m"}, "cfg-a", {}) == {"MEM": "512"}


def test_a_users_value_never_fills_var_templates() -> None:
    p = plan({"path": "a.txt", "content": "{var:motd}"})
    t = templates_for(p, {"motd": "{var:pw}", "pw": "secret"}, "s", {})
    assert t.fill("{var:motd}") == "{var:pw}"


@pytest.mark.parametrize(
    ("files", "extra", "message"),
    [
        ([{"path": "../x", "content": ""}], {}, "relative path inside the volume"),
        ([{"path": "/etc/x", "content": ""}], {}, "relative path inside the volume"),
        ([{"path": "a", "volume": "nope", "content": ""}], {}, "no volume named 'nope'"),
        ([{"path": "a", "set": {"k": "v"}}], {}, "a text file takes 'content'"),
        ([{"path": "a", "format": "json", "content": "{}"}], {}, "takes 'set'"),
        ([{"path": "a", "content": "", "mode": 420}], {}, "octal permissions"),
        ([{"path": "a", "content": "", "mode": "0999"}], {}, "octal permissions"),
        ([{"path": "a", "content": "{var:nope}"}], {}, "{var:nope} names no variable"),
        ([{"path": "a", "content": "{env:NOPE}"}], {}, "names no environment variable"),
        ([{"path": "a", "content": "{port:x}"}], {}, "{port:x} names no port"),
        ([{"path": "a", "content": "{var:Bad}"}], {}, "is not a valid reference"),
        ([{"path": "a", "format": "json", "set": {"a..b": "1"}}], {}, "bad segment"),
        ([{"path": "a", "content": ""}, {"path": "./a", "content": ""}], {}, "duplicate"),
        ([], {}, "variables.motd: needs 'env'"),
        ([{"path": "a", "content": "", "volume": "data"}], {"volumes": []}, "no volume"),
        ([{"path": "a", "content": "{var:motd}"}], {"env": {"X": "{env:PW}"}}, "env.X"),
    ],
)
def test_bad_files_are_refused_at_load(
    files: list[dict[str, Any]], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(WarplanError) as e:
        plan(*files, **extra)
    assert message in str(e.value)


def test_a_variable_may_target_a_file_key_only() -> None:
    p = plan({"path": "s.properties", "format": "properties", "set": {"motd": "{var:motd}"}})
    assert p.variable("motd") is not None and p.variable("motd").env is None  # type: ignore[union-attr]
    assert p.files[0].volume is None and p.files[0].mode == "0644"


def test_install_env_takes_the_same_templates() -> None:
    from bot.installs import installer_env

    p = parse_warplan(
        {**BASE, "variables": [{"name": "motd", "env": "MOTD"}],
         "install": {"image": "i:1", "script": "true",
                     "env": {"A": "{env:MOTD}/{var:motd}/{memory}/{port:game}"}}},
        "g.yaml",
    )  # fmt: skip
    env = installer_env(p, {"MOTD": "hi"}, "s", {"game": 5}, {"motd": "hi"})
    assert env == {"MOTD": "hi", "A": "hi/hi/512/5"}
