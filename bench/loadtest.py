"""Load benchmark for geventchat: fan-out throughput, latency, loss and server cost.

    python bench/loadtest.py --clients 1000 --senders 10 --window 8 --duration 10
    python bench/loadtest.py --sweep 10,100,1000,5000 --runs 3
    python bench/loadtest.py --idle 20000
    python bench/loadtest.py --compare redis --clients 1000 --senders 10 --window 8 --duration 8

Starts a server on a free loopback port (or targets --host/--port), connects simulated
clients through the real handshake in C (or Python) worker processes, waits until every
client is registered, lets some of them send, and checks that every client received every
line exactly once. --target redis runs the same workload against Redis pub/sub, and
--compare redis runs both in one invocation and prints their ratios. See bench/README.md
for the method and every flag.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import resource
import shlex
import shutil
import socket
import string
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

import bystander
import report
import soak
import target
import workers

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PORTS_PER_SOURCE = 20_000  # of ~28k ephemeral ports per address pair, leaving headroom
MAX_IDLE = 50_000
IDLE_SETTLE_S = 1.0  # let the server finish the last join broadcasts before reading RSS
REGISTER_STALL_S = 20.0  # no client registered or failed for this long: give up
TARGETS = ("geventchat", "redis")
PROTOCOLS = {"geventchat": "line", "redis": "redis"}  # genclient --proto per target


class BenchError(RuntimeError):
    """A setup problem (no server, no gcc, bad flags): exit 2, no figures."""


# ---- flags ----


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    load = p.add_argument_group("load")
    load.add_argument(
        "--clients",
        type=int,
        default=None,
        metavar="N",
        help="simulated clients, all registered before anyone sends (100; --soak: 2000)",
    )
    load.add_argument(
        "--senders",
        type=int,
        default=10,
        metavar="S",
        help="how many of the clients send (10; capped at --clients)",
    )
    load.add_argument(
        "--duration", type=float, default=10.0, metavar="D", help="seconds of sending (10)"
    )
    pace = load.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate", type=float, metavar="R", help="total lines/s over all senders (open loop)"
    )
    pace.add_argument(
        "--window",
        type=int,
        metavar="W",
        help="unechoed lines each sender may have in flight (closed loop; "
        "default 8 when --rate is not given)",
    )
    load.add_argument(
        "--size",
        type=int,
        default=0,
        metavar="BYTES",
        help="padding bytes appended to every line (0)",
    )
    gen = p.add_argument_group("generator")
    gen.add_argument(
        "--engine",
        choices=("auto", "c", "python"),
        default="auto",
        help="c: epoll worker compiled from genclient.c; python: pyclient.py; "
        "auto: c when gcc (or a built binary) is there (auto)",
    )
    gen.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the clients (1; raised when one "
        "process can't hold enough descriptors)",
    )
    gen.add_argument(
        "--observers",
        type=int,
        default=8,
        metavar="K",
        help="non-sending clients, spread over the join order, that time every line they "
        "get (8; C engine)",
    )
    gen.add_argument(
        "--eager-name",
        action="store_true",
        help="clients send their name right after connecting, as programs do, instead of "
        "waiting for the name prompt (the shared port waits --sniff-timeout for it)",
    )
    gen.add_argument(
        "--bystander",
        action="store_true",
        help="--idle: one more client, registered first, chats in the lobby during the "
        "storm and reports its echo latency (geventchat only)",
    )
    gen.add_argument(
        "--drain",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="after senders stop, wait up to this long for counts to match (5)",
    )
    gen.add_argument(
        "--register-timeout",
        type=float,
        metavar="SECONDS",
        help="give up registering after this long (60 + N/200)",
    )
    tgt = p.add_argument_group("server")
    tgt.add_argument(
        "--target",
        choices=TARGETS,
        default="geventchat",
        help="what to measure: geventchat, or Redis pub/sub with the same workload (geventchat)",
    )
    tgt.add_argument(
        "--compare",
        choices=("redis",),
        help="measure geventchat, then Redis pub/sub with the same workload (a "
        "redis-server started on a free port); print both and their ratios",
    )
    tgt.add_argument(
        "--redis-server",
        default="redis-server",
        metavar="CMD",
        help="the redis-server executable for --target/--compare redis (redis-server)",
    )
    tgt.add_argument(
        "--nodes",
        type=int,
        default=1,
        metavar="K",
        help="with --redis: start K geventchat nodes and spread the clients over them (1)",
    )
    tgt.add_argument(
        "--redis",
        action="store_true",
        help="cluster mode: start a redis-server and run the node(s) with --redis on it",
    )
    tgt.add_argument("--host", help="target a running server instead of starting one")
    tgt.add_argument("--port", type=int, help="its port (with --host; default 9999)")
    tgt.add_argument(
        "--server-pid",
        type=int,
        help="pid of a --host/--port server, for CPU and RSS (else looked up)",
    )
    tgt.add_argument(
        "--server-cmd",
        help="command that starts the server; the bench appends --host, "
        "--port 0, --history, --rate-limit 0, --max-clients "
        "(default: python -m geventchat serve)",
    )
    modes = p.add_argument_group("modes and output")
    modes.add_argument(
        "--sweep",
        metavar="N1,N2,...",
        help="run each client count; table and plot under bench/results/",
    )
    modes.add_argument(
        "--runs", type=int, default=1, help="repeat each point and report the median (1)"
    )
    modes.add_argument(
        "--idle",
        type=int,
        metavar="N",
        help=f"connect N idle clients (up to {MAX_IDLE:,}); report server "
        "RSS per connection and registration time",
    )
    modes.add_argument(
        "--overlay",
        type=Path,
        metavar="SWEEP.json",
        help="with --sweep: also draw this earlier sweep's points on the plot",
    )
    modes.add_argument(
        "--overlay-label", default="one process", help="legend label for --overlay"
    )
    modes.add_argument("--json", action="store_true", help="print one JSON line, no summary")
    modes.add_argument("--no-progress", action="store_true", help="no progress bars")
    modes.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where --sweep writes sweep.md/.json/.png (bench/results)",
    )
    soak.add_arguments(p)
    args = p.parse_args(argv)
    _check_args(p, args)
    return args


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.clients is None:
        args.clients = 2000 if args.soak else 100
    if args.soak is not None and (args.idle is not None or args.sweep or args.compare):
        p.error("--soak is a mode of its own: drop --idle/--sweep/--compare")
    if args.rate is None and args.window is None:
        args.window = 8
    if args.window is not None and args.window < 1:
        p.error("--window must be at least 1")
    if args.rate is not None and args.rate <= 0:
        p.error("--rate must be positive")
    if args.clients < 1 or args.senders < 0 or args.duration <= 0 or args.runs < 1:
        p.error("--clients, --duration and --runs must be positive, --senders >= 0")
    if args.observers < 0:
        p.error("--observers must be >= 0")
    if not 0 <= args.size <= 4000:
        p.error("--size must be 0..4000 (the server drops lines over 4096 bytes)")
    if args.idle is not None and not 1 <= args.idle <= MAX_IDLE:
        p.error(f"--idle must be 1..{MAX_IDLE}")
    if args.idle is not None and args.sweep:
        p.error("--idle and --sweep are separate modes")
    _check_target_args(p, args)
    if args.port is not None and args.host is None:
        args.host = "127.0.0.1"
    if args.host is not None and args.port is None:
        args.port = 9999
    args.sweep_points = _parse_sweep(p, args.sweep) if args.sweep else None


def _check_target_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--compare starts both servers itself and is one point; Redis needs the C engine."""
    if args.nodes < 1:
        p.error("--nodes must be at least 1")
    if args.nodes > 1 and not args.redis:
        p.error("--nodes K needs --redis (the nodes share a chat through it)")
    if args.redis and args.host:
        p.error("--redis starts its own servers: drop --host/--port")
    if args.compare:
        if args.host is not None or args.port is not None:
            p.error("--compare starts both servers itself: drop --host/--port")
        if args.sweep or args.idle is not None:
            p.error("--compare measures one point: drop --sweep/--idle")
        if args.target != "geventchat":
            p.error("--compare already measures both targets: drop --target")
    if (args.compare or args.target == "redis") and args.engine == "python":
        p.error("the Redis protocol is only in the C engine: drop --engine python")


