"""Turn the workers' raw results into the figures a server engineer acts on.

Kept apart from the orchestration so the arithmetic (what counts as loss, when the
generator rather than the server was the limit) is in one place and easy to check.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from histogram import merge, percentile

SATURATED = 0.9  # a process above 90% of the cores it can use is the bottleneck
OTHER_LOAD_PCT = 15.0  # other processes used more than this: the machine was shared
MB = 1024 * 1024


def merge_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum the workers' counters; merge their latency histograms exactly."""
    keys = (
        "clients",
        "registered",
        "failed",
        "disconnected",
        "sent",
        "received",
        "received_at_stop",
        "missing",
        "extra",
        "echo_errors",
        "deferred",
        "lat_count",
    )
    merged: dict[str, Any] = {k: sum(int(r[k]) for r in results) for k in keys}
    merged["lat_max_ns"] = max(int(r["lat_max_ns"]) for r in results)
    # C engine only: reads while sending, and the observers' latency of every line
    merged["run_reads"] = sum(int(r.get("run_reads", 0)) for r in results)
    merged["seen_count"] = sum(int(r.get("seen_count", 0)) for r in results)
    merged["seen_max_ns"] = max(int(r.get("seen_max_ns", 0)) for r in results)
    merged["seen_hist"] = merge(r.get("seen_hist", []) for r in results)
    merged["run_s"] = max(float(r["run_s"]) for r in results)
    merged["drain_s"] = max(float(r["drain_s"]) for r in results)
    merged["cpu_s"] = sum(float(r["cpu_s"]) for r in results)
    merged["cpu_max_worker_s"] = max(float(r["cpu_s"]) for r in results)
    merged["count_min"] = min(int(r["count_min"]) for r in results)
    merged["count_max"] = max(int(r["count_max"]) for r in results)
    merged["sent_per_sender"] = [n for r in results for n in r["sent_per_sender"]]
    merged["lat_hist"] = merge(r["lat_hist"] for r in results)
    merged["errors"] = sorted({e for r in results for e in r["errors"]})
    return merged


def latency_ms(hist: Sequence[tuple[int, int]], max_ns: int) -> dict[str, float | None]:
    """p50/p90/p99 from the merged histogram; max is exact (tracked by the workers)."""
    out: dict[str, float | None] = {}
    for q in (50, 90, 99):
        value = percentile(hist, q)
        out[f"p{q}"] = None if value is None else round(value / 1e6, 3)
    out["max"] = round(max_ns / 1e6, 3) if hist else None
    return out


def fairness(sent_per_sender: Sequence[int]) -> dict[str, float]:
    """Lines sent per sender: a server that starves some senders shows a wide spread."""
    if not sent_per_sender:
        return {"min": 0, "median": 0, "max": 0}
    return {
        "min": min(sent_per_sender),
        "median": statistics.median(sent_per_sender),
        "max": max(sent_per_sender),
    }


def limit_verdict(
    server_pct: float | None,
    gen_pct: float,
    busiest_worker_pct: float,
    workers: int,
    cores: int,
    rate_mode: bool,
    machine: dict[str, float | None] | None = None,
) -> tuple[str, str]:
    """Who limited the throughput: "generator", "server", "cpu" (shared cores) or "none".

    Each worker is one thread, so the generator can use at most min(workers, cores)
    cores, and one saturated worker already holds back the clients it owns; near either,
    the figures describe the generator, not the server. The server is one Python thread:
    near one full core, it is the limit.
    """
    gen_cap = 100.0 * min(workers, cores)
    if gen_pct >= SATURATED * gen_cap or busiest_worker_pct >= SATURATED * 100:
        return "generator", (
            f"GENERATOR-BOUND: the generator used {gen_pct:.0f}% CPU (busiest worker "
            f"{busiest_worker_pct:.0f}% of a core) of the {gen_cap:.0f}% it can use; "
            "these figures understate the server"
        )
    if server_pct is not None and server_pct >= SATURATED * 100:
        return "server", f"server-bound: the server used {server_pct:.0f}% of a core"
    busy = (machine or {}).get("busy_pct")
    if server_pct is not None and busy is not None and busy >= SATURATED * 100 * cores:
        softirq = (machine or {}).get("softirq_pct") or 0.0
        other = (machine or {}).get("other_pct") or 0.0
        return "cpu", (
            f"cores saturated ({busy:.0f}% of {cores * 100}%): server {server_pct:.0f}% + "
            f"generator {gen_pct:.0f}% + kernel softirq {softirq:.0f}% + other "
            f"{other:.0f}%; they competed for CPU, so neither reached a full core"
        )
    if rate_mode:
        return "none", "neither saturated: throughput is the offered --rate"
    if server_pct is not None and gen_pct > server_pct:
        # In a closed loop the generator's reaction time is part of every round trip.
        return "none", (
            f"neither saturated, but the generator ({gen_pct:.0f}%) was busier than the "
            f"server ({server_pct:.0f}%): its delay is part of the window's round trip; "
            "try --engine c or more --workers"
        )
    return "none", "neither saturated: throughput is set by the window and the latency"


