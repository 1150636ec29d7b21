"""Who is online and where: the :class:`Directory` interface, and the local one.

In one process the hub's own maps are the whole truth, and :class:`LocalDirectory` does
nothing at all (so the embedded server keeps its speed). A cluster
(``store/redis_broker.py``) claims names in Redis so they are unique on every node, keeps
room membership there (so ``/who`` and NAMES see every node, and a dead node's users can be
announced as gone), decides room operators once, and carries private messages, kicks,
kills and shutdowns to the node that must act.

Two kinds of methods, like the broker: those the **actions** call may wait (``claim``,
``enter``, ``locate``, ``rooms``); the **hooks** the hub calls (``joined``, ``parted``,
``gone``, ``renamed``) never wait and never raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from geventchat.core import events as ev

if TYPE_CHECKING:
    from geventchat.core.hub import Room, Session


class RemoteUser:
    """A user connected to another node: enough to address it (``/msg``, kick, kill)."""

    __slots__ = ("name", "key", "node")
    is_admin = False
    extra: Mapping[str, object] = MappingProxyType({})
    rooms: Mapping[str, object] = MappingProxyType({})

    def __init__(self, name: str, key: str, node: str) -> None:
        self.name, self.key, self.node = name, key, node


class Directory(Protocol):
    # --- may wait (actions only) ---
    def claim(self, name: str, me: Session | None = None) -> None:
        """Reserve ``name`` for the cluster (raise ``ChatError("name_taken")``)."""

    def release(self, name: str) -> None:
        """Give back a claimed name that was not used after all (never waits)."""

    def enter(self, me: Session, room: Room) -> bool | None:
        """Record ``me`` in ``room`` before the join; True if it is the room's first
        member anywhere (its operator), None when the hub decides (one process)."""

    def locate(self, name: str) -> RemoteUser | None:
        """A user on another node, or None."""

    def send(self, user: RemoteUser, what: str, **fields: str) -> None:
        """Ask ``user``'s node to act (``pm``, ``kick``, ``kill``); never waits."""

    def rooms(self) -> list[tuple[str, int]] | None:
        """Every room with members on any node, with its member count (None: use the
        hub's own list)."""

    def shutdown(self, reason: str) -> None:
        """Stop every node (the local one is stopped by the caller too)."""

    def counts(self) -> tuple[int, int] | None:
        """Users and rooms in use on every node, as last refreshed (never waits; None:
        use the hub's counters)."""

    # --- hooks (hub; never wait) ---
    def joined(self, session: Session, room: Room) -> None: ...

    def parted(self, session: Session, room: Room, event: ev.Event | None) -> None: ...

    def gone(self, session: Session, event: ev.Event | None) -> None: ...

    def renamed(self, session: Session, old_name: str, old_key: str) -> None: ...


class LocalDirectory:
    """One process: the hub's maps say it all; every method is free."""

    cluster = False

    def claim(self, name: str, me: Session | None = None) -> None:
        pass

    def release(self, name: str) -> None:
        pass

    def enter(self, me: Session, room: Room) -> bool | None:
        return None

    def locate(self, name: str) -> RemoteUser | None:
        return None

    def send(self, user: RemoteUser, what: str, **fields: str) -> None:
        pass

    def rooms(self) -> list[tuple[str, int]] | None:
        return None

    def shutdown(self, reason: str) -> None:
        pass

    def counts(self) -> tuple[int, int] | None:
        return None

    def joined(self, session: Session, room: Room) -> None:
        pass

    def parted(self, session: Session, room: Room, event: ev.Event | None) -> None:
        pass

    def gone(self, session: Session, event: ev.Event | None) -> None:
        pass

    def renamed(self, session: Session, old_name: str, old_key: str) -> None:
        pass
