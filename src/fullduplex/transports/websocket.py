"""The WebSocket topic protocol: subscribe, unsubscribe and publish in JSON text messages.

Client to server, one JSON object per text message::

    {"op": "subscribe", "topic": "chat"}                 live messages from now on
    {"op": "subscribe", "topic": "chat", "since": 41}    history after seq 41, then live
    {"op": "unsubscribe", "topic": "chat"}
    {"op": "publish", "topic": "chat", "data": {"name": "ann", "text": "hi"}}
    {"op": "publish", "topic": "chat", "data": ..., "id": 7, "key": "3f2a..."}   acknowledged
    {"op": "ping"}                                       an application-level heartbeat
    {"op": "hello"}                                      name this connection
    {"op": "hello", "previous": "k3J..."}                ... and was my last one dropped?
    {"op": "subscribe", "topic": "chat", "presence": true}   also join and leave events
    {"op": "presence", "topic": "chat"}                  who is subscribed (mount's presence=)

Server to client::

    {"topic": "chat", "seq": 42, "data": {...}, "time": 1700000000.123}    a message
    {"topic": "chat", "gap": {"since": 41, "first_available": 57}}       42-56 are lost
    {"error": "unknown topic", "op": "subscribe", "topic": "secret"}     a recoverable error
    {"ack": 7, "topic": "chat", "seq": 43, "time": 1700000000.2}         publish 7 is seq 43
    {"pong": true}                                                       the answer to a ping
    {"hello": {"id": "Xa9..."}}                                          the answer to hello
    {"hello": {"id": "Xa9..."}, "dropped": {"reason": "slow consumer", "code": 1013,
     "topic": "ticker", "time": 1700000000.4, "transport": "websocket"}}  ... previous dropped
    {"topic": "chat", "presence": {"join": "ann"}}       a subscription joined ("leave" too)
    {"topic": "chat", "presence": {"identities": {"ann": 2}, "connections": 2}}   the answer

A publish with an ``id`` (an integer, or a string of at most 64 characters) is acknowledged
with that id, or answered with an error carrying it. A ``key`` (1 to 128 characters) makes the
publish idempotent: the same key again (a client retrying after a reconnection) is answered
with the first publish's ack and not published twice (:class:`~.publish.PublishKeys`, shared
with ``POST /publish``). ``ping`` lets a client notice a dead connection where it cannot send
WebSocket pings itself (browsers).

``seq`` numbers each topic's messages from 1, the same in every transport; ``time`` is the
publish time in seconds since the epoch. A client keeps, per topic, the ``seq`` of the last
message (or ``first_available - 1`` of the last gap) as its cursor and gives it as ``since``
to resume, here or in any other transport, without loss or duplicates.

Recoverable errors (the connection stays open): an unknown ``op``, a missing or invalid
``topic``, ``since`` or ``data`` field, a topic this client may not subscribe to (``unknown
topic``), read the history of (``history not readable``) or publish to (``topic not
publishable``; by default no topic is: see :class:`~.common.TopicRules`), subscribing twice or
unsubscribing a topic not subscribed. Nothing is published or delivered for a refused op.

The permissions are those of the identity the route's authenticator gave the connection at
the upgrade (``ws.identity``, see :mod:`fullduplex.auth`); an upgrade it refuses is answered
401 or 403, and a connection whose token expires is closed with 1008 ("token expired").

Protocol abuse closes the connection with 1008 (policy violation) and a reason: a message that
is not JSON (``NaN`` and ``Infinity`` are not; nor is nesting deeper than
:data:`~.common.MAX_JSON_DEPTH`, 128) or not a JSON object, a binary message, more than
``max_subscriptions`` topics.
A message over ``max_message_size`` is closed by the core with 1009 (message too big, RFC 6455
7.4.1), before it is buffered whole.

A slow consumer (see :mod:`~fullduplex.transports.broadcast`) under the ``disconnect`` policy
is closed with 1013 (try again later): it may reconnect and resume from its cursor. That close
frame waits behind everything the client did not read, so the connection is reset at once
instead, and the client learns why on its next connection: a connection that said ``hello``
has an id, the server records why it dropped it (:class:`~fullduplex.hub.DropLog`: bounded,
expiring, shared through Redis with a Redis hub), and the answer to the next connection's
``hello`` with ``"previous"`` carries ``"dropped"``. A connection cut by the network, or closed
by either side for any other reason, has no record: its ``hello`` answer has no ``dropped``.

When the server shuts down, every connection of the route is closed with 1012 (Service Restart,
IANA WebSocket Close Code registry) instead of the server's 1001: the clients of this library
come back, spread over a random delay, and resume from their cursors.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..asyncio.connection import WebSocket
from ..asyncio.router import APP_AUTH, App
from ..hub import SLOW_CONSUMER, Drop, DropLog, Hub, HubUnavailable, TooManyTopics
from ..hub.presence import ANONYMOUS_ID, Presence
from ..protocol import CloseCode
from .broadcast import Fanout, FrameCache, WebSocketSink
from .common import (
    InvalidInput,
    TopicRules,
    check_epoch,
    check_previous,
    check_topic,
    dumps,
    hello,
    owner_of,
    parse_json,
    parse_since,
    warn_open_publish,
)
from .publish import PublishKeys, check_key

__all__ = [
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "DEFAULT_MAX_WS_MESSAGE_SIZE",
    "mount_websocket",
]

#: Topics one connection may subscribe to at once (each is a hub subscription and a backlog).
DEFAULT_MAX_SUBSCRIPTIONS = 100
#: Largest client message: 64 KiB, like the publish body limit (a chat line is < 1 KiB).
DEFAULT_MAX_WS_MESSAGE_SIZE = 64 * 1024


class _ProtocolAbuse(Exception):
    """The client broke the protocol: close with 1008 and this reason."""


#: A hook checking or rewriting what a client publishes: ``(ws, topic, data) -> data``.
#: Raise :class:`~.common.InvalidInput` to refuse it with an error reply.
OnPublish = Callable[[WebSocket, str, Any], Any]
#: A hook run when a connection ends, after its subscriptions are closed.
OnDisconnect = Callable[[WebSocket], Awaitable[None]]


class _Session:
    """The subscriptions of one connection."""

    def __init__(
        self,
        ws: WebSocket,
        hub: Hub,
        fanout: Fanout,
        rules: TopicRules,
        max_subs: int,
        on_publish: OnPublish | None,
        keys: PublishKeys,
        presence: Presence | None = None,
        drops: DropLog | None = None,
    ) -> None:
        self.ws = ws
        self.hub = hub
        self.fanout = fanout
        self.rules = rules
        self.max_subs = max_subs
        self.on_publish = on_publish
        # Who the connection is, read once: the permission checks cost no lookup per message.
        self.identity = ws.identity
        self.keys = keys
        self.sink = WebSocketSink(ws, fanout.frames, on_slow=self.dropped)
        self.drops = drops
        # Set by the first hello: a connection that never said hello has no drop record.
        self.id: str | None = None
        self.presence = presence
        identity = self.identity
        self.presence_id = (
            identity.id if identity is not None and not identity.anonymous else ANONYMOUS_ID
        )
        # topic -> (the id presence counted this connection under, its watcher or None)
        self.present: dict[str, tuple[str, Any]] = {}

    async def handle(self, text: str) -> None:
        try:
            request = parse_json(text)
        except ValueError as exc:
            raise _ProtocolAbuse(str(exc)) from None
        if not isinstance(request, dict):
            raise _ProtocolAbuse("expected a JSON object")
        op = request.get("op")
        try:
            if op == "subscribe":
                self.subscribe(request)
            elif op == "unsubscribe":
                self.unsubscribe(request)
            elif op == "publish":
                await self.publish(request)
            elif op == "ping":
                self.ws.send_nowait('{"pong":true}')
            elif op == "presence":
                await self.who(request)
            elif op == "hello":
                await self.hello(request)
            else:
                raise InvalidInput("unknown op")
        except InvalidInput as exc:
            self.error(str(exc), op, request.get("topic"), request.get("id"))

    def error(self, message: str, op: object, topic: object, id: object = None) -> None:
        reply: dict[str, Any] = {"error": message}
        if isinstance(op, str) and len(op) <= 32:
            reply["op"] = op
        if _valid_id(id):
            reply["id"] = id
        if isinstance(topic, str):
            with contextlib.suppress(InvalidInput):
                reply["topic"] = check_topic(topic)
        # send_nowait, not send: the sink's backlog task is then the only one waiting for
        # the write buffer to drain (WebSocket.wait_drain() wakes a single waiter). Bounded
        # all the same: while the buffer is over write_limit the connection stops reading,
        # so no more requests, hence no more replies, come in.
        self.ws.send_nowait(dumps(reply))

    def subscribe(self, request: dict[str, Any]) -> None:
        topic = check_topic(request.get("topic"))
        if not self.rules.can_subscribe(topic, self.identity):
            raise InvalidInput("unknown topic")
        since = request.get("since")
        if since is not None:
            since = parse_since(since)
            if not self.rules.can_read_history(topic, self.identity):
                raise InvalidInput("history not readable")
        epoch = check_epoch(request.get("epoch"))
        sink = self.sink
        if topic in sink.topics:
            raise InvalidInput("already subscribed")
        if len(sink.topics) >= self.max_subs:
            raise _ProtocolAbuse("too many subscriptions")
        backlog = sink.add(topic, self.hub.config(topic), since)
        try:
            self.fanout.subscribe(sink, backlog, since, epoch)
        except ValueError:
            sink.remove(topic)
            raise InvalidInput("unknown topic") from None
        except TooManyTopics:
            sink.remove(topic)
            raise InvalidInput("too many topics") from None
        if self.presence is not None:
            self.enter(topic, request.get("presence") is True)

    def enter(self, topic: str, events: bool) -> None:
        """Count this connection in the topic's presence; watch its joins and leaves."""
        assert self.presence is not None
        watcher = None
        if events:
            ws = self.ws
            missed = 0

            def watcher(kind: str, identity_id: str) -> None:
                # Bounded: while the write buffer is over write_limit, events are counted,
                # not queued; the next one is preceded by {"presence": {"missed": n}} (ask
                # again with the presence op).
                nonlocal missed
                if not ws.writable:
                    missed += 1
                    return
                if missed:
                    ws.send_nowait(dumps({"topic": topic, "presence": {"missed": missed}}))
                    missed = 0
                ws.send_nowait(dumps({"topic": topic, "presence": {kind: identity_id}}))

            self.presence.watch(topic, watcher)
        self.present[topic] = (self.presence.join(topic, self.presence_id), watcher)

    def exit(self, topic: str) -> None:
        """Uncount this connection from the topic's presence."""
        entry = self.present.pop(topic, None)
        if entry is None or self.presence is None:
            return
        counted_as, watcher = entry
        if watcher is not None:
            self.presence.unwatch(topic, watcher)
        self.presence.leave(topic, counted_as)

    async def who(self, request: dict[str, Any]) -> None:
        """Answer a ``presence`` op: who is subscribed to the topic, in every process."""
        topic = check_topic(request.get("topic"))
        if self.presence is None:
            raise InvalidInput("presence not enabled")
        if not self.rules.can_subscribe(topic, self.identity):
            raise InvalidInput("unknown topic")
        try:
            answer = await self.presence.who(topic)
        except HubUnavailable:
            raise InvalidInput("hub unavailable") from None
        reply: dict[str, Any] = {"topic": topic, "presence": answer}
        if _valid_id(request.get("id")):
            reply["id"] = request["id"]
        self.ws.send_nowait(dumps(reply))

    async def hello(self, request: dict[str, Any]) -> None:
        """Answer a ``hello`` op: this connection's id, and the drop of ``previous`` if any."""
        previous = check_previous(request.get("previous"))
        if self.drops is None:
            raise InvalidInput("unknown op")
        connection_id, reply = await hello(self.drops, previous, self.identity)
        if self.id is None:
            self.id = connection_id
        else:
            reply["hello"]["id"] = self.id  # one name per connection, whatever it asks
        self.ws.send_nowait(dumps(reply))

    def unsubscribe(self, request: dict[str, Any]) -> None:
        topic = check_topic(request.get("topic"))
        backlog = self.sink.topics.get(topic)
        if backlog is None:
            raise InvalidInput("not subscribed")
        self.fanout.unsubscribe(backlog)
        self.sink.remove(topic)
        self.exit(topic)

    async def publish(self, request: dict[str, Any]) -> None:
        topic = check_topic(request.get("topic"))
        if not self.rules.can_publish(topic, self.identity):
            raise InvalidInput("topic not publishable")
        if "data" not in request:
            raise InvalidInput("missing field: data")
        data = request["data"]
        request_id = request.get("id")
        if request_id is not None and not _valid_id(request_id):
            raise InvalidInput("invalid id: an integer or a string of at most 64 characters")
        key = check_key(request.get("key"))
        if self.on_publish is not None:
            data = self.on_publish(self.ws, topic, data)
        try:
            message = await self.keys.publish(self.hub, topic, data, key)
        except TooManyTopics:
            raise InvalidInput("too many topics") from None
        except HubUnavailable:
            raise InvalidInput("hub unavailable") from None
        if request_id is not None:
            ack = {"ack": request_id, "topic": topic, "seq": message.seq, "time": message.time}
            self.ws.send_nowait(dumps(ack))

    def release(self, sink: WebSocketSink | None = None) -> None:
        """Leave every topic's fan-out (at the end, or when closed as a slow consumer)."""
        for backlog in self.sink.topics.values():
            self.fanout.unsubscribe(backlog)

    def dropped(self, sink: WebSocketSink) -> None:
        """Closed as a slow consumer: record why (for its next hello), leave every topic."""
        if self.id is not None and self.drops is not None:
            drop = Drop(
                SLOW_CONSUMER,
                time.time(),
                "websocket",
                code=CloseCode.TRY_AGAIN_LATER,
                topic=sink.slow_topic,
            )
            self.drops.record(self.id, drop, owner_of(self.identity))
        self.release()

    def close(self) -> None:
        self.release()
        for topic in list(self.present):
            self.exit(topic)
        self.sink.close()


