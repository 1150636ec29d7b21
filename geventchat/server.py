"""The server program: listeners, life cycle, and the composition of the layers.

:class:`ChatServer` opens the listening sockets (the shared port, where the first bytes
tell native, IRC and HTTP clients apart, and the single-protocol ports), admits each
client through one :class:`~geventchat.edges.admission.Admission`, wraps TLS, and hands
the socket to the edge that speaks its protocol. It owns the life cycle: start, SIGHUP
reload, and the graceful stop (notice to everyone, histories flushed against one
deadline, connections drained and closed, ``server.stop(timeout)``) on ``/shutdown``,
SIGINT or SIGTERM. :func:`build_hub` composes the embedded defaults.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import ssl
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import gevent
import gevent.ssl
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from geventchat.config import Settings
from geventchat.core import events as ev
from geventchat.core.hub import LOBBY_NAME, Hub
from geventchat.core.text import name_key
from geventchat.edges import sniff
from geventchat.edges.admission import Admission
from geventchat.edges.base import DRAIN_TIMEOUT, ClientConnection, ConnectionSet
from geventchat.edges.http import plain_response, serve_http
from geventchat.edges.irc import IrcConnection, network_for
from geventchat.edges.native import NativeConnection
from geventchat.edges.outbuf import Output
from geventchat.reach import reach_lines
from geventchat.store.history import CLOSE_TIMEOUT
from geventchat.wire.native import NATIVE

log = logging.getLogger(__name__)

#: Seconds between sweeps for registration and idle timeouts: one greenlet checks every
#: connection, instead of a timer each (50,000 idle clients must stay cheap).
SWEEP_INTERVAL = 1.0

#: Pending connections the kernel may hold: a crowd reconnecting after a restart must not
#: overflow it (each overflow costs a client a 1 s SYN retry). The kernel caps it at somaxconn.
LISTEN_BACKLOG = 4096
#: Connections accepted per loop pass (gevent's ``max_accept``, 100 by default). Each one
#: registers in that same pass (sniff, name, join burst: about 0.2 ms), so 100 at once held
#: the loop for 20-30 ms at a time during a storm and everyone else's lines waited behind
#: them. Measured, 10,000 joining with a lobby chatter (bench/loadtest.py --idle 10000
#: --bystander --eager-name, 3 runs each): 25 gave the chatter's echo p50 5 ms and p99
#: 40-76 ms, 100 gave 40-60 ms and 120-178 ms; the storm took no longer.
ACCEPT_BATCH = 25
#: TCP keepalive: first probe after 5 idle minutes, then every 30 s, give up after 4 misses.
KEEPALIVE = (300, 30, 4)
#: Linux copies a listening socket's TCP options (no-delay, keepalive and its timers) to
#: every socket it accepts: set once on the listener, they cost a storm of 10,000 clients
#: no syscalls instead of 50,000 ``setsockopt`` calls (about 0.15 s). Elsewhere each
#: accepted socket is tuned on its own.
INHERITS_OPTIONS = sys.platform.startswith("linux")


class HandlerGreenlet(gevent.Greenlet):
    """The greenlet that serves one connection. gevent records where each greenlet was
    spawned, for debugging (``gevent.util.format_run_info``); for these it is always the
    same accept path, so it is not recorded: four frame records, 256 bytes, per client."""

    spawning_stack_limit = 0


class ChatServer:
    """A configured server: listeners, hub, admission, and the stop sequence.

    Listeners are a table (port -> which protocols it speaks); every accepted socket goes
    through the same admission, TLS handshake and first-byte sniffing, then to the edge
    that speaks its protocol.
    """

    def __init__(self, settings: Settings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        hub.on_shutdown = self.stop
        self.connections = ConnectionSet()  # the live ClientConnections
        self.admission = Admission(hub.admins, settings.password_file, settings.max_clients,
                                   settings.max_per_ip)
        hub.server_name = network_for(self).name  # the host users are shown with (bans)
        # A few spare greenlets over max_clients so a full server can still answer
        # "server full" instead of silently not accepting (a full Pool stops accepting).
        self._pool = Pool(settings.max_clients + 16, greenlet_class=HandlerGreenlet)
        # TLS is wrapped by hand in the handler (not by StreamServer) so the handshake gets
        # the registration deadline.
        self._tls = _tls_context(settings)
        self._listeners: list[tuple[StreamServer, str]] = []
        self._listen(settings.port, "shared")
        if settings.irc_port is not None:
            self._listen(settings.irc_port, sniff.IRC)
        if settings.http_port is not None:
            self._listen(settings.http_port, sniff.HTTP)
        self._stopped = Event()
        self._stop_reason: str | None = None
        self._sweeper: gevent.Greenlet | None = None

    def _listen(self, port: int, kind: str) -> None:
        def handle(sock: socket.socket, addr: tuple) -> None:
            self._serve(sock, addr, kind)

        server = StreamServer((self.settings.host, port), handle, spawn=self._pool,
                              backlog=LISTEN_BACKLOG)
        server.max_accept = ACCEPT_BATCH
        self._listeners.append((server, kind))

    @property
    def address(self) -> tuple[str, int]:
        return self._listeners[0][0].address[:2]

    @property
    def irc_address(self) -> tuple[str, int] | None:
        for server, kind in self._listeners:
            if kind == sniff.IRC:
                return server.address[:2]
        return None

    def start(self) -> None:
        """Load the lobby (a history locked by another server stops us here), then open
        every listener (all or none: the error names the port that failed)."""
        _create_private(self.settings.history)  # so that it can be locked from the start
        self.hub.broker.prepare(self.hub.lobby)
        for server, kind in self._listeners:
            try:
                server.start()
            except OSError as exc:
                for other, _ in self._listeners:
                    other.close()
                port = server.server_port if hasattr(server, "server_port") else "?"
                raise ListenError(f"cannot listen on {self.settings.host}:{port} "
                                  f"({'IRC' if kind == sniff.IRC else 'chat'} port): "
                                  f"{exc.strerror or exc}") from exc
        if INHERITS_OPTIONS:
            for server, _ in self._listeners:
                _tune(server.socket)  # every accepted socket inherits these (no syscalls)
        tls = " (TLS)" if self.settings.tls_cert else ""
        for server, kind in self._listeners:
            host, port = server.address[:2]
            what = "geventchat" if kind == "shared" else kind.upper()
            log.info("%s listening on %s:%d%s", what, host, port, tls)
        self._sweeper = self._guarded(self._sweep_loop, "sweeper")

    def _tell_how_to_reach(self) -> None:
        """Where the first chat began: its users were told to run ``ip a`` and edit the
        client. Say each address the server can be reached on, as a command to paste."""
        host, port = self.address
        for line in reach_lines(host, port, bool(self.settings.tls_cert)):
            log.info("reach it with: %s", line)

    def _guarded(self, body: Callable[[], None], name: str) -> gevent.Greenlet:
        """Run a long-lived loop that must not die silently: an exception is logged with
        its traceback and the loop is started again (after a pause, so a loop that fails
        at once can't spin)."""
        def run() -> None:
            while True:
                try:
                    body()
                    return
                except gevent.GreenletExit:
                    raise
                except Exception:
                    log.exception("%s loop failed; restarting it", name)
                    gevent.sleep(1.0)

        return gevent.spawn(run)

    def serve_forever(self) -> None:
        """Start, wait for a stop request (signal or /shutdown), then stop gracefully."""
        # Handlers first: a SIGTERM right after "listening" must still stop gracefully.
        handlers = [gevent.signal_handler(sig, self.stop, "server stopped")
                    for sig in (signal.SIGINT, signal.SIGTERM)]
        if hasattr(signal, "SIGHUP"):
            handlers.append(gevent.signal_handler(signal.SIGHUP, self.reload))
        if hasattr(signal, "SIGUSR1"):
            handlers.append(gevent.signal_handler(signal.SIGUSR1, self.log_stats))
        try:
            self.start()
            self._tell_how_to_reach()
            self._stopped.wait()
            self._shutdown()
        finally:
            for h in handlers:
                h.cancel()

    def stop(self, reason: str = "server stopped") -> None:
        """Request a graceful stop; safe to call from a signal handler or a command."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self.hub.stopping = True
            self.admission.stopping = True
            self._stopped.set()

    def reload(self) -> None:
        """SIGHUP: re-read the admin accounts and the TLS certificate (renewal without a
        restart); the MOTD is read at each use. Runs in its own greenlet."""
        gevent.spawn(self._reload)

    def _reload(self) -> None:
        done = []
        try:
            self.hub.reload_admins()
            done.append("admin accounts")
        except Exception as exc:
            log.error("reload: admin accounts not reloaded: %s", exc)
        if self.settings.tls_cert:
            try:
                self._tls = _tls_context(self.settings)
                done.append("TLS certificate")
            except (OSError, ssl.SSLError) as exc:
                log.error("reload: TLS certificate not reloaded (keeping the old one): %s",
                          exc)
        if self.settings.motd:
            network_for(self).reload_motd()
            done.append("MOTD")
        log.info("reloaded: %s", ", ".join(done) or "nothing")

    def stats(self) -> dict[str, int]:
        """Counts for leak hunting (the soak benchmark reads them): connections, users,
        rooms, handler greenlets, live (not finished) greenlets (found through the garbage
        collector: a scan of all objects, tens of ms at 20,000 clients, so on request only;
        finished ones waiting for the collector are not counted)
        and open descriptors (Linux)."""
        from greenlet import greenlet

        try:
            fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            fds = -1
        objects = gc.get_objects()
        return {
            "connections": len(self.connections),
            "users": len(self.hub.users),
            "rooms": len(self.hub.rooms),
            "handlers": len(self._pool),
            "greenlets": sum(1 for o in objects if isinstance(o, greenlet) and not o.dead),
            "fds": fds,
            # A leak of Python objects shows here; RSS growing while these stay flat is
            # the allocator (fragmentation), not the chat.
            "objects": len(objects),
            "blocks": sys.getallocatedblocks(),
        }

    def log_stats(self) -> None:
        """SIGUSR1: log :meth:`stats` as one ``stats:`` line (``key=value`` pairs)."""
        counts = self.stats()
        log.info("stats: %s", " ".join(f"{k}={v}" for k, v in counts.items()))

    # --- connections -------------------------------------------------------------------

    def _serve(self, sock: socket.socket, addr: tuple, kind: str) -> None:
        if not INHERITS_OPTIONS:
            _tune(sock)
        if self._tls is None:
            self._serve_plain(sock, addr, kind)
            return
        tls = self._handshake(sock, addr)
        if tls is None:
            return
        try:
            self._serve_plain(tls, addr, kind)
        finally:
            tls.close()  # wrapping detached the accepted socket: StreamServer can't close it

    def _serve_plain(self, sock: socket.socket, addr: tuple, kind: str) -> None:
        ip = addr[0]
        refusal = self.admission.refusal(ip)
        if refusal is not None:
            log.warning("refused %s:%s: %s", ip, addr[1], refusal)
            _refuse(sock, refusal, kind)
            return
        self.admission.enter(ip)
        try:
            first = b""
            if kind == "shared":
                kind, first = sniff.sniff(sock, self.settings.sniff_timeout)
            self._run_edge(sock, addr, kind, first)
        finally:
            self.admission.leave(ip)

    def _run_edge(self, sock: socket.socket, addr: tuple, kind: str, first: bytes) -> None:
        if kind == sniff.HTTP:
            serve_http(self, sock, addr, first)
            return
        if kind == sniff.IRC:
            conn: ClientConnection = IrcConnection(self, sock, addr)
        else:
            conn = NativeConnection(self, sock, addr)
        self.connections.add(conn)
        try:
            conn.run(first)
            if isinstance(conn, NativeConnection) and conn.irc_lines is not None:
                # A slow IRC client, recognised by its first line after the prompt.
                self.connections.discard(conn)
                irc = IrcConnection(self, sock, addr, out=conn.out)
                self.connections.add(irc)
                irc.run_lines(conn.irc_lines)
        finally:
            self.connections.discard(conn)

    def _handshake(self, sock: socket.socket, addr: tuple) -> socket.socket | None:
        """TLS handshake in this greenlet, bounded by the registration timeout, so a peer
        that connects and says nothing can't hold a slot forever."""
        tls = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            gevent.with_timeout(self.settings.register_timeout, tls.do_handshake)
        except (gevent.Timeout, OSError) as exc:  # ssl.SSLError is an OSError
            log.info("TLS handshake with %s:%s failed: %s", addr[0], addr[1],
                     "timeout" if isinstance(exc, gevent.Timeout) else exc)
            tls.close()
            return None
        return tls

    def _sweep_loop(self) -> None:
        while True:
            gevent.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in list(self.connections):
                try:
                    conn.expire(now)
                except Exception:  # one connection's bug must not end the sweeps
                    log.exception("sweeping connection %s failed", conn.addr)
            self.admission.expire(now)

    # --- shutdown ----------------------------------------------------------------------

    def _shutdown(self) -> None:
        reason = self._stop_reason or "server stopped"
        log.info("shutting down: %s", reason)
        for server, _ in self._listeners:
            server.close()  # stop accepting at once
        if self._sweeper is not None:
            self._sweeper.kill()
        event = ev.Shutdown(reason)
        for conn in list(self.connections):
            try:
                conn.send(event)  # once each, after whatever their rooms had queued
                conn.close("server shutdown")
            except Exception:
                log.exception("telling %s about the shutdown failed", conn.addr)
        self.hub.close_storage(timeout=CLOSE_TIMEOUT)
        self._listeners[0][0].stop(timeout=self.settings.stop_timeout)
        log.info("stopped")


def _create_private(path: Path) -> None:
    """Create the lobby's history file (mode 0600) if it is missing: a file that exists can
    be locked at once, so a second server on the same files refuses to start even when the
    first has not written a line yet."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return
    except OSError:
        return  # the start-up checks reported it, or the history will
    from geventchat.store.atomic import fsync_dir

    try:
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError:
        pass


class ListenError(OSError):
    """A listening socket could not be opened; the message names the port."""


def _refuse(sock: socket.socket, refusal: str, kind: str) -> None:
    """Tell a refused client why, in its protocol as far as we know it, and let go."""
    if kind == sniff.IRC:
        data = f"ERROR :Closing link: ({refusal})\r\n".encode()
    elif kind == sniff.HTTP:
        data = plain_response(503, refusal + "\n")
    else:
        data = NATIVE.render(ev.Error("server_full", refusal))
    out = Output(sock, 65536)
    out.write(data)
    out.drain(DRAIN_TIMEOUT)
    out.close()
    # Closing a socket with unread input sends a reset, which may destroy the refusal
    # before the client reads it (a program sends its name with the connection): take
    # what is already there, without waiting, and say FIN first.
    try:
        sock.shutdown(socket.SHUT_WR)
        raw = getattr(sock, "_sock", sock)
        while raw.recv(65536, socket.MSG_DONTWAIT):
            pass
    except OSError:  # BlockingIOError included: nothing (more) to read
        pass


def _tune(sock: socket.socket) -> None:
    """Batching is ours to do, not Nagle's; keepalive finds peers that vanished."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    except (OSError, AttributeError):  # not every platform has the fine-grained options
        pass


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    # gevent's SSLContext makes gevent's cooperative SSLSocket; the stdlib's would block the
    # loop (and gevent.ssl.create_default_context returns the stdlib's).
    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    return ctx


def build_hub(settings: Settings) -> Hub:
    """The embedded defaults: in-process broker, file history, file admin accounts; or,
    with ``--redis``, the Redis engine as broker and directory (history in Redis)."""
    if settings.redis_url:
        return _build_cluster_hub(settings)
    from geventchat.core.broker import LocalBroker
    from geventchat.store.admins import AdminStore
    from geventchat.store.history import History, HistoryShelf
    from geventchat.store.topics import TopicStore

    hub: Hub

    def history_for(room: str) -> History:
        lobby = name_key(room) == LOBBY_NAME
        path = settings.history if lobby else _room_path(settings.history, room)
        where = str(path)
        return History(path, replay=settings.history_replay, fsync=settings.fsync,
                       max_records=settings.history_max, room=room,
                       on_error=lambda text: hub.storage_failed(where, f"history: {text}"),
                       on_recover=lambda: hub.storage_recovered(where))

    topics = TopicStore(settings.history.with_name(f"{settings.history.stem}.topics.json"))
    hub = Hub(LocalBroker(HistoryShelf(history_for), topics), AdminStore(settings.admins),
              presence_summary=settings.presence_summary)
    hub.max_rooms = settings.max_rooms
    return hub


def _build_cluster_hub(settings: Settings) -> Hub:
    """Fails fast (``StartError``, one line) if Redis is unreachable, too old or refuses
    our credentials. Redis is imported only here: no ``--redis``, no Redis."""
    from geventchat.store.admins import AdminStore
    from geventchat.store.redis_broker import RedisBroker

    node = settings.node_name or (f"{socket.gethostname()}:{settings.port}" if settings.port
                                  else f"{socket.gethostname()}-{os.getpid()}")
    broker = RedisBroker(settings.redis_url, node, replay=settings.history_replay,
                         history_max=settings.history_max,
                         presence_ttl=settings.presence_ttl)
    broker.check()
    log.info("cluster node %s on Redis %s", node, _safe_url(settings.redis_url))
    return Hub(broker, AdminStore(settings.admins), directory=broker,
               presence_summary=settings.presence_summary)


def _safe_url(url: str) -> str:
    from geventchat.store.redis_broker import _safe

    return _safe(url)


def _room_path(lobby_path: Path, room: str) -> Path:
    """``history.txt`` -> ``history.dev.txt``: by the room's NFKC+casefold key, so ``Dev``
    and ``dev`` (one room) always use one file, and the name depends on no look-alike data
    table that a dependency update could change (F11). Files named by the older look-alike
    skeleton key are still found."""
    stable = unicodedata.normalize("NFKC", room).casefold()
    path = lobby_path.with_name(f"{lobby_path.stem}.{stable}{lobby_path.suffix}")
    legacy = lobby_path.with_name(f"{lobby_path.stem}.{name_key(room)}{lobby_path.suffix}")
    if legacy != path and not path.exists() and legacy.exists():
        return legacy
    return path


def serve(settings: Settings) -> int:
    """Run a server until it is stopped; the exit status for the process."""
    hub = build_hub(settings)
    server = ChatServer(settings, hub)
    start = getattr(hub.broker, "start", None)
    if start is not None:  # the Redis engine: failed logins counted cluster-wide
        from geventchat.edges.admission import LOGIN_FAILURES_PER_IP, LOGIN_PENALTY_WINDOW
        from geventchat.store.redis_broker import RedisFailures

        server.admission.failures = RedisFailures(hub.broker, LOGIN_FAILURES_PER_IP,
                                                  LOGIN_PENALTY_WINDOW)
        start(hub)
    server.serve_forever()
    return 0
