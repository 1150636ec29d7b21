"""The server under test: start one (or find a running one) and watch its CPU and memory.

The bench starts its own server by default so every run begins from the same state: an
empty history in a temporary directory, no rate limit (the limiter would otherwise be
what we measure), and a descriptor limit raised to fit the clients. For a baseline it can
start a Redis server the same way (no persistence, loopback only, enough clients).
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
LISTENING_RE = re.compile(r"listening on ([0-9.]+):(\d+)")
REDIS_READY_RE = re.compile(r"Ready to accept connections")
REDIS_PORT_TAKEN = "Address already in use"
REDIS_PORT_TRIES = 5  # a picked free port can be taken before redis binds it
START_TIMEOUT_S = 20.0
FD_MARGIN = 64  # listener, history file, logging, epoll, ... beyond one fd per client


class TargetError(RuntimeError):
    """The server could not be started or found."""


class TargetUnavailable(TargetError):
    """The server program is not installed: a comparison skips it instead of failing."""


def default_server_cmd() -> list[str]:
    return [sys.executable, "-m", "geventchat", "serve"]


def _nofile_raiser(wanted: int) -> Callable[[], None]:
    """A preexec_fn giving the child ``wanted`` descriptors, or as many as the hard limit."""

    def raise_limit() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    return raise_limit


def nofile_warning(pid: int | None, clients: int) -> str | None:
    """Say so when the server can't hold ``clients`` connections (its RLIMIT_NOFILE)."""
    if pid is None:
        return None
    try:
        soft, hard = psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)
    except (psutil.Error, AttributeError):
        return None
    if soft == resource.RLIM_INFINITY or soft >= clients + FD_MARGIN:
        return None
    return (
        f"server descriptor limit is {soft} (hard {hard}) but {clients} clients need "
        f"about {clients + FD_MARGIN}: raise the hard limit (ulimit -Hn as root, "
        "limits.conf, or docker run --ulimit nofile=N:N); expect failed connections"
    )


@dataclass
class Target:
    """Where the clients connect, and the server pid to watch when known."""

    host: str
    port: int
    pid: int | None
    started: bool = False
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    warnings: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)  # how we started it, when we did
    #: A cluster (``--nodes K --redis``): every node's port (clients are spread over
    #: them) and every process to watch, by name (nodes and Redis).
    ports: list[int] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    #: A cluster: each node's log, by the name in ``pids`` (its SIGUSR1 stats land there).
    log_tails: dict[str, deque[str]] = field(default_factory=dict)


_HELP_CACHE: dict[tuple[str, ...], str] = {}


def server_help(cmd: list[str]) -> str:
    """The server's --help text (cached), to learn which optional flags it has."""
    key = tuple(cmd)
    if key not in _HELP_CACHE:
        env = dict(os.environ, PYTHONPATH=pythonpath())
        try:
            proc = subprocess.run(
                cmd + ["--help"], cwd=REPO_ROOT, env=env, text=True, capture_output=True, timeout=30
            )
            _HELP_CACHE[key] = proc.stdout + proc.stderr
        except (OSError, subprocess.TimeoutExpired):
            _HELP_CACHE[key] = ""
    return _HELP_CACHE[key]


def optional_flags(cmd: list[str], max_clients: int) -> tuple[list[str], list[str]]:
    """``--rate-limit 0`` and ``--max-clients N`` when the server has them, and warnings.

    Passing a flag the server lacks would make it exit at once, so each is probed first;
    a missing one is reported, because a server with a built-in limiter but no way to
    turn it off would be measuring its limiter.
    """
    text = server_help(cmd)
    args: list[str] = []
    warnings: list[str] = []
    for flag, value in (("--rate-limit", "0"), ("--max-clients", str(max_clients))):
        if not text or flag in text:
            args += [flag, value]
        else:
            warnings.append(f"server has no {flag} option: started without {flag} {value}")
    return args, warnings


def pythonpath() -> str:
    """The repo first, so ``-m geventchat`` is this checkout even when not installed."""
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)


