"""History loading (tail only, off the loop), record checks, locking, file modes, ids and
epochs, ``since``/``last``, and the :class:`HistoryShelf` closer.

Real files in ``tmp_path``, real threads; every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from datetime import UTC, datetime, timedelta

import gevent
import greenlet
import pytest

from geventchat.core.events import Action, Cleared, Message
from geventchat.store import history
from geventchat.store.history import (
    History,
    HistoryLockedError,
    HistoryShelf,
    decode_record,
    encode_record,
)

T0 = datetime(2026, 11, 23, 21, 5, 9, 123456, tzinfo=UTC)
WAIT = 5.0


def msg(i: int, room: str = "lobby") -> Message:
    return Message("alice", f"line {i}", room=room, time=T0 + timedelta(seconds=i))


def texts(events) -> list[str]:
    return [getattr(e, "text", None) or f"<cleared by {e.by}>" for e in events]


def opened(path, **kwargs) -> History:
    h = History(path, **kwargs)
    assert h.load(timeout=WAIT)
    return h


@pytest.fixture
def path(tmp_path):
    return tmp_path / "history.txt"


def _legacy_line(i: int) -> bytes:
    """A record as older versions wrote it: no id, no epoch."""
    return (b'{"time":"2026-11-23T21:05:09.123456+00:00","kind":"message","name":"alice",'
            b'"text":"old %d","room":"lobby"}\n' % i)


# --- loading --------------------------------------------------------------------------------


def test_constructor_never_waits_and_recent_waits_for_the_load(path, monkeypatch):
    path.write_bytes(encode_record(msg(0)))
    gate, threads = threading.Event(), []
    real = history._load_file

    def slow_load(*args):
        threads.append(threading.get_ident())
        gate.wait(WAIT)
        return real(*args)

    monkeypatch.setattr(history, "_load_file", slow_load)
    with gevent.Timeout(1):
        h = History(path)  # the disk is stuck: construction still returns at once
        assert not h.loaded and not h.load(timeout=0.01)
    gevent.spawn_later(0.02, gate.set)
    assert texts(h.recent()) == ["line 0"]  # waits (in this greenlet) for the load
    assert threads and threading.get_ident() not in threads
    h.close()


def test_load_runs_in_a_thread_and_reads_only_the_tail(path, monkeypatch):
    line = encode_record(msg(0))
    path.write_bytes(line * 20_000)  # ~2.4 MB
    threads, read = set(), []

    def pread(fd, n, offset):
        threads.add(threading.get_ident())
        read.append(n)
        return os.pread(fd, n, offset)

    monkeypatch.setattr(history, "_pread", pread)
    h = opened(path, replay=100)
    assert len(h.recent()) == 100
    assert threading.get_ident() not in threads
    assert sum(read) <= 2 * history.TAIL_CHUNK
    h.close()


def test_tail_read_across_chunks_matches_full_read(path, monkeypatch):
    """Small chunks, lines straddling them, a corrupt line and a torn tail."""
    monkeypatch.setattr(history, "TAIL_CHUNK", 7)
    lines = [encode_record(msg(i)) for i in range(30)]
    lines[20] = b'{"kind": "garbage\n'
    path.write_bytes(b"".join(lines) + lines[0][:15])
    for replay in (0, 1, 5, 9, 10, 28, 100):
        h = opened(path, replay=replay)
        want = [f"line {i}" for i in range(30) if i != 20][-replay:] if replay else []
        assert texts(h.recent()) == want
        h.close()


def test_warning_names_the_byte_offset_when_not_read_from_start(path, caplog):
    good = encode_record(msg(1))
    path.write_bytes(encode_record(msg(0)) * 10 + b"bad\n" + good * 3)
    with caplog.at_level(logging.WARNING, logger="geventchat.store.history"):
        h = opened(path, replay=3)
        h.close()
        assert not [r for r in caplog.records if "skipping" in r.getMessage()]  # not reached
        h = opened(path, replay=4)
        h.close()
    offset = len(encode_record(msg(0))) * 10
    assert any(f"byte offset {offset}" in r.getMessage() for r in caplog.records)


def test_overlong_garbage_is_skipped_without_reading_it_all(path, monkeypatch):
    monkeypatch.setattr(history, "MAX_LINE", 1000)
    path.write_bytes(encode_record(msg(0)) + b"x" * 50_000 + b"\n" + encode_record(msg(1)))
    h = opened(path)
    assert texts(h.recent()) == ["line 0", "line 1"]
    h.close()


def test_appends_before_load_come_after_the_loaded_tail(path, monkeypatch):
    path.write_bytes(b"".join(encode_record(msg(i)) for i in range(3)))
    gate = threading.Event()
    real = history._load_file

    def slow_load(*args):
        gate.wait(WAIT)
        return real(*args)

    monkeypatch.setattr(history, "_load_file", slow_load)
    h = History(path)
    h.append(msg(3))  # the load is stuck in its thread: held, never blocks
    h.append(msg(4))
    assert not h.loaded
    gate.set()
    assert h.load(timeout=WAIT)
    assert texts(h.recent()) == [f"line {i}" for i in range(5)]
    assert [e.id for e in h.recent()] == [0, 0, 0, 1, 2]  # a file older than ids
    h.close()
    h = opened(path)
    assert texts(h.recent()) == [f"line {i}" for i in range(5)]
    assert h.last_id == 2
    h.close()


def test_clear_before_load_drops_the_loaded_tail(path, monkeypatch):
    path.write_bytes(encode_record(msg(0)))
    h = History(path)
    h.clear(Cleared("root", time=T0))
    h.append(msg(1))
    assert texts(h.recent()) == ["<cleared by root>", "line 1"]
    h.close()
    h = opened(path)
    assert texts(h.recent()) == ["<cleared by root>", "line 1"]
    h.close()


def test_million_line_file_loads_fast_and_never_stalls_the_loop(path, monkeypatch):
    """F2: ~1M records (~200 MB) load their replay in milliseconds, off the loop."""
    base = (b'{"time":"2026-11-23T21:05:09.123456+00:00","kind":"message","name":"alice",'
            b'"text":"' + b"x" * 60 + b' %07d","room":"lobby","id":%d,"epoch":"0badcafe"}\n')
    n = 1_000_000
    with open(path, "wb") as f:
        for start in range(0, n, 50_000):
            f.write(b"".join(base % (i, i + 1) for i in range(start, start + 50_000)))
    size = path.stat().st_size
    read = []
    real_pread = history._pread
    monkeypatch.setattr(history, "_pread", lambda fd, k, o: read.append(k) or real_pread(fd, k, o))
    gaps: list[float] = []
    stop = False

    def ticker() -> None:
        last = time.perf_counter()
        while not stop:
            gevent.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = gevent.spawn(ticker)
    gevent.sleep(0.01)
    started = time.perf_counter()
    h = History(path, replay=100, max_records=2_000_000)
    assert h.load(timeout=WAIT)
    elapsed = time.perf_counter() - started
    h.append(msg(0))  # the writer counts lines lazily (size says it may be over): off-loop
    assert h.flush(timeout=WAIT)
    gevent.sleep(0.05)
    stop = True
    tick.join(timeout=WAIT)
    recent = h.recent()
    assert len(recent) == 100 and recent[-1].id == n + 1 and h.epoch == "0badcafe"
    h.close()
    print(f"\n1M-line file ({size / 1e6:.0f} MB): load {elapsed * 1000:.1f} ms, "
          f"{sum(read[:2]) // 1024} KiB read at load, max loop gap {max(gaps) * 1000:.1f} ms "
          f"over {len(gaps)} ticks")
    assert size > 150e6
    assert elapsed < 0.5
    assert max(gaps) < 0.05


def test_record_count_for_compaction_is_taken_lazily_off_the_loop(path, monkeypatch):
    path.write_bytes(encode_record(msg(0)) * 5000)
    counted = []
    real = history._count_lines
    monkeypatch.setattr(history, "_count_lines",
                        lambda p: counted.append(threading.get_ident()) or real(p))
    h = opened(path, replay=10, max_records=1_000_000)  # 5000 lines can't be over: no count
    h.append(msg(1))
    assert h.flush(timeout=WAIT)
    assert counted == []
    h.close()
    h = opened(path, replay=10, max_records=100)
    h.append(msg(2))
    assert h.flush(timeout=WAIT)
    h.close()
    assert len(counted) == 1 and counted[0] != threading.get_ident()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 100 and json.loads(lines[-1])["text"] == "line 2"


# --- record checks (F5) ---------------------------------------------------------------------


def _record(**fields) -> bytes:
    obj = {"time": "2026-11-23T21:05:09+00:00", "kind": "message", "name": "a", "text": "t"}
    obj.update(fields)
    return json.dumps(obj).encode() + b"\n"


@pytest.mark.parametrize("name", ["", "a b", "a\tb", "x" * 65, "a\x1bb", "a\u202eb", "a\u200bb",
                                  "a\u00a0b", "a\nb"])
def test_implausible_names_are_corrupt(name):
    with pytest.raises(ValueError, match="name"):
        decode_record(_record(name=name))


@pytest.mark.parametrize("name", ["Zoë", "x" * 64, "Алиса", "名前", "o'neil", "a+b", "server"])
def test_lenient_names_load(name):
    assert decode_record(_record(name=name)).name == name


def test_text_is_cleaned_on_load():
    event = decode_record(_record(text="hi \x1b[2J\x07there\u202e\tx"))
    assert event.text == "hi [2Jthere x"


@pytest.mark.parametrize("line", [_record(id=-1), _record(id="3"), _record(id=1.5),
                                  _record(id=True), _record(epoch=5), _record(epoch="")])
def test_bad_ids_and_epochs_are_corrupt(line):
    with pytest.raises(ValueError):
        decode_record(line)


def test_records_render_under_the_room_that_owns_the_file(tmp_path):
    path = tmp_path / "history.dev.txt"
    path.write_bytes(_record(room="a b") + _record(room="lobby", kind="cleared")
                     + _record(name="x y", room="dev"))
    h = opened(path, room="dev")
    assert [e.room for e in h.recent()] == ["dev", "dev"]
    assert decode_record(_record(room="a b"), room="dev").room == "dev"
    h.close()


# --- files private, durable, locked (F12, F13) ----------------------------------------------


def test_new_file_is_0600_and_its_directory_fsynced(path, monkeypatch):
    os.umask(old := os.umask(0))  # read the umask
    try:
        os.umask(0)  # even with no umask at all
        dirs = []
        real = history.atomic.fsync_dir
        monkeypatch.setattr(history.atomic, "fsync_dir",
                            lambda d, *a: dirs.append(d) or real(d, *a))
        h = opened(path)
        h.append(msg(0))
        assert h.flush(timeout=WAIT)
        h.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dirs == [str(path.parent)]


def test_existing_file_keeps_its_mode_and_warns_once(path, caplog):
    path.write_bytes(encode_record(msg(0)))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="geventchat.store.history"):
        for _ in range(2):
            h = opened(path)
            h.append(msg(1))
            h.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert len([r for r in caplog.records if "readable by other users" in r.getMessage()]) == 1


def test_second_history_on_one_file_is_refused(path):
    path.write_bytes(encode_record(msg(0)))
    h = opened(path)
    other = History(path)
    with pytest.raises(HistoryLockedError, match="in use by another geventchat server") as exc:
        other.load(timeout=WAIT)
    assert str(path) in str(exc.value) and isinstance(exc.value, OSError)
    h.close()
    assert other.load(timeout=WAIT)  # a later load tries again
    other.close()


def test_lock_is_held_across_clear_and_for_a_new_file(path):
    h = opened(path)  # no file yet
    h.append(msg(0))
    assert h.flush(timeout=WAIT)
    with pytest.raises(HistoryLockedError):
        History(path).load(timeout=WAIT)
    h.clear(Cleared("root", time=T0))
    assert h.flush(timeout=WAIT)
    with pytest.raises(HistoryLockedError):
        History(path).load(timeout=WAIT)
    h.close()


def test_another_process_holding_the_file_refuses_start(path):
    import subprocess
    import sys
    path.write_bytes(encode_record(msg(0)))
    code = ("import fcntl, sys; f = open(sys.argv[1], 'rb'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "locked\n"
        with pytest.raises(HistoryLockedError):
            History(path).load(timeout=WAIT)
    finally:
        proc.stdin.close()
        proc.wait(WAIT)
        proc.stdout.close()


def test_locked_file_is_reported_through_on_error_and_retried(path, monkeypatch):
    monkeypatch.setattr(history, "RETRY_INTERVAL", 0.02)
    path.write_bytes(b"")
    holder = opened(path)
    errors: list[str] = []
    h = History(path, on_error=errors.append)
    h.append(msg(0))  # never raises
    with gevent.Timeout(WAIT):
        while not errors:
            gevent.sleep(0.005)
    assert "in use by another geventchat server" in errors[0]
    holder.close()
    assert h.flush(timeout=WAIT)
    h.close()
    h = opened(path)
    assert texts(h.recent()) == ["line 0"]
    h.close()


def test_two_histories_creating_one_file_do_not_both_write(path, monkeypatch):
    monkeypatch.setattr(history, "RETRY_INTERVAL", 0.02)
    first, second = opened(path), opened(path)  # no file yet: nothing to lock
    errors: list[str] = []
    second._on_error = errors.append
    first.append(msg(0))
    assert first.flush(timeout=WAIT)  # created the file and locked it
    second.append(msg(1))
    with gevent.Timeout(WAIT):
        while not errors:
            gevent.sleep(0.005)
    assert "in use" in errors[0]
    first.close()
    second.close(timeout=0.1)


# --- ids and epochs -------------------------------------------------------------------------


def test_ids_grow_and_survive_restarts_and_clears(path):
    h = opened(path)
    assert h.last_id == 0 and len(h.epoch) == 8
    first_epoch = h.epoch
    assert [h.append(msg(i)).id for i in range(3)] == [1, 2, 3]
    h.close()
    h = opened(path)
    assert h.epoch == first_epoch and h.last_id == 3
    assert h.append(Action("bob", "waves", time=T0)).id == 4
    cleared = h.clear(Cleared("root", time=T0))
    assert cleared.id == 5 and h.epoch != first_epoch
    second_epoch = h.epoch
    assert h.append(msg(9)).id == 6
    h.close()
    h = opened(path)
    assert h.epoch == second_epoch and h.last_id == 6
    assert [e.id for e in h.recent()] == [5, 6]
    h.close()
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [(r["id"], r["epoch"]) for r in records] == [(5, second_epoch), (6, second_epoch)]


def test_old_files_load_and_get_a_new_epoch(path):
    path.write_bytes(_legacy_line(0) + _legacy_line(1))
    h = opened(path)
    assert [e.id for e in h.recent()] == [0, 0] and h.last_id == 0
    epoch = h.epoch
    assert h.append(msg(2)).id == 1
    h.close()
    h = opened(path)
    assert h.epoch == epoch and h.last_id == 1
    assert texts(h.last(10)) == ["old 0", "old 1", "line 2"]
    h.close()


def test_missing_file_gets_a_new_epoch(path):
    h = opened(path)
    h.append(msg(0))
    epoch = h.epoch
    h.close()
    path.unlink()
    h = opened(path)
    assert h.epoch != epoch and h.last_id == 0
    h.close()


def test_since_from_memory_and_from_the_file(path):
    h = opened(path, replay=5)
    for i in range(20):
        h.append(msg(i))
    assert h.flush(timeout=WAIT)
    lines, lost = h.since(17, 100)
    assert [e.id for e in lines] == [18, 19, 20] and lost == 0
    lines, lost = h.since(3, 4)  # older than memory: read back from the file
    assert [e.id for e in lines] == [4, 5, 6, 7] and lost == 0
    assert texts(lines) == ["line 3", "line 4", "line 5", "line 6"]
    assert h.since(20, 10) == ([], 0)
    lines, lost = h.since(0, 100)
    assert [e.id for e in lines] == list(range(1, 21)) and lost == 0
    h.close()


def test_since_counts_lines_lost_to_compaction_and_clear(path):
    h = opened(path, replay=3, max_records=10)
    for i in range(40):
        h.append(msg(i))
        assert h.flush(timeout=WAIT)
    lines, lost = h.since(5, 100)
    assert lines[0].id - 5 - 1 == lost > 0 and lines[-1].id == 40
    epoch = h.epoch
    cleared = h.clear(Cleared("root", time=T0))
    h.append(msg(99))
    lines, lost = h.since(38, 10, epoch=epoch)  # an old epoch: the place is void
    assert [e.id for e in lines] == [cleared.id, cleared.id + 1] and lost == cleared.id - 1
    lines, lost = h.since(38, 10, epoch=h.epoch)
    assert [e.id for e in lines] == [cleared.id, cleared.id + 1] and lost == 2
    h.close()


def test_since_ignores_an_old_file_still_on_disk_behind_a_clear(path, monkeypatch):
    h = opened(path, replay=2)
    for i in range(5):
        h.append(msg(i))
    assert h.flush(timeout=WAIT)
    gate = threading.Event()
    real = history._replace_locked
    monkeypatch.setattr(history, "_replace_locked",
                        lambda *a: gate.wait(WAIT) and real(*a))
    try:
        h.clear(Cleared("root", time=T0))  # stuck: the old file stays on disk
        for i in range(5, 9):
            h.append(msg(i))  # memory (replay=2) no longer holds the clear
        lines, lost = h.since(0, 100)
        assert all(e.id > 5 for e in lines)
        assert texts(h.last(50)) == ["line 7", "line 8"]
    finally:
        gate.set()
    h.close()


def test_last_reads_back_when_memory_is_short(path):
    h = opened(path, replay=3)
    for i in range(30):
        h.append(msg(i))
    assert texts(h.last(2)) == ["line 28", "line 29"]
    assert h.flush(timeout=WAIT)
    assert texts(h.last(10)) == [f"line {i}" for i in range(20, 30)]
    assert len(h.last(1000)) == 30 and h.last(0) == []
    h.close()


def test_encode_writes_id_and_epoch_only_when_set():
    assert b'"id"' not in encode_record(msg(0))
    line = encode_record(Message("a", "b", time=T0, id=7), "0badcafe")
    assert json.loads(line)["id"] == 7 and json.loads(line)["epoch"] == "0badcafe"
    assert decode_record(line) == Message("a", "b", time=T0, id=7)


# --- the shelf (F3, F8) ---------------------------------------------------------------------


class SwitchCounter:
    """Counts greenlet switches away from the current greenlet while active."""

    def __init__(self) -> None:
        self.switches = 0
        self._me = greenlet.getcurrent()

    def __enter__(self) -> SwitchCounter:
        def trace(event, args):
            if event in ("switch", "throw") and args[0] is self._me:
                self.switches += 1
            if self._old is not None:
                self._old(event, args)
        self._old = greenlet.settrace(trace)
        return self

    def __exit__(self, *exc) -> None:
        greenlet.settrace(self._old)


def test_switch_counter_sees_switches():
    with SwitchCounter() as c:
        gevent.sleep(0)
    assert c.switches >= 1


def make_shelf(tmp_path, **kwargs) -> HistoryShelf:
    def factory(room: str) -> History:
        return History(tmp_path / f"history.{room}.txt", room=room, **kwargs)
    return HistoryShelf(factory)


def test_get_and_release_never_switch_greenlets(tmp_path):
    shelf = make_shelf(tmp_path)
    h = shelf.get("dev")
    assert h.load(timeout=WAIT)
    for i in range(50):
        h.append(msg(i, "dev"))
    with SwitchCounter() as c:
        assert shelf.get("Dev") is h  # one room, one History, whatever the case
        shelf.release(h)
        again = shelf.get("dev")  # taken back before the closer ran
        shelf.release(again)
        shelf.release(again)  # twice: ignored
    assert c.switches == 0
    assert shelf.close_all(WAIT)
    h = opened(tmp_path / "history.dev.txt", room="dev")
    assert len(h.recent()) == 50
    h.close()


def test_release_then_reacquire_during_a_stalled_close_keeps_every_line(tmp_path, monkeypatch):
    shelf = make_shelf(tmp_path, fsync="always")
    h = shelf.get("dev")
    assert h.load(timeout=WAIT)
    h.append(msg(0, "dev"))
    assert h.flush(timeout=WAIT)
    real = history._write
    entered, gate = threading.Event(), threading.Event()

    def slow_write(fd, data):
        entered.set()
        gate.wait(WAIT)
        return real(fd, data)

    monkeypatch.setattr(history, "_write", slow_write)
    try:
        h.append(msg(1, "dev"))
        with gevent.Timeout(WAIT):
            while not entered.is_set():
                gevent.sleep(0.005)
        shelf.release(h)  # the closer waits on the stalled disk
        gevent.sleep(0.02)
        h2 = shelf.get("dev")  # the room comes back before the close finished
        assert h2 is h and not h.closed
        h2.append(msg(2, "dev"))
        assert texts(h2.recent()) == ["line 0", "line 1", "line 2"]
    finally:
        gate.set()
    assert h2.flush(timeout=WAIT)
    shelf.release(h2)
    assert shelf.close_all(WAIT)
    h = opened(tmp_path / "history.dev.txt", room="dev")
    assert texts(h.recent()) == ["line 0", "line 1", "line 2"]
    assert [e.id for e in h.recent()] == [1, 2, 3]
    h.close()


def test_reacquire_after_close_committed_waits_for_the_old_file(tmp_path):
    shelf = make_shelf(tmp_path)
    h = shelf.get("dev")
    assert h.load(timeout=WAIT)
    h.append(msg(0, "dev"))
    shelf.release(h)
    with gevent.Timeout(WAIT):
        while not h.closed:
            gevent.sleep(0.001)
    h2 = shelf.get("dev")  # the old one may still be letting go of its file
    assert h2 is not h
    assert h2.load(timeout=WAIT)  # no HistoryLockedError
    assert texts(h2.recent()) == ["line 0"]
    assert shelf.close_all(WAIT)


def test_close_all_with_many_stalled_disks_keeps_one_deadline(tmp_path, monkeypatch):
    shelf = make_shelf(tmp_path)
    rooms = [shelf.get(f"r{i}") for i in range(50)]
    for h in rooms:
        assert h.load(timeout=WAIT)
    gate = threading.Event()
    real_write, real_fsync = history._write, history._fsync
    monkeypatch.setattr(history, "_write", lambda fd, d: gate.wait(30) and real_write(fd, d))
    monkeypatch.setattr(history, "_fsync", lambda fd: gate.wait(30) and real_fsync(fd))
    try:
        for i, h in enumerate(rooms):
            h.append(msg(i, h.room))
        shelf.release(rooms[0])  # one of them already closing in the background
        started = time.monotonic()
        with gevent.Timeout(WAIT):
            assert shelf.close_all(timeout=0.5) is False
        elapsed = time.monotonic() - started
        print(f"\nclose_all with 50 stalled histories: {elapsed * 1000:.0f} ms (timeout 500 ms)")
        assert 0.45 <= elapsed < 1.0
    finally:
        gate.set()
