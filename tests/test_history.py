"""History file: record format, replay, crash recovery, clear, compaction, disk errors.

Every test uses a real file in ``tmp_path`` and runs in the main greenlet; waits are bounded
(``flush(timeout)``, ``gevent.Timeout``, :func:`wait_until`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import gevent
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geventchat.core.events import Action, Cleared, Joined, Message
from geventchat.core.text import clean
from geventchat.store import history
from geventchat.store.history import History, decode_record, encode_record

T0 = datetime(2026, 11, 23, 21, 5, 9, 123456, tzinfo=UTC)
WAIT = 5.0  # upper bound of every wait: generous, yet a hang fails fast


def msg(i: int, text: str | None = None) -> Message:
    return Message("alice", text if text is not None else f"line {i}", time=T0 + timedelta(i))


def wait_until(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    """Let the loop run until ``cond()``; fail after ``timeout`` seconds."""
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {cond}")):
        while not cond():
            gevent.sleep(0.005)


def file_lines(path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def texts(events) -> list[str]:
    return [getattr(e, "text", None) or f"<cleared by {e.by}>" for e in events]


def plain(events) -> list:
    """``events`` without their ids, to compare with events made in the test."""
    return [dataclasses.replace(e, id=0) for e in events]


def reload(path, **kwargs) -> list:
    """What a new History of ``path`` replays (ids dropped); it is closed again, since a
    History holds the file's lock until closed."""
    h = History(path, **kwargs)
    try:
        return plain(h.recent())
    finally:
        h.close()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "history.txt"


@pytest.fixture
def failing_disk(monkeypatch):
    """Replace the module's write with one that fails while ``state["broken"]``."""
    real = history._write
    state = {"broken": True, "attempts": 0, "error": errno.ENOSPC}

    def write(fd, data):
        state["attempts"] += 1
        if state["broken"]:
            raise OSError(state["error"], os.strerror(state["error"]))
        return real(fd, data)

    monkeypatch.setattr(history, "_write", write)
    return state


# --- record format --------------------------------------------------------------------------


@pytest.mark.parametrize("event", [
    Message("alice", "hi", time=T0),
    Message("Zoë", 'quotes " and \\ back\\slash, emoji 🎉', room="r", time=T0),
    Action("bob", "waves 👋", time=T0),
    Cleared("root", time=T0),
    Message("ßtraße", "日本語", time=T0.replace(microsecond=0)),
])
def test_encode_decode_round_trip(event):
    line = encode_record(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_record(line) == event


def test_encoding_is_compact_utf8_json():
    line = encode_record(Message("alice", "é", time=T0))
    assert "é".encode() in line  # ensure_ascii=False
    assert json.loads(line) == {"time": "2026-11-23T21:05:09.123456+00:00", "kind": "message",
                                "name": "alice", "text": "é", "room": "lobby"}
    assert b", " not in line and b": " not in line
    assert json.loads(encode_record(Cleared("root", time=T0)))["name"] == "root"


def test_time_is_stored_as_utc():
    paris = T0.astimezone(timezone(timedelta(hours=1)))
    event = decode_record(encode_record(Message("a", "b", time=paris)))
    assert event.time == T0 and event.time.utcoffset() == timedelta(0)


_names = st.text(st.characters(blacklist_categories=("C", "Z")), min_size=1, max_size=64)


@given(_names, st.text().map(clean), st.text(),
       st.datetimes(timezones=st.just(UTC)), st.sampled_from([Message, Action]),
       st.integers(0, 2**63))
def test_round_trip_any_text(name, text, room, when, cls, ident):
    """Any name a user could have had and any cleaned text survive; the text of a record
    is cleaned on load, so only cleaned text round-trips exactly (see the next tests)."""
    event = cls(name, text, room=room, time=when, id=ident)
    assert decode_record(encode_record(event)) == event


def test_encode_rejects_unstored_and_naive():
    with pytest.raises(TypeError):
        encode_record(Joined("alice"))
    with pytest.raises(ValueError):
        encode_record(Message("a", "b", time=datetime(2026, 1, 1)))


@pytest.mark.parametrize("line", [
    b"", b"\n", b"garbage\n", b"\xff\xfe\n", b"[1, 2]\n", b"null\n", b'"str"\n',
    b'{"time": "2026-11-23T21:05:09+00:00", "kind": "message", "name": "a", "text": "b"',
    b'{"time": "2026-11-23T21:05:09+00:00", "kind": "joined", "name": "a", "text": "b"}\n',
    b'{"time": "2026-11-23T21:05:09+00:00", "kind": 1, "name": "a", "text": "b"}\n',
    b'{"time": "2026-11-23T21:05:09+00:00", "kind": "message", "text": "b"}\n',
    b'{"time": "2026-11-23T21:05:09+00:00", "kind": "message", "name": 3, "text": "b"}\n',
    b'{"time": "2026-11-23T21:05:09+00:00", "kind": "message", "name": "a", "text": null}\n',
    b'{"time": "2026-11-23T21:05:09+00:00", "kind": "message", "name": "a", "text": "b", '
    b'"room": 1}\n',
    b'{"time": "yesterday", "kind": "message", "name": "a", "text": "b"}\n',
    b'{"time": "2026-11-23T21:05:09", "kind": "message", "name": "a", "text": "b"}\n',
    b'{"time": "0001-01-01T00:00:00+01:00", "kind": "message", "name": "a", "text": "b"}\n',
    b'{"time": 5, "kind": "message", "name": "a", "text": "b"}\n',
    b'{"time": "2026-11-23T21:05:09+00:00", "kind": "message", "name": "\\ud800", "text": ""}',
    b"[" * 100_000,
])
def test_decode_rejects_malformed(line):
    with pytest.raises(ValueError):
        decode_record(line)


def test_decode_accepts_record_without_room():
    line = b'{"time": "2026-11-23T21:05:09.123456+00:00", "kind": "message", "name": "a", ' \
           b'"text": "hi"}\n'
    assert decode_record(line) == Message("a", "hi", room="lobby", time=T0)


@given(st.binary())
def test_decode_arbitrary_bytes_raises_only_value_error(data):
    try:
        decode_record(data)
    except ValueError:
        pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=10)


