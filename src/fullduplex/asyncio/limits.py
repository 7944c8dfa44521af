"""Abuse limits per client IP: open connections and a handshake/request rate.

The client IP is ``request.client[0]``, which :mod:`fullduplex.asyncio.proxies` has already
taken from X-Forwarded-For when (and only when) the TCP peer is a trusted proxy; nothing here
reads a header.

- **Open connections per IP** (``max_connections_per_ip``): WebSockets and HTTP requests being
  handled (a held long poll or an event stream counts while it is held; a quick request counts
  only while its handler runs). Over the limit an upgrade is refused with 429 and an HTTP
  request gets 429, both with ``Retry-After``.
- **Rate per IP** (``rate_per_ip``): WebSocket handshakes and HTTP route requests per IP per
  second, a token bucket holding one second's worth. Over it: 429 with ``Retry-After``.

Memory is bounded: the connection table has one entry per IP with open connections (removed
at zero), and the bucket table holds at most ``max_tracked_ips`` entries, least recently used
first out; an entry idle long enough to have refilled is the same as no entry and is dropped.

Per-message limits (``max_messages_per_second``, ``max_bytes_per_second``) live on the
WebSocket itself (:meth:`fullduplex.asyncio.connection.WebSocket.limit_rate`).

The native server, the ASGI server (:mod:`fullduplex.asgi`) and
:class:`~fullduplex.asgi.HubApp` under any ASGI server each hold one :class:`ClientLimits`
(``Server.limits``, ``HubApp.limits``: :func:`client_limits`) and answer a refusal with
:func:`too_many_requests`.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from ..protocol.http11 import Response
from .router import text_response

__all__ = ["DEFAULT_MAX_TRACKED_IPS", "ClientLimits", "client_limits", "too_many_requests"]

#: Entries of the per-IP rate table before the least recently seen IP is forgotten.
DEFAULT_MAX_TRACKED_IPS = 10_000


class ClientLimits:
    """Per-IP connection counts and token buckets of one server.

    Args:
        max_connections_per_ip: open connections per IP, or None for no limit.
        rate_per_ip: handshakes and HTTP requests per IP per second, or None for no limit.
        max_tracked_ips: entries of the rate table (bounded memory).
        clock: seconds, monotonic (tests pass their own).
    """

    __slots__ = (
        "_buckets",
        "_clock",
        "_open",
        "max_connections_per_ip",
        "max_tracked_ips",
        "rate_per_ip",
    )

    def __init__(
        self,
        max_connections_per_ip: int | None,
        rate_per_ip: float | None,
        max_tracked_ips: int = DEFAULT_MAX_TRACKED_IPS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.max_connections_per_ip = max_connections_per_ip
        self.rate_per_ip = rate_per_ip
        self.max_tracked_ips = max_tracked_ips
        self._open: dict[str, int] = {}
        # ip -> [tokens, last update (monotonic)], least recently seen first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        """Entries held (both tables): bounded, see the module docstring."""
        return len(self._open) + len(self._buckets)

    def open_connections(self, ip: str) -> int:
        """Connections counted for ``ip``."""
        return self._open.get(ip, 0)

    def admit(self, ip: str) -> float | None:
        """Count a new handshake or request from ``ip``.

        Returns:
            None when admitted (the caller then calls :meth:`acquire` if it holds a
            connection), else the seconds the client should wait (``Retry-After``).
        """
        limit = self.max_connections_per_ip
        if limit is not None and self._open.get(ip, 0) >= limit:
            return 1.0
        rate = self.rate_per_ip
        if rate is None:
            return None
        now = self._clock()
        buckets = self._buckets
        # Conditional expressions, not min() / max(): each of those parses its arguments as
        # keywords on Python 3.11 (~1.4k instructions a call, callgrind).
        capacity = rate if rate > 1.0 else 1.0
        bucket = buckets.get(ip)
        if bucket is None:
            # Before a new entry, drop those idle long enough to be full again (the same as
            # absent): O(1) amortised. An IP already tracked skips this (a storm from one IP).
            refill = capacity / rate
            while buckets:
                oldest_ip = next(iter(buckets))
                if now - buckets[oldest_ip][1] < refill:
                    break
                del buckets[oldest_ip]
            if len(buckets) >= self.max_tracked_ips:
                buckets.popitem(last=False)
            bucket = buckets[ip] = [capacity, now]
        else:
            buckets.move_to_end(ip)
            tokens = bucket[0] + (now - bucket[1]) * rate
            bucket[0] = tokens if tokens < capacity else capacity
            bucket[1] = now
        if bucket[0] < 1.0:
            return max(1.0, math.ceil((1.0 - bucket[0]) / rate))
        bucket[0] -= 1.0
        return None

    def acquire(self, ip: str) -> None:
        """Count an open connection (or a held request) of ``ip``."""
        self._open[ip] = self._open.get(ip, 0) + 1

    def release(self, ip: str) -> None:
        """Forget one open connection of ``ip``."""
        count = self._open.get(ip, 0) - 1
        if count > 0:
            self._open[ip] = count
        else:
            self._open.pop(ip, None)


def client_limits(
    max_connections_per_ip: int | None, rate_per_ip: float | None
) -> ClientLimits | None:
    """The :class:`ClientLimits` of these settings; None when both are None (nothing counted)."""
    if max_connections_per_ip is None and rate_per_ip is None:
        return None
    return ClientLimits(max_connections_per_ip, rate_per_ip)


def too_many_requests(wait: float) -> Response:
    """The answer to a client IP over its limits: 429 with ``Retry-After`` (whole seconds).

    Args:
        wait: what :meth:`ClientLimits.admit` returned.
    """
    # RFC 6585 4: 429 Too Many Requests, MAY include Retry-After (RFC 7231 7.1.3).
    retry = [("Retry-After", str(math.ceil(wait)))]
    return text_response("too many requests from this address\n", 429, retry)
