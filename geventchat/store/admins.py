"""Admin accounts: names and scrypt password hashes in a small JSON file.

File format (mode 0600)::

    {"version": 1, "admins": {"<key>": {"name": "<display>",
                                        "hash": "scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>"}}}

``<key>`` is :func:`key` of the name, the identity that makes ``Alice`` and ``alice`` one
account. The scrypt parameters travel inside each hash, so they can be raised later without
invalidating existing passwords.

Passwords are never logged or kept: only their salted hashes are. Checking one costs ~50 ms
of CPU, so :meth:`AdminStore.verify` runs scrypt in gevent's threadpool (``hashlib.scrypt``
releases the GIL) and other clients keep chatting meanwhile. An unknown name costs the same
hash as a known one, so response times do not reveal which names are admins.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import stat
import time
import unicodedata
from dataclasses import dataclass

import gevent

from geventchat.core.text import name_key
from geventchat.store import atomic

log = logging.getLogger(__name__)

#: File format version written and accepted.
VERSION = 1

#: scrypt cost for new hashes: n=2**14, r=8 is the interactive-login setting of the scrypt
#: paper (~16 MiB and ~50 ms here), p=1 keeps it on one core.
#: Least seconds between two looks at the admins file for changes.
REFRESH_INTERVAL = 1.0

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
#: Bytes of derived key and of salt: 256 bits of hash, 128 bits of fresh salt per password.
DKLEN = 32
SALT_BYTES = 16

#: Memory scrypt may use (128 * n * r bytes is needed): room for parameters up to 4x today's.
_MAXMEM = 128 * 1024 * 1024
#: Cheap fixed input for the dummy hash of unknown names (its result is never accepted).
_DUMMY_SALT = b"geventchat-dummy"


class AdminFileError(Exception):
    """The admins file can't be used; the message is one line saying why and what to do."""


def key(name: str) -> str:
    """The key an account is stored under: NFKC then casefold. Stable: it depends on no
    data table that a dependency update could change (the look-alike skeleton, used for
    collisions, is computed at load and never written)."""
    return unicodedata.normalize("NFKC", name).casefold()


@dataclass(frozen=True, slots=True)
class _Hash:
    """A parsed ``scrypt$n$r$p$salt$hash`` string."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> _Hash:
        """ValueError unless ``text`` is a well-formed scrypt hash with sane parameters."""
        parts = text.split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("hash is not in the form scrypt$n$r$p$salt$hash")
        try:
            n, r, p = (int(x) for x in parts[1:4])
            salt = base64.b64decode(parts[4], validate=True)
            digest = base64.b64decode(parts[5], validate=True)
        except (ValueError, binascii.Error):
            raise ValueError("hash has a non-numeric parameter or bad base64") from None
        if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r * p > _MAXMEM:
            raise ValueError("hash has scrypt parameters out of range")
        if not salt or not digest:
            raise ValueError("hash has an empty salt or digest")
        return cls(n, r, p, salt, digest)

    def __str__(self) -> str:
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        return f"scrypt${self.n}${self.r}${self.p}${salt}${digest}"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    """scrypt in gevent's threadpool: ~50 ms of CPU that must not freeze the event loop."""
    secret = password.encode("utf-8", "surrogatepass")
    return gevent.get_hub().threadpool.apply(
        hashlib.scrypt, (secret,), {"salt": salt, "n": n, "r": r, "p": p, "dklen": dklen,
                                    "maxmem": _MAXMEM})


