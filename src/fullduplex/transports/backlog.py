"""Bounded backlogs: what a consumer has not taken yet, under the topic's slow-consumer policy.

The WebSocket broadcast (:mod:`~fullduplex.transports.broadcast`) and the event stream
(:mod:`~fullduplex.transports.sse`) take messages from the hub in callback mode (no
queue and no task per subscriber inside the hub) and keep what they cannot write at once in a
:class:`Backlog`, one per topic and consumer, of at most ``queue_size`` messages:

* ``drop-oldest``: when full, the oldest message is dropped; the consumer later receives a
  :class:`~fullduplex.hub.Gap` covering it, then the newer messages. A consumer that can read
  the hub's history (``from_history=True``: event streams and long polls) is not given a gap:
  the backlog is marked :attr:`~Backlog.behind` and the consumer reads what was dropped back
  from history (:meth:`Backlog.catch_up`), so only what history no longer holds becomes a gap
  (``trimmed``, as history says);
* ``conflate``: when the backlog is full, a new message replaces the waiting one with the same
  ``conflate_key`` (a function of the data; None: any waiting message) without a gap (sequence
  numbers jump by design); with no such message, the oldest is dropped with a gap as above.
  Conflating only when full means a consumer that keeps up sees every message, however its
  messages are batched (the hub's queue mode conflates at once);
* ``disconnect``: when full, :meth:`Backlog.push` says so and the consumer is disconnected;
  unless the consumer had no chance to take what filled it (``push(item, slow=False)``: a
  burst, such as a history replay, that arrived while it was not waiting on its client): then
  a ``from_history`` backlog falls behind and reads from history as under ``drop-oldest``.
  Disconnecting a consumer for the server's own burst would drop it again on every
  reconnection, as each one replays more than the backlog holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

from ..hub import Gap, GapReason, Message, Policy, TopicConfig, whole_topic
from ..hub.stats import STATS

__all__ = ["Backlog", "Mailbox"]


class Backlog:
    """Messages of one topic waiting for one consumer, and where that consumer stands.

    Args:
        topic: the topic.
        config: the topic's configuration (policy, queue size, conflate key).
        since: the consumer's cursor when it subscribed, None if unknown (live only).
        from_history: on overflow (``drop-oldest``, and ``conflate`` with no message of the
            key waiting), mark the backlog :attr:`behind` rather than report a ``dropped``
            gap: the consumer reads the dropped messages back from the hub's history
            (:meth:`catch_up`). Needs ``since``.
    """

    __slots__ = (
        "_latest",
        "_loss",
        "behind",
        "config",
        "conflate",
        "dropped",
        "from_history",
        "overflowed",
        "pending",
        "sent",
        "topic",
    )

    def __init__(
        self, topic: str, config: TopicConfig, since: int | None, *, from_history: bool = False
    ) -> None:
        if from_history and since is None:
            raise ValueError("from_history needs a cursor (since)")
        #: The topic.
        self.topic = topic
        #: The topic's configuration.
        self.config = config
        #: The conflate key of a message, under the ``conflate`` policy; else None.
        self.conflate = _key_function(config)
        #: The seq of the last message handed out (the consumer's cursor), or None.
        self.sent = since
        #: Messages waiting, oldest first.
        self.pending: dict[Hashable, Message | Gap] = {}
        #: Messages dropped or conflated away.
        self.dropped = 0
        #: True once full under the ``disconnect`` policy.
        self.overflowed = False
        #: Whether overflows are read back from history (see the class docstring).
        self.from_history = from_history
        #: True while messages after :attr:`sent` were dropped from the backlog but are to be
        #: read from history (:meth:`catch_up`) before :meth:`pop` hands out more.
        self.behind = False
        self._loss: tuple[int, GapReason] | None = None  # a loss not reported yet
        self._latest: dict[Hashable, int] = {}  # conflate key -> seq of its latest message

    def push(self, item: Message | Gap, *, slow: bool = True) -> bool:
        """Add what the hub delivered; False if full under the ``disconnect`` policy.

        Args:
            item: the message or gap.
            slow: whether a full backlog is the consumer's fault (it is waiting for its
                client to read); with False, a ``from_history`` backlog under ``disconnect``
                falls :attr:`behind` instead (see the module docstring).
        """
        pending = self.pending
        if isinstance(item, Gap):
            pending[object()] = item  # gaps are never conflated
        else:
            conflate = self.conflate
            if conflate is not None:
                key = conflate(item)
                if len(pending) >= self.config.queue_size:
                    older = self._latest.get(key)
                    if older is not None and pending.pop(older, None) is not None:
                        self.dropped += 1  # conflated: superseded by a newer one
                        STATS.slow_action(Policy.CONFLATE, "conflate")
                self._latest[key] = item.seq
            pending[item.seq] = item
        if len(pending) <= self.config.queue_size:
            return True
        if self.config.policy == Policy.DISCONNECT and (slow or not self.from_history):
            if not self.overflowed:
                STATS.slow_action(Policy.DISCONNECT, "disconnect")
            self.overflowed = True
            return False
        oldest = pending.pop(next(iter(pending)))
        if self.from_history:
            # Still in history (or history says it is gone): read back by catch_up().
            self.behind = True
            return True
        if isinstance(oldest, Gap):
            self._record_loss(oldest.since, oldest.reason)
        else:
            self.dropped += 1
            STATS.slow_action(self.config.policy, "drop")
            self._record_loss(oldest.seq - 1, GapReason.DROPPED)
        return True

    def pop(self) -> Message | Gap | None:
        """The next thing to send: a gap for a loss, then the oldest item; None if empty.

        Moves :attr:`sent` past what it returns.
        """
        pending = self.pending
        if not pending:
            return None
        key = next(iter(pending))
        first = pending[key]
        loss, self._loss = self._loss, None
        if loss is not None:
            since, reason = loss
            if isinstance(first, Gap):
                # One gap for both: from the older cursor to where the hub's gap ends.
                del pending[key]
                if first.reason is GapReason.RESET:
                    reason = GapReason.RESET
                first = Gap(self.topic, since, first.first_available, reason)
                self.skip(first)
                return first
            if first.seq > since + 1:
                gap = Gap(self.topic, since, first.seq, reason)
                self.skip(gap)
                return gap
        del pending[key]
        if not pending:
            self._latest.clear()
        self.skip(first)
        return first

    def skip(self, item: Message | Gap) -> None:
        """Record ``item`` as handed out without going through the backlog (the fast path)."""
        if isinstance(item, Gap):
            # The hub's rule: after a gap the cursor is first_available - 1 (lower on a reset).
            self.sent = item.first_available - 1
        else:
            self.sent = item.seq

    def catch_up(
        self, gap: Gap | None, messages: list[Message], complete: bool
    ) -> list[Message | Gap]:
        """Take a history read after :attr:`sent` (while :attr:`behind`); return what to send.

        Args:
            gap: the gap history reported before ``messages`` (trimmed or reset), if any.
            messages: what history returned after :attr:`sent`.
            complete: whether history returned everything it had (fewer than asked for).

        Returns:
            The items to hand out, in order. What the backlog still holds that they cover
            is discarded; :attr:`behind` is cleared once the backlog continues them.
        """
        items: list[Message | Gap] = []
        if gap is not None:
            items.append(gap)
            self.skip(gap)
        for message in messages:
            if self.sent is None or message.seq > self.sent:
                items.append(message)
                self.sent = message.seq
        sent = self.sent if self.sent is not None else 0
        pending = self.pending
        while pending:
            key = next(iter(pending))
            head = pending[key]
            if isinstance(head, Message):
                if head.seq > sent:
                    break
            elif head.reason is GapReason.RESET:
                # Announced already if history reported the reset; else news, kept.
                if gap is None or gap.reason is not GapReason.RESET:
                    break
            elif head.first_available > sent + 1:
                break
            del pending[key]
        if complete or (pending and _continues(pending, sent)):
            self.behind = False
        if not pending:
            self._latest.clear()
        return items

    def __bool__(self) -> bool:
        return bool(self.pending) or self.behind

    def _record_loss(self, before: int, reason: GapReason) -> None:
        if self._loss is None:
            since = self.sent if self.sent is not None else before
            self._loss = (since, reason)
        elif reason is GapReason.RESET:
            self._loss = (self._loss[0], reason)


class Mailbox:
    """Backlogs of several topics for one consumer task, with a wake-up.

    The hub's callbacks :meth:`put` items; the consumer awaits :meth:`wait` and takes them with
    :meth:`take`. No task: one future, created only while the consumer waits.

    Args:
        on_overflow: called once when a backlog overflows under the ``disconnect`` policy
            (the consumer may be stuck in a write and not see it for a while).
        busy: whether the consumer is waiting for its client to read now: a backlog that
            overflows meanwhile is the client's slowness. None: never (a long poll answers
            at once, never waits on its client), so under ``disconnect`` its backlogs fall
            behind and are read from history instead (:meth:`Backlog.push`).
    """

    def __init__(
        self,
        on_overflow: Callable[[], None] | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self._on_overflow = on_overflow
        self._busy = busy
        #: Backlog of each topic, in subscription order.
        self.backlogs: dict[str, Backlog] = {}
        #: True once a backlog overflowed under the ``disconnect`` policy.
        self.overflowed = False
        #: True once :meth:`close` was called.
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def add(self, backlog: Backlog) -> Callable[[Message | Gap], None]:
        """Track ``backlog``; return the hub callback that fills it."""
        self.backlogs[backlog.topic] = backlog

        def put(item: Message | Gap) -> None:
            slow = self._busy is not None and self._busy()
            if not backlog.push(item, slow=slow) and not self.overflowed:
                self.overflowed = True
                if self._on_overflow is not None:
                    self._on_overflow()
            self._wake()

        return put

    def close(self) -> None:
        """End it: wake the consumer, which sees :attr:`closed`."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> list[Message | Gap]:
        """Everything waiting, topic by topic, each topic in order.

        A backlog that is :attr:`~Backlog.behind` is left alone: the consumer catches it up
        from history first (:meth:`Backlog.catch_up`).
        """
        items: list[Message | Gap] = []
        for backlog in self.backlogs.values():
            if backlog.behind:
                continue
            while (item := backlog.pop()) is not None:
                items.append(item)
        return items

    def __bool__(self) -> bool:
        return any(self.backlogs.values())

    async def wait(self, timeout: float | None) -> bool:
        """Wait until something is waiting or ``timeout`` passes; True if something is."""
        if self or self.overflowed or self.closed:
            return True
        # A future and a timer, not asyncio.wait_for (which adds its own future, callbacks and,
        # on Python 3.11, a timeout context): this runs once per held long poll.
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return bool(self or self.overflowed or self.closed)


def _continues(pending: dict[Hashable, Message | Gap], sent: int) -> bool:
    head = pending[next(iter(pending))]
    return isinstance(head, Gap) or head.seq == sent + 1


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _key_function(config: TopicConfig) -> Callable[[Message], Hashable] | None:
    if config.policy != Policy.CONFLATE:
        return None
    key = config.conflate_key or whole_topic
    return lambda message: key(message.data)
