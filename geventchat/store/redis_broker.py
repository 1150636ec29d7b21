"""The Redis engine: several nodes share one chat through one Redis (or Valkey).

Shape (after Centrifugo's Redis engine): every room event goes to Redis first and is
delivered when it comes back, so every node delivers one order. Per loop pass, each room's
new events go in **one** Lua call (``redis_scripts.PUBLISH``) that numbers them (the room's
offset), appends them to the room's streams with the offset as the entry id, and publishes
the whole batch in one message. Each node has one subscriber connection, read by one
greenlet, subscribed to the rooms that have members here; an offset jump, an epoch change
or a lost subscription is a gap, filled from the streams. Presence is a users hash plus a
sorted set of expiry times that each node refreshes; any node reaps expired users and
announces them gone, atomically (so exactly once).

Connections: redis-py with hiredis, over **gevent's** sockets by a connection class (the
library never monkey-patches). Each connection is used by one greenlet only: the writer
owns the command connection (every other greenlet hands it work and, for answers, waits on
an ``AsyncResult`` with a deadline), the reader owns the subscription. So no redis-py pool
lock is ever contended, and no greenlet is killed while it holds a connection: both stop
at their next loop turn.

Failure policy: a batch that can't be published gets ``! not delivered: chat backplane
unavailable`` for each of its lines' senders; admins are told when the backplane goes and
comes back; the writer reconnects with backoff, reloads the scripts and re-registers this
node's users; the reader resubscribes and refills every room from its streams.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket
import gevent.ssl
import redis
from gevent.event import AsyncResult
from gevent.event import Event as GEvent
from redis.backoff import NoBackoff
from redis.connection import Connection, SSLConnection
from redis.retry import Retry

from geventchat.core import events as ev
from geventchat.core import modes
from geventchat.core.directory import RemoteUser
from geventchat.core.errors import ChatError
from geventchat.core.hub import LOBBY_NAME, Room, Session
from geventchat.core.text import name_key
from geventchat.store import redis_codec as codec
from geventchat.store import redis_scripts as scripts

if TYPE_CHECKING:
    from geventchat.core.hub import Hub

log = logging.getLogger(__name__)

#: Oldest server with every command used (``ZRANGE ... BYSCORE``, ``XADD`` explicit ids).
MIN_VERSION = (6, 2)
P = "gc:"
#: Unstored events kept per room only to fill gaps.
EVENTS_MAX = 1000
#: Stored lines kept per room when ``--history-max`` is not given.
HISTORY_DEFAULT = 10000
#: How long an action waits for Redis before it gives up.
CALL_TIMEOUT = 5.0
#: The reader's poll: also how soon it takes up a new subscription.
POLL = 0.05
BACKOFF = (0.1, 2.0)
#: Batches kept for a room while its history loads or a gap is filled.
BUFFER_MAX = 10000

NOT_DELIVERED = ev.Error("not_delivered", "not delivered: chat backplane unavailable")
_PRESENCE = (ev.Joined, ev.Left, ev.Quit, ev.Kicked, ev.Killed, ev.Renamed)
_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


class BackplaneDown(Exception):
    """Redis can't be reached now."""


class StartError(ValueError):
    """Redis is unusable at start: the message is the one-line reason (a ValueError, so
    ``geventchat serve`` prints it and exits with status 2)."""


# --- connections over gevent sockets ---------------------------------------------------------


class GeventConnection(Connection):
    """redis-py's connection over gevent's cooperative socket: waiting for Redis lets
    the other greenlets run, without monkey-patching anything."""

    def _connect(self):  # noqa: ANN202 (redis-py's signature)
        err: OSError | None = None
        for family, socktype, proto, _, address in gevent.socket.getaddrinfo(
                self.host, self.port, self.socket_type, gevent.socket.SOCK_STREAM):
            sock = gevent.socket.socket(family, socktype, proto)
            try:
                sock.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
                if self.socket_keepalive:
                    sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_KEEPALIVE, 1)
                sock.settimeout(self.socket_connect_timeout)
                sock.connect(address)
                sock.settimeout(self.socket_timeout)
                return sock
            except OSError as exc:
                err = exc
                sock.close()
        raise err or OSError("getaddrinfo returned nothing")


class GeventSSLConnection(SSLConnection):
    """``rediss://``: TLS through gevent's SSL context (the stdlib's would block the loop)."""

    def _connect(self):  # noqa: ANN202
        sock = GeventConnection._connect(self)
        ctx = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = bool(self.check_hostname)
        ctx.verify_mode = self.cert_reqs
        if self.ca_certs or self.ca_path or self.ca_data:
            ctx.load_verify_locations(cafile=self.ca_certs, capath=self.ca_path,
                                      cadata=self.ca_data)
        elif self.cert_reqs != gevent.ssl.CERT_NONE:
            ctx.load_default_certs()
        if self.certfile or self.keyfile:
            ctx.load_cert_chain(self.certfile, self.keyfile)
        try:
            return ctx.wrap_socket(sock, server_hostname=self.host)
        except OSError:
            sock.close()
            raise


