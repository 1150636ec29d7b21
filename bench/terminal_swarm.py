"""K real terminal clients chatting at a steady rate: latency as people see it.

    python bench/terminal_swarm.py --clients 50 --rate 20 --duration 20

loadtest.py measures the server with synthetic sockets; this measures the whole path a
person sees: ``geventchat connect`` processes on pseudo terminals (pexpect), typing lines
and drawing everyone's lines with prompt_toolkit. Every line carries the swarm's send time
(``z<terminal>:<seq>:<monotonic_ns>``), one reader thread per terminal strips the escape
codes and timestamps each line when it appears, and the report says whether every terminal
saw every line exactly once and whether any terminal fell behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import string
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pexpect
import psutil
from tqdm import tqdm

import target

# CSI (colours, cursor moves, modes), OSC (titles) and two-byte escapes.
ESCAPES = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
CPR_REQUEST = b"\x1b[6n"
CPR_REPLY = b"\x1b[24;1R"  # what a 24-row terminal with the cursor at the bottom answers
# A chat line from a swarm terminal. Not anchored: a prompt redraw ("name> ") can precede it
# on the same raw line once escapes are gone; the typed echo "name> z..." has no colon.
CHAT = re.compile(rb"([A-Za-z0-9_.-]+): z(\d+):(\d+):(\d+)")
TERM_SIZE = (24, 200)
READ_TIMEOUT_S = 0.2


@dataclass
class Terminal:
    """One ``geventchat connect`` on a pty, and what its reader thread saw."""

    index: int
    name: str
    child: pexpect.spawn
    registered: threading.Event = field(default_factory=threading.Event)
    seen: dict[tuple[int, int], int] = field(default_factory=dict)  # (sender, seq) -> ns
    duplicates: int = 0
    sent: int = 0
    eof: bool = False
    thread: threading.Thread | None = None

    def start_reader(self) -> None:
        self.thread = threading.Thread(target=self._read_loop, daemon=True, name=self.name)
        self.thread.start()

    def _read_loop(self) -> None:
        """Read the pty, answer CPR like a terminal, timestamp every complete line."""
        pending = b""
        joined = f"* {self.name} joined".encode()
        while True:
            try:
                data = self.child.read_nonblocking(65536, timeout=READ_TIMEOUT_S)
            except pexpect.TIMEOUT:
                continue
            except (pexpect.EOF, OSError):
                self.eof = True
                return
            now = time.monotonic_ns()
            if CPR_REQUEST in data:
                self.child.send(CPR_REPLY)
            *lines, pending = (pending + data).split(b"\n")
            for raw in lines:
                self._on_line(ESCAPES.sub(b"", raw), joined, now)

    def _on_line(self, visible: bytes, joined: bytes, now: int) -> None:
        if joined in visible:
            self.registered.set()
        for m in CHAT.finditer(visible):
            key = (int(m[2]), int(m[3]))
            if key in self.seen:
                self.duplicates += 1
            else:
                self.seen[key] = now - int(m[4])


class Observer:
    """A plain socket client: when each line leaves the server, with no terminal involved.

    Its latency is typing -> pty -> client -> server -> socket; the terminals' latency adds
    the display path. The difference tells the client's input side from its output side.
    """

    def __init__(self, host: str, port: int, name: str) -> None:
        self.name = name
        self.sock = socket.create_connection((host, port), timeout=30)
        self.seen: dict[tuple[int, int], int] = {}
        self.registered = threading.Event()
        self.thread = threading.Thread(target=self._read_loop, daemon=True, name=name)
        self.thread.start()

    def _read_loop(self) -> None:
        pending = b""
        joined = f"* {self.name} joined".encode()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            now = time.monotonic_ns()
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if line == b"? name:":
                    self.sock.sendall(self.name.encode() + b"\n")
                elif line == joined:
                    self.registered.set()
                elif m := CHAT.match(line):
                    self.seen.setdefault((int(m[2]), int(m[3])), now - int(m[4]))

    def close(self) -> None:
        try:
            self.sock.sendall(b"/quit\n")
            self.sock.close()
        except OSError:
            pass
        self.thread.join(timeout=2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", type=int, default=50, metavar="K", help="terminals (50)")
    p.add_argument("--rate", type=float, default=20.0, help="total lines/s, round robin (20)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of chatting (20)")
    p.add_argument(
        "--behind-ms",
        type=float,
        default=1000.0,
        help="a terminal whose p99 latency exceeds this fell behind (1000)",
    )
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait for stragglers")
    p.add_argument("--host", help="target a running server instead of starting one")
    p.add_argument("--port", type=int, help="its port (default 9999 with --host)")
    p.add_argument("--server-pid", type=int, help="pid of a --host/--port server, for CPU")
    p.add_argument(
        "--server-cmd", help="command that starts the server (python -m geventchat serve)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON line, no summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.clients < 1 or args.rate <= 0 or args.duration <= 0:
        p.error("--clients, --rate and --duration must be positive")
    if args.host and args.port is None:
        args.port = 9999
    return args


def spawn_terminal(index: int, name: str, host: str, port: int) -> Terminal:
    """``geventchat connect`` on a pty of its own; NO_COLOR so escapes stay few."""
    env = dict(os.environ, NO_COLOR="1", TERM="xterm", PYTHONPATH=target.pythonpath())
    args = ["-m", "geventchat", "connect", host, "--port", str(port), "--name", name]
    child = pexpect.spawn(
        sys.executable, args, env=env, cwd=str(target.REPO_ROOT), dimensions=TERM_SIZE
    )
    # pexpect sleeps 50 ms before every send by default; that would be counted as the
    # client's latency (the "typed" timestamp is taken before send()).
    child.delaybeforesend = None
    term = Terminal(index, name, child)
    term.start_reader()
    return term


def wait_registered(terms: list[Terminal], timeout: float, show: bool) -> float:
    """Seconds until every terminal showed its own join line; raises on timeout."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    with tqdm(
        total=len(terms), desc="terminals", unit="term", leave=False, disable=not show
    ) as bar:
        while (done := sum(t.registered.is_set() for t in terms)) < len(terms):
            bar.n = done
            bar.refresh()
            if time.monotonic() > deadline or any(t.eof for t in terms):
                late = [t.name for t in terms if not t.registered.is_set()][:5]
                raise RuntimeError(f"terminals not registered after {timeout:.0f}s: {late}")
            time.sleep(0.05)
    return time.monotonic() - t0


