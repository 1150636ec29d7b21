"""Admission: who may connect, and check-and-count for every secret a client offers.

One object owns the rules for every edge, so no protocol can skip one (IRC ``PASS`` once
did): connection slots (server-wide and per address), the server password, and admin
logins. Failed logins are counted per address across connections and protocols, so
reconnecting, or switching from the native prompt to IRC, buys a guesser nothing.

The failure counter is an interface (:class:`FailureCounter`): the in-process one is
below; a cluster counts in Redis, so spreading guesses over nodes buys nothing either.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from pathlib import Path
from typing import Protocol

from geventchat.core.errors import ChatError
from geventchat.core.hub import AdminDirectory

log = logging.getLogger(__name__)

#: Failed logins (server password or admin) per address before further attempts are
#: refused, and for how long.
LOGIN_FAILURES_PER_IP = 10
LOGIN_PENALTY_WINDOW = 300.0
#: Failed logins allowed on one connection before it is closed.
MAX_LOGIN_FAILURES = 3


class FailureCounter(Protocol):
    """Recent failed logins per address. ``allowed`` and ``failed`` may block the calling
    greenlet briefly (a cluster asks Redis); they never raise."""

    def allowed(self, ip: str) -> bool: ...

    def failed(self, ip: str) -> None: ...

    def succeeded(self, ip: str) -> None: ...

    def expire(self, now: float) -> None: ...


class LocalFailures:
    """Failures kept in this process: a list of times per address, pruned as it goes."""

    def __init__(self, limit: int = LOGIN_FAILURES_PER_IP,
                 window: float = LOGIN_PENALTY_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._times: dict[str, list[float]] = {}

    def allowed(self, ip: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._times.get(ip, ()) if now - t < self.window]
        if recent:
            self._times[ip] = recent
        else:
            self._times.pop(ip, None)
        return len(recent) < self.limit

    def failed(self, ip: str) -> None:
        self._times.setdefault(ip, []).append(time.monotonic())

    def succeeded(self, ip: str) -> None:
        """Take back the failure counted before a check that then succeeded."""
        times = self._times.get(ip)
        if times:
            times.pop()

    def expire(self, now: float) -> None:
        """Drop addresses with no recent failure, so the table does not grow with every
        address that ever mistyped."""
        for ip, times in list(self._times.items()):
            recent = [t for t in times if now - t < self.window]
            if recent:
                self._times[ip] = recent
            else:
                del self._times[ip]


class Admission:
    """Connection slots and logins for one server, shared by every edge."""

    def __init__(self, admins: AdminDirectory, password_file: Path | None,
                 max_clients: int, max_per_ip: int,
                 failures: FailureCounter | None = None) -> None:
        self.admins = admins
        self.password_digest = load_server_password(password_file)
        self.max_clients = max_clients
        self.max_per_ip = max_per_ip
        self.failures: FailureCounter = failures or LocalFailures()
        self._per_ip: dict[str, int] = {}
        self.connected = 0
        self.stopping = False

    # --- slots -----------------------------------------------------------------------

    def refusal(self, ip: str) -> str | None:
        """Why a new connection from ``ip`` is refused, or None to let it in."""
        if self.stopping:
            return "server shutting down"
        if self.connected >= self.max_clients:
            return "server full"
        if self.max_per_ip and self._per_ip.get(ip, 0) >= self.max_per_ip:
            return f"too many connections from {ip}"
        return None

    def enter(self, ip: str) -> None:
        self.connected += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1

    def leave(self, ip: str) -> None:
        self.connected -= 1
        left = self._per_ip.pop(ip, 1) - 1
        if left:
            self._per_ip[ip] = left

    # --- secrets ---------------------------------------------------------------------

    @property
    def password_required(self) -> bool:
        return self.password_digest is not None

    def server_password(self, ip: str, given: str) -> bool:
        """Check (constant-time) and count one server-password attempt from ``ip``.

        Raises ``ChatError("too_many_logins")`` when the address is over its limit (the
        caller closes the connection); False for a wrong password (counted)."""
        if self.password_digest is None:
            return True
        if not self.failures.allowed(ip):
            raise ChatError("too_many_logins", "too many failed logins; try again later")
        digest = hashlib.sha256(given.encode()).digest()
        if hmac.compare_digest(digest, self.password_digest):
            return True
        self.failures.failed(ip)
        log.warning("failed server password from %s", ip)
        return False

    def admin_login(self, ip: str, name: str, password: str) -> bool:
        """Check and count one admin login (scrypt, off the loop: blocks this greenlet).

        Counted as a failure before the slow check, so concurrent attempts can't all slip
        under the per-address limit; a success takes it back. Raises
        ``ChatError("too_many_logins")`` when the address is over its limit."""
        if not self.failures.allowed(ip):
            raise ChatError("too_many_logins", "too many failed logins; try again later")
        self.failures.failed(ip)
        if self.admins.verify(name, password):
            self.failures.succeeded(ip)
            log.info("admin login %s from %s", name, ip)
            return True
        log.warning("failed admin login for %s from %s", name, ip)
        return False

    def expire(self, now: float) -> None:
        self.failures.expire(now)


def load_server_password(path: Path | None) -> bytes | None:
    """The server password's digest (the file's first line); None when no file is set."""
    if path is None:
        return None
    if path.stat().st_mode & 0o077:
        log.warning("password file %s is readable by others; run: chmod 600 %s", path, path)
    password = path.read_text("utf-8").splitlines()[0] if path.stat().st_size else ""
    if not password:
        raise ValueError(f"password file {path} is empty")
    return hashlib.sha256(password.encode()).digest()