def problems_of(m: dict[str, Any], lines_sent: int, registered: int) -> list[str]:
    """Everything that makes the run wrong, loudly worded; empty when the run is clean."""
    out = []
    if m["failed"]:
        out.append(f"{m['failed']} client(s) failed to register")
    if m["missing"]:
        out.append(
            f"LOSS: {m['missing']} deliveries missing of {lines_sent * registered} "
            f"expected (per-client counts {m['count_min']}..{m['count_max']}, "
            f"expected {lines_sent})"
        )
    if m["extra"]:
        out.append(
            f"DUPLICATION: {m['extra']} deliveries more than expected "
            f"(per-client counts up to {m['count_max']}, expected {lines_sent})"
        )
    if m["disconnected"]:
        out.append(f"{m['disconnected']} registered client(s) were disconnected")
    if m["echo_errors"]:
        out.append(f"{m['echo_errors']} own-echo order errors (loss, dup or reordering)")
    return out


def summarise(
    config: dict[str, Any],
    ready: dict[str, float],
    results: list[dict[str, Any]],
    server: dict[str, Any],
    generator: dict[str, float],
) -> dict[str, Any]:
    """The one result object: what --json prints and the human summary reads from."""
    m = merge_results(results)
    run_s = m["run_s"] or 1e-9
    lines_sent = m["sent"]
    server_pct = None if server.get("cpu_s") is None else 100 * server["cpu_s"] / run_s
    gen_cpu = m["cpu_s"] + generator["orchestrator_cpu_s"]
    gen_pct = 100 * gen_cpu / run_s
    busiest_pct = 100 * m["cpu_max_worker_s"] / run_s
    machine = machine_load(generator.get("system", {}), server.get("cpu_s"), gen_cpu, run_s)
    limit, note = limit_verdict(
        server_pct,
        gen_pct,
        busiest_pct,
        config["workers"],
        generator["cores"],
        config["mode"] == "rate",
        machine,
    )
    problems = problems_of(m, lines_sent, m["registered"])
    warnings = list(config.get("warnings", [])) + m["errors"]
    if (machine["other_pct"] or 0) > OTHER_LOAD_PCT:
        warnings.append(
            f"other processes used about {machine['other_pct']:.0f}% of a core during the "
            "run: the machine was shared, expect lower and noisier figures"
        )
    return {
        **config,
        "registered": m["registered"],
        "failed": m["failed"],
        "connect_s": round(ready["connect_s"], 3),
        "register_s": round(ready["register_s"], 3),
        "run_s": round(run_s, 3),
        "drain_s": round(m["drain_s"], 3),
        "lines_sent": lines_sent,
        "lines_per_s": round(lines_sent / run_s, 1),
        "deliveries_expected": lines_sent * m["registered"],
        "deliveries_received": m["received"],
        "missing": m["missing"],
        "extra": m["extra"],
        "disconnected": m["disconnected"],
        "echo_errors": m["echo_errors"],
        "deferred_sends": m["deferred"],
        "deliveries_per_s": round(m["received_at_stop"] / run_s, 1),
        # How many deliveries the server packs into what one client read gets (C engine).
        "deliveries_per_read": _per(m["received_at_stop"], m["run_reads"]),
        "latency_ms": latency_ms(m["lat_hist"], m["lat_max_ns"]),
        "latency_samples": m["lat_count"],
        # Every line as --observers ordinary clients got it: no server's write order
        # favours them, unlike a sender's own echo.
        "delivery_latency_ms": latency_ms(m["seen_hist"], m["seen_max_ns"]),
        "delivery_latency_samples": m["seen_count"],
        "fairness": fairness(m["sent_per_sender"]),
        "sent_per_sender": m["sent_per_sender"],  # in sender order: who was starved
        "server": {
            "pid": server.get("pid"),
            "cpu_s": None if server_pct is None else round(server["cpu_s"], 3),
            "cpu_pct": None if server_pct is None else round(server_pct, 1),
            "peak_rss_mb": _mb(server.get("peak_rss")),
        },
        "generator": {
            "cpu_s": round(gen_cpu, 3),
            "cpu_pct": round(gen_pct, 1),
            "workers_cpu_s": round(m["cpu_s"], 3),
            "orchestrator_cpu_s": round(generator["orchestrator_cpu_s"], 3),
            "cores": generator["cores"],
        },
        "limit": limit,
        "limit_note": note,
        "machine": machine,
        "warnings": warnings,
        "problems": problems,
        "ok": not problems,
    }


