"""Text hygiene and name rules, shared by every protocol.

User text is cleaned once, where it enters, so that no user can put control sequences on
another user's terminal or into the history file, whatever protocol either of them speaks.
"""

from __future__ import annotations

import re
import unicodedata

from geventchat.errors import ChatError

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


def clean(text: str) -> str:
    """Return ``text`` without control characters or bidi controls; tabs become spaces.

    This is on the per-line path, so the common case (plain printable text) costs one
    regex search.
    """
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
    if not 1 <= len(name) <= NAME_MAX or not all(_name_char_ok(c) for c in name):
        raise ChatError("invalid_name")
    return name


def name_key(name: str) -> str:
    """Identity of a name: NFKC then casefold, so ``Alice`` and ``ALICE`` are one user."""
    return unicodedata.normalize("NFKC", name).casefold()
