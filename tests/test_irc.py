"""IRC against a real server process: the `irc` client library and raw sockets on one side,
native LineClients on the other, each direction checked. Keepalive and registration timeouts
run in-process with an injected clock, so no test waits 90 seconds.

Every wait has a deadline; nothing sleeps and hopes; only 127.0.0.1.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable

import irc.client
import pytest

from geventchat.wire.irc import IrcLine, parse_line
from tests.helpers import TIMEOUT, LineClient, ServerProcess, add_admin

IRC_FLAGS = ("--irc-port", "0", "--server-name", "irc.test", "--rate-limit", "0")


@pytest.fixture
def srv(make_srv):
    return make_srv(*IRC_FLAGS)


@pytest.fixture
def admin_srv(make_srv):
    s = make_srv(*IRC_FLAGS, start=False)
    add_admin(s.admins, "root", "s3cret-pw")
    return s.start()


def irc_port(srv: ServerProcess) -> int:
    m = re.search(r"IRC listening on [^\s:]+:(\d+)", srv.wait_log("IRC listening on"))
    return int(m.group(1))


# --- clients ---------------------------------------------------------------------------------


class RawIrc(LineClient):
    """A raw-socket IRC client: exact lines in, parsed lines out, every read with a deadline."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.nick = "*"

    def send(self, *lines: str | bytes) -> None:  # type: ignore[override]
        self.sock.sendall(b"".join(x if isinstance(x, bytes) else x.encode() + b"\r\n"
                                   for x in lines))

    def raw(self, timeout: float = TIMEOUT) -> str:
        line = self.raw_line(timeout)
        if not line.endswith(b"\r"):  # only the native prompt, sent before detection
            assert line.startswith(b"? "), f"IRC lines end in CRLF: {line!r}"
            return line.decode()
        line = line[:-1]
        assert len(line.split(b" ", 1)[1] if line.startswith(b"@") else line) + 2 <= 512
        return line.decode()

    def expect(self, want: str | Callable[[IrcLine], bool],
               timeout: float = TIMEOUT) -> list[IrcLine]:
        """Read until a line whose command is ``want`` (or that ``want(line)`` accepts);
        return every line read, the match last."""
        seen: list[IrcLine] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                raw = self.raw(max(0.01, deadline - time.monotonic()))
            except AssertionError:
                raise AssertionError(f"never got {want!r}; saw {seen!r}") from None
            msg = parse_line(raw)
            seen.append(msg)
            if msg.command == want if isinstance(want, str) else want(msg):
                return seen

    def register(self, nick: str, *caps: str) -> list[IrcLine]:
        """Full registration (with CAP when ``caps``); returns the burst up to the MOTD."""
        if caps:
            self.send("CAP LS 302", f"NICK {nick}", "USER u 0 * :Real Name",
                      f"CAP REQ :{' '.join(caps)}")
            assert self.expect("CAP")[-1].params[1] == "LS"
            assert self.expect("CAP")[-1].params[1:] == ("ACK", " ".join(caps))
            self.send("CAP END")
        else:
            self.send(f"NICK {nick}", "USER u 0 * :Real Name")
        self.nick = nick
        return self.expect(lambda m: m.command in ("376", "422"))

    def closed(self, timeout: float = TIMEOUT) -> list[IrcLine]:
        lines: list[IrcLine] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                lines.append(parse_line(self.raw(max(0.01, deadline - time.monotonic()))))
            except (EOFError, ConnectionResetError):
                return lines

    def roundtrip(self) -> list[IrcLine]:
        """Everything the server sent before answering a PING: proof of what did NOT come."""
        self.send("PING :sync")
        return self.expect(lambda m: m.command == "PONG" and m.params[-1] == "sync")[:-1]


