"""Crash safety of the history file, on real server processes.

* SIGKILL mid-write, many rounds, restarting on the same file and port: the file must stay a
  clean, prefix-consistent log (records in order, none duplicated, only a torn *last* line,
  which later appends never glue onto) and the server must restart and replay it.
* SIGTERM: everything echoed before the shutdown notice is in the file, exactly.
* Disk trouble (a full tmpfs, a file size limit): chat goes on, admins are told, and every
  line said meanwhile is written once the disk takes writes again.

The honest durability promise is "a line is on disk once the writer has written it"; the
server echoes a line before its writer thread writes it, so a SIGKILL may lose lines that
were echoed, and the tests do not pretend otherwise.
"""

from __future__ import annotations

import errno
import json
import random
import re
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from tests.helpers import TIMEOUT, LineClient, ServerProcess, add_admin, wait_for

ROUNDS = 10
LINES = 200_000  # a cap: the streams are stopped long before


class Collector:
    """Reads a client's socket in a thread until EOF or error, keeping every line."""

    def __init__(self, client: LineClient) -> None:
        self.lines: list[str] = []
        self.done = threading.Event()
        self._client = client
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        sock, buf = self._client.sock, self._client.buf
        sock.settimeout(TIMEOUT * 3)
        try:
            while chunk := sock.recv(1 << 20):
                buf += chunk
                *complete, buf = buf.split(b"\n")
                self.lines.extend(x.decode("utf-8", "replace") for x in complete)
        except OSError:
            pass
        finally:
            self.done.set()


class Stream:
    """A thread sending numbered lines (``PREFIX000000``...) from user ``w`` until stopped,
    ``LINES`` are sent, or the server dies under it (the point of these tests).

    ``paced``: send 500 lines, then read until their last echo came back, like a client
    pasting a file and watching it scroll by; ``lines`` then holds everything received.
    Unpaced, it sends as fast as the kernel takes the bytes and reads nothing.
    """

    def __init__(self, client: LineClient, prefix: str, paced: bool = True) -> None:
        self.sent = 0
        self.lines: list[str] = []
        self._client, self._prefix, self._paced = client, prefix, paced
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock, buf = self._client.sock, self._client.buf
        sock.settimeout(TIMEOUT)
        try:
            while self.sent < LINES and not self._stop.is_set():
                n = min(500, LINES - self.sent)
                sock.sendall("".join(f"{self._prefix}{i:06d}\n" for i in
                                     range(self.sent, self.sent + n)).encode())
                self.sent += n
                last = f"w: {self._prefix}{self.sent - 1:06d}"
                while self._paced and (not self.lines or self.lines[-1] != last):
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        return
                    buf += chunk
                    *complete, buf = buf.split(b"\n")
                    self.lines.extend(x.decode("utf-8", "replace") for x in complete)
        except OSError:
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive()


def _numbered(prefix: str, count: int) -> bytes:
    return "".join(f"{prefix}{i:06d}\n" for i in range(count)).encode()


def file_has(path: Path, needle: bytes) -> bool:
    return path.exists() and needle in path.read_bytes()


def read_history(path: Path) -> tuple[list[dict], list[bytes], bytes]:
    """(valid records, complete lines that are not valid records, torn tail or b"")."""
    lines = path.read_bytes().split(b"\n") if path.exists() else [b""]
    tail = lines.pop()
    records, bad = [], []
    for line in lines:
        try:
            record = json.loads(line.decode("utf-8"))
            assert isinstance(record, dict) and {"time", "kind", "name", "text"} <= set(record)
        except (ValueError, AssertionError):
            bad.append(line)
            continue
        records.append(record)
    return records, bad, tail


# --- SIGKILL ------------------------------------------------------------------------------


