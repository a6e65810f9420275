"""Import of the original PEON's recipes (bot/importers): the conversion on small recipes of
our own, one test per defect measured on the-peon-project/peon-warplans, and a recipe whose
actions/ script starts on the real engine."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from bot.errors import WarplanError
from bot.importers import detect, import_file
from bot.importers.peon import convert_peon
from bot.warplans import WarPlan, load_warplan, render_environment, resolve_variables
from tests.conftest import cleanup_instance, config_file, make_settings, peon
from tests.engine import busybox_binary

PEON_VALHEIM: dict[str, Any] = {
    "metadata": {
        "game_uid": "valheim",
        "warcamp": "default",
        "version": "1.0.0",
        "description": "A PEON valheim game server.",
        "mode": "steamcmd",
        "hostname": "peon.warcamp.valheim",
        "image": "umlatt/steamcmd",
    },
    "ports": [
        [{"PORT": ["2456", "udp"]}],
        [{"PORT": ["2457", "udp"]}],
        [{"PORT": ["2458", "udp"]}],
    ],
    "environment": {
        "STEAM_ID": "896660",
        "SERVER_NAME": None,
        "WORLD_NAME": None,
        "PASSWORD": None,
    },
    "volumes": {
        "~!/actions": "/actions",
        "~!/data": "/home/steam/steamcmd/data",
        "~!/config": "/home/steam/config",
        "~!/user": "/home/steam/.config/unity3d/IronGate/Valheim",
    },
}
START_SCRIPT = '#!/bin/bash\necho "###### Server ${SERVER_NAME}"\n./game -port "$PORT"\n'


def recipe(tmp_path: Path, plan: dict[str, Any], files: dict[str, str] | None = None) -> Path:
    """A recipe folder as peon-warplans lays them out: <game_uid>/plan.json, actions/..."""
    meta = plan.get("metadata")
    folder = tmp_path / str(meta.get("game_uid", "game") if isinstance(meta, dict) else "game")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text(json.dumps(plan))
    for rel, text in (files or {"actions/server_start": START_SCRIPT}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def scaffold(**changes: Any) -> dict[str, Any]:
    """A `0.1.0-untested` scaffold: ~!/data and ~!/user on one path, tcp/udp, STEAM_ID null."""
    plan: dict[str, Any] = {
        "metadata": {
            "game_uid": "scaff",
            "version": "0.1.0-untested",
            "image": "umlatt/steamcmd",
            "description": "Untested PEON recipe scaffold.",
        },
        "ports": [[{"PORT": ["27015", "tcp/udp"]}]],
        "environment": {"STEAM_ID": None, "SERVER_NAME": None, "STARTUP_COMMAND": "./start.sh"},
        "volumes": {
            "~!/actions": "/actions",
            "~!/data": "/home/steam/steamcmd/data",
            "~!/config": "/home/steam/config",
            "~!/user": "/home/steam/steamcmd/data",
        },
    }
    plan.update(changes)
    return plan


# --- the defects measured on the collection ------------------------------------------------


def test_duplicate_path_scaffold_imports_as_one_backed_up_volume_marked_untested(
    tmp_path: Path,
) -> None:
    result = import_file(recipe(tmp_path, scaffold()))
    assert result.untested
    assert [(v.name, v.path, v.backup) for v in result.plan.volumes] == [
        ("actions", "/actions", False),
        ("data", "/home/steam/steamcmd/data", True),  # world data shares the install's path
        ("config", "/home/steam/config", True),
    ]
    assert any("~!/data and ~!/user share /home/steam/steamcmd/data" in u for u in result.unmapped)
    assert result.yaml_text.startswith("# Imported from the PEON recipe scaff/")
    assert "# UNTESTED: " in result.yaml_text


def test_tested_recipe_is_not_marked_untested(tmp_path: Path) -> None:
    assert not import_file(recipe(tmp_path, PEON_VALHEIM)).untested


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"ports": [[{"GAME": ["x", "udp"]}]]}, "ports[0][0].GAME", "port 'x' is not a number"),
        ({"ports": [[{"GAME": ["70000", "udp"]}]]}, "ports[0][0].GAME", "not between 1 and"),
        ({"ports": [[{"GAME": ["7777"]}]]}, "ports[0][0].GAME", "must be [port, protocol]"),
        ({"ports": [["7777"]]}, "ports[0][0]", "must be {NAME: [port, protocol]}"),
        ({"ports": {"GAME": 1}}, "ports", "must be a list of port groups"),
        ({"environment": ["A"]}, "environment", "must be an object"),
        ({"environment": {"BAD-KEY": "1"}}, "environment.BAD-KEY", "not a valid environment"),
        ({"volumes": {"~!/data": "relative"}}, "volumes.~!/data", "absolute container path"),
        ({"volumes": {"~!/data": "/"}}, "volumes.~!/data", "cannot be mounted over /"),
        ({"metadata": {"game_uid": "g"}}, "metadata.image", "is required"),
        ({"metadata": "x"}, "metadata", "must be an object"),
    ],
)
def test_every_refusal_names_its_field(
    tmp_path: Path, change: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(WarplanError) as info:
        import_file(recipe(tmp_path, {**scaffold(), **change}))
    assert info.value.field == field
    assert reason in info.value.reason


def test_unreadable_plan_json_names_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "plan.json").write_text('{"metadata": {"game_uid": "x"},\n  oops}')
    with pytest.raises(WarplanError) as info:
        convert_peon(folder)
    assert info.value.field == "line 2"


def test_a_converted_plan_that_fails_validation_names_the_plan_field(tmp_path: Path) -> None:
    # A readiness the original has no notion of cannot break; what can is a value the war
    # plan checks more strictly, e.g. an env value with a template naming no port.
    plan = scaffold(environment={"STEAM_ID": "1", "MOTD": "{port:nowhere}"})
    with pytest.raises(WarplanError) as info:
        import_file(recipe(tmp_path, plan))
    assert info.value.field not in ("", "(top level)")


@pytest.mark.parametrize("proto", ["tcp/udp", "all", "TCP/UDP", "both"])
def test_tcp_udp_and_all_publish_both_protocols_on_one_number(tmp_path: Path, proto: str) -> None:
    plan = scaffold(ports=[[{"PORT": ["27015", proto]}, {"TV_PORT": ["27020", "udp"]}]])
    ports = import_file(recipe(tmp_path, plan)).plan.ports
    assert [(p.name, p.container, p.protocol, p.host) for p in ports] == [
        ("port", 27015, "tcp", 27015),
        ("port-udp", 27015, "udp", 27015),
        ("tv-port", 27020, "udp", 27020),
    ]


def test_only_the_first_port_group_is_used(tmp_path: Path) -> None:
    result = import_file(recipe(tmp_path, PEON_VALHEIM))
    assert [(p.container, p.protocol) for p in result.plan.ports] == [(2456, "udp")]
    assert any(u.startswith("ports[1:]: 2 alternative port group(s)") for u in result.unmapped)


def test_ports_are_exported_as_name_equals_number(tmp_path: Path) -> None:
    plan = scaffold(
        ports=[
            [{"PORT": ["7777", "udp"]}, {"QUERY_PORT": ["27015", "udp"]}, {"PORT": ["8888", "tcp"]}]
        ],
        environment={"STEAM_ID": "1", "QUERY_PORT": "27016"},
    )
    result = import_file(recipe(tmp_path, plan))
    # A repeated name's last number wins (compose's environment list); the recipe's own
    # environment key wins over a port's export, as it comes later in the original's list.
    assert result.plan.env == {"PORT": "8888", "STEAM_ID": "1"}
    assert [v.env for v in result.plan.variables] == ["QUERY_PORT"]
    assert [p.name for p in result.plan.ports] == ["port", "query-port", "port-2"]


def test_steam_id_is_fixed_env_and_a_null_one_is_asked_for_once(tmp_path: Path) -> None:
    fixed = import_file(recipe(tmp_path / "a", PEON_VALHEIM)).plan
    assert fixed.env["STEAM_ID"] == "896660"
    assert "STEAM_ID" not in {v.env for v in fixed.variables}
    result = import_file(recipe(tmp_path / "b", scaffold()))
    steam = next(v for v in result.plan.variables if v.env == "STEAM_ID")
    assert steam.required and steam.create_only
    assert any(u.startswith("environment.STEAM_ID: left empty") for u in result.unmapped)


def test_passwords_and_tokens_are_secret(tmp_path: Path) -> None:
    env = dict.fromkeys(("CS2_PW", "TV_RELAY_PW", "CS2_RCONPW", "POWER", "STEAM_ID"), "1")
    env.update(dict.fromkeys(("PASSWORD", "ADMIN_PASSWORD", "STEAM_GSLT", "SERVER_NAME")))
    plan = import_file(recipe(tmp_path, scaffold(environment=env))).plan
    secret = {v.env for v in plan.variables if v.secret}
    assert secret == {"CS2_PW", "TV_RELAY_PW", "CS2_RCONPW", "PASSWORD", "ADMIN_PASSWORD",
                      "STEAM_GSLT"}  # fmt: skip


def test_game_install_is_not_backed_up_world_and_config_are(tmp_path: Path) -> None:
    plan = import_file(recipe(tmp_path, PEON_VALHEIM)).plan
    assert {v.name: v.backup for v in plan.volumes} == {
        "actions": False, "data": False, "config": True, "user": True,
    }  # fmt: skip


def test_runs_as_1000_1000_like_the_original(tmp_path: Path) -> None:
    result = import_file(recipe(tmp_path, PEON_VALHEIM))
    assert result.plan.user == "1000:1000"
    assert "user: 1000:1000" in result.yaml_text


@pytest.mark.parametrize("user", ["1000:1000", "1000", "steam", "steam:games", "0:0"])
def test_user_field_accepts_ids_and_names(user: str) -> None:
    assert WarPlan(name="g", title="G", image="busybox", user=user).user == user


@pytest.mark.parametrize("user", ["", "10 00", "a:b:c", "-1", "1000:", "99999999999"])
def test_user_field_refuses_what_docker_cannot_take(user: str) -> None:
    with pytest.raises(ValueError, match="user"):
        WarPlan(name="g", title="G", image="busybox", user=user)


def test_actions_scripts_come_along_as_files_in_the_actions_volume(tmp_path: Path) -> None:
    files = {
        "actions/server_start": START_SCRIPT,
        "actions/init_custom": "#!/bin/bash\napt-get update\n",
        "actions/conf/settings.json": '{"name": "${SERVER_NAME}"}\n',
        "data/server.cfg": 'hostname "{{SERVER_HOSTNAME}}"\n',
        "README.md": "# Valheim\n",
    }
    folder = recipe(tmp_path, PEON_VALHEIM, files)
    (folder / "actions" / "logo.bin").write_bytes(b"\x89PNG\x00\xff")
    result = import_file(folder)
    got = {(f.volume, f.path): f for f in result.plan.files}
    assert sorted(got) == [
        ("actions", "conf/settings.json"),
        ("actions", "init_custom"),
        ("actions", "server_start"),
        ("data", "server.cfg"),
    ]
    start = got[("actions", "server_start")]
    assert (start.content, start.template, start.mode, start.when, start.format) == (
        START_SCRIPT, False, "0755", "always", "text",
    )  # fmt: skip
    # Other folders seed files the game then owns: written only when missing.
    cfg = got[("data", "server.cfg")]
    assert (cfg.when, cfg.mode, cfg.template) == ("missing", "0644", False)
    assert any(u.startswith("actions/logo.bin: not a text file") for u in result.unmapped)
    assert result.plan.title == "Valheim"  # from the recipe's README
    titled = {**PEON_VALHEIM, "metadata": {**PEON_VALHEIM["metadata"], "title": "Valheim (PEON)"}}
    assert import_file(recipe(tmp_path / "t", titled)).plan.title == "Valheim (PEON)"


def test_missing_start_script_is_reported(tmp_path: Path) -> None:
    result = import_file(recipe(tmp_path, PEON_VALHEIM, {"actions/server_start.sh": "x\n"}))
    assert "actions/server_start: missing; the image starts the game with it" in result.unmapped


def test_uploaded_files_of_the_original_are_listed_not_dropped(tmp_path: Path) -> None:
    plan = {**PEON_VALHEIM, "files": {"~!/server.cfg": "/home/steam/config/server.cfg",
                                      "~!/extra.cfg": "/home/steam/config/extra.cfg"}}  # fmt: skip
    folder = recipe(tmp_path, plan, {"actions/server_start": START_SCRIPT, "extra.cfg": "a=1\n"})
    result = import_file(folder)
    assert any(u.startswith("files.~!/server.cfg: mounted at") for u in result.unmapped)
    extra = next(f for f in result.plan.files if f.path == "extra.cfg")
    assert extra.volume == "config"  # the deepest volume holding its target


def test_a_file_outside_the_recipe_folder_is_never_read(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("the importing machine's own\n")
    plan = {**PEON_VALHEIM, "files": {"~!/../secret.txt": "/home/steam/config/secret.txt"}}
    result = import_file(recipe(tmp_path, plan, {"actions/server_start": START_SCRIPT}))
    assert "files.~!/../secret.txt: not inside the recipe's folder; not read" in result.unmapped
    assert all("importing machine" not in (f.content or "") for f in result.plan.files)


def test_environment_equals_what_the_original_exports(tmp_path: Path) -> None:
    plan = import_file(recipe(tmp_path, PEON_VALHEIM)).plan
    values = resolve_variables(plan, {"server_name": "s", "world_name": "w", "password": "p"}, "w1")
    env = render_environment(plan, values, "w1", {p.name: int(p.host) for p in plan.ports})
    # The original's docker-compose.yml for the same settings (peon-orc update_build_file).
    assert env == {"PORT": "2456", "STEAM_ID": "896660", "SERVER_NAME": "s",
                   "WORLD_NAME": "w", "PASSWORD": "p"}  # fmt: skip


def test_yaml_written_loads_back_as_the_same_plan(tmp_path: Path) -> None:
    result = import_file(recipe(tmp_path, PEON_VALHEIM))
    out = tmp_path / "valheim.yaml"
    out.write_text(result.yaml_text)
    assert load_warplan(out) == result.plan
    assert "content: |" in result.yaml_text  # scripts stay readable


def test_name_and_image_can_be_chosen(tmp_path: Path) -> None:
    folder = recipe(tmp_path, PEON_VALHEIM)
    plan = import_file(folder / "plan.json", name="my-valheim", image="local/game:1").plan
    assert (plan.name, plan.image) == ("my-valheim", "local/game:1")
    with pytest.raises(WarplanError) as info:
        import_file(folder, name="Bad Name")
    assert info.value.field == "--name"


def test_detect_tells_recipes_from_eggs_and_others(tmp_path: Path) -> None:
    folder = recipe(tmp_path, PEON_VALHEIM)
    assert detect(folder) == "peon" and detect(folder / "plan.json") == "peon"
    egg = tmp_path / "egg-game.json"
    egg.write_text(json.dumps({"meta": {"version": "PTDL_v2"}, "startup": "./x"}))
    assert detect(egg) == "egg"
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    assert detect(other) is None and detect(tmp_path) is None
    with pytest.raises(WarplanError, match="neither a PEON recipe"):
        import_file(other)


# --- the real engine: an imported recipe starts with its actions/ script --------------------

ENTRYPOINT = """\
# What the PEON steamcmd images do (peon-warplans' runtime, the-peon-project/peon-wartable
# containers/steamcmd/init/entrypoint): refuse without /actions, run /actions/server_start.
export INSTALL_DIR=/home/steam/steamcmd/data
[ -d /actions ] || { echo "[x] Missing '/actions' directory."; exit 1; }
[ -e /actions/server_start ] || { echo "[x] ERROR /actions/server_start not found"; exit 1; }
exec /actions/server_start
"""
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /actions /home/steam/steamcmd/data /home/steam/config /init \\
 && chown -R 1000:1000 /actions /home/steam
COPY entrypoint /init/entrypoint
ENTRYPOINT ["/bin/sh", "/init/entrypoint"]
"""
# ${...} everywhere: written verbatim (template: false) or it would not run.
FIXTURE_START = """\
#!/bin/sh
echo "###### Server ${SERVER_NAME} [STARTING] as $(id -u):$(id -g) app ${STEAM_ID}"
cd "$INSTALL_DIR" || exit 1
echo "${PORT}" > /home/steam/config/port
trap 'echo "saving ${SERVER_NAME}"; exit 0' TERM INT
echo "impgame ready on port ${PORT}"
while :; do sleep 1 & wait $!; done
"""


