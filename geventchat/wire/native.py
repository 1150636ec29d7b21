"""The native line protocol, sans-IO (see docs/PROTOCOL.md).

Three pure pieces, no sockets and no gevent, in the style of h11:

* :class:`LineDecoder` turns raw bytes, in chunks of any size, into text lines;
* :func:`parse` turns one line into a :class:`Command`;
* :data:`NATIVE` renders protocol-neutral events into wire bytes.

The connection layer (``server.py``) only moves bytes between a socket and these.
"""

from __future__ import annotations

import logging
import weakref
from typing import Final, NamedTuple

from geventchat.core import events as ev
from geventchat.core.text import clean
from geventchat.core.text import strip_formatting as _plain

log = logging.getLogger(__name__)

#: Longest accepted line in bytes, newline excluded. 4096 holds any sane chat line with room
#: to spare and bounds what one peer can make us buffer.
MAX_LINE: Final = 4096


class LineTooLong:
    """Marker yielded by the decoder in place of a line that exceeded the limit."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG: Final = LineTooLong()


class BadUtf8(str):
    """A decoded line whose bytes were not valid UTF-8 (each bad byte is now U+FFFD). It is
    an ordinary ``str`` for the native protocol, which keeps the replacement; IRC, which
    advertises ``UTF8ONLY``, refuses such a line (``FAIL ... INVALID_UTF8``)."""

    __slots__ = ()


class LineDecoder:
    """Split a byte stream into text lines.

    Accepts ``\\n`` and ``\\r\\n`` endings, partial reads and a last line without newline
    (:meth:`close`). Invalid UTF-8 becomes U+FFFD (in a :class:`BadUtf8` line). A line
    longer than ``limit`` bytes yields
    :data:`TOO_LONG` once and its bytes are dropped up to the next newline, so the
    connection survives and memory stays bounded by ``limit``.
    """

    __slots__ = ("_buf", "limit", "_discarding")

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._buf = b""
        #: Longest accepted line in bytes; may change mid-stream (IRC allows longer lines
        #: with tags than the native protocol).
        self.limit = limit
        self._discarding = False

    def feed(self, data: bytes) -> list[str | LineTooLong]:
        """Add ``data``; return the complete lines it finished, in order."""
        if self._buf:
            data = self._buf + data
        parts = data.split(b"\n")
        self._buf = parts.pop()
        out: list[str | LineTooLong] = []
        for raw in parts:
            if self._discarding:  # tail of a line already reported as too long
                self._discarding = False
                continue
            out.append(self._decode(raw))
        # +1: a pending line may end in the "\r" of a "\r\n" that isn't complete yet.
        if len(self._buf) > self.limit + 1:
            if not self._discarding:
                out.append(TOO_LONG)
                self._discarding = True
            self._buf = b""
        return out

    def close(self) -> list[str | LineTooLong]:
        """End of stream: a final line without a newline still counts."""
        raw, self._buf = self._buf, b""
        if not raw or self._discarding:
            return []
        return [self._decode(raw)]

    def _decode(self, raw: bytes) -> str | LineTooLong:
        if raw[-1:] == b"\r":
            raw = raw[:-1]
        if len(raw) > self.limit:
            return TOO_LONG
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return BadUtf8(raw.decode("utf-8", "replace"))


class Command(NamedTuple):
    """One parsed client line (a named tuple: built once per line, it costs a third of a
    frozen dataclass).

    ``name`` is ``"say"`` for chat text, otherwise the lower-cased command word (the bare
    lines ``exit`` and ``clear`` become ``quit`` and ``clear``). ``arg`` is the rest of the
    line, cleaned of control characters and stripped.
    """

    name: str
    arg: str = ""


#: Bare lines kept from the original chat, mapped to the commands they mean.
_BARE: Final = {"exit": "quit", "clear": "clear"}
_BARE_LONGEST: Final = max(map(len, _BARE))


def parse(line: str) -> Command | None:
    """Parse one decoded line; ``None`` for a line that is empty after cleaning.

    ``//text`` is the escape for chat text starting with ``/``. A lone ``/`` or ``/`` followed
    by a space is an (unknown) command, never chat, so a mistyped command is never broadcast.
    """
    text = clean(line)
    if not text.strip():
        return None
    if text[0] != "/":
        bare = text.strip()
        bare = _BARE.get(bare.lower()) if len(bare) <= _BARE_LONGEST else None
        return Command(bare) if bare else Command("say", text)
    if text.startswith("//"):
        return Command("say", text[1:])
    word, _, rest = text[1:].partition(" ")
    return Command(word.lower(), rest.strip())


def split_arg(arg: str) -> tuple[str, str]:
    """Split ``"NAME rest of text"`` into ``("NAME", "rest of text")``."""
    first, _, rest = arg.strip().partition(" ")
    return first, rest.strip()


# --- rendering ------------------------------------------------------------------------------


def _reason(reason: str) -> str:
    return f" ({reason})" if reason else ""


def _render_kicked(e: ev.Kicked | ev.Killed) -> str:
    where = f" from {e.room}" if isinstance(e, ev.Kicked) and e.room != ev.LOBBY_NAME else ""
    return f"* {e.name} was kicked{where} by {e.by}" + (f": {e.reason}" if e.reason else "")


def _render_summary(e: ev.PresenceSummary) -> str:
    more = e.count - len(e.names)
    return f"* {e.count:d} {e.kind}: {', '.join(e.names)}" + (f" and {more:d} more" if more
                                                               else "")


def _render_topic(e: ev.Topic) -> str:
    if e.text:
        return f"* {e.by} set the topic of {e.room}: {_plain(e.text)}"
    return f"* {e.by} cleared the topic of {e.room}"


# One function per event type: a dict lookup on type() is the cheapest dispatch on the
# fan-out path. Every rendered line is a single line: user text was cleaned on input.
_RENDERERS: Final = {
    ev.Message: lambda e: f"{e.name}: {_plain(e.text)}",
    ev.Action: lambda e: f"* {e.name} {_plain(e.text)}",
    ev.PrivateMessage: lambda e: f"(private) {e.sender} -> {e.target}: {_plain(e.text)}",
    ev.RoomNotice: lambda e: f"{e.name}: {_plain(e.text)}",
    ev.Invited: lambda e: f"* {e.by} invites you to {e.room}: /join {e.room}",
    ev.Joined: lambda e: f"* {e.name} joined",
    ev.PresenceSummary: _render_summary,
    ev.Left: lambda e: f"* {e.name} left{_reason(e.reason)}",
    ev.Quit: lambda e: f"* {e.name} left{_reason(e.reason)}",
    ev.Kicked: _render_kicked,
    ev.Killed: _render_kicked,
    ev.Topic: _render_topic,
    ev.Renamed: lambda e: f"* {e.old} is now known as {e.new}",
    ev.Cleared: lambda e: f"* history cleared by {e.by}",
    ev.ModeChanged: lambda e: f"* {e.by or 'server'} set mode {' '.join((e.modes, *e.args))} "
                              f"on {e.room}",
    ev.HistoryMark: lambda e: (f"= room {e.room} epoch {e.epoch} last {e.last_id}"
                               if e.kind == "room" else f"= resumed {e.room} {e.count}"),
    ev.Shutdown: lambda e: f"* server shutting down: {e.reason}",
    ev.Notice: lambda e: f"* {e.text}",
    ev.Prompt: lambda e: f"? {e.what}:",
    ev.Error: lambda e: f"! {e.text}",
}


def _total(event: object) -> str:
    try:
        return _RENDERERS[type(event)](event)
    except Exception:
        log.exception("cannot render %s", type(event).__name__)
        return "* (an event could not be shown)"


_STORED = (ev.Message, ev.Action, ev.Cleared)


def _with_id(event: ev.Event) -> str:
    """A line as programs that asked for ids see it: ``#ID@TIME `` before each stored
    line (TIME in UTC, ``2026-12-02T06:30:00Z``: replayed lines keep the time they were
    said)."""
    line = _RENDERERS[type(event)](event)
    if type(event) in _STORED and event.id:
        return f"#{event.id}@{event.time.strftime('%Y-%m-%dT%H:%M:%SZ')} {line}"
    return line


class NativeRenderer:
    """Renders events as native protocol lines. Stateless: one instance serves everyone,
    and every member of a room gets the same bytes (``shared``). ``ids=True`` is the
    variant for programs that sent ``/ids``: stored lines carry their id, and each join
    says where the room's history stands (docs/PROTOCOL.md, "Resuming")."""

    shared = True
    #: Big rooms' join and leave storms come folded into summary lines (core.presence).
    summarizes = True

    def __init__(self, ids: bool = False) -> None:
        self.ids = ids
        self.name = "native+ids" if ids else "native"
        self._line = _with_id if ids else None
        # Rendered history replay per room, keyed by the room's history version: a crowd
        # joining at once renders it once, not once per newcomer.
        self._replays: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def render(self, event: ev.Event) -> bytes:
        """The event as wire bytes."""
        return self.render_many([event])

    def render_many(self, events: list[ev.Event]) -> bytes:
        """A batch of events as one buffer: what one fan-out ``send`` carries.

        Total: an event that can't be rendered (a bug, or a record from a damaged file)
        becomes a notice and never an exception in the middle of a fan-out."""
        line = self._line
        try:
            if line is None:
                r = _RENDERERS
                return ("\n".join([r[type(e)](e) for e in events]) + "\n").encode()
            return ("\n".join([line(e) for e in events]) + "\n").encode()
        except Exception:
            return ("\n".join([_total(e) for e in events]) + "\n").encode()

    def render_for(self, session: object, events: list[ev.Event]) -> bytes:
        return self.render_many(events)

    def join_burst(self, session: object, room: object, replay: list[ev.Event],
                   joined: ev.Joined) -> bytes:
        """What a newcomer reads on entering a room: the history, then its own join
        (and the topic, when one is set). With ids, a ``= room`` line comes first."""
        lines: list[ev.Event] = [joined]
        topic = getattr(room, "topic", "")
        if topic:
            lines.append(ev.Notice(f"topic of {joined.room}: {topic}"))
        head = b""
        if self.ids:
            epoch, last = room.broker.position(room)  # type: ignore[attr-defined]
            head = self.render(ev.HistoryMark("room", joined.room, epoch or "-", last))
        return head + self._replay(room, replay) + self.render_many(lines)

    def _replay(self, room: object, replay: list[ev.Event]) -> bytes:
        if not replay:
            return b""
        version = getattr(room, "version", None)
        # The same room, history version and span of ids: a resume replays another span.
        key = (version, len(replay), getattr(replay[0], "id", 0), getattr(replay[-1], "id", 0))
        cached = self._replays.get(room) if version is not None else None
        if cached is not None and cached[0] == key:
            return cached[1]
        data = self.render_many(replay)
        if version is not None:
            self._replays[room] = (key, data)
        return data


NATIVE: Final = NativeRenderer()
NATIVE_IDS: Final = NativeRenderer(ids=True)
