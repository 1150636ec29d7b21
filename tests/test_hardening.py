"""Hardening against hostile or broken clients, on real server processes (issue "Hardening").

Flood control, slow readers, connection limits and timeouts, over-long lines, the server
password, the per-IP admin login limit, the admins file mode, and impersonation (of server
lines and of other users' names). Every wait is bounded; timing assertions only ever check
that something was *delayed*, with generous bounds, never that something was fast, except
the "another user is not held up by a flooder" check (bounded at 1 s).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import TIMEOUT, LineClient, ServerProcess, add_admin, wait_for

MB = 1 << 20


class SockClient(LineClient):
    """A :class:`LineClient` on a socket made by the caller (bound source address, buffers)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.name = None


def connect_from(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None) -> SockClient:
    """Connect to 127.0.0.1:port from ``source`` (any 127/8 address), optionally with a small
    receive buffer set before the connect (so the kernel can't hide a slow reader for long)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return SockClient(sock)


class Collector:
    """Reads a socket in a thread until EOF or error: counts lines, keeps short copies.

    ``lines`` holds every line cut to 80 characters (so 30 MB of chat costs little here);
    ``done`` is set at EOF or on a socket error (``error`` says which).
    """

    def __init__(self, client: LineClient) -> None:
        self.client = client
        self.lines: list[str] = []
        self.seen: set[str] = set()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock, buf = self.client.sock, self.client.buf
        sock.settimeout(0.2)
        try:
            while not self._stop:
                try:
                    chunk = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                buf += chunk
                *complete, buf = buf.split(b"\n")
                new = [x[:80].decode("utf-8", "replace") for x in complete]
                self.lines.extend(new)
                self.seen.update(new)
        except OSError as exc:
            self.error = exc
        finally:
            self.done.set()

    def count(self, prefix: str) -> int:
        return sum(1 for x in list(self.lines) if x.startswith(prefix))

    def wait_line(self, line: str, timeout: float = TIMEOUT) -> None:
        wait_for(lambda: line in self.seen, timeout, f"line {line!r}")

    def stop(self) -> None:
        self._stop = True
        self._thread.join(TIMEOUT)


def history_records(path: Path) -> list[dict]:
    text = path.read_text("utf-8") if path.exists() else ""
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def log_text(srv: ServerProcess) -> str:
    return "".join(srv.log)


# --- 1. flood control ----------------------------------------------------------------------


@pytest.fixture
def srv_default(make_srv):
    return make_srv()


def test_flood_defaults_are_a_burst_of_10_then_3_per_second(srv_default):
    a = srv_default.connect("alice")
    a.send("".join(f"d{i}\n" for i in range(12)).encode())
    seen = a.expect(re.compile("^! slow down"))
    echoed = [x for x in seen if x.startswith("alice: ")]
    # The name line spent a token of the burst too (it is a line on this connection).
    assert echoed in ([f"alice: d{i}" for i in range(9)], [f"alice: d{i}" for i in range(10)])
    assert re.fullmatch(r"! slow down\b.*\b3\b.*\b10\b.*", seen[-1]), seen[-1]
    a.expect("alice: d11")  # delayed, not dropped


def test_flooder_lines_beyond_the_burst_are_delayed_and_warned_once(make_srv):
    srv = make_srv("--rate-limit", "5", "--rate-burst", "5")
    a = srv.connect("alice")
    a.send("".join(f"f{i}\n" for i in range(15)).encode())
    seen = a.expect(re.compile("^! slow down"))
    t_burst = time.monotonic()
    burst = [x for x in seen if x.startswith("alice: ")]
    assert len(burst) in (4, 5), seen  # the name line may have spent one token
    seen += a.expect("alice: f14", timeout=15)
    delay = time.monotonic() - t_burst
    # 10 or 11 lines at 5/s after the burst: 2 s in theory; "no earlier than ~1.5 s".
    assert 1.5 <= delay < 10, f"15th line came {delay:.2f}s after the burst"
    assert [x for x in seen if x.startswith("alice: ")] == [f"alice: f{i}" for i in range(15)]
    warnings = [x for x in seen if x.startswith("!")]
    assert warnings == ["! slow down: at most 5 lines/s after a burst of 5"]
    a.send("/who")  # still connected, and not warned again
    assert a.expect(re.compile(r"^\* online"), timeout=5)[:-1] == []


def test_flooder_is_disconnected_and_others_are_not_held_up(make_srv):
    burst, over = 5, 40  # the gate kicks on the 41st over-limit line of one flood
    srv = make_srv("--rate-limit", "10", "--rate-burst", str(burst))  # 40 over: ~4 s
    a, b, c = srv.connect("alice"), srv.connect("bob"), srv.connect("carol")
    flood = Collector(a)
    a.send("".join(f"f{i}\n" for i in range(burst + over + 30)).encode())
    flood.wait_line("alice: f6")  # the flood is on: alice's reader is being throttled
    for k in range(2):
        t0 = time.monotonic()
        b.send(f"ping{k}")
        c.expect(f"bob: ping{k}", timeout=1.0)  # AssertionError if it took 1 s or more
        latency = time.monotonic() - t0
        assert latency < 1.0
    assert not flood.done.is_set(), "flooder gone before 40 over-limit lines"
    assert flood.done.wait(TIMEOUT), "flooder never disconnected"
    echoed = [x for x in flood.lines if x.startswith("alice: ")]
    assert echoed == [f"alice: f{i}" for i in range(len(echoed))]
    # burst + 40 lines are handled; a stall of the server (CI) may let a token or two in.
    # (The name line may have spent one token of the burst.)
    assert burst + over - 1 <= len(echoed) <= burst + over + 3, len(echoed)
    errors = [x for x in flood.lines if x.startswith("!")]
    assert errors == ["! slow down: at most 10 lines/s after a burst of 5",
                      "! flooding: disconnected"], errors
    assert flood.lines[-1] == "! flooding: disconnected"
    b.expect("* alice left (flooding)")
    srv.wait_log("alice .*flooding")


def test_unthrottled_stream_does_not_hold_up_others(make_srv):
    """With flood control off, a client whose socket is always readable must still let the
    server serve everyone else (FIELD-NOTES: yielding with ``sleep(0)`` is not enough)."""
    srv = make_srv("--rate-limit", "0")
    alice, bob, carol = srv.connect("alice"), srv.connect("bob"), srv.connect("carol")
    for c in (bob, carol):  # another room: carol's socket carries no stream lines to wade
        c.send("/join side")  # through, so what is measured is the server, not carol
        c.expect(f"* {c.name} joined")
    bob.expect("* carol joined")
    a_in, c_in = Collector(alice), Collector(carol)
    total = 200_000
    payload = "".join(f"s{i}\n" for i in range(total)).encode()
    threading.Thread(target=alice.sock.sendall, args=(payload,), daemon=True).start()
    wait_for(lambda: len(a_in.lines) >= 1000, TIMEOUT, "the stream to be on")
    t0 = time.monotonic()
    bob.send("ping")
    c_in.wait_line("bob: ping", timeout=20)
    latency = time.monotonic() - t0
    streamed = len(a_in.lines)
    # Structural, not timed: bob's line got through while alice's stream was still going
    # (a starved loop would serve bob only after the whole stream). The delay is printed.
    print(f"bob's line took {latency:.2f}s ({streamed} of {total} streamed)")
    a_in.wait_line(f"alice: s{total - 1}", timeout=60)
    assert streamed < total, "bob's line was served only after alice's whole stream"


def test_rate_limit_0_turns_flood_control_off(make_srv):
    srv = make_srv("--rate-limit", "0")
    a = srv.connect("alice")
    a.send("".join(f"n{i}\n" for i in range(1000)).encode())
    seen = a.expect("alice: n999")
    assert [x for x in seen if x.startswith("alice: ")] == [f"alice: n{i}" for i in range(1000)]
    assert not [x for x in seen if x.startswith("!")]


# --- 2. slow readers -----------------------------------------------------------------------


def _rss_sampler(pid: int, stop: threading.Event, out: list[int]) -> threading.Thread:
    proc = psutil.Process(pid)

    def run() -> None:
        while not stop.is_set():
            try:
                out.append(proc.memory_info().rss)
            except psutil.Error:
                return
            stop.wait(0.02)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_slow_reader_is_disconnected_and_others_get_everything(make_srv):
    srv = make_srv("--rate-limit", "0", "--max-sendq", "65536")
    alice = srv.connect("alice")
    bob = srv.connect("bob")
    slow = connect_from(srv.port, rcvbuf=4096)
    slow.login("slow")  # ...and never reads again
    bob.expect("* slow joined")
    alice.expect("* slow joined")
    a_in, b_in = Collector(alice), Collector(bob)
    base = psutil.Process(srv.proc.pid).memory_info().rss
    samples: list[int] = []
    stop = threading.Event()
    sampler = _rss_sampler(srv.proc.pid, stop, samples)

    n, size = 7500, 4000  # 30 MB: far past what the kernel buffers for the slow reader
    body = "x" * (size - 12)
    alice.sock.settimeout(60)  # a deadline for a loaded machine, not a speed check
    try:
        for start in range(0, n, 500):
            alice.sock.sendall("".join(f"{i:07d} {body}\n" for i in range(start, start + 500))
                               .encode())
        alice.sock.sendall(b"the end\n")
        b_in.wait_line("alice: the end", timeout=60)
        a_in.wait_line("alice: the end", timeout=60)
    finally:
        stop.set()
        sampler.join(TIMEOUT)
    assert b_in.count("alice: ") == n + 1
    got = [int(x[7:14]) for x in b_in.lines if x.startswith("alice: ") and x[7:14].isdigit()]
    assert got == list(range(n))
    assert a_in.count("alice: ") == n + 1
    assert any("* slow left (sendq exceeded" in x for x in b_in.lines)
    srv.wait_log("slow .*sendq exceeded")
    peak = max(samples, default=base)
    growth = (peak - base) / MB
    print(f"\nserver RSS with one client that never reads: base {base / MB:.1f} MB, "
          f"peak {peak / MB:.1f} MB during 30 MB of chat (growth {growth:.1f} MB)")
    assert growth < 50, f"server RSS grew by {growth:.1f} MB"
    # The slow reader's socket ends: what it gets is a clean prefix of the chat, then EOF.
    lines = slow.closed(timeout=TIMEOUT)
    assert len([x for x in lines if x.startswith("alice: ")]) < n
    a_in.stop()
    b_in.stop()


def test_rss_with_1000_idle_clients(make_srv):
    srv = make_srv("--max-clients", "1100", "--rate-limit", "0", "--history-replay", "0")
    proc = psutil.Process(srv.proc.pid)
    watcher = srv.connect("watcher")
    base = proc.memory_info().rss
    socks = []
    try:
        for i in range(1000):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
            s.sendall(f"idle{i}\n".encode())  # answer the name prompt without waiting for it
            socks.append(s)
        deadline = time.monotonic() + 60
        while True:
            watcher.send("/who")
            who = watcher.expect(re.compile(r"^\* online \(\d+\)"))[-1]
            if who.startswith("* online (1001)"):
                break
            assert time.monotonic() < deadline, who
            time.sleep(0.2)  # polling interval of a bounded wait for the registrations
        rss = proc.memory_info().rss
        per_client = (rss - base) / 1000
        print(f"\nserver RSS: {base / MB:.1f} MB with 1 client, {rss / MB:.1f} MB with 1,001 "
              f"registered idle clients (~{per_client / 1024:.1f} KiB each)")
        assert rss - base < 100 * MB
        watcher.send("still fine")
        watcher.expect("watcher: still fine")
    finally:
        for s in socks:
            s.close()


# --- 3. limits -----------------------------------------------------------------------------


def test_max_clients_refuses_with_server_full_and_closes(make_srv):
    srv = make_srv("--max-clients", "3")
    clients = [LineClient(srv.port) for _ in range(3)]
    for c in clients:
        assert c.line() == "? name:"
    extra = LineClient(srv.port)
    t0 = time.monotonic()
    assert extra.closed(timeout=5) == ["! server full"]
    assert time.monotonic() - t0 < 5
    clients[0].close()  # a slot frees up
    wait_for(lambda: _gets_prompt(srv.port), TIMEOUT, "a new connection to be served")
    srv.wait_log("refused .*server full")


def _gets_prompt(port: int) -> bool:
    c = LineClient(port)
    try:
        return c.line(timeout=2) == "? name:"
    except (AssertionError, EOFError, ConnectionResetError):
        return False
    finally:
        c.close()


def test_max_per_ip(make_srv):
    srv = make_srv("--max-per-ip", "2")
    first = [connect_from(srv.port, "127.0.0.1") for _ in range(2)]
    for c in first:
        assert c.line() == "? name:"
    third = connect_from(srv.port, "127.0.0.1")
    assert third.closed(timeout=5) == ["! too many connections from 127.0.0.1"]
    other = connect_from(srv.port, "127.0.0.2")
    assert other.line() == "? name:"
    other.send("carol")
    other.expect("* carol joined")
    first[0].send("dave")  # the first two are still served
    first[0].expect("* dave joined")


def test_register_timeout(make_srv):
    srv = make_srv("--register-timeout", "1")
    t_conn = time.monotonic()
    silent = LineClient(srv.port)
    assert silent.line() == "? name:"
    bob = srv.connect("bob")  # registered in time: not affected
    assert silent.closed(timeout=6) == ["! registration timeout"]
    elapsed = time.monotonic() - t_conn
    assert 1.0 <= elapsed < 5, elapsed
    bob.send("still here")
    bob.expect("bob: still here")


def test_idle_timeout(make_srv):
    srv = make_srv("--idle-timeout", "1")
    alice, bob = srv.connect("alice"), srv.connect("bob")
    alice.expect("* bob joined")
    t0 = time.monotonic()
    while True:  # bob keeps talking, alice stays silent
        bob.send("/who")
        try:
            bob.expect("* alice left (idle timeout)", timeout=0.3)
            break
        except AssertionError:
            assert time.monotonic() - t0 < 8, "alice was never closed for idling"
    rest = alice.closed(timeout=5)
    assert rest and rest[-1].startswith("! ") and "idle" in rest[-1], rest
    bob.send("bob is fine")
    bob.expect("bob: bob is fine")


def test_over_long_lines_are_refused_and_the_connection_stays(make_srv):
    srv = make_srv("--max-line", "100", "--rate-limit", "0")
    a = srv.connect("alice")
    a.send("x" * 101)
    assert a.line() == "! line too long (max 100 bytes)"
    a.send("y" * 100)
    assert a.line() == "alice: " + "y" * 100
    a.send(b"z" * 5000 + b"\r\n")
    assert a.line() == "! line too long (max 100 bytes)"
    for _ in range(20):  # 200 KB without a newline, in pieces: one error, memory bounded
        a.send(b"w" * 10_000)
    a.send(b"\nafter\n")
    assert a.expect("alice: after") == ["! line too long (max 100 bytes)", "alice: after"]


# --- 7. server password --------------------------------------------------------------------


SERVER_PW = "open-sesame-4711"


@pytest.fixture
def pw_srv(make_srv, tmp_path):
    pw = tmp_path / "server-password"
    pw.write_text(f"{SERVER_PW}\nnot part of it\n", "utf-8")
    return make_srv("--password-file", str(pw), "--log-level", "DEBUG")


def test_server_password_is_asked_first(pw_srv):
    c = LineClient(pw_srv.port)
    assert c.line() == "? server password:"
    c.send("wrong-one-1")
    assert c.line() == "! wrong server password"
    assert c.line() == "? server password:"
    c.send(SERVER_PW)
    assert c.line() == "? name:"
    c.send("alice")
    c.expect("* alice joined")
    c.send("hello")
    c.expect("alice: hello")
    pw_srv.stop()
    everything = log_text(pw_srv) + pw_srv.history.read_text("utf-8")
    assert "hello" in everything  # the history is there...
    assert SERVER_PW not in everything and "wrong-one-1" not in everything  # ...no password


def test_three_wrong_server_passwords_close_the_connection(pw_srv):
    c = LineClient(pw_srv.port)
    assert c.line() == "? server password:"
    for i in range(2):
        c.send(f"guess-{i}")
        assert c.line() == "! wrong server password"
        assert c.line() == "? server password:"
    c.send("guess-2")
    assert c.closed(timeout=5) == ["! too many failed logins"]
    c2 = LineClient(pw_srv.port)  # a name before the password is just a wrong password
    assert c2.line() == "? server password:"
    c2.send("alice")
    assert c2.line() == "! wrong server password"
    wait_for(lambda: len(re.findall(r"WARNING.*failed server password", log_text(pw_srv))) == 4,
             TIMEOUT, "4 failed server passwords logged as warnings")
    log = log_text(pw_srv)
    assert "guess-" not in log and SERVER_PW not in log and "alice" not in log


# --- 8. admin logins -----------------------------------------------------------------------


@pytest.fixture
def admin_srv(make_srv):
    s = make_srv(start=False)
    add_admin(s.admins, "root", "s3cret-pw")
    return s.start()


def _fail_admin_logins(port: int, count: int, source: str = "127.0.0.1") -> None:
    """``count`` wrong passwords for root, on as many connections as that takes (3 each)."""
    done = 0
    while done < count:
        c = connect_from(port, source)
        assert c.line() == "? name:"
        for attempt in range(3):
            c.send("root")
            assert c.line() == "? password:"
            c.send(f"nope-{done}")
            done += 1
            if attempt == 2:
                assert c.closed(timeout=5) == ["! too many failed logins"]
            else:
                assert c.line() == "! wrong password"
                assert c.line() == "? name:"
            if done == count:
                break
        c.close()


def test_admin_logins_are_rate_limited_per_ip(admin_srv):
    _fail_admin_logins(admin_srv.port, 10)
    c = LineClient(admin_srv.port)
    assert c.line() == "? name:"
    c.send("root")
    assert c.line() == "? password:"
    c.send("s3cret-pw")  # the right one, too late
    assert c.closed(timeout=5) == ["! too many failed logins; try again later"]
    # Another address is not punished for 127.0.0.1's failures.
    other = connect_from(admin_srv.port, "127.0.0.2")
    other.login("root", "s3cret-pw")
    wait_for(lambda: len(re.findall("failed admin login", log_text(admin_srv))) >= 10, TIMEOUT,
             "10 failed logins in the log")
    log = log_text(admin_srv)
    failures = re.findall(r".*failed admin login.*", log)
    assert len(failures) == 10 and all("WARNING" in x for x in failures), failures
    assert "nope-" not in log and "s3cret-pw" not in log


def test_concurrent_admin_logins_do_not_bypass_the_per_ip_limit(admin_srv):
    conns = []
    for _ in range(30):
        c = LineClient(admin_srv.port)
        assert c.line() == "? name:"
        c.send("root")
        assert c.line() == "? password:"
        conns.append(c)
    for i, c in enumerate(conns):  # 30 guesses in flight at once
        c.send(f"guess-{i}")
    answers = [c.line() for c in conns]
    evaluated = answers.count("! wrong password")
    assert set(answers) <= {"! wrong password", "! too many failed logins; try again later"}
    assert evaluated <= 10, f"{evaluated} concurrent guesses were checked, limit is 10"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_readable_admins_file_is_refused(tmp_path, mode):
    admins = tmp_path / "admins.json"
    add_admin(admins, "root", "s3cret-pw")
    admins.chmod(mode)
    proc = subprocess.Popen(
        [sys.executable, "-m", "geventchat", "serve", "--host", "127.0.0.1", "--port", "0",
         "--history", str(tmp_path / "history.txt"), "--admins", str(admins)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=TIMEOUT)
        pytest.fail(f"server started with a mode {mode:o} admins file:\n{err}")
    assert proc.returncode != 0
    assert "chmod 600" in err, err
    assert "listening" not in err


# --- 9. impersonation ----------------------------------------------------------------------


SPOOFS = [
    b"* root joined\n",
    b"\n! fake\n",
    b"\r* x\n",
    b"? name:\n",
    b"(private) root -> bob: hi\n",
    b"\r\r! double cr\r\n",
    b"\x1b[2K\r* erased\n",
    b"\x1b[1G! cursor home\n",
    b"\x00* nul\n",
    b"\x0b* vt\n",
    b"\x0c! ff\n",
    b"\x1c* fs\n",
    b"\t! tab\n",
    "\u0085* nel\n".encode(),
    "\u2028* line separator\n".encode(),
    "\u2029! paragraph separator\n".encode(),
    "\u202e* bidi override\n".encode(),
    "\u2067? isolate\n".encode(),
    b"\xff* bad utf8\n",
    b"/me \n",
    b"//* slash escape\n",
]


def test_user_text_never_looks_like_a_server_line(make_srv):
    srv = make_srv("--rate-limit", "0")
    alice, bob = srv.connect("alice"), srv.connect("bob")
    alice.expect("* bob joined")
    alice.send(b"".join(SPOOFS))
    # Commands that carry user text put the author's name first, whatever the text.
    alice.send(b"/me \r* root joined\n/msg bob \r! secret\nEND\n")
    seen = bob.expect("alice: END")
    for line in seen:
        assert line.startswith(("alice: ", "* alice ", "(private) alice -> bob: ")), line
        assert not re.search("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", line), line
    for expected in ("alice: * root joined", "alice: ! fake", "alice: * x", "alice: ? name:",
                     "alice: (private) root -> bob: hi", "alice: ! double cr",
                     "alice: [2K* erased", "alice: * nul", "alice: * vt", "alice:  ! tab",
                     "alice: * nel", "alice: \u2028* line separator", "alice: * bidi override",
                     "alice: \ufffd* bad utf8", "alice: /* slash escape",
                     "* alice * root joined", "(private) alice -> bob: ! secret"):
        assert expected in seen, (expected, seen)


@pytest.mark.parametrize(("name", "answer"), [
    ("ALICE", "! name taken"),
    ("\uff41\uff4c\uff49\uff43\uff45", "! name taken"),  # fullwidth: NFKC folds it
    ("\u1d2c\u1d38\u1d35\u1d9c\u1d31", "!"),  # modifier letters ᴬᴸᴵᶜᴱ: NFKC folds or refuses
    ("al\u200bice", "! invalid name"),  # zero width space (Cf)
    ("alice\u200d", "! invalid name"),  # zero width joiner (Cf)
    ("\u202ealice", "! invalid name"),  # bidi override
    ("ali\u00adce", "! invalid name"),  # soft hyphen (Cf)
    ("alice\u2060", "! invalid name"),  # word joiner (Cf)
    ("alice\u034f", "!"),  # COMBINING GRAPHEME JOINER: invisible, but Mn
    ("alice\ufe0f", "!"),  # variation selector 16: invisible, but Mn
    ("alice\u3164", "!"),  # HANGUL FILLER: a blank letter (Lo)
    ("\u0430lice", "!"),  # Cyrillic а + Latin lice: mixed scripts
    ("\u0430\u04cf\u0456\u0441\u0435", "!"),  # аӏісе: all Cyrillic look-alikes of alice
])
def test_look_alike_names_are_refused_or_collide(make_srv, name, answer):
    srv = make_srv()
    alice = srv.connect("alice")
    c = LineClient(srv.port)
    assert c.line() == "? name:"
    c.send(name)
    reply = c.line()
    assert reply.startswith(answer), f"{name!r} got {reply!r}"
    assert c.line() == "? name:"
    alice.send("/who")
    assert alice.expect(re.compile(r"^\* online"))[-1] == "* online (1): alice"
