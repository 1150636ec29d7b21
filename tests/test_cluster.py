"""Several ``geventchat serve --redis`` nodes sharing one chat: real processes, a real
Redis of the test's own (``tests/redis_server.py``), raw sockets. Every wait has a
deadline."""

from __future__ import annotations

import re
import shutil
import signal
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


def test_who_and_rooms_see_every_node(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    alice = a.connect("alice")
    bob = b.connect("bob")
    alice.expect("* bob joined")
    alice.send("/who")
    alice.expect("* online (2): alice, bob")
    bob.send("/who")
    bob.expect("* online (2): alice, bob")
    bob.send("/join dev")
    bob.expect("* bob joined")
    alice.expect("* bob left (to dev)")  # node a has heard of the move (bob's own echo
    alice.send("/rooms")                 # comes from node b, which knew it first)
    alice.expect("* rooms (2): lobby (1), dev (1)")


def test_private_message_across_nodes(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    alice = a.connect("alice")
    bob = b.connect("bob")
    alice.expect("* bob joined")
    alice.send("/msg bob psst")
    bob.expect("(private) alice -> bob: psst")
    alice.expect("(private) alice -> bob: psst")
    bob.send("/msg nobody hi")
    bob.expect("! no such user: nobody")


def test_kick_and_kill_across_nodes(cluster) -> None:
    a = cluster("a", admins={"root": "secret-pw"})
    b = cluster("b")
    root = a.connect("root", "secret-pw")
    alice = a.connect("alice")
    bob = b.connect("bob")
    carol = b.connect("carol")
    alice.send("/join dev")
    alice.expect("* alice joined")
    bob.send("/join dev")
    bob.expect("* bob joined")
    alice.expect("* bob joined")
    # the operator was decided once for the cluster: bob (second in) is not one
    bob.send("/kick alice")
    bob.expect("! permission denied: /kick is for admins and room operators")
    alice.send("/kick bob enough")
    bob.expect("* bob was kicked from dev by alice: enough")
    alice.expect("* bob was kicked from dev by alice: enough")
    bob.expect("* bob joined")  # back in the lobby
    bob.send("/who")
    bob.expect("* online (3): bob, carol, root")
    # an admin's kick disconnects a user of another node
    root.send("/kick carol bye")
    lines = carol.closed()
    assert "* carol was kicked by root: bye" in lines
    root.expect("* carol was kicked by root: bye")
    bob.expect("* carol was kicked by root: bye")


def test_history_and_clear_cross_nodes(cluster) -> None:
    a = cluster("a")
    b = cluster("b", admins={"root": "secret-pw"})
    alice = a.connect("alice")
    for i in range(3):
        alice.send(f"old {i}")
    alice.expect("alice: old 2")
    # a node with empty disks replays the room's history from Redis
    bob = b.connect()
    assert bob.line() == "? name:"
    bob.send("bob")
    seen = bob.expect("* bob joined")
    assert seen[:-1] == ["alice: old 0", "alice: old 1", "alice: old 2"]
    root = b.connect("root", "secret-pw")
    root.send("/clear")
    alice.expect("* history cleared by root")
    bob.expect("* history cleared by root")
    alice.send("new line")
    bob.expect("alice: new line")
    later = a.connect()
    assert later.line() == "? name:"
    later.send("dave")
    assert later.expect("* dave joined")[:-1] == ["* history cleared by root",
                                                   "alice: new line"]


def test_shutdown_stops_every_node(cluster) -> None:
    a = cluster("a", admins={"root": "secret-pw"})
    b = cluster("b")
    root = a.connect("root", "secret-pw")
    bob = b.connect("bob")
    root.expect("* bob joined")
    root.send("/shutdown maintenance")
    assert "* server shutting down: maintenance" in bob.closed()
    assert a.proc.wait(15) == 0
    assert b.proc.wait(15) == 0


def test_sigterm_stops_only_one_node(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    alice = a.connect("alice")
    _bob = b.connect("bob")
    alice.expect("* bob joined")
    assert b.stop() == 0
    alice.expect("* bob left (server stopped)")
    alice.send("/who")
    alice.expect("* online (1): alice")


class IrcClient(LineClient):
    def irc(self, line: str) -> None:
        self.send(line + "\r")

    def want(self, pattern: str) -> list[str]:
        return self.expect(re.compile(pattern))


def test_irc_user_on_one_node_native_on_another(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    ian = IrcClient(a.port)
    ian.irc("NICK ian")
    ian.irc("USER ian 0 * :Ian")
    ian.want(r" 001 ian ")
    ian.irc("JOIN #lobby")
    ian.want(r" 366 ian #lobby ")
    bob = b.connect("bob")
    ian.want(r"^:bob!\S+ JOIN #lobby")
    bob.send("/who")
    bob.expect("* online (2): bob, ian")
    ian.irc("NAMES #lobby")
    names = ian.want(r" 366 ian #lobby ")
    assert any(re.search(r" 353 ian = #lobby :.*\bbob\b", x) for x in names), names
    ian.irc("WHOIS bob")
    whois = ian.want(r" 318 ian bob ")
    assert any(" 311 ian bob " in x for x in whois)
    assert any(" 312 ian bob b :geventchat node b" in x for x in whois), whois
    ian.irc("LIST")
    assert any(" 322 ian #lobby 2 " in x for x in ian.want(r" 323 ian "))

    def lusers_sees_both() -> bool:  # counts are refreshed every ttl/6
        ian.irc("LUSERS")
        return " 251 ian :There are 2 users " in ian.want(r" 251 ian ")[-1]

    wait_for(lusers_sees_both, 10, "LUSERS counting both nodes")
    ian.irc("PRIVMSG #lobby :hello from irc")
    bob.expect("ian: hello from irc")
    bob.send("hi ian")
    ian.want(r"^:bob!\S+ PRIVMSG #lobby :hi ian\r?$")
    bob.send("/msg ian private hi")
    ian.want(r"^:bob!\S+ PRIVMSG ian :private hi\r?$")
    ian.irc("PRIVMSG bob :back at you")
    bob.expect("(private) ian -> bob: back at you")


def test_killed_node_users_are_announced_gone(cluster) -> None:
    a, b, c = cluster("a"), cluster("b"), cluster("c")
    alice = a.connect("alice")
    carol = c.connect("carol")  # two surviving nodes reap: still announced once
    _bob = b.connect("bob")
    alice.expect("* bob joined")
    carol.expect("* bob joined")
    start = time.monotonic()
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    alice.expect(re.compile(r"^\* bob left"), timeout=TTL + 5)
    assert time.monotonic() - start <= TTL + 1.5
    carol.expect("* bob left (connection lost)", timeout=5)
    alice.send("/who")
    alice.expect("* online (2): alice, carol")
    c = a.connect("bob")  # the name is free again
    c.send("still here")
    alice.expect("bob: still here")
    # exactly once: no second notice
    alice.send("marker")
    for who in (alice, carol):
        lines = who.expect("alice: marker")
        assert not any(x.startswith("* bob left") for x in lines)


def _healthz(port: int) -> str:
    """GET /healthz on the node's shared port: the whole answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode()


def test_redis_restart_under_traffic(cluster) -> None:
    a = cluster("a", admins={"root": "secret-pw"})
    b = cluster("b")
    root = a.connect("root", "secret-pw")
    alice = a.connect("alice")
    bob = b.connect("bob")
    alice.expect("* bob joined")
    alice.send("before")
    bob.expect("alice: before")
    assert _healthz(a.port).startswith("HTTP/1.1 200")
    cluster.redis.kill()
    alice.send("into the void")
    alice.expect("! not delivered: chat backplane unavailable")
    root.expect(re.compile(r"^\* chat backplane \(Redis\) unavailable"))
    health = _healthz(a.port)
    assert health.startswith("HTTP/1.1 503") and "backplane down" in health, health
    cluster.redis.start()  # same port, empty: every room starts afresh
    deadline = time.monotonic() + 15
    seen: list[str] = []
    i = 0
    while not any(x.startswith("alice: retry ") for x in seen):  # chat resumes by itself
        assert time.monotonic() < deadline, f"chat did not resume: {seen}"
        alice.send(f"retry {i}")
        i += 1
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            try:
                seen.append(bob.line(0.1))
            except AssertionError:
                pass
    assert "* the chat backplane lost the history of lobby; it starts afresh" in seen
    assert "alice: into the void" not in seen
    root.expect("* chat backplane (Redis) back")
    bob.send("and back")
    alice.expect("bob: and back")
    # presence was registered again: names stay unique after the restart
    b.wait_log("presence registered again")
    other = a.connect()
    assert other.line() == "? name:"
    other.send("bob")
    assert other.line() == "! name taken: bob"


def test_subscriber_over_output_buffer_limit_recovers(cluster) -> None:
    a, b = cluster("a"), cluster("b", "--max-sendq", "16000000")
    alice = a.connect("alice")
    bob = b.connect("bob")
    alice.expect("* bob joined")
    cluster.redis.client().config_set("client-output-buffer-limit", "pubsub 64kb 32kb 1")
    n = 3000  # ~1.5 MB: more than the kernel's socket buffers absorb
    b.proc.send_signal(signal.SIGSTOP)  # node b stops reading: Redis cuts its subscriber
    try:
        pad = "x" * 500
        for i in range(n):
            alice.send(f"flood {i} {pad}")
        alice.expect(f"alice: flood {n - 1} {pad}", timeout=30)
        time.sleep(0.5)
    finally:
        b.proc.send_signal(signal.SIGCONT)
    got = chat_lines(bob, "alice: flood ", n, timeout=30)
    assert got == [f"alice: flood {i} {pad}" for i in range(n)]
    if "valkey" not in cluster.redis.binary:  # Valkey 9 was not seen to cut it here
        b.wait_log("subscription (lost|restored)")


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "geventchat", "serve", "--host", "127.0.0.1", "--port", "0",
         "--history", str(tmp_path / "h.txt"), "--admins", str(tmp_path / "a.json"), *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})})


def test_fails_fast_when_redis_is_unreachable(tmp_path: Path) -> None:
    from tests.redis_server import free_port

    done = _serve(tmp_path, "--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 2
    assert done.stderr.startswith("geventchat: cannot reach Redis at redis://127.0.0.1:")
    assert len(done.stderr.strip().splitlines()) == 1


def test_fails_fast_when_redis_refuses_auth(tmp_path: Path) -> None:
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis", None, "--requirepass", "s3cret").start()
    try:
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        done = _serve(tmp_path, env={"GEVENTCHAT_REDIS_URL": url})
        assert done.returncode == 2
        assert "refused authentication" in done.stderr
        assert "wrong" not in done.stderr  # the password is never printed
        assert len(done.stderr.strip().splitlines()) == 1
        # the right password in the URL works
        node = ServerProcess(tmp_path, "--redis", f"redis://:s3cret@127.0.0.1:{server.port}/0")
        node.start()
        try:
            node.connect("alice")
        finally:
            node.kill()
    finally:
        server.kill()


def test_failed_logins_are_counted_across_nodes(cluster) -> None:
    a = cluster("a", admins={"root": "secret-pw"})
    b = cluster("b")
    for node in [a, b] * 5:  # 10 wrong admin passwords, spread over both nodes
        c = node.connect()
        assert c.line() == "? name:"
        c.send("root")
        assert c.line() == "? password:"
        c.send("wrong")
        assert c.line() == "! wrong password"
        c.close()
    c = a.connect()
    assert c.line() == "? name:"
    c.send("root")
    assert c.line() == "? password:"
    c.send("secret-pw")  # even the right one: this address is over its limit
    assert c.line() == "! too many failed logins; try again later"


def test_rename_and_topic_cross_nodes(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    alice = a.connect("alice")
    bob = b.connect("bob")
    alice.expect("* bob joined")
    bob.send("/nick alice")
    bob.expect("! name taken: alice")
    bob.send("/nick robert")
    alice.expect("* bob is now known as robert")
    bob.expect("* bob is now known as robert")
    alice.send("/who")
    alice.expect("* online (2): alice, robert")
    alice.send("/join dev")
    alice.expect("* alice joined")
    alice.send("/topic shipping today")
    alice.expect("* alice set the topic of dev: shipping today")
    bob.send("/join dev")
    assert "* topic of dev: shipping today" in bob.expect("* topic of dev: shipping today")
    # the old name is free for someone else
    c = a.connect("bob")
    c.send("/who")
    c.expect("* online (1): bob")  # alice and robert are in dev


def test_embedded_mode_does_not_import_redis() -> None:
    import subprocess
    import sys

    code = ("import sys; from geventchat import cli, server; from geventchat.config import "
            "Settings; server.build_hub(Settings()); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'hiredis')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]", out.stderr


def test_operator_rights_given_across_nodes(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    ian = IrcClient(a.port)
    ian.irc("NICK ian")
    ian.irc("USER ian 0 * :Ian")
    ian.want(r" 001 ian ")
    ian.irc("JOIN #dev")
    assert any(" 353 ian = #dev :@ian" in x for x in ian.want(r" 366 ian #dev "))
    bob = b.connect("bob")
    bob.send("/join dev")
    bob.expect("* bob joined")
    ian.want(r"^:bob!\S+ JOIN #dev")
    bob.send("/topic ours")
    bob.expect("! permission denied: only operators of dev set its topic")
    ian.irc("MODE #dev +o bob")
    bob.expect("* ian set mode +o bob on dev")
    bob.send("/topic ours now")
    ian.want(r"^:bob!\S+ TOPIC #dev :ours now")


def test_joins_and_leaves_in_the_same_order_as_lines(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    o1, o2 = a.connect("obs1"), b.connect("obs2")
    o1.expect("* obs2 joined")
    s1, s2 = a.connect("s1"), b.connect("s2")
    for o in (o1, o2):
        o.expect("* s2 joined")
    for i in range(40):
        s1.send(f"line {i}")
        s2.send(f"line {i}")
        if i % 8 == 0:  # someone comes and goes on each node, mid-conversation
            for node, tag in ((a, "a"), (b, "b")):
                c = node.connect(f"j{tag}{i}")
                c.send("/quit")
    # The last quits race END across nodes (nothing orders two connections), so END goes
    # once obs1 has seen all 10 joins and 10 leaves; a lost one times out here.
    seen = []
    while sum(x.startswith("* j") for x in seen) < 20:
        seen.append(o1.line())
    s1.send("END")
    seen += o1.expect("s1: END")
    assert o2.expect("s1: END") == seen


def test_history_and_resume_across_nodes(cluster) -> None:
    """Scrollback and gap-free resume read the room's Redis stream: a client that drops
    from node A resumes on node B with exactly the lines it missed."""
    import re

    from tests.test_resume import IDS, ROOM, login_ids

    a, b = cluster("a", "--rate-limit", "0"), cluster("b", "--rate-limit", "0")
    talker = a.connect("talker")
    for i in range(3):
        talker.send(f"before {i}")
        talker.expect(f"talker: before {i}")
    prog, burst = login_ids(b.port, "prog")
    room = ROOM.match(next(x for x in burst if ROOM.match(x)))
    epoch = room.group(2)
    last = int(IDS.match([x for x in burst if IDS.match(x)][-1]).group(1))
    prog.close()
    for i in range(3):
        talker.send(f"missed {i}")
        talker.expect(f"talker: missed {i}")
    again, burst = login_ids(a.port, "prog", f"/resume lobby {epoch} {last}")
    assert [IDS.match(x).group(2) for x in burst if IDS.match(x)] == [
        f"talker: missed {i}" for i in range(3)]
    assert again.line() == "= resumed lobby 3"
    viewer = b.connect("viewer")
    viewer.send("/history 2")
    lines = viewer.expect("* end of history")
    assert [x for x in lines if re.match(r"^talker: ", x)][-2:] == [
        "talker: missed 1", "talker: missed 2"]


def test_chathistory_reads_the_redis_store(cluster) -> None:
    """IRCv3 CHATHISTORY on node A reads lines said on node B from the room's stream, with
    the same msgids on both nodes; and the `irc` library client gets its replay."""
    from tests.test_irc import RawIrc
    from tests.test_irc_chathistory import HISTORY_CAPS, query

    a, b = cluster("a", "--rate-limit", "0"), cluster("b", "--rate-limit", "0")
    bob = b.connect("bob")
    for i in range(1, 6):
        bob.send(f"line {i}")
        bob.expect(f"bob: line {i}")
    ian = RawIrc(a.port)
    ian.register("ian", *HISTORY_CAPS)
    ian.send("JOIN #lobby")
    ian.expect(lambda m: m.command == "366")
    _, body = query(ian, "CHATHISTORY LATEST #lobby * 3")
    assert [m.params[1] for m in body] == ["line 3", "line 4", "line 5"]
    msgid = body[0].tags["msgid"]
    _, before = query(ian, f"CHATHISTORY BEFORE #lobby msgid={msgid} 10")
    assert [m.params[1] for m in before] == ["line 1", "line 2"]
    other = RawIrc(b.port)
    other.register("olga", *HISTORY_CAPS)
    other.send("JOIN #lobby")
    other.expect(lambda m: m.command == "366")
    _, same = query(other, "CHATHISTORY LATEST #lobby * 3")
    assert [m.tags["msgid"] for m in same] == [m.tags["msgid"] for m in body]
