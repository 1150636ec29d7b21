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
from typing import TYPE_CHECKING, Final

import gevent

from geventchat import __version__
from geventchat.core import events as ev
from geventchat.core.errors import ChatError
from geventchat.core.flood import FloodGate
from geventchat.core.hub import Room, Session
from geventchat.core.text import check_name, clean, name_key
from geventchat.edges.outbuf import Output
from geventchat.server import read_lines, throttle, wake_reader
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
from geventchat.wire.native_commands import kill

if TYPE_CHECKING:
    from geventchat.server import ChatServer

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


def network_for(server: ChatServer) -> IrcNetwork:
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


def _is_irc(session: Session) -> bool:
    return isinstance(session, IrcSession)


# --- the connection --------------------------------------------------------------------------


class IrcConnection:
    """One IRC client: registration (PASS, CAP, NICK, USER), commands, keepalive, close."""

    def __init__(self, server: ChatServer, sock: socket.socket, addr: tuple, out: Output,
                 decoder: LineDecoder, flood: FloodGate) -> None:
        self.server = server
        self.hub = server.hub
        self.settings = server.settings
        self.sock = sock
        self.addr_ip = addr[0]
        self.addr = f"{addr[0]}:{addr[1]}"
        self.out = out
        out.on_dead = self._output_dead  # it was the native connection's until now
        self.decoder = IrcDecoder(decoder)
        self.flood = flood
        self.net = network_for(server)
        self.renderer = self.net.renderer(frozenset())
        self.session: IrcSession | None = None
        self.nick: str | None = None  # requested before registration
        self.user: str | None = None
        self.realname = ""
        self.caps: set[str] = set()
        self._negotiating = False  # CAP LS/REQ seen: registration waits for CAP END
        self._password_ok = server.password_digest is None
        self._closing: str | None = None
        self._error_sent = False
        self._mask: str | None = None
        self._reader = gevent.getcurrent()
        self.created = self.last_active = self.last_command = time.monotonic()
        self._ping_sent: float | None = None

    # --- life cycle --------------------------------------------------------------------

    def run(self, first_lines: list[str | LineTooLong]) -> None:
        """Handler body: the lines the native side already read, then the socket, then
        leave and drain. A bug costs this connection only."""
        self._reader = gevent.getcurrent()
        try:
            self._handle(IrcDecoder.accept_all(first_lines))
            self._read_loop()
        except Exception:
            log.exception("IRC connection %s failed", self.addr)
        finally:
            self._finish()

    def _read_loop(self) -> None:
        read_lines(self.sock, self.decoder, self._handle, self._is_open, self._heard)

    def _is_open(self) -> bool:
        return self._closing is None

    def _heard(self) -> None:
        self.last_active = time.monotonic()
        self._ping_sent = None  # anything at all proves the peer alive

    def _handle(self, messages: list[IrcLine | LineTooLong]) -> None:
        for msg in messages:
            if self._closing is not None:
                return
            if self.flood.enabled and not self._throttle():
                return
            if msg is TOO_LONG:
                self._reply(irc.ERR_INPUTTOOLONG, text="Input line was too long")
                continue
            self._dispatch(msg)

    def _throttle(self) -> bool:
        """The native flood rules, IRC words: slowed, told once, then dropped."""
        return throttle(self.flood, self._slow_down, self._flooded, self._is_open)

    def _slow_down(self) -> None:
        self._notice(f"*** Slow down: at most {self.flood.rate:g} lines/s after a burst "
                     f"of {self.flood.burst}")

    def _flooded(self) -> None:
        log.warning("%s (%s) disconnected for flooding", self._target(), self.addr)
        self.close("Excess Flood")

    def close(self, reason: str, error: str | None = None) -> None:
        """End this connection from any greenlet, after the ``ERROR`` line and whatever
        was queued before it are written. ``reason`` is also the QUIT others see."""
        if self._closing is not None:
            return
        self._closing = reason
        if not self._error_sent:
            self._error_sent = True
            self._write_lines([format_line("ERROR",
                                           trailing=f"Closing link: ({error or reason})")])
        if gevent.getcurrent() is not self._reader:
            try:
                wake_reader(self.sock)
            except OSError:
                pass

    def _finish(self) -> None:
        session = self.session
        if session is not None:
            # QUIT and KILL have already unregistered it with their own event.
            quit_ = None if self.hub.stopping else ev.Quit(session.name, self._closing or "")
            self.hub.unregister(session, quit_)
            if self._mask is not None:
                # A loop pass later: lines queued before the quit still show the mask.
                gevent.get_hub().loop.run_callback(self.net.masks.remove, session.name,
                                                   self._mask)
        if not self.out.closed:
            self.out.drain(DRAIN_TIMEOUT)
        self.out.close()
        log.debug("IRC connection %s closed (%s)", self.addr, self._closing or "eof")

    def _output_dead(self, reason: str) -> None:
        """As natively: a full sendq is our decision and worth a warning; a peer that
        vanished mid-write is an ordinary disconnect."""
        if reason.startswith("sendq"):
            log.warning("%s (%s): %s; disconnecting", self._target(), self.addr, reason)
            self.close("SendQ exceeded")
        else:
            log.debug("%s (%s): %s", self._target(), self.addr, reason)
            self.close("")

    def expire(self, now: float) -> None:
        """Sweeper: registration timeout, idle timeout, and the keepalive PING."""
        if self._closing is not None:
            return
        settings = self.settings
        if self.session is None:
            if now - self.created > settings.register_timeout:
                self.close("Registration timeout")
            return
        if settings.idle_timeout and now - self.last_command > settings.idle_timeout:
            self.close("Idle timeout", f"Idle for {settings.idle_timeout:g} s")
        elif self._ping_sent is None:
            if now - self.last_active >= PING_AFTER:
                self._ping_sent = now
                self._write_lines([format_line("PING", trailing=self.net.name)])
        elif now - self._ping_sent >= PING_TIMEOUT:
            self.close("Ping timeout")

    # --- output ------------------------------------------------------------------------

    def send(self, event: ev.Event) -> None:
        """One event for this client only (the server's shutdown notice, a private
        message, a kick), after the broadcasts its rooms queued before it."""
        nick = self._target()
        if isinstance(event, ev.Shutdown) or (isinstance(event, ev.Killed)
                                              and event.name == nick):
            self._error_sent = True  # the rendering ends with ERROR
        self._write(self.renderer.render_to(nick, event))

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self.session is not None:
            self.session.send_raw(data)  # flushes its rooms first: replies never overtake
        else:
            self.out.write(data)

    def _write_lines(self, lines: list[str]) -> None:
        self._write("".join(f"{line}\r\n" for line in lines).encode())

    def _target(self) -> str:
        """The client's nick in replies: ``*`` until registered."""
        return self.session.name if self.session is not None else "*"

    def numeric(self, code: str, *params: str, text: str | None = None) -> str:
        return self.renderer.numeric(code, self._target(), *params, trailing=text)

    def _reply(self, code: str, *params: str, text: str | None = None) -> None:
        self._write_lines([self.numeric(code, *params, text=text)])

    def _notice(self, text: str) -> None:
        self._write_lines([format_line("NOTICE", self._target(), trailing=text,
                                       source=self.net.name)])

    def prefix(self) -> str:
        return self.net.masks.prefix(self._target())

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
                self._reply(exc.code, *exc.params, text=exc.text)
        except ChatError as exc:  # from the hub: the name went meanwhile, and the like
            if msg.command != "NOTICE":
                self._notice(exc.text)

    # --- registration ------------------------------------------------------------------

    def try_register(self) -> None:
        """Complete registration once NICK, USER and (if begun) CAP negotiation are done."""
        if (self.session is not None or self._negotiating or self.nick is None
                or self.user is None or self._closing is not None):
            return
        if not self._password_ok:
            self._reply(irc.ERR_PASSWDMISMATCH, text="Password incorrect")
            log.warning("wrong server password from %s (IRC)", self.addr)
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
            self.hub.register(session, join_lobby=False)  # re-checks the name
        except ChatError:
            self._reply(irc.ERR_NICKNAMEINUSE, self.nick, text="Nickname is already in use")
            self.nick = None
            return
        self.session, self.renderer = session, renderer
        self._mask = self.net.masks.add(session.name, self.user, self.net.name)
        self._welcome()

    def _welcome(self) -> None:
        me = self._target()
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
        self._write_lines(lines)
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
        target = self.hub.find(nick)
        if target is None:
            raise IrcError(irc.ERR_NOSUCHNICK, word(nick), text="No such nick/channel")
        return target

    def announce_mode(self, room: Room, change: str, text: str) -> None:
        """A mode change is no hub event: IRC members get the MODE line, native members a
        notice saying the same, each after what the room already queued."""
        data = (change + "\r\n").encode()
        for member in list(room.members.values()):
            if _is_irc(member):
                member.send_raw(data)
            else:
                member.send(ev.Notice(text))


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
    if c.server.password_digest is not None:
        c._password_ok = c.server.check_server_password(m.params[0])


