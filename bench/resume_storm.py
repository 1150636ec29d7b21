"""Resume storm: N clients reconnect at once after a server restart and resume without gaps.

    python bench/resume_storm.py --clients 1000 --missed 20

Starts a server on a free loopback port, connects N clients that ask for line ids
(``/ids``), lets a talker say some lines, restarts the server, has the talker say
``--missed`` more lines while everyone is away, then reconnects all N at once with
``/resume lobby EPOCH LAST``. Reports the time until every client has resumed (read its
``= resumed`` mark), checks that each got exactly the missed lines once, and measures a
bystander's echo round trip (p50/p99/max) during the storm. Exit status 0 when every
client resumed exactly, 1 otherwise.

Clients are gevent greenlets on gevent's sockets in this process (nothing patched).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent
from gevent import socket as gsocket

REPO = Path(__file__).resolve().parent.parent
ROOM = re.compile(rb"^= room lobby epoch (\S+) last (\d+)$")
IDS = re.compile(rb"^#(\d+)@\S+ (.*)$")
RESUMED = re.compile(rb"^= resumed lobby (\d+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, history: Path, clients: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "geventchat", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--history", str(history), "--admins", str(history.parent / "a.json"),
         "--rate-limit", "0", "--max-clients", str(clients + 50), "--log-level", "WARNING"],
        env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not start")


class Client:
    """One line-protocol connection on gevent's sockets."""

    def __init__(self, port: int) -> None:
        self.sock = gsocket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def until(self, pattern: re.Pattern) -> tuple[re.Match, list[bytes]]:
        seen = []
        while True:
            line = self.line()
            m = pattern.match(line)
            if m:
                return m, seen
            seen.append(line)

    def close(self) -> None:
        self.sock.close()


def login(port: int, name: str, *before: str) -> tuple[Client, list[bytes]]:
    c = Client(port)
    c.send("/ids")
    for line in before:
        c.send(line)
    c.send(name)
    _, seen = c.until(re.compile(rb"^\* " + re.escape(name.encode()) + rb" joined$"))
    return c, seen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--missed", type=int, default=20, help="lines said while all are away")
    p.add_argument("--json", action="store_true", help="one JSON line instead of text")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="resume-storm-"))
    port = free_port()
    server = start_server(port, tmp / "history.txt", args.clients)
    try:
        return run(args, port, server, tmp)
    finally:
        server.kill()


def run(args: argparse.Namespace, port: int, server: subprocess.Popen, tmp: Path) -> int:
    n = args.clients
    talker, _ = login(port, "talker")
    for i in range(5):
        talker.send(f"before {i}")
    talker.until(re.compile(rb"^#\d+@\S+ talker: before 4$"))
    positions: dict[str, tuple[str, int]] = {}

    def first(i: int) -> None:
        c, seen = login(port, f"u{i}")
        room = next(ROOM.match(x) for x in seen if ROOM.match(x))
        ids = [int(IDS.match(x).group(1)) for x in seen if IDS.match(x)]
        positions[f"u{i}"] = (room.group(1).decode(), max(ids, default=0))
        c.close()

    gevent.joinall([gevent.spawn(first, i) for i in range(n)], raise_error=True)
    talker.close()
    server.terminate()
    server.wait(30)
    server = start_server(port, tmp / "history.txt", n)
    talker, _ = login(port, "talker")
    for i in range(args.missed):
        talker.send(f"missed {i}")
    talker.until(re.compile(rb"^#\d+@\S+ talker: missed " + str(args.missed - 1).encode()
                            + rb"$"))
    bystander, _ = login(port, "bystander")
    rtts: list[float] = []
    storm_over = gevent.event.Event()

    def ping() -> None:
        k = 0
        while not storm_over.is_set():
            k += 1
            sent = time.perf_counter()
            bystander.send(f"ping {k}")
            bystander.until(re.compile(rb"^#\d+@\S+ bystander: ping " + str(k).encode() + rb"$"))
            rtts.append(time.perf_counter() - sent)
            gevent.sleep(0.005)

    pinger = gevent.spawn(ping)
    gevent.sleep(0.2)
    wrong: list[str] = []
    done_at: list[float] = []
    t0 = time.perf_counter()

    def again(name: str) -> None:
        epoch, last = positions[name]
        c, seen = login(port, name, f"/resume lobby {epoch} {last}")
        m, _ = c.until(RESUMED)
        done_at.append(time.perf_counter() - t0)
        texts = [IDS.match(x).group(2) for x in seen if IDS.match(x)]
        want = [f"talker: missed {i}".encode() for i in range(args.missed)]
        if texts[:args.missed] != want or int(m.group(1)) < args.missed:
            wrong.append(name)
        c.close()

    gevent.joinall([gevent.spawn(again, name) for name in positions], raise_error=True)
    total = time.perf_counter() - t0
    gevent.sleep(0.2)
    storm_over.set()
    pinger.join(10)
    ranked = sorted(rtts) or [0.0]
    p99 = ranked[max(0, -(-99 * len(ranked) // 100) - 1)]  # nearest rank
    result = {"clients": n, "missed": args.missed, "all_resumed_s": round(total, 3),
              "median_resume_s": round(statistics.median(done_at), 3),
              "exact": n - len(wrong), "bystander_round_trips": len(rtts),
              "bystander_p50_ms": round(statistics.median(rtts) * 1000, 2) if rtts else None,
              "bystander_p99_ms": round(p99 * 1000, 2),
              "bystander_max_ms": round(max(rtts) * 1000, 2) if rtts else None,
              "load_average": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"resume storm: {n} clients, {args.missed} lines missed each")
        print(f"  all resumed in {result['all_resumed_s']} s "
              f"(median client {result['median_resume_s']} s); exact: {result['exact']}/{n}")
        print(f"  bystander echo during the storm: p50 {result['bystander_p50_ms']} ms, "
              f"p99 {result['bystander_p99_ms']} ms, max {result['bystander_max_ms']} ms "
              f"({len(rtts)} round trips)")
        print(f"  load average {result['load_average']:.2f} (2-core machine)")
    server.kill()
    return 0 if not wrong else 1


if __name__ == "__main__":
    import gevent.event  # noqa: F401 (Event used above)

    sys.exit(main())
