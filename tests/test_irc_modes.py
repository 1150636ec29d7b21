"""IRC round two against a real server: channel modes and their replies, INVITE, NAMES,
LIST, WHO/WHOX, LUSERS, KICK, NOTICE, UTF8ONLY, SASL; native users with the same powers.

Raw sockets for exact replies, native LineClients for the other side. Every read has a
deadline (RawIrc.expect / LineClient.expect); nothing sleeps.
"""

from __future__ import annotations

import base64
import re

import pytest

from tests.helpers import add_admin
from tests.test_irc import IRC_FLAGS, LibIrc, RawIrc, irc_port, join, raw


@pytest.fixture
def srv(make_srv):
    return make_srv(*IRC_FLAGS)


@pytest.fixture
def admin_srv(make_srv):
    s = make_srv(*IRC_FLAGS, start=False)
    add_admin(s.admins, "root", "s3cret-pw")
    return s.start()


def codes(lines) -> list[tuple[str, tuple[str, ...]]]:
    return [(m.command, m.params[1:]) for m in lines]


def op_and_guest(srv, chan: str = "#m") -> tuple[RawIrc, RawIrc]:
    """``op`` created ``chan`` (so runs it); ``guest`` is registered, not in it."""
    op = raw(srv, "op")
    join(op, chan)
    guest = raw(srv, "guest")
    return op, guest


# --- MODE query, changes, refusals -----------------------------------------------------------


def test_mode_query_change_and_refusals(srv):
    op, guest = op_and_guest(srv)
    op.send("MODE #m")
    got = codes(op.expect("329"))
    assert ("324", ("#m", "+nt")) in got
    assert got[-1][0] == "329" and got[-1][1][1].isdigit()
    op.send("MODE #m +imsp-n+kl sesame 5")
    assert op.expect("MODE")[-1].params == ("#m", "+imsp-n+kl", "sesame", "5")
    op.send("MODE #m +yq")
    got = codes(op.expect(lambda m: m.command == "472" and m.params[1] == "q"))
    assert ("472", ("y", "is unknown mode char to me")) in got
    op.send("MODE #m")
    assert ("324", ("#m", "+impstkl", "sesame", "5")) in codes(op.expect("329"))
    guest.send("MODE #m +t", "MODE #m")  # secret (+s): unknown to non-members
    assert guest.expect("403")[-1].params[1] == "#m"
    assert guest.expect("403")[-1].params[1] == "#m"
    op.send("MODE #m -s")
    op.expect("MODE")
    guest.send("MODE #m +t")
    assert guest.expect("442")[-1].params[1] == "#m"  # not in it


def test_mode_324_hides_the_key_from_non_members(srv):
    op, guest = op_and_guest(srv)
    op.send("MODE #m +kl sesame 9")
    op.expect("MODE")
    op.send("MODE #m")
    assert ("324", ("#m", "+ntkl", "sesame", "9")) in codes(op.expect("329"))
    guest.send("MODE #m")
    assert ("324", ("#m", "+ntkl", "*", "9")) in codes(guest.expect("329"))


def test_482_for_members_who_are_not_operators(srv):
    op, guest = op_and_guest(srv)
    join(guest, "#m")
    guest.send("MODE #m +m", "MODE #m +b x", "TOPIC #m :t", "KICK #m op")
    for _ in range(4):
        assert guest.expect("482")[-1].params == ("guest", "#m", "You're not channel operator")


