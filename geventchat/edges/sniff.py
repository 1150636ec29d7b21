"""First-byte sniffing: which protocol a client on the shared port speaks.

IRC and HTTP clients speak first; a person with ``nc`` waits for the name prompt. So the
shared port waits a short moment (``--sniff-timeout``) for the client's first bytes before
it prompts: ``GET ``/``HEAD `` mean HTTP, an IRC registration word (``CAP``, ``NICK``,
``USER``, ``PASS``) followed by a parameter means IRC, and anything else, or silence,
gets the native prompt. A strict IRC client thus never sees a line of the native protocol.

:func:`classify` is pure (bytes in, a protocol name out); :func:`sniff` does the waiting.
"""

from __future__ import annotations

import socket

import gevent
from gevent.socket import wait_read

#: First words that mark an IRC client. Each needs a parameter, and native names can't
#: contain a space, so no native name line is ever mistaken for them.
IRC_FIRST_WORDS = frozenset({b"CAP", b"NICK", b"USER", b"PASS"})
HTTP_FIRST_WORDS = (b"GET ", b"HEAD ")
#: Bytes read while sniffing: one recv; the chosen edge decodes them as its first input.
SNIFF_BYTES = 4096

NATIVE = "native"
IRC = "irc"
HTTP = "http"


def classify(data: bytes) -> str:
    """The protocol that ``data`` (a client's first bytes) starts, or native."""
    if data.startswith(HTTP_FIRST_WORDS):
        return HTTP
    first = data.split(b"\n", 1)[0].strip()
    word, sep, rest = first.partition(b" ")
    if sep and rest.strip() and word.upper() in IRC_FIRST_WORDS:
        return IRC
    return NATIVE


def looks_like_irc(line: str) -> bool:
    """Whether one decoded line is IRC registration (``NICK alice``...)."""
    return classify(line.encode("utf-8", "replace")) == IRC


def sniff(sock: socket.socket, timeout: float) -> tuple[str, bytes]:
    """Wait up to ``timeout`` for the client's first bytes; (protocol, bytes read).

    Empty bytes mean silence (native prompt) or, if the peer closed, EOF: the native edge
    then sees EOF at once. Only this greenlet waits."""
    if timeout <= 0:
        return NATIVE, b""
    # TLS: bytes may already be decrypted. Looked up on the class: a plain gevent socket
    # forwards unknown attributes to the OS socket, and that miss raises (a storm's cost).
    tls = getattr(type(sock), "pending", None) is not None
    pending = sock.pending if tls else None
    if pending is None:
        # Plain socket: a program sends its first line with the connection, so look
        # before waiting (no watcher, no timer: a registration storm is mostly this case).
        try:
            data = getattr(sock, "_sock", sock).recv(SNIFF_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        except OSError:
            return NATIVE, b""
        else:
            return classify(data), data
    if not (pending and pending()):
        try:
            wait_read(sock.fileno(), timeout=timeout)
        except (TimeoutError, gevent.Timeout):
            return NATIVE, b""
        except OSError:
            return NATIVE, b""
    try:
        data = sock.recv(SNIFF_BYTES)
    except BlockingIOError:
        return NATIVE, b""
    except OSError:
        return NATIVE, b""
    return classify(data), data
