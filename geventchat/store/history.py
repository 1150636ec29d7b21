"""File-backed, append-only history of one room.

The file holds one UTF-8 JSON record per line (``docs/PROTOCOL.md`` section 8)::

    {"time":"2026-11-23T21:05:09.123456+00:00","kind":"message","name":"alice","text":"hi",
     "room":"lobby","id":42,"epoch":"9f3c21ab"}

(one line on disk). ``id`` and ``epoch`` are newer fields: files written before them still
load (their records get id 0 and belong to no epoch).

Loading. Constructing a :class:`History` never waits: it starts loading in the background,
and :meth:`History.load` waits for that (in the calling greenlet only). The load runs in
gevent's threadpool and reads only the file's tail: it seeks back from the end in
:data:`TAIL_CHUNK` steps until it has the last ``replay`` good records, so a 200 MB history
loads in milliseconds and never stalls the event loop. Appends and clears made before the
load finished are kept in order and applied after the loaded tail. The record count that
compaction needs is not taken at load: the writer tracks the file's size and counts lines (in
the threadpool) only once the size says the file may be over the limit.

Records are checked on load: the text is cleaned (``text.clean``), a record whose name is not
a plausible user name is skipped as corrupt, and every record is shown as a line of the room
that owns the file (``room``), whatever its own ``room`` field says.

The last ``replay`` events live in memory, so :meth:`History.recent` (a newcomer's replay)
never touches the disk. :meth:`History.append` never blocks the event loop and never raises
on I/O: it updates memory at once and queues the encoded line. One writer greenlet drains the
queue in batches (one ``os.write`` for many lines), running the system calls in gevent's
threadpool, so a slow or stalled disk delays only the writer, never the chat.

Ids and epochs. Every stored line gets a per-room ``id`` (1, 2, 3...) that only grows, also
across restarts and clears: the next id is one more than the largest id found in the loaded
tail. The ``epoch`` is a short random string naming one life of the file: a new one is drawn
when the history is cleared or the file is missing (or holds only records older than epochs).
A client that remembers ``(epoch, id)`` can ask :meth:`History.since` for what it missed.
The epoch is written in *every* record rather than only in the first one: it costs ~19 bytes
and no measurable encode time per line, and in exchange any tail read (load, compaction,
``since``) finds the epoch without reading the head of the file, compaction keeps it for
free, and a record read from disk can always be told apart from a record of an older life
of the file (e.g. the old file still on disk while a clear waits for a stalled writer).

Durability (``fsync``):

* ``"always"``: fsync after every batch. Batches form by themselves while the previous write
  is in its thread, so the cost is one fsync per disk round trip, not one per line.
* ``"interval"`` (default): fsync at most every ``fsync_interval`` seconds, and only when
  something was written. A power failure can lose up to about that much of acknowledged
  history; a crash of the process loses nothing already handed to the writer thread,
  because ``os.write`` puts the bytes in the kernel's page cache.
* ``"never"``: leave it to the OS (typically ~30 s of exposure to power loss).

:meth:`History.flush` forces an fsync whatever the policy (shutdown uses it). A new file is
created with mode 0600 (chats are private; an existing file keeps its mode, with one warning
if others can read it) and, unless the policy is ``"never"``, its directory is fsynced so
the file itself survives a power loss.

Locking: the file is held with ``flock(LOCK_EX | LOCK_NB)`` from load to close (also across
clear and compaction, whose new file is locked before it is renamed in place). A second
server on the same files, or a second :class:`History` of this process on one file, gets
:class:`HistoryLockedError` from :meth:`History.load`. (No locking on systems without
``fcntl``.)

Crash safety: a torn last line (a crash mid-write) or any corrupt line is skipped at load with
a warning naming its line number (or byte offset, when the file was not read from its start),
and the next append starts on a fresh line so the new record is never glued to the garbage.
Clearing and compaction write a temporary file in the same directory, fsync it, rename it over
the old file and fsync the directory, so a crash leaves either the old or the new file, never
a mix.

Write errors (disk full, read-only remount, permissions, a locked file) are logged once per
failure streak and reported once through ``on_error``; the unwritten records stay queued (up
to :data:`MAX_QUEUED`) and are retried every :data:`RETRY_INTERVAL` seconds and on each
append.

:class:`HistoryShelf` owns every history of a server, so that the hub never waits for a disk:
releasing a room's history hands it to a background closer, re-opening the room before the
close finished gets the same object back, and shutdown waits on all of them at once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import gevent
from gevent.event import AsyncResult, Event

from geventchat.core.events import STORED, Action, Cleared, Message
from geventchat.core.stats import STATS
from geventchat.core.text import clean, name_key
from geventchat.store import atomic

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

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

#: Bytes read per step when reading a file backwards from its end.
TAIL_CHUNK = 64 * 1024

#: A "line" longer than this while reading backwards is garbage: it is skipped as one corrupt
#: line instead of being accumulated (real records are a few KiB at most).
MAX_LINE = 1 << 20

#: At most this many bytes are read back from the end by :meth:`History.since` and
#: :meth:`History.last`; older lines count as lost.
SINCE_MAX_BYTES = 16 << 20
#: Longest a ``since``/``last`` read of the file waits for the writer to catch up.
SETTLE_TIMEOUT = 2.0

#: No record is shorter than this; a file smaller than ``limit * MIN_RECORD_BYTES`` cannot
#: hold ``limit`` records, so compaction does not need to count its lines.
MIN_RECORD_BYTES = 48

#: Longest plausible user name in a record (lenient: older name rules may have differed).
_NAME_MAX = 64

_COUNT_CHUNK = 1 << 20
_NEWLINES = re.compile(b"\n")

# --- record format ------------------------------------------------------------------------


_quote = json.encoder.encode_basestring  # JSON string literal, UTF-8 kept as is
#: Names and rooms as JSON literals: a handful of them say every line, so each is quoted
#: once, not per record (bounded: a server that saw many names starts over).
_QUOTED: dict[str, str] = {}
_QUOTED_MAX = 4096


def _quoted(value: str) -> str:
    quoted = _QUOTED.get(value)
    if quoted is None:
        if len(_QUOTED) >= _QUOTED_MAX:
            _QUOTED.clear()
        quoted = _QUOTED[value] = _quote(value)
    return quoted

#: In the ``interval`` and ``never`` policies the writer lets appends gather this long
#: before a round, so a busy room costs a few disk writes per second, not one per line.
COALESCE = 0.005


def new_epoch() -> str:
    """A fresh epoch: 8 hex digits, JSON-safe as is."""
    return secrets.token_hex(4)


#: The last event time written and its ISO text: ``isoformat`` is the dearest part of a
#: record, and a whole millisecond of lines shares one time object.
_iso_cache: tuple[datetime | None, str] = (None, "")


def encode_record(event: StoredEvent, epoch: str | None = None) -> bytes:
    """One history line (with its ``\\n``) for ``event``; ``"id"`` is written when the
    event has one (not 0), ``"epoch"`` when given (a :func:`new_epoch` string).

    Raises TypeError for events that are never stored and ValueError for a naive time: both
    are caller bugs, caught here rather than written as lines that could never be read back.
    """
    cls = type(event)
    if cls is Message:
        kind, name, text = "message", event.name, event.text
    elif cls is Action:
        kind, name, text = "action", event.name, event.text
    elif cls is Cleared:
        kind, name, text = "cleared", event.by, ""
    else:
        raise TypeError(f"{cls.__name__} events are not stored in history")
    when = event.time
    global _iso_cache
    if when is _iso_cache[0]:  # events.now() shares one datetime per millisecond
        iso = _iso_cache[1]
    else:
        if when.tzinfo is not UTC:
            if when.utcoffset() is None:
                raise ValueError("event time must be timezone-aware")
            when = when.astimezone(UTC)
        iso = when.isoformat()
        _iso_cache = (event.time, iso)
    # Field by field with the json module's own (C) string encoder: the same JSON a dict
    # through json.dumps gives, at a fraction of the cost on the per-line path.
    extra = f',"id":{event.id:d}' if event.id else ""
    if epoch is not None:
        extra = f'{extra},"epoch":"{epoch}"'
    line = (f'{{"time":"{iso}","kind":"{kind}","name":{_quoted(name)},'
            f'"text":{_quote(text)},"room":{_quoted(event.room)}{extra}}}\n')
    # "replace": a lone surrogate (never produced by the UTF-8 decoder upstream) must not
    # turn into a line the loader would reject.
    return line.encode("utf-8", "replace")


def decode_record(line: bytes, room: str | None = None) -> StoredEvent:
    """The event stored in one history line; ValueError for anything malformed.

    Torn and corrupt lines are expected after a crash, so every failure is a ValueError the
    loader can skip, whatever the bytes are. The text is cleaned; a name that no user could
    have had is refused. ``room`` (the owner of the file) replaces the record's own room.
    """
    return _decode(line, room)[0]


def _decode(line: bytes, room: str | None = None) -> tuple[StoredEvent, str | None]:
    """:func:`decode_record`, and the record's epoch (None for records older than epochs)."""
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
    if not 0 < len(name) <= _NAME_MAX or " " in name or not name.isprintable():
        # isprintable() refuses control, format (bidi, zero-width) and separator characters
        # but the ASCII space, hence the extra test.
        raise ValueError("field 'name' is not a plausible user name")
    text = clean(_str_field(obj, "text"))
    own_room = _str_field(obj, "room") if "room" in obj else _DEFAULT_ROOM
    when = _parse_time(_str_field(obj, "time"))
    ident = obj.get("id", 0)
    if type(ident) is not int or ident < 0:
        raise ValueError("field 'id' is not a non-negative integer")
    epoch = obj.get("epoch")
    if epoch is not None and (not isinstance(epoch, str) or not 0 < len(epoch) <= 32):
        raise ValueError("field 'epoch' is not a short string")
    if room is None:
        room = own_room
    if cls is Cleared:
        return Cleared(by=name, room=room, time=when, id=ident), epoch
    return cls(name=name, text=text, room=room, time=when, id=ident), epoch


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


