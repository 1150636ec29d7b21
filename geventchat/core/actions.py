"""What a user can do, once, for every protocol: the chat's use-cases above the hub.

Each edge (native commands, IRC handlers, the WebSocket edge) parses its own wire format
and calls these functions; rights are checked here and nowhere else, and every refusal is a
:class:`ChatError` with a stable code (and the name or room it is about in ``params``) that
each edge turns into its own reply: a ``! `` line natively, a numeric for IRC.

Unlike the hub, an action may wait: loading a room's history before a join happens here
(``broker.prepare``), outside any hub call, and the hub re-checks what may have changed
meanwhile (a session killed while it waited is not added to the room).

Admin actions leave an audit trail in the log: who, from where, what (never a secret).
"""

from __future__ import annotations

import logging

from geventchat.core import events as ev
from geventchat.core.directory import RemoteUser
from geventchat.core.errors import ChatError
from geventchat.core.hub import Hub, Room, Session
from geventchat.core.text import check_name, name_key

log = logging.getLogger(__name__)
audit = logging.getLogger("geventchat.audit")


# --- lookups ---------------------------------------------------------------------------------


def find_user(hub: Hub, name: str) -> Session:
    target = hub.find(name)
    if target is None:
        raise ChatError("no_such_user", f"no such user: {name}", name)
    return target


def find_anywhere(hub: Hub, name: str) -> Session | RemoteUser:
    """A user on this node, or on another one (a cluster asks the directory: may wait)."""
    target = hub.find(name) or hub.directory.locate(name)
    if target is None:
        raise ChatError("no_such_user", f"no such user: {name}", name)
    return target


def find_room(hub: Hub, name: str) -> Room:
    room = hub.find_room(name)
    if room is None:
        raise ChatError("no_such_room", f"no such room: {name}", name)
    return room


def require_member(me: Session, room: Room) -> None:
    if room.key not in me.rooms:
        raise ChatError("not_member", f"you are not in {room.name}", room.name)


def require_operator(me: Session, room: Room) -> None:
    """Room operators (and admins, who are operators everywhere) only."""
    if room.key not in me.rooms and not me.is_admin:
        raise ChatError("not_member", f"you are not in {room.name}", room.name)
    if not room.is_op(me):
        raise ChatError("not_operator", f"permission denied: you are not an operator of "
                                        f"{room.name}", room.name)


def require_admin(me: Session, what: str) -> None:
    if not me.is_admin:
        raise ChatError("admins_only", f"permission denied: {what} is for admins")


# --- talking ---------------------------------------------------------------------------------


def say(hub: Hub, me: Session, room: Room, text: str, action: bool = False) -> None:
    """A line (or a ``/me`` action) in a room the speaker is in."""
    if room.key not in me.rooms:
        raise ChatError("cannot_send", f"cannot send to {room.name}: you are not in it",
                        room.name)
    room.say(ev.Action(me.name, text, room.name) if action
             else ev.Message(me.name, text, room.name))


def private_message(hub: Hub, me: Session, name: str, text: str) -> Session | RemoteUser:
    """A private line to ``name``: the target reads it, the sender sees its echo (IRC
    renders that echo only with ``echo-message``). Never stored. Returns the target."""
    target = find_anywhere(hub, name)
    event = ev.PrivateMessage(me.name, target.name, text)
    if isinstance(target, RemoteUser):
        hub.directory.send(target, "pm", sender=me.name, text=text)
    else:
        target.send(event)
    if target is not me:
        me.send(event)
    return target


# --- rooms -----------------------------------------------------------------------------------


def join(hub: Hub, me: Session, name: str, max_rooms: int = 0) -> Room | None:
    """Enter the room ``name`` (created on first join; its first member runs it). Users
    that are always in one room (native, web) leave the one they were in. None if already
    there, or if the session went away while the room's history was loading."""
    room_name = check_name(name)
    room = hub.find_room(room_name)
    if room is not None and room.key in me.rooms:
        return None
    if max_rooms and len(me.rooms) >= max_rooms:
        raise ChatError("too_many_rooms", f"you are in too many rooms (max {max_rooms})",
                        name)
    room = room or hub.room(room_name)
    hub.broker.prepare(room)  # may wait for the history: outside any hub call
    op = hub.directory.enter(me, room)  # a cluster decides its operator once (may wait)
    old = me.room if me.always_in_room else None
    if old is not None and old is not room and old.key in me.rooms:
        hub.part(me, old, ev.Left(me.name, f"to {room.name}", old.name))
    if not hub.join(me, room, op):
        return None
    return room


