"""Admin account changes reach a running server: no restart, no password broadcast."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from tests.helpers import TIMEOUT, LineClient, add_admin, wait_for


def remove_admin(srv, name: str) -> None:
    subprocess.run([sys.executable, "-m", "geventchat", "admin", "remove", name,
                    "--admins", str(srv.admins)], check=True, timeout=30, capture_output=True)


def claim(srv, name: str) -> tuple[LineClient, str]:
    """A new connection that claims ``name``; the server's answer to it."""
    c = LineClient(srv.port)
    assert c.line() == "? name:"
    c.send(name)
    return c, c.line()


def test_admin_added_while_running_is_asked_for_a_password(make_srv):
    srv = make_srv(start=False)
    add_admin(srv.admins, "root", "s3cret-pw")
    srv.start()
    watcher = srv.connect("watcher")
    add_admin(srv.admins, "ops2", "an0ther-pw")

    def asked_for_password() -> LineClient | None:
        # The server looks at the file at most once a second, at name claims: claim the
        # name until it does (an earlier claim may still get in as an ordinary user).
        c, answer = claim(srv, "ops2")
        if answer == "? password:":
            return c
        c.close()
        return None

    c = wait_for(asked_for_password, what="ops2 asked for its password")  # not ordinary...
    c.send("an0ther-pw")
    c.expect("* ops2 joined")
    c.send("/clear")  # ...and an admin now
    watcher.expect("* history cleared by ops2")
    wait_for(srv.history.exists, what="the cleared history file")
    assert "an0ther-pw" not in srv.history.read_text("utf-8")


def test_removed_admin_loses_its_rights_at_once(make_srv):
    srv = make_srv(start=False)
    add_admin(srv.admins, "root", "s3cret-pw")
    add_admin(srv.admins, "boss", "b0ss-pass")
    srv.start()
    root = srv.connect("root", "s3cret-pw")
    remove_admin(srv, "root")
    seen: list[str] = []

    def told() -> bool:
        claim(srv, f"someone{len(seen)}")[0].close()  # a name claim makes the server look
        try:
            seen.append(root.line(0.3))
        except AssertionError:
            seen.append("")
        return "* your admin account was removed: you are no longer an admin" in seen

    wait_for(told, what="root told its account was removed")
    root.send("/clear")
    assert root.expect(re.compile("^!"))[-1].startswith("! permission denied")


def test_sighup_reloads_admins_and_keeps_serving(make_srv):
    srv = make_srv(start=False)
    add_admin(srv.admins, "root", "s3cret-pw")
    srv.start()
    root = srv.connect("root", "s3cret-pw")
    remove_admin(srv, "root")
    srv.proc.send_signal(signal.SIGHUP)
    root.expect("* your admin account was removed: you are no longer an admin")
    srv.wait_log("reloaded: admin accounts")
    assert srv.proc.poll() is None  # SIGHUP used to kill the server (exit 129)
    other = srv.connect("other")
    other.send("hello")
    root.expect("other: hello", timeout=TIMEOUT)


def test_sighup_reloads_the_motd(make_srv, tmp_path):
    from tests.test_irc import IRC_FLAGS, RawIrc, irc_port

    motd = tmp_path / "motd.txt"
    motd.write_text("first words\n", "utf-8")
    srv = make_srv(*IRC_FLAGS, "--motd", str(motd))
    burst = RawIrc(irc_port(srv)).register("one")
    assert ("372", "- first words") in [(m.command, m.params[-1]) for m in burst]
    motd.write_text("second words\n", "utf-8")
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_log("reloaded: .*MOTD")
    burst = RawIrc(irc_port(srv)).register("two")
    assert ("372", "- second words") in [(m.command, m.params[-1]) for m in burst]
