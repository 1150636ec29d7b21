"""The server's configuration: every setting ``geventchat serve`` takes, with its default.

One source of truth for defaults: the command line reads them from here (``Settings()``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from geventchat.core.flood import BURST, RATE
from geventchat.edges.outbuf import MAX_SENDQ
from geventchat.wire.native import MAX_LINE


@dataclass
class Settings:
    """Everything ``geventchat serve`` can be told; defaults are the documented ones."""

    host: str = "127.0.0.1"
    port: int = 9999
    history: Path = Path("history.txt")
    admins: Path | None = None
    history_replay: int = 100
    max_clients: int = 1000
    max_sendq: int = MAX_SENDQ
    max_line: int = MAX_LINE
    register_timeout: float = 60.0
    idle_timeout: float = 0.0  # 0: off (TCP keepalive still finds vanished peers)
    max_per_ip: int = 0  # 0: no limit
    rate_limit: float = RATE
    rate_burst: int = BURST
    fsync: str = "interval"
    history_max: int | None = None
    password_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    irc_port: int | None = None
    #: How long the shared port waits for a client's first bytes before it prompts: IRC
    #: and HTTP clients speak first, people wait for the prompt.
    sniff_timeout: float = 0.25
    server_name: str = field(default_factory=socket.gethostname)
    motd: Path | None = None
    stop_timeout: float = 5.0
    #: Cluster mode (``--redis``): the Redis URL, this node's name (default: host name and
    #: port), and how long a dead node's users stay listed.
    redis_url: str | None = None
    node_name: str | None = None
    presence_ttl: float = 30.0
