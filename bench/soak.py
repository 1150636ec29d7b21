"""Soak test: a server under steady churn for a long time, sampled for leaks.

    python bench/loadtest.py --soak 1800 --soak-warmup 120          # 2,000 clients

What runs (one geventchat server, started as for every other mode):

* a **stable crowd**: most of the N clients, held by the C workers (genclient) in idle
  mode: they register, then read (and count) everything until the end;
* **observers** (``--soak-observers``, Python) that stay the whole run and parse every
  line: each must see every chat line exactly once (loss and duplication checks) and
  time it (delivered latency, from the send time in the line);
* **steady senders** (Python, 4) that stay the whole run and together say
  ``--chat-rate`` lines/s;
* a **churning pool** (Python) of the rest: every second ``--churn`` x N of them are
  replaced. A newcomer connects, registers (its name sent at once, as programs do, or
  after the prompt with ``--soak-wait-prompt``), says one line, waits for its echo, and
  leaves: half drop the connection, a quarter send ``/quit``, a quarter ``exit``.

Every ``--sample-every`` seconds the server's RSS and open descriptors are read with
psutil, and its greenlet count through its ``SIGUSR1`` stats line (``stats: ...
greenlets=G``: the server counts greenlets with the garbage collector on request); the
observers' p99 over the interval is added. JSON and a PNG plot go to ``--results-dir``
(``soak.json``, ``soak.png``).

Checks at the end: RSS at the end within 5% of its level at the end of the warm-up; open
descriptors and greenlets back to their baseline (taken before the crowd arrived) once
every client has left; no line lost or duplicated at any observer; p99 flat (the median
of the last quarter's p99 samples at most 1.5x that of the first quarter, or within 5 ms).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import signal
import socket as _stdsocket
import statistics
import time
from pathlib import Path
from typing import Any

import gevent
import psutil
from gevent import socket
from gevent.event import Event

import target
import workers

SNIFF_WAIT_S = 5.0  # how long a churner waits for a line before giving up on it
OBSERVER_FAIL = "observer disconnected"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The soak's flags (a group of loadtest.py's parser)."""
    g = p.add_argument_group("soak (--soak SECONDS; bench/soak.py)")
    g.add_argument("--soak", type=float, metavar="SECONDS",
                   help="soak mode: keep --clients (default 2,000) connected under churn "
                   "for SECONDS after the warm-up, sampling RSS, fds, greenlets, p99")
    g.add_argument("--soak-warmup", type=float, default=120.0, metavar="SECONDS",
                   help="warm-up before the measured soak (120)")
    g.add_argument("--churn", type=float, default=0.01, metavar="SHARE",
                   help="share of the clients replaced every second (0.01)")
    g.add_argument("--chat-rate", type=float, default=10.0, metavar="LINES_PER_S",
                   help="lines/s said by the steady senders in total (10)")
    g.add_argument("--sample-every", type=float, default=5.0, metavar="SECONDS",
                   help="seconds between samples (5)")
    g.add_argument("--soak-observers", type=int, default=8, metavar="K",
                   help="clients that stay the whole run and check every line (8)")
    g.add_argument("--soak-wait-prompt", action="store_true",
                   help="churners wait for the name prompt (nc users) instead of "
                   "sending their name at once (programs)")


def now_ns() -> int:
    return time.monotonic_ns()  # CLOCK_MONOTONIC, the clock the C workers use too


