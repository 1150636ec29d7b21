"""Regression tests for the seams between modules (the outside review's F1, F3, F4, F6, F7):
admission shared by every edge, hub operations that never switch greenlets, a flush that
can't re-enter itself, a sweeper that survives a bug, counters instead of O(users) walks,
and the shared port's first-byte sniffing."""

from __future__ import annotations

import re
import socket
from contextlib import contextmanager
from pathlib import Path

import gevent
import greenlet
import pytest
from gevent.event import Event

from geventchat.core import actions
from geventchat.core import events as ev
from geventchat.core.broker import LocalBroker, SimpleShelf
from geventchat.core.hub import Hub, Session
from geventchat.edges.sniff import HTTP, IRC, NATIVE, classify
from geventchat.wire.native import NATIVE as NATIVE_RENDERER
from tests.helpers import TIMEOUT, LineClient, ServerProcess
from tests.test_irc import IRC_FLAGS, RawIrc, irc_port

# --- helpers ---------------------------------------------------------------------------------


class MemoryHistory:
    """An in-memory history store (the local broker's storage interface)."""

    def __init__(self) -> None:
        self.events: list = []
        self.closed = False

    def recent(self) -> list:
        return list(self.events[-100:])

    def append(self, event):
        self.events.append(event)
        return event

    def clear(self, event):
        self.events = [event]
        return event

    def close(self) -> None:
        gevent.sleep(0.05)  # a real close waits for the disk: it must never run in the hub
        self.closed = True


class Sink:
    """A client's output as the hub sees it; records what it is given."""

    def __init__(self, on_write=None) -> None:
        self.data = bytearray()
        self.closed = False
        self.on_write = on_write

    def write(self, data: bytes) -> None:
        self.data += data
        if self.on_write is not None:
            self.on_write()

    def text(self) -> str:
        return self.data.decode()


def make_hub(broker=None) -> Hub:
    class NoAdmins:
        def is_admin(self, name: str) -> bool:
            return False

        def verify(self, name: str, password: str) -> bool:
            return False

    return Hub(broker or LocalBroker(SimpleShelf(lambda room: MemoryHistory())), NoAdmins())


def user(hub: Hub, name: str, sink: Sink | None = None) -> Session:
    session = Session(name, sink or Sink(), NATIVE_RENDERER, lambda reason: None)
    session.always_in_room = True
    hub.register(session)
    return session


@contextmanager
def no_switch():
    """Fails if the calling greenlet switches away inside the block."""
    switches: list[str] = []

    def trace(event: str, args: tuple) -> None:
        switches.append(event)

    old = greenlet.settrace(trace)
    try:
        yield
    finally:
        greenlet.settrace(old)
    assert switches == [], f"the greenlet switched inside a hub operation: {switches}"


def run_loop() -> None:
    """Let loop callbacks (the batched flush) run."""
    gevent.sleep(0.01)


# --- F3: no hub method switches greenlets ----------------------------------------------------


def test_no_hub_operation_switches_greenlets():
    hub = make_hub()
    with no_switch():
        alice = user(hub, "alice")
        bob = user(hub, "bob")
        dev = hub.room("dev")
        hub.join(alice, dev)
        hub.join(bob, dev)
        dev.say(ev.Message("alice", "hi", "dev"))
        dev.flush()
        hub.rename(bob, "robert")
        dev.set_topic("alice", "t")
        dev.clear("alice")
        hub.part(alice, dev, ev.Left("alice", "", "dev"))
        hub.part(bob, dev, ev.Left("robert", "", "dev"))  # empties it: storage closes later
        hub.unregister(alice, ev.Quit("alice", ""))
        hub.unregister(bob, ev.Quit("robert", ""))
    assert "dev" not in hub.rooms


