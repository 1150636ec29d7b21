"""The load benchmark itself must be right before its numbers mean anything.

Small runs of ``bench/loadtest.py`` against the real server, with each engine: every
client must get every line exactly once, the exit status must say so, and the JSON must
carry sane figures. Speed is never asserted: these machines are shared and noisy, and a
correctness test that fails on a slow day teaches people to ignore it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RUN_TIMEOUT_S = 25  # the whole file must stay well under 30 s per run

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server not installed"
)
ENGINES = [pytest.param("c", marks=needs_gcc), "python"]


def loadtest(*args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the bench with --json; return the process and its one JSON line."""
    cmd = [sys.executable, str(BENCH / "loadtest.py"), "--json", "--no-progress", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got:\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(lines[0])


def assert_exactly_once(r: dict[str, Any], clients: int) -> None:
    """No loss, no duplication, nobody dropped: the bench's own definition of a clean run."""
    assert r["ok"] is True and r["problems"] == [], r["problems"]
    assert r["registered"] == clients and r["failed"] == 0
    assert r["lines_sent"] > 0
    assert r["deliveries_expected"] == r["lines_sent"] * clients
    assert r["deliveries_received"] == r["deliveries_expected"]
    assert r["missing"] == r["extra"] == r["disconnected"] == r["echo_errors"] == 0


def assert_sane_figures(r: dict[str, Any]) -> None:
    """Every figure present and internally consistent; none compared to a speed."""
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert r["latency_samples"] == r["lines_sent"]  # every own echo was timed
    if r["engine"] == "c":  # and every observer timed every line
        seen = r["delivery_latency_ms"]
        assert r["observers"] > 0
        assert r["delivery_latency_samples"] == r["observers"] * r["lines_sent"]
        assert 0 < seen["p50"] <= seen["p90"] <= seen["p99"] <= seen["max"]
    fair = r["fairness"]
    assert 0 < fair["min"] <= fair["median"] <= fair["max"]
    assert r["deliveries_per_s"] > 0 and r["lines_per_s"] > 0
    assert r["server"]["cpu_s"] > 0 and r["server"]["peak_rss_mb"] > 0
    assert r["generator"]["cpu_s"] >= 0 and r["generator"]["cores"] >= 1
    assert r["limit"] in {"generator", "server", "cpu", "none"}
    assert r["register_s"] >= r["connect_s"] >= 0
    assert r["machine"]["busy_pct"] >= 0 and r["machine"]["other_pct"] >= 0


@pytest.mark.parametrize("engine", ENGINES)
def test_window_run_delivers_every_line_exactly_once(engine: str) -> None:
    proc, r = loadtest(
        "--clients", "20", "--senders", "3", "--window", "8", "--duration", "2", "--engine", engine
    )
    assert proc.returncode == 0, proc.stderr
    assert r["engine"] == engine and r["mode"] == "window"
    assert_exactly_once(r, 20)
    assert_sane_figures(r)


@needs_gcc
def test_rate_run_with_padding_keeps_the_rate() -> None:
    proc, r = loadtest(
        "--clients",
        "10",
        "--senders",
        "2",
        "--rate",
        "200",
        "--size",
        "300",
        "--duration",
        "1.5",
        "--engine",
        "c",
    )
    assert proc.returncode == 0, proc.stderr
    assert r["mode"] == "rate" and r["size"] == 300
    assert_exactly_once(r, 10)
    assert_sane_figures(r)
    assert r["fairness"]["max"] - r["fairness"]["min"] <= 2  # rate mode paces every sender


def test_histogram_buckets_hold_their_values() -> None:
    """Python and C share this bucketing; a midpoint must sit within 1.6% of its values."""
    sys.path.insert(0, str(BENCH))
    try:
        from histogram import Histogram, bucket_index, bucket_mid, merge, percentile
    finally:
        sys.path.remove(str(BENCH))
    for ns in (0, 1, 63, 64, 65, 127, 128, 1000, 123_456, 10**9, 3 * 10**11):
        mid = bucket_mid(bucket_index(ns))
        assert abs(mid - ns) <= max(1, ns * 0.016)
    hist = Histogram()
    for ms in range(1, 101):
        hist.record(ms * 1_000_000)
    pairs = merge([hist.to_pairs(), hist.to_pairs()])
    assert abs(percentile(pairs, 50) - 50e6) <= 50e6 * 0.016
    assert abs(percentile(pairs, 99) - 99e6) <= 99e6 * 0.016


@needs_gcc
@needs_redis
def test_compare_with_redis_checks_both_targets_exactly_once() -> None:
    """The Redis baseline is held to the same exactly-once check as geventchat."""
    proc, r = loadtest(
        "--compare", "redis", "--clients", "12", "--senders", "2", "--duration", "1.5"
    )
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] is True and r["redis_skipped"] is None
    assert r["geventchat"]["target"] == "geventchat" and r["redis"]["target"] == "redis"
    for run in (r["geventchat"], r["redis"]):
        assert_exactly_once(run, 12)
        assert_sane_figures(run)
    assert set(r["ratios"]) >= {"deliveries_per_s", "p50_ms", "p99_ms", "delivery_p50_ms"}
    assert r["ratios"]["deliveries_per_s"] > 0