def test_join_refusals_471_473_474_475_and_invite(srv):
    op, guest = op_and_guest(srv)
    op.send("MODE #m +i")
    op.expect("MODE")
    guest.send("JOIN #m")
    assert guest.expect("473")[-1].params == ("guest", "#m", "Cannot join channel (+i)")
    op.send("INVITE guest #m")
    assert op.expect("341")[-1].params == ("op", "guest", "#m")
    inv = guest.expect("INVITE")[-1]
    assert inv.params == ("guest", "#m") and inv.source.startswith("op!")
    op.send("INVITE guest #m")  # invitations don't pile up: same reply
    op.expect("341")
    join(guest, "#m")  # the invitation lets it in once
    op.send("INVITE guest #m")
    assert op.expect("443")[-1].params == ("op", "guest", "#m", "is already on channel")
    guest.send("PART #m")
    guest.expect("PART")
    guest.send("JOIN #m")
    guest.expect("473")  # used up
    op.send("MODE #m -i+k sesame")
    op.expect("MODE")
    guest.send("JOIN #m", "JOIN #m wrong")
    assert guest.expect("475")[-1].params == ("guest", "#m", "Cannot join channel (+k)")
    guest.expect("475")
    guest.send("JOIN #m sesame")
    assert any(m.command == "JOIN" for m in guest.expect("366"))
    guest.send("PART #m")
    guest.expect("PART")
    op.send("MODE #m -k+l * 1")
    assert op.expect("MODE")[-1].params == ("#m", "-k+l", "*", "1")
    guest.send("JOIN #m")
    assert guest.expect("471")[-1].params == ("guest", "#m", "Cannot join channel (+l)")
    op.send("MODE #m -l+b guest*")
    assert op.expect("MODE")[-1].params == ("#m", "-l+b", "guest*!*@*")
    guest.send("JOIN #m")
    assert guest.expect("474")[-1].params == ("guest", "#m", "Cannot join channel (+b)")
    op.send("MODE #m +e *!~u@irc.test")  # an exception beats the ban
    op.expect("MODE")
    join(guest, "#m")


def test_invite_refusals(srv):
    op, guest = op_and_guest(srv)
    guest.send("INVITE op #m", "INVITE nobody #m", "INVITE op #nowhere", "INVITE op")
    got = codes(guest.expect("461"))
    assert ("442", ("#m", "You're not on that channel")) in got
    assert ("401", ("nobody", "No such nick/channel")) in got
    assert ("403", ("#nowhere", "No such channel")) in got
    join(guest, "#m")
    op.send("MODE #m +i")
    op.expect("MODE")
    third = raw(srv, "third")
    guest.send("INVITE third #m")  # +i: operators only
    assert guest.expect("482")[-1].params[1] == "#m"
    assert third.roundtrip() == []


def test_ban_list_queries_and_masks(srv):
    op, guest = op_and_guest(srv)
    op.send("MODE #m +b bad", "MODE #m +b *@10.0.0.1", "MODE #m +e ok!x@y", "MODE #m +I *!*@*")
    for _ in range(4):
        op.expect("MODE")
    op.send("MODE #m b", "MODE #m e", "MODE #m +I")
    lines = op.expect("347")
    got = [(m.command, m.params[1:3]) for m in lines]
    assert ("367", ("#m", "bad!*@*")) in got
    assert ("367", ("#m", "*!*@10.0.0.1")) in got
    assert ("368", ("#m", "End of channel ban list")) in got
    assert ("348", ("#m", "ok!x@y")) in got
    assert ("346", ("#m", "*!*@*")) in got
    ban = next(m for m in lines if m.command == "367")
    assert ban.params[3] == "op" and ban.params[4].isdigit()
    op.send("MODE #m -b BAD!*@*")  # masks compare ignoring case
    assert op.expect("MODE")[-1].params == ("#m", "-b", "bad!*@*")


def test_ban_by_address_and_a_banned_member_is_silent(srv):
    op, guest = op_and_guest(srv)
    join(guest, "#m")
    op.send("MODE #m +b *!*@127.0.0.1")  # the address bans everyone here...
    op.expect("MODE")
    guest.send("PRIVMSG #m :hello")
    assert guest.expect("404")[-1].params[1] == "#m"
    op.send("MODE #m +v guest")  # ...but a voiced member may speak
    op.expect("MODE")
    guest.send("PRIVMSG #m :now")
    assert op.expect("PRIVMSG")[-1].params == ("#m", "now")