def make_client(url: str, timeout: float | None) -> redis.Redis:
    pool = redis.ConnectionPool.from_url(
        url, retry=Retry(NoBackoff(), 0), socket_timeout=timeout,
        socket_connect_timeout=CALL_TIMEOUT, health_check_interval=0)
    ssl_ = issubclass(pool.connection_class, SSLConnection)
    pool.connection_class = GeventSSLConnection if ssl_ else GeventConnection
    return redis.Redis(connection_pool=pool)


# --- per-room delivery state -----------------------------------------------------------------


class _RoomState:
    __slots__ = ("room", "epoch", "last", "ready", "recovering", "buffer", "recent",
                 "subscribed", "prepared", "preparing")

    def __init__(self, room: Room, replay: int) -> None:
        self.room = room
        self.epoch: bytes | None = None
        self.last = 0
        self.ready = False  # history loaded: live batches are applied
        self.recovering = False  # a gap is being filled: live batches wait in buffer
        self.buffer: list[bytes] = []
        self.recent: deque[ev.Event] = deque(maxlen=max(replay, 1))
        self.subscribed = GEvent()
        self.prepared = GEvent()
        self.preparing = False


class _Job:
    __slots__ = ("commands", "result")

    def __init__(self, commands: list[tuple], result: AsyncResult | None) -> None:
        self.commands = commands
        self.result = result


# --- the engine ------------------------------------------------------------------------------


