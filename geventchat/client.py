"""The geventchat terminal client: ``geventchat connect``.

The server does all the work (see docs/PROTOCOL.md); this client only has to be pleasant
and predictable:

* One reader thread owns the receiving side of the socket and shows every server line; the
  main thread owns input. Blocking sockets and threads are enough for one connection, and
  keep gevent (and its monkey-patching) out of the client.
* On a terminal, input goes through a prompt_toolkit ``PromptSession`` under
  ``patch_stdout`` so incoming lines are drawn above the prompt and never clobber what the
  user is typing. Off a terminal (a pipe, a file, a test), the client is a plain line
  filter: stdin lines go to the server, server lines go to stdout, flushed one by one.
* The pure helpers (``classify``, ``style_for``, ``render``, ``is_quit`` ...) hold every
  rule about server lines, so they can be tested without a socket or a terminal.

Exit codes tell a script what happened: 0 when the user left, 1 when the connection was
lost (or refused), 2 when the server shut down, 3 when we were kicked.
"""

from __future__ import annotations

import asyncio
import enum
import os
import queue
import re
import select
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from prompt_toolkit.application import Application, get_app
from prompt_toolkit.buffer import Buffer
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

EXIT_OK = 0
EXIT_LOST = 1
EXIT_SHUTDOWN = 2
EXIT_KICKED = 3

# ANSI SGR: enough for colour on any terminal, and trivially stripped by tests.
_RESET = "\x1b[0m"
_BOLD = "1"

_JOINED = re.compile(r"\* (\S+) joined")
_KICKED = re.compile(r"\* (\S+) was kicked by \S+(?:: .*)?")
_SHUTDOWN = re.compile(r"\* server shutting down: (.*)")
_RENAMED = re.compile(r"\* (\S+) is now known as (\S+)")
# A chat line: a name (never a space, ``*``, ``!``, ``?``, ``(`` or ``:``), then ``: ``.
_CHAT = re.compile(r"([^\s*!?(:]+): ")


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


class ConnectionGone(Exception):
    """The server closed the connection while the main thread was waiting on the user."""


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

    def show(self, text: str) -> None:
        """Display one line; called from the reader thread."""

    def interrupt(self) -> None:
        """Wake a pending :meth:`ask` because the connection is gone (any thread)."""


# Reader -> main thread events during registration: a server prompt line, or these.
_JOINED_EVENT = "joined"
_CLOSED_EVENT = "closed"


class Session:
    """One connection: the reader thread, what it learnt, and the exit code it implies."""

    def __init__(self, sock: socket.socket, ui: Ui, colour: bool, echo_prompts: bool) -> None:
        self._sock = sock
        self._ui = ui
        self._colour = colour
        self._echo_prompts = echo_prompts  # a pipe shows ``? name:``; a terminal asks itself
        self._events: queue.Queue[str] = queue.Queue()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="reader", daemon=True)
        self.name: str | None = None  # the name we asked for, then the one we hold
        self.registered = False
        self.user_quit = False
        self.kicked = False
        self.last_line: str | None = None  # a shutdown notice here means the server stopped

    def start(self) -> None:
        """Start reading; lines are shown from now on."""
        self._reader.start()

    def _read_loop(self) -> None:
        """Reader thread body: show every line, note what matters, wake the main thread."""
        splitter = LineSplitter()
        try:
            while data := self._sock.recv(RECV_SIZE):
                for line in splitter.feed(data):
                    self._on_line(line)
            tail = splitter.rest()
            if tail:
                self._on_line(tail)
        except OSError:
            pass  # reset or closed under us: the same as an orderly close for the user
        finally:  # whatever happened, the main thread must learn that reading is over
            self._closed.set()
            self._events.put(_CLOSED_EVENT)
            self._ui.interrupt()

    def _on_line(self, line: str) -> None:
        """Track registration, renames and kicks; show the line."""
        self.last_line = line
        kind = classify(line)
        if kind is Kind.PROMPT and not self.registered:
            self._events.put(line)
            if self._echo_prompts:
                self._ui.show(render(line, self.name, self._colour))
            return
        self._track(line)
        self._ui.show(render(line, self.name, self._colour))
        if not self.registered and same_name(joined_name(line), self.name):
            self.registered = True
            self._events.put(_JOINED_EVENT)

    def _track(self, line: str) -> None:
        """Update our view of the session from a notice that concerns us."""
        if joined_name(line) and same_name(joined_name(line), self.name):
            self.name = joined_name(line)  # the server's spelling (NFKC) for the prompt
        elif (change := renamed(line)) and self.registered and same_name(change[0], self.name):
            self.name = change[1]
        elif same_name(kicked_name(line), self.name) and self.registered:
            self.kicked = True

    def next_event(self) -> str:
        """Block for the next registration event; raise ConnectionGone when closed."""
        event = self._events.get()
        if event == _CLOSED_EVENT:
            raise ConnectionGone
        return event

    def send(self, line: str) -> None:
        """Send one line. A failure is left to the reader, which sees the close too."""
        try:
            self._sock.sendall(line.encode("utf-8") + b"\n")
        except OSError:
            pass

    def submit(self, line: str) -> None:
        """Send a line typed at the chat prompt (``ask`` calls this as soon as it is
        accepted). A quit command is sent too and marks the session as left by the user;
        an empty line is not sent."""
        if is_quit(line):
            self.user_quit = True
        if line:
            self.send(line)

    def quit(self, line: str = "/quit") -> None:
        """Leave on the user's request: send ``line`` and give the server time to say bye."""
        self.user_quit = True
        self.send(line)
        self.wait_closed()

    def wait_closed(self) -> None:
        """Give the server time to say goodbye and close (after a quit was sent)."""
        self._closed.wait(QUIT_WAIT)

    def finish(self) -> int:
        """Close the socket, let the reader print what it holds; return the exit code."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if self._reader.is_alive():
            self._reader.join(READER_JOIN)
        return self.exit_code()

    def exit_code(self) -> int:
        """0 if the user left; otherwise why the server ended the session."""
        if self.user_quit:
            return EXIT_OK
        # The shutdown notice is the server's last word, so only the last line counts: a
        # user named ``server`` can say ``/me shutting down: ...`` (and the history keeps it
        # for every newcomer), but can't close our connection right after it.
        if self.last_line is not None and shutdown_reason(self.last_line) is not None:
            return EXIT_SHUTDOWN
        if self.kicked:
            return EXIT_KICKED
        return EXIT_LOST


def _register(session: Session, ui: Ui, preset: str | None) -> bool:
    """Answer the server's prompts until it says we joined; False if the user gave up."""
    while True:
        event = session.next_event()
        if event == _JOINED_EVENT:
            return True
        asks_name = prompt_label(event).startswith("name")
        if asks_name and preset is not None:
            answer: str | None = preset
            preset = None  # only the first time: a refused name is the user's to fix
        else:
            answer = ui.ask(prompt_label(event), secret=is_secret(event))
        if answer is None:
            return False
        if asks_name:
            session.name = answer.strip()
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


