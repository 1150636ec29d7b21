"""Presence in big rooms (core.presence): long runs of joins and leaves reach native readers
as summary lines; IRC keeps one JOIN per user. Unit tests of the pure folding, then a real
server with a small --presence-summary, native and IRC readers on raw sockets."""

from __future__ import annotations

import re
import socket
import time

import gevent
from hypothesis import given
from hypothesis import strategies as st

from geventchat.core import actions
from geventchat.core import events as ev
from geventchat.core.presence import NAMES_SHOWN, RUN_MIN, FoldedBatch
from geventchat.wire.native import NATIVE
from tests.helpers import TIMEOUT


def _text(events: list[ev.Event]) -> list[str]:
    return NATIVE.render_many(events).decode().splitlines()


def _joins(*names: str) -> list[ev.Event]:
    return [ev.Joined(n, "big") for n in names]


def test_short_runs_are_told_one_by_one() -> None:
    events = _joins(*"abc") + [ev.Message("a", "hi", "big")] + _joins("d")
    batch = FoldedBatch(events, "big")
    assert not batch.folded
    assert _text(batch.events()) == ["* a joined", "* b joined", "* c joined", "a: hi",
                                     "* d joined"]


def test_a_long_run_becomes_one_line_with_the_first_names() -> None:
    names = [f"u{i}" for i in range(523)]
    batch = FoldedBatch(_joins(*names), "big")
    assert batch.folded
    assert _text(batch.events()) == ["* 523 joined: u0, u1, u2 and 520 more"]


def test_chat_lines_keep_their_place_between_runs() -> None:
    events = (_joins(*"abcde") + [ev.Message("a", "first", "big")]
              + [ev.Quit(n, "gone") for n in "vwxyz"] + [ev.Message("b", "second", "big")])
    assert _text(FoldedBatch(events, "big").events()) == [
        "* 5 joined: a, b, c and 2 more", "a: first", "* 5 left: v, w, x and 2 more",
        "b: second"]


def test_a_mixed_run_tells_last_what_happened_last() -> None:
    events = [ev.Left("a", "", "big")] + _joins("b", "c", "d", "a")
    assert _text(FoldedBatch(events, "big").events()) == ["* 1 left: a",
                                                          "* 4 joined: b, c, d and 1 more"]
    events = _joins("b", "c", "d", "a") + [ev.Left("a", "", "big")]
    assert _text(FoldedBatch(events, "big").events()) == ["* 4 joined: b, c, d and 1 more",
                                                          "* 1 left: a"]


def test_kicks_are_never_folded() -> None:
    events = _joins(*"abcd") + [ev.Kicked("e", "op", "", "big")] + _joins("f")
    lines = _text(FoldedBatch(events, "big").events())
    assert lines == ["* 4 joined: a, b, c and 1 more", "* e was kicked from big by op",
                     "* f joined"]


_EVENT = st.sampled_from(["join", "leave", "quit", "say"])


@given(st.lists(_EVENT, max_size=40), st.data())
def test_every_newcomers_tail_is_the_fold_of_what_came_after_it(kinds, data) -> None:
    """``tail(k)`` (what newcomer k reads, in O(pieces)) equals folding ``events[k:]``."""
    make = {"join": lambda i: ev.Joined(f"n{i}", "big"),
            "leave": lambda i: ev.Left(f"n{i}", "", "big"),
            "quit": lambda i: ev.Quit(f"n{i}", "x"),
            "say": lambda i: ev.Message(f"n{i}", f"line {i}", "big")}
    events = [make[k](i) for i, k in enumerate(kinds)]
    batch = FoldedBatch(events, "big")
    skip = data.draw(st.integers(0, len(events)))
    assert _text(batch.tail(skip)) == _text(FoldedBatch(events[skip:], "big").events())
    # Nobody is lost: each summary's count plus the itemized joins and leaves add up.
    told = 0
    for e in batch.tail(skip):
        if type(e) is ev.PresenceSummary:
            assert e.count > 0 and len(e.names) == min(e.count, NAMES_SHOWN)
            told += e.count
        elif type(e) is not ev.Message:
            told += 1
    assert told == sum(k != "say" for k in kinds[skip:])


