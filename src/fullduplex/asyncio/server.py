"""The asyncio server: HTTP routes, static files and WebSocket upgrades on one port.

Each TCP connection is an :class:`HTTPProtocol` (an ``asyncio.Protocol``). It parses HTTP/1.1
requests (keep-alive and pipelining included) and dispatches each to the :class:`App`'s routes.
A request for a WebSocket route completes the opening handshake; from then on the bytes read go
straight into the connection's :class:`~fullduplex.asyncio.connection.WebSocket`, and one task
runs the route's handler (or, for a :class:`~fullduplex.asyncio.connection.WebSocketListener`,
none).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import inspect
import logging
import signal
import socket
import ssl as ssl_module
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..auth.identity import AuthError, Identity, check_result, expires_in
from ..auth.redact import redact_target
from ..config import (
    DEFAULT_BACKLOG,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_FORWARDED_ALLOW_IPS,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_BYTES_PER_SECOND,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_IP,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_MESSAGES_PER_SECOND,
    DEFAULT_MAX_QUEUE,
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    DEFAULT_RATE_PER_IP,
    DEFAULT_SEND_BUFFER_SIZE,
    DEFAULT_WRITE_LIMIT,
    DEFAULT_WRITE_TIMEOUT,
    Config,
)
from ..protocol import CloseCode, Connection, ConnectionClosed, Side
from ..protocol.deflate import ServerPerMessageDeflateFactory
from ..protocol.exceptions import InvalidHandshake, InvalidMessage, NegotiationError
from ..protocol.handshake import ServerHandshake
from ..protocol.http11 import Request, RequestParser, Response
from .connection import WebSocket, WebSocketListener
from .limits import ClientLimits, client_limits, too_many_requests
from .proxies import TrustedProxies, apply_proxy_headers
from .router import (
    SERVER_DEFAULT,
    App,
    FileResponse,
    StreamingResponse,
    WebSocketRoute,
    call_handler,
    refusal_response,
    text_response,
    upgrade_required,
)

if TYPE_CHECKING:
    from ..asgi.types import ASGIApplication

__all__ = [
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_OPEN_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "HTTPProtocol",
    "Server",
    "run",
    "serve",
]

logger = logging.getLogger("fullduplex")
access_logger = logging.getLogger("fullduplex.access")


# Request header fields whose values most connections share (the same Host, Upgrade, Origin,
# User-Agent...): kept once per server for every connection's ``ws.request``, see
# Server.share_fields. Never Sec-WebSocket-Key, cookies or other per-client values.
_SHARED_FIELDS = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "origin",
        "user-agent",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "pragma",
    }
)
#: Distinct shared header fields a server keeps at most (a few hundred KiB at worst).
_MAX_SHARED_FIELDS = 4096


class Server:
    """A running server; created by :func:`serve`.

    Use it as an async context manager, or call :meth:`close` and :meth:`wait_closed`.

    Args:
        app: the routes.
        config: the limits and timeouts (the defaults when None).
    """

    def __init__(self, app: App, config: Config | None = None) -> None:
        #: The application.
        self.app = app
        #: The limits and timeouts, read by every connection.
        self.config = config if config is not None else Config()
        #: Open TCP connections.
        self.connections: set[HTTPProtocol] = set()
        #: Open WebSocket connections.
        self.websockets: set[WebSocket] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._callback_context = contextvars.copy_context()
        self._fields: dict[tuple[str, str], tuple[str, str]] = {}
        self._targets: dict[str, str] = {}  # see share_fields
        # The handshake processors built with this server's settings (see handshake()), by
        # id of what they serve, which is kept too (no id reuse while it is cached).
        self._handshakes: dict[int, tuple[object, ServerHandshake]] = {}
        self._server: asyncio.AbstractServer | None = None
        #: True when serving TLS (https:// and wss://).
        self.tls = False
        self._closing = False
        #: What counts this server's connections (``app.metrics``), or None.
        self.metrics: Any = getattr(app, "metrics", None)
        loop = asyncio.get_running_loop()
        # Set by close(): what serve_forever waits for.
        self._close_called: asyncio.Future[None] = loop.create_future()
        # Set when the last connection and the last task end, once someone waits for it
        # (websockets' handlers_waiter): wait_closed needs no polling.
        self._idle_waiter: asyncio.Future[None] | None = None
        #: Proxies whose X-Forwarded-For / -Proto are believed; None when proxy_headers is off.
        self.trusted_proxies: TrustedProxies | None = None
        if self.config.proxy_headers:
            self.trusted_proxies = TrustedProxies(self.config.forwarded_allow_ips)
        #: Per-IP connection counts and rates (:mod:`fullduplex.asyncio.limits`); None when
        #: both ``max_connections_per_ip`` and ``rate_per_ip`` are None.
        self.limits: ClientLimits | None = client_limits(
            self.config.max_connections_per_ip, self.config.rate_per_ip
        )

    @property
    def sockets(self) -> Sequence[Any]:
        """The listening sockets."""
        # asyncio.Server and uvloop's Server both have .sockets; AbstractServer does not say so.
        sockets: Sequence[Any] = getattr(self._server, "sockets", None) or ()
        return sockets

    @property
    def closing(self) -> bool:
        """True once :meth:`close` was called: new WebSockets get 503, ``/readyz`` says 503."""
        return self._closing

    @property
    def urls(self) -> list[str]:
        """The base URL of each listening socket, e.g. ``http://127.0.0.1:8000/``.

        ``https://`` when serving TLS; ``unix:PATH`` for a Unix socket. For the startup log
        line and banners: an address bound to every interface (``0.0.0.0``) stays as it is.
        """
        scheme = "https" if self.tls else "http"
        urls = []
        for sock in self.sockets:
            name = sock.getsockname()
            if isinstance(name, tuple) and len(name) >= 2:
                host = f"[{name[0]}]" if ":" in str(name[0]) else str(name[0])
                urls.append(f"{scheme}://{host}:{name[1]}/")
            else:
                urls.append(f"unix:{name.decode() if isinstance(name, bytes) else name}")
        return urls

    @property
    def port(self) -> int:
        """The port of the first listening socket (useful with ``port=0``)."""
        return int(self.sockets[0].getsockname()[1])

    async def start(
        self,
        host: str | None,
        port: int,
        *,
        ssl: ssl_module.SSLContext | None = None,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
        uds: str | None = None,
    ) -> None:
        """Run the app's startup hooks, then start listening.

        Listens on ``host`` and ``port``, or on ``sock`` (a bound socket, for example one
        inherited from a supervisor), or on the Unix socket ``uds``.
        """
        await self.app.startup()
        if self.metrics is not None:
            self.metrics.attach(self)
        loop = asyncio.get_running_loop()
        backlog = self.config.backlog
        self.tls = ssl is not None
        factory = self.app.protocol_factory or HTTPProtocol  # ASGI: asgi.http.ASGIHTTPProtocol
        if uds is not None:
            self._server = await loop.create_unix_server(
                lambda: factory(self), uds, ssl=ssl, backlog=backlog
            )
            return
        if sock is not None and sock.family == socket.AF_UNIX:
            self._server = await loop.create_unix_server(
                lambda: factory(self), sock=sock, ssl=ssl, backlog=backlog
            )
            return
        if sock is not None:
            server = await loop.create_server(
                lambda: factory(self), sock=sock, ssl=ssl, backlog=backlog, start_serving=False
            )
        else:
            server = await loop.create_server(
                lambda: factory(self),
                host,
                port,
                ssl=ssl,
                reuse_port=reuse_port or None,
                backlog=backlog,
                start_serving=False,
            )
        self._server = server
        self._cap_send_buffers()  # before the first accept(): every connection inherits it
        await server.start_serving()

    def _cap_send_buffers(self) -> None:
        # An accepted TCP socket inherits the listening socket's SO_SNDBUF (Linux, the BSDs),
        # so one setsockopt here costs no system call per connection. socket(7): "the kernel
        # doubles this value (to allow space for bookkeeping overhead)"; setting it also turns
        # off the send buffer's autotuning for those sockets.
        size = self.config.send_buffer_size
        if size is None:
            return
        for listener in self.sockets:
            if listener.family in (socket.AF_INET, socket.AF_INET6):
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    def close(self, code: int = CloseCode.GOING_AWAY, reason: str = "going away") -> None:
        """Stop accepting connections and close every WebSocket with ``code`` (1001).

        Does not wait: see :meth:`wait_closed` and :meth:`shutdown`.
        """
        if self._closing:
            return
        self._closing = True
        self._close_called.set_result(None)
        if self._server is not None:
            self._server.close()
        for hook in self.app.closing_hooks:
            try:
                hook()
            except Exception:
                logger.exception("closing hook %r raised", hook)
        for ws in list(self.websockets):
            ws.close_nowait(code, reason)
        for conn in list(self.connections):
            if conn.websocket is None:
                # Idle keep-alive connections close now; event streams and long polls are
                # cancelled (their generators' finally blocks run) and their sockets closed.
                conn.stop()

    async def stop_accepting(self, timeout: float | None = 2.0) -> None:
        """Stop listening, then let the connections accepted so far send their request.

        For a restart that refuses no one (``fullduplex serve --workers``, SIGHUP): another
        process goes on accepting from the same listening socket, and a connection this server
        accepted just before it stopped is answered (an upgrade completes; :meth:`close` then
        sends it 1001 like every other WebSocket) instead of being closed unanswered. Waits
        until no connection is in the middle of sending a request head or waiting to send its
        first, at most ``timeout`` seconds (a client that connects and says nothing is not
        waited for longer).
        """
        if self._server is not None:
            self._server.close()
        # Nothing is accepted any more, so the set of connections still waiting only shrinks:
        # a check every 10 ms of those few, at shutdown only, rather than a hook on every
        # request's path.
        waiting = [conn for conn in self.connections if conn.awaiting_request]
        deadline = None if timeout is None else time.monotonic() + timeout
        while waiting and (deadline is None or time.monotonic() < deadline):
            await asyncio.sleep(0.01)
            waiting = [conn for conn in waiting if conn.awaiting_request]

    async def wait_closed(self) -> None:
        """Wait until every connection and handler has finished."""
        if self._server is not None:
            await self._server.wait_closed()
        while self._tasks or self.connections:
            if self._idle_waiter is None or self._idle_waiter.done():
                self._idle_waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle_waiter)  # a cancelled waiter leaves it for others

    def add_connection(self, conn: Any) -> None:
        """Track a new TCP connection (its protocol calls this from ``connection_made``).

        Args:
            conn: the connection's protocol; it has ``websocket``, ``transport`` and
                ``stop()``, like :class:`HTTPProtocol`.
        """
        self.connections.add(conn)

    def discard_connection(self, conn: Any) -> None:
        """Forget a closed TCP connection (its protocol calls this from ``connection_lost``)."""
        self.connections.discard(conn)
        self._check_idle()

    def task_done(self, task: asyncio.Task[None]) -> None:
        """Forget a task started by :meth:`run_task` (its done callback calls this)."""
        self._tasks.discard(task)
        self._check_idle()

    def _check_idle(self) -> None:
        waiter = self._idle_waiter
        if waiter is not None and not self._tasks and not self.connections and not waiter.done():
            waiter.set_result(None)

    async def shutdown(self, code: int = CloseCode.GOING_AWAY, reason: str = "going away") -> None:
        """Close gracefully and wait.

        Sends 1001 to every WebSocket, waits for the close handshakes up to
        ``close_timeout``, then cancels the handlers and drops what is left.
        """
        self.close(code, reason)
        timeout = self.config.close_timeout
        try:
            await asyncio.wait_for(self.wait_closed(), timeout)
        except asyncio.TimeoutError:
            for task in list(self._tasks):
                task.cancel()
            for conn in list(self.connections):
                conn.transport.abort()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wait_closed(), 1.0)
        await self.app.shutdown()

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called and every connection and handler has ended."""
        await asyncio.shield(self._close_called)
        await self.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def handshake(
        self, owner: object, build: Callable[[Config], ServerHandshake]
    ) -> ServerHandshake:
        """The handshake processor of ``owner`` for this server, built once by ``build``.

        Kept per server, not on the owner (a WebSocket route, an ASGI adapter): two servers
        of one application may differ in their settings (``compression``...).

        Args:
            owner: what the processor serves; kept as long as this server.
            build: makes the processor from this server's settings.
        """
        entry = self._handshakes.get(id(owner))
        if entry is None:
            entry = self._handshakes[id(owner)] = (owner, build(self.config))
        return entry[1]

    def build_handshake(self, route: WebSocketRoute) -> ServerHandshake:
        """The handshake processor of a route for this server's settings, built once."""
        entry = self._handshakes.get(id(route))  # the common case without a call
        if entry is not None:
            return entry[1]

        def build(config: Config) -> ServerHandshake:
            compress = route.compression and config.compression
            return ServerHandshake(
                subprotocols=route.subprotocols,
                select_subprotocol=route.select_subprotocol,
                extensions=[ServerPerMessageDeflateFactory()] if compress else [],
                origins=route.origins,
            )

        return self.handshake(route, build)

    def share_fields(self, request: Request) -> None:
        """Make ``request``'s common header fields the server's single copies.

        ``ws.request`` stays whole for the life of the connection (handlers read its path,
        query and headers); its field tuples and strings cost ~1.1 KiB per connection
        (tracemalloc), mostly repeating what every other connection sent: 6.32 -> 5.44 KiB per
        idle connection (``bench/run.py``'s memory test). A target without a query (a route's
        path, alike for its connections; never a token in a query string) is shared too.
        """
        request.headers.share(self._fields, _SHARED_FIELDS, _MAX_SHARED_FIELDS)
        target = request.target
        if "?" not in target:
            targets = self._targets
            shared = targets.get(target)
            if shared is not None:
                request.target = shared
            elif len(targets) < _MAX_SHARED_FIELDS:
                targets[target] = target

    def run_task(self, coro: Any, on_done: Any = None) -> asyncio.Task[None]:
        """Run a coroutine as a task the server tracks and cancels on shutdown.

        Args:
            coro: the coroutine.
            on_done: called with the task when it ends, instead of the server's own
                bookkeeping, which it must then do by calling :meth:`task_done`.
        """
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        # One context for every done callback (they read no context variable): without it,
        # each callback added copies the current context (~64 bytes per idle connection).
        task.add_done_callback(
            self.task_done if on_done is None else on_done, context=self._callback_context
        )
        return task


