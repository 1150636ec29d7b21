"""The ``geventchat`` command: ``serve``, ``connect`` and ``admin``.

Argument parsing only; each subcommand hands off to the module that owns the work.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import resource
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from geventchat import __version__

DEFAULT_PORT = 9999
DEFAULT_ADMINS = Path("admins.json")


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(value: str) -> int:
        n = int(value)
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {n}")
        return n

    parse.__name__ = "int"  # argparse names the type in its error messages
    return parse


_positive = _at_least(1)
_non_negative = _at_least(0)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the chat server",
                       description="Run the chat server until SIGINT, SIGTERM or /shutdown.")
    p.add_argument("--host", default="0.0.0.0",
                   help="address to listen on (default: all interfaces)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="TCP port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--history", type=Path, default=Path("history.txt"),
                   help="history file (default: %(default)s)")
    p.add_argument("--admins", type=Path, default=DEFAULT_ADMINS,
                   help="admin accounts file (default: %(default)s)")
    p.add_argument("--history-replay", type=_non_negative, default=100, metavar="N",
                   help="history lines shown to newcomers (default: %(default)s)")
    p.add_argument("--max-clients", type=_positive, default=1000, metavar="N",
                   help="connections served at once (default: %(default)s)")
    p.add_argument("--max-sendq", type=_positive, default=1 << 20, metavar="BYTES",
                   help="output queued for a client that does not read before it is "
                        "disconnected (default: %(default)s)")
    p.add_argument("--max-line", type=_positive, default=4096, metavar="BYTES",
                   help="longest accepted line (default: %(default)s)")
    p.add_argument("--register-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="close connections that send no name within this time "
                        "(default: %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=0.0, metavar="SECONDS",
                   help="close connections silent for this long; 0 = never (default)")
    p.add_argument("--max-per-ip", type=_non_negative, default=0, metavar="N",
                   help="connections allowed from one address; 0 = no limit (default)")
    p.add_argument("--rate-limit", type=float, default=3.0, metavar="LINES_PER_SEC",
                   help="flood control: sustained lines/s per connection; 0 turns it off "
                        "(default: %(default)s)")
    p.add_argument("--rate-burst", type=_positive, default=10, metavar="N",
                   help="flood control: lines allowed in a burst (default: %(default)s)")
    p.add_argument("--fsync", choices=("always", "interval", "never"), default="interval",
                   help="when history appends are forced to disk (default: %(default)s)")
    p.add_argument("--history-max", type=_positive, default=None, metavar="N",
                   help="keep at most about N records per history file, compacting "
                        "atomically (default: unlimited)")
    p.add_argument("--password-file", type=Path, metavar="FILE",
                   help="require the password on this file's first line before the name")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve TLS with this "
                   "certificate chain (PEM); needs --tls-key")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="private key for --tls-cert")
    p.add_argument("--irc-port", type=int, default=None, metavar="PORT",
                   help="also listen for IRC alone on this port, e.g. 6667 (IRC clients can "
                        "use --port too: the protocol is detected from the first line)")
    p.add_argument("--server-name", default=socket.gethostname(), metavar="NAME",
                   help="the server name IRC clients see (default: this host's name)")
    p.add_argument("--motd", type=Path, metavar="FILE",
                   help="message of the day shown to IRC clients (default: none, 422)")
    p.add_argument("--redis", metavar="URL", default=os.environ.get("GEVENTCHAT_REDIS_URL"),
                   help="run as one node of a cluster sharing this Redis (or Valkey), e.g. "
                        "redis://HOST:6379/0, rediss://:PASSWORD@HOST:6380/0 (default: "
                        "$GEVENTCHAT_REDIS_URL; unset: one process, file history)")
    p.add_argument("--node-name", metavar="NAME",
                   help="this node's name in logs and admin output (default: host name "
                        "and port)")
    p.add_argument("--presence-ttl", type=float, default=30.0, metavar="SECONDS",
                   help="with --redis: a node that stops (kill -9, power loss) has its users "
                        "announced gone within this time (default: %(default)s)")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="log verbosity on stderr (default: %(default)s)")


def _add_connect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("connect", help="terminal client",
                       description="Chat from this terminal (or a pipe).")
    p.add_argument("host", nargs="?", default="127.0.0.1",
                   help="server address (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="server port (default: %(default)s)")
    p.add_argument("--name", help="your name (asked for when not given)")


def _add_admin(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("admin", help="manage admin accounts",
                       description="Manage admin accounts (passwords are stored as salted "
                                   "scrypt hashes, file mode 0600).")
    actions = p.add_subparsers(dest="action", required=True)
    for action, text in (("add", "add an admin or change its password"),
                         ("remove", "remove an admin"), ("list", "list admins")):
        a = actions.add_parser(action, help=text)
        if action != "list":
            a.add_argument("name")
        a.add_argument("--admins", type=Path, default=DEFAULT_ADMINS,
                       help="admin accounts file (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geventchat",
                                     description="A self-hosted terminal chat server.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_connect(sub)
    _add_admin(sub)
    return parser


#: Descriptors kept back from --max-clients: listeners, history files, logs, the threadpool.
FD_RESERVE = 64


def _fit_max_clients(wanted: int) -> int:
    """Each client is a file descriptor: lift the soft limit to the hard one, and lower
    --max-clients to what it allows. Past the limit, accept() itself fails, and clients
    would hang in the backlog instead of hearing ``! server full``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    # The pool keeps a few spare slots over max_clients to answer "server full" itself.
    fits = max(1, soft - FD_RESERVE - 16)
    if wanted > fits:
        logging.getLogger("geventchat").warning(
            "--max-clients %d lowered to %d: the open-file limit is %d (raise it with "
            "ulimit -n)", wanted, fits, soft)
        return fits
    return wanted


