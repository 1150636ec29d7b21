"""The WebSocket edge: the browser client, after the HTTP upgrade on ``/ws``.

Frames are parsed by the ``websockets`` package's sans-IO protocol (masking, control
frames, close codes, size limits; it answers pings and close frames itself); fragmented
messages are put together here. Each text message is one JSON object (docs/PROTOCOL.md):
``{"type": "line", "text": ...}`` is exactly what a terminal user types, so it goes
through the native edge's handshake (server password, name, admin password) and then
through the native command table and the actions layer: no chat logic lives here. Output
is rendered by :data:`~geventchat.wire.web.WEB`: one frame per room batch, the same bytes
for every WebSocket member.
"""

from __future__ import annotations

import logging
import socket

import gevent
from websockets.frames import CloseCode, Opcode
from websockets.protocol import SEND_EOF, Protocol, Side, State

from geventchat.core import events as ev
from geventchat.edges.base import EdgeContext, wake_reader
from geventchat.edges.native import NativeConnection
from geventchat.edges.outbuf import Output
from geventchat.wire.native import TOO_LONG
from geventchat.wire.web import WEB, BadMessage, frame_json, parse_client, rooms_json, who_json

log = logging.getLogger(__name__)

#: Seconds of client silence before the server pings (keeps proxies from dropping an idle
#: connection), and how long the pong may take before the connection counts as dead.
PING_INTERVAL = 30.0
PING_TIMEOUT = 30.0
#: Longest close reason: a close frame's payload is at most 125 bytes, 2 of them the code.
_REASON_MAX = 123

#: Close codes for the reasons a server ends a connection.
_CLOSE_CODES = {"server shutdown": CloseCode.GOING_AWAY, "quit": CloseCode.NORMAL_CLOSURE,
                "Excess Flood": CloseCode.POLICY_VIOLATION,
                "flooding": CloseCode.POLICY_VIOLATION}


def max_message(max_line: int) -> int:
    """Largest client message in bytes: a line of ``max_line`` bytes wrapped in JSON, with
    room for escapes (``\\"`` doubles a quote; a control character is six bytes)."""
    return 2 * max_line + 256


class FrameDecoder:
    """Bytes in, complete text messages out (a ``Decoder`` for the connection base).

    Control frames are answered through ``write``; ``ended`` is called once when the
    WebSocket is over (close handshake done, or the client broke the protocol)."""

    __slots__ = ("ws", "_parts", "_first_op", "_write", "_ended", "done")

    def __init__(self, limit: int, write, ended) -> None:
        self.ws = Protocol(Side.SERVER, state=State.OPEN, max_size=limit)
        self._parts: list[bytes] = []
        self._first_op = Opcode.TEXT  # opcode of the message being put together
        self._write = write
        self._ended = ended
        self.done = False

    def feed(self, data: bytes) -> list:
        ws = self.ws
        ws.receive_data(data)
        messages: list = []
        for frame in ws.events_received():
            op = frame.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY:
                self._first_op = op
            if op is Opcode.TEXT or op is Opcode.BINARY or op is Opcode.CONT:
                self._parts.append(frame.data)
                if not frame.fin:
                    continue
                first_op = self._first_op
                payload = b"".join(self._parts)
                self._parts = []
                if first_op is Opcode.BINARY:
                    ws.fail(CloseCode.UNSUPPORTED_DATA, "text frames only")
                    break
                try:
                    messages.append(payload.decode("utf-8"))
                except UnicodeDecodeError:
                    ws.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                    break
        self.flush()
        return messages

    def flush(self) -> None:
        """Write what the protocol wants sent (pongs, close frames)."""
        for data in self.ws.data_to_send():
            if data is SEND_EOF or not data:
                if not self.done:
                    self.done = True
                    self._ended()
            else:
                self._write(data)

    def close(self) -> list:
        return []


class WebSocketConnection(NativeConnection):
    """One browser (or any WebSocket client) from the upgrade to the close."""

    __slots__ = ("_ended", "_close_code", "_pinged")

    protocol = "websocket"
    renderer = WEB

    def __init__(self, ctx: EdgeContext, sock: socket.socket, addr: tuple,
                 out: Output | None = None) -> None:
        self._ended = False
        self._close_code = CloseCode.NORMAL_CLOSURE
        self._pinged = 0.0
        decoder = FrameDecoder(max_message(ctx.settings.max_line), self._write_control,
                               self._protocol_ended)
        super().__init__(ctx, sock, addr, decoder, out)

    # --- hooks -----------------------------------------------------------------------

    def handle(self, lines: list) -> None:
        # The native edge's "is this an IRC client after all?" check makes no sense here.
        super(NativeConnection, self).handle(lines)

    def is_open(self) -> bool:
        return self._closing is None and not self._ended

    def on_line(self, text: object) -> None:
        try:
            msg = parse_client(text)
        except BadMessage as exc:
            self.send(ev.Error("bad_message", f"bad message: {exc}"))
            return
        kind = msg["type"]
        if kind == "line":
            line = msg["text"]
            if len(line.encode("utf-8", "replace")) > self.settings.max_line:
                super().on_line(TOO_LONG)
            else:
                # One message is one line: a pasted newline must not smuggle in a second
                # command, so line breaks become spaces (control characters are then
                # cleaned by the native parser, as for any line).
                super().on_line(line.replace("\r", " ").replace("\n", " "))
        elif kind in ("rooms", "who"):
            session = self.session
            if session is None:
                self.send(ev.Error("not_registered", "choose a name first"))
            elif kind == "rooms":
                session.send_raw(frame_json([rooms_json(self.hub.active_rooms())]))
            elif session.room is not None:
                session.send_raw(frame_json([who_json(session.room)]))
        else:
            self.send(ev.Error("bad_message", f"unknown message type: {kind}"))

    def goodbye(self, reason: str) -> None:
        self._close_code = _CLOSE_CODES.get(reason, CloseCode.NORMAL_CLOSURE)
        if self.session is None:
            self._send_close(reason)
        # else: after the session has left the hub (forget), so no room frame follows it

    def forget(self, session: object) -> None:
        self._send_close(self._closing or "")

    def expire(self, now: float) -> None:
        super().expire(now)
        if self._closing is not None or self._ended:
            return
        silent = now - self.last_active
        if self._pinged and self.last_active < self._pinged:
            if now - self._pinged > PING_TIMEOUT:
                self.timed_out("ping timeout")
        elif silent > PING_INTERVAL:
            self._pinged = now
            self.decoder.ws.send_ping(b"")
            self.decoder.flush()

    # --- internals -------------------------------------------------------------------

    def _write_control(self, data: bytes) -> None:
        self.out.write(data)

    def _protocol_ended(self) -> None:
        """The close handshake is done or the client broke the protocol: stop reading;
        what is queued (the close frame) is still written by ``finish``."""
        self._ended = True
        if self._closing is None and gevent.getcurrent() is not self._reader:
            wake_reader(self.sock)

    def _send_close(self, reason: str) -> None:
        decoder: FrameDecoder = self.decoder
        if decoder.ws.state is not State.OPEN or self.out.closed:
            return
        text = reason.encode("utf-8")[:_REASON_MAX].decode("utf-8", "ignore")
        decoder.ws.send_close(self._close_code, text)
        decoder.flush()
