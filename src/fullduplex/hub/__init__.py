"""Pub/sub for every transport: topics, sequence numbers, history, bounded subscribers.

See :mod:`fullduplex.hub.hub` for how fan-out and resuming work, :mod:`fullduplex.hub.base`
for the data types and the backend interface, and :mod:`fullduplex.hub.redis` for how topics
map onto Redis streams, and :mod:`fullduplex.hub.cluster` for Redis Cluster.
:class:`RedisBackend` and :class:`RedisClusterBackend` are imported on first use, so ``redis``
is needed only by those who use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    CLOSED,
    ERROR,
    HUB_CLOSED,
    MAX_SEQ,
    SLOW_CONSUMER,
    Backend,
    Gap,
    GapReason,
    HubError,
    HubUnavailable,
    Message,
    Policy,
    SubscriptionClosed,
    TooManyTopics,
    TopicConfig,
    check_since,
    whole_topic,
)
from .drops import Drop, DropLog
from .hub import Hub, Subscription
from .memory import MemoryBackend
from .presence import MemoryPresence, Presence, RedisPresence
from .stats import STATS, HubStats

if TYPE_CHECKING:
    from .cluster import RedisClusterBackend
    from .redis import RedisBackend

__all__ = [
    "CLOSED",
    "ERROR",
    "HUB_CLOSED",
    "MAX_SEQ",
    "SLOW_CONSUMER",
    "STATS",
    "Backend",
    "Drop",
    "DropLog",
    "Gap",
    "GapReason",
    "Hub",
    "HubError",
    "HubStats",
    "HubUnavailable",
    "MemoryBackend",
    "MemoryPresence",
    "Message",
    "Policy",
    "Presence",
    "RedisBackend",
    "RedisClusterBackend",
    "RedisPresence",
    "Subscription",
    "SubscriptionClosed",
    "TooManyTopics",
    "TopicConfig",
    "check_since",
    "whole_topic",
]


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        from .redis import RedisBackend

        return RedisBackend
    if name == "RedisClusterBackend":
        from .cluster import RedisClusterBackend

        return RedisClusterBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