class ServerProcess:
    """A server started for this run: temp history, no rate limit, enough descriptors."""

    def __init__(self, cmd: list[str], max_clients: int, extra: list[str] | None = None) -> None:
        self.cmd = cmd
        self.max_clients = max_clients
        self.extra = extra or []
        self.tmp = tempfile.TemporaryDirectory(prefix="geventchat-bench-")
        self.proc: subprocess.Popen[str] | None = None
        self.target: Target | None = None

    def __enter__(self) -> Target:
        history = Path(self.tmp.name) / "history.txt"
        extra, warnings = optional_flags(self.cmd, self.max_clients)
        args = ["--host", "127.0.0.1", "--port", "0", "--history", str(history), *extra,
                *self.extra]
        env = dict(os.environ, PYTHONPATH=pythonpath())
        self.proc = subprocess.Popen(
            self.cmd + args,
            cwd=REPO_ROOT,
            env=env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_nofile_raiser(self.max_clients + FD_MARGIN),
        )
        try:
            self.target = self._wait_listening()
        except BaseException:
            self.__exit__()
            raise
        self.target.warnings += warnings
        return self.target

    def _wait_listening(self) -> Target:
        """Read the log until "listening on HOST:PORT"; port 0 means we must parse it."""
        assert self.proc
        m, tail = wait_for_log(self.proc, LISTENING_RE, "listening on HOST:PORT")
        return Target(m[1], int(m[2]), self.proc.pid, True, tail)

    def __exit__(self, *exc: object) -> None:
        """SIGTERM (graceful shutdown per PROTOCOL.md section 6), then SIGKILL if stuck."""
        stop_process(self.proc)
        self.tmp.cleanup()


def wait_for_log(
    proc: subprocess.Popen[str], pattern: re.Pattern[str], what: str
) -> tuple[re.Match[str], deque[str]]:
    """Read a starting server's log until ``pattern`` matches; the match and the log tail.

    A thread keeps draining the log for the server's whole life, so a chatty server never
    blocks on a full pipe in the middle of a run.
    """
    assert proc.stdout
    tail: deque[str] = deque(maxlen=40)
    found: list[re.Match[str]] = []

    def reader() -> None:
        assert proc.stdout
        for line in proc.stdout:
            tail.append(line.rstrip())
            m = pattern.search(line)
            if m and not found:
                found.append(m)

    threading.Thread(target=reader, daemon=True, name="server-log").start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not found:
        if proc.poll() is not None:
            time.sleep(0.05)  # let the reader catch the last lines (the reason it exited)
            raise TargetError(f"server exited with code {proc.returncode}:\n" + "\n".join(tail))
        if time.monotonic() > deadline:
            raise TargetError(
                f"server did not log {what!r} within {START_TIMEOUT_S:.0f}s:\n" + "\n".join(tail)
            )
        time.sleep(0.02)
    return found[0], tail


def stop_process(proc: subprocess.Popen[str] | None) -> None:
    """SIGTERM the server we started (by its pid), then SIGKILL if it is stuck."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- Redis, the baseline ----


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (redis-server has no --port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redis_binary(cmd: str) -> str:
    """The redis-server executable, or TargetUnavailable saying how to get one."""
    path = shutil.which(cmd)
    if path is None:
        raise TargetUnavailable(
            f"{cmd} not found: install Redis (apt-get install redis-server) or pass "
            "--redis-server PATH"
        )
    return path


def redis_version(binary: str) -> str | None:
    """The version (e.g. 7.0.15) from ``redis-server --version``, for the report."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"v=(\S+)", out)
    return m[1] if m else None


def redis_args(port: int, max_clients: int, workdir: str) -> list[str]:
    """Stock Redis, loopback only, with nothing written to disk and room for every client."""
    return [
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", workdir,
        "--maxclients", str(max_clients),
        "--daemonize", "no",
        "--logfile", "",
    ]  # fmt: skip


class RedisProcess:
    """A redis-server started for this run on a free loopback port; killed afterwards."""

    def __init__(self, cmd: str, max_clients: int) -> None:
        self.binary = redis_binary(cmd)
        self.max_clients = max_clients
        self.tmp = tempfile.TemporaryDirectory(prefix="geventchat-bench-redis-")
        self.proc: subprocess.Popen[str] | None = None
        self.command: list[str] = []

    def __enter__(self) -> Target:
        try:
            for _ in range(REDIS_PORT_TRIES):
                tgt = self._start(free_port())
                if tgt is not None:
                    return tgt
        except BaseException:
            self.__exit__()
            raise
        self.__exit__()
        raise TargetError(f"redis-server found no free port in {REDIS_PORT_TRIES} tries")

    def _start(self, port: int) -> Target | None:
        """Start on ``port``; None when someone took the port first (so try another)."""
        self.command = [self.binary, *redis_args(port, self.max_clients, self.tmp.name)]
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.tmp.name,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_nofile_raiser(self.max_clients + FD_MARGIN),
        )
        try:
            _, tail = wait_for_log(self.proc, REDIS_READY_RE, "Ready to accept connections")
        except TargetError as exc:
            if REDIS_PORT_TAKEN in str(exc):
                return None
            raise
        return Target("127.0.0.1", port, self.proc.pid, True, tail, command=self.command)

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc)
        self.tmp.cleanup()


