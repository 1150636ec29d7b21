"""Protocol-neutral chat events.

The hub, the rooms and the history carry these objects; each listener (the native line
protocol today, IRC next) renders them into its own wire format at the edge. Nothing here
knows any wire format, so a new protocol only needs a new renderer.

Events are dataclasses with ``__slots__``, created on the per-line path and shared by every
recipient. They are not ``frozen``: a frozen dataclass sets each field through
``object.__setattr__`` and costs twice as much to build, so immutability is a rule instead of
a check: nothing assigns to an event after it is made (a stored copy with its id is a new
object, see ``store.history``).
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

#: Name of the room every native client starts in, the one place it is spelled.
LOBBY_NAME = "lobby"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_clock: tuple[int, datetime] = (-1, _EPOCH)


def now() -> datetime:
    """Event time: timezone-aware UTC (history files stay unambiguous across moves), to the
    millisecond, which is what IRC's ``server-time`` shows and CHATHISTORY compares.

    Every event of one millisecond shares one ``datetime`` object: the per-line path builds
    it, and its text in history records (``store.history.encode_record`` caches that by
    identity), once per millisecond instead of once per line. Order within a millisecond is
    the order of the ids.
    """
    global _clock
    ms = _time.time_ns() // 1_000_000
    if ms != _clock[0]:
        _clock = (ms, _EPOCH + timedelta(milliseconds=ms))
    return _clock[1]


@dataclass(slots=True)
class Message:
    """A chat line said by ``name`` in ``room``."""

    name: str
    text: str
    room: str = LOBBY_NAME
    time: datetime = field(default_factory=now)
    #: Per-room id of a stored line (0 until the history or broker numbers it).
    id: int = 0


@dataclass(slots=True)
class Action:
    """``/me text``: an emote, stored like a message."""

    name: str
    text: str
    room: str = LOBBY_NAME
    time: datetime = field(default_factory=now)
    #: Per-room id of a stored line (0 until the history or broker numbers it).
    id: int = 0


@dataclass(slots=True)
class PrivateMessage:
    """A message seen only by ``sender`` and ``target``; never stored."""

    sender: str
    target: str
    text: str
    time: datetime = field(default_factory=now)
    #: An IRC NOTICE: never answered automatically (IRC shows it as a notice; the native
    #: protocol as a private line like any other).
    notice: bool = False


@dataclass(slots=True)
class RoomNotice:
    """An IRC ``NOTICE`` to a room by ``name``: delivered like a line (native users read
    ``name: text``), never stored, never answered automatically."""

    name: str
    text: str
    room: str = "lobby"
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class Invited:
    """``by`` invited ``target`` into ``room`` (told to the target only)."""

    by: str
    target: str
    room: str
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class Joined:
    """``name`` entered ``room``."""

    name: str
    room: str = LOBBY_NAME
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class PresenceSummary:
    """``count`` users ``kind`` (``"joined"`` or ``"left"``) ``room`` in one burst, told as
    one line in a big room (``core.presence``); ``names``: the first few of them."""

    room: str
    kind: str
    count: int
    names: tuple[str, ...]
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class Left:
    """``name`` left ``room`` but stays connected (IRC PART, native ``/join`` elsewhere)."""

    name: str
    reason: str = ""
    room: str = LOBBY_NAME
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class Quit:
    """``name`` left the server (``/quit``, dropped connection, timeout); told once to each
    user who shared a room with it."""

    name: str
    reason: str = ""
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class Kicked:
    """``name`` was removed from ``room`` by a room operator or admin ``by``."""

    name: str
    by: str
    reason: str = ""
    room: str = LOBBY_NAME
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class Killed:
    """``name`` was disconnected from the server by admin ``by`` (native ``/kick``, IRC
    ``KILL``)."""

    name: str
    by: str
    reason: str = ""
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class Topic:
    """``by`` set the topic of ``room`` to ``text`` (empty: cleared)."""

    room: str
    by: str
    text: str
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class Renamed:
    """``old`` is now called ``new``."""

    old: str
    new: str
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class Cleared:
    """The history of ``room`` was emptied by admin ``by``."""

    by: str
    room: str = LOBBY_NAME
    time: datetime = field(default_factory=now)
    #: Per-room id of a stored line (0 until the history or broker numbers it).
    id: int = 0


@dataclass(slots=True)
class ModeChanged:
    """``by`` (a user, or empty for the server) changed modes of ``room``: ``modes`` as
    IRC writes them (``+o``, ``-t``), ``args`` their parameters (``("bob",)``)."""

    room: str
    by: str
    modes: str
    args: tuple[str, ...] = ()
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class HistoryMark:
    """For programs that asked for line ids (native ``/ids``): where a room's history
    stands. ``kind`` is ``"room"`` (sent at each join, before the replay: the room's epoch
    and last id) or ``"resumed"`` (after a replay of exactly the ``count`` lines missed)."""

    kind: str
    room: str
    epoch: str
    last_id: int
    count: int = 0


@dataclass(slots=True)
class Shutdown:
    """The server is stopping; every connection will be closed."""

    reason: str
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class Notice:
    """Informational text for one client (``/who``, ``/help``, goodbye...)."""

    text: str
    time: datetime = field(default_factory=now)


@dataclass(slots=True)
class Prompt:
    """The server waits for one line: ``what`` is ``"name"`` or ``"password"``."""

    what: str


@dataclass(slots=True)
class Error:
    """A coded error for one client. ``code`` is stable (see ``errors.py``); ``text`` is
    the human reason. Each protocol maps the code (the native one prints ``! text``)."""

    code: str
    text: str


#: Kinds that are written to the history file, with the class that carries each.
STORED = {"message": Message, "action": Action, "cleared": Cleared}

Event = (
    Message | Action | PrivateMessage | RoomNotice | Invited | Joined | PresenceSummary
    | Left | Quit | Kicked
    | Killed | Topic | Renamed | Cleared | ModeChanged | HistoryMark | Shutdown | Notice
    | Prompt | Error
)
