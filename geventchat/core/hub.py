"""Membership and fan-out: sessions, rooms and the hub that owns them.

Fan-out is batched per room and per event-loop pass. :meth:`Room.broadcast` only appends
the event to the room's pending list and, once per pass, schedules :meth:`Room.flush` as a
loop callback. The flush renders the whole batch once per protocol present in the room and
hands the same bytes to every member's :class:`~geventchat.edges.outbuf.Output`, which sends
without waiting. So a busy room costs one render and one ``send`` per member per loop pass,
however many lines were said in it, and a slow member never holds anyone up.

Ordering rules (each is a known batching trap):

* a line for one client flushes its room first, so it can't overtake broadcasts said before;
* a join flushes the room before taking the history snapshot, so the newcomer gets no line
  twice (once replayed, once live); a leave flushes before removing the member, so the
  leaver gets every line said before it left.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from time import perf_counter
from types import MappingProxyType, MethodType
from typing import Protocol

import gevent

from geventchat.core import events as ev
from geventchat.core.broker import Broker
from geventchat.core.directory import Directory, LocalDirectory
from geventchat.core.errors import ChatError
from geventchat.core.modes import RoomModes
from geventchat.core.presence import PRESENCE_SUMMARY, RUN_MIN, FoldedBatch
from geventchat.core.stats import STATS
from geventchat.core.text import name_key

log = logging.getLogger(__name__)

LOBBY_NAME = ev.LOBBY_NAME  # re-exported: the room every native client starts in

#: Join and leave notices wait up to this long for company before going out. A crowd
#: arriving at once (a restart, a reconnect storm) then costs one batch per member for
#: hundreds of joins instead of one per loop pass; any chat line flushes them at once.
#: The wait grows with the room, since each flush costs one ``send`` (~10 us of kernel
#: time on loopback) per member: 50 ms up to 100 members, 0.5 s at 1,000, 2 s from 4,000.
#: In a storm of 10,000 arrivals (counted) that is 6,300 writes of join notices to
#: members already in, besides each newcomer's one tail.
PRESENCE_DELAY = 0.05
PRESENCE_DELAY_MAX = 2.0
PRESENCE_MEMBERS = 100  # members per PRESENCE_DELAY of waiting


#: A batch for more members than this goes out a slice of this many writes per loop pass
#: (:class:`_Drain`), after its speakers: one flush of a 10,000-member room (10,000 sends,
#: 100-200 ms on loopback) would otherwise hold the loop, and every line said meanwhile,
#: every arrival and every other room waited for it.
FLUSH_SLICE = 1000
#: While a drain keeps up, a slice also ends after this long (checked every 32 writes):
#: in a storm a write costs 10-20 us, since each wakes a reader, so 1,000 of them were
#: 20 ms passes that a chatter's next line waited behind.
SLICE_BUDGET = 0.005
#: A drain owing more than this many bytes is behind (steady load into a big room): its
#: slices then go by count alone, or it would fall further behind with every batch.
BEHIND_BYTES = 4 << 20
#: A drain owing more than this is far behind (more load than the server can write):
#: the next batch first writes everything owed, as if there were no drain. Each member's
#: part is its own copy once batches join it, so this bounds the drain's memory.
FAR_BEHIND_BYTES = 32 << 20

_SPOKEN = (ev.Message, ev.Action)
_NO_EXTRA: Mapping[str, object] = MappingProxyType({})


def _speakers(events: list[ev.Event]) -> list[str]:
    """Keys of those who said something in a batch, in the order they first spoke."""
    names = dict.fromkeys(e.name for e in events if type(e) in _SPOKEN)  # one key per name
    return list(dict.fromkeys(name_key(name) for name in names))


class _Drain:
    """What a big room's members are still owed, written a slice per loop pass after the
    speakers of each batch (who get their part and their own line at once).

    A later batch joins the drain rather than finishing it: a member still owed the
    earlier batch gets both in one write, in order, when its turn comes, so no batch ever
    has to reach 10,000 members in one pass. A line for one member (a private line, an
    error) takes that member's part first (:meth:`take`); a leaver gets its part on the
    way out if the drain holds chat (``spoken``), else nothing more of it."""

    __slots__ = ("queue", "parts", "timer", "spoken", "owed")

    def __init__(self) -> None:
        self.queue: deque[Output] = deque()  # whose turn comes next (taken ones skipped)
        self.parts: dict[Output, bytes] = {}  # what each is still owed
        self.timer: object | None = None
        self.spoken = False  # holds chat, not only joins and leaves
        self.owed = 0  # bytes in parts

    def add(self, outs: Iterable[Output], data: bytes, skip: Iterable[Output] = ()) -> None:
        """``data`` for each of ``outs`` but ``skip``, after what each is owed already."""
        parts, queue, skip = self.parts, self.queue, set(skip)
        added = 0
        for out in outs:
            if out in skip:
                continue
            added += 1
            owed = parts.get(out)
            if owed is None:
                parts[out] = data
                queue.append(out)
            else:
                parts[out] = owed + data
        self.owed += added * len(data)

    def step(self, limit: int | None) -> bool:
        """Write to up to ``limit`` more members (None: all of them, now); True when done.

        Timed only while it keeps up (:data:`BEHIND_BYTES`): slices cut by a clock alone
        fell behind under steady load (10 senders to 5,000: delivered p99 5.3 s)."""
        parts, queue = self.parts, self.queue
        count = 0
        timed = self.owed < BEHIND_BYTES
        deadline = perf_counter() + SLICE_BUDGET
        written = 0
        while queue:
            out = queue.popleft()
            data = parts.pop(out, None)
            if data is None:
                continue  # taken already, or gone
            out.write(data)
            written += len(data)
            count += 1
            if limit is not None and (count >= limit or timed and not count & 31
                                      and perf_counter() > deadline):
                break
        self.owed -= written
        return not queue

    def take(self, out: Output) -> bytes:
        """This member's part (it is then counted as written); nothing for one owed none."""
        data = self.parts.pop(out, b"")
        self.owed -= len(data)
        return data


