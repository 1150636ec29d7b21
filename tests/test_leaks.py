"""A finished connection is freed by reference counting, not left for the cycle collector:
on a churning server, connections waiting for a full collection made RSS climb 10% in
minutes (bench/loadtest.py --soak). Real server in this process, real sockets."""

from __future__ import annotations

import gc
from collections import Counter

import gevent
import pytest
from gevent import socket

from geventchat.config import Settings
from geventchat.server import ChatServer, build_hub
from tests.helpers import read_until

NATIVE = (b"{name}\n", b"* {name} joined", b"hello\n", b"exit\n")
IRC = (b"NICK {name}\r\nUSER u 0 * :u\r\nJOIN #lobby\r\n", b" 366 {name} ",
       b"PRIVMSG #lobby :hello\r\n", b"QUIT :bye\r\n")


def _visit(port: int, name: str, script: tuple[bytes, ...], polite: bool) -> None:
    hello, joined, say, bye = (x.replace(b"{name}", name.encode()) for x in script)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(hello)
    read_until(s, joined)
    s.sendall(say)
    if polite:
        s.sendall(bye)
    gevent.sleep(0.05)
    s.close()


@pytest.mark.parametrize("script", [NATIVE, IRC], ids=["native", "irc"])
def test_finished_connections_leave_no_cycles(tmp_path, script) -> None:
    settings = Settings(host="127.0.0.1", port=0, history=tmp_path / "h.txt", admins=None,
                        rate_limit=0)
    server = ChatServer(settings, build_hub(settings))
    server.start()
    try:
        port = server.address[1]
        gevent.joinall([gevent.spawn(_visit, port, f"warm{i}", script, i % 2 == 0)
                        for i in range(6)], raise_error=True)
        gevent.sleep(0.3)
        gc.collect()  # whatever start-up left behind
        gevent.joinall([gevent.spawn(_visit, port, f"u{i}", script, i % 2 == 0)
                        for i in range(20)], raise_error=True)
        with gevent.Timeout(10):
            while server.connections or server.hub.users:
                gevent.sleep(0.05)
            gevent.idle()  # the loop has run every deferred close and callback
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            kinds = Counter(type(o).__name__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        leaked = {k: n for k, n in kinds.items()
                  if k.endswith(("Connection", "Session", "Output", "Decoder"))}
        assert leaked == {}, kinds.most_common(12)
    finally:
        server.stop()
        server._shutdown()
