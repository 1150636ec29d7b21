"""The web client's protocol, sans-IO: events as JSON, batches as WebSocket frames.

No sockets and no gevent here (see docs/PROTOCOL.md, "WebSocket"):

* :func:`to_json` turns one protocol-neutral event into a JSON-able dict;
* :func:`text_frame` wraps a payload in one unmasked WebSocket text frame (server frames
  are never masked, and no extension is negotiated, so a frame can be built once and the
  same bytes sent to every member);
* :data:`WEB` is the hub's renderer: a batch of events is **one** frame holding a JSON
  array, rendered once per batch for all WebSocket members of a room;
* :func:`parse_client` reads one client message (``{"type": "line", "text": ...}``).
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable
from typing import Any, Final

from geventchat.core import events as ev

log = logging.getLogger(__name__)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _time(e: Any) -> str:
    return e.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stored(kind: str) -> Callable[[Any], dict]:
    def render(e: Any) -> dict:
        d = {"type": kind, "room": e.room, "name": e.name, "text": e.text, "time": _time(e)}
        if e.id:
            d["id"] = e.id
        return d
    return render


def _cleared(e: ev.Cleared) -> dict:
    d = {"type": "cleared", "room": e.room, "by": e.by, "time": _time(e)}
    if e.id:
        d["id"] = e.id
    return d


# One function per event type, looked up by type() as in the native renderer.
_JSON: Final[dict[type, Callable[[Any], dict]]] = {
    ev.Message: _stored("message"),
    ev.Action: _stored("action"),
    ev.PrivateMessage: lambda e: {"type": "private", "from": e.sender, "to": e.target,
                                  "text": e.text, "time": _time(e)},
    ev.RoomNotice: lambda e: {"type": "message", "room": e.room, "name": e.name,
                              "text": e.text, "notice": True, "time": _time(e)},
    ev.Invited: lambda e: {"type": "notice", "text": f"{e.by} invites you to {e.room}: "
                                                     f"/join {e.room}", "time": _time(e)},
    ev.Joined: lambda e: {"type": "join", "room": e.room, "name": e.name, "time": _time(e)},
    ev.Left: lambda e: {"type": "leave", "room": e.room, "name": e.name,
                        "reason": e.reason, "time": _time(e)},
    ev.Quit: lambda e: {"type": "quit", "name": e.name, "reason": e.reason,
                        "time": _time(e)},
    ev.Kicked: lambda e: {"type": "kick", "room": e.room, "name": e.name, "by": e.by,
                          "reason": e.reason, "time": _time(e)},
    ev.Killed: lambda e: {"type": "kill", "name": e.name, "by": e.by, "reason": e.reason,
                          "time": _time(e)},
    ev.Topic: lambda e: {"type": "topic", "room": e.room, "by": e.by, "text": e.text,
                         "time": _time(e)},
    ev.Renamed: lambda e: {"type": "rename", "old": e.old, "new": e.new, "time": _time(e)},
    ev.Cleared: _cleared,
    ev.ModeChanged: lambda e: {"type": "mode", "room": e.room, "by": e.by, "modes": e.modes,
                               "args": list(e.args), "time": _time(e)},
    ev.HistoryMark: lambda e: ({"type": "resumed", "room": e.room, "count": e.count}
                               if e.kind == "resumed" else
                               {"type": "position", "room": e.room, "epoch": e.epoch,
                                "last": e.last_id}),
    ev.Shutdown: lambda e: {"type": "shutdown", "reason": e.reason, "time": _time(e)},
    ev.Notice: lambda e: {"type": "notice", "text": e.text, "time": _time(e)},
    ev.Prompt: lambda e: {"type": "prompt", "what": e.what},
    ev.Error: lambda e: {"type": "error", "code": e.code, "text": e.text},
}


def to_json(event: object) -> dict:
    """The event as a JSON-able dict; total (a bug becomes a notice, never an exception
    in the middle of a fan-out)."""
    try:
        return _JSON[type(event)](event)
    except Exception:
        log.exception("cannot render %s", type(event).__name__)
        return {"type": "notice", "text": "(an event could not be shown)"}


# --- framing ---------------------------------------------------------------------------------

OP_TEXT: Final = 0x1


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame (RFC 6455 5.2) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | OP_TEXT, n))
    elif n < 1 << 16:
        header = bytes((0x80 | OP_TEXT, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | OP_TEXT, 127)) + n.to_bytes(8, "big")
    return header + payload


def frame_json(objs: list[dict]) -> bytes:
    """A list of JSON objects as one text frame (a JSON array)."""
    return text_frame(_dumps(objs).encode())


class WebRenderer:
    """Renders events as WebSocket frames of JSON arrays. Stateless apart from a replay
    cache; every member of a room gets the same bytes (``shared``)."""

    name = "web"
    shared = True
    #: One join/leave event per user: the page keeps its member list from them.
    summarizes = False

    def __init__(self) -> None:
        # Replayed history per room, keyed by the room's history version (as natively).
        self._replays: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @staticmethod
    def render(event: ev.Event) -> bytes:
        return frame_json([to_json(event)])

    @staticmethod
    def render_many(events: list[ev.Event]) -> bytes:
        """A batch as one frame: one render and one ``send`` per member per batch."""
        try:
            objs = [_JSON[type(e)](e) for e in events]
        except Exception:
            objs = [to_json(e) for e in events]
        return frame_json(objs)

    def render_for(self, session: object, events: list[ev.Event]) -> bytes:
        return self.render_many(events)

    def join_burst(self, session: object, room: Any, replay: list[ev.Event],
                   joined: ev.Joined) -> bytes:
        """What a newcomer reads on entering a room, in one frame: the history between
        ``history`` begin/end markers, its own join, the topic and who is there."""
        objs = [*self._replay(room, replay), to_json(joined)]
        topic = getattr(room, "topic", "")
        objs.append({"type": "topic", "room": joined.room, "by": "", "text": topic,
                     "time": _time(joined)})
        names = room.names() if hasattr(room, "names") else [joined.name]
        objs.append({"type": "who", "room": joined.room, "names": names})
        return frame_json(objs)

    def _replay(self, room: Any, replay: list[ev.Event]) -> list[dict]:
        """The replay between markers; the begin marker says where the room's history
        stands (``epoch``, ``last`` id), so a page can resume from there after a drop."""
        name = getattr(room, "name", "")
        version = getattr(room, "version", None)
        # The same room, history version and span of ids: a resume replays another span.
        key = (version, len(replay), getattr(replay[0], "id", 0) if replay else 0,
               getattr(replay[-1], "id", 0) if replay else 0)
        cached = self._replays.get(room) if version is not None else None
        if cached is not None and cached[0] == key:
            return cached[1]
        broker = getattr(room, "broker", None)
        epoch, last = broker.position(room) if broker is not None else ("", 0)
        objs = [{"type": "history", "room": name, "phase": "begin", "count": len(replay),
                 "epoch": epoch, "last": last},
                *[to_json(e) for e in replay],
                {"type": "history", "room": name, "phase": "end", "count": len(replay)}]
        if version is not None:
            self._replays[room] = (key, objs)
        return objs


WEB: Final = WebRenderer()


# --- client messages ---------------------------------------------------------------------------


class BadMessage(ValueError):
    """A client message that is not what docs/PROTOCOL.md describes."""


def parse_client(text: str) -> dict:
    """One client message: a JSON object with a string ``type``; ``line`` messages carry
    a string ``text``. Raises :class:`BadMessage`."""
    try:
        msg = json.loads(text)
    except ValueError:
        raise BadMessage("not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise BadMessage('expected an object with a "type"')
    if msg["type"] == "line" and not isinstance(msg.get("text"), str):
        raise BadMessage('a "line" needs a string "text"')
    return msg


def rooms_json(rooms: list[Any]) -> dict:
    """The room list (lobby first) as the ``rooms`` event."""
    return {"type": "rooms", "rooms": [{"name": r.name, "members": len(r.members),
                                        "topic": r.topic} for r in rooms]}


def who_json(room: Any) -> dict:
    return {"type": "who", "room": room.name, "names": room.names()}
