"""ASGI both ways.

* Serving: :func:`fullduplex.serve` and :func:`fullduplex.run` take an ASGI 3 application
  (FastAPI, Starlette, Django's ASGI handler...) as well as a :class:`fullduplex.App`; HTTP/1.1
  with streaming bodies, WebSocket on fullduplex's own engine, and lifespan.
  :class:`ASGIAdapter` holds the ASGI-only settings.
* Mounting: :class:`HubApp` is an ASGI application exposing the hub transports (``/pubsub``,
  ``/sse``, ``/longpoll``, ``/poll``, ``/publish``) inside any ASGI framework and server.

See docs/asgi.md.
"""

from __future__ import annotations

from .http import ClientDisconnected
from .hub import HubApp
from .lifespan import Lifespan, LifespanFailed
from .server import ANY_ORIGIN, ASGIAdapter
from .types import ASGIApplication, Message, Receive, Scope, Send

__all__ = [
    "ANY_ORIGIN",
    "ASGIAdapter",
    "ASGIApplication",
    "ClientDisconnected",
    "HubApp",
    "Lifespan",
    "LifespanFailed",
    "Message",
    "Receive",
    "Scope",
    "Send",
]
