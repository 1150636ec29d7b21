"""The terminal client: its pure helpers, its session logic, and its latency on a pty.

The helpers hold every rule about server lines, so most tests here need neither a socket
nor a terminal. The session tests drive ``_drive`` over a socketpair with a scripted front
end. The latency tests run the real ``geventchat connect`` on a pseudo terminal against a
tiny plain-socket stand-in server (:class:`Observer`) that timestamps each line on arrival.

Timing trap: pexpect's ``send`` sleeps ``delaybeforesend`` (0.05 s) *before* writing to the
pty. That sleep is what made the client look like it took ~54 ms from Enter to the socket.
The latency tests switch it off, or they would measure pexpect.
"""

from __future__ import annotations

import io
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from prompt_toolkit.buffer import Buffer

from geventchat.client import (
    EXIT_OK,
    Kind,
    LineSplitter,
    Session,
    _drive,
    _on_accept,
    classify,
    colour_enabled,
    is_quit,
    is_secret,
    joined_name,
    kicked_name,
    mentions,
    prompt_label,
    renamed,
    render,
    same_name,
    shutdown_reason,
    style_for,
)

if TYPE_CHECKING:  # only for annotations: tests get these objects from the fixtures
    from tests.conftest import Term

    Client = Callable[..., Term]
Uid = Callable[[str], str]

#: The local time a terminal client shows before each line (dim; escapes are not visible).
T = r"\d\d:\d\d "

# --- classify and style_for --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("? name:", Kind.PROMPT),
        ("? server password:", Kind.PROMPT),
        ("* alice joined", Kind.NOTICE),
        ("* server shutting down: bye", Kind.NOTICE),
        ("! name taken: alice", Kind.ERROR),
        ("(private) alice -> bob: hi", Kind.PRIVATE),
        ("alice: hello", Kind.CHAT),
        ("alice: ", Kind.CHAT),
        ("Zoë_2.x-y: ünïcode", Kind.CHAT),
        ("alice:hello", Kind.OTHER),  # ": " (with the space) ends a speaker
        ("bob (away): hi", Kind.OTHER),  # names never contain a space or "("
        ("*alice: hi", Kind.OTHER),  # nor "*" ...
        ("?x: hi", Kind.OTHER),  # ... nor "?"
        ("(privately) a: b", Kind.OTHER),
        ("plain text", Kind.OTHER),
        ("", Kind.OTHER),
    ],
)
def test_classify(line: str, kind: Kind) -> None:
    assert classify(line) is kind


def test_style_for_colours_and_mentions() -> None:
    assert style_for(Kind.PROMPT) == "\x1b[33m"
    assert style_for(Kind.NOTICE) == "\x1b[36m"
    assert style_for(Kind.ERROR) == "\x1b[31m"
    assert style_for(Kind.PRIVATE) == "\x1b[35m"
    # Chat and other lines keep the terminal's colour; a mention adds bold only.
    assert style_for(Kind.CHAT) == ""
    assert style_for(Kind.OTHER) == ""
    assert style_for(Kind.CHAT, mention=True) == "\x1b[1m"
    assert style_for(Kind.ERROR, mention=True) == "\x1b[31;1m"  # keeps the colour


# --- mentions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "name", "expected"),
    [
        ("bob: hi alice", "alice", True),
        ("bob: hi ALICE!", "alice", True),  # case-insensitive, punctuation ends the word
        ("bob: alice, look", "alice", True),
        ("* alice joined", "alice", True),  # notices count
        ("(private) bob -> alice: hi", "alice", True),
        ("alice: talking to myself", "alice", False),  # own speaker prefix is skipped
        ("alice: hi alice", "alice", True),  # ... but the body still counts
        ("bob: hi alice2", "alice", False),  # whole words only
        ("bob: hi xalice", "alice", False),
        ("bob: hi alice-bot", "alice", False),  # "-" and "." are name characters
        ("bob: hi a.b", "a.b", True),
        ("bob: hi axb", "a.b", False),  # the name is not a regex
        ("bob: hi alice", None, False),
        ("bob: hi alice", "", False),
    ],
)
def test_mentions(line: str, name: str | None, expected: bool) -> None:
    assert mentions(line, name) is expected


