"""The TCP edge: a gevent ``StreamServer`` with one reader greenlet per client.

Each connection reads bytes, feeds them to the sans-IO :class:`~geventchat.protocol.LineDecoder`
and acts on the lines: first the handshake (name, then password for admin accounts), then
commands through :func:`~geventchat.commands.dispatch`. Output never goes through this
greenlet's blocking calls: it is handed to the client's :class:`~geventchat.outbuf.Output`.

:class:`ChatServer` owns the life cycle: start, graceful stop (notice to everyone, history
flushed, connections drained and closed, ``server.stop(timeout)``) on ``/shutdown``,
SIGINT or SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from geventchat import events as ev
from geventchat.commands import dispatch
from geventchat.errors import ChatError
from geventchat.hub import Hub, Session
from geventchat.outbuf import MAX_SENDQ, Output
from geventchat.protocol import MAX_LINE, NATIVE, TOO_LONG, LineDecoder, LineTooLong, parse
from geventchat.text import check_name, name_key

log = logging.getLogger(__name__)

#: Bytes per recv. Large reads amortise the per-call cost when a client sends in bursts.
RECV_SIZE = 65536
#: Failed admin logins allowed on one connection before it is closed.
MAX_LOGIN_FAILURES = 3
#: How long a closing connection may take to write its last lines (goodbye, shutdown).
DRAIN_TIMEOUT = 2.0


@dataclass
class Settings:
    """Everything ``geventchat serve`` can be told; defaults are the documented ones."""

    host: str = "127.0.0.1"
    port: int = 9999
    history: Path = Path("history.txt")
    admins: Path | None = None
    history_replay: int = 100
    max_clients: int = 1000
    max_sendq: int = MAX_SENDQ
    max_line: int = MAX_LINE
    register_timeout: float = 60.0
    fsync: str = "interval"
    stop_timeout: float = 5.0


class Connection:
    """One client socket, from the name prompt to the close."""

    def __init__(self, server: ChatServer, sock: socket.socket, addr: tuple) -> None:
        self.server = server
        self.hub = server.hub
        self.sock = sock
        self.addr = f"{addr[0]}:{addr[1]}"
        self.out = Output(sock, server.settings.max_sendq, on_dead=self._output_dead)
        self.decoder = LineDecoder(server.settings.max_line)
        self.session: Session | None = None
        self._pending_name: str | None = None  # admin name waiting for its password
        self._failures = 0
        self._closing: str | None = None
        self._reader = gevent.getcurrent()

    # --- life cycle ----------------------------------------------------------------------

    def run(self) -> None:
        """Handler body: greet, read until EOF or close, then leave and drain."""
        timer = gevent.get_hub().loop.timer(self.server.settings.register_timeout)
        timer.start(self._register_timeout)
        try:
            self._send(ev.Prompt("name"))
            self._read_loop()
        except Exception:  # a bug must cost one connection, never the server
            log.exception("connection %s failed", self.addr)
        finally:
            timer.stop()
            timer.close()
            self._finish()

    def _read_loop(self) -> None:
        while self._closing is None:
            try:
                data = self.sock.recv(RECV_SIZE)
            except OSError:
                return
            if not data:
                self._handle(self.decoder.close())
                return
            self._handle(self.decoder.feed(data))
            if len(data) == RECV_SIZE:
                # A client whose socket is always readable would otherwise never let the
                # loop run anyone else; yielding after every read would cost latency.
                gevent.sleep(0)

    def _handle(self, lines: list[str | LineTooLong]) -> None:
        for line in lines:
            if self._closing is not None:
                return
            if line is TOO_LONG:
                self._send(ev.Error("line_too_long",
                                    f"line too long (max {self.server.settings.max_line} bytes)"))
                continue
            try:
                self._on_line(line)
            except ChatError as exc:
                self._send(exc.event())

    def close(self, reason: str) -> None:
        """End this connection from any greenlet; pending output is still written."""
        if self._closing is not None:
            return
        self._closing = reason
        if gevent.getcurrent() is not self._reader:
            try:
                self.sock.shutdown(socket.SHUT_RD)  # wakes the reader with EOF
            except OSError:
                pass

    def _finish(self) -> None:
        session = self.session
        if session is not None and session.room is not None:
            # Quit and kick have already unregistered the session with their own notice.
            reason = "" if self._closing is None else self._closing
            left = None if self.hub.stopping else ev.Left(session.name, reason, session.room.name)
            self.hub.unregister(session, left)
        if not self.out.closed:
            self.out.drain(DRAIN_TIMEOUT)
        self.out.close()
        self.server.connections.discard(self)
        log.debug("connection %s closed (%s)", self.addr, self._closing or "eof")

    def _output_dead(self, reason: str) -> None:
        log.warning("%s (%s): %s; disconnecting", self._who(), self.addr, reason)
        self.close(reason)

    def _register_timeout(self) -> None:
        if self.session is None and self._closing is None:
            self._send(ev.Error("usage", "registration timeout"))
            self.close("registration timeout")

    def _who(self) -> str:
        return self.session.name if self.session else "unregistered client"

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

    def _on_password(self, password: str) -> None:
        name, self._pending_name = self._pending_name, None
        if self.hub.admins.verify(name, password):
            self._register(name, name_key(name))
            return
        self._failures += 1
        log.warning("failed admin login for %s from %s", name, self.addr)
        if self._failures >= MAX_LOGIN_FAILURES:
            self._send(ev.Error("too_many_logins", "too many failed logins"))
            self.close("too many failed logins")
            return
        self._send(ev.Error("wrong_password", "wrong password"))
        self._send(ev.Prompt("name"))

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


class ChatServer:
    """A configured server: listener, hub, histories, and the stop sequence."""

    def __init__(self, settings: Settings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        hub.on_shutdown = self.stop
        self.connections: set[Connection] = set()
        # A few spare greenlets over max_clients so a full server can still answer
        # "server full" instead of silently not accepting (a full Pool stops accepting).
        self._pool = Pool(settings.max_clients + 16)
        self._server = StreamServer((settings.host, settings.port), self._handle,
                                    spawn=self._pool)
        self._stopped = Event()
        self._stop_reason: str | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address[:2]

    def start(self) -> None:
        self._server.start()
        host, port = self.address
        log.info("geventchat listening on %s:%d", host, port)

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

    def _shutdown(self) -> None:
        reason = self._stop_reason or "server stopped"
        log.info("shutting down: %s", reason)
        self._server.close()  # stop accepting at once
        notice = NATIVE.render(ev.Shutdown(reason))
        self.hub.broadcast_all(ev.Shutdown(reason))
        self.hub.flush_all()
        for conn in list(self.connections):
            if conn.session is None:
                conn.out.write(notice)
            conn.close("server shutdown")
        self.hub.close_storage()
        self._server.stop(timeout=self.settings.stop_timeout)
        log.info("stopped")

    def _handle(self, sock: socket.socket, addr: tuple) -> None:
        _tune(sock)
        conn = Connection(self, sock, addr)
        if len(self.connections) >= self.settings.max_clients or self.hub.stopping:
            conn.out.write(NATIVE.render(ev.Error("server_full", "server full")))
            conn.out.drain(DRAIN_TIMEOUT)
            return
        self.connections.add(conn)
        conn.run()


def _tune(sock: socket.socket) -> None:
    """Batching is ours to do, not Nagle's; keepalive finds peers that vanished."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass


def build_hub(settings: Settings) -> Hub:
    """The embedded defaults: in-process hub, file history, file admin accounts."""
    from geventchat.auth import AdminStore
    from geventchat.history import History

    def history_for(room: str) -> History:
        path = settings.history if room == "lobby" else _room_path(settings.history, room)
        return History(path, replay=settings.history_replay, fsync=settings.fsync)

    return Hub(history_for, AdminStore(settings.admins))


def _room_path(lobby_path: Path, room: str) -> Path:
    return lobby_path.with_name(f"{lobby_path.stem}.{room}{lobby_path.suffix}")


def serve(settings: Settings) -> int:
    """Run a server until it is stopped; the exit status for the process."""
    server = ChatServer(settings, build_hub(settings))
    server.serve_forever()
    return 0