def test_sigkill_rounds_leave_a_clean_prefix_consistent_file(make_srv):
    rng = random.Random()
    srv = make_srv(start=False)
    policies = ("always", "interval", "never")
    torn: list[bytes] = []  # fragments left by kills; they may stay as (skipped) lines
    written: dict[int, int] = {}  # round -> records of it in the file
    mid_write = 0
    prev_tail = b""
    for r in range(ROUNDS):
        srv.extra = ["--rate-limit", "0", "--fsync", policies[r % 3], "--history-replay", "20"]
        srv.start()  # same port and file every round (the port is known after round 0)
        records, bad, tail = read_history(srv.history)
        assert tail == prev_tail, "the file changed while the server started"
        if bad:
            srv.wait_log("(?i)warn")  # a skipped line is logged
        # The server replays the file: the newcomer gets its last 20 records.
        viewer = LineClient(srv.port)
        replay = viewer.login(f"viewer{r}")
        assert replay == [f"w: {x['text']}" for x in records[-20:]]
        viewer.close()

        writer = srv.connect("w")
        size0 = srv.history.stat().st_size if srv.history.exists() else 0
        stop_at = size0 + rng.randint(5_000, 800_000)  # ~50 to ~8,000 of the records
        sender = Stream(writer, f"r{r}-")
        wait_for(lambda stop_at=stop_at: srv.history.exists()
                 and srv.history.stat().st_size >= stop_at,
                 30, f"round {r}: history to grow to {stop_at} bytes")
        srv.kill()  # SIGKILL, with the writer still sending
        sender.stop()
        writer.close()

        records, bad, tail = read_history(srv.history)
        assert all(line in torn for line in bad), f"round {r}: corrupt line(s) mid-file: {bad}"
        if tail:
            torn.append(tail)
        prev_tail = tail
        seen: set[str] = set()
        last_round = -1
        per_round: dict[int, list[int]] = {}
        for rec in records:
            assert rec["kind"] == "message" and rec["name"] == "w", rec
            text = rec["text"]
            assert text not in seen, f"round {r}: duplicated record {text}"
            seen.add(text)
            m = re.fullmatch(r"r(\d+)-(\d{6})", text)
            assert m, f"interleaved or mangled record {text!r}"
            k, i = int(m[1]), int(m[2])
            assert k >= last_round, f"round {k} record after a round {last_round} one"
            last_round = k
            per_round.setdefault(k, []).append(i)
        for k, nums in per_round.items():
            assert nums == list(range(len(nums))), f"round {k}: not a prefix, in order"
        for k, count in written.items():  # nothing already in the file was lost
            assert len(per_round.get(k, [])) == count, f"round {k} records changed"
        written[r] = len(per_round.get(r, []))
        mid_write += 0 < written[r] < sender.sent
    print(f"\nSIGKILL rounds survived: {ROUNDS} ({mid_write} killed mid-stream); "
          f"records per round: {list(written.values())}; torn tails: {len(torn)}")
    assert mid_write >= ROUNDS // 2, f"{written}: the kills did not land mid-stream"
    # One last start: the file replays, and new lines land after everything else.
    srv.extra = ["--rate-limit", "0"]
    srv.start()
    c = srv.connect("w")
    c.send("final")
    c.expect("w: final")
    assert srv.stop() == 0
    records, bad, tail = read_history(srv.history)
    assert records[-1]["text"] == "final" and not tail
    assert all(line in torn for line in bad)


def test_torn_last_line_is_skipped_and_never_glued_to_new_records(make_srv):
    srv = make_srv("--rate-limit", "0", start=False)
    srv.history.write_bytes(
        b'{"time":"2026-01-01T00:00:00+00:00","kind":"message","name":"old","text":"kept"}\n'
        b'{"time":"2026-01-01T00:00:01+00:00","kind":"mess')  # a crash mid-write
    srv.start()
    srv.wait_log("(?i)warn.*(line|torn|corrupt)")
    c = LineClient(srv.port)
    assert c.login("bob") == ["old: kept"]
    c.send("new line")
    c.expect("bob: new line")
    assert srv.stop() == 0
    records, bad, tail = read_history(srv.history)
    assert [x["text"] for x in records] == ["kept", "new line"]
    assert bad == [b'{"time":"2026-01-01T00:00:01+00:00","kind":"mess'] and not tail


# --- SIGTERM -------------------------------------------------------------------------------


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_sigterm_keeps_exactly_what_was_echoed(make_srv, fsync):
    srv = make_srv("--rate-limit", "0", "--fsync", fsync)
    writer = srv.connect("w")
    sender = Stream(writer, "n")
    wait_for(lambda: len(sender.lines) >= 5000, TIMEOUT, "5000 echoes")
    assert srv.signal(signal.SIGTERM) == 0
    sender.stop()
    _check_sigterm(srv, writer, sender, sender.lines)


def test_sigterm_keeps_exactly_what_was_echoed_by_a_fast_unpaced_sender(make_srv):
    srv = make_srv("--rate-limit", "0", "--history-max", "0")  # exact counts: no compaction
    writer = srv.connect("w")
    inbox = Collector(writer)
    sender = Stream(writer, "n", paced=False)
    wait_for(lambda: sender.sent == LINES, 30, "the whole stream sent")
    wait_for(lambda: f"w: n{LINES - 1:06d}" in inbox.lines[-5:], 30, "the last echo")
    assert srv.signal(signal.SIGTERM) == 0
    sender.stop()
    _check_sigterm(srv, writer, sender, inbox.lines, wait=inbox.done)


