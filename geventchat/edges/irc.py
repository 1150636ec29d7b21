"""The IRC edge: one client connection speaking IRC, from registration to ``ERROR``.

``ChatServer`` hands a connection over here once its first line looked like IRC (or from
the first byte on ``--irc-port``). The shape is the native connection's: one reader
greenlet feeds bytes to the sans-IO codec (:mod:`geventchat.wire.irc`), throttles every line
with the same :class:`~geventchat.core.flood.FloodGate`, and acts on it; output only ever goes
to the client's non-blocking :class:`~geventchat.edges.outbuf.Output`.

Everything a user does goes through the hub as protocol-neutral events (``room.say``,
``hub.rename``, ``hub.part``...), so native users see IRC users' actions in their own
protocol and vice versa. Only replies meant for this one client (numerics) are IRC text.

Commands are declared once, as data, in :data:`COMMANDS` (handler, minimum parameters,
usable before registration, oper-only, help), and checked centrally in
:meth:`IrcConnection._dispatch` in ergo's style; handlers raise :class:`IrcError` for
anything the client got wrong.
"""

from __future__ import annotations

import fnmatch
import logging
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import gevent

from geventchat import __version__
from geventchat.core import actions
from geventchat.core import events as ev
from geventchat.core.errors import ChatError
from geventchat.core.hub import Room, Session
from geventchat.core.text import check_name, clean, name_key
from geventchat.edges.base import ClientConnection, EdgeContext
from geventchat.edges.outbuf import Output
from geventchat.wire import irc
from geventchat.wire.irc import (
    Hostmasks,
    IrcDecoder,
    IrcError,
    IrcLine,
    IrcRenderer,
    channel,
    fit_bytes,
    format_line,
    parse_ctcp,
    word,
)
from geventchat.wire.native import TOO_LONG, LineDecoder, LineTooLong

log = logging.getLogger(__name__)

#: How long a closing connection may take to write its last lines (ERROR).
DRAIN_TIMEOUT = 2.0
#: Keepalive: PING a client silent this long, drop it if the PONG (or anything) does not
#: come within as long again. 90 s each is the common ircd setting: NATs forget idle TCP
#: flows after a few minutes, and a dead peer is found within 3 minutes.
PING_AFTER = 90.0
PING_TIMEOUT = 90.0
#: Channels one IRC user may be in (CHANLIMIT): each room may open a history file.
MAX_CHANNELS = 30
#: Targets of one PRIVMSG/NOTICE/KICK (TARGMAX), so one line can't fan out without bound.
MAX_TARGETS = 4
#: Users one WHO with a mask lists, so ``WHO *`` on a big server can't overflow the sendq.
MAX_WHO = 200
#: Channels one LIST shows, for the same reason.
MAX_LIST = 500
#: Text limits advertised in ISUPPORT; longer input is cut to them (as ircds do), and each
#: fits a 512-byte line with room for the longest prefix.
TOPICLEN = 390
AWAYLEN = 200
KICKLEN = 255
#: Ident length (USERLEN), the ``~`` we prepend included: we run no ident check.
USERLEN = 10
#: Channel modes with parameters changed by one MODE command (the MODES token).
MAX_MODES = 4

#: Capabilities offered to ``CAP LS``. ``message-tags`` lets clients send tags (we accept
#: and ignore client-only tags and TAGMSG); ``batch`` wraps history replays.
CAPS: Final = ("batch", "echo-message", "message-tags", "server-time")
#: The ones that change how events are rendered: fixed once registered (see _cap_req).
RENDER_CAPS: Final = frozenset({"batch", "echo-message", "server-time"})

VERSION: Final = f"geventchat-{__version__}"
USER_MODES: Final = "io"
CHANNEL_MODES: Final = "ot"


def _isupport(network: str) -> list[str]:
    """The 005 tokens, honest: only limits we enforce and modes we implement.

    CASEMAPPING: our identity (``text.name_key``) is NFKC, full Unicode case folding and
    look-alike letters mapped to Latin. ``rfc8265`` (PRECIS UsernameCaseMapped, which
    obsoletes ``rfc7613``) is the closest registered token; it folds less, so a client may
    think a nick free that the server refuses (433), never the reverse. See docs/IRC.md."""
    return [
        f"AWAYLEN={AWAYLEN}", "CASEMAPPING=rfc8265", f"CHANLIMIT=#:{MAX_CHANNELS}",
        "CHANMODES=,,,t", "CHANNELLEN=33", "CHANTYPES=#", f"KICKLEN={KICKLEN}",
        "LINELEN=512", f"MODES={MAX_MODES}", f"NETWORK={network}", "NICKLEN=32",
        "PREFIX=(o)@",
        f"TARGMAX=JOIN:,KICK:{MAX_TARGETS},NAMES:,NOTICE:{MAX_TARGETS},PART:,"
        f"PRIVMSG:{MAX_TARGETS},WHOIS:1",
        f"TOPICLEN={TOPICLEN}", f"USERLEN={USERLEN}", "UTF8ONLY",
    ]


# --- per-server IRC state --------------------------------------------------------------------


class IrcNetwork:
    """What all IRC connections of one server share: the hostmask registry, the cached
    renderers (one per capability combination, so rooms group IRC members by them), the
    start time (003) and first-seen times of rooms (329)."""

    def __init__(self, server_name: str) -> None:
        self.name = word(server_name, 63).replace("!", "-").replace("@", "-")
        self.masks = Hostmasks(self.name)
        self.started = datetime.now(UTC)
        self._renderers: dict[frozenset[str], IrcRenderer] = {}
        self._room_times: weakref.WeakKeyDictionary[Room, int] = weakref.WeakKeyDictionary()

    def renderer(self, caps: frozenset[str] | set[str]) -> IrcRenderer:
        key = frozenset(caps) & RENDER_CAPS
        r = self._renderers.get(key)
        if r is None:
            r = self._renderers[key] = IrcRenderer(
                self.name, self.masks, server_time="server-time" in key,
                echo="echo-message" in key, batch="batch" in key)
        return r

    def room_created(self, room: Room) -> int:
        """When IRC first saw ``room`` (the hub keeps no creation time): for 329."""
        return self._room_times.setdefault(room, int(time.time()))


