"""End to end: a real irssi (the Debian package) in a tmux pane, talking to a native user.

tmux renders irssi's full-screen UI into a screen we can read as plain text
(``capture-pane``), so matches see what a person would see, escape codes resolved. Every
wait polls that screen against a deadline; irssi's configuration turns off everything
automatic (no networks, no autojoin, no autolog, no command queue delay).

Skipped, with the reason, when irssi or tmux is not installed: CI installs both.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import TIMEOUT, LineClient, ServerProcess

pytestmark = pytest.mark.skipif(
    shutil.which("irssi") is None or shutil.which("tmux") is None,
    reason="needs irssi and tmux (apt-get install irssi tmux)")

#: irssi's configuration: nothing automatic, no throttling of our own commands.
IRSSI_CONFIG = """\
servers = ( );
chatnets = { };
channels = ( );
settings = {
  core = { real_name = "E2E Tester"; user_name = "e2e"; settings_autosave = "no"; };
  "fe-common/core" = { autolog = "no"; timestamps = "no"; beep_msg_level = "none"; };
  "irc/core" = { usermode = ""; cmds_max_at_once = "50"; cmd_queue_speed = "10msec"; };
};
"""


class Pane:
    """One program in a detached tmux session on a private tmux server (``-L``)."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.socket = f"geventchat-e2e-{uuid.uuid4().hex[:8]}"
        self._tmux("new-session", "-d", "-s", "main", "-x", "160", "-y", "50",
                   " ".join(command), env=env, cwd=cwd)

    def _tmux(self, *args: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=cwd)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-t", "main").stdout

    def wait(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """Poll the visible screen until ``pattern`` (a regex) is on it."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if re.search(pattern, text, re.MULTILINE):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} never appeared; screen:\n{text}")
            time.sleep(0.05)

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-t", "main", "-l", line)
        self._tmux("send-keys", "-t", "main", "Enter")

    def running(self) -> bool:
        return self._tmux("has-session", "-t", "main").returncode == 0

    def wait_exit(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                raise AssertionError(f"still running; screen:\n{self.screen()}")
            time.sleep(0.05)

    def kill(self) -> None:
        self._tmux("kill-server")


@pytest.fixture
def irssi(tmp_path):
    """Factory: irssi connected to ``port`` as ``nick``, with its own home directory."""
    panes: list[Pane] = []

    def start(nick: str, port: int) -> Pane:
        home = tmp_path / f"irssi-{nick}"
        home.mkdir()
        (home / "config").write_text(IRSSI_CONFIG, "utf-8")
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "TERM": "xterm-256color",
               "LANG": "C.UTF-8"}
        pane = Pane(["irssi", f"--home={home}", "-n", nick, "-c", "127.0.0.1", "-p", str(port)],
                    env, home)
        panes.append(pane)
        return pane

    yield start
    for pane in panes:
        pane.kill()


@pytest.fixture
def srv(tmp_path):
    s = ServerProcess(tmp_path / "srv", "--irc-port", "0", "--server-name", "irc.test")
    s.tmp.mkdir()
    yield s.start()
    s.kill()


def test_irssi_talks_with_a_native_user(srv, irssi):
    token = uuid.uuid4().hex[:6]
    alice = LineClient(srv.port)
    alice.login("alice")
    alice.send(f"before-{token}")
    alice.expect(f"alice: before-{token}")

    port = int(re.search(r"IRC listening on [^\s:]+:(\d+)", srv.wait_log("IRC listening"))[1])
    bob = irssi("ircbob", port)
    bob.wait(r"Welcome to the irc\.test IRC Network ircbob!")
    bob.type("/join #lobby")
    bob.wait(rf"alice> before-{token}")  # the history, replayed as the channel's messages
    alice.expect("* ircbob joined")

    alice.send(f"hello-{token}")
    bob.wait(rf"alice> hello-{token}")
    bob.type(f"hi-from-irc-{token}")
    alice.expect(f"ircbob: hi-from-irc-{token}")
    bob.type(f"/me waves-{token}")
    alice.expect(f"* ircbob waves-{token}")

    bob.type(f"/msg alice psst-{token}")
    alice.expect(f"(private) ircbob -> alice: psst-{token}")
    alice.send(f"/msg ircbob back-{token}")
    bob.type("/query alice")  # the query window irssi opened for the message
    bob.wait(rf"alice> back-{token}")

    bob.type(f"/quit bye-{token}")
    alice.expect(f"* ircbob left (bye-{token})")
    bob.wait_exit()