def _with_id(event: StoredEvent, ident: int) -> StoredEvent:
    """``dataclasses.replace(event, id=ident)``, at a third of its cost."""
    if type(event) is Cleared:
        return Cleared(event.by, event.room, event.time, ident)
    return type(event)(event.name, event.text, event.room, event.time, ident)


# --- blocking file operations (run in the threadpool, touch no History state) -------------


class HistoryLockedError(OSError):
    """Another server (or another :class:`History` of this process) holds the file."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EAGAIN,
                         f"history file {path} is in use by another geventchat server")
        self.path = path


def _write(fd: int, data: bytes | memoryview) -> int:
    """The one place history bytes reach a file: tests replace it to simulate a bad disk."""
    return os.write(fd, data)


def _fsync(fd: int) -> None:
    """Force a file to disk; a separate name so tests can count the calls."""
    os.fsync(fd)


def _pread(fd: int, size: int, offset: int) -> bytes:
    """Every read of a history file goes through here (tests count the bytes)."""
    return os.pread(fd, size, offset)


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


def _lock(fd: int, path: str) -> None:
    """Hold ``fd``'s file exclusively, or raise :class:`HistoryLockedError` at once."""
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise HistoryLockedError(path) from None


def _same_file(fd: int, st: os.stat_result) -> bool:
    other = os.fstat(fd)
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