_NETWORKS: weakref.WeakKeyDictionary[object, IrcNetwork] = weakref.WeakKeyDictionary()


def network_for(server: EdgeContext) -> IrcNetwork:
    net = _NETWORKS.get(server)
    if net is None:
        net = _NETWORKS[server] = IrcNetwork(server.settings.server_name)
    return net


class IrcSession(Session):
    """A hub session whose direct events go through its connection, which knows the
    recipient's nick: a notice is addressed to it, and its own KILL or shutdown is
    rendered as KILL/ERROR instead of the QUIT everyone else sees."""

    __slots__ = ("conn",)

    conn: IrcConnection

    def send(self, event: ev.Event) -> None:
        self.conn.send(event)

    def send_many(self, events: list[ev.Event]) -> None:
        for event in events:
            self.conn.send(event)


#: Action refusals (``ChatError`` codes) as numerics: (numeric, text, how many of the
#: error's params to use, whether the first is a room shown as a channel).
_NUMERICS: Final = {
    "no_such_user": (irc.ERR_NOSUCHNICK, "No such nick/channel", 1, False),
    "no_such_room": (irc.ERR_NOSUCHCHANNEL, "No such channel", 1, True),
    "not_member": (irc.ERR_NOTONCHANNEL, "You're not on that channel", 1, True),
    "target_not_member": (irc.ERR_USERNOTINCHANNEL, "They aren't on that channel", 2, False),
    "not_operator": (irc.ERR_CHANOPRIVSNEEDED, "You're not channel operator", 1, True),
    "admins_only": (irc.ERR_NOPRIVILEGES, "Permission Denied- You're not an IRC operator",
                    0, False),
    "too_many_rooms": (irc.ERR_TOOMANYCHANNELS, "You have joined too many channels", 1,
                       False),
    "cannot_send": (irc.ERR_CANNOTSENDTOCHAN, "Cannot send to channel", 1, True),
    "name_taken": (irc.ERR_NICKNAMEINUSE, "Nickname is already in use", 1, False),
    "reserved_name": (irc.ERR_ERRONEUSNICKNAME, "Reserved for an admin account; use OPER", 1,
                      False),
    "invalid_name": (irc.ERR_ERRONEUSNICKNAME, "Erroneous nickname", 1, False),
}


def irc_error(exc: ChatError) -> IrcError | None:
    """The numeric for an action's refusal; None when only a NOTICE fits."""
    spec = _NUMERICS.get(exc.code)
    if spec is None or len(exc.params) < spec[2]:
        return None
    code, text, count, is_room = spec
    params = [word(p) for p in exc.params[:count]]
    if count == 2:  # (nick, room)
        params[1] = channel(exc.params[1])
    elif is_room and params:
        params[0] = channel(exc.params[0])
    return IrcError(code, *params, text=text)


# --- the connection --------------------------------------------------------------------------


