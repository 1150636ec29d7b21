"""The server's configuration: every setting ``geventchat serve`` takes, with its default.

One source of truth for defaults: :class:`Settings`. The command line takes its defaults
from ``Settings()``, and each ``serve`` flag is also a config-file key and an environment
variable, derived from the flag's argparse ``dest`` (which must be a ``Settings`` field)::

    --max-clients 5000   max_clients = 5000 (TOML)   GEVENTCHAT_MAX_CLIENTS=5000

Precedence: flag > environment > config file > default (:func:`resolve`). Values from the
file and the environment go through the same argparse ``type`` and ``choices`` as the flag,
so the same ranges are enforced everywhere. :func:`check` then verifies, before the server
starts, that every file it will need is usable. Errors are :class:`ConfigError`: one line
that names the key, flag or file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import tempfile
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geventchat.core.flood import BURST, RATE
from geventchat.core.presence import PRESENCE_SUMMARY
from geventchat.edges.outbuf import MAX_SENDQ
from geventchat.wire.native import MAX_LINE

#: Records kept per room history file by default: about 10 MB for a busy room (lines of
#: ~200 bytes). The file may grow to 1.5 times this before it is compacted atomically.
HISTORY_MAX = 50_000
#: Prefix of the environment variables: ``GEVENTCHAT_`` + the key in upper case.
ENV_PREFIX = "GEVENTCHAT_"
#: Environment variable naming a config file (what ``--config`` does).
ENV_CONFIG = ENV_PREFIX + "CONFIG"
#: Shortest password ``geventchat admin add`` accepts.
MIN_ADMIN_PASSWORD = 8


@dataclass
class Settings:
    """Everything ``geventchat serve`` can be told; defaults are the documented ones."""

    host: str = "0.0.0.0"  # all IPv4 interfaces: a chat server is meant to be reached
    port: int = 9999
    history: Path = Path("history.txt")
    admins: Path | None = Path("admins.json")  # None: nobody is an admin
    history_replay: int = 100
    max_clients: int = 1000
    max_sendq: int = MAX_SENDQ
    max_line: int = MAX_LINE
    register_timeout: float = 60.0
    idle_timeout: float = 0.0  # 0: off (TCP keepalive still finds vanished peers)
    max_per_ip: int = 0  # 0: no limit
    rate_limit: float = RATE  # 0: flood control off
    rate_burst: int = BURST
    fsync: str = "interval"
    history_max: int | None = HISTORY_MAX  # None (or 0 on input): unlimited
    password_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Rooms in use at once: each keeps a history file open, and each room anyone ever
    #: spoke in leaves a file, so a cap bounds both.
    max_rooms: int = 1000
    #: Rooms with more members than this tell a burst of joins and leaves to native
    #: clients as one line each way (``* 523 joined: alice, bob, carol and 520 more``);
    #: 0: one line per join, always.
    presence_summary: int = PRESENCE_SUMMARY
    irc_port: int | None = None
    http_port: int | None = None
    #: WebSocket origins allowed besides the page's own (``*``: any).
    allowed_origins: tuple[str, ...] = ()
    #: How long the shared port waits for a client's first bytes before it prompts: IRC
    #: and HTTP clients speak first, people wait for the prompt.
    sniff_timeout: float = 0.25
    server_name: str = field(default_factory=socket.gethostname)
    motd: Path | None = None
    log_level: str = "INFO"
    stop_timeout: float = 5.0
    #: Cluster mode (``--redis``): the Redis URL, this node's name (default: host name and
    #: port), and how long a dead node's users stay listed.
    redis_url: str | None = None
    node_name: str | None = None
    presence_ttl: float = 30.0

    def __post_init__(self) -> None:
        if self.history_max == 0:  # the command line's spelling of "unlimited"
            self.history_max = None


class ConfigError(Exception):
    """A setting or a file it names is unusable; the message is one line saying which."""


# -- value types shared by flags, the environment and the config file ----------------------


def _named(name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    parse.__name__ = name  # argparse names the type in its error messages
    return parse


def int_range(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[minimum, maximum]``."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
        if n < minimum or (maximum is not None and n > maximum):
            wanted = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {n}")
        return n

    return _named("int", parse)


def number(*, zero_ok: bool) -> Callable[[str], float]:
    """An argparse type: a finite number, > 0 (or >= 0 with ``zero_ok``)."""

    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not math.isfinite(x) or x < 0 or (x == 0 and not zero_ok):
            wanted = "0 or more" if zero_ok else "more than 0"
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
        return x

    return _named("float", parse)


positive = int_range(1)
non_negative = int_range(0)
port_number = int_range(0, 65535)


# -- keys, derived from the serve parser ---------------------------------------------------

#: serve options that are not settings: they say where the settings come from, or what to do.
NOT_KEYS = frozenset({"help", "config", "print_config"})


def setting_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's options that are settings, by key (their ``dest``)."""
    return {a.dest: a for a in parser._actions if a.dest not in NOT_KEYS and a.option_strings}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def _flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


