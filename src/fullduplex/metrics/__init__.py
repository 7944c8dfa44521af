"""Operations: Prometheus metrics at ``/metrics``, and ``/healthz`` and ``/readyz``.

One call turns them on::

    app.enable_metrics(hub=hub)            # or fullduplex.metrics.mount(app, hub=hub)

or ``fullduplex serve --metrics`` (on in the demo). The metrics, all prefixed ``fullduplex_``:

=======================================  =========  ============================================
metric                                   type       labels
=======================================  =========  ============================================
``connections``                          gauge      ``transport`` (websocket, sse, longpoll,
                                                    poll, publish, http), ``route``
``handshakes_total``                     counter    ``route``, ``status`` (101 or the refusal's)
``messages_total``                       counter    ``route``, ``direction`` (in, out)
``message_bytes_total``                  counter    ``route``, ``direction``
``connections_closed_total``             counter    ``route``
``closes_total``                         counter    ``route``, ``code`` (1006: no close frame)
``ping_rtt_seconds``                     histogram
``write_buffer_bytes``                   gauge      ``transport``
``slow_consumer_actions_total``          counter    ``policy``, ``action`` (drop, conflate,
                                                    disconnect)
``hub_publishes_total``                  counter
``hub_deliveries_total``                 counter
``gaps_total``                           counter    ``reason`` (trimmed, dropped, reset)
``topic_subscribers``                    gauge      ``topic`` (the largest ``max_topics``, then
                                                    ``~other``)
``redis_up``, ``redis_lag_seconds``      gauge      (with the Redis backend)
``redis_reconnects_total``               counter
``metrics_processes``                    gauge      (workers summed by this scrape)
=======================================  =========  ============================================

Cost: nothing per message beyond the per-connection integer adds the WebSocket always does
(see :mod:`~fullduplex.metrics.collector`); one dict update per handshake, per close and per
ping. A scrape is O(open connections + topics).

Several workers: see :mod:`~fullduplex.metrics.workers` (the scraped worker sums the others).

An ASGI application (:class:`fullduplex.asgi.ASGIAdapter`): ``adapter.enable_metrics()``
answers the three paths in front of the application and passes every other request to it.

Health: ``/healthz`` answers 200 while the process serves; ``/readyz`` answers 200 when the
hub's backend answers (a Redis round trip, at most ``ready_timeout`` seconds), 503 while it
does not or while the server shuts down.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from ..protocol.http11 import Headers, Request, Response
from .collector import DEFAULT_MAX_CLOSE_CODES, DEFAULT_MAX_TOPICS, OTHER, PING_BUCKETS, Metrics
from .workers import ENV_DIR, Merged, WorkerPeers, merge, prepare_directory

if TYPE_CHECKING:
    from ..asyncio.router import App
    from ..hub import Hub
    from ..transports import Transports

__all__ = [
    "DEFAULT_MAX_CLOSE_CODES",
    "DEFAULT_MAX_TOPICS",
    "DEFAULT_READY_TIMEOUT",
    "ENV_DIR",
    "OTHER",
    "PING_BUCKETS",
    "READY_TOPIC",
    "Metrics",
    "WorkerPeers",
    "merge",
    "mount",
    "prepare_directory",
]

#: Seconds ``/readyz`` waits for the hub's backend before answering 503 (load balancers
#: usually time a probe out after 1-5 s).
DEFAULT_READY_TIMEOUT = 2.0
#: The topic ``/readyz`` asks the backend about (a read: nothing is created).
READY_TOPIC = "fullduplex.readyz"


def mount(
    app: App,
    path: str = "/metrics",
    *,
    hub: Hub | None = None,
    transports: Transports | None = None,
    registry: CollectorRegistry | None = None,
    health: bool = True,
    workers_dir: str | None = None,
    auth: Any = None,
    # Timeouts
    ready_timeout: float | None = DEFAULT_READY_TIMEOUT,
    # Limits
    max_topics: int | None = DEFAULT_MAX_TOPICS,
    max_close_codes: int | None = DEFAULT_MAX_CLOSE_CODES,
) -> Metrics:
    """Count ``app``'s connections and serve the metrics at ``path`` (and health routes).

    Args:
        app: the application.
        path: the metrics route.
        hub: the hub to report on (subscribers per topic, Redis) and whose backend ``/readyz``
            checks; None takes ``app.hub`` if the app has one (the demo does).
        transports: what :func:`~fullduplex.transports.mount_all` returned; None takes
            ``app.transports`` if the app has it.
        registry: the registry to add the collector to and to serve, e.g.
            ``prometheus_client.REGISTRY`` to serve the application's own metrics and the
            process metrics alongside; None for a registry of its own.
        health: also serve ``/healthz`` and ``/readyz``.
        workers_dir: the directory shared by worker processes (see
            :mod:`~fullduplex.metrics.workers`); None reads ``$FULLDUPLEX_METRICS_DIR``, and
            without it the process answers for itself alone.
        auth: the authenticator of the metrics route: None for none (the usual: restrict
            it at the proxy or the network, see docs/deploy.md), ``APP_AUTH`` for the
            app's. The health routes never ask for credentials (probes carry none).
        ready_timeout: seconds ``/readyz`` waits for the backend; None waits as long as it
            takes.
        max_topics: topics labelled apart in ``fullduplex_topic_subscribers``; None for
            every topic (unbounded: only with few, fixed topics).
        max_close_codes: close codes labelled apart in ``fullduplex_closes_total``; None
            for every code.

    Returns:
        The collector (also ``app.metrics``).

    Raises:
        RuntimeError: metrics are already enabled on ``app``.
    """
    if app.metrics is not None:
        raise RuntimeError("metrics are already enabled on this app")
    if hub is None:
        hub = getattr(app, "hub", None)
    if transports is None:
        transports = getattr(app, "transports", None)
    metrics = Metrics(
        app,
        hub=hub,
        transports=transports,
        max_topics=max_topics,
        max_close_codes=max_close_codes,
    )
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    app.metrics = metrics
    directory = workers_dir or os.environ.get(ENV_DIR)
    peers: WorkerPeers | None = None
    if directory:
        peers = WorkerPeers(directory, lambda: generate_latest(registry))
        app.on_startup(peers.start)
        app.on_shutdown(peers.close)
    answers: dict[str, Answer] = {path: _scrape(registry, peers)}
    if health:
        answers["/healthz"] = _healthz
        answers["/readyz"] = _readyz(metrics, hub, ready_timeout)
    if app.protocol_factory is not None:
        # An ASGI application (fullduplex.asgi.ASGIAdapter): every request goes to it, so
        # these paths are answered in front of it, at the ASGI level.
        inner = getattr(app, "app", None)
        if inner is None or not callable(inner):
            raise TypeError(f"cannot serve metrics for {type(app).__name__}")
        app.app = _OpsASGI(inner, answers)  # type: ignore[attr-defined]
    else:
        for route, answer in answers.items():
            app.get(route, auth=auth if route == path else None)(_native(answer))
    return metrics


#: What an operations route answers: status, content type, body.
Answer = Callable[[], Awaitable[tuple[int, str, bytes]]]
_TEXT = "text/plain; charset=utf-8"


def _scrape(registry: CollectorRegistry, peers: WorkerPeers | None) -> Answer:
    async def scrape() -> tuple[int, str, bytes]:
        body = generate_latest(registry)
        if peers is not None:
            others = await peers.gather()
            if others:
                body = generate_latest(Merged(merge([body.decode(), *others])))
        # The classic text format, which every Prometheus version reads (prometheus-client
        # 0.26's CONTENT_TYPE_LATEST says 1.0.0; the body is the same for plain names).
        return 200, CONTENT_TYPE_PLAIN_0_0_4, body

    return scrape


async def _healthz() -> tuple[int, str, bytes]:
    return 200, _TEXT, b"ok\n"


def _readyz(metrics: Metrics, hub: Hub | None, timeout: float | None) -> Answer:
    async def readyz() -> tuple[int, str, bytes]:
        if metrics.draining:
            return 503, _TEXT, b"draining\n"
        if hub is not None:
            problem = await _check_hub(hub, timeout)
            if problem is not None:
                return 503, _TEXT, problem.encode() + b"\n"
        return 200, _TEXT, b"ready\n"

    return readyz


def _native(answer: Answer) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        status, content_type, body = await answer()
        return Response(status, Headers([("Content-Type", content_type)]), body)

    return handler


class _OpsASGI:
    """An ASGI application answering the operations paths and passing the rest on."""

    def __init__(self, app: Any, answers: dict[str, Answer]) -> None:
        self.app = app
        self.answers = answers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        answer = self.answers.get(scope.get("path", "")) if scope["type"] == "http" else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        status, content_type, body = await answer()
        headers = [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""}
        )


async def _check_hub(hub: Hub, timeout: float | None) -> str | None:
    if getattr(hub.backend, "available", True) is False:
        return "hub backend unavailable"  # the live feed is reconnecting
    try:
        await asyncio.wait_for(hub.last_seq(READY_TOPIC), timeout)
    except RuntimeError:
        return "hub not running"
    except (asyncio.TimeoutError, ConnectionError, OSError):
        return "hub backend unavailable"  # HubUnavailable is a ConnectionError
    return None
