"""The wire codec for events that cross nodes: one JSON object per event, no pickle.

Every room event kind has a tag (``k``); fields are the dataclass fields, the time as an
ISO 8601 string. ``o`` is the node that published it (presence events from this node were
already delivered here, see ``redis_broker``). JSON escapes newlines, so one encoded event
is always one line: a published batch is ``EPOCH\\nOFFSET JSON\\nOFFSET JSON...``.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

from geventchat.core import events as ev

KINDS: dict[str, type] = {
    "msg": ev.Message, "act": ev.Action, "clr": ev.Cleared, "join": ev.Joined,
    "left": ev.Left, "quit": ev.Quit, "kick": ev.Kicked, "kill": ev.Killed,
    "topic": ev.Topic, "nick": ev.Renamed, "mode": ev.ModeChanged,
    "pm": ev.PrivateMessage, "shutdown": ev.Shutdown, "notice": ev.Notice,
}
TAGS: dict[type, str] = {cls: tag for tag, cls in KINDS.items()}
#: Kinds kept in the room's history stream (the rest go to its short events stream).
STORED_TAGS = frozenset({"msg", "act", "clr"})
_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in KINDS.values()}

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode(event: ev.Event, origin: str = "") -> str:
    cls = type(event)
    out: dict[str, object] = {"k": TAGS[cls]}
    if origin:
        out["o"] = origin
    for name in _FIELDS[cls]:
        value = getattr(event, name)
        if name == "time":
            value = value.isoformat()
        elif name == "id":
            continue  # the broker's offset is the id
        elif name == "args":
            value = list(value)
        out[name] = value
    return _dumps(out)


def decode(data: str | bytes, offset: int = 0) -> tuple[ev.Event, str]:
    """``(event, origin)``; ValueError/KeyError/TypeError on garbage."""
    obj = json.loads(data)
    cls = KINDS[obj.pop("k")]
    origin = obj.pop("o", "")
    if "time" in obj:
        obj["time"] = datetime.fromisoformat(obj["time"])
    if "args" in obj:
        obj["args"] = tuple(obj["args"])
    if offset and "id" in _FIELDS[cls]:
        obj["id"] = offset
    return cls(**obj), origin