def part(hub: Hub, me: Session, room: Room, reason: str = "") -> None:
    """Leave ``room``: the others hear it when the room flushes, the leaver at once (after
    everything said before it left)."""
    require_member(me, room)
    event = ev.Left(me.name, reason, room.name)
    hub.part(me, room, event)
    me.send(event)


def set_topic(hub: Hub, me: Session, room: Room, text: str) -> None:
    """Set (or, with empty text, clear) the topic: members may, operators only while the
    room is topic-locked (IRC ``+t``, the default)."""
    if room.key not in me.rooms and not me.is_admin:
        raise ChatError("not_member", f"you are not in {room.name}", room.name)
    if room.topic_locked and not room.is_op(me):
        raise ChatError("not_operator", f"permission denied: only operators of {room.name} "
                                        f"set its topic", room.name)
    room.set_topic(me.name, text)


def kick(hub: Hub, me: Session, room: Room, name: str,
         reason: str = "") -> Session | RemoteUser:
    """Move ``name`` out of ``room`` (its operators, and admins). A user who must always be
    somewhere lands in the lobby."""
    require_operator(me, room)
    target = find_anywhere(hub, name)
    if isinstance(target, RemoteUser):
        if target.key not in room.remote:
            raise ChatError("target_not_member", f"{target.name} is not in {room.name}",
                            target.name, room.name)
        audit.info("kick: %s (%s) kicked %s (on node %s) from %s: %s", me.name, me.addr,
                   target.name, target.node, room.name, reason)
        hub.directory.send(target, "kick", by=me.name, room=room.name, reason=reason)
        return target
    if room.key not in target.rooms:
        raise ChatError("target_not_member", f"{target.name} is not in {room.name}",
                        target.name, room.name)
    kicked(hub, target, room, me.name, reason)
    audit.info("kick: %s (%s) kicked %s from %s: %s", me.name, me.addr, target.name,
               room.name, reason)
    return target


def kicked(hub: Hub, target: Session, room: Room, by: str, reason: str) -> None:
    """The kick itself, on the kicked user's node."""
    event = ev.Kicked(target.name, by, reason, room.name)
    target.send(event)
    hub.part(target, room, event)
    if target.always_in_room and not target.rooms:
        hub.join(target, hub.lobby)


def set_op(hub: Hub, me: Session, room: Room, name: str, give: bool,
           announce: bool = True) -> Session | RemoteUser:
    """Give or take a member's operator status (operators only). With ``announce`` off
    the caller announces several changes as one (:func:`announce_modes`)."""
    require_operator(me, room)
    target = find_anywhere(hub, name)
    if (target.key not in room.remote if isinstance(target, RemoteUser)
            else room.key not in target.rooms):
        raise ChatError("target_not_member", f"{target.name} is not in {room.name}",
                        target.name, room.name)
    if give:
        room.ops.add(target.key)
    else:
        room.ops.discard(target.key)
    if announce:
        announce_modes(room, me.name, "+o" if give else "-o", (target.name,))
    return target


def set_topic_lock(hub: Hub, me: Session, room: Room, locked: bool,
                   announce: bool = True) -> bool:
    """IRC ``+t``/``-t`` (operators only); True if it changed."""
    require_operator(me, room)
    if room.topic_locked == locked:
        return False
    room.topic_locked = locked
    if announce:
        announce_modes(room, me.name, "+t" if locked else "-t")
    return True


def announce_modes(room: Room, by: str, modes: str, args: tuple[str, ...] = ()) -> None:
    """Tell a room about mode changes, in its order with the lines said in it."""
    room.broker.announce(room, ev.ModeChanged(room.name, by, modes, args))