def _parse_sweep(p: argparse.ArgumentParser, text: str) -> list[int]:
    try:
        points = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        p.error("--sweep takes client counts separated by commas, e.g. 10,100,1000")
    if not points or min(points) < 1:
        p.error("--sweep needs positive client counts")
    return points


# ---- setup ----


def choose_engine(wanted: str, target_name: str = "geventchat") -> str:
    """auto means C when it can be built; the Python engine is the fallback (not for Redis)."""
    if wanted != "auto":
        return wanted
    if workers.C_BINARY.exists() or workers.have_gcc():
        return "c"
    if target_name == "redis":
        raise BenchError("the Redis protocol needs the C engine, and gcc was not found")
    print("note: gcc not found, using the Python engine (much lower ceiling)", file=sys.stderr)
    return "python"


def workers_needed(requested: int, clients: int) -> tuple[int, str | None]:
    """At least enough workers that each stays under this process's descriptor limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_worker = clients if hard == resource.RLIM_INFINITY else max(hard - 64, 1)
    needed = math.ceil(clients / per_worker)
    if needed > requested:
        return needed, (
            f"using {needed} workers: one process may hold only {hard} "
            "descriptors (RLIMIT_NOFILE hard limit)"
        )
    return requested, None


def source_addresses(clients: int, host: str) -> list[str]:
    """Extra 127.0.0.x source addresses once one address pair runs out of ports."""
    if clients <= PORTS_PER_SOURCE or not host.startswith("127."):
        return []
    return [f"127.0.0.{i + 1}" for i in range(math.ceil(clients / PORTS_PER_SOURCE))]


def connections(target_name: str, clients: int, senders: int) -> int:
    """Connections to the server: with Redis, each sender also has a publisher connection."""
    return clients + (max(senders, 1) if target_name == "redis" else 0)


@contextlib.contextmanager
def open_target(
    args: argparse.Namespace, conns: int, target_name: str = "geventchat"
) -> Iterator[target.Target]:
    """Start a server (geventchat or redis-server) for this run, or attach to --host/--port.

    ``conns`` is how many connections it must accept (Redis publishers included).
    """
    if args.host is None and target_name == "redis":
        with target.RedisProcess(args.redis_server, max_clients=conns + 100) as tgt:
            yield tgt
        return
    if args.host is None and args.redis:
        cmd = target.parse_server_cmd(args.server_cmd)
        with target.ClusterProcesses(cmd, args.redis_server, conns + 100, args.nodes) as tgt:
            yield tgt
        return
    if args.host is None:
        cmd = target.parse_server_cmd(args.server_cmd)
        with target.ServerProcess(cmd, max_clients=conns + 100) as tgt:
            yield tgt
        return
    try:
        host = socket.gethostbyname(args.host)  # the C engine wants an IPv4 address
    except OSError as exc:
        raise BenchError(f"cannot resolve --host {args.host}: {exc}") from exc
    pid = args.server_pid or target.find_listener_pid(args.port)
    yield target.Target(host, args.port, pid)


def random_id() -> str:
    """Distinct names per run, so a rerun against a running server never hits 'taken'."""
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=4))


def warn(message: str) -> None:
    """Warnings go to stderr at once: a run that later fails must still have said why."""
    print(f"warning: {message}", file=sys.stderr)


def progress_bar(args: argparse.Namespace, **kwargs: Any) -> tqdm:
    return tqdm(disable=True if args.no_progress else None, file=sys.stderr, **kwargs)


# ---- one run ----


def register_all(
    group: workers.WorkerGroup, clients: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Wait until every worker's clients are registered (or failed); progress per client.

    Gives up (and reports how far it got) after --register-timeout, or sooner when no
    client registered or failed for REGISTER_STALL_S: a server out of descriptors leaves
    connections hanging in its backlog instead of refusing them.
    """
    counts: dict[int, int] = {}
    last_change = [time.monotonic()]
    timeout = args.register_timeout or 60 + clients / 200
    deadline = time.monotonic() + timeout
    got: dict[int, str] = {}
    with progress_bar(args, total=clients, desc="registering", unit="client", leave=False) as bar:

        def on_progress(i: int, fields: list[str]) -> None:
            done = int(fields[0]) + int(fields[1])
            if counts.get(i) != done:
                counts[i] = done
                last_change[0] = time.monotonic()
            bar.n = sum(counts.values())
            bar.refresh()

        while len(got) < len(group.procs):
            try:
                group.collect("ready", 2.0, on_progress, got)
            except workers.CollectTimeout:
                now = time.monotonic()
                stalled = now - last_change[0] > REGISTER_STALL_S
                if stalled or now > deadline:
                    why = "stalled" if stalled else f"timed out after {timeout:.0f}s"
                    warn(f"registration {why} at {bar.n} of {clients}: reporting how far it got")
                    group.broadcast("abort")
                    group.collect("ready", 30, on_progress, got)
    readies = [json.loads(got[i]) for i in sorted(got)]
    return {
        "registered": sum(r["registered"] for r in readies),
        "failed": sum(r["failed"] for r in readies),
        "connect_s": max(r["connect_s"] for r in readies),
        "register_s": max(r["register_s"] for r in readies),
        "errors": sorted({e for r in readies for e in r["errors"]}),
    }


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def send_phase(
    group: workers.WorkerGroup,
    args: argparse.Namespace,
    monitor: target.Monitor,
    others: dict[str, target.Monitor] | None = None,
) -> dict[str, Any]:
    """go, a progress bar for --duration, stop, then drain and collect the results."""
    latest: dict[int, tuple[int, int]] = {}
    cpu0 = cpu_seconds()
    others = others or {}
    for m in others.values():
        m.start_cpu()
    monitor.start_cpu()
    group.broadcast("go")
    t0 = time.monotonic()
    with progress_bar(
        args,
        total=args.duration,
        desc="sending",
        unit="s",
        leave=False,
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f}s{postfix}",
    ) as bar:
        while (elapsed := time.monotonic() - t0) < args.duration:
            for i, line in group.poll(min(0.25, args.duration - elapsed)):
                if line.startswith("p "):
                    latest[i] = (int(line.split()[1]), int(line.split()[2]))
            sent = sum(s for s, _ in latest.values())
            recv = sum(r for _, r in latest.values())
            bar.n = min(round(elapsed, 1), args.duration)
            bar.set_postfix_str(f"{sent:,} lines, {recv / max(elapsed, 1e-3):,.0f} deliveries/s")
    group.broadcast("stop")
    server_cpu = monitor.stop_cpu()
    process_cpu = {name: m.stop_cpu() for name, m in others.items()}
    orchestrator_cpu = cpu_seconds() - cpu0
    sent_lines = group.collect("sent", timeout=30)
    total = sum(int(s.split()[0]) for s in sent_lines)
    group.broadcast(f"expect {total} {args.drain}")
    results = group.collect_json(timeout=args.drain + 30)
    return {
        "results": results,
        "server_cpu": server_cpu,
        "process_cpu": process_cpu,
        "orchestrator_cpu": orchestrator_cpu,
        "system": monitor.system,
    }