# --- render and colour_enabled -----------------------------------------------------------


def test_render_without_colour_is_the_plain_line() -> None:
    for line in ("! boom", "* alice joined", "bob: hi alice", "? name:", "x"):
        assert render(line, "alice", colour=False) == line


def test_render_with_colour() -> None:
    assert render("! boom", None, colour=True) == "\x1b[31m! boom\x1b[0m"
    assert render("* alice joined", None, colour=True) == "\x1b[36m* alice joined\x1b[0m"
    assert render("(private) a -> b: x", None, colour=True) == "\x1b[35m(private) a -> b: x\x1b[0m"
    assert render("bob: hi", "alice", colour=True) == "bob: hi"  # chat: no escape at all
    assert render("bob: hi alice", "alice", colour=True) == "\x1b[1mbob: hi alice\x1b[0m"


@pytest.mark.parametrize("colour", [False, True])
def test_render_strips_control_characters_from_server_text(colour: bool) -> None:
    hostile = "bob: hi \x1b[2J\x1b]0;pwned\x07there\u202eevil\x9b31m\x7f\x00\tend"
    shown = render(hostile, None, colour)
    assert shown == "bob: hi [2J]0;pwnedthereevil31m end"  # ESC, BEL, bidi, C1, DEL, NUL gone
    # With colour on, the only escapes are our own style and reset.
    error = render("! \x1b[32mgreen\x1b[0m\x1b[6n", None, colour)
    body = error.removeprefix("\x1b[31m").removesuffix("\x1b[0m") if colour else error
    assert body == "! [32mgreen[0m[6n"
    assert "\x1b" not in body


def test_render_classifies_after_cleaning() -> None:
    # A control character can't hide a line's class (or make one up): it is gone first.
    assert render("\x07! boom", None, colour=True) == "\x1b[31m! boom\x1b[0m"


class _Stream:
    def __init__(self, tty: bool) -> None:
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_colour_enabled_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert colour_enabled(_Stream(tty=True)) is True
    assert colour_enabled(_Stream(tty=False)) is False
    assert colour_enabled(object()) is False  # no isatty at all
    closed = io.StringIO()
    closed.close()
    assert colour_enabled(closed) is False  # isatty raises ValueError


@pytest.mark.parametrize("value", ["1", "0", "", "false"])
def test_no_color_turns_colour_off_whatever_its_value(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("NO_COLOR", value)
    assert colour_enabled(_Stream(tty=True)) is False
    assert render("! boom", None, colour_enabled(_Stream(tty=True))) == "! boom"


# --- is_quit, prompts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/quit", True),
        ("/QUIT", True),
        ("/quit gone fishing", True),
        ("/quit\t", True),  # a tab becomes a space, as on the server
        ("exit", True),
        ("  EXIT  ", True),
        ("\x00exit", True),  # control characters are removed first, as on the server
        (" /quit", False),  # a leading space makes it chat
        ("//quit", False),  # the literal chat text "/quit"
        ("/quitter", False),
        ("/qui", False),
        ("exit now", False),
        ("quit", False),
        ("", False),
    ],
)
def test_is_quit_mirrors_the_server(line: str, expected: bool) -> None:
    assert is_quit(line) is expected


def test_prompt_label() -> None:
    assert prompt_label("? name:") == "name: "
    assert prompt_label("? server password:") == "server password: "
    assert prompt_label("?   password:  ") == "password: "


def test_is_secret() -> None:
    assert is_secret("? password:")
    assert is_secret("? server password:")
    assert is_secret("? PASSWORD:")
    assert not is_secret("? name:")


# --- notices -----------------------------------------------------------------------------


