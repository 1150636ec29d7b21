"""IRCv3 ``draft/chathistory`` against a real server process and the file store: msgid and
server-time tags, every subcommand and reference type, the FAIL replies, the restart.

Raw sockets for exact lines, the `irc` library for a client that negotiates nothing; native
LineClients say the lines. Every wait has a deadline; only 127.0.0.1.
"""

from __future__ import annotations

import re
import time

import pytest

from geventchat.wire.irc import IrcLine
from tests.test_irc import IRC_FLAGS, RawIrc, irc_port, join, lib

HISTORY_CAPS = ("batch", "draft/chathistory", "message-tags", "server-time")


@pytest.fixture
def srv(make_srv):
    # A replay of 5 lines: most queries below read the file's tail, not only memory.
    return make_srv(*IRC_FLAGS, "--history-replay", "5")


def raw(srv, nick: str, *caps: str) -> RawIrc:
    c = RawIrc(irc_port(srv))
    c.register(nick, *caps)
    return c


def say(srv, n: int, prefix: str = "line", gap: float = 0.0) -> None:
    """A native user says ``prefix 1`` .. ``prefix n`` in the lobby (and leaves); ``gap``
    seconds apart, each seen stored before the next when ``gap``."""
    bob = srv.connect("bob")
    for i in range(1, n + 1):
        bob.send(f"{prefix} {i}")
        if gap:
            bob.expect(f"bob: {prefix} {i}")
            time.sleep(gap)
    if not gap:
        bob.expect(f"bob: {prefix} {n}")
    bob.close()


def query(c: RawIrc, line: str) -> tuple[IrcLine, list[IrcLine]]:
    """Send a CHATHISTORY line; the batch's opening line and its messages."""
    c.send(line)
    got = c.expect(lambda m: m.command == "FAIL" or (m.command == "BATCH"
                                                      and m.params[0].startswith("-")))
    assert got[-1].command == "BATCH", got[-1]
    start = next(i for i, m in enumerate(got) if m.command == "BATCH")
    ref = got[start].params[0][1:]
    body = got[start + 1:-1]
    assert all(m.tags["batch"] == ref for m in body)
    assert got[-1].params == (f"-{ref}",)
    return got[start], body


def texts(lines: list[IrcLine]) -> list[str]:
    return [m.params[-1] for m in lines]


def fail(c: RawIrc, line: str) -> tuple[str, ...]:
    c.send(line)
    got = c.expect(lambda m: m.command in ("FAIL", "BATCH"))[-1]
    assert got.command == "FAIL", got
    assert got.source == "irc.test"
    return got.params


def test_caps_isupport_and_msgid_on_live_lines(srv):
    c = RawIrc(irc_port(srv))
    c.send("CAP LS 302")
    assert "draft/chathistory" in c.expect("CAP")[-1].params[-1].split()
    burst = c.register("ann", *HISTORY_CAPS)
    tokens = [t for m in burst if m.command == "005" for t in m.params[1:-1]]
    assert "CHATHISTORY=100" in tokens and "MSGREFTYPES=msgid,timestamp" in tokens
    lines = join(c, "#lobby")
    assert [m.command for m in lines] == ["JOIN", "353", "366"]
    say(srv, 1, "live")
    msg = c.expect("PRIVMSG")[-1]
    assert msg.params == ("#lobby", "live 1")
    assert re.fullmatch(r"lobby-\d+", msg.tags["msgid"])
    # No automatic replay for a draft/chathistory client: the first thing after the
    # join burst was the live line (checked above), and a PING proves nothing else came.
    assert [m.command for m in c.roundtrip() if m.command != "QUIT"] == []  # bob may leave
    plain = raw(srv, "pat", "server-time")
    join(plain, "#lobby")
    replay = plain.expect(lambda m: m.command == "PRIVMSG" and m.params[-1] == "live 1")
    assert "msgid" not in replay[-1].tags  # no message-tags: no msgid