class ClusterProcesses:
    """A Redis server and ``nodes`` geventchat nodes on it (``--nodes K --redis``); the
    clients are spread over the nodes, and every process's CPU is reported."""

    def __init__(self, cmd: list[str], redis_cmd: str, max_clients: int, nodes: int) -> None:
        self.cmd = cmd
        self.redis = RedisProcess(redis_cmd, max_clients=nodes * 4 + 100)
        self.nodes = nodes
        self.max_clients = max_clients
        self.servers: list[ServerProcess] = []

    def __enter__(self) -> Target:
        try:
            redis = self.redis.__enter__()
            url = f"redis://127.0.0.1:{redis.port}/0"
            targets = []
            for i in range(self.nodes):
                server = ServerProcess(self.cmd, self.max_clients,
                                       ["--redis", url, "--node-name", f"n{i}"])
                self.servers.append(server)
                targets.append(server.__enter__())
        except BaseException:
            self.__exit__()
            raise
        first = targets[0]
        pids = {f"node{i}": t.pid for i, t in enumerate(targets) if t.pid}
        pids["redis"] = redis.pid
        return Target(first.host, first.port, first.pid, True, first.log_tail,
                      command=self.cmd + ["--redis", url], ports=[t.port for t in targets],
                      pids=pids,
                      log_tails={f"node{i}": t.log_tail for i, t in enumerate(targets)})

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.__exit__()
        self.redis.__exit__()


def find_listener_pid(port: int) -> int | None:
    """The pid listening on ``port``, when this user may see it (else None)."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    except (psutil.Error, PermissionError):
        pass
    return None


def parse_server_cmd(text: str | None) -> list[str]:
    return shlex.split(text) if text else default_server_cmd()


def system_cpu() -> dict[str, float]:
    """All cores' CPU seconds since boot: process time, kernel softirq, and total busy.

    Loopback TCP does much of its receive work in softirq, which is charged to no process:
    at millions of deliveries/s it is a sizeable third consumer of the shared cores.
    """
    t = psutil.cpu_times()
    process = t.user + t.nice + t.system
    softirq = getattr(t, "softirq", 0.0) + getattr(t, "irq", 0.0)
    return {
        "process": process,
        "softirq": softirq,
        "busy": process + softirq + getattr(t, "steal", 0.0),
    }


class Monitor:
    """Samples the server's RSS (10 Hz) and reads its CPU time at the start and stop."""

    INTERVAL_S = 0.1

    def __init__(self, pid: int | None) -> None:
        self.proc = None
        if pid is not None:
            try:
                self.proc = psutil.Process(pid)
            except psutil.Error:
                self.proc = None
        self.peak_rss = 0
        self.cpu_start = self.cpu_end = 0.0
        # All cores, to see the kernel's share and other people's load.
        self.system_start: dict[str, float] = {}
        self.system: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="rss-sampler")
        self._thread.start()

    def rss(self) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.memory_info().rss
        except psutil.Error:
            return None

    def cpu(self) -> float:
        """User + system CPU seconds of the server (all its threads)."""
        if self.proc is None:
            return 0.0
        try:
            times = self.proc.cpu_times()
        except psutil.Error:
            return 0.0
        return times.user + times.system

    @staticmethod
    def process_cpu(pid: int) -> float:
        """User + system CPU seconds of any process (a worker), 0 if it is gone."""
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return 0.0
        return times.user + times.system

    def hwm(self) -> int | None:
        """The kernel's own peak RSS (VmHWM), which catches spikes between samples."""
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return None

    def _sample(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            rss = self.rss()
            if rss:
                self.peak_rss = max(self.peak_rss, rss)

    def start_cpu(self) -> None:
        self.cpu_start = self.cpu()
        self.system_start = system_cpu()

    def stop_cpu(self) -> float:
        """Server CPU seconds used since ``start_cpu``."""
        self.cpu_end = self.cpu()
        end = system_cpu()
        self.system = {k: end[k] - self.system_start[k] for k in end}
        return self.cpu_end - self.cpu_start

    def close(self) -> dict[str, float | int | None]:
        """Stop sampling; return the peak RSS figures in bytes."""
        self._stop.set()
        self._thread.join()
        hwm = self.hwm()
        peak = max(self.peak_rss, hwm or 0) or None
        return {"peak_rss": peak, "sampled_peak_rss": self.peak_rss or None, "vm_hwm": hwm}
