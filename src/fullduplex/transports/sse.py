"""Server-Sent Events: ``GET /sse?topic=T[&topic=U...][&since=N]`` as ``text/event-stream``.

The stream starts with a ``retry:`` hint and an id-only block (``id: <cursors>`` and no data:
it sets the browser's last event id without firing an event), so a stream that drops before its
first event still resumes exactly. Then, per message::

    id: 42
    data: {"topic":"ticker","seq":42,"data":{...},"time":1700000000.123}

and per gap (``event: gap``, data ``{"topic":T,"gap":{"since":S,"first_available":F}}``).
Messages use the default event type (``message``), so ``EventSource.onmessage`` sees them;
the data is the same JSON envelope the other transports send. With several topics the id is
the cursor of every topic, ``chat:17,ticker:42`` (see :func:`format_event_id`).

Where to start, per topic: the ``Last-Event-ID`` header (sent by the browser on reconnect),
else ``?since=`` (a number, for every topic, or an id as above), else now. Resuming is exact: a
message is never sent twice nor skipped without a gap.

A comment (``:``) is sent every ``heartbeat_interval`` seconds of silence, so proxies and the
client see the connection alive. A stream whose client falls more than ``queue_size`` messages
behind is handled by the topic's policy (:mod:`~fullduplex.transports.backlog`); under
``disconnect`` it ends, and the browser reconnects with ``Last-Event-ID`` after ``retry``.

The ``retry:`` hint of each stream is drawn at random between ``retry / 2`` and ``retry * 3 / 2``
(1.5 to 4.5 s by default): when a server restarts, the browsers it served come back spread over
that window instead of all at once (``EventSource`` reconnects after the hint, with no jitter of
its own).

Every stream of a topic sends the same bytes for a message, but for the ``id:`` line of a
stream of several topics: :class:`EventCache` encodes each message once for all of them.

The format itself (events, comments, ``retry:``) is written by :mod:`fullduplex.protocol.sse`;
its functions are also importable from here, where they lived before that module existed.

Event ids
---------

A stream of one topic uses the sequence number as the id (``id: 42``). A stream of several
topics uses the whole cursor after the event, one ``topic:seq`` pair per topic, comma
separated, in the order the topics were asked for (``id: chat:17,ticker:42``): ``Last-Event-ID``
then says exactly where every topic stood, so the stream resumes each topic without loss or
duplicates. Topic names never contain ``:`` or ``,`` (see :data:`~.common.TOPIC_RE`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..asyncio.router import APP_AUTH, App, StreamingResponse
from ..hub import (
    SLOW_CONSUMER,
    Drop,
    DropLog,
    Gap,
    Hub,
    HubUnavailable,
    Message,
    Subscription,
    TooManyTopics,
)
from ..protocol.http11 import Headers, Request, Response

# Re-exported (``X as X``): fullduplex.transports.sse held the encoding before protocol.sse.
from ..protocol.sse import encode_comment as encode_comment
from ..protocol.sse import encode_event as encode_event
from ..protocol.sse import encode_retry as encode_retry
from .backlog import Backlog, Mailbox
from .common import (
    EnvelopeCache,
    InvalidInput,
    OpenRequests,
    TopicRules,
    check_history,
    check_previous,
    dumps,
    error_response,
    gap_envelope,
    hello,
    owner_of,
    parse_since,
    query_one,
    query_topics,
    same_message,
)

__all__ = [
    "DEFAULT_EVENT_CACHE_BYTES",
    "DEFAULT_EVENT_CACHE_SIZE",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_MAX_SSE_TOPICS",
    "DEFAULT_RETRY",
    "EventCache",
    "format_event_id",
    "mount_sse",
    "parse_event_id",
]

logger = logging.getLogger("fullduplex.transports")

#: Seconds of silence before a heartbeat comment. The WHATWG spec suggests "every 15 seconds
#: or so" for legacy proxies that drop idle connections.
DEFAULT_HEARTBEAT_INTERVAL = 15.0
#: Reconnection delay hinted to the browser, in seconds (browsers default to about 3 s).
DEFAULT_RETRY = 3.0
#: Topics one stream may carry.
DEFAULT_MAX_SSE_TOPICS = 16
#: Encoded events kept for sharing between streams. Streams take a message within one loop
#: iteration of each other, unless a burst lands before they run: then each stream takes the
#: whole burst, and every message of it must still be there. 1,024 covers a burst of 1,024
#: messages on one topic, or 64 on each of 16 topics.
DEFAULT_EVENT_CACHE_SIZE = 1024
#: Bytes of encoded events kept at most (4 MiB: 64 events of the largest message ``POST
#: /publish`` accepts, thousands of usual ones).
DEFAULT_EVENT_CACHE_BYTES = 4 * 2**20

_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    # nginx buffers proxied responses unless told otherwise.
    ("X-Accel-Buffering", "no"),
)


def _start_cursors(request: Request, topics: list[str]) -> dict[str, int | None]:
    """Each topic's cursor from Last-Event-ID, else ?since=, else None (now)."""
    cursors: dict[str, int | None] = dict.fromkeys(topics)
    last_id = request.headers.get("Last-Event-ID")
    since = query_one(request.query, "since")
    value = last_id if last_id is not None else since
    if value is None:
        return cursors
    if last_id is None and ":" not in value:
        number = parse_since(value)
        return dict.fromkeys(topics, number)
    try:
        cursors.update(parse_event_id(value, topics))
    except ValueError:
        source = "Last-Event-ID" if last_id is not None else "since"
        raise InvalidInput(f"invalid {source}") from None
    return cursors


