"""``geventchat connect --tls``: real TLS servers (trustme certificates), real clients.

Each disagreement (TLS client and plain server, plain client and TLS server, a certificate
that is not trusted) must end the client with one clear line and exit 1 within seconds,
never a hang. Pipe clients run under ``subprocess.run`` with the fixture's timeout; the
terminal client under pexpect.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme

from geventchat.client import EXIT_LOST, EXIT_OK, INSECURE_WARNING
from tests.conftest import STOP_TIMEOUT, Server, child_env

if TYPE_CHECKING:
    from tests.conftest import ServerFactory, Term

    Client = Callable[..., Term]
    PipeClient = Callable[..., subprocess.CompletedProcess[str]]
Uid = Callable[[str], str]

#: A plain client must recognise a TLS server within this many seconds (3 s of silence,
#: then a probe handshake), with room for a loaded machine.
DETECT_LIMIT = 8.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _write_cert(ca: trustme.CA, directory: Path, *hosts: str) -> tuple[Path, Path]:
    cert = ca.issue_cert(*hosts)
    chain, key = directory / f"{hosts[0]}-cert.pem", directory / f"{hosts[0]}-key.pem"
    chain.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return chain, key


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def tls_server(server: ServerFactory, ca: trustme.CA, tmp_path: Path) -> Callable[..., Server]:
    """Start a TLS server whose certificate names ``hosts`` (default 127.0.0.1)."""

    def start(*hosts: str, args: tuple[str, ...] = ()) -> Server:
        chain, key = _write_cert(ca, tmp_path, *(hosts or ("127.0.0.1", "localhost")))
        return server(args=["--tls-cert", str(chain), "--tls-key", str(key), *args])

    return start


def test_tls_terminal_client_chats_with_its_ca(
    tls_server: Callable[..., Server], client: Client, uid: Uid, ca_file: Path
) -> None:
    tls_server()
    name, token = uid("alice"), uid("tok")
    term = client(name, args=["--tls-ca", str(ca_file)])
    term.expect(rf"\* {name} joined")
    term.expect(rf"{name}>")
    term.sendline(token)
    term.expect(rf"{name}: {token}$")
    term.sendline("/quit")
    term.expect(r"\* goodbye")
    assert term.expect_exit() == EXIT_OK


def test_tls_pipe_client_two_way_while_lines_keep_arriving(
    tls_server: Callable[..., Server], server: ServerFactory, uid: Uid, ca_file: Path
) -> None:
    # One thread owns the TLS socket: sending while a burst arrives must neither corrupt
    # the TLS stream nor stall. Many lines out, each echoed back, over one connection.
    tls_server(args=("--rate-limit", "0"))
    name = uid("pipe")
    tokens = [uid("t") for _ in range(500)]
    done = subprocess.run(
        server.client_argv(name, None, ["--tls-ca", str(ca_file)]),
        input="".join(f"{t}\n" for t in tokens), capture_output=True, text=True,
        env=child_env(), timeout=STOP_TIMEOUT,
    )
    assert done.returncode == EXIT_OK, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(f"{name}: ")]
    assert lines == [f"{name}: {t}" for t in tokens]
    assert done.stdout.splitlines()[-1] == "* goodbye"


def test_tls_with_system_cas_rejects_a_private_ca(
    tls_server: Callable[..., Server], pipe_client: PipeClient, uid: Uid
) -> None:
    tls_server()
    token = uid("tok")
    t0 = time.monotonic()
    done = pipe_client(uid("alice"), input=f"{token}\n", args=["--tls"])
    assert time.monotonic() - t0 < DETECT_LIMIT
    assert done.returncode == EXIT_LOST
    err = done.stderr.strip().splitlines()
    assert len(err) == 1, done.stderr
    assert re.fullmatch(r"geventchat: TLS certificate of 127\.0\.0\.1:\d+ not trusted: "
                        r".*local issuer.*--tls-ca.*", err[0]), err
    assert token not in done.stdout and "joined" not in done.stdout


def test_tls_hostname_is_checked(
    tls_server: Callable[..., Server], pipe_client: PipeClient, uid: Uid, ca_file: Path
) -> None:
    tls_server("chat.example.org")  # trusted CA, wrong name for 127.0.0.1
    done = pipe_client(uid("alice"), input="hi\n", args=["--tls-ca", str(ca_file)])
    assert done.returncode == EXIT_LOST
    assert "not trusted" in done.stderr and "mismatch" in done.stderr.lower(), done.stderr
    assert "joined" not in done.stdout


def test_tls_insecure_connects_and_warns_on_every_start(
    tls_server: Callable[..., Server], pipe_client: PipeClient, uid: Uid
) -> None:
    tls_server("chat.example.org")  # neither CA nor name would pass a check
    for _ in range(2):
        name, token = uid("alice"), uid("tok")
        done = pipe_client(name, input=f"{token}\n", args=["--tls-insecure"])
        assert done.returncode == EXIT_OK, done.stderr
        assert f"{name}: {token}" in done.stdout.splitlines()
        assert done.stderr.splitlines() == [INSECURE_WARNING]


def test_tls_client_against_a_plain_server_says_so(
    server: ServerFactory, pipe_client: PipeClient, uid: Uid, ca_file: Path
) -> None:
    srv = server()
    for args in (["--tls"], ["--tls-ca", str(ca_file)]):
        t0 = time.monotonic()
        done = pipe_client(uid("alice"), input="hi\n", args=args)
        assert time.monotonic() - t0 < DETECT_LIMIT
        assert done.returncode == EXIT_LOST
        assert done.stderr.strip() == (
            f"geventchat: the server at 127.0.0.1:{srv.port} does not speak TLS (drop --tls)"
        )


def test_plain_pipe_client_against_a_tls_server_says_try_tls(
    tls_server: Callable[..., Server], pipe_client: PipeClient, uid: Uid
) -> None:
    srv = tls_server()
    t0 = time.monotonic()
    done = pipe_client(uid("alice"), input="hi\n")
    assert time.monotonic() - t0 < DETECT_LIMIT
    assert done.returncode == EXIT_LOST
    assert done.stderr.strip() == (
        f"geventchat: the server at 127.0.0.1:{srv.port} seems to speak TLS: try --tls"
    )


def test_plain_terminal_client_against_a_tls_server_says_try_tls(
    tls_server: Callable[..., Server], client: Client, uid: Uid
) -> None:
    srv = tls_server()
    term = client(uid("alice"))
    term.expect(r"seems to speak TLS: try --tls", timeout=DETECT_LIMIT)
    assert term.expect_exit() == EXIT_LOST
    assert f"127.0.0.1:{srv.port}" in term.visible
    assert "connection closed by server" not in term.visible


def test_unreadable_tls_ca_file(
    server: ServerFactory, pipe_client: PipeClient, tmp_path: Path
) -> None:
    server()
    done = pipe_client("alice", input="", args=["--tls-ca", str(tmp_path / "missing.pem")])
    assert done.returncode == EXIT_LOST
    assert done.stderr.startswith("geventchat: cannot use --tls-ca "), done.stderr
