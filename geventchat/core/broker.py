"""The seam between publishing and delivery: the :class:`Broker` interface, and the
in-process broker that is the embedded default.

A room publishes (a line, a topic change, a clear) through the broker; the broker puts the
event in the room's one order, stores what is stored, and hands it back for delivery
(:meth:`Room.deliver`). In one process that is a function call in the same loop pass; in a
cluster (``store/redis_broker.py``) it is a round trip through Redis, and every node
delivers in the order Redis gave. The contract, which every broker keeps (docs/DESIGN.md
says more):

* **One order per room.** Events of one room are delivered to every member, on every
  node, in one order, each once. A broker never delivers a node's own events "locally
  first".
* **Stored means numbered.** A stored line (message, action, clear) gets the room's next
  id and is in ``recent()`` from the moment it is delivered.
* **Never blocks the caller, never raises on I/O.** ``publish``, ``announce``, ``clear``,
  ``open`` and ``close`` return at once; what fails later is reported to the publisher as
  an error event (``! not delivered: ...``), never silently dropped. Only ``prepare``
  (called by actions before a join, outside the hub) may wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from geventchat.core import events as ev

if TYPE_CHECKING:
    from geventchat.core.hub import Room

log = logging.getLogger(__name__)

StoredEvent = ev.Message | ev.Action | ev.Cleared


class Broker(Protocol):
    """Orders, stores and hands back room events; see the module docstring."""

    def open(self, room: Room) -> None:
        """The room came into use on this node (storage opened, subscription started)."""

    def prepare(self, room: Room) -> None:
        """Wait (this greenlet only) until the room's history can be replayed."""

    def close(self, room: Room) -> None:
        """The room has no member on this node any more; never waits."""

    def publish(self, room: Room, event: ev.Message | ev.Action) -> None:
        """A stored line: numbered, stored, delivered to every member in order."""

    def announce(self, room: Room, event: ev.Event) -> None:
        """An unstored room event (topic, kick, mode), in the same order as the lines."""

    def clear(self, room: Room, event: ev.Cleared) -> None:
        """Empty the room's history and deliver ``event``, atomically."""

    def recent(self, room: Room) -> list[ev.Event]:
        """The replay for a newcomer, oldest first."""

    def position(self, room: Room) -> tuple[str, int]:
        """The room's history epoch and last stored id (after ``prepare``; never waits)."""

    def since(self, room: Room, after_id: int, limit: int) -> tuple[list[ev.Event], int]:
        """Stored lines with ids above ``after_id`` (oldest first, at most ``limit``) and
        how many ids after ``after_id`` can no longer be had. May wait (a file's tail)."""

    def last(self, room: Room, n: int) -> list[ev.Event]:
        """The last ``n`` stored lines, oldest first. May wait."""

    def close_all(self, timeout: float) -> None:
        """Shutdown: flush and close every room's storage against one deadline."""


class HistoryStore(Protocol):
    """What the local broker needs from one room's storage (``store.history.History``)."""

    epoch: str
    last_id: int

    def recent(self) -> list[StoredEvent]: ...

    def since(self, after_id: int, limit: int) -> tuple[list[StoredEvent], int]: ...

    def last(self, n: int) -> list[StoredEvent]: ...

    def append(self, event: StoredEvent) -> StoredEvent | None: ...

    def clear(self, event: ev.Cleared) -> StoredEvent | None: ...


class HistoryShelf(Protocol):
    """Every room's storage on this node (``store.history.HistoryShelf``): ``get`` opens
    or reuses, ``release`` closes in the background, ``close_all`` at shutdown."""

    def get(self, room: str) -> HistoryStore: ...

    def release(self, history: HistoryStore) -> None: ...

    def close_all(self, timeout: float) -> None: ...


class TopicStore(Protocol):
    """Where the local broker keeps topics across restarts (``store.topics``)."""

    def get(self, key: str) -> object | None: ...

    def set(self, key: str, room: str, text: str, by: str, when: object) -> None: ...

    def flush(self, timeout: float) -> bool: ...


class LocalBroker:
    """The embedded default: one process, file history. Publishing is a function call:
    the history numbers and keeps the line in memory at once (the disk write happens in
    its writer greenlet), and the room delivers it at the end of this loop pass."""

    def __init__(self, shelf: HistoryShelf, topics: TopicStore | None = None) -> None:
        self._shelf = shelf
        self._topics = topics
        self._histories: dict[str, HistoryStore] = {}

    def open(self, room: Room) -> None:
        self._histories[room.key] = self._shelf.get(room.name)
        stored = self._topics.get(room.key) if self._topics is not None else None
        if stored is not None:
            room.topic = stored.text
            room.topic_by = stored.by
            room.topic_time = stored.time

    def prepare(self, room: Room) -> None:
        """Wait for the room's history (read from the file's tail in the threadpool).
        Raises the storage's OSError (a history locked by another server) at start-up."""
        history = self._history(room)
        load = getattr(history, "load", None)
        if load is not None:
            load()

    def close(self, room: Room) -> None:
        history = self._histories.pop(room.key, None)
        if history is not None:
            self._shelf.release(history)

    def _history(self, room: Room) -> HistoryStore:
        history = self._histories.get(room.key)
        if history is None:  # a room used again after it was closed
            history = self._histories[room.key] = self._shelf.get(room.name)
        return history

    def publish(self, room: Room, event: ev.Message | ev.Action) -> None:
        stored = self._history(room).append(event)
        room.stored()
        room.deliver(stored if stored is not None else event)

    def announce(self, room: Room, event: ev.Event) -> None:
        if self._topics is not None and type(event) is ev.Topic:
            self._topics.set(room.key, room.name, event.text, event.by, event.time)
        room.deliver(event)

    def clear(self, room: Room, event: ev.Cleared) -> None:
        stored = self._history(room).clear(event)
        room.stored()
        room.deliver(stored if stored is not None else event)

    def recent(self, room: Room) -> list[ev.Event]:
        return list(self._history(room).recent())

    def position(self, room: Room) -> tuple[str, int]:
        history = self._history(room)
        return getattr(history, "epoch", ""), getattr(history, "last_id", 0)

    def since(self, room: Room, after_id: int, limit: int) -> tuple[list[ev.Event], int]:
        return self._history(room).since(after_id, limit)

    def last(self, room: Room, n: int) -> list[ev.Event]:
        return list(self._history(room).last(n))

    def close_all(self, timeout: float) -> None:
        self._shelf.close_all(timeout)
        if self._topics is not None and not self._topics.flush(timeout):
            log.error("topics not written within %g s", timeout)


class SimpleShelf:
    """A shelf over a history factory, for tests and tools: ``get`` makes a new store,
    ``release`` closes it in a background greenlet, ``close_all`` closes what is open."""

    def __init__(self, make: Callable[[str], HistoryStore]) -> None:
        self._make = make
        self._open: list[HistoryStore] = []

    def get(self, room: str) -> HistoryStore:
        history = self._make(room)
        self._open.append(history)
        return history

    def release(self, history: HistoryStore) -> None:
        import gevent

        close = getattr(history, "close", None)
        if close is not None:
            gevent.spawn(close)

    def close_all(self, timeout: float) -> None:
        for history in self._open:
            close = getattr(history, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing a history failed")