class IrcConnection(ClientConnection):
    """One IRC client: registration (PASS, CAP, NICK, USER), commands, keepalive, close."""

    protocol = "irc"

    def __init__(self, ctx: EdgeContext, sock: socket.socket, addr: tuple,
                 out: Output | None = None) -> None:
        super().__init__(ctx, sock, addr, IrcDecoder(LineDecoder(ctx.settings.max_line)),
                         out)
        self.server = ctx
        self.net = network_for(ctx)
        self.renderer = self.net.renderer(frozenset())
        self.nick: str | None = None  # requested before registration
        self.user: str | None = None
        self.realname = ""
        self.caps: set[str] = set()
        self.negotiating = False  # CAP LS/REQ seen: registration waits for CAP END
        self.password: str | None = None  # PASS, checked (and counted) at registration
        self._error_sent = False
        self._mask: str | None = None
        self.last_command = self.created
        self._ping_sent: float | None = None

    # --- life cycle --------------------------------------------------------------------

    def run_lines(self, first_lines: list[str | LineTooLong]) -> None:
        """Continue a connection whose first lines the native edge already read."""
        self._reader = gevent.getcurrent()
        try:
            self.handle(IrcDecoder.accept_all(first_lines))
        except Exception:
            log.exception("IRC connection %s failed", self.addr)
        self.run()

    def heard(self) -> None:
        self.last_active = time.monotonic()
        self._ping_sent = None  # anything at all proves the peer alive

    def on_line(self, msg: IrcLine | LineTooLong) -> None:
        if msg is TOO_LONG:
            self.reply(irc.ERR_INPUTTOOLONG, text="Input line was too long")
            return
        self._dispatch(msg)

    def slow_down(self) -> None:
        """Silent fakelag: the reader is throttled, the client is not told (IRC clients
        take unexpected lines for protocol noise); a sustained flood still disconnects."""

    def sendq_reason(self) -> str:
        return "SendQ exceeded"

    def goodbye(self, reason: str) -> None:
        """The ``ERROR`` line, after whatever was queued before it."""
        if self._error_sent:
            return
        self._error_sent = True
        data = (format_line("ERROR", trailing=f"Closing link: ({reason})") + "\r\n").encode()
        if self.session is not None and not self.out.closed:
            self.session.send_raw(data)
        else:
            self.out.write(data)

    def forget(self, session: Session) -> None:
        if self._mask is not None:
            # A loop pass later: lines queued before the quit still show the mask.
            gevent.get_hub().loop.run_callback(self.net.masks.remove, session.name,
                                               self._mask)

    def timed_out(self, what: str) -> None:
        self.close("Registration timeout" if what == "registration timeout" else what)

    def expire(self, now: float) -> None:
        """Sweeper: registration timeout, idle timeout, and the keepalive PING."""
        if self._closing is not None:
            return
        settings = self.settings
        if self.session is None:
            super().expire(now)
            return
        if settings.idle_timeout and now - self.last_command > settings.idle_timeout:
            self.close("Idle timeout", f"Idle for {settings.idle_timeout:g} s")
        elif self._ping_sent is None:
            if now - self.last_active >= PING_AFTER:
                self._ping_sent = now
                self.write_lines([format_line("PING", trailing=self.net.name)])
        elif now - self._ping_sent >= PING_TIMEOUT:
            self.close("Ping timeout")

    # --- output ------------------------------------------------------------------------

    def send(self, event: ev.Event) -> None:
        """One event for this client only (the server's shutdown notice, a private
        message, a kick), after the broadcasts its rooms queued before it."""
        nick = self.target()
        if isinstance(event, ev.Shutdown) or (isinstance(event, ev.Killed)
                                              and event.name == nick):
            self._error_sent = True  # the rendering ends with ERROR
        self.write(self.renderer.render_to(nick, event))

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.session is not None:
            self.session.send_raw(data)  # flushes its rooms first: replies never overtake
        else:
            self.out.write(data)

    def write_lines(self, lines: list[str]) -> None:
        self.write("".join(f"{line}\r\n" for line in lines).encode())

    def target(self) -> str:
        """The client's nick in replies: ``*`` until registered."""
        return self.session.name if self.session is not None else "*"

    def numeric(self, code: str, *params: str, text: str | None = None) -> str:
        return self.renderer.numeric(code, self.target(), *params, trailing=text)

    def reply(self, code: str, *params: str, text: str | None = None) -> None:
        self.write_lines([self.numeric(code, *params, text=text)])

    def notice(self, text: str) -> None:
        self.write_lines([format_line("NOTICE", self.target(), trailing=text,
                                       source=self.net.name)])

    def prefix(self) -> str:
        return self.net.masks.prefix(self.target())

    # --- dispatch ----------------------------------------------------------------------

    def _dispatch(self, msg: IrcLine) -> None:
        """Check ``msg`` against its :class:`Cmd` and run it; every refusal is a numeric.
        Nothing is ever answered to a NOTICE (RFC 1459 4.4.2), not even an error."""
        spec = COMMANDS.get(msg.command)
        try:
            if spec is None:
                raise IrcError(irc.ERR_UNKNOWNCOMMAND, word(msg.command), text="Unknown command")
            if spec.registered and self.session is None:
                raise IrcError(irc.ERR_NOTREGISTERED, text="You have not registered")
            if spec.oper and not self.session.is_admin:
                raise IrcError(irc.ERR_NOPRIVILEGES,
                               text="Permission Denied- You're not an IRC operator")
            if len(msg.params) < spec.params:
                raise IrcError(irc.ERR_NEEDMOREPARAMS, msg.command, text="Not enough parameters")
            if not spec.keepalive:
                self.last_command = time.monotonic()
            spec.handler(self, msg)
        except IrcError as exc:
            if msg.command != "NOTICE":
                self.reply(exc.code, *exc.params, text=exc.text)
        except ChatError as exc:  # from the actions layer: its code picks the numeric
            if msg.command != "NOTICE":
                self.chat_error(exc)

    def chat_error(self, exc: ChatError) -> None:
        """An action's refusal as the numeric IRC clients expect (a NOTICE if none fits)."""
        err = irc_error(exc)
        if err is None:
            self.notice(exc.text)
        else:
            self.reply(err.code, *err.params, text=err.text)

    # --- registration ------------------------------------------------------------------

    def try_register(self) -> None:
        """Complete registration once NICK, USER and (if begun) CAP negotiation are done."""
        if (self.session is not None or self.negotiating or self.nick is None
                or self.user is None or self._closing is not None):
            return
        if self.ctx.admission.password_required:
            try:
                ok = self.ctx.admission.server_password(self.addr_ip, self.password or "")
            except ChatError:
                self.reply(irc.ERR_PASSWDMISMATCH,
                           text="Too many failed attempts; try again later")
                self.close("Bad password", "Too many failed logins")
                return
            if not ok:
                self.reply(irc.ERR_PASSWDMISMATCH, text="Password incorrect")
                self.close("Bad password")
                return
        if self.hub.stopping:
            self.close("server shutting down")
            return
        renderer = self.net.renderer(self.caps)
        session = IrcSession(self.nick, self.out, renderer, self.close, addr=self.addr)
        session.conn = self
        session.extra = {"user": self.user, "realname": self.realname, "away": "",
                         "modes": set()}
        try:
            actions.register(self.hub, session, join_lobby=False)  # re-checks the name
        except ChatError:
            self.reply(irc.ERR_NICKNAMEINUSE, self.nick, text="Nickname is already in use")
            self.nick = None
            return
        self.session, self.renderer = session, renderer
        self._mask = self.net.masks.add(session.name, self.user, self.net.name)
        self._welcome()

    def _welcome(self) -> None:
        me = self.target()
        started = self.net.started.strftime("%a %b %d %Y at %H:%M:%S UTC")
        net = self.net.name
        lines = [
            self.numeric(irc.RPL_WELCOME,
                         text=f"Welcome to the {net} IRC Network {self.prefix()}"),
            self.numeric(irc.RPL_YOURHOST,
                         text=f"Your host is {net}, running version {VERSION}"),
            self.numeric(irc.RPL_CREATED, text=f"This server was created {started}"),
            self.numeric(irc.RPL_MYINFO, net, VERSION, USER_MODES, CHANNEL_MODES, "o"),
            *self.isupport_lines(),
        ]
        self.write_lines(lines)
        log.info("%s registered over IRC from %s", me, self.addr)
        _lusers(self, IrcLine("LUSERS"))
        _motd(self, IrcLine("MOTD"))

    def isupport_lines(self) -> list[str]:
        tokens = _isupport(self.net.name)
        return [self.numeric(irc.RPL_ISUPPORT, *tokens[i:i + 12],
                             text="are supported by this server")
                for i in range(0, len(tokens), 12)]

    # --- helpers for handlers ----------------------------------------------------------

    @property
    def me(self) -> IrcSession:
        assert self.session is not None  # the dispatcher checked registration
        return self.session

    def room(self, name: str) -> Room:
        """The existing room ``#name``; 403 otherwise."""
        room = self.hub.find_room(name[1:]) if name.startswith("#") else None
        if room is None:
            raise IrcError(irc.ERR_NOSUCHCHANNEL, word(name), text="No such channel")
        return room

    def member_room(self, name: str) -> Room:
        """The room ``#name`` this user is in; 403 or 442 otherwise."""
        room = self.room(name)
        if room.key not in self.me.rooms:
            raise IrcError(irc.ERR_NOTONCHANNEL, channel(room.name),
                           text="You're not on that channel")
        return room

    def find_user(self, nick: str) -> Session:
        target = self.hub.find(nick) or self.hub.directory.locate(nick)
        if target is None:
            raise IrcError(irc.ERR_NOSUCHNICK, word(nick), text="No such nick/channel")
        return target


