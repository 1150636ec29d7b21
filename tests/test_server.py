"""The wire contract (docs/PROTOCOL.md) against a real server process, over raw sockets."""

from __future__ import annotations

import json
import re
import signal
import socket

import pytest

from tests.helpers import TIMEOUT, LineClient, ServerProcess, add_admin, wait_for


@pytest.fixture
def srv(make_srv):
    return make_srv()


@pytest.fixture
def admin_srv(make_srv):
    s = make_srv(start=False)
    add_admin(s.admins, "root", "s3cret-pw")
    return s.start()


def history_text(srv: ServerProcess) -> str:
    return srv.history.read_text("utf-8") if srv.history.exists() else ""


def history_records(srv: ServerProcess) -> list[dict]:
    return [json.loads(x) for x in history_text(srv).splitlines() if x.strip()]


# --- handshake -----------------------------------------------------------------------------


def test_first_line_is_the_name_prompt(srv):
    c = LineClient(srv.port)
    assert c.line() == "? name:"


def test_invalid_name_is_refused_and_asked_again(srv):
    c = LineClient(srv.port)
    assert c.line() == "? name:"
    c.send("no spaces allowed")
    assert c.line().startswith("! invalid name")
    assert c.line() == "? name:"
    c.send("x" * 33)
    assert c.line().startswith("! invalid name")
    assert c.line() == "? name:"
    c.send("Zoë")
    assert c.expect("* Zoë joined") == ["* Zoë joined"]


def test_name_taken_ignoring_case(srv):
    a = srv.connect("alice")
    c = LineClient(srv.port)
    assert c.line() == "? name:"
    c.send("ALICE")
    assert c.line() == "! name taken: ALICE"
    assert c.line() == "? name:"
    a.send("still here")
    a.expect("alice: still here")


def test_join_is_announced_to_everyone_including_newcomer(srv):
    a = srv.connect("alice")
    b = LineClient(srv.port)
    assert b.login("bob") == []
    a.expect("* bob joined")


# --- chat ----------------------------------------------------------------------------------


def test_chat_line_reaches_everyone_including_sender(srv):
    a, b, c = srv.connect("alice"), srv.connect("bob"), srv.connect("carol")
    a.send("hello all")
    for client in (a, b, c):
        client.expect("alice: hello all")


def test_crlf_and_blank_lines(srv):
    a = srv.connect("alice")
    a.send(b"\r\n   \nwindows line\r\n")
    assert a.expect("alice: windows line") == ["alice: windows line"]


def test_control_characters_never_reach_other_terminals(srv):
    a, b = srv.connect("alice"), srv.connect("bob")
    a.send("hi \x1b[2J\x1b]0;owned\x07\x9b31m \u202e there\n".encode())
    line = b.expect(re.compile("^alice: "))[-1]
    assert line == "alice: hi [2J]0;owned31m  there"
    assert not re.search("[\x00-\x1f\x7f-\x9f\u202e]", line)


def test_invalid_utf8_is_replaced_not_fatal(srv):
    a = srv.connect("alice")
    a.send(b"bad \xff\xfe bytes\n")
    a.expect("alice: bad \ufffd\ufffd bytes")
    a.send("still here")
    a.expect("alice: still here")


def test_too_long_line_is_refused_and_connection_stays(srv):
    a, b = srv.connect("alice"), srv.connect("bob")
    a.send(b"y" * 5000 + b"\n")
    assert a.expect(re.compile("^!"))[-1] == "! line too long (max 4096 bytes)"
    a.send("short one")
    a.expect("alice: short one")
    assert "y" * 100 not in " ".join(b.expect("alice: short one"))


def test_double_slash_sends_literal_slash(srv):
    a = srv.connect("alice")
    a.send("//shrug")
    a.expect("alice: /shrug")


def test_unknown_command_is_an_error_and_never_broadcast(srv):
    a, b = srv.connect("alice"), srv.connect("bob")
    a.send("/mgs bob my-password-123")
    assert a.expect(re.compile("^!"))[-1] == "! unknown command: /mgs (try /help)"
    a.send("after")
    assert b.expect("alice: after") == ["alice: after"]
    assert "my-password-123" not in history_text(srv)