class LibIrc:
    """A client built on the `irc` library (jaraco): its Reactor, driven with a timeout loop."""

    def __init__(self, port: int, nick: str, password: str | None = None) -> None:
        self.reactor = irc.client.Reactor()
        self.events: list[irc.client.Event] = []
        self._pos = 0
        self.reactor.add_global_handler("all_events", self._record, -10)
        self.conn = self.reactor.server().connect("127.0.0.1", port, nick, password=password)

    def _record(self, conn, event) -> None:
        if event.type != "all_raw_messages":
            self.events.append(event)

    def wait(self, etype: str, pred: Callable[[irc.client.Event], bool] = lambda e: True,
             timeout: float = TIMEOUT) -> irc.client.Event:
        """The next event of type ``etype`` accepted by ``pred``, or AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            while self._pos < len(self.events):
                e = self.events[self._pos]
                self._pos += 1
                if e.type == etype and pred(e):
                    return e
            if time.monotonic() > deadline:
                seen = [(e.type, e.arguments) for e in self.events[-10:]]
                raise AssertionError(f"no {etype} event within {timeout}s; last: {seen}")
            self.reactor.process_once(0.02)

    def welcome(self) -> LibIrc:
        self.wait("welcome")
        return self

    def close(self) -> None:
        self.conn.close()


def lib(srv: ServerProcess, nick: str, port: int | None = None) -> LibIrc:
    return LibIrc(port or irc_port(srv), nick).welcome()


def raw(srv: ServerProcess, nick: str, *caps: str) -> RawIrc:
    c = RawIrc(irc_port(srv))
    c.register(nick, *caps)
    return c


def join(c: RawIrc, chan: str) -> list[IrcLine]:
    """JOIN and read up to that channel's end of names (the JOIN, 332, 353, 366)."""
    c.send(f"JOIN {chan}")
    lines = c.expect(lambda m: m.command == "366" and m.params[1].lower() == chan.lower())
    start = max(i for i, m in enumerate(lines) if m.command == "JOIN")
    return lines[start:]


# --- detection and registration --------------------------------------------------------------


def test_shared_port_detects_cap_ls_first(srv):
    c = RawIrc(srv.port)
    c.send("CAP LS 302")
    lines = c.expect("CAP")
    assert lines[-1].params == ("*", "LS", "batch draft/chathistory echo-message message-tags "
                                "multi-prefix sasl=PLAIN server-time userhost-in-names")
    c.send("NICK carl", "USER c 0 * :Carl", "CAP END")
    assert c.expect("001")[-1].params == ("carl",
                                          "Welcome to the irc.test IRC Network carl!~c@irc.test")


def test_shared_port_detects_nick_first_with_the_library(srv):
    a = LibIrc(srv.port, "libby").welcome()
    bob = srv.connect("bob")
    a.conn.join("#lobby")
    a.wait("join")
    bob.expect("* libby joined")


def test_irc_port_and_registration_burst(srv):
    c = RawIrc(irc_port(srv))
    burst = c.register("dana")
    codes = [m.command for m in burst]
    assert codes[:5] == ["001", "002", "003", "004", "005"]
    assert ["251", "252", "254", "255", "265", "266", "422"] == codes[-7:]
    tokens = [t for m in burst if m.command == "005" for t in m.params[1:-1]]
    for token in ("NICKLEN=32", "CHANTYPES=#", "CASEMAPPING=rfc8265",
                  "CHANMODES=beI,k,l,imnpst", "PREFIX=(ov)@+", "EXCEPTS=e", "INVEX=I",
                  "MODES=4", "ELIST=U", "WHOX", "UTF8ONLY", "MAXLIST=beI:50",
                  "NETWORK=irc.test", "CHANNELLEN=33", "TOPICLEN=390", "AWAYLEN=200",
                  "KICKLEN=255", "LINELEN=512"):
        assert token in tokens
    assert burst[3].params == ("dana", "irc.test", "geventchat-0.1.0", "io", "beIiklmnopstv",
                               "beIklov")


def test_motd_file(make_srv, tmp_path):
    motd = tmp_path / "motd.txt"
    motd.write_text("Welcome, friends.\nBe kind.\n", "utf-8")
    srv = make_srv(*IRC_FLAGS, "--motd", str(motd))
    c = RawIrc(irc_port(srv))
    burst = c.register("erin")
    assert [(m.command, m.params[-1]) for m in burst[-4:]] == [
        ("375", "- irc.test Message of the day - "), ("372", "- Welcome, friends."),
        ("372", "- Be kind."), ("376", "End of /MOTD command.")]


