"""A bystander: one client already in the lobby that keeps chatting while a crowd
registers (``loadtest.py --idle N --bystander``), timing the echo of each of its lines.

A plain thread with a blocking socket (the orchestrator is not a gevent program): it
registers before the crowd, then says a line every ``INTERVAL_S`` (5 lines/s, a fast
typist) and waits for its echo, reading (and discarding) the crowd's join notices.
"""

from __future__ import annotations

import socket
import threading
import time

INTERVAL_S = 0.2  # five lines a second: a fast typist
ECHO_TIMEOUT_S = 10.0


class Bystander:
    def __init__(self, host: str, port: int, name: str) -> None:
        self.name = name
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sock.sendall(f"{name}\n".encode())
        self._wait(f"* {name} joined".encode())
        self.latencies_ms: list[float] = []
        self.lost = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bystander")

    def _wait(self, want: bytes, deadline: float | None = None) -> bool:
        while True:
            *lines, self.buf = self.buf.split(b"\n")
            found = any(line.startswith(want) for line in lines)
            self.buf = b"" if found else self.buf
            if found:
                return True
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("bystander: closed by the server")
            self.buf += data

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        seq = 0
        try:
            while not self._stop.is_set():
                seq += 1
                sent = time.monotonic()
                self.sock.sendall(f"b{seq}\n".encode())
                try:
                    ok = self._wait(f"{self.name}: b{seq}".encode(), sent + ECHO_TIMEOUT_S)
                except TimeoutError:
                    ok = False
                if ok:
                    self.latencies_ms.append((time.monotonic() - sent) * 1000)
                else:
                    self.lost += 1
                self._stop.wait(INTERVAL_S)
        except OSError:
            self.lost += 1

    def stop(self) -> dict[str, float | int | None]:
        self._stop.set()
        self._thread.join(timeout=ECHO_TIMEOUT_S + 1)
        self.sock.close()
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 2) if lat else None

        return {"lines": len(lat), "lost": self.lost, "p50_ms": pct(50), "p99_ms": pct(99),
                "max_ms": round(lat[-1], 2) if lat else None}
