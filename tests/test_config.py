"""Settings, config file, environment and their precedence, in process (no server)."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from pathlib import Path

import pytest

from geventchat import config
from geventchat.cli import build_parser
from geventchat.config import ConfigError, Settings


def serve_parser() -> argparse.ArgumentParser:
    return build_parser().parse_args(["serve"]).serve_parser


def actions() -> dict[str, argparse.Action]:
    return config.setting_actions(serve_parser())


def resolve(argv: list[str] = (), env: dict[str, str] | None = None,
            file: Path | None = None) -> config.Resolved:
    args = build_parser().parse_args(["serve", *argv])
    return config.resolve(vars(args), config.setting_actions(args.serve_parser),
                          file or args.config, env or {})


def write(path: Path, text: str) -> Path:
    path.write_text(text, "utf-8")
    return path


# -- one source of truth -------------------------------------------------------------------


def test_every_serve_flag_is_a_settings_field_and_a_key() -> None:
    names = {f.name for f in dataclasses.fields(Settings)}
    keys = set(actions())
    assert keys <= names, f"serve flags without a Settings field: {keys - names}"
    assert {"port", "max_clients", "history_max", "log_level"} <= keys
    assert names - keys == {"stop_timeout"}  # the one setting that is not a flag


def test_defaults_come_from_settings_alone() -> None:
    # No flag, no env, no file: exactly Settings(), whatever the parser knows.
    assert resolve().settings == Settings()
    for action in actions().values():
        assert action.default is argparse.SUPPRESS, action.dest


def test_documented_defaults() -> None:
    s = Settings()
    assert s.host == "0.0.0.0"  # what `serve` has always listened on
    assert s.history_max == config.HISTORY_MAX == 50_000
    assert s.admins == Path("admins.json")
    assert Settings(history_max=0).history_max is None  # 0 means unlimited


def test_help_shows_the_settings_defaults() -> None:
    text = serve_parser().format_help()
    assert "default: 0.0.0.0" in text
    assert "default: 50000" in text
    assert "default: 9999" in text


# -- precedence ----------------------------------------------------------------------------


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    f = write(tmp_path / "g.toml", 'port = 1111\nmax_clients = 5\nhost = "127.0.0.2"\n'
                                   'fsync = "always"\n')
    env = {"GEVENTCHAT_PORT": "2222", "GEVENTCHAT_MAX_CLIENTS": "6"}
    r = resolve(["--port", "3333", "--config", str(f)], env)
    s = r.settings
    assert (s.port, s.max_clients, s.host, s.fsync, s.rate_burst) == (
        3333, 6, "127.0.0.2", "always", Settings().rate_burst)
    assert r.sources["port"] == "flag --port"
    assert r.sources["max_clients"] == "env GEVENTCHAT_MAX_CLIENTS"
    assert r.sources["host"] == f"file {f}"
    assert r.sources["rate_burst"] == "default"


def test_config_file_from_environment(tmp_path: Path) -> None:
    f = write(tmp_path / "g.toml", "port = 1234\n")
    assert resolve(env={"GEVENTCHAT_CONFIG": str(f)}).settings.port == 1234


def test_every_type_from_file_and_env(tmp_path: Path) -> None:
    f = write(tmp_path / "g.toml",
              'history = "/srv/h.txt"\nregister_timeout = 5\nidle_timeout = 2.5\n'
              "history_max = 0\nirc_port = 6667\n")
    s = resolve(file=f).settings
    assert s.history == Path("/srv/h.txt")
    assert s.register_timeout == 5.0 and isinstance(s.register_timeout, float)
    assert s.idle_timeout == 2.5
    assert s.history_max is None
    assert s.irc_port == 6667
    s = resolve(env={"GEVENTCHAT_TLS_CERT": "/c.pem", "GEVENTCHAT_RATE_LIMIT": "0.5",
                     "GEVENTCHAT_MOTD": ""}).settings
    assert s.tls_cert == Path("/c.pem") and s.rate_limit == 0.5 and s.motd is None


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("prot = 1\n", "unknown key 'prot'"),
    ("max-clients = 5\n", "unknown key 'max-clients' (did you mean max_clients?)"),
    ('max_clients = "5000"\n', "max_clients: expected an integer, got str '5000'"),
    ("port = 1.5\n", "port: expected an integer, got float 1.5"),
    ("history = 3\n", "history: expected a string (path), got int 3"),
    ("rate_limit = true\n", "rate_limit: expected a number, got bool True"),
    ("port = 70000\n", "port: must be 0 to 65535, got 70000"),
    ("rate_limit = -1\n", "rate_limit: must be 0 or more, got -1"),
    ("register_timeout = 0\n", "register_timeout: must be more than 0, got 0"),
    ('fsync = "sometimes"\n', "fsync: must be one of always, interval, never, got 'sometimes'"),
    ("port = \n", "not valid TOML"),
])
def test_file_refusals_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    f = write(tmp_path / "g.toml", text)
    with pytest.raises(ConfigError) as info:
        resolve(file=f)
    assert str(info.value).startswith(f"config file {f}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.toml: No such file"):
        resolve(file=tmp_path / "nope.toml")


def test_env_refusal_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^environment variable GEVENTCHAT_PORT: .*70000"):
        resolve(env={"GEVENTCHAT_PORT": "70000"})
    with pytest.raises(ConfigError, match="GEVENTCHAT_MAX_CLIENTS: not an integer"):
        resolve(env={"GEVENTCHAT_MAX_CLIENTS": "lots"})


def test_unknown_env_variable_is_a_warning() -> None:
    r = resolve(env={"GEVENTCHAT_PROT": "1", "HOME": "/root"})
    assert r.warnings == ["ignoring environment variable GEVENTCHAT_PROT: not a serve setting"]


def test_a_new_flag_gets_its_key_and_env_variable(tmp_path: Path) -> None:
    """Adding a flag (whose dest is a Settings field) is all it takes: --redis was added
    after the config file existed, with no config code of its own."""
    acts = config.setting_actions(serve_parser())
    assert config.env_name("redis_url") == "GEVENTCHAT_REDIS_URL"
    f = write(tmp_path / "g.toml", 'redis_url = "redis://:pw@db:6379/0"\n')
    assert config.load_file(f, acts) == {"redis_url": "redis://:pw@db:6379/0"}
    values, _ = config.load_env({"GEVENTCHAT_REDIS_URL": "redis://db"}, acts)
    assert values == {"redis_url": "redis://db"}


# -- printing ------------------------------------------------------------------------------


def test_masking() -> None:
    assert config.mask("redis_url", "redis://:pw@db:6379/0") == "redis://:********@db:6379/0"
    assert config.mask("redis_url", "redis://u:pw@db") == "redis://u:********@db"
    assert config.mask("redis_url", "redis://db:6379") == "redis://db:6379"
    assert config.mask("host", "chat.example.org") == "chat.example.org"
    # A path says where a secret is, not what it is: shown.
    assert config.mask("password_file", Path("/etc/pw")) == Path("/etc/pw")


def test_print_config_round_trips(tmp_path: Path) -> None:
    f = write(tmp_path / "g.toml", 'port = 1111\nhistory_max = 0\nmotd = "/etc/motd"\n')
    r = resolve(["--max-clients", "7"], {"GEVENTCHAT_HOST": "127.0.0.9"}, f)
    text = config.to_toml(r, actions())
    data = tomllib.loads(text)
    assert data["port"] == 1111 and data["max_clients"] == 7 and data["host"] == "127.0.0.9"
    assert data["history_max"] == 0 and data["motd"] == "/etc/motd"
    assert "password_file" not in data  # not set: commented out
    again = resolve(file=write(tmp_path / "again.toml", text))
    assert again.settings == r.settings


# -- start-up checks -----------------------------------------------------------------------


def settings_in(tmp_path: Path, **kwargs) -> Settings:
    kwargs.setdefault("history", tmp_path / "history.txt")
    kwargs.setdefault("admins", tmp_path / "admins.json")
    return Settings(**kwargs)


def test_check_accepts_defaults_in_a_writable_directory(tmp_path: Path) -> None:
    config.check(settings_in(tmp_path))  # absent admins file: no admins, fine
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".geventchat-check")]


@pytest.mark.parametrize("field, what", [
    ("password_file", "password file"), ("motd", "motd file"),
])
def test_check_names_a_missing_file(tmp_path: Path, field: str, what: str) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(ConfigError, match=rf"^{what} {missing}: No such file or directory$"):
        config.check(settings_in(tmp_path, **{field: missing}))


def test_check_tls_pair(tmp_path: Path) -> None:
    cert = write(tmp_path / "cert.pem", "x")
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        config.check(settings_in(tmp_path, tls_cert=cert))
    with pytest.raises(ConfigError, match=rf"^TLS key {tmp_path}/key.pem: No such file"):
        config.check(settings_in(tmp_path, tls_cert=cert, tls_key=tmp_path / "key.pem"))


def test_check_empty_password_file(tmp_path: Path) -> None:
    pw = write(tmp_path / "pw", "\nsecond line\n")
    with pytest.raises(ConfigError, match=rf"password file {pw}: its first line is empty"):
        config.check(settings_in(tmp_path, password_file=pw))


def test_check_admins_present_but_unreadable(tmp_path: Path) -> None:
    (tmp_path / "admins.json").mkdir()
    with pytest.raises(ConfigError, match=r"admins file .*admins.json is a directory"):
        config.check(settings_in(tmp_path))


def test_check_history(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"history file .*/nodir/h.txt: directory .*/nodir "
                                          r"does not exist"):
        config.check(settings_in(tmp_path, history=tmp_path / "nodir" / "h.txt"))
    (tmp_path / "adir").mkdir()
    with pytest.raises(ConfigError, match=r"history file .*/adir is a directory"):
        config.check(settings_in(tmp_path, history=tmp_path / "adir"))


def test_check_history_read_only_directory(tmp_path: Path, read_only_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"history file .*/ro/h.txt is not writable"):
        config.check(settings_in(tmp_path, history=read_only_dir / "h.txt"))


def test_check_irc_port_clash(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--irc-port 7000 is the same as --port"):
        config.check(settings_in(tmp_path, port=7000, irc_port=7000))
