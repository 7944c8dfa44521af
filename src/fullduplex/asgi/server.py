"""Serving an ASGI 3 application with fullduplex's server.

:func:`fullduplex.serve` and :func:`fullduplex.run` wrap an ASGI application in an
:class:`ASGIAdapter`; pass one yourself for the ASGI-only settings::

    app = FastAPI()
    fullduplex.run(ASGIAdapter(app, lifespan="on"), "0.0.0.0", 8000)

The adapter is a :class:`~fullduplex.App` whose connections are
:class:`~fullduplex.asgi.http.ASGIHTTPProtocol` instances, and whose startup and shutdown hooks
run the ASGI lifespan protocol: so the server's settings (limits, timeouts, TLS,
``max_connections``, graceful shutdown with 1001) apply unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..asyncio.router import App
from ..protocol.deflate import ServerPerMessageDeflateFactory
from ..protocol.handshake import ServerHandshake
from .http import ASGIHTTPProtocol
from .lifespan import Lifespan
from .types import ASGIApplication

if TYPE_CHECKING:
    from ..asyncio.server import Server
    from ..config import Config

__all__ = ["ANY_ORIGIN", "ASGIAdapter"]

#: Accept WebSocket upgrades from any ``Origin`` (and none), as uvicorn, hypercorn and
#: granian do: ASGI frameworks leave the check to the application.
ANY_ORIGIN: Sequence[str | re.Pattern[str]] = ("null", re.compile(r".+", re.DOTALL))


class ASGIAdapter(App):
    """An ASGI 3 application, ready for :func:`fullduplex.serve`.

    Args:
        app: the ASGI application (``async def app(scope, receive, send)``).
        root_path: the path prefix the application is mounted under behind a proxy
            (``scope["root_path"]``, prepended to ``scope["path"]`` as uvicorn does); the
            server's ``root_path`` setting when empty.
        lifespan: ``"auto"``, ``"on"`` or ``"off"`` (see
            :class:`~fullduplex.asgi.lifespan.Lifespan`).
        origins: the WebSocket ``Origin`` allow-list, as for native routes (``None``: same
            host or no Origin). Default: any origin, like other ASGI servers.
        compression: accept permessage-deflate (also off if the server's ``compression`` is).
    """

    protocol_factory = ASGIHTTPProtocol

    def __init__(
        self,
        app: ASGIApplication,
        *,
        root_path: str = "",
        lifespan: str = "auto",
        origins: Sequence[str | re.Pattern[str]] | None = ANY_ORIGIN,
        compression: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(app, App):
            raise TypeError("a fullduplex.App is served natively: pass it to serve() as it is")
        #: The ASGI application.
        self.app = app
        #: ``scope["root_path"]``.
        self.root_path = root_path.rstrip("/")
        #: The lifespan state; each request's ``scope["state"]`` is a shallow copy.
        self.state: dict[str, Any] = {}
        #: The lifespan runner.
        self.lifespan = Lifespan(app, self.state, lifespan)
        self.origins = origins
        self.compression = compression
        self.on_startup(self.lifespan.startup)
        self.on_shutdown(self.lifespan.shutdown)

    def handshake(self, server: Server) -> ServerHandshake:
        """The opening handshake processor for ``server``'s settings, built once per server.

        Kept by the server, as native routes' are: one adapter served by two servers with
        different settings (``compression``) answers each with its own.
        """
        return server.handshake(self, self._build_handshake)

    def _build_handshake(self, config: Config) -> ServerHandshake:
        compress = self.compression and config.compression
        return ServerHandshake(
            extensions=[ServerPerMessageDeflateFactory()] if compress else [],
            origins=self.origins,
        )
