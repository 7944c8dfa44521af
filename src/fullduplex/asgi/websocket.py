"""WebSocket for ASGI applications: the ASGI events over fullduplex's own connection.

A session starts with an upgrade request that passed the server's per-IP limits
(``max_connections_per_ip``, ``rate_per_ip``: 429 with ``Retry-After`` otherwise, see
:mod:`fullduplex.asyncio.limits`) and the opening handshake checks (RFC 6455 4.2.1: method,
version, key, Upgrade and Connection; an invalid one is answered 400/426 without calling the
application). The application then receives ``websocket.connect`` and answers with:

* ``websocket.accept`` (``subprotocol``, ``headers``): the 101 is written and the socket is
  handed to a :class:`~fullduplex.asyncio.WebSocket`, exactly as for a native route: the same
  frame and message limits, per-connection message and byte rates (close 1008),
  permessage-deflate, keepalive pings, close timeout, bounded receive queue and write
  backpressure. ``receive`` is one ``await`` on it, ``send`` one ``ws.send``;
* ``websocket.close`` before accepting: 403 (ASGI spec);
* ``websocket.http.response.start`` and ``.body`` (the ``websocket.http.response`` extension,
  advertised in ``scope["extensions"]``): a real HTTP response, then the connection closes.

After the connection closes, ``receive`` gives ``websocket.disconnect`` with the close code
(1005 if the peer's close frame had none, 1006 if there was no close frame) and reason, and
``send`` raises :class:`~fullduplex.asgi.ClientDisconnected` (an ``OSError``, spec 2.4).
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any

from ..asyncio.connection import WebSocket
from ..asyncio.limits import too_many_requests
from ..protocol import CloseCode, Connection, ConnectionClosed, Side, State
from ..protocol.exceptions import InvalidHandshake
from ..protocol.handshake import Accepted, parse_subprotocol_header
from ..protocol.http11 import Request, Response
from .http import _FORBIDDEN, _REASONS, _TOKEN, ClientDisconnected, Message, Scope

if TYPE_CHECKING:
    from .http import ASGIHTTPProtocol

__all__ = ["ASGIWebSocketSession"]

logger = logging.getLogger("fullduplex.asgi")

#: The ``asgi`` entry of WebSocket scopes (spec 2.4: ``reason`` on close and disconnect,
#: ``send`` raising OSError after a disconnect).
ASGI_WEBSOCKET = {"version": "3.0", "spec_version": "2.4"}
#: ``scope["extensions"]``: refusing an upgrade with an HTTP response is supported.
EXTENSIONS: dict[str, dict[str, Any]] = {"websocket.http.response": {}}
#: Bytes a client may send after its upgrade request and before the application answers.
_EARLY_DATA_LIMIT = 64 * 1024

# Session states.
_CONNECTING, _OPEN, _RESPONDING, _DONE = range(4)

_DISCONNECT_1006 = {
    "type": "websocket.disconnect",
    "code": CloseCode.ABNORMAL_CLOSURE,
    "reason": "",
}


class ASGIWebSocketSession:
    """One WebSocket upgrade and, once accepted, its connection, for one ASGI call.

    Args:
        conn: the HTTP connection the upgrade request came on.
        scope: the ``websocket`` scope, completed here with ``subprotocols``.
        request: the upgrade request, for the handshake and ``ws.request``.
        trailing: bytes received after the request head (early frames).
    """

    __slots__ = (
        "accepted",
        "conn",
        "connect_sent",
        "done",
        "early",
        "ip",
        "lost",
        "request",
        "scope",
        "state",
        "waiter",
        "ws",
    )

    def __init__(
        self, conn: ASGIHTTPProtocol, scope: Scope, request: Request, trailing: bytes
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.request = request
        self.early = bytearray(trailing)
        self.state = _CONNECTING
        self.lost = False
        self.ws: WebSocket | None = None
        self.accepted: Accepted | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.connect_sent = False
        #: The client IP counted in ``server.limits`` while this session lasts, else None.
        self.ip: str | None = None
        #: Returned by :meth:`send` when nothing is left to wait for: a completed future.
        self.done: asyncio.Future[None] = conn.loop.create_future()
        self.done.set_result(None)

    # -- called by the HTTP connection -----------------------------------------------------

    def start(self) -> None:
        """Check the handshake and limits, then run the application (or refuse at once).

        The per-IP limits come first, as on native routes (429 with ``Retry-After``); an
        admitted upgrade counts as one of its IP's open connections from here until the
        connection closes (while the application decides, too).
        """
        conn = self.conn
        server = conn.server
        limits = server.limits
        client = self.request.client  # the proxy's client when proxy headers are trusted
        if limits is not None and client is not None:
            wait = limits.admit(client[0])
            if wait is not None:
                response = too_many_requests(wait)
                response.headers["Connection"] = "close"
                self._reject(response)
                return
        handshake = conn.adapter.handshake(server)
        try:
            if server.closing:
                raise InvalidHandshake("server is shutting down", 503)
            limit = server.config.max_connections
            if limit is not None and len(server.websockets) >= limit:
                raise InvalidHandshake("too many connections", 503)
            self.accepted = handshake.process_request(self.request)
        except InvalidHandshake as exc:
            self._reject(handshake.reject(exc))
            return
        if limits is not None and client is not None:
            self.ip = client[0]
            limits.acquire(self.ip)
        offered: list[str] = []
        for value in self.request.headers.get_all("Sec-WebSocket-Protocol"):
            offered += parse_subprotocol_header(value)
        scope = self.scope
        scope["subprotocols"] = offered
        scope["extensions"] = EXTENSIONS
        scope["asgi"] = ASGI_WEBSOCKET
        server.run_task(self.run())

    def _reject(self, response: Response) -> None:
        """Answer the upgrade request with ``response`` (before any 101) and close."""
        conn = self.conn
        conn.transport.write(response.serialize())
        conn.log_access(self.scope, response.status, len(response.body))
        metrics = conn.server.metrics
        if metrics is not None:
            metrics.handshake(self.request.path, response.status)
        conn.session = None
        conn.transport.close()

    def early_data(self, data: bytes) -> None:
        """Bytes arrived before the application answered (frames sent right after the head)."""
        self.early += data
        if len(self.early) > _EARLY_DATA_LIMIT:
            self.conn.pause_reading()

    def connection_lost(self) -> None:
        """The client left before the application answered."""
        self.lost = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- the ASGI call -----------------------------------------------------------------------

    async def run(self) -> None:
        """Run the application for this connection, then close what it left open."""
        code, reason = CloseCode.NORMAL_CLOSURE, ""
        try:
            await self.conn.adapter.app(self.scope, self.receive, self.send)
            if self.state == _CONNECTING and not self.lost:
                logger.error("ASGI application returned without accepting the WebSocket")
                self._refuse(500)
        except ClientDisconnected:
            pass
        except asyncio.CancelledError:
            code, reason = CloseCode.GOING_AWAY, "going away"
            raise
        except Exception:
            logger.exception("ASGI WebSocket application raised on %s", self.scope["path"])
            code, reason = CloseCode.INTERNAL_ERROR, "internal error"
            if self.state == _CONNECTING and not self.lost:
                self._refuse(500)
        finally:
            await self._finish(code, reason)

    async def _finish(self, code: int, reason: str) -> None:
        ws = self.ws
        conn = self.conn
        try:
            if ws is None:
                conn.session = None
                if not conn.transport.is_closing():
                    conn.transport.close()
            else:
                if ws.state is State.OPEN:
                    ws.close_nowait(code, reason)
                await ws.wait_closed()
        finally:
            conn.websocket_closed()
            limits = conn.server.limits
            if self.ip is not None and limits is not None:
                limits.release(self.ip)

    @types.coroutine
    def receive(self) -> Generator[Any, None, Message]:
        """ASGI ``receive``: ``websocket.connect``, ``.receive`` events, ``.disconnect``.

        A generator-based coroutine delegating to ``ws.__anext__`` (itself one): the app's
        ``await receive()`` runs it with no ``async def`` frame in between.
        """
        ws = self.ws
        if ws is not None:
            try:
                message = yield from ws.__anext__()
            except (StopAsyncIteration, ConnectionClosed):
                return {
                    "type": "websocket.disconnect",
                    "code": ws.close_code or CloseCode.ABNORMAL_CLOSURE,
                    "reason": ws.close_reason or "",
                }
            if type(message) is str:
                return {"type": "websocket.receive", "text": message}
            return {"type": "websocket.receive", "bytes": message}
        return (yield from self._receive_unaccepted().__await__())

    async def _receive_unaccepted(self) -> Message:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        # Not accepted (yet, or refused): nothing arrives but the end of the connection.
        while not self.lost and self.state != _DONE:
            self.waiter = self.conn.loop.create_future()
            await self.waiter
        return dict(_DISCONNECT_1006)

    def send(self, message: Message) -> Awaitable[None]:
        """ASGI ``send``: accept, send, close, or an HTTP response instead of the upgrade.

        A message goes out at once through ``ws.send_nowait``; what is returned to await is
        then a completed future (one per session, awaited again and again), not a coroutine:
        an ``async def`` here cost a coroutine object and frame per message. Above the write
        limit it is a coroutine waiting for the buffer to drain, as ``ws.send`` would.

        Raises:
            ClientDisconnected: the connection is closed.
            RuntimeError: a message the state does not allow.
        """
        ws = self.ws
        if ws is not None and message["type"] == "websocket.send":
            data = message.get("bytes")
            if data is None:
                data = message.get("text")
                if data is None:
                    raise RuntimeError("websocket.send without 'bytes' or 'text'")
            try:
                ws.send_nowait(data)
            except ConnectionClosed:
                raise ClientDisconnected("the WebSocket is closed") from None
            if ws.writable:
                return self.done
            return self._drain(ws)
        return self._send(message)

    async def _drain(self, ws: WebSocket) -> None:
        try:
            await ws.wait_drain()
        except ConnectionClosed:
            raise ClientDisconnected("the WebSocket is closed") from None

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        ws = self.ws
        if ws is not None:
            if kind != "websocket.close":
                raise RuntimeError(f"expected websocket.send or .close, got {kind!r}")
            if ws.state is not State.OPEN:
                raise ClientDisconnected("the WebSocket is closed")
            ws.close_nowait(
                message.get("code") or CloseCode.NORMAL_CLOSURE, message.get("reason") or ""
            )
            return
        if self.lost:
            raise ClientDisconnected("the client left before the WebSocket was accepted")
        state = self.state
        if state == _CONNECTING:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                # ASGI: "If this is sent before the socket is accepted, the server must close
                # the connection with a HTTP 403 error code".
                self._refuse(403)
            elif kind == "websocket.http.response.start":
                self._respond_start(message)
            else:
                raise RuntimeError(f"expected websocket.accept or .close, got {kind!r}")
        elif state == _RESPONDING and kind == "websocket.http.response.body":
            body = message.get("body", b"")
            transport = self.conn.transport
            if body:
                transport.write(body)
            if not message.get("more_body", False):
                self._done()
            elif self.conn.write_paused:
                await self.conn.drain()
        else:
            raise RuntimeError(f"unexpected {kind!r} after the WebSocket was refused or closed")

    # -- answers -------------------------------------------------------------------------------

    def _accept(self, message: Message) -> None:
        accepted = self.accepted
        assert accepted is not None
        conn = self.conn
        response = accepted.response
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            # RFC 6455 4.2.2: the selected subprotocol must be one the client offered.
            if subprotocol not in self.scope["subprotocols"]:
                raise RuntimeError(f"subprotocol {subprotocol!r} was not offered by the client")
            response.headers.add("Sec-WebSocket-Protocol", subprotocol)
        for name, value in message.get("headers", ()):
            name_s = name.decode("latin-1")
            if name_s.lower() == "sec-websocket-protocol":
                continue  # the spec says to use the subprotocol key
            response.headers.add(name_s, value.decode("latin-1"))  # ValueError if invalid
        config = conn.server.config
        core = Connection(
            Side.SERVER,
            extensions=accepted.extensions,
            max_frame_size=config.max_frame_size,
            max_message_size=config.max_message_size,
        )
        transport = conn.transport
        transport.write(response.serialize())
        conn.log_access(self.scope, 101)
        ws = WebSocket(
            core,
            transport,
            request=self.request,
            response=response,
            subprotocol=subprotocol,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            close_timeout=config.close_timeout,
            max_queue=config.max_queue,
            write_limit=config.write_limit,
            max_messages_per_second=config.max_messages_per_second,
            max_bytes_per_second=config.max_bytes_per_second,
        )
        self.ws = ws
        self.state = _OPEN
        conn.websocket_opened(ws)
        # From here the transport calls the WebSocket directly, as on native routes.
        transport.set_protocol(ws)
        conn.resume_reading()
        early = bytes(self.early)
        self.early = bytearray()
        if early:
            ws.data_received(early)

    def _refuse(self, status: int) -> None:
        self.conn.write_error(status, "WebSocket connection refused")
        self.conn.log_access(self.scope, status)
        self._done()

    def _respond_start(self, message: Message) -> None:
        status = int(message["status"])
        if not 100 <= status <= 599:
            raise RuntimeError(f"invalid HTTP status {status}")
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b""))]
        for name, value in message.get("headers", ()):
            if not _TOKEN.fullmatch(name) or _FORBIDDEN.search(value):
                raise RuntimeError(f"invalid response header {name!r}: {value!r}")
            if name.lower() not in (b"connection", b"transfer-encoding"):
                lines.append(b"%b: %b\r\n" % (name, value))
        # The body runs to the end of the connection unless the application gave a length.
        lines.append(b"connection: close\r\n\r\n")
        self.conn.transport.write(b"".join(lines))
        self.conn.log_access(self.scope, status)
        self.state = _RESPONDING

    def _done(self) -> None:
        self.state = _DONE
        self._wake()
        self.conn.transport.close()
