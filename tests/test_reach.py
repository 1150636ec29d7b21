"""reach_lines: the connect commands a freshly started server prints."""

from __future__ import annotations

import socket
import subprocess

from geventchat import reach
from geventchat.reach import reach_lines, reachable_hosts
from tests.conftest import STOP_TIMEOUT, child_env, geventchat_argv

V4, V6 = socket.AF_INET, socket.AF_INET6
ADDRS = [(V4, "127.0.0.1"), (V6, "::1"), (V4, "192.168.1.5"), (V6, "fd00::2"),
         (V6, "fe80::fc:ff:fe00:1%eth0"), (V4, "10.0.0.7"), (V4, "192.168.1.5")]


def test_specific_host_is_itself() -> None:
    assert reach_lines("127.0.0.1", 9999, False) == ["geventchat connect 127.0.0.1 --port 9999"]
    assert reach_lines("chat.example.org", 7000, True) == [
        "geventchat connect chat.example.org --port 7000 --tls"]


def test_all_ipv4_interfaces_non_loopback_first() -> None:
    assert reachable_hosts("0.0.0.0", ADDRS) == ["192.168.1.5", "10.0.0.7", "127.0.0.1"]
    assert reachable_hosts("", ADDRS) == ["192.168.1.5", "10.0.0.7", "127.0.0.1"]


def test_ipv6_wildcard_covers_both_and_skips_link_local() -> None:
    assert reachable_hosts("::", ADDRS) == ["192.168.1.5", "10.0.0.7", "fd00::2",
                                            "127.0.0.1", "::1"]


def test_this_machine() -> None:
    lines = reach_lines("0.0.0.0", 9999, True)
    assert lines[-1] == "geventchat connect 127.0.0.1 --port 9999 --tls"
    assert all(x.startswith("geventchat connect ") and x.endswith(" --port 9999 --tls")
               for x in lines)
    assert len(set(lines)) == len(lines)


def test_fallback_without_psutil() -> None:
    found = reach._resolved_addresses()
    assert (V4, "127.0.0.1") in found
    assert reachable_hosts("0.0.0.0", found)[-1] == "127.0.0.1"


def test_printed_lines_really_connect(tmp_path, server, uid) -> None:
    """Every address printed for a wildcard listener takes a real `geventchat connect`."""
    srv = server(args=["--host", "0.0.0.0"])
    assert "listening on 0.0.0.0:" in "".join(srv.log)
    for line in reach_lines("0.0.0.0", srv.port, False):
        host = line.split()[2]
        name = uid("r")
        done = subprocess.run(
            geventchat_argv("connect", host, "--port", str(srv.port), "--name", name),
            input="/quit\n", capture_output=True, text=True, env=child_env(),
            timeout=STOP_TIMEOUT)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        assert f"{name} joined" in done.stdout, done.stdout