def _drive(session: Session, ui: Ui, preset: str | None) -> int:
    """The whole session: register, chat, leave; returns the exit code."""
    session.start()
    try:
        if _register(session, ui, preset):
            _chat(session, ui)
        else:
            session.user_quit = True
    except KeyboardInterrupt:
        if session.registered:
            session.quit()
        else:
            session.user_quit = True
    except ConnectionGone:
        pass
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
        self._wake_r, self._wake_w = os.pipe()
        self._out_lock = threading.Lock()

    def ask(
        self,
        label: str | Callable[[], str],
        secret: bool = False,
        submit: Callable[[str], None] | None = None,
    ) -> str | None:
        """The next stdin line (the label is not shown: the server's prompt line was)."""
        while not self._lines:
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

    def show(self, text: str) -> None:
        """Write and flush one line, so a consumer sees it at once."""
        data = (text + "\n").encode("utf-8", errors="replace")  # the wire's encoding, always
        with self._out_lock:
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except (OSError, ValueError):
                pass  # nobody is reading our output any more; keep the session going

    def interrupt(self) -> None:
        """Wake a pending :meth:`ask` through the wake-up pipe."""
        self._gone = True
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
    """

    def __init__(self) -> None:
        # The env var also covers any output prompt_toolkit might create implicitly.
        os.environ["PROMPT_TOOLKIT_NO_CPR"] = "1"
        self._output = create_output()
        if hasattr(self._output, "enable_cpr"):
            self._output.enable_cpr = False
        self._lock = threading.Lock()
        self._gone = False
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
            self._chat_session = PromptSession(output=self._output)
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
        with self._lock:
            if self._gone:
                raise ConnectionGone
        session = self._chat_session
        if session is None or not callable(label):
            session = PromptSession(output=self._output)
        submitted: list[str] = []

        def on_accept(text: str) -> None:
            submitted.append(text)
            if submit is not None:
                submit(text)

        try:
            with _on_accept(session.default_buffer, on_accept):
                line = session.prompt(label, is_password=secret, pre_run=self._arm)
        except (EOFError, KeyboardInterrupt):
            return None
        finally:
            with self._lock:
                self._app = self._loop = None
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

    def show(self, text: str) -> None:
        """Display one line (reader thread): at once, or via the running prompt's loop."""
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

    def interrupt(self) -> None:
        """End a running prompt with ConnectionGone; later prompts raise it at once."""
        with self._lock:
            self._gone = True
            if self._loop is not None:
                self._call_in_loop(_exit_app, self._app)


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


def run(host: str, port: int, name: str | None) -> int:
    """Connect to a geventchat server and chat until someone leaves; return the exit code.

    ``name`` answers the server's first name prompt; without it the user is asked (on a
    pipe, the first stdin line is the name). Interactive only when stdin and stdout are
    both terminals, so ``printf 'alice\\nhi\\n' | geventchat connect`` works as a filter.
    """
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        print(f"cannot connect to {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_LOST
    sock.settimeout(None)
    # One write per line: Nagle could only hold a line back (up to a delayed-ACK timeout,
    # ~40 ms) when it follows the previous one closely, as in a paste or fast typing.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (or not supported): nothing to tune
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    ui: TtyUi | PipeUi = TtyUi() if interactive else PipeUi()
    session = Session(sock, ui, colour_enabled(sys.stdout), echo_prompts=not interactive)
    with ui.active():
        code = _drive(session, ui, name)
    if code == EXIT_LOST or code == EXIT_KICKED:
        print("connection closed by server", file=sys.stderr, flush=True)
    return code