def test_moderated_and_voice(srv):
    op, guest = op_and_guest(srv)
    join(guest, "#m")
    bob = srv.connect("bob")
    bob.send("/join m")
    bob.expect("* bob joined")
    op.send("MODE #m +m")
    op.expect("MODE")
    bob.expect("* op set mode +m on m")
    guest.send("PRIVMSG #m :hi")
    assert guest.expect("404")[-1].params[1] == "#m"
    bob.send("quiet?")
    bob.expect("! cannot send to m: it is moderated (+m) and you have no voice")
    op.send("MODE #m +vv guest bob")
    assert op.expect("MODE")[-1].params == ("#m", "+vv", "guest", "bob")
    guest.send("PRIVMSG #m :voiced")
    bob.expect("guest: voiced")
    bob.send("me too")
    op.expect(lambda m: m.command == "PRIVMSG" and m.params == ("#m", "me too"))
    op.send("NAMES #m")
    names = op.expect("366")[-2]
    assert names.params[1:] == ("=", "#m", "+bob +guest @op")


def test_no_outside_messages(srv):
    op, guest = op_and_guest(srv)
    guest.send("PRIVMSG #m :from outside")
    assert guest.expect("404")[-1].params[1] == "#m"
    op.send("MODE #m -n")
    op.expect("MODE")
    guest.send("PRIVMSG #m :from outside")
    assert op.expect("PRIVMSG")[-1].params == ("#m", "from outside")


def test_operator_status_and_topic_lock(srv):
    op, guest = op_and_guest(srv)
    join(guest, "#m")
    op.send("MODE #m +o guest")
    assert guest.expect("MODE")[-1].params == ("#m", "+o", "guest")
    guest.send("MODE #m -t+o-o nobody op")
    assert guest.expect("MODE")[-1].params == ("#m", "-to", "op")
    assert guest.expect("401")[-1].params[1:] == ("nobody", "No such nick/channel")


def test_lobby_refuses_invite_only_key_and_limit(srv):
    admin = raw(srv, "boss")
    join(admin, "#lobby")
    other = raw(srv, "other")
    join(other, "#lobby")
    # nobody runs the lobby; a ban there only silences
    other.send("MODE #lobby +i")
    assert other.expect("482")[-1].params[1] == "#lobby"


# --- native users get the same powers --------------------------------------------------------


def test_native_operator_commands(srv):
    alice = srv.connect("alice")
    alice.send("/join den")
    alice.expect("* alice joined")
    c = raw(srv, "ivy")
    alice.send("/mode +i")
    alice.expect("* alice set mode +i on den")
    c.send("JOIN #den")
    c.expect("473")
    alice.send("/invite ivy")
    alice.expect("* you invited ivy to den")
    assert c.expect("INVITE")[-1].params == ("ivy", "#den")
    join(c, "#den")
    alice.send("/ban evil")
    alice.expect("* alice set mode +b evil!*@* on den")
    alice.send("/ban")
    alice.expect("*   evil!*@* (by alice)")
    alice.send("/unban evil")
    alice.expect("* alice set mode -b evil!*@* on den")
    alice.send("/mode")
    alice.expect("* modes of den: +int")
    alice.send("/mode +k two words")  # the key is one word: "two"; "words" is ignored
    alice.expect("* alice set mode +k two on den")
    alice.send("/mode +x")
    alice.expect("! unknown mode: x")
    bob = srv.connect("bob")
    bob.send("/join den")
    bob.expect("! cannot join den: it is invite-only (+i)")
    bob.send("/mode +m")  # /mode is about the room you are in: the lobby here
    bob.expect("! permission denied: you are not an operator of lobby")
    bob.send("/help")
    bob.expect(re.compile(r"\*\s+/invite NAME\s+invite NAME here"))