# --- command handlers ------------------------------------------------------------------------

Handler = Callable[[IrcConnection, IrcLine], None]


@dataclass(frozen=True, slots=True)
class Cmd:
    """One command's rules. ``params`` is the minimum count (461 below it); ``registered``
    whether it needs registration (451); ``oper`` whether it needs OPER (481);
    ``keepalive`` marks PING/PONG, which don't count as activity for the idle timeout."""

    handler: Handler
    params: int = 0
    registered: bool = True
    oper: bool = False
    keepalive: bool = False
    usage: str = ""
    help: str = ""


def _pass(c: IrcConnection, m: IrcLine) -> None:
    if c.session is not None:
        raise IrcError(irc.ERR_ALREADYREGISTERED, text="You may not reregister")
    c.password = m.params[0]  # checked, and counted, when registration completes


def _cap(c: IrcConnection, m: IrcLine) -> None:
    sub = m.params[0].upper()
    if sub == "LS":
        c.negotiating = c.session is None
        c.write_lines([format_line("CAP", c.target(), "LS", trailing=" ".join(CAPS),
                                    source=c.net.name)])
    elif sub == "LIST":
        c.write_lines([format_line("CAP", c.target(), "LIST",
                                    trailing=" ".join(sorted(c.caps)), source=c.net.name)])
    elif sub == "REQ":
        c.negotiating = c.session is None
        _cap_req(c, m.param(1))
    elif sub == "END":
        c.negotiating = False
        c.try_register()
    else:
        raise IrcError(irc.ERR_INVALIDCAPCMD, word(sub), text="Invalid CAP command")


def _cap_req(c: IrcConnection, requested: str) -> None:
    """All or nothing (IRCv3 capability negotiation). Once registered, the renderer can't
    change (rooms group their members by it), so a request that would change a rendering
    capability is refused with NAK."""
    wanted = set(c.caps)
    ok = bool(requested.split())
    for token in requested.split():
        name = token.removeprefix("-")
        if name not in CAPS:
            ok = False
        elif token.startswith("-"):
            wanted.discard(name)
        else:
            wanted.add(name)
    if c.session is not None and (wanted & RENDER_CAPS) != (c.caps & RENDER_CAPS):
        ok = False
    if ok:
        c.caps = wanted
    c.write_lines([format_line("CAP", c.target(), "ACK" if ok else "NAK",
                                trailing=requested, source=c.net.name)])


def _nick(c: IrcConnection, m: IrcLine) -> None:
    if not m.param(0):
        raise IrcError(irc.ERR_NONICKNAMEGIVEN, text="No nickname given")
    try:
        new = check_name(m.params[0])
    except ChatError:
        raise IrcError(irc.ERR_ERRONEUSNICKNAME, word(m.params[0]),
                       text="Erroneous nickname") from None
    me = c.session
    new = actions.check_new_name(c.hub, new, me)
    if me is None:
        c.nick = new
        c.try_register()
    elif new != me.name:
        old = me.name
        actions.rename(c.hub, me, new)  # NICK for everyone, self included, with the old mask
        c.net.masks.rename(old, new)


def _user(c: IrcConnection, m: IrcLine) -> None:
    if c.session is not None or c.user is not None:
        raise IrcError(irc.ERR_ALREADYREGISTERED, text="You may not reregister")
    ident = "".join(ch for ch in m.params[0] if ch.isascii() and (ch.isalnum() or ch in "_.-"))
    c.user = "~" + (ident[:USERLEN - 1] or "user")
    c.realname = fit_bytes(clean(m.params[3]), 100)
    c.try_register()


def _ping(c: IrcConnection, m: IrcLine) -> None:
    if not m.param(0):
        raise IrcError(irc.ERR_NOORIGIN, text="No origin specified")
    c.write_lines([format_line("PONG", c.net.name, trailing=m.params[0], source=c.net.name)])


def _pong(c: IrcConnection, m: IrcLine) -> None:
    """Nothing to do: any line resets the keepalive (see _read_loop)."""


def _quit(c: IrcConnection, m: IrcLine) -> None:
    reason = fit_bytes(clean(m.param(0)).strip(), KICKLEN)
    if c.session is not None:
        c.hub.unregister(c.session, ev.Quit(c.session.name, reason))
    c.close("quit", f"Quit: {reason}" if reason else "Quit")


def _privmsg(c: IrcConnection, m: IrcLine) -> None:
    _message(c, m, notice=False)


