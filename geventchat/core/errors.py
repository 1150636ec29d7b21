"""Coded chat errors.

Handlers raise :class:`ChatError` for anything a peer did wrong; the connection layer turns
it into an :class:`~geventchat.core.events.Error` event that each protocol renders its own way
(``! text`` natively, a numeric for IRC). A peer's bad input never escapes as any other
exception. The codes are stable identifiers, the texts are for humans.
"""

from __future__ import annotations

from geventchat.core.events import Error

# code -> default human text. Codes are what renderers map (IRC numerics come next).
CODES: dict[str, str] = {
    "invalid_name": "invalid name: names are 1-32 letters, digits, _ - or .",
    "name_taken": "name taken",
    "reserved_name": "that name is reserved",
    "wrong_password": "wrong password",
    "too_many_logins": "too many failed logins",
    "no_such_user": "no such user",
    "unknown_command": "unknown command",
    "usage": "usage",
    "permission_denied": "permission denied",
    "line_too_long": "line too long",
    "server_full": "server full",
    "flood": "slow down",
    "timeout": "timeout",
    "no_such_room": "no such room",
    "not_member": "you are not in that room",
    "target_not_member": "they are not in that room",
    "not_operator": "you are not an operator of that room",
    "admins_only": "permission denied: admins only",
    "too_many_rooms": "you are in too many rooms",
    "cannot_send": "cannot send to that room",
    "history_gap": "some lines could not be recovered",
    "not_delivered": "not delivered: chat backplane unavailable",
    "unknown_mode": "unknown mode",
    "invalid_mode_param": "invalid mode parameter",
    "lobby_mode": "the lobby can't have that mode",
    "list_full": "that list is full",
    "banned": "you are banned from that room",
    "invite_only": "that room is invite-only",
    "room_full": "that room is full",
    "bad_key": "wrong room key",
    "already_member": "they are already in that room",
}


class ChatError(Exception):
    """Something a peer did that we refuse, with a stable ``code`` and a human ``text``."""

    def __init__(self, code: str, text: str | None = None, *params: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.text = text if text is not None else CODES[code]
        #: What the error is about (a name, a room), for protocols whose replies carry it
        #: as parameters (IRC numerics).
        self.params = params
        super().__init__(self.text)

    def event(self) -> Error:
        """The protocol-neutral event the connection sends back to the offender."""
        return Error(self.code, self.text)
