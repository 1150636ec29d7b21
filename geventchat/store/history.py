"""File-backed, append-only history of one room.

The file holds one UTF-8 JSON record per line (``docs/PROTOCOL.md`` section 8)::

    {"time":"2026-11-23T21:05:09.123456+00:00","kind":"message","name":"alice","text":"hi","room":"lobby"}

The last ``replay`` events live in memory, so :meth:`History.recent` (a newcomer's replay)
never touches the disk. :meth:`History.append` never blocks the event loop and never raises
on I/O: it updates memory at once and queues the encoded line. One writer greenlet drains the
queue in batches (one ``os.write`` for many lines), running the system calls in gevent's
threadpool, so a slow or stalled disk delays only the writer, never the chat.

Durability (``fsync``):

* ``"always"``: fsync after every batch. Batches form by themselves while the previous write
  is in its thread, so the cost is one fsync per disk round trip, not one per line.
* ``"interval"`` (default): fsync at most every ``fsync_interval`` seconds, and only when
  something was written. A power failure can lose up to about that much of acknowledged
  history; a crash of the process loses nothing already handed to the writer thread,
  because ``os.write`` puts the bytes in the kernel's page cache.
* ``"never"``: leave it to the OS (typically ~30 s of exposure to power loss).

:meth:`History.flush` forces an fsync whatever the policy (shutdown uses it).

Crash safety: a torn last line (a crash mid-write) or any corrupt line is skipped at load with
a warning naming its line number, and the next append starts on a fresh line so the new record
is never glued to the garbage. Clearing and compaction write a temporary file in the same
directory, fsync it, rename it over the old file and fsync the directory, so a crash leaves
either the old or the new file, never a mix.

Write errors (disk full, read-only remount, permissions) are logged once per failure streak and
reported once through ``on_error``; the unwritten records stay queued (up to
:data:`MAX_QUEUED`) and are retried every :data:`RETRY_INTERVAL` seconds and on each append.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import gevent
from gevent.event import Event

from geventchat.core.events import STORED, Action, Cleared, Message
from geventchat.core.stats import STATS
from geventchat.store import atomic

log = logging.getLogger(__name__)

StoredEvent = Message | Action | Cleared

#: Accepted values of the ``fsync`` policy.
FSYNC_POLICIES = ("always", "interval", "never")

#: Records kept in memory while the disk refuses them: at ~200 bytes a line this bounds the
#: backlog to ~20 MB, hours of a busy room, before the oldest are dropped.
MAX_QUEUED = 100_000

#: Seconds between retries of a failing disk: quick to recover, cheap while it stays broken.
RETRY_INTERVAL = 1.0

#: Seconds between attempts to compact a file whose compaction failed (e.g. the directory is
#: read-only while the file itself is writable): appends still work, so there is no hurry.
COMPACT_RETRY_INTERVAL = 30.0

#: How long :meth:`History.close` waits for the backlog at shutdown: long enough for a slow
#: disk, short enough that a dead one cannot hang the server's exit.
CLOSE_TIMEOUT = 10.0

#: How long :meth:`History.close` waits for the writer greenlet to leave its last system call.
_JOIN_TIMEOUT = 2.0

#: Room of records written before records named their room (the protocol's default room).
_DEFAULT_ROOM = "lobby"


# --- record format ------------------------------------------------------------------------


_quote = json.encoder.encode_basestring  # JSON string literal, UTF-8 kept as is

#: In the ``interval`` and ``never`` policies the writer lets appends gather this long
#: before a round, so a busy room costs a few disk writes per second, not one per line.
COALESCE = 0.005


def encode_record(event: StoredEvent) -> bytes:
    """One history line (with its ``\\n``) for ``event``.

    Raises TypeError for events that are never stored and ValueError for a naive time: both
    are caller bugs, caught here rather than written as lines that could never be read back.
    """
    if isinstance(event, Cleared):
        kind, name, text = "cleared", event.by, ""
    elif isinstance(event, Message):
        kind, name, text = "message", event.name, event.text
    elif isinstance(event, Action):
        kind, name, text = "action", event.name, event.text
    else:
        raise TypeError(f"{type(event).__name__} events are not stored in history")
    when = event.time
    if when.tzinfo is not UTC:
        if when.utcoffset() is None:
            raise ValueError("event time must be timezone-aware")
        when = when.astimezone(UTC)
    # Field by field with the json module's own (C) string encoder: the same JSON a dict
    # through json.dumps gives, at a fraction of the cost on the per-line path.
    line = (f'{{"time":"{when.isoformat()}","kind":"{kind}","name":{_quote(name)},'
            f'"text":{_quote(text)},"room":{_quote(event.room)}}}\n')
    # "replace": a lone surrogate (never produced by the UTF-8 decoder upstream) must not
    # turn into a line the loader would reject.
    return line.encode("utf-8", "replace")


def decode_record(line: bytes) -> StoredEvent:
    """The event stored in one history line; ValueError for anything malformed.

    Torn and corrupt lines are expected after a crash, so every failure is a ValueError the
    loader can skip, whatever the bytes are.
    """
    try:
        obj = json.loads(line.decode("utf-8"))
    except RecursionError:
        raise ValueError("record nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError("record is not a JSON object")
    kind = obj.get("kind")
    cls = STORED.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError("unknown record kind")
    name = _str_field(obj, "name")
    text = _str_field(obj, "text")
    room = _str_field(obj, "room") if "room" in obj else _DEFAULT_ROOM
    when = _parse_time(_str_field(obj, "time"))
    if cls is Cleared:
        return Cleared(by=name, room=room, time=when)
    return cls(name=name, text=text, room=room, time=when)


def _str_field(obj: dict, field: str) -> str:
    """``obj[field]`` if it is a string that can be written back as UTF-8."""
    value = obj.get(field)
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} is missing or not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped as \udXXX
        raise ValueError(f"field {field!r} is not valid Unicode") from None
    return value


def _parse_time(value: str) -> datetime:
    """An aware UTC datetime, as events carry, from an ISO 8601 string with an offset."""
    parsed = datetime.fromisoformat(value)
    if parsed.utcoffset() is None:
        raise ValueError("record time has no UTC offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("record time out of range") from None


# --- blocking file operations (run in the threadpool, touch no History state) -------------


def _write(fd: int, data: bytes | memoryview) -> int:
    """The one place history bytes reach a file: tests replace it to simulate a bad disk."""
    return os.write(fd, data)


def _fsync(fd: int) -> None:
    """Force a file to disk; a separate name so tests can count the calls."""
    os.fsync(fd)


def _write_fully(fd: int, data: bytes) -> int:
    """Write all of ``data`` through :func:`_write` (see :func:`atomic.write_fully`)."""
    return atomic.write_fully(fd, data, _write)


def _append_batch(fd: int, data: bytes, sync: bool) -> tuple[int, OSError | None]:
    """Append ``data`` (and fsync if asked); returns bytes written and the error, if any.

    A partial write must be reported, not just raised: the lines that did reach the file
    must not be written again.
    """
    try:
        _write_fully(fd, data)
        if sync:
            _fsync(fd)
    except OSError as exc:
        return getattr(exc, "written", len(data)), exc
    return len(data), None


def _open_for_append(path: str) -> tuple[int, bool]:
    """Open (creating) the history file; also says whether it ends in a torn line."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
    except BaseException:
        os.close(fd)
        raise
    return fd, torn


