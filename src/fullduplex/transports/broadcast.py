"""Broadcast to WebSockets: frame each message once, write it straight to every transport.

A topic with N WebSocket subscribers costs, per message, one JSON serialization and one frame
serialization (server frames are unmasked, RFC 6455 5.1, so the same bytes suit every
uncompressed connection), then N ``transport.write`` calls made from the hub's callback: no
task and no queue per subscriber while it keeps up.

A connection that negotiated permessage-deflate gets its frame from its own core
(``ws.core.send_text``), which compresses with that connection's context (RFC 7692 keeps one
per connection with context takeover); the JSON text is still built once.

Flow control and the slow-consumer policy
-----------------------------------------

A frame is written only when the connection is OPEN (``ws.core.state``), no fragmented message
is being sent on it, and its transport's write buffer is at or below its high-water mark
(the server's ``write_limit``). Otherwise the message waits in the topic's
:class:`~fullduplex.transports.backlog.Backlog` (at most ``queue_size`` messages, under the
topic's :class:`~fullduplex.hub.Policy`: drop-oldest with a gap, conflate, or disconnect), and
the backlog is retried by a loop timer every :data:`BACKLOG_RETRY` seconds while not empty
(``WebSocket`` has no public drain callback). Under ``disconnect``, a full backlog closes the
connection with 1013 (try again later): the client is healthy but slower than the feed, and may
reconnect and resume from its cursor (``{"op":"subscribe","since":N}``). So a slow connection
holds at most its write buffer plus ``queue_size`` messages per topic, and never delays the
others: a write to a transport never blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..asyncio.connection import DEFAULT_WRITE_LIMIT, WebSocket
from ..hub import Gap, Message, TopicConfig
from ..protocol import CloseCode, State
from ..protocol.frames import Opcode, serialize_frame
from .backlog import Backlog
from .common import EnvelopeCache, dumps, gap_envelope, same_message

__all__ = ["BACKLOG_RETRY", "FrameCache", "WebSocketSink"]

logger = logging.getLogger("fullduplex.transports")

#: Seconds between attempts to flush a slow connection's backlog.
BACKLOG_RETRY = 0.05


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
        frame = serialize_frame(Opcode.TEXT, text.encode())
        self.framed += 1
        last = self._last
        last.pop(message.topic, None)
        if len(last) >= self.envelopes.max_topics:
            del last[next(iter(last))]
        last[message.topic] = (message, frame)
        return text, frame


class WebSocketSink:
    """Delivers hub messages and gaps to one WebSocket, writing frames to its transport.

    Call :meth:`deliver` from the hub's callback (``hub.subscribe(..., on_message=...)``).

    Args:
        ws: the connection.
        frames: the shared frame cache.
        on_slow: called once when the connection is closed as a slow consumer.
    """

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
        self._on_slow = on_slow
        self._timer: asyncio.TimerHandle | None = None
        try:
            self._limit = ws.transport.get_write_buffer_limits()[1]
        except (AttributeError, NotImplementedError):  # pragma: no cover - exotic transports
            self._limit = DEFAULT_WRITE_LIMIT

    def add(self, topic: str, config: TopicConfig, since: int | None) -> Backlog:
        """Start tracking ``topic`` (before subscribing it on the hub)."""
        backlog = self.topics[topic] = Backlog(topic, config, since)
        return backlog

    def remove(self, topic: str) -> None:
        """Stop tracking ``topic``; its backlog is discarded."""
        self.topics.pop(topic, None)

    def callback(self, backlog: Backlog) -> Callable[[Message | Gap], None]:
        """The hub callback for one topic."""

        def on_message(item: Message | Gap) -> None:
            if self.topics.get(backlog.topic) is backlog:
                self.deliver(backlog, item)

        return on_message

    def close(self) -> None:
        """Stop delivering: cancel the backlog timer, forget every topic."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.topics.clear()

    # -- delivery -----------------------------------------------------------------------------

    def writable(self) -> bool:
        """Whether a frame may be written now (open, no fragmented send, buffer under limit)."""
        ws = self.ws
        core = ws.core
        return (
            core.state is State.OPEN
            # The core has no public flag for an open fragmented send; see "What the
            # transports need from the server" in docs/transports.md.
            and not core.sending_fragmented
            and ws.transport.get_write_buffer_size() <= self._limit
            and not ws.transport.is_closing()
        )

    def deliver(self, backlog: Backlog, item: Message | Gap) -> None:
        """Write ``item`` now, or keep it in the topic's backlog under its policy."""
        if self.slow or self.ws.core.state is not State.OPEN:
            return
        if not backlog and self.writable():
            backlog.skip(item)
            self._write(item)
            return
        if not backlog.push(item):
            self._close_slow()
            return
        self.dropped = sum(b.dropped for b in self.topics.values())
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(BACKLOG_RETRY, self._flush)

    def _write(self, item: Message | Gap) -> None:
        if isinstance(item, Gap):
            self._write_text(dumps(gap_envelope(item)), None)
        else:
            self._write_text(*self.frames.get(item))

    def _write_text(self, text: str, frame: bytes | None) -> None:
        ws = self.ws
        core = ws.core
        if core.extensions or frame is None:
            # Negotiated permessage-deflate: this connection's own compression context.
            core.send_text(text)
            data = core.data_to_send()
        else:
            data = frame
        ws.transport.write(data)
        ws.messages_out += 1
        ws.bytes_out += len(text)

    def _flush(self) -> None:
        self._timer = None
        if self.slow or self.ws.core.state is not State.OPEN:
            return
        waiting = False
        for backlog in list(self.topics.values()):
            while backlog and self.writable():
                item = backlog.pop()
                if item is not None:
                    self._write(item)
            waiting = waiting or bool(backlog)
        if waiting:
            self._timer = asyncio.get_running_loop().call_later(BACKLOG_RETRY, self._flush)

    def _close_slow(self) -> None:
        if self.slow:
            return
        self.slow = True
        logger.info("closing slow WebSocket consumer on %s with 1013", self.ws.request.path)
        self.close()
        # The close frame waits behind the full buffer; fail() closes TCP after flushing what
        # it can, and the connection's close timer aborts it if the peer never reads.
        self.ws.fail(CloseCode.TRY_AGAIN_LATER, "slow consumer")
        if self._on_slow is not None:
            self._on_slow(self)
