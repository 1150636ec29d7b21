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
import time
from dataclasses import dataclass
from datetime import datetime

from geventchat.core import events as ev
from geventchat.core import modes
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
    """A line (or a ``/me`` action) in a room: see :func:`check_speak` for who may."""
    check_speak(hub, me, room)
    room.say(ev.Action(me.name, text, room.name) if action
             else ev.Message(me.name, text, room.name))


def room_notice(hub: Hub, me: Session, room: Room, text: str) -> None:
    """An IRC ``NOTICE`` to a room: the same rights as a line, never stored."""
    check_speak(hub, me, room)
    room.broker.announce(room, ev.RoomNotice(me.name, text, room.name))


def private_message(hub: Hub, me: Session, name: str, text: str,
                    notice: bool = False) -> Session | RemoteUser:
    """A private line to ``name``, on this node or another: the target reads it, the
    sender sees its echo (IRC renders that echo only with ``echo-message``). Never stored.
    Returns the target."""
    target = find_anywhere(hub, name)
    event = ev.PrivateMessage(me.name, target.name, text, notice=notice)
    if isinstance(target, RemoteUser):
        hub.directory.send(target, "pm", sender=me.name, text=text, notice=notice)
    else:
        target.send(event)
    if target is not me:
        me.send(event)
    return target


# --- rooms -----------------------------------------------------------------------------------


def join(hub: Hub, me: Session, name: str, max_rooms: int = 0, key: str = "") -> Room | None:
    """Enter the room ``name`` (created on first join; its first member runs it) if its
    modes let ``me`` in (:func:`check_entry`; ``key`` for ``+k``). Users that are always in
    one room (native, web) leave the one they were in. None if already there, or if the
    session went away while the room's history was loading."""
    room_name = check_name(name)
    room = hub.find_room(room_name)
    if room is not None and room.key in me.rooms:
        return None
    if max_rooms and len(me.rooms) >= max_rooms:
        raise ChatError("too_many_rooms", f"you are in too many rooms (max {max_rooms})",
                        name)
    if room is not None:
        check_entry(hub, me, room, key)
    else:
        if hub.max_rooms and len(hub.rooms) >= hub.max_rooms:
            raise ChatError("too_many_rooms", f"no new rooms: the server has {hub.max_rooms} "
                                              f"rooms in use", name)
        room = hub.room(room_name)
    hub.broker.prepare(room)  # may wait for the history: outside any hub call
    if room.members:
        check_entry(hub, me, room, key)  # the modes may have changed while we waited
    op = hub.directory.enter(me, room)  # a cluster decides its operator once (may wait)
    old = me.room if me.always_in_room else None
    if old is not None and old is not room and old.key in me.rooms:
        hub.part(me, old, ev.Left(me.name, f"to {room.name}", old.name))
    if not hub.join(me, room, op=op):
        return None
    room.modes.invited.discard(me.key)
    return room


#: Most lines ``/history N`` shows, and most a resume replays exactly (past that, the
#: client is told how many it missed and gets the recent lines).
HISTORY_DEFAULT = 50
HISTORY_MAX = 500
RESUME_MAX = 1000


def history(hub: Hub, me: Session, room: Room, n: int = HISTORY_DEFAULT) -> list[ev.Event]:
    """The last ``n`` stored lines of a room the user is in (capped). May wait for the
    file's tail."""
    require_member(me, room)
    return room.broker.last(room, max(1, min(n, HISTORY_MAX)))


#: How far back a history window reaches: the last this many ids of a room. One page of
#: scrollback costs at most one read of that many records, in the threadpool: measured
#: ~0.1 ms a record on a loaded machine (the file is read back from its end and every
#: record down to the one asked for is decoded), so ~0.5 s for the deepest page.
HISTORY_REACH = 5_000
#: Lines searched for a time before the whole reach is (a first, cheaper look).
_TIME_STEP = 1_000

#: The kinds of :func:`history_window` (IRCv3 chathistory's subcommands, by another name).
WINDOWS = ("latest", "before", "after", "around", "between")


@dataclass(frozen=True, slots=True)
class HistoryRef:
    """A place in a room's history: a stored line's ``id`` (exclusive: the line itself is
    not "before" or "after" itself) or a ``time`` (compared at millisecond precision, the
    precision clients see); neither is the newest end (IRC's ``*``)."""

    id: int | None = None
    time: datetime | None = None


def _ms(when: datetime) -> datetime:
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def _stored(events: list[ev.Event]) -> list[ev.Event]:
    return [e for e in events if type(e) in _STORED_TYPES and e.id > 0]


