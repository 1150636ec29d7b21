"""The terminal client on a pty: local time before each line, each sent line shown once,
Tab completion. Real server, real clients under pexpect (see conftest.py).

"Shown once" is about the final screen, not the stream of output (the typed text is drawn
as it is typed, then erased), so :class:`Screen` replays the raw output on a tiny model
of a terminal that knows the cursor moves and erases prompt_toolkit uses.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from geventchat.client import EXIT_OK, ChatCompleter, Roster

if TYPE_CHECKING:
    from tests.conftest import ServerFactory, Term

    Client = Callable[..., Term]
Uid = Callable[[str], str]

T = r"\d\d:\d\d "
T_OPT = rf"(?:{T})?"

_TOKEN = re.compile(r"\x1b\[([0-?]*)[ -/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b.|.",
                    re.DOTALL)


class Screen:
    """Final text of a terminal after ``raw``: lines never scroll away, and the cursor
    moves (CR, LF, BS, CSI A B C D G) and erases (CSI K, CSI J) are applied."""

    def __init__(self, raw: str) -> None:
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0
        for match in _TOKEN.finditer(raw):
            self._apply(match)

    def _apply(self, match: re.Match[str]) -> None:
        final, params = match.group(2), match.group(1) or ""
        text = match.group()
        if final is not None:
            n = int(params) if params.isdigit() else None
            if final == "A":
                self.row = max(0, self.row - (n or 1))
            elif final == "B":
                self._down(n or 1)
            elif final == "C":
                self.col += n or 1
            elif final == "D":
                self.col = max(0, self.col - (n or 1))
            elif final == "G":
                self.col = (n or 1) - 1
            elif final == "K" and n in (None, 0):
                del self.lines[self.row][self.col :]
            elif final == "K" and n == 2:
                self.lines[self.row] = []
            elif final == "J" and n in (None, 0):
                del self.lines[self.row][self.col :]
                del self.lines[self.row + 1 :]
            return
        if text.startswith("\x1b"):
            return
        if text == "\r":
            self.col = 0
        elif text == "\n":
            self._down(1)
        elif text == "\b":
            self.col = max(0, self.col - 1)
        elif text.isprintable():
            line = self.lines[self.row]
            line.extend(" " * (self.col + 1 - len(line)))
            line[self.col] = text
            self.col += 1

    def _down(self, n: int) -> None:
        self.row += n
        while len(self.lines) <= self.row:
            self.lines.append([])

    def text(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]


def test_screen_model_applies_erases() -> None:
    assert Screen("abc\r\nde\x1b[1Ax\x1b[K").text() == ["abx", "de"]
    assert Screen("one\r\ntwo\r\nthree\x1b[2A\r\x1b[J").text() == [""]


def _joined(client: Client, name: str, **kwargs: object) -> Term:
    term = client(name, **kwargs)
    term.expect(rf"\* {re.escape(name)} joined")
    term.expect(rf"{re.escape(name)}>")
    return term


def _leave(term: Term) -> None:
    term.sendline("/quit")
    term.expect(r"\* goodbye")
    assert term.expect_exit() == EXIT_OK


def test_each_line_shows_the_local_time_dim(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    server()
    name, token = uid("alice"), uid("tok")
    alice = _joined(client, name)
    before = time.strftime("%H:%M")
    alice.sendline(token)
    match = alice.expect(rf"^(\d\d:\d\d) {name}: {token}$")
    assert match.group(1) in (before, time.strftime("%H:%M"))
    assert re.search(rf"\x1b\[2m\d\d:\d\d\x1b\[0m {name}: {token}", alice.raw)  # dim
    assert re.search(rf"^{T}\* {name} joined$", alice.visible, re.MULTILINE)  # notices too
    _leave(alice)


def test_no_time_hides_it(server: ServerFactory, client: Client, uid: Uid) -> None:
    server()
    name, token = uid("alice"), uid("tok")
    alice = _joined(client, name, args=["--no-time"])
    alice.sendline(token)
    alice.expect(rf"^{name}: {token}$")
    assert not re.search(r"\d\d:\d\d ", alice.visible)
    _leave(alice)


def test_a_sent_line_is_shown_once_as_the_servers_echo(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    # (The time prefix is optional here: this test is about the duplicate alone.)
    server()
    name, first, second = uid("tina"), uid("first"), uid("second")
    tina = _joined(client, name)
    for token in (first, f"second msg {second}"):
        tina.sendline(token)
        tina.expect(rf"^{T_OPT}{name}: {token}$")
        tina.expect(rf"{name}>")  # the prompt is back after the echo
    half = uid("half")
    tina.send(half)  # typed, not sent: stays on the prompt line
    tina.expect(half)
    screen = Screen(tina.raw).text()
    for token in (first, second):
        shown = [line for line in screen if token in line]
        assert len(shown) == 1 and re.fullmatch(rf"{T_OPT}{name}: .*{token}", shown[0]), screen
    assert screen[-1].startswith(f"{name}>") and screen[-1].endswith(half), screen[-3:]
    tina.sendline()
    tina.expect(rf"^{T_OPT}{name}: {half}$")
    _leave(tina)


def test_tab_completes_commands_and_names(
    server: ServerFactory, client: Client, uid: Uid
) -> None:
    server()
    carol_name, alice_name, bob_name = uid("carol"), uid("alice"), uid("bob")
    carol = _joined(client, carol_name)  # here before alice: alice learns of her by /who
    alice = _joined(client, alice_name)
    bob = _joined(client, bob_name)
    alice.expect(rf"\* {bob_name} joined")

    alice.send("/he\t")
    alice.expect(rf"{alice_name}>\s*/help")
    alice.sendline()
    alice.expect(r"\* commands:")

    to_bob = uid("psst")
    alice.send("/msg bo\t")
    alice.expect(rf"{alice_name}>\s*/msg {bob_name}")
    alice.sendline(f" {to_bob}")
    bob.expect(rf"\(private\) {alice_name} -> {bob_name}: {to_bob}")

    alice.sendline("/who")
    alice.expect(r"\* online \(3\)")
    to_carol = uid("psst")
    alice.send("/msg CA\t")  # case-insensitive; completed to the server's spelling
    alice.expect(rf"{alice_name}>\s*/msg {carol_name}")
    alice.sendline(f" {to_carol}")
    carol.expect(rf"\(private\) {alice_name} -> {carol_name}: {to_carol}")
    for term in (bob, carol, alice):
        _leave(term)


def _complete(text: str, roster: Roster) -> list[str]:
    completer = ChatCompleter(roster.names)
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]


def test_completer_and_roster() -> None:
    roster = Roster()
    for line in ("* alice joined", "* Bob joined", "* carol joined", "* dave joined",
                 "* carol left", "* dave left (to dev)", "* Bob is now known as bobby",
                 "* erin joined", "* erin was kicked by root: spam", "* fred joined",
                 "* fred was kicked from dev by op", "mallory: * zed joined"):
        roster.update(line)
    assert roster.names() == ["alice", "bobby"]
    assert _complete("/m", roster) == ["/msg", "/me"]
    assert _complete("/SH", roster) == ["/shutdown"]
    assert _complete("/msg B", roster) == ["bobby"]
    assert _complete("hi a", roster) == ["alice"]
    assert _complete("hi /m", roster) == []  # a command only as the first word
    assert _complete("", roster) == [] and _complete("hi ", roster) == []
    roster.update("* online (3): zoe, alice, yan")
    assert roster.names() == ["alice", "yan", "zoe"]


def test_terminal_admin_login_with_a_password_file(
    server: ServerFactory, client: Client, uid: Uid, tmp_path: Path
) -> None:
    admin, password = uid("root"), uid("pw")
    server(admins={admin: password})
    pw_file = tmp_path / "pw"
    pw_file.write_text(password + "\n")
    root = _joined(client, admin, args=["--admin-password-file", str(pw_file)])
    assert "password:" not in root.visible  # answered from the file, not asked
    assert password not in root.visible
    _leave(root)