def _open_for_append(path: str, lock_fd: int | None,
                     sync_dir: bool) -> tuple[int, bool, int | None]:
    """Open (creating, mode 0600) the history file for appending.

    Returns the fd, whether the file ends in a torn line, and a new lock fd when the file is
    not the one ``lock_fd`` holds (created, or replaced behind our back): the caller keeps
    that one and closes its old lock fd.
    """
    created = False
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:  # created meanwhile by someone else: the lock will tell
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
    new_lock = None
    try:
        st = os.fstat(fd)
        if lock_fd is None or not _same_file(lock_fd, st):
            _lock(fd, path)
            new_lock = os.dup(fd)  # shares the lock: closing ``fd`` later keeps it
        if created and sync_dir:
            atomic.fsync_dir(os.path.dirname(os.path.abspath(path)))
        torn = st.st_size > 0 and _pread(fd, 1, st.st_size - 1) != b"\n"
    except BaseException:
        if new_lock is not None:
            os.close(new_lock)
        os.close(fd)
        raise
    return fd, torn, new_lock


def _replace_locked(path: str, data: bytes) -> int:
    """Atomically make ``data`` the whole content of ``path`` (as :func:`atomic.replace_file`,
    keeping the file's mode, 0600 for a new one) and return a locked fd of the new file: it
    is locked before the rename, so the lock never lapses."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o600
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits, never added any
            _lock(fd, tmp)
            _write_fully(fd, data)
            _fsync(fd)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        atomic.fsync_dir(directory, _fsync)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _close_all(fds: list[int]) -> None:
    error = None
    for fd in fds:
        try:
            os.close(fd)
        except OSError as exc:
            error = exc
    if error is not None:
        raise error


def _lines_backward(fd: int, end: int, chunk: int = TAIL_CHUNK) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of the lines before ``end``, last first; a line keeps its ``\\n``
    (only the very last one may lack it). Reads ``chunk`` bytes at a time through
    :func:`_pread`; a run longer than :data:`MAX_LINE` without a newline comes out as one
    ``b"<garbage>"`` line at the offset where it ends."""
    pos = end
    carry = b""  # the end of a line whose beginning lies before ``pos``
    skipping = False  # inside an over-long line: discard until its start
    while pos > 0:
        start = max(0, pos - chunk)
        data = _pread(fd, pos - start, start)
        if len(data) < pos - start:  # truncated under us: read what is there, no more
            data = data + bytes(pos - start - len(data))
        pos = start
        if skipping:
            cut = data.rfind(b"\n")
            if cut < 0 and pos > 0:
                continue
            yield start + cut + 1, b"<garbage>"
            skipping = False
            data = data[:cut + 1]
            carry = b""
        else:
            data += carry
        if pos > 0:
            cut = data.find(b"\n")
            if cut < 0:
                carry = data
                if len(carry) > MAX_LINE:
                    skipping, carry = True, b""
                continue
            carry, body, base = data[:cut + 1], data[cut + 1:], start + cut + 1
        else:
            carry, body, base = b"", data, 0
        if not body:
            continue
        parts = body.split(b"\n")
        tail = parts.pop()  # b"" when body ends with a newline
        offsets = []
        at = base
        for part in parts:
            offsets.append(at)
            at += len(part) + 1
        if tail:
            yield at, tail
        for i in range(len(parts) - 1, -1, -1):
            yield offsets[i], parts[i] + b"\n"
    if carry:
        yield 0, carry


@dataclass
class _Tail:
    """What a backward read found."""

    records: list[tuple[StoredEvent, str | None, bytes]]  # oldest first
    max_id: int = 0
    epoch: str | None = None  # of the last good record
    reached_start: bool = False
    lines: int = 0  # lines seen (all of them when ``reached_start``)
    size: int = 0
    torn: bool = False


def _scan(fd: int, path: str, room: str, want: int, *, stop_at_id: int | None = None,
          max_bytes: int | None = None, warn: bool = False) -> _Tail:
    """Read ``fd`` backwards until ``want`` good records (or a record with an id not above
    ``stop_at_id``, or ``max_bytes`` read, or the start of the file)."""
    size = os.fstat(fd).st_size
    tail = _Tail(records=[], size=size)
    if size:
        tail.torn = _pread(fd, 1, size - 1) != b"\n"
    bad: list[tuple[int, int, str, ValueError]] = []  # (line from the end, offset, what, why)
    found: list[tuple[StoredEvent, str | None, bytes]] = []
    first = True
    reached = True
    for offset, line in _lines_backward(fd, size):
        tail.lines += 1
        last_line, first = first, False
        if len(found) >= want or (max_bytes is not None and size - offset > max_bytes):
            tail.lines -= 1
            reached = False
            break
        if not line.strip():
            continue
        try:
            event, epoch = _decode(line, room)
        except ValueError as exc:
            what = "torn" if last_line and not line.endswith(b"\n") else "corrupt"
            bad.append((tail.lines, offset, what, exc))
            continue
        if not found:
            tail.epoch = epoch
        tail.max_id = max(tail.max_id, event.id)
        if stop_at_id is not None and event.id <= stop_at_id:
            reached = False
            break
        found.append((event, epoch, line if line.endswith(b"\n") else line + b"\n"))
    tail.reached_start = reached
    found.reverse()
    tail.records = found
    if warn:
        for from_end, offset, what, exc in reversed(bad):
            where = (f"line {tail.lines - from_end + 1}" if reached
                     else f"byte offset {offset}")
            log.warning("%s %s: skipping %s history record (%s)", path, where, what, exc)
    return tail


