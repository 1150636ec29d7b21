"""Text hygiene and name rules, shared by every protocol.

User text is cleaned once, where it enters, so that no user can put control sequences on
another user's terminal or into the history file, whatever protocol either of them speaks.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from confusable_homoglyphs import categories, confusables

from geventchat.core.errors import ChatError

#: Longest name, in characters (after NFKC).
NAME_MAX = 32

# Bidi embedding/override (U+202A-U+202E) and isolate (U+2066-U+2069) controls reorder
# what follows them on screen, so they can disguise text. They are category Cf, which we
# can't strip wholesale from text (ZWJ builds emoji), so they are listed. Names are
# stricter: any Cf character (zero-width ones included) is refused there.
_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"

# Category Cc is C0 (ESC included), DEL and C1; a tab becomes a space first.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f" + _BIDI + "]")
_NAME_EXTRA = frozenset("_-.")
# The common case, checked in one step: an ASCII name of letters, digits and _ - . (no
# ASCII character is invisible, and ASCII is one script with no look-alike to refuse).
_ASCII_NAME = re.compile(rf"[A-Za-z0-9_.\-]{{1,{NAME_MAX}}}")

# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt): characters
# that render as nothing. Some are letters or marks (U+3164 HANGUL FILLER is Lo, U+034F
# and the variation selectors are Mn), so the category rule alone would admit them.
_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_BLANK = 0x2800  # BRAILLE PATTERN BLANK: a symbol, but it looks like a space


def _invisible(ch: str) -> bool:
    cp = ord(ch)
    return cp == _BLANK or any(lo <= cp <= hi for lo, hi in _IGNORABLE)

# Scripts that are written together; any other mix of scripts in one name is refused,
# because mixing is how look-alikes are made ("аlice" with a Cyrillic а).
_SCRIPT_FAMILIES = (
    frozenset({"HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"HAN", "HANGUL"}),
    frozenset({"HAN", "BOPOMOFO"}),
)
_NEUTRAL_SCRIPTS = frozenset({"COMMON", "INHERITED"})

#: Names that would let a user's ``/me`` line pass for a server notice
#: (``* server shutting down: ...``, ``* history cleared by ...``, ``* online (3): ...``).
RESERVED_NAMES = frozenset({"server", "history", "online", "rooms", "topic", "commands",
                            "goodbye", "you"})


# mIRC formatting: bold, colour (with its digits), hex colour, reset, monospace, reverse,
# italic, strikethrough, underline. IRC users keep it; other protocols get it stripped.
_FORMAT_CODES = "\x02\x03\x04\x0f\x11\x16\x1d\x1e\x1f"
_CONTROL_BUT_FORMAT = re.compile(
    "[" + "".join(c for c in "".join(chr(i) for i in range(0x20)) + "\x7f"
                  if c not in _FORMAT_CODES + "\t" and c != "\n")
    + "\x0a\x80-\x9f" + _BIDI + "]")
_FORMAT = re.compile(r"\x03(?:\d{1,2}(?:,\d{1,2})?)?|\x04(?:[0-9a-fA-F]{6}"
                     r"(?:,[0-9a-fA-F]{6})?)?|[\x02\x0f\x11\x16\x1d\x1e\x1f]")
_HAS_FORMAT = re.compile("[" + _FORMAT_CODES + "]")


def clean_keeping_format(text: str) -> str:
    """:func:`clean`, but mIRC formatting codes stay (IRC input: IRC readers see colours,
    everyone else gets them stripped by :func:`strip_formatting`)."""
    if "\t" in text:
        text = text.replace("\t", " ")
    if _CONTROL_BUT_FORMAT.search(text) is None:
        return text
    return _CONTROL_BUT_FORMAT.sub("", text)


def strip_formatting(text: str) -> str:
    """``text`` without mIRC formatting: colour codes go with their digits (``\x034red``
    is ``red``, not ``4red``)."""
    if _HAS_FORMAT.search(text) is None:
        return text
    return _FORMAT.sub("", text)


def clean(text: str) -> str:
    """Return ``text`` without control characters or bidi controls; tabs become spaces.

    This is on the per-line path, so the common case (plain printable text) costs one
    ``isprintable`` (every character the regex removes is unprintable).
    """
    if text.isprintable():
        return text
    if "\t" in text:
        text = text.replace("\t", " ")
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub("", text)


def _name_char_ok(ch: str) -> bool:
    if ch in _NAME_EXTRA:
        return True
    cat = unicodedata.category(ch)
    return cat[0] in "LN" or cat in ("Mn", "Mc")


def check_name(raw: str) -> str:
    """Validate a requested user name and return it in canonical (NFKC) form.

    Rules: 1-32 characters, letters of any script (with their combining marks), digits,
    ``_ - .``. NFKC folds look-alike compatibility forms (fullwidth letters, ligatures);
    invisible and bidi characters are refused outright rather than stripped, so a name
    never silently differs from what its owner typed. Raises ``ChatError('invalid_name')``.
    """
    name = unicodedata.normalize("NFKC", raw.strip())
    if _ASCII_NAME.fullmatch(name):
        if name.casefold() in RESERVED_NAMES:
            raise ChatError("reserved_name", f"that name is reserved: {name}")
        return name
    if not 1 <= len(name) <= NAME_MAX or not all(_name_char_ok(c) for c in name):
        raise ChatError("invalid_name")
    if any(_invisible(c) for c in name):
        raise ChatError("invalid_name", "invalid name: it contains an invisible character")
    if not _one_script(name):
        raise ChatError("invalid_name", "invalid name: letters from one script only")
    if _latin_lookalike(name):
        raise ChatError("invalid_name", "invalid name: it looks like a Latin name")
    if name.casefold() in RESERVED_NAMES:
        raise ChatError("reserved_name", f"that name is reserved: {name}")
    return name


def _one_script(name: str) -> bool:
    if name.isascii():
        return True
    scripts = set(categories.unique_aliases(name)) - _NEUTRAL_SCRIPTS
    return len(scripts) <= 1 or any(scripts <= family for family in _SCRIPT_FAMILIES)


def _latin_lookalike(name: str) -> bool:
    """A non-Latin name every letter of which has a Latin double (``сосо`` in Cyrillic):
    a whole-script confusable, refused because it can pass for someone else."""
    if name.isascii():
        return False
    letters = [c for c in name if c.isalpha()]
    if not letters or "LATIN" in categories.unique_aliases(name):
        return False
    hits = confusables.is_confusable(name, greedy=True, preferred_aliases=["latin"]) or []
    doubled = {h["character"] for h in hits
               if any(g["n"].startswith("LATIN") for g in h["homoglyphs"])}
    return all(c in doubled for c in letters)


def name_key(name: str) -> str:
    """Identity of a name, so look-alikes are one user: NFKC, casefold, then letters that
    are confusable with Latin ones (Cyrillic ``а``, Greek ``ο``...) replaced by those."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    if not folded.isascii():
        return _skeleton(folded)
    # A name that is its own key (lower case) gives back the same string, so the many
    # users and members keyed by it don't each keep an equal copy.
    return name if folded == name else folded


@lru_cache(maxsize=8192)
def _skeleton(folded: str) -> str:
    hits = confusables.is_confusable(folded, greedy=True, preferred_aliases=["latin"]) or []
    table = {}
    for hit in hits:
        latin = [g["c"] for g in hit["homoglyphs"] if g["n"].startswith("LATIN")]
        if latin:
            table[hit["character"]] = latin[0]
    return "".join(table.get(c, c) for c in folded).casefold()