class Output(Protocol):
    """A client's non-blocking output (``edges.outbuf.Output``): what fan-out writes to."""

    closed: bool

    def write(self, data: bytes) -> None: ...


class Renderer(Protocol):
    """What a protocol provides to the hub: events in, wire bytes out.

    ``shared`` renderers give every recipient the same bytes, so a batch is rendered once
    for all of them; others (an IRC client without ``echo-message`` must not see its own
    lines) are asked per recipient with ``render_for``.
    """

    name: str
    shared: bool
    #: Wants long runs of joins and leaves in big rooms folded (``core.presence``).
    summarizes: bool

    def render(self, event: ev.Event) -> bytes: ...

    def render_many(self, events: list[ev.Event]) -> bytes: ...

    def render_for(self, session: Session, events: list[ev.Event]) -> bytes: ...

    def join_burst(self, session: Session, room: Room, replay: list[ev.Event],
                   joined: ev.Joined) -> bytes: ...


class Session:
    """A registered user: identity, rights, the rooms it is in, and how to reach it.

    A native client is in one room at a time (``room``); an IRC client may be in many.
    The connection that owns the session supplies ``disconnect``, which ends it from any
    greenlet (kick, shutdown, overflow) after pending output is written.
    """

    __slots__ = ("name", "key", "account", "rooms", "room", "out", "proto", "_addr",
                 "_disconnect", "_disconnect_owner", "extra", "always_in_room")

    def __init__(
        self,
        name: str,
        out: Output,
        proto: Renderer,
        disconnect: Callable[[str], None],
        account: str | None = None,
        addr: str | tuple = "",
    ) -> None:
        self.name = name
        self.key = name_key(name)
        # Key of the admin account this user logged in as; None for everyone else.
        self.account = account
        self.rooms: dict[str, Room] = {}
        #: The room a native client is in: the last one joined (kept by Room).
        self.room: Room | None = None
        self.out = out
        self.proto = proto
        # "ip:port", or the connection's address pair, formatted when asked (``addr``):
        # a string kept per session would cost every idle client 64 bytes.
        self._addr = addr
        self.disconnect = disconnect
        # Per-protocol state (IRC: user, away...); a protocol that needs it sets its own
        # dict, so the many native sessions share one empty, read-only mapping.
        self.extra: Mapping[str, object] = _NO_EXTRA
        #: Native and web users are always in some room (a kick sends them to the lobby);
        #: IRC users may be in none.
        self.always_in_room = False

    @property
    def addr(self) -> str:
        addr = self._addr
        return addr if isinstance(addr, str) else f"{addr[0]}:{addr[1]}"

    @property
    def disconnect(self) -> Callable[[str], None]:
        owner = self._disconnect_owner
        return self._disconnect if owner is None else MethodType(self._disconnect, owner)

    @disconnect.setter
    def disconnect(self, callback: Callable[[str], None]) -> None:
        # The usual callback is the connection's bound ``close``: kept as its function
        # and its object, so idle sessions keep no method object each (64 bytes apiece).
        if isinstance(callback, MethodType):
            self._disconnect, self._disconnect_owner = callback.__func__, callback.__self__
        else:
            self._disconnect, self._disconnect_owner = callback, None

    @property
    def is_admin(self) -> bool:
        return self.account is not None

    def send(self, event: ev.Event) -> None:
        """Deliver one event to this user only, after the broadcasts queued before it."""
        self.out.write(self._owed() + self.proto.render(event))

    def send_many(self, events: list[ev.Event]) -> None:
        """Deliver several events to this user only, in one write."""
        if events:
            self.out.write(self._owed() + self.proto.render_many(events))

    def send_raw(self, data: bytes) -> None:
        """Protocol-specific bytes (IRC numerics), ordered like :meth:`send`."""
        self.out.write(self._owed() + data)

    def _owed(self) -> bytes:
        """What this user's rooms have queued for it and not written yet."""
        owed = b""
        for room in self.rooms.values():
            owed += room.owed(self.out)
        return owed

    def __repr__(self) -> str:
        return f"<Session {self.name}>"


