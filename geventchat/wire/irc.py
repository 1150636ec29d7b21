"""The IRC protocol, sans-IO: line codec, CTCP, numerics and the renderer of chat events.

Like :mod:`geventchat.wire.native`, nothing here touches a socket or a greenlet:

* :class:`IrcDecoder` turns bytes (or lines a :class:`~geventchat.wire.native.LineDecoder`
  already split) into :class:`IrcLine` objects, enforcing the 512-byte limit of RFC 1459
  and the IRCv3 tag limit;
* :func:`parse_line` / :func:`format_line` are the message grammar of the modern IRC
  client protocol (tags, source, command, middle parameters, trailing parameter);
* :class:`IrcRenderer` turns the protocol-neutral events of :mod:`geventchat.core.events` into
  IRC lines, so IRC users and native users see each other's actions, each in their own
  protocol. ``ircconn`` is the only place that moves these bytes to and from a socket.

Grammar (https://modern.ircdocs.horse/#message-format, RFC 1459 2.3.1, IRCv3 message-tags)::

    message  = ["@" tags SPACE] [":" source SPACE] command *(SPACE middle) [SPACE ":" trailing]

Limits: the part after the tags is at most 512 bytes *including* CRLF; tags add at most
8191 bytes (IRCv3). Longer input is answered with ``417 ERR_INPUTTOOLONG``; longer output
(a 4096-byte native chat line) is split into several PRIVMSGs, never truncated.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar, Final

from geventchat.core import events as ev
from geventchat.core.text import clean, name_key
from geventchat.wire.native import TOO_LONG, BadUtf8, LineDecoder, LineTooLong

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from geventchat.core.hub import Room, Session

#: Bytes of one message without its tags, CRLF included (RFC 1459 2.3).
MAX_BODY: Final = 512
#: Bytes of the tag section, ``@`` and the trailing space included (IRCv3 message-tags).
MAX_TAGS: Final = 8191
#: The body without CRLF: what a rendered line may carry after its tags.
BODY_ROOM: Final = MAX_BODY - 2

# --- numerics (RFC 1459 / 2812, modern.ircdocs.horse) ----------------------------------------
RPL_WELCOME: Final = "001"
RPL_YOURHOST: Final = "002"
RPL_CREATED: Final = "003"
RPL_MYINFO: Final = "004"
RPL_ISUPPORT: Final = "005"
RPL_UMODEIS: Final = "221"
RPL_LUSERCLIENT: Final = "251"
RPL_LUSEROP: Final = "252"
RPL_LUSERCHANNELS: Final = "254"
RPL_LUSERME: Final = "255"
RPL_LOCALUSERS: Final = "265"
RPL_GLOBALUSERS: Final = "266"
RPL_AWAY: Final = "301"
RPL_USERHOST: Final = "302"
RPL_ISON: Final = "303"
RPL_UNAWAY: Final = "305"
RPL_NOWAWAY: Final = "306"
RPL_WHOISUSER: Final = "311"
RPL_WHOISSERVER: Final = "312"
RPL_WHOISOPERATOR: Final = "313"
RPL_ENDOFWHO: Final = "315"
RPL_ENDOFWHOIS: Final = "318"
RPL_WHOISCHANNELS: Final = "319"
RPL_LISTSTART: Final = "321"
RPL_LIST: Final = "322"
RPL_LISTEND: Final = "323"
RPL_CHANNELMODEIS: Final = "324"
RPL_CREATIONTIME: Final = "329"
RPL_INVITING: Final = "341"
RPL_INVEXLIST: Final = "346"
RPL_ENDOFINVEXLIST: Final = "347"
RPL_EXCEPTLIST: Final = "348"
RPL_ENDOFEXCEPTLIST: Final = "349"
RPL_WHOSPCRPL: Final = "354"
RPL_BANLIST: Final = "367"
RPL_NOTOPIC: Final = "331"
RPL_TOPIC: Final = "332"
RPL_VERSION: Final = "351"
RPL_WHOREPLY: Final = "352"
RPL_NAMREPLY: Final = "353"
RPL_ENDOFNAMES: Final = "366"
RPL_ENDOFBANLIST: Final = "368"
RPL_INFO: Final = "371"
RPL_MOTD: Final = "372"
RPL_ENDOFINFO: Final = "374"
RPL_MOTDSTART: Final = "375"
RPL_ENDOFMOTD: Final = "376"
RPL_YOUREOPER: Final = "381"
RPL_TIME: Final = "391"
ERR_NOSUCHNICK: Final = "401"
ERR_NOSUCHCHANNEL: Final = "403"
ERR_CANNOTSENDTOCHAN: Final = "404"
ERR_TOOMANYCHANNELS: Final = "405"
ERR_TOOMANYTARGETS: Final = "407"
ERR_NOORIGIN: Final = "409"
ERR_INVALIDCAPCMD: Final = "410"
ERR_NORECIPIENT: Final = "411"
ERR_NOTEXTTOSEND: Final = "412"
ERR_INPUTTOOLONG: Final = "417"
ERR_UNKNOWNCOMMAND: Final = "421"
ERR_NOMOTD: Final = "422"
ERR_NONICKNAMEGIVEN: Final = "431"
ERR_ERRONEUSNICKNAME: Final = "432"
ERR_NICKNAMEINUSE: Final = "433"
ERR_USERNOTINCHANNEL: Final = "441"
ERR_NOTONCHANNEL: Final = "442"
ERR_USERONCHANNEL: Final = "443"
ERR_NOTREGISTERED: Final = "451"
ERR_NEEDMOREPARAMS: Final = "461"
ERR_ALREADYREGISTERED: Final = "462"
ERR_PASSWDMISMATCH: Final = "464"
ERR_CHANNELISFULL: Final = "471"
ERR_UNKNOWNMODE: Final = "472"
ERR_INVITEONLYCHAN: Final = "473"
ERR_BANNEDFROMCHAN: Final = "474"
ERR_BADCHANNELKEY: Final = "475"
ERR_BANLISTFULL: Final = "478"
ERR_NOPRIVILEGES: Final = "481"
ERR_CHANOPRIVSNEEDED: Final = "482"
ERR_UMODEUNKNOWNFLAG: Final = "501"
ERR_USERSDONTMATCH: Final = "502"
ERR_HELPNOTFOUND: Final = "524"
ERR_INVALIDMODEPARAM: Final = "696"
RPL_LOGGEDIN: Final = "900"
RPL_SASLSUCCESS: Final = "903"
ERR_SASLFAIL: Final = "904"
ERR_SASLTOOLONG: Final = "905"
ERR_SASLABORTED: Final = "906"
ERR_SASLALREADY: Final = "907"
RPL_SASLMECHS: Final = "908"
RPL_HELPSTART: Final = "704"
RPL_HELPTXT: Final = "705"
RPL_ENDOFHELP: Final = "706"


class IrcError(Exception):
    """A numeric reply that refuses a client's command (``461``, ``482``...).

    Command handlers raise it; the connection renders it once, in one place, as
    ``:server CODE <nick> PARAMS :text`` (h11's "errors say whose fault it was": this is
    always the peer's). ``params`` are the middle parameters after the client's nick.
    """

    def __init__(self, code: str, *params: str, text: str) -> None:
        super().__init__(f"{code} {' '.join(params)} :{text}")
        self.code = code
        self.params = params
        self.text = text


# --- the line grammar ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IrcLine:
    """One parsed IRC message. ``command`` is upper-cased; ``params`` include the trailing
    parameter (without its ``:``) as the last element."""

    command: str
    params: tuple[str, ...] = ()
    source: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def param(self, i: int, default: str = "") -> str:
        return self.params[i] if i < len(self.params) else default


_TAG_UNESCAPE: Final = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_TAG_ESCAPE: Final = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}


def unescape_tag(value: str) -> str:
    """IRCv3 tag value unescaping: ``\\:`` is ``;``, ``\\s`` a space; an unknown escape is
    the character itself and a lone trailing backslash is dropped."""
    if "\\" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch != "\\":
            out.append(ch)
            continue
        nxt = next(chars, "")
        out.append(_TAG_UNESCAPE.get(nxt, nxt))
    return "".join(out)


def escape_tag(value: str) -> str:
    return "".join(_TAG_ESCAPE.get(ch, ch) for ch in value)


def parse_tags(raw: str) -> dict[str, str]:
    """``a=1;+b;c=x\\sy`` -> ``{"a": "1", "+b": "", "c": "x y"}``; a later duplicate wins."""
    tags: dict[str, str] = {}
    for item in raw.split(";"):
        if item:
            key, _, value = item.partition("=")
            tags[key] = unescape_tag(value)
    return tags


def format_tags(tags: dict[str, str]) -> str:
    """The ``@...`` section (without its space); a key with an empty value is bare."""
    return "@" + ";".join(f"{k}={escape_tag(v)}" if v else k for k, v in tags.items())


def parse_line(line: str) -> IrcLine | None:
    """Parse one line (without CRLF); ``None`` for a line with no command (empty, or only
    tags and a source). Spaces between parameters may repeat, as servers and clients in the
    wild send them; a parameter starting with ``:`` is the trailing one."""
    rest = line
    tags: dict[str, str] = {}
    if rest.startswith("@"):
        raw_tags, _, rest = rest[1:].partition(" ")
        tags = parse_tags(raw_tags)
    rest = rest.lstrip(" ")
    source = None
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
        rest = rest.lstrip(" ")
    command, _, rest = rest.partition(" ")
    if not command:
        return None
    params: list[str] = []
    while rest:
        rest = rest.lstrip(" ")
        if not rest:
            break
        if rest[0] == ":":
            params.append(rest[1:])
            break
        param, _, rest = rest.partition(" ")
        params.append(param)
    return IrcLine(command.upper(), tuple(params), source, tags)


def _safe(text: str) -> str:
    """No CR, LF or NUL may reach the wire inside a parameter: they would end the line and
    let whoever supplied the text inject a second one."""
    if "\r" in text or "\n" in text or "\0" in text:
        return text.replace("\r", " ").replace("\n", " ").replace("\0", " ")
    return text


def format_line(command: str, *middle: str, trailing: str | None = None,
                source: str | None = None, tags: dict[str, str] | None = None) -> str:
    """One line without CRLF. ``middle`` parameters must be non-empty words not starting
    with ``:`` (names, channels, numbers: anything else is our bug, so ValueError);
    ``trailing`` always gets its ``:`` and is cut at a character boundary so that the body
    fits in 512 bytes with its CRLF."""
    for p in middle:
        if not p or " " in p or p[0] == ":" or _safe(p) != p:
            raise ValueError(f"bad middle parameter {p!r} for {command}")
    body = " ".join(([f":{source}"] if source else []) + [command, *middle])
    if trailing is not None:
        body = f"{body} :"
        body += fit_bytes(_safe(trailing), BODY_ROOM - len(body.encode()))
    if tags:
        return f"{format_tags(tags)} {body}"
    return body


def word(text: str, limit: int = 64) -> str:
    """Peer input echoed back as a middle parameter (the bad nick of a 432, the unknown
    command of a 421): one non-empty word, no control characters, no leading ``:``, so a
    peer can never shape our reply line."""
    text = clean(text).replace(" ", "_").lstrip(":")
    return fit_bytes(text, limit) or "*"


def fit_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:max(0, limit)].decode("utf-8", "ignore")


def split_text(text: str, limit: int) -> list[str]:
    """Split chat text into pieces of at most ``limit`` bytes for successive PRIVMSGs.

    A native line may be 4096 bytes, an IRC line only 512: the text is cut at the last space
    inside the window when there is one in its second half (so words stay whole), else at a
    character boundary. No piece is empty, except the single piece of an empty text."""
    limit = max(limit, 4)  # room for one character of any width
    pieces: list[str] = []
    data = text.encode()
    while len(data) > limit:
        cut = limit
        while cut and (data[cut] & 0xC0) == 0x80:  # back off to a character boundary
            cut -= 1
        space = data.rfind(b" ", limit // 2, cut)
        if space > 0:
            cut = space
        pieces.append(data[:cut].decode())
        data = data[cut:].lstrip(b" ") if space > 0 else data[cut:]
    if data or not pieces:
        pieces.append(data.decode())
    return pieces


# --- decoding bytes --------------------------------------------------------------------------


def body_too_long(line: str) -> bool:
    """Whether ``line`` breaks the limits: body over 512 bytes with CRLF, tags over 8191.

    The line was decoded with U+FFFD for invalid bytes; each stands for one byte of input,
    so it counts as one here rather than the three bytes it encodes to."""
    body = line
    if line.startswith("@"):
        tags, _, body = line.partition(" ")
        if len(tags) + 1 > MAX_TAGS and len(tags.encode()) + 1 > MAX_TAGS:
            return True
    if len(body) * 4 <= BODY_ROOM:  # cheap common case: can't be too long
        return False
    size = len(body.encode()) - 2 * body.count("\ufffd")
    return size > BODY_ROOM


@dataclass(frozen=True, slots=True)
class InvalidUtf8:
    """A line that was not valid UTF-8 (``UTF8ONLY``): refused with ``FAIL <command>
    INVALID_UTF8``, as ergo does, and never acted on."""

    command: str


class IrcDecoder:
    """Bytes in, :class:`IrcLine` (or :data:`~geventchat.wire.native.TOO_LONG`) out.

    It wraps a :class:`LineDecoder` for the line splitting (LF or CRLF, partial reads,
    bounded memory, U+FFFD for invalid UTF-8). The connection passes the decoder the native
    side already fed (it may hold half a line); its limit is then the native one, so tags
    longer than about 3.5 KB arrive as ``TOO_LONG`` too. Empty lines are skipped, as IRC
    servers do.
    """

    __slots__ = ("_lines",)

    def __init__(self, lines: LineDecoder | None = None) -> None:
        self._lines = lines if lines is not None else LineDecoder(MAX_TAGS + BODY_ROOM)

    def feed(self, data: bytes) -> list[IrcLine | LineTooLong | InvalidUtf8]:
        return self.accept_all(self._lines.feed(data))

    def close(self) -> list[IrcLine | LineTooLong | InvalidUtf8]:
        return self.accept_all(self._lines.close())

    @staticmethod
    def accept(raw: str | LineTooLong) -> IrcLine | LineTooLong | InvalidUtf8 | None:
        """Check and parse one split line; ``None`` for one to ignore."""
        if not isinstance(raw, str):
            return TOO_LONG
        if body_too_long(raw):
            return TOO_LONG
        if type(raw) is BadUtf8:
            msg = parse_line(raw)
            command = msg.command if msg is not None else ""
            return InvalidUtf8(command if command.isascii() and command.isalnum() else "*")
        return parse_line(raw)

    @classmethod
    def accept_all(cls, raws: Iterable[str | LineTooLong]
                   ) -> list[IrcLine | LineTooLong | InvalidUtf8]:
        return [m for m in map(cls.accept, raws) if m is not None]


# --- CTCP ------------------------------------------------------------------------------------


def parse_ctcp(text: str) -> tuple[str, str] | None:
    """``"\\x01ACTION waves\\x01"`` -> ``("ACTION", "waves")``; ``None`` for plain text.

    The closing ``\\x01`` is optional (some clients cut it when the line is too long)."""
    if not text.startswith("\x01"):
        return None
    body = text[1:]
    if body.endswith("\x01"):
        body = body[:-1]
    command, _, arg = body.partition(" ")
    return command.upper(), arg


# --- rendering events ------------------------------------------------------------------------


class Hostmasks:
    """``nick -> user@host`` of the IRC users, for the ``:nick!user@host`` source of events
    that carry only names; everyone else (native users, authors of old history) is
    ``nick!nick@<server>``. Keyed by the exact registered name, which is what events carry.

    The connection keeps it right: :meth:`rename` after a successful ``hub.rename`` (which
    renders the NICK line with the old name first), :meth:`remove` a loop pass after a quit,
    so lines queued before the quit still show the right mask.
    """

    def __init__(self, default_host: str) -> None:
        self.default_host = default_host
        self._masks: dict[str, str] = {}

    def prefix(self, name: str) -> str:
        mask = self._masks.get(name)
        return f"{name}!{mask}" if mask else f"{name}!{name}@{self.default_host}"

    def add(self, name: str, user: str, host: str) -> str:
        """Register ``name``; returns the stored mask, the token for :meth:`remove`."""
        mask = self._masks[name] = f"{user}@{host}"
        return mask

    def rename(self, old: str, new: str) -> None:
        mask = self._masks.pop(old, None)
        if mask is not None:
            self._masks[new] = mask

    def remove(self, name: str, token: str) -> None:
        """Forget ``name`` unless someone registered it again since (``token`` differs)."""
        if self._masks.get(name) is token:
            del self._masks[name]



def irc_time(when: datetime) -> str:
    """The IRCv3 ``server-time`` format: UTC, millisecond precision, ``Z``."""
    t = when.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def channel(room: str) -> str:
    """Rooms are shown to IRC as ``#name`` (``CHANTYPES=#``)."""
    return f"#{room}"


@lru_cache(maxsize=4096)
def _room_key(room: str) -> str:
    return name_key(room)


def msgid(room: str, ident: int) -> str:
    """The IRCv3 ``msgid`` of the stored line ``ident`` of ``room``: ``<room key>-<id>``.

    Stable and unique without any state: a room's ids only grow (across restarts and
    clears) and are the same on every node of a cluster (the broker numbers a line once),
    and the room key is the room's identity (``name_key``: letters, digits, ``_ - .``), so
    every node, before and after a restart, gives one line the same msgid."""
    return f"{_room_key(room)}-{ident}"


def parse_msgid(value: str) -> tuple[str, int] | None:
    """``"lobby-42"`` (or a piece of it, ``"lobby-42.1"``) -> ``("lobby", 42)``; None for
    anything we never issued."""
    key, sep, ident = value.rpartition("-")
    ident = ident.partition(".")[0]  # a piece of a long line: the line itself
    if not sep or not key or not ident.isascii() or not ident.isdigit() or len(ident) > 18:
        return None
    return key, int(ident)


#: Batch references for history replays: unique per process, short.
_BATCH_IDS: Iterator[int] = itertools.count(1)

#: Events a client without ``echo-message`` must not get back from its own rooms.
_ECHOED: Final = (ev.Message, ev.Action, ev.RoomNotice)
#: Stored events: they carry a ``msgid`` (with ``message-tags``).
_STORED: Final = (ev.Message, ev.Action, ev.Cleared)


@dataclass(frozen=True, slots=True)
class IrcRenderer:
    """Renders events as IRC lines for one combination of capabilities.

    One instance per (server, ``server-time``, ``echo-message``, ``batch``...), cached by
    the connection, so a room renders a batch once per combination present. With
    ``echo-message`` every member gets the same bytes (``shared``); without it each member
    is rendered for (``render_for``) and its own messages are left out. With
    ``message-tags`` stored lines carry their ``msgid``; with ``draft/chathistory`` a join
    shows no history (the client asks for it with CHATHISTORY).
    """

    server: str
    masks: Hostmasks
    server_time: bool = False
    echo: bool = False
    batch: bool = False
    multi_prefix: bool = False  # NAMES/WHO show every prefix (``@+nick``), not the highest
    userhost: bool = False  # userhost-in-names: NAMES shows ``nick!user@host``
    msgid: bool = False  # message-tags: stored lines carry ``msgid``
    chathistory: bool = False  # draft/chathistory: no automatic replay on join

    name: ClassVar[str] = "irc"

    #: One JOIN/PART per user: IRC clients keep their nick lists from them.
    summarizes: ClassVar[bool] = False

    @property
    def shared(self) -> bool:
        return self.echo

    # --- the Renderer protocol ---------------------------------------------------------

    def render(self, event: ev.Event) -> bytes:
        return _wire(self.lines(event))

    def render_many(self, events: list[ev.Event]) -> bytes:
        return _wire([line for e in events for line in self.lines(e)])

    def render_for(self, session: Session, events: list[ev.Event]) -> bytes:
        if self.echo:
            return self.render_many(events)
        me = session.name
        return self.render_many([e for e in events
                                 if not (isinstance(e, _ECHOED) and e.name == me)])

    def render_to(self, nick: str, event: ev.Event) -> bytes:
        """``event`` for the one client called ``nick`` (``*`` before registration): a
        notice is addressed to it, its own KILL is a KILL and an ERROR (not the QUIT the
        others read), and its own private message comes back only with echo-message."""
        if isinstance(event, ev.Killed) and event.name == nick:
            return _wire(self._killed_victim(event))
        if isinstance(event, ev.PrivateMessage) and not self.echo and event.sender == nick \
                and event.target != nick:
            return b""
        return _wire(self.lines(event, nick))

    def join_burst(self, session: Session, room: Room, replay: list[ev.Event],
                   joined: ev.Joined) -> bytes:
        """A newcomer's view of ``room``: its JOIN, the topic (332), the names (353, 366),
        then the history as the channel's messages, timed and batched when negotiated."""
        me, chan = session.name, channel(room.name)
        lines = self.lines(joined)
        if room.topic:
            lines.append(self.numeric(RPL_TOPIC, me, chan, trailing=room.topic))
        lines += self.names(me, room)
        if not self.chathistory:
            lines += self.replay(chan, replay)
        return _wire(lines)

    # --- pieces ---------------------------------------------------------------------------

    def numeric(self, code: str, nick: str, *params: str, trailing: str | None = None) -> str:
        """``:server CODE nick params :trailing``, the shape of every numeric reply."""
        return format_line(code, nick or "*", *params, trailing=trailing, source=self.server)

    def prefixes(self, room: Room, s: Session) -> str:
        """``@`` for operators, ``+`` for voiced members (both under multi-prefix)."""
        op = "@" if room.is_op(s) else ""
        voice = "+" if s.key in room.modes.voices else ""
        return op + voice if self.multi_prefix else (op or voice)

    def names(self, me: str, room: Room, viewer: Session | None = None) -> list[str]:
        """353 lines (the channel's type: ``=`` public, ``*`` private, ``@`` secret; member
        prefixes; split to fit 512 bytes) and the closing 366. ``viewer``, when not a
        member, does not see invisible (``+i``) members."""
        chan = channel(room.name)
        modes = room.modes
        symbol = "@" if modes.secret else "*" if modes.private else "="
        members = sorted(room.members.values(), key=lambda s: s.name.casefold())
        if viewer is not None and room.key not in viewer.rooms:
            members = [s for s in members if "i" not in s.extra.get("modes", ())]
        if self.userhost:
            words = [self.prefixes(room, s) + self.masks.prefix(s.name) for s in members]
        else:
            words = [self.prefixes(room, s) + s.name for s in members]
        if room.remote:  # members on other nodes of a cluster
            words += [("@" if k in room.ops else "") + n for k, n in room.remote.items()
                      if k not in room.members]
        head = len(self.numeric(RPL_NAMREPLY, me, symbol, chan, trailing="").encode())
        lines = [self.numeric(RPL_NAMREPLY, me, symbol, chan, trailing=chunk)
                 for chunk in _pack(words, BODY_ROOM - head)] if words else []
        lines.append(self.numeric(RPL_ENDOFNAMES, me, chan, trailing="End of /NAMES list"))
        return lines

    def replay(self, chan: str, replay: list[ev.Event]) -> list[str]:
        """History lines, inside a ``chathistory`` batch when ``batch`` was negotiated."""
        if not replay:
            return []
        if not self.batch:
            return [line for e in replay for line in self.lines(e)]
        ref = f"h{next(_BATCH_IDS)}"
        lines = [format_line("BATCH", f"+{ref}", "chathistory", chan, source=self.server)]
        lines += [line for e in replay for line in self.lines(e, batch=ref)]
        lines.append(format_line("BATCH", f"-{ref}", source=self.server))
        return lines

    def history(self, target: str, events: list[ev.Event]) -> list[str]:
        """A CHATHISTORY answer: like :meth:`replay`, but an empty batch is still sent (the
        client waits for it), and nothing at all without ``batch``."""
        if not self.batch:
            return [line for e in events for line in self.lines(e)]
        ref = f"h{next(_BATCH_IDS)}"
        lines = [format_line("BATCH", f"+{ref}", "chathistory", target, source=self.server)]
        lines += [line for e in events for line in self.lines(e, batch=ref)]
        lines.append(format_line("BATCH", f"-{ref}", source=self.server))
        return lines

    def history_targets(self, nick: str, targets: list[tuple[str, datetime]]) -> list[str]:
        """``CHATHISTORY TARGETS`` lines, in a ``draft/chathistory-targets`` batch."""
        ref = f"h{next(_BATCH_IDS)}" if self.batch else None
        tags = {"batch": ref} if ref else None
        lines = [format_line("CHATHISTORY", "TARGETS", name, irc_time(when),
                             source=self.server, tags=tags) for name, when in targets]
        if ref is None:
            return lines
        return [format_line("BATCH", f"+{ref}", "draft/chathistory-targets",
                            source=self.server), *lines,
                format_line("BATCH", f"-{ref}", source=self.server)]

    def lines(self, event: ev.Event, to: str = "*", batch: str | None = None) -> list[str]:
        """``event`` as IRC lines without CRLF (several for a long message, none for a
        prompt). ``to`` is the recipient's nick, for notices from the server."""
        tags: dict[str, str] = {}
        if self.server_time:
            when = getattr(event, "time", None)
            if when is not None:
                tags["time"] = irc_time(when)
        if batch is not None:
            tags["batch"] = batch
        if self.msgid and type(event) in _STORED and event.id:
            tags["msgid"] = msgid(event.room, event.id)
        try:
            return _LINES[type(event)](self, event, to, tags)
        except Exception:  # total: a bad event (a damaged record) is a notice, never a crash
            log.exception("cannot render %s for IRC", type(event).__name__)
            return [format_line("NOTICE", word(to) or "*",
                                trailing="(an event could not be shown)", source=self.server)]

    def _src(self, name: str) -> str:
        return self.masks.prefix(name)

    def _privmsg(self, name: str, target: str, text: str, tags: dict[str, str],
                 action: bool = False) -> list[str]:
        source = self._src(name)
        head = len(format_line("PRIVMSG", target, trailing="", source=source).encode())
        room = BODY_ROOM - head - (len("\x01ACTION \x01") if action else 0)
        pieces = split_text(text, room)
        if action:
            pieces = [f"\x01ACTION {p}\x01" for p in pieces]
        return [format_line("PRIVMSG", target, trailing=p, source=source,
                            tags=_piece_tags(tags, i)) for i, p in enumerate(pieces)]

    def _user_notice(self, name: str, target: str, text: str, tags: dict[str, str]
                     ) -> list[str]:
        """A user's NOTICE, split like a PRIVMSG."""
        source = self._src(name)
        head = len(format_line("NOTICE", target, trailing="", source=source).encode())
        return [format_line("NOTICE", target, trailing=p, source=source, tags=tags)
                for p in split_text(text, BODY_ROOM - head)]

    def _notice(self, target: str, text: str, tags: dict[str, str]) -> list[str]:
        return [format_line("NOTICE", target, trailing=text, source=self.server, tags=tags)]

    def _killed_victim(self, e: ev.Killed) -> list[str]:
        return [format_line("KILL", e.name, trailing=e.reason or e.by, source=self._src(e.by)),
                format_line("ERROR", trailing=f"Closing link: ({_kill_text(e)})")]


def _piece_tags(tags: dict[str, str], i: int) -> dict[str, str]:
    """Tags of the ``i``-th PRIVMSG a long line is split into: every piece needs a msgid
    of its own (clients drop a msgid they have seen), so the pieces after the first are
    ``<msgid>.1``, ``<msgid>.2``... (a CHATHISTORY reference to one means the whole line)."""
    if not i or "msgid" not in tags:
        return tags
    return {**tags, "msgid": f"{tags['msgid']}.{i}"}


def _wire(lines: list[str]) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode()


def _pack(words: list[str], limit: int) -> list[str]:
    """Join words with spaces into as few lines of at most ``limit`` bytes as possible."""
    lines: list[str] = []
    current = ""
    for w in words:
        candidate = f"{current} {w}" if current else w
        if current and len(candidate.encode()) > limit:
            lines.append(current)
            candidate = w
        current = candidate
    return [*lines, current]


def _quit_text(reason: str) -> str:
    return reason or "Client Quit"


def _shutdown(r: IrcRenderer, e: ev.Shutdown, to: str, tags: dict[str, str]) -> list[str]:
    text = f"server shutting down: {e.reason}"
    return [*r._notice(to, text, tags), format_line("ERROR", trailing=f"Closing link: ({text})")]


def _kill_text(e: ev.Killed) -> str:
    """``Killed (root: flooding)``: who and why, as the native side says it."""
    return f"Killed ({e.by}: {e.reason})" if e.reason else f"Killed ({e.by})"


def _killed(r: IrcRenderer, e: ev.Killed, to: str, tags: dict[str, str]) -> list[str]:
    return [format_line("QUIT", trailing=_kill_text(e), source=r._src(e.name), tags=tags)]


def _kicked(r: IrcRenderer, e: ev.Kicked, to: str, tags: dict[str, str]) -> list[str]:
    return [format_line("KICK", channel(e.room), e.name, trailing=e.reason or e.by,
                        source=r._src(e.by), tags=tags)]


def _left(r: IrcRenderer, e: ev.Left, to: str, tags: dict[str, str]) -> list[str]:
    trailing = e.reason or None
    return [format_line("PART", channel(e.room), trailing=trailing, source=r._src(e.name),
                        tags=tags)]


# One function per event type, looked up by type() like the native renderer does.
_LINES: Final = {
    ev.Message: lambda r, e, to, t: r._privmsg(e.name, channel(e.room), e.text, t),
    ev.Action: lambda r, e, to, t: r._privmsg(e.name, channel(e.room), e.text, t, action=True),
    ev.PrivateMessage: lambda r, e, to, t: (r._user_notice(e.sender, e.target, e.text, t)
                                            if e.notice
                                            else r._privmsg(e.sender, e.target, e.text, t)),
    ev.RoomNotice: lambda r, e, to, t: r._user_notice(e.name, channel(e.room), e.text, t),
    ev.Invited: lambda r, e, to, t: [format_line("INVITE", e.target, channel(e.room),
                                                 source=r._src(e.by), tags=t)],
    ev.Joined: lambda r, e, to, t: [format_line("JOIN", channel(e.room), source=r._src(e.name),
                                                tags=t)],
    ev.Left: _left,
    ev.Quit: lambda r, e, to, t: [format_line("QUIT", trailing=_quit_text(e.reason),
                                              source=r._src(e.name), tags=t)],
    ev.Kicked: _kicked,
    ev.Killed: _killed,
    ev.Topic: lambda r, e, to, t: [format_line("TOPIC", channel(e.room), trailing=e.text,
                                               source=r._src(e.by), tags=t)],
    ev.Renamed: lambda r, e, to, t: [format_line("NICK", e.new, source=r._src(e.old),
                                                 tags=t)],
    ev.Cleared: lambda r, e, to, t: r._notice(channel(e.room), f"history cleared by {e.by}", t),
    ev.ModeChanged: lambda r, e, to, t: [format_line(
        "MODE", channel(e.room), e.modes, *e.args,
        source=r._src(e.by) if e.by else r.server, tags=t)],
    ev.Shutdown: _shutdown,
    ev.Notice: lambda r, e, to, t: r._notice(to, e.text, t),
    ev.Error: lambda r, e, to, t: r._notice(to, e.text, {}),
    ev.Prompt: lambda r, e, to, t: [],
}