_HINTS = typing.get_type_hints(Settings)
_TOML_KIND = {int: "an integer", float: "a number", str: "a string", Path: "a string (path)",
              bool: "a boolean (true or false)"}


def _base_type(key: str) -> type:
    hint = _HINTS.get(key, str)  # a flag that is not (yet) a field: take it as text
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _is_list(key: str) -> bool:
    """A setting that holds several values (``tuple[str, ...]``): a repeatable flag, a TOML
    array, a comma-separated environment variable."""
    return typing.get_origin(_HINTS.get(key)) is tuple


def _is_flag_switch(action: argparse.Action) -> bool:
    return action.nargs == 0  # store_true / store_false


def _convert(action: argparse.Action, text: str) -> Any:
    """``text`` as the flag would take it: ArgumentTypeError/ValueError if refused."""
    value = action.type(text) if action.type else text
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise argparse.ArgumentTypeError(f"must be one of {choices}, got {text!r}")
    return value


def _from_toml(key: str, action: argparse.Action, raw: Any) -> Any:
    if _is_list(key):
        if not (isinstance(raw, list) and all(isinstance(x, str) for x in raw)):
            raise ConfigError(f"{key}: expected an array of strings, got "
                              f"{type(raw).__name__} {raw!r}")
        return tuple(_convert(action, x) for x in raw)
    base = _base_type(key)
    if _is_flag_switch(action):
        ok = isinstance(raw, bool)
    elif base is float:
        ok = isinstance(raw, int | float) and not isinstance(raw, bool)
    elif base is int:
        ok = isinstance(raw, int) and not isinstance(raw, bool)
    else:  # str and Path
        ok = isinstance(raw, str)
    if not ok:
        kind = _TOML_KIND[bool if _is_flag_switch(action) else base]
        raise ConfigError(f"{key}: expected {kind}, got {type(raw).__name__} {raw!r}")
    if _is_flag_switch(action):
        return raw
    return _convert(action, str(raw))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _from_env(action: argparse.Action, text: str) -> Any:
    if _is_list(action.dest):
        return tuple(_convert(action, x.strip()) for x in text.split(",") if x.strip())
    if _is_flag_switch(action):
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return _convert(action, text)


def load_file(path: Path, actions: Mapping[str, argparse.Action]) -> dict[str, Any]:
    """The settings in TOML file ``path``, converted and checked; ConfigError if not."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, raw in data.items():
        action = actions.get(key)
        if action is None:
            close = key.replace("-", "_")
            hint = f" (did you mean {close}?)" if close in actions else ""
            raise ConfigError(f"config file {path}: unknown key {key!r}{hint}")
        try:
            values[key] = _from_toml(key, action, raw)
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigError(f"config file {path}: {key}: {exc}") from None
    return values


def load_env(environ: Mapping[str, str],
             actions: Mapping[str, argparse.Action]) -> tuple[dict[str, Any], list[str]]:
    """Settings from ``GEVENTCHAT_*`` variables (an empty one counts as unset), and the
    names of ``GEVENTCHAT_*`` variables that are not settings (for a warning)."""
    values: dict[str, Any] = {}
    by_env = {env_name(key): key for key in actions}
    unknown = []
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG:
            continue
        key = by_env.get(name)
        if key is None:
            unknown.append(name)
            continue
        if text == "":
            continue
        try:
            values[key] = _from_env(actions[key], text)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigError(f"environment variable {name}: {exc}") from None
    return values, unknown


@dataclass
class Resolved:
    """The effective settings, and where each key's value came from."""

    settings: Settings
    sources: dict[str, str]  # key -> "default" | "file PATH" | "env NAME" | "flag --x"
    warnings: list[str]


