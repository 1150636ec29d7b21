"""Raw-socket HTTP and WebSocket clients for the web edge's tests.

Written by hand on purpose (no client library): the tests must be able to send what a
library would refuse to (unmasked, fragmented, oversized or binary frames, bad heads),
and every read has a deadline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import time

TIMEOUT = 10.0
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class Conn:
    """One TCP (or TLS) connection with a read buffer and deadlines."""

    def __init__(self, port: int, sock: socket.socket | None = None) -> None:
        self.port = port
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; have {self.buf[:200]!r}")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"timed out; have {self.buf[:200]!r}") from None
        if not chunk:
            raise EOFError(f"closed; have {self.buf[:200]!r}")
        self.buf += chunk

    def read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self._more(deadline)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_head(self, timeout: float = TIMEOUT) -> tuple[int, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._more(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    def response(self, head_only: bool = False, timeout: float = TIMEOUT) -> Response:
        deadline = time.monotonic() + timeout
        status, headers = self.read_head(timeout)
        n = 0 if head_only or status == 304 else int(headers.get("content-length", "0"))
        return Response(status, headers, self.read_exact(n, deadline))

    def request(self, path: str, method: str = "GET", headers: dict | None = None,
                head_only: bool = False) -> Response:
        hdrs = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        self.send((f"{method} {path} HTTP/1.1\r\n"
                   + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n").encode())
        return self.response(head_only=head_only or method == "HEAD")

    def closed(self, timeout: float = TIMEOUT) -> bool:
        """True once the server closes (any pending bytes are kept in ``buf``)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._more(deadline)
        except EOFError:
            return True
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def get(port: int, path: str, **kw) -> Response:
    c = Conn(port)
    try:
        return c.request(path, **kw)
    finally:
        c.close()


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    """A client frame (masked unless told otherwise)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class WsClient(Conn):
    """A WebSocket client over a raw socket."""

    def __init__(self, port: int, origin: str | None = "same", path: str = "/ws",
                 sock: socket.socket | None = None, host: str | None = None) -> None:
        super().__init__(port, sock)
        host = host or f"127.0.0.1:{port}"
        if origin == "same":
            origin = f"http://{host}"
        self.key = base64.b64encode(os.urandom(16)).decode()
        head = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
                "Sec-WebSocket-Version: 13\r\n")
        if origin:
            head += f"Origin: {origin}\r\n"
        self.send((head + "\r\n").encode())
        self.status, self.headers = self.read_head()
        if self.status == 101:
            want = base64.b64encode(hashlib.sha1(self.key.encode() + GUID).digest()).decode()
            assert self.headers["sec-websocket-accept"] == want

    def recv_frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        b0, b1 = self.read_exact(2, deadline)
        assert b0 & 0x80, "server frames are never fragmented here"
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.read_exact(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.read_exact(8, deadline))[0]
        return b0 & 0x0F, self.read_exact(n, deadline)

    def events(self, timeout: float = TIMEOUT) -> list[dict]:
        """The events of the next text frame (control frames are skipped)."""
        while True:
            op, payload = self.recv_frame(timeout)
            if op == TEXT:
                return json.loads(payload)
            if op == CLOSE:
                raise EOFError(f"close frame {payload!r}")

    def expect(self, pred, timeout: float = TIMEOUT) -> list[dict]:
        """Read events until ``pred(event)``; all events read, the match last."""
        seen: list[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                batch = self.events(max(0.01, deadline - time.monotonic()))
            except AssertionError:
                raise AssertionError(f"never matched; saw {seen!r}") from None
            for e in batch:
                seen.append(e)
                if pred(e):
                    return seen

    def send_json(self, obj: dict) -> None:
        self.send(frame(TEXT, json.dumps(obj).encode()))

    def line(self, text: str) -> None:
        self.send_json({"type": "line", "text": text})

    def login(self, name: str) -> list[dict]:
        assert self.events() == [{"type": "prompt", "what": "name"}]
        self.line(name)
        return self.expect(lambda e: e["type"] == "who")

    def close_code(self, timeout: float = TIMEOUT) -> tuple[int, str]:
        """Read until a close frame; its code and reason."""
        while True:
            op, payload = self.recv_frame(timeout)
            if op == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                return code, payload[2:].decode()