def run_config(
    args: argparse.Namespace,
    engine: str,
    clients: int,
    senders: int,
    nworkers: int,
    tgt: target.Target,
    target_name: str = "geventchat",
) -> dict[str, Any]:
    """The parameters of one run, as they appear in --json and the summary header."""
    return {
        "target": target_name,
        **server_identity(args, tgt, target_name),
        "engine": engine,
        "workers": nworkers,
        "clients": clients,
        "senders": senders,
        "observers": min(args.observers, clients - senders) if engine == "c" else 0,
        "mode": "rate" if args.rate else "window",
        "window": args.window,
        "rate": args.rate,
        "size": args.size,
        "duration": args.duration,
        "host": tgt.host,
        "port": tgt.port,
        "server_started": tgt.started,
    }


def server_identity(
    args: argparse.Namespace, tgt: target.Target, target_name: str
) -> dict[str, str | None]:
    """The command that started the server (None if attached) and, for Redis, its version."""
    if target_name == "redis":
        binary = tgt.command[0] if tgt.command else shutil.which(args.redis_server)
        return {
            "server_cmd": shlex.join(tgt.command) if tgt.started else None,
            "server_version": target.redis_version(binary) if binary else None,
        }
    cmd = " ".join(target.parse_server_cmd(args.server_cmd)) if tgt.started else None
    return {"server_cmd": cmd, "server_version": None}


