"""The in-memory backend: one process, nothing to install (the default).

Each topic is a counter and a deque of its history. Publishing delivers to the hub at once,
within the call: the live feed has no task and no queue of its own.

Topics are forgotten, so that publishing to (or subscribing to) ever new names cannot grow
memory without bound:

* a topic nobody listens to, with no message for ``topic_idle_ttl`` seconds, is dropped;
  the sweep is amortised (each new topic, and a publish once a second, looks at the two
  least recently used idle topics), with no timer;
* beyond ``max_topics`` live topics, the least recently used idle topics are dropped at once,
  however recent; if every topic has listeners, a new topic is refused with
  :class:`~fullduplex.hub.base.TooManyTopics`.

Numbers never go back, dropped or not: a dropped topic's last sequence number is kept in one
of :data:`FLOOR_BUCKETS` floors (fixed memory, chosen by the topic's hash, the largest of the
topics dropped there), and a topic made again numbers on from its floor. To a client, a drop
then looks like history trimmed: a cursor of the old incarnation resumes exactly if it had
everything (the next number follows it), else gets a ``trimmed``
:class:`~fullduplex.hub.base.Gap`; never the new messages as if nothing was missing, with or
without an epoch (the browser client sends none). The price of sharing floors: a new topic
whose bucket holds a dropped topic's floor starts above 1, and a reader from ``since=0`` gets
a ``trimmed`` gap for numbers that never existed.
"""

from __future__ import annotations

import array
import collections
import itertools
import json
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

from .base import Backend, Deliver, Gap, GapReason, Message, TooManyTopics, TopicConfig

__all__ = ["DEFAULT_MAX_TOPICS", "DEFAULT_TOPIC_IDLE_TTL", "FLOOR_BUCKETS", "MemoryBackend"]

#: Live topics kept at most. A topic with one small message costs about 1 KB (tracemalloc:
#: its object, deque, name, message and two dict entries): 100,000 of them about 100 MB, the
#: order of what the WebSocket connections this process can serve cost anyway.
DEFAULT_MAX_TOPICS = 100_000
#: Seconds a topic with no listener and no message is kept: the default history age
#: (:data:`~fullduplex.hub.base.DEFAULT_HISTORY_AGE`), so expiry never drops history that a
#: resuming client could still have read; what it drops is the topic's object (its number
#: lives on in a floor).
DEFAULT_TOPIC_IDLE_TTL = 3600.0

#: Floors of the sequence numbers of dropped topics (8 bytes each: 128 KiB per backend). More
#: buckets, fewer new topics starting above 1 after drops.
FLOOR_BUCKETS = 2**14

#: Idle topics the sweep looks at per new topic: more than one, so the sweep outpaces the
#: creation of topics (one per call).
_SWEEP = 2
#: Seconds between sweeps made by publishes to topics kept (which grow nothing): a float
#: comparison per publish rather than a call (bench/topic_bench.py).
_SWEEP_INTERVAL = 1.0


class _Topic:
    __slots__ = ("history", "listeners", "seq", "touched")

    def __init__(self, seq: int, now: float) -> None:
        self.seq = seq
        self.history: collections.deque[Message] = collections.deque()
        #: Hubs listening (a listened topic is never dropped).
        self.listeners = 0
        #: When it was last published to or left by its last listener.
        self.touched = now


