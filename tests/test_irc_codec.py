"""Sans-IO tests of the IRC codec and renderer: no sockets, no server.

Parser cases are lines from RFC 1459/2812, the IRCv3 message-tags and server-time specs and
the irc-parser-tests suite (ircdocs); every decoder case runs whole, one byte at a time and
in 3-byte chunks (h11's tests/test_io.py habit).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from geventchat.core import events as ev
from geventchat.core.hub import Room, Session
from geventchat.wire.irc import (
    MAX_BODY,
    Hostmasks,
    InvalidUtf8,
    IrcDecoder,
    IrcLine,
    IrcRenderer,
    body_too_long,
    format_line,
    parse_ctcp,
    parse_line,
    parse_msgid,
    split_text,
    unescape_tag,
    word,
)
from geventchat.wire.native import TOO_LONG, LineDecoder

T0 = datetime(2011, 10, 19, 16, 40, 51, 620000, tzinfo=UTC)

# --- parsing ---------------------------------------------------------------------------------

# (line, command, params, source) -- RFC 2812 examples and irc-parser-tests msg-split.yaml
PARSE_CASES = [
    (":WiZ!jto@tolsun.oulu.fi NICK Kilroy", "NICK", ["Kilroy"], "WiZ!jto@tolsun.oulu.fi"),
    ("USER guest 0 * :Ronnie Reagan", "USER", ["guest", "0", "*", "Ronnie Reagan"], None),
    (":WiZ!jto@tolsun.oulu.fi JOIN #Twilight_zone", "JOIN", ["#Twilight_zone"],
     "WiZ!jto@tolsun.oulu.fi"),
    (":WiZ!jto@tolsun.oulu.fi PART #playzone :I lost", "PART", ["#playzone", "I lost"],
     "WiZ!jto@tolsun.oulu.fi"),
    (":Angel!wings@irc.org PRIVMSG Wiz :Are you receiving this message ?", "PRIVMSG",
     ["Wiz", "Are you receiving this message ?"], "Angel!wings@irc.org"),
    (":syrk!kalt@millennium.stealth.net QUIT :Gone to have lunch", "QUIT",
     ["Gone to have lunch"], "syrk!kalt@millennium.stealth.net"),
    ("KICK &Melbourne Matthew", "KICK", ["&Melbourne", "Matthew"], None),
    ("PING tolsun.oulu.fi", "PING", ["tolsun.oulu.fi"], None),
    ("PONG csd.bu.edu tolsun.oulu.fi", "PONG", ["csd.bu.edu", "tolsun.oulu.fi"], None),
    ("foo bar baz asdf", "FOO", ["bar", "baz", "asdf"], None),
    (":coolguy foo bar baz asdf", "FOO", ["bar", "baz", "asdf"], "coolguy"),
    ("foo bar baz :asdf quux", "FOO", ["bar", "baz", "asdf quux"], None),
    ("foo bar baz :", "FOO", ["bar", "baz", ""], None),
    ("foo bar baz ::asdf", "FOO", ["bar", "baz", ":asdf"], None),
    (":coolguy foo bar baz :  asdf quux ", "FOO", ["bar", "baz", "  asdf quux "], "coolguy"),
    (":coolguy PRIVMSG bar :lol :) ", "PRIVMSG", ["bar", "lol :) "], "coolguy"),
    (":coolguy foo bar baz :  ", "FOO", ["bar", "baz", "  "], "coolguy"),
    (":src JOIN #chan", "JOIN", ["#chan"], "src"),
    (":src JOIN :#chan", "JOIN", ["#chan"], "src"),
    (":src AWAY", "AWAY", [], "src"),
    (":src AWAY ", "AWAY", [], "src"),
    (":cool\tguy foo bar baz", "FOO", ["bar", "baz"], "cool\tguy"),
    (":gravel.mozilla.org 432  #momo :Erroneous Nickname: Illegal characters", "432",
     ["#momo", "Erroneous Nickname: Illegal characters"], "gravel.mozilla.org"),
    (":gravel.mozilla.org MODE #tckk +n ", "MODE", ["#tckk", "+n"], "gravel.mozilla.org"),
    (":services.esper.net MODE #foo-bar +o foobar  ", "MODE", ["#foo-bar", "+o", "foobar"],
     "services.esper.net"),
    ("cap ls 302", "CAP", ["ls", "302"], None),
]


@pytest.mark.parametrize(("line", "command", "params", "source"), PARSE_CASES)
def test_parse_rfc_lines(line, command, params, source):
    msg = parse_line(line)
    assert msg is not None
    assert (msg.command, list(msg.params), msg.source) == (command, params, source)


# (raw tag section, expected tags) -- IRCv3 message-tags and irc-parser-tests
TAG_CASES = [
    ("@aaa=bbb;ccc;example.com/ddd=eee", {"aaa": "bbb", "ccc": "", "example.com/ddd": "eee"}),
    ("@time=2011-10-19T16:40:51.620Z", {"time": "2011-10-19T16:40:51.620Z"}),
    (r"@+example=raw+:=,escaped\:\s\\", {"+example": "raw+:=,escaped; \\"}),
    (r"@a=b\\and\nk;c=72\s45;d=gh\:764", {"a": "b\\and\nk", "c": "72 45", "d": "gh;764"}),
    ("@c;h=;a=b", {"c": "", "h": "", "a": "b"}),
    (r"@tag1=value\ntest", {"tag1": "value\ntest"}),
    ("@tag1=value\\", {"tag1": "value"}),
    (r"@tag1=value\1", {"tag1": "value1"}),
    ("@tag1=1;tag2=3;tag3=4;tag1=5", {"tag1": "5", "tag2": "3", "tag3": "4"}),
]


@pytest.mark.parametrize(("raw", "tags"), TAG_CASES)
def test_parse_tags(raw, tags):
    msg = parse_line(f"{raw} :nick!ident@host.com PRIVMSG me :Hello")
    assert msg.tags == tags
    assert (msg.command, msg.params, msg.source) == ("PRIVMSG", ("me", "Hello"),
                                                     "nick!ident@host.com")


def test_parse_tags_without_source():
    msg = parse_line("@tag1=value1;tag2;vendor1/tag3=value2;vendor2/tag4 COMMAND param1 "
                     "param2 :param3 param3")
    assert msg.tags == {"tag1": "value1", "tag2": "", "vendor1/tag3": "value2",
                        "vendor2/tag4": ""}
    assert msg.params == ("param1", "param2", "param3 param3")


@pytest.mark.parametrize("line", ["", "   ", ":only.a.source", "@a=b", "@a=b :src"])
def test_lines_without_command_are_ignored(line):
    assert parse_line(line) is None


def test_unescape_roundtrip():
    for value in ["plain", "semi;colon", "sp ace", "back\\slash", "cr\rlf\n", ""]:
        line = format_line("TAGMSG", "#c", tags={"k": value})
        assert parse_line(line).tags == ({"k": value} if value else {"k": ""})
    assert unescape_tag(r"\q") == "q"


# --- formatting ------------------------------------------------------------------------------

# Rendered lines read back exactly as the RFC examples they come from.
def test_format_rfc_lines():
    assert format_line("NICK", "Kilroy", source="WiZ!jto@tolsun.oulu.fi") == \
        ":WiZ!jto@tolsun.oulu.fi NICK Kilroy"
    assert format_line("PART", "#playzone", trailing="I lost",
                       source="WiZ!jto@tolsun.oulu.fi") == \
        ":WiZ!jto@tolsun.oulu.fi PART #playzone :I lost"
    assert format_line("PRIVMSG", "Wiz", trailing="Are you receiving this message ?",
                       source="Angel!wings@irc.org") == \
        ":Angel!wings@irc.org PRIVMSG Wiz :Are you receiving this message ?"
    assert format_line("PRIVMSG", "Wiz", trailing="Hello", source="Angel!angel@example.org",
                       tags={"time": "2011-10-19T16:40:51.620Z"}) == \
        "@time=2011-10-19T16:40:51.620Z :Angel!angel@example.org PRIVMSG Wiz :Hello"


def test_format_never_lets_text_end_the_line():
    line = format_line("PRIVMSG", "#c", trailing="a\r\nQUIT :pwned\0")
    assert "\r" not in line and "\n" not in line and "\0" not in line
    assert parse_line(line).params == ("#c", "a  QUIT :pwned ")


@pytest.mark.parametrize("bad", ["", "two words", ":colon", "a\r\nb"])
def test_format_refuses_bad_middle_parameters(bad):
    with pytest.raises(ValueError):
        format_line("PRIVMSG", bad, trailing="x")


def test_format_cuts_trailing_to_512_bytes_at_a_character_boundary():
    line = format_line("TOPIC", "#c", trailing="é" * 600, source="n!u@h")
    assert len(line.encode()) + 2 == MAX_BODY - 1  # 511: a 2-byte char did not fit
    line.encode().decode()  # still valid UTF-8


def test_word_makes_peer_input_a_safe_middle():
    assert word("bad nick") == "bad_nick"
    assert word(":x\r\n") == "x"
    assert word("") == "*"
    format_line("432", "*", word(":\x00 ::"), trailing="Erroneous nickname")


def test_split_text_respects_bytes_words_and_characters():
    assert split_text("short", 100) == ["short"]
    assert split_text("", 100) == [""]
    words = " ".join(["word"] * 100)
    pieces = split_text(words, 50)
    assert all(len(p.encode()) <= 50 for p in pieces)
    assert " ".join(pieces) == words
    assert all(p.split() == ["word"] * len(p.split()) for p in pieces)  # words kept whole
    emoji = "😀" * 100
    pieces = split_text(emoji, 50)
    assert "".join(pieces) == emoji and all(len(p.encode()) <= 50 for p in pieces)


def test_ctcp():
    assert parse_ctcp("\x01ACTION waves\x01") == ("ACTION", "waves")
    assert parse_ctcp("\x01ACTION waves") == ("ACTION", "waves")  # cut by a client
    assert parse_ctcp("\x01VERSION\x01") == ("VERSION", "")
    assert parse_ctcp("plain") is None


# --- decoding bytes --------------------------------------------------------------------------


def feed_whole(data: bytes, decoder: IrcDecoder | None = None) -> list:
    d = decoder or IrcDecoder()
    return d.feed(data) + d.close()


def feed_bytewise(data: bytes, decoder: IrcDecoder | None = None) -> list:
    d = decoder or IrcDecoder()
    out: list = []
    for i in range(len(data)):
        out += d.feed(data[i:i + 1])
    return out + d.close()


def feed_chunks(data: bytes, decoder: IrcDecoder | None = None) -> list:
    d = decoder or IrcDecoder()
    out: list = []
    for i in range(0, len(data), 3):
        out += d.feed(data[i:i + 3])
    return out + d.close()


FEEDERS = [feed_whole, feed_bytewise, feed_chunks]


@pytest.mark.parametrize("feed", FEEDERS)
class TestDecoder:
    def test_rfc_registration(self, feed):
        data = b"CAP LS 302\r\nNICK alice\r\nUSER guest 0 * :Ronnie Reagan\r\nCAP END\r\n"
        msgs = feed(data)
        assert [m.command for m in msgs] == ["CAP", "NICK", "USER", "CAP"]
        assert msgs[2].params == ("guest", "0", "*", "Ronnie Reagan")

    def test_lf_only_empty_lines_and_trailing_garbage(self, feed):
        msgs = feed(b"\r\n\nPING x\n\r\nPRIVMSG #a :hi\r\nPART")
        assert [(m.command, m.params) for m in msgs] == [("PING", ("x",)),
                                                         ("PRIVMSG", ("#a", "hi")),
                                                         ("PART", ())]

    def test_utf8_split_across_reads_and_invalid_bytes(self, feed):
        msgs = feed("PRIVMSG #a :żółw \xff\r\n".encode() + b"PRIVMSG #a :\xff\xfe\r\n")
        assert msgs[0].params[1] == "żółw ÿ"
        assert msgs[1] == InvalidUtf8("PRIVMSG")  # UTF8ONLY: refused, never replaced

    def test_512_bytes_with_crlf_is_the_limit(self, feed):
        head = b"PRIVMSG #a :"
        ok = head + b"x" * (510 - len(head)) + b"\r\n"
        too_long = head + b"x" * (511 - len(head)) + b"\r\n"
        assert len(ok) == 512
        msgs = feed(ok + too_long + b"PING after\r\n")
        assert isinstance(msgs[0], IrcLine) and len(msgs[0].params[1]) == 510 - len(head)
        assert msgs[1] is TOO_LONG
        assert msgs[2].command == "PING"  # the connection goes on

    def test_tags_do_not_count_toward_512(self, feed):
        tags = b"@+draft/x=" + b"t" * 4000 + b" "
        body = b"PRIVMSG #a :" + b"y" * 480
        msgs = feed(tags + body + b"\r\n")
        assert msgs[0].tags["+draft/x"] == "t" * 4000
        assert msgs[0].params[1] == "y" * 480

    def test_tags_over_8191_bytes_are_too_long(self, feed):
        msgs = feed(b"@a=" + b"t" * 8200 + b" PING x\r\nPING y\r\n")
        assert msgs[0] is TOO_LONG and msgs[1].params == ("y",)

    def test_huge_line_is_reported_once_memory_bounded(self, feed):
        msgs = feed(b"PRIVMSG #a :" + b"z" * 20000 + b"\r\nPING z\r\n")
        assert msgs[0] is TOO_LONG and msgs[1].params == ("z",) and len(msgs) == 2


def test_decoder_continues_a_native_decoder_that_holds_half_a_line():
    native = LineDecoder(4096)
    assert native.feed(b"NICK alice\r\nUSER a 0 * :A") == ["NICK alice"]
    d = IrcDecoder(native)
    msgs = d.feed(b"lice\r\n")
    assert msgs[0].params == ("a", "0", "*", "Alice")


def test_invalid_bytes_count_as_one_byte_each():
    line = "PRIVMSG #a :" + "\ufffd" * 400
    assert not body_too_long(line)  # 412 bytes of input, though 1212 when re-encoded


# --- rendering -------------------------------------------------------------------------------


class _Out:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def lines(self) -> list[str]:
        text, self.data = self.data.decode(), b""
        return text.split("\r\n")[:-1]


class _History:
    def __init__(self, records: list | None = None) -> None:
        self.records = list(records or [])

    def recent(self) -> list:
        return list(self.records)

    def append(self, event) -> None:
        self.records.append(event)

    def clear(self, event) -> None:
        self.records = [event]

    def flush(self, timeout=None) -> bool:
        return True


def _room(name: str, history: _History) -> Room:
    """A real room over ``history``, through the in-process broker."""
    from geventchat.core.broker import LocalBroker, SimpleShelf

    room = Room(name, LocalBroker(SimpleShelf(lambda _name: history)))
    room.broker.open(room)
    return room

    def close(self) -> None:
        pass


def _room(name: str, history: _History) -> Room:
    """A real room over the in-process broker, with ``history`` as its store."""
    from geventchat.core.broker import LocalBroker, SimpleShelf

    broker = LocalBroker(SimpleShelf(lambda room: history))
    room = Room(name, broker)
    broker.open(room)
    return room


@pytest.fixture
def masks():
    m = Hostmasks("irc.test")
    m.add("alice", "~al", "irc.test")
    return m


def _renderer(masks, **caps) -> IrcRenderer:
    return IrcRenderer("irc.test", masks, **caps)


def _session(name: str, proto, admin: bool = False) -> Session:
    return Session(name, _Out(), proto, lambda reason: None, account=name if admin else None)


def test_prefixes_irc_users_native_users_and_renames(masks):
    r = _renderer(masks)
    assert r.lines(ev.Joined("alice", "dev")) == [":alice!~al@irc.test JOIN #dev"]
    assert r.lines(ev.Joined("bob", "dev")) == [":bob!bob@irc.test JOIN #dev"]
    assert r.lines(ev.Renamed("alice", "Alicia")) == [":alice!~al@irc.test NICK Alicia"]
    masks.rename("alice", "Alicia")
    assert r.lines(ev.Message("Alicia", "hi", "lobby")) == \
        [":Alicia!~al@irc.test PRIVMSG #lobby :hi"]
    token = masks.add("carol", "~c", "irc.test")
    masks.add("carol", "~c", "irc.test")  # carol registered again meanwhile
    masks.remove("carol", token)
    assert masks.prefix("carol") == "carol!~c@irc.test"


EVENT_CASES = [
    (ev.Message("bob", "hello", "lobby"), [":bob!bob@irc.test PRIVMSG #lobby :hello"]),
    (ev.Action("bob", "waves", "dev"), [":bob!bob@irc.test PRIVMSG #dev :\x01ACTION waves\x01"]),
    (ev.PrivateMessage("bob", "alice", "psst"), [":bob!bob@irc.test PRIVMSG alice :psst"]),
    (ev.Left("bob", "", "dev"), [":bob!bob@irc.test PART #dev"]),
    (ev.Left("bob", "to lobby", "dev"), [":bob!bob@irc.test PART #dev :to lobby"]),
    (ev.Quit("bob", "Gone to have lunch"), [":bob!bob@irc.test QUIT :Gone to have lunch"]),
    (ev.Quit("bob", ""), [":bob!bob@irc.test QUIT :Client Quit"]),
    (ev.Kicked("bob", "alice", "", "dev"), [":alice!~al@irc.test KICK #dev bob :alice"]),
    (ev.Kicked("bob", "alice", "spam", "dev"), [":alice!~al@irc.test KICK #dev bob :spam"]),
    (ev.Killed("bob", "root", "flood"), [":bob!bob@irc.test QUIT :Killed (root: flood)"]),
    (ev.Killed("bob", "root", ""), [":bob!bob@irc.test QUIT :Killed (root)"]),
    (ev.Topic("dev", "bob", "New topic"), [":bob!bob@irc.test TOPIC #dev :New topic"]),
    (ev.Topic("dev", "bob", ""), [":bob!bob@irc.test TOPIC #dev :"]),
    (ev.Cleared("root", "dev"), [":irc.test NOTICE #dev :history cleared by root"]),
    (ev.Notice("online (2): a, b"), [":irc.test NOTICE * :online (2): a, b"]),
    (ev.Error("no_such_user", "no such user: x"), [":irc.test NOTICE * :no such user: x"]),
    (ev.Shutdown("maintenance"), [":irc.test NOTICE * :server shutting down: maintenance",
                                  "ERROR :Closing link: (server shutting down: maintenance)"]),
    (ev.Prompt("name"), []),
]


@pytest.mark.parametrize(("event", "lines"), EVENT_CASES)
def test_render_each_event(masks, event, lines):
    r = _renderer(masks)
    assert r.lines(event) == lines
    assert r.render(event) == "".join(f"{x}\r\n" for x in lines).encode()


def test_server_time_tags(masks):
    r = _renderer(masks, server_time=True)
    assert r.lines(ev.Message("bob", "Hello", "lobby", T0)) == \
        ["@time=2011-10-19T16:40:51.620Z :bob!bob@irc.test PRIVMSG #lobby :Hello"]
    assert r.lines(ev.Error("x", "y")) == [":irc.test NOTICE * :y"]  # no time: no tag


def test_render_to_one_client(masks):
    r = _renderer(masks)
    assert r.render_to("alice", ev.Notice("hi")) == b":irc.test NOTICE alice :hi\r\n"
    assert r.render_to("alice", ev.Killed("alice", "root", "bye")) == (
        b":root!root@irc.test KILL alice :bye\r\n"
        b"ERROR :Closing link: (Killed (root: bye))\r\n")
    own = ev.PrivateMessage("alice", "bob", "x")
    assert r.render_to("alice", own) == b""  # no echo-message: no copy of one's own
    assert _renderer(masks, echo=True).render_to("alice", own) == \
        b":alice!~al@irc.test PRIVMSG bob :x\r\n"


def test_long_native_line_is_split_into_privmsgs_that_fit(masks):
    r = _renderer(masks, server_time=True)
    text = " ".join(f"w{i}" for i in range(1000))  # ~4.9 KB
    lines = r.lines(ev.Message("bob", text, "lobby"))
    assert len(lines) > 8
    bodies = [line.split(" ", 1)[1] for line in lines]
    assert all(len(b.encode()) + 2 <= MAX_BODY for b in bodies)
    assert " ".join(parse_line(line).params[1] for line in lines) == text
    actions = r.lines(ev.Action("bob", text, "lobby"))
    assert all(parse_ctcp(parse_line(x).params[1])[0] == "ACTION" for x in actions)
    assert all(len(x.split(" ", 1)[1].encode()) + 2 <= MAX_BODY for x in actions)


def test_echo_renderer_is_shared_others_drop_own_lines(masks):
    echo, plain = _renderer(masks, echo=True), _renderer(masks)
    assert echo.shared and not plain.shared
    assert hash(echo) != hash(plain) and echo == _renderer(masks, echo=True)
    me = _session("alice", plain)
    batch = [ev.Message("alice", "mine", "lobby"), ev.Message("bob", "theirs", "lobby"),
             ev.Action("alice", "waves", "lobby"), ev.Joined("carol", "lobby")]
    assert plain.render_for(me, batch).decode().split("\r\n")[:-1] == [
        ":bob!bob@irc.test PRIVMSG #lobby :theirs", ":carol!carol@irc.test JOIN #lobby"]
    assert echo.render_for(me, batch) == echo.render_many(batch)


def test_join_burst_through_a_real_room(masks):
    history = _History([ev.Message("bob", "old one", "dev", T0), ev.Cleared("root", "dev", T0),
                        ev.Action("alice", "was here", "dev", T0)])
    room = _room("dev", history)
    r = _renderer(masks, server_time=True)
    bob = _session("bob", r)
    room.join(bob)  # first in a new room: operator
    bob.out.lines()
    room.topic = "release friday"
    alice = _session("alice", r)
    room.join(alice)
    t = "@time=2011-10-19T16:40:51.620Z "
    lines = alice.out.lines()
    assert lines[0].endswith(" :alice!~al@irc.test JOIN #dev")
    assert lines[1:] == [
        ":irc.test 332 alice #dev :release friday",
        ":irc.test 353 alice = #dev :alice @bob",
        ":irc.test 366 alice #dev :End of /NAMES list",
        t + ":bob!bob@irc.test PRIVMSG #dev :old one",
        t + ":irc.test NOTICE #dev :history cleared by root",
        t + ":alice!~al@irc.test PRIVMSG #dev :\x01ACTION was here\x01",
    ]
    room.flush()  # the others read the join with the room's next batch
    assert bob.out.lines()[0].endswith(" :alice!~al@irc.test JOIN #dev")


def test_join_burst_batches_history_when_negotiated(masks):
    room = _room("dev", _History([ev.Message("bob", "old", "dev", T0)]))
    alice = _session("alice", _renderer(masks, server_time=True, batch=True))
    room.join(alice)
    lines = alice.out.lines()
    start = next(x for x in lines if " BATCH +" in x)
    ref = start.split()[2][1:]
    assert start == f":irc.test BATCH +{ref} chathistory #dev"
    assert f"@time=2011-10-19T16:40:51.620Z;batch={ref} :bob!bob@irc.test PRIVMSG #dev :old" \
        in lines
    assert lines[-1] == f":irc.test BATCH -{ref}"


def test_names_are_split_to_fit_and_mark_admins(masks):
    room = _room("big", _History())
    r = _renderer(masks)
    members = [_session(f"user{i:03d}-{'x' * 20}", r) for i in range(60)]
    for s in members:
        room.members[s.key] = s
    root = _session("root", r, admin=True)
    room.members[root.key] = root
    lines = r.names("root", room)
    assert len(lines) > 3 and lines[-1] == ":irc.test 366 root #big :End of /NAMES list"
    assert all(len(x.encode()) + 2 <= MAX_BODY for x in lines)
    names = " ".join(parse_line(x).params[3] for x in lines[:-1]).split()
    assert len(names) == 61 and "@root" in names


def test_msgid_tags_and_parsing(masks):
    r = _renderer(masks, msgid=True)
    assert r.lines(ev.Message("bob", "Hi", "Dev", T0, id=7)) == \
        ["@msgid=dev-7 :bob!bob@irc.test PRIVMSG #Dev :Hi"]  # the room's key: one per room
    assert r.lines(ev.Cleared("root", "dev", T0, id=8))[0].startswith("@msgid=dev-8 ")
    assert r.lines(ev.Message("bob", "unnumbered", "dev", T0))[0].startswith(":bob")
    assert r.lines(ev.RoomNotice("bob", "never stored", "dev", T0))[0].startswith(":bob")
    assert _renderer(masks).lines(ev.Message("bob", "Hi", "dev", T0, id=7))[0][0] == ":"
    assert parse_msgid("dev-7") == ("dev", 7)
    assert parse_msgid("my-room.x-12.2") == ("my-room.x", 12)  # a piece of a long line
    for bad in ("dev", "-7", "dev-", "dev-x", "dev-٣", "dev-" + "9" * 19):
        assert parse_msgid(bad) is None


def test_chathistory_clients_get_no_replay_on_join(masks):
    room = _room("dev", _History([ev.Message("bob", "old", "dev", T0, id=1)]))
    alice = _session("alice", _renderer(masks, batch=True, chathistory=True, msgid=True))
    room.join(alice)
    assert [x.split()[1] for x in alice.out.lines()] == ["JOIN", "353", "366"]
    r = alice.proto
    empty = r.history("#dev", [])
    assert empty[0].endswith(" chathistory #dev") and empty[1].startswith(":irc.test BATCH -")