class HTTPState(enum.IntEnum):
    """Where an :class:`HTTPProtocol` is between requests (its :attr:`~HTTPProtocol.state`).

    ``READING`` -> ``HANDLING`` (a handler or an asynchronous authenticator runs; reading goes
    on to notice a client that leaves, and pipelined bytes wait) -> ``IDLE`` (kept alive
    after an answer, under ``keepalive_timeout``) -> ``READING`` at the next byte; a request
    answered at once goes from ``READING`` to ``IDLE``. ``UPGRADED`` is final: the transport
    then calls the WebSocket.
    """

    #: A request head is expected or being read (under ``open_timeout``).
    READING = 0
    #: A handler runs for the request dispatched.
    HANDLING = 1
    #: Kept alive between two requests.
    IDLE = 2
    #: Upgraded to a WebSocket.
    UPGRADED = 3


_READING, _HANDLING, _IDLE, _UPGRADED = HTTPState
# Globals, not enum attributes (a slot wrapper call each on Python 3.11: see
# fullduplex.protocol.connection).
_SERVER = Side.SERVER
_NORMAL_CLOSURE = CloseCode.NORMAL_CLOSURE


def _expires(identity: Identity) -> bool:
    """Whether the identity has a numeric ``exp`` claim (seconds since the epoch)."""
    exp = identity.claims.get("exp")
    return isinstance(exp, (int, float)) and not isinstance(exp, bool)