def test_server_password(make_srv, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("letmein\n", "utf-8")
    srv = make_srv(*IRC_FLAGS, "--password-file", str(pw))
    wrong = RawIrc(irc_port(srv))
    wrong.send("PASS nope", "NICK w", "USER w 0 * :W")
    lines = wrong.closed()
    assert [(m.command, m.params) for m in lines] == [
        ("464", ("*", "Password incorrect")), ("ERROR", ("Closing link: (Bad password)",))]
    missing = RawIrc(srv.port)  # shared port: the native prompt comes first
    missing.send("NICK m", "USER m 0 * :M")
    assert missing.expect("464")[-1].params == ("*", "Password incorrect")
    assert LibIrc(irc_port(srv), "goodpw", password="letmein").wait("welcome")
    assert "letmein" not in "".join(srv.log)


def test_nick_rules_invalid_taken_and_reserved(admin_srv):
    bob = admin_srv.connect("Bob")  # noqa: F841 (kept: a dropped client frees the name)
    c = RawIrc(irc_port(admin_srv))
    c.send("NICK bad*nick")
    assert c.expect("432")[-1].params == ("*", "bad*nick", "Erroneous nickname")
    c.send("NICK BOB")
    assert c.expect("433")[-1].params == ("*", "BOB", "Nickname is already in use")
    c.send("NICK Root")
    assert c.expect("432")[-1].params == ("*", "Root",
                                          "Reserved for an admin account; use OPER")
    c.send("NICK " + "x" * 33)
    assert c.expect("432")[-1].command == "432"
    c.send("NICK")
    assert c.expect("431")[-1].params == ("*", "No nickname given")
    c.send("NICK zoë", "USER z 0 * :Z")
    assert c.expect("001")[-1].params[0] == "zoë"


def test_errors_before_and_after_registration(srv):
    c = RawIrc(irc_port(srv))
    c.send("JOIN #lobby")
    assert c.expect("451")[-1].params == ("*", "You have not registered")
    c.register("fay")
    c.send("FROB x", "JOIN", "PRIVMSG", "PRIVMSG #lobby", "PRIVMSG #lobby :",
           "PRIVMSG nobody :hi", "PRIVMSG #nowhere :hi", "PRIVMSG #lobby :not a member",
           "KILL fay", "DIE", "CLEAR #lobby", "USER a b c d", "PART #lobby",
           "TOPIC #nowhere")
    want = [("421", ("fay", "FROB", "Unknown command")),
            ("461", ("fay", "JOIN", "Not enough parameters")),
            ("411", ("fay", "No recipient given (PRIVMSG)")),
            ("412", ("fay", "No text to send")),
            ("412", ("fay", "No text to send")),
            ("401", ("fay", "nobody", "No such nick/channel")),
            ("403", ("fay", "#nowhere", "No such channel")),
            ("404", ("fay", "#lobby", "Cannot send to channel")),
            ("481", ("fay", "Permission Denied- You're not an IRC operator")),
            ("481", ("fay", "Permission Denied- You're not an IRC operator")),
            ("481", ("fay", "Permission Denied- You're not an IRC operator")),
            ("462", ("fay", "You may not reregister")),
            ("442", ("fay", "#lobby", "You're not on that channel")),
            ("403", ("fay", "#nowhere", "No such channel"))]
    assert [(m.command, m.params) for m in c.roundtrip()] == want


def test_notice_is_never_answered(srv):
    c = raw(srv, "gus")
    c.send("NOTICE nobody :hi", "NOTICE #nowhere :x", "NOTICE", "NOTICE \x01VERSION\x01")
    assert c.roundtrip() == []


def test_input_too_long_and_connection_survives(srv):
    c = raw(srv, "hal")
    c.send("PRIVMSG #lobby :" + "x" * 600)
    assert c.expect("417")[-1].params == ("hal", "Input line was too long")
    c.send("NICK " + "y" * 5000)  # past the native decoder's limit too
    assert c.expect("417")[-1].command == "417"
    assert c.roundtrip() == []


def test_cap_negotiation(srv):
    c = RawIrc(irc_port(srv))
    c.send("CAP LS 302", "NICK ivy", "USER i 0 * :I", "CAP REQ :server-time bogus")
    c.expect("CAP")
    assert c.expect("CAP")[-1].params == ("*", "NAK", "server-time bogus")
    c.send("CAP REQ :server-time echo-message message-tags", "CAP LIST")
    assert c.expect("CAP")[-1].params == ("*", "ACK", "server-time echo-message message-tags")
    assert c.expect("CAP")[-1].params == ("*", "LIST",
                                          "echo-message message-tags server-time")
    assert c.roundtrip() == []  # registration waits for CAP END
    c.send("CAP END")
    c.expect("001")
    c.send("CAP REQ :-server-time", "CAP FOO")
    assert c.expect("CAP")[-1].params == ("ivy", "NAK", "-server-time")
    assert c.expect("410")[-1].params == ("ivy", "FOO", "Invalid CAP command")


def test_server_time_and_echo_message(srv):
    c = raw(srv, "jay", "server-time", "echo-message")
    join(c, "#lobby")
    c.send("PRIVMSG #lobby :echoed")
    msg = c.expect("PRIVMSG")[-1]
    assert msg.params == ("#lobby", "echoed") and msg.source.startswith("jay!")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", msg.tags["time"])
    plain = raw(srv, "kim")
    join(plain, "#lobby")
    plain.send("PRIVMSG #lobby :not echoed")
    assert c.expect("PRIVMSG")[-1].params == ("#lobby", "not echoed")
    assert "not echoed" not in [m.params[-1] for m in plain.roundtrip()]


# --- each direction --------------------------------------------------------------------------


def test_channel_messages_both_ways(srv):
    bob = srv.connect("bob")
    a = lib(srv, "alice")
    a.conn.join("#lobby")
    a.wait("join")
    bob.expect("* alice joined")
    a.conn.privmsg("#lobby", "hello from irc")
    bob.expect("alice: hello from irc")
    bob.send("hello from native")
    e = a.wait("pubmsg")
    assert (str(e.source), e.target, e.arguments) == ("bob!bob@irc.test", "#lobby",
                                                      ["hello from native"])


def test_private_messages_both_ways(srv):
    bob, carol = srv.connect("bob"), srv.connect("carol")
    a = lib(srv, "alice")
    a.conn.privmsg("BOB", "secret one")
    bob.expect("(private) alice -> bob: secret one")
    bob.send("/msg alice secret two")
    e = a.wait("privmsg")
    assert (e.source.nick, e.target, e.arguments) == ("bob", "alice", ["secret two"])
    carol.send("public")
    assert not any("secret" in x for x in carol.expect("carol: public"))


def test_me_both_ways(srv):
    bob = srv.connect("bob")
    a = lib(srv, "alice")
    a.conn.join("#lobby")
    a.wait("join")
    a.conn.action("#lobby", "waves")
    bob.expect("* alice waves")
    bob.send("/me bows")
    e = a.wait("action")
    assert (e.source.nick, e.target, e.arguments) == ("bob", "#lobby", ["bows"])
    a.conn.action("bob", "pokes")
    bob.expect("(private) alice -> bob: * alice pokes")


def test_join_part_quit_both_ways(srv):
    bob = srv.connect("bob")
    a = lib(srv, "alice")
    a.conn.join("#lobby")
    a.wait("join")
    bob.expect("* alice joined")
    a.conn.part("#lobby", "brb")
    bob.expect("* alice left (brb)")
    assert a.wait("part").target == "#lobby"  # the leaver's own PART
    a.conn.join("#lobby")
    bob.expect("* alice joined")
    carol = srv.connect("carol")
    e = a.wait("join", lambda e: e.source.nick == "carol")
    assert e.target == "#lobby"
    carol.send("/quit bye all")
    e = a.wait("quit")
    assert (e.source.nick, e.arguments) == ("carol", ["bye all"])
    dave = srv.connect("dave")
    a.wait("join", lambda e: e.source.nick == "dave")
    dave.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    dave.close()
    assert a.wait("quit", lambda e: e.source.nick == "dave").arguments == ["Client Quit"]
    a.conn.quit("see you")
    bob.expect("* alice left (see you)")


def test_quit_is_answered_with_error(srv):
    c = raw(srv, "lou")
    c.send("QUIT :done here")
    assert [(m.command, m.params) for m in c.closed()] == [
        ("ERROR", ("Closing link: (Quit: done here)",))]


def test_nick_changes_both_ways(srv):
    bob = srv.connect("bob")
    a = lib(srv, "alice")
    a.conn.join("#lobby")
    a.wait("join")
    a.conn.nick("Alicia")
    e = a.wait("nick")
    assert (e.source.nick, e.target) == ("alice", "Alicia")
    bob.expect("* alice is now known as Alicia")
    a.conn.privmsg("#lobby", "renamed")
    bob.expect("Alicia: renamed")
    bob.send("/nick Robert")
    e = a.wait("nick", lambda e: e.source.nick == "bob")
    assert (str(e.source), e.target) == ("bob!bob@irc.test", "Robert")
    a.conn.nick("robert")
    assert a.wait("nicknameinuse").arguments == ["robert", "Nickname is already in use"]
    c = raw(srv, "mia", "echo-message")
    join(c, "#lobby")
    c.send("NICK Mia2", "PRIVMSG #lobby :after")
    assert c.expect("NICK")[-1].source == "mia!~u@irc.test"
    assert c.expect("PRIVMSG")[-1].source == "Mia2!~u@irc.test"  # the mask moved along


def test_topic_both_ways_and_operators(srv):
    bob = srv.connect("bob")
    a = raw(srv, "alice")
    join(a, "#dev")  # a new room: alice runs it
    bob.send("/join dev")
    a.expect(lambda m: m.command == "JOIN" and m.source.startswith("bob!"))
    a.send("TOPIC #dev :release friday")
    bob.expect("* alice set the topic of dev: release friday")
    assert a.expect("TOPIC")[-1].params == ("#dev", "release friday")
    bob.send("/topic nope")
    assert bob.expect(re.compile("^!"))[-1].startswith("! permission denied")
    c = raw(srv, "cleo")
    join(c, "#dev")
    c.send("TOPIC #dev :mine now", "TOPIC #dev")
    assert c.expect("482")[-1].params == ("cleo", "#dev", "You're not channel operator")
    assert c.expect("332")[-1].params == ("cleo", "#dev", "release friday")
    a.send("MODE #dev -t")
    assert a.expect("MODE")[-1].params == ("#dev", "-t")
    bob.expect("* alice set mode -t on dev")
    bob.send("/topic native topic")
    m = c.expect("TOPIC")[-1]
    assert (m.source, m.params) == ("bob!bob@irc.test", ("#dev", "native topic"))


def test_kick_both_ways(srv):
    bob = srv.connect("bob")
    a = raw(srv, "alice")
    join(a, "#dev")
    bob.send("/join dev")
    a.expect(lambda m: m.command == "JOIN" and m.source.startswith("bob!"))
    a.send("KICK #dev bob :off-topic")
    bob.expect("* bob was kicked from dev by alice: off-topic")
    bob.expect("* bob joined")  # back in the lobby, still connected
    m = a.expect("KICK")[-1]
    assert (m.source, m.params) == ("alice!~u@irc.test", ("#dev", "bob", "off-topic"))
    c = raw(srv, "cleo")
    join(c, "#dev")
    c.send("KICK #dev alice")
    assert c.expect("482")[-1].params == ("cleo", "#dev", "You're not channel operator")
    a.send("KICK #dev nobody", "KICK #dev bob")
    assert a.expect("401")[-1].params[1] == "nobody"
    assert a.expect("441")[-1].params == ("alice", "bob", "#dev", "They aren't on that channel")
    a.send("MODE #dev +o cleo")
    assert c.expect("MODE")[-1].params == ("#dev", "+o", "cleo")
    c.send("NAMES #dev")
    assert c.expect("353")[-1].params[-1] == "@alice @cleo"
    c.expect("366")
    # A native room operator kicks an IRC user out of the native's room.
    bob.send("/join ops")
    bob.expect("* bob joined")
    join(c, "#ops")
    bob.send("/kick cleo spam")
    m = c.expect("KICK")[-1]
    assert (m.source, m.params) == ("bob!bob@irc.test", ("#ops", "cleo", "spam"))


def test_rooms_from_both_sides(srv):
    bob = srv.connect("bob")
    a = raw(srv, "alice")
    join(a, "#lobby")
    bob.send("/join dev")
    m = a.expect("PART")[-1]
    assert (m.source, m.params) == ("bob!bob@irc.test", ("#lobby", "to dev"))
    join(a, "#dev")
    bob.expect("* alice joined")
    a.send("JOIN #Ops,#x1")  # IRC creates rooms natives can join
    a.expect(lambda m: m.command == "366" and m.params[1] == "#x1")
    bob.send("/rooms")
    assert bob.expect(re.compile(r"^\* rooms"))[-1] == \
        "* rooms (4): lobby (1), dev (2), Ops (1), x1 (1)"
    a.send("LIST")
    lines = a.expect("323")
    assert [(m.params[1], m.params[2]) for m in lines if m.command == "322"] == [
        ("#lobby", "1"), ("#dev", "2"), ("#Ops", "1"), ("#x1", "1")]
    a.send("JOIN 0")
    lines = a.expect(lambda m: m.command == "PART" and m.params[0] == "#x1")
    assert [m.params[0] for m in lines if m.command == "PART"] == ["#lobby", "#dev", "#Ops",
                                                                  "#x1"]
    bob.expect("* alice left")


def test_history_replay_on_join(srv):
    bob = srv.connect("bob")
    bob.send("first line")
    bob.send("/me second")
    bob.expect("* bob second")
    c = raw(srv, "nia", "server-time", "batch")
    lines = join(c, "#lobby")
    assert [m.command for m in lines] == ["JOIN", "353", "366"]
    replay = c.expect(lambda m: m.command == "BATCH" and m.params[0].startswith("-"))
    ref = replay[0].params[0][1:]
    assert replay[0].params == (f"+{ref}", "chathistory", "#lobby")
    assert [(m.source, m.params, m.tags["batch"]) for m in replay[1:-1]] == [
        ("bob!bob@irc.test", ("#lobby", "first line"), ref),
        ("bob!bob@irc.test", ("#lobby", "\x01ACTION second\x01"), ref)]
    assert all("time" in m.tags for m in replay[1:-1])
    a = lib(srv, "alice")
    a.conn.join("#lobby")
    e = a.wait("pubmsg")
    assert (e.source.nick, e.arguments) == ("bob", ["first line"])


def test_long_native_lines_are_split_for_irc(srv):
    bob = srv.connect("bob")
    c = raw(srv, "otto")
    join(c, "#lobby")
    text = " ".join(f"word{i}" for i in range(450))  # ~3.4 KB: a native line, 7+ IRC ones
    bob.send(text)
    got: list[str] = []
    while " ".join(got) != text:
        got.append(c.expect("PRIVMSG")[-1].params[1])  # raw() checks each fits 512 bytes
    assert len(got) > 7


def test_control_characters_are_cleaned_both_ways(srv):
    bob = srv.connect("bob")
    c = raw(srv, "pia")
    join(c, "#lobby")
    c.send("PRIVMSG #lobby :\x02bold\x02 \x0304red\x03 \x1b[2J\u202e!")
    bob.expect("pia: bold red [2J!")  # formatting stripped for natives, digits too
    bob.send("/me ok")
    assert c.expect("PRIVMSG")[-1].params[1] == "\x01ACTION ok\x01"


def test_query_commands(srv):
    bob = srv.connect("bob")  # noqa: F841 (kept open)
    c = raw(srv, "quinn")
    join(c, "#lobby")
    c.send("AWAY :lunch", "WHOIS quinn", "WHOIS bob", "WHOIS ghost", "WHO #lobby",
           "ISON bob ghost QUINN", "USERHOST bob quinn", "AWAY", "MODE quinn", "MODE quinn +i",
           "MODE quinn +x", "MODE bob", "MODE #lobby", "MODE #lobby b", "MODE #lobby +t",
           "JOIN #q", "MODE #q +z-t", "MODE #q",
           "NAMES #lobby,#nowhere", "TIME", "VERSION", "HELP JOIN", "HELP NOPE", "INFO")
    lines = c.expect("374")
    got = [(m.command, m.params[1:]) for m in lines]
    assert ("306", ("You have been marked as being away",)) in got
    assert ("311", ("quinn", "~u", "irc.test", "*", "Real Name")) in got
    assert ("301", ("quinn", "lunch")) in got
    assert ("319", ("bob", "#lobby")) in got
    assert ("401", ("ghost", "No such nick/channel")) in got
    assert ("318", ("ghost", "End of /WHOIS list")) in got
    assert ("352", ("#lobby", "~u", "irc.test", "irc.test", "quinn", "G", "0 Real Name")) in got
    assert ("352", ("#lobby", "bob", "irc.test", "irc.test", "bob", "H", "0 bob")) in got
    assert ("303", ("bob quinn",)) in got
    assert ("302", ("bob=+bob@irc.test quinn=-~u@irc.test",)) in got
    assert ("305", ("You are no longer marked as being away",)) in got
    assert ("221", ("+",)) in got
    assert ("501", ("Unknown MODE flag",)) in got
    assert ("502", ("Can't change mode for other users",)) in got
    assert ("324", ("#lobby", "+nt")) in got
    assert ("368", ("#lobby", "End of channel ban list")) in got
    assert ("482", ("#lobby", "You're not channel operator")) in got
    assert ("472", ("z", "is unknown mode char to me")) in got
    assert ("324", ("#q", "+n")) in got
    assert any(m.command == "MODE" and m.params == ("#q", "-t") for m in lines)
    assert ("366", ("#nowhere", "End of /NAMES list")) in got
    assert ("351", ("geventchat-0.1.0.", "irc.test", "geventchat IRC")) in got
    assert ("704", ("JOIN", "JOIN <#chan>[,...] [<key>[,...]] | 0")) in got
    assert ("524", ("NOPE", "No help available on this topic")) in got
    for code in ("391", "371", "315", "329", "005"):
        assert code in [m.command for m in lines]
    assert any(m.command == "MODE" and m.params == ("quinn", "+i") for m in lines)


def test_ping_pong(srv):
    c = raw(srv, "rex")
    c.send("PING :token 123")
    assert c.expect("PONG")[-1].params == ("irc.test", "token 123")
    c.send("PING")
    assert c.expect("409")[-1].params == ("rex", "No origin specified")
    a = lib(srv, "alice")
    a.conn.ping("lagcheck")
    assert a.wait("pong").arguments == ["lagcheck"]


def test_flood_is_slowed_silently_then_dropped(make_srv):
    """Fakelag: no NOTICE in the middle of the client's replies (IRC clients take it for
    protocol noise); a sustained flood still ends with ERROR."""
    srv = make_srv("--irc-port", "0", "--server-name", "irc.test",
                   "--rate-limit", "100", "--rate-burst", "5")
    c = raw(srv, "sam")
    c.send(*["PING :f"] * 80)
    lines = c.closed()
    assert [m for m in lines if m.command == "NOTICE"] == []
    assert [m.command for m in lines[:-1]] == ["PONG"] * (len(lines) - 1)
    assert (lines[-1].command, lines[-1].params) == ("ERROR", ("Closing link: (Excess Flood)",))


# --- admins ----------------------------------------------------------------------------------


def test_oper_and_kill(admin_srv):
    alice = admin_srv.connect("alice")
    c = raw(admin_srv, "boss")
    join(c, "#lobby")
    c.send("OPER root wrong-pw")
    assert c.expect("464")[-1].params == ("boss", "Password incorrect")
    c.send("OPER root s3cret-pw")
    assert c.expect("381")[-1].params == ("boss", "You are now an IRC operator")
    m = c.expect("MODE")[-1]
    assert (m.source, m.params) == ("irc.test", ("boss", "+o"))
    assert c.expect("MODE")[-1].params == ("#lobby", "+o", "boss")
    c.send("WHOIS boss")
    assert c.expect("313")[-1].params == ("boss", "boss", "is an IRC operator")
    c.send("NICK root")  # the account's own name is allowed once OPERed as it
    assert c.expect("NICK")[-1].params == ("root",)
    c.send("KILL alice :flooding")
    assert alice.closed()[-1] == "* alice was kicked by root: flooding"
    victim = raw(admin_srv, "vic")
    join(victim, "#lobby")
    c.send("KILL vic :bye")
    lines = victim.closed()
    assert [(m.command, m.params) for m in lines[-2:]] == [
        ("KILL", ("vic", "bye")), ("ERROR", ("Closing link: (Killed (root: bye))",))]
    m = c.expect(lambda m: m.command == "QUIT" and m.source.startswith("vic!"))[-1]
    assert (m.source, m.params) == ("vic!~u@irc.test", ("Killed (root: bye)",))
    assert "wrong-pw" not in "".join(admin_srv.log)
    assert "s3cret-pw" not in "".join(admin_srv.log)


def test_native_admin_kicks_an_irc_user(admin_srv):
    root = admin_srv.connect("root", "s3cret-pw")
    vic = raw(admin_srv, "vic")
    watcher = raw(admin_srv, "watcher")
    join(vic, "#lobby")
    join(watcher, "#lobby")
    root.send("/kick vic spamming")
    assert [(m.command, m.params) for m in vic.closed()[-2:]] == [
        ("KILL", ("vic", "spamming")), ("ERROR", ("Closing link: (Killed (root: spamming))",))]
    m = watcher.expect("QUIT")[-1]
    assert (m.source, m.params) == ("vic!~u@irc.test", ("Killed (root: spamming)",))
    root.expect("* vic was kicked by root: spamming")


def test_oper_failures_are_rate_limited_per_ip(admin_srv):
    c = raw(admin_srv, "eve")
    for i in range(10):
        c.send(f"OPER root guess{i}")
        assert c.expect("464")[-1].params == ("eve", "Password incorrect")
    c.send("OPER root s3cret-pw")
    assert c.expect("464")[-1].params == ("eve", "Too many failed attempts; try again later")
    native = LineClient(admin_srv.port)
    assert native.line() == "? name:"
    native.send("root")
    native.send("s3cret-pw")  # the same per-IP limit guards the native login
    assert native.expect(re.compile("^!"))[-1].startswith("! too many failed logins")


def test_clear(admin_srv):
    bob = admin_srv.connect("bob")
    bob.send("old line")
    bob.expect("bob: old line")
    c = raw(admin_srv, "boss")
    c.send("CLEAR #lobby")
    assert c.expect("481")[-1].command == "481"
    c.send("OPER root s3cret-pw", "CLEAR #lobby")
    bob.expect("* history cleared by boss")
    assert c.expect("NOTICE")[-1].params == ("boss", "*** History of #lobby cleared")
    assert LineClient(admin_srv.port).login("carol") == ["* history cleared by boss"]


def test_die(admin_srv):
    bob = admin_srv.connect("bob")
    c = raw(admin_srv, "boss")
    other = raw(admin_srv, "other")
    c.send("DIE")
    assert c.expect("481")[-1].command == "481"
    c.send("OPER root s3cret-pw", "DIE :maintenance")
    assert bob.closed()[-1] == "* server shutting down: maintenance"
    lines = other.closed()
    assert [(m.command, m.params) for m in lines[-2:]] == [
        ("NOTICE", ("other", "server shutting down: maintenance")),
        ("ERROR", ("Closing link: (server shutting down: maintenance)",))]
    assert admin_srv.proc.wait(TIMEOUT) == 0


# --- timeouts, in-process with an injected clock ---------------------------------------------


@pytest.fixture
def inproc(tmp_path):
    """An IrcConnection on one end of a socketpair, in this process, with a real hub."""
    import gevent
    from gevent import socket as gsocket

    from geventchat.edges.irc import IrcConnection
    from geventchat.server import ChatServer, Settings, build_hub

    settings = Settings(port=0, history=tmp_path / "h.txt", admins=None, server_name="irc.test",
                        register_timeout=30.0, rate_limit=0)
    server = ChatServer(settings, build_hub(settings))
    ours, theirs = gsocket.socketpair()
    conn = IrcConnection(server, ours, ("127.0.0.1", 4242))

    def handle() -> None:  # what StreamServer does: the socket closes when handle returns
        try:
            conn.run()
        finally:
            ours.close()

    runner = gevent.spawn(handle)
    gevent.sleep(0)  # the reader is running before the test acts

    def read_until(pred: Callable[[IrcLine], bool]) -> list[IrcLine]:
        seen: list[IrcLine] = []
        buf = b""
        with gevent.Timeout(TIMEOUT):
            while True:
                while b"\r\n" not in buf:
                    chunk = theirs.recv(65536)
                    if not chunk:
                        return seen
                    buf += chunk
                line, buf = buf.split(b"\r\n", 1)
                seen.append(parse_line(line.decode()))
                if pred(seen[-1]):
                    return seen

    yield conn, theirs, read_until
    runner.kill()
    server.hub.close_storage(timeout=5.0)
    ours.close()
    theirs.close()


def test_keepalive_ping_then_ping_timeout(inproc):
    import gevent

    conn, peer, read_until = inproc
    peer.sendall(b"NICK tim\r\nUSER t 0 * :T\r\n")
    read_until(lambda m: m.command == "422")
    now = time.monotonic()
    conn.expire(now + 30)
    conn.expire(now + 91)
    assert read_until(lambda m: m.command == "PING")[-1].params == ("irc.test",)
    peer.sendall(b"PONG :irc.test\r\n")  # any line proves the peer alive
    with gevent.Timeout(TIMEOUT):
        while conn._ping_sent is not None:
            gevent.sleep(0.01)
    conn.expire(now + 182)
    assert read_until(lambda m: m.command == "PING")[-1].params == ("irc.test",)
    conn.expire(now + 300)
    lines = read_until(lambda m: False)  # to EOF
    assert [(m.command, m.params) for m in lines] == [("ERROR",
                                                      ("Closing link: (Ping timeout)",))]
    assert conn.server.hub.find("tim") is None


def test_registration_timeout(inproc):
    conn, peer, read_until = inproc
    peer.sendall(b"NICK slow\r\nPING :x\r\n")
    read_until(lambda m: m.command == "PONG")  # all read: no RST from unread input
    conn.expire(time.monotonic() + 10)
    conn.expire(time.monotonic() + 31)
    lines = read_until(lambda m: False)
    assert [(m.command, m.params) for m in lines] == [
        ("ERROR", ("Closing link: (Registration timeout)",))]