def test_joined_name() -> None:
    assert joined_name("* alice joined") == "alice"
    assert joined_name("* Zoë joined") == "Zoë"
    assert joined_name("* alice left") is None
    assert joined_name("* alice joined the fun") is None  # a /me line, not a join
    assert joined_name("bob: * alice joined") is None
    assert joined_name("alice joined") is None


def test_kicked_name() -> None:
    assert kicked_name("* bob was kicked by root") == "bob"
    assert kicked_name("* bob was kicked by root: spamming a lot") == "bob"
    assert kicked_name("* bob was kicked from dev by op") is None  # back to the lobby only
    assert kicked_name("* bob was kicked") is None
    assert kicked_name("carol: * bob was kicked by root") is None


def test_shutdown_reason() -> None:
    assert shutdown_reason("* server shutting down: maintenance") == "maintenance"
    assert shutdown_reason("* server shutting down: by root") == "by root"
    assert shutdown_reason("* server shutting down: ") == ""  # a notice, with no reason
    assert shutdown_reason("* server shutting down") is None
    assert shutdown_reason("bob: * server shutting down: x") is None


def test_renamed() -> None:
    assert renamed("* alice is now known as bob") == ("alice", "bob")
    assert renamed("* alice is now known as") is None
    assert renamed("* alice is now known as bob and carol") is None
    assert renamed("x: * alice is now known as bob") is None


def test_same_name() -> None:
    assert same_name("alice", "alice")
    assert same_name("Alice", "ALICE")  # ignoring case
    assert same_name(" alice ", "alice")
    assert same_name("ａｌｉｃｅ", "alice")  # NFKC: full-width letters
    assert same_name("\u0430lice", "alice")  # a Cyrillic a looks like a Latin one
    assert not same_name("alice", "alicia")
    assert not same_name(None, "alice")
    assert not same_name("alice", None)
    assert not same_name(None, None)


# --- LineSplitter ------------------------------------------------------------------------


def test_line_splitter_byte_at_a_time() -> None:
    data = "héllo wörld €\n✓ done\n".encode()
    splitter = LineSplitter()
    lines: list[str] = []
    for i in range(len(data)):
        lines += splitter.feed(data[i : i + 1])  # a multi-byte character is cut up
    assert lines == ["héllo wörld €", "✓ done"]
    assert splitter.rest() is None


def test_line_splitter_holds_a_partial_line() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntw") == ["one"]
    assert splitter.feed(b"o") == []
    assert splitter.feed(b"\nthree\n\n") == ["two", "three", ""]
    assert splitter.feed(b"tail") == []
    assert splitter.rest() == "tail"
    assert splitter.rest() is None  # taken once


def test_line_splitter_crlf() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"a\r\nb\r") == ["a"]
    assert splitter.feed(b"\nc\r\n") == ["b", "c"]  # a CR cut from its LF
    assert splitter.feed(b"x\ry\n") == ["x\ry"]  # only a CR that ends a line goes


def test_line_splitter_invalid_utf8_is_replaced() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"\xff\xfeok\n") == ["\ufffd\ufffdok"]
    assert splitter.feed(b"caf\xc3\n") == ["caf\ufffd"]  # a character cut by the line end
    assert splitter.feed(b"\xe2\x82") == []
    assert splitter.rest() == "\ufffd"


# --- the session over a socketpair, with a scripted front end ----------------------------


class ScriptedUi:
    """A front end whose user types ``answers`` (None: Ctrl-D), calling ``submit`` the
    way a real front end must (exactly once per line, before returning it)."""

    def __init__(self, answers: list[str | None]) -> None:
        self._answers = answers
        self.shown: list[str] = []

    def ask(
        self,
        label: str | Callable[[], str],
        secret: bool = False,
        submit: Callable[[str], None] | None = None,
    ) -> str | None:
        line = self._answers.pop(0)
        if line is not None and submit is not None:
            submit(line)
        return line

    def show(self, text: str, when: float | None = None) -> None:
        self.shown.append(text)

    def note(self, text: str) -> None:
        self.shown.append(text)

    def interrupt(self) -> None:
        pass

    def pause(self) -> None:
        pass


