"""What every client edge shares: the read loop, flood control, timeouts, sendq death,
drain-and-close.

A connection is one greenlet (the reader) plus a non-blocking :class:`Output`. The life
cycle is the same for every protocol, so it is written once here, as
:class:`ClientConnection`; each edge (native, IRC, later WebSocket) fills in the hooks:
what to say first, what a line means, how to say goodbye, how to tell the client to slow
down. The sans-IO codec (a "decoder" with ``feed``/``close``) turns bytes into lines.

The edge never imports the server: the server hands itself in as an :class:`EdgeContext`
(hub, settings, admission, the set of live connections).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import gevent
import gevent.socket

from geventchat.core import events as ev
from geventchat.core.flood import FloodGate, Verdict
from geventchat.core.stats import STATS
from geventchat.edges.outbuf import Output

if TYPE_CHECKING:
    from geventchat.config import Settings
    from geventchat.core.hub import Hub, Session
    from geventchat.edges.admission import Admission

log = logging.getLogger(__name__)

#: Bytes per recv. Large reads amortise the per-call cost when a client sends in bursts.
RECV_SIZE = 65536
# One receive buffer for every connection: greenlets take turns, and each copies out what it
# read before it can yield, so sharing is safe and spares a 64 KiB allocation per read.
_RECV_BUFFER = bytearray(RECV_SIZE)
_RECV_VIEW = memoryview(_RECV_BUFFER)
#: How long a closing connection may take to write its last lines (goodbye, shutdown).
DRAIN_TIMEOUT = 2.0
#: After a full-size read, pause this long so the loop polls everyone else. ``sleep(0)`` is
#: not enough: it only runs callbacks, so a socket that is always readable would starve all
#: I/O (other clients, the history writer's thread results). Yielding after every read
#: would cost latency; after a full read only, it caps one client at ~64 KiB per pass.
YIELD_PAUSE = 0.0002


class ConnectionSet(dict):
    """The live connections, used as a set: ``add``, ``discard``, ``in``, ``len`` and
    iteration. It is a dict's keys because a set's table, at most 60% full and grown
    fourfold, costs 52 to 105 bytes per entry at 10,000 to 20,000 connections, where a
    dict's costs 30."""

    __slots__ = ()

    def add(self, conn: object) -> None:
        self[conn] = None

    def discard(self, conn: object) -> None:
        self.pop(conn, None)


class EdgeContext(Protocol):
    """What an edge needs from the server that runs it."""

    hub: Hub
    settings: Settings
    admission: Admission
    connections: ConnectionSet


class Decoder(Protocol):
    """A sans-IO codec's input side: bytes in, parsed lines out."""

    def feed(self, data: bytes) -> list: ...

    def close(self) -> list: ...


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


def read_lines(conn: ClientConnection) -> None:
    """The reader greenlet's loop, for every protocol: read ``conn.sock`` until EOF, an
    error or ``conn.is_open()`` turning false; hand each chunk's lines, decoded by
    ``conn.decoder``, to ``conn.handle``; call ``conn.heard()`` whenever the peer sent
    anything (idle and keepalive clocks).

    It takes the connection rather than its bound methods: this frame lives as long as
    the connection, and each method object kept in it would cost every client 64 bytes."""
    sock, decoder = conn.sock, conn.decoder
    buf, view = _RECV_BUFFER, _RECV_VIEW
    while conn.is_open():
        try:
            n = sock.recv_into(buf)
        except OSError:
            return
        conn.heard()
        if not n:
            conn.handle(decoder.close())
            return
        conn.handle(decoder.feed(view[:n].tobytes()))
        if n == RECV_SIZE:
            yield_to_others()


def _ignore(reason: str) -> None:
    """What a finished connection's session does when told to disconnect: nothing."""


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
    STATS.flood_throttles += 1
    if verdict is Verdict.KICK:
        STATS.flood_kicks += 1
        kick()
        return False
    if verdict is Verdict.SLOW_FIRST:
        warn()
    gevent.sleep(flood.wait)
    return is_open()


#: The gate of every connection when flood control is off: disabled, so never mutated.
_NO_FLOOD_GATE = FloodGate(0.0)