class HTTPProtocol(asyncio.Protocol):
    """One TCP connection: HTTP/1.1 until an upgrade, then a WebSocket.

    Its :attr:`state` (:class:`HTTPState`) says what the other fields mean; there are no
    other flags. The request being answered is :attr:`request`, with, by state:

    * ``READING``: the timer is ``open_timeout`` (a new connection, or the first byte of the
      next request after ``IDLE``); the parser holds what arrived of a head.
    * ``HANDLING``: ``_handler_task`` runs the HTTP handler (or an asynchronous
      authenticator) for :attr:`request`; bytes that arrive wait in ``_pending`` and reading
      pauses; ``_access_level`` is the route's; ``_expiry`` may end it when a token expires.
    * ``IDLE``: answered, kept alive; the timer is ``keepalive_timeout``.
    * ``UPGRADED``: final. :attr:`websocket` has the transport, the parser is gone; a
      handler coroutine (``_ws_route``'s) may run as a task; ``_expiry`` may close it 1008.

    A per-request object (uvicorn's ``RequestResponseCycle``) was weighed and not made: an
    allocation per handshake for fields that an upgrade mostly never uses.
    """

    __slots__ = (
        "_access_level",
        "_drain_waiter",
        "_expiry",
        "_handler_task",
        "_pending",
        "_timer",
        "_write_paused",
        "_ws_route",
        "parser",
        "peer",
        "request",
        "server",
        "state",
        "transport",
        "websocket",
    )

    def __init__(self, server: Server) -> None:
        # -- the connection
        self.server = server
        config = server.config
        #: The HTTP request parser; dropped once the connection is upgraded.
        self.parser: RequestParser | None = RequestParser(
            max_head_size=config.max_head_size, max_body_size=config.max_body_size
        )
        #: The WebSocket once upgraded, else None.
        self.websocket: WebSocket | None = None
        #: Where the connection is between requests (:class:`HTTPState`).
        self.state = _READING
        #: The TCP peer's address as the socket gives it, read when the first request is
        #: dispatched (None before).
        self.peer: Any = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        # open_timeout while READING, keepalive_timeout while IDLE (None: no timer).
        self._timer: asyncio.TimerHandle | None = None
        # Flow control of HTTP answers (WebSockets do their own).
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        # -- the request being answered (see the class docstring for when each is set)
        #: The last request dispatched (while :attr:`busy`, the one being handled).
        self.request: Request | None = None
        # The task of an HTTP handler or an asynchronous authenticator (HANDLING).
        self._handler_task: asyncio.Task[None] | None = None
        # The access log level of the request being answered (its route's; INFO otherwise).
        self._access_level = logging.INFO
        # Bytes that arrived while a handler ran (a pipelined request), parsed after it.
        self._pending: bytes | None = None
        # Ends a connection when its identity's token expires (set only with an authenticator).
        self._expiry: asyncio.TimerHandle | None = None
        # The route whose handler runs as a task, for __call__ (UPGRADED).
        self._ws_route: WebSocketRoute | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A client connected."""
        self.transport = transport  # type: ignore[assignment]
        self.server.add_connection(self)
        self._arm_timer(self.server.config.open_timeout)

    def data_received(self, data: bytes) -> None:
        """Bytes of HTTP requests arrived (once upgraded, the transport calls the WebSocket)."""
        if self.state is _HANDLING:
            # The connection reads on while a handler runs, to notice a client that goes away
            # (EOF) during a long poll or an event stream. Bytes sent meanwhile (a pipelined
            # request) wait, unparsed, and reading pauses until the handler is done.
            self._pending = data if self._pending is None else self._pending + data
            self.transport.pause_reading()
            return
        if self.state is _IDLE:
            # A new request starts on a kept-alive connection: it gets open_timeout.
            self.state = _READING
            self._arm_timer(self.server.config.open_timeout)
        assert self.parser is not None
        try:
            self.parser.feed(data)
            self._next_request()
        except InvalidMessage as exc:
            self._send_error(exc.status, str(exc))
        except Exception as exc:
            # Nothing may escape into the transport's callback: the loop would only log it,
            # the client would get no answer and a pipelined request behind it would be lost.
            self._internal_error(exc)

    def eof_received(self) -> bool | None:
        """The client closed its sending side: close the connection.

        During a handler too: the connection is lost at once, which cancels the handler (a
        long poll or an event stream whose client left stops now, not at its next write).
        """
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The TCP connection is closed (once upgraded, the WebSocket calls this)."""
        self.server.discard_connection(self)
        self._cancel_timer()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        task = self._handler_task
        if task is not None and not task.done():
            # The client went away: stop a long poll or an event stream at once.
            task.cancel()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        ws = self.websocket
        if ws is not None:
            self.server.websockets.discard(ws)
            limits = self.server.limits
            client = ws.request.client
            if limits is not None and client is not None:
                limits.release(client[0])
            metrics = self.server.metrics
            if metrics is not None:
                metrics.closed(ws)

    def pong_received(self, latency: float) -> None:
        """The upgraded WebSocket got a pong after ``latency`` seconds (for metrics)."""
        metrics = self.server.metrics
        if metrics is not None:
            metrics.ping(latency)

    def pause_writing(self) -> None:
        """Write buffer above the high-water mark (HTTP responses; WebSockets handle theirs)."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """Write buffer below the low-water mark."""
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        elif self.state is _READING or self.state is _IDLE:
            # Paused by _next_request: go on with the pipeline, from the loop rather than
            # inside the transport's write callback (an answer closing the connection there
            # made asyncio's transport report connection_lost twice).
            asyncio.get_running_loop().call_soon(self._continue_pipeline)

    def _continue_pipeline(self) -> None:
        if (self.state is _READING or self.state is _IDLE) and not self.transport.is_closing():
            self.transport.resume_reading()
            self._next_request()

    @property
    def busy(self) -> bool:
        """True while an HTTP handler (or an asynchronous authenticator) runs."""
        return self.state is _HANDLING

    @property
    def awaiting_request(self) -> bool:
        """True while a request head is expected (``Server.stop_accepting`` waits for it).

        From the connection, or from the first byte of another request on a kept-alive one,
        until the request is dispatched.
        """
        return (
            self.state is _READING and self.parser is not None and not self.transport.is_closing()
        )

    def stop(self) -> None:
        """Close an HTTP connection for shutdown: cancel its handler if one runs."""
        task = self._handler_task
        if task is not None and not task.done():
            task.cancel()
        self.transport.close()

    # -- HTTP ---------------------------------------------------------------------------------

    def _next_request(self) -> None:
        # A loop: each request answered at once (a file, a 404, a refusal) is followed by the
        # next one parsed. _respond called this back once, and ~330 such requests pipelined
        # in one read went over Python's recursion limit (RecursionError: the rest of the
        # pipeline lost, a traceback logged per connection).
        while self.state is _READING or self.state is _IDLE:
            parser = self.parser
            if self.transport.is_closing() or parser is None:
                return
            if self._write_paused:
                # Answers back up behind a client that does not read them: take no more
                # requests, nor bytes, until they drain (resume_writing). Pipelined requests
                # of a few bytes each otherwise queued their answers (a file each) without
                # bound; the keep-alive timeout ends a client that never reads.
                self.transport.pause_reading()
                return
            try:
                pending = self._pending
                if pending is not None:
                    self._pending = None
                    parser.feed(pending)
                request = parser.next_request()
            except InvalidMessage as exc:
                self._send_error(exc.status, str(exc))
                return
            if request is None:
                return
            self._cancel_timer()
            try:
                self._dispatch(request)
            except Exception as exc:
                # A route lookup or a synchronous answer that raised (also when called from
                # a finished handler's task): 500, not an exception in a transport callback.
                self._internal_error(exc)
                return

    def _dispatch(self, request: Request) -> None:
        # One get_extra_info call (uvloop converts the address each time): the WebSocket
        # takes the same peer.
        peer = self.peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host, port = peer[0], peer[1]
            # IPv4's (host, port) as it is (it stays with the WebSocket: one tuple less).
            same = len(peer) == 2 and type(host) is str and type(port) is int
            request.client = peer if same else (str(host), int(port))
        server = self.server
        if server.tls:
            request.scheme = "https"
        trusted = server.trusted_proxies
        if trusted is not None:
            apply_proxy_headers(request, trusted)
        self.request = request
        self._access_level = logging.INFO
        app = server.app
        path = request.path
        ws_route = app.websocket_routes.get(path)
        if ws_route is None and app.websocket_patterns:
            ws_route = app.match_websocket(request)  # {parameters}: request.path_params
        if ws_route is not None:
            limits = server.limits
            client = request.client
            if limits is not None and client is not None:
                wait = limits.admit(client[0])
                if wait is not None:
                    self._too_many(request, wait, True)
                    return
            auth = app.auth_for(ws_route)
            if auth is None:
                self._upgrade(request, ws_route)
            else:
                self._authenticate(request, auth, ws_route)
            return
        route = app.http_routes.get(path)
        if route is None and app.http_patterns:
            route = app.match_http(request)
        if route is not None:
            self._access_level = route.access_log_level
            limits = server.limits
            client = request.client
            if limits is not None and client is not None:
                wait = limits.admit(client[0])
                if wait is not None:
                    self._too_many(request, wait, False)
                    return
            cors = app.cors
            if cors is not None and cors.is_preflight(request):
                self._respond(request, cors.preflight(request, route.methods))
                return
            handler = route.handlers.get(request.method)
            if handler is None:
                allow = ", ".join(sorted(route.methods))
                self._respond(
                    request, text_response("method not allowed\n", 405, [("Allow", allow)])
                )
                return
            auth = app.auth_for(route)
            if auth is None:
                self._start_handler(handler, request)
            else:
                self._authenticate(request, auth, handler)
            return
        if request.method in ("GET", "HEAD"):
            response = app.find_static(path)
            if isinstance(response, FileResponse):
                self._send_file(request, response)
                return
            if response is not None:
                self._respond(request, response)
                return
        elif app.static_routes and app.is_static(path):
            # RFC 9110 15.5.6: the file exists, not for this method (a 404 said it did not).
            head = [("Allow", "GET, HEAD")]
            self._respond(request, text_response("method not allowed\n", 405, head))
            return
        self._respond(request, text_response("not found\n", 404))

    def _start_handler(self, handler: Any, request: Request) -> None:
        self.state = _HANDLING  # reading goes on: see data_received
        task = self._handler_task = self.server.run_task(self._run_http_handler(handler, request))
        limits = self.server.limits
        client = request.client
        if limits is not None and client is not None:
            # A request being handled (a held long poll, an event stream) holds a connection.
            ip = client[0]
            limits.acquire(ip)
            task.add_done_callback(lambda _: limits.release(ip))

    def _too_many(self, request: Request, wait: float, websocket: bool) -> None:
        """Answer 429 with Retry-After: the client IP is over its limits (checked before auth)."""
        response = too_many_requests(wait)
        if websocket:
            self._count_handshake(request, 429)
            response.headers["Connection"] = "close"
            self.transport.write(response.serialize())
            self._log_access(request, 429, len(response.body))
            self.transport.close()
        else:
            cors = self.server.app.cors
            if cors is not None:
                cors.add_headers(request, response.headers)
            self._respond(request, response)

    # -- authentication (fullduplex.auth): only for routes with an authenticator -------------

    def _authenticate(self, request: Request, auth: Any, target: Any) -> None:
        """Run the route's authenticator, then upgrade or start the handler (``target``)."""
        try:
            result = auth(request)
            # An Identity (the usual answer) is no awaitable: no isawaitable() (~1.5k
            # instructions: its last test is an ABC instance check).
            if type(result) is not Identity and inspect.isawaitable(result):
                # Reading goes on (to notice a client that leaves); bytes that arrive wait in
                # _pending, as during a handler.
                self.state = _HANDLING
                self._handler_task = self.server.run_task(
                    self._authenticate_async(request, result, target)
                )
                return
            request.identity = check_result(result)
        except AuthError as exc:
            self._refuse(request, exc, isinstance(target, WebSocketRoute))
            return
        except Exception:
            logger.exception("authenticator for %s raised", request.path)
            self._refuse(request, None, isinstance(target, WebSocketRoute))
            return
        self._authenticated(request, target)

    async def _authenticate_async(self, request: Request, pending: Any, target: Any) -> None:
        refusal: AuthError | None = None
        try:
            request.identity = check_result(await pending)
        except AuthError as exc:
            refusal = exc
        except Exception:
            logger.exception("authenticator for %s raised", request.path)
        self.state = _READING
        self._handler_task = None
        if self.transport.is_closing():
            return
        self.transport.resume_reading()
        if request.identity is None:
            self._refuse(request, refusal, isinstance(target, WebSocketRoute))
        else:
            self._authenticated(request, target)
        self._next_request()  # a request pipelined behind, if this one was answered

    def _authenticated(self, request: Request, target: Any) -> None:
        identity: Identity = request.identity
        if not isinstance(target, WebSocketRoute):
            self._start_handler(target, request)
            task = self._handler_task
            expiry = self._arm_expiry(identity, self.stop)
            if expiry is not None and task is not None:
                task.add_done_callback(lambda _: expiry.cancel())
            return
        self._upgrade(request, target)
        ws = self.websocket
        if ws is None:
            return
        if _expires(identity):
            # RFC 6455 7.4.1: 1008 "indicates that an endpoint is terminating the connection
            # because it has received a message that violates its policy".
            self._expiry = self._arm_expiry(
                identity, lambda: ws.close_nowait(CloseCode.POLICY_VIOLATION, "token expired")
            )
        pending = self._pending
        if pending is not None:  # frames that came while an async authenticator ran
            self._pending = None
            ws.data_received(pending)

    def _arm_expiry(self, identity: Identity, end: Any) -> asyncio.TimerHandle | None:
        """A timer ending the connection when the identity's ``exp`` claim passes."""
        delay = expires_in(identity)
        if delay is None:
            return None
        return asyncio.get_running_loop().call_later(delay, end)

    def _refuse(self, request: Request, exc: AuthError | None, websocket: bool) -> None:
        """Answer 401 or 403 (500 if the authenticator failed), before any 101."""
        response = refusal_response(exc)
        if not websocket:
            cors = self.server.app.cors
            if cors is not None:
                cors.add_headers(request, response.headers)
            self._respond(request, response)
            return
        response.headers["Connection"] = "close"
        self.transport.write(response.serialize())
        self._log_access(request, response.status, len(response.body))
        self.transport.close()

    async def _run_http_handler(self, handler: Any, request: Request) -> None:
        response = await call_handler(handler, request, logger)
        cors = self.server.app.cors
        if cors is not None:
            cors.add_headers(request, response.headers)
        if isinstance(response, StreamingResponse):
            await self._stream(request, response)
            return
        self.state = _READING
        self._handler_task = None
        if not self.transport.is_closing():
            self.transport.resume_reading()
            self._respond(request, response)
            self._next_request()

    async def _stream(self, request: Request, response: StreamingResponse) -> None:
        headers = response.headers.copy()
        headers["Transfer-Encoding"] = "chunked"
        keep_alive = self._keeps_alive(request)
        if not keep_alive:
            headers["Connection"] = "close"
        transport = self.transport
        transport.write(Response(response.status, headers).serialize())
        response.aborter = transport.abort  # connection_lost then cancels this task
        size = 0
        body = response.body
        # RFC 9110 9.3.2: "The server SHOULD NOT send content in a response to HEAD": the
        # head alone. The chunks were sent (an event stream, held open), which a keep-alive
        # client then read as the next response.
        head_only = request.method == "HEAD"
        try:
            if head_only:
                # Run to its first chunk and closed there, not left unstarted: a generator's
                # cleanup (an event stream's hub subscriptions) sits in a finally that an
                # unstarted generator's aclose() never runs.
                async for _ in body:
                    break
            else:
                async for chunk in body:
                    if transport.is_closing():
                        break
                    if chunk:
                        size += len(chunk)
                        transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                        await self._drain(response)
        finally:
            response.aborter = None
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
            self._log_access(request, response.status, size)
        self.state = _READING
        self._handler_task = None
        if transport.is_closing():
            return
        if not head_only:
            transport.write(b"0\r\n\r\n")
        if not keep_alive:
            transport.close()
            return
        transport.resume_reading()
        self.state = _IDLE
        self._arm_timer(self.server.config.keepalive_timeout)
        self._next_request()

    def _send_file(self, request: Request, response: FileResponse) -> None:
        """Send a large static file: the head now, the body chunk by chunk (a task)."""
        headers = response.headers
        headers["Content-Length"] = str(response.size)
        keep_alive = self._keeps_alive(request)
        if not keep_alive:
            headers["Connection"] = "close"
        self.transport.write(Response(response.status, headers).serialize())
        if request.method == "HEAD":
            response.file.close()
            self._log_access(request, response.status, 0)
            if not keep_alive:
                self.transport.close()
                return
            self.state = _IDLE
            self._arm_timer(self.server.config.keepalive_timeout)
            return  # the caller goes on with the next request, as after _respond
        self.state = _HANDLING  # reading goes on: see data_received
        self._handler_task = self.server.run_task(self._send_body(request, response, keep_alive))

    async def _send_body(self, request: Request, response: FileResponse, keep_alive: bool) -> None:
        # One chunk in the write buffer at a time, above what the transport holds under its
        # high-water mark: memory per request is about chunk_size, whatever the file's size
        # (it was read whole: a 1 GiB file took 1 GiB per request).
        transport = self.transport
        remaining = response.size
        chunk_size = response.chunk_size
        try:
            with response.file as file:
                while remaining > 0 and not transport.is_closing():
                    chunk = file.read(min(chunk_size, remaining))
                    if not chunk:
                        break  # truncated since it was opened: the length cannot be kept
                    remaining -= len(chunk)
                    transport.write(chunk)
                    await self._drain(None)
        except OSError as exc:
            logger.warning("reading %s failed: %s", request.path, exc)
        finally:
            self._log_access(request, response.status, response.size - remaining)
        self.state = _READING
        self._handler_task = None
        if transport.is_closing():
            return
        if remaining:
            # Truncated: what was read goes out, then the end of the connection (the client
            # sees a body shorter than its Content-Length, not a desynchronised stream).
            transport.close()
            return
        if not keep_alive:
            transport.close()
            return
        transport.resume_reading()
        self.state = _IDLE
        self._arm_timer(self.server.config.keepalive_timeout)
        self._next_request()

    async def _drain(self, response: StreamingResponse | None) -> None:
        timeout = self.server.config.write_timeout
        while self._write_paused and not self.transport.is_closing():
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._drain_waiter, timeout)
            except asyncio.TimeoutError:
                # A client that stopped reading an event stream: drop it rather than hold its
                # socket until TCP gives up.
                logger.info("stream to %s stalled for %ss: closing", self._peer(), timeout)
                if response is not None and response.on_stalled is not None:
                    try:
                        response.on_stalled()
                    except Exception:
                        logger.exception("on_stalled of the stream to %s raised", self._peer())
                self.transport.abort()
            finally:
                self._drain_waiter = None

    def _respond(self, request: Request, response: Response) -> None:
        keep_alive = self._keeps_alive(request)
        if not keep_alive:
            response.headers["Connection"] = "close"
        if request.method == "HEAD":
            length = len(response.body)
            response = Response(response.status, response.headers.copy(), b"", response.reason)
            response.headers["Content-Length"] = str(length)
        self.transport.write(response.serialize())
        self._log_access(request, response.status, len(response.body))
        if not keep_alive:
            self.transport.close()
            return
        self.state = _IDLE
        self._arm_timer(self.server.config.keepalive_timeout)
        # The caller goes on with the next request: _next_request's loop, or after a handler.

    def _keeps_alive(self, request: Request) -> bool:
        # After a request with Upgrade that is not a WebSocket upgrade here (h2c, or an Upgrade
        # to an HTTP route), the parser has stopped: answer, then close (RFC 7230 6.7).
        parser = self.parser
        upgraded = parser is None or parser.upgraded
        return request.keep_alive and not self.server.closing and not upgraded

    def _send_error(self, status: int, message: str) -> None:
        response = text_response(message.rstrip("\n") + "\n", status, [("Connection", "close")])
        self.transport.write(response.serialize())
        access_logger.info("%s - - %d (%s)", self._peer(), status, message)
        self.transport.close()

    def _internal_error(self, exc: BaseException) -> None:
        logger.error("error while answering %s", self._peer(), exc_info=exc)
        if self.transport.is_closing() or self.websocket is not None:
            self.transport.abort()  # mid-answer or upgraded: no HTTP answer can follow
            return
        self._send_error(500, "internal server error")

    def _log_access(self, request: Request, status: int, size: int) -> None:
        level = self._access_level
        if not access_logger.isEnabledFor(level):
            return  # before reading the peer: a str per request otherwise
        client = request.client  # the proxy's client when proxy headers are trusted
        access_logger.log(
            level,
            '%s "%s %s HTTP/%s" %d %d',
            client[0] if client is not None else self._peer(),
            request.method,
            redact_target(request.target),  # tokens in query strings never reach a log
            request.version,
            status,
            size,
        )

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) else "-"

    # -- timers -------------------------------------------------------------------------------

    def _arm_timer(self, timeout: float | None) -> None:
        self._cancel_timer()
        if timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.state is _READING or self.state is _IDLE:
            # Idle keep-alive or a handshake that never completed: drop it.
            self.transport.abort() if self.state is _IDLE else self.transport.close()

    # -- WebSocket upgrade --------------------------------------------------------------------

    def _upgrade(self, request: Request, route: WebSocketRoute) -> None:
        server = self.server
        if "upgrade" not in request.headers.by_name():  # the index the handshake reads too
            # A plain GET to a WebSocket route (RFC 7231 6.5.15: 426 Upgrade Required).
            response = upgrade_required()
            self._count_handshake(request, 426)
            self._respond(request, response)
            return
        handshake = server.build_handshake(route)
        if server._closing:
            self._reject(request, handshake, InvalidHandshake("server is shutting down", 503))
            return
        config = server.config
        max_conn = config.max_connections
        if max_conn is not None and len(server.websockets) >= max_conn:
            self._reject(request, handshake, InvalidHandshake("too many connections", 503))
            return
        try:
            accepted = handshake.process_request(request)
            if route.require_subprotocol and accepted.subprotocol is None:
                supported = ", ".join(route.subprotocols)
                raise NegotiationError(f"no supported subprotocol offered (supported: {supported})")
        except InvalidHandshake as exc:
            self._reject(request, handshake, exc)
            return
        max_msg = route.max_message_size
        max_frame = route.max_frame_size
        if max_msg is SERVER_DEFAULT:
            max_msg = config.max_message_size
        if max_frame is SERVER_DEFAULT:
            max_frame = config.max_frame_size
        core = Connection(
            _SERVER,
            extensions=accepted.extensions,
            max_frame_size=max_frame,
            max_message_size=max_msg,
        )
        data = accepted.data
        self.transport.write(data if data is not None else accepted.response.serialize())
        self._log_access(request, 101, 0)
        if server.metrics is not None:
            server.metrics.handshake(request.path, 101)
        server.share_fields(request)
        # A 101 without a hook, an extension or a subprotocol is the same when built again from
        # the request: the WebSocket rebuilds it if ever read (~370 bytes per idle connection).
        subprotocol = accepted.subprotocol
        rebuild = (
            not accepted.extensions and subprotocol is None and handshake.select_subprotocol is None
        )
        ws = WebSocket(
            core,
            self.transport,
            request=request,
            response=None if rebuild else accepted.response,
            handshake=handshake if rebuild else None,
            subprotocol=subprotocol,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            close_timeout=config.close_timeout,
            max_queue=config.max_queue,
            write_limit=config.write_limit,
            max_messages_per_second=config.max_messages_per_second,
            max_bytes_per_second=config.max_bytes_per_second,
            # Told when TCP closes: from now on the transport calls the WebSocket directly.
            owner=self,
            remote_address=self.peer,
        )
        self.websocket = ws
        self.state = _UPGRADED
        server.websockets.add(ws)
        limits = server.limits
        if limits is not None and request.client is not None:
            limits.acquire(request.client[0])
        # From now on the transport calls the WebSocket directly, not through data_received
        # here: ~500 of ~14k user-space instructions per 32 B listener echo (callgrind). The
        # WebSocket tells this protocol (its owner) when TCP closes, for the bookkeeping.
        self.transport.set_protocol(ws)
        assert self.parser is not None
        trailing = self.parser.trailing_data()
        self.parser = None  # ~1.1 KiB per connection no longer needed once upgraded
        handler = route.handler
        if isinstance(handler, type) and issubclass(handler, WebSocketListener):
            ws.attach(handler())  # callback API: no task for this connection
        else:
            self._start_ws_handler(route, ws)
        if trailing:
            # After attach: frames sent along with the handshake reach the listener too (before
            # it, they would wait for a recv() that a listener connection never calls).
            ws.data_received(trailing)

    def _reject(self, request: Request, handshake: ServerHandshake, exc: InvalidHandshake) -> None:
        response = handshake.reject(exc)
        self.transport.write(response.serialize())
        self._log_access(request, response.status, len(response.body))
        self._count_handshake(request, response.status)
        self.transport.close()

    def _count_handshake(self, request: Request, status: int) -> None:
        metrics = self.server.metrics
        if metrics is not None:
            metrics.handshake(request.path, status)

    def _start_ws_handler(self, route: WebSocketRoute, ws: WebSocket) -> None:
        # The handler's own coroutine is the task, and its end is handled in the task's done
        # callback (__call__): no wrapper coroutine, so no frame of its own per idle
        # connection (~250 bytes) and one level less each time the task resumes (per message).
        try:
            coro = route.handler(ws)  # type: ignore[call-arg]  # a coroutine function here
            if not asyncio.iscoroutine(coro):
                raise TypeError(f"{type(coro).__name__} is not a coroutine: use async def")
        except Exception as exc:
            self._ws_handler_failed(route, ws, exc)
            return
        self._ws_route = route
        # The protocol itself is the done callback: no bound method kept per connection.
        self.server.run_task(coro, on_done=self)

    def __call__(self, task: asyncio.Task[None]) -> None:
        """The WebSocket handler's task ended: close the WebSocket (1000, or 1011 for an error).

        The task's done callback (the protocol itself, rather than a bound method kept by
        every idle connection: ~64 bytes each).
        """
        self.server.task_done(task)
        ws = self.websocket
        assert ws is not None and self._ws_route is not None
        if task.cancelled():  # server shutdown
            ws.fail(CloseCode.GOING_AWAY, "going away")
            return
        exc = task.exception()
        if exc is None or isinstance(exc, ConnectionClosed):
            ws.close_nowait(_NORMAL_CLOSURE, "")  # the close timeout runs in the WebSocket
        else:
            self._ws_handler_failed(self._ws_route, ws, exc)

    def _ws_handler_failed(self, route: WebSocketRoute, ws: WebSocket, exc: BaseException) -> None:
        # The traceback goes to the log; the peer only learns "internal error".
        logger.error("WebSocket handler for %s raised", route.path, exc_info=exc)
        ws.close_nowait(CloseCode.INTERNAL_ERROR, "internal error")