def test_run_min_is_the_documented_size() -> None:
    assert RUN_MIN == 3 and NAMES_SHOWN == 3


# --- a real server --------------------------------------------------------------------------

_SUMMARY = re.compile(r"\* (\d+) joined: (.+?)(?: and (\d+) more)?")


def _irc_lobby(port: int, nick: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\nJOIN #lobby\r\n".encode())
    _read_until(s, lambda buf: f"366 {nick} #lobby".encode() in buf)
    return s


def _read_until(s: socket.socket, done, buf: bytes = b"") -> bytes:
    deadline = time.monotonic() + TIMEOUT
    while not done(buf):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; have {buf[-300:]!r}"
        s.settimeout(left)
        chunk = s.recv(65536)
        assert chunk, "connection closed"
        buf += chunk
    return buf


def test_a_crowd_reads_as_summaries_to_natives_and_as_joins_to_irc(make_srv) -> None:
    srv = make_srv("--presence-summary", "3", "--rate-limit", "0")
    watcher = srv.connect("watcher")
    irc = _irc_lobby(srv.port, "ircwatch")
    others = [srv.connect(f"early{i}") for i in range(2)]  # the lobby has 4 > 3 members
    watcher.expect("* early1 joined")
    crowd = [f"crowd{i}" for i in range(40)]
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
             for _ in crowd]
    for s, name in zip(socks, crowd, strict=True):  # names at once, as programs send them
        s.sendall(f"{name}\n".encode())
    # The native watcher: every newcomer is accounted for, mostly in summary lines.
    counted, seen, lines = 0, set(), []
    while counted < len(crowd):
        line = watcher.line()
        lines.append(line)
        if (m := _SUMMARY.fullmatch(line)) is not None:
            counted += int(m.group(1))
            seen.update(m.group(2).split(", "))
        elif (m := re.fullmatch(r"\* (crowd\d+) joined", line)) is not None:
            counted += 1
            seen.add(m.group(1))
    assert counted == len(crowd) and seen <= set(crowd)
    assert any(_SUMMARY.fullmatch(x) for x in lines), lines
    assert len(lines) < len(crowd), "a crowd must not cost one line per join"
    # IRC: one JOIN per newcomer, whatever the room's size.
    buf = _read_until(irc, lambda b: all(f":{n}!".encode() in b for n in crowd))
    assert sum(f":{n}!".encode() in buf for n in crowd) == len(crowd)
    assert b" joined: " not in buf
    # A chat line after the storm still reaches everyone, newcomers included.
    others[0].send("after the crowd")
    watcher.expect("early0: after the crowd")
    for s in socks:
        _read_until(s, lambda b: b"early0: after the crowd\n" in b)
    for s in socks:
        s.close()
    irc.close()


def test_summary_zero_keeps_one_line_per_join(make_srv) -> None:
    srv = make_srv("--presence-summary", "0", "--rate-limit", "0")
    watcher = srv.connect("watcher")
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
             for _ in range(10)]
    for i, s in enumerate(socks):
        s.sendall(f"solo{i}\n".encode())
    got = {watcher.expect(re.compile(r"\* solo\d+ joined"))[-1] for _ in range(10)}
    assert got == {f"* solo{i} joined" for i in range(10)}
    for s in socks:
        s.close()


# --- big presence batches go out in slices (core.hub._Drain) ---------------------------------


def _crowd(monkeypatch, members: int):
    from geventchat.core import hub as hub_module
    from tests.test_seams import make_hub, user

    monkeypatch.setattr(hub_module, "FLUSH_SLICE", 10)
    hub = make_hub()
    hub.presence_summary = 0  # one line per join: easy to count
    room = hub.lobby
    room.summary_above = 0
    sessions = [user(hub, f"m{i}") for i in range(members)]
    for s in sessions:
        hub.join(s, room)
    room.flush()
    for s in sessions:
        s.out.data.clear()
    return hub, room, sessions