def _check_sigterm(srv, writer, sender, lines, wait=None) -> None:
    if wait is not None:
        assert wait.wait(TIMEOUT)
    else:  # the paced sender stopped reading: read the rest ourselves
        rest = writer.closed(timeout=TIMEOUT)
        lines = lines + rest
    notice = "* server shutting down: server stopped"
    assert notice in lines
    cut = lines.index(notice)
    echoed = [x[3:] for x in lines[:cut] if x.startswith("w: ")]
    assert not [x for x in lines[cut:] if x.startswith("w: ")]
    records, bad, tail = read_history(srv.history)
    assert not bad and not tail
    texts = [x["text"] for x in records]
    assert len(texts) == len(echoed) and texts == echoed  # exact: nothing lost or extra
    assert echoed == [f"n{i:06d}" for i in range(len(echoed))]
    assert "dropping" not in "".join(srv.log)


# --- disk trouble --------------------------------------------------------------------------


def _disk_trouble(srv: ServerProcess, break_disk, fix_disk) -> None:
    """Lines said while the disk refuses writes reach everyone at once and the file later."""
    add_admin(srv.admins, "root", "s3cret-pw")
    srv.start()
    root = srv.connect("root", "s3cret-pw")
    alice, bob = srv.connect("alice"), srv.connect("bob")
    alice.send(_numbered("before-", 5))
    wait_for(lambda: file_has(srv.history, b"before-000004"), TIMEOUT, "first lines")

    break_disk()
    alice.send(_numbered("full-", 200))
    heard = bob.expect("alice: full-000199")  # live chat goes on
    seen = root.expect("alice: full-000199")
    if not any(x.startswith("* history: ") for x in seen):
        seen += root.expect(re.compile(r"^\* history: "))
    notices = [x for x in seen if x.startswith("* history: ")]
    assert len(notices) == 1, notices  # told once per failure streak, not once per line
    assert re.search(r"cannot write .*(?i:space|too large)", notices[0]), notices[0]
    print(f"\nadmin notice: {notices[0]}")

    fix_disk()
    alice.send(_numbered("after-", 5))
    wait_for(lambda: file_has(srv.history, b"after-000004"), 15, "writes to resume")
    heard += bob.expect("alice: after-000004")
    assert not [x for x in heard if x.startswith("* history")]  # for admins only
    assert srv.stop() == 0
    records, bad, tail = read_history(srv.history)
    texts = [x["text"] for x in records]
    want = ([f"before-{i:06d}" for i in range(5)] + [f"full-{i:06d}" for i in range(200)]
            + [f"after-{i:06d}" for i in range(5)])
    assert texts == want  # every line, once, in order: the backlog was kept and written
    valid = srv.history.read_bytes().split(b"\n")
    for line in bad:  # a write cut short by the full disk is a torn line, redone whole later
        assert any(v.startswith(line) and v != line for v in valid), line
    assert not tail
    srv.start()
    assert LineClient(srv.port).login("carol")[-3:] == [f"alice: after-{i:06d}"
                                                         for i in range(2, 5)]
    bob.close()


def test_disk_full_on_tmpfs_chat_goes_on_admins_are_told_writes_resume(make_srv, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                             capture_output=True, text=True, timeout=TIMEOUT)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    filler = mnt / "filler"
    srv = make_srv("--rate-limit", "0", "--history-replay", "300", start=False)
    srv.history = mnt / "history.txt"

    def fill() -> None:
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            try:
                while True:
                    f.write(b"\0")
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    try:
        _disk_trouble(srv, fill, filler.unlink)
    finally:
        srv.kill()
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=TIMEOUT)


def test_file_size_limit_chat_goes_on_admins_are_told_writes_resume(make_srv):
    srv = make_srv("--rate-limit", "0", "--history-replay", "300", start=False)

    def limit() -> None:  # writes past the current end now fail with EFBIG
        proc = psutil.Process(srv.proc.pid)
        proc.rlimit(psutil.RLIMIT_FSIZE, (srv.history.stat().st_size, psutil.RLIM_INFINITY))

    def unlimit() -> None:
        psutil.Process(srv.proc.pid).rlimit(psutil.RLIMIT_FSIZE,
                                            (psutil.RLIM_INFINITY, psutil.RLIM_INFINITY))

    _disk_trouble(srv, limit, unlimit)