def test_usage_error(srv):
    a = srv.connect("alice")
    a.send("/msg bob")
    assert a.line() == "! usage: /msg NAME text"


def test_private_message_reaches_only_sender_and_target(srv):
    a, b, c = srv.connect("alice"), srv.connect("bob"), srv.connect("carol")
    a.send("/msg BOB secret-token")
    assert a.expect(re.compile(r"^\(private\)"))[-1] == "(private) alice -> bob: secret-token"
    assert b.expect(re.compile(r"^\(private\)"))[-1] == "(private) alice -> bob: secret-token"
    a.send("public after")
    seen = c.expect("alice: public after")
    assert not any("secret-token" in x for x in seen)
    wait_for(lambda: "public after" in history_text(srv))
    assert "secret-token" not in history_text(srv)


def test_private_message_to_unknown_user(srv):
    a = srv.connect("alice")
    a.send("/msg nobody hi")
    assert a.line() == "! no such user: nobody"


def test_private_message_does_not_overtake_broadcasts(make_srv):
    srv = make_srv("--rate-limit", "0")
    a, b = srv.connect("alice"), srv.connect("bob")
    lines = "".join(f"line {i}\n" for i in range(200)) + "/msg bob last\n"
    a.send(lines.encode())
    seen = b.expect("(private) alice -> bob: last")
    assert [x for x in seen if x.startswith("alice: ")] == [f"alice: line {i}" for i in range(200)]


def test_who_lists_everyone_in_one_line(srv):
    a = srv.connect("alice")
    b = srv.connect("Bob")
    a.send("/who")
    assert a.expect(re.compile(r"^\* online"))[-1] == "* online (2): alice, Bob"
    b.close()


def test_me_is_broadcast_and_stored(srv):
    a, b = srv.connect("alice"), srv.connect("bob")
    a.send("/me waves")
    b.expect("* alice waves")
    wait_for(lambda: history_records(srv))
    assert history_records(srv)[-1]["kind"] == "action"
    d = LineClient(srv.port)
    assert d.login("dave") == ["* alice waves"]


def test_nick_renames_and_frees_old_name(srv):
    a, b = srv.connect("alice"), srv.connect("bob")
    a.send("/nick Alicia")
    b.expect("* alice is now known as Alicia")
    a.send("hi")
    b.expect("Alicia: hi")
    c = LineClient(srv.port)
    assert c.login("alice") == ["Alicia: hi"]
    a.send("/nick bob")
    assert a.expect(re.compile("^!"))[-1] == "! name taken: bob"
    a.send("/nick bad name!")
    assert a.expect(re.compile("^!"))[-1].startswith("! invalid name")


def test_help_lists_commands(srv):
    a = srv.connect("alice")
    a.send("/help")
    seen = a.expect(re.compile(r"//text"))
    text = "\n".join(seen)
    for cmd in ("/msg", "/who", "/me", "/nick", "/quit"):
        assert cmd in text
    assert "/shutdown" not in text  # admin-only commands are shown to admins only


# --- leaving -------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "notice"), [("/quit", "* alice left"),
                                              ("exit", "* alice left"),
                                              ("/quit see you", "* alice left (see you)")])
def test_quit_says_goodbye_and_tells_others(srv, line, notice):
    a, b = srv.connect("alice"), srv.connect("bob")
    a.expect("* bob joined")
    a.send(line)
    assert a.closed() == ["* goodbye"]
    b.expect(notice)


def test_leaver_gets_every_line_said_before_it_left(make_srv):
    """Lines still in the room's pending batch reach the leaver before its goodbye.

    Alice's lines and her /quit arrive in one read, so they are handled in one loop pass:
    her lines are still pending (unflushed) when she leaves.
    """
    srv = make_srv("--rate-limit", "0")
    a, b = srv.connect("alice"), srv.connect("bob")
    a.expect("* bob joined")
    a.send("".join(f"a{i}\n" for i in range(300)).encode() + b"/quit\n")
    seen = a.closed()
    assert seen == [f"alice: a{i}" for i in range(300)] + ["* goodbye"]
    assert b.expect("* alice left")[:-1] == [f"alice: a{i}" for i in range(300)]