def _fake_server(sock: socket.socket, received: list[str]) -> None:
    """The server side: ask a name, say it joined, say goodbye and close on a quit.
    (The client asks for ids before its name: answered, not recorded.)"""
    sock.sendall(b"? name:\n")
    splitter = LineSplitter()
    while data := sock.recv(4096):
        for line in splitter.feed(data):
            if line == "/ids" and not received:
                sock.sendall(b"* ids on\n")
                continue
            received.append(line)
            if len(received) == 1:
                sock.sendall(f"* {line} joined\n".encode())
            elif is_quit(line):
                sock.sendall(b"* goodbye\n")
                sock.shutdown(socket.SHUT_RDWR)
                return


@pytest.mark.parametrize(
    ("answers", "sent"),
    [
        (["alice", "hello", "", "  ", "/quit bye"], ["hello", "  ", "/quit bye"]),
        (["alice", "hi", "exit"], ["hi", "exit"]),
        (["alice", "hi", None], ["hi", "/quit"]),  # Ctrl-D: the client says /quit itself
    ],
)
def test_session_sends_each_line_once_and_exits_0_when_the_user_leaves(
    answers: list[str | None], sent: list[str]
) -> None:
    client_sock, server_sock = socket.socketpair()
    received: list[str] = []
    server = threading.Thread(target=_fake_server, args=(server_sock, received), daemon=True)
    server.start()
    ui = ScriptedUi(answers)
    session = Session(client_sock, ui, colour=False, echo_prompts=True)
    try:
        code = _drive(session, ui, preset=None)
    finally:
        server.join(5)
        server_sock.close()
    assert code == EXIT_OK
    assert received == ["alice", *sent]  # an empty line is never sent, a quit only once
    assert ui.shown == ["? name:", "* alice joined", "* goodbye"]
    assert session.name == "alice" and session.registered


def test_on_accept_runs_the_callback_after_the_original_handler() -> None:
    calls: list[str] = []

    def original(buff: Buffer) -> bool:
        calls.append(f"original:{buff.text}")
        return True

    buffer = Buffer(accept_handler=original)
    with _on_accept(buffer, lambda text: calls.append(f"callback:{text}")):
        buffer.text = "hello"
        buffer.validate_and_handle()
    assert calls == ["original:hello", "callback:hello"]
    assert buffer.accept_handler is original  # restored


# --- latency on a pty, against a plain-socket stand-in server ----------------------------

#: Seconds any single wait in the latency tests may take before the test fails.
WAIT = 10.0
#: Lines measured per latency test; the median is checked, so one stall can't fail it.
SAMPLES = 10