def _drained(room) -> None:
    """Let the loop run until the room's drain is done (each slice is a loop pass)."""
    with gevent.Timeout(TIMEOUT):
        while room._drain is not None:
            gevent.sleep(0.001)


def _lines(session) -> list[str]:
    return session.out.data.decode().splitlines()


def test_a_big_join_batch_goes_out_in_slices_and_reaches_everyone_once(monkeypatch) -> None:
    from tests.test_seams import user

    hub, room, sessions = _crowd(monkeypatch, 45)
    newcomer = user(hub, "late")
    hub.join(newcomer, room)
    room.flush()
    reached = sum("* late joined" in _lines(s) for s in sessions)
    assert reached == 10, "the first slice only, in this pass"
    _drained(room)
    assert all(_lines(s) == ["* late joined"] for s in sessions)


def test_a_line_said_mid_drain_keeps_the_order_and_the_speaker_goes_first(monkeypatch) -> None:
    from tests.test_seams import user

    hub, room, sessions = _crowd(monkeypatch, 45)
    hub.join(user(hub, "late"), room)
    room.flush()  # the first slice is out, the rest waits for the loop
    speaker = sessions[-1]  # last in the join order: not reached by the first slice
    writes: list[str] = []
    for s in sessions:
        s.out.on_write = (lambda who: lambda: writes.append(who))(s.name)
    actions.say(hub, speaker, room, "hello")
    room.flush()
    assert writes[0] == speaker.name, "the speaker's echo is the first write"
    _drained(room)  # the line itself goes out in slices too
    for s in sessions:
        assert _lines(s) == ["* late joined", f"{speaker.name}: hello"], s.name


def test_a_chat_line_in_a_big_room_reaches_its_speaker_at_once_and_the_rest_in_slices(
        monkeypatch) -> None:
    hub, room, sessions = _crowd(monkeypatch, 45)
    speaker = sessions[20]
    actions.say(hub, speaker, room, "hello")
    room.flush()
    line = f"{speaker.name}: hello"
    assert _lines(speaker) == [line]
    reached = sum(line in _lines(s) for s in sessions)
    assert reached == 1 + 10, "the speaker, then the first slice only, in this pass"
    _drained(room)
    assert all(_lines(s) == [line] for s in sessions)


def test_a_leaver_mid_chat_drain_gets_the_line_on_its_way_out(monkeypatch) -> None:
    hub, room, sessions = _crowd(monkeypatch, 45)
    actions.say(hub, sessions[0], room, "before you go")
    room.flush()
    gone = sessions[-1]
    assert _lines(gone) == []  # not in the first slice
    room.leave(gone, ev.Left(gone.name, "", room.name))
    assert _lines(gone) == [f"{sessions[0].name}: before you go"]
    _drained(room)
    assert _lines(gone) == [f"{sessions[0].name}: before you go"], "once"
    assert all(f"{sessions[0].name}: before you go" in _lines(s) for s in sessions)


def test_a_private_line_mid_chat_drain_takes_its_part_without_finishing_the_drain(
        monkeypatch) -> None:
    hub, room, sessions = _crowd(monkeypatch, 45)
    actions.say(hub, sessions[0], room, "for all")
    room.flush()
    target, other = sessions[-1], sessions[-2]
    target.send(ev.Notice("just for you"))
    assert _lines(target) == [f"{sessions[0].name}: for all", "* just for you"]
    assert _lines(other) == [], "the rest of the room still waits for its slice"
    _drained(room)
    assert _lines(target) == [f"{sessions[0].name}: for all", "* just for you"], "once"
    assert _lines(other) == [f"{sessions[0].name}: for all"]


