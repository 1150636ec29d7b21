"""The TCP edge: a gevent ``StreamServer`` with one reader greenlet per client.

Each connection reads bytes, feeds them to the sans-IO :class:`~geventchat.wire.native.LineDecoder`
and acts on the lines: first the handshake (name, then password for admin accounts), then
commands through :func:`~geventchat.wire.native_commands.dispatch`. Output never goes through this
greenlet's blocking calls: it is handed to the client's :class:`~geventchat.edges.outbuf.Output`.

:class:`ChatServer` owns the life cycle: start, graceful stop (notice to everyone, history
flushed, connections drained and closed, ``server.stop(timeout)``) on ``/shutdown``,
SIGINT or SIGTERM.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import gevent
import gevent.socket
import gevent.ssl
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from geventchat.config import Settings
from geventchat.core import events as ev
from geventchat.core.errors import ChatError
from geventchat.core.flood import FloodGate, Verdict
from geventchat.core.hub import Hub, Session
from geventchat.core.text import check_name, name_key
from geventchat.edges.outbuf import Output
from geventchat.wire.native import NATIVE, TOO_LONG, LineDecoder, LineTooLong, parse
from geventchat.wire.native_commands import dispatch

log = logging.getLogger(__name__)

#: Bytes per recv. Large reads amortise the per-call cost when a client sends in bursts.
RECV_SIZE = 65536
# One receive buffer for every connection: greenlets take turns, and each copies out what it
# read before it can yield, so sharing is safe and spares a 64 KiB allocation per read.
_RECV_BUFFER = bytearray(RECV_SIZE)
_RECV_VIEW = memoryview(_RECV_BUFFER)
#: Failed admin logins allowed on one connection before it is closed.
MAX_LOGIN_FAILURES = 3
#: How long a closing connection may take to write its last lines (goodbye, shutdown).
DRAIN_TIMEOUT = 2.0
#: Seconds between sweeps for registration and idle timeouts: one greenlet checks every
#: connection, instead of a timer each (50,000 idle clients must stay cheap).
SWEEP_INTERVAL = 1.0
#: After a full-size read, pause this long so the loop polls everyone else. ``sleep(0)`` is
#: not enough: it only runs callbacks, so a socket that is always readable would starve all
#: I/O (other clients, the history writer's thread results). Yielding after every read
#: would cost latency; after a full read only, it caps one client at ~64 KiB per pass.
YIELD_PAUSE = 0.0002


def wake_reader(sock: socket.socket) -> None:
    """Make a greenlet blocked in ``recv`` on ``sock`` see EOF, leaving writes possible.

    On TLS sockets the plain socket's ``shutdown`` is called: ``SSLSocket.shutdown`` would
    drop the TLS state first, and what is still queued would then go out unencrypted.
    """
    try:
        gevent.socket.socket.shutdown(sock, socket.SHUT_RD)
    except OSError:
        pass


def yield_to_others() -> None:
    """Let the event loop poll for I/O before this greenlet reads again."""
    gevent.sleep(YIELD_PAUSE)


class _Decoder(Protocol):
    def feed(self, data: bytes) -> list: ...

    def close(self) -> list: ...


def read_lines(
    sock: socket.socket,
    decoder: _Decoder,
    handle: Callable[[list], None],
    is_open: Callable[[], bool],
    heard: Callable[[], None],
) -> None:
    """The reader greenlet's loop, for every protocol: read until EOF, an error or
    ``is_open()`` turning false; hand each chunk's decoded lines to ``handle``; call
    ``heard()`` whenever the peer sent anything (idle and keepalive clocks)."""
    buf, view = _RECV_BUFFER, _RECV_VIEW
    while is_open():
        try:
            n = sock.recv_into(buf)
        except OSError:
            return
        heard()
        if not n:
            handle(decoder.close())
            return
        handle(decoder.feed(view[:n].tobytes()))
        if n == RECV_SIZE:
            yield_to_others()


def throttle(flood: FloodGate, warn: Callable[[], None], kick: Callable[[], None],
             is_open: Callable[[], bool]) -> bool:
    """Flood control for one line, for every protocol: False if the connection is to end.

    Over the limit, the reader stops for a moment (the client's lines wait in its own
    socket buffer, so nobody else notices); ``warn`` tells the client once per flood,
    ``kick`` ends a client that keeps going.
    """
    verdict = flood.check(time.monotonic())
    if verdict is Verdict.OK:
        return True
    if verdict is Verdict.KICK:
        kick()
        return False
    if verdict is Verdict.SLOW_FIRST:
        warn()
    gevent.sleep(flood.wait)
    return is_open()


#: Pending connections the kernel may hold: a crowd reconnecting after a restart must not
#: overflow it (each overflow costs a client a 1 s SYN retry). The kernel caps it at somaxconn.
LISTEN_BACKLOG = 4096
#: TCP keepalive: first probe after 5 idle minutes, then every 30 s, give up after 4 misses.
KEEPALIVE = (300, 30, 4)


#: First words that mark an IRC client on the shared port. Each needs a parameter, and
#: native names can't contain a space, so no native name line is ever mistaken for them.
IRC_FIRST_WORDS = frozenset({"CAP", "NICK", "USER", "PASS"})


def looks_like_irc(line: str | LineTooLong) -> bool:
    """Whether a connection's first line is IRC registration (``NICK alice``...)."""
    if not isinstance(line, str):
        return False
    word, sep, rest = line.partition(" ")
    return bool(sep and rest.strip()) and word.upper() in IRC_FIRST_WORDS


