"""The floor under geventchat's figures: a bare gevent server that does only what the
bench's clients wait for, and nothing a chat server must do.

A ``StreamServer`` with a ``Pool`` and one greenlet per client (geventchat's own shape):
read the name, answer ``? name:`` and ``* NAME joined`` in one ``send``, then read until
the client leaves. No rooms, no join notices to others, no history, no checks, no
parsing. Against it, ``loadtest.py --host 127.0.0.1 --port PORT`` tells how much of a
figure is gevent and the kernel, whatever the chat does on top:

* ``--idle N --eager-name``: a registration storm (every client then blocks in ``recv``);
* with ``--relay``, every chunk a client sends goes to every client as ``NAME: line``
  lines, one non-blocking ``send`` per client per chunk (a slow reader's bytes are simply
  dropped: a floor, not a server), for the per-line figures (``--clients 10 --senders 10
  --window 8``); ``--relay --batch`` gathers a loop pass's chunks and sends them once per
  client at its end, as geventchat's fan-out does;
* ``--callbacks`` (storms only) drops the greenlet per client: the event loop calls back on
  a readable socket, which is read, answered and then watched until EOF in the loop's own
  greenlet. No ``StreamServer``, no pool: the floor of a callback design on gevent's loop,
  for comparing designs rather than a way to build a chat server.

Run: ``python bench/bare_server.py --port 9998 [--relay]`` (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import gc
import resource
import socket

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer

RELAY = False
BATCH = False
CLIENTS: dict[object, object] = {}  # gevent socket -> its raw socket (relay mode)
PENDING: list[bytes] = []  # --batch: what this loop pass received, sent once at its end


def _send_to_all(out: bytes) -> None:
    for raw in list(CLIENTS.values()):
        try:
            raw.send(out)
        except OSError:
            pass


def _flush_pending() -> None:
    out = b"".join(PENDING)
    PENDING.clear()
    _send_to_all(out)


def handle(sock, addr) -> None:
    buf = b""
    while b"\n" not in buf:
        data = sock.recv(4096)
        if not data:
            return
        buf += data
    name, _, buf = buf.partition(b"\n")
    name = name.strip()
    sock.sendall(b"? name:\n* " + name + b" joined\n")
    if not RELAY:
        while sock.recv(4096):
            pass
        return
    CLIENTS[sock] = sock._sock
    prefix = b"\n" + name + b": "
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            buf += data
            chunk, sep, buf = buf.rpartition(b"\n")
            if not sep:
                buf = chunk
                continue
            out = name + b": " + chunk.replace(b"\n", prefix) + b"\n"
            if not BATCH:
                _send_to_all(out)
                continue
            if not PENDING:
                gevent.get_hub().loop.run_callback(_flush_pending)
            PENDING.append(out)
    finally:
        CLIENTS.pop(sock, None)


def serve_callbacks(host: str, port: int) -> None:
    """``--callbacks``: accept and answer clients from I/O watcher callbacks, no greenlets."""
    loop = gevent.get_hub().loop
    listener = socket.create_server((host, port), backlog=4096)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.setblocking(False)
    clients: dict[int, list] = {}  # fd -> [socket, watcher, bytes read before the name]

    def on_accept() -> None:
        for _ in range(25):  # geventchat's ACCEPT_BATCH
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            state = [sock, loop.io(sock.fileno(), 1), b""]
            clients[sock.fileno()] = state
            state[1].start(on_read, state)

    def on_read(state: list) -> None:
        sock, watcher, buf = state
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            watcher.stop()
            watcher.close()
            clients.pop(sock.fileno(), None)
            sock.close()
            return
        if buf is None:
            return  # registered: what it says now is ignored
        buf += data
        if b"\n" not in buf:
            state[2] = buf
            return
        name = buf.partition(b"\n")[0].strip()
        state[2] = None
        try:
            sock.send(b"? name:\n* " + name + b" joined\n")
        except OSError:
            pass

    accepting = loop.io(listener.fileno(), 1)
    accepting.start(on_accept)
    print(f"bare gevent server (callbacks) on {host}:{listener.getsockname()[1]}", flush=True)
    try:
        while True:
            gevent.sleep(3600)
    except KeyboardInterrupt:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9998)
    parser.add_argument("--max-clients", type=int, default=20000)
    parser.add_argument("--relay", action="store_true",
                        help="send every line to every client (per-line floor)")
    parser.add_argument("--batch", action="store_true",
                        help="with --relay: one send per client per loop pass, as geventchat")
    parser.add_argument("--callbacks", action="store_true",
                        help="storms only: no greenlet per client, I/O watcher callbacks")
    args = parser.parse_args()
    global RELAY, BATCH
    RELAY, BATCH = args.relay, args.batch
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.freeze()  # as geventchat's serve does
    if args.callbacks:
        serve_callbacks(args.host, args.port)
        return
    server = StreamServer((args.host, args.port), handle, spawn=Pool(args.max_clients),
                          backlog=4096)
    server.max_accept = 25  # geventchat's ACCEPT_BATCH
    server.init_socket()
    # No Nagle, as geventchat (accepted sockets inherit it from the listener on Linux).
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print(f"bare gevent server on {args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