class RedisBroker:
    """The :class:`~geventchat.core.broker.Broker` and the
    :class:`~geventchat.core.directory.Directory` of a cluster node (one object: both
    share the connections, the writer and the reader)."""

    cluster = True
    #: Joins and leaves come back from Redis in the room's order, like lines (the hub
    #: does not announce them itself).
    orders_presence = True

    def __init__(self, url: str, node: str, *, replay: int = 100,
                 history_max: int | None = None, presence_ttl: float = 30.0) -> None:
        self.url = url
        self.node = node
        self.replay = replay
        self.history_max = history_max or HISTORY_DEFAULT
        self.ttl = presence_ttl
        self.hub: Hub | None = None
        self.cmd = make_client(url, timeout=CALL_TIMEOUT)
        self.sub = make_client(url, timeout=None)
        self._sha: dict[str, str] = {}
        self._rooms: dict[str, _RoomState] = {}
        # Per room, this pass's operations in order: ("pub", flag, payload, event, origin) or
        # ("cmd", command tuple).
        self._outbox: dict[str, tuple[Room, list[tuple]]] = {}
        self._jobs: list[_Job] = []
        self._wake = GEvent()
        self._scheduled = False
        self._subs: list[tuple[str, str]] = []  # ("sub"|"unsub", channel) for the reader
        self._recover: set[str] = set()
        self._need_resync = False
        self._counts: tuple[int, int] | None = None
        self.up = False
        self._closing = False
        self._greenlets: list[gevent.Greenlet] = []
        self._loop = gevent.get_hub().loop

    # --- start and stop ----------------------------------------------------------------

    def check(self) -> None:
        """Fail fast at start: reachable, new enough, accepts our credentials."""
        try:
            info = self.cmd.info("server")
        except redis.AuthenticationError as exc:
            raise StartError(f"Redis at {_safe(self.url)} refused authentication: {exc}"
                             ) from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise StartError(f"Redis at {_safe(self.url)} refused authentication: "
                                 f"{exc}") from None
            raise StartError(f"Redis at {_safe(self.url)}: {exc}") from None
        except _DOWN as exc:
            raise StartError(f"cannot reach Redis at {_safe(self.url)}: {exc}") from None
        version = str(info.get("valkey_version") or info.get("redis_version", "0"))
        parts = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
        if parts < MIN_VERSION:
            raise StartError(f"Redis at {_safe(self.url)} is version {version}; geventchat "
                             f"needs Redis >= {'.'.join(map(str, MIN_VERSION))} "
                             f"(or Valkey)")
        self._load_scripts()
        self.up = True

    def start(self, hub: Hub) -> None:
        """Connect (after :meth:`check`), start the writer, reader and refresher, and load
        the lobby (the one room every node keeps)."""
        self.hub = hub
        self._greenlets = [gevent.spawn(self._writer), gevent.spawn(self._reader),
                           gevent.spawn(self._refresher)]
        try:
            self.prepare(hub.lobby)
        except ChatError:
            self._closing = True
            raise StartError(f"Redis at {_safe(self.url)} stopped answering while the "
                             f"lobby was loaded") from None

    def close_all(self, timeout: float) -> None:
        """Shutdown: publish what is queued (quits), then stop the loops."""
        deadline = time.monotonic() + timeout
        if self.hub is not None and self.up:
            # The connections close in their own greenlets, maybe after this: tell the
            # other nodes now that this node's users are leaving (repeats are ignored).
            for session in self.hub.sessions():
                self.gone(session, None)
        self._kick_writer()
        while (self._outbox or self._jobs) and self.up and time.monotonic() < deadline:
            gevent.sleep(0.01)
        self._closing = True
        self._wake.set()
        gevent.joinall(self._greenlets, timeout=max(0.1, deadline - time.monotonic()))
        for g in self._greenlets:
            if not g.dead:
                g.kill(block=False)
        for client in (self.cmd, self.sub):
            try:
                client.close()
            except Exception:  # noqa: BLE001 (closing: nothing to tell)
                pass

    def _load_scripts(self) -> None:
        for name, body in scripts.ALL.items():
            self._sha[name] = self.cmd.script_load(body)

    # --- the writer ----------------------------------------------------------------------

    def _kick_writer(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self._wake_writer)

    def _wake_writer(self) -> None:
        self._scheduled = False
        self._wake.set()

    def _queue(self, room: Room, op: tuple) -> None:
        entry = self._outbox.get(room.key)
        if entry is None or entry[0] is not room:
            entry = self._outbox[room.key] = (room, [])
        entry[1].append(op)
        self._kick_writer()

    def call(self, *commands: tuple, timeout: float = CALL_TIMEOUT) -> list:
        """Run commands through the writer and wait for their replies (actions only)."""
        if not self.up:
            raise BackplaneDown
        job = _Job(list(commands), AsyncResult())
        self._jobs.append(job)
        self._kick_writer()
        try:
            return job.result.get(timeout=timeout)
        except gevent.Timeout:
            raise BackplaneDown from None

    def fire(self, *commands: tuple) -> None:
        """Commands whose replies nobody waits for (dropped while Redis is down)."""
        if self.up:
            self._jobs.append(_Job(list(commands), None))
            self._kick_writer()

    def _script(self, name: str, *args: Any) -> tuple:
        return ("EVALSHA", self._sha[name], 0, *args)

    def _writer(self) -> None:
        while not self._closing:
            self._wake.wait(1.0)
            self._wake.clear()
            if not self.up:
                self._fail(self._take())
                self._reconnect()
                continue
            if self._need_resync:
                self._need_resync = False
                try:
                    self._resync()
                except _DOWN + (redis.RedisError,) as exc:
                    self._went_down(exc)
                    continue
            taken = self._take()
            if taken[0] or taken[1]:
                self._write(taken)

    def _take(self) -> tuple[dict, list]:
        outbox, self._outbox = self._outbox, {}
        jobs, self._jobs = self._jobs, []
        return outbox, jobs

    def _write(self, taken: tuple[dict, list]) -> None:
        outbox, jobs = taken
        pipe = self.cmd.pipeline(transaction=False)
        plan: list[tuple[tuple, list[ev.Event]]] = []  # (command, events it carries)
        for key, (room, ops) in outbox.items():
            batch: list = []
            carried: list[ev.Event] = []
            for op in ops:
                if op[0] == "pub":
                    batch += op[1:3]
                    carried.append(op[3])
                    continue
                if batch:
                    plan.append((self._publish_cmd(key, batch), carried))
                    batch, carried = [], []
                plan.append((op[1], [op[2]] if len(op) > 2 else []))
            if batch:
                plan.append((self._publish_cmd(key, batch), carried))
            del room
        for command, _ in plan:
            pipe.execute_command(*command)
        for job in jobs:
            for command in job.commands:
                pipe.execute_command(*command)
        try:
            replies = pipe.execute(raise_on_error=False)
        except _DOWN as exc:
            self._went_down(exc)
            self._fail(taken)
            return
        finally:
            pipe.reset()
        for (command, carried), reply in zip(plan, replies, strict=False):
            if isinstance(reply, redis.exceptions.NoScriptError):
                reply = self._retry(command)
            if isinstance(reply, Exception):
                log.error("publishing to Redis failed: %s", reply)
                self._not_delivered(outbox, carried)
        i = len(plan)
        for job in jobs:
            n = len(job.commands)
            part, i = replies[i:i + n], i + n
            # NOSCRIPT (Redis restarted since we loaded them): the script did not run.
            part = [self._retry(cmd) if isinstance(r, redis.exceptions.NoScriptError)
                    else r for cmd, r in zip(job.commands, part, strict=True)]
            if job.result is not None:
                job.result.set(part)
            else:
                for reply in part:
                    if isinstance(reply, Exception):
                        log.warning("Redis command failed: %s", reply)

    def _retry(self, command: tuple) -> object:
        """Load the scripts again and run one command whose script Redis had lost."""
        try:
            self._load_scripts()
            name = next(n for n, sha in self._sha.items() if sha == command[1])
            return self.cmd.execute_command(*command[:1], self._sha[name], *command[2:])
        except Exception as exc:  # noqa: BLE001 (reported by the caller)
            return exc

    def _publish_cmd(self, key: str, batch: list) -> tuple:
        return self._script("publish", key, self.history_max, EVENTS_MAX, *batch)

    def _fail(self, taken: tuple[dict, list]) -> None:
        outbox, jobs = taken
        for room, ops in outbox.values():
            for op in ops:
                if op[0] == "pub" and op[4]:
                    self._local(room, op[3])
            self._not_delivered(outbox, [op[3] if op[0] == "pub" else op[2]
                                         for op in ops if len(op) > 2 or op[0] == "pub"])
        for job in jobs:
            if job.result is not None:
                job.result.set_exception(BackplaneDown())

    def _not_delivered(self, outbox: dict, carried: list) -> None:
        """Tell each speaker of lost lines (never silently dropped)."""
        told: set[str] = set()
        for event in carried:
            if isinstance(event, ev.Message | ev.Action | ev.Cleared):
                who = event.by if isinstance(event, ev.Cleared) else event.name
                key = name_key(who)
                if key in told or self.hub is None:
                    continue
                told.add(key)
                session = self.hub.users.get(key)
                if session is not None:
                    session.send(NOT_DELIVERED)

    def _went_down(self, exc: Exception) -> None:
        if self.up:
            self.up = False
            log.error("chat backplane unavailable: %s", exc)
            if self.hub is not None:
                self.hub.notify_admins(f"chat backplane (Redis) unavailable: {exc}")
        try:
            self.cmd.connection_pool.disconnect()
        except Exception:  # noqa: BLE001
            pass

    def _reconnect(self) -> None:
        delay = BACKOFF[0]
        while not self._closing:
            try:
                self.cmd.ping()
                self._load_scripts()
                self._resync()
            except _DOWN + (redis.RedisError,) as exc:
                log.debug("Redis still unavailable: %s", exc)
                self._fail(self._take())
                self.cmd.connection_pool.disconnect()
                self._wake.wait(delay)
                self._wake.clear()
                delay = min(delay * 2, BACKOFF[1])
                continue
            self.up = True
            log.warning("chat backplane back")
            if self.hub is not None:
                self.hub.notify_admins("chat backplane (Redis) back")
            return

    def _resync(self) -> None:
        """After a reconnect (Redis may have restarted empty): claim this node's users
        and their rooms again. Runs in the writer, on its connection."""
        if self.hub is None:
            return
        pipe = self.cmd.pipeline(transaction=False)
        ttl = int(self.ttl * 1000 * 2 / 3)
        n = 0
        for session in self.hub.sessions():
            pipe.execute_command(*self._script("claim", session.key, self._info(session),
                                               ttl, self.history_max, EVENTS_MAX,
                                               session.key))
            n += 1
            for room in session.rooms.values():
                pipe.execute_command(*self._script(
                    "enter", room.key, room.name, session.key, session.name, "1"))
        pipe.execute()
        log.info("presence registered again: %d users of this node", n)

    # --- the reader ----------------------------------------------------------------------

    def _reader(self) -> None:
        delay = BACKOFF[0]
        first = True
        while not self._closing:
            pubsub = self.sub.pubsub(ignore_subscribe_messages=False)
            try:
                pubsub.subscribe(f"{P}node:{self.node}", f"{P}all",
                                 *(f"{P}r:{k}" for k in self._rooms))
                self._subs = [s for s in self._subs if s[1][len(P) + 2:] not in self._rooms]
                if not first:
                    log.warning("subscription restored: filling gaps from the streams")
                    self._recover.update(k for k, s in self._rooms.items() if s.ready)
                    # Redis may have restarted empty: register this node's users again.
                    self._need_resync = True
                    self._wake.set()
                first = False
                delay = BACKOFF[0]
                self._read(pubsub)
            except _DOWN + (redis.RedisError,) as exc:
                if self._closing:
                    break
                log.warning("subscription lost: %s", exc)
                for state in self._rooms.values():
                    state.subscribed.clear()
            finally:
                try:
                    pubsub.reset()
                except Exception:  # noqa: BLE001
                    pass
            gevent.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])

    def _read(self, pubsub: Any) -> None:
        while not self._closing:
            if self._subs:
                subs, self._subs = self._subs, []
                for what, channel in subs:
                    if what == "sub":
                        pubsub.subscribe(channel)
                    else:
                        pubsub.unsubscribe(channel)
            if self._recover:
                for key in list(self._recover):
                    self._recover.discard(key)
                    state = self._rooms.get(key)
                    if state is not None:
                        self._fill(state)
            # get_message(timeout=T) would wait in select.poll(), which blocks the whole
            # loop (redis-py 8 / hiredis, measured): drain without waiting, then wait for
            # the socket the gevent way.
            message = pubsub.get_message(timeout=0)
            if message is None:
                try:
                    gevent.socket.wait_read(pubsub.connection._sock.fileno(), POLL)
                except TimeoutError:
                    pass
                continue
            while message is not None:
                self._on_message(message)
                message = pubsub.get_message(timeout=0)

    def _on_message(self, message: dict) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        kind = message["type"]
        if channel.startswith(P + "r:"):
            state = self._rooms.get(channel[len(P) + 2:])
            if state is None:
                return
            if kind == "subscribe":
                state.subscribed.set()
            elif kind == "message":
                self._batch(state, message["data"])
        elif kind == "message":
            try:
                self._command(json.loads(message["data"]))
            except Exception:
                log.exception("bad command from the backplane: %r", message["data"][:200])

    def _batch(self, state: _RoomState, data: bytes) -> None:
        if not state.ready or state.recovering:
            if len(state.buffer) >= BUFFER_MAX:
                # Waiting too long (Redis slow or gone): drop the buffer; the offsets of
                # later batches show the gap, and it is filled from the streams.
                state.buffer.clear()
            state.buffer.append(data)
            return
        epoch, _, rest = data.partition(b"\n")
        if epoch != state.epoch:
            first = int(rest.partition(b" ")[0] or 0)
            if state.epoch is not None or first != state.last + 1:
                self._gap(state, data)
                return
            state.epoch = epoch  # the room's first batch in Redis: nothing missed
        for line in rest.split(b"\n"):
            off_, _, payload = line.partition(b" ")
            off = int(off_)
            if off <= state.last:
                continue
            if off != state.last + 1:
                self._gap(state, data)
                return
            state.last = off
            self._deliver(state, off, payload)

    def _gap(self, state: _RoomState, data: bytes) -> None:
        state.recovering = True
        state.buffer.append(data)
        self._recover.add(state.room.key)

    def _fill(self, state: _RoomState) -> None:
        """Fill a gap from the room's streams (reader greenlet; waits for the writer)."""
        key = state.room.key
        log.info("filling a gap in %s from its streams (after offset %d)", state.room.name,
                 state.last)
        meta = f"{P}room:{key}:meta"
        try:
            (epoch, offset), = self.call(("HMGET", meta, "epoch", "offset"))
            offset = int(offset or 0)
            lost = state.epoch is not None and epoch != state.epoch and offset < state.last
            if lost or (epoch is None and state.last):
                state.last = 0
                state.recent.clear()
                state.room.stored()
                state.room.broadcast(ev.Notice(
                    f"the chat backplane lost the history of {state.room.name}; "
                    f"it starts afresh"))
            start = f"{state.last + 1}-0"
            lines, events = self.call(("XRANGE", f"{P}room:{key}:lines", start, "+"),
                                      ("XRANGE", f"{P}room:{key}:events", start, "+"))
        except BackplaneDown:
            self._recover.add(key)  # try again on the next turn
            gevent.sleep(0.2)
            return
        if self._rooms.get(key) is not state:
            return
        entries = sorted((int(i.split(b"-")[0]), f[b"e"]) for i, f in [*lines, *events])
        for off, payload in entries:
            if off > state.last:
                state.last = off
                self._deliver(state, off, payload)
        state.epoch = epoch
        state.last = max(state.last, offset)
        state.recovering = False
        buffered, state.buffer = state.buffer, []
        for data in buffered:
            self._batch(state, data)

    def _deliver(self, state: _RoomState, off: int, payload: bytes) -> None:
        try:
            event, origin = codec.decode(payload, off)
        except (ValueError, KeyError, TypeError):
            log.warning("undecodable event in %s: %r", state.room.name, payload[:200])
            return
        room = state.room
        kind = type(event)
        if kind in (ev.Message, ev.Action):
            state.recent.append(event)
            room.stored()
            room.deliver(event)
        elif kind is ev.Cleared:
            state.recent.clear()
            state.recent.append(event)
            room.stored()
            room.deliver(event)
        elif kind in _PRESENCE:
            self._presence(room, event, origin)
        elif kind is ev.Topic:
            room.topic = event.text
            room.deliver(event)
        elif kind is ev.ModeChanged:
            _apply_modes(room, event)
            room.deliver(event)
        else:
            room.deliver(event)

    def _presence(self, room: Room, event: ev.Event, origin: str) -> None:
        """A join, leave, quit, kick or rename, in the room's order. Others' update the
        room's remote members. This node's own: the newcomer had its join in its join
        burst; renames were told at once (``Hub.announce``)."""
        if origin == self.node:
            self._own_presence(room, event)
            return
        if isinstance(event, ev.Renamed):
            old, new = name_key(event.old), name_key(event.new)
            if old in room.remote:
                room.set_remote(old, None)
                room.set_remote(new, event.new)
            if old in room.ops:
                room.ops.discard(old)
                room.ops.add(new)
            room.broadcast(event)
            return
        key = name_key(event.name)
        if key in room.members:
            return  # stale news of someone who is here now
        if isinstance(event, ev.Joined):
            room.set_remote(key, event.name)
            room.presence(event)
            return
        if key not in room.remote:
            return  # a leave we never saw join (or heard already)
        room.set_remote(key, None)
        room.ops.discard(key)
        if isinstance(event, ev.Left | ev.Quit):
            room.presence(event)
        else:
            room.broadcast(event)

    @staticmethod
    def _own_presence(room: Room, event: ev.Event) -> None:
        if isinstance(event, ev.Renamed):
            return
        key = name_key(event.name)
        if isinstance(event, ev.Joined):
            if key in room.members:
                room.deliver_except(event, key)
            else:  # came and went before its join came back: the others see both
                room.presence(event)
        elif key in room.members:
            return  # left and came back before this came back: the join says enough
        elif isinstance(event, ev.Left | ev.Quit):
            room.presence(event)
        else:
            room.broadcast(event)

    def _local(self, room: Room, event: ev.Event) -> None:
        """A presence event Redis could not take: deliver it here, so this node's view
        stays right (the other nodes learn from the resync and the reaper)."""
        if self._rooms.get(room.key) is not None or room.members:
            self._own_presence(room, event)

    # --- commands for this node (pm, kick, kill, shutdown) ------------------------------

    def _command(self, cmd: dict) -> None:
        from geventchat.core import actions

        hub = self.hub
        if hub is None:
            return
        what = cmd.get("what")
        if what == "shutdown":
            hub.request_shutdown(cmd.get("reason", "cluster shutdown"))
            return
        target = hub.find(cmd.get("to", ""))
        if target is None:
            return
        if what == "pm":
            target.send(ev.PrivateMessage(cmd["sender"], target.name, cmd["text"],
                                          notice=bool(cmd.get("notice"))))
        elif what == "kick":
            room = hub.find_room(cmd["room"])
            if room is not None and room.key in target.rooms:
                actions.kicked(hub, target, room, cmd["by"], cmd.get("reason", ""))
        elif what == "kill":
            actions.disconnect(hub, target, cmd["by"], cmd.get("reason", ""))

    # --- Broker --------------------------------------------------------------------------

    def open(self, room: Room) -> None:
        state = self._rooms.get(room.key)
        if state is not None and state.room is room:
            return
        self._rooms[room.key] = _RoomState(room, self.replay)
        self._subs.append(("sub", f"{P}r:{room.key}"))

    def prepare(self, room: Room) -> None:
        """Subscribe, then read the room's state and recent history (waits)."""
        state = self._rooms.get(room.key)
        if state is None or state.room is not room:
            self.open(room)
            state = self._rooms[room.key]
        if state.ready:
            return
        if state.preparing:
            if not state.prepared.wait(CALL_TIMEOUT):
                raise _unavailable(room)
            return
        state.preparing = True
        try:
            if not state.subscribed.wait(CALL_TIMEOUT):
                raise BackplaneDown
            key = room.key
            meta, lines, members, ops = self.call(
                ("HMGET", f"{P}room:{key}:meta", "epoch", "offset", "topic", "locked"),
                ("XREVRANGE", f"{P}room:{key}:lines", "+", "-", "COUNT", self.replay),
                ("HGETALL", f"{P}room:{key}:members"),
                ("SMEMBERS", f"{P}room:{key}:ops"))
        except BackplaneDown:
            raise _unavailable(room) from None
        finally:
            state.preparing = False
        epoch, offset, topic, locked = meta
        state.epoch, state.last = epoch, int(offset or 0)
        for entry_id, fields in reversed(lines):
            try:
                event, _ = codec.decode(fields[b"e"], int(entry_id.split(b"-")[0]))
            except (ValueError, KeyError, TypeError):
                continue
            state.recent.append(event)
        room.stored()
        if topic is not None:
            room.topic = topic.decode()
        if locked is not None:
            room.topic_locked = locked == b"1"
        for k, name in members.items():
            k = k.decode()
            if k not in room.members:
                room.set_remote(k, name.decode())
        room.ops.update(k.decode() for k in ops)
        state.ready = True
        state.prepared.set()
        buffered, state.buffer = state.buffer, []
        for data in buffered:
            self._batch(state, data)

    def close(self, room: Room) -> None:
        state = self._rooms.get(room.key)
        if state is not None and state.room is room and room.key != LOBBY_NAME:
            del self._rooms[room.key]
            self._subs.append(("unsub", f"{P}r:{room.key}"))

    def publish(self, room: Room, event: ev.Message | ev.Action) -> None:
        self._pub(room, "s", event)

    def announce(self, room: Room, event: ev.Event) -> None:
        if isinstance(event, ev.Topic):
            self.fire(("HSET", f"{P}room:{room.key}:meta", "topic", event.text))
        elif isinstance(event, ev.ModeChanged):
            self._store_modes(room, event)
        self._pub(room, "u", event)

    def _pub(self, room: Room, flag: str, event: ev.Event, origin: str = "") -> None:
        if not self.up:
            if origin:
                self._loop.run_callback(self._local, room, event)
            else:
                self._loop.run_callback(self._not_delivered, {}, [event])
            return
        self._queue(room, ("pub", flag, codec.encode(event, origin), event, origin))

    def clear(self, room: Room, event: ev.Cleared) -> None:
        if not self.up:
            self._loop.run_callback(self._not_delivered, {}, [event])
            return
        self._queue(room, ("cmd", self._script("clear", room.key, self.history_max,
                                               EVENTS_MAX, codec.encode(event)), event))

    def recent(self, room: Room) -> list[ev.Event]:
        state = self._rooms.get(room.key)
        return list(state.recent) if state is not None else []

    @property
    def backplane_up(self) -> bool:
        """For ``/healthz`` (503 while down) and the ``geventchat_backplane_up`` metric."""
        return self.up

    def position(self, room: Room) -> tuple[str, int]:
        """The room's epoch and last offset this node delivered (never waits)."""
        state = self._rooms.get(room.key)
        if state is None or state.epoch is None:
            return "", 0
        epoch = state.epoch.decode() if isinstance(state.epoch, bytes) else str(state.epoch)
        return epoch, state.last

    def since(self, room: Room, after_id: int, limit: int) -> tuple[list[ev.Event], int]:
        """Stored lines after ``after_id`` from the room's stream (waits). Offsets are
        shared with unstored events, so ids have holes: whether lines were trimmed away is
        read from the stream's ``max-deleted-entry-id`` (lost is then reported as 1, the
        count being unknown)."""
        try:
            lines, info = self.call(
                ("XRANGE", f"{P}room:{room.key}:lines", f"{after_id + 1}-0", "+",
                 "COUNT", limit),
                ("XINFO", "STREAM", f"{P}room:{room.key}:lines"))
        except BackplaneDown:
            raise _unavailable(room) from None
        except Exception:  # no stream yet (XINFO on a missing key): nothing stored
            return [], 0
        events = self._decode_lines(lines)
        fields = dict(zip(info[::2], info[1::2], strict=False)) if isinstance(info, list) \
            else dict(info)
        deleted = fields.get(b"max-deleted-entry-id", fields.get("max-deleted-entry-id", b"0"))
        deleted_id = _entry_offset(deleted)
        return events, (1 if deleted_id > after_id else 0)

    def last(self, room: Room, n: int) -> list[ev.Event]:
        """The last ``n`` stored lines, from the room's stream (waits)."""
        try:
            (lines,) = self.call(("XREVRANGE", f"{P}room:{room.key}:lines", "+", "-",
                                  "COUNT", n))
        except BackplaneDown:
            raise _unavailable(room) from None
        return self._decode_lines(list(reversed(lines)))

    @staticmethod
    def _decode_lines(lines: list) -> list[ev.Event]:
        events = []
        for entry_id, fields in lines:
            try:
                event, _ = codec.decode(fields[b"e"], _entry_offset(entry_id))
            except (ValueError, KeyError, TypeError):
                continue
            events.append(event)
        return events

    def _store_modes(self, room: Room, event: ev.ModeChanged) -> None:
        """The modes a cluster shares (operators, topic lock) kept in Redis."""
        for give, letter, arg in modes.changes(event.modes, event.args):
            if letter == "o" and arg:
                self.fire(("SADD" if give else "SREM", f"{P}room:{room.key}:ops",
                           name_key(arg)))
            elif letter == "t":
                self.fire(("HSET", f"{P}room:{room.key}:meta", "locked",
                           "1" if give else "0"))

    # --- Directory -----------------------------------------------------------------------

    def _info(self, session: Session | str) -> str:
        name = session if isinstance(session, str) else session.name
        return json.dumps({"n": name, "node": self.node})

    def claim(self, name: str, me: Session | None = None) -> None:
        key = name_key(name)
        old = me.key if me is not None else ""
        try:
            (ok,) = self.call(self._script("claim", key, self._info(name),
                                           int(self.ttl * 1000 * 2 / 3), self.history_max,
                                           EVENTS_MAX, old))
        except BackplaneDown:
            raise ChatError("not_delivered", "chat backplane unavailable: try again "
                                             "shortly") from None
        if isinstance(ok, Exception):
            raise ChatError("not_delivered", f"chat backplane error: {ok}")
        if not ok:
            raise ChatError("name_taken", f"name taken: {name}", name)

    def release(self, name: str) -> None:
        self.fire(self._script("release", name_key(name), self.node))

    def enter(self, me: Session, room: Room) -> bool | None:
        try:
            (first,) = self.call(self._script("enter", room.key, room.name, me.key,
                                              me.name, "1" if room.key == LOBBY_NAME
                                              else "0"))
        except BackplaneDown:
            raise _unavailable(room) from None
        return first == 1

    def locate(self, name: str) -> RemoteUser | None:
        key = name_key(name)
        try:
            (info,) = self.call(("HGET", f"{P}users", key))
        except BackplaneDown:
            return None
        if not info:
            return None
        data = json.loads(info)
        if data.get("node") == self.node:
            return None  # ours, but not (or no longer) in the hub
        return RemoteUser(data["n"], key, data["node"])

    def send(self, user: RemoteUser, what: str, **fields: str) -> None:
        body = json.dumps({"what": what, "to": user.name, **fields})
        self.fire(("PUBLISH", f"{P}node:{user.node}", body))

    def rooms(self) -> list[tuple[str, int]] | None:
        try:
            (names,) = self.call(("HGETALL", f"{P}rooms"))
            keys = sorted(k.decode() for k in names)
            counts = self.call(*(("HLEN", f"{P}room:{k}:members") for k in keys))
        except BackplaneDown:
            return None
        rooms = [(names[k.encode()].decode(), n) for k, n in zip(keys, counts, strict=True)]
        lobby = [r for r in rooms if name_key(r[0]) == LOBBY_NAME] or [(LOBBY_NAME, 0)]
        return lobby + [r for r in rooms if name_key(r[0]) != LOBBY_NAME]

    def shutdown(self, reason: str) -> None:
        if self.up:
            self._jobs.append(_Job([("PUBLISH", f"{P}all",
                                     json.dumps({"what": "shutdown", "reason": reason}))],
                                   None))
            self._wake.set()  # now, not next pass: the local stop follows at once

    # hooks (hub: never wait)

    def joined(self, session: Session, room: Room) -> None:
        if room.key == LOBBY_NAME:  # registration and kicks: no enter() before
            self._queue(room, ("cmd", self._script("enter", room.key, room.name,
                                                   session.key, session.name, "1")))
        self._pub(room, "u", ev.Joined(session.name, room.name), self.node)

    def parted(self, session: Session, room: Room, event: ev.Event | None) -> None:
        self._queue(room, ("cmd", self._script("leave", room.key, session.key)))
        if event is not None:
            self._pub(room, "u", event, self.node)

    def gone(self, session: Session, event: ev.Event | None) -> None:
        if event is None and self.hub is not None and self.hub.stopping:
            event = ev.Quit(session.name, "server stopped")  # the other nodes stay
        if event is not None:
            for room in session.rooms.values():
                self._pub(room, "u", event, self.node)
        self.fire(self._script("release", session.key, self.node))

    def renamed(self, session: Session, old_name: str, old_key: str) -> None:
        event = ev.Renamed(old_name, session.name)
        for room in session.rooms.values():
            self._pub(room, "u", event, self.node)

    # --- presence refresh ----------------------------------------------------------------

    def _refresher(self) -> None:
        """Every ttl/3: this node's users are alive; anyone's expired users are reaped."""
        ttl = int(self.ttl * 1000 * 2 / 3)
        while not self._closing:
            gevent.sleep(self.ttl / 6)
            if self.hub is None or not self.up:
                continue
            keys = [s.key for s in self.hub.sessions()]
            try:
                _, users, rooms = self.call(
                    self._script("refresh", ttl, self.history_max, EVENTS_MAX, *keys),
                    ("HLEN", f"{P}users"), ("HLEN", f"{P}rooms"))
            except BackplaneDown:
                continue
            if isinstance(users, int) and isinstance(rooms, int):
                self._counts = (users, rooms)

    def counts(self) -> tuple[int, int] | None:
        return self._counts


