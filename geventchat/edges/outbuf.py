"""Per-client output: never waits on a peer.

Fan-out calls :meth:`Output.write` for every member of a room. It tries one non-blocking
``send`` on the raw socket; whatever the kernel refuses goes into a bounded backlog that an
event-loop write watcher drains when the socket becomes writable. So a slow or dead reader
costs the sender nothing but a failed ``send``, and overflows its own ``max_sendq`` bytes
instead of anyone's latency (ergo's "SendQ exceeded", miniircd's write buffer).

Order is kept: while a backlog exists, new data is appended behind it, never sent around it.

TLS sockets can't be written around (bytes on the raw socket would bypass encryption), so
for them the backlog is drained by a small writer greenlet through the TLS socket's own
cooperative ``sendall`` instead: the same bound and ordering, a little more cost per line.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from types import MethodType

import gevent
import gevent.ssl
from gevent.event import Event

#: Default bound on bytes queued for one client that is not reading. 1 MiB is hundreds of
#: screens of chat: a client that far behind is gone or hostile, not slow.
MAX_SENDQ = 1 << 20

_EV_WRITE = 2  # libev/libuv event mask for "writable"
#: The backlog of an output that has never had to queue (most of them): shared and empty,
#: replaced by a list of its own the first time the kernel refuses bytes.
_NO_BACKLOG: list[bytes] = []
_CORKED = object()  # Output._greenlet of a corked plain output


class Output:
    """Bounded, ordered, non-blocking writer for one client socket.

    ``on_dead(reason)`` is called once when the output gives up: the backlog passed ``limit``
    (``"sendq exceeded"``) or the kernel refused the peer (``"write failed: ..."``). The
    output is closed by then; the callback should arrange for the connection to end.
    """

    __slots__ = (
        "_tls", "_raw", "_backlog", "_queued", "_limit", "_watcher", "_drained",
        "closed", "_on_dead", "_dead_owner", "_greenlet", "_direct",
    )

    def __init__(
        self,
        sock: socket.socket,
        limit: int = MAX_SENDQ,
        on_dead: Callable[[str], None] | None = None,
    ) -> None:
        # gevent's socket wraps a real non-blocking socket; sending on it directly is the
        # one place we want "fail instead of wait" semantics.
        self._raw = getattr(sock, "_sock", sock)
        self._backlog: list[bytes] = _NO_BACKLOG  # a list of its own once it queues
        self._queued = 0
        self._limit = limit
        self._watcher = None
        self._drained: Event | None = None
        self.closed = False
        self.on_dead = on_dead
        # The TLS socket, written through by the writer greenlet; None for a plain one.
        # gevent's SSLSocket is not a subclass of the stdlib's; check for either.
        self._tls = sock if isinstance(sock, ssl.SSLSocket | gevent.ssl.SSLSocket) else None
        # True while a write may go straight to the kernel: plain socket, open, no backlog.
        self._direct = self._tls is None
        # TLS: the writer greenlet while it runs. Plain: _CORKED while corked (the slot is
        # free there, and one more would cost every client 16 bytes).
        self._greenlet: gevent.Greenlet | object | None = None

    def cork(self) -> None:
        """Hold writes until :meth:`uncork`, then send them as one. For a client that
        spoke first (its name came with the connection), the prompt, the join burst and
        anything broadcast meanwhile leave in one ``send``, not one each: in a storm of
        10,000 such clients every ``send`` saved is ~10 us of kernel time. Plain sockets
        only (a TLS socket's writes already go through its writer greenlet)."""
        if self._direct:
            self._direct = False
            self._greenlet = _CORKED

    def uncork(self) -> None:
        """Send what :meth:`cork` held back (in order), and write directly again."""
        if self._greenlet is not _CORKED:
            return
        self._greenlet = None
        if self.closed:
            return
        backlog, self._backlog = self._backlog, _NO_BACKLOG
        self._queued = 0
        self._direct = True
        if backlog:
            self.write(backlog[0] if len(backlog) == 1 else b"".join(backlog))

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the peer without ever blocking the caller.

        This runs once per member per fan-out batch, so the common case (nothing queued,
        the kernel takes it all) is one flag test and one ``send``.
        """
        if self._direct:
            try:
                sent = self._raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._die(f"write failed: {exc.strerror or exc}")
                return
            if sent == len(data):
                return
            data = data[sent:]
            self._direct = False
            self._start_watcher()
        elif self.closed:
            return
        elif self._tls is not None:
            self._queue_for_greenlet(data)
            return
        self._hold(data)  # behind a backlog the write watcher drains, or corked

    @property
    def on_dead(self) -> Callable[[str], None] | None:
        owner = self._dead_owner
        return self._on_dead if owner is None else MethodType(self._on_dead, owner)

    @on_dead.setter
    def on_dead(self, callback: Callable[[str], None] | None) -> None:
        # A bound method (the usual case: the connection's) is kept as its function and
        # its object, so tens of thousands of idle outputs keep no method object each
        # (64 bytes apiece); it is called exactly as before.
        if isinstance(callback, MethodType):
            self._on_dead, self._dead_owner = callback.__func__, callback.__self__
        else:
            self._on_dead, self._dead_owner = callback, None

    def drain(self, timeout: float | None) -> bool:
        """Wait (this greenlet only) until the backlog is empty; True if it emptied."""
        if not self._queued or self.closed:
            return not self._queued
        if self._drained is None:
            self._drained = Event()
        return self._drained.wait(timeout)

    def close(self) -> None:
        """Drop anything queued and stop writing; the socket itself is the owner's."""
        self.closed = True
        self._direct = False
        self._backlog = _NO_BACKLOG
        self._queued = 0
        self._stop_watcher()
        if self._drained is not None:
            self._drained.set()

    # --- internals -----------------------------------------------------------------------

    def _hold(self, data: bytes) -> None:
        """Queue ``data`` behind what is queued already, within the bound."""
        if self._backlog is _NO_BACKLOG:
            self._backlog = []
        self._backlog.append(data)
        self._queued += len(data)
        if self._queued > self._limit:
            self._die(f"sendq exceeded ({self._queued} bytes queued)")

    def _queue_for_greenlet(self, data: bytes) -> None:
        self._hold(data)
        if not self.closed and self._greenlet is None:
            self._greenlet = gevent.spawn(self._write_loop)

    def _write_loop(self) -> None:
        """TLS only: drain the backlog with the socket's cooperative ``sendall``."""
        try:
            while self._backlog and not self.closed:
                data = b"".join(self._backlog)
                self._backlog = _NO_BACKLOG
                self._tls.sendall(data)
                self._queued = max(0, self._queued - len(data))
        except OSError as exc:
            self._die(f"write failed: {exc.strerror or exc}")
        finally:
            self._greenlet = None
            if not self._queued and self._drained is not None:
                self._drained.set()
                self._drained = None

    def _start_watcher(self) -> None:
        if self._watcher is None:
            loop = gevent.get_hub().loop
            self._watcher = loop.io(self._raw.fileno(), _EV_WRITE)
        self._watcher.start(self._on_writable)

    def _stop_watcher(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None

    def _on_writable(self) -> None:
        """Event-loop callback: push as much of the backlog as the kernel takes."""
        if self.closed:
            return
        data = b"".join(self._backlog) if len(self._backlog) > 1 else self._backlog[0]
        try:
            sent = self._raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._die(f"write failed: {exc.strerror or exc}")
            return
        if sent < len(data):
            self._backlog = [data[sent:]]
            self._queued = len(data) - sent
            return
        self._backlog = _NO_BACKLOG
        self._queued = 0
        self._direct = True
        self._watcher.stop()
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    def _die(self, reason: str) -> None:
        if self.closed:
            return
        self.close()
        if self._dead_owner is not None:
            self._on_dead(self._dead_owner, reason)
        elif self._on_dead is not None:
            self._on_dead(reason)