def _load_file(path: str, room: str, want: int) -> tuple[int | None, _Tail]:
    """Open and lock the file, read its last ``want`` good records; (None, empty) when the
    file does not exist. The fd is the lock holder, for the History to keep."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None, _Tail(records=[], reached_start=True)
    except OSError as exc:  # readable, not writable: replay it; writes will say why
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        fd = os.open(path, os.O_RDONLY)
    try:
        _lock(fd, path)
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077 and path not in _warned_modes:
            _warned_modes.add(path)
            log.warning("history file %s is readable by other users (mode %03o); "
                        "run: chmod 600 %s", path, mode, path)
        return fd, _scan(fd, path, room, want, warn=True)
    except BaseException:
        os.close(fd)
        raise


_warned_modes: set[str] = set()


def _read_records(path: str, room: str, want: int, stop_at_id: int | None) -> _Tail:
    """A bounded backward read of ``path`` for ``since``/``last`` (no lock, no warnings)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return _Tail(records=[], reached_start=True)
    try:
        return _scan(fd, path, room, want, stop_at_id=stop_at_id, max_bytes=SINCE_MAX_BYTES)
    finally:
        os.close(fd)


def _count_lines(path: str) -> int:
    """Lines in ``path`` (a last line without newline counts), a MiB at a time."""
    fd = os.open(path, os.O_RDONLY)
    try:
        count, offset, last = 0, 0, b"\n"
        while True:
            data = _pread(fd, _COUNT_CHUNK, offset)
            if not data:
                break
            count += data.count(b"\n")
            offset += len(data)
            last = data[-1:]
        return count + (last != b"\n")
    finally:
        os.close(fd)