def test_a_session_killed_while_its_join_waits_is_not_added():
    """The review's ghost member: a kill during a join that waits for the history."""
    loaded = Event()

    class SlowBroker(LocalBroker):
        def prepare(self, room) -> None:
            loaded.wait(TIMEOUT)

    hub = make_hub(SlowBroker(SimpleShelf(lambda room: MemoryHistory())))
    alice = user(hub, "alice")
    joining = gevent.spawn(actions.join, hub, alice, "dev")
    gevent.sleep(0.01)  # the join is waiting for the room's history
    actions.disconnect(hub, alice, "root", "bye")
    loaded.set()
    assert joining.get(timeout=TIMEOUT) is None
    assert hub.find_room("dev") is None  # not left behind as an empty room either
    bob = user(hub, "alice")  # the name is free again, and its next owner is in the lobby
    assert bob.room is hub.lobby and hub.lobby.members == {"alice": bob}


def test_a_room_recreated_while_its_history_closes_keeps_every_line():
    histories: dict[str, MemoryHistory] = {}

    class Shelf(SimpleShelf):
        """Reuses a room's store, as the file shelf reuses a closing history."""

        def get(self, room: str):
            return histories.setdefault(room, MemoryHistory())

    hub = make_hub(LocalBroker(Shelf(lambda room: MemoryHistory())))
    alice = user(hub, "alice")
    actions.join(hub, alice, "dev")
    for i in range(5):
        actions.say(hub, alice, alice.room, f"line {i}")
    actions.join(hub, alice, "lobby")  # empties dev: its store is released
    carol = user(hub, "carol", sink := Sink())
    actions.join(hub, carol, "dev")  # re-created at once, before any close finished
    run_loop()
    assert [f"alice: line {i}" in sink.text() for i in range(5)] == [True] * 5


# --- F4: a flush never re-enters itself ------------------------------------------------------


def test_flush_reentered_by_a_dying_member_loses_nothing():
    hub = make_hub()
    room = hub.room("dev")
    sinks = [Sink() for _ in range(5)]
    members = [user(hub, f"u{i}", s) for i, s in enumerate(sinks)]
    for m in members:
        hub.join(m, room)
    room.flush()
    newcomer = user(hub, "late", late_sink := Sink())

    def reenter() -> None:
        # What the IRC close path did: a goodbye line flushes the room mid-flush, and a
        # newcomer is admitted while the member maps are being iterated.
        sinks[1].on_write = None
        hub.join(newcomer, room)
        room.flush()

    sinks[1].on_write = reenter
    for i in range(3):
        room.say(ev.Message("u0", f"batch {i}", "dev"))
    room.flush()
    for s in sinks:
        assert all(f"u0: batch {i}" in s.text() for i in range(3)), s.text()
    room.say(ev.Message("u0", "after", "dev"))
    room.flush()
    assert "u0: after" in late_sink.text()


# --- F7: counters, not walks ----------------------------------------------------------------


def test_lusers_counters_follow_users_rooms_opers_and_invisible():
    hub = make_hub()
    a, b = user(hub, "a"), user(hub, "b")
    assert (len(hub.users), hub.channels, hub.opers, hub.invisible) == (2, 1, 0, 0)
    actions.join(hub, a, "dev")
    assert hub.channels == 2
    hub.set_account(b, "b")
    modes: set[str] = set()
    b.extra = {"modes": modes}
    assert hub.set_invisible(b, modes, True) and not hub.set_invisible(b, modes, True)
    assert (hub.opers, hub.invisible) == (1, 1)
    hub.unregister(b, None)
    hub.unregister(a, None)
    assert (len(hub.users), hub.channels, hub.opers, hub.invisible) == (0, 0, 0, 0)


def test_who_names_are_cached_per_membership():
    hub = make_hub()
    a, b = user(hub, "bob"), user(hub, "Alice")
    names = hub.lobby.names()
    assert names == ["Alice", "bob"] and hub.lobby.names() is names
    hub.rename(a, "zed")
    assert hub.lobby.names() == ["Alice", "zed"]
    hub.unregister(b, None)
    assert hub.lobby.names() == ["zed"]


# --- F6: the sweeper survives a bug ---------------------------------------------------------


