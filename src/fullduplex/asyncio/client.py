"""The asyncio client: :func:`connect`.

::

    async with fullduplex.connect("ws://127.0.0.1:8000/echo") as ws:
        await ws.send("hello")
        print(await ws.recv())
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import AsyncIterator, Generator, Iterable, Mapping, Sequence
from typing import Any

from ..config import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_QUEUE,
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    DEFAULT_WRITE_LIMIT,
    UNSET,
    Config,
    resolve_alias,
)
from ..protocol import Connection, Side
from ..protocol.deflate import ClientPerMessageDeflateFactory
from ..protocol.exceptions import InvalidHandshake, InvalidMessage
from ..protocol.handshake import ClientHandshake
from ..protocol.http11 import Request, ResponseParser
from .connection import WebSocket

__all__ = ["DEFAULT_OPEN_TIMEOUT", "ClientProtocol", "connect"]


class ClientProtocol(asyncio.Protocol):
    """The client's TCP connection: the opening handshake, then a WebSocket.

    Args:
        handshake: the opening handshake to perform.
        config: the limits and timeouts of the connection.
    """

    def __init__(self, handshake: ClientHandshake, config: Config) -> None:
        self.handshake = handshake
        self.config = config
        self.parser = ResponseParser()
        self.request: Request | None = None
        self.websocket: WebSocket | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        #: Resolves to the WebSocket once the handshake succeeds.
        self.opened: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the handshake request."""
        self.transport = transport  # type: ignore[assignment]
        self.request = self.handshake.request()
        self.transport.write(self.request.serialize())

    def data_received(self, data: bytes) -> None:
        """Bytes from the server: the handshake response, then frames."""
        if self.websocket is not None:
            self.websocket.data_received(data)
            return
        try:
            self.parser.feed(data)
        except InvalidMessage as exc:
            self._fail(exc)
            return
        self._check_response()

    def _check_response(self) -> None:
        try:
            response = self.parser.next_response()
            if response is None:
                return
            accepted = self.handshake.process_response(response)
        except InvalidHandshake as exc:
            self._fail(exc)
            return
        config = self.config
        core = Connection(
            Side.CLIENT,
            extensions=accepted.extensions,
            max_frame_size=config.max_frame_size,
            max_message_size=config.max_message_size,
        )
        assert self.request is not None
        ws = WebSocket(
            core,
            self.transport,
            request=self.request,
            response=response,
            subprotocol=accepted.subprotocol,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            close_timeout=config.close_timeout,
            max_queue=config.max_queue,
            write_limit=config.write_limit,
        )
        self.websocket = ws
        if not self.opened.done():
            self.opened.set_result(ws)
        trailing = self.parser.trailing_data()
        if trailing:
            ws.data_received(trailing)

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self.transport.close()

    def eof_received(self) -> bool | None:
        """The server closed its sending side."""
        if self.websocket is not None:
            return self.websocket.eof_received()  # False over TLS (see there)
        try:
            self.parser.feed_eof()
        except InvalidMessage as exc:
            self._fail(exc)
            return None
        self._check_response()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The TCP connection is closed."""
        if self.websocket is not None:
            self.websocket.connection_lost(exc)
        elif not self.opened.done():
            self.opened.set_exception(
                InvalidMessage("connection closed during the opening handshake")
            )

    def pause_writing(self) -> None:
        """Write buffer above the high-water mark."""
        if self.websocket is not None:
            self.websocket.pause_writing()

    def resume_writing(self) -> None:
        """Write buffer below the low-water mark."""
        if self.websocket is not None:
            self.websocket.resume_writing()


class connect:
    """Open a WebSocket connection to ``uri``; await it or use it with ``async with``.

    Args:
        uri: a ``ws://`` or ``wss://`` URI.
        subprotocols: subprotocols to offer, in order of preference.
        origin: the Origin header to send, if any.
        headers: extra request headers.
        compression: offer permessage-deflate.
        ssl: a TLS context for ``wss://`` (the system defaults when None).
        open_timeout: seconds to connect and complete the handshake, None to wait forever.
        close_timeout: seconds to wait for the closing handshake.
        ping_interval: seconds between keepalive pings, None to disable.
        ping_timeout: seconds to wait for the keepalive pong before closing with 1011.
        max_message_size: received message limit (1009 above it), None for no limit.
        max_frame_size: received frame limit (1009 above it); None (the default): frames are
            bounded by max_message_size only.
        max_queue: received messages buffered before reading pauses.
        write_limit: write buffer size above which ``send`` waits.
        max_size: the former name of ``max_message_size`` (websockets' name), still accepted.

    Raises:
        OSError: the TCP connection failed (for example, connection refused).
        InvalidStatus: the server answered with another status than 101 (status, headers
            and body are kept on the exception).
        InvalidHandshake: the 101 response is not valid (bad Accept, unexpected subprotocol).
        TimeoutError: the handshake took longer than ``open_timeout``.
        ValueError: a limit or timeout is out of range (raised at once, before connecting).
        TypeError: both ``max_message_size`` and ``max_size`` were given.
    """

    def __init__(
        self,
        uri: str,
        *,
        subprotocols: Sequence[str] = (),
        origin: str | None = None,
        headers: Iterable[tuple[str, str]] | Mapping[str, str] = (),
        compression: bool = True,
        ssl: ssl_module.SSLContext | None = None,
        # Timeouts
        open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
        close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
        # Limits
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        max_frame_size: int | None = DEFAULT_MAX_FRAME_SIZE,
        max_queue: int = DEFAULT_MAX_QUEUE,
        write_limit: int = DEFAULT_WRITE_LIMIT,
        max_size: int | None = UNSET,
    ) -> None:
        factories = [ClientPerMessageDeflateFactory()] if compression else []
        self.handshake = ClientHandshake(
            uri, subprotocols=subprotocols, extensions=factories, origin=origin, headers=headers
        )
        self.ssl = ssl
        #: The limits and timeouts of the connection.
        self.config = Config(
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            max_message_size=resolve_alias(
                "max_message_size", max_message_size, "max_size", max_size, DEFAULT_MAX_MESSAGE_SIZE
            ),
            max_frame_size=max_frame_size,
            max_queue=max_queue,
            write_limit=write_limit,
        )
        self.open_timeout = open_timeout
        self._ws: WebSocket | None = None

    async def _open(self) -> WebSocket:
        loop = asyncio.get_running_loop()
        hs = self.handshake
        ssl_ctx: ssl_module.SSLContext | None = None
        if hs.secure:
            ssl_ctx = self.ssl if self.ssl is not None else ssl_module.create_default_context()
        _, protocol = await loop.create_connection(
            lambda: ClientProtocol(hs, self.config),
            hs.host,
            hs.port,
            ssl=ssl_ctx,
            server_hostname=hs.host if ssl_ctx is not None else None,
        )
        try:
            return await protocol.opened
        except BaseException:
            protocol.transport.abort()
            raise

    async def _open_with_timeout(self) -> WebSocket:
        if self.open_timeout is None:
            return await self._open()
        try:
            return await asyncio.wait_for(self._open(), self.open_timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"opening handshake with {self.handshake.host} timed out after {self.open_timeout}s"
            ) from None

    def __await__(self) -> Generator[Any, None, WebSocket]:
        return self._open_with_timeout().__await__()

    def __aiter__(self) -> AsyncIterator[WebSocket]:
        """Reconnect forever: ``async for ws in connect(uri)``.

        Each iteration gets a new connection once the previous one closed, with backoff and
        full jitter between failures (see :func:`fullduplex.asyncio.subscriber.reconnect`).
        """
        from .subscriber import reconnect

        return reconnect(self)

    async def __aenter__(self) -> WebSocket:
        self._ws = await self._open_with_timeout()
        return self._ws

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
