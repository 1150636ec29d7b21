"""The web client's JSON codec and frames, sans-IO: no sockets, no server."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime

import pytest

from geventchat.core import events as ev
from geventchat.edges.http import origin_allowed
from geventchat.wire.web import (
    _JSON,
    WEB,
    BadMessage,
    parse_client,
    text_frame,
    to_json,
)

T = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def unframe(data: bytes) -> bytes:
    """Decode one unmasked server text frame; the whole buffer must be that frame."""
    assert data[0] == 0x81  # FIN + text
    n = data[1]
    assert not n & 0x80  # never masked
    offset = 2
    if n == 126:
        n, offset = struct.unpack("!H", data[2:4])[0], 4
    elif n == 127:
        n, offset = struct.unpack("!Q", data[2:10])[0], 10
    assert len(data) == offset + n
    return data[offset:]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 100_000])
def test_frame_lengths(size):
    payload = b"x" * size
    assert unframe(text_frame(payload)) == payload


def test_every_event_type_renders():
    samples = [
        ev.Message("a", "hi", "dev", T, 7), ev.Action("a", "waves", "dev", T),
        ev.PrivateMessage("a", "b", "psst", T), ev.Joined("a", "dev", T),
        ev.Left("a", "bye", "dev", T), ev.Quit("a", "gone", T),
        ev.Kicked("a", "op", "spam", "dev", T), ev.Killed("a", "root", "", T),
        ev.Topic("dev", "op", "news", T), ev.Renamed("a", "b", T), ev.Cleared("root", "dev", T),
        ev.ModeChanged("dev", "op", "+o", ("a",), T), ev.Shutdown("bye", T),
        ev.Notice("note", T), ev.Prompt("name"), ev.Error("usage", "usage: /msg"),
        ev.RoomNotice("a", "heads up", "dev", T), ev.Invited("op", "a", "dev", T),
        ev.HistoryMark("room", "dev", "1a2b3c4d", 7), ev.HistoryMark("resumed", "dev", "x", 9, 2),
    ]
    assert {type(e) for e in samples} == set(_JSON)  # every event type has a JSON form
    frames = json.loads(unframe(WEB.render_many(samples)))
    assert [f["type"] for f in frames] == [
        "message", "action", "private", "join", "leave", "quit", "kick", "kill", "topic",
        "rename", "cleared", "mode", "shutdown", "notice", "prompt", "error", "message",
        "notice", "position", "resumed"]
    assert frames[-1] == {"type": "resumed", "room": "dev", "count": 2}
    assert frames[0] == {"type": "message", "room": "dev", "name": "a", "text": "hi",
                         "time": "2026-01-02T03:04:05.678Z", "id": 7}
    assert "id" not in frames[1]  # unnumbered lines carry no id


def test_batch_is_one_frame_and_text_stays_text():
    hostile = "<img src=x onerror=alert(1)> \u2028 \"quotes\" \\ é"
    data = WEB.render_many([ev.Message("a", hostile), ev.Message("b", "two")])
    events = json.loads(unframe(data))
    assert [e["text"] for e in events] == [hostile, "two"]


def test_render_is_total():
    class Strange:
        pass

    assert to_json(Strange())["type"] == "notice"
    events = json.loads(unframe(WEB.render_many([ev.Notice("ok"), Strange()])))
    assert [e["type"] for e in events] == ["notice", "notice"]


def test_join_burst_brackets_history():
    class Room:
        name, topic, version = "dev", "the topic", 1
        members: dict = {}

        def names(self):
            return ["a", "b"]

    replay = [ev.Message("b", "earlier", "dev", T, 1)]
    events = json.loads(unframe(WEB.join_burst(None, Room(), replay, ev.Joined("a", "dev"))))
    assert [e["type"] for e in events] == ["history", "message", "history", "join", "topic",
                                           "who"]
    assert events[0]["phase"] == "begin" and events[2]["phase"] == "end"
    assert events[4]["text"] == "the topic" and events[5]["names"] == ["a", "b"]


@pytest.mark.parametrize("text", ["", "nope", "[]", '{"type": 3}', '{"type": "line"}',
                                  '{"type": "line", "text": 5}'])
def test_bad_client_messages(text):
    with pytest.raises(BadMessage):
        parse_client(text)


def test_client_line():
    assert parse_client('{"type": "line", "text": "/join dev"}')["text"] == "/join dev"


@pytest.mark.parametrize("origin,host,tls,allowed,ok", [
    ("", "h:1", False, (), True),
    ("http://h:1", "h:1", False, (), True),
    ("http://H:1", "h:1", False, (), True),
    ("http://h:2", "h:1", False, (), False),
    ("https://h:1", "h:1", False, (), False),
    ("https://h", "h:443", True, (), True),
    ("http://h", "h", False, (), True),
    ("http://evil", "h", False, (), False),
    ("http://evil", "h", False, ("http://evil",), True),
    ("http://evil", "h", False, ("*",), True),
    ("null", "h", False, (), False),
])
def test_origin_rules(origin, host, tls, allowed, ok):
    assert origin_allowed(origin, host, tls, allowed) is ok
