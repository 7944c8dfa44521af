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
first out; an entry full again (idle long enough to have refilled) is the same as no entry and
is dropped before a new one is added.

Per-message limits (``max_messages_per_second``, ``max_bytes_per_second``) live on the
WebSocket itself (:meth:`fullduplex.asyncio.connection.WebSocket.limit_rate`).

The native server, the ASGI server (:mod:`fullduplex.asgi`) and
:class:`~fullduplex.asgi.HubApp` under any ASGI server each hold one :class:`ClientLimits`
(``Server.limits``, ``HubApp.limits``: :func:`client_limits`) and answer a refusal with
:func:`too_many_requests`.
"""

from __future__ import annotations

import math
import sys
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

    # Every handshake and request pays admit + acquire + release: 6.5k -> 5.9k user
    # instructions a round from one IP, 13.2k -> 12.2k for a new IP (bench/limits_bench.py),
    # with the bucket one float per IP and the settings read as precomputed slots. A token
    # bucket of ``capacity`` tokens
    # refilled at ``rate`` is kept as the time at which it is full again (GCRA, the "virtual
    # scheduling" form of ITU-T I.371's generic cell rate algorithm): ``tokens = capacity -
    # (full - now) * rate``. Admitting takes a token (``full += 1 / rate``) when at least one
    # is there, i.e. when ``full - now <= (capacity - 1) / rate``.
    __slots__ = (
        "_buckets",
        "_burst",
        "_clock",
        "_connections",
        "_interval",
        "_max_open",
        "_open",
        "_rate",
        "max_tracked_ips",
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
        # ip -> when its bucket is full again (monotonic), least recently seen first.
        self._buckets: OrderedDict[str, float] = OrderedDict()

    @property
    def max_connections_per_ip(self) -> int | None:
        """Open connections per IP, or None for no limit."""
        return self._connections

    @max_connections_per_ip.setter
    def max_connections_per_ip(self, limit: int | None) -> None:
        self._connections = limit
        # One integer compare in admit() whether or not there is a limit.
        self._max_open = sys.maxsize if limit is None else limit

    @property
    def rate_per_ip(self) -> float | None:
        """Handshakes and HTTP requests per IP per second, or None for no limit."""
        return self._rate

    @rate_per_ip.setter
    def rate_per_ip(self, rate: float | None) -> None:
        self._rate = rate
        if rate is None:
            self._interval = self._burst = 0.0
            return
        capacity = rate if rate > 1.0 else 1.0  # the bucket holds one second's worth
        # Seconds one token takes to come back; how far ahead of now "full again" may be
        # with a token still there.
        self._interval = 1.0 / rate
        self._burst = (capacity - 1.0) / rate

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
        if self._open.get(ip, 0) >= self._max_open:
            return 1.0
        if self._rate is None:
            return None  # no clock read without a rate
        now = self._clock()
        buckets = self._buckets
        full = buckets.get(ip)
        if full is not None:
            # Least recently seen first. (A plain dict, the entry popped and put back, saves
            # ~700 instructions here but leaves holes that next(iter()) below walks over: a
            # new IP cost 3-6x more once many entries had expired or been evicted.)
            buckets.move_to_end(ip)
            if full < now:
                full = now  # a full bucket does not fill further
            elif full - now > self._burst:
                # Less than one token: Retry-After is the time until there is one.
                return max(1.0, math.ceil(full - now - self._burst))
            buckets[ip] = full + self._interval
            return None
        # A new IP. Before its entry, drop those full again for at least (capacity - 1) /
        # rate (full is the same as absent; an entry seen once goes a whole refill,
        # capacity / rate, after): O(1) amortised. An IP already tracked skips this (a storm
        # from one IP).
        burst = self._burst
        while buckets:
            oldest_ip = next(iter(buckets))
            if buckets[oldest_ip] + burst > now:
                break
            del buckets[oldest_ip]
        if len(buckets) >= self.max_tracked_ips:
            buckets.popitem(last=False)
        buckets[ip] = now + self._interval  # full but for this request's token
        return None

    def acquire(self, ip: str) -> None:
        """Count an open connection (or a held request) of ``ip``."""
        counts = self._open
        counts[ip] = counts.get(ip, 0) + 1

    def release(self, ip: str) -> None:
        """Forget one open connection of ``ip``."""
        counts = self._open
        count = counts.get(ip, 0) - 1
        if count > 0:
            counts[ip] = count
        else:
            counts.pop(ip, None)


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
