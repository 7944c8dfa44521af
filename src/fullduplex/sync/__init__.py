"""The threaded client, with the same names as :mod:`fullduplex.asyncio`."""

from __future__ import annotations

from .client import ClientConnection, connect
from .subscriber import Subscriber, subscribe

__all__ = ["ClientConnection", "Subscriber", "connect", "subscribe"]
