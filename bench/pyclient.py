"""Pure-Python load-generator worker: the ``--engine python`` twin of ``genclient.c``.

It exists for machines without gcc and for small runs, and as a readable reference for
what the C worker does. It speaks exactly the same stdin/stdout protocol and prints the
same result JSON (see the comment at the top of ``genclient.c``), so the orchestrator in
``loadtest.py`` doesn't care which engine it drives. It counts newlines with
``bytes.count`` (C speed) and parses lines only during the handshake and on sender
connections, but its per-read overhead is Python's: expect it to become the limit long
before the C worker does.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import socket
import sys
import time
from dataclasses import dataclass, field

from histogram import Histogram

READ_CHUNK = 256 * 1024  # big reads: one call moves thousands of lines
MAX_LINE = 8192  # the server caps lines at 4096 bytes plus a name
MAX_ERRORS = 8
RATE_SENDQ_CAP = 1 << 20  # rate mode: skip a due line rather than queue past 1 MB
DRAIN_GRACE_S = 0.2  # keep reading this long after counts match, to see duplicates
STDIN_FD = 0

IDLE, CONNECTING, PROMPT, JOIN, SYNC, COUNT, FAILED = range(7)


@dataclass
class Conn:
    """One simulated client; mirrors ``struct conn`` in genclient.c."""

    name: bytes
    sender: int  # index into Worker.senders, or -1
    sock: socket.socket | None = None
    state: int = IDLE
    count: int = 0  # newlines read since the sync line
    carry: bytes = b""
    out: bytearray = field(default_factory=bytearray)
    want_out: bool = False


@dataclass
class Sender:
    """A client that sends; mirrors ``struct sender``."""

    conn: int
    gid: int
    sent: int = 0
    echoed: int = 0
    next_ns: int = 0


class Worker:
    """The epoll loop, the per-client state machine and the orchestrator protocol."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ep = select.epoll()
        self.conns = [
            Conn(name=f"{args.prefix}{i}".encode(), sender=i if i < args.senders else -1)
            for i in range(args.clients)
        ]
        self.senders = [Sender(conn=i, gid=args.sender_base + i) for i in range(args.senders)]
        self.fd_index: dict[int, int] = {}
        self.sync_line = f"{args.sync_name}: {args.sync_token}".encode()
        self.eager = getattr(args, "eager_name", False)
        self.padding = b" " + b"x" * args.pad if args.pad else b""
        self.sources = [s for s in args.sources.split(",") if s] if args.sources else []
        self.phase = "connect"
        self.next_connect = 0
        self.pending = self.registered = self.failed = self.disconnected = self.in_sync = 0
        self.recv_total = self.recv_at_stop = self.expect = 0
        self.echo_errors = self.deferred = 0
        self.connected_all = False
        self.t_start = time.monotonic_ns()
        self.t_connected = self.t_registered = self.t_go = self.t_stop = self.t_drain = 0
        self.drain_deadline = self.drain_matched = 0
        self.next_progress = self.t_start
        self.cpu_go = self.cpu_stop = 0.0
        self.hist = Histogram()
        self.errors: list[str] = []
        self.stdin_buf = b""
        self.quit = False
        self.ep.register(STDIN_FD, select.EPOLLIN)

    # ---- bookkeeping ----

    def note_error(self, msg: str) -> None:
        """Keep the first few distinct error messages."""
        if msg not in self.errors and len(self.errors) < MAX_ERRORS:
            self.errors.append(msg)

    def fail(self, c: Conn, why: str) -> None:
        """Close a client; after registration that is a disconnect the report must show."""
        if c.state == FAILED:
            return
        if c.state == SYNC:
            self.in_sync -= 1
        if c.state in (SYNC, COUNT):
            self.disconnected += 1
            self.note_error(f"{c.name.decode()} disconnected after registration: {why}")
        else:
            self.failed += 1
            self.pending -= 1
            self.note_error(f"client failed before registration: {why}")
        c.state = FAILED
        if c.sock is not None:
            self.fd_index.pop(c.sock.fileno(), None)
            self.ep.unregister(c.sock.fileno())
            c.sock.close()
            c.sock = None

    # ---- sending ----

    def set_out(self, c: Conn, want: bool) -> None:
        if c.want_out != want and c.sock is not None:
            mask = select.EPOLLIN | (select.EPOLLOUT if want else 0)
            self.ep.modify(c.sock.fileno(), mask)
            c.want_out = want

    def send(self, c: Conn, data: bytes) -> None:
        """Write what the kernel takes; queue the rest and ask for EPOLLOUT."""
        if not c.out and c.sock is not None:
            try:
                n = c.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self.fail(c, exc.strerror or str(exc))
                return
            data = data[n:]
            if not data:
                return
        c.out += data
        self.set_out(c, True)

    def flush(self, c: Conn) -> None:
        assert c.sock is not None
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(c, exc.strerror or str(exc))
            return
        del c.out[:n]
        if not c.out:
            self.set_out(c, False)

    def format_line(self, s: Sender, now: int) -> bytes:
        """One chat line: ``s<gid>:<seq>:<send_ns>[ padding]``."""
        s.sent += 1
        return b"s%d:%d:%d%s\n" % (s.gid, s.sent, now, self.padding)

    def fill(self, s: Sender) -> None:
        """Window mode: top the sender up to --window unechoed lines, in one write."""
        c = self.conns[s.conn]
        if self.phase != "run" or self.args.window <= 0 or c.state != COUNT:
            return
        now = time.monotonic_ns()
        lines = [self.format_line(s, now) for _ in range(self.args.window - (s.sent - s.echoed))]
        if lines:
            self.send(c, b"".join(lines))

    def rate_tick(self, now: int) -> None:
        """Rate mode: send every due line; skip (and count) what the socket can't take."""
        interval = int(1e9 / self.args.rate)
        for s in self.senders:
            c = self.conns[s.conn]
            if c.state != COUNT:
                continue
            lines = []
            while s.next_ns <= now:
                if len(c.out) > RATE_SENDQ_CAP:
                    self.deferred += 1
                else:
                    lines.append(self.format_line(s, now))
                s.next_ns += interval
            if s.next_ns + 1_000_000_000 < now:  # over a second behind: resynchronise
                self.deferred += (now - s.next_ns) // interval
                s.next_ns = now + interval
            if lines:
                self.send(c, b"".join(lines))

    # ---- receiving ----

    def own_echo(self, s: Sender, text: bytes, now: int) -> None:
        """An echo of this client's own line: check its order, record its latency."""
        try:
            gid, seq, sent_ns = (int(x) for x in text.split(b" ", 1)[0][1:].split(b":"))
        except ValueError:
            self.echo_errors += 1
            self.note_error(f"unparsable own echo: {text[:40]!r}")
            return
        if gid != s.gid:
            self.echo_errors += 1
            return
        if seq != s.echoed + 1:
            self.echo_errors += 1
            self.note_error(f"sender {gid}: echo {seq} after {s.echoed} (loss, dup or reorder)")
        s.echoed = max(s.echoed, seq)
        self.hist.record(now - sent_ns)

    def on_line(self, c: Conn, line: bytes, now: int) -> None:
        """One complete line in line mode (handshake, sync, or a sender's connection)."""
        if c.state == COUNT:
            c.count += 1
            self.recv_total += 1
            if c.sender >= 0 and line.startswith(c.name + b": "):
                self.own_echo(self.senders[c.sender], line[len(c.name) + 2 :], now)
            return
        stripped = line.rstrip(b" ")
        if c.state == PROMPT and stripped == b"? name:":
            c.state = JOIN
            if not self.eager:
                self.send(c, c.name + b"\n")
        elif c.state == JOIN:
            if stripped == b"* " + c.name + b" joined":
                c.state = SYNC
                self.t_registered = now  # the last registration so far; stalls don't count
                self.registered += 1
                self.in_sync += 1
                self.pending -= 1
            elif line.startswith(b"? "):
                self.fail(c, "prompted again after the name (taken, invalid or admin?)")
            elif line.startswith(b"! "):
                self.note_error(f"handshake: {line[:100].decode(errors='replace')}")
        elif c.state == SYNC and stripped == self.sync_line:
            c.state = COUNT
            self.in_sync -= 1

    def feed(self, c: Conn, data: bytes, now: int) -> None:
        """Split a chunk into lines; a plain receiver that just synced only counts."""
        data = c.carry + data if c.carry else data
        start = 0
        while c.state != FAILED:
            nl = data.find(b"\n", start)
            if nl < 0:
                c.carry = data[start:]
                if len(c.carry) > MAX_LINE:
                    self.fail(c, "line longer than MAX_LINE")
                return
            self.on_line(c, data[start:nl], now)
            start = nl + 1
            if c.state == COUNT and c.sender < 0:
                k = data.count(b"\n", start)
                c.count += k
                self.recv_total += k
                c.carry = b""
                return

    def on_readable(self, c: Conn, now: int) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(c, exc.strerror or str(exc))
            return
        if not data:
            self.fail(c, "server closed the connection")
        elif c.state == COUNT and c.sender < 0:
            k = data.count(b"\n")  # the hot path
            c.count += k
            self.recv_total += k
        else:
            self.feed(c, data, now)
            if c.sender >= 0 and c.state == COUNT:
                self.fill(self.senders[c.sender])

    # ---- connecting ----

    def start_connect(self, i: int) -> None:
        c = self.conns[i]
        c.state = CONNECTING
        self.pending += 1
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            self.fail(c, exc.strerror or str(exc))
            return
        c.sock = sock
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.sources:
                # Several source addresses multiply the ~28k ephemeral ports per pair.
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.sources[i % len(self.sources)], 0))
            err = sock.connect_ex((self.args.host, self.args.port))
        except OSError as exc:
            err = exc.errno or errno.EIO
        if err not in (0, errno.EINPROGRESS):
            self.fail(c, os.strerror(err))
            return
        self.fd_index[sock.fileno()] = i
        self.ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
        c.want_out = True

    def connect_more(self) -> None:
        """Keep at most --inflight clients connecting or in the handshake."""
        while self.next_connect < len(self.conns) and self.pending < self.args.inflight:
            self.start_connect(self.next_connect)
            self.next_connect += 1
        if not self.connected_all and self.next_connect == len(self.conns):
            if not any(c.state == CONNECTING for c in self.conns):
                self.connected_all = True
                self.t_connected = time.monotonic_ns()

    def on_event(self, c: Conn, events: int, now: int) -> None:
        if c.state == CONNECTING:
            assert c.sock is not None
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(c, os.strerror(err))
            else:
                c.state = PROMPT
                self.set_out(c, False)
                if self.eager:  # a program: its name at once; the prompt comes after it
                    self.send(c, c.name + b"\n")
            return
        if events & select.EPOLLOUT:
            self.flush(c)
        if c.state != FAILED and events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            self.on_readable(c, now)

    # ---- orchestration ----

    def abort_registration(self) -> None:
        """Registration timed out: fail the unregistered rest, so "ready" says how far."""
        if self.phase != "connect":
            return
        for c in self.conns:
            if c.state in (CONNECTING, PROMPT, JOIN):
                self.fail(c, "registration timed out")
        if self.next_connect < len(self.conns):
            self.failed += len(self.conns) - self.next_connect
            for c in self.conns[self.next_connect :]:
                c.state = FAILED
            self.next_connect = len(self.conns)
            self.note_error("registration timed out before some clients could start")

    def emit(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def total_sent(self) -> int:
        return sum(s.sent for s in self.senders)

    def on_command(self, cmd: str) -> None:
        now = time.monotonic_ns()
        if cmd == "sync":
            self.phase = "sync"
            if self.args.sync_sender:
                self.send(self.conns[0], self.args.sync_token.encode() + b"\n")
        elif cmd == "go":
            self.phase = "run"
            self.t_go = now
            self.cpu_go = time.process_time()
            for s in self.senders:
                s.next_ns = now
                self.fill(s)
        elif cmd == "stop":
            self.phase = "stopped"
            self.t_stop = now
            self.cpu_stop = time.process_time()
            self.recv_at_stop = self.recv_total
            self.emit(f"sent {self.total_sent()} {self.recv_total}")
        elif cmd.startswith("expect "):
            parts = cmd.split()
            self.expect = int(parts[1])
            timeout = float(parts[2]) if len(parts) > 2 else 5.0
            self.phase = "drain"
            self.drain_deadline = now + int(timeout * 1e9)
            self.drain_matched = 0
        elif cmd == "abort":
            self.abort_registration()
        elif cmd == "quit":
            self.quit = True

    def on_stdin(self) -> None:
        data = os.read(STDIN_FD, 4096)
        if not data:
            self.quit = True
            return
        self.stdin_buf += data
        *lines, self.stdin_buf = self.stdin_buf.split(b"\n")
        for line in lines:
            self.on_command(line.decode())

    def ready_fields(self) -> dict[str, object]:
        return {
            "clients": len(self.conns),
            "registered": self.registered,
            "failed": self.failed,
            "connect_s": max(self.t_connected - self.t_start, 0) / 1e9,
            "register_s": max(self.t_registered - self.t_start, 0) / 1e9,
            "errors": self.errors,
        }

    def results(self) -> dict[str, object]:
        """The result JSON; same keys as genclient.c's print_results."""
        # Clients dropped after counting something still count; see genclient.c.
        counted = [
            c.count for c in self.conns if c.state == COUNT or (c.state == FAILED and c.count)
        ]
        missing = sum(max(self.expect - n, 0) for n in counted)
        missing += (self.registered - len(counted)) * self.expect
        extra = sum(max(n - self.expect, 0) for n in counted)
        return {
            **self.ready_fields(),
            "disconnected": self.disconnected,
            "sent": self.total_sent(),
            "expect": self.expect,
            "received": self.recv_total,
            "received_at_stop": self.recv_at_stop,
            "missing": missing,
            "extra": extra,
            "count_min": min(counted, default=0),
            "count_max": max(counted, default=0),
            "echo_errors": self.echo_errors,
            "deferred": self.deferred,
            "run_s": max(self.t_stop - self.t_go, 0) / 1e9,
            "drain_s": max(self.t_drain - self.t_stop, 0) / 1e9,
            "cpu_s": self.cpu_stop - self.cpu_go,
            "lat_count": self.hist.total,
            "lat_max_ns": self.hist.max_ns,
            "sent_per_sender": [s.sent for s in self.senders],
            "lat_hist": self.hist.to_pairs(),
        }

    def check_phase(self, now: int) -> None:
        """Advance the phase machine after a batch of events."""
        if self.phase == "connect" and self.next_connect == len(self.conns) and not self.pending:
            self.t_connected = self.t_connected or now
            self.phase = "ready"
            self.emit("ready " + json.dumps(self.ready_fields()))
        elif self.phase == "sync" and self.in_sync == 0:
            self.phase = "synced"
            self.emit("synced")
        elif self.phase == "drain":
            done = all(c.count >= self.expect for c in self.conns if c.state == COUNT)
            if not done:
                self.drain_matched = 0
            elif not self.drain_matched:
                self.drain_matched = now
            grace_over = done and now - self.drain_matched >= DRAIN_GRACE_S * 1e9
            if grace_over or now >= self.drain_deadline:
                self.t_drain = self.drain_matched if done else now
                self.phase = "done"
                self.emit(json.dumps(self.results()))
        if now >= self.next_progress:
            self.next_progress = now + self.args.progress_ms * 1_000_000
            if self.phase == "connect":
                self.emit(f"r {self.registered} {self.failed}")
            elif self.phase == "run":
                self.emit(f"p {self.total_sent()} {self.recv_total}")

    def timeout(self, now: int) -> float:
        """Seconds until the next timer (progress, rate, drain)."""
        due = self.next_progress
        if self.phase == "run" and self.args.rate > 0 and self.senders:
            due = min(due, min(s.next_ns for s in self.senders))
        if self.phase == "drain":
            grace_end = self.drain_matched + int(DRAIN_GRACE_S * 1e9)
            due = min(due, grace_end if self.drain_matched else self.drain_deadline)
        return max(due - now, 0) / 1e9

    def run(self) -> None:
        self.connect_more()
        rotation = 0
        while not self.quit:
            events = self.ep.poll(self.timeout(time.monotonic_ns()), 1024)
            now = time.monotonic_ns()
            # Start each batch at a different event, as genclient.c does: serving epoll's
            # ready order first every time would favour some senders.
            rotation += 1
            if events:
                k = rotation % len(events)
                events = events[k:] + events[:k]
            for fd, mask in events:
                if fd == STDIN_FD:
                    self.on_stdin()
                elif (i := self.fd_index.get(fd)) is not None:
                    self.on_event(self.conns[i], mask, now)
            if self.phase == "connect":
                self.connect_more()
            if self.phase == "run" and self.args.rate > 0:
                self.rate_tick(now)
            self.check_phase(now)
        for c in self.conns:
            if c.sock is not None:
                c.sock.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The same options as genclient.c, so the orchestrator builds one command line."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--senders", type=int, default=0)
    p.add_argument("--sender-base", type=int, default=0)
    p.add_argument("--window", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.0, help="lines/s per sender")
    p.add_argument("--pad", type=int, default=0)
    p.add_argument("--sources", default="")
    p.add_argument("--inflight", type=int, default=256)
    p.add_argument("--progress-ms", type=int, default=250)
    p.add_argument("--sync-name", required=True)
    p.add_argument("--sync-token", required=True)
    p.add_argument("--sync-sender", action="store_true")
    p.add_argument("--eager-name", action="store_true", help="send the name on connect")
    args = p.parse_args(argv)
    if args.senders and (args.window > 0) == (args.rate > 0):
        p.error("senders need exactly one of --window or --rate")
    return args


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # every client is a descriptor
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    Worker(parse_args()).run()


if __name__ == "__main__":
    main()
