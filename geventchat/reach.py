"""How to reach a server that just started: the exact ``geventchat connect`` line for each
address it can be reached on.

A server on all interfaces (``0.0.0.0``, or ``::`` for IPv6 and IPv4) is reachable on each
of the machine's addresses: the non-loopback ones first (what other people type), then
loopback. The addresses come from ``psutil.net_if_addrs()``: every interface, IPv4 and IPv6,
on Linux, macOS, the BSDs and Windows alike (the standard library has no portable way; a
hand-rolled ``SIOCGIFADDR`` ioctl is Linux-only and IPv4-only, one address per interface).
Without psutil it falls back to what the host name resolves to, plus loopback.
IPv6 link-local addresses (``fe80::``) are left out: they need a ``%interface`` suffix that
differs from one client machine to the next.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

#: Listening addresses that mean "every interface", and the families each one covers
#: (``::`` is dual-stack on Linux by default).
_WILDCARDS = {
    "": (socket.AF_INET,),
    "0.0.0.0": (socket.AF_INET,),
    "::": (socket.AF_INET6, socket.AF_INET),
}


def interface_addresses() -> list[tuple[socket.AddressFamily, str]]:
    """(family, address) of each address on this machine's interfaces, interface order."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency; a broken install
        return _resolved_addresses()
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                found.append((a.family, a.address))
    return found


def _resolved_addresses() -> list[tuple[socket.AddressFamily, str]]:
    """The fallback: the host name's addresses, and loopback."""
    found = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)
    except OSError:
        return found
    return [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in infos] + found


def reachable_hosts(host: str, addresses: Iterable[tuple[int, str]] | None = None) -> list[str]:
    """The addresses a server listening on ``host`` can be reached on: ``host`` itself
    unless it is a wildcard; then every interface address of the families it covers,
    non-loopback first, loopback last, without duplicates or IPv6 link-local ones."""
    families = _WILDCARDS.get(host)
    if families is None:
        return [host]
    if addresses is None:
        addresses = interface_addresses()
    outside: list[str] = []
    loopback: list[str] = []
    for family, address in addresses:
        if family not in families:
            continue
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            continue
        if ip.version == 6 and ip.is_link_local:
            continue
        bucket = loopback if ip.is_loopback else outside
        if str(ip) not in outside and str(ip) not in loopback:
            bucket.append(str(ip))
    # IPv4 first within each group: shorter to type, and what most people expect.
    outside.sort(key=lambda a: ":" in a)
    loopback.sort(key=lambda a: ":" in a)
    return outside + loopback


def reach_lines(host: str, port: int, tls: bool) -> list[str]:
    """The ``geventchat connect HOST --port N [--tls]`` command for each address a server
    listening on ``host``:``port`` can be reached on (see :func:`reachable_hosts`)."""
    suffix = " --tls" if tls else ""
    return [f"geventchat connect {h} --port {port}{suffix}" for h in reachable_hosts(host)]
