"""Big history files cost no one else anything: opening a room whose file holds a million
lines does not stall other users, and start-up does not read whole files (review F2)."""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import TIMEOUT

LINES = 1_000_000
RECORD = ('{"time":"2026-11-23T21:05:09.123456+00:00","kind":"message","name":"old",'
          '"text":"line %07d of a very long history, padded to look like chat","room":"x"}\n')


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.txt"
    with open(path, "w", encoding="utf-8") as f:
        chunk = 10_000
        for start in range(0, LINES, chunk):
            f.write("".join(RECORD % i for i in range(start, start + chunk)))
    return path


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    dst.chmod(0o600)


def test_joining_a_room_with_a_huge_file_does_not_stall_a_bystander(make_srv, big_file):
    srv = make_srv("--rate-limit", "0", start=False)
    srv.tmp.mkdir(exist_ok=True)
    _copy(big_file, srv.history.with_name("history.big.txt"))
    srv.start()
    bystander = srv.connect("bystander")
    joiner = srv.connect("joiner")
    rtts: list[float] = []
    stop = threading.Event()

    def ping() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            sent = time.monotonic()
            bystander.send(f"ping {i}")
            bystander.expect(f"bystander: ping {i}")
            rtts.append(time.monotonic() - sent)

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    time.sleep(0.3)  # some round trips before the join, for a baseline
    joiner.send("/join big")
    replay = joiner.expect("* joiner joined", timeout=TIMEOUT)
    assert any("line 0999999 of a very long history" in line for line in replay)
    time.sleep(0.3)
    stop.set()
    pinger.join(TIMEOUT)
    print(f"bystander echo over {len(rtts)} round trips: median "
          f"{statistics.median(rtts) * 1000:.1f} ms, max {max(rtts) * 1000:.1f} ms")
    assert len(rtts) > 10
    assert max(rtts) < 0.25, f"a bystander's echo stalled {max(rtts) * 1000:.0f} ms"


def test_start_up_does_not_read_a_huge_lobby_file(make_srv, big_file):
    srv = make_srv(start=False)
    srv.tmp.mkdir(exist_ok=True)
    _copy(big_file, srv.history)
    began = time.monotonic()
    srv.start()
    took = time.monotonic() - began
    print(f"listening {took * 1000:.0f} ms after start with a {LINES:,}-line lobby file")
    c = srv.connect("first")
    c.send("/who")
    c.expect("* online (1): first")
    assert took < 5.0  # the old server took ~10 s for a file this size


def test_a_second_server_on_the_same_history_refuses_to_start(make_srv):
    import subprocess
    import sys

    first = make_srv()
    done = subprocess.run(
        [sys.executable, "-m", "geventchat", "serve", "--host", "127.0.0.1", "--port", "0",
         "--history", str(first.history), "--admins", str(first.admins)],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        f"history file {first.history} is in use by another geventchat server")
