"""End to end: a real server process and real terminal clients on pseudo terminals.

Every client and every message token is unique per test (``uid``), so a match can only come
from the window and the line it is meant for. Matching is on visible text (see conftest.py),
never on raw escape codes. Every wait has a timeout; nothing sleeps and hopes. A test that
expects something *not* to be shown first waits for a later line that must be shown, so
"not seen" means "not sent", not "not arrived yet".
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from geventchat.client import EXIT_KICKED, EXIT_LOST, EXIT_OK, EXIT_SHUTDOWN

if TYPE_CHECKING:  # only for annotations: tests get these objects from the fixtures
    from tests.conftest import ServerFactory, Term

    Client = Callable[..., Term]
    PipeClient = Callable[..., subprocess.CompletedProcess[str]]
    PipeProcess = Callable[..., subprocess.Popen[str]]
Uid = Callable[[str], str]

#: The local time a terminal client shows before each line (dim; escapes are not visible).
T = r"\d\d:\d\d "


def joined(term: Term, name: str) -> None:
    """Wait for our own join notice, then for the chat prompt (input is read from here)."""
    term.expect(rf"\* {re.escape(name)} joined")
    term.expect(rf"{re.escape(name)}>")


def enter(client: Client, name: str, **kwargs: object) -> Term:
    """A client that joined as ``name`` (given with ``--name``) and shows its prompt."""
    term = client(name, **kwargs)
    joined(term, name)
    return term


def leave(term: Term) -> None:
    """``/quit``: the server says goodbye and the client exits 0."""
    term.sendline("/quit")
    term.expect(r"\* goodbye")
    assert term.expect_exit() == EXIT_OK


def say(term: Term, name: str, text: str) -> None:
    """Send a chat line and wait for the server's echo (not our own typing, which shows
    the text too): the server has stored the line when we see it."""
    term.sendline(text)
    term.expect(rf"^{T}{re.escape(name)}: {re.escape(text)}$")


# --- joining -----------------------------------------------------------------------------


def test_name_prompt_then_join_seen_by_self_and_others(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    server()
    alice_name, bob_name = uid("alice"), uid("bob")
    alice = enter(client, alice_name)

    bob = client()  # no --name: the client asks
    bob.expect("name:")
    bob.sendline(alice_name.upper())  # names are unique ignoring case
    bob.expect("! name taken")
    bob.expect("name:")  # asked again, and the refused answer is not reused
    bob.sendline(bob_name)
    joined(bob, bob_name)
    alice.expect(rf"\* {bob_name} joined")

    leave(bob)
    leave(alice)


def test_client_never_asks_for_cursor_position(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    # Nobody answers CPR on a bare pty: a client that asks would stall on every line.
    server()
    alice_name, bob_name, token = uid("alice"), uid("bob"), uid("tok")
    alice = enter(client, alice_name)
    bob = enter(client, bob_name)
    bob.sendline(token)
    alice.expect(rf"{bob_name}: {token}")
    leave(bob)
    leave(alice)
    for term in (alice, bob):
        assert "\x1b[6n" not in term.raw
        assert "CPR" not in term.visible  # prompt_toolkit's "terminal doesn't support" note


# --- chat --------------------------------------------------------------------------------


def test_broadcast_reaches_all_three_including_sender(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    server()
    names = [uid("alice"), uid("bob"), uid("carol")]
    terms = [enter(client, name) for name in names]
    token = uid("tok")
    terms[1].sendline(f"hello {token}")
    for term in terms:
        term.expect(rf"^{T}{names[1]}: hello {token}$")
    for term in terms:
        leave(term)


def test_private_message_only_for_sender_and_target(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    server()
    alice_name, bob_name, carol_name = uid("alice"), uid("bob"), uid("carol")
    alice, bob, carol = (enter(client, n) for n in (alice_name, bob_name, carol_name))
    secret, later = uid("secret"), uid("later")

    alice.sendline(f"/msg {bob_name} {secret}")
    line = rf"\(private\) {alice_name} -> {bob_name}: {secret}"
    bob.expect(line)
    alice.expect(line)
    alice.sendline(later)  # broadcast after the private line: carol must see this one...
    carol.expect(rf"{alice_name}: {later}")
    assert secret not in carol.visible  # ...and never the private token
    for term in (alice, bob, carol):
        leave(term)


def test_half_typed_input_survives_an_incoming_line(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    server()
    alice_name, bob_name = uid("alice"), uid("bob")
    alice = enter(client, alice_name)
    bob = enter(client, bob_name)
    first, rest, interruption = uid("half"), uid("rest"), uid("interrupt")

    alice.send(first)  # no Enter
    alice.expect(re.escape(first))
    bob.sendline(interruption)
    alice.expect(rf"{bob_name}: {interruption}")
    # The incoming line is printed above the prompt, which is redrawn with the text intact.
    alice.expect(rf"{alice_name}>\s*{first}")
    alice.sendline(rest)
    bob.expect(rf"^{T}{alice_name}: {first}{rest}$")
    leave(bob)
    leave(alice)


# --- leaving -----------------------------------------------------------------------------


def test_leave_notice_on_quit_and_on_dropped_connection(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    server()
    alice_name, bob_name, carol_name = uid("alice"), uid("bob"), uid("carol")
    alice = enter(client, alice_name)
    bob = enter(client, bob_name)
    carol = enter(client, carol_name)

    leave(bob)
    alice.expect(rf"^{T}\* {bob_name} left$")

    carol.kill(signal.SIGKILL)  # no /quit: the server only sees the connection drop
    assert carol.expect_exit() == -signal.SIGKILL
    alice.expect(rf"^{T}\* {carol_name} left$")
    leave(alice)


def test_ctrl_d_ctrl_c_and_exit_leave_with_status_0(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    server()
    watcher_name = uid("watch")
    watcher = enter(client, watcher_name)
    for keys in ("\x04", "\x03", "exit\r"):  # Ctrl-D, Ctrl-C, typed exit
        name = uid("leaver")
        term = enter(client, name)
        term.send(keys)
        term.expect(r"\* goodbye")
        assert term.expect_exit() == EXIT_OK, f"{keys!r}: {term.visible[-500:]}"
        watcher.expect(rf"^{T}\* {name} left$")
    leave(watcher)


def test_lost_connection_is_reported_and_exits_nonzero(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    srv = server()
    alice = enter(client, uid("alice"), args=["--no-reconnect"])  # else it reconnects
    srv.stop(signal.SIGKILL)  # no shutdown notice: the connection just goes away
    alice.expect("connection closed by server")
    assert alice.expect_exit() == EXIT_LOST


# --- history -----------------------------------------------------------------------------


def test_history_for_late_joiner_and_after_restart(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    srv = server()
    alice_name, dave_name, eve_name = uid("alice"), uid("dave"), uid("eve")
    first, second = uid("first"), uid("second")
    alice = enter(client, alice_name)
    say(alice, alice_name, first)
    say(alice, alice_name, second)
    leave(alice)

    dave = client(dave_name)
    dave.expect(rf"^{T}{alice_name}: {first}$")  # the replay, oldest first...
    dave.expect(rf"^{T}{alice_name}: {second}$")
    joined(dave, dave_name)  # ...before the join notice

    srv.restart()
    dave.expect(r"\* server shutting down: server stopped")
    assert dave.expect_exit() == EXIT_SHUTDOWN

    eve = client(eve_name)
    eve.expect(rf"^{T}{alice_name}: {first}$")
    eve.expect(rf"^{T}{alice_name}: {second}$")
    joined(eve, eve_name)
    leave(eve)


def test_clear_refused_for_non_admin_and_history_kept(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    server()
    alice_name, bob_name, token = uid("alice"), uid("bob"), uid("kept")
    alice = enter(client, alice_name)
    say(alice, alice_name, token)
    for command in ("clear", "/clear"):
        alice.sendline(command)
        alice.expect(r"! permission denied")
    assert "history cleared" not in alice.visible

    bob = client(bob_name)
    bob.expect(rf"^{T}{alice_name}: {token}$")
    joined(bob, bob_name)
    leave(bob)
    leave(alice)


def test_admin_login_hides_password_and_clear_empties_history(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    admin_name, password, wrong = uid("root"), uid("pw"), uid("wrong")
    server(admins={admin_name: password})
    alice_name, bob_name, old = uid("alice"), uid("bob"), uid("old")
    alice = enter(client, alice_name)
    say(alice, alice_name, old)

    root = client(admin_name)  # --name answers the first name prompt only
    root.expect("password:")
    root.sendline(wrong)
    root.expect("! wrong password")
    root.expect("name:")  # back to the name: now the user types it
    root.sendline(admin_name)
    root.expect("password:")
    root.sendline(password)
    joined(root, admin_name)
    for secret in (password, wrong):
        assert secret not in root.visible, "a password was echoed"

    root.sendline("clear")
    cleared = rf"\* history cleared by {admin_name}"
    root.expect(cleared)
    alice.expect(cleared)

    bob = client(bob_name)
    bob.expect(cleared)  # the new history's first record
    joined(bob, bob_name)
    assert old not in bob.visible
    for term in (bob, alice, root):
        leave(term)


def test_kicked_client_exits_nonzero(server: ServerFactory, client: Client, uid: Uid) -> None:
    admin_name, password = uid("root"), uid("pw")
    server(admins={admin_name: password})
    root = client(admin_name)
    root.expect("password:")
    root.sendline(password)
    joined(root, admin_name)
    bob_name = uid("bob")
    bob = enter(client, bob_name)

    root.sendline(f"/kick {bob_name} spamming")
    bob.expect(rf"\* {bob_name} was kicked by {admin_name}: spamming")
    bob.expect("connection closed by server")
    assert bob.expect_exit() == EXIT_KICKED
    root.expect(rf"\* {bob_name} was kicked by {admin_name}")
    leave(root)


def test_admin_shutdown_ends_every_client_and_the_server(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    admin_name, password, reason = uid("root"), uid("pw"), uid("maintenance")
    srv = server(admins={admin_name: password})
    root = client(admin_name)
    root.expect("password:")
    root.sendline(password)
    joined(root, admin_name)
    others = [enter(client, uid("alice")), enter(client, uid("bob"))]

    root.sendline(f"/shutdown {reason}")
    for term in (root, *others):
        term.expect(rf"\* server shutting down: {reason}")
        assert term.expect_exit() == EXIT_SHUTDOWN
    assert srv.wait() == 0


# --- output ------------------------------------------------------------------------------


def test_colours_on_a_terminal_and_off_with_no_color(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    server()
    alice_name, bob_name, plain_name = uid("alice"), uid("bob"), uid("plain")
    alice = enter(client, alice_name, env={"NO_COLOR": None})
    plain = enter(client, plain_name)  # NO_COLOR=1, the fixture's default
    bob = enter(client, bob_name)

    alice.sendline("/nosuchcommand")
    alice.expect("! unknown command")
    assert "\x1b[31m! unknown command" in alice.raw  # errors in red
    bob.sendline(f"hi {alice_name}")
    alice.expect(rf"{bob_name}: hi {alice_name}")
    assert f"\x1b[1m{bob_name}: hi {alice_name}" in alice.raw  # a mention is bold

    plain.expect(rf"{bob_name}: hi {alice_name}")
    plain.sendline("/nosuchcommand")
    plain.expect("! unknown command")
    assert "\x1b[31m" not in plain.raw and "\x1b[1m" + bob_name not in plain.raw
    for term in (bob, plain, alice):
        leave(term)


def test_pipe_mode_without_a_terminal(
    server: ServerFactory, pipe_client: PipeClient, uid: Uid
) -> None:
    server()
    name, token = uid("piper"), uid("tok")
    done = pipe_client(name, input=f"hello {token}\n")
    assert done.returncode == EXIT_OK, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "? name:"
    assert f"* {name} joined" in lines
    assert f"{name}: hello {token}" in lines
    assert lines[-1] == "* goodbye"
    assert "\x1b" not in done.stdout  # not a terminal: no colour, no prompt drawing

    # --name answers the prompt, so the first stdin line is already chat (and without
    # --name a piped client refuses to start: no stdin line is ever taken for a name).
    other, token2 = uid("piper"), uid("tok")
    done = pipe_client(other, input=f"{token2}\n")
    assert done.returncode == EXIT_OK, done.stderr
    assert f"{name}: hello {token}" in done.stdout.splitlines()  # history
    assert f"{other}: {token2}" in done.stdout.splitlines()


class LineReader:
    """Lines of a pipe with a deadline per wait (a thread does the blocking reads)."""

    def __init__(self, stream: object) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: object) -> None:
        try:
            for line in stream:  # type: ignore[attr-defined]
                self._lines.put(line.rstrip("\n"))
        except ValueError:
            pass  # closed by the fixture's teardown
        self._lines.put(None)

    def expect(self, wanted: str, timeout: float = 10.0) -> list[str]:
        """Lines up to and including ``wanted``; fails on EOF or timeout."""
        seen: list[str] = []
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"timed out waiting for {wanted!r}; got {seen}") from None
            assert line is not None, f"EOF waiting for {wanted!r}; got {seen}"
            seen.append(line)
            if line == wanted:
                return seen


def test_pipe_mode_streams_each_line_at_once(
    server: ServerFactory, pipe_process: PipeProcess, uid: Uid
) -> None:
    # A pipe consumer must get every server line when it arrives, not at exit: the client
    # flushes each one. Without that, the waits below time out.
    server()
    name, token = uid("stream"), uid("tok")
    proc = pipe_process(name)
    assert proc.stdin is not None
    out = LineReader(proc.stdout)
    out.expect("? name:")
    out.expect(f"* {name} joined")
    proc.stdin.write(f"{token}\n")
    proc.stdin.flush()
    out.expect(f"{name}: {token}")
    proc.stdin.close()  # EOF: the client says /quit and exits 0 after the goodbye
    out.expect("* goodbye")
    assert proc.wait(10) == EXIT_OK


def test_server_password_is_asked_hidden_before_the_name(
    server: ServerFactory, client: Client, uid: Uid, tmp_path: Path
) -> None:
    password, wrong, name = uid("serverpw"), uid("wrong"), uid("alice")
    password_file = tmp_path / "server-password"
    password_file.write_text(password + "\n")
    server(args=["--password-file", str(password_file)])

    alice = client(name)  # --name waits for the name prompt, after the server password
    alice.expect("server password:")
    alice.sendline(wrong)
    alice.expect("! wrong server password")
    alice.expect("server password:")
    alice.sendline(password)
    joined(alice, name)
    for secret in (password, wrong):
        assert secret not in alice.visible, "a password was echoed"
    leave(alice)