class LineClient:
    """One native client on a gevent socket: handshake, lines, and leaving."""

    __slots__ = ("name", "sock", "buf")

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock: socket.socket | None = None
        self.buf = b""

    def connect(self, host: str, port: int, wait_prompt: bool, timeout: float) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
        self.sock = sock
        if wait_prompt:
            self.read_until(lambda line: line == "? name:", timeout)
        sock.sendall(f"{self.name}\n".encode())
        self.read_until(lambda line: line == f"* {self.name} joined", timeout)

    def lines(self) -> list[str]:
        """Complete lines of one read; [] is never returned for a live socket (EOF raises)."""
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        *done, self.buf = (self.buf + data).split(b"\n")
        return [d.decode("utf-8", "replace") for d in done]

    def read_until(self, want: Any, timeout: float) -> str:
        with gevent.Timeout(timeout, TimeoutError(f"{self.name}: no expected line")):
            while True:
                for line in self.lines():
                    if want(line):
                        return line

    def say(self, text: str) -> None:
        assert self.sock is not None
        self.sock.sendall(f"{text}\n".encode())

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Soak:
    def __init__(self, args: argparse.Namespace, tgt: target.Target, run_id: str) -> None:
        self.args = args
        self.tgt = tgt
        self.run_id = run_id
        self.n = args.clients
        self.proc = psutil.Process(tgt.pid) if tgt.pid else None
        #: The server processes watched: one, or each node of a cluster (``--nodes K
        #: --redis``), by name, with the log its SIGUSR1 stats line lands in.
        self.nodes: dict[str, tuple[int, psutil.Process, Any]] = {}
        if tgt.log_tails:
            for name, log in tgt.log_tails.items():
                pid = tgt.pids[name]
                self.nodes[name] = (pid, psutil.Process(pid), log)
        elif tgt.pid:
            self.nodes["server"] = (tgt.pid, psutil.Process(tgt.pid), tgt.log_tail)
        self.redis = psutil.Process(tgt.pids["redis"]) if "redis" in tgt.pids else None
        self._next_port = 0
        self.stop = Event()
        self.chat_stop = Event()
        self.samples: list[dict[str, Any]] = []
        self.latencies: list[float] = []  # ms, observers, since the last sample
        self.seen: list[dict[str, int]] = []  # per observer: token -> times seen
        self.expected: set[str] = set()  # tokens whose echo their sender saw
        self.unsure: set[str] = set()  # said, echo not seen (the sender died first)
        self.churned = 0
        self.churn_failed: list[str] = []
        self.leaves = {"drop": 0, "quit": 0, "exit": 0}
        self.pool_live = 0
        self.errors: list[str] = []
        self.next_id = 0

    # --- server counters ---------------------------------------------------------------

    def server_stats(self) -> dict[str, int]:
        """The servers' counters, summed over the nodes of a cluster."""
        total: dict[str, int] = {}
        for pid, _, log in self.nodes.values():
            for key, value in _stats(pid, log).items():
                total[key] = total.get(key, 0) + value
        return total

    def sample(self, t0: float, phase: str) -> dict[str, Any]:
        """One sample: RSS, fds, greenlets and users summed over the nodes (one server:
        its own), each node's own under ``nodes`` in a cluster, Redis's RSS, the p99."""
        lat, self.latencies = self.latencies, []
        per_node: dict[str, dict[str, Any]] = {}
        stats: dict[str, int] = {}
        rss = fds = None
        for name, (pid, proc, log) in self.nodes.items():
            node_stats = _stats(pid, log)
            for key, value in node_stats.items():
                stats[key] = stats.get(key, 0) + value
            try:
                node_rss, node_fds = proc.memory_info().rss, proc.num_fds()
            except psutil.Error:
                continue
            rss, fds = (rss or 0) + node_rss, (fds or 0) + node_fds
            per_node[name] = {"rss_mb": round(node_rss / 2**20, 2), "fds": node_fds,
                              "greenlets": node_stats.get("greenlets"),
                              "users": node_stats.get("users")}
        s = {
            "t": round(time.monotonic() - t0, 1),
            "phase": phase,
            "rss_mb": None if rss is None else round(rss / 2**20, 2),
            "fds": fds,
            "greenlets": stats.get("greenlets"),
            "users": stats.get("users"),
            "objects": stats.get("objects"),  # gc-tracked Python objects (a leak shows)
            "blocks": stats.get("blocks"),  # pymalloc blocks in use
            "p50_ms": round(_pct(lat, 50), 2) if lat else None,
            "p99_ms": round(_pct(lat, 99), 2) if lat else None,
            "lines": len(lat),
            "churned": self.churned,
        }
        if len(self.nodes) > 1:
            s["nodes"] = per_node
        if self.redis is not None:
            try:
                s["redis_rss_mb"] = round(self.redis.memory_info().rss / 2**20, 2)
            except psutil.Error:
                pass
        self.samples.append(s)
        return s

    # --- clients -----------------------------------------------------------------------

    def new_name(self, kind: str) -> str:
        self.next_id += 1
        return f"{kind}{self.run_id}{self.next_id}"

    def connect(self, kind: str, wait_prompt: bool = False) -> LineClient:
        c = LineClient(self.new_name(kind))
        c.connect(self.tgt.host, self.next_port(), wait_prompt, 30.0)
        return c

    def next_port(self) -> int:
        """The port of the next client: in a cluster, each node in turn."""
        ports = self.tgt.ports or [self.tgt.port]
        self._next_port += 1
        return ports[self._next_port % len(ports)]

    def observe(self, c: LineClient, index: int) -> None:
        seen = self.seen[index]
        try:
            while not self.stop.is_set():
                lines = c.lines()
                t = now_ns()
                for line in lines:
                    _, sep, text = line.partition(": ")
                    if not sep or text[:1] not in ("s", "c"):
                        continue
                    token, _, sent = text.rpartition(":")
                    if not sent.isdigit():
                        continue
                    seen[token] = seen.get(token, 0) + 1
                    self.latencies.append((t - int(sent)) / 1e6)
        except (OSError, ConnectionError) as exc:
            if not self.stop.is_set():
                self.errors.append(f"{OBSERVER_FAIL}: {c.name}: {exc}")

    def steady_sender(self, c: LineClient, index: int, rate: float) -> None:
        """Says ``rate`` lines/s (paced, not bursty) until told to stop; reads its echoes."""
        seq = 0
        mine = f"{c.name}: "
        pending: set[str] = set()

        def reader() -> None:
            try:
                while True:
                    for line in c.lines():
                        if line.startswith(mine):
                            token = line[len(mine):].rpartition(":")[0]
                            pending.discard(token)
                            self.expected.add(token)
            except (OSError, ConnectionError):
                pass

        r = gevent.spawn(reader)
        start = time.monotonic()
        try:
            while not self.chat_stop.is_set():
                seq += 1
                token = f"s{index}:{seq}"
                pending.add(token)
                c.say(f"{token}:{now_ns()}")
                gevent.sleep(max(0.0, start + seq / rate - time.monotonic()))
            # a line said is expected at every observer whether or not its echo came yet
            with gevent.Timeout(10, False):
                while pending:
                    gevent.sleep(0.05)
            self.expected.update(pending)
        except OSError as exc:
            self.errors.append(f"steady sender {c.name}: {exc}")
        finally:
            r.kill()

    def churner(self) -> None:
        """One short life: connect, register, say a line, see it, leave."""
        self.pool_live += 1
        token = None
        try:
            c = LineClient(self.new_name("c"))
            c.connect(self.tgt.host, self.next_port(), self.args.soak_wait_prompt,
                      SNIFF_WAIT_S * 6)
            live = random.uniform(0.5, 2 * self.pool_life)
            gevent.sleep(live / 2)
            if not self.chat_stop.is_set():
                token = f"c{c.name}:0"
                self.unsure.add(token)
                c.say(f"{token}:{now_ns()}")
                mine = f"{c.name}: {token}:"
                c.read_until(lambda line: line.startswith(mine), SNIFF_WAIT_S * 6)
                self.unsure.discard(token)
                self.expected.add(token)
            gevent.sleep(live / 2)
            how = random.choice(("drop", "drop", "quit", "exit"))
            self.leaves[how] += 1
            if how != "drop":
                c.say("/quit" if how == "quit" else "exit")
                with gevent.Timeout(SNIFF_WAIT_S, False):
                    while True:
                        c.lines()  # until the server closes
            c.close()
            self.churned += 1
        except ConnectionError:
            self.churned += 1  # the server closed it after /quit: expected
        except (OSError, TimeoutError, gevent.Timeout) as exc:
            if len(self.churn_failed) < 20:
                self.churn_failed.append(f"{type(exc).__name__}: {exc}")
            else:
                self.churn_failed.append("")
        finally:
            self.pool_live -= 1

    def churn_loop(self, pool: int) -> None:
        """Keep ``pool`` churners alive: start newcomers at churn x N per second."""
        per_s = max(self.args.churn * self.n, 0.0)
        # A churner lives pool / per_s seconds on average, so the pool stays about full.
        self.pool_life = pool / per_s if per_s else 1e9
        for _ in range(pool):  # fill the pool at once (spread over a second)
            gevent.spawn_later(random.uniform(0, 1), self.churner)
        if not per_s:
            return
        start, k = time.monotonic(), 0
        while not self.chat_stop.is_set():
            k += 1
            gevent.sleep(max(0.0, start + k / per_s - time.monotonic()))
            gevent.spawn(self.churner)


