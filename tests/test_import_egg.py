"""Pterodactyl eggs imported as war plans (bot/importers/egg.py), and the ports they need:
`container: host` (the container listens on the number PEON allocates) with a udp twin
(`same_as`), as Wings publishes each allocation on its own number for tcp and udp.

The eggs here are small ones written for these tests (PTDL_v1 and PTDL_v2).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import docker
import docker.errors
import pytest

from bot import labels
from bot.configfiles import key_problem, merge_lines
from bot.errors import PortUnavailable, VariableError, WarplanError
from bot.importers import detect, import_file
from bot.importers.egg import import_egg
from bot.ports import choose_ports
from bot.warplans import load_warplan, parse_warplan, resolve_variables
from tests.conftest import config_file, make_settings, peon, services_for
from tests.engine import busybox_binary


def always(_port: int, _proto: str) -> bool:
    return True


# ---------------------------------------------------------------------------------------------
# Ports: container = host port, and one number for tcp and udp


def test_a_shared_number_is_free_for_both_protocols() -> None:
    wanted = [("game", "tcp", None), ("game-udp", "udp", None), ("rcon", "tcp", None)]
    same = {"game-udp": "game"}
    # 100 is held for udp only: the pair cannot have it; rcon (tcp alone) can.
    chosen = choose_ports(wanted, range(100, 110), {(100, "udp")}, always, same)
    assert chosen == {"game": 101, "game-udp": 101, "rcon": 100}
    # A second server of the same plan: the next number free for both.
    taken = {(101, "tcp"), (101, "udp"), (100, "tcp"), (100, "udp")}
    again = choose_ports(wanted, range(100, 110), taken, always, same)
    assert again["game"] == again["game-udp"] == 102


def test_a_shared_number_refused_when_either_protocol_is_held() -> None:
    wanted = [("game", "tcp", 100), ("game-udp", "udp", None)]
    with pytest.raises(PortUnavailable, match=r"Port 100/tcp/udp \(for 'game'\)"):
        choose_ports(wanted, range(100, 101), {(100, "udp")}, always, {"game-udp": "game"})
    with pytest.raises(PortUnavailable, match="No free tcp/udp port is left in the pool 5-6"):
        choose_ports(
            [("g", "tcp", None), ("u", "udp", None)],
            range(5, 7),
            {(5, "udp"), (6, "tcp")},
            lambda p, proto: True,
            {"u": "g"},
        )


def plan_with_ports(ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "p", "title": "P", "image": "busybox", "ports": ports}


def test_container_host_and_same_as_validate() -> None:
    plan = parse_warplan(
        plan_with_ports(
            [
                {"name": "game", "container": "host"},
                {"name": "game-udp", "container": "host", "protocol": "udp", "same_as": "game"},
                {"name": "web", "container": 8080},
            ]
        ),
        "p.yaml",
    )
    assert [p.container for p in plan.ports] == ["host", "host", 8080]
    bad: list[tuple[list[dict[str, Any]], str]] = [
        ([{"name": "a", "container": 0}], "ports[0].container: must be between 1 and 65535"),
        ([{"name": "a", "container": "x"}], "ports[0].container:"),
        (
            [{"name": "a", "container": "host", "same_as": "b"}],
            "ports.a.same_as: no port named 'b'",
        ),
        (
            [{"name": "a", "container": 1}, {"name": "b", "container": 2, "same_as": "a"}],
            "one number is shared only by a tcp and a udp port",
        ),
        (
            [
                {"name": "a", "container": 1},
                {"name": "b", "container": 2, "host": 5, "same_as": "a"},
            ],
            "leave 'host' out",
        ),
    ]
    for ports, message in bad:
        with pytest.raises(WarplanError) as err:
            parse_warplan(plan_with_ports(ports), "p.yaml")
        assert message in str(err.value), (ports, str(err.value))


# ---------------------------------------------------------------------------------------------
# Eggs


def egg(**changes: Any) -> dict[str, Any]:
    """A small PTDL_v2 egg of our own: a game started by a shell script."""
    data: dict[str, Any] = {
        "_comment": "written for PEON's tests",
        "meta": {"version": "PTDL_v2", "update_url": None},
        "exported_at": "2026-01-01T00:00:00+00:00",
        "name": "Tiny Game",
        "author": "tests@example.org",
        "description": "A tiny game for tests.\n\nSecond paragraph is left out.",
        "features": None,
        "docker_images": {
            "Stable": "ghcr.io/example/tiny:stable",
            "Beta": "ghcr.io/example/tiny:beta",
        },
        "file_denylist": [],
        "startup": "./tiny --port {{SERVER_PORT}} --memory {{SERVER_MEMORY}} --name {{NAME}}",
        "config": {
            "files": json.dumps(
                {
                    "tiny.properties": {
                        "parser": "properties",
                        "find": {
                            "port": "{{server.build.default.port}}",
                            "ip": "{{server.build.default.ip}}",
                            "memory": "{{server.build.memory}}",
                            "name": "{{server.build.env.NAME}}",
                            "mode": "{{env.MODE}}",
                            "keep": "{{NOT_A_PANEL_KEY}}",
                        },
                    },
                    "settings.json": {
                        "parser": "json",
                        "find": {
                            "net.port": "{{server.build.default.port}}",
                            "net.open": True,
                            "worlds.*.port": "{{server.build.default.port}}",
                            "bad..key": "x",
                        },
                    },
                    "plain.cfg": {
                        "parser": "file",
                        "find": {"Port=": "Port={{server.build.default.port}}", "  Name ": "x"},
                    },
                    "odd.toml": {"parser": "toml", "find": {"port": "1"}},
                    "bungee.yml": {
                        "parser": "yaml",
                        "find": {"listeners[0].host": "{{config.docker.interface}}:25577"},
                    },
                }
            ),
            "startup": json.dumps({"done": "Server started on port"}),
            "logs": "{}",
            "stop": "quit",
        },
        "scripts": {
            "installation": {
                "script": "#!/bin/bash\r\ncd /mnt/server\r\necho hi > hello.txt\r\n",
                "container": "ghcr.io/example/installer:debian",
                "entrypoint": "bash",
            }
        },
        "variables": [
            {
                "name": "Server name",
                "description": "Shown in the list.",
                "env_variable": "NAME",
                "default_value": "Tiny",
                "user_viewable": True,
                "user_editable": True,
                "rules": "required|string|max:20",
                "field_type": "text",
            },
            {
                "name": "Mode",
                "description": "",
                "env_variable": "MODE",
                "default_value": "coop",
                "user_viewable": True,
                "user_editable": True,
                "rules": "required|string|in:coop,versus",
            },
        ],
    }
    data.update(changes)
    return data


def write(tmp_path: Path, data: dict[str, Any], name: str = "egg-tiny.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def variable(env: str, default: str, rules: str, **more: Any) -> dict[str, Any]:
    return {
        "name": env.title(),
        "description": f"{env} setting",
        "env_variable": env,
        "default_value": default,
        "user_viewable": True,
        "user_editable": True,
        "rules": rules,
        **more,
    }


def test_a_v2_egg_becomes_a_plan_that_runs_its_startup_in_the_image(tmp_path: Path) -> None:
    path = write(tmp_path, egg())
    assert detect(path) == "egg"
    result = import_file(path)
    plan = result.plan
    assert plan.name == "tiny-game" and plan.title == "Tiny Game"
    assert plan.description == "A tiny game for tests."
    assert plan.image == "ghcr.io/example/tiny:stable"  # the Panel's default: the first
    assert plan.command is None and plan.entrypoint is None  # the image evals STARTUP
    assert plan.env["STARTUP"] == egg()["startup"]
    assert plan.env["SERVER_PORT"] == "{port:game}"
    assert plan.env["SERVER_MEMORY"] == "{memory}"
    assert plan.env["SERVER_IP"] == "0.0.0.0"
    assert [(p.name, p.container, p.protocol, p.same_as) for p in plan.ports] == [
        ("game", "host", "tcp", None),
        ("game-udp", "host", "udp", "game"),
    ]
    assert [(v.name, v.path) for v in plan.volumes] == [("data", "/home/container")]
    assert plan.user == "1000:1000"
    assert plan.resources.memory == "4g"
    assert plan.ready.log == "Server started on port"
    assert plan.stop.console == "quit" and plan.stdin_open
    # What the plan cannot say is listed, one line each.
    assert any(line.startswith("docker_images: also Beta") for line in result.unmapped)
    assert "config.files.odd.toml: parser 'toml' is not one Wings knows" in result.unmapped
    assert any("{{config.docker.interface}} has no PEON counterpart" in u for u in result.unmapped)
    # The YAML written for the user loads back as the same plan.
    out = tmp_path / f"{plan.name}.yaml"
    out.write_text(result.yaml_text)
    assert load_warplan(out) == plan
    assert "# not mapped: docker_images: also Beta" in result.yaml_text


def test_images_choice(tmp_path: Path) -> None:
    path = write(tmp_path, egg())
    assert import_egg(path, image="Beta").plan.image == "ghcr.io/example/tiny:beta"
    assert import_egg(path, image="ghcr.io/example/tiny:beta").plan.image.endswith(":beta")
    mine = import_egg(path, image="registry.local/tiny:mine")
    assert mine.plan.image == "registry.local/tiny:mine"
    assert "docker_images: replaced by registry.local/tiny:mine" in mine.unmapped
    with pytest.raises(WarplanError, match="docker_images: has no image 'Nightly'; choose "):
        import_egg(path, image="Nightly")
    with pytest.raises(WarplanError, match="docker_images: the egg names no image"):
        import_egg(write(tmp_path, egg(docker_images={})))


def test_a_v1_egg_with_one_image(tmp_path: Path) -> None:
    data = egg(meta={"version": "PTDL_v1"}, image="quay.io/example/tiny:1")
    del data["docker_images"]
    result = import_egg(write(tmp_path, data))
    assert result.plan.image == "quay.io/example/tiny:1"
    assert not any(u.startswith("docker_images") for u in result.unmapped)


def test_what_would_not_run_is_refused_in_one_sentence(tmp_path: Path) -> None:
    cases = [
        (egg(startup="  "), "startup: is empty"),
        (egg(meta={"version": "PTDL_v9"}), "meta.version: must be one of PTDL_v1, PTDL_v2"),
    ]
    for data, message in cases:
        with pytest.raises(WarplanError, match=message):
            import_egg(write(tmp_path, data))
    bad = tmp_path / "egg-bad.json"
    bad.write_text("{not json")
    with pytest.raises(WarplanError, match="is not JSON"):
        import_egg(bad)


def test_variables_with_their_rules(tmp_path: Path) -> None:
    variables = [
        variable("NAME", "Tiny", "required|string|max:20"),
        variable("MOTD", "", "nullable|string|max:64"),
        variable("MODE", "coop", "required|string|in:coop,versus"),
        variable("PVP", "1", "required|boolean"),
        variable("HARDCORE", "false", "required|boolean"),
        variable("SLOTS", "10", "required|integer|between:1,64"),
        variable("TICKS", "20", "required|numeric|min:1|max:100"),
        variable("SEED", "", "nullable|digits_between:1,10"),
        variable("WORLD", "world", "required|regex:/^[a-z]+$/"),
        variable("STEAM_USER", "", "nullable|alpha_dash"),
        variable("ADMIN_PASSWORD", "", "nullable|string"),
        variable("HIDDEN", "abc", "required|string", user_viewable=False),
        variable("LICENSE_KEY", "", "nullable|string"),
        variable("STEAM_WEBAPIKEY", "", "nullable|string"),
        variable("FIVEM_LICENSE", "", "required|string"),
        variable("WEB_PORT", "8080", "required|string|max:5"),
        variable("BRANCH", "public", "required|string", user_editable=False),
        variable("QUERY_PORT", "27015", "required|integer"),
        variable("SERVER_PORT", "1", "required|integer"),
        variable("BAD-NAME", "x", "string"),
        variable("MAP", "big", "required|in:small,medium"),
    ]
    result = import_egg(write(tmp_path, egg(variables=variables)))
    plan = result.plan
    by_env = {v.env: v for v in plan.variables}
    assert by_env["NAME"].pattern == ".{0,20}" and by_env["NAME"].required
    assert by_env["MOTD"].pattern == "|.{0,64}" and not by_env["MOTD"].required
    assert by_env["MODE"].type == "choice" and by_env["MODE"].choices == ["coop", "versus"]
    assert (by_env["PVP"].choices, by_env["PVP"].default) == (["1", "0"], "1")
    assert (by_env["HARDCORE"].choices, by_env["HARDCORE"].default) == (["true", "false"], "false")
    assert (by_env["SLOTS"].type, by_env["SLOTS"].min, by_env["SLOTS"].max) == ("int", 1, 64)
    assert (by_env["TICKS"].type, by_env["TICKS"].min, by_env["TICKS"].max) == ("int", 1, 100)
    assert by_env["SEED"].pattern == r"|\d{1,10}"
    assert by_env["WORLD"].pattern == ".*(?:^[a-z]+$).*"
    assert by_env["STEAM_USER"].pattern == "|[A-Za-z0-9_-]*"
    assert by_env["ADMIN_PASSWORD"].secret  # password-like
    assert by_env["HIDDEN"].secret  # not viewable by users
    assert by_env["LICENSE_KEY"].secret and by_env["STEAM_WEBAPIKEY"].secret
    assert by_env["FIVEM_LICENSE"].secret
    assert "WEB_PORT" not in by_env and plan.env["WEB_PORT"] == "{port:web}"
    assert not by_env["NAME"].secret
    assert "BRANCH" not in by_env and plan.env["BRANCH"] == "public"  # not user-editable
    # An extra allocation: PEON allocates it, on one number for tcp and udp.
    assert "QUERY_PORT" not in by_env and plan.env["QUERY_PORT"] == "{port:query}"
    assert [(p.name, p.same_as) for p in plan.ports if p.name.startswith("query")] == [
        ("query", None),
        ("query-udp", "query"),
    ]
    assert plan.env["SERVER_PORT"] == "{port:game}"  # Wings' own; the variable is ignored
    # The egg's default breaks its own rule: the egg runs with it, so it stays allowed.
    assert by_env["MAP"].choices == ["small", "medium", "big"] and by_env["MAP"].default == "big"
    for line in (
        "variables.SERVER_PORT: Wings sets SERVER_PORT itself and ignores the variable",
        "variables.Bad-Name: 'BAD-NAME' is not an environment variable name",
        "variables.QUERY_PORT: an extra port; PEON allocates it (port 'query', tcp+udp)",
    ):
        assert line in result.unmapped, result.unmapped


def test_ready_lines(tmp_path: Path) -> None:
    def ready(done: Any) -> str | None:
        data = egg()
        data["config"] = {**data["config"], "startup": json.dumps({"done": done})}
        return import_egg(write(tmp_path, data)).plan.ready.log

    assert ready(")! For help, type ") == r"\)! For help, type "
    assert ready(["Ready [1/2]", "Listening"]) == r"(?:Ready \[1/2\])|(?:Listening)"
    assert ready("regex:^Started in \\d+ms") == "^Started in \\d+ms"
    data = egg()
    data["config"] = {**data["config"], "startup": "{}"}
    result = import_egg(write(tmp_path, data))
    assert result.plan.ready.log is None
    assert any(u.startswith("config.startup.done: none") for u in result.unmapped)


@pytest.mark.parametrize(
    ("stop", "expect", "noted"),
    [
        ("quit", {"console": "quit", "signal": "SIGTERM"}, None),
        ("^C", {"console": None, "signal": "SIGINT"}, None),
        ("^c", {"console": None, "signal": "SIGINT"}, None),
        ("^^C", {"console": None, "signal": "SIGINT"}, "Ctrl+C twice"),
        ("^SIGTERM", {"console": None, "signal": "SIGTERM"}, None),
        ("^QUIT", {"console": None, "signal": "SIGQUIT"}, None),
        ("^X", {"console": None, "signal": "SIGTERM"}, "no signal PEON knows"),
    ],
)
def test_stop_variants(tmp_path: Path, stop: str, expect: dict[str, Any], noted: str) -> None:
    data = egg()
    data["config"] = {**data["config"], "stop": stop}
    result = import_egg(write(tmp_path, data))
    assert result.plan.stop.console == expect["console"]
    assert result.plan.stop.signal == expect["signal"]
    assert result.plan.stop.grace == 60
    if noted:
        assert any(noted in u for u in result.unmapped)


def test_config_files_with_panel_placeholders(tmp_path: Path) -> None:
    result = import_egg(write(tmp_path, egg()))
    plan, unmapped = result.plan, result.unmapped
    files = {f.path: f for f in plan.files}
    props = files["tiny.properties"]
    assert (props.format, props.volume, props.when) == ("properties", "data", "always")
    assert props.set == {
        "port": "{port:game}",
        "ip": "0.0.0.0",
        "memory": "{memory}",
        "name": "{var:name}",
        "mode": "{var:mode}",
        "keep": "{{NOT_A_PANEL_KEY}}",  # Wings leaves it as written too
    }
    assert files["settings.json"].set == {
        "net.port": "{port:game}",
        "net.open": True,  # typed, as Wings writes it
        "worlds.*.port": "{port:game}",  # wildcards as Wings applies them
    }
    assert any(u.startswith("config.files.settings.json: key bad..key: ") for u in unmapped)
    # Wings' `file` parser: a line that starts with the key becomes the value, whole.
    assert (files["plain.cfg"].format, files["plain.cfg"].set) == (
        "lines",
        {"Port=": "Port={port:game}", "  Name ": "x"},
    )
    assert "odd.toml" not in files and "bungee.yml" not in files


def test_lines_replace_whole_lines_by_their_start_and_add_none() -> None:
    text = "Name=a\nPort=7777\n# Port=comment\n  Port=indented\nPort\n"
    merged = merge_lines(text, {"Port=": ("Port=9000", False), "Name": (True, False)})
    assert merged == "true\nPort=9000\n# Port=comment\n  Port=indented\nPort\n"
    assert merge_lines("", {"Port=": ("Port=1", False)}) == ""
    assert key_problem("lines", "  sv_port ") is None
    assert key_problem("lines", "a\nb") is not None and key_problem("lines", "") is not None


def test_install_script(tmp_path: Path) -> None:
    plan = import_egg(write(tmp_path, egg())).plan
    install = plan.install
    assert install is not None
    assert install.image == "ghcr.io/example/installer:debian"
    assert install.entrypoint == "bash"
    assert install.mounts == {"data": "/mnt/server"}
    lines = install.script.split("\n")
    assert lines[:3] == ["#!/bin/bash", "cd /mnt/server", "echo hi > hello.txt"]  # CRLF gone
    assert plan.user == "1000:1000"  # the install step hands its files to that user
    data = egg()
    data["scripts"] = {"installation": {"script": "", "container": "x", "entrypoint": "bash"}}
    assert import_egg(write(tmp_path, data)).plan.install is None


# ---------------------------------------------------------------------------------------------
# On the real engine: an egg of our own, imported, installed, started twice side by side

# Like the yolks' entrypoints (their behaviour, not their code): {{VAR}} in STARTUP becomes
# ${VAR}, and the line runs in /home/container.
ENTRYPOINT = """\
cd /home/container || exit 1
line=$(echo "$STARTUP" | sed -e 's/{{/${/g' -e 's/}}/}/g')
eval "exec $line"
"""

SERVER_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/sh", "-c", "mkdir -p /etc /home/container /tmp && \
echo 'root:x:0:0::/root:/bin/sh' > /etc/passwd && \
echo 'container:x:1000:1000::/home/container:/bin/sh' >> /etc/passwd && \
echo 'root:x:0:' > /etc/group && echo 'container:x:1000:' >> /etc/group && \
chown 1000:1000 /home/container && chmod 1777 /tmp"]
COPY entrypoint.sh /entrypoint.sh
USER container
ENV HOME=/home/container
WORKDIR /home/container
ENTRYPOINT ["/bin/sh", "/entrypoint.sh"]
"""

