"""The ``geventchat`` command: ``serve``, ``connect`` and ``admin``.

Argument parsing only; each subcommand hands off to the module that owns the work.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import ssl
import sys
from pathlib import Path

from geventchat import __version__
from geventchat.config import (
    MIN_ADMIN_PASSWORD,
    ConfigError,
    Settings,
    non_negative,
    number,
    port_number,
    positive,
)

#: The defaults, from their one source of truth (kept as names for ``connect``/``admin``).
DEFAULTS = Settings()
DEFAULT_PORT = DEFAULTS.port
DEFAULT_ADMINS = DEFAULTS.admins
#: ``geventchat.client.RECONNECT_TIMEOUT``, not imported here: the client pulls in
#: prompt_toolkit, which ``serve`` and ``admin`` don't need (a test keeps them equal).
RECONNECT_TIMEOUT = 600.0


def _opt(p: argparse.ArgumentParser, flag: str, help: str, **kwargs) -> None:
    """A serve option whose default is ``Settings()``'s field of the same name (shown where
    ``help`` says ``%(default)s``). The parser itself records no default (SUPPRESS), so
    :func:`_serve` knows which flags were given: they outrank the environment and file."""
    dest = kwargs.setdefault("dest", flag[2:].replace("-", "_"))
    shown = getattr(DEFAULTS, dest)
    shown = 0 if dest == "history_max" and shown is None else shown
    p.add_argument(flag, default=argparse.SUPPRESS,
                   help=help.replace("%(default)s", str(shown).replace("%", "%%")), **kwargs)


def _add_serve(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve", help="run the chat server",
        description="Run the chat server until SIGINT, SIGTERM or /shutdown.",
        epilog="Every option is also a config-file key and an environment variable: "
               "--max-clients 5000, max_clients = 5000 in the --config file, "
               "GEVENTCHAT_MAX_CLIENTS=5000. A flag beats the environment, which beats the "
               "file, which beats the default.")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="read settings from this TOML file (default: $GEVENTCHAT_CONFIG)")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective configuration as TOML (secrets masked) and exit")
    _opt(p, "--host", "address to listen on (default: %(default)s, all interfaces)")
    _opt(p, "--port", type=port_number, help="TCP port (default: %(default)s; 0 picks a free one)")
    _opt(p, "--history", type=Path, metavar="PATH",
         help="lobby history file; room dev uses history.dev.txt beside it (default: "
              "%(default)s, in the working directory)")
    _opt(p, "--admins", type=Path, metavar="PATH",
         help="admin accounts file; absent means no admins (default: %(default)s)")
    _opt(p, "--history-replay", type=non_negative, metavar="N",
         help="history lines shown to newcomers (default: %(default)s)")
    _opt(p, "--max-clients", type=positive, metavar="N",
         help="connections served at once (default: %(default)s)")
    _opt(p, "--max-sendq", type=positive, metavar="BYTES",
         help="output queued for a client that does not read before it is disconnected "
              "(default: %(default)s)")
    _opt(p, "--max-line", type=positive, metavar="BYTES",
         help="longest accepted line (default: %(default)s)")
    _opt(p, "--register-timeout", type=number(zero_ok=False), metavar="SECONDS",
         help="close connections that send no name within this time (default: %(default)s)")
    _opt(p, "--idle-timeout", type=number(zero_ok=True), metavar="SECONDS",
         help="close connections silent for this long; 0 = never (default: %(default)s)")
    _opt(p, "--max-per-ip", type=non_negative, metavar="N",
         help="connections allowed from one address; 0 = no limit (default: %(default)s)")
    _opt(p, "--rate-limit", type=number(zero_ok=True), metavar="LINES_PER_SEC",
         help="flood control: sustained lines/s per connection; 0 turns it off "
              "(default: %(default)s)")
    _opt(p, "--rate-burst", type=positive, metavar="N",
         help="flood control: lines allowed in a burst (default: %(default)s)")
    _opt(p, "--fsync", choices=("always", "interval", "never"),
         help="when history appends are forced to disk (default: %(default)s)")
    _opt(p, "--history-max", type=non_negative, metavar="N",
         help="keep about N records per history file, compacting atomically once it holds "
              "1.5 N; 0 = unlimited (default: %(default)s, about 10 MB for a busy room)")
    _opt(p, "--password-file", type=Path, metavar="FILE",
         help="require the password on this file's first line before the name")
    _opt(p, "--tls-cert", type=Path, metavar="FILE",
         help="serve TLS with this certificate chain (PEM); needs --tls-key")
    _opt(p, "--tls-key", type=Path, metavar="FILE", help="private key for --tls-cert")
    _opt(p, "--max-rooms", type=non_negative, metavar="N",
         help="rooms in use at once; each keeps a history file open (default: %(default)s; "
              "0 = no limit)")
    _opt(p, "--presence-summary", type=non_negative, metavar="N",
         help="in rooms of more than N members, native clients read a burst of joins or "
              "leaves as one line (* 523 joined: alice, bob, carol and 520 more); 0 = one "
              "line per join, always (default: %(default)s)")
    _opt(p, "--sniff-timeout", type=number(zero_ok=True), metavar="SECONDS",
         help="how long the shared port waits for a client's first bytes before it sends "
              "the native prompt: IRC and HTTP clients speak first (default: %(default)s)")
    _opt(p, "--irc-port", type=port_number, metavar="PORT",
         help="also listen for IRC alone on this port, e.g. 6667 (IRC clients can use --port "
              "too: the protocol is detected from the first line)")
    _opt(p, "--http-port", type=port_number, metavar="PORT",
         help="also serve HTTP alone (web client, /healthz, /metrics) on this port "
              "(browsers can use --port too: HTTP is detected)")
    _opt(p, "--allowed-origin", dest="allowed_origins", action="append", metavar="ORIGIN",
         help="let web pages from ORIGIN (e.g. https://chat.example.org, or *) open the "
              "WebSocket; repeatable (default: same origin only)")
    _opt(p, "--redis", dest="redis_url", metavar="URL",
         help="run as one node of a cluster sharing this Redis (or Valkey), e.g. "
              "redis://HOST:6379/0, rediss://:PASSWORD@HOST:6380/0 (also "
              "$GEVENTCHAT_REDIS_URL; unset: one process, file history)")
    _opt(p, "--node-name", metavar="NAME",
         help="this node's name in logs and admin output (default: host name and port)")
    _opt(p, "--presence-ttl", type=number(zero_ok=False), metavar="SECONDS",
         help="with --redis: a node that stops (kill -9, power loss) has its users announced "
              "gone within this time (default: %(default)s)")
    _opt(p, "--server-name", metavar="NAME",
         help="the server name IRC clients see (default: this host's name)")
    _opt(p, "--motd", type=Path, metavar="FILE",
         help="message of the day shown to IRC clients (default: none, 422)")
    _opt(p, "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
         help="log verbosity on stderr (default: %(default)s)")
    return p


def _add_connect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("connect", help="terminal client",
                       description="Chat from this terminal (or a pipe).",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
off a terminal (stdin a pipe or a file), stdin lines are chat: passwords come only
from the files or variables below, the name from --name (without it, the first line
is the name, once), and a refused name or a missing or wrong password ends the
client (exit 4 or 5) instead of asking again. On a terminal, a given password
answers its first prompt and you are asked if it is refused.
Terminal output starts each line with the local time (HH:MM): when the server stored
it (history, missed lines), else when it arrived; pipe output has none.

reconnecting: when the connection drops unexpectedly after you joined, the client says
so ("* connection lost; reconnecting in 1 s..."), retries after 1, 2, 4, 8, 16, 30,
30... s, logs in again with the same name (passwords kept in memory only, asked again
only if refused), goes back to your room and shows exactly the lines said meanwhile,
each once, or the server's notice when some could not be recovered. What you type
meanwhile is sent once reconnected (up to 1000 lines are held; in a pipe the client's
own lines go to stderr). A kick, an idle-timeout close, a shutdown notice (unless
--reconnect-after-shutdown) or --no-reconnect ends the client instead; after
--reconnect-timeout it gives up with exit 1. /history [N] shows
older lines of the room; Page Up shows what the terminal's own scrollback holds.

environment:
  GEVENTCHAT_SERVER_PASSWORD  server password, when --password-file is not given
  GEVENTCHAT_ADMIN_PASSWORD   admin password, when --admin-password-file is not given
  NO_COLOR                    no colour

exit codes:
  0  you left (/quit, exit, Ctrl-D, Ctrl-C, end of piped input)
  1  connection lost (with --no-reconnect, or reconnecting gave up), refused, or not
     set up (TLS errors included)
  2  the server shut down
  3  you were kicked
  4  name refused (off a terminal)
  5  a password is needed and was not given, or it was wrong (off a terminal),
     or a password file can't be read""")
    p.add_argument("host", nargs="?", default="127.0.0.1",
                   help="server address (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="server port (default: %(default)s)")
    p.add_argument("--name", help="your name (asked for when not given)")
    p.add_argument("--tls", action="store_true",
                   help="connect with TLS, verifying the server's certificate against the "
                        "system CAs and its host name")
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--tls-ca", type=Path, metavar="FILE",
                       help="trust this CA or certificate file (PEM) instead of the system "
                            "CAs; implies --tls")
    trust.add_argument("--tls-insecure", action="store_true",
                       help="TLS without any certificate check (warns on every start); "
                            "implies --tls")
    p.add_argument("--no-time", action="store_true",
                   help="don't show the local time before each line on a terminal")
    p.add_argument("--no-reconnect", action="store_true",
                   help="exit (1) when the connection drops instead of reconnecting")
    p.add_argument("--reconnect-timeout", type=number(zero_ok=True), default=RECONNECT_TIMEOUT,
                   metavar="SECONDS",
                   help="give up reconnecting (exit 1) this long after a drop; 0 = never "
                        "(default: %(default)g)")
    p.add_argument("--reconnect-after-shutdown", action="store_true",
                   help="reconnect after a '* server shutting down' notice too (a "
                        "restart) instead of exiting 2")
    p.add_argument("--password-file", type=Path, metavar="FILE",
                   help="server password: this file's first line "
                        "(else $GEVENTCHAT_SERVER_PASSWORD)")
    p.add_argument("--admin-password-file", type=Path, metavar="FILE",
                   help="admin password for --name: this file's first line "
                        "(else $GEVENTCHAT_ADMIN_PASSWORD)")


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
        a.add_argument("--admins", type=Path, default=DEFAULT_ADMINS, metavar="PATH",
                       help="admin accounts file (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geventchat",
                                     description="A self-hosted terminal chat server.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.set_defaults(serve_parser=_add_serve(sub))
    _add_connect(sub)
    _add_admin(sub)
    return parser


#: Descriptors kept back from --max-clients: listeners, history files, logs, the threadpool.
FD_RESERVE = 64


def _fit_max_clients(wanted: int) -> int:
    """Each client is a file descriptor: lift the soft limit to the hard one, and lower
    --max-clients to what it allows. Past the limit, accept() itself fails, and clients
    would hang in the backlog instead of hearing ``! server full``."""
    try:
        import resource  # POSIX only: the client, which imports this module, runs on Windows
    except ImportError:
        return wanted
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
    import os

    from geventchat import config

    actions = config.setting_actions(args.serve_parser)
    try:
        resolved = config.resolve(vars(args), actions, args.config, os.environ)
    except ConfigError as exc:
        print(f"geventchat: {exc}", file=sys.stderr)
        return 2
    for warning in resolved.warnings:
        print(f"geventchat: warning: {warning}", file=sys.stderr)
    settings = resolved.settings
    if args.print_config:
        sys.stdout.write(config.to_toml(resolved, actions))
        return 0
    try:
        config.check(settings)
    except ConfigError as exc:
        print(f"geventchat: {exc}", file=sys.stderr)
        return 2

    import gevent

    # A server spawns a greenlet per connection: gevent's default of recording where each
    # was spawned (a chain of frame records per greenlet, for debugging) is memory every
    # connection pays and nobody reads. The entry point decides; the library never does.
    if "GEVENT_TRACK_GREENLET_TREE" not in os.environ:
        gevent.config.track_greenlet_tree = False

    from geventchat.server import ListenError, serve
    from geventchat.store.admins import AdminFileError
    from geventchat.store.history import HistoryLockedError

    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.max_clients = _fit_max_clients(settings.max_clients)
    from geventchat import collector

    collector.tune()  # full collections on a clock, not during a storm of arrivals
    try:
        return serve(settings)
    except (AdminFileError, ValueError) as exc:
        print(f"geventchat: {exc}", file=sys.stderr)
        return 2
    except ssl.SSLError as exc:
        print(f"geventchat: TLS certificate or key unusable: {exc}", file=sys.stderr)
        return 2
    except (ListenError, HistoryLockedError) as exc:
        print(f"geventchat: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        if exc.filename:
            print(f"geventchat: {exc.filename}: {exc.strerror}", file=sys.stderr)
        else:
            print(f"geventchat: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
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
            password = _read_new_password(name)
            if len(password) < MIN_ADMIN_PASSWORD:
                print(f"geventchat: password too short: at least {MIN_ADMIN_PASSWORD} "
                      "characters", file=sys.stderr)
                return 2
            store.add(name, password)
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
    from geventchat.client import (
        ADMIN_PASSWORD_ENV,
        EXIT_PASSWORD,
        SERVER_PASSWORD_ENV,
        Secrets,
        TlsOptions,
        read_secret,
        run,
    )

    tls = None
    if args.tls or args.tls_ca or args.tls_insecure:
        tls = TlsOptions(ca=args.tls_ca, insecure=args.tls_insecure)
    try:
        secrets = Secrets(server=read_secret(args.password_file, SERVER_PASSWORD_ENV),
                          admin=read_secret(args.admin_password_file, ADMIN_PASSWORD_ENV))
    except (OSError, UnicodeDecodeError) as exc:
        print(f"geventchat: cannot read the password file: {exc}", file=sys.stderr)
        return EXIT_PASSWORD
    return run(args.host, args.port, args.name, tls=tls, show_time=not args.no_time,
               secrets=secrets, reconnect=not args.no_reconnect,
               reconnect_after_shutdown=args.reconnect_after_shutdown,
               reconnect_timeout=args.reconnect_timeout)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"serve": _serve, "admin": _admin, "connect": _connect}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