def chat(terms: list[Terminal], rate: float, duration: float, show: bool) -> int:
    """Type lines round robin at ``rate`` lines/s (Enter is CR, as on a keyboard)."""
    total = int(rate * duration)
    t0 = time.monotonic()
    with tqdm(total=total, desc="chatting", unit="line", leave=False, disable=not show) as bar:
        for n in range(total):
            delay = t0 + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            term = terms[n % len(terms)]
            term.sent += 1
            term.child.send(f"z{term.index}:{term.sent}:{time.monotonic_ns()}\r")
            bar.update()
    return total


def wait_delivered(terms: list[Terminal], sent: int, drain: float) -> float:
    """Wait until every terminal saw every line, or ``drain`` seconds; time taken."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < drain:
        if all(len(t.seen) >= sent for t in terms):
            break
        time.sleep(0.05)
    return time.monotonic() - t0


def quit_all(terms: list[Terminal]) -> None:
    """/quit everyone, then make sure every process is gone."""
    for t in terms:
        if t.child.isalive():
            t.child.send("/quit\r")
    deadline = time.monotonic() + 10
    for t in terms:
        while t.child.isalive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if t.child.isalive():
            t.child.terminate(force=True)
        if t.thread:
            t.thread.join(timeout=2)
        t.child.close(force=True)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def quantile_ms(values: list[int], q: float) -> float | None:
    """Nearest-rank percentile of nanosecond samples, in ms (exact: we keep them all)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, round(q / 100 * len(ordered)) - 1)] / 1e6, 2)


def terminal_report(t: Terminal, sent: int, behind_ms: float) -> dict[str, Any]:
    lat = list(t.seen.values())
    p99 = quantile_ms(lat, 99)
    missing = max(sent - len(t.seen), 0)
    return {
        "name": t.name,
        "seen": len(t.seen),
        "missing": missing,
        "duplicates": t.duplicates,
        "p99_ms": p99,
        "max_ms": quantile_ms(lat, 100),
        "fell_behind": bool(missing) or (p99 is not None and p99 > behind_ms),
    }


