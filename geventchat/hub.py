"""Membership and fan-out: sessions, rooms and the hub that owns them.

Fan-out is batched per room and per event-loop pass. :meth:`Room.broadcast` only appends
the event to the room's pending list and, once per pass, schedules :meth:`Room.flush` as a
loop callback. The flush renders the whole batch once per protocol present in the room and
hands the same bytes to every member's :class:`~geventchat.outbuf.Output`, which sends
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
from collections.abc import Callable, Iterable
from typing import Protocol

import gevent

from geventchat import events as ev
from geventchat.errors import ChatError
from geventchat.outbuf import Output
from geventchat.text import name_key

log = logging.getLogger(__name__)

#: Name of the room every native client starts in.
LOBBY = "lobby"


class Renderer(Protocol):
    """What a protocol provides to the hub: events in, wire bytes out."""

    name: str

    def render(self, event: ev.Event) -> bytes: ...

    def render_many(self, events: list[ev.Event]) -> bytes: ...


class HistoryStore(Protocol):
    """What a room needs from its storage (``history.History`` is the file-backed one)."""

    def recent(self) -> list[ev.Event]: ...

    def append(self, event: ev.Event) -> None: ...

    def clear(self, event: ev.Cleared) -> None: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self) -> None: ...


class Session:
    """A registered user: identity, rights, where they are, and how to reach them.

    The connection that owns the session supplies ``disconnect``, which ends it from any
    greenlet (kick, shutdown, overflow) after pending output is written.
    """

    __slots__ = ("name", "key", "account", "room", "out", "proto", "addr", "disconnect")

    def __init__(
        self,
        name: str,
        out: Output,
        proto: Renderer,
        disconnect: Callable[[str], None],
        account: str | None = None,
        addr: str = "",
    ) -> None:
        self.name = name
        self.key = name_key(name)
        # Key of the admin account this user logged in as; None for everyone else.
        self.account = account
        self.room: Room | None = None
        self.out = out
        self.proto = proto
        self.addr = addr
        self.disconnect = disconnect

    @property
    def is_admin(self) -> bool:
        return self.account is not None

    def send(self, event: ev.Event) -> None:
        """Deliver one event to this user only, after the broadcasts queued before it."""
        if self.room is not None:
            self.room.flush()
        self.out.write(self.proto.render(event))

    def send_many(self, events: list[ev.Event]) -> None:
        """Deliver several events to this user only, in one write."""
        if events:
            if self.room is not None:
                self.room.flush()
            self.out.write(self.proto.render_many(events))

    def __repr__(self) -> str:
        return f"<Session {self.name}>"


class Room:
    """Members, history and the pending broadcast batch of one room."""

    def __init__(self, name: str, history: HistoryStore) -> None:
        self.name = name
        self.history = history
        self.members: dict[str, Session] = {}
        # Members grouped by protocol so each batch is rendered once per protocol.
        self._targets: dict[Renderer, dict[str, Output]] = {}
        self._pending: list[ev.Event] = []
        self._scheduled = False
        self._loop = gevent.get_hub().loop

    # --- fan-out ------------------------------------------------------------------------

    def broadcast(self, event: ev.Event) -> None:
        """Queue ``event`` for every member; it goes out at the end of this loop pass."""
        self._pending.append(event)
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self._flush_callback)

    def say(self, event: ev.Message | ev.Action) -> None:
        """A stored line: history first (in memory at once), then everyone."""
        self.history.append(event)
        self.broadcast(event)

    def flush(self) -> None:
        """Render the pending batch once per protocol and hand it to every member."""
        events = self._pending
        if not events:
            return
        self._pending = []
        for proto, outputs in self._targets.items():
            data = proto.render_many(events)
            for out in outputs.values():
                out.write(data)

    def _flush_callback(self) -> None:
        self._scheduled = False
        self.flush()

    # --- membership ---------------------------------------------------------------------

    def join(self, session: Session) -> None:
        """Replay history to ``session``, add it, and announce it to everyone (itself too)."""
        self.flush()
        replay = self.history.recent()
        if replay:
            session.out.write(session.proto.render_many(replay))
        self.members[session.key] = session
        self._targets.setdefault(session.proto, {})[session.key] = session.out
        session.room = self
        self.broadcast(ev.Joined(session.name, self.name))

    def leave(self, session: Session, event: ev.Event | None) -> None:
        """Remove ``session``; ``event`` (a Left or Kicked) is announced to those who stay."""
        self.flush()
        self.members.pop(session.key, None)
        outputs = self._targets.get(session.proto)
        if outputs is not None:
            outputs.pop(session.key, None)
            if not outputs:
                del self._targets[session.proto]
        session.room = None
        if event is not None:
            self.broadcast(event)

    def rekey(self, session: Session, old_key: str) -> None:
        """Keep the member maps in step with a rename."""
        self.flush()
        self.members.pop(old_key, None)
        self.members[session.key] = session
        outputs = self._targets[session.proto]
        outputs.pop(old_key, None)
        outputs[session.key] = session.out

    def clear(self, by: str) -> None:
        """Empty the history (atomically, on disk too) and tell everyone."""
        event = ev.Cleared(by, self.name)
        self.history.clear(event)
        self.broadcast(event)

    def names(self) -> list[str]:
        return sorted((s.name for s in self.members.values()), key=str.casefold)


class AdminDirectory(Protocol):
    """What the hub needs from the admin accounts (``auth.AdminStore`` is the file one)."""

    def is_admin(self, name: str) -> bool: ...

    def verify(self, name: str, password: str) -> bool: ...


class Hub:
    """Server-wide state: who is connected, which rooms exist, the admin accounts.

    ``history_for(room_name)`` builds the storage for a room the first time it is used, so
    the hub never knows whether history lives in files, memory or (later) Redis.
    """

    def __init__(
        self, history_for: Callable[[str], HistoryStore], admins: AdminDirectory
    ) -> None:
        self._history_for = history_for
        self.admins = admins
        self.users: dict[str, Session] = {}
        self.rooms: dict[str, Room] = {}
        self.lobby = self.room(LOBBY)
        self.stopping = False
        self.on_shutdown: Callable[[str], None] | None = None

    def room(self, name: str) -> Room:
        """The room called ``name``, created on first use."""
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, self._history_for(name))
        return room

    def find(self, name: str) -> Session | None:
        return self.users.get(name_key(name))

    def check_free(self, name: str, me: Session | None = None) -> None:
        """Raise ``name_taken`` unless ``name`` is free (or already ``me``'s)."""
        other = self.users.get(name_key(name))
        if other is not None and other is not me:
            raise ChatError("name_taken", f"name taken: {name}")

    def register(self, session: Session, room: Room | None = None) -> None:
        """Make ``session`` a user and put it in ``room`` (the lobby by default)."""
        self.check_free(session.name)
        self.users[session.key] = session
        (room or self.lobby).join(session)
        log.info("%s joined from %s", session.name, session.addr)

    def unregister(self, session: Session, event: ev.Event | None) -> None:
        """Remove ``session`` everywhere; ``event`` tells its room why (None: silently)."""
        if self.users.get(session.key) is not session:
            return
        del self.users[session.key]
        if session.room is not None:
            session.room.leave(session, event)
        log.info("%s left", session.name)

    def rename(self, session: Session, new: str) -> None:
        """Change a user's name everywhere and announce it."""
        self.check_free(new, me=session)
        old, old_key = session.name, session.key
        session.name, session.key = new, name_key(new)
        del self.users[old_key]
        self.users[session.key] = session
        if session.room is not None:
            session.room.rekey(session, old_key)
            session.room.broadcast(ev.Renamed(old, new))
        log.info("%s is now known as %s", old, new)

    def sessions(self) -> Iterable[Session]:
        return list(self.users.values())

    def request_shutdown(self, reason: str) -> None:
        """Ask the server to stop (from ``/shutdown``); the server owns the sequence."""
        if self.on_shutdown is not None:
            self.on_shutdown(reason)

    def notify_admins(self, text: str) -> None:
        """Tell every admin online (disk trouble and the like)."""
        for session in self.sessions():
            if session.is_admin:
                session.send(ev.Notice(text))

    def broadcast_all(self, event: ev.Event) -> None:
        """Queue ``event`` in every room."""
        for room in self.rooms.values():
            room.broadcast(event)

    def flush_all(self) -> None:
        for room in self.rooms.values():
            room.flush()

    def close_storage(self) -> None:
        """Flush and close every room's history (shutdown)."""
        for room in self.rooms.values():
            try:
                room.history.close()
            except Exception:  # one bad store must not keep the others unflushed
                log.exception("closing history of room %s", room.name)