def resolve(flags: Mapping[str, Any], actions: Mapping[str, argparse.Action],
            config: Path | None, environ: Mapping[str, str]) -> Resolved:
    """Merge flag > environment > config file > ``Settings()`` defaults.

    ``flags`` holds only the flags given on the command line. ``config`` is ``--config``
    (when None, ``$GEVENTCHAT_CONFIG`` if set). ConfigError if any source is unusable.
    """
    if config is None and environ.get(ENV_CONFIG):
        config = Path(environ[ENV_CONFIG])
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if config is not None:
        layers.append((f"file {config}", load_file(config, actions)))
    env_values, unknown = load_env(environ, actions)
    layers.append(("env", env_values))
    layers.append(("flag", {k: tuple(v) if _is_list(k) else v
                            for k, v in flags.items() if k in actions}))
    values: dict[str, Any] = {}
    sources = {key: "default" for key in actions}
    for label, layer in layers:
        for key, value in layer.items():
            values[key] = value
            sources[key] = {"env": f"env {env_name(key)}",
                            "flag": f"flag {_flag(actions[key])}"}.get(label, label)
    warnings = [f"ignoring environment variable {name}: not a serve setting" for name in unknown]
    return Resolved(Settings(**values), sources, warnings)


# -- printing ------------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"password|passwd|secret|token|credential|key", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^/@\s]*(?=@)")
MASK = "********"


def mask(key: str, value: Any) -> Any:
    """``value`` fit to print: a secret-looking setting (by name) masked unless it is a path
    (a path says where the secret is, not what it is), a URL's password masked."""
    if isinstance(value, str):
        if _SECRET_NAME.search(key):
            return MASK
        return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, value)
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # JSON escapes are valid TOML ones


def to_toml(resolved: Resolved, keys: Iterable[str]) -> str:
    """The settings named by ``keys`` as a TOML config file (secrets masked), each line
    commented with where its value came from; a setting that is not set is commented out."""
    lines = ["# geventchat serve: effective configuration (flag > env > file > default)"]
    for key in keys:
        value = mask(key, getattr(resolved.settings, key))
        source = resolved.sources.get(key, "default")
        if key == "history_max" and value is None:
            lines.append(f"{key} = 0  # unlimited; {source}")
        elif value is None:
            lines.append(f"# {key} = (not set)  # {source}")
        else:
            lines.append(f"{key} = {_toml_value(value)}  # {source}")
    return "\n".join(lines) + "\n"


# -- start-up checks -----------------------------------------------------------------------


def _readable_file(what: str, path: Path) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None


def _writable_history(path: Path) -> None:
    directory = path.parent
    if path.is_dir():
        raise ConfigError(f"history file {path} is a directory, not a file")
    if not directory.is_dir():
        why = "is not a directory" if directory.exists() else "does not exist"
        raise ConfigError(f"history file {path}: directory {directory} {why}")
    try:
        # Room files and compaction's temporary files are created beside it.
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".geventchat-check-"):
            pass
        if path.exists():  # a new file is created later, by the history, mode 0600
            with open(path, "ab"):
                pass
    except OSError as exc:
        raise ConfigError(f"history file {path} is not writable: "
                          f"{exc.strerror or exc}") from None


def check(settings: Settings) -> None:
    """Refuse, before anything listens, settings that would fail later: each file the server
    needs must be usable, and related settings must agree. ConfigError naming the file."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if settings.password_file is not None:
        _readable_file("password file", settings.password_file)
        first = settings.password_file.read_bytes().splitlines()[:1]
        if not first or not first[0]:
            raise ConfigError(f"password file {settings.password_file}: its first line "
                              "is empty")
    if settings.tls_cert is not None:
        _readable_file("TLS certificate", settings.tls_cert)
    if settings.tls_key is not None:
        _readable_file("TLS key", settings.tls_key)
    if settings.motd is not None:
        _readable_file("motd file", settings.motd)
    if settings.admins is not None and os.path.lexists(settings.admins):
        _readable_file("admins file", settings.admins)  # absent is fine: no admins
    _writable_history(settings.history)
    if settings.irc_port and settings.irc_port == settings.port:
        raise ConfigError(f"--irc-port {settings.irc_port} is the same as --port")