def summarise(
    args: argparse.Namespace, terms: list[Terminal], run: dict[str, Any]
) -> dict[str, Any]:
    sent = run["sent"]
    per_term = [terminal_report(t, sent, args.behind_ms) for t in terms]
    latencies = [ns for t in terms for ns in t.seen.values()]
    behind = [p for p in per_term if p["fell_behind"]]
    problems = []
    if missing := sum(p["missing"] for p in per_term):
        problems.append(f"LOSS: {missing} lines never appeared on a terminal")
    if dups := sum(p["duplicates"] for p in per_term):
        problems.append(f"DUPLICATION: {dups} lines appeared twice")
    worst = sorted(per_term, key=lambda p: -(p["p99_ms"] or 0))[:5]
    return {
        "clients": len(terms),
        "rate": args.rate,
        "duration": args.duration,
        "register_s": round(run["register_s"], 2),
        "lines_sent": sent,
        "expected": sent * len(terms),
        "seen": sum(p["seen"] for p in per_term),
        "drain_s": round(run["drain_s"], 2),
        "latency_ms": {f"p{q}": quantile_ms(latencies, q) for q in (50, 90, 99, 100)},
        "server_echo_ms": {f"p{q}": quantile_ms(run["observer"], q) for q in (50, 90, 99, 100)},
        "fell_behind": [p["name"] for p in behind],
        "worst_terminals": worst,
        "clients_cpu_pct": round(100 * run["clients_cpu"] / run["chat_s"], 1),
        "server_cpu_pct": None
        if run["server_cpu"] is None
        else round(100 * run["server_cpu"] / run["chat_s"], 1),
        "warnings": run["warnings"],
        "problems": problems,
        "ok": not problems,
    }


def human(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    echo = r["server_echo_ms"]
    lines = [
        f"terminal swarm: {r['clients']} terminals, {r['rate']:g} lines/s total, "
        f"{r['duration']:g} s",
        f"  registration {r['register_s']:.2f} s (all terminals showed their own join)",
        f"  lines        {r['lines_sent']} sent, {r['seen']} of {r['expected']} seen "
        f"(drained in {r['drain_s']:.2f} s)",
        f"  latency      p50 {lat['p50']} ms  p90 {lat['p90']} ms  p99 {lat['p99']} ms  "
        f"max {lat['p100']} ms  (typed to visible on every terminal)",
        f"  via socket   p50 {echo['p50']} ms  p90 {echo['p90']} ms  p99 {echo['p99']} ms  "
        f"max {echo['p100']} ms  (typed to delivered on a plain socket: the input side)",
        f"  CPU          clients {r['clients_cpu_pct']}% of a core in total, "
        f"server {r['server_cpu_pct']}%",
        "  slowest      "
        + ", ".join(f"{w['name']} p99 {w['p99_ms']} ms" for w in r["worst_terminals"][:3]),
    ]
    if r["fell_behind"]:
        lines.append(
            f"!!! {len(r['fell_behind'])} terminal(s) fell behind: {r['fell_behind'][:10]}"
        )
    else:
        lines.append("  behind       no terminal fell behind")
    lines += [f"  warning      {w}" for w in r["warnings"]]
    lines += [f"!!! {p}" for p in r["problems"]]
    return "\n".join(lines)


def run(args: argparse.Namespace, tgt: target.Target) -> dict[str, Any]:
    run_id = "".join(random.choices(string.ascii_lowercase, k=3))
    show = not args.no_progress
    terms = [spawn_terminal(i, f"sw{run_id}{i}", tgt.host, tgt.port) for i in range(args.clients)]
    observer = Observer(tgt.host, tgt.port, f"sw{run_id}obs")
    try:
        register_s = wait_registered(terms, 60 + args.clients, show)
        if not observer.registered.wait(10):
            raise RuntimeError("the observer socket did not register")
        pids = [t.child.pid for t in terms]
        monitor = target.Monitor(tgt.pid)
        monitor.start_cpu()
        cpu0 = cpu_seconds(pids)
        t0 = time.monotonic()
        sent = chat(terms, args.rate, args.duration, show)
        chat_s = time.monotonic() - t0
        clients_cpu = cpu_seconds(pids) - cpu0
        server_cpu = monitor.stop_cpu() if tgt.pid else None
        monitor.close()
        drain_s = wait_delivered(terms, sent, args.drain)
    finally:
        quit_all(terms)
        observer.close()
    return summarise(
        args,
        terms,
        {
            "sent": sent,
            "register_s": register_s,
            "chat_s": chat_s,
            "drain_s": drain_s,
            "clients_cpu": clients_cpu,
            "server_cpu": server_cpu,
            "warnings": tgt.warnings,
            "observer": list(observer.seen.values()),
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every terminal saw every line once, 1 on loss/duplication, 2 on errors."""
    args = parse_args(argv)
    try:
        if args.host:
            pid = args.server_pid or target.find_listener_pid(args.port)
            result = run(args, target.Target(args.host, args.port, pid))
        else:
            cmd = target.parse_server_cmd(args.server_cmd)
            with target.ServerProcess(cmd, max_clients=args.clients + 16) as tgt:
                result = run(args, tgt)
    except (RuntimeError, pexpect.ExceptionPexpect) as exc:
        print(f"terminal_swarm: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else human(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
