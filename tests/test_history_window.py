"""``actions.history_window`` / ``history_targets`` in-process, over the broker interface
and the real file history with a small memory (``replay=5``), so most windows are read
from the file's tail: ids, times (beyond memory too), the reach, rights."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from geventchat.core import actions
from geventchat.core import events as ev
from geventchat.core.broker import LocalBroker, SimpleShelf
from geventchat.core.errors import ChatError
from geventchat.store.history import History
from tests.test_seams import make_hub, user

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(i: int) -> datetime:
    """Line ``i`` is said at T0 + i minutes."""
    return T0 + timedelta(minutes=i)


@pytest.fixture
def lobby(tmp_path):
    shelf = SimpleShelf(lambda room: History(tmp_path / f"{room}.txt", replay=5, room=room))
    hub = make_hub(LocalBroker(shelf))
    me = user(hub, "ann")
    room = hub.find_room("lobby")
    room.broker.prepare(room)
    for i in range(1, 41):
        room.broker.publish(room, ev.Message("bob", f"line {i}", "lobby", at(i)))
    yield hub, me, room
    shelf.close_all(5)


def window(lobby, kind: str, ref=None, limit: int = 100, until=None) -> list[int]:
    hub, me, room = lobby
    ref = ref if ref is not None else actions.HistoryRef()
    lines = actions.history_window(hub, me, room, kind, ref, limit, until)
    texts = [e.text for e in lines]
    assert texts == [f"line {e.id}" for e in lines]  # ids are 1.. in this room
    return [e.id for e in lines]


def Id(i: int) -> actions.HistoryRef:  # noqa: N802
    return actions.HistoryRef(id=i)


def At(i: int, seconds: float = 0.0) -> actions.HistoryRef:  # noqa: N802
    return actions.HistoryRef(time=at(i) + timedelta(seconds=seconds))


def test_windows_by_id(lobby):
    assert window(lobby, "latest", limit=3) == [38, 39, 40]
    assert window(lobby, "latest", Id(37), 10) == [38, 39, 40]
    assert window(lobby, "before", Id(10), 4) == [6, 7, 8, 9]
    assert window(lobby, "before", Id(3), 10) == [1, 2]
    assert window(lobby, "after", Id(10), 3) == [11, 12, 13]
    assert window(lobby, "after", Id(40), 3) == []
    assert window(lobby, "around", Id(20), 5) == [18, 19, 20, 21, 22]
    assert window(lobby, "around", Id(2), 6) == [1, 2, 3, 4, 5, 6]


def test_between_both_ways(lobby):
    hub, me, room = lobby
    fwd = actions.history_window(hub, me, room, "between", Id(10), 3, Id(20))
    back = actions.history_window(hub, me, room, "between", Id(20), 3, Id(10))
    assert [e.id for e in fwd] == [11, 12, 13]
    assert [e.id for e in back] == [17, 18, 19]
    mixed = actions.history_window(hub, me, room, "between", At(10), 100, Id(14))
    assert [e.id for e in mixed] == [11, 12, 13]


def test_windows_by_time_reach_past_memory(lobby):
    assert window(lobby, "before", At(10), 3) == [7, 8, 9]
    assert window(lobby, "before", At(10, 1), 3) == [8, 9, 10]
    assert window(lobby, "after", At(10), 3) == [11, 12, 13]
    assert window(lobby, "after", At(10, -1), 3) == [10, 11, 12]
    assert window(lobby, "latest", At(37), 10) == [38, 39, 40]
    assert window(lobby, "around", At(5), 4) == [3, 4, 5, 6]
    assert window(lobby, "before", At(0), 10) == []
    assert window(lobby, "after", At(41), 10) == []
    # Milliseconds count, microseconds don't: a line is not after its own time.
    assert window(lobby, "after", actions.HistoryRef(time=at(10) + timedelta(microseconds=400)),
                  1) == [11]


def test_the_reach(lobby, monkeypatch):
    monkeypatch.setattr(actions, "HISTORY_REACH", 20)  # ids 21..40 reachable
    assert window(lobby, "before", Id(25), 10) == [21, 22, 23, 24]
    assert window(lobby, "before", Id(15), 10) == []
    assert window(lobby, "after", Id(3), 2) == [21, 22]
    assert window(lobby, "after", At(3), 2) == [21, 22]
    assert window(lobby, "between", At(1), 100, At(23)) == [21, 22]


def test_only_members_and_targets(lobby):
    hub, me, room = lobby
    outsider = user(hub, "oz")
    actions.join(hub, outsider, "elsewhere")
    with pytest.raises(ChatError) as exc:
        actions.history_window(hub, outsider, room, "latest", actions.HistoryRef(), 10)
    assert exc.value.code == "not_member"
    found = actions.history_targets(hub, me, T0, at(100), 10)
    assert [(r.name, t) for r, t in found] == [("lobby", at(40))]
    assert actions.history_targets(hub, me, at(40), at(100), 10) == []  # exclusive
    assert actions.history_targets(hub, me, at(100), at(39), 10) == found  # either order