def _new_hash(password: str) -> _Hash:
    """A hash of ``password`` with a fresh salt and today's parameters."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, DKLEN)
    return _Hash(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, digest)


@dataclass(frozen=True, slots=True)
class _Account:
    name: str  # as displayed
    password_hash: _Hash


class AdminStore:
    """The admin accounts of one file (``path=None``: nobody is an admin).

    The file is loaded at once, so a bad file stops the server at startup rather than at the
    first login. Every change rewrites it atomically.
    """

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._accounts: dict[str, _Account] = {}
        # The hub's identity of each admin name (look-alikes collide) -> stored key.
        self._by_identity: dict[str, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.reload()

    def _find(self, name: str) -> _Account | None:
        account = self._accounts.get(key(name))
        if account is None:
            stored = self._by_identity.get(name_key(name))
            account = self._accounts.get(stored) if stored is not None else None
        return account

    def is_admin(self, name: str) -> bool:
        """Whether ``name`` (or a look-alike of it) is an admin account's name."""
        return self._find(name) is not None

    def verify(self, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s; False for unknown names, after the same work."""
        account = self._find(name)
        if account is None:
            expected = _Hash(SCRYPT_N, SCRYPT_R, SCRYPT_P, _DUMMY_SALT, bytes(DKLEN))
        else:
            expected = account.password_hash
        digest = _scrypt(password, expected.salt, expected.n, expected.r, expected.p,
                         len(expected.digest))
        return hmac.compare_digest(digest, expected.digest) and account is not None

    def add(self, name: str, password: str) -> None:
        """Create ``name`` or change its password, and save."""
        if not key(name).strip():
            raise ValueError("admin name is empty")
        if not password:
            raise ValueError("password is empty")
        self._require_path()
        account = _Account(name, _new_hash(password))
        accounts = dict(self._accounts)  # no yield from here to the swap: no lost update
        accounts[key(name)] = account
        self._save(accounts)
        self._set(accounts)
        log.info("admin account %s saved", name)

    def remove(self, name: str) -> bool:
        """Delete ``name``'s account and save; False if there is none."""
        if key(name) not in self._accounts:
            return False
        self._require_path()
        accounts = dict(self._accounts)
        del accounts[key(name)]
        self._save(accounts)
        self._set(accounts)
        log.info("admin account %s removed", name)
        return True

    def names(self) -> list[str]:
        """Display names of the admins, sorted ignoring case."""
        return sorted((a.name for a in self._accounts.values()), key=lambda n: (key(n), n))

    def reload(self) -> None:
        """Read the file again; on error the accounts in memory are kept."""
        if self.path is not None:
            self._stamp = _stamp(self.path)
            self._set(_load(self.path))

    def refresh(self) -> bool:
        """Re-read the file if it changed since it was read (``geventchat admin add`` or
        ``remove`` while the server runs); True if the accounts were reloaded. A cheap
        ``stat``, at most once a second, so it can run at every login and name claim."""
        now = time.monotonic()
        if self.path is None or now - self._checked < REFRESH_INTERVAL:
            return False
        self._checked = now
        if _stamp(self.path) == self._stamp:
            return False
        try:
            self.reload()
        except AdminFileError as exc:
            log.error("admins file changed but can't be used; keeping the old accounts: %s",
                      exc)
            return False
        log.info("admins file %s changed: %d accounts loaded", self.path, len(self._accounts))
        return True

    def _set(self, accounts: dict[str, _Account]) -> None:
        self._accounts = accounts
        self._by_identity = {name_key(a.name): k for k, a in accounts.items()}

    def _require_path(self) -> None:
        if self.path is None:
            raise AdminFileError("no admins file configured")

    def _save(self, accounts: dict[str, _Account]) -> None:
        assert self.path is not None
        data = {"version": VERSION, "admins": {
            k: {"name": a.name, "hash": str(a.password_hash)} for k, a in sorted(accounts.items())}}
        blob = (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
        try:
            _write_private(self.path, blob)
        except OSError as exc:
            raise AdminFileError(
                f"cannot write admins file {self.path}: {exc.strerror or exc}") from None


def _stamp(path: str) -> tuple[int, int, int] | None:
    """What changes when the file is replaced or rewritten: inode, size, mtime."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _load(path: str) -> dict[str, _Account]:
    """The accounts in ``path`` (none if it does not exist); AdminFileError if unusable."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            _check_mode(path, mode)
            raw = f.read()
    except FileNotFoundError:
        return {}
    except IsADirectoryError:
        raise AdminFileError(f"admins file {path} is a directory") from None
    except OSError as exc:
        raise AdminFileError(f"cannot read admins file {path}: {exc.strerror or exc}") from None
    try:
        return _parse(raw)
    except ValueError as exc:
        raise AdminFileError(f"admins file {path} is malformed: {exc}") from None


def _check_mode(path: str, mode: int) -> None:
    """Refuse hashes others can read (offline guessing) or write (planting an admin)."""
    if not stat.S_ISREG(mode):
        raise AdminFileError(f"admins file {path} is not a regular file")
    if mode & 0o077:
        raise AdminFileError(
            f"admins file {path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}")


def _parse(raw: bytes) -> dict[str, _Account]:
    """Accounts from the file's bytes; ValueError saying what is wrong."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not valid UTF-8 JSON ({exc})") from None
    version = data.get("version") if isinstance(data, dict) else None
    if type(version) is not int or version != VERSION:  # (True == 1, yet no version)
        raise ValueError(f'expected a JSON object with "version": {VERSION}')
    admins = data.get("admins")
    if not isinstance(admins, dict):
        raise ValueError('"admins" must be a JSON object')
    accounts = {}
    for k, entry in admins.items():
        account = _parse_account(k, entry)
        accounts[key(account.name)] = account  # older files were keyed by the skeleton
    return accounts


def _parse_account(account_key: str, entry: object) -> _Account:
    if not isinstance(entry, dict):
        raise ValueError(f"entry {account_key!r} must be a JSON object")
    name, hashed = entry.get("name"), entry.get("hash")
    if not isinstance(name, str) or not name or not isinstance(hashed, str):
        raise ValueError(f'entry {account_key!r} needs string "name" and "hash"')
    if account_key not in (key(name), name_key(name)):
        raise ValueError(f"entry {account_key!r}: key must be {key(name)!r} for name {name!r}")
    try:
        return _Account(name, _Hash.parse(hashed))
    except ValueError as exc:
        raise ValueError(f"entry {account_key!r}: {exc}") from None


def _write_private(path: str, blob: bytes) -> None:
    """Atomically replace ``path`` by ``blob``, mode 0600 from the first byte on: no other
    user ever sees the hashes, and a crash leaves either the old file or the new one."""
    atomic.replace_file(path, blob, 0o600)