def _pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))]


def run_soak(args: argparse.Namespace, lt: Any) -> dict[str, Any]:
    """The whole soak; ``lt`` is the loadtest module (target/worker helpers)."""
    n = args.clients
    observers = args.soak_observers
    steady = 4
    pool = max(20, min(n // 5, 400))  # the churning part of the crowd
    stable = n - observers - steady - pool
    if stable < 1:
        raise lt.BenchError(f"--soak needs more clients (at least {observers + steady + 21})")
    run_id = lt.random_id()
    engine = lt.choose_engine(args.engine)
    conns = n + 200
    nworkers, note = lt.workers_needed(args.workers, stable)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    with lt.open_target(args, conns) as tgt:
        # A cluster: at least one worker per node (worker i connects to node i mod K).
        nworkers = max(nworkers, len(tgt.ports))
        plans = workers.plan_workers(stable, 0, min(nworkers, stable), run_id)
        warnings = [w for w in (note, target.nofile_warning(tgt.pid, conns)) if w]
        warnings += tgt.warnings
        for w in warnings:
            lt.warn(w)
        soak = Soak(args, tgt, run_id)
        # Prime: the lobby's history writer starts with its first line; part of the
        # baseline, not a leak.
        c = soak.connect("prime")
        c.say("prime")
        gevent.sleep(0.5)
        c.close()
        gevent.sleep(2.0)
        t0 = time.monotonic()
        soak.sample(t0, "baseline")
        baseline = soak.samples[-1]
        sources = lt.source_addresses(stable, tgt.host)
        commands = lt.worker_commands(args, engine, plans, tgt, 0, run_id, sources)
        with workers.WorkerGroup(commands) as group:
            ready = lt.register_all(group, stable, args)
            wprocs = [psutil.Process(p) for p in group.pids]
            wcpu0 = sum(_cpu(p) for p in wprocs)
            obs = [soak.connect("o") for _ in range(observers)]
            soak.seen = [{} for _ in obs]
            greens = [gevent.spawn(soak.observe, c, i) for i, c in enumerate(obs)]
            senders = [soak.connect("s") for _ in range(steady)]
            greens += [gevent.spawn(soak.steady_sender, c, i, args.chat_rate / steady)
                       for i, c in enumerate(senders)]
            churn = gevent.spawn(soak.churn_loop, pool)
            total = args.soak_warmup + args.soak
            t_start = time.monotonic()
            warm_rss = None
            bar = lt.progress_bar(args, total=int(total), desc="soak", unit="s")
            next_sample = t_start + args.sample_every
            while (elapsed := time.monotonic() - t_start) < total:
                gevent.sleep(max(0.0, min(next_sample, t_start + total) - time.monotonic()))
                phase = "warmup" if elapsed < args.soak_warmup else "soak"
                if time.monotonic() >= next_sample:
                    s = soak.sample(t0, phase)
                    next_sample += args.sample_every
                    if phase == "warmup":
                        warm_rss = s["rss_mb"]
                    bar.set_postfix(rss=s["rss_mb"], fds=s["fds"], gl=s["greenlets"],
                                    p99=s["p99_ms"], churned=soak.churned, refresh=False)
                bar.update(int(time.monotonic() - t_start) - bar.n)
            bar.close()
            end_rss = soak.sample(t0, "soak")["rss_mb"]
            soak.chat_stop.set()
            churn.kill()
            gevent.joinall(greens[observers:], timeout=20)  # senders: last echoes
            with gevent.Timeout(30, False):
                while soak.pool_live:
                    gevent.sleep(0.1)
            gevent.sleep(2.0)  # last deliveries reach the observers
            soak.stop.set()
            for c in obs + senders:
                c.close()
            gevent.killall(greens, timeout=5)
            wcpu = sum(_cpu(p) for p in wprocs) - wcpu0
        # every client gone: wait until the server has no user left, then a moment for
        # presence timers and closes
        with gevent.Timeout(20, False):
            while soak.server_stats().get("connections", 0):
                gevent.sleep(0.5)
        gevent.sleep(2.0)
        soak.sample(t0, "after")
        after = soak.samples[-1]
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    gen_cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) + wcpu
    return verdict(args, soak, baseline, warm_rss, end_rss, after, ready, gen_cpu,
                   time.monotonic() - t_start, warnings)


def _stats(pid: int, log: Any) -> dict[str, int]:
    """SIGUSR1 to one server, then the newest ``stats:`` line of its log."""
    before = len([x for x in log if "stats:" in x])
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return {}
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        gevent.sleep(0.02)
        lines = [x for x in list(log) if "stats:" in x]
        if len(lines) > before or (lines and before == len(log)):
            fields = lines[-1].split("stats:", 1)[1].split()
            return {k: int(v) for k, v in (f.split("=") for f in fields)}
    return {}


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def verdict(args: argparse.Namespace, soak: Soak, baseline: dict, warm_rss: float | None,
            end_rss: float | None, after: dict, ready: dict, gen_cpu: float, wall: float,
            warnings: list[str]) -> dict[str, Any]:
    problems: list[str] = []
    if ready["failed"]:
        problems.append(f"{ready['failed']} stable clients failed to register")
    rss_drift = None
    if warm_rss and end_rss:
        rss_drift = round((end_rss - warm_rss) / warm_rss * 100, 2)
        if abs(rss_drift) > 5:
            problems.append(f"RSS moved {rss_drift:+.1f}% from the warm-up ({warm_rss} MB) "
                            f"to the end ({end_rss} MB)")
    node_drift = _node_drift(soak.samples)
    for name, drift in node_drift.items():
        if abs(drift["pct"]) > 5:
            problems.append(f"{name}: RSS moved {drift['pct']:+.1f}% from the warm-up "
                            f"({drift['warmup_mb']} MB) to the end ({drift['end_mb']} MB)")
    for key in ("fds", "greenlets"):  # back to the baseline: not above it
        if baseline.get(key) is not None and (after.get(key) or 0) > baseline[key]:
            problems.append(f"{key}: {after.get(key)} after the clients left, "
                            f"{baseline.get(key)} before")
    lost = dup = 0
    for seen in soak.seen:
        for token in soak.expected:
            k = seen.get(token, 0)
            lost += k == 0
            dup += max(0, k - 1)
        dup += sum(k - 1 for t, k in seen.items() if t not in soak.expected and k > 1)
    if lost or dup:
        problems.append(f"observers: {lost} lines lost, {dup} duplicated "
                        f"(of {len(soak.expected)} lines x {len(soak.seen)} observers)")
    problems += soak.errors
    soaked = [s["p99_ms"] for s in soak.samples if s["phase"] == "soak" and s["p99_ms"]]
    q = max(1, len(soaked) // 4)
    first = statistics.median(soaked[:q]) if soaked else None
    last = statistics.median(soaked[-q:]) if soaked else None
    if first and last and last > max(1.5 * first, first + 5):
        problems.append(f"p99 grew from {first:.1f} ms (first quarter) to {last:.1f} ms "
                        f"(last quarter)")
    failed_churn = len(soak.churn_failed)
    if failed_churn > max(5, soak.churned // 1000):
        problems.append(f"{failed_churn} churning clients failed: "
                        + "; ".join(x for x in soak.churn_failed[:5] if x))
    result = {
        "soak_s": args.soak,
        "warmup_s": args.soak_warmup,
        "clients": args.clients,
        "churn_per_s": args.churn * args.clients,
        "chat_rate": args.chat_rate,
        "churned": soak.churned,
        "leaves": soak.leaves,
        "churn_failed": failed_churn,
        "lines_checked": len(soak.expected),
        "lines_unsure": len(soak.unsure),
        "observers": len(soak.seen),
        "baseline": baseline,
        "after": after,
        "rss_warmup_mb": warm_rss,
        "rss_end_mb": end_rss,
        "rss_drift_pct": rss_drift,
        "node_rss_drift": node_drift,
        "p99_first_quarter_ms": first,
        "p99_last_quarter_ms": last,
        "generator_cpu_pct": round(gen_cpu / wall * 100, 1) if wall else None,
        "load_avg": os.getloadavg(),
        "samples": soak.samples,
        "warnings": warnings,
        "problems": problems,
        "ok": not problems,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.results_dir / "soak.png")
    return result


def _node_drift(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """A cluster's RSS drift per node: the last warm-up sample against the last one."""
    warm = [x for x in samples if x["phase"] == "warmup" and x.get("nodes")]
    end = [x for x in samples if x["phase"] == "soak" and x.get("nodes")]
    out: dict[str, dict[str, float]] = {}
    if warm and end:
        for name, w in warm[-1]["nodes"].items():
            e = end[-1]["nodes"].get(name)
            if e and w.get("rss_mb"):
                out[name] = {"warmup_mb": w["rss_mb"], "end_mb": e["rss_mb"],
                             "pct": round((e["rss_mb"] - w["rss_mb"]) / w["rss_mb"] * 100, 2)}
    return out


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = [x for x in r["samples"] if x["phase"] in ("warmup", "soak")]
    t = [x["t"] / 60 for x in s]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    for ax, key, label in zip(axes, ("rss_mb", "fds", "greenlets", "p99_ms"),
                              ("server RSS (MB)", "open fds", "greenlets",
                               "delivered p99 (ms)"), strict=True):
        names = sorted(s[0].get("nodes", {})) if s else []
        if names and key != "p99_ms":
            for name in names:
                ax.plot(t, [x.get("nodes", {}).get(name, {}).get(key) for x in s], lw=1,
                        label=name)
            ax.legend(loc="lower right", fontsize="small")
        else:
            ax.plot(t, [x[key] for x in s], lw=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if r["warmup_s"]:
            ax.axvline(r["warmup_s"] / 60, color="grey", ls="--", lw=0.8)
    axes[-1].set_xlabel("minutes (dashed: end of warm-up)")
    where = f"{len(r['node_rss_drift'])} nodes + Redis, " if r.get("node_rss_drift") else ""
    fig.suptitle(f"soak: {where}{r['clients']} clients, {r['churn_per_s']:g} replaced/s, "
                 f"{r['chat_rate']:g} lines/s, {r['soak_s'] / 60:g} min after "
                 f"{r['warmup_s'] / 60:g} min warm-up")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summary(r: dict[str, Any]) -> str:
    b, a = r["baseline"], r["after"]
    lines = [
        f"soak: {r['clients']} clients, {r['soak_s']:g} s after {r['warmup_s']:g} s warm-up;"
        f" {r['churned']} replaced ({r['leaves']}), {r['churn_failed']} failed",
        f"  RSS      {r['rss_warmup_mb']} MB after warm-up, {r['rss_end_mb']} MB at the end "
        f"({r['rss_drift_pct']}%)",
        f"  fds      {b['fds']} before, {a['fds']} after the clients left",
        f"  greenlets {b['greenlets']} before, {a['greenlets']} after",
        f"  lines    {r['lines_checked']} checked at {r['observers']} observers "
        f"({r['lines_unsure']} unsure: sender gone before its echo)",
        f"  p99      {r['p99_first_quarter_ms']} ms first quarter, "
        f"{r['p99_last_quarter_ms']} ms last quarter",
        f"  generator CPU {r['generator_cpu_pct']}% of a core; load average "
        f"{' '.join(f'{x:.2f}' for x in r['load_avg'])}",
    ]
    for name, d in (r.get("node_rss_drift") or {}).items():
        lines.insert(2, f"  {name:8s} RSS {d['warmup_mb']} MB after warm-up, {d['end_mb']} MB "
                        f"at the end ({d['pct']}%)")
    lines += [f"  warning  {w}" for w in r["warnings"]]
    lines += [f"!!! {p}" for p in r["problems"]]
    return "\n".join(lines)