def free_port() -> int:
    """A port free for both tcp and udp on loopback, outside the tests' pools."""
    for _ in range(200):
        port = 27000 + uuid.uuid4().int % 3000
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@pytest.fixture
def steamcmd_like(engine: None) -> Any:
    """A local image that starts a game the way the PEON steamcmd images do."""
    client = docker.from_env()
    tag = f"peon-test/imp-steamcmd:{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy(busybox_binary(), Path(ctx) / "busybox")
        (Path(ctx) / "entrypoint").write_text(ENTRYPOINT)
        (Path(ctx) / "Dockerfile").write_text(DOCKERFILE)
        client.images.build(path=ctx, tag=tag, rm=True, forcerm=True)
    yield tag
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(tag)
    client.close()


@pytest.mark.docker
def test_imported_recipe_starts_with_its_actions_script(tmp_path: Path, steamcmd_like: str) -> None:
    port = free_port()
    plan = {
        "metadata": {
            "game_uid": "impgame",
            "version": "1.0.0",
            "image": "umlatt/steamcmd",
            "description": "A fixture recipe.",
        },
        "ports": [[{"PORT": [str(port), "tcp/udp"]}], [{"PORT": ["1", "udp"]}]],
        "environment": {"STEAM_ID": "4242", "SERVER_NAME": None, "ADMIN_PW": ""},
        "volumes": {
            "~!/actions": "/actions",
            "~!/data": "/home/steam/steamcmd/data",
            "~!/config": "/home/steam/config",
        },
    }
    folder = recipe(tmp_path / "recipes", plan, {"actions/server_start": FIXTURE_START})
    plans = tmp_path / "warplans"
    plans.mkdir()
    settings = make_settings(tmp_path, warplans_dir=plans)
    config = config_file(settings, tmp_path / "peon.yaml")
    server = f"imp-{uuid.uuid4().hex[:6]}"
    client = docker.from_env()
    try:
        r = peon(config, "warplan", "import", str(folder), "--image", steamcmd_like,
                 "--name", "impgame")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"wrote {plans / 'impgame.yaml'} (war plan 'impgame')\n"
        assert "not mapped: ports[1:]: 1 alternative port group(s) not used" in r.stderr
        assert peon(config, "warplan", "validate", str(plans / "impgame.yaml")).returncode == 0
        r = peon(config, "server", "create", "impgame", server, "--set", "server_name=Zug")
        assert r.returncode == 0, r.stderr
        assert f"(ports: port {port}/tcp, port-udp {port}/udp)" in r.stdout
        r = peon(config, "server", "start", server)
        assert r.returncode == 0, r.stdout + r.stderr
        logs = ""
        deadline = time.monotonic() + 60
        while "impgame ready on port" not in logs and time.monotonic() < deadline:
            logs = peon(config, "server", "logs", server, "-n", "20").stdout
            time.sleep(0.5)
        assert f"impgame ready on port {port}" in logs
        assert "###### Server Zug [STARTING] as 1000:1000 app 4242" in logs
        [container] = client.containers.list(
            filters={"label": f"io.peon.instance={settings.instance_id}"}
        )
        attrs = container.attrs
        assert attrs["Config"]["User"] == "1000:1000"
        bound = attrs["HostConfig"]["PortBindings"]
        assert (
            bound[f"{port}/tcp"][0]["HostPort"] == bound[f"{port}/udp"][0]["HostPort"] == str(port)
        )
        env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
        assert (env["PORT"], env["STEAM_ID"], env["SERVER_NAME"]) == (str(port), "4242", "Zug")
        r = peon(config, "server", "stop", server)
        assert r.returncode == 0, r.stderr
        assert "saving Zug" in peon(config, "server", "logs", server, "-n", "5").stdout
        r = peon(config, "server", "delete", server, "--purge", "--yes")
        assert r.returncode == 0, r.stderr
        flt = {"label": [f"io.peon.instance={settings.instance_id}"]}
        assert client.containers.list(all=True, filters=flt) == []
        assert client.volumes.list(filters=flt) == []
    finally:
        cleanup_instance(settings.instance_id)
        client.close()
