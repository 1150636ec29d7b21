"""The geventchat terminal client: ``geventchat connect``.

The server does all the work (see docs/PROTOCOL.md); this client only has to be pleasant
and predictable:

* One I/O thread owns the socket (reading, and writing the lines the main thread queues:
  an ``ssl.SSLSocket`` must not be used from two threads at once) and shows every server
  line; the main thread owns input. Threads and ``select`` are enough for one connection,
  and keep gevent (and its monkey-patching) out of the client.
* ``--tls`` wraps the socket with the stdlib ``ssl`` module, verified by default. A plain
  client that hears nothing for FIRST_LINE_WAIT seconds probes for TLS with a second
  connection, so talking plain to a TLS server fails in seconds with a hint, not a hang.
* On a terminal, input goes through a prompt_toolkit ``PromptSession`` under
  ``patch_stdout`` so incoming lines are drawn above the prompt and never clobber what the
  user is typing. Off a terminal (a pipe, a file, a test), the client is a plain line
  filter: stdin lines go to the server, server lines go to stdout, flushed one by one.
* The pure helpers (``classify``, ``style_for``, ``render``, ``is_quit`` ...) hold every
  rule about server lines, so they can be tested without a socket or a terminal.
* No lost lines (docs/PROTOCOL.md, section 9): the client asks for ids before its name,
  so it knows per room the epoch and the last line it showed (:class:`Marks`); the
  ``#ID@TIME`` prefix is removed and the line shown with the time it was said. When the
  connection drops unexpectedly the I/O thread reconnects with backoff, logs in again
  and sends ``/resume ROOM EPOCH LAST``: the missed lines come once, and a stored line
  shown already is dropped (same epoch, id not above the last shown). See :class:`Session`.

Exit codes tell a script what happened: 0 when the user left, 1 when the connection was
lost (with reconnecting off, or after it gave up), refused or could not be set up (TLS
included), 2 when the server shut down, 3 when we
were kicked, 4 when our name was refused and 5 when a password was needed and not given, or
wrong (the last two only off a terminal, where nobody can type another answer).

Portability: the client is meant to run on Windows too. The socket side (one I/O thread,
``select`` on sockets, a ``socketpair`` to wake it) is portable; ``PipeUi`` selects on fd 0,
which is POSIX-only, and the tests run on Linux only.
"""

from __future__ import annotations

import asyncio
import calendar
import enum
import os
import queue
import re
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prompt_toolkit.application import Application, get_app
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.output import create_output
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.shortcuts import PromptSession

from geventchat.core.text import clean, name_key

#: Bytes per ``recv``: large, so a burst (a history replay) costs few system calls.
RECV_SIZE = 65536
#: Seconds to wait for the server's close after we sent ``/quit``; the goodbye is quick on a
#: healthy server, and a user who asked to leave must not wait long on a sick one.
QUIT_WAIT = 3.0
#: Seconds allowed for the TCP connect: long enough for a slow network, short enough that a
#: typo in the host name fails before the user wonders what is going on.
CONNECT_TIMEOUT = 10.0
#: Seconds to wait for the reader thread to print what it still holds before exiting.
READER_JOIN = 2.0
#: Seconds of silence after a plain connect before we check whether the server speaks TLS:
#: a geventchat server prompts at once, but a TLS one waits for our handshake, silently.
FIRST_LINE_WAIT = 3.0
#: Seconds allowed for that check's own TLS handshake.
PROBE_TIMEOUT = 3.0

#: Seconds between reconnect attempts: 1, 2, 4 ... then the last one again and again.
RECONNECT_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
#: Default seconds after a drop before the client gives up reconnecting (exit 1).
RECONNECT_TIMEOUT = 600.0
#: Lines typed (or piped) while disconnected, kept to be sent after the resume; more are
#: dropped with a notice.
HELD_MAX = 1000

EXIT_OK = 0
EXIT_LOST = 1
EXIT_SHUTDOWN = 2
EXIT_KICKED = 3
EXIT_NAME = 4
EXIT_PASSWORD = 5

#: Environment variables read for passwords when no file is given (never echoed or logged).
SERVER_PASSWORD_ENV = "GEVENTCHAT_SERVER_PASSWORD"
ADMIN_PASSWORD_ENV = "GEVENTCHAT_ADMIN_PASSWORD"

#: The native commands, for Tab completion (docs/PROTOCOL.md, section 5).
COMMANDS = ("/msg", "/who", "/me", "/nick", "/help", "/join", "/rooms", "/topic", "/quit",
            "/clear", "/kick", "/shutdown", "/history")

# ANSI SGR: enough for colour on any terminal, and trivially stripped by tests.
_RESET = "\x1b[0m"
_BOLD = "1"

_JOINED = re.compile(r"\* (\S+) joined")
_KICKED = re.compile(r"\* (\S+) was kicked by \S+(?:: .*)?")
_SHUTDOWN = re.compile(r"\* server shutting down: (.*)")
_RENAMED = re.compile(r"\* (\S+) is now known as (\S+)")
_LEFT = re.compile(r"\* (\S+) (?:left(?: \(.*\))?|was kicked (?:from \S+ )?by \S+(?:: .*)?)")
_ONLINE = re.compile(r"\* online \(\d+\): (.*)")
# A big room's burst of joins or leaves (docs/PROTOCOL.md, "Presence in big rooms").
_SUMMARY = re.compile(r"\* \d+ (joined|left): (.+?)(?: and \d+ more)?")
# A chat line: a name (never a space, ``*``, ``!``, ``?``, ``(`` or ``:``), then ``: ``.
_CHAT = re.compile(r"([^\s*!?(:]+): ")
# What the server adds once we asked for ids (docs/PROTOCOL.md, section 9).
_ID_PREFIX = re.compile(r"#(\d+)@(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) ")
_ROOM_MARK = re.compile(r"= room (\S+) epoch (\S+) last (\d+)")
_RESUMED_MARK = re.compile(r"= resumed (\S+) (\d+)")
_HISTORY_START = re.compile(r"\* history of \S+ \(\d+ lines?\):")
_HISTORY_END = "* end of history"
_CLEARED = re.compile(r"\* history cleared by \S+")
_IDS_ON = "* ids on"
# The server closes a connection idle for longer than its --idle-timeout: on purpose.
_IDLE = re.compile(r"! idle for \S+ s")


class Kind(enum.StrEnum):
    """The class of a server line, told apart by its first characters (PROTOCOL.md)."""

    PROMPT = "prompt"
    NOTICE = "notice"
    ERROR = "error"
    PRIVATE = "private"
    CHAT = "chat"
    OTHER = "other"


# SGR parameters per kind; chat lines stay in the terminal's own colour.
_STYLES: dict[Kind, str] = {
    Kind.PROMPT: "33",  # yellow
    Kind.NOTICE: "36",  # cyan
    Kind.ERROR: "31",  # red
    Kind.PRIVATE: "35",  # magenta
    Kind.CHAT: "",
    Kind.OTHER: "",
}


