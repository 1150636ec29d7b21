"""Build and drive the load-generator worker processes (C ``genclient`` or ``pyclient.py``).

Workers are separate processes so the generator can use more than one core and more
descriptors than one process may hold; the orchestrator moves them through the phases of
a run together (the barrier that makes "all clients registered before anyone sends"
true across processes) by writing commands to their stdin and reading their stdout.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
C_SOURCE = BENCH_DIR / "genclient.c"
BUILD_DIR = BENCH_DIR / "_build"
C_BINARY = BUILD_DIR / "genclient"
CFLAGS = ["-O2", "-Wall", "-Wextra"]


class WorkerError(RuntimeError):
    """A worker died, misbehaved or timed out; the run can't be trusted."""


class CollectTimeout(WorkerError):
    """Some worker did not reach the expected phase in time."""


def have_gcc() -> bool:
    return shutil.which("gcc") is not None


def build_genclient() -> Path:
    """Compile genclient.c on first use (or when it changed) into bench/_build/.

    The compile goes to a temporary name and is renamed into place, so two benches
    started at once never run a half-written binary.
    """
    if C_BINARY.exists() and C_BINARY.stat().st_mtime >= C_SOURCE.stat().st_mtime:
        return C_BINARY
    if not have_gcc():
        if C_BINARY.exists():
            print(
                "warning: genclient.c changed but gcc is missing: using the old build",
                file=sys.stderr,
            )
            return C_BINARY
        raise WorkerError("gcc not found: use --engine python")
    BUILD_DIR.mkdir(exist_ok=True)
    tmp = BUILD_DIR / f"genclient.{os.getpid()}.tmp"
    cmd = ["gcc", *CFLAGS, "-o", str(tmp), str(C_SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WorkerError(f"compiling genclient.c failed:\n{proc.stderr}")
    if proc.stderr.strip():
        print(f"warning: gcc: {proc.stderr.strip()}", file=sys.stderr)
    tmp.replace(C_BINARY)
    return C_BINARY


def engine_command(engine: str) -> list[str]:
    """The command that starts one worker of ``engine`` ("c" or "python")."""
    if engine == "c":
        return [str(build_genclient())]
    return [sys.executable, str(BENCH_DIR / "pyclient.py")]


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker is asked to do: its share of the clients and of the senders."""

    clients: int
    senders: int
    sender_base: int
    prefix: str
    sync_sender: bool
    observers: int = 0  # clients that time every line (C engine)


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def plan_workers(
    clients: int, senders: int, workers: int, run_id: str, observers: int = 0
) -> list[WorkerPlan]:
    """Spread clients, senders and observers evenly; worker 0's first client syncs."""
    workers = max(1, min(workers, clients))
    plans = []
    base = 0
    shares = zip(
        split_evenly(clients, workers),
        split_evenly(senders, workers),
        split_evenly(observers, workers),
        strict=True,
    )
    for i, (n, s, o) in enumerate(shares):
        plans.append(WorkerPlan(n, s, base, f"b{run_id}w{i}c", i == 0, o))
        base += s
    return plans


def worker_args(
    plan: WorkerPlan,
    host: str,
    port: int,
    sync_name: str,
    sync_token: str,
    window: int,
    rate_per_sender: float,
    pad: int,
    sources: list[str],
    proto: str = "line",
    eager_name: bool = False,
) -> list[str]:
    """Command-line options shared by both engines (``proto`` "redis": the C engine only)."""
    args = [
        "--host",
        host,
        "--port",
        str(port),
        "--clients",
        str(plan.clients),
        "--prefix",
        plan.prefix,
        "--senders",
        str(plan.senders),
        "--sender-base",
        str(plan.sender_base),
        "--pad",
        str(pad),
        "--sync-name",
        sync_name,
        "--sync-token",
        sync_token,
    ]
    if plan.senders:
        args += ["--window", str(window)] if window else ["--rate", repr(rate_per_sender)]
    if sources:
        args += ["--sources", ",".join(sources)]
    if plan.sync_sender:
        args.append("--sync-sender")
    if proto != "line":
        args += ["--proto", proto]
    if plan.observers:
        args += ["--observers", str(plan.observers)]
    if eager_name and proto == "line":
        args.append("--eager-name")
    return args


ProgressFn = Callable[[int, list[str]], None]


class WorkerGroup:
    """The running workers, with a line reader over all their stdouts at once."""

    def __init__(self, commands: list[list[str]]) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.selector = selectors.DefaultSelector()
        self.buffers: dict[int, bytes] = {}
        for i, cmd in enumerate(commands):
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert proc.stdout is not None
            os.set_blocking(proc.stdout.fileno(), False)
            self.selector.register(proc.stdout, selectors.EVENT_READ, i)
            self.buffers[i] = b""
            self.procs.append(proc)
        self.pids = [p.pid for p in self.procs]

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def broadcast(self, command: str) -> None:
        """Send one command line to every worker."""
        for proc in self.procs:
            assert proc.stdin is not None
            try:
                proc.stdin.write(command.encode() + b"\n")
                proc.stdin.flush()
            except BrokenPipeError as exc:
                raise WorkerError(f"worker {proc.pid} exited early") from exc

    def poll(self, timeout: float) -> list[tuple[int, str]]:
        """Lines that arrived within ``timeout`` seconds, as (worker index, line)."""
        lines = []
        for key, _ in self.selector.select(timeout):
            i = key.data
            chunk = os.read(key.fd, 1 << 20)
            if not chunk:
                code = self.procs[i].wait()
                raise WorkerError(f"worker {i} (pid {self.pids[i]}) exited with code {code}")
            *complete, self.buffers[i] = (self.buffers[i] + chunk).split(b"\n")
            lines += [(i, line.decode()) for line in complete]
        return lines

    def collect(
        self,
        prefix: str,
        timeout: float,
        progress: ProgressFn | None = None,
        got: dict[int, str] | None = None,
    ) -> list[str]:
        """Wait until every worker printed a line starting with ``prefix``.

        Progress lines ("r ..." while connecting, "p ..." while running) go to
        ``progress`` meanwhile. Returns each worker's line with the prefix removed. Lines
        already received are kept in ``got`` (when given), so a caller can react to a
        timeout and then collect the rest.
        """
        got = {} if got is None else got
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(len(self.procs))) - set(got))
                raise CollectTimeout(
                    f"timed out after {timeout:.0f}s waiting for {prefix!r} "
                    f"from worker(s) {missing}"
                )
            for i, line in self.poll(min(left, 0.25)):
                if line.startswith(prefix):
                    got[i] = line[len(prefix) :].strip()
                elif line[:2] in ("r ", "p ") and progress:
                    progress(i, line.split()[1:])
        return [got[i] for i in range(len(self.procs))]

    def collect_json(self, timeout: float) -> list[dict[str, object]]:
        """Every worker's result line, parsed."""
        return [json.loads("{" + rest) for rest in self.collect("{", timeout)]

    def close(self) -> None:
        """Ask the workers to quit, then make sure they are gone."""
        for proc in self.procs:
            try:
                if proc.stdin:
                    proc.stdin.write(b"quit\n")
                    proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self.selector.close()
