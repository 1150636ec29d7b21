"""The HTTP edge: the web client's page, the WebSocket upgrade, health and metrics.

HTTP/1.1 is parsed by h11 (sans-IO) inside the connection's own greenlet; no WSGI stack.
On ``GET /ws`` with ``Upgrade: websocket`` the same socket, its output and the bytes h11
read past the request go to :class:`~geventchat.edges.websocket.WebSocketConnection`
(hypercorn does the same: h11 first, then a WebSocket codec on the same stream).

Routes: ``/`` (the one-page client, package data, ETag and 304), ``/ws``, ``/healthz``
(200 and one line of JSON while serving; 503 while stopping or while the backplane is
down), ``/metrics`` (Prometheus text). Anything else is a 404, another method a 405, a
malformed request a 400 (431 for an oversized head) and the connection is closed.

Limits: a request head of at most :data:`MAX_HEAD` bytes, no request bodies, and the
register timeout for every request head (a slowloris client that trickles its headers is
closed by the sweeper like a client that never sends a name).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import socket
import ssl
import time
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import gevent.ssl
import h11

from geventchat.edges.base import DRAIN_TIMEOUT, RECV_SIZE, EdgeContext, wake_reader
from geventchat.edges.outbuf import Output
from geventchat.edges.websocket import WebSocketConnection

if TYPE_CHECKING:
    from geventchat.server import ChatServer

log = logging.getLogger(__name__)

#: Largest request head (request line and headers). Browsers send 1-3 KiB; 16 KiB leaves
#: room for big cookies and bounds what a client can make us buffer.
MAX_HEAD = 16384
#: Largest request body accepted (there is no route that takes one).
MAX_BODY = 0
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_SERVER = ("server", "geventchat")
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


class Page:
    """The web client: bytes, ETag and a Content-Security-Policy that allows exactly its
    own inline script and style (by hash), so injected markup could run nothing."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        text = body.decode()

        def hashes(tag: str) -> str:
            found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S)
            return " ".join("'sha256-" + base64.b64encode(
                hashlib.sha256(s.encode()).digest()).decode() + "'" for s in found)

        self._csp = (f"default-src 'none'; script-src {hashes('script')}; "
                     f"style-src {hashes('style')}; connect-src 'self' {{ws}}; "
                     "img-src 'self'; base-uri 'none'; form-action 'none'; "
                     "frame-ancestors 'none'")

    def csp(self, host: str, tls: bool) -> str:
        """The policy; the WebSocket URL is named too (older browsers don't count ws:
        as 'self'), when the Host header is a plain host[:port]."""
        ws = f"{'wss' if tls else 'ws'}://{host}" if _HOST.fullmatch(host) else ""
        return self._csp.replace("{ws}", ws)

    @classmethod
    def load(cls) -> Page:
        return cls(resources.files("geventchat.web").joinpath("index.html").read_bytes())


_page: Page | None = None


def page() -> Page:
    global _page
    if _page is None:
        _page = Page.load()
    return _page


def is_tls(sock: socket.socket) -> bool:
    return isinstance(sock, ssl.SSLSocket | gevent.ssl.SSLSocket)


