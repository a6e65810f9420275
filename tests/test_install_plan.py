"""The install step's pure parts: what a plan may say, and what the installer is given."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest

from bot.errors import WarplanError
from bot.installs import installer_command, installer_env, installer_mounts, script_archive
from bot.warplans import INSTALL_SCRIPT_PATH, WarPlan, parse_warplan


def plan(install: dict[str, Any] | None = None, **top: Any) -> WarPlan:
    data: dict[str, Any] = {
        "name": "game",
        "title": "Game",
        "image": "example/game:1",
        "ports": [{"name": "game", "container": 7000}],
        "variables": [{"name": "version", "env": "VERSION", "default": "1.2"}],
        "env": {"MODE": "survival"},
        "volumes": [{"name": "data", "path": "/data"}, {"name": "conf", "path": "/conf"}],
        **top,
    }
    if install is not None:
        data["install"] = {"image": "debian:12", "script": "echo hi", **install}
    return parse_warplan(data, "game.yaml")


@pytest.mark.parametrize(
    ("install", "top", "message"),
    [
        ({"mounts": {"saves": "/mnt"}}, {}, "install.mounts: no volume named 'saves'"),
        ({"mounts": {"data": "mnt/server"}}, {}, "must be an absolute path without '..'"),
        ({"mounts": {"data": "/mnt/../etc"}}, {}, "must be an absolute path without '..'"),
        ({"mounts": {"data": "/"}}, {}, "cannot be mounted over /"),
        ({"mounts": {"data": "/m", "conf": "/m/"}}, {}, "duplicate /m"),
        ({"entrypoint": "  "}, {}, "needs a program"),
        ({"entrypoint": "bash 'unclosed"}, {}, "cannot be split"),
        ({"timeout": 0}, {}, "greater than or equal to 1"),
        ({"timeout": 86400}, {}, "less than or equal to 21600"),
        ({"env": {"1BAD": "x"}}, {}, "'1BAD' is not a valid environment variable name"),
        ({"env": {"P": "{port:query}"}}, {}, "{port:query}"),
        ({}, {"volumes": []}, "install: needs a volume of the plan to install into"),
        ({"script": ""}, {}, "at least 1 character"),
    ],
)
def test_a_plan_with_a_bad_install_step_is_refused_naming_the_field(
    install: dict[str, Any], top: dict[str, Any], message: str
) -> None:
    with pytest.raises(WarplanError) as caught:
        plan(install, **top)
    assert message in str(caught.value)
    assert "install" in str(caught.value)


def test_defaults_mount_every_volume_at_its_own_path_and_run_the_script_with_sh() -> None:
    p = plan({})
    assert p.install is not None and p.install.timeout == 900
    assert installer_mounts(p) == {"data": "/data", "conf": "/conf"}
    assert installer_command(p) == ["/bin/sh", INSTALL_SCRIPT_PATH]
    assert installer_mounts(plan({"mounts": {"data": "/mnt/server"}})) == {"data": "/mnt/server"}
    assert installer_command(plan({"entrypoint": "bash -e"})) == ["bash", "-e", INSTALL_SCRIPT_PATH]
    assert installer_mounts(plan()) == {} and installer_command(plan()) == []


def test_a_numeric_user_gets_the_installed_volumes_after_a_successful_script() -> None:
    p = plan({"mounts": {"data": "/mnt/my server"}}, user="1000:1001")
    assert installer_command(p) == [
        "/bin/sh", "-c", f"/bin/sh {INSTALL_SCRIPT_PATH} && chown -R 1000:1001 '/mnt/my server'"
    ]  # fmt: skip
    # A name is the image's business: nothing to hand over.
    assert installer_command(plan({}, user="steam")) == ["/bin/sh", INSTALL_SCRIPT_PATH]


def test_the_installer_gets_the_servers_environment_plus_its_own_with_templates() -> None:
    p = plan({"env": {"SERVER": "{server}", "PORT": "{port:game}", "V": "{var:version}",
                      "MODE": "{env:MODE}-install", "N": 5}})  # fmt: skip
    server_env = {"MODE": "survival", "VERSION": "2.0"}  # as the game container gets it
    assert installer_env(p, server_env, "alpha", {"game": 25565}, {"version": "2.0"}) == {
        "MODE": "survival-install",  # install.env wins over the server's own
        "VERSION": "2.0",
        "SERVER": "alpha",
        "PORT": "25565",
        "V": "2.0",
        "N": "5",
    }


def test_the_script_goes_in_as_an_executable_file_with_unix_line_ends() -> None:
    data = script_archive("set -e\r\necho hi\r\n")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"peon-install", "peon-install/install.sh"}
        assert members["peon-install"].isdir()
        script = members["peon-install/install.sh"]
        assert script.mode == 0o755
        assert tar.extractfile(script).read() == b"set -e\necho hi\n"  # type: ignore[union-attr]
    assert "/" + script.name == INSTALL_SCRIPT_PATH