class Room:
    """Members, operators, topic and the pending delivery batch of one room, on this node.

    Publishing goes through the hub's :class:`~geventchat.core.broker.Broker` (which orders
    and stores, locally or through Redis); what the broker hands back for delivery enters
    :meth:`deliver`, and one loop pass later :meth:`flush` renders and sends it.
    """

    def __init__(self, name: str, broker: Broker,
                 summary_above: int = PRESENCE_SUMMARY) -> None:
        self.name = name
        #: Members above which presence runs are folded for ``summarizes`` renderers.
        self.summary_above = summary_above
        self.key = name_key(name)
        self.broker = broker
        self.topic = ""
        self.topic_by = ""  # who set it, and when (IRC 333)
        self.topic_time: datetime | None = None
        self.topic_locked = True  # IRC +t: only operators set the topic
        self.members: dict[str, Session] = {}
        #: Members on other nodes (cluster only): key -> name, kept by the broker.
        self.remote: dict[str, str] = {}
        self.ops: set[str] = set()  # keys of room operators (admins are ops everywhere)
        self.modes = RoomModes()  # the other channel modes (voices, bans, key...): actions
        # Members grouped by protocol so each batch is rendered once per protocol.
        self._targets: dict[Renderer, dict[str, Session]] = {}
        self._pending: list[ev.Event] = []
        # Members who joined while a batch was pending: (session, events of the batch to
        # skip). They got those lines in their history replay, or the lines predate them.
        self._fresh: dict[str, tuple[Session, int]] = {}
        self._outputs: dict[Renderer, list[Output]] | None = None
        self._scheduled = False
        self._flushing = False  # a flush is under way (a re-entry queues another pass)
        self._again = False
        self._spoken = 0  # pending events up to here include more than joins and leaves
        self._notices = 0  # joins and leaves pending (a batch with few has nothing to fold)
        self._timer = None  # pending presence flush (a loop timer), if any
        self._drain: _Drain | None = None  # a join/leave batch still going out in slices
        self.version = 0  # bumped whenever the history changes (replay caches key on it)
        self._names: tuple[int, list[str]] | None = None  # sorted names per membership
        self._membership = 0  # bumped at every join, leave and rename
        # A cluster's broker orders joins and leaves with the lines: it hands them back
        # (deliver_except, presence) instead of the room announcing them at once.
        self._ordered = getattr(broker, "orders_presence", False)
        self._loop = gevent.get_hub().loop

    # --- publishing (through the broker) -----------------------------------------------

    def say(self, event: ev.Message | ev.Action) -> None:
        """A stored line: ordered and stored by the broker, then delivered to everyone."""
        self.broker.publish(self, event)

    def clear(self, by: str) -> None:
        """Empty the history (atomically, on disk too) and tell everyone."""
        self.broker.clear(self, ev.Cleared(by, self.name))

    def set_topic(self, by: str, text: str) -> None:
        event = ev.Topic(self.name, by, text)
        self.topic, self.topic_by, self.topic_time = text, by, event.time
        self.broker.announce(self, event)

    def recent(self) -> list[ev.Event]:
        return self.broker.recent(self)

    # --- delivery (what the broker hands back) -------------------------------------------

    def stored(self) -> None:
        """The history changed (a line stored or a clear): replay caches are stale."""
        self.version += 1

    def broadcast(self, event: ev.Event) -> None:
        """Queue ``event`` for every member; it goes out at the end of this loop pass."""
        self._pending.append(event)
        self._spoken = len(self._pending)
        if not self._scheduled:
            self._schedule()

    deliver = broadcast

    def deliver_except(self, event: ev.Event, key: str) -> None:
        """Deliver ``event`` in order to every member but ``key`` (who already has it: a
        newcomer's own join, written in its join burst)."""
        self.settle()
        rendered: dict[Renderer, bytes] = {}
        for k, member in self.members.items():
            if k == key:
                continue
            proto = member.proto
            if proto.shared:
                data = rendered.get(proto)
                if data is None:
                    data = rendered[proto] = proto.render(event)
            else:
                data = proto.render_for(member, [event])
            member.out.write(data)

    def _schedule(self) -> None:
        self._scheduled = True
        self._loop.run_callback(self._flush_callback)

    def presence(self, event: ev.Event | None) -> None:
        """Queue a join/leave notice (or only a newcomer's admission) to go out with the
        next chat line, or after :data:`PRESENCE_DELAY` at the latest."""
        if event is not None:
            self._pending.append(event)
            self._notices += 1
        if not self._scheduled and self._timer is None:
            scale = max(1.0, len(self.members) / PRESENCE_MEMBERS)
            self._timer = self._loop.timer(min(PRESENCE_DELAY * scale, PRESENCE_DELAY_MAX))
            self._timer.start(self._timer_flush)

    def _timer_flush(self) -> None:
        self._cancel_timer()
        self.flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None

    def flush(self) -> None:
        """Render the pending batch once per protocol and hand it to every member.

        Never re-enters itself: a write that ends a member (its sendq overflowed) may make
        code that flushes run in the middle of this one; that call only asks for another
        pass, which runs when this one is done, so no member map changes mid-iteration and
        no line of the batch is lost."""
        if self._flushing:
            self._again = True
            return
        self._flushing = True
        try:
            self._flush_once()
            while self._again:
                self._again = False
                self._flush_once()
        finally:
            self._flushing = False

    def settle(self) -> None:
        """Flush, and finish any drain: every member has been written everything queued so
        far. For writes to many members outside the batch (IRC's NICK and QUIT, a
        cluster's join notices)."""
        self.flush()
        self._end_drain()

    def owed(self, out: Output) -> bytes:
        """Flush, and hand over what a drain still owes ``out`` (then counted as written):
        the caller writes it before anything of its own for that member, so a line for one
        member never overtakes the room's lines, and never waits for the whole room."""
        self.flush()
        drain = self._drain
        return drain.take(out) if drain is not None else b""

    def _flush_once(self) -> None:
        if self._timer is not None:
            self._cancel_timer()
        events = self._pending
        presence_only = self._spoken == 0
        folded = self._fold(events)
        if events:
            self._pending = []
            self._spoken = 0
            self._notices = 0
            outputs = self._outputs or self._build_outputs()
            speakers = _speakers(events)
            # A big room: the speakers now, everyone else through the drain (_Drain).
            big = sum(len(outputs[p]) for p in outputs if p.shared) > FLUSH_SLICE
            for proto, members in self._targets.items():
                if proto.shared:
                    data = proto.render_many(folded.events() if folded and proto.summarizes
                                             else events)
                    n = len(outputs[proto])  # counted per batch, never per delivery
                    STATS.deliveries += n
                    STATS.bytes_out += n * len(data)
                    # This batch's speakers are served first, in the order they spoke: a
                    # typist sees their own line at once, and no member's place in the
                    # room decides who gets to speak next (a fixed order would favour the
                    # same senders every time). Everyone else follows in the same pass, or
                    # in slices over the next passes in a big room.
                    first = [members[k].out for k in speakers if k in members]
                    drain = self._drain
                    for out in first:
                        out.write(drain.take(out) + data if drain is not None else data)
                    if big:
                        if drain is not None and drain.owed > FAR_BEHIND_BYTES:
                            self._end_drain()
                            drain = None
                        if drain is None:
                            drain = self._drain = _Drain()
                        drain.add(outputs[proto], data, first)
                        drain.spoken = drain.spoken or not presence_only
                        continue
                    if drain is not None:
                        self._end_drain()  # a room that shrank: what it owes goes first
                    if first:
                        served = set(first)
                        for out in outputs[proto]:
                            if out not in served:
                                out.write(data)
                    else:
                        for out in outputs[proto]:
                            out.write(data)
                else:
                    for member in list(members.values()):
                        data = proto.render_for(member, events)
                        member.out.write(data)
                        STATS.bytes_out += len(data)
                    STATS.deliveries += len(members)
            if self._drain is not None and self._drain.timer is None:
                self._drain_step()  # a first slice now; a drain under way has its timer
        if self._fresh:
            self._admit(events, folded)

    def _drain_step(self) -> None:
        """One slice of the join/leave batch going out; the next one a loop pass later
        (a timer: other greenlets' reads come first)."""
        drain = self._drain
        if drain is None:
            return
        if drain.step(FLUSH_SLICE):
            self._end_drain()
            return
        if drain.timer is not None:
            drain.timer.close()
        drain.timer = self._loop.timer(0.0)
        drain.timer.start(self._drain_step)

    def _end_drain(self) -> None:
        """Write what is left of the drain to everyone, now."""
        drain, self._drain = self._drain, None
        if drain is None:
            return
        if drain.timer is not None:
            drain.timer.stop()
            drain.timer.close()
        drain.step(None)

    def _fold(self, events: list[ev.Event]) -> FoldedBatch | None:
        """The batch with its presence runs folded, if this room is big enough and the
        batch has any to fold (a batch of chat lines is never even scanned)."""
        if not (self._notices > RUN_MIN and self.summary_above
                and len(self.members) > self.summary_above):
            return None
        folded = FoldedBatch(events, self.name)
        return folded if folded.folded else None

    def _build_outputs(self) -> dict[Renderer, list[Output]]:
        """Outputs per protocol as plain lists, the fan-out loop's cheapest form; rebuilt
        only when membership changes."""
        self._outputs = {proto: [m.out for m in members.values()]
                         for proto, members in self._targets.items()}
        return self._outputs

    def _admit(self, events: list[ev.Event], folded: FoldedBatch | None) -> None:
        """Newcomers get the part of the batch that came after their join, then become
        ordinary fan-out targets."""
        fresh, self._fresh = self._fresh, {}
        self._outputs = None
        # A crowd joining in one batch: newcomer i gets the events after its own join, so
        # rendering each tail would cost O(crowd^2) renders. With a shared renderer each
        # event is rendered once and every tail is a join of those bytes.
        # In a big room the shared renderers' tails join the drain: a storm's newcomers
        # are hundreds of writes per flush, which then go out in its slices.
        drain = self._drain
        lines: dict[Renderer, list[bytes]] = {}
        for key, (session, skip) in fresh.items():
            if len(events) > skip:
                proto = session.proto
                if folded is not None and proto.summarizes:
                    data = proto.render_many(folded.tail(skip))
                elif proto.shared and len(fresh) > 1:
                    rendered = lines.get(proto)
                    if rendered is None:
                        rendered = lines[proto] = [proto.render(e) for e in events]
                    data = b"".join(rendered[skip:])
                else:
                    data = proto.render_for(session, events[skip:])
                if drain is not None and proto.shared:  # (per-member renderers are
                    drain.add((session.out,), data)  # written outside any drain)
                else:
                    session.out.write(data)
            self._targets.setdefault(session.proto, {})[key] = session

    def _unsent(self, session: Session) -> list[ev.Event]:
        """Pending events that a leaver has not received yet, unless they are only others'
        joins and leaves: those it need not hear on its way out, and skipping them keeps a
        mass disconnect linear (each leaver would otherwise render the whole pile)."""
        entry = self._fresh.get(session.key)
        skip = entry[1] if entry else 0
        return self._pending[skip:] if self._spoken > skip else []

    def _flush_callback(self) -> None:
        self._scheduled = False
        self.flush()

    # --- membership ---------------------------------------------------------------------

    def is_op(self, session: Session) -> bool:
        return session.is_admin or session.key in self.ops

    def join(self, session: Session, replay: list[ev.Event] | None = None,
             op: bool | None = None) -> None:
        """Add ``session``: it reads the history (``replay``, or the recent lines) and its
        own join; the others its join. ``op``: whether it runs the room (a cluster decides
        once for every node); by default the first member does.

        No flush here, so a thousand joins in one loop pass cost one batch per member, not
        a thousand: the newcomer skips the part of the pending batch that precedes it (those
        lines are in its history replay already).
        """
        if session.key in self.members:
            return
        if replay is None:
            replay = self.recent()
        joined = ev.Joined(session.name, self.name)
        if (not self.members if op is None else op) and self.key != LOBBY_NAME:
            self.ops.add(session.key)  # the first in a new room runs it
        self.presence(joined if self.members and not self._ordered else None)
        self.members[session.key] = session
        self._membership += 1
        session.rooms[self.key] = self
        session.room = self
        self._fresh[session.key] = (session, len(self._pending))
        session.out.write(session.proto.join_burst(session, self, replay, joined))

    def leave(self, session: Session, event: ev.Event | None) -> None:
        """Remove ``session``; ``event`` (Left, Quit, Kicked) is announced to those who stay.

        The leaver first gets what was said before it left, without flushing the batch for
        everyone (a mass disconnect stays one batch per member).
        """
        unsent = self._unsent(session)
        drain = self._drain
        owed = drain.take(session.out) if drain is not None and drain.spoken else b""
        if (unsent or owed) and not session.out.closed:
            session.out.write(owed + (session.proto.render_for(session, unsent) if unsent
                                      else b""))
        self._remove(session)
        if event is not None and self.members and not self._ordered:
            if isinstance(event, ev.Left | ev.Quit):
                self.presence(event)
            else:
                self.broadcast(event)

    def _remove(self, session: Session) -> None:
        self._outputs = None
        if self._drain is not None:  # had its part (chat), or need not hear others' joins
            self._drain.take(session.out)
        self._membership += 1
        self.members.pop(session.key, None)
        self._fresh.pop(session.key, None)
        self.ops.discard(session.key)
        self.modes.forget(session.key)
        members = self._targets.get(session.proto)
        if members is not None:
            members.pop(session.key, None)
            if not members:
                del self._targets[session.proto]
        session.rooms.pop(self.key, None)
        if session.room is self:
            session.room = next(reversed(session.rooms.values()), None)

    def rekey(self, session: Session, old_key: str) -> None:
        """Keep the member maps in step with a rename."""
        self.flush()  # also admits newcomers, so the session is an ordinary target now
        self._membership += 1
        self.members.pop(old_key, None)
        self.members[session.key] = session
        members = self._targets[session.proto]
        members.pop(old_key, None)
        members[session.key] = session
        self._outputs = None
        if old_key in self.ops:
            self.ops.discard(old_key)
            self.ops.add(session.key)
        self.modes.rekey(old_key, session.key)

    def set_remote(self, key: str, name: str | None) -> None:
        """A member on another node came (``name``) or went (None)."""
        if name is None:
            if self.remote.pop(key, None) is not None:
                self._membership += 1
        elif self.remote.get(key) != name:
            self.remote[key] = name
            self._membership += 1

    def names(self) -> list[str]:
        """Members' names, sorted; cached until the membership changes (``/who`` and
        NAMES at line rate must not sort the room each time)."""
        cached = self._names
        if cached is None or cached[0] != self._membership:
            names = [s.name for s in self.members.values()]
            if self.remote:
                names += [n for k, n in self.remote.items() if k not in self.members]
            names.sort(key=str.casefold)
            self._names = cached = (self._membership, names)
        return cached[1]