def test_compare_without_redis_server_skips_redis() -> None:
    """No redis-server: geventchat is still measured and the skip is said, not an error."""
    proc, r = loadtest(
        "--compare",
        "redis",
        "--redis-server",
        "/nonexistent/redis-server",
        "--clients",
        "5",
        "--senders",
        "1",
        "--duration",
        "0.5",
    )
    assert proc.returncode == 0, proc.stderr
    assert r["redis"] is None and r["ratios"] is None
    assert "not found" in r["redis_skipped"] and "not found" in proc.stderr
    assert_exactly_once(r["geventchat"], 5)


@pytest.mark.parametrize("mode", [[], ["--callbacks"], ["--relay", "--batch"]])
def test_bare_server_answers_the_handshake_as_geventchat(mode: list[str]) -> None:
    """The floor script stands in for geventchat in the bench's storms: it must answer an
    eager client exactly as geventchat's first lines do, whichever design it runs."""
    import socket

    from tests.helpers import read_until

    proc = subprocess.Popen([sys.executable, str(BENCH / "bare_server.py"), "--port", "0",
                             *mode], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline()  # printed once listening (pytest-timeout bounds it)
        port = int(re.search(r":(\d+)$", banner.strip()).group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"bob\n")
            assert read_until(sock, b"joined\n") == b"? name:\n* bob joined\n"
            if "--relay" in mode:
                sock.sendall(b"hello\n")
                assert read_until(sock, b"hello\n") == b"bob: hello\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_perline_reports_every_stage_and_the_essentials() -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "perline.py"), "--lines", "400",
                           "--runs", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    figures = dict(re.findall(r"^  (.+?)\s+(\d+\.\d\d)$", proc.stdout, re.M))
    for stage in ("decode", "parse", "Python total (without the kernel)",
                  "build the event", "its history record", "essentials together"):
        assert float(figures[stage]) > 0, proc.stdout


@needs_redis
def test_compare_with_runs_says_medians_and_shows_each_run() -> None:
    cmd = [sys.executable, str(BENCH / "loadtest.py"), "--no-progress", "--compare", "redis",
           "--runs", "2", "--clients", "4", "--senders", "1", "--duration", "0.4"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert "geventchat vs Redis pub/sub, median of 2 runs each:" in proc.stdout
    each = re.findall(r"^  runs +(geventchat|Redis[^:]*) deliveries/s: ([\d,]+), ([\d,]+)$",
                      proc.stdout, re.M)
    assert [who.split()[0] for who, *_ in each] == ["geventchat", "Redis"], proc.stdout