def _notice(c: IrcConnection, m: IrcLine) -> None:
    _message(c, m, notice=True)


def _message(c: IrcConnection, m: IrcLine, notice: bool) -> None:
    """PRIVMSG and NOTICE to channels and nicks. A NOTICE is delivered as an ordinary
    message (the native side has no such thing) and never answered, errors included."""
    if not m.param(0):
        raise IrcError(irc.ERR_NORECIPIENT, text=f"No recipient given ({m.command})")
    if not m.param(1):
        raise IrcError(irc.ERR_NOTEXTTOSEND, text="No text to send")
    targets = m.params[0].split(",")
    if len(targets) > MAX_TARGETS:
        raise IrcError(irc.ERR_TOOMANYTARGETS, word(m.params[0]),
                       text=f"Too many targets (max {MAX_TARGETS})")
    for target in targets:
        try:
            _deliver(c, target, m.params[1], notice)
        except IrcError as exc:
            if not notice:
                c.reply(exc.code, *exc.params, text=exc.text)


def _deliver(c: IrcConnection, target: str, text: str, notice: bool) -> None:
    action = False
    ctcp = parse_ctcp(text)
    if ctcp is not None:
        if ctcp[0] != "ACTION":
            return  # CTCP VERSION, PING...: no hub event carries them; dropped
        action, text = True, ctcp[1]
    text = clean(text)
    if not text.strip():
        return  # empty after hygiene: ignored, as natively
    me = c.me
    if target.startswith("#"):
        actions.say(c.hub, me, c.room(target), text, action=action)
        return
    if action:
        text = f"* {me.name} {text}"  # private messages have no /me: keep it readable
    try:
        peer = actions.private_message(c.hub, me, target, text)
    except ChatError as exc:
        raise irc_error(exc) or IrcError(irc.ERR_NOSUCHNICK, word(target),
                                         text="No such nick/channel") from None
    away = peer.extra.get("away")
    if away and not notice:
        c.reply(irc.RPL_AWAY, peer.name, text=str(away))


def _join(c: IrcConnection, m: IrcLine) -> None:
    if m.params[0] == "0":
        for room in list(c.me.rooms.values()):
            _leave(c, room, "")
        return
    for name in m.params[0].split(","):
        try:
            _join_one(c, name)
        except IrcError as exc:
            c.reply(exc.code, *exc.params, text=exc.text)


def _join_one(c: IrcConnection, name: str) -> None:
    try:
        if not name.startswith("#"):
            raise ChatError("invalid_name")
        room_name = check_name(name[1:])
    except ChatError:
        raise IrcError(irc.ERR_NOSUCHCHANNEL, word(name), text="No such channel") from None
    room = actions.join(c.hub, c.me, room_name, max_rooms=MAX_CHANNELS)
    if room is not None:
        c.net.room_created(room)


def _part(c: IrcConnection, m: IrcLine) -> None:
    reason = fit_bytes(clean(m.param(1)).strip(), KICKLEN)
    for name in m.params[0].split(","):
        try:
            _leave(c, c.member_room(name), reason)
        except IrcError as exc:
            c.reply(exc.code, *exc.params, text=exc.text)


def _leave(c: IrcConnection, room: Room, reason: str) -> None:
    """Leave ``room``: the others get the PART when the room flushes, the leaver at once
    after everything said before it left."""
    actions.part(c.hub, c.me, room, reason)


def _names(c: IrcConnection, m: IrcLine) -> None:
    if not m.param(0):
        c.reply(irc.RPL_ENDOFNAMES, "*", text="End of /NAMES list")
        return
    for name in m.params[0].split(","):
        room = c.hub.find_room(name[1:]) if name.startswith("#") else None
        if room is None:
            c.reply(irc.RPL_ENDOFNAMES, word(name), text="End of /NAMES list")
        else:
            c.write_lines(c.renderer.names(c.target(), room))


def _topic(c: IrcConnection, m: IrcLine) -> None:
    room = c.room(m.params[0])
    chan = channel(room.name)
    if len(m.params) < 2:
        if room.topic:
            c.reply(irc.RPL_TOPIC, chan, text=room.topic)
        else:
            c.reply(irc.RPL_NOTOPIC, chan, text="No topic is set")
        return
    actions.set_topic(c.hub, c.me, room, fit_bytes(clean(m.params[1]).strip(), TOPICLEN))


def _kick(c: IrcConnection, m: IrcLine) -> None:
    room = c.room(m.params[0])
    actions.require_operator(c.me, room)
    reason = fit_bytes(clean(m.param(2)).strip(), KICKLEN)
    for nick in m.params[1].split(",")[:MAX_TARGETS]:
        try:
            actions.kick(c.hub, c.me, room, nick, reason)
        except ChatError as exc:
            c.chat_error(exc)


def _mode(c: IrcConnection, m: IrcLine) -> None:
    if m.params[0].startswith("#"):
        _channel_mode(c, m)
    else:
        _user_mode(c, m)


def _user_mode(c: IrcConnection, m: IrcLine) -> None:
    me = c.me
    if name_key(m.params[0]) != me.key:
        c.find_user(m.params[0])  # 401 if nobody
        raise IrcError(irc.ERR_USERSDONTMATCH, text="Can't change mode for other users")
    modes: set[str] = me.extra["modes"]  # type: ignore[assignment]
    if len(m.params) < 2:
        current = "".join(sorted(modes | ({"o"} if me.is_admin else set())))
        c.reply(irc.RPL_UMODEIS, f"+{current}")
        return
    changes = _apply_user_modes(c, me, modes, m.params[1])
    if changes:
        c.write_lines([format_line("MODE", me.name, trailing=changes, source=c.prefix())])


