r"""Shared fixtures: real ``geventchat`` processes for end-to-end tests.

Fixtures (all function-scoped, every process is cleaned up at teardown):

``server(*, admins=None, history_replay=None, args=()) -> Server``
    Factory: starts ``python -m geventchat serve --host 127.0.0.1 --port 0`` with history and
    admins files in ``tmp_path`` and returns once the ``listening on HOST:PORT`` log line
    came (or fails the test). ``admins`` is ``{name: password}``, created with
    ``geventchat admin add`` before the start. See :class:`Server` for ``.port``,
    ``.history``, ``.admins``, ``.proc``, ``.restart()`` (graceful stop, then the same port
    and files again), ``.stop(sig)``, ``.wait()``, ``.log`` (stderr lines) and
    ``.add_admin()``. Extra ``serve`` flags go in ``args``. Teardown: SIGTERM, wait,
    SIGKILL after a timeout.

``client(name=None, *, port=None, env=None, args=()) -> Term``
    Factory: spawns ``python -m geventchat connect 127.0.0.1 --port P [--name NAME]`` on a
    pseudo terminal (pexpect, 24x200, ``NO_COLOR=1``, ``TERM=xterm``). ``port`` defaults to
    the last server started by ``server``. ``env`` entries override the defaults (a None
    value removes the variable). Teardown kills clients that are still running.
    A :class:`Term` has ``expect(regex)``, ``expect_literal(text)``, ``send(keys)``,
    ``sendline(text)`` (text + CR, as the Enter key), ``expect_exit() -> status`` (EOF, then
    waits until the process is really gone; ``-SIG`` if killed), ``kill(sig)``, and the
    transcripts ``.raw`` and ``.visible``.

``pipe_client(name=None, *, input, port=None, env=None, args=()) -> CompletedProcess``
    Runs the same client command with ``input`` on a stdin pipe and stdout/stderr captured
    (no terminal at all) and returns when it exits (``TimeoutExpired`` after
    ``STOP_TIMEOUT``).

``pipe_process(name=None, *, port=None, env=None, args=()) -> Popen``
    The same command with stdin, stdout and stderr as text pipes, for a conversation over
    pipes; killed at teardown if still running.

``uid(prefix) -> str``
    A short token unique to the test run (``prefix_3f9ac1``): valid as a user name (it
    stays under 32 characters) and unmistakable as a message text.

Escape codes: a terminal client's output is full of them (prompt_toolkit redraws, cursor
moves, bold even under NO_COLOR), and they can land in the middle of text a test wants to
match. :class:`Term` therefore does not use pexpect's ``expect`` on raw output: it reads
everything into a transcript (``Term.raw``) and matches regexes against its *visible* text
(``Term.visible``), made by :func:`visible_text`, a crude terminal model that is enough
for line-based output:

* a cursor jump (back, up, down, to a column or position), an erase and a bare ``\r``
  become a line break: a redraw or an overwritten prompt starts a new visible line, so
  ``^``/``$`` (regexes are ``re.MULTILINE``) still match whole server lines;
* a cursor-forward becomes one space: prompt_toolkit draws the blank after ``alice>`` that
  way, so match ``alice>\s*text`` rather than ``alice> text``;
* every other sequence (colour, bold, modes, OSC titles) vanishes.

Each ``expect`` consumes the visible text up to its match, like pexpect does, and
``Term.visible`` keeps everything ever shown, for "never appeared" assertions. An escape
sequence cut by a read boundary is held back until it is complete, so a half-received
``ESC[3`` can never be matched as text.

Nothing here answers cursor position requests (``ESC[6n``): the client must not depend on
them, and ``Term.raw`` lets a test check that it never asks.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pexpect
import pytest

from tests.helpers import ServerProcess

#: The checkout under test (``tests/..``), put first on PYTHONPATH of every child process:
#: the package is not necessarily installed, and an installed copy must not be tested.
REPO_ROOT = Path(__file__).absolute().parent.parent

#: Seconds for a server to log ``listening on``: a cold Python start plus gevent import.
START_TIMEOUT = 15.0
#: Seconds for a process to exit after SIGTERM (or after it was told to quit).
STOP_TIMEOUT = 10.0
#: Default seconds for one ``Term.expect``; generous because CI machines stall.
EXPECT_TIMEOUT = 10.0

_LISTENING = re.compile(r"listening on (\S+):(\d+)")

# CSI (ESC [ params final), OSC (ESC ] ... BEL or ST), and two-character escapes (ESC x).
_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[^\[\]]")
# CSI finals that move the cursor somewhere else or erase: up, down, back, next/previous
# line, column, position, erase display, erase line.
_JUMPS = frozenset("ABDEFGHJKfd")
# What remains of an escape sequence whose end has not been read yet.
_PARTIAL_ESCAPE = re.compile(r"\x1b[^\x1b]*\Z")

_counter = itertools.count(1)


def make_uid(prefix: str = "t") -> str:
    """A run-unique token: a counter (ordering for humans) plus random hex (uniqueness)."""
    return f"{prefix}_{next(_counter)}{uuid.uuid4().hex[:6]}"


def _replace_escape(match: re.Match[str]) -> str:
    seq = match.group()
    if seq.startswith("\x1b[") and seq[-1] in _JUMPS:
        return "\n"
    if seq.startswith("\x1b[") and seq[-1] == "C":
        return " "
    return ""


def visible_text(raw: str) -> str:
    """``raw`` terminal output as text lines to match (see the module docstring)."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    return _ESCAPE.sub(_replace_escape, text)