# --- identity --------------------------------------------------------------------------------


def rename(hub: Hub, me: Session, new: str) -> bool:
    """Change ``me``'s name; admin accounts' names are reserved for their owners. False if
    the name did not change."""
    new = check_name(new)
    if new == me.name:
        return False
    if hub.admins.is_admin(new) and name_key(new) != me.account:
        raise ChatError("reserved_name", f"that name belongs to an admin account: {new}", new)
    hub.check_free(new, me=me)
    hub.directory.claim(new, me)  # unique on every node (may wait)
    try:
        hub.rename(me, new)
    except ChatError:
        hub.directory.release(new)
        raise
    return True


def register(hub: Hub, session: Session, join_lobby: bool = True) -> None:
    """Make ``session`` a user: its name is claimed for the whole cluster (may wait),
    then the hub registers it (and re-checks the name locally)."""
    hub.check_free(session.name)
    hub.directory.claim(session.name)
    try:
        hub.register(session, join_lobby)
    except ChatError:
        hub.directory.release(session.name)
        raise


def check_new_name(hub: Hub, name: str, me: Session | None = None) -> str:
    """A name someone may take (at registration or in a rename): valid, free, and not an
    admin account's unless ``me`` is logged in as it."""
    name = check_name(name)
    account = me.account if me is not None else None
    if hub.admins.is_admin(name) and name_key(name) != account:
        raise ChatError("reserved_name", f"that name belongs to an admin account: {name}",
                        name)
    hub.check_free(name, me=me)
    return name


def become_admin(hub: Hub, me: Session, account: str) -> None:
    """After a verified admin login (IRC ``OPER``, SASL): admin rights, shown in every room
    the user is in (admins are operators everywhere)."""
    hub.set_account(me, name_key(account))
    audit.info("admin: %s (%s) is now admin %s", me.name, me.addr, account)
    for room in list(me.rooms.values()):
        announce_modes(room, "", "+o", (me.name,))


def quit(hub: Hub, me: Session, reason: str = "") -> None:
    hub.unregister(me, ev.Quit(me.name, reason))


# --- admin -----------------------------------------------------------------------------------


def kill(hub: Hub, me: Session, name: str, reason: str = "") -> Session | RemoteUser:
    """Disconnect ``name`` from the server (admins); it and everyone sharing a room with it
    see why."""
    require_admin(me, "disconnecting users")
    target = find_anywhere(hub, name)
    if isinstance(target, RemoteUser):
        audit.info("kill: %s (%s) disconnected %s (on node %s): %s", me.name, me.addr,
                   target.name, target.node, reason)
        hub.directory.send(target, "kill", by=me.name, reason=reason)
        return target
    audit.info("kill: %s (%s) disconnected %s (%s): %s", me.name, me.addr, target.name,
               target.addr, reason)
    disconnect(hub, target, me.name, reason)
    return target


def disconnect(hub: Hub, target: Session, by: str, reason: str) -> None:
    event = ev.Killed(target.name, by, reason)
    target.send(event)
    hub.unregister(target, event)
    target.disconnect(f"kicked by {by}")


def clear(hub: Hub, me: Session, room: Room) -> None:
    """Empty a room's history for everyone (admins)."""
    require_admin(me, "clearing the history")
    audit.info("clear: %s (%s) cleared the history of %s", me.name, me.addr, room.name)
    room.clear(me.name)


def shutdown(hub: Hub, me: Session, reason: str = "") -> None:
    """Stop the server gracefully (admins)."""
    require_admin(me, "stopping the server")
    audit.info("shutdown: requested by %s (%s): %s", me.name, me.addr, reason)
    hub.directory.shutdown(reason or f"by {me.name}")  # every node of a cluster
    hub.request_shutdown(reason or f"by {me.name}")


def list_rooms(hub: Hub) -> list[tuple[str, int]]:
    """Rooms in use and their member counts, lobby first (every node's, in a cluster)."""
    rooms = hub.directory.rooms()
    if rooms is None:
        return [(r.name, len(r.members)) for r in hub.active_rooms()]
    return rooms