async def serve(
    app: App | ASGIApplication,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    ssl: ssl_module.SSLContext | None = None,
    reuse_port: bool = False,
    sock: socket.socket | None = None,
    uds: str | None = None,
    compression: bool = True,
    root_path: str = "",
    proxy_headers: bool = True,
    forwarded_allow_ips: str | Sequence[str] = DEFAULT_FORWARDED_ALLOW_IPS,
    # Timeouts
    open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
    close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
    ping_interval: float | None = DEFAULT_PING_INTERVAL,
    ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
    keepalive_timeout: float | None = DEFAULT_KEEPALIVE_TIMEOUT,
    write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
    # Limits
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
    max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
    max_frame_size: int | None = DEFAULT_MAX_FRAME_SIZE,
    max_queue: int = DEFAULT_MAX_QUEUE,
    write_limit: int = DEFAULT_WRITE_LIMIT,
    max_head_size: int | None = DEFAULT_MAX_HEAD_SIZE,
    max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
    send_buffer_size: int | None = DEFAULT_SEND_BUFFER_SIZE,
    backlog: int = DEFAULT_BACKLOG,
    # Abuse limits
    max_connections_per_ip: int | None = DEFAULT_MAX_CONNECTIONS_PER_IP,
    rate_per_ip: float | None = DEFAULT_RATE_PER_IP,
    max_messages_per_second: int | None = DEFAULT_MAX_MESSAGES_PER_SECOND,
    max_bytes_per_second: int | None = DEFAULT_MAX_BYTES_PER_SECOND,
) -> Server:
    """Start a server for ``app`` and return it, listening.

    The limits and timeouts become one :class:`~fullduplex.config.Config`, validated here
    and read by every connection (``server.config``).

    Args:
        app: the routes, or an ASGI 3 application (FastAPI, Starlette...), served through
            :class:`fullduplex.asgi.ASGIAdapter` (pass one to set its own options).
        host: the address to bind; None for every interface.
        port: the port; 0 picks a free one (see :attr:`Server.port`).
        ssl: a server-side TLS context for https:// and wss://.
        reuse_port: set SO_REUSEPORT so several processes share the port.
        sock: an already bound socket to listen on instead of ``host`` and ``port`` (one
            inherited from ``fullduplex serve --workers``, or from systemd).
        uds: the path of a Unix domain socket to listen on instead of ``host`` and ``port``.
        compression: accept permessage-deflate on routes that allow it.
        proxy_headers: take ``request.client`` and ``request.scheme`` from X-Forwarded-For
            and X-Forwarded-Proto when the TCP peer is a trusted proxy (uvicorn's default:
            on; see :mod:`fullduplex.asyncio.proxies`).
        forwarded_allow_ips: the trusted proxies: IPs, networks (``10.0.0.0/8``) or ``*``,
            as a comma-separated string or a sequence (uvicorn's default: ``127.0.0.1``).
        root_path: the path prefix the app is mounted under behind a proxy (ASGI's
            ``root_path``).
        open_timeout: seconds for a client to send a complete request (head and body).
        close_timeout: seconds to wait for a closing handshake.
        ping_interval: seconds between keepalive pings; None disables them.
        ping_timeout: seconds to wait for a keepalive pong before closing with 1011.
        keepalive_timeout: seconds an idle HTTP keep-alive connection stays open.
        write_timeout: seconds a streaming response waits for a client that stopped reading.
        max_connections: open WebSockets before further upgrades get 503.
        max_message_size: default received message limit (1009 above it).
        max_frame_size: default received frame limit (1009 above it).
        max_queue: received messages buffered per connection before reading pauses.
        write_limit: write buffer size above which ``send`` waits.
        max_head_size: HTTP request head limit (431 above it).
        max_body_size: HTTP request body limit (413 above it).
        send_buffer_size: the kernel send buffer (SO_SNDBUF) of each accepted connection,
            in bytes (Linux reserves twice that); None keeps the kernel's autotuning, which
            lets a client that stopped reading pin ~1.5 MiB before ``write_limit`` counts.
        backlog: connections the kernel queues for ``accept()``.
        max_connections_per_ip: open WebSockets and HTTP requests being handled per client
            IP (``request.client``); over it, 429 with Retry-After. None: no limit.
        rate_per_ip: WebSocket handshakes and HTTP route requests per client IP per second
            (a token bucket of one second's worth); over it, 429 with Retry-After. None: no
            limit.
        max_messages_per_second: messages received per WebSocket per second; over it, the
            connection is closed with 1008. None: no limit.
        max_bytes_per_second: payload bytes received per WebSocket per second; over it, the
            connection is closed with 1008. None: no limit.

    Raises:
        ValueError: a limit or timeout is out of range.
        TypeError: a limit or timeout has the wrong type.
        OSError: the address cannot be bound.
    """
    config = Config(
        compression=compression,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
        root_path=root_path,
        open_timeout=open_timeout,
        close_timeout=close_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        keepalive_timeout=keepalive_timeout,
        write_timeout=write_timeout,
        max_connections=max_connections,
        max_message_size=max_message_size,
        max_frame_size=max_frame_size,
        max_queue=max_queue,
        write_limit=write_limit,
        max_head_size=max_head_size,
        max_body_size=max_body_size,
        send_buffer_size=send_buffer_size,
        backlog=backlog,
        max_connections_per_ip=max_connections_per_ip,
        rate_per_ip=rate_per_ip,
        max_messages_per_second=max_messages_per_second,
        max_bytes_per_second=max_bytes_per_second,
    )
    if not isinstance(app, App):
        from ..asgi.server import ASGIAdapter  # only ASGI users import it

        app = ASGIAdapter(app)
    server = Server(app, config)
    await server.start(host, port, ssl=ssl, reuse_port=reuse_port, sock=sock, uds=uds)
    return server


def run(
    app: App | ASGIApplication, host: str | None = "127.0.0.1", port: int = 8000, **options: Any
) -> None:
    """Run a server until SIGINT or SIGTERM, then shut down gracefully (1001 to every client).

    Uses uvloop when it is installed. Options are those of :func:`serve`. Logs ``serving on
    URL`` once listening; when logging is not configured yet (the root logger has no
    handler), sets it up first: INFO and above to standard error
    (:func:`fullduplex.logs.configure`).
    """
    if not logging.getLogger().handlers:
        from ..logs import configure

        configure(logging.INFO)

    async def main() -> None:
        server = await serve(app, host, port, **options)
        # After the bind: a taken port raises above, and port=0 shows the port it got.
        logger.info("serving on %s", ", ".join(server.urls))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("shutting down: closing %d WebSocket connections", len(server.websockets))
        started = time.monotonic()
        await server.shutdown()
        logger.info("stopped in %.2fs", time.monotonic() - started)

    runner = _loop_factory()
    if runner is None:
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=runner) as r:
            r.run(main())


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
