"""Type aliases of the ASGI 3 interface (the asgiref spec's names, no asgiref import)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApplication", "Message", "Receive", "Scope", "Send"]

#: The connection scope: ``type``, ``path``, ``headers``... (a plain dict).
Scope = MutableMapping[str, Any]
#: An event sent or received: a dict with a ``type`` key.
Message = MutableMapping[str, Any]
#: The awaitable callable an application receives events with.
Receive = Callable[[], Awaitable[Message]]
#: The awaitable callable an application sends events with.
Send = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application: ``async def app(scope, receive, send)``.
ASGIApplication = Callable[[Scope, Receive, Send], Awaitable[None]]
