"""The terminal client reconnects without gaps: ids, ``/resume``, held input, ``/history``.

Real server processes, real clients on a pty (or on pipes). A :class:`Relay` between the
client and the server lets a test cut the client's connection (the server sees it drop, as
after a network blip or the death of a node behind a load balancer) and hold the client's
next connections until the test has said what must be "missed". Every wait has a timeout;
nothing sleeps and hopes; nothing asserts on timing.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from geventchat.client import (
    EXIT_LOST,
    EXIT_NAME,
    EXIT_OK,
    Marks,
    split_id,
)
from tests.helpers import LineClient
from tests.test_e2e import LineReader, joined, leave

if TYPE_CHECKING:
    from tests.conftest import ServerFactory, Term

    Client = Callable[..., Term]
    PipeProcess = Callable[..., object]
Uid = Callable[[str], str]

T = r"\d\d:\d\d "
LOST = r"\* connection lost; reconnecting in 1 s\.\.\."


class Relay:
    """A TCP relay in front of a server: every accepted connection is forwarded by two
    threads. ``cut()`` closes every connection through it (both sides at once) and holds
    new ones (accepted, not forwarded) until ``release()``."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self._open.wait()  # held: the client is connected, but hears nothing yet
        if self._closed:
            conn.close()
            return
        try:
            up = socket.create_connection(("127.0.0.1", self._target), timeout=10)
            up.settimeout(None)
        except OSError:
            conn.close()
            return
        with self._lock:
            self._pairs.append((conn, up))
        for src, dst in ((conn, up), (up, conn)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every connection now; hold new ones until :meth:`release`."""
        self._open.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def hold(self) -> None:
        """Hold new connections (accepted, not forwarded); existing ones go on."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()
        self.release()


@pytest.fixture
def relay() -> Iterator[Callable[[int], Relay]]:
    made: list[Relay] = []

    def make(port: int) -> Relay:
        made.append(Relay(port))
        return made[-1]

    yield make
    for r in made:
        r.close()


def talker(port: int, name: str) -> LineClient:
    """A raw client that joined as ``name``."""
    c = LineClient(port)
    c.login(name)
    return c


def say(c: LineClient, *texts: str) -> None:
    """Say each line and wait for its echo: it is stored when the echo comes."""
    for text in texts:
        c.send(text)
        c.expect(f"{c.name}: {text}")


def chat_lines(term: Term, name: str) -> list[str]:
    """What ``name`` said, in the order the terminal showed it (every time it showed it)."""
    return re.findall(rf"^{T}{re.escape(name)}: (\S+)$", term.visible, re.MULTILINE)


# --- pure helpers --------------------------------------------------------------------------


def test_split_id_strips_the_prefix_and_reads_the_utc_time() -> None:
    ident, when, text = split_id("#42@2026-12-02T06:30:00Z alice: hi")
    assert (ident, text) == (42, "alice: hi")
    assert when == 1796193000  # 2026-12-02 06:30:00 UTC
    assert split_id("alice: #42@2026-12-02T06:30:00Z x") == (None, None,
                                                            "alice: #42@2026-12-02T06:30:00Z x")
    assert split_id("* bob joined") == (None, None, "* bob joined")


def test_marks_drop_what_was_shown_and_know_where_to_resume() -> None:
    marks = Marks()
    assert marks.resume_target() is None
    marks.enter("lobby", "e1", 3)
    assert [marks.accept(i, f"a: {i}") for i in (2, 3)] == [True, True]
    marks.joined()
    assert marks.accept(4, "a: 4")
    assert marks.resume_target() == ("lobby", "e1", 4)
    # A reconnect's replay overlapping what was shown: the overlap is dropped.
    marks.enter("lobby", "e1", 6)
    assert [marks.accept(i, f"a: {i}") for i in (3, 4, 5, 6)] == [False, False, True, True]
    marks.joined()
    # /history shows old lines again, on request, and changes nothing.
    assert marks.accept(None, "* history of lobby (2 lines):")
    assert marks.accept(5, "a: 5") and marks.accept(6, "a: 6")
    assert marks.accept(None, "* end of history")
    assert not marks.accept(6, "a: 6")
    # Another epoch (history cleared or lost): nothing shown of it yet.
    marks.enter("lobby", "e2", 2)
    assert marks.accept(1, "a: 1")
    marks.joined()
    assert marks.resume_target() == ("lobby", "e2", 2)
    # A live clear: the epoch we hold is no longer the server's; no line is dropped.
    assert marks.accept(3, "* history cleared by root")
    assert marks.accept(3, "a: 3")


def test_the_cli_default_reconnect_timeout_is_the_clients() -> None:
    from geventchat import cli, client

    assert cli.RECONNECT_TIMEOUT == client.RECONNECT_TIMEOUT


# --- terminal client -----------------------------------------------------------------------


def test_a_cut_connection_reconnects_and_shows_each_missed_line_once(
    server: ServerFactory, client: Client, uid: Uid, relay: Callable[[int], Relay]
) -> None:
    srv = server()
    r = relay(srv.port)
    alice_name, bob_name = uid("alice"), uid("bob")
    bob = talker(srv.port, bob_name)
    before = [uid("before") for _ in range(2)]
    say(bob, *before)
    alice = client(alice_name, port=r.port)
    joined(alice, alice_name)
    seen = [uid("seen") for _ in range(2)]
    say(bob, *seen)
    alice.expect(rf"^{T}{bob_name}: {seen[-1]}$")

    r.cut()
    alice.expect(LOST)
    bob.expect(f"* {alice_name} left")
    missed = [uid("missed") for _ in range(5)]
    say(bob, *missed)  # said while alice is away
    r.release()
    alice.expect(r"\* reconnected \(5 missed lines\)")
    bob.expect(f"* {alice_name} joined")
    after = uid("after")
    say(bob, after)
    alice.expect(rf"^{T}{bob_name}: {after}$")
    leave(alice)

    assert chat_lines(alice, bob_name) == [*before, *seen, *missed, after]
    assert "#" not in alice.visible and "= room" not in alice.visible
    assert "ids on" not in alice.visible


def test_a_server_restart_with_reconnect_after_shutdown(
    server: ServerFactory, client: Client, uid: Uid, relay: Callable[[int], Relay]
) -> None:
    srv = server()
    r = relay(srv.port)
    alice_name, bob_name = uid("alice"), uid("bob")
    alice = client(alice_name, port=r.port, args=["--reconnect-after-shutdown"])
    joined(alice, alice_name)
    bob = talker(srv.port, bob_name)
    seen = uid("seen")
    say(bob, seen)
    alice.expect(rf"^{T}{bob_name}: {seen}$")

    r.hold()  # alice's next connections wait at the relay until the test has talked
    srv.restart()
    alice.expect(r"\* server shutting down: server stopped")
    alice.expect(LOST)
    bob = talker(srv.port, bob_name)
    missed = [uid("missed") for _ in range(3)]
    say(bob, *missed)
    r.release()
    alice.expect(r"\* reconnected \(3 missed lines\)")
    after = uid("after")
    say(bob, after)
    alice.expect(rf"^{T}{bob_name}: {after}$")
    leave(alice)
    assert chat_lines(alice, bob_name) == [seen, *missed, after]


def test_more_missed_lines_than_a_resume_replays_says_so(
    server: ServerFactory, client: Client, uid: Uid, relay: Callable[[int], Relay]
) -> None:
    srv = server(history_replay=5, args=["--rate-limit", "0"])
    r = relay(srv.port)
    alice_name, bob_name = uid("alice"), uid("bob")
    alice = client(alice_name, port=r.port)
    joined(alice, alice_name)
    bob = talker(srv.port, bob_name)
    r.cut()
    alice.expect(LOST)
    bob.expect(f"* {alice_name} left")
    tag = uid("n")
    total = 1010  # the server replays at most 1,000 missed lines
    for start in range(0, total, 200):
        bob.send("".join(f"{tag}x{i}\n" for i in range(start, min(start + 200, total)))
                 .encode())
    bob.expect(f"{bob_name}: {tag}x{total - 1}", timeout=30)
    r.release()
    alice.expect(r"! \d+ lines could not be recovered; here are the recent ones", timeout=20)
    alice.expect(rf"\* {alice_name} joined")
    alice.expect(r"\* reconnected$")
    leave(alice)
    shown = chat_lines(alice, bob_name)
    assert shown == [f"{tag}x{i}" for i in range(total - 5, total)]  # the recent ones, once


def test_typed_text_survives_and_lines_sent_meanwhile_go_out_after_the_resume(
    server: ServerFactory, client: Client, uid: Uid, relay: Callable[[int], Relay]
) -> None:
    srv = server()
    r = relay(srv.port)
    alice_name, bob_name = uid("alice"), uid("bob")
    alice = client(alice_name, port=r.port)
    joined(alice, alice_name)
    bob = talker(srv.port, bob_name)

    r.cut()
    alice.expect(LOST)
    bob.expect(f"* {alice_name} left")
    queued = uid("queued")
    alice.sendline(queued)  # while disconnected: held, sent once back
    alice.expect(r"\* not connected: what you send now goes out once reconnected")
    half, rest = uid("half"), uid("rest")
    alice.send(half)  # no Enter
    alice.expect(half)
    r.release()
    alice.expect(r"\* reconnected \(0 missed lines\)")
    bob.expect(f"{alice_name}: {queued}")
    alice.expect(rf"{alice_name}>\s*{half}")  # the prompt is back with what was typed
    alice.sendline(rest)
    bob.expect(f"{alice_name}: {half}{rest}")
    alice.expect(rf"^{T}{alice_name}: {half}{rest}$")
    leave(alice)
    assert chat_lines(alice, alice_name) == [queued, half + rest]


def test_a_name_taken_meanwhile_is_asked_again_on_a_terminal(
    server: ServerFactory, client: Client, uid: Uid, relay: Callable[[int], Relay]
) -> None:
    srv = server()
    r = relay(srv.port)
    alice_name, other_name = uid("alice"), uid("alice2")
    alice = client(alice_name, port=r.port)
    joined(alice, alice_name)
    draft = uid("draft")
    alice.send(draft)  # no Enter
    alice.expect(draft)
    watcher = talker(srv.port, uid("watch"))
    r.cut()
    alice.expect(LOST)
    watcher.expect(f"* {alice_name} left")
    thief = talker(srv.port, alice_name)
    r.release()
    alice.expect("! name taken")
    alice.expect("name:")
    alice.sendline(other_name)
    alice.expect(rf"\* {other_name} joined")
    alice.expect(rf"{other_name}>\s*{draft}")  # what was typed is still there
    alice.sendline("")
    thief.expect(f"{other_name}: {draft}")
    leave(alice)


def test_no_reconnect_exits_1_and_a_reconnect_timeout_gives_up_with_1(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    srv = server()
    plain = client(uid("plain"), args=["--no-reconnect"])
    joined(plain, plain.label)
    patient = client(uid("patient"), args=["--reconnect-timeout", "1"])
    joined(patient, patient.label)
    srv.stop(signal.SIGKILL)
    plain.expect("connection closed by server")
    assert plain.expect_exit() == EXIT_LOST
    assert "reconnecting" not in plain.visible
    patient.expect(LOST)
    patient.expect(r"! could not reconnect within 1 s; giving up")
    assert patient.expect_exit() == EXIT_LOST


def test_history_command_shows_framed_lines_without_ids(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    server()
    alice_name = uid("alice")
    alice = client(alice_name)
    joined(alice, alice_name)
    words = [uid("w") for _ in range(3)]
    for word in words:
        alice.sendline(word)
        alice.expect(rf"^{T}{alice_name}: {word}$")
    alice.sendline("/history 2")
    alice.expect(rf"^{T}\* history of lobby \(2 lines\):$")
    alice.expect(rf"^{T}{alice_name}: {words[1]}$")
    alice.expect(rf"^{T}{alice_name}: {words[2]}$")
    alice.expect(rf"^{T}\* end of history$")
    later = uid("later")
    alice.sendline(later)  # shown lines are tracked as before: a new one shows once
    alice.expect(rf"^{T}{alice_name}: {later}$")
    leave(alice)
    assert chat_lines(alice, alice_name) == [*words, words[1], words[2], later]
    assert "#" not in alice.visible


# --- pipe mode -----------------------------------------------------------------------------


def test_pipe_mode_reconnects_and_sends_what_was_read_meanwhile(
    server: ServerFactory, pipe_process: PipeProcess, uid: Uid, relay: Callable[[int], Relay]
) -> None:
    srv = server()
    r = relay(srv.port)
    name, bob_name = uid("piper"), uid("bob")
    proc = pipe_process(name, port=r.port)
    out, err = LineReader(proc.stdout), LineReader(proc.stderr)
    out.expect(f"* {name} joined")
    bob = talker(srv.port, bob_name)
    seen = uid("seen")
    say(bob, seen)
    out.expect(f"{bob_name}: {seen}")

    r.cut()
    err.expect("* connection lost; reconnecting in 1 s...")
    bob.expect(f"* {name} left")
    missed = uid("missed")
    say(bob, missed)
    queued = uid("queued")
    proc.stdin.write(f"{queued}\n")
    proc.stdin.flush()
    err.expect("* not connected: what you send now goes out once reconnected")
    proc.stdin.close()  # EOF while away: the held line still goes, then /quit
    r.release()
    bob.expect(f"{name}: {queued}")
    lines = out.expect("* goodbye", timeout=20)
    assert proc.wait(10) == EXIT_OK
    assert lines.count(f"{bob_name}: {missed}") == 1
    assert f"{bob_name}: {seen}" not in lines  # shown before the cut, not again
    assert f"{name}: {queued}" in lines
    assert not [x for x in lines if x.startswith(("#", "= ")) or x == "* ids on"]
    err.expect("* reconnected (1 missed line)")


def test_pipe_mode_exits_4_when_its_name_was_taken_meanwhile(
    server: ServerFactory, pipe_process: PipeProcess, uid: Uid, relay: Callable[[int], Relay]
) -> None:
    srv = server()
    r = relay(srv.port)
    name = uid("piper")
    proc = pipe_process(name, port=r.port)
    out, err = LineReader(proc.stdout), LineReader(proc.stderr)
    out.expect(f"* {name} joined")
    watcher = talker(srv.port, uid("watch"))
    r.cut()
    err.expect("* connection lost; reconnecting in 1 s...")
    watcher.expect(f"* {name} left")
    thief = talker(srv.port, name)
    r.release()
    err.expect(f"geventchat: name refused: {name} (! name taken: {name})")
    assert proc.wait(10) == EXIT_NAME
    thief.close()


# --- times and passwords -------------------------------------------------------------------


def test_a_stored_line_shows_the_local_time_it_was_said(
    make_srv: Callable[..., object], client: Client, uid: Uid
) -> None:
    srv = make_srv(start=False)
    token = uid("old")
    srv.history.write_text(  # said on 2020-01-01 at 03:04:05 UTC
        '{"time":"2020-01-01T03:04:05+00:00","kind":"message","name":"elder",'
        f'"text":"{token}","room":"lobby","id":1,"epoch":"0badcafe"}}\n')
    srv.start()
    for tz, shown in (("UTC0", "03:04"), ("XYZ-5:30", "08:34")):  # POSIX TZ: UTC+5:30
        name = uid("alice")
        term = client(name, port=srv.port, env={"TZ": tz})
        term.expect(rf"^{shown} elder: {token}$")
        joined(term, name)
        leave(term)


def test_passwords_are_kept_for_a_reconnect_and_asked_again_only_when_refused(
    server: ServerFactory, client: Client, uid: Uid, relay: Callable[[int], Relay],
    tmp_path: object,
) -> None:
    root_name, root_pw, new_pw, server_pw = uid("root"), uid("pw"), uid("newpw"), uid("spw")
    password_file = tmp_path / "server-password"  # type: ignore[operator]
    password_file.write_text(server_pw + "\n")
    srv = server(admins={root_name: root_pw}, args=["--password-file", str(password_file)])
    r = relay(srv.port)
    root = client(root_name, port=r.port)
    root.expect("server password:")
    root.sendline(server_pw)
    root.expect("^password:")
    root.sendline(root_pw)
    joined(root, root_name)

    r.cut()  # both passwords kept: nothing is asked
    root.expect(LOST)
    r.release()
    root.expect(r"\* reconnected \(0 missed lines\)")
    assert "password:" not in root.visible[root.visible.index("connection lost"):]

    draft = uid("draft")
    root.send(draft)
    root.expect(draft)
    r.cut()
    root.expect(LOST)
    srv.add_admin(root_name, new_pw)  # changed while away: the kept one is refused
    r.release()
    root.expect(r"! wrong password")
    root.expect(r"^password:", timeout=15)  # only the admin password is asked
    root.sendline(new_pw)
    root.expect(rf"\* {root_name} joined")
    root.expect(rf"{root_name}>\s*{draft}")
    for secret in (root_pw, new_pw, server_pw):
        assert secret not in root.visible
    root.sendline("")
    root.expect(rf"^{T}{root_name}: {draft}$")
    leave(root)


def test_an_idle_timeout_close_is_not_reconnected(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    server(args=["--idle-timeout", "1"])
    name = uid("idler")
    term = client(name)
    joined(term, name)
    term.expect(r"! idle for 1 s", timeout=15)
    assert term.expect_exit() == EXIT_LOST
    assert "reconnecting" not in term.visible


def test_a_reconnect_resumes_in_the_room_the_user_was_in(
    server: ServerFactory, client: Client, uid: Uid, relay: Callable[[int], Relay]
) -> None:
    srv = server()
    r = relay(srv.port)
    alice_name, bob_name, lobby_name = uid("alice"), uid("bob"), uid("lob")
    room = uid("dev")
    alice = client(alice_name, port=r.port)
    joined(alice, alice_name)
    alice.sendline(f"/join {room}")
    alice.expect(rf"\* {alice_name} joined")
    bob = talker(srv.port, bob_name)
    bob.send(f"/join {room}")
    bob.expect(f"* {bob_name} joined")
    lobby = talker(srv.port, lobby_name)  # stays in the lobby
    r.cut()
    alice.expect(LOST)
    bob.expect(f"* {alice_name} left")
    missed, elsewhere = uid("missed"), uid("elsewhere")
    say(bob, missed)
    say(lobby, elsewhere)
    r.release()
    alice.expect(r"\* reconnected \(1 missed line\)")
    alice.sendline("/who")
    alice.expect(rf"\* online \(2\): .*{bob_name}")
    leave(alice)
    assert chat_lines(alice, bob_name) == [missed]
    assert elsewhere not in alice.visible