class EventCache:
    """The encoded event of each recent message, shared by every stream: N streams, one encode.

    Keyed by topic and sequence number and checked against the message itself (a topic reset
    by a broker that lost its data numbers new messages from 1 again). The oldest events go
    first once there are more than ``max_size`` of them or more than ``max_bytes`` bytes.

    Args:
        envelopes: the JSON cache shared with the other transports.
        max_size: events kept at most.
        max_bytes: bytes of events kept at most.
    """

    def __init__(
        self,
        envelopes: EnvelopeCache | None = None,
        *,
        # Limits
        max_size: int = DEFAULT_EVENT_CACHE_SIZE,
        max_bytes: int = DEFAULT_EVENT_CACHE_BYTES,
    ) -> None:
        #: The JSON cache.
        self.envelopes = envelopes or EnvelopeCache()
        self.max_size = max_size
        self.max_bytes = max_bytes
        self._events: dict[tuple[str, int], tuple[Message, bytes]] = {}
        #: Bytes of the events kept.
        self.size = 0
        #: Events encoded (for tests and metrics: one per message, not per stream).
        self.encoded = 0

    def __len__(self) -> int:
        return len(self._events)

    def event(self, message: Message) -> bytes:
        """The event of ``message`` as a stream of its topic alone sends it.

        ``id: <seq>``, then its ``data:`` line and the blank line (see :func:`encode_event`).
        """
        key = (message.topic, message.seq)
        entry = self._events.get(key)
        if entry is not None and same_message(entry[0], message):
            return entry[1]
        event = encode_event(self.envelopes.text(message), id=str(message.seq))
        self.encoded += 1
        events = self._events
        if entry is not None:  # the same number for another message: a reset topic
            del events[key]
            self.size -= len(entry[1])
        events[key] = (message, event)
        self.size += len(event)
        while len(events) > self.max_size or (self.size > self.max_bytes and len(events) > 1):
            self.size -= len(events.pop(next(iter(events)))[1])
        return event