class Connection:
    """One client socket, from the name prompt to the close."""

    # Slots: tens of thousands of idle connections must stay cheap.
    __slots__ = ("server", "hub", "sock", "addr_tuple", "addr_ip", "addr", "out", "decoder",
                 "session", "_pending_name", "_failures", "_closing", "_reader", "_authorised",
                 "_first_line", "irc_lines", "flood", "created", "last_active")

    def __init__(self, server: ChatServer, sock: socket.socket, addr: tuple) -> None:
        self.server = server
        self.hub = server.hub
        self.sock = sock
        self.addr_tuple = addr
        self.addr_ip = addr[0]
        self.addr = f"{addr[0]}:{addr[1]}"
        self.out = Output(sock, server.settings.max_sendq, on_dead=self._output_dead)
        self.decoder = LineDecoder(server.settings.max_line)
        self.session: Session | None = None
        self._pending_name: str | None = None  # admin name waiting for its password
        self._failures = 0
        self._closing: str | None = None
        self._reader = gevent.getcurrent()
        self._authorised = server.password_digest is None  # server password given?
        self._first_line = True
        self.irc_lines: list[str | LineTooLong] | None = None  # set when IRC is detected
        settings = server.settings
        self.flood = FloodGate(settings.rate_limit, settings.rate_burst)
        self.created = self.last_active = time.monotonic()

    # --- life cycle ----------------------------------------------------------------------

    def run(self) -> None:
        """Handler body: greet, read until EOF or close, then leave and drain."""
        try:
            self._send(ev.Prompt("name" if self._authorised else "server password"))
            self._read_loop()
        except Exception:  # a bug must cost one connection, never the server
            log.exception("connection %s failed", self.addr)
        finally:
            if self.irc_lines is None:
                self._finish()

    def _read_loop(self) -> None:
        read_lines(self.sock, self.decoder, self._handle, self._is_open, self._heard)

    def _is_open(self) -> bool:
        return self._closing is None

    def _heard(self) -> None:
        self.last_active = time.monotonic()

    def _handle(self, lines: list[str | LineTooLong]) -> None:
        for i, line in enumerate(lines):
            if self._closing is not None:
                return
            if self._first_line and looks_like_irc(line):
                # An IRC client: hand this line and the rest of the chunk to the IRC side.
                self.irc_lines = lines[i:]
                self._closing = "irc"
                return
            self._first_line = False
            if self.flood.enabled and not self._throttle():
                return
            if line is TOO_LONG:
                self._send(ev.Error("line_too_long",
                                    f"line too long (max {self.server.settings.max_line} bytes)"))
                continue
            try:
                self._on_line(line)
            except ChatError as exc:
                self._send(exc.event())

    def _throttle(self) -> bool:
        """Apply flood control to one line; False if the connection is being closed."""
        return throttle(self.flood, self._slow_down, self._flooded, self._is_open)

    def _slow_down(self) -> None:
        self._send(ev.Error("flood", f"slow down: at most {self.flood.rate:g} lines/s "
                                     f"after a burst of {self.flood.burst}"))

    def _flooded(self) -> None:
        log.warning("%s (%s) disconnected for flooding", self._who(), self.addr)
        self._send(ev.Error("flood", "flooding: disconnected"))
        self.close("flooding")

    def close(self, reason: str) -> None:
        """End this connection from any greenlet; pending output is still written."""
        if self._closing is not None:
            return
        self._closing = reason
        if gevent.getcurrent() is not self._reader:
            wake_reader(self.sock)

    def _finish(self) -> None:
        session = self.session
        if self._closing == "":
            self.out.close()  # writing to the peer failed: nothing more can reach it
        if session is not None:
            # Quit and kick have already unregistered the session with their own notice.
            reason = "" if self._closing is None else self._closing
            quit_ = None if self.hub.stopping else ev.Quit(session.name, reason)
            self.hub.unregister(session, quit_)
        if not self.out.closed:
            self.out.drain(DRAIN_TIMEOUT)
        self.out.close()
        self.server.connections.discard(self)
        log.debug("connection %s closed (%s)", self.addr, self._closing or "eof")

    def _output_dead(self, reason: str) -> None:
        # A full sendq is the server's decision and worth a warning; a peer that vanished
        # mid-write is an ordinary disconnect.
        if reason.startswith("sendq"):
            log.warning("%s (%s): %s; disconnecting", self._who(), self.addr, reason)
            self.close("sendq exceeded")
        else:
            log.debug("%s (%s): %s", self._who(), self.addr, reason)
            self.close("")  # others see a plain "left", as for any dropped connection

    def expire(self, now: float) -> None:
        """Called by the sweeper: enforce the registration and idle timeouts."""
        settings = self.server.settings
        if self._closing is not None:
            return
        if self.session is None and now - self.created > settings.register_timeout:
            self._send(ev.Error("timeout", "registration timeout"))
            self.close("registration timeout")
        elif settings.idle_timeout and now - self.last_active > settings.idle_timeout:
            self._send(ev.Error("timeout", f"idle for {settings.idle_timeout:g} s"))
            self.close("idle timeout")

    def _who(self) -> str:
        return self.session.name if self.session else "unregistered client"

    def send(self, event: ev.Event) -> None:
        """One event for this client only, in its protocol, in order with broadcasts."""
        self._send(event)

    def _send(self, event: ev.Event) -> None:
        if self.session is not None:
            self.session.send(event)
        else:
            self.out.write(NATIVE.render(event))

    # --- lines ---------------------------------------------------------------------------

    def _on_line(self, line: str) -> None:
        if self.session is not None:
            cmd = parse(line)
            if cmd is not None:
                dispatch(self.hub, self.session, cmd)
        elif not self._authorised:
            self._on_server_password(line)
        elif self._pending_name is not None:
            self._on_password(line)
        else:
            self._on_name(line)

    def _on_name(self, line: str) -> None:
        try:
            name = check_name(line)
            self.hub.check_free(name)
        except ChatError as exc:
            self._send(exc.event())
            self._send(ev.Prompt("name"))
            return
        if self.hub.admins.is_admin(name):
            self._pending_name = name
            self._send(ev.Prompt("password"))
        else:
            self._register(name, None)

    def _on_server_password(self, password: str) -> None:
        if not self.server.login_allowed(self.addr_ip):
            self._send(ev.Error("too_many_logins", "too many failed logins; try again later"))
            self.close("login rate limit")
            return
        if self.server.check_server_password(password):
            self._authorised = True
            self._send(ev.Prompt("name"))
            return
        # Wrong server passwords share the per-address limit with admin logins, so
        # reconnecting does not buy an attacker more guesses.
        self.server.login_failed(self.addr_ip)
        if self._login_failed("server password"):
            self._send(ev.Error("wrong_password", "wrong server password"))
            self._send(ev.Prompt("server password"))

    def _on_password(self, password: str) -> None:
        name, self._pending_name = self._pending_name, None
        if not self.server.login_allowed(self.addr_ip):
            self._send(ev.Error("too_many_logins", "too many failed logins; try again later"))
            self.close("login rate limit")
            return
        # Counted as a failure before the (slow) check, so concurrent attempts can't all
        # slip under the per-IP limit; a success takes it back.
        self.server.login_failed(self.addr_ip)
        if self.hub.admins.verify(name, password):
            self.server.login_succeeded(self.addr_ip)
            self._register(name, name_key(name))
            return
        if self._login_failed(f"admin login for {name}"):
            self._send(ev.Error("wrong_password", "wrong password"))
            self._send(ev.Prompt("name"))

    def _login_failed(self, what: str) -> bool:
        """Count a failure; close after too many. True if the client may try again."""
        self._failures += 1
        log.warning("failed %s from %s", what, self.addr)
        if self._failures < MAX_LOGIN_FAILURES:
            return True
        self._send(ev.Error("too_many_logins", "too many failed logins"))
        self.close("too many failed logins")
        return False

    def _register(self, name: str, account: str | None) -> None:
        if self.hub.stopping:
            return
        session = Session(name, self.out, NATIVE, self.close, account=account, addr=self.addr)
        try:
            self.hub.register(session)  # re-checks the name: it may have gone meanwhile
        except ChatError as exc:
            self._send(exc.event())
            self._send(ev.Prompt("name"))
            return
        self.session = session