def test_dropped_connection_is_a_leave(srv):
    a, b = srv.connect("alice"), srv.connect("bob")
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    a.close()  # RST, not a polite FIN
    b.expect("* alice left")
    c = LineClient(srv.port)
    c.login("alice")  # the name is free again


# --- history -------------------------------------------------------------------------------


def test_history_replay_for_late_joiner_and_after_restart(srv):
    a = srv.connect("alice")
    for i in range(3):
        a.send(f"msg {i}")
    a.expect("alice: msg 2")
    b = LineClient(srv.port)
    assert b.login("bob") == ["alice: msg 0", "alice: msg 1", "alice: msg 2"]
    srv.restart()
    c = LineClient(srv.port)
    assert c.login("carol") == ["alice: msg 0", "alice: msg 1", "alice: msg 2"]
    records = history_records(srv)
    assert [(r["kind"], r["name"], r["text"]) for r in records] == [
        ("message", "alice", f"msg {i}") for i in range(3)]


def test_history_replay_is_limited(make_srv):
    srv = make_srv("--history-replay", "2")
    a = srv.connect("alice")
    for i in range(5):
        a.send(f"n{i}")
    a.expect("alice: n4")
    assert LineClient(srv.port).login("bob") == ["alice: n3", "alice: n4"]


def test_newcomer_gets_no_line_twice_and_none_lost(srv):
    """Lines said while someone joins are either replayed or live, exactly once."""
    srv.kill()
    srv.extra = ["--history-replay", "100000", "--rate-limit", "0"]
    srv.start()
    a = srv.connect("alice")
    a.send("".join(f"n{i}\n" for i in range(3000)).encode())
    b = LineClient(srv.port)
    seen = b.login("bob")
    if "alice: n2999" not in seen:
        seen += b.expect("alice: n2999")
    nums = [int(x[len("alice: n"):]) for x in seen if x.startswith("alice: n")]
    assert nums == list(range(3000))


def test_non_admin_clear_is_refused(srv):
    a = srv.connect("alice")
    a.send("keep me")
    a.send("clear")
    assert a.expect(re.compile("^!"))[-1] == "! permission denied: /clear is for admins"
    a.send("/clear")
    assert a.expect(re.compile("^!"))[-1] == "! permission denied: /clear is for admins"
    assert LineClient(srv.port).login("bob") == ["alice: keep me"]


def test_corrupt_history_line_is_skipped(make_srv):
    srv = make_srv(start=False)
    srv.history.write_text('{"time": "2026-01-01T00:00:00+00:00", "kind": "message", '
                           '"name": "old", "text": "first"}\n{"torn": \n', "utf-8")
    srv.start()
    assert LineClient(srv.port).login("bob") == ["old: first"]
    srv.wait_log("(?i)warn")


# --- admins --------------------------------------------------------------------------------


def test_admin_login_and_clear(admin_srv):
    a = admin_srv.connect("alice")
    a.send("old line")
    a.expect("alice: old line")
    root = LineClient(admin_srv.port)
    assert root.login("ROOT", "s3cret-pw") == ["alice: old line"]
    root.send("clear")
    a.expect("* history cleared by ROOT")
    assert LineClient(admin_srv.port).login("bob") == ["* history cleared by ROOT"]
    admin_srv.restart()
    assert LineClient(admin_srv.port).login("carol") == ["* history cleared by ROOT"]
    assert "s3cret-pw" not in admin_srv.admins.read_text()
    assert "s3cret-pw" not in "".join(admin_srv.log)


def test_wrong_password_goes_back_to_name_then_closes_after_three(admin_srv):
    c = LineClient(admin_srv.port)
    assert c.line() == "? name:"
    for attempt in range(3):
        c.send("root")
        assert c.line() == "? password:"
        c.send(f"wrong{attempt}")
        if attempt < 2:
            assert c.line() == "! wrong password"
            assert c.line() == "? name:"
    assert c.closed() == ["! too many failed logins"]
    assert not any("wrong1" in x for x in admin_srv.log)


