"""Polling, long polling, Server-Sent Events and WebSocket, over one hub.

Each transport is mounted on an :class:`~fullduplex.asyncio.App` with one call; all of them
deliver the same messages of a :class:`~fullduplex.hub.Hub` with the same sequence numbers, so
a client can switch transport and carry its cursor::

    hub = Hub()
    app = App()
    mount_all(app, hub, rules=TopicRules(subscribe=["*"], publish=["user.{id}"]))
    # ws://host/pubsub  GET /sse  GET /longpoll  GET /poll  POST /publish

=====================  ==========================================================  ==========
transport              where                                                       module
=====================  ==========================================================  ==========
WebSocket              ``/pubsub``: JSON ops subscribe / unsubscribe / publish      websocket
Server-Sent Events     ``GET /sse?topic=T&topic=U&since=N``, ``Last-Event-ID``      sse
long polling           ``GET /longpoll?topic=T&since=N``: held up to 30 s           polling
short polling          ``GET /poll?topic=T&since=N``: at once                       polling
publish                ``POST /publish`` ``{"topic": T, "data": ...}``             publish
=====================  ==========================================================  ==========

The message JSON is the same everywhere: ``{"topic", "seq", "data", "time"}``, and gaps
``{"topic", "gap": {"since", "first_available"}}`` (see :mod:`~.common`). The protocol, limits
and measurements are in ``docs/transports.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..asyncio.router import APP_AUTH, App
from ..hub import DropLog, Hub, Presence
from ..protocol.http11 import Headers, Request, Response
from .broadcast import Fanout, FrameCache, WebSocketSink
from .common import EnvelopeCache, InvalidInput, OpenRequests, TopicRules
from .polling import DEFAULT_LONGPOLL_TIMEOUT, mount_longpoll, mount_poll
from .presence import mount_presence
from .publish import PublishKeys, mount_publish
from .sse import DEFAULT_HEARTBEAT_INTERVAL, EventCache, mount_sse
from .websocket import mount_websocket

__all__ = [
    "BROWSER_DIR",
    "EnvelopeCache",
    "EventCache",
    "Fanout",
    "FrameCache",
    "InvalidInput",
    "OpenRequests",
    "PublishKeys",
    "TopicRules",
    "Transports",
    "WebSocketSink",
    "mount_all",
    "mount_browser_library",
    "mount_longpoll",
    "mount_poll",
    "mount_presence",
    "mount_publish",
    "mount_sse",
    "mount_websocket",
]


#: The browser library's files (``fullduplex.js``, ``.mjs``, ``.d.ts``), shipped in the package.
BROWSER_DIR = Path(__file__).parent.parent / "browser"

_BROWSER_TYPES = {
    "fullduplex.js": "text/javascript; charset=utf-8",
    "fullduplex.mjs": "text/javascript; charset=utf-8",
    "fullduplex.d.ts": "application/typescript; charset=utf-8",
}


def mount_browser_library(app: App, prefix: str = "") -> None:
    """Serve the browser library at ``{prefix}/fullduplex.js``, ``.mjs`` and ``.d.ts``.

    The files are read once, here; each answer carries a strong ETag and ``Cache-Control:
    no-cache`` (revalidated on every load: a new release is picked up at once).

    Args:
        app: the application.
        prefix: the path prefix, as for :func:`mount_all`.
    """
    prefix = prefix.rstrip("/")
    for name, ctype in _BROWSER_TYPES.items():
        body = (BROWSER_DIR / name).read_bytes()
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        # Public code: no authenticator (a page loads it before it has any credentials).
        app.get(f"{prefix}/{name}", auth=None)(_static_file(body, ctype, etag))


def _static_file(body: bytes, ctype: str, etag: str) -> Callable[[Request], Response]:
    headers = Headers([("Content-Type", ctype), ("Cache-Control", "no-cache"), ("ETag", etag)])

    def serve(request: Request) -> Response:
        if request.headers.get("If-None-Match") == etag:
            return Response(304, headers, b"")
        return Response(200, headers, body)

    return serve


@dataclass
class Transports:
    """What :func:`mount_all` mounted.

    Attributes:
        frames: the JSON and frame cache shared by every transport (its counters say how
            many times messages were serialized and framed).
        requests: the event streams and long polls held open.
        fanout: the WebSocket route's connections, topic by topic.
        events: the encoded SSE events shared by every event stream (its counter says how
            many times events were encoded).
        keys: the idempotency keys of recent publishes (``/publish`` and ``/pubsub``).
        drops: the records of connections dropped as slow consumers (``/pubsub`` and
            ``/sse``), for their ``hello`` when they reconnect.
        routes: the transport behind each mounted path (``"/sse": "sse"``...), which
            metrics use to label open connections.
    """

    frames: FrameCache
    requests: OpenRequests
    fanout: Fanout | None = None
    events: EventCache | None = None
    keys: PublishKeys | None = None
    routes: dict[str, str] = field(default_factory=dict)
    drops: DropLog | None = None

    def close(self) -> None:
        """End every event stream and long poll now (call it before a server shutdown)."""
        self.requests.close()

    async def wait_closed(self, timeout: float | None = 5.0) -> None:
        """After :meth:`close`, wait until every held request has written its answer.

        Call ``close()``, then this, then ``Server.shutdown()``: held long polls get an
        empty batch with their cursor and event streams their last chunk, rather than a
        cancelled handler and a closed connection.
        """
        await self.requests.wait_closed(timeout)


def mount_all(
    app: App,
    hub: Hub,
    prefix: str = "",
    *,
    rules: TopicRules | None = None,
    auth: Any = APP_AUTH,
    origins: list[str] | None = None,
    compression: bool = False,
    presence: Presence | None = None,
    drops: DropLog | None = None,
    # Timeouts
    heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
    longpoll_timeout: float = DEFAULT_LONGPOLL_TIMEOUT,
) -> Transports:
    """Mount every transport under ``prefix``, sharing one JSON and frame cache.

    The routes: ``/pubsub``, ``/sse``, ``/longpoll``, ``/poll`` and ``/publish``, and the browser
    library at ``/fullduplex.js`` (classic script), ``/fullduplex.mjs`` (ES module) and
    ``/fullduplex.d.ts`` (its types). When the server shuts down, ``/pubsub`` connections are
    closed with 1012 (Service Restart), which the clients take as "come back, with jitter".

    Args:
        app: the application.
        hub: the hub.
        prefix: a path prefix such as ``"/rt"``, or ``""``.
        rules: which topics clients may subscribe to, publish to and read the history of;
            if None, the default :class:`~.common.TopicRules`: subscribe to any topic,
            publish to none.
        auth: the routes' authenticator (:mod:`fullduplex.auth`): the app's when omitted,
            None for none.
        origins: the WebSocket route's Origin allow-list (None: same host, or no Origin):
            list the sites whose pages may open ``/pubsub`` with their users' cookies.
        compression: accept permessage-deflate on the WebSocket route.
        presence: who is subscribed, on the WebSocket route (:mod:`fullduplex.hub.presence`):
            its ``presence`` op and ``"presence": true`` subscriptions, and ``GET
            {prefix}/presence?topic=T`` (:mod:`.presence`); None for none.
        drops: where ``/pubsub`` and ``/sse`` record the connections they drop as slow
            consumers, for the ``hello`` of their reconnection; if None, a
            :class:`~fullduplex.hub.DropLog` over ``hub`` with its defaults (10,000
            records, 5 minutes; shared between processes when ``hub`` is on Redis).
        heartbeat_interval: seconds of SSE silence before a heartbeat comment.
        longpoll_timeout: seconds a long poll is held.

    Returns:
        The shared caches, the WebSocket fan-out and the requests held open.
    """
    frames = FrameCache()
    envelopes = frames.envelopes
    events = EventCache(envelopes)
    held = OpenRequests()
    keys = PublishKeys()
    log = drops if drops is not None else DropLog(hub)
    app.on_shutdown(log.close)
    prefix = prefix.rstrip("/")
    fanout = mount_websocket(
        app,
        hub,
        f"{prefix}/pubsub",
        rules=rules,
        auth=auth,
        origins=origins,
        frames=frames,
        compression=compression,
        keys=keys,
        presence=presence,
        drops=log,
    )
    if presence is not None:
        mount_presence(app, presence, f"{prefix}/presence", rules=rules, auth=auth)
    mount_sse(
        app,
        hub,
        f"{prefix}/sse",
        rules=rules,
        auth=auth,
        events=events,
        requests=held,
        drops=log,
        heartbeat_interval=heartbeat_interval,
    )
    mount_longpoll(
        app,
        hub,
        f"{prefix}/longpoll",
        rules=rules,
        auth=auth,
        envelopes=envelopes,
        requests=held,
        longpoll_timeout=longpoll_timeout,
    )
    mount_poll(app, hub, f"{prefix}/poll", rules=rules, auth=auth, envelopes=envelopes)
    mount_publish(app, hub, f"{prefix}/publish", rules=rules, auth=auth, keys=keys)
    mount_browser_library(app, prefix)
    names = ("pubsub", "sse", "longpoll", "poll", "publish")
    routes = {f"{prefix}/{name}": "websocket" if name == "pubsub" else name for name in names}
    transports = Transports(frames, held, fanout, events, keys, routes, log)
    # When the server starts closing: end event streams and long polls at once (a shutdown
    # would otherwise wait for them: they are never idle).
    app.on_closing(transports.close)
    return transports