def worker_commands(
    args: argparse.Namespace,
    engine: str,
    plans: list[workers.WorkerPlan],
    tgt: target.Target,
    senders: int,
    run_id: str,
    sources: list[str],
    target_name: str = "geventchat",
) -> list[list[str]]:
    """One command line per worker; the sync line comes from worker 0's first client."""
    base = workers.engine_command(engine)
    rate_per_sender = (args.rate / senders) if (args.rate and senders) else 0.0
    ports = tgt.ports if target_name == "geventchat" and tgt.ports else [tgt.port]
    return [
        base
        + workers.worker_args(
            plan,
            tgt.host,
            ports[i % len(ports)],
            plans[0].prefix + "0",
            f"sync-{run_id}",
            0 if args.rate else args.window,
            rate_per_sender,
            args.size,
            sources,
            PROTOCOLS[target_name],
            getattr(args, "eager_name", False),
        )
        for i, plan in enumerate(plans)
    ]


def run_once(args: argparse.Namespace, clients: int, target_name: str) -> dict[str, Any]:
    """One complete measurement at ``clients`` clients; returns report.summarise()."""
    senders = min(args.senders, clients)
    engine = choose_engine(args.engine, target_name)
    conns = connections(target_name, clients, senders)
    nworkers, note = workers_needed(args.workers, conns)
    if target_name == "geventchat" and args.redis:  # each worker talks to one node
        nworkers = math.ceil(max(nworkers, args.nodes) / args.nodes) * args.nodes
    nworkers = min(nworkers, clients)
    run_id = random_id()
    observers = args.observers if engine == "c" else 0  # pyclient has no observers
    plans = workers.plan_workers(clients, senders, nworkers, run_id, observers)
    with open_target(args, conns, target_name) as tgt:
        warnings = [w for w in (note, target.nofile_warning(tgt.pid, conns)) if w]
        warnings += tgt.warnings
        if senders < args.senders:
            warnings.append(f"--senders capped at {senders} (the number of clients)")
        for w in warnings:
            warn(w)
        config = run_config(args, engine, clients, senders, len(plans), tgt, target_name)
        sources = source_addresses(conns, tgt.host)
        commands = worker_commands(args, engine, plans, tgt, senders, run_id, sources, target_name)
        monitor = target.Monitor(tgt.pid)
        others = {name: target.Monitor(pid) for name, pid in tgt.pids.items()}
        try:
            with workers.WorkerGroup(commands) as group:
                ready = register_all(group, clients, args)
                group.broadcast("sync")
                group.collect("synced", timeout=60 + clients / 100)
                phase = send_phase(group, args, monitor, others)
        finally:
            memory = monitor.close()
            for m in others.values():
                m.close()
    config["warnings"] = warnings + ready["errors"]
    server = {"pid": tgt.pid, "cpu_s": phase["server_cpu"] if tgt.pid else None, **memory}
    if phase["process_cpu"]:  # a cluster: the nodes and Redis together are "the server"
        server["cpu_s"] = sum(phase["process_cpu"].values())
    generator = {
        "orchestrator_cpu_s": phase["orchestrator_cpu"],
        "cores": os.cpu_count() or 1,
        "system": phase["system"],
    }
    summary = report.summarise(config, ready, phase["results"], server, generator)
    summary["run_id"] = run_id
    if phase["process_cpu"]:
        seconds = max(args.duration, 1e-9)
        summary["process_cpu_pct"] = {
            name: round(100 * cpu / seconds, 1) for name, cpu in phase["process_cpu"].items()
        }
        summary["nodes"] = args.nodes
    return summary


