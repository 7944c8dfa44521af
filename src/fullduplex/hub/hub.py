"""The hub: topics, subscriptions, fan-out and slow-consumer policies over a backend.

Every transport (WebSocket, SSE, long and short polling) is fed from one :class:`Hub`::

    async with Hub("redis://127.0.0.1:6379/0") as hub:
        hub.configure("ticker.*", TopicConfig(policy=Policy.CONFLATE,
                                              conflate_key=lambda d: d["symbol"]))
        sub = hub.subscribe("chat", since=41)      # replay 42... then live
        await hub.publish("chat", {"text": "hi"})  # -> Message(seq=...)
        async for item in sub:                     # Message or Gap
            ...

Fan-out. The backend hands each topic's messages, in order, to one :class:`_Feed` per topic
that has subscribers here; the feed passes each message to its subscriptions synchronously.
Nothing on that path awaits: a queue-mode subscription appends to its bounded queue (applying
its topic's :class:`~fullduplex.hub.base.Policy` when full) and a callback-mode subscription
calls its ``on_message``. So a slow subscriber never delays the publisher or the others.

Resuming. ``subscribe(topic, since=N)`` replays history after N from a short-lived task, in
chunks, waiting for the reader when the queue is full (history is already stored: replay is
paced, policies apply to live messages). Live messages arriving meanwhile are buffered (at
most ``max(queue_size, REPLAY_CHUNK)``; on overflow the buffer is dropped and replay reads
further, since those messages are in history too); at the switch to live, buffered messages
are deduplicated by sequence number. The result is every message after N exactly once, in
order, or a :class:`~fullduplex.hub.base.Gap` where history no longer has them.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import functools
import itertools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, TypeVar

from .base import (
    CLOSED,
    ERROR,
    HUB_CLOSED,
    SLOW_CONSUMER,
    Backend,
    Gap,
    GapReason,
    HubUnavailable,
    Message,
    Policy,
    SubscriptionClosed,
    TopicConfig,
    check_since,
    whole_topic,
)
from .stats import STATS

__all__ = ["REPLAY_CHUNK", "Hub", "Subscription"]

logger = logging.getLogger("fullduplex.hub")

T = TypeVar("T")

#: Messages read from history per request while replaying (one XRANGE with Redis).
REPLAY_CHUNK = 500
#: Seconds between attempts of a replay or subscription start while the backend is down,
#: doubling from the first to the second.
RETRY_DELAYS = (0.05, 2.0)

Item = Message | Gap
OnMessage = Callable[[Item], None]


class Hub:
    """A pub/sub hub: publish to topics, subscribe from now or from a sequence number.

    Use it as an async context manager, or call :meth:`start` and :meth:`close`.

    Args:
        backend: a :class:`~fullduplex.hub.base.Backend`, ``"memory"`` (the default, one
            process), a Redis URL ``"redis://host:port/db"`` (several processes and
            machines share topics, sequence numbers and history; needs ``fullduplex[redis]``)
            or a Redis Cluster URL ``"redis+cluster://host:port,host:port"`` (topics spread
            over the cluster's shards, see :mod:`fullduplex.hub.cluster`).
        default: the settings of topics no :meth:`configure` pattern matches.
    """

    def __init__(
        self, backend: Backend | str | None = None, *, default: TopicConfig | None = None
    ) -> None:
        #: The backend.
        self.backend = _make_backend(backend)
        #: Settings of topics no :meth:`configure` pattern matches.
        self.default = default if default is not None else TopicConfig()
        self._configs: list[tuple[str, re.Pattern[str], TopicConfig]] = []
        self._feeds: dict[str, _Feed] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False

    def configure(self, topic: str, config: TopicConfig) -> None:
        """Set the settings of a topic, or of every topic matching an ``fnmatch`` pattern.

        Later calls win over earlier ones for the topics they both match. Settings apply to
        publishes and subscriptions from now on.

        Args:
            topic: a topic name or a pattern such as ``"ticker.*"`` (case-sensitive).
            config: its settings.
        """
        self._configs = [c for c in self._configs if c[0] != topic]
        self._configs.append((topic, re.compile(fnmatch.translate(topic)), config))

    def config(self, topic: str) -> TopicConfig:
        """The settings that apply to ``topic``."""
        for _, pattern, config in reversed(self._configs):
            if pattern.match(topic):
                return config
        return self.default

    async def start(self) -> None:
        """Connect the backend. Calling it again does nothing."""
        if self._closed:
            raise RuntimeError("hub is closed")
        if not self._started:
            await self.backend.start(self._deliver)
            self._started = True

    async def close(self) -> None:
        """Close every subscription (reason ``"hub closed"``) and the backend."""
        if self._closed:
            return
        self._closed = True
        for feed in list(self._feeds.values()):
            for subscription in list(feed.subscriptions):
                subscription._close(HUB_CLOSED)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._started:
            await self.backend.close()

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def publish(self, topic: str, data: Any, *, key: str | None = None) -> Message:
        """Publish ``data`` on ``topic``.

        Returns once the backend has stored it, before any subscriber has read it.

        Args:
            topic: the topic.
            data: a JSON-serializable value.
            key: an idempotency key, or None: on a backend shared between processes (Redis),
                a publish with a key the backend saw for this topic within its
                ``publish_key_ttl`` returns the first publish's message and publishes nothing
                (see :meth:`Backend.publish`).

        Returns:
            The message, with its sequence number and time.

        Raises:
            TypeError: ``data`` is not JSON-serializable.
            TooManyTopics: ``topic`` is new and the backend keeps its most topics, all in
                use (a :class:`~fullduplex.hub.base.HubUnavailable`).
            HubUnavailable: the backend is down. Not retried, since a retry could publish
                twice; see :class:`~fullduplex.hub.base.HubUnavailable`.
        """
        self._check_open(topic)
        if key is None:
            message = await self.backend.publish(topic, data, self.config(topic))
        else:
            message = await self.backend.publish(topic, data, self.config(topic), key)
        STATS.published += 1
        return message

    async def history(
        self, topic: str, since: int = 0, limit: int | None = None, *, epoch: str | None = None
    ) -> tuple[Gap | None, list[Message]]:
        """Messages after ``since`` still in history, oldest first (for short polling).

        Args:
            topic: the topic.
            since: the last sequence number the client has; 0 for everything.
            limit: at most this many messages; None for all.
            epoch: the epoch ``since`` belongs to, if the client knows it (a message's or a
                reset gap's ``epoch``): a cursor of another epoch gets a ``reset`` gap even
                when the topic's new numbering has passed it.

        Returns:
            A :class:`~fullduplex.hub.base.Gap` if messages after ``since`` are gone (then
            the messages from ``gap.first_available`` on), else None; and the messages.

        Raises:
            HubUnavailable: the backend is down.
        """
        self._check_open(topic)
        check_since(since)
        if limit is not None and limit < 0:
            raise ValueError("limit must be None or at least 0")
        return await self.backend.history(topic, since, limit, self.config(topic), epoch or None)

    async def last_seq(self, topic: str) -> int:
        """The last sequence number of ``topic``; 0 if nothing was published yet.

        Raises:
            HubUnavailable: the backend is down.
        """
        self._check_open(topic)
        return await self.backend.last_seq(topic)

    async def position(self, topic: str) -> tuple[int, str]:
        """The last sequence number of ``topic`` and its epoch ("" if none yet).

        Raises:
            HubUnavailable: the backend is down.
        """
        self._check_open(topic)
        return await self.backend.position(topic)

    def subscribe(
        self,
        topic: str,
        since: int | None = None,
        *,
        epoch: str | None = None,
        on_message: Callable[[Message | Gap], None] | None = None,
        on_close: Callable[[str], None] | None = None,
    ) -> Subscription:
        """Subscribe to ``topic``.

        Args:
            topic: the topic.
            since: None for messages published from now on; N for every message after N
                (history first: a :class:`~fullduplex.hub.base.Gap` if some are gone, then
                live; each once, in order).
            epoch: the epoch ``since`` belongs to, if known (see :meth:`history`).
            on_message: callback mode: called with each message or gap, synchronously from
                the fan-out; it must not block. No queue and no task per subscriber (the
                WebSocket transport writes to many sockets at once this way). If it raises,
                the exception is logged and the subscription closed with reason ``"error"``.
                Without it, queue mode: read with :meth:`Subscription.get` and friends.
            on_close: called once with the reason when the subscription closes, whatever
                closes it (useful in callback mode, to end a stream when the hub closes).

        Raises:
            TooManyTopics: the backend keeps its most topics, all in use (in-memory backend:
                ``max_topics``), and this is a new one.

        With Redis, "from now" for a topic no subscription of this hub listens to yet means
        from when the hub has read the topic's last sequence number, one round trip later;
        :meth:`Subscription.wait_started` waits for that.
        """
        self._check_open(topic)
        if since is not None:
            check_since(since)
        feed = self._feeds.get(topic)
        if feed is None:
            self.backend.admit(topic)
            feed = self._open_feed(topic)
        subscription = Subscription(self, feed, self.config(topic), on_message, on_close)
        feed.subscriptions[subscription] = None
        if since is not None and (since != feed.last or (epoch and epoch != feed.epoch)):
            subscription._replay_from(since, epoch or "")
        elif feed.last is not None:
            # From now, or from exactly the last message this hub has seen: nothing to replay,
            # so no replay task and no history read (a long poll re-polling with its cursor
            # hits this every time: bench/hub_bench.py).
            subscription._go_live(feed.last)
        return subscription

    @property
    def topics(self) -> list[str]:
        """Topics with subscriptions in this hub."""
        return list(self._feeds)

    def subscriber_counts(self) -> dict[str, int]:
        """Subscriptions per topic in this hub (for metrics: O(topics), no copy per topic)."""
        return {topic: len(feed.subscriptions) for topic, feed in self._feeds.items()}

    # Internals

    def _check_open(self, topic: str) -> None:
        if not self._started or self._closed:
            raise RuntimeError("hub is not running: use `async with Hub(...)` or start()")
        if not isinstance(topic, str) or not topic:
            raise ValueError("topic must be a non-empty string")

    def _deliver(self, item: Item) -> None:
        feed = self._feeds.get(item.topic)
        if feed is not None:
            feed.deliver(item)

    def _open_feed(self, topic: str) -> _Feed:
        feed = self._feeds[topic] = _Feed(topic)
        last = self.backend.last_seq_nowait(topic)
        if last is not None:
            self._activate(feed, last, self.backend.epoch_nowait(topic))
        else:
            feed.task = self._spawn(self._resolve(feed))
        return feed

    async def _resolve(self, feed: _Feed) -> None:
        async def prepare_then_read() -> tuple[int, str]:
            await self.backend.prepare_listen(feed.topic)
            return await self.backend.position(feed.topic)

        last, epoch = await self._retry(prepare_then_read)
        if self._feeds.get(feed.topic) is feed:
            self._activate(feed, last, epoch)

    def _activate(self, feed: _Feed, last: int, epoch: str) -> None:
        feed.last = last
        feed.epoch = epoch
        self.backend.listen(feed.topic, last, epoch)
        feed.ready.set()
        for subscription in list(feed.subscriptions):
            if subscription._pending:
                subscription._go_live(last)

    def _release(self, subscription: Subscription) -> None:
        feed = subscription._feed
        feed.subscriptions.pop(subscription, None)
        if feed.subscriptions or self._feeds.get(feed.topic) is not feed:
            return
        del self._feeds[feed.topic]
        if feed.task is not None:
            feed.task.cancel()
        if not self._closed:  # listened, or being prepared (unlisten undoes both)
            self.backend.unlisten(feed.topic)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _retry(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` until the backend answers (subscriptions wait out outages)."""
        delay, max_delay = RETRY_DELAYS
        while True:
            try:
                return await operation()
            except HubUnavailable as exc:
                logger.debug("backend unavailable, retrying in %.2f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)


class _Feed:
    """The live messages of one topic, fanned out to this hub's subscriptions."""

    __slots__ = ("epoch", "last", "ready", "subscriptions", "task", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        #: The last sequence number seen; None until the backend listens.
        self.last: int | None = None
        #: The epoch of ``last`` ("" if unknown).
        self.epoch = ""
        self.ready = asyncio.Event()
        # A dict as an ordered set: subscribers are served in the order they came.
        self.subscriptions: dict[Subscription, None] = {}
        self.task: asyncio.Task[None] | None = None

    def deliver(self, item: Item) -> None:
        if self.last is None:
            return
        if isinstance(item, Gap):
            if item.reason is not GapReason.RESET:
                if item.first_available <= self.last + 1:
                    return
            elif item.epoch:
                if item.epoch == self.epoch:
                    return  # announced already (this feed started in the new epoch)
                self.epoch = item.epoch
            self.last = item.first_available - 1
        elif item.seq <= self.last:
            return
        else:
            self.last = item.seq
            if item.epoch:
                self.epoch = item.epoch
        subscriptions = list(self.subscriptions)
        STATS.delivered += len(subscriptions)
        for subscription in subscriptions:
            subscription._receive(item)


class Subscription:
    """A subscriber to one topic; created by :meth:`Hub.subscribe`.

    In queue mode, read with :meth:`get`, :meth:`get_nowait`, :meth:`wait` or ``async for``.
    Each item is a :class:`~fullduplex.hub.base.Message` or a
    :class:`~fullduplex.hub.base.Gap`. The queue holds at most ``queue_size`` items; when it
    is full the topic's policy applies:

    * ``drop-oldest``: the oldest items make way, and a gap (reason ``dropped``) takes their
      place at the head of the queue, telling what to fetch from :meth:`Hub.history`;
      :attr:`dropped` counts them.
    * ``conflate``: a message replaces the queued ones with the same key (ticker semantics:
      they are superseded, so no gap); :attr:`conflated` counts them. The queue stays in
      sequence order. With no ``conflate_key``, every message has the same key: a full queue
      keeps only the latest. When full of other keys, as ``drop-oldest``.
    * ``disconnect``: the subscription closes with reason ``"slow consumer"``; what was
      queued can still be read, then :class:`~fullduplex.hub.base.SubscriptionClosed` is
      raised.

    To resume after a reconnection, subscribe again with ``since=`` :attr:`cursor`.
    """

    def __init__(
        self,
        hub: Hub,
        feed: _Feed,
        config: TopicConfig,
        on_message: OnMessage | None,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        #: The topic.
        self.topic = feed.topic
        #: The last sequence number handed to the application (taken from the queue, or
        #: passed to ``on_message``); after a gap, ``gap.first_available - 1``.
        self.cursor = 0
        #: Messages dropped by the ``drop-oldest`` policy (announced by gaps).
        self.dropped = 0
        #: Messages superseded under the ``conflate`` policy.
        self.conflated = 0
        #: Whether the subscription is closed.
        self.closed = False
        #: Why it was closed: ``"closed"``, ``"slow consumer"``, ``"hub closed"`` or
        #: ``"error"``; None while open.
        self.close_reason: str | None = None
        #: The settings it follows (those of the topic when it subscribed).
        self.config = config
        #: The epoch of the last item passed on ("" while unknown): give it back with
        #: ``since`` to resume exactly across a backend that lost its data.
        self.epoch = ""
        self._hub = hub
        self._feed = feed
        self._on_message = on_message
        self._on_close = on_close
        # Last sequence number passed on (queued or called back), for dedup and holes.
        self._tail = 0
        # Live items received while starting; None once live.
        self._buffer: list[Item] | None = []
        self._overflow = False
        self._pending = True  # since=None, waiting for the feed's starting point
        self._task: asyncio.Task[None] | None = None
        self._queue: _Queue | None = None
        if on_message is None:
            key = config.conflate_key
            if config.policy is Policy.CONFLATE:
                self._queue = _ConflatingQueue(key if key is not None else whole_topic)
            else:
                self._queue = _FifoQueue()
        # Futures of whoever waits for a change: queued, dequeued, started, closed. One list,
        # not four asyncio.Events: most subscriptions (callback mode) never wait.
        self._waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        state = f"closed {self.close_reason!r}" if self.closed else f"cursor={self.cursor}"
        return f"<Subscription {self.topic!r} {state} lag={self.lag}>"

    @property
    def lag(self) -> int:
        """How far behind it is, in messages.

        The topic's last sequence number seen by this hub minus :attr:`cursor`; in queue
        mode it includes the queued messages.
        """
        last = self._feed.last
        return 0 if last is None else max(0, last - self.cursor)

    @property
    def queued(self) -> int:
        """Items in the queue (0 in callback mode)."""
        return 0 if self._queue is None else len(self._queue)

    @property
    def started(self) -> bool:
        """Whether the subscription is live (its replay is done), or closed."""
        return self._buffer is None or self.closed

    async def wait_started(self) -> None:
        """Wait until the subscription is live: replay done, starting point known."""
        while not self.started:
            await self._wait_change()

    async def get(self) -> Message | Gap:
        """Wait for the next message or gap.

        Raises:
            SubscriptionClosed: the subscription is closed and its queue drained.
        """
        queue = self._reading()
        while not queue:
            if self.closed:
                raise SubscriptionClosed(self.close_reason or CLOSED)
            await self._wait_change()
        return self._pop(queue)

    def get_nowait(self) -> list[Message | Gap]:
        """Take everything queued now, possibly nothing (for long polling).

        Raises:
            SubscriptionClosed: the subscription is closed and its queue drained.
        """
        queue = self._reading()
        if not queue and self.closed:
            raise SubscriptionClosed(self.close_reason or CLOSED)
        items = []
        while queue:
            items.append(self._pop(queue))
        return items

    async def wait(self, timeout: float | None) -> list[Message | Gap]:
        """Wait until something is queued or ``timeout`` seconds pass, then take it all.

        Args:
            timeout: seconds; None waits as long as it takes.

        Returns:
            The queued items; empty after a timeout.

        Raises:
            SubscriptionClosed: the subscription is closed and its queue drained.
        """
        queue = self._reading()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not queue and not self.closed:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            await self._wait_change(remaining)
        return self.get_nowait()

    def __aiter__(self) -> AsyncIterator[Message | Gap]:
        """Iterate over messages and gaps.

        Ends when the subscription is closed by :meth:`close` or by the hub; raises
        :class:`~fullduplex.hub.base.SubscriptionClosed` for the other reasons (slow
        consumer, error), as ``async for`` over a WebSocket ends on a normal closure only.
        """
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message | Gap]:
        while True:
            try:
                item = await self.get()
            except SubscriptionClosed as exc:
                if exc.reason in (CLOSED, HUB_CLOSED):
                    return
                raise
            yield item

    def close(self) -> None:
        """Unsubscribe. Queued items can still be read; then reads raise."""
        self._close(CLOSED)

    async def wait_closed(self) -> None:
        """Wait until the subscription is closed (useful in callback mode)."""
        while not self.closed:
            await self._wait_change()

    # Internals

    async def _wait_change(self, timeout: float | None = None) -> None:
        """Wait until :meth:`_notify` or ``timeout``; callers check their condition again.

        A future and a timer handle, not ``asyncio.wait_for``, which makes a task per call.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _release, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()

    def _notify(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                _release(waiter)

    def _reading(self) -> _Queue:
        if self._queue is None:
            raise RuntimeError("callback-mode subscriptions have no queue to read")
        return self._queue

    def _pop(self, queue: _Queue) -> Item:
        item = queue.popleft()
        self.cursor = item.seq if isinstance(item, Message) else item.first_available - 1
        self._notify()  # a paced replay may wait for room
        return item

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._notify()
        self._hub._release(self)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        on_close, self._on_close = self._on_close, None
        # The callbacks are usually bound methods of whoever holds this subscription: dropping
        # them breaks that cycle, so a topic's last subscriber leaving frees it at once.
        self._on_message = None
        if on_close is not None:
            try:
                on_close(reason)
            except Exception:
                logger.exception("on_close callback of %r failed", self.topic)

    def _go_live(self, last: int) -> None:
        self._pending = False
        self._tail = self.cursor = last
        self.epoch = self._feed.epoch
        self._buffer = None
        self._notify()

    def _replay_from(self, since: int, epoch: str) -> None:
        self._pending = False
        self._tail = self.cursor = since
        self.epoch = epoch
        self._task = self._hub._spawn(self._replay())

    async def _replay(self) -> None:
        try:
            await self._feed.ready.wait()
            await self._replay_history()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("replay of %r failed", self.topic)
            self._close(ERROR)

    async def _replay_history(self) -> None:
        backend, topic, config = self._hub.backend, self.topic, self.config
        while True:
            self._overflow = False
            since = self._tail
            gap, messages = await self._hub._retry(
                functools.partial(
                    backend.history, topic, since, REPLAY_CHUNK, config, self.epoch or None
                )
            )
            if gap is not None:
                self._tail = gap.first_available - 1
                if gap.reason is GapReason.RESET:
                    self.epoch = gap.epoch
                await self._put(Gap(topic, since, gap.first_available, gap.reason, gap.epoch))
            for message in messages:
                if message.seq > self._tail:
                    self._tail = message.seq
                    self.epoch = message.epoch or self.epoch
                    await self._put(message)
            if len(messages) < REPLAY_CHUNK and not self._overflow:
                break
        if not self.epoch and self._tail:
            # History had nothing to say about the cursor's epoch: ask, so that a reset
            # the live feed announces late (Redis back, the reader not yet) is known as old.
            _, self.epoch = await self._hub._retry(functools.partial(backend.position, topic))
        buffer, self._buffer = self._buffer or [], None
        self._notify()
        for item in buffer:
            self._advance(item)

    async def _put(self, item: Item) -> None:
        """Pass on a replayed item, waiting for room in the queue (history is paced)."""
        queue = self._queue
        if queue is None:
            self._call(item)
            return
        while len(queue) >= self.config.queue_size:
            await self._wait_change()
        self._enqueue(queue, item)

    def _receive(self, item: Item) -> None:
        """Take a live item from the feed; never blocks."""
        try:
            buffer = self._buffer
            if buffer is None:
                self._advance(item)
            elif not self._pending:
                if len(buffer) >= max(self.config.queue_size, REPLAY_CHUNK):
                    buffer.clear()
                    self._overflow = True
                buffer.append(item)
        except Exception:
            logger.exception("subscriber of %r failed", self.topic)
            self._close(ERROR)

    def _advance(self, item: Item) -> None:
        """Pass on a live item: deduplicate by sequence number, announce holes."""
        topic, tail = self.topic, self._tail
        if isinstance(item, Gap):
            first = item.first_available
            if item.reason is GapReason.RESET:
                if item.epoch and item.epoch == self.epoch:
                    return  # in the new epoch already: its replay read it from history
                self.epoch = item.epoch
                self._tail = first - 1
                if tail:
                    self._emit(Gap(topic, tail, first, item.reason, item.epoch))
                elif first > 1:
                    # Nothing held: no numbering to reset, only history that is gone.
                    self._emit(Gap(topic, tail, first))
            elif first > tail + 1:
                self._tail = first - 1
                self._emit(Gap(topic, tail, first, item.reason))
            return
        epoch = item.epoch
        if epoch != self.epoch:
            if epoch and self.epoch:
                return  # of an epoch this subscription has left (buffered while replaying)
            self.epoch = epoch
        if item.seq <= tail:
            return
        self._tail = item.seq
        if item.seq > tail + 1:
            self._emit(Gap(topic, tail, item.seq))
        self._emit(item)

    def _emit(self, item: Item) -> None:
        queue = self._queue
        if queue is None:
            self._call(item)
        elif len(queue) < self.config.queue_size:
            self._enqueue(queue, item)
        elif self.config.policy is Policy.DISCONNECT:
            STATS.slow_action(Policy.DISCONNECT, "disconnect")
            self._close(SLOW_CONSUMER)
        elif isinstance(queue, _ConflatingQueue) and isinstance(item, Message):
            conflated = queue.replace(item)
            if conflated:
                self.conflated += conflated
                STATS.slow_action(Policy.CONFLATE, "conflate", conflated)
                self._notify()
            else:
                self._drop_oldest(queue, item)
        else:
            self._drop_oldest(queue, item)

    def _call(self, item: Item) -> None:
        on_message = self._on_message
        if on_message is None:
            return  # closed meanwhile (by a callback, during a replay): nothing more passes
        self.cursor = item.seq if isinstance(item, Message) else item.first_available - 1
        on_message(item)

    def _enqueue(self, queue: _Queue, item: Item) -> None:
        if not self.closed:
            queue.append(item)
            self._notify()

    def _drop_oldest(self, queue: _Queue, item: Item) -> None:
        """Make room: drop the head of the queue and put a gap in its place."""
        reason = GapReason.DROPPED
        size = self.config.queue_size
        while queue and (len(queue) > size - 2 or isinstance(queue.head(), Gap)):
            dropped = queue.popleft()
            if isinstance(dropped, Message):
                self.dropped += 1
                STATS.slow_action(self.config.policy, "drop")
            elif dropped.reason is GapReason.RESET:
                reason = GapReason.RESET
        if isinstance(item, Gap) and not queue:
            first = item.first_available
            if item.reason is GapReason.RESET:
                reason = GapReason.RESET
            queue.appendleft(Gap(self.topic, self.cursor, first, reason))
        else:
            head = queue.head() if queue else item
            assert isinstance(head, Message)
            queue.appendleft(Gap(self.topic, self.cursor, head.seq, reason))
            queue.append(item)
        self._notify()


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Queue:
    """A subscriber's queue: a deque."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: collections.deque[Item] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def append(self, item: Item) -> None:
        self._items.append(item)

    def appendleft(self, item: Item) -> None:
        self._items.appendleft(item)

    def popleft(self) -> Item:
        return self._items.popleft()

    def head(self) -> Item:
        return self._items[0]


class _FifoQueue(_Queue):
    """For ``drop-oldest`` and ``disconnect``."""

    __slots__ = ()


class _ConflatingQueue(_Queue):
    """For ``conflate``: a queue that can also drop the queued messages of a key.

    Items in an ``OrderedDict`` by arrival number, and each key's arrival numbers in a deque:
    appending, taking the head and dropping one message are O(1), so conflating costs the
    number of messages it drops.
    """

    __slots__ = ("_arrivals", "_by_key", "_key", "_map")

    def __init__(self, key: Callable[[Any], Hashable]) -> None:
        super().__init__()
        self._key = key
        self._arrivals = itertools.count()
        self._map: collections.OrderedDict[int, tuple[Hashable, Item]] = collections.OrderedDict()
        self._by_key: dict[Hashable, collections.deque[int]] = {}

    def __len__(self) -> int:
        return len(self._map)

    def append(self, item: Item, key: Hashable = None) -> None:
        arrival = next(self._arrivals)
        if isinstance(item, Message):
            if key is None:
                key = (self._key(item.data),)
            self._by_key.setdefault(key, collections.deque()).append(arrival)
        self._map[arrival] = (key, item)

    def appendleft(self, item: Item) -> None:
        assert isinstance(item, Gap)
        arrival = next(self._arrivals)
        self._map[arrival] = (None, item)
        self._map.move_to_end(arrival, last=False)

    def popleft(self) -> Item:
        _, (key, item) = self._map.popitem(last=False)
        if isinstance(item, Message):
            arrivals = self._by_key[key]
            arrivals.popleft()
            if not arrivals:
                del self._by_key[key]
        return item

    def head(self) -> Item:
        return next(iter(self._map.values()))[1]

    def replace(self, message: Message) -> int:
        """Drop the queued messages with the key of ``message``, then queue it.

        Returns:
            How many were dropped; if none, ``message`` was not queued either.
        """
        key = (self._key(message.data),)
        arrivals = self._by_key.pop(key, None)
        if arrivals is None:
            return 0
        for arrival in arrivals:
            del self._map[arrival]
        self.append(message, key)
        return len(arrivals)


def _make_backend(backend: Backend | str | None) -> Backend:
    if backend is None or backend == "memory":
        from .memory import MemoryBackend

        return MemoryBackend()
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, str) and backend.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisBackend

        return RedisBackend(backend)
    if isinstance(backend, str) and backend.lower().startswith("redis+cluster://"):
        from .cluster import RedisClusterBackend

        return RedisClusterBackend(backend)
    raise ValueError(
        f"unknown backend: {backend!r} (use 'memory', 'redis://host:port/db' or "
        "'redis+cluster://host:port,host:port')"
    )
