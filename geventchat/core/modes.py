"""Room modes: the state behind IRC's channel modes, protocol-neutral.

A :class:`RoomModes` lives in each :class:`~geventchat.core.hub.Room` (``room.modes``) and
is changed only through :mod:`geventchat.core.actions` (rights are checked there). Native
users get the same powers through ``/mode``, ``/ban`` and ``/invite``; IRC users through
``MODE`` and ``INVITE``. The topic lock (``+t``) stays ``Room.topic_locked``.

Masks are ``nick!user@host`` with ``*`` and ``?`` wildcards, matched ignoring case. A user's
host is both what clients are shown (the server name: hosts are never revealed) and its
address, so ``*!*@203.0.113.7`` bans an address and ``nick!*@*`` a nick.

Nothing here waits or knows a wire format.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

#: Flag modes without a parameter (``t`` is the room's ``topic_locked``).
FLAGS: Final = "imnps"
#: List modes: bans, ban exceptions, invite exceptions.
LISTS: Final = "beI"
#: Modes with a parameter when set and unset; ``k`` when set (the key is given, and
#: ignored, when unset too, as RFC 2812 writes it); ``l`` only when set.
MEMBER_MODES: Final = "ov"
#: Every channel mode letter, and the CHANMODES groups (ISUPPORT), exactly as enforced.
ALL: Final = "beIiklmnopstv"
CHANMODES: Final = "beI,k,l,imnpst"
#: Entries a list mode may hold (MAXLIST), so a room's lists stay bounded.
MAX_LIST: Final = 50
#: Longest key (KEYLEN), in characters.
KEYLEN: Final = 32


@dataclass(slots=True)
class ListEntry:
    """One ban (exception, invite exception): who set it, when (epoch seconds)."""

    mask: str
    by: str
    at: int


@dataclass(slots=True)
class RoomModes:
    """Everything a room's modes say, apart from ``+t`` and ``+o`` (``Room.ops``)."""

    flags: set[str] = field(default_factory=lambda: {"n"})
    key: str = ""
    limit: int = 0
    voices: set[str] = field(default_factory=set)  # keys of voiced members
    bans: dict[str, ListEntry] = field(default_factory=dict)  # folded mask -> entry
    excepts: dict[str, ListEntry] = field(default_factory=dict)
    invex: dict[str, ListEntry] = field(default_factory=dict)
    #: Keys of users invited (INVITE, /invite) since the last time they joined.
    invited: set[str] = field(default_factory=set)
    created: int = field(default_factory=lambda: int(time.time()))

    def lists(self, letter: str) -> dict[str, ListEntry]:
        return {"b": self.bans, "e": self.excepts, "I": self.invex}[letter]

    @property
    def secret(self) -> bool:
        return "s" in self.flags

    @property
    def private(self) -> bool:
        return "p" in self.flags

    def forget(self, key: str) -> None:
        """A member left: its voice goes with it."""
        self.voices.discard(key)

    def rekey(self, old: str, new: str) -> None:
        if old in self.voices:
            self.voices.discard(old)
            self.voices.add(new)


def normalize_mask(mask: str) -> str:
    """``bob`` -> ``bob!*@*``, ``*@host`` -> ``*!*@host``, ``bob!u`` -> ``bob!u@*``."""
    mask = mask.strip()
    if "!" not in mask and "@" not in mask:
        return f"{mask}!*@*"
    if "!" not in mask:
        return f"*!{mask}"
    if "@" not in mask:
        return f"{mask}@*"
    return mask


@lru_cache(maxsize=1024)
def _pattern(mask: str) -> re.Pattern[str]:
    parts = ("." if ch == "?" else ".*" if ch == "*" else re.escape(ch) for ch in mask)
    return re.compile("".join(parts), re.DOTALL)


def fold(mask: str) -> str:
    return mask.casefold()


def matches(mask: str, identities: tuple[str, ...]) -> bool:
    """Whether a (folded, normalized) mask matches any of a user's identities (folded)."""
    pattern = _pattern(mask)
    return any(pattern.fullmatch(ident) for ident in identities)


def any_match(entries: dict[str, ListEntry], identities: tuple[str, ...]) -> bool:
    return any(matches(mask, identities) for mask in entries)


def changes(modes: str, args: tuple[str, ...]) -> list[tuple[bool, str, str | None]]:
    """An announced mode string and its parameters as ``(give, letter, arg)`` triples, each
    letter paired with its own parameter (lists and member modes always take one, ``k``
    too, ``l`` only when given): ``("+ko", ("key", "bob"))`` -> ``[(True, "k", "key"),
    (True, "o", "bob")]``."""
    out: list[tuple[bool, str, str | None]] = []
    rest = list(args)
    give = True
    for letter in modes:
        if letter in "+-":
            give = letter == "+"
            continue
        takes = letter in LISTS or letter in MEMBER_MODES or letter == "k" or (
            letter == "l" and give)
        out.append((give, letter, rest.pop(0) if takes and rest else None))
    return out