def _valid_id(value: object) -> bool:
    return (type(value) is int and abs(value) <= 2**53) or (
        isinstance(value, str) and len(value) <= 64
    )


def mount_websocket(
    app: App,
    hub: Hub,
    path: str = "/pubsub",
    *,
    rules: TopicRules | None = None,
    auth: Any = APP_AUTH,
    frames: FrameCache | None = None,
    compression: bool = False,
    origins: list[str] | None = None,
    on_publish: OnPublish | None = None,
    on_disconnect: OnDisconnect | None = None,
    keys: PublishKeys | None = None,
    presence: Presence | None = None,
    drops: DropLog | None = None,
    # Limits
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
    max_message_size: int | None = DEFAULT_MAX_WS_MESSAGE_SIZE,
) -> Fanout:
    """Serve the topic protocol (see the module docstring) at ``path``.

    Args:
        app: the application.
        hub: the hub.
        path: the WebSocket route.
        rules: which topics clients may subscribe and publish to; the default
            :class:`~.common.TopicRules` if None (subscribe to any, publish to none).
        frames: a frame cache shared with other mounts (one is made if None).
        auth: the route's authenticator (:mod:`fullduplex.auth`): the app's when omitted,
            None for none.
        compression: accept permessage-deflate. Off by default: each compressed connection
            costs about 49 KiB and one compression per message, where an uncompressed one
            shares the broadcast frame; turn it on when messages are large and bandwidth is
            dear.
        origins: the Origin allow-list (None: same host, or no Origin).
        on_publish: checks or rewrites each client publish: ``(ws, topic, data) -> data``;
            raise :class:`~.common.InvalidInput` to refuse it (the client gets an error).
        on_disconnect: awaited when a connection ends (e.g. to announce a leave).
        keys: idempotency keys shared with ``POST /publish`` (one is made if None).
        presence: counts subscriptions per topic and identity and enables the ``presence``
            op and the subscribe option ``"presence": true`` (see
            :mod:`fullduplex.hub.presence`); None for no presence (no cost). Its
            ``start()`` and ``close()`` run with the app's startup and shutdown.
        drops: where connections dropped as slow consumers are recorded, for the ``hello``
            of their reconnection (one is made over ``hub`` if None; :func:`mount_all`
            shares one with ``/sse``).
        max_subscriptions: topics one connection may subscribe to (1008 above it).
        max_message_size: largest client message (1009 above it), None for no limit.

    Returns:
        The route's fan-out: its connections, topic by topic.
    """
    topic_rules = rules or TopicRules()
    fanout = Fanout(hub, frames or FrameCache())
    if on_publish is None:  # a hook checks each publish itself: no warning then
        warn_open_publish(app, path, topic_rules)
    known = keys if keys is not None else PublishKeys()
    log = drops if drops is not None else DropLog(hub)
    connections: set[WebSocket] = set()
    if presence is not None:
        app.on_startup(presence.start)
        app.on_shutdown(presence.close)

    @app.on_closing
    def restart() -> None:
        for ws in list(connections):
            ws.close_nowait(CloseCode.SERVICE_RESTART, "service restart")

    @app.websocket(
        path,
        compression=compression,
        origins=origins,
        max_message_size=max_message_size,
        max_frame_size=max_message_size,
        auth=auth,
    )
    async def pubsub(ws: WebSocket) -> None:
        session = _Session(
            ws, hub, fanout, topic_rules, max_subscriptions, on_publish, known, presence, log
        )
        connections.add(ws)
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    await ws.close(CloseCode.POLICY_VIOLATION, "binary messages not supported")
                    return
                await session.handle(message)
        except _ProtocolAbuse as exc:
            await ws.close(CloseCode.POLICY_VIOLATION, str(exc))
        finally:
            connections.discard(ws)
            session.close()
            if on_disconnect is not None:
                await on_disconnect(ws)

    return fanout
