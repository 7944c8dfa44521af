"""fullduplex: real-time full-duplex messaging for Python.

WebSocket (RFC 6455, RFC 7692 permessage-deflate) with a sans-I/O core
(:mod:`fullduplex.protocol`), an asyncio server that serves pages, JSON and WebSocket upgrades on
one port, an asyncio client (:func:`connect`) and a threaded client (:mod:`fullduplex.sync`).
"""

from __future__ import annotations

from .asyncio import (
    Ack,
    App,
    Data,
    Server,
    StreamingResponse,
    Subscriber,
    SubscriptionError,
    WebSocket,
    WebSocketListener,
    broadcast,
    connect,
    html_response,
    json_response,
    run,
    serve,
    subscribe,
    text_response,
)
from .protocol import (
    CloseCode,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
)

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "App",
    "CloseCode",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "Data",
    "InvalidHandshake",
    "InvalidStatus",
    "Server",
    "StreamingResponse",
    "Subscriber",
    "SubscriptionError",
    "WebSocket",
    "WebSocketListener",
    "__version__",
    "broadcast",
    "connect",
    "html_response",
    "json_response",
    "run",
    "serve",
    "subscribe",
    "text_response",
]