def test_sweeper_keeps_running_when_one_connection_fails(tmp_path: Path):
    from geventchat.server import ChatServer, Settings, build_hub

    settings = Settings(host="127.0.0.1", port=0, history=tmp_path / "h.txt", admins=None,
                        register_timeout=0.5, sniff_timeout=0)
    server = ChatServer(settings, build_hub(settings))

    class Broken:
        addr = "bug"

        def expire(self, now: float) -> None:
            raise RuntimeError("a bug in one connection")

    server.start()
    try:
        server.connections.add(Broken())
        from gevent import socket as gsocket

        sock = gsocket.create_connection(server.address, timeout=TIMEOUT)
        data = b""
        with gevent.Timeout(TIMEOUT):
            while b"registration timeout" not in data:
                chunk = sock.recv(4096)
                assert chunk, f"closed before the timeout notice: {data!r}"
                data += chunk
        sock.close()
    finally:
        server.stop()
        server._shutdown()


# --- F1: one admission for every edge ---------------------------------------------------------


def test_irc_pass_failures_are_rate_limited_per_ip(make_srv, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("letmein\n", "utf-8")
    pw.chmod(0o600)
    srv = make_srv(*IRC_FLAGS, "--password-file", str(pw))
    port = irc_port(srv)
    for i in range(10):
        c = RawIrc(port)
        c.send(f"PASS guess{i}", f"NICK g{i}", "USER g 0 * :G")
        assert c.expect("464")[-1].params[-1] == "Password incorrect"
    right = RawIrc(port)  # even the right password is refused now, from this address
    right.send("PASS letmein", "NICK late", "USER l 0 * :L")
    assert right.expect("464")[-1].params[-1] == "Too many failed attempts; try again later"
    native = LineClient(srv.port)  # and the native prompt shares the count
    assert native.line() == "? server password:"
    native.send("letmein")
    assert native.expect(re.compile("^!"))[-1].startswith("! too many failed logins")


# --- sniffing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "kind"), [
    (b"NICK alice\r\n", IRC), (b"CAP LS 302\r\n", IRC), (b"PASS x\r\nNICK a\r\n", IRC),
    (b"user bob 0 * :Bob\r\n", IRC), (b"NICK", NATIVE), (b"NICK \r\n", NATIVE),
    (b"alice\n", NATIVE), (b"", NATIVE), (b"GET / HTTP/1.1\r\n", HTTP), (b"HEAD /", HTTP),
    (b"\xff\xfe", NATIVE),
])
def test_classify_first_bytes(data: bytes, kind: str):
    assert classify(data) == kind


def test_strict_irc_client_on_the_shared_port_never_sees_the_native_prompt(make_srv):
    srv: ServerProcess = make_srv(*IRC_FLAGS)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
    sock.sendall(b"NICK strict\r\nUSER s 0 * :Strict\r\n")
    data = b""
    while b" 001 " not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    assert data.startswith(b":"), data[:40]  # the first byte is IRC's, not "? name:"
    assert all(line.endswith(b"\r") for line in data.split(b"\n")[:-1])
    sock.close()


def test_a_silent_client_on_the_shared_port_gets_the_native_prompt(srv_plain):
    c = LineClient(srv_plain.port)
    assert c.line() == "? name:"


@pytest.fixture
def srv_plain(make_srv) -> ServerProcess:
    return make_srv()


def test_rooms_in_use_are_capped():
    hub = make_hub()
    hub.max_rooms = 3  # the lobby and two more
    a = user(hub, "a")
    actions.join(hub, a, "one")
    b = user(hub, "b")
    actions.join(hub, b, "two")
    c = user(hub, "c")
    with pytest.raises(Exception) as refused:
        actions.join(hub, c, "three")
    assert refused.value.code == "too_many_rooms"
    actions.join(hub, c, "one")  # existing rooms stay open to everyone
    actions.join(hub, a, "lobby")  # "one" still has c; "two" empties when b leaves
    actions.join(hub, b, "lobby")
    assert actions.join(hub, c, "three") is not None


def test_announced_modes_pair_each_letter_with_its_parameter():
    """What every node reads back from a ModeChanged (the cluster keeps +o and +t)."""
    from geventchat.core.modes import changes

    assert changes("+ko", ("sesame", "bob")) == [(True, "k", "sesame"), (True, "o", "bob")]
    assert changes("+l-lo+t", ("9", "al")) == [(True, "l", "9"), (False, "l", None),
                                               (False, "o", "al"), (True, "t", None)]
    assert changes("+bv", ("*!*@h", "cy")) == [(True, "b", "*!*@h"), (True, "v", "cy")]
