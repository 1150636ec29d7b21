"""Bad bytes: property-based fuzzing of the sans-IO pieces, and garbage thrown at a live server.

The hypothesis properties run a fixed number of examples each (``EXAMPLES``, fewer for the
costly byte-by-byte one) with no example database, so every run does the same amount of work;
each test prints (``-s``) and checks how many it ran.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
import unicodedata
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geventchat.core.errors import ChatError
from geventchat.core.text import NAME_MAX, check_name, clean
from geventchat.wire.native import TOO_LONG, Command, LineDecoder, parse
from tests.helpers import TIMEOUT, LineClient, wait_for

EXAMPLES = 2000

#: What may never survive into a parsed line: Cc (C0, DEL, C1) and the bidi controls.
_FORBIDDEN = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]} | set(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def run_property(prop: Callable[..., None], *strategies: st.SearchStrategy,
                 examples: int = EXAMPLES) -> int:
    """Run ``prop`` over ``examples`` generated examples; return how many calls were made."""
    calls = 0

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.tuples(*strategies))
    def wrapped(args: tuple) -> None:
        nonlocal calls
        calls += 1
        prop(*args)

    wrapped()
    return calls


# --- LineDecoder ---------------------------------------------------------------------------

#: Pieces that make line structure likely: endings, lone CRs, NULs, invalid and valid UTF-8.
_PIECES = st.sampled_from([b"\n", b"\r", b"\r\n", b"\r\r\n", b"\x00", b"\xff", b"\xc3",
                           b"\xc3\xa9", b"\xe2\x80\xa8", b"a", b"abc ", b"/me x"])
_STREAM = st.one_of(
    st.binary(max_size=600),
    st.lists(st.one_of(_PIECES, st.binary(max_size=40),
                       st.integers(1, 80).map(lambda n: b"x" * n)), max_size=60)
    .map(b"".join),
)


def _reference(data: bytes, limit: int) -> list[object]:
    """What the decoder must produce for ``data`` however it is chunked, close() included."""
    *complete, tail = data.split(b"\n")
    out: list[object] = []
    for raw in [*complete, tail] if tail else complete:
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        out.append(TOO_LONG if len(raw) > limit else raw.decode("utf-8", "replace"))
    return out


def test_line_decoder_fuzz():
    def prop(data: bytes, limit: int, cuts: list[int]) -> None:
        decoder = LineDecoder(limit)
        bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
        got: list[object] = []
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            got += decoder.feed(data[lo:hi])
            assert len(decoder._buf) <= limit + 1  # memory stays bounded by the limit
        got += decoder.feed(b"")
        got += decoder.close()
        assert got == _reference(data, limit)
        for line in got:
            assert line is TOO_LONG or (isinstance(line, str) and len(line) <= limit)

    n = run_property(prop, _STREAM, st.integers(1, 64), st.lists(st.integers(0, 10_000),
                                                                 max_size=12))
    print(f"\nLineDecoder: {n} examples")
    assert n >= EXAMPLES


def test_line_decoder_byte_at_a_time_equals_one_chunk():
    def prop(data: bytes, limit: int) -> None:
        whole, single = LineDecoder(limit), LineDecoder(limit)
        a = whole.feed(data) + whole.close()
        b: list[object] = []
        for i in range(len(data)):
            b += single.feed(data[i:i + 1])
        assert a == b + single.close()

    n = run_property(prop, _STREAM, st.integers(1, 16), examples=500)
    print(f"\nLineDecoder byte by byte: {n} examples")
    assert n >= 500


# --- parse ---------------------------------------------------------------------------------

_LINES = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(["/", "//", "/me", "/msg", " ", "\t", "exit", "clear", "\x1b[2J",
                              "\u202e", "\u2066", "\x85", "\x00", "a", "é", "\r", "\u200b"]),
             max_size=12).map("".join),
)


def test_parse_fuzz():
    def prop(line: str) -> None:
        cmd = parse(line)
        if cmd is None:
            assert not clean(line).strip()  # None only for lines empty after cleaning
            return
        assert isinstance(cmd, Command)
        assert not (_FORBIDDEN & set(cmd.name)), repr(cmd)
        assert not (_FORBIDDEN & set(cmd.arg)), repr(cmd)
        assert "\t" not in cmd.arg
        if cmd.name == "say":
            assert cmd.arg.strip()  # never an empty chat line
        assert parse(clean(line)) == cmd  # cleaning is all parse does to the text

    n = run_property(prop, _LINES)
    print(f"\nparse: {n} examples")
    assert n >= EXAMPLES


# --- check_name ----------------------------------------------------------------------------

_NAMES = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(categories=["Lu", "Ll", "Lo", "Lm", "Mn", "Mc", "Nd", "No", "Cf",
                                      "Zs", "Pc", "Pd"]), max_size=40),
    st.text(st.sampled_from("aAß_-.é\u0301\u200b\u200d\u202e\u00ad\uff41\ufb01\u2126\u212a"
                            "\u0130\u0131 \t\x00"), max_size=36),
)


def test_check_name_fuzz():
    def prop(raw: str) -> None:
        try:
            name = check_name(raw)
        except ChatError:
            return  # the one allowed failure
        assert 1 <= len(name) <= NAME_MAX
        assert unicodedata.normalize("NFKC", name) == name  # NFKC-stable
        assert check_name(name) == name  # idempotent: the accepted form is accepted as is
        cats = {unicodedata.category(c) for c in name}
        assert not cats & {"Cc", "Cf", "Zs", "Zl", "Zp"}, repr(name)
        assert not set(name) & set(" *!?(:"), repr(name)  # can't mimic a server line

    n = run_property(prop, _NAMES)
    print(f"\ncheck_name: {n} examples")
    assert n >= EXAMPLES


#: Default_Ignorable_Code_Point (Unicode DerivedCoreProperties): invisible wherever they are.
_DEFAULT_IGNORABLE = [0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5,
                      *range(0x180B, 0x1810), *range(0x200B, 0x2010), *range(0x202A, 0x202F),
                      *range(0x2060, 0x2070), 0x3164, *range(0xFE00, 0xFE10), 0xFEFF, 0xFFA0,
                      *range(0xFFF0, 0xFFF9), *range(0x1BCA0, 0x1BCA4),
                      *range(0x1D173, 0x1D17B), *range(0xE0000, 0xE0080),
                      *range(0xE0100, 0xE01F0)]


def test_check_name_refuses_invisible_characters_fuzz():
    def prop(prefix: str, ch: int, suffix: str) -> None:
        try:
            name = check_name(prefix + chr(ch) + suffix)
        except ChatError:
            return
        hidden = [hex(ord(c)) for c in name if ord(c) in _DEFAULT_IGNORABLE]
        assert not hidden, f"{name!r} accepted with invisible {hidden}"

    part = st.text("alice", max_size=5)
    n = run_property(prop, part, st.sampled_from(_DEFAULT_IGNORABLE), part, examples=500)
    print(f"\ncheck_name invisible characters: {n} examples")
    assert n >= 500


# --- a live server under garbage -----------------------------------------------------------


def _garbage(rng: random.Random, size: int) -> bytes:
    """Random bytes with NULs, 0xff, CR and LF made common."""
    data = bytearray(rng.randbytes(size))
    for _ in range(size // 16 + 1):
        data[rng.randrange(size)] = rng.choice(b"\x00\xff\n\r\n\x1b")
    return bytes(data)


def _wait_closed(sock: socket.socket, timeout: float = TIMEOUT) -> None:
    """Read until the server closes; AssertionError if it keeps the connection open."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("server left a half-closed connection open")
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return
        except ConnectionResetError:
            return
        except TimeoutError:
            continue


