"""The chat's commands, declared once as data and checked in one place.

Each command is a :class:`Spec` in :data:`COMMANDS`: its handler, how many words of
argument it needs, whether it is for admins, and its usage and help text (ergo's
``commands.go`` and h11's tables do the same). :func:`dispatch` checks rights and arguments
centrally; handlers then only do the work, and raise :class:`ChatError` for anything the
user got wrong. Handlers speak in events and never in wire strings, so every protocol can
share them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from geventchat.core import actions
from geventchat.core import events as ev
from geventchat.core.errors import ChatError
from geventchat.core.hub import Hub, Session
from geventchat.core.text import check_name, name_key
from geventchat.wire.native import Command, split_arg

Handler = Callable[[Hub, Session, str], None]


@dataclass(frozen=True, slots=True)
class Spec:
    """One command's rules. ``words`` is how many words of argument are required."""

    handler: Handler
    usage: str
    help: str
    words: int = 0
    admin: bool = False
    op: bool = False  # room operators may use it too (for the room they are in)


def _say(hub: Hub, me: Session, arg: str) -> None:
    actions.say(hub, me, me.room, arg)


def _me(hub: Hub, me: Session, arg: str) -> None:
    actions.say(hub, me, me.room, arg, action=True)


def _msg(hub: Hub, me: Session, arg: str) -> None:
    name, text = split_arg(arg)
    actions.private_message(hub, me, name, text)


def _who(hub: Hub, me: Session, arg: str) -> None:
    names = me.room.names()
    me.send(ev.Notice(f"online ({len(names)}): {', '.join(names)}"))


def _nick(hub: Hub, me: Session, arg: str) -> None:
    actions.rename(hub, me, arg)


def _help(hub: Hub, me: Session, arg: str) -> None:
    lines = [ev.Notice("commands:")]
    for spec in COMMANDS.values():
        if spec.help and (me.is_admin or not spec.admin):
            suffix = " (admins)" if spec.admin else ""
            lines.append(ev.Notice(f"  {spec.usage:<22} {spec.help}{suffix}"))
    lines.append(ev.Notice("  //text                 send text starting with /"))
    me.send_many(lines)


def _quit(hub: Hub, me: Session, arg: str) -> None:
    actions.quit(hub, me, arg)
    me.send(ev.Notice("goodbye"))
    me.disconnect("quit")


def _clear(hub: Hub, me: Session, arg: str) -> None:
    actions.clear(hub, me, me.room)


def _kick(hub: Hub, me: Session, arg: str) -> None:
    """Admins disconnect NAME from the server; a room operator moves NAME out of the room."""
    name, reason = split_arg(arg)
    if me.is_admin:
        actions.kill(hub, me, name, reason)
    else:
        actions.kick(hub, me, me.room, name, reason)


def _join(hub: Hub, me: Session, arg: str) -> None:
    name, key = split_arg(arg)
    old = me.room
    if old is not None and old.key == name_key(check_name(name)):
        me.send(ev.Notice(f"you are already in {old.name}"))
        return
    actions.join(hub, me, name, key=key)


def _mode(hub: Hub, me: Session, arg: str) -> None:
    """``/mode`` shows the room's modes; ``/mode +m``, ``/mode +v bob``, ``/mode -k``...
    change them (IRC's syntax and letters; operators)."""
    room = me.room
    if not arg:
        letters, args = actions.mode_summary(room, show_key=True)
        me.send(ev.Notice(f"modes of {room.name}: {' '.join((letters, *args))}"))
        return
    spec, *params = arg.split()
    changes = actions.parse_modes(spec, params)
    lists = [letter for _, letter, a in changes if letter in "beI" and a is None]
    for letter in dict.fromkeys(lists):
        _show_list(me, letter)
    wanted = [c for c in changes if not (c[1] in "beI" and c[2] is None)]
    if not wanted:
        return
    applied, errors = actions.change_modes(hub, me, room, wanted)
    me.send_many([exc.event() for exc in errors])


def _show_list(me: Session, letter: str) -> None:
    room = me.room
    what = {"b": "bans", "e": "ban exceptions", "I": "invite exceptions"}[letter]
    entries = list(room.modes.lists(letter).values())
    if not entries:
        me.send(ev.Notice(f"{what} of {room.name}: none"))
        return
    me.send_many([ev.Notice(f"{what} of {room.name} ({len(entries)}):")]
                 + [ev.Notice(f"  {e.mask} (by {e.by})") for e in entries])


def _ban(hub: Hub, me: Session, arg: str) -> None:
    if not arg:
        _show_list(me, "b")
        return
    _, errors = actions.change_modes(hub, me, me.room, [("+", "b", arg.split()[0])])
    me.send_many([exc.event() for exc in errors])


def _unban(hub: Hub, me: Session, arg: str) -> None:
    _, errors = actions.change_modes(hub, me, me.room, [("-", "b", arg.split()[0])])
    me.send_many([exc.event() for exc in errors])