class MemoryBackend(Backend):
    """Topics in this process's memory.

    Data must be JSON-serializable, as with Redis (checked with ``json.dumps``), so that a
    program written against this backend runs on Redis; it is kept as given, not copied:
    don't mutate it after publishing.

    Every topic of one backend has the same epoch (:attr:`epoch`), new for each backend:
    a client's cursor from before a restart of the process is known as stale. A dropped topic
    keeps its numbering (see the module docstring).

    Args:
        clock: wall clock in seconds since the epoch (tests may pass a fake one).
        max_topics: live topics kept at most (listened or not); None for no limit.
        topic_idle_ttl: seconds after which a topic with no listener and no new message is
            dropped; None keeps topics until ``max_topics`` needs room. Keep it at least
            the longest ``history_age`` configured, or history still readable is dropped.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        # Limits
        max_topics: int | None = DEFAULT_MAX_TOPICS,
        topic_idle_ttl: float | None = DEFAULT_TOPIC_IDLE_TTL,
    ) -> None:
        if max_topics is not None and max_topics < 1:
            raise ValueError("max_topics must be None or at least 1")
        if topic_idle_ttl is not None and not (
            topic_idle_ttl >= 0 and math.isfinite(topic_idle_ttl)
        ):
            raise ValueError("topic_idle_ttl must be None or a number of seconds")
        self._clock = clock
        #: The epoch of every topic here (see :class:`~fullduplex.hub.base.Gap`).
        self.epoch = uuid.uuid4().hex[:12]
        #: Live topics kept at most; None for no limit.
        self.max_topics = max_topics
        #: Seconds an idle topic is kept; None for as long as ``max_topics`` allows.
        self.topic_idle_ttl = topic_idle_ttl
        #: Topics dropped so far (idle or for room), for tests and metrics.
        self.expired = 0
        self._sweep_at = 0.0
        self._floors = array.array("q", bytes(8 * FLOOR_BUCKETS))
        self._topics: dict[str, _Topic] = {}
        # Topics with no listener, least recently touched first.
        self._idle: collections.OrderedDict[str, _Topic] = collections.OrderedDict()
        self._deliver: Deliver | None = None
        # Messages published from within a delivery (a subscriber's callback publishing)
        # wait here, so every subscriber sees every topic's messages in order.
        self._pending: collections.deque[Message] = collections.deque()
        self._delivering = False

    def __len__(self) -> int:
        """Live topics."""
        return len(self._topics)

    async def start(self, deliver: Deliver) -> None:
        """Deliver every message published from now on (the hub ignores unheard topics)."""
        self._deliver = deliver

    async def close(self) -> None:
        """Stop delivering. History stays, so a hub may start again with this backend.

        Nothing listens any more: every topic may expire.
        """
        self._deliver = None
        now = self._clock()
        for topic, state in self._topics.items():
            if state.listeners:
                state.listeners, state.touched = 0, now
                self._idle[topic] = state

    async def publish(
        self, topic: str, data: Any, config: TopicConfig, key: str | None = None
    ) -> Message:
        """Append, trim and deliver synchronously (see :meth:`Backend.publish`).

        ``key`` is ignored: one process, whose transports remember keys themselves.

        Raises:
            TooManyTopics: ``topic`` is new and ``max_topics`` topics all have listeners.
        """
        json.dumps(data)  # raises TypeError like the Redis backend would
        now = self._clock()
        state = self._topics.get(topic)
        if state is None:
            state = self._add(topic, now)
        elif not state.listeners:
            self._idle.move_to_end(topic)
        state.touched = now
        state.seq += 1
        message = Message(topic, state.seq, data, now, self.epoch)
        state.history.append(message)
        self._trim(state, config, now)
        if now >= self._sweep_at:
            self.sweep(now)
        self._feed(message)
        return message

    def sweep(self, now: float | None = None) -> int:
        """Drop the least recently used idle topics older than ``topic_idle_ttl``.

        Looks at two of them at most: each new topic calls it, and :meth:`publish` once a
        second; the cost is amortised over the new topics that made them.

        Returns:
            How many were dropped.
        """
        ttl = self.topic_idle_ttl
        if ttl is None or not self._idle:
            return 0
        now = self._clock() if now is None else now
        self._sweep_at = now + _SWEEP_INTERVAL
        cutoff = now - ttl
        dropped = 0
        idle = self._idle
        while idle and dropped < _SWEEP:
            topic, state = next(iter(idle.items()))
            if state.touched > cutoff:
                break
            self._drop(topic)
            dropped += 1
        return dropped

    def _add(self, topic: str, now: float) -> _Topic:
        """Make ``topic``, dropping idle topics for room; it starts idle."""
        topics = self._topics
        if self.max_topics is not None and len(topics) >= self.max_topics:
            while len(topics) >= self.max_topics and self._idle:
                self._drop(next(iter(self._idle)))
            if len(topics) >= self.max_topics:
                raise TooManyTopics(f"too many topics: {len(topics)} with listeners")
        self.sweep(now)
        state = topics[topic] = self._idle[topic] = _Topic(self._floor(topic), now)
        return state

    def _floor(self, topic: str) -> int:
        """The number a topic not kept goes on from (0 until a topic is dropped)."""
        return self._floors[hash(topic) % FLOOR_BUCKETS] if self.expired else 0

    def _drop(self, topic: str) -> None:
        seq = self._topics.pop(topic).seq
        del self._idle[topic]
        bucket = hash(topic) % FLOOR_BUCKETS
        if seq > self._floors[bucket]:
            self._floors[bucket] = seq
        self.expired += 1

    def _feed(self, message: Message) -> None:
        if self._deliver is None:
            return
        self._pending.append(message)
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._pending and self._deliver is not None:
                self._deliver(self._pending.popleft())
        finally:
            self._delivering = False
            self._pending.clear()

    def _trim(self, state: _Topic, config: TopicConfig, now: float | None = None) -> None:
        history = state.history
        if config.history_size is not None:
            while len(history) > config.history_size:
                history.popleft()
        if config.history_age is not None:
            cutoff = (self._clock() if now is None else now) - config.history_age
            while history and history[0].time < cutoff:
                history.popleft()

    async def history(
        self,
        topic: str,
        since: int,
        limit: int | None,
        config: TopicConfig,
        epoch: str | None = None,
    ) -> tuple[Gap | None, list[Message]]:
        """See :meth:`Backend.history`. Reading a topic does not keep it alive."""
        state = self._topics.get(topic) or _Topic(self._floor(topic), 0.0)
        self._trim(state, config)
        history = state.history
        first = history[0].seq if history else state.seq + 1
        gap: Gap | None = None
        if since > state.seq or (since and epoch and epoch != self.epoch):
            gap = Gap(topic, since, first, GapReason.RESET, self.epoch)
        elif since < first - 1:
            gap = Gap(topic, since, first)
        start = first if gap is not None else since + 1
        skip = start - first
        stop = None if limit is None else skip + limit
        return gap, list(itertools.islice(history, skip, stop))

    async def last_seq(self, topic: str) -> int:
        """See :meth:`Backend.last_seq`."""
        return self.last_seq_nowait(topic)

    async def position(self, topic: str) -> tuple[int, str]:
        """See :meth:`Backend.position`."""
        return self.last_seq_nowait(topic), self.epoch

    def epoch_nowait(self, topic: str) -> str:
        """The epoch, always known here."""
        return self.epoch

    def last_seq_nowait(self, topic: str) -> int:
        """The topic's last sequence number, always known here (not kept: its floor)."""
        state = self._topics.get(topic)
        return self._floor(topic) if state is None else state.seq

    def admit(self, topic: str) -> None:
        """Make ``topic`` if it is not kept (see :meth:`Backend.admit`).

        Raises:
            TooManyTopics: ``max_topics`` topics all have listeners.
        """
        if topic not in self._topics:
            self._add(topic, self._clock())

    def listen(self, topic: str, after: int, epoch: str = "") -> None:
        """Keep the topic while listened (every publish is delivered anyway)."""
        state = self._topics.get(topic)
        if state is None:  # not admitted (a hub of another version): admit now
            state = self._add(topic, self._clock())
        if not state.listeners:
            del self._idle[topic]
        state.listeners += 1

    def unlisten(self, topic: str) -> None:
        """The topic may expire once no hub listens to it."""
        state = self._topics.get(topic)
        if state is None or not state.listeners:
            return
        state.listeners -= 1
        if not state.listeners:
            state.touched = self._clock()
            self._idle[topic] = state