def child_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Environment for child processes: this checkout first on the path, plain output.

    ``PROMPT_TOOLKIT_NO_CPR`` is removed so tests prove the client disables CPR itself.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.update(NO_COLOR="1", TERM="xterm", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PROMPT_TOOLKIT_NO_CPR", None)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def geventchat_argv(*args: str) -> list[str]:
    """``python -m geventchat ARGS`` with this interpreter."""
    return [sys.executable, "-m", "geventchat", *args]


class Server:
    """A real ``geventchat serve`` process on 127.0.0.1.

    ``log`` collects its stderr lines (a thread drains the pipe, so the server can never
    block on a full stderr). ``restart()`` stops it gracefully and starts it again on the
    same port with the same files, so history survives and clients use the same ``port``.
    """

    def __init__(self, directory: Path, history_replay: int | None, args: Sequence[str]):
        self.history = directory / "history.txt"
        self.admins = directory / "admins.json"
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self._history_replay = history_replay
        self._args = list(args)
        self._listening = threading.Event()
        self._drainer: threading.Thread | None = None

    def add_admin(self, name: str, password: str) -> None:
        """Create an admin account the way an operator does (password on stdin)."""
        done = subprocess.run(
            geventchat_argv("admin", "add", name, "--admins", str(self.admins)),
            input=password + "\n", capture_output=True, text=True, env=child_env(),
            timeout=STOP_TIMEOUT,
        )
        assert done.returncode == 0, f"admin add failed: {done.stdout}{done.stderr}"

    def start(self) -> None:
        """Start the process; return when it listens (its port is then in ``.port``)."""
        argv = geventchat_argv(
            "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--history", str(self.history), "--admins", str(self.admins), *self._args,
        )
        if self._history_replay is not None:
            argv += ["--history-replay", str(self._history_replay)]
        self._listening.clear()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=child_env(), cwd=self.history.parent,
        )
        self._drainer = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
        self._drainer.start()
        if not self._listening.wait(START_TIMEOUT):
            self.stop()
            pytest.fail("server did not log 'listening on' in time:\n" + "".join(self.log))

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(line)
            match = _LISTENING.search(line)
            if match and not self._listening.is_set():
                self.port = int(match.group(2))
                self._listening.set()

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit by itself; its exit status."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` and wait; SIGKILL if it does not exit in time. The exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        if self._drainer is not None:
            self._drainer.join(STOP_TIMEOUT)  # the log is complete once stderr hit EOF
        if proc.stderr is not None:
            proc.stderr.close()
        return proc.returncode

    def restart(self) -> None:
        """Graceful stop (SIGTERM, expecting exit 0), then start on the same port."""
        status = self.stop()
        assert status == 0, f"server exited {status} on SIGTERM:\n" + "".join(self.log)
        self.start()