INSTALLER_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
"""

# The egg's install script (run by root in the installer) writes the game into /mnt/server.
INSTALL = r"""#!/bin/sh
set -e
cd /mnt/server
echo "installing greeting=$GREETING port=$SERVER_PORT"
cat > start.sh <<'GAME'
#!/bin/sh
echo "boot uid=$(id -u) greeting=$1 cfg=$(grep Port= game.cfg) $(grep keep game.cfg)"
echo played >> world.txt
mkdir -p www && cp tiny.properties www/
httpd -f -p "$SERVER_PORT" -h /home/container/www &
echo "Tiny server ready on port $SERVER_PORT with ${SERVER_MEMORY} MiB"
while read -r line; do
  if [ "$line" = quit ]; then echo "saving world"; kill $!; exit 0; fi
done
GAME
chmod +x start.sh
printf 'Port=1\n# keep me\n' > game.cfg
echo installed > world.txt
exit 0
"""


@pytest.fixture(scope="module")
def egg_images(engine: None) -> Iterator[tuple[str, str]]:
    """(server image, installer image), both built here from busybox."""
    client = docker.from_env()
    tags = []
    try:
        for kind, dockerfile in (
            ("server", SERVER_DOCKERFILE),
            ("installer", INSTALLER_DOCKERFILE),
        ):
            tag = f"peon-test/egg-{kind}:{uuid.uuid4().hex[:12]}"
            with tempfile.TemporaryDirectory() as ctx:
                shutil.copy(busybox_binary(), Path(ctx) / "busybox")
                (Path(ctx) / "Dockerfile").write_text(dockerfile)
                (Path(ctx) / "entrypoint.sh").write_text(ENTRYPOINT)
                client.images.build(path=ctx, tag=tag, rm=True, forcerm=True)
            tags.append(tag)
        yield tags[0], tags[1]
    finally:
        for tag in tags:
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(tag, force=True)
        client.close()


def engine_egg(server_image: str, installer_image: str) -> dict[str, Any]:
    return egg(
        name="Egg Engine Game",
        docker_images={"Other": "ghcr.io/example/none:1", "Busybox": server_image},
        startup="./start.sh {{GREETING}}",
        config={
            "files": json.dumps(
                {
                    "tiny.properties": {
                        "parser": "properties",
                        "find": {
                            "server-port": "{{server.build.default.port}}",
                            "memory": "{{server.build.memory}}",
                            "greeting": "{{server.build.env.GREETING}}",
                        },
                    },
                    "game.cfg": {
                        "parser": "file",
                        "find": {"Port=": "Port={{server.build.default.port}}"},
                    },
                }
            ),
            "startup": json.dumps({"done": "Tiny server ready on port"}),
            "logs": "{}",
            "stop": "quit",
        },
        scripts={
            "installation": {"script": INSTALL, "container": installer_image, "entrypoint": "sh"}
        },
        variables=[variable("GREETING", "hello", "required|string|max:20")],
    )


def fetch(url: str) -> str:
    with urlopen(url, timeout=10) as answer:  # noqa: S310 - http on loopback, built above
        return str(answer.read().decode())


def engine_leftovers(client: docker.DockerClient, instance: str) -> list[str]:
    flt = {"label": [f"{labels.INSTANCE}={instance}"]}
    return [c.name for c in client.containers.list(all=True, filters=flt)] + [
        v.name for v in client.volumes.list(filters=flt)
    ]


@pytest.mark.docker
async def test_an_imported_egg_installs_starts_twice_side_by_side_and_leaves_nothing(
    tmp_path: Path, egg_images: tuple[str, str], dclient: docker.DockerClient
) -> None:
    server_image, installer_image = egg_images
    source = write(tmp_path, engine_egg(server_image, installer_image))
    folder = tmp_path / "warplans"
    folder.mkdir()
    settings = make_settings(tmp_path, warplans_dir=folder)
    config = config_file(settings, tmp_path / "peon.yaml")
    # `peon warplan import`, as a user runs it: a wrong image is refused in one sentence
    # and writes nothing; the image is chosen by its label.
    r = peon(config, "warplan", "import", str(source), "--image", "Nightly", "--name", "egg-engine")
    assert r.returncode != 0 and "docker_images: has no image 'Nightly'" in r.stderr
    assert list(folder.iterdir()) == []
    r = peon(config, "warplan", "import", str(source), "--image", "Busybox", "--name", "egg-engine")
    assert r.returncode == 0, r.stderr
    assert "not mapped: docker_images: also Other (ghcr.io/example/none:1)" in r.stderr
    assert (folder / "egg-engine.yaml").is_file()
    async with services_for(settings) as svc:
        assert svc.warplans.get("egg-engine").image == server_image
        records = []
        for name, greeting in (("egg-e2e-one", "hi"), ("egg-e2e-two", "yo")):
            record = await svc.servers.create(
                "egg-engine", name, {"greeting": greeting}, actor="test"
            )
            run = await svc.servers.installs.last(name)
            assert run.ok and f"installing greeting={greeting}" in run.log
            await svc.servers.start(name, actor="test")
            records.append(record)
        one, two = ({p.name: p for p in r.ports} for r in records)
        # Each allocation on its own number, container and host, tcp and udp alike.
        for ports in (one, two):
            assert ports["game"].container == ports["game"].host == ports["game-udp"].host
            assert ports["game-udp"].container == ports["game"].host
        assert one["game"].host != two["game"].host
        for name, ports, greeting in (("egg-e2e-one", one, "hi"), ("egg-e2e-two", two, "yo")):
            port = ports["game"].host
            logs = "\n".join(await svc.servers.logs(name))
            assert f"boot uid=1000 greeting={greeting} cfg=Port={port} # keep me" in logs
            assert f"Tiny server ready on port {port} with 4096 MiB" in logs
            # The game announces the number players reach, and answers on it.
            url = f"http://127.0.0.1:{port}/tiny.properties"
            body = await asyncio.to_thread(fetch, url)
            assert f"server-port={port}" in body and f"greeting={greeting}" in body
            assert "memory=4096" in body
        # A lost record is adopted back from the container, on the same numbers.
        await svc.store.delete_server("egg-e2e-two")
        report = await svc.servers.reconcile()
        assert report.adopted == ["egg-e2e-two"]
        assert (await svc.store.get_server("egg-e2e-two")).ports == records[1].ports
        # The console stop ('quit') reaches the game, which saves.
        await svc.servers.stop("egg-e2e-one", actor="test")
        assert "saving world" in "\n".join(await svc.servers.logs("egg-e2e-one"))
        for name in ("egg-e2e-one", "egg-e2e-two"):
            await svc.servers.delete(name, actor="test", purge=True)
            assert await svc.store.find_server(name) is None
        assert engine_leftovers(dclient, settings.instance_id) == []
        assert await svc.store.taken_ports() == set()


def test_the_eula_feature_is_a_required_choice_written_to_eula_txt(tmp_path: Path) -> None:
    result = import_egg(write(tmp_path, egg(features=["eula", "java_version"])))
    plan = result.plan
    eula = plan.variable("eula")
    assert eula is not None and eula.env is None and eula.required
    assert eula.choices == ["true", "false"]
    files = {f.path: f for f in plan.files}
    assert (files["eula.txt"].format, files["eula.txt"].content) == ("text", "eula={var:eula}\n")
    assert "features.java_version: a Panel feature PEON does not have" in result.unmapped
    assert not any(u.startswith("features.eula") for u in result.unmapped)
    # Nobody accepts it for the user: a create without it is refused.
    with pytest.raises(VariableError, match="is required"):
        resolve_variables(plan, {}, "egg-x")
    assert resolve_variables(plan, {"eula": "true"}, "egg-x")["eula"] == "true"
