from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.settings import DEFAULT_CONFIG, config_path, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_committed_config_loads_with_defaults() -> None:
    s = load_settings(ROOT / "config" / "peon.yaml", env={})
    assert s.instance_id == "peon" and s.ports.pool_range == range(30000, 31000)
    assert s.db_path == Path("data/peon.db")
    assert s.discord_token is None


def test_environment_overrides_and_token_is_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ports:\n  pool: 40000-40010\n")
    s = load_settings(cfg, env={"PEON_DATA_DIR": str(tmp_path / "d"), "DISCORD_TOKEN": "abc.def"})
    assert s.data_dir == tmp_path / "d"
    assert s.discord_token is not None and s.discord_token.get_secret_value() == "abc.def"
    assert "abc.def" not in repr(s) and "abc.def" not in str(s.model_dump())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ports:\n  pool: 9-1\n", "c.yaml: ports.pool: '9-1' is not within"),
        ("docker:\n  timeout: 1\n", "c.yaml: docker.timeout: Input should be greater"),
        ("nonsense: 1\n", "c.yaml: nonsense: Extra inputs are not permitted"),
        ("- a list\n", "c.yaml: must be a mapping"),
        ("ports: [unclosed\n", "c.yaml: line "),
    ],
)
def test_invalid_config_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert str(info.value).startswith(str(tmp_path / message.split(":", maxsplit=1)[0]))
    assert message.split(": ", 1)[1] in str(info.value)


def test_config_path_precedence(tmp_path: Path) -> None:
    assert config_path(None, {}) == DEFAULT_CONFIG
    assert config_path(None, {"PEON_CONFIG": "/x.yaml"}) == Path("/x.yaml")
    assert config_path("/y.yaml", {"PEON_CONFIG": "/x.yaml"}) == Path("/y.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml", env={})


@pytest.mark.parametrize(
    ("hosts", "error"),
    [
        ("hosts:\n  - {name: a}\n  - {name: a}\n", "c.yaml: hosts: host names must be unique"),
        ("hosts:\n  - {name: a, base_url: 'http://x'}\n", "c.yaml: hosts.0.base_url: must start"),
        ("hosts:\n  - {name: a, memory: lots}\n", "c.yaml: hosts.0.memory: 'lots' is not a size"),
        ("hosts:\n  - {name: a, pool: 9-1}\n", "c.yaml: hosts.0.pool: '9-1' is not within"),
    ],
)
def test_bad_hosts_are_one_line_naming_the_field(tmp_path: Path, hosts: str, error: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(hosts)
    with pytest.raises(ConfigError) as e:
        load_settings(path, {})
    assert str(e.value).replace(str(tmp_path) + "/", "").startswith(error), str(e.value)


def test_without_hosts_there_is_one_named_local(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("docker: {public_address: play.example.org}\n")
    (camp,) = load_settings(path, {}).camps
    assert (camp.name, camp.public_address) == ("local", "play.example.org")