def machine_load(
    system: dict[str, float], server_cpu: float | None, gen_cpu: float, run_s: float
) -> dict[str, float | None]:
    """What the rest of the machine did during the run, in % of one core.

    ``softirq_pct``: kernel network work charged to no process (mostly our own loopback
    traffic). ``other_pct``: process time neither the server nor the generator used, i.e.
    somebody else's work on a shared machine. ``busy_pct``: all cores together.
    """
    if not system or server_cpu is None:
        return {"busy_pct": None, "softirq_pct": None, "other_pct": None}
    pct = 100 / run_s
    return {
        "busy_pct": round(system["busy"] * pct, 1),
        "softirq_pct": round(system["softirq"] * pct, 1),
        "other_pct": round(max(0.0, system["process"] - server_cpu - gen_cpu) * pct, 1),
    }


def _per(total: int, count: int) -> float | None:
    return round(total / count, 1) if count else None


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value / MB, 1)


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def target_label(r: dict[str, Any]) -> str:
    """What was measured, as the summaries name it: geventchat, or Redis and its version."""
    if r.get("target") != "redis":
        return "geventchat"
    return f"Redis {r['server_version']}" if r.get("server_version") else "Redis"


def load_label(r: dict[str, Any]) -> str:
    """The workload of a run in one phrase, for summary headers."""
    load = f"window {r['window']}" if r["mode"] == "window" else f"rate {r['rate']:g} lines/s"
    return (
        f"{r['clients']} clients, {r['senders']} senders, {load}, {r['size']} B padding, "
        f"{r['duration']:g} s, engine {r['engine']} x{r['workers']}"
    )