def _apply_modes(room: Room, event: ev.ModeChanged) -> None:
    """Another node's operator and topic-lock changes, applied to this node's room."""
    for give, letter, arg in modes.changes(event.modes, event.args):
        if letter == "o" and arg:
            (room.ops.add if give else room.ops.discard)(name_key(arg))
        elif letter == "t":
            room.topic_locked = give


def _entry_offset(entry_id: bytes | str) -> int:
    """``b"42-0"`` -> 42 (stream ids are ``offset-0``)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    try:
        return int(text.split("-")[0])
    except ValueError:
        return 0


def _unavailable(room: Room) -> ChatError:
    return ChatError("not_delivered", f"cannot join {room.name}: chat backplane unavailable",
                     room.name)


def _safe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


class RedisFailures:
    """Failed logins per address, counted in Redis so spreading guesses over nodes buys
    nothing (an ``admission.FailureCounter``). Fails open while Redis is down (the local
    per-connection limit still holds)."""

    def __init__(self, broker: RedisBroker, limit: int, window: float) -> None:
        self.broker = broker
        self.limit = limit
        self.window = int(window)

    def allowed(self, ip: str) -> bool:
        try:
            (n,) = self.broker.call(("GET", f"{P}fail:{ip}"))
        except BackplaneDown:
            return True
        return int(n or 0) < self.limit

    def failed(self, ip: str) -> None:
        try:
            self.broker.call(("EVALSHA", self.broker._sha["fail"], 1, f"{P}fail:{ip}",
                              self.window))
        except BackplaneDown:
            pass

    def succeeded(self, ip: str) -> None:
        self.broker.fire(("DECR", f"{P}fail:{ip}"))

    def expire(self, now: float) -> None:
        pass  # Redis expires the counters

