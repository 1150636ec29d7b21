"""End to end, round two: real clients log an admin in with SASL, see channel modes, NAMES
prefixes and refusals, next to a native user who gets the same rules.

irssi runs in tmux (its screen is read as text, see tests/test_irc_e2e.py); WeeChat runs
as ``weechat-headless`` and is read through its logger files (flushed at once). Every wait
polls against a deadline. Each client is skipped, with the reason, when not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import TIMEOUT, LineClient, ServerProcess, add_admin
from tests.test_irc_e2e import IRSSI_CONFIG, Pane

needs_irssi = pytest.mark.skipif(
    shutil.which("irssi") is None or shutil.which("tmux") is None,
    reason="needs irssi and tmux (apt-get install irssi tmux)")
needs_weechat = pytest.mark.skipif(
    shutil.which("weechat-headless") is None,
    reason="needs weechat-headless (apt-get install weechat-headless)")


@pytest.fixture
def srv(tmp_path):
    s = ServerProcess(tmp_path / "srv", "--irc-port", "0", "--server-name", "irc.test")
    s.tmp.mkdir()
    add_admin(s.admins, "root", "s3cret-pw")
    yield s.start()
    s.kill()


@pytest.fixture
def irssi_bare(tmp_path):
    """Factory: irssi as ``nick``, not connected anywhere yet (the test sets up SASL)."""
    panes: list[Pane] = []

    def start(nick: str) -> Pane:
        home = tmp_path / f"irssi-{nick}"
        home.mkdir()
        (home / "config").write_text(IRSSI_CONFIG, "utf-8")
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "TERM": "xterm-256color",
               "LANG": "C.UTF-8"}
        pane = Pane(["irssi", f"--home={home}", "-n", nick], env, home)
        panes.append(pane)
        return pane

    yield start
    for pane in panes:
        pane.kill()


def irc_port(srv: ServerProcess) -> int:
    return int(re.search(r"IRC listening on [^\s:]+:(\d+)", srv.wait_log("IRC listening"))[1])


@needs_irssi
def test_irssi_sasl_modes_and_names(srv, irssi_bare):
    token = uuid.uuid4().hex[:6]
    root = irssi_bare("root")
    root.type("/network add -sasl_mechanism PLAIN -sasl_username root "
              "-sasl_password s3cret-pw gc")
    root.type(f"/server add -network gc 127.0.0.1 {srv.port}")  # the shared port
    root.type("/connect gc")
    root.wait(r"You are now logged in as root")
    root.wait(r"Welcome to the irc\.test IRC Network root!")
    srv.wait_log("logged in with SASL as admin root")

    root.type("/join #den")
    root.wait(r"\[@root\]")  # NAMES on join: an admin is operator everywhere
    root.type("/mode #den +mk sesame")
    root.wait(r"mode/#den \[\+mk sesame\] by root")

    alice = LineClient(srv.port)
    alice.login("alice")
    alice.send("/join den")
    alice.expect("! cannot join den: wrong or missing key (+k)")
    alice.send("/join den sesame")
    alice.expect("* alice joined")
    alice.send(f"muted-{token}")
    alice.expect("! cannot send to den: it is moderated (+m) and you have no voice")
    root.type("/voice alice")
    alice.expect("* root set mode +v alice on den")
    alice.send(f"voiced-{token}")
    root.wait(rf"alice> voiced-{token}")
    root.type("/names #den")
    root.wait(r"\[\+alice\]")
    root.type("/quit")
    root.wait_exit()


class WeeChat:
    """``weechat-headless`` with its own home; what it shows is read from its logs."""

    def __init__(self, home: Path, commands: list[str]) -> None:
        self.home = home
        home.mkdir()
        self.proc = subprocess.Popen(
            ["weechat-headless", "--dir", str(home), "--run-command", ";".join(commands)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})

    def logs(self) -> str:
        return "\n".join(p.read_text("utf-8", "replace")
                         for p in sorted((self.home / "logs").glob("*.weechatlog"))) \
            if (self.home / "logs").exists() else ""

    def wait(self, pattern: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.logs()
            if re.search(pattern, text, re.MULTILINE):
                return text
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{pattern!r} never logged; logs:\n{text[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


@needs_weechat
def test_weechat_sasl_login_modes_and_names(srv, tmp_path):
    token = uuid.uuid4().hex[:6]
    alice = LineClient(srv.port)
    alice.login("alice")
    alice.send("/join den")
    alice.expect("* alice joined")  # alice made den: she runs it
    s = "irc.server.gc"
    wee = WeeChat(tmp_path / "weechat", [
        "/set logger.file.flush_delay 0",
        "/set logger.file.auto_log on",
        f"/server add gc 127.0.0.1/{irc_port(srv)}",
        f"/set {s}.nicks root",
        f"/set {s}.sasl_mechanism plain",
        f"/set {s}.sasl_username root",
        f"/set {s}.sasl_password s3cret-pw",
        f"/set {s}.autojoin #den",
        "/connect gc",
    ])
    try:
        srv.wait_log("logged in with SASL as admin root")
        alice.expect("* root joined")
        # NAMES on join, counted by prefix: alice made den, root is an admin
        wee.wait(r"Channel #den: 2 nicks \(2 ops, 0 voices, 0 normals\)")
        alice.send("/mode +m")
        wee.wait(r"Mode #den \[\+m\] by alice")
        alice.send("/mode +v root")
        wee.wait(r"Mode #den \[\+v root\] by alice")
        alice.send(f"hello-{token}")
        wee.wait(rf"alice\s+hello-{token}")
    finally:
        wee.stop()