class _Stream:
    """One event stream: its subscriptions, its mailbox and the cursors of its ids."""

    def __init__(
        self,
        hub: Hub,
        events: EventCache,
        topics: list[str],
        held: OpenRequests,
        drops: DropLog,
        owner: str | None,
    ) -> None:
        self.hub = hub
        self.cache = events
        # Under the disconnect policy, a backlog that fills while the stream waits for its
        # client to read drops the client at once (slow()); one that fills otherwise (a burst:
        # a replay, a broker's backlog) is read back from history.
        self.mailbox = Mailbox(on_overflow=self.slow, busy=self.is_writing)
        #: True while the server writes a chunk of the stream: waits for the client, if any.
        self.writing = False
        self.held = held
        held.add(self.mailbox.close)
        self.cursors: dict[str, int] = {}
        self.subscriptions: list[Subscription] = []
        self.topics = topics
        self.drops = drops
        self.owner = owner
        #: The stream's connection id, if the client said hello (its drop is recorded).
        self.id: str | None = None
        #: The hello event's JSON (sent first), if the client said hello.
        self.hello: str | None = None
        #: The response carrying the stream, once made (slow() aborts it).
        self.response: StreamingResponse | None = None

    async def open(self, start: dict[str, int | None]) -> None:
        hub = self.hub
        for topic, since in start.items():
            if since is None:
                # Make the first id complete: "now" is a cursor too.
                since = await hub.last_seq(topic)
            self.cursors[topic] = since
            backlog = Backlog(topic, hub.config(topic), since, from_history=True)
            callback = self.mailbox.add(backlog)
            self.subscriptions.append(hub.subscribe(topic, since=since, on_message=callback))

    def close(self) -> None:
        self.held.discard(self.mailbox.close)
        for subscription in self.subscriptions:
            subscription.close()
        self.subscriptions.clear()

    def is_writing(self) -> bool:
        return self.writing

    def slow(self) -> None:
        """A backlog overflowed under ``disconnect``: record why, release, drop the client.

        The client is not reading: what is buffered for it, and an end behind that, would
        reach it late or never. It is reset now, and told why when it reconnects (hello).
        """
        topic = next((b.topic for b in self.mailbox.backlogs.values() if b.overflowed), None)
        self.record(topic)
        self.close()
        if self.response is not None:
            self.response.abort()

    def stalled(self) -> None:
        """The server drops the stream: its client read nothing for ``write_timeout``."""
        self.record(None)

    def record(self, topic: str | None) -> None:
        if self.id is not None:
            drop = Drop(SLOW_CONSUMER, time.time(), "sse", topic=topic)
            self.drops.record(self.id, drop, self.owner)

    def encode(self, items: list[Message | Gap]) -> bytes:
        cursors = self.cursors
        single = len(cursors) == 1
        chunks: list[bytes | memoryview] = []
        for item in items:
            if isinstance(item, Gap):
                cursors[item.topic] = item.first_available - 1
                event_id = format_event_id(cursors)
                data = dumps(gap_envelope(item))
                chunks.append(encode_event(data, event="gap", id=event_id))
                continue
            cursors[item.topic] = item.seq
            # The shared event instead of format_event_id + encode_event + the envelope lookup
            # per stream: SSE 1k, 20.9 us of server CPU per delivery (bench/hub_bench.py;
            # docs/performance.md).
            event = self.cache.event(item)
            if single:
                chunks.append(event)  # its id is the seq: the event as it is
            else:
                # The same data lines after this stream's own id (every topic's cursor).
                chunks.append(f"id: {format_event_id(cursors)}\n".encode())
                chunks.append(memoryview(event)[event.index(b"\n") + 1 :])
        return b"".join(chunks)

    async def take(self) -> list[Message | Gap]:
        """What to send next: backlogs that overflowed read back from history, then the rest.

        Raises:
            HubUnavailable: history cannot be read now (the stream ends; the client resumes
                from its last event id).
        """
        items: list[Message | Gap] = []
        for backlog in self.mailbox.backlogs.values():
            if backlog.behind and backlog.sent is not None:
                # One chunk per topic and turn: memory stays bounded by the queue size.
                chunk = backlog.config.queue_size
                gap, messages = await self.hub.history(backlog.topic, backlog.sent, chunk)
                items.extend(backlog.catch_up(gap, messages, len(messages) < chunk))
        items.extend(self.mailbox.take())
        return items

    def closed(self) -> bool:
        return self.mailbox.closed or any(s.closed for s in self.subscriptions)

    async def events(self, heartbeat: float | None, retry: float | None) -> AsyncIterator[bytes]:
        try:
            # Jittered: a restart's reconnections spread over [retry/2, 3*retry/2].
            hint = retry * (0.5 + random.random()) if retry is not None else None
            head = encode_retry(round(hint * 1000)) if hint is not None else b""
            # WHATWG 9.2.6 "dispatch the event": the last event ID is set before the check for
            # empty data, so an id-only block records the cursor without firing an event.
            head += f"id: {format_event_id(self.cursors)}\n\n".encode()
            if self.hello is not None:
                # No id line: the browser's last event id stays the cursor.
                head += encode_event(self.hello, event="hello")
            yield head
            mailbox = self.mailbox
            while True:
                if mailbox.overflowed:
                    # Not the backlog: the client was too slow for it (slow() reset the
                    # connection; under ASGI, which cannot, this ends the stream).
                    yield encode_comment("closed: slow consumer")
                    return
                try:
                    items = await self.take()
                except HubUnavailable:
                    yield encode_comment("closed: hub unavailable")
                    return
                if items:
                    self.writing = True
                    try:
                        yield self.encode(items)
                    finally:
                        self.writing = False
                    continue
                if self.closed():
                    return
                if not await mailbox.wait(heartbeat):
                    yield encode_comment()
        finally:
            self.close()