def _read_until(sock: socket.socket, marker: bytes, timeout: float = TIMEOUT) -> None:
    """Read (and drop) what the server sends until ``marker`` has been seen."""
    deadline, got = time.monotonic() + timeout, b""
    while marker not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {marker!r}"
        sock.settimeout(left)
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed before {marker!r}"
        got = got[-len(marker):] + chunk


def _abuse(port: int, rng: random.Random, kind: str) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    name = f"g{rng.randrange(10**9)}"
    try:
        if kind == "register":  # a real user who then sends garbage
            sock.sendall(f"{name}\n".encode())
            _read_until(sock, f"* {name} joined\n".encode())
        for _ in range(rng.randint(1, 6)):
            try:
                sock.sendall(_garbage(rng, rng.choice([1, 7, 100, 1500, 4096, 9000, 70_000])))
            except OSError:  # the server may drop us (e.g. too many failed logins)
                return
        if kind == "halfclose":  # a line without its end, then EOF from our side
            try:
                sock.sendall(b"unfinished line \xff\x00")
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return
            _wait_closed(sock)
        elif kind in ("reset", "register"):  # RST instead of FIN
            if kind == "register":  # (after the server has read it all: an RST drops the rest)
                sock.sendall(f"\n{name}-done\n".encode())
                _read_until(sock, f"{name}: {name}-done\n".encode())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


def test_live_server_survives_garbage(make_srv):
    # alice and bob don't read while the abusers' lines pile up for them: a sendq big enough
    # for the whole storm, so what is tested is garbage, not slow readers (test_hardening).
    srv = make_srv("--rate-limit", "0", "--max-sendq", "64000000")
    alice, bob = srv.connect("alice"), srv.connect("bob")
    seed = random.randrange(2**32)
    kinds = ["garbage", "halfclose", "reset", "register"]
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        rng = random.Random(seed + w)
        try:
            for i in range(12):
                _abuse(srv.port, rng, kinds[(w + i) % len(kinds)])
        except BaseException as exc:  # reported below with the seed
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(6)]
    for t in threads:
        t.start()
    alice.send("during the storm")
    bob.expect("alice: during the storm", timeout=TIMEOUT)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), f"abusers stuck (seed {seed})"
    assert not errors, f"seed {seed}: {errors!r}"

    assert srv.proc.poll() is None, "server died"
    alice.send("after the storm")
    bob.expect("alice: after the storm")
    carol = LineClient(srv.port)
    carol.login("carol")
    carol.send("hi")
    alice.expect("carol: hi")
    wait_for(lambda: b"after the storm" in srv.history.read_bytes(), TIMEOUT, "history write")
    assert srv.stop() == 0
    log = "".join(srv.log)
    assert "Traceback" not in log, f"seed {seed}:\n{log[-3000:]}"
    kinds_seen, garbage_said = set(), 0
    for path in srv.tmp.glob("history*.txt"):
        for n, line in enumerate(path.read_bytes().split(b"\n")[:-1], 1):
            record = json.loads(line.decode("utf-8"))  # every line valid UTF-8 JSON
            assert set(record) >= {"time", "kind", "name", "text"}, (path, n, record)
            assert not _FORBIDDEN & set(record["text"]), (path, n, record)
            kinds_seen.add(record["kind"])
            garbage_said += record["name"].startswith("g") and "\ufffd" in record["text"]
        assert path.read_bytes().endswith(b"\n")
    assert "message" in kinds_seen
    assert garbage_said > 0, "no garbage ever reached the history: the test did not bite"