def _cap(c: IrcConnection, m: IrcLine) -> None:
    sub = m.params[0].upper()
    if sub == "LS":
        c._negotiating = c.session is None
        c._write_lines([format_line("CAP", c._target(), "LS", trailing=" ".join(CAPS),
                                    source=c.net.name)])
    elif sub == "LIST":
        c._write_lines([format_line("CAP", c._target(), "LIST",
                                    trailing=" ".join(sorted(c.caps)), source=c.net.name)])
    elif sub == "REQ":
        c._negotiating = c.session is None
        _cap_req(c, m.param(1))
    elif sub == "END":
        c._negotiating = False
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
    c._write_lines([format_line("CAP", c._target(), "ACK" if ok else "NAK",
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
    account = me.account if me is not None else None
    if c.hub.admins.is_admin(new) and name_key(new) != account:
        raise IrcError(irc.ERR_ERRONEUSNICKNAME, new,
                       text="Reserved for an admin account; use OPER")
    try:
        c.hub.check_free(new, me=me)
    except ChatError:
        raise IrcError(irc.ERR_NICKNAMEINUSE, new, text="Nickname is already in use") from None
    if me is None:
        c.nick = new
        c.try_register()
    elif new != me.name:
        old = me.name
        c.hub.rename(me, new)  # renders NICK for everyone, self included, with the old mask
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
    c._write_lines([format_line("PONG", c.net.name, trailing=m.params[0], source=c.net.name)])


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
                c._reply(exc.code, *exc.params, text=exc.text)


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
        room = c.room(target)
        if room.key not in me.rooms:
            raise IrcError(irc.ERR_CANNOTSENDTOCHAN, channel(room.name),
                           text="Cannot send to channel")
        room.say(ev.Action(me.name, text, room.name) if action
                 else ev.Message(me.name, text, room.name))
        return
    peer = c.find_user(target)
    if action:
        text = f"* {me.name} {text}"  # private messages have no /me: keep it readable
    event = ev.PrivateMessage(me.name, peer.name, text)
    peer.send(event)
    if peer is not me:
        me.send(event)  # an echo only with echo-message (render_to drops it otherwise)
    away = peer.extra.get("away")
    if away and not notice:
        c._reply(irc.RPL_AWAY, peer.name, text=str(away))


def _join(c: IrcConnection, m: IrcLine) -> None:
    if m.params[0] == "0":
        for room in list(c.me.rooms.values()):
            _leave(c, room, "")
        return
    for name in m.params[0].split(","):
        try:
            _join_one(c, name)
        except IrcError as exc:
            c._reply(exc.code, *exc.params, text=exc.text)


def _join_one(c: IrcConnection, name: str) -> None:
    try:
        if not name.startswith("#"):
            raise ChatError("invalid_name")
        room_name = check_name(name[1:])
    except ChatError:
        raise IrcError(irc.ERR_NOSUCHCHANNEL, word(name), text="No such channel") from None
    me = c.me
    room = c.hub.find_room(room_name)
    if room is not None and room.key in me.rooms:
        return
    if len(me.rooms) >= MAX_CHANNELS:
        raise IrcError(irc.ERR_TOOMANYCHANNELS, word(name),
                       text="You have joined too many channels")
    room = room or c.hub.room(room_name)
    c.net.room_created(room)
    c.hub.join(me, room)


def _part(c: IrcConnection, m: IrcLine) -> None:
    reason = fit_bytes(clean(m.param(1)).strip(), KICKLEN)
    for name in m.params[0].split(","):
        try:
            _leave(c, c.member_room(name), reason)
        except IrcError as exc:
            c._reply(exc.code, *exc.params, text=exc.text)


def _leave(c: IrcConnection, room: Room, reason: str) -> None:
    """Leave ``room``: the others get the PART when the room flushes, the leaver at once
    after everything said before it left."""
    me = c.me
    event = ev.Left(me.name, reason, room.name)
    c.hub.part(me, room, event)
    me.send(event)


def _names(c: IrcConnection, m: IrcLine) -> None:
    if not m.param(0):
        c._reply(irc.RPL_ENDOFNAMES, "*", text="End of /NAMES list")
        return
    for name in m.params[0].split(","):
        room = c.hub.find_room(name[1:]) if name.startswith("#") else None
        if room is None:
            c._reply(irc.RPL_ENDOFNAMES, word(name), text="End of /NAMES list")
        else:
            c._write_lines(c.renderer.names(c._target(), room))


def _topic(c: IrcConnection, m: IrcLine) -> None:
    room = c.room(m.params[0])
    chan = channel(room.name)
    if len(m.params) < 2:
        if room.topic:
            c._reply(irc.RPL_TOPIC, chan, text=room.topic)
        else:
            c._reply(irc.RPL_NOTOPIC, chan, text="No topic is set")
        return
    me = c.me
    if room.key not in me.rooms and not me.is_admin:
        raise IrcError(irc.ERR_NOTONCHANNEL, chan, text="You're not on that channel")
    if room.topic_locked and not room.is_op(me):
        raise IrcError(irc.ERR_CHANOPRIVSNEEDED, chan, text="You're not channel operator")
    room.set_topic(me.name, fit_bytes(clean(m.params[1]).strip(), TOPICLEN))


def _require_op(c: IrcConnection, room: Room) -> None:
    me = c.me
    chan = channel(room.name)
    if room.key not in me.rooms and not me.is_admin:
        raise IrcError(irc.ERR_NOTONCHANNEL, chan, text="You're not on that channel")
    if not room.is_op(me):
        raise IrcError(irc.ERR_CHANOPRIVSNEEDED, chan, text="You're not channel operator")


def _kick(c: IrcConnection, m: IrcLine) -> None:
    room = c.room(m.params[0])
    _require_op(c, room)
    reason = fit_bytes(clean(m.param(2)).strip(), KICKLEN)
    for nick in m.params[1].split(",")[:MAX_TARGETS]:
        try:
            _kick_one(c, room, nick, reason)
        except IrcError as exc:
            c._reply(exc.code, *exc.params, text=exc.text)


def _kick_one(c: IrcConnection, room: Room, nick: str, reason: str) -> None:
    target = c.find_user(nick)
    if room.key not in target.rooms:
        raise IrcError(irc.ERR_USERNOTINCHANNEL, target.name, channel(room.name),
                       text="They aren't on that channel")
    event = ev.Kicked(target.name, c.me.name, reason, room.name)
    target.send(event)
    c.hub.part(target, room, event)
    if not _is_irc(target) and not target.rooms:
        c.hub.join(target, c.hub.lobby)  # a native user is always in some room


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
        c._reply(irc.RPL_UMODEIS, f"+{current}")
        return
    changes = _apply_user_modes(c, me, modes, m.params[1])
    if changes:
        c._write_lines([format_line("MODE", me.name, trailing=changes, source=c.prefix())])


def _apply_user_modes(c: IrcConnection, me: IrcSession, modes: set[str], spec: str) -> str:
    """``+i`` / ``-i`` (invisible to WHO masks), ``-o`` (drop admin rights); ``+o`` only
    comes from OPER and is ignored here (RFC 2812 3.1.5). Returns the applied changes."""
    sign, done, unknown = "+", [], False
    for ch in spec:
        if ch in "+-":
            sign = ch
        elif ch == "i" and (ch in modes) != (sign == "+"):
            modes.symmetric_difference_update("i")
            done.append(sign + ch)
        elif ch == "o" and sign == "-" and me.is_admin:
            if c.hub.admins.is_admin(me.name):
                c._notice("*** You keep +o while your nick is an admin account's name")
                continue
            me.account = None
            done.append("-o")
        elif ch not in "io":
            unknown = True
    if unknown:
        c._reply(irc.ERR_UMODEUNKNOWNFLAG, text="Unknown MODE flag")
    return "".join(done)


def _channel_mode(c: IrcConnection, m: IrcLine) -> None:
    room = c.room(m.params[0])
    chan = channel(room.name)
    if len(m.params) < 2:
        c._reply(irc.RPL_CHANNELMODEIS, chan, "+t" if room.topic_locked else "+")
        c._reply(irc.RPL_CREATIONTIME, chan, str(c.net.room_created(room)))
        return
    if m.params[1].lstrip("+") == "b" and len(m.params) == 2:
        c._reply(irc.RPL_ENDOFBANLIST, chan, text="End of channel ban list")  # we have no bans
        return
    _require_op(c, room)
    changes, args = _apply_channel_modes(c, room, m.params[1], list(m.params[2:]))
    if changes:
        line = format_line("MODE", chan, changes, *args, source=c.prefix())
        what = " ".join([changes, *args])
        c.announce_mode(room, line, f"{c.me.name} set mode {what} on {room.name}")


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
            if room.topic_locked != (sign == "+"):
                room.topic_locked = sign == "+"
                done += (sign if last != sign else "") + "t"
                last = sign
        elif ch == "o":
            if not params or used >= MAX_MODES:
                continue
            used += 1
            nick = _set_op(c, room, params.pop(0), sign == "+")
            if nick:
                done += (sign if last != sign else "") + "o"
                last = sign
                args.append(nick)
        else:
            c._reply(irc.ERR_UNKNOWNMODE, word(ch), text="is unknown mode char to me")
    return done, args


def _set_op(c: IrcConnection, room: Room, nick: str, give: bool) -> str | None:
    """Give or take operator status; the target's name, or None (reported) if impossible."""
    try:
        target = c.find_user(nick)
        if room.key not in target.rooms:
            raise IrcError(irc.ERR_USERNOTINCHANNEL, target.name, channel(room.name),
                           text="They aren't on that channel")
    except IrcError as exc:
        c._reply(exc.code, *exc.params, text=exc.text)
        return None
    if give:
        room.ops.add(target.key)
    else:
        room.ops.discard(target.key)
    return target.name


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
    c._write_lines(lines)


def _whois(c: IrcConnection, m: IrcLine) -> None:
    nick = m.params[-1].split(",")[0]
    try:
        s = c.find_user(nick)
    except IrcError as exc:
        c._reply(exc.code, *exc.params, text=exc.text)
        c._reply(irc.RPL_ENDOFWHOIS, word(nick), text="End of /WHOIS list")
        return
    user = str(s.extra.get("user") or s.name)
    realname = str(s.extra.get("realname") or f"{s.name} (native client)")
    lines = [c.numeric(irc.RPL_WHOISUSER, s.name, user, c.net.name, "*", text=realname)]
    if s.rooms:
        chans = [("@" if r.is_op(s) else "") + channel(r.name) for r in s.rooms.values()]
        lines.append(c.numeric(irc.RPL_WHOISCHANNELS, s.name, text=" ".join(chans)))
    lines.append(c.numeric(irc.RPL_WHOISSERVER, s.name, c.net.name, text="geventchat"))
    if s.extra.get("away"):
        lines.append(c.numeric(irc.RPL_AWAY, s.name, text=str(s.extra["away"])))
    if s.is_admin:
        lines.append(c.numeric(irc.RPL_WHOISOPERATOR, s.name, text="is an IRC operator"))
    lines.append(c.numeric(irc.RPL_ENDOFWHOIS, s.name, text="End of /WHOIS list"))
    c._write_lines(lines)


def _away(c: IrcConnection, m: IrcLine) -> None:
    text = fit_bytes(clean(m.param(0)).strip(), AWAYLEN)
    c.me.extra["away"] = text
    if text:
        c._reply(irc.RPL_NOWAWAY, text="You have been marked as being away")
    else:
        c._reply(irc.RPL_UNAWAY, text="You are no longer marked as being away")


def _list(c: IrcConnection, m: IrcLine) -> None:
    rooms = c.hub.active_rooms()
    if m.param(0):
        wanted = {name_key(n[1:]) for n in m.params[0].split(",") if n.startswith("#")}
        rooms = [r for r in rooms if r.key in wanted]
    rooms = rooms[:MAX_LIST]
    lines = [c.numeric(irc.RPL_LISTSTART, "Channel", text="Users  Name")]
    lines += [c.numeric(irc.RPL_LIST, channel(r.name), str(len(r.members)), text=r.topic)
              for r in rooms]
    lines.append(c.numeric(irc.RPL_LISTEND, text="End of /LIST"))
    c._write_lines(lines)


def _motd(c: IrcConnection, m: IrcLine) -> None:
    path = c.settings.motd
    try:
        text = path.read_text("utf-8", "replace") if path is not None else None
    except OSError as exc:
        log.warning("MOTD file %s unreadable: %s", path, exc)
        text = None
    if text is None:
        c._reply(irc.ERR_NOMOTD, text="MOTD File is missing")
        return
    lines = [c.numeric(irc.RPL_MOTDSTART, text=f"- {c.net.name} Message of the day - ")]
    lines += [c.numeric(irc.RPL_MOTD, text=f"- {clean(line)}") for line in text.splitlines()]
    lines.append(c.numeric(irc.RPL_ENDOFMOTD, text="End of /MOTD command."))
    c._write_lines(lines)


def _lusers(c: IrcConnection, m: IrcLine) -> None:
    users = c.hub.sessions()
    invisible = sum(1 for s in users if "i" in s.extra.get("modes", ()))
    opers = sum(1 for s in users if s.is_admin)
    channels = sum(1 for r in c.hub.rooms.values() if r.members)
    c._write_lines([
        c.numeric(irc.RPL_LUSERCLIENT, text=f"There are {len(users) - invisible} users and "
                                        f"{invisible} invisible on 1 servers"),
        c.numeric(irc.RPL_LUSEROP, str(opers), text="operator(s) online"),
        c.numeric(irc.RPL_LUSERCHANNELS, str(channels), text="channels formed"),
        c.numeric(irc.RPL_LUSERME, text=f"I have {len(users)} clients and 0 servers"),
    ])


def _ison(c: IrcConnection, m: IrcLine) -> None:
    nicks = " ".join(m.params).split()
    found = [s.name for s in map(c.hub.find, nicks) if s is not None]
    c._reply(irc.RPL_ISON, text=" ".join(found))


def _userhost(c: IrcConnection, m: IrcLine) -> None:
    replies = []
    for nick in m.params[:5]:
        s = c.hub.find(nick)
        if s is not None:
            oper = "*" if s.is_admin else ""
            away = "-" if s.extra.get("away") else "+"
            user = s.extra.get("user") or s.name
            replies.append(f"{s.name}{oper}={away}{user}@{c.net.name}")
    c._reply(irc.RPL_USERHOST, text=" ".join(replies))


def _time(c: IrcConnection, m: IrcLine) -> None:
    now = datetime.now(UTC).strftime("%A %B %d %Y -- %H:%M:%S +00:00")
    c._reply(irc.RPL_TIME, c.net.name, text=now)


def _info(c: IrcConnection, m: IrcLine) -> None:
    text = [f"{VERSION}: a gevent chat server that speaks its own line protocol and IRC.",
            "IRC and native users share the same rooms, history and admin accounts.",
            "See docs/IRC.md for what is supported."]
    c._write_lines([c.numeric(irc.RPL_INFO, text=t) for t in text]
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
    c._write_lines([c.numeric(irc.RPL_HELPSTART, subject, text=head),
                    *(c.numeric(irc.RPL_HELPTXT, subject, text=t) for t in body),
                    c.numeric(irc.RPL_ENDOFHELP, subject, text="End of /HELP")])


def _version(c: IrcConnection, m: IrcLine) -> None:
    c._reply(irc.RPL_VERSION, VERSION + ".", c.net.name, text="geventchat IRC")
    c._write_lines(c.isupport_lines())


def _oper(c: IrcConnection, m: IrcLine) -> None:
    """Admin login against the admin accounts. Failures are rate-limited per IP across
    connections, like native admin logins; the password is never logged."""
    if not c.server.login_allowed(c.addr_ip):
        raise IrcError(irc.ERR_PASSWDMISMATCH, text="Too many failed attempts; try again later")
    try:
        name = check_name(m.params[0])
    except ChatError:
        name = None
    # Counted before the slow check so concurrent attempts can't slip under the limit.
    c.server.login_failed(c.addr_ip)
    ok = name is not None and c.hub.admins.verify(name, m.params[1])  # blocks this greenlet
    if ok:
        c.server.login_succeeded(c.addr_ip)
    me = c.session
    if me is None or c._closing is not None or c.hub.users.get(me.key) is not me:
        return  # went away while the hash was computed
    if not ok:
        log.warning("failed OPER for %s from %s", word(m.params[0]), c.addr)
        raise IrcError(irc.ERR_PASSWDMISMATCH, text="Password incorrect")
    me.account = name_key(name)
    log.info("%s is an operator (admin %s) from %s", me.name, name, c.addr)
    c._reply(irc.RPL_YOUREOPER, text="You are now an IRC operator")
    c._write_lines([format_line("MODE", me.name, trailing="+o", source=c.net.name)])
    for room in list(me.rooms.values()):  # admins are operators everywhere: show the @
        line = format_line("MODE", channel(room.name), "+o", me.name, source=c.net.name)
        c.announce_mode(room, line, f"{me.name} is now an admin")


def _kill(c: IrcConnection, m: IrcLine) -> None:
    target = c.find_user(m.params[0])
    me = c.me
    reason = fit_bytes(clean(m.param(1)).strip(), KICKLEN)
    shared = bool(target.rooms.keys() & me.rooms.keys()) and target is not me
    kill(c.hub, target, me.name, reason)
    if not shared and target is not me:
        c._notice(f"*** Killed {target.name}" + (f": {reason}" if reason else ""))


def _die(c: IrcConnection, m: IrcLine) -> None:
    reason = clean(m.param(0)).strip()
    log.info("DIE from %s", c.me.name)
    c.hub.request_shutdown(reason or f"by {c.me.name}")


def _clear(c: IrcConnection, m: IrcLine) -> None:
    room = c.room(m.params[0])
    room.clear(c.me.name)
    if room.key not in c.me.rooms:
        c._notice(f"*** History of {channel(room.name)} cleared")


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
