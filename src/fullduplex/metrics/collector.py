"""The collector: figures kept as plain integers, turned into Prometheus metrics at scrape time.

Nothing here runs per message. A WebSocket counts its messages and bytes with one integer add
each (:class:`~fullduplex.asyncio.connection.WebSocket` attributes ``messages_received``,
``bytes_received``, ``messages_sent``, ``bytes_sent``), the hub counts publishes, deliveries,
gaps and slow-consumer actions the same way (:data:`fullduplex.hub.stats.STATS`), and the server
tells :class:`Metrics` of each handshake, close and pong (once per connection or per keepalive
ping). A scrape walks the open connections and adds their counters to those of the closed ones:
O(connections) per scrape, nothing per message. prometheus-client's own metric objects are not
used on these paths: each ``inc()`` takes a lock, which is what picows keeps off its hot path too.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..hub.stats import STATS

if TYPE_CHECKING:
    from ..asyncio.connection import WebSocket
    from ..asyncio.router import App, HTTPRoute, WebSocketRoute
    from ..asyncio.server import Server
    from ..hub import Hub
    from ..transports import Transports

__all__ = [
    "DEFAULT_MAX_CLOSE_CODES",
    "DEFAULT_MAX_TOPICS",
    "OTHER",
    "PING_BUCKETS",
    "Metrics",
]

#: Upper bounds of the ping round-trip histogram, in seconds: 1 ms on a LAN to 10 s on a
#: congested mobile link (prometheus-client's default buckets, from 1 ms).
PING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Topics given their own ``topic`` label in ``fullduplex_topic_subscribers`` (those with the
#: most subscribers); the others are summed under :data:`OTHER`. Prometheus' advice is to keep
#: a label's values in the tens: each is a time series stored for weeks.
DEFAULT_MAX_TOPICS = 50
#: Distinct close codes counted apart (1000-1015 and a few application codes); further codes
#: are counted under :data:`OTHER`, since a peer chooses the code it sends.
DEFAULT_MAX_CLOSE_CODES = 64
#: The label value of everything past a cardinality bound, and of unknown routes. Topic names
#: cannot contain ``~``, so it never collides with a real topic.
OTHER = "~other"
# Request paths whose route label is cached (paths with parameters; exact ones need none).
_MAX_LABEL_CACHE = 4096


class Metrics(Collector):
    """The figures of one application's servers, hub and transports, as a Prometheus collector.

    Created by :func:`fullduplex.metrics.mount` (or ``app.enable_metrics()``), which registers
    it and serves it; servers of the app call :meth:`attach` when they start, and then
    :meth:`handshake`, :meth:`closed` and :meth:`ping`.

    Args:
        app: the application (its routes name the ``route`` label).
        hub: the hub whose subscribers and Redis backend to report, or None.
        transports: what :func:`~fullduplex.transports.mount_all` returned, to count WebSocket
            subscribers per topic as connections rather than as the fan-out's subscriptions.
        max_topics: topics labelled apart in ``fullduplex_topic_subscribers``; None for all.
        max_close_codes: close codes labelled apart in ``fullduplex_closes_total``; None for
            all.
    """

    def __init__(
        self,
        app: App,
        *,
        hub: Hub | None = None,
        transports: Transports | None = None,
        # Limits
        max_topics: int | None = DEFAULT_MAX_TOPICS,
        max_close_codes: int | None = DEFAULT_MAX_CLOSE_CODES,
    ) -> None:
        #: The application.
        self.app = app
        #: The hub reported on, or None.
        self.hub = hub
        #: The mounted transports, or None.
        self.transports = transports
        self.max_topics = max_topics
        self.max_close_codes = max_close_codes
        self._servers: weakref.WeakSet[Server] = weakref.WeakSet()
        # Per route: connections closed, messages in, bytes in, messages out, bytes out.
        self._closed: dict[str, list[int]] = {}
        self._close_codes: dict[tuple[str, str], int] = {}
        self._handshakes: dict[tuple[str, str], int] = {}
        self._ping_counts = [0] * (len(PING_BUCKETS) + 1)
        self._ping_sum = 0.0
        self._labels: dict[str, str] = {}  # request path -> label, for parameterised routes

    # -- told by the server ------------------------------------------------------------------

    def attach(self, server: Server) -> None:
        """Report on ``server`` too (called by the server when it starts listening)."""
        self._servers.add(server)

    @property
    def servers(self) -> list[Server]:
        """The servers reported on (held weakly)."""
        return list(self._servers)

    @property
    def draining(self) -> bool:
        """True once one of the servers is shutting down."""
        return any(server.closing for server in self._servers)

    def route(self, path: str) -> str:
        """The ``route`` label of a request path: the route's path, or :data:`OTHER`.

        A path with parameters is labelled by its template (``/rooms/{room}``), never by the
        path itself, so the label's values are the app's routes, however many rooms there are.
        """
        app = self.app
        if path in app.websocket_routes or path in app.http_routes:
            return path
        label = self._labels.get(path)
        if label is None:
            label = OTHER
            routes: list[WebSocketRoute | HTTPRoute] = [*app.websocket_patterns]
            routes += app.http_patterns
            for route in routes:
                if route.pattern is not None and route.pattern.match(path):
                    label = route.path
                    break
            if len(self._labels) >= _MAX_LABEL_CACHE:
                self._labels.clear()
            self._labels[path] = label
        return label

    def handshake(self, path: str, status: int) -> None:
        """Count an opening handshake answered with ``status`` (101, or a refusal)."""
        key = (self.route(path), str(status))
        self._handshakes[key] = self._handshakes.get(key, 0) + 1

    def closed(self, ws: WebSocket) -> None:
        """Add a closed connection's counters to its route's totals, and count its code."""
        route = self.route(ws.request.path)
        totals = self._closed.get(route)
        if totals is None:
            totals = self._closed[route] = [0, 0, 0, 0, 0]
        totals[0] += 1
        totals[1] += ws.messages_received
        totals[2] += ws.bytes_received
        totals[3] += ws.messages_sent
        totals[4] += ws.bytes_sent
        code = ws.close_code
        key = (route, str(code if code is not None else 1006))
        codes = self._close_codes
        limit = self.max_close_codes
        if key not in codes and limit is not None and len(codes) >= limit:
            key = (route, OTHER)
        codes[key] = codes.get(key, 0) + 1

    def ping(self, seconds: float) -> None:
        """Record a ping's round-trip time (keepalive or ``ws.ping()``)."""
        self._ping_counts[bisect.bisect_left(PING_BUCKETS, seconds)] += 1
        self._ping_sum += seconds

    # -- read at scrape time -----------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Build every metric family from the counters (prometheus-client calls it)."""
        yield from self._connections()
        yield from self._histogram()
        yield from self._hub()
        processes = GaugeMetricFamily(
            "fullduplex_metrics_processes",
            "Processes whose figures this scrape sums (the workers that answered).",
        )
        processes.add_metric([], 1)
        yield processes

    def _connections(self) -> Iterator[Metric]:
        open_by: dict[tuple[str, str], int] = {}
        kinds = self.transports.routes if self.transports is not None else {}
        buffered: dict[str, int] = {"websocket": 0, "http": 0}
        totals = {route: list(values) for route, values in self._closed.items()}
        for server in self.servers:
            for ws in list(server.websockets):
                route = self.route(ws.request.path)
                key = ("websocket", route)
                open_by[key] = open_by.get(key, 0) + 1
                row = totals.get(route)
                if row is None:
                    row = totals[route] = [0, 0, 0, 0, 0]
                row[1] += ws.messages_received
                row[2] += ws.bytes_received
                row[3] += ws.messages_sent
                row[4] += ws.bytes_sent
                buffered["websocket"] += _buffered(ws.transport)
            for conn in list(server.connections):
                # getattr: the ASGI server's protocol keeps no request and no busy flag.
                if getattr(conn, "websocket", None) is not None:
                    continue
                request = getattr(conn, "request", None)
                if getattr(conn, "busy", False) and request is not None:
                    # An HTTP handler running: an event stream or a long poll, mostly.
                    route = self.route(request.path)
                    key = (kinds.get(route, "http"), route)
                    open_by[key] = open_by.get(key, 0) + 1
                buffered["http"] += _buffered(conn.transport)
        gauge = GaugeMetricFamily(
            "fullduplex_connections",
            "Open connections by transport and route: WebSockets, and HTTP requests being "
            "handled (transport sse, longpoll... on the hub's routes, else http).",
            labels=["transport", "route"],
        )
        for (transport, route), count in sorted(open_by.items()):
            gauge.add_metric([transport, route], count)
        yield gauge
        closed = CounterMetricFamily(
            "fullduplex_connections_closed",
            "WebSocket connections closed, by route.",
            labels=["route"],
        )
        messages = CounterMetricFamily(
            "fullduplex_messages",
            "WebSocket messages received (in) and sent (out), by route.",
            labels=["route", "direction"],
        )
        sizes = CounterMetricFamily(
            "fullduplex_message_bytes",
            "WebSocket message payload received (in) and sent (out), by route: bytes for "
            "binary messages, characters for text.",
            labels=["route", "direction"],
        )
        for route, row in sorted(totals.items()):
            closed.add_metric([route], row[0])
            messages.add_metric([route, "in"], row[1])
            sizes.add_metric([route, "in"], row[2])
            messages.add_metric([route, "out"], row[3])
            sizes.add_metric([route, "out"], row[4])
        yield from (closed, messages, sizes)
        handshakes = CounterMetricFamily(
            "fullduplex_handshakes",
            "WebSocket opening handshakes by route and HTTP status (101 accepted, else the "
            "refusal's status).",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(self._handshakes.items()):
            handshakes.add_metric([route, status], count)
        yield handshakes
        codes = CounterMetricFamily(
            "fullduplex_closes",
            "WebSocket connections closed, by route and close code (1006: no close frame).",
            labels=["route", "code"],
        )
        for (route, code), count in sorted(self._close_codes.items()):
            codes.add_metric([route, code], count)
        yield codes
        write = GaugeMetricFamily(
            "fullduplex_write_buffer_bytes",
            "Bytes waiting in write buffers (not yet taken by the kernel), by transport.",
            labels=["transport"],
        )
        for transport, size in buffered.items():
            write.add_metric([transport], size)
        yield write

    def _histogram(self) -> Iterator[Metric]:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(PING_BUCKETS, self._ping_counts[:-1], strict=True):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        cumulative += self._ping_counts[-1]
        buckets.append(("+Inf", cumulative))
        yield HistogramMetricFamily(
            "fullduplex_ping_rtt_seconds",
            "Round-trip time of WebSocket pings (keepalive and ws.ping()), server side.",
            buckets=buckets,
            sum_value=self._ping_sum,
        )

    def _hub(self) -> Iterator[Metric]:
        stats = STATS
        published = CounterMetricFamily(
            "fullduplex_hub_publishes", "Messages published through the hub."
        )
        published.add_metric([], stats.published)
        delivered = CounterMetricFamily(
            "fullduplex_hub_deliveries",
            "Messages and gaps handed to hub subscriptions (a WebSocket fan-out is one "
            "subscription for all its connections).",
        )
        delivered.add_metric([], stats.delivered)
        gaps = CounterMetricFamily(
            "fullduplex_gaps",
            "Gaps sent to clients by the transports, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(stats.gaps.items()):
            gaps.add_metric([reason], count)
        slow = CounterMetricFamily(
            "fullduplex_slow_consumer_actions",
            "What the slow-consumer policies did: drop (a message dropped, a gap tells), "
            "conflate (superseded), disconnect (a consumer closed), by policy.",
            labels=["policy", "action"],
        )
        for (policy, action), count in sorted(stats.slow.items()):
            slow.add_metric([policy, action], count)
        yield from (published, delivered, gaps, slow)
        if self.hub is not None:
            yield self._subscribers(self.hub)
            yield from _redis(self.hub.backend)

    def _subscribers(self, hub: Hub) -> Metric:
        counts = hub.subscriber_counts()
        fanout = self.transports.fanout if self.transports is not None else None
        if fanout is not None:
            for topic, (connections, internal) in fanout.topic_counts().items():
                counts[topic] = max(0, counts.get(topic, 0) - internal) + connections
        gauge = GaugeMetricFamily(
            "fullduplex_topic_subscribers",
            "Subscribers per topic (WebSocket connections, event streams, long polls, "
            "application subscriptions)"
            + (
                ""
                if self.max_topics is None
                else f"; past the {self.max_topics} largest topics, the rest are summed "
                f"under topic={OTHER!r}"
            )
            + ".",
            labels=["topic"],
        )
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        limit = len(ranked) if self.max_topics is None else self.max_topics
        for topic, count in ranked[:limit]:
            gauge.add_metric([topic], count)
        rest = ranked[limit:]
        if rest:
            gauge.add_metric([OTHER], sum(count for _, count in rest))
        return gauge


def _redis(backend: Any) -> Iterator[Metric]:
    # Duck-typed: only the Redis backend has these (and importing it needs redis).
    if not hasattr(backend, "reconnects"):
        return
    up = GaugeMetricFamily(
        "fullduplex_redis_up", "1 while the hub's Redis live feed is connected, else 0."
    )
    up.add_metric([], 1 if backend.available else 0)
    reconnects = CounterMetricFamily(
        "fullduplex_redis_reconnects", "Times the hub's Redis live feed came back after an outage."
    )
    reconnects.add_metric([], backend.reconnects)
    lag = GaugeMetricFamily(
        "fullduplex_redis_lag_seconds",
        "Seconds from the publish of the last message the Redis live feed read (Redis' "
        "clock) to its arrival here (this machine's clock).",
    )
    lag.add_metric([], backend.lag)
    yield from (up, reconnects, lag)


def _buffered(transport: Any) -> int:
    try:
        return int(transport.get_write_buffer_size())
    except (AttributeError, RuntimeError):  # pragma: no cover - a closed exotic transport
        return 0


def _bound(value: float) -> str:
    # As prometheus-client writes a bucket bound (its floatToGoString, untyped): 0.005, 1.0.
    return repr(float(value))