def run_point(
    args: argparse.Namespace, clients: int, target_name: str | None = None
) -> dict[str, Any]:
    """--runs repeats of one point against one target (--target), folded into their median."""
    name = target_name or args.target
    runs = [run_once(args, clients, name) for _ in range(args.runs)]
    return runs[0] if len(runs) == 1 else report.median_run(runs)


# ---- comparison with Redis ----


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    """geventchat, then Redis pub/sub: the same workload, machine and generator, one run.

    Ratios are only meaningful between runs that shared the machine's state (other load,
    CPU frequency, kernel), so both targets are measured back to back by one invocation.
    Without redis-server the geventchat run still happens, and the skip is reported.
    """
    skipped = redis_missing(args)
    if skipped:
        warn(f"{skipped}; measuring geventchat only (Redis skipped)")
    print("compare: geventchat", file=sys.stderr)
    ours = run_point(args, args.clients, "geventchat")
    theirs = None
    if not skipped:
        print("compare: redis", file=sys.stderr)
        theirs = run_point(args, args.clients, "redis")
    return report.compare_result(ours, theirs, skipped)


def redis_missing(args: argparse.Namespace) -> str | None:
    """Why Redis can't be measured here (redis-server not installed), or None."""
    try:
        target.redis_binary(args.redis_server)
    except target.TargetUnavailable as exc:
        return str(exc)
    return None