def _replace_file(path: str, data: bytes) -> None:
    """Atomically make ``data`` the whole content of ``path``, keeping its mode (clearing
    does not change who may read the history)."""
    atomic.replace_file(path, data, write=_write, fsync=_fsync)


def _compact_file(path: str, keep: int) -> int:
    """Rewrite ``path`` with only its last ``keep`` readable records; returns how many."""
    with open(path, "rb") as f:
        lines = f.readlines()
    kept: deque[bytes] = deque(maxlen=keep)
    for line in lines:
        try:
            decode_record(line)
        except ValueError:
            continue  # torn or corrupt (a torn write was redone whole after it): drop it
        kept.append(line if line.endswith(b"\n") else line + b"\n")
    _replace_file(path, b"".join(kept))
    return len(kept)


# --- the history ----------------------------------------------------------------------------


class History:
    """The history of one room: recent events in memory, every event in an append-only file.

    Not thread-safe: use it from greenlets of one thread (the server's). Only the writer
    greenlet touches the file descriptor; blocking calls run in the hub's threadpool.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        replay: int = 100,
        fsync: str = "interval",
        fsync_interval: float = 1.0,
        max_records: int | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        if replay < 0:
            raise ValueError(f"replay must be 0 or more, got {replay}")
        if fsync_interval <= 0:
            raise ValueError(f"fsync_interval must be positive, got {fsync_interval}")
        if max_records is not None and max_records < 1:
            raise ValueError(f"max_records must be 1 or more, got {max_records}")
        self.path = os.fspath(path)
        self._policy = fsync
        self._interval = fsync_interval
        self._max_records = max_records
        self._on_error = on_error
        self._recent: deque[StoredEvent] = deque(maxlen=replay)
        self._file_records = 0  # readable records in the file, for compaction
        # Writer state. Sequence numbers order appends and clears: ``_seq`` is the last one
        # queued, ``_written`` the last one in the file, ``_synced`` the last one fsynced.
        self._seq = self._written = self._synced = 0
        self._flush_target = 0
        self._pending: deque[tuple[int, bytes]] = deque()
        self._clear_record: tuple[int, bytes] | None = None
        self._epoch = 0  # bumped by clear(): lines queued before it are never written
        self._fd: int | None = None
        self._torn_tail = False
        self._dirty = False  # written but not yet fsynced
        self._last_sync = float("-inf")
        self._failing = False
        self._dropped = 0
        self._compact_failing = False
        self._compact_after = 0.0
        self._closed = False
        self._writer: gevent.Greenlet | None = None
        self._wake = Event()
        self._progress = Event()
        self._load()

    # -- public API ----------------------------------------------------------------------

    def recent(self) -> list[StoredEvent]:
        """The last ``replay`` events, oldest first; from memory."""
        return list(self._recent)

    def append(self, event: StoredEvent) -> None:
        """Store ``event``: in memory at once, on disk soon. Never blocks; never raises on I/O.

        TypeError/ValueError for an event that can't be stored (a caller bug) is raised before
        anything changes.
        """
        record = encode_record(event)
        self._recent.append(event)
        if self._closed:
            log.warning("history %s is closed; %s not written to disk", self.path,
                        type(event).__name__)
            return
        self._seq += 1
        self._pending.append((self._seq, record))
        self._trim_queue()
        self._kick_writer()

    def clear(self, event: Cleared) -> None:
        """Make ``event`` the only record, in memory at once and (atomically) on disk soon.

        Appends still queued are dropped: the new file must not contain them. Appends made
        after this call land after ``event`` in the new file.
        """
        record = encode_record(event)
        self._recent.clear()
        self._recent.append(event)
        if self._closed:
            log.warning("history %s is closed; clear not written to disk", self.path)
            return
        self._seq += 1
        self._epoch += 1
        self._pending.clear()
        self._clear_record = (self._seq, record)
        self._kick_writer()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written and fsynced; False on timeout.

        Forces an fsync whatever the policy: this is the shutdown path. While the disk
        fails, only the timeout ends the wait.
        """
        target = self._seq
        if self._synced >= target:
            return True
        if self._closed:
            return False
        self._flush_target = max(self._flush_target, target)
        self._kick_writer()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._synced < target:
            progress = self._progress  # taken before the check, so no signal is missed
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            progress.wait(remaining)
        return True

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Flush (waiting at most ``timeout``), stop the writer and close the file."""
        if self._closed:
            return
        if not self.flush(timeout):
            log.error("history %s closed with %d records not on disk", self.path,
                      self._backlog())
        self._closed = True
        writer = self._writer
        if writer is not None and not writer.dead:
            self._wake.set()
            writer.join(timeout=_JOIN_TIMEOUT)
            if not writer.dead:  # stuck in a system call: its thread still uses the fd
                log.warning("history %s: writer still busy at close", self.path)
                return
        self._close_fd()

    # -- loading ---------------------------------------------------------------------------

    def _load(self) -> None:
        """Read the file once at startup: last ``replay`` events, record count, bad lines."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    event = decode_record(line)
                except ValueError as exc:
                    what = "torn" if not line.endswith(b"\n") else "corrupt"
                    log.warning("%s line %d: skipping %s history record (%s)",
                                self.path, lineno, what, exc)
                    continue
                self._recent.append(event)
                self._file_records += 1

    # -- queue -----------------------------------------------------------------------------

    def _trim_queue(self) -> None:
        """Bound the backlog of a failing disk: the oldest lines go first."""
        while len(self._pending) > MAX_QUEUED:
            self._pending.popleft()
            if not self._dropped:
                log.warning("history %s: %d records waiting for the disk; dropping the oldest",
                            self.path, MAX_QUEUED)
            self._dropped += 1

    def _backlog(self) -> int:
        return len(self._pending) + (self._clear_record is not None)

    def _kick_writer(self) -> None:
        """Wake the writer, spawning it on first use (the loop need not run before that)."""
        if self._writer is None or self._writer.dead:
            self._writer = gevent.spawn(self._write_loop)
        self._wake.set()

    # -- writer greenlet -------------------------------------------------------------------

    def _write_loop(self) -> None:
        """Drain the queue forever: clear, append, fsync, compact, in that order."""
        try:
            while True:
                if self._policy != "always" and not self._closed:
                    gevent.sleep(COALESCE)
                self._wake.clear()  # before the round: a wake-up during it is kept
                self._round()
                progress, self._progress = self._progress, Event()
                progress.set()
                if self._closed:
                    return
                self._wake.wait(self._next_timeout())
        finally:
            if self._closed:
                self._close_fd()

    def _round(self) -> None:
        """One pass over everything pending; failures start or continue an error streak."""
        attempted = False
        try:
            if self._clear_record is not None:
                attempted = True
                self._do_clear()
            if self._pending:
                attempted = True
                self._do_write()
            if self._sync_due():
                attempted = True
                self._do_sync()
        except OSError as exc:
            self._failed(exc)
            return
        except Exception as exc:  # a bug must not kill the writer: report and retry
            log.exception("history %s: unexpected writer error", self.path)
            self._failed(OSError(errno.EIO, f"unexpected error: {exc!r}"))
            return
        if attempted:
            self._succeeded()
        self._maybe_compact()

    def _next_timeout(self) -> float | None:
        """Sleep until the next retry or interval fsync, or (None) until woken."""
        timeouts = []
        if self._failing:
            timeouts.append(RETRY_INTERVAL)
        if self._dirty and self._policy == "interval":
            timeouts.append(max(0.0, self._last_sync + self._interval - time.monotonic()))
        return min(timeouts, default=None)

    def _run(self, fn: Callable[..., Any], *args: object) -> Any:
        """Run a blocking call in the threadpool: only this greenlet waits for the disk."""
        return gevent.get_hub().threadpool.apply(fn, args)

    def _ensure_open(self) -> int:
        if self._fd is None:
            self._fd, self._torn_tail = self._run(_open_for_append, self.path)
        return self._fd

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                log.warning("history %s: close failed: %s", self.path, exc)

    def _do_clear(self) -> None:
        """Replace the file by one holding only the clear record."""
        assert self._clear_record is not None
        seq, record = self._clear_record
        self._run(_replace_file, self.path, record)
        if self._clear_record is not None and self._clear_record[0] == seq:
            self._clear_record = None  # (a newer clear, made meanwhile, still runs next)
        self._close_fd()  # the old fd points at the replaced file
        self._file_records = 1
        self._file_replaced(seq)

    def _file_replaced(self, seq: int) -> None:
        """A fresh, fsynced file now holds everything up to ``seq``."""
        self._written = self._synced = max(self._synced, seq)
        self._dirty = False
        self._last_sync = time.monotonic()

    def _want_sync(self) -> bool:
        """Whether the write about to happen should be followed by an fsync."""
        if self._flush_target > self._synced or self._policy == "always":
            return True
        return self._policy == "interval" and (
            time.monotonic() - self._last_sync >= self._interval)

    def _sync_due(self) -> bool:
        return self._dirty and self._want_sync()

    def _do_write(self) -> None:
        """Append everything queued in one write; requeue what did not reach the file."""
        fd = self._ensure_open()
        batch = list(self._pending)
        self._pending.clear()
        epoch = self._epoch
        prefix = b"\n" if self._torn_tail else b""
        data = prefix + b"".join(record for _, record in batch)
        sync = self._want_sync()
        started = time.monotonic()
        done, error = self._run(_append_batch, fd, data, sync)
        STATS.history_write(time.monotonic() - started)
        if done:
            self._dirty = True
        if done >= len(prefix):
            self._torn_tail = False
        complete = _complete_records(batch, done - len(prefix))
        if complete:
            self._written = batch[complete - 1][0]
            self._file_records += complete
        if error is None:
            if sync:
                self._mark_synced()
            return
        if epoch == self._epoch:  # else a clear came meanwhile: these lines are void
            self._pending.extendleft(reversed(batch[complete:]))
            self._trim_queue()
        raise error

    def _do_sync(self) -> None:
        self._run(_fsync, self._ensure_open())
        self._mark_synced()

    def _mark_synced(self) -> None:
        self._synced = self._written
        self._dirty = False
        self._last_sync = time.monotonic()

    def _maybe_compact(self) -> None:
        """Let the file grow to 1.5x ``max_records``, then keep only the last ``max_records``.

        Growing past the limit first makes compaction (a full rewrite) rare: once per
        ``max_records // 2`` appends.
        """
        limit = self._max_records
        if limit is None or self._file_records <= limit + max(limit // 2, 1):
            return
        if self._compact_failing and time.monotonic() < self._compact_after:
            return
        try:
            kept = self._run(_compact_file, self.path, limit)
        except OSError as exc:
            if not self._compact_failing:
                log.warning("history %s: compaction failed (%s); retrying every %g s",
                            self.path, exc, COMPACT_RETRY_INTERVAL)
            self._compact_failing = True
            self._compact_after = time.monotonic() + COMPACT_RETRY_INTERVAL
            return
        self._compact_failing = False
        self._close_fd()
        self._file_records = kept
        self._file_replaced(self._written)
        log.info("history %s compacted to its last %d records", self.path, kept)

    def _failed(self, exc: OSError) -> None:
        """Start (or continue) an error streak: report once, keep the records, retry later."""
        self._close_fd()  # reopened on retry: the file may have moved, or the fd be broken
        if self._failing:
            return
        self._failing = True
        message = (f"cannot write history file {self.path}: {exc.strerror or exc}; "
                   f"{self._backlog()} records kept in memory, retrying")
        log.error("%s", message)
        if self._on_error is not None:
            try:
                self._on_error(message)
            except Exception:
                log.exception("history %s: on_error callback failed", self.path)

    def _succeeded(self) -> None:
        if not self._failing:
            return
        self._failing = False
        log.info("history writes resumed (%s)", self.path)
        if self._dropped:
            log.warning("history %s: %d records were dropped while the disk failed",
                        self.path, self._dropped)
            self._dropped = 0


def _complete_records(batch: Iterable[tuple[int, bytes]], written: int) -> int:
    """How many records of ``batch`` lie wholly within its first ``written`` bytes."""
    count = 0
    for _, record in batch:
        written -= len(record)
        if written < 0:
            break
        count += 1
    return count
