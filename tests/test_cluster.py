"""Several ``geventchat serve --redis`` nodes sharing one chat: real processes, a real
Redis of the test's own (``tests/redis_server.py``), raw sockets. Every wait has a
deadline."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import LineClient, ServerProcess, add_admin, wait_for

pytestmark = pytest.mark.timeout(180)

TTL = 3  # --presence-ttl for these tests


@pytest.fixture
def cluster(tmp_path: Path, redis_server) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``cluster(name, *flags, admins={...})`` starts one node on the test's
    Redis; every node started is killed at teardown."""
    nodes: list[ServerProcess] = []
    admins_file = tmp_path / "admins.json"

    def start(name: str, *flags: str, admins: dict[str, str] | None = None) -> ServerProcess:
        for user, password in (admins or {}).items():
            add_admin(admins_file, user, password)
        directory = tmp_path / name
        directory.mkdir()
        if admins_file.exists():  # every node reads the same admins file
            shutil.copy(admins_file, directory / "admins.json")
        node = ServerProcess(directory, "--redis", redis_server.url, "--node-name", name,
                             "--presence-ttl", str(TTL), "--rate-limit", "0", *flags)
        nodes.append(node)
        return node.start()

    start.redis = redis_server  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for node in nodes:
            node.kill()


def chat_lines(client: LineClient, tag: str, count: int, timeout: float = 20) -> list[str]:
    """Read until ``count`` chat lines containing ``tag`` came; return them in order."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{client.name}: {len(got)}/{count} lines: {got[-5:]}")
        line = client.line(left)
        if tag in line:
            got.append(line)
    return got


def test_two_nodes_one_order(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    clients = [a.connect("alice"), b.connect("bob"), a.connect("carol"), b.connect("dave")]
    for c in clients:  # everyone is in before anyone talks
        for other in clients:
            if other is not c:
                c.expect(f"* {other.name} joined") if clients.index(other) > clients.index(c) \
                    else None
    n = 25
    for i in range(n):
        for c in clients:
            c.send(f"x{i} from {c.name}")
    seen = {c.name: chat_lines(c, " from ", n * len(clients)) for c in clients}
    first = seen["alice"]
    for name, lines in seen.items():
        assert lines == first, name
    for c in clients:  # each sender's own lines stay in its order
        mine = [x for x in first if x.startswith(f"{c.name}: ")]
        assert mine == [f"{c.name}: x{i} from {c.name}" for i in range(n)]


def test_names_are_unique_across_nodes(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    alice = a.connect("alice")
    other = b.connect()
    assert other.line() == "? name:"
    other.send("Alice")
    assert other.line() == "! name taken: Alice"
    assert other.line() == "? name:"
    other.send("bob")
    other.expect("* bob joined")
    alice.expect("* bob joined")
    alice.send("/nick bob")
    assert alice.expect(re.compile(r"^! ")) [-1] == "! name taken: bob"
    alice.close()
    # the name is free again once alice has gone
    wait_for(lambda: _can_take(b, "alice"), 10, "alice's name freed")


def _can_take(node: ServerProcess, name: str) -> bool:
    c = node.connect()
    try:
        assert c.line() == "? name:"
        c.send(name)
        return c.line() != f"! name taken: {name}"
    finally:
        c.close()
