"""Ids, scrollback on demand, and resuming without gaps (native protocol)."""

from __future__ import annotations

import re

from tests.helpers import LineClient

IDS = re.compile(r"^#(\d+)@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (.*)$")
ROOM = re.compile(r"^= room (\S+) epoch (\S+) last (\d+)$")


def login_ids(port: int, name: str, *before: str) -> tuple[LineClient, list[str]]:
    c = LineClient(port)
    assert c.line() == "? name:"
    c.send("/ids")
    assert c.line() == "* ids on"
    for line in before:
        c.send(line)
    c.send(name)
    return c, c.expect(f"* {name} joined")


def say(c: LineClient, name: str, *lines: str) -> None:
    for text in lines:
        c.send(text)
        c.expect(re.compile(rf"^(#\S+ )?{re.escape(name)}: {re.escape(text)}$"))


def test_history_command_shows_the_last_lines_without_ids(make_srv):
    srv = make_srv("--rate-limit", "0")
    a = srv.connect("alice")
    say(a, "alice", *[f"line {i}" for i in range(10)])
    a.send("/history 3")
    lines = a.expect("* end of history")
    assert lines[-5:] == ["* history of lobby (3 lines):", "alice: line 7", "alice: line 8",
                          "alice: line 9", "* end of history"]
    a.send("/history x")
    assert a.line() == "! usage: /history [N]"


def test_raw_clients_see_no_ids(make_srv):
    srv = make_srv()
    a = srv.connect("alice")
    a.send("hello")
    assert a.expect("alice: hello")[-1] == "alice: hello"


def test_ids_grow_and_each_join_says_where_the_history_stands(make_srv):
    srv = make_srv("--rate-limit", "0")
    plain = srv.connect("plain")
    say(plain, "plain", "one", "two")
    c, burst = login_ids(srv.port, "prog")
    room = ROOM.match(burst[0])
    assert room and room.group(1) == "lobby" and int(room.group(3)) == 2
    assert [IDS.match(x).groups() for x in burst[1:3]] == [("1", "plain: one"),
                                                            ("2", "plain: two")]
    plain.send("three")
    assert IDS.match(c.expect(re.compile("three$"))[-1]).groups() == ("3", "plain: three")


def test_resume_replays_exactly_what_was_missed_once(make_srv):
    srv = make_srv("--rate-limit", "0")
    talker = srv.connect("talker")
    say(talker, "talker", "before 1", "before 2")
    c, burst = login_ids(srv.port, "prog")
    epoch, last = ROOM.match(burst[0]).group(2), int(ROOM.match(burst[0]).group(3))
    c.close()  # the connection drops...
    say(talker, "talker", "missed 1", "missed 2", "missed 3")  # ...while others talk
    c2, burst = login_ids(srv.port, "prog", f"/resume lobby {epoch} {last}")
    texts = [IDS.match(x).group(2) for x in burst if IDS.match(x)]
    assert texts == ["talker: missed 1", "talker: missed 2", "talker: missed 3"]
    assert c2.line() == "= resumed lobby 3"
    talker.send("live")
    assert c2.expect(re.compile("live$"))[-1].endswith("talker: live")


def test_resume_across_a_server_restart(make_srv):
    srv = make_srv("--rate-limit", "0")
    c, burst = login_ids(srv.port, "prog")
    epoch = ROOM.match(burst[0]).group(2)
    talker = srv.connect("talker")
    say(talker, "talker", "seen")
    last = int(IDS.match(c.expect(re.compile("seen$"))[-1]).group(1))
    srv.restart()
    talker = srv.connect("talker")
    say(talker, "talker", "after restart")
    c2, burst = login_ids(srv.port, "prog", f"/resume lobby {epoch} {last}")
    assert [IDS.match(x).group(2) for x in burst if IDS.match(x)] == [
        "talker: after restart"]
    assert c2.line() == "= resumed lobby 1"


def test_resume_says_how_many_lines_could_not_be_recovered(make_srv):
    srv = make_srv("--rate-limit", "0", "--history-replay", "5")
    c, burst = login_ids(srv.port, "prog")
    epoch, last = ROOM.match(burst[0]).group(2), int(ROOM.match(burst[0]).group(3))
    c.close()
    talker = srv.connect("talker")
    for start in range(0, 1010, 200):  # more than a resume replays (1,000)
        talker.sock.sendall("".join(f"n{i}\n" for i in range(start, min(start + 200, 1010)))
                            .encode())
    talker.expect("talker: n1009", timeout=30)
    c2, burst = login_ids(srv.port, "prog", f"/resume lobby {epoch} {last}")
    assert "! 1005 lines could not be recovered; here are the recent ones" in burst
    assert [IDS.match(x).group(2) for x in burst if IDS.match(x)] == [
        f"talker: n{i}" for i in range(1005, 1010)]


def test_resume_after_a_clear_says_the_history_changed(make_srv, tmp_path):
    srv = make_srv("--rate-limit", "0", start=False)
    from tests.helpers import add_admin
    add_admin(srv.admins, "root", "s3cret-pw")
    srv.start()
    root = srv.connect("root", "s3cret-pw")
    say(root, "root", "a line before the clear")
    c, burst = login_ids(srv.port, "prog")
    epoch, last = ROOM.match(burst[0]).group(2), int(ROOM.match(burst[0]).group(3))
    assert last == 1
    c.close()
    root.send("/clear")
    root.expect("* history cleared by root")
    c2, burst = login_ids(srv.port, "prog", f"/resume lobby {epoch} {last}")
    assert burst[0] == ("! the history of lobby was cleared or lost since you left; "
                        "here are its recent lines")
    assert ROOM.match(burst[1]).group(2) != epoch


def test_resume_into_another_room(make_srv):
    srv = make_srv("--rate-limit", "0")
    c, _ = login_ids(srv.port, "prog")
    c.send("/join dev")
    burst = c.expect("* prog joined")
    epoch, last = ROOM.match(burst[0]).group(2), int(ROOM.match(burst[0]).group(3))
    c.close()
    dev = srv.connect("dev")
    dev.send("/join dev")
    dev.expect("* dev joined")
    say(dev, "dev", "in dev")
    c2, burst = login_ids(srv.port, "prog", f"/resume dev {epoch} {last}")
    assert ROOM.match(burst[0]).group(1) == "dev"
    assert [IDS.match(x).group(2) for x in burst if IDS.match(x)] == ["dev: in dev"]
