"""Presence in big rooms: long runs of joins and leaves folded into one summary line each.

Every member hearing every join makes a crowd of N arriving in one room cost N^2/2 notice
lines (10,000 newcomers: about 1 GB of output). Busy networks stop itemizing presence in
big rooms (Twitch above 1,000 chatters, ircu's ``+D``, Discord's large guilds); here, in a
room above the server's ``--presence-summary`` size, a run of more than :data:`RUN_MIN`
joins and leaves in one delivery batch reaches line-based readers as at most two
:class:`~geventchat.core.events.PresenceSummary` events (``* 523 joined: alice, bob,
carol and 520 more``), so a storm costs one short line per member per batch.

Only renderers that ask for it (``summarizes``: the native protocol) get the folded form;
IRC and the web client keep one JOIN/PART per user, because their member lists are built
from them. Pure: no I/O, no greenlets; the room calls it at flush time.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from geventchat.core import events as ev

#: Rooms with more members than this fold (``--presence-summary``; 0: never): below it,
#: everyone hears every join, as in the original chat.
PRESENCE_SUMMARY = 500
#: Runs of presence events up to this long are told one by one: a few joins read better
#: as names than as a count.
RUN_MIN = 3
#: Names a summary line spells out before "and N more".
NAMES_SHOWN = 3

_ARRIVALS = (ev.Joined,)
_DEPARTURES = (ev.Left, ev.Quit)
_PRESENCE = _ARRIVALS + _DEPARTURES


def is_presence(event: ev.Event) -> bool:
    """A join or a leave (not a kick: an operator's act is always told by name)."""
    return type(event) in _PRESENCE


class _Run:
    """One run of consecutive presence events: positions of its joins and its leaves."""

    __slots__ = ("start", "end", "joins", "leaves")

    def __init__(self, start: int, end: int, events: list[ev.Event]) -> None:
        self.start, self.end = start, end
        self.joins = [i for i in range(start, end) if type(events[i]) in _ARRIVALS]
        self.leaves = [i for i in range(start, end) if type(events[i]) in _DEPARTURES]


class FoldedBatch:
    """A delivery batch with its long presence runs folded, whole or from any position.

    :meth:`tail` serves a room's newcomers, who each get the part of the batch that came
    after their own join: it costs O(log n + pieces after the position) per newcomer, not
    the length of the tail, so a crowd joining in one batch stays linear.
    """

    def __init__(self, events: list[ev.Event], room: str) -> None:
        self._events = events
        self._room = room
        #: The batch in pieces: a single event index, or a long run (``_Run``).
        self._pieces: list[int | _Run] = []
        self._starts: list[int] = []
        i, n = 0, len(events)
        while i < n:
            if type(events[i]) not in _PRESENCE:
                self._add(i, i)
                i += 1
                continue
            j = i
            while j < n and type(events[j]) in _PRESENCE:
                j += 1
            if j - i > RUN_MIN:
                self._add(i, _Run(i, j, events))
            else:
                for k in range(i, j):
                    self._add(k, k)
            i = j
        self._folded = [self._fold(piece, None) for piece in self._pieces]
        self._whole: list[ev.Event] | None = None

    def _add(self, start: int, piece: int | _Run) -> None:
        self._starts.append(start)
        self._pieces.append(piece)

    @property
    def folded(self) -> bool:
        """Whether anything was folded (if not, the batch is best rendered as it is)."""
        return any(isinstance(piece, _Run) for piece in self._pieces)

    def events(self) -> list[ev.Event]:
        """The whole batch, folded (built once, shared by every renderer that asks)."""
        if self._whole is None:
            self._whole = [e for piece in self._folded for e in piece]
        return self._whole

    def tail(self, skip: int) -> list[ev.Event]:
        """The batch from index ``skip`` on, folded."""
        if skip >= len(self._events):
            return []
        i = bisect_right(self._starts, skip) - 1
        out = list(self._fold(self._pieces[i], skip))
        for piece in self._folded[i + 1:]:
            out.extend(piece)
        return out

    def _fold(self, piece: int | _Run, skip: int | None) -> list[ev.Event]:
        events = self._events
        if isinstance(piece, int):
            return [events[piece]]
        start = piece.start if skip is None else max(skip, piece.start)
        if piece.end - start <= RUN_MIN:
            return events[start:piece.end]
        out: list[ev.Event] = []
        kinds = [("joined", piece.joins), ("left", piece.leaves)]
        if piece.joins and piece.leaves and piece.leaves[-1] < piece.joins[-1]:
            kinds.reverse()  # whichever happened last is told last (someone back again)
        for kind, positions in kinds:
            first = bisect_left(positions, start)
            count = len(positions) - first
            if count:
                shown = positions[first:first + NAMES_SHOWN]
                names = tuple(_name(events[k]) for k in shown)
                out.append(ev.PresenceSummary(self._room, kind, count, names))
        return out


def _name(event: ev.Event) -> str:
    return event.name  # type: ignore[union-attr]  # Joined, Left and Quit all have one