def human_summary(r: dict[str, Any]) -> str:
    """The end-of-run text for people."""
    lat = r["latency_ms"]
    fair = r["fairness"]
    kind = " pub/sub" if r.get("target") == "redis" else ""
    lines = [
        f"{target_label(r)}{kind} load test: {load_label(r)}",
        f"  connect      {r['connect_s']:.3f} s   registration {r['register_s']:.3f} s "
        f"({r['registered']} registered, {r['failed']} failed)",
        f"  lines sent   {r['lines_sent']:,} ({r['lines_per_s']:,.0f}/s)",
        f"  deliveries   {r['deliveries_received']:,} received of "
        f"{r['deliveries_expected']:,} expected (drained in {r['drain_s']:.3f} s)",
        f"  throughput   {r['deliveries_per_s']:,.0f} deliveries/s",
        f"  latency      p50 {_fmt(lat['p50'], ' ms', 2)}  p90 {_fmt(lat['p90'], ' ms', 2)}  "
        f"p99 {_fmt(lat['p99'], ' ms', 2)}  max {_fmt(lat['max'], ' ms', 2)}  "
        f"({r['latency_samples']:,} own echoes)",
        *_delivery_latency_line(r),
        f"  fairness     lines per sender min {fair['min']:,} / median {fair['median']:,.0f} "
        f"/ max {fair['max']:,}",
        f"  server       CPU {_fmt(r['server']['cpu_s'], ' s', 2)} "
        f"({_fmt(r['server']['cpu_pct'], '%', 0)} of a core), "
        f"peak RSS {_fmt(r['server']['peak_rss_mb'], ' MB')}",
        f"  generator    CPU {r['generator']['cpu_s']:.2f} s ({r['generator']['cpu_pct']:.0f}%"
        f" of a core; {r['generator']['cores']} cores shared with the server)",
        f"  limit        {r['limit_note']}",
        f"  machine      all cores {_fmt(r['machine']['busy_pct'], '%', 0)} busy of "
        f"{r['generator']['cores'] * 100}%; kernel softirq "
        f"{_fmt(r['machine']['softirq_pct'], '%', 0)}, other processes "
        f"{_fmt(r['machine']['other_pct'], '%', 0)}",
    ]
    if r["deferred_sends"]:
        lines.append(
            f"  rate         {r['deferred_sends']:,} due lines skipped: the server "
            "did not take them (the offered rate was not reached)"
        )
    lines += [f"  warning      {w}" for w in r["warnings"]]
    if r["problems"]:
        lines.append("")
        lines += [f"!!! {p}" for p in r["problems"]]
    else:
        lines.append("  result       OK: every client got every line exactly once")
    return "\n".join(lines)


def _delivery_latency_line(r: dict[str, Any]) -> list[str]:
    """The observers' latency line, when the run had observers."""
    if not r.get("delivery_latency_samples"):
        return []
    lat = r["delivery_latency_ms"]
    return [
        f"  delivered    p50 {_fmt(lat['p50'], ' ms', 2)}  p90 {_fmt(lat['p90'], ' ms', 2)}  "
        f"p99 {_fmt(lat['p99'], ' ms', 2)}  max {_fmt(lat['max'], ' ms', 2)}  "
        f"({r['delivery_latency_samples']:,} lines seen by {r['observers']} observers)"
    ]


def idle_summary(r: dict[str, Any]) -> str:
    """The end-of-run text for --idle."""
    per_conn = r["rss_per_conn_kb"]
    lines = [
        f"{r.get('target', 'geventchat')} idle test: {r['idle']} clients, "
        f"engine {r['engine']} x{r['workers']}, "
        f"{len(r['sources'])} source address(es)",
        f"  registration {r['register_s']:.3f} s for {r['registered']} clients "
        f"({r['failed']} failed)",
        f"  server RSS   {_fmt(r['rss_before_mb'], ' MB')} before, "
        f"{_fmt(r['rss_after_mb'], ' MB')} after",
        f"  per client   {_fmt(per_conn, ' KB')} of server RSS",
    ]
    if r.get("server_cpu_s") is not None:
        lines.append(f"  server CPU   {r['server_cpu_s']:.2f} s while registering (generator "
                     f"{r.get('generator_cpu_s', 0):.2f} s); load average "
                     f"{' '.join(str(x) for x in r.get('load_avg', []))}")
    if r.get("bystander"):
        b = r["bystander"]
        lines.append(f"  bystander    {b['lines']} echoes: p50 {b['p50_ms']} ms, p99 "
                     f"{b['p99_ms']} ms, max {b['max_ms']} ms, {b['lost']} lost")
    lines += [f"  warning      {w}" for w in r["warnings"]]
    lines += [f"!!! {p}" for p in r["problems"]]
    return "\n".join(lines)


# ---- comparison with Redis ----