def _invite(hub: Hub, me: Session, arg: str) -> None:
    target = actions.invite(hub, me, me.room, arg.split()[0])
    me.send(ev.Notice(f"you invited {target.name} to {me.room.name}"))


def _rooms(hub: Hub, me: Session, arg: str) -> None:
    counts = dict(actions.list_rooms(hub))  # every node's members, in a cluster
    rooms = [r for r in hub.active_rooms()
             if not r.modes.secret or r.key in me.rooms or me.is_admin]  # +s: members only
    local = {r.name for r in rooms}
    entries = ([f"{r.name} ({counts.get(r.name, len(r.members))})" for r in rooms]
               + [f"{name} ({n})" for name, n in counts.items()
                  if name not in local and n and hub.find_room(name) is None])
    me.send(ev.Notice(f"rooms ({len(entries)}): {', '.join(entries)}"))


def _topic(hub: Hub, me: Session, arg: str) -> None:
    room = me.room
    if not arg:
        text = f"topic of {room.name}: {room.topic}" if room.topic else f"{room.name} has no topic"
        me.send(ev.Notice(text))
        return
    actions.set_topic(hub, me, room, "" if arg == "-" else arg)


def _history(hub: Hub, me: Session, arg: str) -> None:
    if arg and not arg.isdigit():
        raise ChatError("usage", "usage: /history [N]")
    room = me.room
    lines = actions.history(hub, me, room, int(arg) if arg else actions.HISTORY_DEFAULT)
    me.send_many([ev.Notice(f"history of {room.name} ({len(lines)} lines):"), *lines,
                  ev.Notice("end of history")])


def _resume(hub: Hub, me: Session, arg: str) -> None:
    words = arg.split()
    if len(words) != 3 or not words[2].isdigit():
        raise ChatError("usage", "usage: /resume ROOM EPOCH ID")
    actions.resume(hub, me, words[0], words[1], int(words[2]))


def _shutdown(hub: Hub, me: Session, arg: str) -> None:
    actions.shutdown(hub, me, arg)


COMMANDS: dict[str, Spec] = {
    "say": Spec(_say, "text", "", words=1),
    "msg": Spec(_msg, "/msg NAME text", "private message to NAME", words=2),
    "who": Spec(_who, "/who", "who is in this room"),
    "me": Spec(_me, "/me text", "action: * you text", words=1),
    "nick": Spec(_nick, "/nick NEW", "change your name", words=1),
    "help": Spec(_help, "/help", "this list"),
    "join": Spec(_join, "/join ROOM [KEY]", "go to ROOM (created on first join)", words=1),
    "rooms": Spec(_rooms, "/rooms", "list rooms and how many are in each"),
    "history": Spec(_history, "/history [N]",
                    f"the last N lines of this room (default {actions.HISTORY_DEFAULT}, "
                    f"at most {actions.HISTORY_MAX})"),
    "resume": Spec(_resume, "/resume ROOM EPOCH ID", "", words=3),
    "topic": Spec(_topic, "/topic [text|-]", "show or set (operators) the room's topic"),
    "mode": Spec(_mode, "/mode [+-modes [args]]",
                 "show or set (operators) this room's modes: +m +v NAME +i +k KEY +l N ..."),
    "ban": Spec(_ban, "/ban [MASK]", "list bans, or ban MASK (nick!user@host, * ?)"),
    "unban": Spec(_unban, "/unban MASK", "lift a ban", words=1),
    "invite": Spec(_invite, "/invite NAME", "invite NAME here (operators, in +i rooms)",
                   words=1),
    "quit": Spec(_quit, "/quit [reason]", "leave (also: exit)"),
    "clear": Spec(_clear, "/clear", "empty this room's history (also: clear)", admin=True),
    "kick": Spec(_kick, "/kick NAME [reason]",
                 "disconnect NAME (admins); move NAME out of your room (operators)", words=1,
                 op=True),
    "shutdown": Spec(_shutdown, "/shutdown [reason]", "stop the server", admin=True),
}


def dispatch(hub: Hub, me: Session, cmd: Command) -> None:
    """Check ``cmd`` against its spec and run it. Raises :class:`ChatError`."""
    spec = COMMANDS.get(cmd.name)
    if spec is None:
        raise ChatError("unknown_command", f"unknown command: /{cmd.name} (try /help)")
    allowed = me.is_admin or (spec.op and me.room is not None and me.room.is_op(me))
    if (spec.admin or spec.op) and not allowed:
        who = "admins and room operators" if spec.op else "admins"
        raise ChatError("permission_denied", f"permission denied: /{cmd.name} is for {who}")
    # cmd.arg is stripped, so any text at all is one word: only longer needs need a split.
    if spec.words and (not cmd.arg or spec.words > 1
                       and len(cmd.arg.split(None, spec.words - 1)) < spec.words):
        raise ChatError("usage", f"usage: {spec.usage}")
    spec.handler(hub, me, cmd.arg)
