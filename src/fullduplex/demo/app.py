"""The demo: echo services, a JSON endpoint, and live pages over a pub/sub hub.

Routes:

* ``/`` - a page in plain HTML/JS that talks to ``/ws``, with links to the live pages;
* ``/ws`` - the echo service of the classic Netty example: subprotocol ``echo``, 10 KiB
  frames, each text message answered with ``HH:MM:SS: <message>``, binary refused with 1003;
* ``/echo`` - a plain echo for tools and conformance suites: text and binary returned
  unchanged, any or no subprotocol, permessage-deflate, limits raised to 16 MiB;
* ``/api/data`` - JSON ``{"message": ..., "time": ...}`` for the Ajax example;
* ``/live.html`` - the ``ticker`` topic through WebSocket, SSE, long and short polling side by
  side, with latency, bytes per message and requests per minute;
* ``/chat.html`` - a chat room on the ``chat`` topic (``/chat/ws``, and ``/chat/pubsub`` for
  the page's browser library);
* ``/pubsub``, ``/sse``, ``/longpoll``, ``/poll``, ``/publish`` - the transports
  (:mod:`fullduplex.transports`): anyone may read ``ticker`` and ``chat``, nobody may publish
  through them (the ticker is the server's; chat lines go through ``/chat/ws`` or
  ``/chat/pubsub``, which bind a name to their connection and check every line);
* ``/api/request-size`` - the size of the request head as the server received it, which the
  live page uses to count request bytes it cannot see;
* ``/metrics``, ``/healthz``, ``/readyz`` - Prometheus metrics and health checks
  (:mod:`fullduplex.metrics`), unless ``create_app(metrics=False)``.

The hub and the ticker start with :meth:`DemoApp.start` (``fullduplex serve`` calls it), or
lazily on the first request to a live route; :meth:`DemoApp.stop` ends them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ..asyncio import App, WebSocket
from ..hub import Hub
from ..protocol import CloseCode
from ..protocol.http11 import Request
from ..transports import TopicRules, Transports, mount_all
from .chat import Chat
from .ticker import TICKER_CONFIG, TICKER_TOPIC, Ticker

__all__ = [
    "ECHO_MAX_FRAME_SIZE",
    "PLAIN_ECHO_MAX_SIZE",
    "RULES",
    "STATIC_DIR",
    "DemoApp",
    "create_app",
]

#: Folder of the demo page.
STATIC_DIR = Path(__file__).parent / "static"
#: Frame limit of ``/ws``, as in the Netty example.
ECHO_MAX_FRAME_SIZE = 10 * 1024
#: Message and frame limit of ``/echo``, raised for conformance suites.
PLAIN_ECHO_MAX_SIZE = 16 * 2**20
#: Topics of the demo: anyone reads ``ticker`` and ``chat``; nobody publishes through the
#: generic transports (``POST /publish`` and the ``/pubsub`` publish op answer 403 / an error):
#: the ticker is published by the server, the chat through its own route alone.
RULES = TopicRules(subscribe=["ticker", "chat"], publish=())


def _any_subprotocol(request: Request, offered: Sequence[str]) -> str | None:
    return offered[0] if offered else None


class DemoApp(App):
    """The demo's routes, with the hub and ticker they need.

    Args:
        broker: the hub backend: None for memory, or a Redis URL shared by several servers.
        ticker: whether this process publishes the ticker (one process of several should).
        ticker_interval: seconds between two prices.
    """

    def __init__(
        self, broker: str | None = None, *, ticker: bool = True, ticker_interval: float = 0.2
    ) -> None:
        super().__init__()
        #: The hub every live route uses.
        self.hub = Hub(broker)
        self.hub.configure(TICKER_TOPIC, TICKER_CONFIG)
        #: The price feed, or None if another process publishes it.
        self.ticker = Ticker(self.hub, interval=ticker_interval) if ticker else None
        #: The chat room.
        self.chat = Chat(self.hub)
        #: The mounted transports (their caches and open requests).
        self.transports: Transports = mount_all(self, self.hub, rules=RULES)
        self.chat.mount(self, frames=self.transports.frames)
        # The page reaches the room through the browser library, which connects to
        # {base}/pubsub: the same room, at /chat/pubsub.
        self.chat.mount(self, "/chat/pubsub", frames=self.transports.frames)
        self._started = False
        self.on_startup(self.start)
        self.on_shutdown(self.stop)

    async def start(self) -> None:
        """Start the hub and the ticker (does nothing if started); runs at server startup."""
        if self._started:
            return
        self._started = True
        await self.hub.start()
        if self.ticker is not None:
            self.ticker.start()

    async def stop(self) -> None:
        """End the ticker, every event stream and long poll, and the hub."""
        if self.ticker is not None:
            await self.ticker.stop()
        self.transports.close()
        await self.hub.close()


def create_app(broker: str | None = None, *, ticker: bool = True, metrics: bool = True) -> DemoApp:
    """Build the demo application.

    Args:
        broker: None for an in-memory hub, or a Redis URL (``redis://host:port/db``).
        ticker: whether this process publishes the ticker.
        metrics: serve ``/metrics``, ``/healthz`` and ``/readyz`` (:mod:`fullduplex.metrics`).
    """
    app = DemoApp(broker, ticker=ticker)
    if metrics:
        app.enable_metrics()

    @app.websocket(
        "/ws",
        subprotocols=["echo"],
        require_subprotocol=True,
        max_frame_size=ECHO_MAX_FRAME_SIZE,
        max_message_size=ECHO_MAX_FRAME_SIZE,
    )
    async def timestamped_echo(ws: WebSocket) -> None:
        async for message in ws:
            if isinstance(message, bytes):
                await ws.close(CloseCode.UNSUPPORTED_DATA, "binary messages are not supported")
                return
            await ws.send(f"{time.strftime('%H:%M:%S')}: {message}")

    @app.websocket(
        "/echo",
        select_subprotocol=_any_subprotocol,
        max_frame_size=PLAIN_ECHO_MAX_SIZE,
        max_message_size=PLAIN_ECHO_MAX_SIZE,
    )
    async def plain_echo(ws: WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    @app.get("/api/data")
    async def data(request: Request) -> dict[str, object]:
        return {"message": "hello from fullduplex", "time": time.time()}

    @app.get("/api/request-size")
    async def request_size(request: Request) -> dict[str, object]:
        # The head as received, re-serialized: the bytes of the request line and headers.
        return {"head": len(request.serialize()) - len(request.body)}

    app.static("/", STATIC_DIR)
    return app