def cpu_ns_per_delivery(r: dict[str, Any]) -> float | None:
    """Server CPU per delivery: the efficiency figure, fair even when cores were shared."""
    pct, rate = r["server"]["cpu_pct"], r["deliveries_per_s"]
    return None if pct is None or not rate else pct / 100 / rate * 1e9


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or not theirs else round(ours / theirs, 3)


def compare_ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    """geventchat / Redis for the headline figures (throughput > 1 and latency < 1 favour us)."""
    lat_o, lat_t = ours["latency_ms"], theirs["latency_ms"]
    seen_o, seen_t = _delivery(ours), _delivery(theirs)
    return {
        "deliveries_per_s": _ratio(ours["deliveries_per_s"], theirs["deliveries_per_s"]),
        "p50_ms": _ratio(lat_o["p50"], lat_t["p50"]),
        "p99_ms": _ratio(lat_o["p99"], lat_t["p99"]),
        "delivery_p50_ms": _ratio(seen_o["p50"], seen_t["p50"]),
        "delivery_p99_ms": _ratio(seen_o["p99"], seen_t["p99"]),
        "server_cpu_ns_per_delivery": _ratio(
            cpu_ns_per_delivery(ours), cpu_ns_per_delivery(theirs)
        ),
        "server_peak_rss_mb": _ratio(
            ours["server"]["peak_rss_mb"], theirs["server"]["peak_rss_mb"]
        ),
    }


def compare_result(
    ours: dict[str, Any], theirs: dict[str, Any] | None, skipped: str | None
) -> dict[str, Any]:
    """The --compare result: both runs, their ratios, and every problem of either."""
    problems = [f"geventchat: {p}" for p in ours["problems"]]
    problems += [f"redis: {p}" for p in (theirs or {}).get("problems", [])]
    return {
        "compare": "redis",
        "geventchat": ours,
        "redis": theirs,
        "redis_skipped": skipped,
        "ratios": compare_ratios(ours, theirs) if theirs else None,
        "problems": problems,
        "ok": not problems,
    }


Getter = Callable[[dict[str, Any]], Any]


def _latency(q: str) -> Getter:
    return lambda r: r["latency_ms"][q]


def _delivery(r: dict[str, Any]) -> dict[str, float | None]:
    """The observers' percentiles (all None for runs without observers)."""
    return r.get("delivery_latency_ms") or dict.fromkeys(("p50", "p90", "p99", "max"))


def _delivered(q: str) -> Getter:
    return lambda r: _delivery(r)[q]


def _ms(v: float | None) -> str:
    return _fmt(v, " ms", 2)


def _count(v: float) -> str:
    return f"{v:,.0f}"


# label, figure, its format, and whether a geventchat/Redis ratio means something
COMPARE_ROWS: tuple[tuple[str, Getter, Callable[[Any], str], bool], ...] = (
    ("deliveries/s", lambda r: r["deliveries_per_s"], _count, True),
    ("lines sent/s", lambda r: r["lines_per_s"], _count, True),
    ("echo p50", _latency("p50"), _ms, True),
    ("echo p90", _latency("p90"), _ms, True),
    ("echo p99", _latency("p99"), _ms, True),
    ("echo max", _latency("max"), _ms, True),
    ("delivered p50", _delivered("p50"), _ms, True),
    ("delivered p90", _delivered("p90"), _ms, True),
    ("delivered p99", _delivered("p99"), _ms, True),
    ("delivered max", _delivered("max"), _ms, True),
    ("server CPU", lambda r: r["server"]["cpu_pct"], lambda v: _fmt(v, "% of a core", 0), False),
    ("server CPU/delivery", cpu_ns_per_delivery, lambda v: _fmt(v, " ns", 0), True),
    ("server peak RSS", lambda r: r["server"]["peak_rss_mb"], lambda v: _fmt(v, " MB"), True),
    ("deliveries/read", lambda r: r.get("deliveries_per_read"), _fmt, True),
    ("generator CPU", lambda r: r["generator"]["cpu_pct"], lambda v: f"{v:.0f}%", False),
    ("kernel softirq", lambda r: r["machine"]["softirq_pct"], lambda v: _fmt(v, "%", 0), False),
    ("registration", lambda r: r["register_s"], lambda v: f"{v:.3f} s", False),
    ("limit", lambda r: r["limit"], str, False),
    ("loss/dup", lambda r: r["ok"], lambda ok: "none" if ok else "YES", False),
)