def test_native_key_join(srv):
    alice = srv.connect("alice")
    alice.send("/join den")
    alice.expect("* alice joined")
    alice.send("/mode +k sesame")
    alice.expect("* alice set mode +k sesame on den")
    bob = srv.connect("bob")
    bob.send("/join den")
    bob.expect("! cannot join den: wrong or missing key (+k)")
    bob.send("/join den sesame")
    bob.expect("* bob joined")


# --- NAMES, LIST, WHO, LUSERS ----------------------------------------------------------------


def test_names_symbols_several_channels_and_invisible(srv):
    op = raw(srv, "op")
    join(op, "#pub")
    join(op, "#sec")
    join(op, "#prv")
    op.send("MODE #sec +s", "MODE #prv +p", "MODE op +i")
    op.expect(lambda m: m.command == "MODE" and m.params[0] == "op")
    guest = raw(srv, "guest")
    join(guest, "#pub")
    guest.send("NAMES #pub,#sec,#prv")
    lines = guest.expect(lambda m: m.command == "366" and m.params[1] == "#prv")
    got = codes(lines)
    assert ("353", ("=", "#pub", "guest @op")) in got  # shares #pub: sees op
    assert ("366", ("#sec", "End of /NAMES list")) in got  # secret: nothing
    assert not any(c == "353" and p[1] == "#sec" for c, p in got)
    assert not any(c == "353" and p[1] == "#prv" for c, p in got)  # op is +i
    op.send("NAMES #sec,#prv")
    got = codes(op.expect(lambda m: m.command == "366" and m.params[1] == "#prv"))
    assert ("353", ("@", "#sec", "@op")) in got
    assert ("353", ("*", "#prv", "@op")) in got


def test_multi_prefix_and_userhost_in_names(srv):
    op = raw(srv, "op", "multi-prefix", "userhost-in-names")
    lines = join(op, "#m")
    assert ("353", ("=", "#m", "@op!~u@irc.test")) in codes(lines)
    op.send("MODE #m +v op", "NAMES #m")
    assert op.expect("353")[-1].params[1:] == ("=", "#m", "@+op!~u@irc.test")
    plain = raw(srv, "plain")
    plain.send("NAMES #m", "WHO #m")
    assert plain.expect("353")[-1].params[1:] == ("=", "#m", "@op")
    assert plain.expect("352")[-1].params[6] == "H@"


def test_list_existing_visible_channels_and_elist(srv):
    c = raw(srv, "lister")
    c.send("LIST")
    got = codes(c.expect("323"))
    assert not any(code == "322" for code, _ in got)  # an empty lobby is not listed
    join(c, "#a")
    join(c, "#hidden")
    c.send("MODE #hidden +s", "TOPIC #a :hello")
    c.expect("TOPIC")
    other = raw(srv, "other")
    join(other, "#b")
    other.send("LIST")
    got = codes(other.expect("323"))
    chans = [p[0] for code, p in got if code == "322"]
    assert chans == ["#a", "#b"]
    assert ("322", ("#a", "1", "[+nt] hello")) in got
    join(other, "#a")
    other.send("LIST >1")
    got = codes(other.expect("323"))
    assert [p[0] for code, p in got if code == "322"] == ["#a"]
    c.send("LIST <2")
    got = codes(c.expect("323"))
    assert [p[0] for code, p in got if code == "322"] == ["#b", "#hidden"]


def test_who_several_channels_once_each_and_whox(srv):
    a = raw(srv, "ann")
    join(a, "#x")
    join(a, "#y")
    b = raw(srv, "ben")
    join(b, "#x")
    join(b, "#y")
    a.send("WHO #x,#y")
    rows = [m for m in a.expect("315")[:-1] if m.command == "352"]
    assert sorted(m.params[5] for m in rows) == ["ann", "ben"]
    a.send("WHO #x %tnfar,42")
    got = codes(a.expect("315"))
    assert ("354", ("42", "ann", "H@", "0", "Real Name")) in got
    assert ("354", ("42", "ben", "H", "0", "Real Name")) in got


