"""The former name of :mod:`fullduplex.transports.sse` (the SSE route), kept for old imports."""

from __future__ import annotations

from .sse import (
    DEFAULT_EVENT_CACHE_BYTES,
    DEFAULT_EVENT_CACHE_SIZE,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_MAX_SSE_TOPICS,
    DEFAULT_RETRY,
    EventCache,
    mount_sse,
)

__all__ = [
    "DEFAULT_EVENT_CACHE_BYTES",
    "DEFAULT_EVENT_CACHE_SIZE",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_MAX_SSE_TOPICS",
    "DEFAULT_RETRY",
    "EventCache",
    "mount_sse",
]
