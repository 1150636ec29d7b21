"""What a registration storm is made of, kept cheap without changing what a client sees:
TCP options every accepted socket has (set once on the listener where the kernel copies
them), and one ``send`` for the prompt and the join burst of a client that spoke first.
Real sockets: an in-process server, socket pairs for the output itself."""

from __future__ import annotations

import socket as stdsocket

import gevent
import pytest
from gevent import socket

from geventchat.config import Settings
from geventchat.edges.outbuf import Output
from geventchat.server import KEEPALIVE, ChatServer, build_hub
from tests.helpers import read_until


@pytest.fixture
def server(tmp_path):
    settings = Settings(host="127.0.0.1", port=0, history=tmp_path / "h.txt", admins=None,
                        rate_limit=0)
    srv = ChatServer(settings, build_hub(settings))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        srv._shutdown()


def test_accepted_sockets_have_nodelay_and_keepalive(server) -> None:
    client = socket.create_connection(server.address, timeout=10)
    try:
        client.sendall(b"ann\n")
        read_until(client, b"* ann joined")
        (conn,) = list(server.connections)
        sock = conn.sock
        assert sock.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY) != 0
        assert sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_KEEPALIVE) != 0
        if hasattr(stdsocket, "TCP_KEEPIDLE"):
            idle, interval, count = KEEPALIVE
            assert sock.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_KEEPIDLE) == idle
            assert sock.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_KEEPINTVL) == interval
            assert sock.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_KEEPCNT) == count
    finally:
        client.close()


def test_client_that_speaks_first_gets_prompt_then_join_burst_in_order(server) -> None:
    client = socket.create_connection(server.address, timeout=10)
    try:
        client.sendall(b"bob\nhello\n")
        buf = read_until(client, b"bob: hello")
        prompt, joined = buf.find(b"? name:"), buf.find(b"* bob joined")
        line = buf.find(b"bob: hello")
        assert 0 <= prompt < joined < line, buf
    finally:
        client.close()


def _pending(sock: stdsocket.socket) -> bytes:
    try:
        return sock.recv(65536, stdsocket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


def test_corked_output_holds_writes_then_sends_them_in_order() -> None:
    ours, theirs = stdsocket.socketpair()
    try:
        out = Output(ours)
        out.cork()
        out.write(b"? name:\n")
        out.write(b"* bob joined\n")
        assert _pending(theirs) == b""
        out.uncork()
        assert _pending(theirs) == b"? name:\n* bob joined\n"
        out.write(b"live\n")  # straight through again
        assert _pending(theirs) == b"live\n"
    finally:
        ours.close()
        theirs.close()


def test_corked_output_keeps_its_bound() -> None:
    ours, theirs = stdsocket.socketpair()
    reasons: list[str] = []
    try:
        out = Output(ours, limit=10, on_dead=reasons.append)
        out.cork()
        out.write(b"x" * 11)
        assert out.closed and reasons and reasons[0].startswith("sendq exceeded")
        out.uncork()  # nothing is sent for a dead output
        assert _pending(theirs) == b""
    finally:
        ours.close()
        theirs.close()


def test_collector_freezes_start_up_and_collects_cycles_on_its_clock() -> None:
    import gc
    import weakref

    from geventchat import collector

    before = gc.get_threshold()
    runner = collector.tune(every=0.05)
    try:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[2] > 10**6  # no full collection but the clock's

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only a collection frees it
        gone = weakref.ref(a)
        gc.collect(1)  # it survives a young collection, so it is old (generation 2) now
        del a, b
        for _ in range(collector.FULL_AFTER + 1):
            gc.collect(1)  # the young collections a busy server makes meanwhile
        assert gone() is not None  # they never reach an old cycle
        with gevent.Timeout(10):
            while gone() is not None:
                gevent.sleep(0.02)
    finally:
        runner.kill()
        gc.unfreeze()
        gc.set_threshold(*before)