def _compact_file(path: str, room: str, keep: int,
                  trusted: bool = False) -> tuple[int, int, int]:
    """Rewrite ``path`` with only its last ``keep`` readable records, reading only its tail.

    ``trusted``: the file's last ``keep`` lines are known to be good records (this process
    wrote or checked them), so they are copied without being decoded again: decoding is
    most of a compaction's cost, and it holds the GIL that the server's loop needs.

    Returns how many were kept, the new size and a locked fd of the new file.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        if trusted:
            size = os.fstat(fd).st_size
            start = _start_of_last_lines(fd, size, keep)
            data = _pread(fd, size - start, start)
            kept = keep
        else:
            tail = _scan(fd, path, room, keep)
            kept = len(tail.records)
            # Records are written back as they were (torn ones, redone whole after, are
            # dropped).
            data = b"".join(line for _, _, line in tail.records)
    finally:
        os.close(fd)
    return kept, len(data), _replace_locked(path, data)


def _start_of_last_lines(fd: int, size: int, keep: int) -> int:
    """Where the last ``keep`` lines of a file that ends in a newline begin (0 if it has
    no more than ``keep``): newlines counted backward a MiB at a time, in C."""
    need = keep + 1  # the newline before the first kept line, counting from the end
    pos = size
    while pos > 0:
        start = max(0, pos - _COUNT_CHUNK)
        data = _pread(fd, pos - start, start)
        count = data.count(b"\n")
        if count < need:  # the common case: the whole chunk is kept, counted in C alone
            need -= count
            pos = start
            continue
        ends = [m.end() for m in _NEWLINES.finditer(data)]
        return start + ends[len(ends) - need]
    return 0


# --- the history ----------------------------------------------------------------------------


class History:
    """The history of one room: recent events in memory, every event in an append-only file.

    Not thread-safe: use it from greenlets of one thread (the server's). Only the writer
    greenlet touches the file descriptor; blocking calls run in the hub's threadpool.

    Construction is cheap and never waits: it only starts the load in the background. Call
    :meth:`load` from a greenlet that may wait before relying on :meth:`recent` in a place
    that must not switch greenlets (``recent()`` itself waits for the load if needed).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        replay: int = 100,
        fsync: str = "interval",
        fsync_interval: float = 1.0,
        max_records: int | None = None,
        on_error: Callable[[str], None] | None = None,
        room: str = _DEFAULT_ROOM,
        on_recover: Callable[[], None] | None = None,
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
        self.room = room
        self._replay = replay
        self._policy = fsync
        self._interval = fsync_interval
        self._max_records = max_records
        self._on_error = on_error
        self._on_recover = on_recover
        self._recent: deque[StoredEvent] = deque(maxlen=replay)
        # Loading: appends and clears made before it finished wait here, in order.
        self._loaded = False
        self._load_result: AsyncResult | None = None
        self._loading = False  # a load is in the threadpool (it may own a fd soon)
        self._before_load: deque[StoredEvent] = deque()
        self._prior: History | None = None  # a History of this file still closing
        self._complete = True  # memory holds every record of the file
        self._last_id = 0
        self._file_epoch = ""
        self._legacy_ok = False  # records without epoch belong to this life of the file
        # Compaction: the record count is None until known (counted lazily).
        # Records at the end of the file known to be good (written by us since the last
        # load, or kept by a compaction): a compaction within them need not decode.
        self._trusted = 0
        self._file_records: int | None = None
        self._file_size = 0
        # Writer state. Sequence numbers order appends and clears: ``_seq`` is the last one
        # queued, ``_written`` the last one in the file, ``_synced`` the last one fsynced.
        self._seq = self._written = self._synced = 0
        self._flush_target = 0
        self._pending: deque[tuple[int, bytes]] = deque()
        self._clear_record: tuple[int, bytes] | None = None
        self._generation = 0  # bumped by clear(): lines queued before it are never written
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._torn_tail = False
        self._dirty = False  # written but not yet fsynced
        self._last_sync = float("-inf")
        self._failing = False
        self._dropped = 0
        self._compact_failing = False
        self._compact_after = 0.0
        self._closed = False
        self._released = Event()  # set once every fd is closed (the lock is free)
        self._writer: gevent.Greenlet | None = None
        self._wake = Event()
        self._progress = Event()
        # Start reading the tail now (a greenlet and the threadpool: nothing waits here), so
        # the history is usually ready by the time someone needs it.
        self._start_load()

    # -- public API ----------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def epoch(self) -> str:
        """The current life of the file (after :meth:`load`; "" before)."""
        return self._file_epoch

    @property
    def last_id(self) -> int:
        """Id of the last stored line (0: none yet)."""
        return self._last_id

    def load(self, timeout: float | None = None) -> bool:
        """Read the file's tail (in the threadpool) unless done; True once loaded, False on
        timeout. Blocks only the calling greenlet; raises the OSError of a failed load
        (:class:`HistoryLockedError` when another server holds the file), and a later call
        tries again."""
        if self._loaded:
            return True
        try:
            self._start_load().get(timeout=timeout)
        except gevent.Timeout:
            return False
        return True

    def recent(self) -> list[StoredEvent]:
        """The last ``replay`` events, oldest first; from memory.

        Loads first if nobody did (waiting in this greenlet; call :meth:`load` beforehand
        where a wait is unwelcome, e.g. in the middle of a hub mutation).
        """
        if not self._loaded:
            self._load_now()
        return list(self._recent)

    def append(self, event: StoredEvent) -> StoredEvent:
        """Store ``event``: in memory at once, on disk soon. Never blocks; never raises on I/O.

        Returns the event with its id: ``event`` itself, numbered in place, if it had none
        (the per-line case), else a copy. Before :meth:`load` finished, the event is held
        (id 0 in the returned one) and numbered after the loaded tail.

        TypeError/ValueError for an event that can't be stored (a caller bug) is raised before
        anything changes.
        """
        if not self._loaded:
            self._hold(event)
            return event
        ident = self._last_id + 1
        if event.id:
            event = _with_id(event, ident)
            record = encode_record(event, self._file_epoch)
        else:  # a new event, nobody else's yet: numbered in place (a copy was 0.8 us a line)
            event.id = ident
            try:
                record = encode_record(event, self._file_epoch)
            except (TypeError, ValueError):
                event.id = 0  # a caller bug: refused with nothing changed
                raise
        self._last_id = ident
        if len(self._recent) == self._recent.maxlen:
            self._complete = False
        self._recent.append(event)
        if self._closed:
            log.warning("history %s is closed; %s not written to disk", self.path,
                        type(event).__name__)
            return event
        self._seq += 1
        self._pending.append((self._seq, record))
        if len(self._pending) > MAX_QUEUED:
            self._trim_queue()
        self._kick_writer()
        return event

    def clear(self, event: Cleared) -> Cleared:
        """Make ``event`` the only record, in memory at once and (atomically) on disk soon;
        starts a new epoch. Returns the event with its id.

        Appends still queued are dropped: the new file must not contain them. Appends made
        after this call land after ``event`` in the new file.
        """
        if not self._loaded:
            self._hold(event)
            return event
        ident = self._last_id + 1
        event = _with_id(event, ident)
        epoch = new_epoch()
        record = encode_record(event, epoch)
        self._last_id = ident
        self._file_epoch = epoch
        self._legacy_ok = False
        self._recent.clear()
        self._recent.append(event)
        self._complete = self._recent.maxlen != 0
        if self._closed:
            log.warning("history %s is closed; clear not written to disk", self.path)
            return event
        self._seq += 1
        self._generation += 1
        self._pending.clear()
        self._clear_record = (self._seq, record)
        self._kick_writer()
        return event

    def last(self, n: int) -> list[StoredEvent]:
        """The last ``n`` stored lines, oldest first (``/history N``; the caller caps ``n``).

        From memory when it holds them, else (waiting in this greenlet) from the file's tail
        in the threadpool, at most :data:`SINCE_MAX_BYTES` of it.
        """
        self._load_now()
        if n <= 0:
            return []
        memory = list(self._recent)
        if n <= len(memory) or self._complete:
            return memory[-n:]
        self._settle()
        tail = self._run(_read_records, self.path, self.room, n, None)
        older = self._older_than([e for e, epoch, _ in tail.records if self._ours(epoch)],
                                 memory[0] if memory else None)
        return (older + memory)[-n:]

    def since(self, after_id: int, limit: int,
              epoch: str | None = None) -> tuple[list[StoredEvent], int]:
        """Stored lines with an id above ``after_id``, oldest first, at most ``limit``; and
        how many ids between ``after_id`` and the first line returned can no longer be had
        (compacted away, cleared, dropped by a failing disk, or beyond the bounded read).

        ``epoch`` is the epoch the caller's ``after_id`` belongs to: when it is not the
        current one, the caller's place is void and the lines come from the oldest this
        epoch still has (the lost count then counts this epoch's ids from 1).
        """
        self._load_now()
        if epoch is not None and epoch != self._file_epoch:
            after_id = 0
        if limit <= 0 or after_id >= self._last_id:
            return [], 0
        memory = [e for e in self._recent if e.id > 0]
        if self._complete or (memory and memory[0].id <= after_id + 1):
            lines = [e for e in memory if e.id > after_id]
        else:
            self._settle()
            tail = self._run(_read_records, self.path, self.room, 1 << 62, after_id)
            first = memory[0].id if memory else self._last_id + 1
            lines = [e for e, ep, _ in tail.records
                     if self._ours(ep) and after_id < e.id < first]
            lines += [e for e in memory if e.id > after_id]
        lines = lines[:limit]
        lost = (lines[0].id if lines else self._last_id + 1) - after_id - 1
        return lines, lost

    def _settle(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Before ``last``/``since`` read the file: wait (this greenlet only) until the
        lines queued so far are written (not fsynced), so that every line is in memory or
        in the file, never only in the queue (a burst pushes lines out of memory faster
        than the writer's next round). A failing or slow disk ends the wait early: the
        lines it holds are then reported lost, as on any read that can't have them."""
        target = self._seq
        deadline = time.monotonic() + timeout
        while self._written < target and not self._closed and not self._failing:
            progress = self._progress  # taken before the check, so no signal is missed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._kick_writer()
            progress.wait(remaining)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written and fsynced; False on timeout
        (or when the file cannot be loaded).

        Forces an fsync whatever the policy: this is the shutdown path. While the disk
        fails, only the timeout ends the wait.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._loaded:
            if not self._before_load:
                return True  # nothing to write
            try:
                if not self.load(timeout):
                    return False
            except OSError:
                return False
        target = self._seq
        if self._synced >= target:
            return True
        if self._closed:
            return False
        self._request_flush()
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
        self.flush(timeout)
        self._begin_close()
        writer = self._writer
        if writer is not None and not writer.dead:
            writer.join(timeout=_JOIN_TIMEOUT)
        self._finish_close()

    # -- loading ---------------------------------------------------------------------------

    def _start_load(self) -> AsyncResult:
        result = self._load_result
        if result is None:
            result = self._load_result = AsyncResult()
            self._loading = True
            gevent.spawn(self._load_into, result)
        return result

    def _load_now(self) -> None:
        """Load synchronously: wait in this greenlet, or read inline in the hub greenlet
        (which cannot wait) if no load is under way."""
        if self._loaded:
            return
        if gevent.getcurrent() is not gevent.get_hub():
            self.load()
            return
        if self._load_result is not None:
            raise RuntimeError(f"history {self.path} is loading: call load() first")
        self._install(*_load_file(self.path, self.room, max(self._replay, 1)))

    def _load_into(self, result: AsyncResult) -> None:
        try:
            prior = self._prior
            if prior is not None:  # wait (bounded) until the old History let go of the file
                prior._released.wait(CLOSE_TIMEOUT + _JOIN_TIMEOUT)
                self._prior = None
            loaded = self._run(_load_file, self.path, self.room, max(self._replay, 1))
        except Exception as exc:
            self._loading = False
            if self._load_result is result:
                self._load_result = None  # the next load() tries again
            if self._closed:
                self._released.set()
            result.set_exception(exc)
            return
        self._loading = False
        if self._loaded:  # loaded inline meanwhile: drop this copy
            if loaded[0] is not None:
                os.close(loaded[0])
        else:
            self._install(*loaded)
        result.set(True)

    def _install(self, fd: int | None, tail: _Tail) -> None:
        """Take the loaded tail, then replay what was appended or cleared meanwhile."""
        self._lock_fd = fd
        self._loaded = True
        self._recent.extend(e for e, _, _ in tail.records)
        self._last_id = tail.max_id
        self._complete = tail.reached_start and len(tail.records) <= self._replay
        # Records without an epoch were written before epochs existed: they belong to this
        # file's life until it is cleared.
        self._legacy_ok = True
        self._file_epoch = tail.epoch if tail.epoch is not None else new_epoch()
        self._torn_tail = tail.torn
        self._file_size = tail.size
        self._file_records = len(tail.records) if tail.reached_start else None
        if self._closed:
            self._release_fds()
        waiting, self._before_load = self._before_load, deque()
        for event in waiting:
            if type(event) is Cleared:
                self.clear(event)
            else:
                self.append(event)

    def _hold(self, event: StoredEvent) -> None:
        """Keep an append or clear made before the load finished (bounded like the queue)."""
        encode_record(event)  # refuse caller bugs now
        self._before_load.append(event)
        while len(self._before_load) > MAX_QUEUED:
            self._before_load.popleft()
            if not self._dropped:
                log.warning("history %s: %d records waiting for the file; dropping the "
                            "oldest", self.path, MAX_QUEUED)
            self._dropped += 1
        self._start_load()
        self._kick_writer()  # retries the load if it fails

    def _ours(self, epoch: str | None) -> bool:
        """Whether a record read from the file belongs to the current life of the file."""
        return epoch == self._file_epoch or (epoch is None and self._legacy_ok)

    @staticmethod
    def _older_than(disk: list[StoredEvent], first: StoredEvent | None) -> list[StoredEvent]:
        """The records of ``disk`` that come before ``first`` (the oldest one in memory)."""
        if first is None:
            return disk
        if first.id:
            return [e for e in disk if e.id < first.id]
        for i in range(len(disk) - 1, -1, -1):  # records without ids: match the event
            if disk[i] == first:
                return disk[:i]
        return []

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
        return (len(self._pending) + (self._clear_record is not None)
                + len(self._before_load))

    def _kick_writer(self) -> None:
        """Wake the writer, spawning it on first use (the loop need not run before that)."""
        if self._wake.is_set() and self._writer is not None:
            # Woken already this round (the per-line case): nothing more to do. A writer
            # that ends clears its slot, so a set slot is a live writer.
            return
        if self._writer is None or self._writer.dead:
            self._writer = gevent.spawn(self._write_loop)
        self._wake.set()

    def _request_flush(self) -> None:
        """Ask the writer to fsync everything queued so far; never waits."""
        self._flush_target = max(self._flush_target, self._seq)
        if self._synced < self._flush_target or not self._loaded:
            self._kick_writer()

    def _begin_close(self) -> None:
        """Stop taking writes and let the writer finish its round; never waits."""
        if self._closed:
            return
        if self._backlog() or self._synced < self._seq:
            log.error("history %s closed with %d records not on disk", self.path,
                      self._backlog())
        self._closed = True
        self._wake.set()

    def _finish_close(self) -> None:
        """Close the files unless the writer is still in a system call (it closes them when
        it comes back)."""
        writer = self._writer
        if writer is not None and not writer.dead:
            log.warning("history %s: writer still busy at close", self.path)
            return
        self._release_fds()

    def _release_fds(self) -> None:
        self._close_fd()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                log.warning("history %s: close failed: %s", self.path, exc)
        if not self._loading:
            self._released.set()

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
            if self._writer is gevent.getcurrent():
                self._writer = None  # never a dead writer in the slot: see _kick_writer
            if self._closed:
                self._release_fds()

    def _round(self) -> None:
        """One pass over everything pending; failures start or continue an error streak."""
        attempted = False
        try:
            if not self._loaded:
                if self._closed:
                    return
                attempted = True
                self.load()
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
        return _in_thread(fn, *args)

    def _ensure_open(self) -> int:
        if self._fd is None:
            fd, self._torn_tail, lock = self._run(
                _open_for_append, self.path, self._lock_fd, self._policy != "never")
            self._fd = fd
            if lock is not None:
                self._swap_lock(lock)
        return self._fd

    def _swap_lock(self, fd: int) -> None:
        old, self._lock_fd = self._lock_fd, fd
        if old is not None:
            os.close(old)

    def _drop_replaced(self, lock: int) -> None:
        """After a clear or compaction: hold the new file, and close the fds of the old one
        in the threadpool, since the last close of a big unlinked file frees its blocks
        there and then (hundreds of ms for 200 MB)."""
        old = [fd for fd in (self._lock_fd, self._fd) if fd is not None]
        self._lock_fd, self._fd = lock, None
        if old:
            try:
                self._run(_close_all, old)
            except OSError as exc:
                log.warning("history %s: close failed: %s", self.path, exc)

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
        lock = self._run(_replace_locked, self.path, record)
        if self._clear_record is not None and self._clear_record[0] == seq:
            self._clear_record = None  # (a newer clear, made meanwhile, still runs next)
        self._drop_replaced(lock)  # the old fds point at the replaced file
        self._torn_tail = False
        self._file_records = 1
        self._trusted = 1
        self._file_size = len(record)
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
        generation = self._generation
        prefix = b"\n" if self._torn_tail else b""
        data = prefix + b"".join(record for _, record in batch)
        sync = self._want_sync()
        started = time.monotonic()
        done, error = self._run(_append_batch, fd, data, sync)
        STATS.history_write(time.monotonic() - started)
        if done:
            self._dirty = True
            self._file_size += done
        if done >= len(prefix):
            self._torn_tail = False
        complete = (len(batch) if done == len(data)
                    else _complete_records(batch, done - len(prefix)))
        # A record cut short ends the file in a bad line: nothing before it is trusted.
        self._trusted = self._trusted + complete if done == len(data) else 0
        if complete:
            self._written = batch[complete - 1][0]
            if self._file_records is not None:
                self._file_records += complete
        if error is None:
            if sync:
                self._mark_synced()
            return
        if generation == self._generation:  # else a clear came meanwhile: these are void
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

        Growing past the limit first makes compaction (a rewrite) rare: once per
        ``max_records // 2`` appends. The record count is only taken (in the threadpool)
        once the file's size says it may be over the limit.
        """
        limit = self._max_records
        if limit is None or not self._loaded:
            return
        threshold = limit + max(limit // 2, 1)
        if self._file_records is not None and self._file_records <= threshold:
            return
        if self._file_records is None and self._file_size < threshold * MIN_RECORD_BYTES:
            return
        if self._compact_failing and time.monotonic() < self._compact_after:
            return
        try:
            if self._file_records is None:
                self._file_records = self._run(_count_lines, self.path)
                if self._file_records <= threshold:
                    return
            trusted = self._trusted >= limit and not self._torn_tail
            kept, size, lock = self._run(_compact_file, self.path, self.room, limit, trusted)
        except OSError as exc:
            if not self._compact_failing:
                log.warning("history %s: compaction failed (%s); retrying every %g s",
                            self.path, exc, COMPACT_RETRY_INTERVAL)
            self._compact_failing = True
            self._compact_after = time.monotonic() + COMPACT_RETRY_INTERVAL
            return
        self._drop_replaced(lock)
        self._compact_failing = False
        self._file_records = kept
        self._trusted = kept
        self._file_size = size
        self._torn_tail = False
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
        if self._on_recover is not None:
            try:
                self._on_recover()
            except Exception:
                log.exception("history %s: on_recover callback failed", self.path)
        if self._dropped:
            log.warning("history %s: %d records were dropped while the disk failed",
                        self.path, self._dropped)
            self._dropped = 0


def _catching(fn: Callable[..., Any], args: tuple) -> tuple[Any, OSError | None]:
    try:
        return fn(*args), None
    except OSError as exc:
        return None, exc


def _in_thread(fn: Callable[..., Any], *args: object) -> Any:
    """``fn(*args)`` in the hub's threadpool, waiting only in this greenlet. An OSError is
    carried back as a value and raised here: the threadpool would print every expected disk
    error (or a locked file) with a traceback."""
    result, error = gevent.get_hub().threadpool.apply(_catching, (fn, args))
    if error is not None:
        raise error
    return result


def _complete_records(batch: Iterable[tuple[int, bytes]], written: int) -> int:
    """How many records of ``batch`` lie wholly within its first ``written`` bytes."""
    count = 0
    for _, record in batch:
        written -= len(record)
        if written < 0:
            break
        count += 1
    return count


# --- every history of a server --------------------------------------------------------------


class HistoryShelf:
    """Owns every :class:`History` of a server, so the hub never waits for a disk.

    ``factory(room_name)`` makes the History of a room (path, replay, fsync policy...).
    :meth:`get` and :meth:`release` never block and never switch greenlets, so they are safe
    in the middle of a hub mutation: a released history is flushed and closed by a
    background greenlet, and a room re-opened before that finished gets the same object back
    (so no line is lost and no file ever has two writers). :meth:`close_all` stops them all
    against one deadline.
    """

    def __init__(self, factory: Callable[[str], History],
                 close_timeout: float = CLOSE_TIMEOUT) -> None:
        self._factory = factory
        self._close_timeout = close_timeout
        self._open: dict[str, History] = {}
        self._keys: dict[int, str] = {}  # id(history) -> room key
        # Released, not yet closed: key -> (history, ticket of that release).
        self._closing: dict[str, tuple[History, object]] = {}
        # Being closed for good (their writer may still hold the file a moment).
        self._finishing: dict[str, History] = {}
        self._closers: set[gevent.Greenlet] = set()

    def get(self, room: str) -> History:
        """The open History of ``room``; one being closed (its close cancelled); or a new
        one. Never blocks: the caller loads it (``load()``) where it may wait."""
        key = name_key(room)
        history = self._open.get(key)
        if history is not None:
            return history
        entry = self._closing.pop(key, None)
        if entry is not None:
            history = entry[0]
        else:
            history = self._factory(room)
            prior = self._finishing.get(key)
            if prior is not None:
                history._prior = prior  # its load waits until the old one let go
        self._open[key] = history
        self._keys[id(history)] = key
        return history

    def release(self, history: History) -> None:
        """The room no longer needs ``history``: flush and close it in the background.
        Never blocks, never switches greenlets."""
        key = self._keys.get(id(history))
        if key is None or self._open.get(key) is not history:
            return
        del self._open[key]
        ticket = object()
        self._closing[key] = (history, ticket)
        closer = gevent.spawn(self._close_later, key, history, ticket)
        self._closers.add(closer)
        closer.link(self._closers.discard)

    def is_open(self, room: str) -> bool:
        return name_key(room) in self._open

    def _close_later(self, key: str, history: History, ticket: object) -> None:
        deadline = time.monotonic() + self._close_timeout
        history.flush(self._close_timeout)
        entry = self._closing.get(key)
        if entry is None or entry[1] is not ticket:
            return  # taken back (or shut down) meanwhile
        del self._closing[key]
        self._keys.pop(id(history), None)
        self._finishing[key] = history
        try:
            history.close(max(0.0, deadline - time.monotonic()))
        except Exception:
            log.exception("closing history %s", history.path)
        finally:
            if self._finishing.get(key) is history:
                del self._finishing[key]

    def close_all(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Flush and close every history against one deadline (shutdown): every writer is
        asked first, then all are waited for together. False if some records did not
        reach the disk in ``timeout``."""
        deadline = time.monotonic() + timeout
        histories = list({id(h): h for h in (
            *self._open.values(), *(h for h, _ in self._closing.values()),
            *self._finishing.values())}.values())
        self._open.clear()
        self._closing.clear()
        self._keys.clear()
        gevent.killall(list(self._closers), block=False)
        for history in histories:
            history._request_flush()
        done = True
        for history in histories:
            done = history.flush(max(0.0, deadline - time.monotonic())) and done
        for history in histories:
            history._begin_close()
        writers = [h._writer for h in histories if h._writer is not None and not h._writer.dead]
        if writers:
            gevent.joinall(writers, timeout=max(0.0, deadline - time.monotonic()))
        for history in histories:
            history._finish_close()
        self._finishing.clear()
        return done
