"""The native edge: the line protocol of ``nc`` and ``geventchat connect``.

The handshake (server password if any, name, admin password for admin accounts) and then
commands through the native command table (:mod:`geventchat.wire.native_commands`), which
translates them into actions. Output never goes through this greenlet's blocking calls:
it is handed to the client's :class:`~geventchat.edges.outbuf.Output`.
"""

from __future__ import annotations

import logging
import socket

from geventchat.core import actions
from geventchat.core import events as ev
from geventchat.core.errors import ChatError
from geventchat.core.hub import Renderer, Session
from geventchat.core.text import check_name, name_key
from geventchat.edges.admission import MAX_LOGIN_FAILURES
from geventchat.edges.base import ClientConnection, Decoder, EdgeContext
from geventchat.edges.outbuf import Output
from geventchat.edges.sniff import looks_like_irc
from geventchat.wire.native import NATIVE, NATIVE_IDS, TOO_LONG, LineDecoder, LineTooLong, parse
from geventchat.wire.native_commands import dispatch

log = logging.getLogger(__name__)


class NativeConnection(ClientConnection):
    """One native client, from the name prompt to the close."""

    __slots__ = ("_pending_name", "_failures", "_authorised", "_first_line", "irc_lines",
                 "_ids", "_resume")

    protocol = "native"
    #: How events reach this client (the WebSocket edge, which shares this handshake and
    #: the command table, renders JSON frames instead).
    renderer: Renderer = NATIVE

    def __init__(self, ctx: EdgeContext, sock: socket.socket, addr: tuple,
                 decoder: Decoder | None = None, out: Output | None = None) -> None:
        super().__init__(ctx, sock, addr, decoder or LineDecoder(ctx.settings.max_line), out)
        self._pending_name: str | None = None  # admin name waiting for its password
        self._failures = 0
        self._authorised = not ctx.admission.password_required
        self._first_line = True
        self.irc_lines: list[str | LineTooLong] | None = None  # set when IRC is detected
        self._ids = False  # /ids before the name: stored lines carry their ids
        self._resume: tuple[str, str, int] | None = None  # /resume before the name

    # --- hooks -----------------------------------------------------------------------

    def greet(self) -> None:
        self.send(ev.Prompt("name" if self._authorised else "server password"))

    def handle(self, lines: list) -> None:
        if self._first_line and lines and self._closing is None and looks_like_irc_line(lines[0]):
            # A slow IRC client whose first bytes came after the sniffing window: hand the
            # lines over to the IRC edge (the server continues the connection there).
            self.irc_lines = lines
            self._closing = "irc"
            return
        if lines:
            self._first_line = False
        super().handle(lines)

    def on_line(self, line: str | LineTooLong) -> None:
        if line is TOO_LONG:
            self.send(ev.Error("line_too_long",
                               f"line too long (max {self.settings.max_line} bytes)"))
            return
        try:
            self._on_line(line)
        except ChatError as exc:
            self.send(exc.event())

    def slow_down(self) -> None:
        self.send(ev.Error("flood", f"slow down: at most {self.flood.rate:g} lines/s "
                                    f"after a burst of {self.flood.burst}"))

    def flood_kick(self) -> None:
        self.send(ev.Error("flood", "flooding: disconnected"))
        self.close("flooding")

    def timed_out(self, what: str) -> None:
        self.send(ev.Error("timeout", what))
        self.close(what)

    def expire(self, now: float) -> None:
        super().expire(now)
        idle = self.settings.idle_timeout
        if self._closing is None and idle and now - self.last_active > idle:
            self.send(ev.Error("timeout", f"idle for {idle:g} s"))
            self.close("idle timeout")

    def finish(self) -> None:
        if self._closing == "irc":
            return  # the IRC edge carries on with this socket and output
        super().finish()

    # --- output ----------------------------------------------------------------------

    def send(self, event: ev.Event) -> None:
        """One event for this client only, in order with its rooms' broadcasts."""
        if self.session is not None:
            self.session.send(event)
        else:
            self.out.write(self.renderer.render(event))

    # --- lines -----------------------------------------------------------------------

    def _on_line(self, line: str) -> None:
        if self.session is not None:
            cmd = parse(line)
            if cmd is not None:
                dispatch(self.hub, self.session, cmd)
        elif not self._authorised:
            self._on_server_password(line)
        elif self._pending_name is not None:
            self._on_password(line)
        elif line.startswith("/"):
            self._before_name(line)
        else:
            self._on_name(line)

    def _before_name(self, line: str) -> None:
        """Requests a program may make before its name (docs/PROTOCOL.md, "Resuming"):
        ``/ids`` (show each stored line's id) and ``/resume ROOM EPOCH ID`` (land in ROOM
        with exactly the lines stored after ID instead of the lobby's recent lines)."""
        words = line.split()
        if words == ["/ids"]:
            self._ids = True
            self.send(ev.Notice("ids on"))
            return
        if len(words) == 4 and words[0] == "/resume" and words[3].isdigit():
            self._resume = (words[1], words[2], int(words[3]))
            return
        self.send(ev.Error("usage", "before your name: /ids, /resume ROOM EPOCH ID, or a name"))
        self.send(ev.Prompt("name"))

    def _on_name(self, line: str) -> None:
        self.hub.check_admins()
        try:
            name = check_name(line)
            self.hub.check_free(name)
        except ChatError as exc:
            self.send(exc.event())
            self.send(ev.Prompt("name"))
            return
        if self.hub.admins.is_admin(name):
            self._pending_name = name
            self.send(ev.Prompt("password"))
        else:
            self._register(name, None)

    def _on_server_password(self, password: str) -> None:
        try:
            ok = self.ctx.admission.server_password(self.addr_ip, password)
        except ChatError as exc:
            self.send(exc.event())
            self.close("login rate limit")
            return
        if ok:
            self._authorised = True
            self.send(ev.Prompt("name"))
        elif self._login_failed():
            self.send(ev.Error("wrong_password", "wrong server password"))
            self.send(ev.Prompt("server password"))

    def _on_password(self, password: str) -> None:
        name, self._pending_name = self._pending_name, None
        try:
            ok = self.ctx.admission.admin_login(self.addr_ip, name, password)
        except ChatError as exc:
            self.send(exc.event())
            self.close("login rate limit")
            return
        if self._closing is not None:
            return  # went away while the hash was computed
        if ok:
            self._register(name, name_key(name))
        elif self._login_failed():
            self.send(ev.Error("wrong_password", "wrong password"))
            self.send(ev.Prompt("name"))

    def _login_failed(self) -> bool:
        """Count a failure on this connection; close after too many. True if the client
        may try again."""
        self._failures += 1
        if self._failures < MAX_LOGIN_FAILURES:
            return True
        self.send(ev.Error("too_many_logins", "too many failed logins"))
        self.close("too many failed logins")
        return False

    def _register(self, name: str, account: str | None) -> None:
        if self.hub.stopping:
            return
        renderer = NATIVE_IDS if self._ids and self.renderer is NATIVE else self.renderer
        session = Session(name, self.out, renderer, self.close, account=account,
                          addr=self.peer)
        session.always_in_room = True
        resume = self._resume
        try:
            # Claims the name cluster-wide and re-checks it: it may have gone meanwhile.
            actions.register(self.hub, session, join_lobby=resume is None)
        except ChatError as exc:
            self.send(exc.event())
            self.send(ev.Prompt("name"))
            return
        self.session = session
        if resume is not None:
            try:
                if actions.resume(self.hub, session, *resume) is not None:
                    return
            except ChatError as exc:
                self.send(exc.event())
            if not session.rooms and self.hub.users.get(session.key) is session:
                self.hub.join(session, self.hub.lobby)  # a native user is always somewhere


def looks_like_irc_line(line: object) -> bool:
    return isinstance(line, str) and looks_like_irc(line)