def compare_table(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Rows of figure | geventchat | Redis | geventchat/Redis, aligned for a terminal."""
    rows = [("", "geventchat", target_label(theirs), "geventchat/Redis")]
    for label, get, show, has_ratio in COMPARE_ROWS:
        ratio = _ratio(get(ours), get(theirs)) if has_ratio else None
        shown = "" if ratio is None else f"{ratio:.2f}x"
        rows.append((label, show(get(ours)), show(get(theirs)), shown))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        f"  {row[0]:<{widths[0]}}   {row[1]:>{widths[1]}}   {row[2]:>{widths[2]}}   "
        f"{row[3]:>{widths[3]}}".rstrip()
        for row in rows
    ]


def compare_summary(result: dict[str, Any]) -> str:
    """Both runs side by side, the headline ratios, then each run's warnings and problems."""
    ours, theirs = result["geventchat"], result["redis"]
    runs = ours.get("runs", 1)
    how = "one run each" if runs == 1 else f"median of {runs} runs each"
    lines = [f"geventchat vs Redis pub/sub, {how}: {load_label(ours)}"]
    if theirs is None:
        lines += [f"  Redis skipped: {result['redis_skipped']}", "", human_summary(ours)]
        return "\n".join(lines)
    lines += compare_table(ours, theirs)
    ratio = result["ratios"]
    lines += [
        f"  ratios       deliveries/s {_fmt(ratio['deliveries_per_s'], 'x', 2)} "
        "(above 1: geventchat faster)",
        f"               echo latency p50 {_fmt(ratio['p50_ms'], 'x', 2)}, p99 "
        f"{_fmt(ratio['p99_ms'], 'x', 2)}; delivered p50 "
        f"{_fmt(ratio['delivery_p50_ms'], 'x', 2)}, p99 "
        f"{_fmt(ratio['delivery_p99_ms'], 'x', 2)} (above 1: geventchat slower)",
    ]
    if runs > 1:  # the spread behind each median
        for r in (ours, theirs):
            each = ", ".join(f"{x:,.0f}" for x in r["deliveries_per_s_all"])
            lines.append(f"  runs         {target_label(r)} deliveries/s: {each}")
    for r in (ours, theirs):
        lines += [f"  warning      {target_label(r)}: {w}" for w in r["warnings"]]
    if result["problems"]:
        lines.append("")
        lines += [f"!!! {p}" for p in result["problems"]]
    else:
        lines.append("  result       OK: in both runs every client got every line exactly once")
    return "\n".join(lines)


# ---- sweep ----

SWEEP_COLUMNS = (
    ("clients", "N", lambda r: f"{r['clients']}"),
    ("deliveries_per_s", "deliveries/s", lambda r: f"{r['deliveries_per_s']:,.0f}"),
    ("p50", "p50 ms", lambda r: _fmt(r["latency_ms"]["p50"], digits=2)),
    ("p99", "p99 ms", lambda r: _fmt(r["latency_ms"]["p99"], digits=2)),
    ("max", "max ms", lambda r: _fmt(r["latency_ms"]["max"], digits=2)),
    ("lines", "lines/s", lambda r: f"{r['lines_per_s']:,.0f}"),
    ("fair", "sender min/max", lambda r: f"{r['fairness']['min']:,}/{r['fairness']['max']:,}"),
    ("scpu", "server CPU", lambda r: _fmt(r["server"]["cpu_pct"], "%", 0)),
    ("srss", "server peak RSS", lambda r: _fmt(r["server"]["peak_rss_mb"], " MB")),
    ("gcpu", "generator CPU", lambda r: f"{r['generator']['cpu_pct']:.0f}%"),
    ("kcpu", "softirq", lambda r: _fmt(r["machine"]["softirq_pct"], "%", 0)),
    ("ocpu", "other procs", lambda r: _fmt(r["machine"]["other_pct"], "%", 0)),
    ("reg", "registration s", lambda r: f"{r['register_s']:.2f}"),
    ("limit", "limit", lambda r: r["limit"]),
    ("ok", "loss/dup", lambda r: "none" if r["ok"] else "YES"),
)


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row for a repeated point: the median of each figure over the runs.

    Problems of any repeat are kept, since one lossy run in three is still loss; the
    per-run throughput and p99 stay in the row so the spread is visible.
    """
    med = statistics.median
    row = dict(sorted(runs, key=lambda r: r["deliveries_per_s"])[len(runs) // 2])
    for key in ("deliveries_per_s", "lines_per_s", "register_s", "connect_s"):
        row[key] = med(r[key] for r in runs)
    for key in ("latency_ms", "delivery_latency_ms"):
        row[key] = {
            q: _median_or_none([(r.get(key) or {}).get(q) for r in runs])
            for q in ("p50", "p90", "p99", "max")
        }
    row["server"] = dict(
        row["server"],
        **{k: _median_or_none([r["server"][k] for r in runs]) for k in ("cpu_pct", "peak_rss_mb")},
    )
    row["generator"] = dict(row["generator"], cpu_pct=med(r["generator"]["cpu_pct"] for r in runs))
    row["machine"] = {
        k: _median_or_none([r["machine"][k] for r in runs])
        for k in ("busy_pct", "softirq_pct", "other_pct")
    }
    row["limit"] = "/".join(sorted({r["limit"] for r in runs}))
    row["problems"] = [p for r in runs for p in r["problems"]]
    row["ok"] = not row["problems"]
    row["runs"] = len(runs)
    row["deliveries_per_s_all"] = [r["deliveries_per_s"] for r in runs]
    row["p99_ms_all"] = [r["latency_ms"]["p99"] for r in runs]
    return row


def _median_or_none(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def sweep_table(points: Sequence[dict[str, Any]], header: str) -> str:
    """A markdown table, one row per N (the median of its runs)."""
    out = [
        header,
        "",
        "| " + " | ".join(c[1] for c in SWEEP_COLUMNS) + " |",
        "|" + "|".join("---:" for _ in SWEEP_COLUMNS) + "|",
    ]
    out += ["| " + " | ".join(c[2](p) for c in SWEEP_COLUMNS) + " |" for p in points]
    return "\n".join(out) + "\n"


def sweep_plot(
    points: Sequence[dict[str, Any]],
    title: str,
    path: Path,
    label: str = "",
    others: dict[str, Sequence[dict[str, Any]]] | None = None,
) -> None:
    """Deliveries/s and p99 latency against N (log x, ticks at the measured N), as a PNG;
    ``others`` are more sweeps (label -> points) drawn on the same axes."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed: the bench runs over ssh and in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, NullFormatter

    n = [p["clients"] for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 6))
    for name, more in (others or {}).items():
        m = [p["clients"] for p in more]
        top.plot(m, [p["deliveries_per_s"] for p in more], marker="s", label=name)
        bottom.plot(m, [p["latency_ms"]["p99"] for p in more], marker="s", label=name)
    top.plot(n, [p["deliveries_per_s"] for p in points], marker="o", label=label or None)
    top.set_ylabel("deliveries/s")
    top.yaxis.set_major_formatter(EngFormatter())
    top.set_ylim(bottom=0)
    top.set_title(title.replace(": ", ":\n", 1), fontsize=10)
    bottom.plot(n, [p["latency_ms"]["p99"] for p in points], marker="o", color="tab:red",
                label=label or None)
    if others:
        top.legend(fontsize=8)
        bottom.legend(fontsize=8)
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("clients (N)")
    bottom.set_xscale("log")
    bottom.set_xticks(n, [f"{x:,}" for x in n])
    bottom.xaxis.set_minor_formatter(NullFormatter())
    for ax in (top, bottom):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