def test_lusers_counts(admin_srv):
    srv = admin_srv
    root = srv.connect("root", "s3cret-pw")  # noqa: F841 (an admin online)
    c = raw(srv, "luke")
    c.send("MODE luke +i")
    c.expect("MODE")
    join(c, "#z")
    c.send("LUSERS")
    got = codes(c.expect("266"))
    assert ("251", ("There are 1 users and 1 invisible on 1 servers",)) in got
    assert ("252", ("1", "operator(s) online")) in got
    assert ("254", ("2", "channels formed")) in got
    assert ("255", ("I have 2 clients and 0 servers",)) in got
    assert ("265", ("2", "2", "Current local users 2, max 2")) in got
    assert ("266", ("2", "2", "Current global users 2, max 2")) in got


# --- KICK, NOTICE, registration, UTF-8 -------------------------------------------------------


def test_kick_several_targets_and_channel_pairs(srv):
    op = raw(srv, "op")
    join(op, "#a")
    join(op, "#b")
    u1, u2 = raw(srv, "u1"), raw(srv, "u2")
    for u in (u1, u2):
        join(u, "#a")
        join(u, "#b")
    op.send("KICK #a u1,u2,ghost :out")
    lines = op.expect("401")
    kicks = [m.params for m in lines if m.command == "KICK"]
    assert kicks == [("#a", "u1", "out"), ("#a", "u2", "out")]
    op.send("KICK #b,#a u1,u2")
    got = codes(op.expect(lambda m: m.command in ("441", "KICK") and "u2" in m.params))
    assert got[-1] == ("441", ("u2", "#a", "They aren't on that channel"))


def test_notice_reaches_channels_and_users_as_notices_never_answered(srv):
    a = raw(srv, "ann", "echo-message")
    join(a, "#n")
    b = raw(srv, "ben")
    join(b, "#n")
    bob = srv.connect("bob")
    bob.send("/join n")
    bob.expect("* bob joined")
    a.send("NOTICE #n :heads up", "NOTICE ben :psst", "NOTICE bob :native",
           "NOTICE ghost :x", "NOTICE #nowhere :x")
    m = b.expect("NOTICE")[-1]
    assert m.params == ("#n", "heads up") and m.source.startswith("ann!")
    m = b.expect("NOTICE")[-1]
    assert m.params == ("ben", "psst")
    bob.expect("ann: heads up")
    bob.expect("(private) ann -> bob: native")
    echoed = [m for m in a.roundtrip() if m.command == "NOTICE"]
    assert [m.params for m in echoed] == [("#n", "heads up"), ("ben", "psst"),
                                         ("bob", "native")]  # echo-message, no error
    b.send("AWAY :gone")
    b.expect("306")
    a.send("NOTICE ben :no away reply")
    assert [m.command for m in a.roundtrip()] == ["NOTICE"]  # the echo, never a 301


def test_user_with_empty_realname_is_461(srv):
    c = RawIrc(irc_port(srv))
    c.send("NICK nora", "USER n 0 * :")
    assert c.expect("461")[-1].params == ("*", "USER", "Not enough parameters")
    c.send("USER n 0 * :Nora")
    assert c.expect("001")[-1].params[0] == "nora"


def test_invalid_utf8_is_refused_with_fail_and_not_relayed(srv):
    bob = srv.connect("bob")
    c = raw(srv, "uma")
    join(c, "#lobby")
    c.send(b"PRIVMSG #lobby :caf\xe9\r\n", b"\xff\xfe\r\n")
    fail = c.expect("FAIL")[-1]
    assert fail.params == ("PRIVMSG", "INVALID_UTF8",
                           "Message rejected for containing invalid UTF-8")
    assert c.expect("FAIL")[-1].params[0] == "*"  # no command to name
    c.send("PRIVMSG #lobby :café")
    bob.expect("uma: café")  # the first thing bob reads from uma