def test_admin_name_cannot_be_taken_by_nick(admin_srv):
    a = admin_srv.connect("alice")
    a.send("/nick Root")
    assert a.expect(re.compile("^!"))[-1].startswith("! that name belongs to an admin")


def test_kick(admin_srv):
    a = admin_srv.connect("alice")
    root = admin_srv.connect("root", "s3cret-pw")
    root.send("/kick alice flooding")
    assert a.closed()[-1] == "* alice was kicked by root: flooding"
    root.expect("* alice was kicked by root: flooding")
    a2 = admin_srv.connect("bob")
    a2.send("/kick root")
    assert a2.line() == "! permission denied: /kick is for admins and room operators"


def test_shutdown_command(admin_srv):
    a = admin_srv.connect("alice")
    b = admin_srv.connect("bob")
    b.send("/shutdown")
    assert b.line() == "! permission denied: /shutdown is for admins"
    a.send("last words")
    root = admin_srv.connect("root", "s3cret-pw")
    root.send("/shutdown maintenance")
    for c in (a, b, root):
        assert c.closed()[-1] == "* server shutting down: maintenance"
    assert admin_srv.proc.wait(TIMEOUT) == 0
    assert history_records(admin_srv)[-1]["text"] == "last words"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_gracefully(srv, sig):
    a = srv.connect("alice")
    waiting = LineClient(srv.port)  # still at the name prompt
    assert waiting.line() == "? name:"
    assert srv.signal(sig) == 0
    assert a.closed()[-1] == "* server shutting down: server stopped"
    assert waiting.closed()[-1] == "* server shutting down: server stopped"


def test_listening_address_is_logged(srv):
    assert wait_for(lambda: any(f"127.0.0.1:{srv.port}" in x for x in srv.log))


# --- rooms ---------------------------------------------------------------------------------


def test_rooms_separate_messages_who_and_history(srv):
    a, b, c = srv.connect("alice"), srv.connect("bob"), srv.connect("carol")
    a.expect("* carol joined")
    a.send("/join dev")
    b.expect("* alice left (to dev)")
    assert a.expect("* alice joined") == ["* alice joined"]  # a new room: empty history
    a.send("in dev")
    a.expect("alice: in dev")
    b.send("in lobby")
    b.expect("bob: in lobby")
    seen = c.expect("bob: in lobby")
    assert "alice: in dev" not in seen
    a.send("/who")
    assert a.expect(re.compile(r"^\* online"))[-1] == "* online (1): alice"
    a.send("/rooms")
    assert a.expect(re.compile(r"^\* rooms"))[-1] == "* rooms (2): lobby (2), dev (1)"
    b.send("/join DEV")
    assert b.expect("* bob joined") == ["alice: in dev", "* bob joined"]
    a.expect("* bob joined")
    d = LineClient(srv.port)
    assert d.login("dave") == ["bob: in lobby"]


def test_room_operator_topic_and_kick(srv):
    a, b = srv.connect("alice"), srv.connect("bob")
    a.expect("* bob joined")
    a.send("/join dev")
    a.expect("* alice joined")
    b.send("/join dev")
    b.expect("* bob joined")
    b.send("/topic bob rules")
    denied = "! permission denied: only operators of dev set its topic"
    assert b.expect(re.compile("^!"))[-1] == denied
    a.send("/topic release friday")
    b.expect("* alice set the topic of dev: release friday")
    b.send("/kick alice")
    assert b.expect(re.compile("^!"))[-1].startswith("! permission denied")
    a.send("/kick bob off-topic")
    b.expect("* bob was kicked from dev by alice: off-topic")
    b.expect("* bob joined")  # back in the lobby, still connected
    b.send("/who")
    assert b.expect(re.compile(r"^\* online"))[-1] == "* online (1): bob"
    c = LineClient(srv.port)
    c.login("carol")
    c.send("/join dev")
    assert c.expect("* carol joined")[-1] == "* carol joined"
    c.expect("* topic of dev: release friday")
