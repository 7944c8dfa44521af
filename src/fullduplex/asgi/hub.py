"""The hub transports as an ASGI application, to mount in FastAPI or Starlette under any server.

::

    hub = Hub()
    realtime = HubApp(hub)

    @contextlib.asynccontextmanager
    async def lifespan(app):             # Mount does not pass the lifespan on: start it here
        async with realtime:             # the hub, presence heartbeats, the DropLog
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/rt", realtime)           # /rt/pubsub /rt/sse /rt/longpoll /rt/poll /rt/publish

:class:`HubApp` does not rewrite a transport: it mounts them (:func:`~fullduplex.transports.
mount_all`) on a private :class:`~fullduplex.App` and adapts the ASGI events to what those
routes take and give:

* HTTP: the ASGI request becomes a :class:`~fullduplex.protocol.http11.Request` (its body read
  whole, up to ``max_body_size``: 413 beyond), the route's ``Response`` or
  ``StreamingResponse`` becomes ``http.response.*`` events. A ``http.disconnect`` cancels the
  handler, as a closed socket does on the native server: a long poll or an event stream ends
  at once.
* WebSocket (``/pubsub``): the route's handler gets a real :class:`~fullduplex.asyncio.
  WebSocket` whose transport is a loopback (:class:`_Loopback`): frames it writes are parsed
  back into ``websocket.send`` events, and ``websocket.receive`` events are framed into it. So
  the fan-out, the per-topic backlogs and the slow-consumer policy run unchanged: the loopback
  reports the bytes not yet taken by the ASGI server's ``send`` as its write buffer, and
  pauses the WebSocket's writing above ``write_limit``. The round trip through frames costs a
  frame parse per message each way, small beside an ASGI server's own per-message work.

Authentication (``HubApp(hub, auth=...)``) is the native server's (:mod:`fullduplex.auth`):
the authenticator runs on every request before any transport does; a refusal is a 401 or 403
with ``{"error": ...}`` (and ``WWW-Authenticate`` with a 401), on a WebSocket before it is
accepted (through the ``websocket.http.response`` extension where the ASGI server has it, else
a close before accepting, which the server answers 403). The identity is what
:class:`~fullduplex.transports.TopicRules` and presence see. When its ``exp`` passes, a
``/pubsub`` connection is closed with 1008 ("token expired"), an event stream ends, and a held
long poll is answered 401.

Abuse limits are the native server's (:mod:`fullduplex.asyncio.limits`), with the same settings
and defaults, whatever server runs it: per client IP (``scope["client"]``, which the ASGI server
takes from ``X-Forwarded-For`` when it trusts the proxy: uvicorn's ``--forwarded-allow-ips``),
``max_connections_per_ip`` open WebSockets and requests being handled and ``rate_per_ip``
handshakes and requests a second, refused with 429 and ``Retry-After`` (a WebSocket before it is
accepted, as for a refused authentication); per ``/pubsub`` WebSocket,
``max_messages_per_second`` and ``max_bytes_per_second``, over which it closes with 1008.

Served on its own (``fullduplex.serve(HubApp(hub))``, ``uvicorn module:app``), it answers
the lifespan protocol with :meth:`HubApp.startup` and :meth:`HubApp.shutdown`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import urllib.parse
from typing import Any

from ..asyncio.connection import DEFAULT_MAX_QUEUE, DEFAULT_WRITE_LIMIT, WebSocket
from ..asyncio.limits import ClientLimits, client_limits, too_many_requests
from ..asyncio.router import (
    SERVER_DEFAULT,
    App,
    HTTPRoute,
    StreamingResponse,
    WebSocketRoute,
    call_handler,
    refusal_response,
    text_response,
    upgrade_required,
)
from ..auth.identity import Authenticator, AuthError, Identity, authenticate, expires_in
from ..config import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_BYTES_PER_SECOND,
    DEFAULT_MAX_CONNECTIONS_PER_IP,
    DEFAULT_MAX_MESSAGES_PER_SECOND,
    DEFAULT_RATE_PER_IP,
    Config,
)
from ..hub import Hub, Presence
from ..protocol import CloseCode, CloseReceived, Connection, ConnectionClosed, Side
from ..protocol.connection import DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE
from ..protocol.exceptions import FullduplexError, InvalidHandshake
from ..protocol.handshake import ServerHandshake
from ..protocol.http11 import DEFAULT_MAX_BODY_SIZE, Headers, Request, Response
from ..transports import TopicRules, Transports, mount_all
from ..transports.polling import DEFAULT_LONGPOLL_TIMEOUT
from ..transports.sse import DEFAULT_HEARTBEAT_INTERVAL
from .types import Message, Receive, Scope, Send

__all__ = ["HubApp"]

logger = logging.getLogger("fullduplex.asgi")


class HubApp:
    """An ASGI application serving a hub's transports.

    The routes are ``/pubsub``, ``/sse``, ``/longpoll``, ``/poll`` and ``/publish``, relative
    to where it is mounted.

    Args:
        hub: the hub.
        rules: which topics clients may subscribe and publish to; if None, the default
            :class:`~fullduplex.transports.TopicRules` (subscribe to any, publish to none).
            Patterns may name the identity (``user.{id}``).
        auth: the authenticator of every route (:mod:`fullduplex.auth`: a
            :class:`~fullduplex.auth.JWTAuth`, or a function of the request returning an
            :class:`~fullduplex.auth.Identity` or raising
            :class:`~fullduplex.auth.AuthError`); None for none (everyone is anonymous).
        presence: who is subscribed (:class:`~fullduplex.hub.presence.Presence`): the
            ``/pubsub`` presence op, ``"presence": true`` subscriptions and ``GET
            /presence?topic=T``; None for none. Its heartbeat runs between
            :meth:`startup` and :meth:`shutdown`.
        heartbeat_interval: seconds of SSE silence before a heartbeat comment.
        longpoll_timeout: seconds a long poll is held.
        max_body_size: largest HTTP request body read (413 above it).
        write_limit: bytes handed to the ASGI server and not yet taken, above which a
            WebSocket counts as not writable (its topic backlogs fill, then the policy acts).
        max_queue: received WebSocket messages buffered before reading pauses.
        close_timeout: seconds to wait for a closing handshake.
        max_connections_per_ip: open ``/pubsub`` WebSockets and HTTP requests being handled
            per client IP (``scope["client"]``); over it, 429 with ``Retry-After``. None: no
            limit.
        rate_per_ip: WebSocket handshakes and HTTP requests per client IP per second (a token
            bucket of one second's worth); over it, 429 with ``Retry-After``. None: no limit.
        max_messages_per_second: messages received per ``/pubsub`` WebSocket per second; over
            it, close 1008 ``too many messages per second``. None: no limit.
        max_bytes_per_second: payload bytes received per ``/pubsub`` WebSocket per second;
            over it, close 1008 ``too many bytes per second``. None: no limit.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        rules: TopicRules | None = None,
        auth: Authenticator | None = None,
        presence: Presence | None = None,
        # Timeouts
        heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
        longpoll_timeout: float = DEFAULT_LONGPOLL_TIMEOUT,
        close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
        # Limits
        max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
        write_limit: int = DEFAULT_WRITE_LIMIT,
        max_queue: int = DEFAULT_MAX_QUEUE,
        # Abuse limits (the native server's settings and defaults)
        max_connections_per_ip: int | None = DEFAULT_MAX_CONNECTIONS_PER_IP,
        rate_per_ip: float | None = DEFAULT_RATE_PER_IP,
        max_messages_per_second: int | None = DEFAULT_MAX_MESSAGES_PER_SECOND,
        max_bytes_per_second: int | None = DEFAULT_MAX_BYTES_PER_SECOND,
    ) -> None:
        # Checked as the server checks them (a TypeError or ValueError naming the setting).
        Config(
            max_connections_per_ip=max_connections_per_ip,
            rate_per_ip=rate_per_ip,
            max_messages_per_second=max_messages_per_second,
            max_bytes_per_second=max_bytes_per_second,
        )
        #: The hub.
        self.hub = hub
        #: The routes the transports are mounted on (a private fullduplex App, whose ``auth``
        #: is this one's authenticator).
        self.routes = App(auth=auth)
        #: What :func:`~fullduplex.transports.mount_all` mounted (caches, open requests).
        self.transports: Transports = mount_all(
            self.routes,
            hub,
            rules=rules,
            presence=presence,
            heartbeat_interval=heartbeat_interval,
            longpoll_timeout=longpoll_timeout,
        )
        self.max_body_size = max_body_size
        self.write_limit = write_limit
        self.max_queue = max_queue
        self.close_timeout = close_timeout
        #: Per-IP connection counts and rates (:mod:`fullduplex.asyncio.limits`), as the
        #: native server's ``Server.limits``; None when both per-IP settings are None.
        self.limits: ClientLimits | None = client_limits(max_connections_per_ip, rate_per_ip)
        self.max_messages_per_second = max_messages_per_second
        self.max_bytes_per_second = max_bytes_per_second
        # Whether a request found the hub not running (logged once, not a traceback each).
        self._warned_not_running = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI 3 entry point."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # -- HTTP ---------------------------------------------------------------------------------

    def _admit(self, scope: Scope) -> tuple[str | None, Response | None]:
        """Count a request or handshake against its client IP's limits, as the native server.

        Returns:
            ``(ip, None)``: admitted, ``ip`` counted as open until :meth:`_release` (None when
            nothing is counted: no per-IP limit, or no client address); ``(None, answer)``:
            refused, ``answer`` is the 429 to send.
        """
        limits = self.limits
        client = scope.get("client")
        if limits is None or not client:
            return None, None
        ip = str(client[0])  # the ASGI server's client: X-Forwarded-For from trusted proxies
        wait = limits.admit(ip)
        if wait is not None:
            return None, too_many_requests(wait)
        limits.acquire(ip)
        return ip, None

    def _release(self, ip: str | None) -> None:
        """The request or WebSocket counted by :meth:`_admit` for ``ip`` is over."""
        if ip is not None and self.limits is not None:
            self.limits.release(ip)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope)
        method = scope["method"]
        route = self.routes.http_routes.get(path)
        if route is None:
            if path in self.routes.websocket_routes:  # /pubsub without an Upgrade: as natively
                # Counted in the rate first, as native WebSocket routes count every request.
                ip, refusal = self._admit(scope)
                self._release(ip)
                await _send_response(send, method, refusal or upgrade_required())
            else:
                await _send_response(send, method, text_response("not found\n", 404))
            return
        # Counted before anything else, as native routes are (a flood costs no auth check).
        ip, refusal = self._admit(scope)
        if refusal is not None:
            await _send_response(send, method, refusal)
            return
        try:
            await self._http_route(scope, receive, send, path, route)
        finally:
            self._release(ip)

    async def _http_route(
        self, scope: Scope, receive: Receive, send: Send, path: str, route: HTTPRoute
    ) -> None:
        method = scope["method"]
        handler = route.handlers.get(method)
        if handler is None:
            allow = ", ".join(sorted(route.methods))
            response = text_response("method not allowed\n", 405, [("Allow", allow)])
            await _send_response(send, method, response)
            return
        body = await _read_body(receive, self.max_body_size)
        if body is None:
            await _send_response(send, method, text_response("HTTP body too large\n", 413))
            return
        request = _request(scope, path, body)
        auth = self.routes.auth_for(route)
        if auth is not None:
            refusal = await _authenticate(auth, request)
            if refusal is not None:
                await _send_response(send, method, refusal)
                return
        progress = _Progress(send)
        answer = asyncio.ensure_future(_answer(self._guard(handler), request, progress.send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            answer.cancel()

        expiry = _arm_expiry(request.identity, expire) if auth is not None else None
        try:
            await asyncio.wait({answer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if expiry is not None:
                expiry.cancel()
            # The client left (long poll, event stream): cancel the handler, as a closed socket
            # does on the native server; or the answer is complete: stop watching.
            for task in (answer, watcher):
                task.cancel()
            await asyncio.gather(answer, watcher, return_exceptions=True)
        if expired:
            await progress.expire(method)

    def _guard(self, handler: Any) -> Any:
        """``handler``, answering 503 (not a 500 and a traceback) while the hub is not running."""

        async def guarded(request: Request) -> Any:
            try:
                result = handler(request)
                if inspect.isawaitable(result):
                    result = await result
            except RuntimeError as exc:
                if not _hub_not_running(exc):
                    raise
                self._warn_not_running()
                return text_response(NOT_STARTED + "\n", 503)
            return result

        return guarded

    def _warn_not_running(self) -> None:
        if not self._warned_not_running:
            self._warned_not_running = True
            logger.error("HubApp: %s (answering 503 until it runs)", NOT_STARTED)

    # -- WebSocket ----------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope)
        route = self.routes.websocket_routes.get(path)
        if (await receive())["type"] != "websocket.connect":
            return
        if route is None:
            await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})
            return
        # Before anything else, as natively: counted from here until the WebSocket closes.
        ip, refusal = self._admit(scope)
        if refusal is not None:
            await _deny(scope, send, refusal)
            return
        try:
            await self._websocket_route(scope, receive, send, path, route)
        finally:
            self._release(ip)

    async def _websocket_route(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        route: WebSocketRoute,
    ) -> None:
        request = _request(scope, path, b"")
        auth = self.routes.auth_for(route)
        if auth is not None:
            # Before accepting, as the native server answers before any 101.
            refusal = await _authenticate(auth, request)
            if refusal is not None:
                await _deny(scope, send, refusal)
                return
        try:
            # The route's Origin rule, as the native server applies it (RFC 6455 10.2).
            handshake = ServerHandshake(origins=route.origins)
            accepted = handshake.process_request(request)
        except InvalidHandshake as exc:
            logger.info("refused WebSocket on %s: %s", path, exc)
            await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})
            return
        await send({"type": "websocket.accept"})
        max_message = route.max_message_size
        max_frame = route.max_frame_size
        if max_message is SERVER_DEFAULT:
            max_message = DEFAULT_MAX_MESSAGE_SIZE
        if max_frame is SERVER_DEFAULT:
            max_frame = DEFAULT_MAX_FRAME_SIZE
        core = Connection(Side.SERVER, max_message_size=max_message, max_frame_size=max_frame)
        loopback = _Loopback(send, scope.get("client"))
        ws = WebSocket(
            core,
            loopback,
            request=request,
            response=accepted.response,
            subprotocol=None,
            ping_interval=None,  # the ASGI server keeps the connection alive
            ping_timeout=None,
            close_timeout=self.close_timeout,
            max_queue=self.max_queue,
            write_limit=self.write_limit,
            # Enforced by the WebSocket itself (close 1008), as on native routes.
            max_messages_per_second=self.max_messages_per_second,
            max_bytes_per_second=self.max_bytes_per_second,
        )
        loopback.attach(ws)
        handler = asyncio.ensure_future(
            _run_handler(route.handler, ws, path, self._warn_not_running)
        )
        reader = asyncio.ensure_future(loopback.read(receive))
        expiry = None
        if auth is not None:
            # RFC 6455 7.4.1: 1008 "indicates that an endpoint is terminating the connection
            # because it has received a message that violates its policy" (as natively).
            expiry = _arm_expiry(
                request.identity,
                lambda: ws.close_nowait(CloseCode.POLICY_VIOLATION, "token expired"),
            )
        try:
            await asyncio.wait({handler, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():
                await handler  # the client left: the handler sees the connection closed
        finally:
            if expiry is not None:
                expiry.cancel()
            for task in (handler, reader):
                task.cancel()
            await asyncio.gather(handler, reader, return_exceptions=True)
            await loopback.finish()
            await loopback.read_to_end(receive)

    # -- lifespan -----------------------------------------------------------------------------

    async def startup(self) -> None:
        """Start the hub, then what the transports run beside it.

        That is the private App's startup hooks: the presence heartbeat (``presence=``) and the
        warning when publishing is open to everyone. Served on its own, the lifespan protocol
        calls this; mounted in FastAPI or Starlette (whose ``Mount`` does not pass the lifespan
        on), call it from the application's lifespan, or use ``async with hub_app:``.
        """
        await self.hub.start()
        await self.routes.startup()

    async def shutdown(self) -> None:
        """End held requests, run the transports' shutdown hooks, then close the hub."""
        self.transports.close()
        await self.routes.shutdown()
        await self.hub.close()

    async def __aenter__(self) -> HubApp:
        await self.startup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _route_path(scope: Scope) -> str:
    # Starlette's Mount keeps the full path and extends root_path (ASGI: path includes
    # root_path); older servers and routers strip it. Either way, the route path is the rest.
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def _request(scope: Scope, path: str, body: bytes) -> Request:
    query = scope.get("query_string", b"")
    target = urllib.parse.quote(path) + ("?" + query.decode("latin-1") if query else "")
    headers = Headers((n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"])
    client = scope.get("client")
    scheme = scope.get("scheme", "http")
    return Request(
        scope.get("method", "GET"),
        target,
        headers,
        body,
        version=scope.get("http_version", "1.1"),
        client=(str(client[0]), int(client[1] or 0)) if client else None,
        scheme="https" if scheme in ("https", "wss") else "http",
    )


async def _read_body(receive: Receive, limit: int | None) -> bytes | None:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body)  # http.disconnect: the handler is cancelled by the watcher
        body += message.get("body", b"")
        if limit is not None and len(body) > limit:
            return None
        if not message.get("more_body", False):
            return bytes(body)


async def _authenticate(auth: Authenticator, request: Request) -> Response | None:
    """Run the route's authenticator: None (``request.identity`` set) or the refusal to send.

    The native server's answers (:func:`~fullduplex.asyncio.router.refusal_response`): 401 or
    403 with ``{"error": message}``, the challenge with a 401; 500 if the authenticator fails.
    """
    try:
        request.identity = await authenticate(auth, request)
    except AuthError as exc:
        return refusal_response(exc)
    except Exception:
        logger.exception("authenticator for %s raised", request.path)
        return refusal_response(None)
    return None


def _arm_expiry(identity: Identity | None, end: Any) -> asyncio.TimerHandle | None:
    """A timer calling ``end`` when the identity's ``exp`` claim passes (None without one)."""
    delay = expires_in(identity)
    if delay is None:
        return None
    return asyncio.get_running_loop().call_later(delay, end)


async def _deny(scope: Scope, send: Send, response: Response) -> None:
    """Refuse a WebSocket before accepting it, with ``response`` if the server can send it."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        headers = _raw_headers(response.headers)
        headers.append((b"content-length", b"%d" % len(response.body)))
        start = {"type": "websocket.http.response.start", "status": response.status}
        await send({**start, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": response.body})
    else:
        # No way to send a status: closing before accepting is answered 403 by the server.
        await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})


class _Progress:
    """What an HTTP answer has sent, to end it properly when its token expires."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.complete = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        await self._send(message)

    async def expire(self, method: str) -> None:
        """The identity expired mid-answer: a held request gets 401, a stream its end."""
        with contextlib.suppress(OSError):  # the ASGI server's ClientDisconnected
            if not self.started:
                await _send_response(self._send, method, refusal_response(_EXPIRED))
            elif not self.complete:
                await self._send({"type": "http.response.body", "body": b""})


_EXPIRED = AuthError("token expired")


async def _wait_disconnect(receive: Receive, kind: str = "http.disconnect") -> None:
    while (await receive())["type"] != kind:
        pass


async def _answer(handler: Any, request: Request, send: Send) -> None:
    response = await call_handler(handler, request, logger)
    if isinstance(response, StreamingResponse):
        await _stream(send, response, request.method == "HEAD")
    else:
        await _send_response(send, request.method, response)


def _raw_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers.items()]


async def _send_response(send: Send, method: str, response: Response) -> None:
    headers = _raw_headers(response.headers)
    if "Content-Length" not in response.headers:
        headers.append((b"content-length", b"%d" % len(response.body)))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    body = b"" if method == "HEAD" else response.body
    await send({"type": "http.response.body", "body": body})


async def _stream(send: Send, response: StreamingResponse, head_only: bool = False) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": _raw_headers(response.headers),
        }
    )
    body = response.body
    aborted = False

    def abort() -> None:
        # ASGI cannot drop a connection: the body ends at its next chunk instead.
        nonlocal aborted
        aborted = True

    response.aborter = abort
    try:
        if head_only:
            # As the native server: the head alone (RFC 9110 9.3.2), the body run to its
            # first chunk and closed, so that its cleanup runs. The stream was held open.
            async for _ in body:
                break
        else:
            async for chunk in body:
                if aborted:
                    break
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        response.aborter = None
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
    await send({"type": "http.response.body", "body": b""})