def _serve(args: argparse.Namespace) -> int:
    from geventchat.server import Settings, serve
    from geventchat.store.admins import AdminFileError

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        host=args.host, port=args.port, history=args.history, admins=args.admins,
        history_replay=args.history_replay, max_clients=_fit_max_clients(args.max_clients),
        max_sendq=args.max_sendq, max_line=args.max_line,
        register_timeout=args.register_timeout, idle_timeout=args.idle_timeout,
        max_per_ip=args.max_per_ip, rate_limit=args.rate_limit, rate_burst=args.rate_burst,
        fsync=args.fsync, history_max=args.history_max, password_file=args.password_file,
        tls_cert=args.tls_cert, tls_key=args.tls_key, irc_port=args.irc_port,
        server_name=args.server_name, motd=args.motd, redis_url=args.redis or None,
        node_name=args.node_name, presence_ttl=args.presence_ttl,
    )
    if bool(args.tls_cert) != bool(args.tls_key):
        print("geventchat: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        return serve(settings)
    except (AdminFileError, ValueError) as exc:
        print(f"geventchat: {exc}", file=sys.stderr)
        return 2
    except ssl.SSLError as exc:
        print(f"geventchat: TLS certificate or key unusable: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"geventchat: cannot listen on {args.host}:{args.port}: {exc.strerror}",
              file=sys.stderr)
        return 2


def _read_new_password(name: str) -> str:
    """Twice with hidden input on a terminal; one line from stdin otherwise (scripts)."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise ValueError("passwords do not match")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _admin(args: argparse.Namespace) -> int:
    from geventchat.core.errors import ChatError
    from geventchat.core.text import check_name
    from geventchat.store.admins import AdminFileError, AdminStore

    try:
        store = AdminStore(args.admins)
        if args.action == "list":
            for name in store.names():
                print(name)
        elif args.action == "add":
            name = check_name(args.name)
            store.add(name, _read_new_password(name))
            print(f"admin {args.name} saved in {args.admins}")
        elif not store.remove(args.name):
            print(f"geventchat: no admin named {args.name}", file=sys.stderr)
            return 1
        else:
            print(f"admin {args.name} removed")
    except (AdminFileError, ChatError, ValueError) as exc:
        print(f"geventchat: {exc}", file=sys.stderr)
        return 2
    return 0


def _connect(args: argparse.Namespace) -> int:
    from geventchat.client import run

    return run(args.host, args.port, args.name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"serve": _serve, "admin": _admin, "connect": _connect}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
