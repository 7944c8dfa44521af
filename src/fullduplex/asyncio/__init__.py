"""The asyncio I/O layer: server (pages, JSON and WebSocket on one port) and client."""

from __future__ import annotations

from .client import connect
from .connection import Data, WebSocket, WebSocketListener, broadcast
from .router import App, StreamingResponse, html_response, json_response, text_response
from .server import Server, run, serve
from .subscriber import Ack, Subscriber, SubscriptionError, reconnect, subscribe

__all__ = [
    "Ack",
    "App",
    "Data",
    "Server",
    "StreamingResponse",
    "Subscriber",
    "SubscriptionError",
    "WebSocket",
    "WebSocketListener",
    "broadcast",
    "connect",
    "html_response",
    "json_response",
    "reconnect",
    "run",
    "serve",
    "subscribe",
    "text_response",
]
