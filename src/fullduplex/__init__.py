"""fullduplex: real-time full-duplex messaging for Python.

WebSocket (RFC 6455, RFC 7692 permessage-deflate) with a sans-I/O core, an asyncio server that
serves pages, JSON and WebSocket upgrades on one port, asyncio and sync clients.
"""

from __future__ import annotations

from .protocol import CloseCode, ConnectionClosed, ConnectionClosedError, ConnectionClosedOK

__version__ = "0.1.0"

__all__ = [
    "CloseCode",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "__version__",
]