#: Failed admin logins per IP before further attempts are refused, and for how long.
LOGIN_FAILURES_PER_IP = 10
LOGIN_PENALTY_WINDOW = 300.0


class ChatServer:
    """A configured server: listener, hub, histories, limits, and the stop sequence."""

    def __init__(self, settings: Settings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        hub.on_shutdown = self.stop
        self.connections: set[Connection] = set()
        self._per_ip: dict[str, int] = {}
        self._login_failures: dict[str, list[float]] = {}
        self.password_digest = _load_server_password(settings.password_file)
        # A few spare greenlets over max_clients so a full server can still answer
        # "server full" instead of silently not accepting (a full Pool stops accepting).
        self._pool = Pool(settings.max_clients + 16)
        # TLS is wrapped by hand in the handler (not by StreamServer) so the handshake gets
        # the registration deadline.
        self._tls = _tls_context(settings)
        self._server = StreamServer((settings.host, settings.port), self._handle,
                                    spawn=self._pool, backlog=LISTEN_BACKLOG)
        self._irc_server = None
        if settings.irc_port is not None:
            self._irc_server = StreamServer((settings.host, settings.irc_port), self._handle_irc,
                                            spawn=self._pool, backlog=LISTEN_BACKLOG)
        self._stopped = Event()
        self._stop_reason: str | None = None
        self._sweeper: gevent.Greenlet | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address[:2]

    @property
    def irc_address(self) -> tuple[str, int] | None:
        return self._irc_server.address[:2] if self._irc_server else None

    def start(self) -> None:
        self._server.start()
        if self._irc_server is not None:
            self._irc_server.start()
        self._sweeper = gevent.spawn(self._sweep_loop)
        host, port = self.address
        tls = " (TLS)" if self.settings.tls_cert else ""
        log.info("geventchat listening on %s:%d%s", host, port, tls)
        if self._irc_server is not None:
            host, port = self.irc_address
            log.info("IRC listening on %s:%d%s", host, port, tls)

    def serve_forever(self) -> None:
        """Start, wait for a stop request (signal or /shutdown), then stop gracefully."""
        self.start()
        handlers = [gevent.signal_handler(sig, self.stop, "server stopped")
                    for sig in (signal.SIGINT, signal.SIGTERM)]
        try:
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
            self._stopped.set()

    # --- admission ---------------------------------------------------------------------

    def check_server_password(self, given: str) -> bool:
        """Constant-time comparison of digests, so timing reveals nothing of the password."""
        digest = hashlib.sha256(given.encode()).digest()
        return hmac.compare_digest(digest, self.password_digest or b"")

    def login_allowed(self, ip: str) -> bool:
        """Admin logins are rate-limited per IP, across connections."""
        now = time.monotonic()
        recent = [t for t in self._login_failures.get(ip, ()) if now - t < LOGIN_PENALTY_WINDOW]
        self._login_failures[ip] = recent
        return len(recent) < LOGIN_FAILURES_PER_IP

    def login_failed(self, ip: str) -> None:
        self._login_failures.setdefault(ip, []).append(time.monotonic())

    def login_succeeded(self, ip: str) -> None:
        """Take back the failure counted before a check that then succeeded."""
        failures = self._login_failures.get(ip)
        if failures:
            failures.pop()

    def _refusal(self, ip: str) -> str | None:
        if self.hub.stopping:
            return "server shutting down"
        if len(self.connections) >= self.settings.max_clients:
            return "server full"
        if self.settings.max_per_ip and self._per_ip.get(ip, 0) >= self.settings.max_per_ip:
            return f"too many connections from {ip}"
        return None

    def _handle(self, sock: socket.socket, addr: tuple) -> None:
        """The main port: native protocol, or IRC when the first line says so."""
        self._serve(sock, addr, irc=False)

    def _handle_irc(self, sock: socket.socket, addr: tuple) -> None:
        """The IRC-only port: no native prompt, IRC from the first byte."""
        self._serve(sock, addr, irc=True)

    def _serve(self, sock: socket.socket, addr: tuple, irc: bool) -> None:
        _tune(sock)
        if self._tls is None:
            self._serve_plain(sock, addr, irc)
            return
        tls = self._handshake(sock, addr)
        if tls is None:
            return
        try:
            self._serve_plain(tls, addr, irc)
        finally:
            tls.close()  # wrapping detached the accepted socket: StreamServer can't close it

    def _serve_plain(self, sock: socket.socket, addr: tuple, irc: bool) -> None:
        conn = Connection(self, sock, addr)
        refusal = self._refusal(conn.addr_ip)
        if refusal is not None:
            log.warning("refused %s: %s", conn.addr, refusal)
            conn.out.write(f"ERROR :Closing link: ({refusal})\r\n".encode() if irc
                           else NATIVE.render(ev.Error("server_full", refusal)))
            conn.out.drain(DRAIN_TIMEOUT)
            return
        self.connections.add(conn)
        self._per_ip[conn.addr_ip] = self._per_ip.get(conn.addr_ip, 0) + 1
        try:
            if irc:
                self._run_irc(conn, [])
            else:
                conn.run()
                if conn.irc_lines is not None:
                    self._run_irc(conn, conn.irc_lines)
        finally:
            self.connections.discard(conn)
            left = self._per_ip.pop(conn.addr_ip) - 1
            if left:
                self._per_ip[conn.addr_ip] = left

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

    def _run_irc(self, native: Connection, first_lines: list) -> None:
        """Continue a connection as IRC (``ircconn``), reusing its socket state."""
        from geventchat.edges.irc import IrcConnection

        self.connections.discard(native)
        irc = IrcConnection(self, native.sock, native.addr_tuple, native.out, native.decoder,
                            native.flood)
        self.connections.add(irc)
        try:
            irc.run(first_lines)
        finally:
            self.connections.discard(irc)

    def _sweep_loop(self) -> None:
        while True:
            gevent.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.expire(now)
            self._forget_old_failures(now)

    def _forget_old_failures(self, now: float) -> None:
        """Drop per-address login failures older than the penalty window, so the table
        does not grow with every address that ever mistyped."""
        for ip, times in list(self._login_failures.items()):
            recent = [t for t in times if now - t < LOGIN_PENALTY_WINDOW]
            if recent:
                self._login_failures[ip] = recent
            else:
                del self._login_failures[ip]

    # --- shutdown ----------------------------------------------------------------------

    def _shutdown(self) -> None:
        reason = self._stop_reason or "server stopped"
        log.info("shutting down: %s", reason)
        self._server.close()  # stop accepting at once
        if self._irc_server is not None:
            self._irc_server.close()
        if self._sweeper is not None:
            self._sweeper.kill()
        event = ev.Shutdown(reason)
        for conn in list(self.connections):
            conn.send(event)  # once each, after whatever their rooms had queued
            conn.close("server shutdown")
        self.hub.close_storage()
        self._server.stop(timeout=self.settings.stop_timeout)
        log.info("stopped")


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


def _load_server_password(path: Path | None) -> bytes | None:
    """The server password's digest (the file's first line); None when no file is set."""
    if path is None:
        return None
    if path.stat().st_mode & 0o077:
        log.warning("password file %s is readable by others; run: chmod 600 %s", path, path)
    password = path.read_text("utf-8").splitlines()[0] if path.stat().st_size else ""
    if not password:
        raise ValueError(f"password file {path} is empty")
    return hashlib.sha256(password.encode()).digest()


def build_hub(settings: Settings) -> Hub:
    """The embedded defaults: in-process hub, file history, file admin accounts."""
    from geventchat.store.admins import AdminStore
    from geventchat.store.history import History

    hub: Hub

    def history_for(room: str) -> History:
        path = settings.history if room == "lobby" else _room_path(settings.history, room)
        return History(path, replay=settings.history_replay, fsync=settings.fsync,
                       max_records=settings.history_max,
                       on_error=lambda text: hub.notify_admins(f"history: {text}"))

    hub = Hub(history_for, AdminStore(settings.admins))
    return hub


def _room_path(lobby_path: Path, room: str) -> Path:
    """``history.txt`` -> ``history.dev.txt``; by the room's key, so ``Dev`` and ``dev``
    (one room) always use one file."""
    return lobby_path.with_name(f"{lobby_path.stem}.{name_key(room)}{lobby_path.suffix}")


def serve(settings: Settings) -> int:
    """Run a server until it is stopped; the exit status for the process."""
    server = ChatServer(settings, build_hub(settings))
    server.serve_forever()
    return 0
