"""What every hub backend shares: messages, gaps, topic settings and the backend interface.

A topic is an ordered log. Each published message gets the topic's next sequence number,
starting at 1, with no holes; the last messages are kept as history, bounded by count and by
age (:class:`TopicConfig`). A subscriber that asks for messages the history no longer holds gets
a :class:`Gap` first: nothing is ever skipped silently.

Exceptions derive from :class:`~fullduplex.protocol.exceptions.FullduplexError`::

    FullduplexError
    └── HubError                      raised by fullduplex.hub
        ├── SubscriptionClosed        reading a closed and drained subscription
        └── HubUnavailable            the backend (Redis) cannot be reached
            └── TooManyTopics         the backend keeps its most topics, all in use
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..protocol.exceptions import FullduplexError

__all__ = [
    "CLOSED",
    "DEFAULT_HISTORY_AGE",
    "DEFAULT_HISTORY_SIZE",
    "DEFAULT_PUBLISH_KEY_TTL",
    "DEFAULT_QUEUE_SIZE",
    "ERROR",
    "HUB_CLOSED",
    "MAX_SEQ",
    "SLOW_CONSUMER",
    "Backend",
    "Deliver",
    "Gap",
    "GapReason",
    "HubError",
    "HubUnavailable",
    "Message",
    "Policy",
    "SubscriptionClosed",
    "TooManyTopics",
    "TopicConfig",
    "check_since",
    "whole_topic",
]

#: Messages of history kept per topic (a reconnect within 1000 messages resumes exactly).
DEFAULT_HISTORY_SIZE = 1000
#: Seconds of history kept per topic (Socket.IO's connection state recovery keeps 2 minutes;
#: an hour covers a laptop waking up).
DEFAULT_HISTORY_AGE = 3600.0
#: Messages queued per subscriber before the topic's policy applies (websockets queues 16
#: received messages; a hub subscriber is one write away from a socket, so more slack).
DEFAULT_QUEUE_SIZE = 256

#: Seconds a backend shared between processes remembers a publish's idempotency key (a
#: client retries within seconds to a minute of a lost answer).
DEFAULT_PUBLISH_KEY_TTL = 300.0

#: Largest sequence number (a signed 64-bit integer, as Redis counts stream IDs).
MAX_SEQ = 2**63 - 1

#: Close reason: the subscriber's queue was full under :attr:`Policy.DISCONNECT`. The WebSocket
#: transport closes with 1008 (policy violation) or 1013 (try again later).
SLOW_CONSUMER = "slow consumer"
#: Close reason: :meth:`Subscription.close <fullduplex.hub.Subscription.close>` was called.
CLOSED = "closed"
#: Close reason: the hub was closed.
HUB_CLOSED = "hub closed"
#: Close reason: the ``on_message`` callback raised (the exception is logged).
ERROR = "error"


class HubError(FullduplexError):
    """Root of the exceptions raised by :mod:`fullduplex.hub`."""


class SubscriptionClosed(HubError):
    """The subscription is closed and every message queued before has been read.

    Args:
        reason: why it was closed: :data:`SLOW_CONSUMER`, :data:`CLOSED`, :data:`HUB_CLOSED`
            or :data:`ERROR`.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        #: Why the subscription was closed.
        self.reason = reason


class HubUnavailable(HubError, ConnectionError):
    """The backend cannot be reached (Redis is down or unreachable).

    Raised by :meth:`Hub.publish <fullduplex.hub.Hub.publish>`, :meth:`Hub.history
    <fullduplex.hub.Hub.history>` and :meth:`Hub.last_seq <fullduplex.hub.Hub.last_seq>`;
    subscriptions never see it: they wait and resume by themselves. After a publish raises
    it, the message may or may not have been published (the connection may have dropped after
    Redis applied it), so publishing again may publish it twice, under two sequence numbers.
    """


class TooManyTopics(HubUnavailable):
    """A new topic is refused: the backend keeps its most topics and none can be dropped.

    The in-memory backend keeps at most ``max_topics`` topics and drops idle ones for room;
    when every topic kept has listeners, publishing to or subscribing to a new topic raises
    this. A :class:`HubUnavailable`, since retrying later may succeed: transports answer 503
    (HTTP) or an error reply (WebSocket), with the message ``"too many topics"``.
    """


class Policy(str, enum.Enum):
    """What a subscriber's full queue does with a new message.

    (A ``str`` enum, like ``enum.StrEnum``, which Python 3.10 lacks.)
    """

    #: Drop the oldest queued messages and queue a :class:`Gap` (reason ``dropped``) in their
    #: place, so the subscriber knows what to fetch again from history.
    DROP_OLDEST = "drop-oldest"
    #: Keep only the latest message per key (:attr:`TopicConfig.conflate_key`): a new message
    #: replaces the queued ones with the same key. Ticker semantics: superseded messages are
    #: dropped by design, counted in ``Subscription.conflated``, with no gap. When the queue
    #: is full of other keys, the oldest are dropped as with :attr:`DROP_OLDEST`.
    CONFLATE = "conflate"
    #: Close the subscription with reason :data:`SLOW_CONSUMER`.
    DISCONNECT = "disconnect"

    def __str__(self) -> str:
        return self.value