def test_invalid_utf8_on_the_shared_port_too(srv):
    c = RawIrc(srv.port)
    c.register("sam")
    c.send(b"NOTICE sam :\xc3\r\n")
    assert c.expect("FAIL")[-1].params[:2] == ("NOTICE", "INVALID_UTF8")


def test_native_keeps_replacement_characters(srv):
    bob = srv.connect("bob")
    amy = srv.connect("amy")
    amy.send(b"caf\xe9\n")
    bob.expect("amy: caf\ufffd")


# --- SASL ------------------------------------------------------------------------------------


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def sasl(c: RawIrc, nick: str, user: str, password: str) -> list:
    c.send("CAP LS 302", f"NICK {nick}", "USER u 0 * :Real Name")
    ls = c.expect("CAP")[-1]
    assert "sasl=PLAIN" in ls.params[-1].split()
    c.send("CAP REQ :sasl")
    c.expect("CAP")
    c.send("AUTHENTICATE PLAIN")
    assert c.expect("AUTHENTICATE")[-1].params == ("+",)
    c.send(f"AUTHENTICATE {_plain(user, password)}")
    return c.expect(lambda m: m.command in ("903", "904"))


def test_sasl_plain_logs_an_admin_in_before_registration(admin_srv):
    c = RawIrc(irc_port(admin_srv))
    lines = sasl(c, "root", "root", "s3cret-pw")
    got = codes(lines)
    assert ("900", ("root!~u@irc.test", "root", "You are now logged in as root")) in got
    assert lines[-1].command == "903"
    c.send("CAP END")
    burst = c.expect(lambda m: m.command in ("376", "422"))
    assert burst[0].params[0] == "root"
    mode = c.expect("MODE")[-1]
    assert mode.params == ("root", "+o")
    lines = join(c, "#lobby")
    assert ("353", ("=", "#lobby", "@root")) in codes(lines)
    c.send("KILL nobody")
    assert c.expect("401")[-1].command == "401"  # an oper: no 481


def test_sasl_failures_abort_mechs_and_throttle(admin_srv):
    c = RawIrc(irc_port(admin_srv))
    assert sasl(c, "guest", "root", "wrong")[-1].params[-1] == "SASL authentication failed"
    c.send("AUTHENTICATE SCRAM-SHA-256")
    got = codes(c.expect("904"))
    assert ("908", ("PLAIN", "are available SASL mechanisms")) in got
    c.send("AUTHENTICATE PLAIN", "AUTHENTICATE *")
    assert c.expect("906")[-1].command == "906"
    c.send("CAP END")
    c.expect("001")
    c.send("AUTHENTICATE PLAIN")
    assert c.expect("907")[-1].command == "907"
    # the per-address limit is shared with OPER and the native prompt
    for _ in range(12):
        d = RawIrc(irc_port(admin_srv))
        last = sasl(d, "g", "root", "nope")[-1]
        d.close()
    assert last.params[-1] == "Too many failed attempts; try again later"


def test_reserved_nick_without_sasl_is_refused_at_registration(admin_srv):
    c = RawIrc(irc_port(admin_srv))
    c.send("CAP LS 302", "NICK root", "USER u 0 * :R", "CAP END")
    got = codes(c.expect("432"))
    assert got[-1] == ("432", ("root", "Reserved for an admin account; use OPER"))
    c.send("NICK rooty")
    assert c.expect("001")[-1].params[0] == "rooty"


def test_library_client_sees_modes_and_prefixes(srv):
    a = LibIrc(irc_port(srv), "libby").welcome()
    a.conn.join("#lib")
    a.wait("join")
    a.conn.mode("#lib", "+mk secret")
    e = a.wait("mode")
    assert e.arguments == ["+mk", "secret"]
    a.conn.send_raw("MODE #lib")
    e = a.wait("channelmodeis")
    assert e.arguments[:3] == ["#lib", "+mntk", "secret"]
    features = a.conn.features
    assert dict(features.prefix) == {"@": "o", "+": "v"}
    assert features.chanmodes == ["beI", "k", "l", "imnpst"]
    a.close()