class Term:
    """A process on a pseudo terminal, matched on visible text (see the module docstring)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], label: str) -> None:
        self.label = label
        self.child = pexpect.spawn(
            argv[0], list(argv[1:]), env=dict(env), encoding="utf-8", codec_errors="replace",
            timeout=EXPECT_TIMEOUT, dimensions=(24, 200), cwd=str(REPO_ROOT),
        )
        self.raw = ""  # every character the process wrote, escapes included
        self._pos = 0  # how far into the visible text ``expect`` has consumed
        self.eof = False

    @property
    def visible(self) -> str:
        """Everything shown so far, escapes and a trailing partial escape removed."""
        text = visible_text(self.raw)
        return _PARTIAL_ESCAPE.sub("", text)

    def _read(self, timeout: float) -> None:
        """Append what the process writes within ``timeout`` to ``raw`` (sets ``eof``)."""
        try:
            self.raw += self.child.read_nonblocking(65536, timeout=max(timeout, 0.01))
        except pexpect.TIMEOUT:
            pass
        except pexpect.EOF:
            self.eof = True

    def expect(self, pattern: str, timeout: float = EXPECT_TIMEOUT) -> re.Match[str]:
        """Wait until ``pattern`` shows up in the visible text; consume up to its end.

        ``pattern`` is a regex compiled with ``re.MULTILINE`` (``^``/``$`` match at lines).
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.visible, self._pos)
            if match:
                self._pos = match.end()
                return match
            if self.eof or time.monotonic() >= deadline:
                why = "exited" if self.eof else f"timed out after {timeout}s"
                pytest.fail(
                    f"[{self.label}] {why} waiting for {pattern!r}; unmatched screen text:\n"
                    f"{self.visible[self._pos:][-2000:]}"
                )
            self._read(deadline - time.monotonic())

    def expect_literal(self, text: str, timeout: float = EXPECT_TIMEOUT) -> re.Match[str]:
        """:meth:`expect` for a plain string."""
        return self.expect(re.escape(text), timeout)

    def send(self, text: str) -> None:
        """Type ``text`` (no Enter)."""
        self.child.send(text)

    def sendline(self, text: str = "") -> None:
        """Type ``text`` and Enter. A terminal's Enter key sends CR, so this does too."""
        self.child.send(text + "\r")

    def expect_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for EOF and for the process to be really gone; its exit status.

        (pexpect's ``close()`` would kill a child still exiting; this waits instead.)
        """
        deadline = time.monotonic() + timeout
        while not self.eof:
            if time.monotonic() >= deadline:
                pytest.fail(f"[{self.label}] still running after {timeout}s:\n"
                            f"{self.visible[-2000:]}")
            self._read(deadline - time.monotonic())
        while self.child.isalive():
            if time.monotonic() >= deadline:
                pytest.fail(f"[{self.label}] output closed but process still alive")
            time.sleep(0.02)
        if self.child.signalstatus is not None:
            return -self.child.signalstatus
        return self.child.exitstatus

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal to the process (SIGKILL: a dropped connection, no goodbye)."""
        self.child.kill(sig)

    def terminate(self) -> None:
        """Teardown: make sure the process is gone."""
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close(force=True)


@pytest.fixture
def uid() -> Callable[[str], str]:
    """Factory of run-unique tokens; see :func:`make_uid`."""
    return make_uid


class ServerFactory:
    """What the ``server`` fixture yields: call it to start a server (see the docstring)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self.started: list[Server] = []

    def __call__(
        self,
        *,
        admins: Mapping[str, str] | None = None,
        history_replay: int | None = None,
        args: Sequence[str] = (),
    ) -> Server:
        directory = self._directory / f"server{len(self.started)}"
        directory.mkdir()
        srv = Server(directory, history_replay, args)
        for name, password in (admins or {}).items():
            srv.add_admin(name, password)
        self.started.append(srv)
        srv.start()
        return srv

    def client_argv(self, name: str | None, port: int | None, args: Sequence[str]) -> list[str]:
        """``geventchat connect`` argv for ``port`` (default: the last server started)."""
        if port is None:
            assert self.started, "start a server (or pass port=) before a client"
            port = self.started[-1].port
        argv = geventchat_argv("connect", "127.0.0.1", "--port", str(port), *args)
        if name is not None:
            argv += ["--name", name]
        return argv

    def stop_all(self) -> None:
        for srv in self.started:
            srv.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Factory of real servers; see the module docstring. All are stopped at teardown."""
    factory = ServerFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture
def pipe_client(server: ServerFactory) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Factory running a client on pipes to completion; see the module docstring."""

    def run(
        name: str | None = None,
        *,
        input: str,
        port: int | None = None,
        env: Mapping[str, str | None] | None = None,
        args: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            server.client_argv(name, port, args), input=input, capture_output=True,
            text=True, env=child_env(env), timeout=STOP_TIMEOUT, cwd=REPO_ROOT,
        )

    return run


@pytest.fixture
def pipe_process(server: ServerFactory) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Factory of clients on pipes, left running; see the module docstring."""
    started: list[subprocess.Popen[str]] = []

    def spawn(
        name: str | None = None,
        *,
        port: int | None = None,
        env: Mapping[str, str | None] | None = None,
        args: Sequence[str] = (),
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            server.client_argv(name, port, args), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(env),
            cwd=REPO_ROOT,
        )
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(STOP_TIMEOUT)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def client(server: ServerFactory) -> Iterator[Callable[..., Term]]:
    """Factory of terminal clients on a pty; see the module docstring."""
    spawned: list[Term] = []

    def spawn(
        name: str | None = None,
        *,
        port: int | None = None,
        env: Mapping[str, str | None] | None = None,
        args: Sequence[str] = (),
    ) -> Term:
        argv = server.client_argv(name, port, args)
        term = Term(argv, child_env(env), label=name or "client")
        spawned.append(term)
        return term

    yield spawn
    for term in spawned:
        term.terminate()


@pytest.fixture
def make_srv(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory for :class:`tests.helpers.ServerProcess` servers with extra flags, each in
    its own temp dir; every one is killed at teardown."""
    made: list[ServerProcess] = []

    def make(*extra: str, start: bool = True) -> ServerProcess:
        s = ServerProcess(tmp_path / f"s{len(made)}", *extra)
        s.tmp.mkdir()
        made.append(s)
        return s.start() if start else s

    yield make
    for s in made:
        s.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[object]:
    """A Redis (or Valkey) of the test's own on a free loopback port
    (``tests.redis_server.RedisServer``); stopped at teardown."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody may write to; skips where permission bits don't bind (root)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permission bits do not stop root from writing, "
                        "so a read-only directory can't be tested here")
        yield ro
    finally:
        ro.chmod(0o755)