async def _run_handler(handler: Any, ws: WebSocket, path: str, not_running: Any) -> None:
    # What the native server does when a handler ends (HTTPProtocol.__call__): a
    # handler that raises closes with 1011.
    code, reason = CloseCode.NORMAL_CLOSURE, ""
    try:
        await handler(ws)
    except ConnectionClosed:
        pass
    except Exception as exc:
        if _hub_not_running(exc):
            not_running()  # logged once, without a traceback
            code, reason = CloseCode.INTERNAL_ERROR, "hub not started"
        else:
            logger.exception("WebSocket handler for %s raised", path)
            code, reason = CloseCode.INTERNAL_ERROR, "internal error"
    await ws.close(code, reason)


#: What a HubApp whose hub is not running answers (503), and logs once.
NOT_STARTED = (
    "hub not started: use `async with hub_app:` or `await hub_app.startup()` in the "
    "application's lifespan (Starlette's Mount does not run a mounted app's lifespan)"
)


def _hub_not_running(exc: BaseException) -> bool:
    """Whether ``exc`` is the hub's refusal to work before start() or after close()."""
    return isinstance(exc, RuntimeError) and str(exc).startswith(
        ("hub is not running", "hub is closed")
    )


class _Loopback(asyncio.Transport):
    """The transport of a hub WebSocket over ASGI: frames in and out, ASGI events outside.

    A client-side core (``peer``) stands for the remote end: it parses the frames the
    WebSocket writes (unmasked server frames, RFC 6455 5.1) into messages for ``send``, and
    frames what ``receive`` gives (masked, as a client must) for the WebSocket to read.
    """

    def __init__(self, send: Send, client: Any) -> None:
        super().__init__()
        self._send = send
        self._peer_address = tuple(client) if client else None
        self.peer = Connection(Side.CLIENT, max_frame_size=None, max_message_size=None)
        self.peer.message_handler = self._outgoing
        self.ws: WebSocket | None = None
        self._queue: collections.deque[tuple[Message, int]] = collections.deque()
        self._size = 0
        self._high = DEFAULT_WRITE_LIMIT
        self._low = DEFAULT_WRITE_LIMIT // 4
        self._write_paused = False
        self._closing = False
        self._lost = False
        self._close_sent = False
        self._gone = False
        self._reading = asyncio.Event()
        self._reading.set()
        self._wakeup = asyncio.Event()
        self._pump = asyncio.ensure_future(self._pump_messages())

    def attach(self, ws: WebSocket) -> None:
        """The WebSocket this transport carries."""
        self.ws = ws

    # -- what the WebSocket calls ---------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Frames from the WebSocket: parsed back into ASGI messages."""
        if self._closing:
            return
        peer = self.peer
        peer.receive_data(bytes(data))
        for event in peer.events_received():
            if isinstance(event, CloseReceived):
                code = event.code
                if code in (CloseCode.NO_STATUS_RCVD, CloseCode.ABNORMAL_CLOSURE):
                    code = CloseCode.NORMAL_CLOSURE
                close = {"type": "websocket.close", "code": code, "reason": event.reason}
                self._enqueue(close, 0)
                self._close_sent = True
        reply = peer.data_to_send()
        if reply and self.ws is not None:
            # The peer answers a close frame: the WebSocket reads it on the next loop turn.
            asyncio.get_running_loop().call_soon(self._feed, reply)

    def writelines(self, chunks: Any) -> None:
        """Several frames at once."""
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        """True once closed."""
        return self._closing

    def close(self) -> None:
        """The WebSocket is done: the ASGI connection ends after what is queued."""
        if self._closing:
            return
        self._closing = True
        if not self._close_sent:
            # Closed without a close frame (a failure): ASGI has no 1006 to send, 1011 says it.
            self._enqueue({"type": "websocket.close", "code": CloseCode.INTERNAL_ERROR}, 0)
            self._close_sent = True
        self._wakeup.set()
        asyncio.get_running_loop().call_soon(self._connection_lost)

    def abort(self) -> None:
        """Drop what is queued (but a close already queued: it goes out next) and close."""
        closes = [entry for entry in self._queue if entry[0]["type"] == "websocket.close"]
        self._queue.clear()
        self._queue.extend(closes[:1])
        self._size = 0
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peername`` is the ASGI scope's client; nothing else is known."""
        return self._peer_address if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """The bytes queued for ``send`` above which the WebSocket's writing pauses."""
        self._high = DEFAULT_WRITE_LIMIT if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """``(low, high)``."""
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        """Bytes handed over and not yet taken by the ASGI server's ``send``."""
        return self._size

    def pause_reading(self) -> None:
        """Stop taking ``websocket.receive`` events (the WebSocket's queue is full)."""
        self._reading.clear()

    def resume_reading(self) -> None:
        """Take ``websocket.receive`` events again."""
        self._reading.set()

    def is_reading(self) -> bool:
        """Whether events are being taken."""
        return self._reading.is_set()

    # -- the ASGI side ----------------------------------------------------------------------------

    async def read(self, receive: Receive) -> None:
        """Feed ``websocket.receive`` events to the WebSocket until the client disconnects."""
        peer = self.peer
        while not self._lost:
            await self._reading.wait()
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    peer.send_text(text)
                else:
                    peer.send_binary(message.get("bytes") or b"")
                self._feed(peer.data_to_send())
            elif kind == "websocket.disconnect":
                self._disconnected(message.get("code", CloseCode.NORMAL_CLOSURE))
                return

    async def read_to_end(self, receive: Receive) -> None:
        """After the close went out, take what the client still sends until it disconnects.

        Bounded by ``close_timeout``. A server whose reading waits for the application to take
        each message (hypercorn's queue of 10) would otherwise never read the client's answer
        to the close, after a flood closed with 1008, and hold the connection open; the native
        server reads on the same way.
        """
        if self._gone:
            return
        timeout = self.ws.close_timeout if self.ws is not None else None
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await asyncio.wait_for(_wait_disconnect(receive, "websocket.disconnect"), timeout)

    def _disconnected(self, code: int) -> None:
        self._gone = True  # the ASGI server said so: receive has nothing more to give
        self._close_sent = True  # nothing more goes to the ASGI server
        self._queue.clear()
        if not self._closing and self.ws is not None:
            with contextlib.suppress(FullduplexError, ValueError):
                # The client's close frame, as the WebSocket would have read it.
                self.peer.send_close(code)
                self._feed(self.peer.data_to_send())
        self._closing = True
        self._connection_lost()

    def _feed(self, data: bytes) -> None:
        if data and self.ws is not None and not self._lost:
            self.ws.data_received(data)

    def _outgoing(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self._enqueue({"type": "websocket.send", "text": message}, len(message))
        else:
            self._enqueue({"type": "websocket.send", "bytes": message}, len(message))

    def _enqueue(self, message: Message, size: int) -> None:
        if self._close_sent:
            return
        self._queue.append((message, size))
        self._size += size
        self._wakeup.set()
        if not self._write_paused and self._size > self._high and self.ws is not None:
            self._write_paused = True
            self.ws.pause_writing()

    async def _pump_messages(self) -> None:
        # One task hands the queued messages to the ASGI server, in order, waiting on its send
        # (its flow control): the WebSocket's write buffer is this queue.
        queue = self._queue
        try:
            while True:
                while not queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                message, size = queue.popleft()
                await self._send(message)
                self._size -= size
                if self._write_paused and self._size <= self._low and self.ws is not None:
                    self._write_paused = False
                    self.ws.resume_writing()
                if message["type"] == "websocket.close":
                    return
        except OSError:  # the ASGI server's ClientDisconnected
            self._gone = True
            self._queue.clear()
            self._close_sent = True
            self._closing = True
            self._connection_lost()

    def _connection_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._reading.set()
        if self.ws is not None:
            self.ws.connection_lost(None)

    async def finish(self) -> None:
        """Wait until the queued messages went out (the close last), then stop."""
        if not self._closing:
            self.close()
        timeout = self.ws.close_timeout if self.ws is not None else None
        try:
            await asyncio.wait_for(asyncio.shield(self._pump), timeout)
        except (asyncio.TimeoutError, OSError):
            self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self._pump
