"""War plan `files:` end to end on the real engine: written into the volume before the game
starts, merged into existing files, `when: missing` kept, rewritten after a settings change,
a bad existing file refusing the start with nothing changed, bad plans refused by
`peon warplan validate`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from bot.errors import ConfigFileError
from tests.conftest import ROOT, TEST_WARPLANS, fakegame_variant, make_settings, services_for

pytestmark = pytest.mark.docker

FILES: list[dict[str, Any]] = [
    {
        "path": "motd.txt",
        "content": "motd={var:motd}\nport={port:game}\nmem={memory}\nworld={env:WORLD_NAME}\n",
    },
    {
        "path": "server.properties",
        "format": "properties",
        "set": {"motd": "{var:motd}", "server-port": "{port:game}"},
    },
    {
        "path": "conf/game.ini",
        "format": "ini",
        "set": {"[/Script/Game.Session].MaxPlayers": "{var:max_players}", "top": "1"},
    },
    {
        "path": "conf/settings.json",
        "format": "json",
        "set": {"server.name": "{server}", "server.password": "{var:password}"},
        "mode": "0600",
    },
    {"path": "conf/bukkit.yml", "format": "yaml", "set": {"settings.motd": "{var:motd}"}},
    {
        "path": "conf/config.xml",
        "format": "xml",
        "set": {"Config.Port": "{port:game}", "Config.Name": "[value='{var:motd}']"},
    },
    {"path": "first.txt", "content": "made once for {server}\n", "when": "missing"},
]


def plan_folder(tmp_path: Path) -> Path:
    base = yaml.safe_load((TEST_WARPLANS / "fakegame.yaml").read_text())
    variables = [*base["variables"], {"name": "motd", "default": "Hello"}]  # a file key only
    return fakegame_variant(
        tmp_path,
        files=FILES,
        variables=variables,
        # The game shows its motd file as it starts: the file was there before it ran.
        entrypoint=["/bin/sh", "-c", "cat /data/motd.txt; exec /bin/sh /game.sh"],
    )


def read(dclient: docker.DockerClient, name: str, path: str) -> tuple[str, int]:
    """A file of the server's volume and its mode, read through the engine."""
    stream, _ = dclient.containers.get(f"peon-{name}").get_archive(f"/data/{path}")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        assert member is not None
        handle = tar.extractfile(member)
        assert handle is not None
        return handle.read().decode(), member.mode