class HttpConnection:
    """One HTTP connection until it closes or becomes a WebSocket.

    It sits in the server's connection set like any client so the sweeper can time out a
    slow request head and the shutdown can close it; a request whose head has started
    when the shutdown comes is still answered (``/healthz`` then says 503)."""

    __slots__ = ("ctx", "sock", "addr", "addr_ip", "out", "h", "_closing", "_head_since",
                 "_partial", "upgrade", "__weakref__")

    protocol = "http"

    def __init__(self, ctx: EdgeContext, sock: socket.socket, addr: tuple) -> None:
        self.ctx = ctx
        self.sock = sock
        self.addr_ip = addr[0]
        self.addr = f"{addr[0]}:{addr[1]}"
        self.out = Output(sock, ctx.settings.max_sendq, on_dead=self._dead)
        self.h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._closing: str | None = None
        self._head_since: float | None = time.monotonic()
        self._partial = False  # bytes of a request head have arrived
        self.upgrade: tuple[bytes, str] | None = None  # (bytes after the head, origin)

    # --- what the server and sweeper call ------------------------------------------------

    def send(self, event: object) -> None:
        """Server-wide events (the shutdown notice) mean nothing to an HTTP client."""

    def close(self, reason: str, error: str | None = None) -> None:
        if self._closing is not None:
            return
        if reason == "server shutdown" and self._partial:
            return  # a request under way is answered first (then the connection closes)
        self._closing = reason
        wake_reader(self.sock)

    def expire(self, now: float) -> None:
        since = self._head_since
        if (self._closing is None and since is not None
                and now - since > self.ctx.settings.register_timeout):
            if self._partial:
                self.out.write(plain_response(408, "request timeout\n"))
            self.close("request timeout")

    def _dead(self, reason: str) -> None:
        self._closing = self._closing or reason
        wake_reader(self.sock)

    # --- the request loop ----------------------------------------------------------------

    def run(self, first: bytes) -> None:
        """Serve requests (keep-alive) until the client or the server closes, or the
        connection is upgraded (then :attr:`upgrade` is set)."""
        if first:
            self._partial = True
            self.h.receive_data(first)
        while self._closing is None:
            request = self._next()
            if request is None:
                break
            self._head_since = None
            if not self._respond(request):
                break
            if self.upgrade is not None:
                return
            if self.h.our_state is h11.MUST_CLOSE or self.h.their_state is not h11.DONE:
                break
            try:
                self.h.start_next_cycle()
            except h11.LocalProtocolError:
                break
            self._head_since = time.monotonic()
            self._partial = bool(self.h.trailing_data[0])
        self.out.drain(DRAIN_TIMEOUT)
        self.out.close()

    def _event(self) -> object | None:
        """The next h11 event, reading as needed; None when the connection is over (a
        bad request was answered, or the peer went away)."""
        while True:
            try:
                event = self.h.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if self._partial:
                    text = ("request head too large\n" if status == 431
                            else f"bad request: {exc}\n")
                    self.out.write(plain_response(status, text))
                log.debug("http %s: bad request: %s", self.addr, exc)
                return None
            if event is not h11.NEED_DATA:
                return event
            if self._closing is not None:
                return None
            try:
                data = self.sock.recv(RECV_SIZE)
            except OSError:
                return None
            if data:
                self._partial = True
            self.h.receive_data(data)  # b"": EOF, seen as ConnectionClosed or an error

    def _next(self) -> h11.Request | None:
        """The next complete request (head and empty body), or None to close."""
        event = self._event()
        if not isinstance(event, h11.Request):
            return None
        # h11 bounds only a head that is still incomplete; one that came whole is
        # measured here.
        if len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) > MAX_HEAD:
            self.out.write(plain_response(431, "request head too large\n"))
            return None
        while True:
            more = self._event()
            if isinstance(more, h11.EndOfMessage):
                return event
            if isinstance(more, h11.Data) and len(more.data) <= MAX_BODY:
                continue
            if isinstance(more, h11.Data):
                self.out.write(plain_response(413, "no request body is accepted\n"))
            return None

    def _respond(self, req: h11.Request) -> bool:
        """Answer one request; False to close the connection."""
        method = req.method
        path = req.target.split(b"?", 1)[0]
        headers = {k: v for k, v in req.headers}  # h11 lowercases the names
        if method not in (b"GET", b"HEAD"):
            self._send(405, b"method not allowed\n", "text/plain; charset=utf-8",
                       [("allow", "GET, HEAD")], close=True)
            return False
        head = method == b"HEAD"
        if path == b"/":
            return self._page(headers, head)
        if path == b"/ws":
            return self._websocket(req, headers)
        if path == b"/healthz":
            status, body = health(self.ctx)
            self._send(status, body, "application/json", [("cache-control", "no-store")],
                       head=head)
            return True
        if path == b"/metrics":
            from geventchat.edges.metrics import CONTENT_TYPE, exposition
            self._send(200, exposition(self.ctx), CONTENT_TYPE,
                       [("cache-control", "no-store")], head=head)
            return True
        self._send(404, b"not found\n", "text/plain; charset=utf-8", head=head)
        return True

    def _page(self, headers: dict[bytes, bytes], head: bool) -> bool:
        p = page()
        common = [("etag", p.etag), ("cache-control", "no-cache"),
                  ("content-security-policy",
                   p.csp(headers.get(b"host", b"").decode("latin-1"), is_tls(self.sock))),
                  ("x-content-type-options", "nosniff"),
                  ("referrer-policy", "no-referrer"), ("x-frame-options", "DENY")]
        match = headers.get(b"if-none-match", b"").decode("latin-1")
        if match.strip() == "*" or p.etag in [t.strip().removeprefix("W/")
                                              for t in match.split(",")]:
            self._send(304, b"", None, common, head=True)
        else:
            self._send(200, p.body, "text/html; charset=utf-8", common, head=head)
        return True

    def _send(self, status: int, body: bytes, ctype: str | None,
              extra: list[tuple[str, str]] = (), head: bool = False,
              close: bool = False) -> None:
        hdrs = [_SERVER]
        if ctype is not None:
            hdrs.append(("content-type", ctype))
        if status != 304:
            hdrs.append(("content-length", str(len(body))))
        hdrs.extend(extra)
        if close or self.ctx.hub.stopping:
            hdrs.append(("connection", "close"))
        h = self.h
        data = h.send(h11.Response(status_code=status, headers=hdrs,
                                   reason=_REASONS.get(status, b"")))
        if body and not head:
            data += h.send(h11.Data(data=body))
        data += h.send(h11.EndOfMessage())
        self.out.write(data)

    # --- the WebSocket handshake (RFC 6455 4.2) -----------------------------------------

    def _websocket(self, req: h11.Request, headers: dict[bytes, bytes]) -> bool:
        def tokens(name: bytes) -> set[str]:
            return {t.strip().lower() for t in headers.get(name, b"").decode("latin-1")
                    .split(",")}

        if "websocket" not in tokens(b"upgrade") or "upgrade" not in tokens(b"connection"):
            self._send(426, b"this is a WebSocket endpoint\n", "text/plain; charset=utf-8",
                       [("upgrade", "websocket"), ("connection", "Upgrade")], close=True)
            return False
        if headers.get(b"sec-websocket-version") != b"13":
            self._send(426, b"unsupported WebSocket version\n", "text/plain; charset=utf-8",
                       [("sec-websocket-version", "13")], close=True)
            return False
        key = headers.get(b"sec-websocket-key", b"")
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid_key = False
        if not valid_key:
            self._send(400, b"bad Sec-WebSocket-Key\n", "text/plain; charset=utf-8",
                       close=True)
            return False
        origin = headers.get(b"origin", b"").decode("latin-1")
        host = headers.get(b"host", b"").decode("latin-1")
        if not origin_allowed(origin, host, is_tls(self.sock),
                              self.ctx.settings.allowed_origins):
            log.warning("websocket from %s refused: origin %r not allowed", self.addr, origin)
            self._send(403, b"origin not allowed\n", "text/plain; charset=utf-8", close=True)
            return False
        if self.ctx.hub.stopping:
            self._send(503, b"server shutting down\n", "text/plain; charset=utf-8",
                       close=True)
            return False
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
        # No Sec-WebSocket-Extensions in the answer: no permessage-deflate, so a batch is
        # one frame built once for every member.
        self.out.write(self.h.send(h11.InformationalResponse(
            status_code=101, reason=b"Switching Protocols",
            headers=[("upgrade", "websocket"), ("connection", "Upgrade"),
                     ("sec-websocket-accept", accept), _SERVER])))
        self.upgrade = (self.h.trailing_data[0], origin)
        return True


