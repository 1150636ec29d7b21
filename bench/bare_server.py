"""The floor under geventchat's registration storm: a bare gevent server that does only
what the bench's clients wait for, and nothing a chat server must do.

A ``StreamServer`` with a ``Pool`` and one greenlet per client (geventchat's own shape):
read the name, answer ``? name:`` and ``* NAME joined`` in one ``send``, then block in
``recv`` until the client leaves. No rooms, no join notices to others, no history, no
checks. ``loadtest.py --idle N --eager-name --host 127.0.0.1 --port PORT`` against it
tells how much of a storm is gevent and the kernel, whatever the chat does on top.

Run: ``python bench/bare_server.py --port 9998`` (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import gc
import resource

from gevent.pool import Pool
from gevent.server import StreamServer


def handle(sock, addr) -> None:
    buf = b""
    while b"\n" not in buf:
        data = sock.recv(4096)
        if not data:
            return
        buf += data
    name = buf.split(b"\n", 1)[0].strip()
    sock.sendall(b"? name:\n* " + name + b" joined\n")
    while sock.recv(4096):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9998)
    parser.add_argument("--max-clients", type=int, default=20000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.freeze()  # as geventchat's serve does
    server = StreamServer((args.host, args.port), handle, spawn=Pool(args.max_clients),
                          backlog=4096)
    server.max_accept = 25  # geventchat's ACCEPT_BATCH
    print(f"bare gevent server on {args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