def test_a_leaver_mid_drain_gets_no_more_of_it(monkeypatch) -> None:
    from tests.test_seams import user

    hub, room, sessions = _crowd(monkeypatch, 45)
    hub.join(user(hub, "late"), room)
    room.flush()
    gone = sessions[-1]
    room.leave(gone, ev.Left(gone.name, "", room.name))
    _drained(room)
    assert _lines(gone) == []
    assert all("* late joined" in _lines(s) for s in sessions[:-1])


def test_a_private_line_mid_drain_comes_after_the_drained_batch(monkeypatch) -> None:
    from tests.test_seams import user

    hub, room, sessions = _crowd(monkeypatch, 45)
    hub.join(user(hub, "late"), room)
    room.flush()
    target = sessions[-1]
    target.send(ev.Notice("just for you"))
    assert _lines(target) == ["* late joined", "* just for you"]


def test_a_line_mid_drain_reaches_newcomers_after_their_tails(monkeypatch) -> None:
    """A storm's newcomers each get the joins after their own (their tail), then what is
    said next, even while the batch is still going out in slices; a newcomer who speaks
    gets its tail before its own echo."""
    from tests.test_seams import user

    hub, room, sessions = _crowd(monkeypatch, 45)
    newcomers, bursts = [], {}
    for i in range(15):
        n = user(hub, f"new{i}")
        hub.join(n, room)
        newcomers.append(n)
        bursts[n.name] = _lines(n)  # its own join burst, written at once
    room.flush()
    joins = [f"* {n.name} joined" for n in newcomers]
    talker = newcomers[3]
    actions.say(hub, talker, room, "hi all")
    room.flush()
    line = f"{talker.name}: hi all"
    assert _lines(talker) == bursts[talker.name] + joins[4:] + [line], "tail, then echo"
    _drained(room)
    for i, n in enumerate(newcomers):
        assert _lines(n) == bursts[n.name] + joins[i + 1:] + [line], n.name
    assert all(_lines(s) == joins + [line] for s in sessions)


def test_a_later_batch_joins_the_drain_one_write_per_member(monkeypatch) -> None:
    """A batch said while the last one drains does not finish it in one pass: a member
    still owed the first gets both in one write when its turn comes."""
    from tests.test_seams import user

    hub, room, sessions = _crowd(monkeypatch, 45)
    hub.join(user(hub, "late"), room)
    room.flush()  # the first slice (10) now, the rest in later passes
    writes = {s.name: 0 for s in sessions}
    for s in sessions:
        s.out.on_write = (lambda who: lambda: writes.__setitem__(who, writes[who] + 1))(s.name)
    actions.say(hub, sessions[0], room, "meanwhile")
    room.flush()
    assert sum(bool(_lines(s)) for s in sessions) <= 1 + 10 + 10, "no pass writes to all"
    _drained(room)
    last = sessions[-1]
    assert _lines(last) == ["* late joined", f"{sessions[0].name}: meanwhile"]
    assert writes[last.name] == 1, "both batches in one write"
    assert all(_lines(s) == ["* late joined", f"{sessions[0].name}: meanwhile"]
               for s in sessions)


def test_a_drain_far_behind_is_written_out_before_the_next_batch(monkeypatch) -> None:
    """Past FAR_BEHIND_BYTES a drain stops growing: the next batch first writes out
    everything owed (its memory is bounded), and order is kept."""
    from geventchat.core import hub as hub_module
    from tests.test_seams import user

    hub, room, sessions = _crowd(monkeypatch, 45)
    monkeypatch.setattr(hub_module, "FAR_BEHIND_BYTES", 1)
    hub.join(user(hub, "late"), room)
    room.flush()  # the first slice now; the drain owes the other 35
    assert room._drain is not None and room._drain.owed > 1
    actions.say(hub, sessions[0], room, "next")
    room.flush()
    assert all(_lines(s)[:1] == ["* late joined"] for s in sessions), "written out"
    _drained(room)
    assert all(_lines(s) == ["* late joined", f"{sessions[0].name}: next"] for s in sessions)