def mount_sse(
    app: App,
    hub: Hub,
    path: str = "/sse",
    *,
    rules: TopicRules | None = None,
    auth: Any = APP_AUTH,
    envelopes: EnvelopeCache | None = None,
    events: EventCache | None = None,
    requests: OpenRequests | None = None,
    drops: DropLog | None = None,
    # Timeouts
    heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
    retry: float | None = DEFAULT_RETRY,
    # Limits
    max_topics: int = DEFAULT_MAX_SSE_TOPICS,
) -> OpenRequests:
    """Serve Server-Sent Events (see the module docstring) at ``path``.

    Args:
        app: the application.
        hub: the hub.
        path: the route.
        rules: which topics clients may subscribe to and read the history of; any valid
            topic if None.
        auth: the route's authenticator (:mod:`fullduplex.auth`): the app's when omitted,
            None for none.
        envelopes: a JSON cache shared with other mounts (one is made if None).
        events: an encoded-event cache shared with other mounts (one is made over
            ``envelopes`` if None).
        requests: where open streams are tracked (one is made if None).
        drops: where the streams dropped as slow consumers are recorded, for their ``hello``
            on reconnection (one is made over ``hub`` if None; :func:`mount_all` shares
            one with ``/pubsub``).
        heartbeat_interval: seconds of silence before a comment is sent; None for never.
        retry: reconnection delay hinted to the browser, in seconds; None to send no hint.
        max_topics: topics one stream may carry (400 above it).

    Returns:
        The open streams (call its ``close`` before shutting the server down: a server
        shutdown waits for streams, which are never idle).
    """
    topic_rules = rules or TopicRules()
    cache = events if events is not None else EventCache(envelopes)
    held = requests if requests is not None else OpenRequests()
    log = drops if drops is not None else DropLog(hub)

    @app.get(path, auth=auth)
    async def event_stream(request: Request) -> Response | StreamingResponse:
        try:
            identity = request.identity
            topics = query_topics(
                request.query, topic_rules, max_topics=max_topics, identity=identity
            )
            start = _start_cursors(request, topics)
            for topic, cursor in start.items():
                if cursor is not None:
                    check_history(topic_rules, topic, identity)
            previous = check_previous(query_one(request.query, "previous"))
        except InvalidInput as exc:
            return error_response(exc)
        connection_id = greeting = None
        if previous is not None or query_one(request.query, "hello") is not None:
            connection_id, reply = await hello(log, previous, identity)
            greeting = dumps(reply)
        stream = _Stream(hub, cache, topics, held, log, owner_of(identity))
        stream.id, stream.hello = connection_id, greeting
        try:
            await stream.open(start)
        except TooManyTopics:
            stream.close()
            return error_response(InvalidInput("too many topics", 503))
        except HubUnavailable:
            stream.close()
            return error_response(InvalidInput("hub unavailable", 503))
        except BaseException:
            stream.close()
            raise
        body = stream.events(heartbeat_interval, retry)
        response = StreamingResponse(200, Headers(_HEADERS), body, on_stalled=stream.stalled)
        stream.response = response
        return response

    return held


def format_event_id(cursors: Mapping[str, int]) -> str:
    """Format the ``id:`` of an event from the cursor of every topic of the stream.

    One topic gives its sequence number alone; several give ``topic:seq`` pairs.
    """
    if len(cursors) == 1:
        return str(next(iter(cursors.values())))
    return ",".join(f"{topic}:{seq}" for topic, seq in cursors.items())


def parse_event_id(value: str, topics: list[str]) -> dict[str, int]:
    """Parse a ``Last-Event-ID`` sent back by the browser into cursors for ``topics``.

    Args:
        value: the header's value.
        topics: the topics of the stream; with one topic a bare number is expected.

    Returns:
        The cursor of each topic found in the id (topics absent from it are left out).

    Raises:
        ValueError: the id is not in the format of :func:`format_event_id`, or holds a
            cursor ``?since=`` would refuse (:func:`~fullduplex.hub.check_since`).
    """
    value = value.strip()
    if len(topics) == 1 and ":" not in value:
        return {topics[0]: parse_since(value)}
    cursors: dict[str, int] = {}
    for pair in value.split(","):
        topic, sep, seq = pair.rpartition(":")
        if not sep or topic not in topics:
            raise ValueError("Last-Event-ID does not match the topics asked for")
        cursors[topic] = parse_since(seq)
    return cursors
