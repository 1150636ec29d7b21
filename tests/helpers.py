"""Test helpers: a real server process on an ephemeral loopback port, and a raw line client.

Everything waits on a condition with a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

TIMEOUT = 10.0
_LISTEN = re.compile(r"listening on [^\s:]+:(\d+)")


def add_admin(admins: Path, name: str, password: str) -> None:
    """Create an admin account through the real CLI (stdin is not a TTY: one line)."""
    subprocess.run([sys.executable, "-m", "geventchat", "admin", "add", name,
                    "--admins", str(admins)], input=password + "\n", text=True,
                   check=True, timeout=30, capture_output=True)


class ServerProcess:
    """``geventchat serve`` in a subprocess; stderr is collected by a thread."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.tmp = tmp
        self.history = tmp / "history.txt"
        self.admins = tmp / "admins.json"
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log: list[str] = []

    def start(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "geventchat", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--history", str(self.history),
               "--admins", str(self.admins), *self.extra]
        self.log = []
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, text=True)
        ready = threading.Event()

        def pump() -> None:
            for line in self.proc.stderr:
                self.log.append(line)
                m = _LISTEN.search(line)
                if m and not ready.is_set():
                    self.port = int(m.group(1))
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(TIMEOUT):
            self.kill()
            raise AssertionError("server did not start:\n" + "".join(self.log))
        return self

    def signal(self, sig: int) -> int:
        """Send ``sig`` and return the exit status (bounded wait)."""
        self.proc.send_signal(sig)
        return self.proc.wait(TIMEOUT)

    def stop(self) -> int:
        return self.signal(signal.SIGTERM)

    def restart(self) -> ServerProcess:
        """Stop gracefully and start again on the same port, files and flags."""
        assert self.stop() == 0
        return self.start()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)

    def wait_log(self, pattern: str, timeout: float = TIMEOUT) -> str:
        return wait_for(lambda: next((x for x in self.log if re.search(pattern, x)), None),
                        timeout, f"log line matching {pattern!r}")

    def connect(self, name: str | None = None, password: str | None = None) -> LineClient:
        c = LineClient(self.port)
        if name is not None:
            c.login(name, password)
        return c


def wait_for(cond: Callable[[], object], timeout: float = TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def read_until(sock, marker: bytes, timeout: float = 10.0) -> bytes:
    """Read a (gevent) socket until ``marker`` has arrived; everything read. In-process
    servers' tests: a gevent timeout, so the server's greenlets run meanwhile."""
    import gevent

    buf = b""
    with gevent.Timeout(timeout):
        while marker not in buf:
            chunk = sock.recv(65536)
            assert chunk, buf
            buf += chunk
    return buf


class LineClient:
    """A raw TCP client that reads server lines with a deadline, like ``nc`` would."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.buf = b""
        self.name: str | None = None

    def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else (line + "\n").encode()
        self.sock.sendall(data)

    def raw_line(self, timeout: float = TIMEOUT) -> bytes:
        """The next line's bytes, without ``\n``; AssertionError on timeout, EOFError at EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line within {timeout}s; have {self.buf!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise EOFError(f"connection closed; pending {self.buf!r}")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\n", 1)
        return raw

    def line(self, timeout: float = TIMEOUT) -> str:
        """The next server line (without newline); AssertionError on timeout or EOF."""
        return self.raw_line(timeout).decode("utf-8")

    def expect(self, wanted: str | re.Pattern, timeout: float = TIMEOUT) -> list[str]:
        """Read lines until one equals ``wanted`` (or matches a regex); return all read."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.line(max(0.01, deadline - time.monotonic()))
            except AssertionError:
                raise AssertionError(f"never got {wanted!r}; saw {seen!r}") from None
            seen.append(line)
            if (line == wanted if isinstance(wanted, str) else wanted.search(line)):
                return seen

    def login(self, name: str, password: str | None = None) -> list[str]:
        """Full handshake; returns the replayed history lines."""
        assert self.line() == "? name:"
        self.send(name)
        if password is not None:
            assert self.line() == "? password:"
            self.send(password)
        self.name = name
        return self.expect(f"* {name} joined")[:-1]

    def closed(self, timeout: float = TIMEOUT) -> list[str]:
        """Read until the server closes the connection; return the lines read meanwhile."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                lines.append(self.line(max(0.01, deadline - time.monotonic())))
            except EOFError:
                return lines
            except ConnectionResetError:
                return lines

    def close(self) -> None:
        self.sock.close()