def put(dclient: docker.DockerClient, name: str, files: dict[str, str]) -> None:
    """Files placed in the volume by hand, as a player editing the config would."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert dclient.containers.get(f"peon-{name}").put_archive("/data", buf.getvalue())


async def test_files_are_written_before_start_merged_kept_and_refused(
    tmp_path: Path, fakegame: str, dclient: docker.DockerClient
) -> None:
    settings = make_settings(tmp_path, warplans_dir=plan_folder(tmp_path))
    name = f"cfg-{uuid.uuid4().hex[:6]}"
    async with services_for(settings) as svc:
        servers = svc.servers
        await servers.create("fakegame", name, {"password": "pw-one-77"}, actor="test")
        record = await servers.store.get_server(name)
        game_port = next(p.host for p in record.ports if p.name == "game")

        # At create: only the `when: missing` file.
        assert read(dclient, name, "first.txt")[0] == f"made once for {name}\n"
        with pytest.raises(docker.errors.NotFound):
            read(dclient, name, "motd.txt")

        # Files that a player already has: their other keys and comments must stay.
        put(dclient, name, {
            "first.txt": "edited by hand\n",
            "server.properties": "#Minecraft server properties\nmotd=Old\nview-distance=10\n",
            "conf/settings.json": '{\n  "keep": 1,\n  "server": {"name": "old", "x": 2}\n}\n',
            "conf/game.ini": "[/Script/Game.Session]\n; players\nMaxPlayers=4\nOther=yes\n",
            "conf/bukkit.yml": "# bukkit\nsettings:\n  motd: old  # shown\n  spawn: 5\n",
            "conf/config.xml": "<Config>\n  <!-- kept -->\n  <Name value=\"x\"/>\n</Config>\n",
        })  # fmt: skip

        await servers.start(name, actor="test")

        logs = await servers.logs(name, tail=50)
        assert "motd=Hello" in logs and f"port={game_port}" in logs  # seen by the game itself
        motd = read(dclient, name, "motd.txt")[0]
        assert motd == f"motd=Hello\nport={game_port}\nmem=64\nworld={name}-world\n"
        assert read(dclient, name, "server.properties")[0] == (
            f"#Minecraft server properties\nmotd=Hello\nview-distance=10\nserver-port={game_port}\n"
        )
        ini = read(dclient, name, "conf/game.ini")[0]
        assert ini == "top=1\n[/Script/Game.Session]\n; players\nMaxPlayers=8\nOther=yes\n"
        text, mode = read(dclient, name, "conf/settings.json")
        assert json.loads(text) == {
            "keep": 1,
            "server": {"name": name, "x": 2, "password": "pw-one-77"},
        }
        assert mode & 0o777 == 0o600
        bukkit = read(dclient, name, "conf/bukkit.yml")[0]
        assert bukkit == "# bukkit\nsettings:\n  motd: Hello # shown\n  spawn: 5\n"  # column kept
        xml = read(dclient, name, "conf/config.xml")[0]
        assert xml == (
            f'<Config>\n  <!-- kept -->\n  <Name value="Hello" />\n  <Port>{game_port}</Port>\n'
            "</Config>\n"
        )
        assert read(dclient, name, "first.txt")[0] == "edited by hand\n"  # when: missing

        # A variable that targets file keys only: the settings change restarts the server,
        # and the start writes the new value.
        result = await servers.change_settings(name, {"motd": "Second"}, actor="test")
        assert result.changed == ("motd",) and result.restarted
        assert read(dclient, name, "motd.txt")[0].startswith("motd=Second\n")
        assert "motd=Second" in read(dclient, name, "server.properties")[0]
        assert "motd=Second" in await servers.logs(name, tail=50)

        # A broken existing file refuses the start, names the file, and changes nothing.
        await servers.stop(name, actor="test")
        await servers.change_settings(name, {"motd": "Third"}, actor="test")
        broken = '{"server": {"password": "pw-one-77", '
        put(dclient, name, {"conf/settings.json": broken})
        before = {p: read(dclient, name, p)[0] for p in ("motd.txt", "server.properties")}
        with pytest.raises(ConfigFileError) as e:
            await servers.start(name, actor="test")
        message = str(e.value)
        assert message == (
            f"Server '{name}' cannot use its file conf/settings.json: it is not valid JSON "
            "(line 1, column 38); nothing was written."
        )
        assert "pw-one-77" not in message
        assert read(dclient, name, "conf/settings.json")[0] == broken
        assert {p: read(dclient, name, p)[0] for p in before} == before
        assert dclient.containers.get(f"peon-{name}").status != "running"
        (event,) = await svc.store.latest_events(name, 1)
        assert (event.kind, event.ok) == ("start", False) and "pw-one-77" not in event.detail


BAD_PLANS = {
    "escape": ({"path": "../etc/passwd", "content": "x"}, "relative path inside the volume"),
    "novolume": ({"path": "a", "volume": "other", "content": "x"}, "no volume named 'other'"),
    "badref": ({"path": "a", "content": "{var:nope}"}, "{var:nope} names no variable"),
    "setontext": ({"path": "a", "set": {"k": "v"}}, "a text file takes 'content'"),
    "contentonjson": ({"path": "a", "format": "json", "content": "{}"}, "takes 'set'"),
    "mode": ({"path": "a", "content": "x", "mode": "rw-r--r--"}, "octal permissions"),
}


def test_bad_files_are_refused_by_warplan_validate(tmp_path: Path) -> None:
    folder = tmp_path / "plans"
    folder.mkdir()
    base = yaml.safe_load((TEST_WARPLANS / "fakegame.yaml").read_text())
    for name, (entry, _) in BAD_PLANS.items():
        (folder / f"{name}.yaml").write_text(
            yaml.safe_dump({**base, "name": name, "files": [entry]})
        )
    config = tmp_path / "peon.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    r = subprocess.run(
        [sys.executable, "-m", "bot.cli", "warplan", "validate", str(folder)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        env={**{k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"},
             "PEON_CONFIG": str(config)},
    )  # fmt: skip
    assert r.returncode == 1
    errors = [line for line in r.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(BAD_PLANS), r.stdout + r.stderr
    for name, (_, reason) in BAD_PLANS.items():
        (line,) = [e for e in errors if f"/{name}.yaml:" in e]
        assert reason in line


async def test_files_and_the_folders_made_for_them_belong_to_the_plans_user(
    tmp_path: Path, fakegame: str, dclient: docker.DockerClient
) -> None:
    files = [
        {"path": "conf/deep/a.json", "format": "json", "set": {"a": "1"}},
        {"path": "conf/b.txt", "content": "b\n", "mode": "0640"},
    ]
    folder = fakegame_variant(tmp_path, files=files, user="1000:1001")
    settings = make_settings(tmp_path, warplans_dir=folder)
    name = f"cfg-{uuid.uuid4().hex[:6]}"
    async with services_for(settings) as svc:
        await svc.servers.create("fakegame", name, actor="test")
        put(dclient, name, {"conf/old.txt": "made by root\n"})  # conf exists, root's
        await svc.servers.start(name, actor="test")
        stream, _ = dclient.containers.get(f"peon-{name}").get_archive("/data/conf")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            owners = {m.name: (m.uid, m.gid, m.mode & 0o777) for m in tar.getmembers()}
    assert owners == {
        "conf": (0, 0, 0o755),  # already there: left as it was
        "conf/old.txt": (0, 0, 0o644),
        "conf/deep": (1000, 1001, 0o755),
        "conf/deep/a.json": (1000, 1001, 0o644),
        "conf/b.txt": (1000, 1001, 0o640),
    }
