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

import base64
import fnmatch
import logging
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import gevent

from geventchat import __version__
from geventchat.core import actions, modes
from geventchat.core import events as ev
from geventchat.core.errors import ChatError
from geventchat.core.hub import Room, Session
from geventchat.core.text import (
    check_name,
    clean,
    clean_keeping_format,
    name_key,
    strip_formatting,
)
from geventchat.edges.base import ClientConnection, EdgeContext
from geventchat.edges.outbuf import Output
from geventchat.wire import irc
from geventchat.wire.irc import (
    Hostmasks,
    InvalidUtf8,
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
#: Most lines one CHATHISTORY request returns (ISUPPORT ``CHATHISTORY``); a larger (or 0)
#: limit is cut to it. The replay a newcomer gets from memory is as long (``--replay``).
CHATHISTORY_MAX = 100

#: Capabilities offered to ``CAP LS``. ``message-tags`` lets clients send tags (we accept
#: and ignore client-only tags and TAGMSG) and gives stored lines their ``msgid``;
#: ``batch`` wraps history replays; ``draft/chathistory`` replaces the replay on join by
#: CHATHISTORY requests; ``sasl`` (``PLAIN``) logs admins in before registration.
CAPS: Final = ("batch", "draft/chathistory", "echo-message", "message-tags",
               "multi-prefix", "sasl", "server-time", "userhost-in-names")
#: The ones that change how events are rendered: fixed once registered (see _cap_req).
RENDER_CAPS: Final = frozenset({"batch", "draft/chathistory", "echo-message",
                                "message-tags", "multi-prefix", "server-time",
                                "userhost-in-names"})
#: Values shown to ``CAP LS 302`` clients.
CAP_VALUES: Final = {"sasl": "PLAIN"}

VERSION: Final = f"geventchat-{__version__}"
USER_MODES: Final = "io"
CHANNEL_MODES: Final = modes.ALL
CHANNEL_PARAM_MODES: Final = "beIklov"
#: Longest SASL exchange (base64, in 400-byte AUTHENTICATE chunks) we accept.
SASL_MAX: Final = 1600


def _isupport(network: str) -> list[str]:
    """The 005 tokens, honest: only limits we enforce and modes we implement.

    CASEMAPPING: our identity (``text.name_key``) is NFKC, full Unicode case folding and
    look-alike letters mapped to Latin. ``rfc8265`` (PRECIS UsernameCaseMapped, which
    obsoletes ``rfc7613``) is the closest registered token; it folds less, so a client may
    think a nick free that the server refuses (433), never the reverse. See docs/IRC.md."""
    return [
        f"AWAYLEN={AWAYLEN}", "CASEMAPPING=rfc8265", f"CHANLIMIT=#:{MAX_CHANNELS}",
        f"CHANMODES={modes.CHANMODES}", "CHANNELLEN=33", "CHANTYPES=#", "ELIST=U",
        "EXCEPTS=e", "INVEX=I", f"KEYLEN={modes.KEYLEN}", f"KICKLEN={KICKLEN}",
        "LINELEN=512", f"MAXLIST=beI:{modes.MAX_LIST}", f"MODES={MAX_MODES}",
        f"NETWORK={network}", "NICKLEN=32", "PREFIX=(ov)@+", "SAFELIST",
        f"TARGMAX=JOIN:,KICK:{MAX_TARGETS},NAMES:,NOTICE:{MAX_TARGETS},PART:,"
        f"PRIVMSG:{MAX_TARGETS},WHO:,WHOIS:1",
        f"TOPICLEN={TOPICLEN}", f"USERLEN={USERLEN}", "UTF8ONLY", "WHOX",
        f"CHATHISTORY={CHATHISTORY_MAX}", "MSGREFTYPES=msgid,timestamp",
    ]


# --- per-server IRC state --------------------------------------------------------------------


class IrcNetwork:
    """What all IRC connections of one server share: the hostmask registry, the cached
    renderers (one per capability combination, so rooms group IRC members by them) and the
    start time (003)."""

    def __init__(self, server_name: str) -> None:
        self.name = word(server_name, 63).replace("!", "-").replace("@", "-")
        self.masks = Hostmasks(self.name)
        self.started = datetime.now(UTC)
        self._renderers: dict[frozenset[str], IrcRenderer] = {}
        self._motd: tuple[str, ...] | None = None
        self._motd_read = False

    def motd(self, path: Path | None) -> tuple[str, ...] | None:
        """The message of the day's lines (cleaned), read once and kept: not a file read
        on the loop at every registration. :meth:`reload_motd` (SIGHUP) reads it again."""
        if not self._motd_read:
            self._motd_read = True
            self._motd = _read_motd(path)
        return self._motd

    def reload_motd(self) -> None:
        self._motd_read = False

    def renderer(self, caps: frozenset[str] | set[str]) -> IrcRenderer:
        key = frozenset(caps) & RENDER_CAPS
        r = self._renderers.get(key)
        if r is None:
            r = self._renderers[key] = IrcRenderer(
                self.name, self.masks, server_time="server-time" in key,
                echo="echo-message" in key, batch="batch" in key,
                multi_prefix="multi-prefix" in key, userhost="userhost-in-names" in key,
                msgid="message-tags" in key, chathistory="draft/chathistory" in key)
        return r


def _read_motd(path: Path | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    try:
        text = path.read_text("utf-8", "replace")
    except OSError as exc:
        log.warning("MOTD file %s unreadable: %s", path, exc)
        return None
    return tuple(clean(line) for line in text.splitlines())


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
#: error's params to use, which of them is a room shown as a channel, or -1).
_NUMERICS: Final = {
    "no_such_user": (irc.ERR_NOSUCHNICK, "No such nick/channel", 1, -1),
    "no_such_room": (irc.ERR_NOSUCHCHANNEL, "No such channel", 1, 0),
    "not_member": (irc.ERR_NOTONCHANNEL, "You're not on that channel", 1, 0),
    "target_not_member": (irc.ERR_USERNOTINCHANNEL, "They aren't on that channel", 2, 1),
    "not_operator": (irc.ERR_CHANOPRIVSNEEDED, "You're not channel operator", 1, 0),
    "admins_only": (irc.ERR_NOPRIVILEGES, "Permission Denied- You're not an IRC operator",
                    0, -1),
    "too_many_rooms": (irc.ERR_TOOMANYCHANNELS, "You have joined too many channels", 1,
                       -1),
    "cannot_send": (irc.ERR_CANNOTSENDTOCHAN, "Cannot send to channel", 1, 0),
    "name_taken": (irc.ERR_NICKNAMEINUSE, "Nickname is already in use", 1, -1),
    "reserved_name": (irc.ERR_ERRONEUSNICKNAME, "Reserved for an admin account; use OPER", 1,
                      -1),
    "invalid_name": (irc.ERR_ERRONEUSNICKNAME, "Erroneous nickname", 1, -1),
    "unknown_mode": (irc.ERR_UNKNOWNMODE, "is unknown mode char to me", 1, -1),
    "banned": (irc.ERR_BANNEDFROMCHAN, "Cannot join channel (+b)", 1, 0),
    "invite_only": (irc.ERR_INVITEONLYCHAN, "Cannot join channel (+i)", 1, 0),
    "room_full": (irc.ERR_CHANNELISFULL, "Cannot join channel (+l)", 1, 0),
    "bad_key": (irc.ERR_BADCHANNELKEY, "Cannot join channel (+k)", 1, 0),
    "already_member": (irc.ERR_USERONCHANNEL, "is already on channel", 2, 1),
    "list_full": (irc.ERR_BANLISTFULL, "Channel list is full", 2, 0),
    "invalid_mode_param": (irc.ERR_INVALIDMODEPARAM, "", 3, 0),
}


def irc_error(exc: ChatError) -> IrcError | None:
    """The numeric for an action's refusal; None when only a NOTICE fits."""
    spec = _NUMERICS.get(exc.code)
    if spec is None or len(exc.params) < spec[2]:
        return None
    code, text, count, room_at = spec
    params = [word(p) for p in exc.params[:count]]
    if room_at >= 0:
        params[room_at] = channel(exc.params[room_at])
    return IrcError(code, *params, text=text or exc.text)


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
        self.cap_version = 0  # 302 from CAP LS 302: capability values are shown
        self.account: str | None = None  # admin account logged in with SASL
        self.sasl: str | None = None  # SASL exchange under way: the buffered payload
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

    def on_line(self, msg: IrcLine | LineTooLong | InvalidUtf8) -> None:
        if msg is TOO_LONG:
            self.reply(irc.ERR_INPUTTOOLONG, text="Input line was too long")
            return
        if isinstance(msg, InvalidUtf8):
            # UTF8ONLY: refused as ergo does, never relayed with replacement characters.
            self.write_lines([format_line("FAIL", msg.command, "INVALID_UTF8",
                                          trailing="Message rejected for containing "
                                                   "invalid UTF-8", source=self.net.name)])
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
        if self.account is None or name_key(self.nick) != self.account:
            try:  # deferred while CAP was negotiated: SASL may have logged in as it
                actions.check_new_name(self.hub, self.nick)
            except ChatError as exc:
                self.chat_error(exc)
                self.nick = None
                return
        renderer = self.net.renderer(self.caps)
        session = IrcSession(self.nick, self.out, renderer, self.close, addr=self.peer,
                             account=self.account)
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
        if session.is_admin:
            actions.audit.info("admin: %s (%s) logged in with SASL as admin %s",
                               session.name, session.addr, session.account)
            self.write_lines([format_line("MODE", session.name, trailing="+o",
                                          source=self.net.name)])

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
            self.numeric(irc.RPL_MYINFO, net, VERSION, USER_MODES, CHANNEL_MODES,
                         CHANNEL_PARAM_MODES),
            *self.isupport_lines(),
        ]
        self.write_lines(lines)
        log.debug("%s registered over IRC from %s", me, self.addr)
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
        if m.param(1).isdigit() and int(m.param(1)) >= 302:
            c.cap_version = 302
        offered = [f"{cap}={CAP_VALUES[cap]}" if c.cap_version >= 302 and cap in CAP_VALUES
                   else cap for cap in CAPS]
        c.write_lines([format_line("CAP", c.target(), "LS", trailing=" ".join(offered),
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


def _authenticate(c: IrcConnection, m: IrcLine) -> None:
    """SASL PLAIN against the admin accounts, before registration (IRCv3 sasl-3.1): the
    same check and per-address failure count as OPER and the native admin prompt."""
    arg = m.params[0]
    if c.session is not None or c.account is not None:
        raise IrcError(irc.ERR_SASLALREADY, text="You have already authenticated"
                       if c.account is not None else "SASL is only available before "
                                                    "registration")
    if "sasl" not in c.caps:
        raise IrcError(irc.ERR_SASLFAIL, text="SASL authentication failed: request the "
                                              "sasl capability first")
    if arg == "*":
        c.sasl = None
        raise IrcError(irc.ERR_SASLABORTED, text="SASL authentication aborted")
    if c.sasl is None:
        if arg.upper() != "PLAIN":
            c.reply(irc.RPL_SASLMECHS, "PLAIN", text="are available SASL mechanisms")
            raise IrcError(irc.ERR_SASLFAIL, text="SASL authentication failed")
        c.sasl = ""
        c.write_lines([format_line("AUTHENTICATE", "+")])
        return
    if arg != "+":
        c.sasl += arg
    if len(c.sasl) > SASL_MAX:
        c.sasl = None
        raise IrcError(irc.ERR_SASLTOOLONG, text="SASL message too long")
    if len(arg) == 400:
        return  # a full chunk: more follows
    payload, c.sasl = c.sasl, None
    _sasl_plain(c, payload)


def _sasl_plain(c: IrcConnection, payload: str) -> None:
    failed = IrcError(irc.ERR_SASLFAIL, text="SASL authentication failed")
    try:
        authzid, authcid, password = base64.b64decode(payload, validate=True) \
            .decode("utf-8").split("\0")
    except (ValueError, UnicodeDecodeError):
        raise failed from None
    if authzid and name_key(authzid) != name_key(authcid):
        raise failed
    try:
        name = check_name(authcid)
    except ChatError:
        name = authcid[:64]  # still counted as a failure: no admin has that name
    try:
        ok = c.ctx.admission.admin_login(c.addr_ip, name, password)  # blocks this greenlet
    except ChatError:
        raise IrcError(irc.ERR_SASLFAIL,
                       text="Too many failed attempts; try again later") from None
    if c.closing is not None or c.session is not None:
        return  # went away (or registered) while the hash was computed
    if not ok:
        log.warning("failed SASL login for %s from %s", word(authcid), c.addr)
        raise failed
    c.account = name_key(name)
    nick = c.nick or "*"
    c.reply(irc.RPL_LOGGEDIN, f"{nick}!{c.user or '*'}@{c.net.name}", name,
            text=f"You are now logged in as {name}")
    c.reply(irc.RPL_SASLSUCCESS, text="SASL authentication successful")


def _nick(c: IrcConnection, m: IrcLine) -> None:
    if not m.param(0):
        raise IrcError(irc.ERR_NONICKNAMEGIVEN, text="No nickname given")
    try:
        new = check_name(m.params[0])
    except ChatError:
        raise IrcError(irc.ERR_ERRONEUSNICKNAME, word(m.params[0]),
                       text="Erroneous nickname") from None
    me = c.session
    c.hub.check_admins()
    if me is None and (c.negotiating or c.account is not None):
        # An admin account's name waits for SASL (which may come first, or during CAP):
        # the reservation is checked when registration completes.
        c.hub.check_free(new)
    else:
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
    if not m.params[3].strip():
        raise IrcError(irc.ERR_NEEDMOREPARAMS, "USER", text="Not enough parameters")
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
    reason = fit_bytes(clean(" ".join(m.params)).strip(), KICKLEN)
    if c.session is not None:
        c.hub.unregister(c.session, ev.Quit(c.session.name, reason))
    c.close("quit", f"Quit: {reason}" if reason else "Quit")


def _privmsg(c: IrcConnection, m: IrcLine) -> None:
    _message(c, m, notice=False)


def _notice(c: IrcConnection, m: IrcLine) -> None:
    _message(c, m, notice=True)


def _message(c: IrcConnection, m: IrcLine, notice: bool) -> None:
    """PRIVMSG and NOTICE to channels and nicks. A NOTICE reaches IRC users as a NOTICE
    (native users read it as a line), is never stored and never answered, errors
    included."""
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
    text = clean_keeping_format(text)
    if not strip_formatting(text).strip():
        return  # empty after hygiene: ignored, as natively
    me = c.me
    if target.startswith("#"):
        room = c.room(target)
        if notice and not action:
            actions.room_notice(c.hub, me, room, text)
        else:
            actions.say(c.hub, me, room, text, action=action)
        return
    if action:
        text = f"* {me.name} {text}"  # private messages have no /me: keep it readable
    try:
        peer = actions.private_message(c.hub, me, target, text, notice=notice and not action)
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
    keys = m.param(1).split(",")
    for i, name in enumerate(m.params[0].split(",")):
        try:
            _join_one(c, name, keys[i] if i < len(keys) else "")
        except IrcError as exc:
            c.reply(exc.code, *exc.params, text=exc.text)
        except ChatError as exc:
            c.chat_error(exc)


def _join_one(c: IrcConnection, name: str, key: str = "") -> None:
    try:
        if not name.startswith("#"):
            raise ChatError("invalid_name")
        room_name = check_name(name[1:])
    except ChatError:
        raise IrcError(irc.ERR_NOSUCHCHANNEL, word(name), text="No such channel") from None
    actions.join(c.hub, c.me, room_name, max_rooms=MAX_CHANNELS, key=key)


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


def _visible_room(c: IrcConnection, room: Room) -> bool:
    """Whether this client may know of ``room``: secret (+s) rooms only for members."""
    return not room.modes.secret or room.key in c.me.rooms or c.me.is_admin


def _names(c: IrcConnection, m: IrcLine) -> None:
    if not m.param(0):
        c.reply(irc.RPL_ENDOFNAMES, "*", text="End of /NAMES list")
        return
    lines: list[str] = []
    for name in m.params[0].split(","):
        room = c.hub.find_room(name[1:]) if name.startswith("#") else None
        if room is None or not _visible_room(c, room):
            lines.append(c.numeric(irc.RPL_ENDOFNAMES, word(name), text="End of /NAMES list"))
        else:
            lines += c.renderer.names(c.target(), room, c.me)
    c.write_lines(lines)


def _topic(c: IrcConnection, m: IrcLine) -> None:
    room = c.room(m.params[0])
    chan = channel(room.name)
    if len(m.params) < 2:
        if room.topic:
            c.reply(irc.RPL_TOPIC, chan, text=room.topic)
        else:
            c.reply(irc.RPL_NOTOPIC, chan, text="No topic is set")
        return
    text = fit_bytes(clean_keeping_format(m.params[1]).strip(), TOPICLEN)
    actions.set_topic(c.hub, c.me, room, text)


def _kick(c: IrcConnection, m: IrcLine) -> None:
    """``KICK #a nick[,nick]`` or, pairwise, ``KICK #a,#b nick1,nick2`` (RFC 2812)."""
    chans = m.params[0].split(",")
    nicks = m.params[1].split(",")[:MAX_TARGETS]
    if len(chans) > 1 and len(chans) != len(nicks):
        raise IrcError(irc.ERR_NEEDMOREPARAMS, "KICK", text="Not enough parameters")
    # Some clients send the reason's words as separate parameters (no colon): join them.
    reason = fit_bytes(clean(" ".join(m.params[2:])).strip(), KICKLEN)
    for i, nick in enumerate(nicks):
        try:
            room = c.room(chans[i] if len(chans) > 1 else chans[0])
            actions.kick(c.hub, c.me, room, nick, reason)
        except IrcError as exc:
            c.reply(exc.code, *exc.params, text=exc.text)
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


_LIST_REPLIES: Final = {
    "b": (irc.RPL_BANLIST, irc.RPL_ENDOFBANLIST, "End of channel ban list"),
    "e": (irc.RPL_EXCEPTLIST, irc.RPL_ENDOFEXCEPTLIST, "End of channel exception list"),
    "I": (irc.RPL_INVEXLIST, irc.RPL_ENDOFINVEXLIST, "End of channel invite list"),
}


def _channel_mode(c: IrcConnection, m: IrcLine) -> None:
    """Query (324, 329), list queries (``b``/``e``/``I``), or changes through
    :func:`actions.change_modes`: 472 per unknown letter, one MODE line for what changed."""
    room = c.room(m.params[0])
    if not _visible_room(c, room):
        raise IrcError(irc.ERR_NOSUCHCHANNEL, word(m.params[0]), text="No such channel")
    chan = channel(room.name)
    me = c.me
    if len(m.params) < 2:
        letters, args = actions.mode_summary(room, room.key in me.rooms or me.is_admin)
        c.write_lines([c.numeric(irc.RPL_CHANNELMODEIS, chan, letters, *args),
                       c.numeric(irc.RPL_CREATIONTIME, chan, str(room.modes.created))])
        return
    changes = actions.parse_modes(m.params[1], list(m.params[2:]))
    wanted: list[tuple[str, str, str]] = []
    for sign, letter, arg in changes:
        if letter not in CHANNEL_MODES:
            c.reply(irc.ERR_UNKNOWNMODE, word(letter), text="is unknown mode char to me")
        elif letter in modes.LISTS and arg is None:
            _mode_list(c, room, letter)
        elif arg is None and (letter in "ov" or (sign == "+" and letter in "kl")):
            continue  # a parameter mode without its parameter: ignored, as ircds do
        else:
            wanted.append((sign, letter, arg))
    if wanted:
        _, errors = actions.change_modes(c.hub, me, room, wanted, max_params=MAX_MODES)
        for exc in errors:
            c.chat_error(exc)


def _mode_list(c: IrcConnection, room: Room, letter: str) -> None:
    code, end, text = _LIST_REPLIES[letter]
    chan = channel(room.name)
    lines = [c.numeric(code, chan, e.mask, e.by or c.net.name, str(e.at))
             for e in room.modes.lists(letter).values()]
    lines.append(c.numeric(end, chan, text=text))
    c.write_lines(lines)


def _invite(c: IrcConnection, m: IrcLine) -> None:
    target = c.find_user(m.params[0])
    room = c.room(m.params[1])
    actions.invite(c.hub, c.me, room, target.name)
    c.reply(irc.RPL_INVITING, target.name, channel(room.name))
    away = target.extra.get("away")
    if away:
        c.reply(irc.RPL_AWAY, target.name, text=str(away))


def _invisible(s: Session) -> bool:
    return "i" in s.extra.get("modes", ())


#: WHOX fields in the order replies carry them (ircv3 / ircu ``%tcuihsnfdlaor``).
WHOX_ORDER: Final = "tcuihsnfdlaor"


def _who_line(c: IrcConnection, s: Session, room: Room | None,
              whox: tuple[str, str] | None = None) -> str:
    flags = ("G" if s.extra.get("away") else "H") + ("*" if s.is_admin else "")
    if room is not None:
        flags += c.renderer.prefixes(room, s)
    chan = channel(room.name) if room is not None else "*"
    user = str(s.extra.get("user") or s.name)
    realname = str(s.extra.get("realname") or s.name)
    if whox is None:
        return c.numeric(irc.RPL_WHOREPLY, chan, user, c.net.name, c.net.name, s.name, flags,
                         text=f"0 {realname}")
    fields, token = whox
    values = {"t": word(token or "0", 3), "c": chan, "u": user, "i": "255.255.255.255",
              "h": c.net.name, "s": c.net.name, "n": s.name, "f": flags, "d": "0",
              "l": "0", "a": s.account or "0", "o": "n/a"}
    params = [values[f] for f in WHOX_ORDER if f in fields and f != "r"]
    return c.numeric(irc.RPL_WHOSPCRPL, *params,
                     text=realname if "r" in fields else None)


def _who(c: IrcConnection, m: IrcLine) -> None:
    """``WHO #a[,#b]`` (each user once, with the first shared channel) or ``WHO mask``;
    ``WHO target %fields[,token]`` is WHOX (354). Invisible users are shown only to those
    who share a channel with them."""
    mask = m.param(0) or "*"
    whox = None
    if m.param(1).startswith("%"):
        fields, _, token = m.params[1][1:].partition(",")
        whox = (fields, token)
    me = c.me
    rows: list[tuple[Session, Room | None]] = []
    if mask.startswith("#"):
        seen: set[str] = set()
        remote: list[str] = []
        for name in mask.split(","):
            room = c.hub.find_room(name[1:]) if name.startswith("#") else None
            if room is None or not _visible_room(c, room):
                continue
            member = room.key in me.rooms or me.is_admin
            for s in room.members.values():
                if s.key not in seen and (member or not _invisible(s)):
                    seen.add(s.key)
                    rows.append((s, room))
            chan = channel(room.name)
            for k, n in room.remote.items():  # members on other nodes of a cluster
                if k not in room.members and k not in seen and whox is None:
                    seen.add(k)
                    remote.append(c.numeric(irc.RPL_WHOREPLY, chan, n, c.net.name,
                                            c.net.name, n, "H@" if k in room.ops else "H",
                                            text=f"0 {n}"))
        lines = [_who_line(c, s, room, whox) for s, room in rows] + remote
        lines.append(c.numeric(irc.RPL_ENDOFWHO, word(mask), text="End of /WHO list"))
        c.write_lines(lines)
        return
    else:
        pattern = "*" if mask == "0" else name_key(mask)
        for s in c.hub.sessions():
            if len(rows) >= MAX_WHO:
                break
            if s is not me and _invisible(s) and not (s.rooms.keys() & me.rooms.keys()):
                continue
            if fnmatch.fnmatchcase(s.key, pattern):
                rows.append((s, None))
    lines = [_who_line(c, s, room, whox) for s, room in rows]
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
    chans = [c.renderer.prefixes(r, s) + channel(r.name) for r in s.rooms.values()
             if _visible_room(c, r)]
    if chans:
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
    """Rooms with someone in them (an empty lobby is not listed); secret ones only to
    their members; a private one's topic only to its members. ``ELIST=U``: ``>N`` and
    ``<N`` filter by user count."""
    me = c.me
    wanted: set[str] = set()
    more, fewer = -1, None
    for token in m.param(0).split(",") if m.param(0) else []:
        if token[:1] == ">" and token[1:].isdigit():
            more = int(token[1:])
        elif token[:1] == "<" and token[1:].isdigit():
            fewer = int(token[1:])
        elif token.startswith("#"):
            wanted.add(name_key(token[1:]))
    counts = dict(actions.list_rooms(c.hub))  # every node's members, in a cluster
    rooms = [r for r in c.hub.active_rooms()
             if (n := counts.get(r.name, len(r.members))) and _visible_room(c, r)
             and n > more and (fewer is None or n < fewer)
             and (not wanted or r.key in wanted)][:MAX_LIST]
    lines = [c.numeric(irc.RPL_LISTSTART, "Channel", text="Users  Name")]
    for r in rooms:
        shown = not r.modes.private or r.key in me.rooms or me.is_admin
        letters, _ = actions.mode_summary(r, False)
        topic = f"[{letters}] {r.topic}".rstrip() if shown else ""
        lines.append(c.numeric(irc.RPL_LIST, channel(r.name),
                               str(counts.get(r.name, len(r.members))), text=topic))
    lines.append(c.numeric(irc.RPL_LISTEND, text="End of /LIST"))
    c.write_lines(lines)


def _motd(c: IrcConnection, m: IrcLine) -> None:
    motd = c.net.motd(c.settings.motd)
    if motd is None:
        c.reply(irc.ERR_NOMOTD, text="MOTD File is missing")
        return
    lines = [c.numeric(irc.RPL_MOTDSTART, text=f"- {c.net.name} Message of the day - ")]
    lines += [c.numeric(irc.RPL_MOTD, text=f"- {line}") for line in motd]
    lines.append(c.numeric(irc.RPL_ENDOFMOTD, text="End of /MOTD command."))
    c.write_lines(lines)


def _lusers(c: IrcConnection, m: IrcLine) -> None:
    """From counters the hub keeps as users come and go: O(1), so a reconnect storm of
    IRC clients (each gets LUSERS at registration) stays linear."""
    hub = c.hub
    local = users = len(hub.users)
    invisible = hub.invisible
    channels = hub.channels
    cluster = hub.directory.counts()  # every node's, refreshed every few seconds
    if cluster is not None:
        users, channels = max(users, cluster[0]), cluster[1]
    peak = str(max(hub.peak_users, local))
    c.write_lines([
        c.numeric(irc.RPL_LUSERCLIENT, text=f"There are {users - invisible} users and "
                                        f"{invisible} invisible on 1 servers"),
        c.numeric(irc.RPL_LUSEROP, str(hub.opers), text="operator(s) online"),
        c.numeric(irc.RPL_LUSERCHANNELS, str(channels), text="channels formed"),
        c.numeric(irc.RPL_LUSERME, text=f"I have {users} clients and 0 servers"),
        c.numeric(irc.RPL_LOCALUSERS, str(local), peak,
                  text=f"Current local users {local}, max {peak}"),
        c.numeric(irc.RPL_GLOBALUSERS, str(users), str(max(int(peak), users)),
                  text=f"Current global users {users}, max {max(int(peak), users)}"),
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
    c.hub.check_admins()
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


class _HistoryFail(Exception):
    """A ``FAIL CHATHISTORY <code> <context...> :<text>`` (IRCv3 standard replies)."""

    def __init__(self, code: str, *context: str, text: str) -> None:
        super().__init__(code)
        self.code, self.context, self.text = code, context, text


#: Parameters after the subcommand: (references, whether the first is a target).
_CHATHISTORY: Final = {"LATEST": 1, "BEFORE": 1, "AFTER": 1, "AROUND": 1, "BETWEEN": 2,
                       "TARGETS": 2}
_WHAT_FAILED: Final = "Messages could not be retrieved"


def _chathistory(c: IrcConnection, m: IrcLine) -> None:
    """IRCv3 ``draft/chathistory``, the way ergo answers it: a ``chathistory`` batch (an
    empty one when nothing matches) or one ``FAIL CHATHISTORY``. Channels only, and only
    those the client is in; private messages are not stored, so a nick's history is
    always empty. See docs/IRC.md (what is reached, what is refused)."""
    try:
        _chathistory_query(c, m)
    except _HistoryFail as exc:
        c.write_lines([format_line("FAIL", "CHATHISTORY", exc.code, *exc.context,
                                   trailing=exc.text, source=c.net.name)])


def _chathistory_query(c: IrcConnection, m: IrcLine) -> None:
    given = word(m.param(0), 16)
    sub = m.param(0).upper()
    refs = _CHATHISTORY.get(sub)
    if not m.params:
        raise _HistoryFail("INVALID_PARAMS", given, text="Insufficient parameters")
    if refs is None:
        raise _HistoryFail("INVALID_PARAMS", given, text="Unknown command")
    want = 1 + refs + (sub != "TARGETS")  # [target] refs... limit
    if len(m.params) - 1 < want:
        raise _HistoryFail("INVALID_PARAMS", given, text="Insufficient parameters")
    if len(m.params) - 1 > want:
        raise _HistoryFail("INVALID_PARAMS", given, text="Too many parameters")
    raw_limit = m.params[-1]
    if not (raw_limit.isascii() and raw_limit.isdigit()):
        raise _HistoryFail("INVALID_PARAMS", given, word(raw_limit), text="Invalid limit")
    limit = int(raw_limit) if len(raw_limit) <= 6 else CHATHISTORY_MAX
    if limit == 0 or limit > CHATHISTORY_MAX:
        limit = CHATHISTORY_MAX
    if sub == "TARGETS":
        start, end = (_history_time(given, p) for p in m.params[1:3])
        found = actions.history_targets(c.hub, c.me, start, end, limit)
        c.write_lines(c.renderer.history_targets(
            c.target(), [(channel(room.name), when) for room, when in found]))
        return
    target = m.params[1]
    room = c.hub.find_room(target[1:]) if target.startswith("#") else None
    if target.startswith("#") and (room is None or room.key not in c.me.rooms):
        raise _HistoryFail("INVALID_TARGET", given, word(target), text=_WHAT_FAILED)
    parsed = [_history_ref(given, target, room, p, star=(sub in ("LATEST", "BEFORE")
                                                         and i == 0))
              for i, p in enumerate(m.params[2:2 + refs])]
    if room is None:  # a nick: private messages are never stored
        c.write_lines(c.renderer.history(word(target), []))
        return
    try:
        events = actions.history_window(c.hub, c.me, room, sub.lower(), parsed[0], limit,
                                        parsed[1] if refs == 2 else None)  # may wait
    except ChatError:  # left the channel while the history was read
        raise _HistoryFail("INVALID_TARGET", given, word(target), text=_WHAT_FAILED) from None
    except Exception:
        log.exception("CHATHISTORY %s %s failed", sub, room.name)
        raise _HistoryFail("MESSAGE_ERROR", given, word(target), text=_WHAT_FAILED) from None
    if c.closing is None:
        c.write_lines(c.renderer.history(channel(room.name), events))


def _history_time(given: str, param: str) -> datetime:
    kind, _, value = param.partition("=")
    if kind.lower() != "timestamp":
        raise _HistoryFail("INVALID_PARAMS", given, word(param),
                           text="TARGETS takes timestamps")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise _HistoryFail("INVALID_PARAMS", given, word(param),
                           text="Invalid timestamp") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _history_ref(given: str, target: str, room: Room | None, param: str,
                 star: bool) -> actions.HistoryRef:
    """``*`` (LATEST; BEFORE too, which kiwiirc sends for LATEST), ``timestamp=`` or
    ``msgid=`` (one of ours for this channel: a piece ``.N`` of a long line stands for the
    line)."""
    if param == "*" and star:
        return actions.HistoryRef()
    kind, sep, value = param.partition("=")
    kind = kind.lower()
    if not sep:
        raise _HistoryFail("INVALID_PARAMS", given, word(param),
                           text="Invalid message reference")
    if kind == "timestamp":
        return actions.HistoryRef(time=_history_time(given, param))
    if kind != "msgid":
        raise _HistoryFail("INVALID_MSGREFTYPE", given, word(target),
                           text=f"{word(kind, 32)} references are not supported")
    ref = irc.parse_msgid(value)
    if room is not None and (ref is None or ref[0] != room.key):
        raise _HistoryFail("MESSAGE_ERROR", given, word(target), word(param),
                           text=_WHAT_FAILED)
    return actions.HistoryRef(id=ref[1] if ref is not None else 0)


def _tagmsg(c: IrcConnection, m: IrcLine) -> None:
    """Tag-only messages (typing notifications): no hub event carries them; dropped."""


COMMANDS: Final[dict[str, Cmd]] = {
    "CAP": Cmd(_cap, 1, registered=False, usage="LS|LIST|REQ|END",
               help="capability negotiation: " + ", ".join(CAPS)),
    "AUTHENTICATE": Cmd(_authenticate, 1, registered=False, usage="PLAIN | <base64> | *",
                        help="SASL PLAIN login as an admin account, before registration"),
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
                  help="a notice: never stored, never answered"),
    "JOIN": Cmd(_join, 1, usage="<#chan>[,...] [<key>[,...]] | 0",
                help="join channels (created on first join; the creator is operator); "
                     "0 parts all"),
    "PART": Cmd(_part, 1, usage="<#chan>[,...] [:<reason>]", help="leave channels"),
    "NAMES": Cmd(_names, 0, usage="<#chan>[,...]", help="who is in a channel"),
    "TOPIC": Cmd(_topic, 1, usage="<#chan> [:<topic>]",
                 help="show or set (operators, when +t) a channel's topic"),
    "KICK": Cmd(_kick, 2, usage="<#chan>[,...] <nick>[,...] [:<reason>]",
                help="remove users from a channel (channel operators)"),
    "MODE": Cmd(_mode, 1, usage="<#chan|nick> [modes [args]]",
                help="channel modes beIiklmnopstv (see docs/IRC.md); user modes +i, -o"),
    "INVITE": Cmd(_invite, 2, usage="<nick> <#chan>",
                  help="invite a user (operators, while +i): passes +i, +k and +l once"),
    "WHO": Cmd(_who, 0, usage="<#chan>[,...]|<mask> [%fields[,token]]",
               help="list users (WHOX with %fields)"),
    "WHOIS": Cmd(_whois, 1, usage="<nick>", help="about a user"),
    "AWAY": Cmd(_away, 0, usage="[:<message>]", help="set or clear your away message"),
    "LIST": Cmd(_list, 0, usage="[<#chan>|>N|<N[,...]]", help="list channels"),
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
    "CHATHISTORY": Cmd(_chathistory, 0,
                       usage="LATEST|BEFORE|AFTER|AROUND <#chan> <ref> <limit> | "
                             "BETWEEN <#chan> <ref> <ref> <limit> | TARGETS <ts> <ts> <limit>",
                       help="IRCv3 draft/chathistory: a channel's stored lines; <ref> is *, "
                            "msgid=... or timestamp=..."),
    "TAGMSG": Cmd(_tagmsg, 1),
}