def test_latest_before_after_around_between_by_msgid(srv):
    say(srv, 30)
    c = raw(srv, "ann", *HISTORY_CAPS)
    join(c, "#lobby")
    head, body = query(c, "CHATHISTORY LATEST #lobby * 10")
    assert head.params[1:] == ("chathistory", "#lobby")
    assert texts(body) == [f"line {i}" for i in range(21, 31)]
    assert all(m.source == "bob!bob@irc.test" and "time" in m.tags for m in body)
    ids = [m.tags["msgid"] for m in body]
    assert len(set(ids)) == 10
    first = int(ids[0].rpartition("-")[2])  # "line 21"
    mid = f"lobby-{first}"

    def msgid(n: int) -> str:  # of "line n"
        return f"lobby-{first - 21 + n}"

    assert ids[0] == mid
    _, body = query(c, f"CHATHISTORY BEFORE #lobby msgid={msgid(21)} 8")
    assert texts(body) == [f"line {i}" for i in range(13, 21)]
    _, body = query(c, f"CHATHISTORY AFTER #lobby msgid={msgid(3)} 4")
    assert texts(body) == [f"line {i}" for i in range(4, 8)]
    _, body = query(c, f"CHATHISTORY LATEST #lobby msgid={msgid(27)} 10")
    assert texts(body) == [f"line {i}" for i in range(28, 31)]
    _, body = query(c, f"CHATHISTORY AROUND #lobby msgid={msgid(10)} 5")
    assert texts(body) == [f"line {i}" for i in range(8, 13)]
    _, body = query(c, f"CHATHISTORY BETWEEN #lobby msgid={msgid(5)} msgid={msgid(25)} 4")
    assert texts(body) == [f"line {i}" for i in range(6, 10)]
    # Backwards: counted from the first reference, still oldest first.
    _, body = query(c, f"CHATHISTORY BETWEEN #lobby msgid={msgid(25)} msgid={msgid(5)} 4")
    assert texts(body) == [f"line {i}" for i in range(21, 25)]
    # A limit above CHATHISTORY=100 (or 0) is the maximum; BEFORE * is LATEST *.
    _, body = query(c, "CHATHISTORY BEFORE #lobby * 0")
    assert texts(body)[-1] == "line 30" and len(body) >= 30
    _, body = query(c, f"CHATHISTORY AFTER #lobby msgid={msgid(30)} 50")
    assert body == []  # an empty batch, so the client stops waiting


def test_timestamps(srv):
    say(srv, 12, gap=0.003)  # distinct milliseconds
    c = raw(srv, "ann", *HISTORY_CAPS)
    join(c, "#lobby")
    _, body = query(c, "CHATHISTORY LATEST #lobby * 12")
    times = [m.tags["time"] for m in body]
    by_text = dict(zip(texts(body), times, strict=True))
    t4 = by_text["line 4"]
    _, after = query(c, f"CHATHISTORY AFTER #lobby timestamp={t4} 3")
    assert all(m.tags["time"] > t4 for m in after) and len(after) <= 3
    assert after and after[0].tags["time"] == min(t for t in times if t > t4)
    _, before = query(c, f"CHATHISTORY BEFORE #lobby timestamp={t4} 100")
    assert [m.tags["time"] for m in before] == [t for t in times if t < t4]
    _, latest = query(c, f"CHATHISTORY LATEST #lobby timestamp={t4} 100")
    assert [m.tags["time"] for m in latest] == [t for t in times if t > t4]
    _, around = query(c, f"CHATHISTORY AROUND #lobby timestamp={t4} 4")
    assert 1 <= len(around) <= 4 and t4 in [m.tags["time"] for m in around]
    _, between = query(c, f"CHATHISTORY BETWEEN #lobby timestamp={times[0]} "
                          f"timestamp={times[-1]} 100")
    assert [m.tags["time"] for m in between] == [t for t in times if times[0] < t < times[-1]]
    _, old = query(c, "CHATHISTORY BEFORE #lobby timestamp=2000-01-01T00:00:00.000Z 10")
    assert old == []
    # Mixed references.
    _, mixed = query(c, f"CHATHISTORY BETWEEN #lobby timestamp={times[0]} "
                        f"msgid={body[-1].tags['msgid']} 100")
    assert [m.tags["time"] for m in mixed] == [t for t in times[:-1] if t > times[0]]


def test_targets_and_nick_targets(srv):
    say(srv, 2)
    c = raw(srv, "ann", *HISTORY_CAPS)
    join(c, "#lobby")
    join(c, "#empty")
    c.send("CHATHISTORY TARGETS timestamp=2000-01-01T00:00:00.000Z "
           "timestamp=2999-01-01T00:00:00.000Z 10")
    got = c.expect(lambda m: m.command == "BATCH" and m.params[0].startswith("-"))
    assert got[0].params[1:] == ("draft/chathistory-targets",)
    rows = [m.params for m in got[1:-1]]
    assert len(rows) == 1 and rows[0][:2] == ("TARGETS", "#lobby")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rows[0][2])
    # Private messages are not stored: a nick's history is an empty batch.
    head, body = query(c, "CHATHISTORY LATEST bob * 10")
    assert head.params[1:] == ("chathistory", "bob") and body == []