class AdminDirectory(Protocol):
    """What the hub needs from the admin accounts (``auth.AdminStore`` is the file one)."""

    def is_admin(self, name: str) -> bool: ...

    def verify(self, name: str, password: str) -> bool: ...


class Hub:
    """Server-wide state on this node: who is connected, which rooms are in use, the admin
    accounts, and counters kept as things change (LUSERS and metrics read them in O(1)).

    The rule of this class and of :class:`Room`: **no method ever switches greenlets**.
    Anything that may wait (loading a room's history, asking Redis, hashing a password)
    happens in the actions layer or the edges before or after a hub call, never inside
    one; so a hub change is atomic as seen by every other greenlet.
    """

    #: The host every user is shown with (hosts are never revealed); the server sets it
    #: from ``--server-name``. Ban masks match it as well as the user's address.
    server_name = "geventchat"

    def __init__(self, broker: Broker, admins: AdminDirectory,
                 directory: Directory | None = None,
                 presence_summary: int = PRESENCE_SUMMARY) -> None:
        self.broker = broker
        #: Rooms above this many members fold presence runs (``core.presence``; 0: never).
        self.presence_summary = presence_summary
        self.admins = admins
        self.directory: Directory = directory or LocalDirectory()
        self.users: dict[str, Session] = {}
        self.rooms: dict[str, Room] = {}
        self.lobby = self.room(LOBBY_NAME)
        self.stopping = False
        self.on_shutdown: Callable[[str], None] | None = None
        #: Rooms in use at once (0: no limit); each may hold a history file open.
        self.max_rooms = 0
        #: Storage problems that last (a full or read-only disk): told to every admin who
        #: logs in while they last, not only to those online when they began.
        self.storage_trouble: dict[str, str] = {}
        self.opers = 0  # sessions logged in as admins
        self.invisible = 0  # IRC users with mode +i
        self.peak_users = 0  # most users at once since the start (LUSERS 265/266)

    # --- rooms ---------------------------------------------------------------------------

    def room(self, name: str) -> Room:
        """The room called ``name`` (a valid name), created on first use. The broker opens
        its storage without waiting; :meth:`Broker.prepare` waits for it, outside the hub."""
        key = name_key(name)
        room = self.rooms.get(key)
        if room is None:
            room = self.rooms[key] = Room(name, self.broker, self.presence_summary)
            self.broker.open(room)
        return room

    def find_room(self, name: str) -> Room | None:
        return self.rooms.get(name_key(name))

    def join(self, session: Session, room: Room, replay: list[ev.Event] | None = None,
             op: bool | None = None) -> bool:
        """Put ``session`` in ``room`` (showing it ``replay``, or the recent lines); False
        (and nothing changes) if the session is no longer registered (killed while its join
        was being prepared)."""
        if self.users.get(session.key) is not session:
            self._collect(room)
            return False
        if self.rooms.get(room.key) is not room:
            # The room was emptied and dropped while the caller prepared it: use it again.
            self.rooms[room.key] = room
        room.join(session, replay, op)
        self.directory.joined(session, room)
        return True

    def part(self, session: Session, room: Room, event: ev.Event | None) -> None:
        """Take ``session`` out of ``room``; drop the room from memory once it is empty."""
        self.directory.parted(session, room, event)
        room.leave(session, event)
        self._collect(room)

    def _collect(self, room: Room) -> None:
        """Forget an empty room; its storage is closed in the background (never here)."""
        if not room.members and room is not self.lobby and self.rooms.get(room.key) is room:
            room.flush()
            del self.rooms[room.key]
            self.broker.close(room)

    @property
    def channels(self) -> int:
        """Rooms with someone in them."""
        return len(self.rooms) - (0 if self.lobby.members else 1)

    def active_rooms(self) -> list[Room]:
        """The lobby and every room with someone in it, lobby first."""
        rest = sorted((r for r in self.rooms.values() if r is not self.lobby and r.members),
                      key=lambda r: r.key)
        return [self.lobby, *rest]

    # --- users ---------------------------------------------------------------------------

    def find(self, name: str) -> Session | None:
        return self.users.get(name_key(name))

    def check_free(self, name: str, me: Session | None = None) -> None:
        """Raise ``name_taken`` unless ``name`` is free (or already ``me``'s)."""
        other = self.users.get(name_key(name))
        if other is not None and other is not me:
            raise ChatError("name_taken", f"name taken: {name}", name)

    def register(self, session: Session, join_lobby: bool = True) -> None:
        """Make ``session`` a user and (native clients) put it in the lobby."""
        self.check_free(session.name)
        self.users[session.key] = session
        self.peak_users = max(self.peak_users, len(self.users))
        if session.is_admin:
            self.opers += 1
            self._tell_trouble(session)
        log.debug("%s joined from %s", session.name, session.addr)  # INFO would cost a
        # tenth of a 10,000-client registration storm; admin logins are audited apart
        if join_lobby:
            self.lobby.join(session)
            self.directory.joined(session, self.lobby)

    def unregister(self, session: Session, event: ev.Quit | ev.Killed | None) -> None:
        """Remove ``session`` everywhere; ``event`` tells those who shared a room with it."""
        if self.users.get(session.key) is not session:
            return
        del self.users[session.key]
        self.directory.gone(session, event)
        if session.is_admin:
            self.opers -= 1
        if "i" in session.extra.get("modes", ()):
            self.invisible -= 1
        # Batched per room like any line. An IRC user sharing several rooms with the
        # leaver reads one QUIT per room; clients ignore the repeats for an unknown nick.
        for room in list(session.rooms.values()):
            room.leave(session, event)
            self._collect(room)
        log.debug("%s left", session.name)

    def rename(self, session: Session, new: str) -> None:
        """Change a user's name everywhere and announce it."""
        self.check_free(new, me=session)
        old, old_key = session.name, session.key
        event = ev.Renamed(old, new)
        self.announce(session, event, include_self=True)
        session.name, session.key = new, name_key(new)
        del self.users[old_key]
        self.users[session.key] = session
        for room in session.rooms.values():
            room.rekey(session, old_key)
        self.directory.renamed(session, old, old_key)
        log.info("%s is now known as %s", old, new)

    def announce(self, session: Session, event: ev.Event, include_self: bool) -> None:
        """Tell everyone who shares a room with ``session`` once, however many rooms
        they share (IRC's NICK and QUIT), after what those rooms already queued."""
        peers: dict[str, Session] = {}
        for room in session.rooms.values():
            room.settle()
            peers.update(room.members)
        if include_self:
            peers[session.key] = session
        else:
            peers.pop(session.key, None)
        rendered: dict[Renderer, bytes] = {}
        for peer in peers.values():
            data = rendered.get(peer.proto)
            if data is None:
                data = rendered[peer.proto] = peer.proto.render(event)
            peer.out.write(data)

    def sessions(self) -> list[Session]:
        return list(self.users.values())

    def set_account(self, session: Session, account: str | None) -> None:
        """Give (an admin login) or take (``-o``, a removed account) admin rights."""
        promoted = not session.is_admin and account is not None
        if session.is_admin != (account is not None) and self.users.get(session.key) is session:
            self.opers += 1 if account is not None else -1
        session.account = account
        if promoted:
            self._tell_trouble(session)

    def storage_failed(self, where: str, text: str) -> None:
        """A store reports a lasting problem: admins online now are told, and admins who
        log in while it lasts."""
        self.storage_trouble[where] = text
        self.notify_admins(text)

    def storage_recovered(self, where: str) -> None:
        if self.storage_trouble.pop(where, None) is not None:
            self.notify_admins(f"{where}: writing works again")

    def _tell_trouble(self, session: Session) -> None:
        if self.storage_trouble:
            session.send_many([ev.Notice(f"storage problem: {text}")
                               for text in self.storage_trouble.values()])

    def set_invisible(self, session: Session, modes: set[str], on: bool) -> bool:
        """IRC user mode ``+i``; True if it changed."""
        if ("i" in modes) == on:
            return False
        if on:
            modes.add("i")
        else:
            modes.discard("i")
        if self.users.get(session.key) is session:
            self.invisible += 1 if on else -1
        return True

    def check_admins(self) -> None:
        """Cheap look (at most once a second) at whether the admin accounts changed on
        disk; if so, reload them and demote sessions whose account is gone. Called at
        every login and name claim, so ``geventchat admin add/remove`` needs no restart."""
        refresh = getattr(self.admins, "refresh", None)
        if refresh is not None and refresh():
            self._demote_removed()

    def reload_admins(self) -> list[Session]:
        """Re-read the admin accounts; sessions whose account is gone lose their rights at
        once (and are told). Returns those sessions."""
        reload = getattr(self.admins, "reload", None)
        if reload is not None:
            reload()
        return self._demote_removed()

    def _demote_removed(self) -> list[Session]:
        demoted = []
        for session in self.sessions():
            if session.account is not None and not self.admins.is_admin(session.account):
                self.set_account(session, None)
                session.send(ev.Notice("your admin account was removed: you are no "
                                       "longer an admin"))
                demoted.append(session)
        return demoted

    def notify_admins(self, text: str) -> None:
        """Tell every admin online (disk trouble and the like)."""
        for session in self.sessions():
            if session.is_admin:
                session.send(ev.Notice(text))

    # --- server-wide ---------------------------------------------------------------------

    def request_shutdown(self, reason: str) -> None:
        """Ask the server to stop (from ``/shutdown``); the server owns the sequence."""
        if self.on_shutdown is not None:
            self.on_shutdown(reason)

    def close_storage(self, timeout: float) -> None:
        """Flush and close every room's storage against one deadline (shutdown)."""
        self.broker.close_all(timeout)