def origin_allowed(origin: str, host: str, tls: bool, allowed: tuple[str, ...]) -> bool:
    """Same origin (scheme and host:port of this server as the client addressed it), an
    origin given with ``--allowed-origin``, or ``*``. No Origin header at all is a
    non-browser client (browsers always send one), which cross-site rules don't concern."""
    if not origin:
        return True
    if "*" in allowed or origin.rstrip("/").lower() in {a.rstrip("/").lower()
                                                        for a in allowed}:
        return True
    try:
        o = urlsplit(origin)
        scheme = "https" if tls else "http"
        default = 443 if tls else 80
        mine = urlsplit(f"{scheme}://{host}")
        return (o.scheme == scheme and o.hostname is not None
                and o.hostname == mine.hostname
                and (o.port or default) == (mine.port or default))
    except ValueError:
        return False


def backplane_up(ctx: EdgeContext) -> bool:
    """The broker's state: the in-process one is always up; a cluster broker tells with a
    ``backplane_up`` attribute."""
    return bool(getattr(ctx.hub.broker, "backplane_up", True))


def health(ctx: EdgeContext) -> tuple[int, bytes]:
    hub = ctx.hub
    if hub.stopping:
        status, code = "stopping", 503
    elif not backplane_up(ctx):
        status, code = "backplane down", 503
    else:
        status, code = "ok", 200
    body = {"status": status, "users": len(hub.users), "connections": len(ctx.connections)}
    return code, (json.dumps(body) + "\n").encode()


_REASONS = {200: b"OK", 304: b"Not Modified", 400: b"Bad Request", 403: b"Forbidden",
            404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
            413: b"Content Too Large", 426: b"Upgrade Required",
            431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def plain_response(status: int, text: str) -> bytes:
    """A complete error response that closes the connection, for when h11 can't help."""
    body = text.encode()
    reason = _REASONS.get(status, b"Error").decode()
    return (f"HTTP/1.1 {status} {reason}\r\nserver: geventchat\r\n"
            f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


def serve_http(server: ChatServer, sock: socket.socket, addr: tuple, first: bytes) -> None:
    """Handler body for an HTTP client: requests, then maybe a WebSocket on the same
    socket."""
    conn = HttpConnection(server, sock, addr)
    server.connections.add(conn)
    try:
        conn.run(first)
    except Exception:
        log.exception("http connection %s failed", conn.addr)
        conn.out.close()
        return
    finally:
        server.connections.discard(conn)
    if conn.upgrade is None:
        return
    rest, origin = conn.upgrade
    ws = WebSocketConnection(server, sock, addr, out=conn.out)
    server.connections.add(ws)
    try:
        ws.run(rest)
    finally:
        server.connections.discard(ws)