def _apply_user_modes(c: IrcConnection, me: IrcSession, modes: set[str], spec: str) -> str:
    """``+i`` / ``-i`` (invisible to WHO masks), ``-o`` (drop admin rights); ``+o`` only
    comes from OPER and is ignored here (RFC 2812 3.1.5). Returns the applied changes."""
    sign, done, unknown = "+", [], False
    for ch in spec:
        if ch in "+-":
            sign = ch
        elif ch == "i":
            if c.hub.set_invisible(me, modes, sign == "+"):
                done.append(sign + ch)
        elif ch == "o" and sign == "-" and me.is_admin:
            if c.hub.admins.is_admin(me.name):
                c.notice("*** You keep +o while your nick is an admin account's name")
                continue
            c.hub.set_account(me, None)
            done.append("-o")
        elif ch not in "io":
            unknown = True
    if unknown:
        c.reply(irc.ERR_UMODEUNKNOWNFLAG, text="Unknown MODE flag")
    return "".join(done)


def _channel_mode(c: IrcConnection, m: IrcLine) -> None:
    room = c.room(m.params[0])
    chan = channel(room.name)
    if len(m.params) < 2:
        c.reply(irc.RPL_CHANNELMODEIS, chan, "+t" if room.topic_locked else "+")
        c.reply(irc.RPL_CREATIONTIME, chan, str(c.net.room_created(room)))
        return
    if m.params[1].lstrip("+") == "b" and len(m.params) == 2:
        c.reply(irc.RPL_ENDOFBANLIST, chan, text="End of channel ban list")  # we have no bans
        return
    actions.require_operator(c.me, room)
    changes, args = _apply_channel_modes(c, room, m.params[1], list(m.params[2:]))
    if changes:
        actions.announce_modes(room, c.me.name, changes, tuple(args))


def _apply_channel_modes(c: IrcConnection, room: Room, spec: str,
                         params: list[str]) -> tuple[str, list[str]]:
    """``+t``/``-t`` (topic lock) and ``+o``/``-o NICK`` (room operator). Unknown letters
    get 472 each; at most MAX_MODES parameters are used."""
    sign, done, args, used = "+", "", [], 0
    last = ""
    for ch in spec:
        if ch in "+-":
            sign = ch
            continue
        if ch == "t":
            if actions.set_topic_lock(c.hub, c.me, room, sign == "+", announce=False):
                done += (sign if last != sign else "") + "t"
                last = sign
        elif ch == "o":
            if not params or used >= MAX_MODES:
                continue
            used += 1
            try:
                target = actions.set_op(c.hub, c.me, room, params.pop(0), sign == "+",
                                        announce=False)
            except ChatError as exc:
                c.chat_error(exc)
                continue
            done += (sign if last != sign else "") + "o"
            last = sign
            args.append(target.name)
        else:
            c.reply(irc.ERR_UNKNOWNMODE, word(ch), text="is unknown mode char to me")
    return done, args


def _who_line(c: IrcConnection, s: Session, chan: str, room: Room | None) -> str:
    flags = ("G" if s.extra.get("away") else "H") + ("*" if s.is_admin else "")
    if room is not None and room.is_op(s):
        flags += "@"
    user = str(s.extra.get("user") or s.name)
    realname = str(s.extra.get("realname") or s.name)
    return c.numeric(irc.RPL_WHOREPLY, chan, user, c.net.name, c.net.name, s.name, flags,
                     text=f"0 {realname}")


def _who(c: IrcConnection, m: IrcLine) -> None:
    mask = m.param(0) or "*"
    lines: list[str] = []
    if mask.startswith("#"):
        room = c.hub.find_room(mask[1:])
        if room is not None:
            chan = channel(room.name)
            lines = [_who_line(c, s, chan, room) for s in room.members.values()]
            lines += [c.numeric(irc.RPL_WHOREPLY, chan, n, c.net.name, c.net.name, n,
                                "H@" if k in room.ops else "H", text=f"0 {n}")
                      for k, n in room.remote.items() if k not in room.members]
    else:
        me = c.me
        pattern = "*" if mask == "0" else name_key(mask)
        for s in c.hub.sessions():
            if len(lines) >= MAX_WHO:
                break
            invisible = "i" in s.extra.get("modes", ()) and not (s.rooms.keys() & me.rooms)
            if s is not me and invisible:
                continue
            if fnmatch.fnmatchcase(s.key, pattern):
                lines.append(_who_line(c, s, "*", None))
    lines.append(c.numeric(irc.RPL_ENDOFWHO, word(mask), text="End of /WHO list"))
    c.write_lines(lines)


def _whois(c: IrcConnection, m: IrcLine) -> None:
    nick = m.params[-1].split(",")[0]
    try:
        s = c.find_user(nick)
    except IrcError as exc:
        c.reply(exc.code, *exc.params, text=exc.text)
        c.reply(irc.RPL_ENDOFWHOIS, word(nick), text="End of /WHOIS list")
        return
    user = str(s.extra.get("user") or s.name)
    realname = str(s.extra.get("realname") or f"{s.name} (native client)")
    lines = [c.numeric(irc.RPL_WHOISUSER, s.name, user, c.net.name, "*", text=realname)]
    if s.rooms:
        chans = [("@" if r.is_op(s) else "") + channel(r.name) for r in s.rooms.values()]
        lines.append(c.numeric(irc.RPL_WHOISCHANNELS, s.name, text=" ".join(chans)))
    node = getattr(s, "node", None)  # a user of another cluster node: which one
    lines.append(c.numeric(irc.RPL_WHOISSERVER, s.name, node or c.net.name,
                           text=f"geventchat node {node}" if node else "geventchat"))
    if s.extra.get("away"):
        lines.append(c.numeric(irc.RPL_AWAY, s.name, text=str(s.extra["away"])))
    if s.is_admin:
        lines.append(c.numeric(irc.RPL_WHOISOPERATOR, s.name, text="is an IRC operator"))
    lines.append(c.numeric(irc.RPL_ENDOFWHOIS, s.name, text="End of /WHOIS list"))
    c.write_lines(lines)