# ---- idle mode ----


def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    """Connect N idle clients; server RSS per connection and time to register them all."""
    n = args.idle
    engine = choose_engine(args.engine, args.target)
    conns = connections(args.target, n, 0)
    nworkers, note = workers_needed(args.workers, conns)
    plans = workers.plan_workers(n, 0, min(nworkers, n), random_id())
    with open_target(args, conns, args.target) as tgt:
        warnings = [w for w in (note, target.nofile_warning(tgt.pid, conns)) if w]
        warnings += tgt.warnings
        if tgt.pid is None:
            warnings.append("server pid unknown (--server-pid): no RSS figures")
        for w in warnings:
            warn(w)
        sources = source_addresses(n, tgt.host)
        commands = worker_commands(args, engine, plans, tgt, 0, "idle", sources, args.target)
        monitor = target.Monitor(tgt.pid)
        watcher = None
        if args.bystander and args.target == "geventchat":
            watcher = bystander.Bystander(tgt.host, tgt.port, f"bystander{random_id()}")
        try:
            time.sleep(0.2)
            before = monitor.rss()
            cpu0 = monitor.cpu()
            if watcher is not None:
                watcher.start()
            with workers.WorkerGroup(commands) as group:
                ready = register_all(group, n, args)
                cpu = monitor.cpu() - cpu0
                gen_cpu = sum(target.Monitor.process_cpu(pid) for pid in group.pids)
                seen = watcher.stop() if watcher is not None else None
                time.sleep(IDLE_SETTLE_S)
                after = monitor.rss()
        finally:
            memory = monitor.close()
    result = idle_result(args, engine, len(plans), sources, ready, before, after, memory,
                         warnings)
    result["server_cpu_s"] = round(cpu, 3)
    result["generator_cpu_s"] = round(gen_cpu, 3)
    result["bystander"] = seen
    result["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    return result


def idle_result(
    args: argparse.Namespace,
    engine: str,
    nworkers: int,
    sources: list[str],
    ready: dict[str, Any],
    before: int | None,
    after: int | None,
    memory: dict[str, Any],
    warnings: list[str],
) -> dict[str, Any]:
    registered = ready["registered"]
    per_conn = None
    if before is not None and after is not None and registered:
        per_conn = round((after - before) / registered / 1024, 2)
    problems = [f"{ready['failed']} of {args.idle} clients failed to register"] * bool(
        ready["failed"]
    )
    mb = report.MB
    return {
        "idle": args.idle,
        "target": args.target,
        "engine": engine,
        "workers": nworkers,
        "sources": sources,
        "registered": registered,
        "failed": ready["failed"],
        "connect_s": round(ready["connect_s"], 3),
        "register_s": round(ready["register_s"], 3),
        "rss_before_mb": None if before is None else round(before / mb, 1),
        "rss_after_mb": None if after is None else round(after / mb, 1),
        "rss_per_conn_kb": per_conn,
        "peak_rss_mb": None if memory["peak_rss"] is None else round(memory["peak_rss"] / mb, 1),
        "warnings": warnings + ready["errors"],
        "problems": problems,
        "ok": not problems,
    }


# ---- sweep ----


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Every point of --sweep; the table and plot are written under --results-dir."""
    points = []
    for n in args.sweep_points:
        print(f"sweep: N={n} ({args.runs} run(s))", file=sys.stderr)
        points.append(run_point(args, n))
    title = sweep_title(args, points[0])
    table = report.sweep_table(points, f"### {title}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "sweep.md").write_text(table)
    (args.results_dir / "sweep.json").write_text(json.dumps(points, indent=1) + "\n")
    others = {}
    if args.overlay:  # another sweep (e.g. single node) drawn on the same plot
        others[args.overlay_label] = json.loads(args.overlay.read_text())
    label = f"{args.nodes} nodes + Redis" if args.redis else "one process"
    report.sweep_plot(points, title, args.results_dir / "sweep.png", label, others)
    return {"sweep": points, "table": table, "ok": all(p["ok"] for p in points)}


def sweep_title(args: argparse.Namespace, first: dict[str, Any]) -> str:
    load = f"window {args.window}" if not args.rate else f"rate {args.rate:g}/s"
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    target_name = f"{args.target} ({args.nodes} nodes + Redis)" if args.redis else args.target
    return (
        f"{target_name} sweep {day}: {args.senders} senders, {load}, {args.duration:g} s, "
        f"median of {args.runs}, engine {first['engine']}, {os.cpu_count()} cores"
    )


# ---- main ----


def emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    """--json: one line on stdout; else the human text. Problems always go to stderr too."""
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(text)
        for point in (result, result.get("geventchat") or {}, result.get("ours") or {}):
            if isinstance(point, dict) and point.get("process_cpu_pct"):
                cpu = ", ".join(f"{k} {v:.0f}%" for k, v in point["process_cpu_pct"].items())
                print(f"cluster CPU per process (% of one core): {cpu}")
    problems = result.get("problems") or [
        p for point in result.get("sweep", []) for p in point["problems"]
    ]
    if problems and args.json:
        for p in problems:
            print(f"!!! {p}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 for a clean run, 1 for loss/duplication/failed clients, 2 for setup errors."""
    args = parse_args(argv)
    try:
        if args.soak is not None:
            result = soak.run_soak(args, sys.modules[__name__])
            emit(args, result, soak.summary(result))
        elif args.idle is not None:
            result = run_idle(args)
            emit(args, result, report.idle_summary(result))
        elif args.compare:
            result = run_compare(args)
            emit(args, result, report.compare_summary(result))
        elif args.sweep_points:
            result = run_sweep(args)
            emit(
                args,
                result,
                result["table"] + f"\nsaved {args.results_dir}/sweep.md, sweep.json and sweep.png",
            )
        else:
            result = run_point(args, args.clients)
            emit(args, result, report.human_summary(result))
    except (BenchError, target.TargetError, workers.WorkerError) as exc:
        print(f"loadtest: error: {exc}", file=sys.stderr)
        return 2
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