def test_fail_replies(srv):
    say(srv, 1)
    c = raw(srv, "ann", *HISTORY_CAPS)
    join(c, "#lobby")
    other = raw(srv, "oz")
    join(other, "#secret")
    assert fail(c, "CHATHISTORY") == ("CHATHISTORY", "INVALID_PARAMS", "*",
                                      "Insufficient parameters")
    assert fail(c, "CHATHISTORY FOO #lobby * 10") == ("CHATHISTORY", "INVALID_PARAMS", "FOO",
                                                      "Unknown command")
    assert fail(c, "CHATHISTORY LATEST #lobby *") == ("CHATHISTORY", "INVALID_PARAMS",
                                                      "LATEST", "Insufficient parameters")
    assert fail(c, "CHATHISTORY LATEST #lobby * 10 x") == (
        "CHATHISTORY", "INVALID_PARAMS", "LATEST", "Too many parameters")
    assert fail(c, "CHATHISTORY LATEST #lobby * ten") == (
        "CHATHISTORY", "INVALID_PARAMS", "LATEST", "ten", "Invalid limit")
    assert fail(c, "CHATHISTORY BEFORE #lobby timestamp=yesterday 10") == (
        "CHATHISTORY", "INVALID_PARAMS", "BEFORE", "timestamp=yesterday", "Invalid timestamp")
    assert fail(c, "CHATHISTORY AFTER #lobby * 10") == (
        "CHATHISTORY", "INVALID_PARAMS", "AFTER", "*", "Invalid message reference")
    assert fail(c, "CHATHISTORY AFTER #lobby seq=3 10") == (
        "CHATHISTORY", "INVALID_MSGREFTYPE", "AFTER", "#lobby",
        "seq references are not supported")
    for target in ("#secret", "#nowhere"):  # not a member, no such channel: the same
        assert fail(c, f"CHATHISTORY LATEST {target} * 10") == (
            "CHATHISTORY", "INVALID_TARGET", "LATEST", target,
            "Messages could not be retrieved")
    assert fail(c, "CHATHISTORY AFTER #lobby msgid=secret-1 10") == (
        "CHATHISTORY", "MESSAGE_ERROR", "AFTER", "#lobby", "msgid=secret-1",
        "Messages could not be retrieved")
    assert fail(c, "CHATHISTORY TARGETS msgid=lobby-1 timestamp=2999-01-01T00:00:00Z 5") == (
        "CHATHISTORY", "INVALID_PARAMS", "TARGETS", "msgid=lobby-1", "TARGETS takes timestamps")
    assert c.roundtrip() == []  # one reply each, and the connection is fine


def test_without_batch_lines_come_bare(srv):
    say(srv, 3)
    c = raw(srv, "ann", "draft/chathistory")
    join(c, "#lobby")
    c.send("CHATHISTORY LATEST #lobby * 2")
    got = c.roundtrip()
    assert [(m.command, m.params) for m in got] == [("PRIVMSG", ("#lobby", "line 2")),
                                                    ("PRIVMSG", ("#lobby", "line 3"))]
    assert all(not m.tags for m in got)


def test_msgids_survive_a_restart(srv):
    say(srv, 4)
    c = raw(srv, "ann", *HISTORY_CAPS)
    join(c, "#lobby")
    _, before = query(c, "CHATHISTORY LATEST #lobby * 4")
    c.close()
    srv.restart()
    c = raw(srv, "ann", *HISTORY_CAPS)
    join(c, "#lobby")
    _, after = query(c, "CHATHISTORY LATEST #lobby * 4")
    assert [(m.tags["msgid"], m.tags["time"], m.params) for m in after] == \
        [(m.tags["msgid"], m.tags["time"], m.params) for m in before]
    say(srv, 1, "new")
    live = c.expect("PRIVMSG")[-1]
    last = int(before[-1].tags["msgid"].rpartition("-")[2])
    assert live.tags["msgid"] == f"lobby-{last + 1}"  # ids go on growing
    _, body = query(c, f"CHATHISTORY AFTER #lobby msgid={before[1].tags['msgid']} 10")
    assert texts(body) == ["line 3", "line 4", "new 1"]


def test_long_lines_get_one_msgid_per_piece(srv):
    bob = srv.connect("bob")
    bob.send("x" * 1200)
    bob.expect(re.compile(r"bob: x+"))
    c = raw(srv, "ann", *HISTORY_CAPS)
    join(c, "#lobby")
    _, body = query(c, "CHATHISTORY LATEST #lobby * 1")
    ids = [m.tags["msgid"] for m in body]
    assert len(body) >= 3 and ids[1:] == [f"{ids[0]}.{i}" for i in range(1, len(ids))]
    _, older = query(c, f"CHATHISTORY BEFORE #lobby msgid={ids[2]} 10")
    assert all("msgid" in m.tags and not m.tags["msgid"].startswith(ids[0])
               for m in older)


def test_the_irc_library_reads_history_without_capabilities(srv):
    say(srv, 3)
    a = lib(srv, "libby")
    a.conn.join("#lobby")
    a.wait("join")
    for i in (1, 2, 3):  # no draft/chathistory: the join replays the recent lines
        assert a.wait("pubmsg").arguments == [f"line {i}"]
    a.conn.send_raw("CHATHISTORY BEFORE #lobby * 2")
    for i in (2, 3):
        e = a.wait("pubmsg")
        assert (e.source.nick, e.target, e.arguments) == ("bob", "#lobby", [f"line {i}"])
    a.close()
