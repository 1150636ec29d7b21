"""What IRC users' text looks like to others: mIRC formatting, reasons without a colon."""

from __future__ import annotations

from tests.helpers import add_admin
from tests.test_irc import IRC_FLAGS, join, raw


def test_mirc_colours_reach_irc_users_and_are_stripped_for_native_users(make_srv):
    srv = make_srv(*IRC_FLAGS)
    nat = srv.connect("nat")
    ircer, peer = raw(srv, "ircer"), raw(srv, "peer")
    join(ircer, "#lobby")
    join(peer, "#lobby")
    ircer.send("PRIVMSG #lobby :\x034red\x0f and \x02bold\x02, \x0304,12both\x03 done")
    nat.expect("ircer: red and bold, both done")
    m = peer.expect("PRIVMSG")[-1]
    assert m.params[1] == "\x034red\x0f and \x02bold\x02, \x0304,12both\x03 done"
    ircer.send("PRIVMSG #lobby :\x02\x02")  # nothing left to read: not sent at all
    ircer.send("PRIVMSG #lobby :after")
    nat.expect("ircer: after")
    assert peer.expect("PRIVMSG")[-1].params[1] == "after"


def test_reasons_without_a_colon_keep_every_word(make_srv):
    srv = make_srv(*IRC_FLAGS, start=False)
    add_admin(srv.admins, "root", "s3cret-pw")
    srv.start()
    nat = srv.connect("nat")
    op = raw(srv, "op")
    join(op, "#dev")
    nat.send("/join dev")
    nat.expect("* nat joined")
    op.send("KICK #dev nat too many words")  # irssi and others send no colon
    nat.expect("* nat was kicked from dev by op: too many words")
    quitter = raw(srv, "quitter")
    join(quitter, "#lobby")
    quitter.send("QUIT see you soon")
    nat.expect("* quitter left (see you soon)")
    root = raw(srv, "boss")
    root.send("OPER root s3cret-pw")
    root.expect("381")
    root.send("DIE irc maintenance")
    nat.expect("* server shutting down: irc maintenance")