class GapReason(str, enum.Enum):
    """Why messages are missing; see :class:`Gap`."""

    #: Trimmed from history (count or age): gone for good.
    TRIMMED = "trimmed"
    #: Dropped from this subscriber's full queue (:attr:`Policy.DROP_OLDEST`): still in
    #: history, unless trimmed since; fetch them with ``Hub.history(topic, gap.since)``.
    DROPPED = "dropped"
    #: The topic's sequence restarted (the backend lost its data, e.g. a Redis without
    #: persistence restarted): ``first_available <= since``; resynchronize from scratch.
    RESET = "reset"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Message:
    """A published message.

    Attributes:
        topic: the topic it was published on.
        seq: its sequence number in the topic: 1, 2, 3... with no holes.
        data: the JSON-serializable payload.
        time: when it was published, in seconds since the epoch (with Redis, Redis' clock).
        epoch: the topic's numbering it belongs to (see :class:`Gap`); "" if unknown. Not
            compared: two messages are equal when topic, seq, data and time are.
    """

    topic: str
    seq: int
    data: Any
    time: float
    epoch: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages a subscriber asked for and will not get in order.

    Messages with ``since < seq < first_available`` are missing; the next message is
    ``first_available`` (when it exists). A subscriber that takes a gap has its cursor moved
    to ``first_available - 1``.

    Attributes:
        topic: the topic.
        since: the last sequence number the subscriber had before the gap.
        first_available: the first sequence number it gets after the gap.
        reason: why (:class:`GapReason`); trimmed unless said otherwise.
        epoch: for a ``reset``, the topic's new epoch: an opaque string naming one numbering
            of the topic, which changes when the backend loses the topic's data (Redis
            without persistence restarted) and numbers it from 1 again. A cursor is exact
            only within its epoch; giving it back with ``since`` (``epoch=``) lets a hub
            tell a stale cursor from a current one even when the new numbering has passed
            it. Not compared.
    """

    topic: str
    since: int
    first_available: int
    reason: GapReason = GapReason.TRIMMED
    epoch: str = field(default="", compare=False)

    @property
    def missing(self) -> int:
        """How many messages are missing (0 for a reset, where it is unknown)."""
        return max(0, self.first_available - self.since - 1)


@dataclass
class TopicConfig:
    """Limits and slow-consumer policy of a topic, set with ``Hub.configure``.

    Attributes:
        history_size: messages kept in history; None keeps any number (``history_age`` still
            applies); 0 keeps none.
        history_age: seconds a message stays in history; None keeps them forever
            (``history_size`` still applies).
        queue_size: messages (and gaps) queued per queue-mode subscriber before ``policy``
            applies; at least 2, room for a gap and a message.
        policy: what a full queue does with a new message.
        conflate_key: with :attr:`Policy.CONFLATE`, the key of a message's data (e.g.
            ``lambda d: d["symbol"]``); None conflates the whole topic: only the latest
            message is kept.
    """

    # Limits
    history_size: int | None = DEFAULT_HISTORY_SIZE
    history_age: float | None = DEFAULT_HISTORY_AGE
    queue_size: int = DEFAULT_QUEUE_SIZE
    policy: Policy = Policy.DROP_OLDEST
    conflate_key: Callable[[Any], Hashable] | None = None

    def __post_init__(self) -> None:
        if self.history_size is not None and self.history_size < 0:
            raise ValueError("history_size must be None or at least 0")
        if self.history_age is not None and not (
            self.history_age > 0 and math.isfinite(self.history_age)
        ):
            raise ValueError("history_age must be None or a positive number of seconds")
        if self.queue_size < 2:
            raise ValueError("queue_size must be at least 2")
        self.policy = Policy(self.policy)


def check_since(value: object) -> int:
    """Return ``value`` if it is a cursor: an int (not a bool) from 0 to :data:`MAX_SEQ`.

    The one rule for cursors: the hub checks ``since`` with it, and the transports after
    parsing what clients send (``fullduplex.transports.common.parse_since``).

    Raises:
        ValueError: anything else.
    """
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise ValueError("since must be a sequence number: an integer from 0 to 2**63-1")
    return value


def whole_topic(data: Any) -> Hashable:
    """The conflate key when :attr:`TopicConfig.conflate_key` is None: one for the whole topic."""
    return None


#: How a backend hands messages to the hub. A :class:`Gap` (reason ``trimmed`` or ``reset``)
#: says the topic's live feed continues at ``first_available``; a ``reset`` carries the
#: topic's new epoch.
Deliver = Callable[[Message | Gap], None]


class Backend(abc.ABC):
    """Where topics live: sequence numbers, history and the live feed.

    The :class:`~fullduplex.hub.Hub` does the fan-out to subscribers and applies the queue
    policies; a backend only stores and feeds. Backends are imported lazily, so optional
    dependencies (``redis``) are needed only when used. Modelled on encode/broadcaster's
    ``BroadcastBackend``, with history and sequence numbers added.

    Contract:

    * :meth:`publish` gives the topic's next sequence number, atomically across every hub
      sharing the backend.
    * After :meth:`listen` ``(topic, after)``, every message of the topic with a sequence
      number above ``after`` is passed to ``deliver`` (given to :meth:`start`), in order, once;
      messages no longer available are announced by a :class:`Gap` instead, never skipped
      silently. ``deliver`` is called from the event loop and must not block.
    """

    @abc.abstractmethod
    async def start(self, deliver: Deliver) -> None:
        """Connect, and from now on pass listened topics' messages to ``deliver``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering and release connections."""

    @abc.abstractmethod
    async def publish(
        self, topic: str, data: Any, config: TopicConfig, key: str | None = None
    ) -> Message:
        """Append ``data`` to ``topic``, trim its history per ``config``, and return it.

        ``key`` is the publish's idempotency key, or None. A backend shared between processes
        answers a publish whose key it saw for the topic within its key TTL with that first
        publish's message (its sequence number, time and epoch) instead of publishing again,
        so a retry that lands on another process is not published twice. A backend of one
        process may ignore it: :class:`~fullduplex.transports.PublishKeys` covers one process.
        The :class:`Hub` passes ``key`` only when there is one.

        Raises:
            TypeError: ``data`` is not JSON-serializable.
            HubUnavailable: the backend cannot be reached.
        """

    @abc.abstractmethod
    async def history(
        self,
        topic: str,
        since: int,
        limit: int | None,
        config: TopicConfig,
        epoch: str | None = None,
    ) -> tuple[Gap | None, list[Message]]:
        """Messages after ``since``, oldest first, at most ``limit``.

        Args:
            topic: the topic.
            since: the cursor.
            limit: at most this many messages; None for all.
            config: the topic's settings (history limits).
            epoch: the epoch ``since`` belongs to, if known: a different one (with
                ``since > 0``) is a reset.

        Returns:
            A :class:`Gap` when messages after ``since`` were trimmed (or the topic was
            reset: ``since`` is above its last sequence number, or of another epoch), then
            the messages from ``gap.first_available`` on; else None and the messages after
            ``since``.
        """

    @abc.abstractmethod
    async def last_seq(self, topic: str) -> int:
        """The topic's last sequence number; 0 if nothing was ever published."""

    def admit(self, topic: str) -> None:
        """Check that ``topic`` may be listened to here, before the hub opens its live feed.

        A backend keeping a bounded number of topics in memory makes room here (or refuses).
        Nothing by default.

        Raises:
            TooManyTopics: the backend refuses a new topic.
        """
        return None

    async def prepare_listen(self, topic: str) -> None:
        """Get ready to :meth:`listen` to ``topic``, before the hub reads its position.

        A backend whose live feed is a subscription makes it here, so that nothing
        published after that position is missed or delivered late. Nothing by default.
        :meth:`unlisten` undoes it.

        Raises:
            HubUnavailable: the backend cannot be reached.
        """
        return None

    async def position(self, topic: str) -> tuple[int, str]:
        """The topic's last sequence number and its epoch ("" if unknown)."""
        return await self.last_seq(topic), ""

    def last_seq_nowait(self, topic: str) -> int | None:
        """The topic's last sequence number if known without I/O, else None."""
        return None

    def epoch_nowait(self, topic: str) -> str:
        """The topic's epoch if known without I/O, else ""."""
        return ""

    @abc.abstractmethod
    def listen(self, topic: str, after: int, epoch: str = "") -> None:
        """Start delivering the topic's messages with a sequence number above ``after``.

        ``epoch`` is the epoch ``after`` belongs to, if known: a backend that sees the
        topic's epoch change delivers a ``reset`` gap (with the new epoch) first.
        """

    @abc.abstractmethod
    def unlisten(self, topic: str) -> None:
        """Stop delivering the topic's messages."""

    # Notes: short records with a lifetime, shared by every hub on the backend (why a
    # subscriber was dropped: :class:`~fullduplex.hub.drops.DropLog`). A backend of one
    # process keeps none: its hubs keep them in memory themselves.

    #: Whether :meth:`set_notes` stores notes that every hub on this backend can read.
    shares_notes = False

    async def set_notes(self, notes: Mapping[str, str], ttl: float) -> None:
        """Store each ``name: value`` for ``ttl`` seconds, readable by every hub on the backend.

        The default keeps nothing (see :attr:`shares_notes`).

        Raises:
            HubUnavailable: the backend cannot be reached.
        """
        return None

    async def pop_note(self, name: str) -> str | None:
        """The note stored under ``name``, deleted as it is read; None if absent or expired.

        Raises:
            HubUnavailable: the backend cannot be reached.
        """
        return None
