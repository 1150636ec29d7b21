"""The wire codec of the Redis engine: every event kind that crosses nodes round-trips."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from geventchat.core import events as ev
from geventchat.store import redis_codec as codec

T = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)

EVENTS = [
    ev.Message("alice", "hi\nthere \"quoted\" ünïcode", "dev", T),
    ev.Action("alice", "waves", "lobby", T),
    ev.Cleared("root", "dev", T),
    ev.Joined("bob", "dev", T),
    ev.Left("bob", "to lobby", "dev", T),
    ev.Quit("bob", "bye", T),
    ev.Kicked("bob", "alice", "spam", "dev", T),
    ev.Killed("bob", "root", "", T),
    ev.Topic("dev", "alice", "shipping", T),
    ev.Renamed("bob", "robert", T),
    ev.ModeChanged("dev", "alice", "+o-t", ("bob",), T),
    ev.PrivateMessage("alice", "bob", "psst", T),
    ev.Shutdown("maintenance", T),
    ev.Notice("hello", T),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_round_trip(event: ev.Event) -> None:
    data = codec.encode(event, "node1")
    assert "\n" not in data  # one event is one line of a published batch
    back, origin = codec.decode(data.encode())
    assert origin == "node1"
    assert back == event


def test_offset_becomes_the_id_of_stored_lines() -> None:
    back, origin = codec.decode(codec.encode(ev.Message("a", "b", "dev", T)), 42)
    assert back.id == 42 and origin == ""


def test_reaper_payload_without_time_decodes() -> None:
    back, _ = codec.decode(b'{"k":"quit","name":"bob","reason":"connection lost"}')
    assert isinstance(back, ev.Quit) and back.name == "bob"


@pytest.mark.parametrize("garbage", [b"", b"{}", b'{"k":"nope"}', b'{"k":"msg"}', b"[1]"])
def test_garbage_raises_value_key_or_type_error(garbage: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        codec.decode(garbage)
