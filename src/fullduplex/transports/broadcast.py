"""Broadcast to WebSockets: frame each message once, write it to every connection's socket.

A topic with N WebSocket subscribers costs, per message, one JSON serialization, one frame
serialization (:func:`~fullduplex.protocol.prepare_frame`: server frames are unmasked, RFC
6455 5.1, so the same bytes suit every uncompressed connection) and one loop over the N
connections offering it to each (:meth:`WebSocket.send_prepared`, which writes it to the
connection's asyncio transport): no task, no queue and no hub subscription per subscriber while
it keeps up.

:class:`Fanout` holds, per topic, one callback-mode hub subscription and the connections
subscribed to it (:class:`_TopicFanout`). A connection that subscribes from now joins the
topic's loop at once; one that asks for history (``since``) first gets a hub subscription of its
own, which replays history and closes once its cursor meets the loop's: from there on, the
loop's next message is the connection's next message, so nothing is lost or sent twice.

A connection that negotiated permessage-deflate does not take the prepared frame; it gets the
message through ``ws.send_nowait``, which compresses with that connection's context (RFC 7692
keeps one per connection with context takeover); the JSON text is still built once.

Flow control and the slow-consumer policy
-----------------------------------------

A frame is written only when the connection is OPEN, no fragmented message is being sent on it, and
its asyncio transport has not paused writing (its buffer went over the server's ``write_limit`` and
has not drained to a quarter of it since: ``ws.writable``). Otherwise the message waits in the
topic's :class:`~fullduplex.transports.backlog.Backlog` (at most ``queue_size`` messages, under the
topic's :class:`~fullduplex.hub.Policy`: drop-oldest with a gap, conflate, or disconnect), and while
a backlog is not empty, one task per such connection awaits ``ws.wait_drain()`` (the transport's
``resume_writing``) and writes the backlog: an idle or keeping-up connection has no task and no
timer. Under ``disconnect``, a full backlog closes the connection with 1013 (try again later): the
client is healthy but slower than the feed, and may reconnect and resume from its cursor
(``{"op":"subscribe","since":N}``). As the close frame would wait behind everything the client
did not read, the connection is reset at once when its buffer is not empty; the ``/pubsub``
session records why, for the client's ``hello`` when it reconnects
(:class:`~fullduplex.hub.DropLog`). So a slow connection holds at most its write buffer plus
``queue_size`` messages per topic, and never delays the others: a write to an asyncio
transport never blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..asyncio.connection import WebSocket
from ..hub import CLOSED, Gap, Hub, Message, Subscription, TopicConfig
from ..protocol import CloseCode, ConnectionClosed, State, prepare_frame
from .backlog import Backlog
from .common import EnvelopeCache, dumps, gap_envelope, same_message

__all__ = ["BACKLOG_RETRY", "Fanout", "FrameCache", "WebSocketSink"]

logger = logging.getLogger("fullduplex.transports")

#: Seconds between attempts to write a backlog when the connection is not paused yet cannot
#: take a frame (a fragmented send in progress: the core has no event for its end). A paused
#: connection is resumed by its asyncio transport instead (``ws.wait_drain()``).
BACKLOG_RETRY = 0.05

_OPEN = State.OPEN


class FrameCache:
    """The JSON text and the unmasked text frame of the latest message of each topic.

    Args:
        envelopes: the JSON cache shared with the other transports.
    """

    def __init__(self, envelopes: EnvelopeCache | None = None) -> None:
        #: The JSON cache.
        self.envelopes = envelopes or EnvelopeCache()
        self._last: dict[str, tuple[Message, bytes]] = {}
        #: Frames serialized (one per message, not per subscriber).
        self.framed = 0

    def get(self, message: Message) -> tuple[str, bytes]:
        """The JSON text and the frame of ``message``, each built at most once."""
        text = self.envelopes.text(message)
        entry = self._last.get(message.topic)
        if entry is not None and same_message(entry[0], message):
            return text, entry[1]
        frame = prepare_frame(text)
        self.framed += 1
        last = self._last
        last.pop(message.topic, None)
        if len(last) >= self.envelopes.max_topics:
            del last[next(iter(last))]
        last[message.topic] = (message, frame)
        return text, frame


class WebSocketSink:
    """Delivers hub messages and gaps to one WebSocket, writing frames to its asyncio transport.

    Call :meth:`deliver` for each message or gap of a topic (:class:`Fanout` does, or a hub
    callback from :meth:`callback`).

    Args:
        ws: the connection.
        frames: the shared frame cache.
        on_slow: called once when the connection is closed as a slow consumer.
    """

    __slots__ = (
        "_flushed",
        "_flusher",
        "_on_slow",
        "dropped",
        "frames",
        "slow",
        "slow_topic",
        "topics",
        "ws",
    )

    def __init__(
        self,
        ws: WebSocket,
        frames: FrameCache,
        *,
        on_slow: Callable[[WebSocketSink], None] | None = None,
    ) -> None:
        #: The connection.
        self.ws = ws
        #: The shared frame cache.
        self.frames = frames
        #: Topics subscribed, with their backlogs.
        self.topics: dict[str, Backlog] = {}
        #: Messages dropped or conflated away for this connection.
        self.dropped = 0
        #: True once closed as a slow consumer.
        self.slow = False
        #: The topic whose backlog overflowed, once closed as a slow consumer.
        self.slow_topic: str | None = None
        self._on_slow = on_slow
        # The task writing backlogs as the write buffer drains; None while every backlog is
        # empty (an idle connection has no task: ~5 KiB per idle connection is the budget).
        self._flusher: asyncio.Task[None] | None = None
        # Called once the backlogs are written (paused replays resuming); None: nobody waits.
        self._flushed: list[Callable[[], None]] | None = None

    def add(self, topic: str, config: TopicConfig, since: int | None) -> Backlog:
        """Start tracking ``topic`` (before subscribing it on the hub)."""
        backlog = self.topics[topic] = Backlog(topic, config, since)
        return backlog

    def remove(self, topic: str) -> None:
        """Stop tracking ``topic``; its backlog is discarded."""
        self.topics.pop(topic, None)

    def callback(self, backlog: Backlog) -> Callable[[Message | Gap], None]:
        """A hub callback delivering one topic to this connection alone."""

        def on_message(item: Message | Gap) -> None:
            if self.topics.get(backlog.topic) is backlog:
                self.deliver(backlog, item)

        return on_message

    def close(self) -> None:
        """Stop delivering: stop writing backlogs, forget every topic.

        The slow-consumer callback goes too: it is usually a bound method of the object that
        owns this sink, a cycle that would leave the connection's objects to the garbage
        collector (a /pubsub handshake: 376k -> 338k user instructions, callgrind).
        """
        self._stop_flusher()
        self.topics.clear()
        self._on_slow = None

    # -- delivery -----------------------------------------------------------------------------

    def writable(self) -> bool:
        """Whether a frame may be written now (open, no fragmented send, buffer under limit)."""
        ws = self.ws
        return ws.writable and ws.state is _OPEN and not ws.core.sending_fragmented

    def deliver(self, backlog: Backlog, item: Message | Gap) -> None:
        """Write ``item`` now, or keep it in the topic's backlog under its policy."""
        if self.slow or self.ws.state is not _OPEN:
            return
        if not backlog and self.writable():
            backlog.skip(item)
            self._write(item)
            return
        if not backlog.push(item):
            self._close_slow(backlog.topic)
            return
        self.dropped = sum(b.dropped for b in self.topics.values())
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_when_drained())

    def hold(self, backlog: Backlog, item: Message | Gap) -> bool:
        """Write ``item`` now or keep it in the backlog, with no slow-consumer policy.

        For a replay of history, a burst of the server's own making, not the client's
        slowness. False when the backlog is full: the caller stops its replay and replays
        again from history once the backlog is written (:meth:`when_flushed`).
        """
        if self.slow or self.ws.state is not _OPEN:
            return True  # closing: nothing more to write
        if not backlog and self.writable():
            backlog.skip(item)
            self._write(item)
            return True
        if len(backlog.pending) >= backlog.config.queue_size:
            return False
        backlog.push(item)  # room: no policy applies
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_when_drained())
        return True

    def when_flushed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every backlog is written (never, if the connection ends)."""
        if self._flushed is None:
            self._flushed = []
        self._flushed.append(callback)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_when_drained())

    def _write(self, item: Message | Gap) -> None:
        if isinstance(item, Gap):
            self._write_text(dumps(gap_envelope(item)), None)
        else:
            self._write_text(*self.frames.get(item))

    def _write_text(self, text: str, frame: bytes | None) -> None:
        ws = self.ws
        if frame is None or not ws.send_prepared(frame, len(text)):
            # Negotiated permessage-deflate: this connection's own compression context.
            ws.send_nowait(text)

    def _write_backlogs(self) -> bool:
        """Write what the connection takes now; True if something still waits."""
        if self.slow or self.ws.state is not _OPEN:
            return False
        waiting = False
        for backlog in list(self.topics.values()):
            while backlog and self.writable():
                item = backlog.pop()
                if item is not None:
                    self._write(item)
            waiting = waiting or bool(backlog)
        return waiting

    async def _flush_when_drained(self) -> None:
        # Runs only while a backlog is not empty. The transport's resume_writing (below its
        # low-water mark) ends wait_drain(), instead of a 50 ms timer that kept polling: a
        # backlog now goes out as soon as the socket takes it.
        ws = self.ws
        try:
            while self._write_backlogs():
                if ws.writable:
                    # Not paused, yet not writable (a fragmented send, a transport closing):
                    # no event says when that ends, so look again later.
                    await asyncio.sleep(BACKLOG_RETRY)
                else:
                    await ws.wait_drain()
            flushed, self._flushed = self._flushed, None
            if flushed and not self.slow and ws.state is _OPEN:
                for callback in flushed:
                    callback()
        except ConnectionClosed:
            pass
        except Exception:  # pragma: no cover - a bug: log it rather than lose it in the task
            logger.exception("writing the backlog of %s failed", ws.request.path)
        finally:
            if self._flusher is asyncio.current_task():
                self._flusher = None

    def _stop_flusher(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()

    def _close_slow(self, topic: str) -> None:
        if self.slow:
            return
        self.slow = True
        self.slow_topic = topic
        ws = self.ws
        logger.info("closing slow WebSocket consumer on %s with 1013 (%s)", ws.request.path, topic)
        self._stop_flusher()
        if self._on_slow is not None:
            self._on_slow(self)  # first: the drop is on record before the client can return
        ws.fail(CloseCode.TRY_AGAIN_LATER, "slow consumer")
        # The close frame waits behind everything this client did not read: it would reach
        # it late or never, and flushing it would hold the buffers (and the socket) for up to
        # close_timeout. Reset the connection now instead; the client learns why from its
        # hello when it reconnects (the session's drop record).
        if ws.transport.get_write_buffer_size():
            ws.transport.abort()


# What the fan-out loop keeps of a subscribed connection: the sink, the topic's backlog and
# the connection, unpacked from one tuple instead of read through sink.ws.
_Member = tuple[WebSocketSink, Backlog, WebSocket]


class Fanout:
    """The WebSocket subscribers of a hub's topics: per topic, one hub subscription and one loop.

    Args:
        hub: the hub.
        frames: the shared frame cache.
    """

    def __init__(self, hub: Hub, frames: FrameCache) -> None:
        #: The hub.
        self.hub = hub
        #: The shared frame cache.
        self.frames = frames
        self._topics: dict[str, _TopicFanout] = {}

    def subscribe(
        self, sink: WebSocketSink, backlog: Backlog, since: int | None, epoch: str | None = None
    ) -> None:
        """Deliver ``backlog.topic`` to ``sink``.

        From now if ``since`` is None, else every message after ``since`` (of ``epoch``, if
        given: see :meth:`Hub.subscribe <fullduplex.hub.Hub.subscribe>`; history first, a
        gap for what is gone).

        Raises:
            ValueError: the hub refuses the topic.
        """
        topic = backlog.topic
        group = self._topics.get(topic)
        if group is None:
            group = self._topics[topic] = _TopicFanout(self, topic)
        try:
            group.add(sink, backlog, since, epoch)
        except BaseException:
            if not group.members and not group.joining:
                self._forget(group)
                group.subscription.close()
            raise

    def unsubscribe(self, backlog: Backlog) -> None:
        """Stop delivering ``backlog.topic`` to the connection that owns ``backlog``."""
        group = self._topics.get(backlog.topic)
        if group is not None:
            group.remove(backlog)

    def subscribers(self, topic: str) -> int:
        """Connections subscribed to ``topic`` (replaying ones included)."""
        group = self._topics.get(topic)
        return 0 if group is None else len(group.members) + len(group.joining)

    def topic_counts(self) -> dict[str, tuple[int, int]]:
        """Per topic: connections subscribed, and the hub subscriptions held to serve them.

        The second figure (the loop's own subscription, plus one per replaying connection)
        lets metrics count connections instead of the fan-out's internal subscriptions.
        """
        return {
            topic: (len(g.members) + len(g.joining), 1 + len(g.joining))
            for topic, g in self._topics.items()
        }

    def _forget(self, group: _TopicFanout) -> None:
        if self._topics.get(group.topic) is group:
            del self._topics[group.topic]


class _TopicFanout:
    """One topic's WebSocket subscribers, fed by one callback-mode hub subscription."""

    __slots__ = ("_snapshot", "fanout", "joining", "members", "subscription", "topic")

    def __init__(self, fanout: Fanout, topic: str) -> None:
        self.fanout = fanout
        self.topic = topic
        # Connections served by the loop, by backlog (one per connection and topic).
        self.members: dict[Backlog, _Member] = {}
        # Connections replaying history through a subscription of their own (closed while
        # the replay is paused for the socket to catch up).
        self.joining: dict[Backlog, tuple[WebSocketSink, Subscription]] = {}
        # The members as a tuple, rebuilt after a change: the loop must not see the dict
        # change under it (a member closed as a slow consumer leaves in the middle). Kept
        # rather than rebuilt per message: no 80 KB tuple per message with 10,000 members.
        self._snapshot: tuple[_Member, ...] | None = ()
        self.subscription = fanout.hub.subscribe(
            topic, on_message=self.deliver, on_close=self._closed
        )

    def add(
        self, sink: WebSocketSink, backlog: Backlog, since: int | None, epoch: str | None = None
    ) -> None:
        own = self.subscription
        same_epoch = not epoch or epoch == own.epoch
        if since is None or (own.started and not own.closed and since == own.cursor and same_epoch):
            # From now, or from exactly where the loop stands: the loop's next message is
            # this connection's next one (no replay, no history read).
            self._add_member(sink, backlog)
            return
        box: list[Subscription] = []
        subscription = self.fanout.hub.subscribe(
            self.topic, since, epoch=epoch, on_message=self._replay(sink, backlog, box)
        )
        box.append(subscription)
        self.joining[backlog] = (sink, subscription)

    def remove(self, backlog: Backlog) -> None:
        if self.members.pop(backlog, None) is not None:
            self._snapshot = None
        else:
            entry = self.joining.pop(backlog, None)
            if entry is not None:
                entry[1].close()
        if not self.members and not self.joining:
            self.fanout._forget(self)
            self.subscription.close()

    def _add_member(self, sink: WebSocketSink, backlog: Backlog) -> None:
        self.members[backlog] = (sink, backlog, sink.ws)
        self._snapshot = None

    def _replay(
        self, sink: WebSocketSink, backlog: Backlog, subscription_box: list[Subscription]
    ) -> Callable[[Message | Gap], None]:
        def on_message(item: Message | Gap) -> None:
            entry = self.joining.get(backlog)
            if entry is None or entry[1] is not subscription_box[0]:
                return  # joined the loop, left, or paused: what the replay still passes is old
            if not sink.hold(backlog, item):
                # The replay outran the socket (it comes in chunks of 500, whatever the socket
                # takes): stop it, and replay again from history once what waits is written.
                # Under ``disconnect`` this is not slowness: the burst is the server's.
                entry[1].close()
                sink.when_flushed(lambda: self._resume(backlog, entry))
                return
            if self.joining.get(backlog) is not entry:
                return  # it left meanwhile (closed as a slow consumer)
            own = self.subscription
            # The loop already passed this item on (it comes first in the hub's order).
            if own.started and own.cursor == entry[1].cursor and entry[1].started:
                self._switch(backlog, entry)

        return on_message

    def _resume(self, backlog: Backlog, entry: tuple[WebSocketSink, Subscription]) -> None:
        """Replay again, from where the connection stands, after a pause (see _replay)."""
        if self.joining.get(backlog) is not entry:
            return  # left meanwhile
        sink, paused = entry
        box: list[Subscription] = []
        subscription = self.fanout.hub.subscribe(
            self.topic,
            backlog.sent,
            epoch=paused.epoch or None,
            on_message=self._replay(sink, backlog, box),
        )
        box.append(subscription)
        self.joining[backlog] = (sink, subscription)

    def _switch(self, backlog: Backlog, entry: tuple[WebSocketSink, Subscription]) -> None:
        """A replaying connection caught up with the loop: serve it from the loop."""
        del self.joining[backlog]
        entry[1].close()
        self._add_member(entry[0], backlog)

    def _closed(self, reason: str) -> None:
        if reason != CLOSED:
            # The hub closed (or the loop failed): later subscribers need a new subscription.
            self.fanout._forget(self)

    def deliver(self, item: Message | Gap) -> None:
        """The hub callback: write ``item`` to every member."""
        members = self._snapshot
        if members is None:
            members = self._snapshot = tuple(self.members.values())
        if isinstance(item, Message):
            text, frame = self.fanout.frames.get(item)
            seq = item.seq
            size = len(text)
            # The loop of fullduplex.broadcast() with the per-subscriber bookkeeping inline (the
            # cursor, the counters): no Python call per member. /pubsub 10k, memory hub: 9.55 us
            # of server CPU per delivery, the broadcast() floor's (bench/hub_bench.py; the
            # history is in docs/performance.md).
            for member in members:
                sink, backlog, ws = member
                try:
                    if backlog.pending or not ws.send_prepared(frame, size):
                        # Behind, closing, compressed or busy: the connection's own path.
                        sink.deliver(backlog, item)
                        continue
                    backlog.sent = seq
                except Exception:
                    self._failed(member)
        else:
            for member in members:
                try:
                    member[0].deliver(member[1], item)
                except Exception:
                    self._failed(member)
        if self.joining:
            self._catch_up()

    def _catch_up(self) -> None:
        """Move replaying connections whose cursor met the loop's into the loop."""
        cursor = self.subscription.cursor
        for backlog, entry in list(self.joining.items()):
            subscription = entry[1]
            if subscription.started and not subscription.closed and subscription.cursor == cursor:
                self._switch(backlog, entry)

    def _failed(self, member: _Member) -> None:
        sink, backlog, ws = member[0], member[1], member[2]
        logger.exception("delivering %r to a WebSocket on %s failed", self.topic, ws.request.path)
        self.remove(backlog)
        if not sink.slow:
            # 1011 as for a handler that raises: the client reconnects and resumes.
            try:
                ws.fail(CloseCode.INTERNAL_ERROR, "internal error")
            except Exception:  # the transport is broken: the close frame cannot go out
                ws.transport.abort()
