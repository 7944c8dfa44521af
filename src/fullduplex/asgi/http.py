"""HTTP/1.1 for ASGI applications: one :class:`ASGIHTTPProtocol` per TCP connection.

The protocol parses requests with llhttp (``httptools``) as its callbacks fire, so the
application gets the request as soon as its head is complete and the body as it arrives
(``http.request`` events with ``more_body``), the shape of uvicorn's ``httptools_impl``. Each
request is a :class:`_Cycle` holding the ASGI ``receive``/``send`` pair of one exchange. A
WebSocket upgrade is checked by fullduplex's :class:`~fullduplex.protocol.ServerHandshake` and
handed to :class:`~fullduplex.asgi.websocket.ASGIWebSocketSession`; once the application accepts,
the socket belongs to a plain :class:`~fullduplex.asyncio.WebSocket`, the engine native routes
use (same limits, compression, keepalive and flow control).

Limits come from the server's :class:`~fullduplex.config.Config`, as for native routes:
``max_head_size`` (431; a chunk-size line too), ``max_body_size`` (413, checked against
``Content-Length`` before the body is read and as a chunked body grows), ``open_timeout`` for a
whole request (head and body),
``keepalive_timeout`` between requests. ``scope["client"]`` and ``scope["scheme"]`` follow the
server's trusted proxy settings (``proxy_headers``, ``forwarded_allow_ips``), as
``request.client`` does on native routes, and that client IP is what the per-IP limits count
(``max_connections_per_ip``, ``rate_per_ip``: every request is an application request, so
every one is counted; over a limit, 429 with ``Retry-After`` without calling the application).
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import httptools

from ..asyncio.limits import too_many_requests
from ..asyncio.proxies import apply_proxy_headers
from ..auth.redact import redact_target
from ..protocol.exceptions import InvalidMessage, MessageTooBig
from ..protocol.http11 import (
    DEFAULT_MAX_HEADER_COUNT,
    Headers,
    Request,
    Response,
    check_version,
    only_chunked,
)

if TYPE_CHECKING:
    from ..asyncio.connection import WebSocket
    from ..asyncio.server import Server
    from .server import ASGIAdapter
    from .websocket import ASGIWebSocketSession

__all__ = ["ASGIHTTPProtocol", "ClientDisconnected"]

logger = logging.getLogger("fullduplex.asgi")
access_logger = logging.getLogger("fullduplex.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

#: Request body bytes buffered for the application before reading pauses (uvicorn: 64 KiB too).
BODY_HIGH_WATER = 64 * 1024

# RFC 7230 3.2.6 token, for response header names; RFC 7230 3.2.4: no CR, LF or NUL in values.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_FORBIDDEN = re.compile(rb"[\r\n\x00]")
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
# RFC 7230 3.3.3: 1xx, 204 and 304 responses never carry a body.
_NO_BODY = frozenset({204, 304})

#: The ``asgi`` entry of every scope (one dict, shared).
ASGI_HTTP = {"version": "3.0", "spec_version": "2.4"}


class ClientDisconnected(OSError):
    """``send`` was called after the client went away (ASGI spec 2.4: an ``OSError``)."""


class _Cycle:
    """One request and its response: the ``receive`` and ``send`` of one ASGI call."""

    __slots__ = (
        "body",
        "chunked",
        "conn",
        "continue_100",
        "declared",
        "delivered",
        "disconnected",
        "head",
        "keep_alive",
        "more_body",
        "received",
        "response_complete",
        "response_started",
        "scope",
        "sent",
        "status",
        "waiter",
    )

    def __init__(self, conn: ASGIHTTPProtocol, scope: Scope, keep_alive: bool, expect: bool):
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.continue_100 = expect
        self.body = bytearray()
        self.received = 0  # body bytes read so far, for max_body_size
        self.delivered = False  # the last http.request event was handed over
        self.more_body = True
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.head: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.sent = 0
        self.declared: int | None = None  # the response's Content-Length
        self.waiter: asyncio.Future[None] | None = None

    # -- called by the protocol -----------------------------------------------------------------

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def run(self, app: Callable[..., Awaitable[None]]) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass  # the application did not catch what send raised: nothing to answer
        except Exception:
            logger.exception("ASGI application raised on %s", self.scope.get("path"))
            self._fail()
        else:
            if not self.response_complete and not self.disconnected:
                if not self.conn.closing:
                    logger.error("ASGI application returned without completing its response")
                self._fail()
        if self.response_started:
            # Once the response ended, however (complete, cut, client gone), with the body bytes
            # sent, as the native server logs a stream.
            head_only = self.scope["method"] == "HEAD" or self.status in _NO_BODY
            self.conn.log_access(self.scope, self.status, 0 if head_only else self.sent)

    def _fail(self) -> None:
        conn = self.conn
        if self.disconnected:
            return
        if not self.response_started:
            self.keep_alive = False
            conn.write_error(500, "internal server error")
            self.response_complete = True
            conn.response_done(self)  # closes: keep_alive is off
        else:
            # The head is out: the client can only learn of the failure by a cut connection.
            conn.transport.close()

    # -- the ASGI callables ----------------------------------------------------------------------

    async def receive(self) -> Message:
        """ASGI ``receive``: ``http.request`` events, then ``http.disconnect``."""
        if self.continue_100:
            # RFC 7231 5.1.1: the client waits for 100 before sending the body; it is sent
            # when the application first asks for the body.
            self.continue_100 = False
            if not self.response_started and not self.disconnected:
                self.conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if self.conn.parsing is self:
                    # The client waited for it: the body's time starts now.
                    self.conn._arm_timer(self.conn.config.open_timeout)
        while (
            not self.disconnected
            and not self.response_complete
            and (self.delivered or (self.more_body and not self.body))
            and not (self.delivered and self.conn.closing)  # server shutdown
        ):
            self.conn.resume_reading()
            self.waiter = self.conn.loop.create_future()
            await self.waiter
        if self.disconnected or self.response_complete or self.delivered:
            return {"type": "http.disconnect"}
        body = bytes(self.body)
        self.body.clear()
        self.delivered = not self.more_body
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Message) -> None:
        """ASGI ``send``: ``http.response.start`` then ``http.response.body`` events.

        Raises:
            ClientDisconnected: the client left (ASGI spec 2.4: an ``OSError``, which tells
                Starlette's streaming responses to stop), or the server is shutting down
                during a streamed body (the native server cancels its streams then too).
        """
        if self.disconnected:
            raise ClientDisconnected("the client disconnected")
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got {kind!r}")
            self.response_started = True
            self.continue_100 = False
            self.status = int(message["status"])
            self.head = list(message.get("headers", ()))
            return
        if self.response_complete:
            raise RuntimeError(f"unexpected {kind!r}: the response is complete")
        if kind != "http.response.body":
            raise RuntimeError(f"expected 'http.response.body', got {kind!r}")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        conn = self.conn
        transport = conn.transport
        head_only = self.scope["method"] == "HEAD" or self.status in _NO_BODY
        if self.head is not None:
            out = self._build_head(len(body), more)  # sets self.declared
        declared = self.declared
        wrong = None
        if declared is not None and not head_only:
            # An application's error, as uvicorn and h11 treat it: the client gets what was
            # declared, then the connection closes (it cannot tell where the next answer starts).
            if self.sent + len(body) > declared:
                body = body[: max(0, declared - self.sent)]
                wrong = "longer"
            elif not more and self.sent + len(body) < declared:
                wrong = "shorter"
        if self.head is not None:
            if not head_only:
                if self.chunked:
                    if body:
                        out += b"%x\r\n%b\r\n" % (len(body), body)
                else:
                    out += body
            self.head = None  # type: ignore[assignment]
            transport.write(out)
        elif body and not head_only:
            transport.write(b"%x\r\n%b\r\n" % (len(body), body) if self.chunked else body)
        self.sent += len(body)
        if wrong is not None:
            self.keep_alive = False
            self.disconnected = True  # what the application sends next is dropped
            transport.close()  # after what is buffered
            raise RuntimeError(
                f"response body {wrong} than its Content-Length ({declared}): connection closed"
            )
        if not more:
            if self.chunked and not head_only:
                transport.write(b"0\r\n\r\n")
            self.response_complete = True
            self.wake()
            conn.response_done(self)
        elif conn.closing:
            self.disconnected = True
            conn.transport.close()
            raise ClientDisconnected("the server is shutting down")
        elif conn.write_paused:
            await conn.drain()

    def _build_head(self, size: int, more: bool) -> bytes:
        status = self.status
        reason = _REASONS.get(status, b"")
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
        has_length = False
        for name, value in self.head:
            # Checked, so that a header built from user input cannot split the response.
            if not _TOKEN.fullmatch(name) or _FORBIDDEN.search(value):
                raise RuntimeError(f"invalid response header {name!r}: {value!r}")
            lower = name.lower()
            if lower == b"content-length":
                has_length = True
                if value.isdigit():
                    self.declared = int(value)
            elif lower == b"connection" and value.lower() == b"close":
                self.keep_alive = False
            elif lower == b"transfer-encoding":
                continue  # ours to decide (RFC 7230 3.3.1)
            lines.append(b"%b: %b\r\n" % (name, value))
        if not has_length and status >= 200 and status not in _NO_BODY:
            if not more:
                lines.append(b"content-length: %d\r\n" % size)
            elif self.scope["http_version"] == "1.1":
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0: the body ends when the connection closes
        if not self.keep_alive or self.conn.closing:
            self.keep_alive = False
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


class _Answer:
    """An ASGI application that sends one fixed response (the server's own refusals)."""

    __slots__ = ("response",)

    def __init__(self, response: Response) -> None:
        self.response = response

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        response = self.response
        headers = [
            (n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in response.headers.items()
        ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})


class ASGIHTTPProtocol(asyncio.Protocol):
    """One TCP connection to an ASGI application: HTTP/1.1 until a WebSocket is accepted.

    It exposes what :class:`~fullduplex.asyncio.server.Server` expects of a connection
    (``transport``, ``websocket``, :meth:`stop`), so shutdown closes it like a native one.

    Args:
        server: the server; its ``app`` is an :class:`~fullduplex.asgi.ASGIAdapter`.
    """

    # Slots, as the native HTTPProtocol's: one connection each, attributes read per callback.
    __slots__ = (
        "_awaiting",
        "_backlogged",
        "_body_paused",
        "_chunk_line",
        "_client",
        "_drain",
        "_head_size",
        "_headers",
        "_held",
        "_next",
        "_pending_ws",
        "_read_paused",
        "_scheme",
        "_server_addr",
        "_timer",
        "_url",
        "adapter",
        "closing",
        "config",
        "cycle",
        "loop",
        "max_body_size",
        "max_head_size",
        "parser",
        "parsing",
        "pipeline",
        "root_path",
        "server",
        "session",
        "transport",
        "websocket",
        "write_paused",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        adapter: ASGIAdapter = server.app  # type: ignore[assignment]
        self.adapter = adapter
        config = server.config
        self.config = config
        self.max_head_size = config.max_head_size
        self.max_body_size = config.max_body_size
        self.root_path = adapter.root_path or config.root_path
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        #: The WebSocket once an upgrade was accepted, else None.
        self.websocket: WebSocket | None = None
        #: The WebSocket upgrade waiting for the application's answer, else None.
        self.session: ASGIWebSocketSession | None = None
        self.cycle: _Cycle | None = None  # the exchange whose response is being sent
        self.parsing: _Cycle | None = None  # the exchange whose request is being parsed
        self.pipeline: collections.deque[_Cycle] = collections.deque()
        self.write_paused = False
        self.closing = False
        self._drain: asyncio.Future[None] | None = None
        self._read_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._client: tuple[str, int] | None = None
        self._server_addr: tuple[str, int] | None = None
        self._scheme = "http"
        self._pending_ws: Scope | None = None
        # What follows the request being answered when it cannot be taken yet: an upgrade
        # (the bytes after its head) or an error in the next request (status, message). Reading
        # is held meanwhile; response_done takes it up, in order, as the native server does.
        self._next: bytes | tuple[int, str] | None = None
        self._held = False
        # Answers back up (write buffer above high water): the pipeline waits (resume_writing).
        self._backlogged = False
        # Bytes of the chunk-size line being read (its extensions), counted per read that
        # holds nothing else; -1 when none is, -2 when one started in the last read. Bounded
        # by max_head_size (431).
        self._chunk_line = -1
        # Reading paused with the open timer stopped: the application reads the body slowly.
        self._body_paused = False
        # A request head is expected (from connect, or once another starts arriving): see
        # awaiting_request.
        self._awaiting = True

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A client connected."""
        self.transport = transport  # type: ignore[assignment]
        self.server.add_connection(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._client = (str(peer[0]), int(peer[1]))
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple):
            self._server_addr = (str(sock[0]), int(sock[1]))
        elif isinstance(sock, str):
            self._server_addr = (sock, 0)  # a Unix socket: ASGI says [path, None]
        if transport.get_extra_info("sslcontext") is not None:
            self._scheme = "https"
        self._arm_timer(self.config.open_timeout)

    def data_received(self, data: bytes) -> None:
        """Bytes of HTTP requests arrived."""
        if self.session is not None:
            self.session.early_data(data)  # after an upgrade request, before the answer
            return
        line = self._chunk_line
        try:
            if line == -1:
                self.parser.feed_data(data)
            else:
                if line == -2:
                    self._chunk_line = line = 0
                self.parser.feed_data(data)
                if self._chunk_line == line:
                    # The whole read was chunk-size line (extensions): llhttp sets no limit.
                    self._chunk_line = line = line + len(data)
                    limit = self.max_head_size
                    if limit is not None and line > limit:
                        self._parse_error(431, "HTTP chunk line too long")
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[int(exc.args[0]) :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, InvalidMessage):
                raise
            self._parse_error(cause.status, str(cause))
        except httptools.HttpParserError:
            self._parse_error(400, "malformed HTTP request")

    def _parse_error(self, status: int, message: str) -> None:
        parsing = self.parsing
        if parsing is not None and parsing is not self.cycle:
            # A pipelined request whose body was malformed: it never runs.
            self.parsing = None
            parsing.disconnected = True
            if self.pipeline and self.pipeline[-1] is parsing:
                self.pipeline.pop()
        if self.parsing is None and self.cycle is not None:
            # The requests before it were valid: they are answered first, then the error
            # (RFC 9112 9.3.2: responses in the order of the requests).
            self._next = (status, message)
            self._hold()
            return
        self._refuse(status, message)

    def _hold(self) -> None:
        self._held = True
        self.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """The TCP connection is closed (before any WebSocket took it over)."""
        self.server.discard_connection(self)
        self._cancel_timer()
        for cycle in (self.cycle, *self.pipeline):
            if cycle is not None:
                cycle.disconnected = True
                cycle.wake()
        self.pipeline.clear()
        if self.session is not None:
            self.session.connection_lost()
        self._wake_drain()

    def pause_writing(self) -> None:
        """The write buffer is above the high-water mark."""
        self.write_paused = True

    def resume_writing(self) -> None:
        """The write buffer is below the low-water mark."""
        self.write_paused = False
        self._wake_drain()
        if self._backlogged:
            # From the loop, not inside the transport's write callback: an answer closing the
            # connection there made asyncio report connection_lost twice (native, 5fa3ebf).
            self.loop.call_soon(self._continue_pipeline)

    def _continue_pipeline(self) -> None:
        if not self._backlogged or self.write_paused or self.transport.is_closing():
            return
        self._backlogged = False
        self._held = self._next is not None
        self._cancel_timer()
        self._go_on()

    @property
    def awaiting_request(self) -> bool:
        """True while a request head is expected (``Server.stop_accepting`` waits for it)."""
        return self._awaiting and not self.transport.is_closing()

    def stop(self) -> None:
        """Close for shutdown: idle connections now, others after their current response.

        An application waiting in ``receive`` after the whole body (a long poll, an event
        stream listening for the client leaving) gets ``http.disconnect`` now, so it ends
        instead of holding the shutdown until ``close_timeout``.
        """
        self.closing = True
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.close()
        else:
            cycle.wake()

    # -- llhttp callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """llhttp: a request starts."""
        self._awaiting = True
        self._url = b""
        self._headers = []
        self._head_size = 0
        if self.cycle is None:
            self._arm_timer(self.config.open_timeout)

    def on_url(self, url: bytes) -> None:
        """llhttp: part of the request-target."""
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        """llhttp: one header field."""
        self._count_head(len(name) + len(value) + 4)
        # ASGI: "header names should be lowercased"; values as received (OWS stripped).
        self._headers.append((name.lower(), value.rstrip(b" \t")))
        if len(self._headers) > DEFAULT_MAX_HEADER_COUNT:
            raise MessageTooBig("too many HTTP header fields", 431)

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self.max_head_size is not None and self._head_size > self.max_head_size:
            raise MessageTooBig("HTTP head too large", 431)

    def on_headers_complete(self) -> None:
        """llhttp: the head is complete: start the exchange (or the upgrade)."""
        self._awaiting = False
        parser = self.parser
        # open_timeout runs on until the body is complete too (on_message_complete), as on
        # the native server, which reads a whole request under it: a body sent one byte every
        # few seconds held the connection forever.
        headers = self._headers
        limit = self.max_body_size
        expect = False
        upgrade = None
        hosts = 0
        proxied = False
        codings = False
        for name, value in headers:
            if name == b"content-length":
                if limit is not None and value.isdigit() and int(value) > limit:
                    raise MessageTooBig("HTTP body too large", 413)
            elif name == b"host":
                hosts += 1
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = True
            elif name == b"upgrade":
                upgrade = value.lower()
            elif name == b"x-forwarded-for" or name == b"x-forwarded-proto":
                proxied = True
            elif name == b"transfer-encoding":
                codings = True
        version = parser.get_http_version()
        # The native server's checks (RFC 9110 15.6.6: 505; RFC 9112 6.1: 501): llhttp takes
        # HTTP/2.0 and 0.9 as 1.1, and "gzip, chunked" (it only checks that chunked is last).
        if version != "1.1" and version != "1.0":  # the usual two: no call
            check_version(version)
        if codings and not only_chunked(
            (n.decode("latin-1"), v.decode("latin-1")) for n, v in headers
        ):
            raise InvalidMessage("Transfer-Encoding not supported: only chunked", 501)
        # RFC 7230 5.4: a 1.1 request without Host, or any with two, gets 400.
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise InvalidMessage("missing or duplicate Host header")
        method = parser.get_method().decode("ascii")
        client, scheme = self._client, self._scheme
        trusted = self.server.trusted_proxies
        if proxied and trusted is not None:
            # The native server's rule, on a request holding just the proxy's fields.
            fields = Headers(
                (n.decode("latin-1"), v.decode("latin-1"))
                for n, v in headers
                if n in (b"x-forwarded-for", b"x-forwarded-proto")
            )
            probe = Request(method, "/", fields, client=client, scheme=scheme)
            apply_proxy_headers(probe, trusted)
            client, scheme = probe.client, probe.scheme
        scope = self._scope(method, version, headers, client, scheme)
        if upgrade is not None and parser.should_upgrade() and b"websocket" in upgrade:
            scope["type"] = "websocket"
            scope["scheme"] = "wss" if scheme == "https" else "ws"
            self.parsing = None
            self._pending_ws = scope
            if self.cycle is None:
                self._cancel_timer()  # the session has its own (the application decides)
            return
        cycle = _Cycle(self, scope, bool(parser.should_keep_alive()), expect)
        self.parsing = cycle
        if codings:
            self._chunk_line = -2  # the first chunk-size line starts
        if self.cycle is None:
            self._start(cycle)
        else:
            # A pipelined request: it waits for the response before it (RFC 7230 6.3.2).
            self.pipeline.append(cycle)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        """llhttp: body bytes (de-chunked)."""
        cycle = self.parsing
        if cycle is None:
            return
        cycle.received += len(body)
        limit = self.max_body_size
        if limit is not None and cycle.received > limit:
            raise MessageTooBig("HTTP body too large", 413)
        if cycle.response_complete or cycle.disconnected:
            return  # the application answered without reading it: drop
        cycle.body += body
        if len(cycle.body) > BODY_HIGH_WATER:
            self.pause_reading()
            if cycle is self.cycle and self._timer is not None:
                # The application is slow to read, not the client: the timer restarts when
                # it asks for more (resume_reading).
                self._cancel_timer()
                self._body_paused = True
        cycle.wake()

    def on_chunk_header(self) -> None:
        """llhttp: a chunk-size line is complete."""
        self._chunk_line = -1

    def on_chunk_complete(self) -> None:
        """llhttp: a chunk's data is complete: the next chunk-size line starts."""
        self._chunk_line = -2

    def on_message_complete(self) -> None:
        """llhttp: the request is complete."""
        self._chunk_line = -1
        cycle = self.parsing
        if cycle is None:
            return
        self.parsing = None
        cycle.more_body = False
        if cycle is self.cycle:
            self._cancel_timer()  # open_timeout, since the request began
        elif self.cycle is None:
            # Answered before its body was read: it was read on and dropped, now idle.
            self._arm_timer(self.config.keepalive_timeout)
        cycle.wake()

    # -- the exchange -------------------------------------------------------------------------

    def _scope(
        self,
        method: str,
        version: str,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        scheme: str,
    ) -> Scope:
        url = self._url
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        else:  # absolute-form (RFC 7230 5.3.2), or "*"
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        root = self.root_path
        path = urllib.parse.unquote(raw_path.decode("latin-1"))
        return {
            "type": "http",
            "asgi": ASGI_HTTP,
            "http_version": version,
            "server": self._server_addr,
            "client": client,
            "scheme": scheme,
            "method": method,
            "root_path": root,
            "path": root + path,
            "raw_path": root.encode() + raw_path if root else raw_path,
            "query_string": query,
            "headers": headers,
            "state": self.adapter.state.copy(),
        }

    def _start(self, cycle: _Cycle) -> None:
        self.cycle = cycle
        server = self.server
        limits = server.limits
        client = cycle.scope["client"]  # the proxy's client when proxy headers are trusted
        if limits is None or client is None:
            server.run_task(cycle.run(self.adapter.app))
            return
        # Per-IP limits, as on native HTTP routes: over them, 429 with Retry-After; a request
        # counts as one of its IP's open connections while the application handles it.
        ip = client[0]
        wait = limits.admit(ip)
        if wait is not None:
            server.run_task(cycle.run(_Answer(too_many_requests(wait))))
            return
        limits.acquire(ip)
        task = server.run_task(cycle.run(self.adapter.app))
        task.add_done_callback(lambda _: limits.release(ip))

    def response_done(self, cycle: _Cycle) -> None:
        """The application sent the last body part of ``cycle``'s response."""
        self.cycle = None
        transport = self.transport
        if not cycle.keep_alive or self.closing or transport.is_closing():
            transport.close()
            return
        if self.write_paused:
            # Answers back up behind a client that does not read them: take no more requests,
            # nor bytes, until they drain (resume_writing), as the native server does (5fa3ebf).
            # Pipelined requests of a few bytes each otherwise queued their answers without
            # bound; the keep-alive timeout ends a client that never reads.
            self._backlogged = self._held = True
            self.pause_reading()
            self._arm_timer(self.config.keepalive_timeout)
            return
        self._go_on()

    def _go_on(self) -> None:
        # A request body the application did not read is read on and dropped (on_body).
        if self.pipeline:
            self._start(self.pipeline.popleft())
            if self.parsing is self.cycle:
                self._arm_timer(self.config.open_timeout)  # its body is still arriving
        elif self._next is not None:
            self._take_held()
            return
        self.resume_reading()
        if self.cycle is None and self.parsing is None:
            self._arm_timer(self.config.keepalive_timeout)

    def _take_held(self) -> None:
        # The pipeline before it is answered: the upgrade or the error that followed.
        self._held = False
        after, self._next = self._next, None
        if isinstance(after, bytes):
            self._upgrade(after)
            if not self.transport.is_closing():
                self.resume_reading()
        elif after is not None:
            self._refuse(*after)

    async def drain(self) -> None:
        """Wait until the write buffer is below the low-water mark (or the client left).

        Aborts the connection after ``write_timeout`` seconds without progress.
        """
        timeout = self.config.write_timeout
        while self.write_paused and not self.transport.is_closing():
            self._drain = self.loop.create_future()
            try:
                await asyncio.wait_for(self._drain, timeout)
            except asyncio.TimeoutError:
                # A client that stopped reading a streamed body: drop it (write_timeout, as
                # for native streaming responses) rather than hold it until TCP gives up.
                self.transport.abort()

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_reading(self) -> None:
        """Stop reading from the socket (request body buffered, or a pipelined request)."""
        if not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the socket again."""
        if self._read_paused and not self.pipeline and not self._held:
            self._read_paused = False
            self.transport.resume_reading()
            if self._body_paused:
                self._body_paused = False
                self._arm_timer(self.config.open_timeout)

    def write_error(self, status: int, message: str) -> None:
        """Answer with a plain-text error and ``Connection: close``."""
        body = message.encode() + b"\n"
        self.transport.write(
            b"HTTP/1.1 %d %b\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%b"
            % (status, _REASONS.get(status, b""), len(body), body)
        )

    def _refuse(self, status: int, message: str) -> None:
        cycle = self.parsing or self.cycle
        if cycle is not None and cycle.response_started:
            self.transport.close()  # too late for a status: cut the connection
            return
        if cycle is not None:
            cycle.disconnected = True
            cycle.wake()
        self.write_error(status, message)
        access_logger.info("%s - - %d (%s)", self._peer(), status, message)
        self.transport.close()

    def log_access(self, scope: Scope, status: int, size: int = 0) -> None:
        """One access log line for a response or a handshake, as the native server's.

        ``client "METHOD target HTTP/version" status size``, at INFO (native routes may set
        another level; an ASGI application's requests have no route here). The client is
        ``scope["client"]``: the proxy's client when proxy headers are trusted.
        """
        if not access_logger.isEnabledFor(logging.INFO):
            return
        query = scope["query_string"]
        target = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        client = scope["client"]
        access_logger.info(
            '%s "%s %s HTTP/%s" %d %d',
            client[0] if client is not None else self._peer(),
            scope.get("method", "GET"),
            redact_target(target),  # tokens in query strings never reach a log
            scope["http_version"],
            status,
            size,
        )

    def _peer(self) -> str:
        return self._client[0] if self._client else "-"

    # -- WebSocket ----------------------------------------------------------------------------

    def _upgrade(self, trailing: bytes) -> None:
        scope = self._pending_ws
        if scope is None:
            # An Upgrade this server does not speak (h2c...): the request was answered as
            # HTTP; llhttp has stopped, so the connection ends after it (RFC 7230 6.7).
            if self.cycle is not None:
                self.cycle.keep_alive = False
            else:
                self.transport.close()
            return
        if self.cycle is not None:
            # Pipelined behind a request: upgraded once that is answered, as natively.
            self._next = trailing
            self._hold()
            return
        self._pending_ws = None
        from .websocket import ASGIWebSocketSession  # here: websocket.py imports this module

        request = Request(
            scope["method"],  # the handshake refuses another method than GET (RFC 6455 4.1)
            self._url.decode("latin-1"),
            Headers((n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]),
            version=scope["http_version"],
            client=scope["client"],
            scheme="https" if scope["scheme"] == "wss" else "http",
        )
        self.session = ASGIWebSocketSession(self, scope, request, trailing)
        self.session.start()

    def websocket_opened(self, ws: WebSocket) -> None:
        """The application accepted: ``ws`` now owns the transport."""
        self.websocket = ws
        self.session = None
        self.server.websockets.add(ws)
        metrics = self.server.metrics
        if metrics is not None:
            metrics.handshake(ws.request.path, 101)

    def websocket_closed(self) -> None:
        """The WebSocket's TCP connection is closed and its application returned."""
        if self.websocket is not None:
            self.server.websockets.discard(self.websocket)
            metrics = self.server.metrics
            if metrics is not None:
                metrics.closed(self.websocket)  # its counters join the closed totals
        self.server.discard_connection(self)
        self._cancel_timer()

    # -- timers -------------------------------------------------------------------------------

    def _arm_timer(self, timeout: float | None) -> None:
        self._cancel_timer()
        if timeout is not None:
            self._timer = self.loop.call_later(timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._backlogged:
            self.transport.abort()  # it does not read: close() would wait for the buffer
        elif (
            self.session is None
            and self.websocket is None
            # Idle, or a request (head or body) not complete within open_timeout.
            and (self.cycle is None or self.parsing is not None)
        ):
            self.transport.close()