class Observer:
    """A stand-in server on a plain socket that timestamps every line it receives.

    It speaks just enough of the protocol: ``? name:``, ``* ids on`` for ``/ids``, then
    ``* NAME joined`` for the first other line; every later line goes to ``received`` as
    ``(time.monotonic(), line)``.
    It never answers chat lines, so no reply can carry an ACK back to the client early.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(WAIT)
        self.port: int = self._listener.getsockname()[1]
        self.received: queue.Queue[tuple[float, str]] = queue.Queue()
        self.name: str | None = None
        self._conn: socket.socket | None = None
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        conn.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = conn
        self._connected.set()
        pending = b""
        try:
            conn.sendall(b"? name:\n")
            while data := conn.recv(65536):
                now = time.monotonic()
                *lines, pending = (pending + data).split(b"\n")
                for raw in lines:
                    line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
                    if self.name is None and line == "/ids":
                        conn.sendall(b"* ids on\n")  # the client's request before its name
                    elif self.name is None:
                        self.name = line
                        conn.sendall(f"* {line} joined\n".encode())
                    else:
                        self.received.put((now, line))
        except OSError:
            pass  # closed at teardown

    def next_line(self) -> tuple[float, str]:
        """The next line the client sent, with its arrival time (fails after WAIT)."""
        try:
            return self.received.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no line reached the observer within {WAIT}s")

    def send(self, line: str) -> None:
        """Send one server line to the client."""
        assert self._connected.wait(WAIT), "the client never connected"
        assert self._conn is not None
        self._conn.sendall(line.encode() + b"\n")

    def close(self) -> None:
        for sock in (self._conn, self._listener):
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._thread.join(WAIT)


@pytest.fixture
def observer() -> Iterator[Callable[[], Observer]]:
    """Factory of :class:`Observer` servers; all are closed at teardown."""
    made: list[Observer] = []

    def make() -> Observer:
        made.append(Observer())
        return made[-1]

    yield make
    for obs in made:
        obs.close()


def _joined_client(client: Client, obs: Observer, name: str) -> Term:
    """A terminal client registered with ``obs``, its chat prompt up, sending at once."""
    term = client(name, port=obs.port)
    term.child.delaybeforesend = None  # pexpect sleeps 50 ms before each send otherwise
    term.expect(rf"\* {re.escape(name)} joined")
    term.expect(rf"{re.escape(name)}>")
    return term


def _ms(delays: list[float]) -> str:
    return ", ".join(f"{d * 1000:.1f}" for d in delays) + " ms"


def test_a_typed_line_leaves_on_enter(
    observer: Callable[[], Observer], client: Client, uid: Uid
) -> None:
    # The known bug: ~54 ms from Enter to the socket. The measurement is Enter (CR written
    # to the pty) to the line's arrival at the observer, for a line already typed and shown.
    obs = observer()
    name = uid("alice")
    term = _joined_client(client, obs, name)
    # One unmeasured line: prompt_toolkit builds its key binding caches on the first keys
    # (~15 ms, once per process).
    warm = uid("warm")
    term.sendline(warm)
    assert obs.next_line()[1] == warm

    delays: list[float] = []
    for _ in range(SAMPLES):
        token = uid("tok")
        term.send(token)
        term.expect(rf"{re.escape(name)}>\s*{re.escape(token)}")  # typed and drawn
        start = time.monotonic()
        term.send("\r")  # Enter
        arrived, line = obs.next_line()
        assert line == token
        delays.append(arrived - start)
    # Functional here (every line arrives, on Enter); the delay is the benchmark's to
    # measure (bench/terminal_swarm.py), never a timed test's. Printed for a reader.
    print(f"Enter to socket: {_ms(delays)}")


def test_an_incoming_line_is_shown_while_typing(
    observer: Callable[[], Observer], client: Client, uid: Uid
) -> None:
    # Incoming lines are pushed to the prompt's event loop, never polled for, and never
    # wait on a cursor position report that a bare pty does not answer.
    obs = observer()
    name, typed = uid("alice"), uid("half")
    term = _joined_client(client, obs, name)
    term.send(typed)  # half a line, no Enter: the prompt is redrawn after each line
    term.expect(re.escape(typed))
    delays: list[float] = []
    for _ in range(SAMPLES):
        token = uid("tok")
        start = time.monotonic()
        obs.send(f"bob: {token}")
        term.expect(rf"^{T}bob: {re.escape(token)}$")
        delays.append(time.monotonic() - start)
    print(f"socket to screen: {_ms(delays)}")
    term.expect(rf"{re.escape(name)}>\s*{re.escape(typed)}")  # the typed text survived
    term.sendline()
    assert obs.next_line()[1] == typed


def test_the_client_socket_sends_each_line_at_once() -> None:
    # Two lines in one write (a paste, or fast typing): with Nagle on, the second waits for
    # the ACK of the first, which a silent peer delays by at least 40 ms. The client turns
    # Nagle off; how fast lines then go is measured by bench/terminal_swarm.py, not here.
    from geventchat.client import connect

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        sock = connect("127.0.0.1", listener.getsockname()[1], None)
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            sock.close()
    finally:
        listener.close()