class ClientConnection:
    """One client socket, from its first byte to the close: the life cycle every edge
    shares. Subclasses implement :meth:`greet`, :meth:`on_line`, :meth:`slow_down`,
    :meth:`goodbye` and may extend :meth:`expire`.

    ``close(reason)`` may be called from any greenlet; the reader sees EOF, the session
    leaves the hub, pending output is drained (at most :data:`DRAIN_TIMEOUT`), and the
    handler returns (so ``StreamServer`` closes the socket).
    """

    # Slots: tens of thousands of idle connections must stay cheap.
    __slots__ = ("ctx", "hub", "sock", "peer", "out", "decoder",
                 "session", "flood", "created", "last_active", "_closing", "_reader",
                 "__weakref__")

    #: Protocol name for logs and metrics.
    protocol = "?"

    def __init__(self, ctx: EdgeContext, sock: socket.socket, addr: tuple,
                 decoder: Decoder, out: Output | None = None) -> None:
        self.ctx = ctx
        self.hub = ctx.hub
        self.sock = sock
        self.peer = addr  # the address as accepted; ``addr`` formats it when asked
        if out is None:
            out = Output(sock, ctx.settings.max_sendq)
        out.on_dead = self._output_dead
        self.out = out
        self.decoder = decoder
        self.session: Session | None = None
        rate = ctx.settings.rate_limit
        # Without a limit every connection shares one disabled gate (it keeps no state).
        self.flood = FloodGate(rate, ctx.settings.rate_burst) if rate > 0 else _NO_FLOOD_GATE
        self.created = self.last_active = time.monotonic()
        self._closing: str | None = None
        self._reader = gevent.getcurrent()

    @property
    def settings(self) -> Settings:
        # Read through ctx rather than kept: a slot less brings a native connection down
        # to the next allocator size class (208 to 192 bytes).
        return self.ctx.settings

    @property
    def addr_ip(self) -> str:
        return self.peer[0]

    @property
    def addr(self) -> str:
        """``ip:port``, for logs and the session. Formatted on demand: a string kept per
        connection would cost every idle client 64 bytes."""
        peer = self.peer
        return f"{peer[0]}:{peer[1]}"

    # --- hooks -----------------------------------------------------------------------

    def greet(self) -> None:
        """What the server says first (the native prompt); nothing by default."""

    def on_line(self, line: object) -> None:
        """Act on one decoded line (already throttled)."""
        raise NotImplementedError

    def slow_down(self) -> None:
        """Tell the client, once per flood, that it is being throttled."""

    def goodbye(self, reason: str) -> None:
        """Last words before the close (IRC's ``ERROR``); nothing by default."""

    # --- life cycle ------------------------------------------------------------------

    def run(self, first: bytes = b"") -> None:
        """Handler body: greet, handle ``first`` (bytes already read while sniffing), read
        until EOF or close, then leave and drain. A bug costs this connection only."""
        self._reader = gevent.getcurrent()
        try:
            if first:
                self._answer_first(first)
            else:
                self.greet()
            read_lines(self)
        except Exception:
            log.exception("%s connection %s failed", self.protocol, self.addr)
        finally:
            self.finish()

    def _answer_first(self, first: bytes) -> None:
        """Greet a client that spoke first and handle what it said, in one ``send``: a
        program that sends its name with the connection gets the prompt and its join burst
        together (a reconnect storm of 10,000 costs 10,000 sends fewer)."""
        self.out.cork()
        try:
            self.greet()
            # No heard(): these bytes were read just before this connection was made, so
            # last_active (the same float as created) already says when; a float of its
            # own would cost each client that spoke first and idles 24 bytes.
            self.handle(self.decoder.feed(first))
        finally:
            self.out.uncork()

    def is_open(self) -> bool:
        return self._closing is None

    @property
    def closing(self) -> str | None:
        return self._closing

    def heard(self) -> None:
        self.last_active = time.monotonic()

    def handle(self, lines: list) -> None:
        STATS.lines_received += len(lines)
        for line in lines:
            if self._closing is not None:
                return
            if self.flood.enabled and not throttle(self.flood, self.slow_down,
                                                   self._flooded, self.is_open):
                return
            self.on_line(line)

    def _flooded(self) -> None:
        log.warning("%s (%s) disconnected for flooding", self.who(), self.addr)
        self.flood_kick()

    def flood_kick(self) -> None:
        self.close("Excess Flood")

    def close(self, reason: str, error: str | None = None) -> None:
        """End this connection from any greenlet; pending output is still written.
        ``reason`` is the QUIT others see; ``error`` what the client is told, if different."""
        if self._closing is not None:
            return
        self._closing = reason
        self.goodbye(error or reason)
        if gevent.getcurrent() is not self._reader:
            wake_reader(self.sock)

    def finish(self) -> None:
        """After the read loop: leave the hub, drain, close the output."""
        session = self.session
        if self._closing == "":
            self.out.close()  # writing to the peer failed: nothing more can reach it
        if session is not None:
            # Quit and kick have already unregistered the session with their own notice.
            quit_ = None if self.hub.stopping else ev.Quit(session.name, self._closing or "")
            self.hub.unregister(session, quit_)
            self.forget(session)
        if not self.out.closed:
            self.out.drain(DRAIN_TIMEOUT)
        self.out.close()
        self.ctx.connections.discard(self)
        # Cut the references back to this connection (the session's disconnect, the
        # output's death callback): the connection, its session, output, decoder and
        # socket are then freed by reference counting as the handler returns, not by a
        # full garbage collection minutes later (a churning server's RSS rose 10% waiting
        # for those).
        if session is not None:
            session.disconnect = _ignore
            self.session = None  # (an IRC session points back at its connection)
        self.out.on_dead = None
        log.debug("%s connection %s closed (%s)", self.protocol, self.addr,
                  self._closing or "eof")

    def forget(self, session: Session) -> None:
        """Protocol state to drop once the session has left the hub."""

    def _output_dead(self, reason: str) -> None:
        """The output gave up (sendq overflow, peer gone). This may run in the middle of a
        room's flush, so the close happens a loop pass later: a flush must never re-enter
        itself through a goodbye line."""
        gevent.get_hub().loop.run_callback(self._output_died, reason)

    def _output_died(self, reason: str) -> None:
        # A full sendq is the server's decision and worth a warning; a peer that vanished
        # mid-write is an ordinary disconnect.
        if reason.startswith("sendq"):
            log.warning("%s (%s): %s; disconnecting", self.who(), self.addr, reason)
            STATS.sendq_disconnects += 1
            self.close(self.sendq_reason())
        else:
            log.debug("%s (%s): %s", self.who(), self.addr, reason)
            self.close("")  # others see a plain "left", as for any dropped connection

    def sendq_reason(self) -> str:
        return "sendq exceeded"

    def expire(self, now: float) -> None:
        """Called by the sweeper: the registration timeout (subclasses add more)."""
        if self._closing is None and self.session is None and (
                now - self.created > self.settings.register_timeout):
            self.timed_out("registration timeout")

    def timed_out(self, what: str) -> None:
        self.close(what)

    def who(self) -> str:
        return self.session.name if self.session else "unregistered client"
