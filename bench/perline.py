"""Where a chat line's microseconds go: the per-line path, stage by stage, in one process.

    python bench/perline.py                 # 10 members, batches of 8 lines
    python bench/perline.py --members 100 --batch 16

The load test (``loadtest.py``) measures the whole server through real sockets; this
script takes the same path apart so that a change can be judged stage by stage: decode
(bytes to lines), parse (a line to a command), say (rights, the event, history append,
queueing for delivery), render (once per batch), fan-out (one write per member per batch:
here a no-op, so what is left is Python's own cost), the history writer's batch, and, for
scale, what one small ``send`` and one ``recv`` cost the kernel on a loopback TCP pair;
then the essentials alone (the event, its history record, its render), the part no
rearrangement of the path can remove.
Figures are CPU time per line of the server's thread (``time.thread_time``; the history
writer's threadpool apart), median of ``--runs``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent  # noqa: E402
from geventchat.core.broker import LocalBroker  # noqa: E402
from geventchat.core.events import LOBBY_NAME, Message  # noqa: E402
from geventchat.core.hub import Hub, Session  # noqa: E402
from geventchat.store.history import History, HistoryShelf, encode_record  # noqa: E402
from geventchat.wire.native import NATIVE, LineDecoder, parse  # noqa: E402
from geventchat.wire.native_commands import dispatch  # noqa: E402


class NullOutput:
    """A member's output that keeps nothing: the fan-out's Python cost without the kernel."""

    closed = False

    def write(self, data: bytes) -> None:
        pass


class NoAdmins:
    def is_admin(self, name: str) -> bool:
        return False

    def verify(self, name: str, password: str) -> bool:
        return False


def _timed(fn, lines: int, runs: int, between=None, chunk: int = 25) -> float:
    """Median CPU microseconds per line of ``fn(k)`` (which handles k batches); ``lines``
    lines in all, timed ``chunk`` batches at a time with ``between()`` untimed in between
    (a server's history writer takes the queued records every 5 ms: a queue left to grow
    would measure the allocator, not the path)."""
    out = []
    for _ in range(runs):
        spent, done = 0.0, 0
        while done < lines:
            start = time.thread_time()
            done += fn(chunk)
            spent += time.thread_time() - start
            if between is not None:
                between()
        out.append(spent / done * 1e6)
    return statistics.median(out)


def measure(members: int, batch: int, lines: int, runs: int, tmp: Path) -> dict[str, float]:
    def history(room: str) -> History:
        return History(tmp / f"h.{room}.txt", replay=100, fsync="interval",
                       max_records=50_000, room=room)

    hub = Hub(LocalBroker(HistoryShelf(history)), NoAdmins())
    sessions = []
    for i in range(members):
        s = Session(f"user{i}", NullOutput(), NATIVE, lambda reason: None)
        s.always_in_room = True
        hub.register(s)
        hub.join(s, hub.lobby)
        sessions.append(s)
    hub.broker.prepare(hub.lobby)
    gevent.sleep(0.05)
    room = hub.lobby
    room.flush()
    texts = [f"line {i} of the benchmark, about as long as a chat line" for i in range(batch)]
    chunk = "".join(t + "\n" for t in texts).encode()
    decoder = LineDecoder()
    speaker = sessions[0]

    def decode(rounds: int) -> int:
        for _ in range(rounds):
            decoder.feed(chunk)
        return rounds * batch

    def parse_all(rounds: int) -> int:
        for _ in range(rounds):
            for t in texts:
                parse(t)
        return rounds * batch

    cmds = [parse(t) for t in texts]

    def say_and_flush(rounds: int) -> int:
        for _ in range(rounds):
            for cmd in cmds:
                dispatch(hub, speaker, cmd)
            room.flush()
        return rounds * batch

    def say_only(rounds: int) -> int:
        for _ in range(rounds):
            for cmd in cmds:
                dispatch(hub, speaker, cmd)
            room._pending.clear()  # measured apart: render and fan-out below
        return rounds * batch

    def render_only(rounds: int) -> int:
        pending = [e for e in hub.lobby.recent()][-batch:]
        for _ in range(rounds):
            NATIVE.render_many(pending)
        return rounds * batch

    history_obj = hub.broker._history(room)  # noqa: SLF001  (a benchmark looks inside)

    def drain_history() -> None:
        history_obj.flush(timeout=30)

    say = "say (rights, event, history append, queue)"
    result = {
        "decode": _timed(decode, lines, runs),
        "parse": _timed(parse_all, lines, runs),
        say: _timed(say_only, lines, runs, drain_history),
        "render (per batch, per line)": _timed(render_only, lines, runs),
    }
    result["fan-out Python (say+flush - say - render)"] = max(
        0.0, _timed(say_and_flush, lines, runs, drain_history) - result[say]
        - result["render (per batch, per line)"])
    drain_history()
    start_process, start_thread = time.process_time(), time.thread_time()
    handled = 0
    while handled < lines:
        handled += say_and_flush(25)
        gevent.sleep(0.006)  # the writer's round, as in a server
    drain_history()
    other_threads = ((time.process_time() - start_process)
                     - (time.thread_time() - start_thread))
    result["history writer threads (write, fsync, compaction)"] = other_threads / handled * 1e6
    result.update(_kernel(batch))
    result.update(_essentials(texts, lines, runs))
    return result


def _essentials(texts: list[str], lines: int, runs: int) -> dict[str, float]:
    """What every stored line costs in any design that keeps this history and wire format:
    its event, its history record, its share of a batch's render. At N=10 a server that
    matches Redis's deliveries/s has about 3 us of chat work per line (its 6.6 us per line
    less the 0.35 us per delivery of a batched bare relay, ``bare_server.py``); this is the
    part of those 3 us that no reorganisation of the path can save."""
    batch = len(texts)

    def make(rounds: int) -> int:
        for _ in range(rounds):
            for t in texts:
                Message("user0", t, LOBBY_NAME)
        return rounds * batch

    made = [Message("user0", t, LOBBY_NAME, id=i + 1) for i, t in enumerate(texts)]

    def encode(rounds: int) -> int:
        for _ in range(rounds):
            for e in made:
                encode_record(e)
        return rounds * batch

    def render(rounds: int) -> int:
        for _ in range(rounds):
            NATIVE.render_many(made)
        return rounds * batch

    return {
        "essential: build the event": _timed(make, lines, runs),
        "essential: its history record": _timed(encode, lines, runs),
        "essential: its render (per batch, per line)": _timed(render, lines, runs),
    }


def _kernel(batch: int) -> dict[str, float]:
    """One loopback TCP send of a batch's bytes, and one recv of it, in microseconds."""
    listener = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    data = b"user1: line of the benchmark, about as long as a chat line\n" * batch
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        a.send(data)
        b.recv(65536)
    both = (time.perf_counter() - start) / n * 1e6
    for s in (a, b, listener):
        s.close()
    return {f"kernel: one send+recv of a {batch}-line batch (per batch)": both}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="lines per read and per flush")
    parser.add_argument("--lines", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.members, args.batch, args.lines, args.runs, Path(tmp))
    print(f"per-line path, {args.members} members, batches of {args.batch} lines, "
          f"CPU us per line (median of {args.runs}):")
    total = essential = 0.0
    for name, us in result.items():
        if name.startswith("essential"):
            essential += us
            continue
        if not name.startswith("kernel"):
            total += us
        print(f"  {name:55s} {us:7.2f}")
    print(f"  {'Python total (without the kernel)':55s} {total:7.2f}")
    print("of which what any design pays per stored line (no checks, no queues, no calls):")
    for name, us in result.items():
        if name.startswith("essential"):
            print(f"  {name.removeprefix('essential: '):55s} {us:7.2f}")
    print(f"  {'essentials together':55s} {essential:7.2f}")


if __name__ == "__main__":
    main()