_STORED_TYPES = tuple(ev.STORED.values())


class _Window:
    """One history query over one room, through the broker interface only (so the file
    history and a cluster's broker answer it alike). Ids of a room are consecutive, so a
    range of ids is asked for with ``since``; times are turned into ids first."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.broker = room.broker
        _, self.last_id = self.broker.position(room)
        self.floor = max(0, self.last_id - HISTORY_REACH)  # ids at or below: out of reach
        self._by_time: list[ev.Event] | None = None

    def ids(self, lo: int, hi: int, limit: int, newest: bool) -> list[ev.Event]:
        """Lines with ``lo < id < hi``: the ``limit`` oldest, or the newest; oldest first."""
        lo = max(lo, self.floor)
        hi = min(hi, self.last_id + 1)
        if limit <= 0 or hi - lo <= 1:
            return []
        start = max(lo, hi - limit - 1) if newest else lo
        lines, _ = self.broker.since(self.room, start, min(limit, hi - start - 1))
        lines = [e for e in _stored(lines) if start < e.id < hi]
        return lines[-limit:] if newest else lines[:limit]

    def first_id(self, when: datetime, strict: bool) -> int:
        """The id of the first line said at ``when`` or later (``strict``: later), in
        milliseconds; one past the last id when none was. Times are taken to grow with ids
        (they are stamped in the order lines are stored)."""
        when = _ms(when)

        def hit(e: ev.Event) -> bool:
            t = _ms(e.time)
            return t > when if strict else t >= when

        memory = _stored(self.broker.recent(self.room))
        if not memory or hit(memory[0]):
            for step in (_TIME_STEP, HISTORY_REACH):
                older = _stored(self.broker.last(self.room, step))  # may wait
                if not older or not hit(older[0]) or len(older) < step:
                    memory = older
                    break
                memory = older
        found = next((e.id for e in memory if hit(e)), self.last_id + 1)
        return max(found, self.floor + 1)

    def lower(self, ref: HistoryRef) -> int:
        """The exclusive lower id bound of "after ``ref``"."""
        if ref.id is not None:
            return ref.id
        assert ref.time is not None
        return self.first_id(ref.time, strict=True) - 1

    def upper(self, ref: HistoryRef) -> int:
        """The exclusive upper id bound of "before ``ref``"."""
        if ref.id is not None:
            return ref.id
        if ref.time is None:
            return self.last_id + 1
        return self.first_id(ref.time, strict=False)


def history_window(hub: Hub, me: Session, room: Room, kind: str, ref: HistoryRef,
                   limit: int, until: HistoryRef | None = None) -> list[ev.Event]:
    """Stored lines of a room ``me`` is in, oldest first, at most ``limit`` (the caller
    caps it), within the last :data:`HISTORY_REACH` ids:

    * ``latest``: the newest lines, only those after ``ref`` unless it is the newest end;
    * ``before`` / ``after``: the nearest lines before / after ``ref`` (exclusive);
    * ``around``: up to ``limit // 2`` lines before ``ref`` and the rest from it on;
    * ``between``: lines strictly between ``ref`` and ``until``, counted from ``ref``
      (which may be the later one: then the newest lines before it).

    May wait (the file's tail, in the threadpool). The same for every protocol: IRC's
    CHATHISTORY is this, and so can be a WebSocket client's scrollback."""
    require_member(me, room)
    if kind not in WINDOWS:
        raise ValueError(f"unknown history window {kind!r}")
    w = _Window(room)
    if kind == "latest":
        # The newest lines, less those not after ``ref``: no need to find ``ref`` first.
        lines = _stored(room.broker.last(room, limit))[-limit:]
        if ref.id is not None:
            return [e for e in lines if e.id > ref.id]
        if ref.time is not None:
            when = _ms(ref.time)
            return [e for e in lines if _ms(e.time) > when]
        return lines
    if kind == "before":
        return w.ids(0, w.upper(ref), limit, newest=True)
    if kind == "after":
        return w.ids(w.lower(ref), w.last_id + 1, limit, newest=False)
    if kind == "around":
        centre = w.upper(ref)  # the line itself (an id), or the first at that time
        before = w.ids(0, centre, limit // 2, newest=True)
        start = before[0].id - 1 if before else centre - 1
        return w.ids(start, w.last_id + 1, limit, newest=False)
    if until is None:
        raise ValueError("a between window needs two references")
    a_low, a_high = w.lower(ref), w.upper(ref)
    b_low, b_high = w.lower(until), w.upper(until)
    if a_high <= b_high and a_low <= b_low:  # forwards in time
        return w.ids(a_low, b_high, limit, newest=False)
    return w.ids(b_low, a_high, limit, newest=True)


def history_targets(hub: Hub, me: Session, start: datetime, end: datetime,
                    limit: int) -> list[tuple[Room, datetime]]:
    """The rooms ``me`` is in whose latest stored line was said strictly between ``start``
    and ``end`` (either may be the later), with that time: the ``limit`` nearest to
    ``start``, in ascending time. Never waits (the latest line is in memory)."""
    low, high = sorted((_ms(start), _ms(end)))
    found: list[tuple[Room, datetime]] = []
    for room in list(me.rooms.values()):
        lines = _stored(room.broker.recent(room))
        if lines and low < _ms(lines[-1].time) < high:
            found.append((room, lines[-1].time))
    found.sort(key=lambda rt: rt[1], reverse=start > end)
    found = found[:max(0, limit)]
    found.sort(key=lambda rt: rt[1])
    return found


def resume(hub: Hub, me: Session, name: str, epoch: str, after_id: int) -> Room | None:
    """Join ``name`` showing exactly the lines stored after ``after_id`` of ``epoch``
    (then a ``resumed`` mark); or, when that can't be done (lines compacted away, more than
    :data:`RESUME_MAX`, or another epoch), an error line saying so and the usual replay.
    For clients that reconnect: nothing missed, nothing twice."""
    room_name = check_name(name)
    room = hub.find_room(room_name)
    if room is None:
        if hub.max_rooms and len(hub.rooms) >= hub.max_rooms:
            raise ChatError("too_many_rooms", "no new rooms", name)
        room = hub.room(room_name)
    broker = room.broker
    broker.prepare(room)
    op = hub.directory.enter(me, room)  # a cluster decides its operator once (may wait)
    current, _ = broker.position(room)
    replay: list[ev.Event] | None = None
    note: ev.Event | None = None
    if epoch != current and after_id == 0:
        epoch = current  # it had seen no line: everything stored is new to it
    if epoch != current:
        note = ev.Error("history_gap", f"the history of {room.name} was cleared or lost "
                                       f"since you left; here are its recent lines")
    else:
        lines, lost = broker.since(room, after_id, RESUME_MAX + 1)  # may wait
        # Lines stored while we waited are in memory: take them now, in the same pass as
        # the join below, so none falls between the replay and live delivery.
        newest = lines[-1].id if lines else after_id
        recent = [e for e in broker.recent(room) if getattr(e, "id", 0) > newest]
        if recent and recent[0].id != newest + 1:
            lost = -1  # more than memory holds arrived meanwhile
        lines += recent
        if lost == 0 and len(lines) <= RESUME_MAX and broker.position(room)[0] == epoch:
            replay = lines
        else:
            recent_all = broker.recent(room)
            first = next((e.id for e in recent_all if getattr(e, "id", 0)), 0)
            missed = max(0, first - after_id - 1) if first else 0
            note = ev.Error("history_gap", f"{missed} lines could not be recovered; here "
                                           f"are the recent ones")
    old = me.room if me.always_in_room else None
    if old is room:
        hub.part(me, room, None)
    elif old is not None and old.key in me.rooms:
        hub.part(me, old, ev.Left(me.name, f"to {room.name}", old.name))
    if note is not None:
        me.out.write(me.proto.render(note))
    if not hub.join(me, room, replay, op=op):
        return None
    if replay is not None:
        mark = ev.HistoryMark("resumed", room.name, epoch, broker.position(room)[1],
                              len(replay))
        me.out.write(me.proto.render(mark))  # right after the burst: before live lines
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


# --- room modes ------------------------------------------------------------------------------
#
# The lobby is special: every native user is in it (and lands in it after a kick), so it
# can't be +i, +k or +l; a ban there keeps the user in but silent (as bans do for members
# everywhere). Admins are operators everywhere and pass every check.

#: Modes with a parameter (when set; ``b``/``e``/``I``/``o``/``v``/``k`` when unset too).
PARAM_SET = "beIklov"
PARAM_UNSET = "beIkov"


def identities(hub: Hub, s: Session) -> tuple[str, ...]:
    """What ban masks are matched against, folded: ``nick!user@<server name>`` (what
    clients are shown) and ``nick!user@<address>``."""
    user = str(s.extra.get("user") or s.name)
    ip = s.addr.rsplit(":", 1)[0] if ":" in s.addr else s.addr
    return (modes.fold(f"{s.name}!{user}@{hub.server_name}"),
            modes.fold(f"{s.name}!{user}@{ip}"))


def is_banned(hub: Hub, s: Session, room: Room) -> bool:
    m = room.modes
    if not m.bans:
        return False
    ids = identities(hub, s)
    return modes.any_match(m.bans, ids) and not modes.any_match(m.excepts, ids)


def is_voiced(s: Session, room: Room) -> bool:
    return s.key in room.modes.voices


def check_entry(hub: Hub, me: Session, room: Room, key: str = "") -> None:
    """Whether ``room``'s modes let ``me`` join: ``+b`` (unless ``+e``), ``+i`` (unless
    invited or ``+I``), ``+k``, ``+l``. An invitation also passes ``+k`` and ``+l``."""
    if me.is_admin or room is hub.lobby:
        return
    m = room.modes
    if is_banned(hub, me, room):
        raise ChatError("banned", f"cannot join {room.name}: you are banned", room.name)
    invited = me.key in m.invited
    if "i" in m.flags and not invited and not modes.any_match(m.invex, identities(hub, me)):
        raise ChatError("invite_only", f"cannot join {room.name}: it is invite-only (+i)",
                        room.name)
    if m.key and not invited and key != m.key:
        raise ChatError("bad_key", f"cannot join {room.name}: wrong or missing key (+k)",
                        room.name)
    if m.limit and not invited and len(room.members) >= m.limit:
        raise ChatError("room_full", f"cannot join {room.name}: it is full (+l {m.limit})",
                        room.name)


def check_speak(hub: Hub, me: Session, room: Room) -> None:
    """Who may say something in ``room``: members (anyone while ``-n``), not banned ones,
    and only voiced members and operators while ``+m``."""
    m = room.modes
    member = room.key in me.rooms
    if member and not m.bans and "m" not in m.flags:
        return  # the per-line case: a member of an open room (the checks below agree)
    if me.is_admin:
        return
    if not member and "n" in m.flags:
        raise ChatError("cannot_send", f"cannot send to {room.name}: you are not in it",
                        room.name)
    if room.is_op(me) or is_voiced(me, room):
        return
    if "m" in m.flags:
        raise ChatError("cannot_send", f"cannot send to {room.name}: it is moderated (+m) and "
                                       f"you have no voice", room.name)
    if is_banned(hub, me, room):
        raise ChatError("cannot_send", f"cannot send to {room.name}: you are banned",
                        room.name)


def parse_modes(spec: str, params: list[str]) -> list[tuple[str, str, str | None]]:
    """``"+ik-o key bob"`` -> ``[("+", "i", None), ("+", "k", "key"), ("-", "o", "bob")]``:
    IRC's mode syntax, which native ``/mode`` uses too. A mode that needs a parameter and
    has none gets ``None`` (for ``b``/``e``/``I``: list them)."""
    out: list[tuple[str, str, str | None]] = []
    sign = "+"
    params = list(params)
    for ch in spec:
        if ch in "+-":
            sign = ch
            continue
        takes = PARAM_SET if sign == "+" else PARAM_UNSET
        arg = params.pop(0) if ch in takes and params else None
        out.append((sign, ch, arg))
    return out


def change_modes(hub: Hub, me: Session, room: Room, changes: list[tuple[str, str, str]],
                 max_params: int = 0) -> tuple[list[tuple[str, str, str | None]],
                                               list[ChatError]]:
    """Apply mode changes to ``room`` (its operators, and admins), announce what changed as
    one ``ModeChanged``, and return (applied, refusals): one bad change does not stop the
    others, as IRC servers do. ``max_params`` bounds the changes with a parameter."""
    require_operator(me, room)
    applied: list[tuple[str, str, str | None]] = []
    errors: list[ChatError] = []
    used = 0
    for sign, letter, arg in changes:
        if arg is not None and letter in "beIklov":
            used += 1
            if max_params and used > max_params:
                continue
        try:
            done = _change_one(hub, me, room, sign == "+", letter, arg)
        except ChatError as exc:
            errors.append(exc)
            continue
        if done is not False:
            applied.append((sign, letter, done if isinstance(done, str) else None))
    if applied:
        text, args = mode_string(applied)
        announce_modes(room, me.name, text, args)
        audit.info("mode: %s (%s) set %s %s on %s", me.name, me.addr, text, " ".join(args),
                   room.name)
    return applied, errors


def mode_string(applied: list[tuple[str, str, str | None]]) -> tuple[str, tuple[str, ...]]:
    """``[("+", "i", None), ("+", "o", "bob")]`` -> ``("+io", ("bob",))``."""
    text, last, args = "", "", []
    for sign, letter, arg in applied:
        if sign != last:
            text += sign
            last = sign
        text += letter
        if arg is not None:
            args.append(arg)
    return text, tuple(args)


def _change_one(hub: Hub, me: Session, room: Room, give: bool, letter: str,
                arg: str | None) -> bool | str:
    """One change: False if nothing changed, True if it did, or the parameter to show."""
    m = room.modes
    lobby = room is hub.lobby
    if letter == "t":
        return set_topic_lock(hub, me, room, give, announce=False)
    if letter in modes.FLAGS:
        if lobby and give and letter == "i":
            raise ChatError("lobby_mode", "the lobby can't be invite-only: everyone lands "
                                          "there", room.name, letter)
        if (letter in m.flags) == give:
            return False
        (m.flags.add if give else m.flags.discard)(letter)
        return True
    if letter in "ov":
        if arg is None:
            return False
        target = find_anywhere(hub, arg)  # on this node or, in a cluster, another
        if (target.key not in room.remote if isinstance(target, RemoteUser)
                else room.key not in target.rooms):
            raise ChatError("target_not_member", f"{target.name} is not in {room.name}",
                            target.name, room.name)
        group = room.ops if letter == "o" else m.voices
        if (target.key in group) == give:
            return False
        (group.add if give else group.discard)(target.key)
        return target.name
    if letter == "k":
        if not give:
            if not m.key:
                return False
            m.key = ""
            return "*"
        if lobby:
            raise ChatError("lobby_mode", "the lobby can't have a key: everyone lands there",
                            room.name, letter)
        key = (arg or "").strip()
        if (not key or len(key) > modes.KEYLEN or "," in key or " " in key
                or not key.isprintable()):
            raise ChatError("invalid_mode_param", f"invalid key: 1-{modes.KEYLEN} printable "
                                                  f"characters, no comma or space",
                            room.name, letter, arg or "*")
        m.key = key
        return key
    if letter == "l":
        if not give:
            if not m.limit:
                return False
            m.limit = 0
            return True
        if lobby:
            raise ChatError("lobby_mode", "the lobby can't have a limit: everyone lands "
                                          "there", room.name, letter)
        try:
            limit = int(arg or "")
        except ValueError:
            limit = 0
        if limit <= 0:
            raise ChatError("invalid_mode_param", "invalid limit: a positive number",
                            room.name, letter, arg or "*")
        m.limit = limit
        return str(limit)
    if letter in modes.LISTS:
        if arg is None:
            return False
        entries = m.lists(letter)
        mask = modes.normalize_mask(arg)
        folded = modes.fold(mask)
        if not give:
            entry = entries.pop(folded, None)
            return entry.mask if entry is not None else False
        if folded in entries:
            return False
        if len(entries) >= modes.MAX_LIST:
            raise ChatError("list_full", f"the +{letter} list of {room.name} is full "
                                         f"({modes.MAX_LIST})", room.name, letter, mask)
        entries[folded] = modes.ListEntry(mask, me.name, int(time.time()))
        return mask
    raise ChatError("unknown_mode", f"unknown mode: {letter}", letter)


def mode_summary(room: Room, show_key: bool) -> tuple[str, tuple[str, ...]]:
    """The room's modes as IRC shows them (324): ``("+klnt", ("key", "10"))``."""
    m = room.modes
    flags = set(m.flags) | ({"t"} if room.topic_locked else set())
    letters = "".join(sorted(flags))
    args: list[str] = []
    if m.key:
        letters += "k"
        args.append(m.key if show_key else "*")
    if m.limit:
        letters += "l"
        args.append(str(m.limit))
    return "+" + letters, tuple(args)


def invite(hub: Hub, me: Session, room: Room, name: str) -> Session:
    """Invite ``name`` into ``room``: members may, operators only while ``+i``. The
    invitation lets the target past ``+i``, ``+k`` and ``+l`` (not a ban) once."""
    if room.key not in me.rooms and not me.is_admin:
        raise ChatError("not_member", f"you are not in {room.name}", room.name)
    if "i" in room.modes.flags and not room.is_op(me):
        raise ChatError("not_operator", f"permission denied: only operators of {room.name} "
                                        f"invite while it is invite-only", room.name)
    target = find_user(hub, name)
    if room.key in target.rooms:
        raise ChatError("already_member", f"{target.name} is already in {room.name}",
                        target.name, room.name)
    room.modes.invited.add(target.key)
    target.send(ev.Invited(me.name, target.name, room.name))
    return target


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