def classify(line: str) -> Kind:
    """Return the protocol class of a server line (the prefix table of PROTOCOL.md)."""
    if line.startswith("? "):
        return Kind.PROMPT
    if line.startswith("* "):
        return Kind.NOTICE
    if line.startswith("! "):
        return Kind.ERROR
    if line.startswith("(private) "):
        return Kind.PRIVATE
    if _CHAT.match(line):
        return Kind.CHAT
    return Kind.OTHER


def style_for(kind: Kind, mention: bool = False) -> str:
    """The ANSI escape that starts a line of ``kind`` ("" for none).

    A mention adds bold rather than a colour, so a private message or an error that names
    you keeps the colour that says what it is.
    """
    params = [p for p in (_STYLES[kind], _BOLD if mention else "") if p]
    return f"\x1b[{';'.join(params)}m" if params else ""


def mentions(line: str, name: str | None) -> bool:
    """Whether ``line`` names ``name`` as a whole word, ignoring case.

    The speaker prefix of a chat line is skipped: your own lines are not news to you.
    """
    if not name:
        return False
    body = line
    match = _CHAT.match(line)
    if match:
        body = line[match.end() :]
    word = re.compile(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", re.IGNORECASE)
    return word.search(body) is not None


def render(line: str, own_name: str | None, colour: bool) -> str:
    """The text to show for a server line: cleaned, and coloured when ``colour`` is on.

    The server already strips control characters from user text; cleaning again costs
    little and means a hostile or buggy server can't drive our terminal either.
    """
    text = clean(line)
    if not colour:
        return text
    start = style_for(classify(text), mentions(text, own_name))
    return f"{start}{text}{_RESET}" if start else text


def colour_enabled(stream: object) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (any value, no-color.org)."""
    if "NO_COLOR" in os.environ:
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


def is_quit(line: str) -> bool:
    """Whether the server will end the session on ``line`` (``/quit [reason]``, ``exit``).

    Mirrors the server's parser exactly (a leading space makes ``/quit`` chat), so we never
    wait for a close that is not coming.
    """
    text = clean(line)
    if text.strip().lower() == "exit":
        return True
    return text.startswith("/") and text[1:].partition(" ")[0].lower() == "quit"


def prompt_label(line: str) -> str:
    """The local prompt for a server prompt line: ``? name:`` becomes ``name: ``."""
    return line[2:].strip() + " "


def is_secret(line: str) -> bool:
    """Whether a server prompt asks for something that must not be echoed."""
    return "password" in line.lower()


def joined_name(line: str) -> str | None:
    """The name in a ``* NAME joined`` notice, or None."""
    match = _JOINED.fullmatch(line)
    return match.group(1) if match else None


def kicked_name(line: str) -> str | None:
    """The name in a ``* NAME was kicked by ADMIN[: reason]`` notice, or None."""
    match = _KICKED.fullmatch(line)
    return match.group(1) if match else None


def shutdown_reason(line: str) -> str | None:
    """The reason in a ``* server shutting down: REASON`` notice, or None."""
    match = _SHUTDOWN.fullmatch(line)
    return match.group(1) if match else None


def renamed(line: str) -> tuple[str, str] | None:
    """``(old, new)`` from a ``* OLD is now known as NEW`` notice, or None."""
    match = _RENAMED.fullmatch(line)
    return (match.group(1), match.group(2)) if match else None


def same_name(a: str | None, b: str | None) -> bool:
    """Names compare like the server compares them: NFKC, ignoring case."""
    return a is not None and b is not None and name_key(a.strip()) == name_key(b.strip())


class Roster:
    """Names of people seen around us, for Tab completion: added by join, rename and ``/who``
    lines, removed by leave and kick lines. Written by the reader thread, read by the
    prompt's completer; every update replaces the set at once, so readers never see it half
    changed."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}  # name_key -> the server's spelling

    def names(self) -> list[str]:
        return sorted(self._names.values(), key=str.casefold)

    def update(self, line: str) -> None:
        """Learn from one server line (the line is shown whatever happens here)."""
        names = dict(self._names)
        if (who := _ONLINE.fullmatch(line)) is not None:
            names = {name_key(n): n for n in who.group(1).split(", ") if n}
        elif (change := renamed(line)) is not None:
            names.pop(name_key(change[0]), None)
            names[name_key(change[1])] = change[1]
        elif (name := joined_name(line)) is not None:
            names[name_key(name)] = name
        elif (gone := _LEFT.fullmatch(line)) is not None:
            names.pop(name_key(gone.group(1)), None)
        elif (burst := _SUMMARY.fullmatch(line)) is not None:
            for name in burst.group(2).split(", "):
                if burst.group(1) == "joined":
                    names[name_key(name)] = name
                else:
                    names.pop(name_key(name), None)
        else:
            return
        self._names = names


class ChatCompleter(Completer):
    """Tab completion: a command name for the first word when it starts with ``/``, and
    otherwise the name of someone in the :class:`Roster` (case-insensitive prefix)."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self._names = names

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        word = document.get_word_before_cursor(WORD=True)
        if not word:
            return
        if word.startswith("/") and document.text_before_cursor.lstrip() == word:
            candidates: Iterable[str] = (c for c in COMMANDS if c.startswith(word.lower()))
        else:
            folded = word.casefold()
            candidates = (n for n in self._names() if n.casefold().startswith(folded))
        for candidate in candidates:
            yield Completion(candidate, start_position=-len(word))


def time_prefix(now: float | None = None) -> str:
    """The dim ``HH:MM`` (local time) shown before each line on a terminal. Dim is not a
    colour, so it stays under ``NO_COLOR`` (as bold does)."""
    return f"\x1b[2m{time.strftime('%H:%M', time.localtime(now))}{_RESET} "


def split_id(line: str) -> tuple[int | None, float | None, str]:
    """``(id, when, text)`` for a line that may start with ``#ID@TIME `` (a stored line,
    once ids are on): ``when`` in seconds since the epoch. ``(None, None, line)`` else."""
    match = _ID_PREFIX.match(line)
    if match is None:
        return None, None, line
    try:
        when: float | None = calendar.timegm(time.strptime(match.group(2), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        when = None
    return int(match.group(1)), when, line[match.end() :]


@dataclass
class RoomMark:
    """Where we stand in one room's history: its epoch, the largest id we showed in it,
    and its last id when we entered (older lines are history, not missed lines)."""

    epoch: str
    shown: int = 0
    floor: int = 0
    stale: bool = False  # cleared while we watched: the server has another epoch now


class Marks:
    """What the client showed of each room's history, from the ``= room`` lines and the
    ids of stored lines; enough to ask for exactly the lines missed (``/resume``) and to
    drop a stored line shown already (same room, same epoch, id not above the last shown).

    Lines framed by ``* history of ROOM (N lines):`` ... ``* end of history`` (``/history``)
    are always shown and change nothing: the user asked to see them again.
    """

    def __init__(self) -> None:
        self.rooms: dict[str, RoomMark] = {}
        self.room: str | None = None  # the server's spelling of the room we are in
        self._entering: tuple[str, int] | None = None  # (key, last id) until our join
        self._framed = False

    def enter(self, room: str, epoch: str, last: int) -> None:
        """A ``= room ROOM epoch EPOCH last ID`` line: the replay of ROOM follows."""
        key = name_key(room)
        mark = self.rooms.get(key)
        if mark is None or mark.epoch != epoch or mark.stale:
            self.rooms[key] = RoomMark(epoch)
        self.room = room
        self._entering = (key, last)

    def joined(self) -> None:
        """Our own join notice: the replay is over, what follows is live."""
        if self._entering is not None:
            key, last = self._entering
            mark = self.rooms[key]
            mark.floor = max(mark.floor, last)
            self._entering = None

    def accept(self, ident: int | None, line: str) -> bool:
        """Whether to show ``line`` (its ``#ID@TIME`` prefix removed; ``ident`` None for a
        line that is not stored); notes what was shown."""
        if ident is None:
            if self._framed:
                self._framed = line != _HISTORY_END
            elif _HISTORY_START.fullmatch(line):
                self._framed = True
            return True
        if self._framed or self.room is None:
            return True
        mark = self.rooms.get(name_key(self.room))
        if mark is None:
            return True
        if not mark.stale and ident <= mark.shown:
            return False  # shown already: a replay overlapping what we saw
        mark.shown = max(mark.shown, ident)
        if self._entering is None and _CLEARED.fullmatch(line):
            mark.stale = True  # a live clear starts an epoch we are not told
        return True

    def resume_target(self) -> tuple[str, str, int] | None:
        """``(room, epoch, last id)`` for ``/resume``, or None before any ``= room`` line."""
        if self.room is None:
            return None
        mark = self.rooms.get(name_key(self.room))
        if mark is None:
            return None
        return self.room, mark.epoch, max(mark.shown, mark.floor)


class ConnectionGone(Exception):
    """The server closed the connection while the main thread was waiting on the user."""


class NeedsUser(Exception):
    """A reconnect needs an answer only the user can give (a name taken meanwhile, a
    password refused): the chat prompt stops (keeping what was typed) for the login."""


class GiveUp(Exception):
    """Registration can't go on without the user (off a terminal): exit with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LineSplitter:
    """Bytes in, complete text lines out; a partial line waits for the rest.

    Splitting happens on bytes, before decoding, so a UTF-8 character cut by a ``recv``
    boundary is never decoded in halves. Invalid UTF-8 becomes U+FFFD, never an error.
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        """Add received bytes; return the lines they completed, without line endings."""
        *lines, self._pending = (self._pending + data).split(b"\n")
        return [_decode(raw) for raw in lines]

    def rest(self) -> str | None:
        """The unterminated tail, if any: shown at close so nothing is silently lost."""
        tail, self._pending = self._pending, b""
        return _decode(tail) if tail else None


def _decode(raw: bytes) -> str:
    return raw.rstrip(b"\r").decode("utf-8", errors="replace")


class Ui(Protocol):
    """What the session needs from a front end (a terminal or a pipe)."""

    def ask(
        self,
        label: str | Callable[[], str],
        secret: bool = False,
        submit: Callable[[str], None] | None = None,
    ) -> str | None:
        """One line from the user; None if the user wants out (EOF, Ctrl-C).

        ``submit``, if given, is called with the line exactly once before ``ask`` returns
        it, as early as the front end can: a terminal calls it the moment Enter is
        accepted, before the prompt tidies up the screen, so the line leaves at once.
        Raises :class:`ConnectionGone` once :meth:`interrupt` has been called.
        """

    def show(self, text: str, when: float | None = None) -> None:
        """Display one server line (``when`` it was said, if the server told; else now);
        called from the reader thread."""

    def note(self, text: str) -> None:
        """Display one line from the client itself (reconnecting ...); any thread."""

    def interrupt(self) -> None:
        """Wake a pending :meth:`ask` because the connection is gone (any thread)."""

    def pause(self) -> None:
        """Make the pending (or next) chat :meth:`ask` raise :class:`NeedsUser`, keeping
        what the user typed for the chat prompt after it (any thread)."""


# Reader -> main thread events during registration: a server prompt line, or these.
_JOINED_EVENT = "joined"
_CLOSED_EVENT = "closed"


@dataclass
class Reconnect:
    """How to reconnect after an unexpected drop (``--no-reconnect`` means none at all):
    ``connect`` makes a new socket (raising :class:`ConnectError`), tried after each of
    ``delays`` (the last one repeats) until ``timeout`` seconds after the drop (0: never
    give up). After a ``* server shutting down`` notice only with ``after_shutdown``."""

    connect: Callable[[], socket.socket]
    after_shutdown: bool = False
    timeout: float = RECONNECT_TIMEOUT
    delays: tuple[float, ...] = RECONNECT_DELAYS


class Session:
    """The chat session: the I/O thread, what it learnt, and the exit code it implies.

    One thread owns the socket for reading *and* writing: an ``ssl.SSLSocket`` must not be
    read and written from two threads at once. Lines to send are queued and the thread is
    woken through a socketpair; the socket is non-blocking, so a TLS record that is only
    half arrived never holds a send back.

    Ids: the I/O thread sends ``/ids`` at each connection's first name prompt, so every
    stored line comes with its id and time (``#ID@TIME``, removed before it is shown) and
    :class:`Marks` knows what was shown in each room. Reconnecting (``reconnect`` given):
    when the connection drops after we joined, without a kick or a shutdown notice, the
    same thread waits (``Reconnect.delays``), connects again, sends ``/ids`` and
    ``/resume ROOM EPOCH LAST``, and answers the login prompts itself with the name and
    the passwords kept in memory; the chat prompt stays up meanwhile, and lines typed
    then are held and sent once we are back. Only when a kept answer is refused (or
    missing) is the user needed: the prompt line goes to the main thread, which is
    interrupted with :class:`NeedsUser` (see :func:`_drive`).
    """

    def __init__(
        self,
        sock: socket.socket,
        ui: Ui,
        colour: bool,
        echo_prompts: bool,
        roster: Roster | None = None,
        reconnect: Reconnect | None = None,
    ) -> None:
        self._sock = sock
        self._ui = ui
        self._colour = colour
        self._echo_prompts = echo_prompts  # a pipe shows ``? name:``; a terminal asks itself
        self._hold_quit = echo_prompts  # a pipe's quit waits for its held lines
        self._roster = roster if roster is not None else Roster()
        self._reconnect = reconnect
        self._events: queue.Queue[str] = queue.Queue()
        self._closed = threading.Event()
        self._give_up = threading.Event()  # stop reconnecting: the user left, or finish()
        self._out = bytearray()
        self._out_lock = threading.Lock()
        self._held: list[str] = []  # typed while disconnected, sent after the resume
        self._quit_held = False
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._reader = threading.Thread(target=self._io_loop, name="io", daemon=True)
        self.marks = Marks()
        #: Passwords that were answered, kept in memory (never on disk) for reconnects.
        self.kept = Secrets()
        self.name: str | None = None  # the name we asked for, then the one we hold
        self.registered = False  # joined on this connection
        self.ever_joined = False
        self.user_quit = False
        self.kicked = False
        self.last_line: str | None = None  # a shutdown notice here means the server stopped
        self._last_stored = False  # the last line was a stored one (never a server notice)
        self.last_error: str | None = None  # the last ``! `` line, to explain a refusal
        self.gave_up = False  # registration stopped by us (GiveUp), already explained
        self.reconnect_failed = False  # gave up reconnecting: exit 1
        self.handover: str | None = None  # what we answered last before needing the user
        # Per connection:
        self._preamble_sent = False
        self._reconnected = False  # this connection is a reconnect
        self._by_main = True  # the main thread answers prompts (else this thread does)
        self._handing_over = False  # a reconnect's login is the main thread's until joined
        self._auto_used: set[str] = set()
        self._auto_last: str | None = None
        self._gap = False
        self._outage: tuple[float, int, str] | None = None  # start, attempts, last failure

    def start(self) -> None:
        """Start the I/O thread; lines are shown from now on."""
        self._reader.start()

    # --- the I/O thread ----------------------------------------------------------------

    def _io_loop(self) -> None:
        """I/O thread body: serve the connection; reconnect when it drops unexpectedly;
        wake the main thread when it is over."""
        try:
            while True:
                if self._pump() or not self._should_reconnect():
                    break
                sock = self._connect_again()
                if sock is None:
                    break
                self._sock = sock
        finally:  # whatever happened, the main thread must learn that reading is over
            self._closed.set()
            self._events.put(_CLOSED_EVENT)
            self._ui.interrupt()

    def _pump(self) -> bool:
        """Send what is queued, show every line received, note what matters; until the
        connection ends (False) or finish() asks us to stop (True)."""
        splitter = LineSplitter()
        sock = self._sock
        try:
            sock.setblocking(False)
            while not self._stop:
                with self._out_lock:
                    want_write = bool(self._out)
                pending = getattr(sock, "pending", None)
                if pending is not None and pending():
                    readable = [sock]  # decrypted bytes already wait inside the TLS layer
                else:
                    readable, writable, _ = select.select(
                        [sock, self._wake_r], [sock] if want_write else [], []
                    )
                    if self._wake_r in readable:
                        self._wake_r.recv(4096)
                    if writable:
                        self._write_some()
                if sock in readable:
                    data = self._read_some()
                    if data == b"":
                        break
                    for line in splitter.feed(data or b""):
                        self._on_line(line)
            else:
                return True  # finish() asked us to stop: the socket is closed there
            tail = splitter.rest()
            if tail:
                self._on_line(tail)
        except (OSError, ValueError):
            pass  # reset or closed under us: the same as an orderly close for the user
        return self._stop

    def _should_reconnect(self) -> bool:
        policy = self._reconnect
        if policy is None or self._stop or self._give_up.is_set() or not self.ever_joined:
            return False
        if self.user_quit or self.kicked or self.gave_up:
            return False
        if self.last_line is not None and not self._last_stored and _IDLE.fullmatch(
                self.last_line):
            return False  # closed for idling: coming back at once would defeat the point
        return policy.after_shutdown or not self._shutdown_seen()

    def _shutdown_seen(self) -> bool:
        # The shutdown notice is the server's last word, so only the last line counts: a
        # user named ``server`` can say ``/me shutting down: ...`` (and the history keeps
        # it for every newcomer), but can't close our connection right after it. With ids
        # on, a stored line is never the server's notice.
        return (self.last_line is not None and not self._last_stored
                and shutdown_reason(self.last_line) is not None)

    def _connect_again(self) -> socket.socket | None:
        """Wait, connect, repeat (see :class:`Reconnect`); the new socket, or None when
        the user left or we gave up (``reconnect_failed``)."""
        policy = self._reconnect
        assert policy is not None
        try:
            self._sock.close()
        except OSError:
            pass
        with self._out_lock:  # chat lines that never left: sent after the resume
            if self.registered:
                self._held[:0] = self._out.decode("utf-8", errors="replace").split("\n")[:-1]
            self._out.clear()  # (login answers are for that connection only)
            self.registered = False
        start, attempts, why = self._outage or (time.monotonic(), 0, "")
        while True:
            delay = policy.delays[min(attempts, len(policy.delays) - 1)]
            if policy.timeout:
                left = policy.timeout - (time.monotonic() - start)
                if left <= 0:
                    self.reconnect_failed = True
                    self._note(f"! could not reconnect within {policy.timeout:g} s; "
                               "giving up")
                    return None
                delay = min(delay, left)
            secs = f"{max(delay, 0.1):.1f}".rstrip("0").rstrip(".")  # 1, 2 ... 0.5
            if attempts == 0:
                self._note(f"* connection lost; reconnecting in {secs} s...")
            else:
                self._note(f"* still not connected ({why}); retrying in {secs} s...")
            if self._give_up.wait(delay):
                return None
            attempts += 1
            self._outage = (start, attempts, why)
            try:
                sock = policy.connect()
            except ConnectError as exc:
                why = str(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - keep trying, say why
                why = f"{type(exc).__name__}: {exc}"
                continue
            self._outage = (start, attempts, "closed during login")
            if self._stop or self._give_up.is_set():
                sock.close()
                return None
            self._preamble_sent = False
            self._reconnected = True
            self._by_main = self._handing_over  # the user goes on answering, if asked
            self._auto_used = set()
            self._auto_last = None
            self._gap = False
            self.last_error = None
            return sock

    def _read_some(self) -> bytes | None:
        """What the socket has; ``b""`` at end of stream, None when nothing is ready yet
        (a TLS record not complete, or TLS housekeeping with no data)."""
        try:
            return self._sock.recv(RECV_SIZE)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return None
        except ssl.SSLZeroReturnError:
            return b""

    def _write_some(self) -> None:
        """Send as much of the queue as the socket takes now."""
        with self._out_lock:
            chunk = bytes(self._out[:RECV_SIZE])
        try:
            sent = self._sock.send(chunk)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return
        except OSError:
            sent = len(chunk)  # the connection is going: the reader will see the close
        with self._out_lock:
            del self._out[:sent]

    def _on_line(self, raw: str) -> None:
        """Track registration, ids, renames and kicks; show the line (or not)."""
        ident, when, line = split_id(raw)
        if ident is None and line.startswith("= "):
            self._on_mark(line)
            return
        if ident is None and line == _IDS_ON and not self.registered:
            return  # our own request, answered
        self.last_line = line
        self._last_stored = ident is not None
        kind = classify(line)
        if kind is Kind.ERROR:
            self.last_error = line
            if not self.registered and self._reconnected and (
                    "recovered" in line or "cleared or lost" in line):
                self._gap = True
        if kind is Kind.PROMPT and not self.registered and ident is None:
            self._on_prompt(line)
            return
        if not self.marks.accept(ident, line):
            return  # shown already
        if ident is None:
            self._track(line)
        self._ui.show(render(line, self.name, self._colour), when)
        if ident is None and same_name(joined_name(line), self.name):
            self.marks.joined()
            if not self.registered:
                self._on_joined()

    def _on_mark(self, line: str) -> None:
        """``= ...`` lines are for us, never shown."""
        if (room := _ROOM_MARK.fullmatch(line)) is not None:
            self.marks.enter(room.group(1), room.group(2), int(room.group(3)))
        elif (resumed := _RESUMED_MARK.fullmatch(line)) is not None and self._reconnected:
            count = int(resumed.group(2))
            self._note(f"* reconnected ({count} missed line{'' if count == 1 else 's'})")

    def _on_prompt(self, line: str) -> None:
        """A login prompt: ids (and the resume) first; then answered here while
        reconnecting, else by the main thread."""
        label = prompt_label(line)
        if label.startswith("name") and not self._preamble_sent:
            self._preamble_sent = True
            self.send("/ids")
            target = self.marks.resume_target() if self._reconnected else None
            if target is not None:
                self.send("/resume {} {} {}".format(*target))
        if not self._by_main:
            kind, answer = self._auto_answer(line)
            if answer is not None:
                self._auto_used.add(kind)
                self._auto_last = kind
                self.send(answer)
                return
            self._by_main = self._handing_over = True  # the user must answer: hand over
            self.handover = self._auto_last
            self._events.put(line)
            if self._echo_prompts:
                self._ui.show(render(line, self.name, self._colour))
            self._ui.pause()
            return
        self._events.put(line)
        if self._echo_prompts:
            self._ui.show(render(line, self.name, self._colour))

    def _auto_answer(self, line: str) -> tuple[str, str | None]:
        """``(kind, answer)`` for a login prompt while reconnecting: what we answered
        before, once per connection; None when the user must answer."""
        label = prompt_label(line)
        if label.startswith("server password"):
            kind, value = "server", self.kept.server
        elif is_secret(line):
            kind, value = "admin", self.kept.admin
        elif label.startswith("name"):
            kind, value = "name", self.name
        else:
            return "other", None
        return kind, (None if kind in self._auto_used else value)

    def _on_joined(self) -> None:
        """Our join notice on a new connection: send what was held, tell the main thread
        (if it is the one logging in)."""
        with self._out_lock:
            self.registered = True
            held, self._held = self._held, []
            for line in held:
                if is_quit(line):
                    self.user_quit = True
                self._out += line.encode("utf-8") + b"\n"
        self._wake()
        self.ever_joined = True
        self._outage = None
        if self._reconnected and (self._gap or self.marks.resume_target() is None):
            self._note("* reconnected")
        if self._by_main:
            self._events.put(_JOINED_EVENT)
        self._by_main = True
        self._handing_over = False

    def _note(self, text: str) -> None:
        self._ui.note(render(text, self.name, self._colour))

    def _track(self, line: str) -> None:
        """Update our view of the session from a notice that concerns us."""
        if classify(line) is Kind.NOTICE:
            self._roster.update(line)
        if joined_name(line) and same_name(joined_name(line), self.name):
            self.name = joined_name(line)  # the server's spelling (NFKC) for the prompt
        elif (change := renamed(line)) and self.registered and same_name(change[0], self.name):
            self.name = change[1]
        elif same_name(kicked_name(line), self.name) and self.registered:
            self.kicked = True

    # --- the main thread ---------------------------------------------------------------

    def next_event(self, timeout: float | None = None) -> str | None:
        """Block for the next registration event (None after ``timeout`` seconds without
        one); raise ConnectionGone when closed."""
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event == _CLOSED_EVENT:
            raise ConnectionGone
        return event

    def send(self, line: str) -> None:
        """Queue one line for the I/O thread and wake it. A failure is the reader's to see."""
        with self._out_lock:
            self._out += line.encode("utf-8") + b"\n"
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # already woken (buffer full) or finished

    def _away(self) -> bool:
        """Disconnected (or logging in again) after we had joined: chat lines are held."""
        return self.ever_joined and not self.registered

    def submit(self, line: str) -> None:
        """Send a line typed at the chat prompt (``ask`` calls this as soon as it is
        accepted). A quit command is sent too and marks the session as left by the user;
        an empty line is not sent. While reconnecting, lines are held (at most HELD_MAX)
        and sent after the resume; a quit on a terminal leaves at once."""
        with self._out_lock:
            if self._away():
                if line:
                    self._hold(line)
                return
        if is_quit(line):
            self.user_quit = True
        if line:
            self.send(line)

    def _hold(self, line: str) -> None:
        """(``_out_lock`` held.) Keep a line for after the resume, or leave on a quit."""
        if is_quit(line) and not self._hold_quit:
            self._leave_now()
            return
        if len(self._held) >= HELD_MAX:
            self._note(f"! not connected: line dropped ({HELD_MAX} lines wait already)")
            return
        if is_quit(line):
            self._quit_held = True
        if not self._held:
            self._note("* not connected: what you send now goes out once reconnected")
        self._held.append(line)

    def _leave_now(self) -> None:
        """The user leaves while we are away: stop reconnecting (or logging in) at once."""
        self.user_quit = True
        self._stop = True
        self._give_up.set()
        self._wake()

    def quit(self, line: str = "/quit") -> None:
        """Leave on the user's request: send ``line`` and give the server time to say bye.
        While reconnecting: leave at once, unless lines wait to be sent (pipe)."""
        with self._out_lock:
            if self._away():
                if self._hold_quit and self._held:
                    self._hold(line)
                else:
                    self._leave_now()
            else:
                self.user_quit = True
                self._out += line.encode("utf-8") + b"\n"
        self._wake()
        self.wait_closed()

    def wait_closed(self) -> None:
        """Give the server time to say goodbye and close (after a quit was sent). A quit
        held for after the resume waits as long as reconnecting may take."""
        if self._quit_held:
            self._closed.wait()
        else:
            self._closed.wait(QUIT_WAIT)

    def finish(self) -> int:
        """Stop the I/O thread (it shows what it already holds), close; the exit code."""
        self._stop = True
        self._give_up.set()
        self._wake()
        if self._reader.is_alive():
            self._reader.join(READER_JOIN)
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()
        return self.exit_code()

    def exit_code(self) -> int:
        """0 if the user left; otherwise why the session ended."""
        if self.user_quit:
            return EXIT_OK
        if self.reconnect_failed:
            return EXIT_LOST
        if self._shutdown_seen():
            return EXIT_SHUTDOWN
        if self.kicked:
            return EXIT_KICKED
        return EXIT_LOST


@dataclass
class Secrets:
    """Passwords given ahead (``--password-file``, ``--admin-password-file`` or the
    environment), each used for one prompt at most. Never shown, logged or stored."""

    server: str | None = None
    admin: str | None = None

    def __repr__(self) -> str:  # a traceback or a debug print must not show them
        return "Secrets(...)"


def read_secret(path: Path | None, env_var: str) -> str | None:
    """The first line of ``path`` if given, else ``$env_var`` if set, else None. Raises
    OSError (or UnicodeDecodeError) for a file that can't be read."""
    if path is not None:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    return os.environ.get(env_var)


def _register(
    session: Session,
    ui: Ui,
    preset: str | None,
    *,
    interactive: bool = True,
    secrets: Secrets | None = None,
    silence: Callable[[], None] | None = None,
    last: str | None = None,
    reconnecting: bool = False,
) -> bool:
    """Answer the server's prompts until it says we joined; False if the user gave up.

    Off a terminal (``interactive`` False) stdin lines are chat, never answers: passwords
    come from ``secrets``, the name from ``preset`` (a pipe must give one; on a terminal, asked,
    once). A refused name or password raises :class:`GiveUp` instead of asking again.
    ``silence``, if given, runs once when the server says nothing for FIRST_LINE_WAIT
    seconds after the connect (it may raise GiveUp). ``last`` is what was answered last
    before this call ("name", "server" or "admin"; a reconnect hands over after its own
    answers). Passwords answered are kept in ``session.kept`` (memory only) for reconnects.
    """
    secrets = secrets if secrets is not None else Secrets()
    server_pw, admin_pw = secrets.server, secrets.admin
    asked_stdin_for_name = reconnecting  # a reconnect never reads a name from stdin
    timeout = FIRST_LINE_WAIT if silence is not None else None
    while True:
        event = session.next_event(timeout)
        if event is None:
            timeout = None
            if silence is not None:
                silence()
            continue
        timeout = None
        if event == _JOINED_EVENT:
            return True
        label = prompt_label(event)
        why = f" ({session.last_error})" if session.last_error else ""
        answer: str | None
        if label.startswith("server password"):
            if not interactive and last == "server":
                raise GiveUp(EXIT_PASSWORD, f"wrong server password{why}")
            if server_pw is not None:
                answer, server_pw = server_pw, None
            elif interactive:
                answer = ui.ask(label, secret=True)
            else:
                raise GiveUp(EXIT_PASSWORD, "the server needs a password: give it with "
                             f"--password-file FILE or {SERVER_PASSWORD_ENV}")
            session.kept.server = answer
            last = "server"
        elif is_secret(event):
            if admin_pw is not None:
                answer, admin_pw = admin_pw, None
            elif interactive:
                answer = ui.ask(label, secret=True)
            else:
                raise GiveUp(EXIT_PASSWORD, f"{session.name} is an admin account: give its "
                             f"password with --admin-password-file FILE or {ADMIN_PASSWORD_ENV}")
            session.kept.admin = answer
            last = "admin"
        elif label.startswith("name"):
            if not interactive and last == "admin":
                raise GiveUp(EXIT_PASSWORD, f"wrong password for {session.name}{why}")
            if not interactive and last == "name":
                raise GiveUp(EXIT_NAME, f"name refused: {session.name}{why}")
            if preset is not None:
                answer, preset = preset, None  # a refused name is the user's to fix
            elif interactive or not asked_stdin_for_name:
                asked_stdin_for_name = True  # off a terminal: the first line, once
                answer = ui.ask(label)
            else:
                raise GiveUp(EXIT_NAME, f"name refused{why}")
            if answer is not None:
                session.name = answer.strip()
            last = "name"
        elif interactive:
            answer = ui.ask(label, secret=False)
            last = None
        else:
            raise GiveUp(EXIT_LOST, f"unexpected prompt from the server: {event}")
        if answer is None:
            return False
        session.send(answer)


def _chat(session: Session, ui: Ui) -> None:
    """Send what the user types until they leave; ConnectionGone if the server leaves.

    Lines are sent by ``session.submit`` from inside ``ask``, the moment Enter is accepted.
    """
    while True:
        line = ui.ask(lambda: f"{session.name}> ", submit=session.submit)
        if line is None:
            session.quit()
            return
        if is_quit(line):  # already sent by submit
            session.wait_closed()
            return


def _drive(
    session: Session,
    ui: Ui,
    preset: str | None,
    *,
    interactive: bool = True,
    secrets: Secrets | None = None,
    silence: Callable[[], None] | None = None,
) -> int:
    """The whole session: register, chat, leave; returns the exit code."""
    session.start()
    try:
        registered = _register(session, ui, preset, interactive=interactive,
                                secrets=secrets, silence=silence)
        while registered:
            try:
                _chat(session, ui)
                break
            except NeedsUser:  # a reconnect's login needs the user (or, off a terminal, ends)
                last = session.handover
                registered = _register(session, ui, None if last == "name" else session.name,
                                       interactive=interactive, last=last, reconnecting=True)
        if not registered:
            session.user_quit = True
    except KeyboardInterrupt:
        if session.registered:
            session.quit()
        else:
            session.user_quit = True
    except ConnectionGone:
        pass
    except GiveUp as exc:
        session.gave_up = True
        session.finish()
        print(f"geventchat: {exc.message}", file=sys.stderr, flush=True)
        return exc.code
    return session.finish()


class PipeUi:
    """Front end for a pipe: stdin lines in, server lines out, one flushed write each.

    stdin is read with ``os.read`` on fd 0 (not ``sys.stdin``): a thread blocked in
    ``sys.stdin.read`` at interpreter exit can abort Python, and ``select`` with a wake-up
    pipe lets the reader thread end a pending read when the server closes.
    """

    def __init__(self) -> None:
        self._splitter = LineSplitter()
        self._lines: list[str] = []
        self._eof = False
        self._gone = False
        self._paused = False
        self._wake_r, self._wake_w = os.pipe()
        self._out_lock = threading.Lock()

    def ask(
        self,
        label: str | Callable[[], str],
        secret: bool = False,
        submit: Callable[[str], None] | None = None,
    ) -> str | None:
        """The next stdin line (the label is not shown: the server's prompt line was)."""
        if self._paused and submit is not None:
            self._paused = False
            raise NeedsUser
        while not self._lines:
            if self._paused and submit is not None:
                self._paused = False
                raise NeedsUser
            if self._gone:
                raise ConnectionGone
            if self._eof:
                return None
            self._fill()
        line = self._lines.pop(0)
        if submit is not None:
            submit(line)
        return line

    def _fill(self) -> None:
        """Wait for stdin or the wake-up pipe; read what stdin has."""
        ready, _, _ = select.select([0, self._wake_r], [], [])
        if self._wake_r in ready and not self._gone:
            os.read(self._wake_r, 64)  # a pause: checked by ``ask``
        if 0 not in ready:
            return
        data = os.read(0, RECV_SIZE)
        if data:
            self._lines.extend(self._splitter.feed(data))
            return
        self._eof = True
        tail = self._splitter.rest()
        if tail is not None:
            self._lines.append(tail)

    def show(self, text: str, when: float | None = None) -> None:
        """Write and flush one line, so a consumer sees it at once (no time: pipe output
        stays the server's lines, easy to parse)."""
        data = (text + "\n").encode("utf-8", errors="replace")  # the wire's encoding, always
        with self._out_lock:
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except (OSError, ValueError):
                pass  # nobody is reading our output any more; keep the session going

    def note(self, text: str) -> None:
        """The client's own lines go to stderr: stdout stays what the server said."""
        try:
            print(text, file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    def interrupt(self) -> None:
        """Wake a pending :meth:`ask` through the wake-up pipe."""
        self._gone = True
        self._poke()

    def pause(self) -> None:
        """Make the pending (or next) chat :meth:`ask` raise NeedsUser."""
        self._paused = True
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # the session is over and the pipe already closed

    @contextmanager
    def active(self) -> Iterator[None]:
        """Nothing to set up on a pipe; closes the wake-up pipe afterwards."""
        try:
            yield
        finally:
            os.close(self._wake_r)
            os.close(self._wake_w)


class TtyUi:
    """Front end for a terminal: prompt_toolkit line editing, server lines above the prompt.

    Incoming lines must never clobber the prompt, including in the gap between two prompts
    (right after Enter, exactly when the server echoes our own line). ``patch_stdout``
    decides "no prompt running, write directly" in its own thread, so a write can land just
    after the next prompt was drawn and stick to it. So server lines take a lock-protected
    path of their own:

    * no prompt active: write at once (the next prompt's ``pre_run`` waits for the lock);
    * a prompt active: queue the line and wake the prompt's event loop, which erases the
      prompt, writes the queued lines and redraws the prompt with what the user typed;
    * a prompt finishing: whatever is still queued is written after its final render.

    ``patch_stdout`` stays on as the safety net for anything else that prints.

    Cursor position requests (CPR, ``ESC[6n``) are disabled: prompt_toolkit would otherwise
    wait on a terminal that may never answer (a pty under test, some serial consoles) and
    stall each redraw. We lose nothing that matters: CPR only sizes completion menus.

    Each shown line starts with the local time (``HH:MM``, dim) unless ``show_time`` is
    off. An accepted chat line is erased from the screen (``erase_when_done``): the
    server's echo of it is what stays, so each line is shown once. Tab completes command
    names and the names in ``roster``.
    """

    def __init__(self, show_time: bool = True, roster: Roster | None = None) -> None:
        self._show_time = show_time
        self._completer = ChatCompleter((roster or Roster()).names)
        # The env var also covers any output prompt_toolkit might create implicitly.
        os.environ["PROMPT_TOOLKIT_NO_CPR"] = "1"
        self._output = create_output()
        if hasattr(self._output, "enable_cpr"):
            self._output.enable_cpr = False
        self._lock = threading.Lock()
        self._gone = False
        self._paused = False  # a reconnect needs the user: the chat prompt gives way
        self._chat_active = False
        self._draft: Document | str | None = None  # what was typed when it gave way
        self._pending: list[str] = []
        self._app: Application[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._chat_session: PromptSession[str] | None = None

    @contextmanager
    def active(self) -> Iterator[None]:
        """Set up prompt_toolkit on our CPR-free output for the whole session.

        No ``create_app_session`` here: ``patch_stdout``'s writer thread would not see it (a
        thread starts with empty context variables) and would print over the prompt.
        """
        # raw=True keeps escapes in stray prints; server text is cleaned in ``render``.
        with patch_stdout(raw=True):
            self._chat_session = PromptSession(
                output=self._output, completer=self._completer, complete_while_typing=False,
                erase_when_done=True,
            )
            yield
        with self._lock:
            self._write(self._take_pending())

    def ask(
        self,
        label: str | Callable[[], str],
        secret: bool = False,
        submit: Callable[[str], None] | None = None,
    ) -> str | None:
        """Prompt for one line. Chat lines keep a history; name and password prompts get a
        throwaway session so a password can never be recalled with the Up arrow.

        ``submit`` runs in the prompt's accept handler: the line leaves before the final
        render and the event loop's teardown, which take a few ms per line. (An echo that
        comes back meanwhile waits in ``_pending``: the prompt is done, see ``_drain``.)
        """
        session = self._chat_session
        chat = session is not None and callable(label)
        with self._lock:
            if self._gone:
                raise ConnectionGone
            if chat and self._paused:
                self._paused = False
                raise NeedsUser
            self._chat_active = chat
        if session is None or not chat:
            session = PromptSession(output=self._output)
        default: Document | str = ""
        if chat and self._draft is not None:
            default, self._draft = self._draft, None
        submitted: list[str] = []

        def on_accept(text: str) -> None:
            submitted.append(text)
            if submit is not None:
                submit(text)

        try:
            with _on_accept(session.default_buffer, on_accept):
                line = session.prompt(label, is_password=secret, pre_run=self._arm,
                                      default=default)
        except (EOFError, KeyboardInterrupt):
            return None
        except NeedsUser:
            with self._lock:
                self._paused = False
                if self._draft is None:
                    self._draft = default
            raise
        finally:
            with self._lock:
                self._app = self._loop = None
                self._chat_active = False
                self._write(self._take_pending())
        if submit is not None and not submitted:
            submit(line)  # accepted some other way: the line must still be sent, once
        return line

    def _arm(self) -> None:
        """Runs in the prompt's loop before its first render: from now on lines are queued
        for the loop. (Or exit at once if the connection went away meanwhile.)"""
        with self._lock:
            self._write(self._take_pending())
            self._app = get_app()
            self._loop = asyncio.get_running_loop()
            if self._gone:
                self._app.exit(exception=ConnectionGone())
            elif self._chat_active and self._paused:
                self._app.exit(exception=NeedsUser())

    def show(self, text: str, when: float | None = None) -> None:
        """Display one line (reader thread): at once, or via the running prompt's loop.
        The time shown is ``when`` (a stored line's, from the server) or now, local."""
        if self._show_time:
            text = time_prefix(when) + text
        with self._lock:
            if self._loop is None:
                self._write([text])
                return
            self._pending.append(text)
            self._call_in_loop(self._drain)

    def _drain(self) -> None:
        """In the prompt's loop: erase the prompt, write queued lines, redraw the prompt.

        A prompt that is done (Enter pressed, final render not yet made) is left alone: the
        lines wait for ``ask`` to write them after that render, so they stay in order.
        """
        with self._lock:
            app = self._app
            if app is None or not app.is_running or app.is_done or not self._pending:
                return
            app.renderer.erase()
            self._write(self._take_pending())
        app.invalidate()

    def _take_pending(self) -> list[str]:
        lines, self._pending = self._pending, []
        return lines

    def _write(self, lines: list[str]) -> None:
        """Write lines to the terminal (caller holds the lock and knows no prompt is drawn)."""
        if lines:
            self._output.write_raw("".join(line + "\n" for line in lines))
            self._output.flush()

    def _call_in_loop(self, callback: Callable[..., None], *args: object) -> None:
        """Schedule on the prompt's loop (caller holds the lock, ``_loop`` is set)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # loop closed: the prompt has returned and ``ask`` flushes the queue

    def note(self, text: str) -> None:
        """A line from the client itself: shown like a server line, with the time."""
        self.show(text)

    def interrupt(self) -> None:
        """End a running prompt with ConnectionGone; later prompts raise it at once."""
        with self._lock:
            self._gone = True
            if self._loop is not None:
                self._call_in_loop(_exit_app, self._app)

    def pause(self) -> None:
        """End the running chat prompt with NeedsUser, keeping its text for the next one
        (or make the next chat prompt raise it at once)."""
        with self._lock:
            self._paused = True
            if self._loop is not None and self._chat_active:
                self._call_in_loop(self._pause_app, self._app)

    def _pause_app(self, app: Application[str]) -> None:
        """In the prompt's loop: keep what was typed, end the prompt with NeedsUser."""
        if app.future is not None and not app.future.done():
            self._draft = app.current_buffer.document
            app.exit(exception=NeedsUser())


@contextmanager
def _on_accept(buffer: Buffer, callback: Callable[[str], None]) -> Iterator[None]:
    """Call ``callback`` with the text of ``buffer`` when the user accepts it (Enter), right
    after prompt_toolkit's own handler has ended the prompt; restored afterwards."""
    original = buffer.accept_handler

    def accept(buff: Buffer) -> bool:
        keep = original(buff) if original is not None else False
        callback(buff.text)
        return keep

    buffer.accept_handler = accept
    try:
        yield
    finally:
        buffer.accept_handler = original


def _exit_app(app: Application[str]) -> None:
    """Exit a prompt_toolkit app with ConnectionGone unless it already finished."""
    if app.future is not None and not app.future.done():
        app.exit(exception=ConnectionGone())


@dataclass
class TlsOptions:
    """``--tls`` and its companions: verify against the system CAs (or ``ca``) and check
    the host name, unless ``insecure``."""

    ca: Path | None = None
    insecure: bool = False

    def context(self) -> ssl.SSLContext:
        """The client context; OSError or ssl.SSLError for an unusable ``ca`` file."""
        if self.insecure:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca is not None:
            ctx = ssl.create_default_context(cafile=str(self.ca))  # this file, not the system's
        else:
            ctx = ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


class ConnectError(Exception):
    """The connection could not be set up; the message says why, in one line."""


#: OpenSSL's reasons when the peer answers a ClientHello with something that is not TLS
#: (a geventchat server without TLS sends ``? name:`` at once).
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
     "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "UNEXPECTED_EOF_WHILE_READING"}
)


def connect(host: str, port: int, tls: TlsOptions | None) -> socket.socket:
    """A connected socket (TLS-wrapped and verified when ``tls`` is given)."""
    where = f"{host}:{port}"
    if tls is not None:
        try:
            ctx = tls.context()
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot use --tls-ca {tls.ca}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    # One write per line: Nagle could only hold a line back (up to a delayed-ACK timeout,
    # ~40 ms) when it follows the previous one closely, as in a paste or fast typing.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (or not supported): nothing to tune
    if tls is None:
        sock.settimeout(None)
        return sock
    try:
        wrapped = ctx.wrap_socket(sock, server_hostname=host)  # handshake, CONNECT_TIMEOUT
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        hint = " (--tls-ca FILE trusts another CA)" if tls.ca is None else ""
        raise ConnectError(f"TLS certificate of {where} not trusted: "
                           f"{exc.verify_message or exc.reason}{hint}") from None
    except ssl.SSLError as exc:
        sock.close()
        if exc.reason in _NOT_TLS_REASONS:
            raise ConnectError(f"the server at {where} does not speak TLS (drop --tls)") from None
        raise ConnectError(f"TLS handshake with {where} failed: {exc.reason or exc}") from None
    except TimeoutError:
        sock.close()
        raise ConnectError(f"TLS handshake with {where} timed out") from None
    except OSError as exc:  # reset or closed during the handshake
        sock.close()
        raise ConnectError(f"TLS handshake with {where} failed: {exc.strerror or exc}") from None
    wrapped.settimeout(None)
    return wrapped


def speaks_tls(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TLS handshake (unverified: only the protocol matters) with the server
    gets a TLS answer. False when it answers something else or nothing in time."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host):
                return True
    except ssl.SSLError as exc:
        return exc.reason not in _NOT_TLS_REASONS  # a TLS alert is TLS too
    except OSError:
        return False


#: Printed on every start with --tls-insecure: one line, on stderr.
INSECURE_WARNING = ("geventchat: WARNING: --tls-insecure: the server's certificate is NOT "
                    "checked; anyone on the way can read and change this chat")


def run(
    host: str,
    port: int,
    name: str | None,
    *,
    tls: TlsOptions | None = None,
    show_time: bool = True,
    secrets: Secrets | None = None,
    reconnect: bool = True,
    reconnect_after_shutdown: bool = False,
    reconnect_timeout: float = RECONNECT_TIMEOUT,
) -> int:
    """Connect to a geventchat server and chat until someone leaves; return the exit code.

    ``name`` answers the server's first name prompt; without it the user is asked (on a
    pipe, ``--name`` is required). Interactive only when stdin and stdout are
    both terminals, so ``printf 'hi\\n' | geventchat connect --name alice`` works as a filter.
    Off a terminal, stdin lines are never used as passwords (see ``_register``).
    An unexpected drop after we joined is followed by reconnects (see :class:`Session`)
    unless ``reconnect`` is off; ``reconnect_timeout`` seconds (0: never) after a drop we
    give up (exit 1).
    """
    if tls is not None and tls.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    if name is None and not sys.stdin.isatty():
        # Piped lines are only ever chat: a name from stdin could be someone's first line.
        print("geventchat: with stdin not a terminal, give your name with --name "
              "(piped lines are only ever sent as chat)", file=sys.stderr, flush=True)
        return EXIT_NAME
    try:
        sock = connect(host, port, tls)
    except ConnectError as exc:
        print(f"geventchat: {exc}", file=sys.stderr, flush=True)
        return EXIT_LOST

    def silence() -> None:  # no prompt yet: is this a TLS server waiting for a handshake?
        if speaks_tls(host, port):
            raise GiveUp(EXIT_LOST, f"the server at {host}:{port} seems to speak TLS: "
                         "try --tls")

    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    roster = Roster()
    ui: TtyUi | PipeUi = TtyUi(show_time, roster) if interactive else PipeUi()
    policy = None
    if reconnect:
        policy = Reconnect(connect=lambda: connect(host, port, tls),
                           after_shutdown=reconnect_after_shutdown, timeout=reconnect_timeout)
    session = Session(sock, ui, colour_enabled(sys.stdout), echo_prompts=not interactive,
                      roster=roster, reconnect=policy)
    with ui.active():
        code = _drive(session, ui, name, interactive=interactive, secrets=secrets,
                      silence=silence if tls is None else None)
    if session.reconnect_failed and code == EXIT_LOST:
        print(f"geventchat: could not reconnect within {reconnect_timeout:g} s",
              file=sys.stderr, flush=True)
    elif not session.gave_up and code in (EXIT_LOST, EXIT_KICKED):
        print("connection closed by server", file=sys.stderr, flush=True)
    return code
