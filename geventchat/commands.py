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

from geventchat import events as ev
from geventchat.errors import ChatError
from geventchat.hub import Hub, Session
from geventchat.protocol import Command, split_arg
from geventchat.text import check_name, name_key

Handler = Callable[[Hub, Session, str], None]


@dataclass(frozen=True, slots=True)
class Spec:
    """One command's rules. ``words`` is how many words of argument are required."""

    handler: Handler
    usage: str
    help: str
    words: int = 0
    admin: bool = False


def _say(hub: Hub, me: Session, arg: str) -> None:
    me.room.say(ev.Message(me.name, arg, me.room.name))


def _me(hub: Hub, me: Session, arg: str) -> None:
    me.room.say(ev.Action(me.name, arg, me.room.name))


def _msg(hub: Hub, me: Session, arg: str) -> None:
    name, text = split_arg(arg)
    target = hub.find(name)
    if target is None:
        raise ChatError("no_such_user", f"no such user: {name}")
    event = ev.PrivateMessage(me.name, target.name, text)
    me.send(event)
    if target is not me:
        target.send(event)


def _who(hub: Hub, me: Session, arg: str) -> None:
    names = me.room.names()
    me.send(ev.Notice(f"online ({len(names)}): {', '.join(names)}"))


def _nick(hub: Hub, me: Session, arg: str) -> None:
    new = check_name(arg)
    if new == me.name:
        return
    if hub.admins.is_admin(new) and name_key(new) != me.account:
        raise ChatError("reserved_name", f"that name belongs to an admin account: {new}")
    hub.rename(me, new)


def _help(hub: Hub, me: Session, arg: str) -> None:
    lines = [ev.Notice("commands:")]
    for spec in COMMANDS.values():
        if spec.help and (me.is_admin or not spec.admin):
            suffix = " (admins)" if spec.admin else ""
            lines.append(ev.Notice(f"  {spec.usage:<22} {spec.help}{suffix}"))
    lines.append(ev.Notice("  //text                 send text starting with /"))
    me.send_many(lines)


def _quit(hub: Hub, me: Session, arg: str) -> None:
    hub.unregister(me, ev.Left(me.name, arg, me.room.name))
    me.send(ev.Notice("goodbye"))
    me.disconnect("quit")


def _clear(hub: Hub, me: Session, arg: str) -> None:
    me.room.clear(me.name)


def _kick(hub: Hub, me: Session, arg: str) -> None:
    name, reason = split_arg(arg)
    target = hub.find(name)
    if target is None:
        raise ChatError("no_such_user", f"no such user: {name}")
    room = target.room
    event = ev.Kicked(target.name, me.name, reason, room.name)
    # The kicked user sees the notice too, then loses the connection.
    room.broadcast(event)
    room.flush()
    hub.unregister(target, None)
    target.disconnect(f"kicked by {me.name}")


def _shutdown(hub: Hub, me: Session, arg: str) -> None:
    hub.request_shutdown(arg or f"by {me.name}")


COMMANDS: dict[str, Spec] = {
    "say": Spec(_say, "text", "", words=1),
    "msg": Spec(_msg, "/msg NAME text", "private message to NAME", words=2),
    "who": Spec(_who, "/who", "who is online"),
    "me": Spec(_me, "/me text", "action: * you text", words=1),
    "nick": Spec(_nick, "/nick NEW", "change your name", words=1),
    "help": Spec(_help, "/help", "this list"),
    "quit": Spec(_quit, "/quit [reason]", "leave (also: exit)"),
    "clear": Spec(_clear, "/clear", "empty the history (also: clear)", admin=True),
    "kick": Spec(_kick, "/kick NAME [reason]", "disconnect NAME", words=1, admin=True),
    "shutdown": Spec(_shutdown, "/shutdown [reason]", "stop the server", admin=True),
}


def dispatch(hub: Hub, me: Session, cmd: Command) -> None:
    """Check ``cmd`` against its spec and run it. Raises :class:`ChatError`."""
    spec = COMMANDS.get(cmd.name)
    if spec is None:
        raise ChatError("unknown_command", f"unknown command: /{cmd.name} (try /help)")
    if spec.admin and not me.is_admin:
        raise ChatError("permission_denied", f"permission denied: /{cmd.name} is for admins")
    if spec.words and len(cmd.arg.split(None, spec.words - 1)) < spec.words:
        raise ChatError("usage", f"usage: {spec.usage}")
    spec.handler(hub, me, cmd.arg)
