"""The in-memory backend: one process, nothing to install (the default).

Each topic is a counter and a deque of its history. Publishing delivers to the hub at once,
within the call: the live feed has no task and no queue of its own.
"""

from __future__ import annotations

import collections
import itertools
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from .base import Backend, Deliver, Gap, GapReason, Message, TopicConfig

__all__ = ["MemoryBackend"]


class _Topic:
    __slots__ = ("history", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.history: collections.deque[Message] = collections.deque()


class MemoryBackend(Backend):
    """Topics in this process's memory.

    A topic's counter outlives its history, so sequence numbers never go back; the cost is a
    small object per topic ever published to. Data must be JSON-serializable, as with Redis
    (checked with ``json.dumps``), so that a program written against this backend runs on
    Redis; it is kept as given, not copied: don't mutate it after publishing.

    Every topic of one backend has the same epoch (:attr:`epoch`), new for each backend:
    a client's cursor from before a restart of the process is known as stale.

    Args:
        clock: wall clock in seconds since the epoch (tests may pass a fake one).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        #: The epoch of every topic here (see :class:`~fullduplex.hub.base.Gap`).
        self.epoch = uuid.uuid4().hex[:12]
        self._topics: dict[str, _Topic] = {}
        self._deliver: Deliver | None = None
        # Messages published from within a delivery (a subscriber's callback publishing)
        # wait here, so every subscriber sees every topic's messages in order.
        self._pending: collections.deque[Message] = collections.deque()
        self._delivering = False

    async def start(self, deliver: Deliver) -> None:
        """Deliver every message published from now on (the hub ignores unheard topics)."""
        self._deliver = deliver

    async def close(self) -> None:
        """Stop delivering. History stays, so a hub may start again with this backend."""
        self._deliver = None

    async def publish(
        self, topic: str, data: Any, config: TopicConfig, key: str | None = None
    ) -> Message:
        """Append, trim and deliver synchronously (see :meth:`Backend.publish`).

        ``key`` is ignored: one process, whose transports remember keys themselves.
        """
        json.dumps(data)  # raises TypeError like the Redis backend would
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic()
        state.seq += 1
        message = Message(topic, state.seq, data, self._clock(), self.epoch)
        state.history.append(message)
        self._trim(state, config)
        self._feed(message)
        return message

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

    def _trim(self, state: _Topic, config: TopicConfig) -> None:
        history = state.history
        if config.history_size is not None:
            while len(history) > config.history_size:
                history.popleft()
        if config.history_age is not None:
            cutoff = self._clock() - config.history_age
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
        """See :meth:`Backend.history`."""
        state = self._topics.get(topic) or _Topic()
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
        state = self._topics.get(topic)
        return 0 if state is None else state.seq

    async def position(self, topic: str) -> tuple[int, str]:
        """See :meth:`Backend.position`."""
        return await self.last_seq(topic), self.epoch

    def epoch_nowait(self, topic: str) -> str:
        """The epoch, always known here."""
        return self.epoch

    def last_seq_nowait(self, topic: str) -> int:
        """The topic's last sequence number, always known here."""
        state = self._topics.get(topic)
        return 0 if state is None else state.seq

    def listen(self, topic: str, after: int, epoch: str = "") -> None:
        """Nothing to do: every publish is delivered."""

    def unlisten(self, topic: str) -> None:
        """Nothing to do: every publish is delivered."""