def _away(c: IrcConnection, m: IrcLine) -> None:
    text = fit_bytes(clean(m.param(0)).strip(), AWAYLEN)
    c.me.extra["away"] = text
    if text:
        c.reply(irc.RPL_NOWAWAY, text="You have been marked as being away")
    else:
        c.reply(irc.RPL_UNAWAY, text="You are no longer marked as being away")


def _list(c: IrcConnection, m: IrcLine) -> None:
    rooms = actions.list_rooms(c.hub)  # every node's, in a cluster
    if m.param(0):
        wanted = {name_key(n[1:]) for n in m.params[0].split(",") if n.startswith("#")}
        rooms = [r for r in rooms if name_key(r[0]) in wanted]
    rooms = rooms[:MAX_LIST]
    lines = [c.numeric(irc.RPL_LISTSTART, "Channel", text="Users  Name")]
    for name, count in rooms:
        room = c.hub.find_room(name)
        lines.append(c.numeric(irc.RPL_LIST, channel(name), str(count),
                               text=room.topic if room is not None else ""))
    lines.append(c.numeric(irc.RPL_LISTEND, text="End of /LIST"))
    c.write_lines(lines)


def _motd(c: IrcConnection, m: IrcLine) -> None:
    path = c.settings.motd
    try:
        text = path.read_text("utf-8", "replace") if path is not None else None
    except OSError as exc:
        log.warning("MOTD file %s unreadable: %s", path, exc)
        text = None
    if text is None:
        c.reply(irc.ERR_NOMOTD, text="MOTD File is missing")
        return
    lines = [c.numeric(irc.RPL_MOTDSTART, text=f"- {c.net.name} Message of the day - ")]
    lines += [c.numeric(irc.RPL_MOTD, text=f"- {clean(line)}") for line in text.splitlines()]
    lines.append(c.numeric(irc.RPL_ENDOFMOTD, text="End of /MOTD command."))
    c.write_lines(lines)


def _lusers(c: IrcConnection, m: IrcLine) -> None:
    """From counters the hub keeps as users come and go: O(1), so a reconnect storm of
    IRC clients (each gets LUSERS at registration) stays linear."""
    hub = c.hub
    users = len(hub.users)
    invisible = hub.invisible
    channels = hub.channels
    cluster = hub.directory.counts()  # every node's, refreshed every few seconds
    if cluster is not None:
        users, channels = max(users, cluster[0]), cluster[1]
    c.write_lines([
        c.numeric(irc.RPL_LUSERCLIENT, text=f"There are {users - invisible} users and "
                                        f"{invisible} invisible on 1 servers"),
        c.numeric(irc.RPL_LUSEROP, str(hub.opers), text="operator(s) online"),
        c.numeric(irc.RPL_LUSERCHANNELS, str(channels), text="channels formed"),
        c.numeric(irc.RPL_LUSERME, text=f"I have {users} clients and 0 servers"),
    ])


def _ison(c: IrcConnection, m: IrcLine) -> None:
    nicks = " ".join(m.params).split()
    found = [s.name for s in map(c.hub.find, nicks) if s is not None]
    c.reply(irc.RPL_ISON, text=" ".join(found))


def _userhost(c: IrcConnection, m: IrcLine) -> None:
    replies = []
    for nick in m.params[:5]:
        s = c.hub.find(nick)
        if s is not None:
            oper = "*" if s.is_admin else ""
            away = "-" if s.extra.get("away") else "+"
            user = s.extra.get("user") or s.name
            replies.append(f"{s.name}{oper}={away}{user}@{c.net.name}")
    c.reply(irc.RPL_USERHOST, text=" ".join(replies))


def _time(c: IrcConnection, m: IrcLine) -> None:
    now = datetime.now(UTC).strftime("%A %B %d %Y -- %H:%M:%S +00:00")
    c.reply(irc.RPL_TIME, c.net.name, text=now)


def _info(c: IrcConnection, m: IrcLine) -> None:
    text = [f"{VERSION}: a gevent chat server that speaks its own line protocol and IRC.",
            "IRC and native users share the same rooms, history and admin accounts.",
            "See docs/IRC.md for what is supported."]
    c.write_lines([c.numeric(irc.RPL_INFO, text=t) for t in text]
                   + [c.numeric(irc.RPL_ENDOFINFO, text="End of /INFO list")])


def _help(c: IrcConnection, m: IrcLine) -> None:
    subject = m.param(0).upper()
    if not subject:
        names = [n for n, spec in COMMANDS.items() if spec.help]
        body = [" ".join(names[i:i + 10]) for i in range(0, len(names), 10)]
        head, subject = "Commands (HELP <command> for one):", "*"
    else:
        spec = COMMANDS.get(subject)
        if spec is None or not spec.help:
            raise IrcError(irc.ERR_HELPNOTFOUND, word(subject),
                           text="No help available on this topic")
        oper = " (IRC operators only)" if spec.oper else ""
        head, body = f"{subject} {spec.usage}".strip(), [spec.help + oper]
    c.write_lines([c.numeric(irc.RPL_HELPSTART, subject, text=head),
                    *(c.numeric(irc.RPL_HELPTXT, subject, text=t) for t in body),
                    c.numeric(irc.RPL_ENDOFHELP, subject, text="End of /HELP")])


def _version(c: IrcConnection, m: IrcLine) -> None:
    c.reply(irc.RPL_VERSION, VERSION + ".", c.net.name, text="geventchat IRC")
    c.write_lines(c.isupport_lines())