@given(st.fixed_dictionaries({}, optional={
    "time": _json | st.text() | st.datetimes().map(datetime.isoformat),
    "kind": _json | st.sampled_from(["message", "action", "cleared"]),
    "name": _json, "text": _json, "room": _json}))
def test_decode_arbitrary_objects_raises_only_value_error(obj):
    try:
        event = decode_record(json.dumps(obj).encode())
    except ValueError:
        return
    assert event.time.utcoffset() == timedelta(0)


# --- load and replay ------------------------------------------------------------------------


def test_missing_file_is_empty_and_not_created(path):
    h = History(path)
    assert h.recent() == []
    assert h.flush(timeout=WAIT)
    h.close()
    assert not path.exists()


def test_append_flush_then_reload_replays_same_events(path):
    h = History(path)
    said = [msg(0), Action("bob", "dances", time=T0), msg(1, "ünïcödé 🎉")]
    events = plain(said)  # copies: append numbers the events it is given in place
    for e in said:
        h.append(e)
    assert plain(h.recent()) == events  # in memory at once
    assert [e.id for e in h.recent()] == [1, 2, 3]
    assert h.flush(timeout=WAIT)
    h.close()  # (a second History of the file is refused while this one holds it)
    assert reload(path) == events


def test_append_numbers_a_new_event_in_place_and_a_refused_one_stays_unnumbered(path):
    h = History(path)
    assert h.load(timeout=WAIT)
    first = msg(0)
    assert h.append(first) is first and first.id == 1  # no copy on the per-line path
    naive = Message("alice", "no zone", time=datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        h.append(naive)
    assert naive.id == 0 and [e.id for e in h.recent()] == [1]
    numbered = dataclasses.replace(msg(1), id=7)  # from elsewhere: copied, not changed
    stored = h.append(numbered)
    assert stored is not numbered and numbered.id == 7 and stored.id == 2
    h.close()


def test_close_writes_everything(path):
    h = History(path, fsync="never")
    for i in range(50):
        h.append(msg(i))
    h.close()
    assert reload(path, replay=1000) == [msg(i) for i in range(50)]


def test_replay_keeps_last_n_oldest_first(path):
    h = History(path, replay=3)
    for i in range(10):
        h.append(msg(i))
    assert texts(h.recent()) == ["line 7", "line 8", "line 9"]
    h.close()
    assert texts(reload(path, replay=3)) == ["line 7", "line 8", "line 9"]
    assert reload(path, replay=0) == []


def _write_records(path, *events) -> None:
    path.write_bytes(b"".join(encode_record(e) for e in events))


def test_torn_tail_is_skipped_and_next_append_starts_fresh_line(path, caplog):
    _write_records(path, msg(0), msg(1), msg(2))
    path.write_bytes(path.read_bytes()[:-10])  # crash in the middle of the third record
    with caplog.at_level(logging.WARNING, logger="geventchat.store.history"):
        h = History(path)
    assert texts(h.recent()) == ["line 0", "line 1"]
    assert any("line 3" in r.getMessage() and "torn" in r.getMessage() for r in caplog.records)
    h.append(msg(3))
    h.close()
    lines = file_lines(path)
    assert len(lines) == 4 and plain([decode_record(lines[3])]) == [msg(3)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geventchat.store.history"):
        assert texts(reload(path)) == ["line 0", "line 1", "line 3"]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_corrupt_middle_line_is_skipped(path, caplog):
    path.write_bytes(encode_record(msg(0)) + b'{"kind": "mess\x00age"\n' + b"\xff\xff\n\n"
                     + encode_record(msg(1)))
    with caplog.at_level(logging.WARNING, logger="geventchat.store.history"):
        h = History(path)
    assert texts(h.recent()) == ["line 0", "line 1"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "line 2" in warned and "line 3" in warned and "line 4" not in warned


def test_complete_last_line_without_newline_gets_one(path):
    path.write_bytes(encode_record(msg(0)).rstrip(b"\n"))
    h = History(path)
    assert plain(h.recent()) == [msg(0)]
    h.append(msg(1))
    h.close()
    assert reload(path) == [msg(0), msg(1)]


# --- clear ----------------------------------------------------------------------------------


def test_clear_replaces_file_atomically_and_survives_reload(path):
    h = History(path)
    for i in range(5):
        h.append(msg(i))
    assert h.flush(timeout=WAIT)
    inode = path.stat().st_ino
    cleared = Cleared("root", time=T0)
    h.clear(cleared)
    assert plain(h.recent()) == [cleared]
    assert h.flush(timeout=WAIT)
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert plain(decode_record(line) for line in file_lines(path)) == [cleared]
    assert sorted(os.listdir(path.parent)) == ["history.txt"]  # no temp file left
    h.close()
    assert reload(path) == [cleared]


def test_clear_drops_queued_appends_and_later_appends_follow_it(path):
    h = History(path)
    h.append(msg(0))
    assert h.flush(timeout=WAIT)
    h.append(msg(1))  # still queued: must not survive the clear
    h.clear(Cleared("root", time=T0))
    h.append(msg(2))
    h.append(msg(3))
    assert texts(h.recent()) == ["<cleared by root>", "line 2", "line 3"]
    h.close()
    assert reload(path) == [Cleared("root", time=T0), msg(2), msg(3)]


def test_clear_keeps_file_mode(path):
    path.write_bytes(encode_record(msg(0)))
    path.chmod(0o640)
    h = History(path)
    h.clear(Cleared("root", time=T0))
    h.close()
    assert path.stat().st_mode & 0o777 == 0o640


# --- fsync policies and compaction ----------------------------------------------------------


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_fsync_policies_accepted(path, policy, monkeypatch):
    syncs = []
    monkeypatch.setattr(history, "_fsync", lambda fd: syncs.append(fd))
    h = History(path, fsync=policy)
    h.append(msg(0))
    assert h.flush(timeout=WAIT)
    assert syncs  # flush forces an fsync whatever the policy
    h.close()
    assert reload(path) == [msg(0)]


def test_bad_fsync_policy_rejected(path):
    with pytest.raises(ValueError, match="fsync"):
        History(path, fsync="sometimes")


def test_always_fsyncs_without_flush(path, monkeypatch):
    syncs = threading.Event()
    monkeypatch.setattr(history, "_fsync", lambda fd: syncs.set())
    h = History(path, fsync="always")
    h.append(msg(0))
    wait_until(syncs.is_set)
    h.close()


def test_interval_fsyncs_later_without_flush(path, monkeypatch):
    syncs: list[int] = []
    monkeypatch.setattr(history, "_fsync", lambda fd: syncs.append(fd))
    h = History(path, fsync="interval", fsync_interval=0.05)
    h.append(msg(0))  # first write since start: synced at once
    wait_until(lambda: len(syncs) == 1)
    h.append(msg(1))  # within the interval: synced by the timer
    wait_until(lambda: len(syncs) == 2)
    h.close()


def test_never_does_not_fsync_without_flush(path, monkeypatch):
    syncs: list[int] = []
    monkeypatch.setattr(history, "_fsync", lambda fd: syncs.append(fd))
    h = History(path, fsync="never")
    h.append(msg(0))
    wait_until(lambda: path.exists() and path.stat().st_size > 0)
    assert syncs == []
    h.close()


def test_max_records_compacts_to_last_records(path):
    h = History(path, replay=100, max_records=10)
    for i in range(100):
        h.append(msg(i))
        if i % 7 == 0:
            assert h.flush(timeout=WAIT)
    h.close()
    lines = file_lines(path)
    assert 10 <= len(lines) <= 15
    assert plain(decode_record(line) for line in lines) == [msg(i) for i in range(
        100 - len(lines), 100)]


def test_compaction_counts_records_already_in_file(path):
    _write_records(path, *[msg(i) for i in range(20)])
    h = History(path, max_records=4)
    h.append(msg(20))
    h.close()
    assert plain(decode_record(line) for line in file_lines(path)) == [msg(i) for i in
                                                                       range(17, 21)]


def test_compaction_trusts_only_what_this_process_wrote(path, monkeypatch):
    """Records this History wrote are copied without decoding; a compaction that reaches
    back into what was there before scans (and cleans) as always."""
    old = [encode_record(msg(i)) for i in range(10)]
    path.write_bytes(b"".join(old[:5]) + b"not json\n" + b"".join(old[5:]))
    calls: list[bool] = []
    real = history._compact_file

    def spy(*args):
        calls.append(len(args) > 3 and args[3])
        return real(*args)

    monkeypatch.setattr(history, "_compact_file", spy)
    h = History(path, replay=100, max_records=8)  # compacts past 12 records
    for i in range(10, 60):
        h.append(msg(i))
        assert h.flush(timeout=WAIT)
    h.close()
    assert calls[0] is False  # 3 records of its own: the other 5 kept had to be checked
    assert True in calls[1:]  # later compactions kept only records it wrote or checked
    lines = file_lines(path)
    assert plain(decode_record(line) for line in lines) == [msg(i) for i in range(
        60 - len(lines), 60)]


# --- disk errors ----------------------------------------------------------------------------


def test_write_error_reported_once_records_kept_and_retried(path, failing_disk, caplog,
                                                            monkeypatch):
    monkeypatch.setattr(history, "RETRY_INTERVAL", 0.02)
    errors: list[str] = []
    h = History(path, on_error=errors.append)
    with caplog.at_level(logging.INFO, logger="geventchat.store.history"):
        h.append(msg(0))  # never raises
        wait_until(lambda: errors)
        h.append(msg(1))
        attempts = failing_disk["attempts"]
        wait_until(lambda: failing_disk["attempts"] >= attempts + 3)  # periodic retries
        assert not h.flush(timeout=0.05)
        assert len(errors) == 1 and "No space left" in errors[0] and str(path) in errors[0]
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
        assert texts(h.recent()) == ["line 0", "line 1"]

        failing_disk["broken"] = False  # the disk recovers: the next retry writes it all
        wait_until(lambda: any("resumed" in r.getMessage() for r in caplog.records))
    assert h.flush(timeout=WAIT)
    h.close()
    assert reload(path) == [msg(0), msg(1)]


def test_new_error_streak_reports_again(path, failing_disk, monkeypatch):
    monkeypatch.setattr(history, "RETRY_INTERVAL", 0.02)
    errors: list[str] = []
    h = History(path, on_error=errors.append)
    h.append(msg(0))
    wait_until(lambda: errors)
    failing_disk["broken"] = False
    assert h.flush(timeout=WAIT)
    failing_disk["broken"] = True
    failing_disk["error"] = errno.EROFS
    h.append(msg(1))
    wait_until(lambda: len(errors) == 2)
    assert "Read-only" in errors[1]
    failing_disk["broken"] = False
    h.close()
    assert reload(path) == [msg(0), msg(1)]


def test_open_error_is_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(history, "RETRY_INTERVAL", 0.02)
    path = tmp_path / "later" / "history.txt"  # directory missing: open fails
    errors: list[str] = []
    h = History(path, on_error=errors.append)
    h.append(msg(0))
    wait_until(lambda: errors)
    path.parent.mkdir()
    assert h.flush(timeout=WAIT)
    h.close()
    assert reload(path) == [msg(0)]


def test_partial_write_does_not_duplicate_or_glue(path, monkeypatch, caplog):
    real = history._write
    state = {"calls": 0}

    def write(fd, data):  # first call stops mid-record, then the disk fills up once
        state["calls"] += 1
        if state["calls"] == 1:
            return real(fd, bytes(data[: len(data) // 2 + 7]))
        if state["calls"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(history, "_write", write)
    monkeypatch.setattr(history, "RETRY_INTERVAL", 0.02)
    h = History(path)
    for i in range(4):
        h.append(msg(i))
    h.close()
    assert len(file_lines(path)) == 5  # 2 whole, 1 torn, then the 2 unwritten ones again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geventchat.store.history"):
        assert reload(path) == [msg(i) for i in range(4)]
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_queue_bound_drops_oldest(path, failing_disk, monkeypatch, caplog):
    monkeypatch.setattr(history, "MAX_QUEUED", 5)
    h = History(path, replay=100)
    assert h.load(timeout=WAIT)  # (appends made before the load are held until it ends)
    with caplog.at_level(logging.WARNING, logger="geventchat.store.history"):
        for i in range(8):
            h.append(msg(i))
    assert len([r for r in caplog.records if "dropping" in r.getMessage()]) == 1
    assert len(h.recent()) == 8  # memory is not the backlog
    failing_disk["broken"] = False
    h.close()
    assert reload(path) == [msg(i) for i in range(3, 8)]


def test_close_gives_up_after_timeout_on_dead_disk(path, failing_disk, caplog):
    h = History(path)
    h.append(msg(0))
    with caplog.at_level(logging.ERROR, logger="geventchat.store.history"):
        with gevent.Timeout(WAIT):
            h.close(timeout=0.1)
    assert any("not on disk" in r.getMessage() for r in caplog.records)


# --- never blocking the loop ----------------------------------------------------------------


def test_append_never_blocks_the_loop(path, monkeypatch):
    real = history._write
    entered, gate = threading.Event(), threading.Event()

    def slow_write(fd, data):  # a disk that stalls until the test lets it go
        entered.set()
        gate.wait(WAIT)
        return real(fd, data)

    monkeypatch.setattr(history, "_write", slow_write)
    h = History(path)
    try:
        h.append(msg(0))
        wait_until(entered.is_set)  # the writer is now stuck in the disk
        ticks: list[int] = []

        def ticker() -> None:
            for i in range(5):
                gevent.sleep(0.001)
                ticks.append(i)

        with gevent.Timeout(2):
            for i in range(1, 100):
                h.append(msg(i))  # returns at once although the disk is stuck
            gevent.spawn(ticker).join()
        assert ticks == [0, 1, 2, 3, 4]
        assert len(h.recent()) == 100
    finally:
        gate.set()
    assert h.flush(timeout=WAIT)
    h.close()
    assert reload(path, replay=1000) == [msg(i) for i in range(100)]


def test_clear_during_stalled_write_is_ordered(path, monkeypatch):
    real = history._write
    entered, gate = threading.Event(), threading.Event()

    def slow_write(fd, data):
        entered.set()
        gate.wait(WAIT)
        return real(fd, data)

    monkeypatch.setattr(history, "_write", slow_write)
    h = History(path)
    try:
        h.append(msg(0))  # in flight to the old file
        wait_until(entered.is_set)
        h.append(msg(1))  # queued before the clear: dropped
        h.clear(Cleared("root", time=T0))
        h.append(msg(2))  # after the clear: lands in the new file
    finally:
        gate.set()
    h.close()
    assert reload(path) == [Cleared("root", time=T0), msg(2)]