def _oper(c: IrcConnection, m: IrcLine) -> None:
    """Admin login against the admin accounts. Failures are rate-limited per IP across
    connections, like native admin logins; the password is never logged."""
    try:
        name = check_name(m.params[0])
    except ChatError:
        name = m.params[0][:64]  # still counted as a failure: verify knows no such admin
    try:
        ok = c.ctx.admission.admin_login(c.addr_ip, name, m.params[1])  # blocks this greenlet
    except ChatError:
        raise IrcError(irc.ERR_PASSWDMISMATCH,
                       text="Too many failed attempts; try again later") from None
    me = c.session
    if me is None or c.closing is not None or c.hub.users.get(me.key) is not me:
        return  # went away while the hash was computed
    if not ok:
        log.warning("failed OPER for %s from %s", word(m.params[0]), c.addr)
        raise IrcError(irc.ERR_PASSWDMISMATCH, text="Password incorrect")
    c.reply(irc.RPL_YOUREOPER, text="You are now an IRC operator")
    c.write_lines([format_line("MODE", me.name, trailing="+o", source=c.net.name)])
    actions.become_admin(c.hub, me, name)  # admins are operators everywhere: shows the @


def _kill(c: IrcConnection, m: IrcLine) -> None:
    target = c.find_user(m.params[0])
    me = c.me
    reason = fit_bytes(clean(" ".join(m.params[1:])).strip(), KICKLEN)
    shared = bool(target.rooms.keys() & me.rooms.keys()) and target is not me
    actions.kill(c.hub, me, target.name, reason)
    if not shared and target is not me:
        c.notice(f"*** Killed {target.name}" + (f": {reason}" if reason else ""))


def _die(c: IrcConnection, m: IrcLine) -> None:
    # irssi sends "/die irc maintenance" as DIE irc maintenance, without a colon.
    reason = clean(" ".join(m.params)).strip()
    actions.shutdown(c.hub, c.me, reason)


def _clear(c: IrcConnection, m: IrcLine) -> None:
    room = c.room(m.params[0])
    actions.clear(c.hub, c.me, room)
    if room.key not in c.me.rooms:
        c.notice(f"*** History of {channel(room.name)} cleared")


def _tagmsg(c: IrcConnection, m: IrcLine) -> None:
    """Tag-only messages (typing notifications): no hub event carries them; dropped."""


COMMANDS: Final[dict[str, Cmd]] = {
    "CAP": Cmd(_cap, 1, registered=False, usage="LS|LIST|REQ|END",
               help="capability negotiation: " + ", ".join(CAPS)),
    "PASS": Cmd(_pass, 1, registered=False, usage="<password>",
                help="the server password, before NICK and USER"),
    "NICK": Cmd(_nick, 0, registered=False, usage="<nick>", help="choose or change your nick"),
    "USER": Cmd(_user, 4, registered=False, usage="<user> 0 * :<realname>",
                help="registration: your user name and real name"),
    "PING": Cmd(_ping, 0, registered=False, keepalive=True, usage="<token>",
                help="the server answers PONG"),
    "PONG": Cmd(_pong, 0, registered=False, keepalive=True, usage="<token>",
                help="answer to the server's keepalive PING"),
    "QUIT": Cmd(_quit, 0, registered=False, usage="[:<reason>]", help="leave the server"),
    "PRIVMSG": Cmd(_privmsg, 0, usage="<#chan|nick>[,...] :<text>",
                   help="message a channel or a user; CTCP ACTION is /me"),
    "NOTICE": Cmd(_notice, 0, usage="<#chan|nick>[,...] :<text>",
                  help="delivered as an ordinary message; never answered"),
    "JOIN": Cmd(_join, 1, usage="<#chan>[,...] | 0",
                help="join channels (created on first join; the creator is operator); "
                     "0 parts all"),
    "PART": Cmd(_part, 1, usage="<#chan>[,...] [:<reason>]", help="leave channels"),
    "NAMES": Cmd(_names, 0, usage="<#chan>[,...]", help="who is in a channel"),
    "TOPIC": Cmd(_topic, 1, usage="<#chan> [:<topic>]",
                 help="show or set (operators, when +t) a channel's topic"),
    "KICK": Cmd(_kick, 2, usage="<#chan> <nick>[,...] [:<reason>]",
                help="remove a user from a channel (channel operators)"),
    "MODE": Cmd(_mode, 1, usage="<#chan|nick> [modes [args]]",
                help="channel modes +t, +o NICK; user modes +i, -o"),
    "WHO": Cmd(_who, 0, usage="<#chan|mask>", help="list users"),
    "WHOIS": Cmd(_whois, 1, usage="<nick>", help="about a user"),
    "AWAY": Cmd(_away, 0, usage="[:<message>]", help="set or clear your away message"),
    "LIST": Cmd(_list, 0, usage="[<#chan>[,...]]", help="list channels"),
    "MOTD": Cmd(_motd, 0, help="the message of the day"),
    "LUSERS": Cmd(_lusers, 0, help="user and channel counts"),
    "ISON": Cmd(_ison, 1, usage="<nick> ...", help="which of these nicks are online"),
    "USERHOST": Cmd(_userhost, 1, usage="<nick> ...", help="user@host of up to 5 nicks"),
    "TIME": Cmd(_time, 0, help="the server's time"),
    "INFO": Cmd(_info, 0, help="about this server"),
    "HELP": Cmd(_help, 0, usage="[<command>]", help="this help"),
    "VERSION": Cmd(_version, 0, help="server version and ISUPPORT"),
    "OPER": Cmd(_oper, 2, usage="<admin> <password>",
                help="log in as an admin account: operator everywhere, KILL, DIE, CLEAR"),
    "KILL": Cmd(_kill, 1, oper=True, usage="<nick> [:<reason>]",
                help="disconnect a user (the native /kick)"),
    "DIE": Cmd(_die, 0, oper=True, usage="[:<reason>]",
               help="shut the server down (the native /shutdown)"),
    "CLEAR": Cmd(_clear, 1, oper=True, usage="<#chan>",
                 help="empty a channel's history (the native /clear)"),
    "TAGMSG": Cmd(_tagmsg, 1),
}
