"""The application object: routes for WebSocket endpoints, HTTP handlers and static files.

One :class:`App` serves web pages, small HTTP/JSON endpoints and WebSocket upgrades on one port,
like a Netty pipeline of HTTP codec, aggregator, WebSocket protocol handler and page handler::

    app = App()

    @app.websocket("/chat", subprotocols=["chat"])
    async def chat(ws):
        async for message in ws:
            await ws.send(message)

    @app.get("/api/data")
    async def data(request):
        return {"message": "hello"}

    app.static("/", "public/")

Paths may hold parameters with converters, as in Starlette (``compile_path``): ``/rooms/{room}``
(``str``, one segment), ``/items/{id:int}``, ``{x:float}``, ``{rest:path}`` (slashes included)
and ``{key:uuid}``. The converted values are ``request.path_params`` (HTTP) and
``ws.path_params`` (WebSocket). Exact paths stay one dict lookup; only a path no exact route
answers is tried against the parameterised ones, in registration order.
"""

from __future__ import annotations

import inspect
import json
import logging
import mimetypes
import os
import re
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..auth.identity import AuthError
from ..protocol.connection import DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE
from ..protocol.http11 import Headers, Request, Response
from .connection import WebSocket, WebSocketListener

__all__ = [
    "APP_AUTH",
    "CONVERTERS",
    "DEFAULT_STATIC_CHUNK_SIZE",
    "SERVER_DEFAULT",
    "App",
    "FileResponse",
    "HTTPHandler",
    "HTTPResult",
    "HTTPRoute",
    "StaticRoute",
    "StreamingResponse",
    "WebSocketHandler",
    "WebSocketRoute",
    "call_handler",
    "compile_path",
    "html_response",
    "json_response",
    "refusal_response",
    "text_response",
    "to_response",
    "upgrade_required",
]

#: Extra response headers, as (name, value) pairs.
ExtraHeaders = Sequence[tuple[str, str]]


logger = logging.getLogger("fullduplex")


@dataclass
class StreamingResponse:
    """A response whose body is produced over time (Server-Sent Events, long downloads).

    The body is sent with chunked transfer encoding as the iterator yields; the server waits
    for the write buffer to drain between chunks, and cancels the iterator (its ``finally``
    blocks run) as soon as the client disconnects.

    A client that stops reading for the server's ``write_timeout`` is dropped (TCP reset);
    ``on_stalled`` is called first. :meth:`abort` drops the client at once.

    Attributes:
        status: the status code.
        headers: the header fields (``Transfer-Encoding: chunked`` is added).
        body: an async iterator of byte chunks.
        on_stalled: called (no argument) when the server drops the stream because the
            client read nothing for ``write_timeout`` seconds.
        aborter: how the server drops this response's connection, set when it starts
            sending it (see :meth:`abort`); None before.
    """

    status: int
    headers: Headers
    body: AsyncIterable[bytes]
    on_stalled: Callable[[], None] | None = None
    aborter: Callable[[], None] | None = field(default=None, repr=False)

    def abort(self) -> None:
        """Drop the client now, without the rest of the body.

        For a client too slow to be worth waiting for (an event stream's slow consumer):
        whatever is still buffered for it would only delay the end. The native server resets
        the TCP connection at once and closes the body's iterator; under ASGI, which cannot
        drop a connection, the body ends at its next chunk. Does nothing before the server
        started sending the response.
        """
        if self.aborter is not None:
            self.aborter()


#: What an HTTP handler may return: a Response, a StreamingResponse, or a value converted by
#: :func:`to_response`.
HTTPResult = Response | StreamingResponse | dict[str, Any] | list[Any] | str | bytes
#: An HTTP handler: takes the request, returns (or awaits to) an :data:`HTTPResult`.
HTTPHandler = Callable[[Request], "Awaitable[HTTPResult] | HTTPResult"]
#: A WebSocket handler: a coroutine function run for the lifetime of one connection, or a
#: :class:`~fullduplex.asyncio.connection.WebSocketListener` subclass (the callback API).
WebSocketHandler = Callable[[WebSocket], Awaitable[None]] | type[WebSocketListener]


class _ServerDefault:
    def __repr__(self) -> str:
        return "SERVER_DEFAULT"


#: Marks a per-route limit that falls back to the server's setting.
SERVER_DEFAULT: Any = _ServerDefault()


class _AppAuth:
    def __repr__(self) -> str:
        return "APP_AUTH"


#: Marks a route's authenticator as the application's (``App(auth=...)``).
APP_AUTH: Any = _AppAuth()


#: Path parameter converters: name -> (regular expression, conversion). Starlette's set.
CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "str": (r"[^/]+", str),
    "path": (r".*", str),
    "int": (r"[0-9]+", int),
    "float": (r"[0-9]+(?:\.[0-9]+)?", float),
    "uuid": (
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        uuid.UUID,
    ),
}

_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::([a-zA-Z_][a-zA-Z0-9_]*))?}")


def compile_path(path: str) -> tuple[re.Pattern[str], dict[str, Callable[[str], Any]]]:
    """Compile a route path with ``{name}`` or ``{name:converter}`` parameters.

    Returns:
        The regular expression matching whole request paths, and each parameter's
        conversion function.

    Raises:
        ValueError: an unknown converter, or a parameter named twice.
    """
    pattern = "^"
    converters: dict[str, Callable[[str], Any]] = {}
    end = 0
    for match in _PARAM.finditer(path):
        name, kind = match.group(1), match.group(2) or "str"
        if kind not in CONVERTERS:
            raise ValueError(f"unknown path converter {kind!r} in {path!r}")
        if name in converters:
            raise ValueError(f"path parameter {name!r} appears twice in {path!r}")
        regex, convert = CONVERTERS[kind]
        pattern += re.escape(path[end : match.start()]) + f"(?P<{name}>{regex})"
        converters[name] = convert
        end = match.end()
    pattern += re.escape(path[end:]) + "$"
    return re.compile(pattern), converters


def _match(
    path: str, pattern: re.Pattern[str], converters: dict[str, Callable[[str], Any]]
) -> dict[str, Any] | None:
    match = pattern.match(path)
    if match is None:
        return None
    try:
        return {name: converters[name](value) for name, value in match.groupdict().items()}
    except ValueError:  # a float or uuid the regex let through but the type refuses
        return None


def json_response(
    data: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    """Build a JSON response (``application/json``, UTF-8)."""
    body = json.dumps(data, separators=(",", ":")).encode()
    return _response(status, "application/json", body, headers)


def refusal_response(exc: AuthError | None) -> Response:
    """The answer to a refused request: ``exc``'s status (401, 403) and ``{"error": message}``.

    A 401 carries the ``WWW-Authenticate`` challenge (RFC 7235 3.1: "The server generating a
    401 response MUST send a WWW-Authenticate header field"). None, for an authenticator that
    failed, is a 500 that says nothing more.
    """
    if exc is None:
        return json_response({"error": "internal server error"}, 500)
    extra = [("WWW-Authenticate", exc.www_authenticate)] if exc.status == 401 else []
    return json_response({"error": str(exc)}, exc.status, extra)


def text_response(
    text: str, status: int = 200, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    """Build a plain-text response (``text/plain; charset=utf-8``)."""
    return _response(status, "text/plain; charset=utf-8", text.encode(), headers)


def upgrade_required() -> Response:
    """The answer to a plain HTTP request on a WebSocket route: 426 with ``Upgrade``.

    RFC 7231 6.5.15: "The server MUST send an Upgrade header field in a 426 response".
    """
    return text_response(
        "this endpoint speaks WebSocket: send an Upgrade request\n",
        426,
        [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
    )


def html_response(
    html: str, status: int = 200, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    """Build an HTML response (``text/html; charset=utf-8``)."""
    return _response(status, "text/html; charset=utf-8", html.encode(), headers)


def _response(status: int, content_type: str, body: bytes, headers: ExtraHeaders) -> Response:
    h = Headers([("Content-Type", content_type), *headers])
    return Response(status, h, body)


def to_response(result: HTTPResult) -> Response | StreamingResponse:
    """Convert a handler's return value: dict or list to JSON, str to text, bytes to binary.

    Raises:
        TypeError: the value is none of those.
    """
    if isinstance(result, (Response, StreamingResponse)):
        return result
    if isinstance(result, (dict, list)):
        return json_response(result)
    if isinstance(result, str):
        return text_response(result)
    if isinstance(result, (bytes, bytearray)):
        return _response(200, "application/octet-stream", bytes(result), ())
    raise TypeError(f"HTTP handler returned {type(result).__name__}, not a response")


async def call_handler(
    handler: Callable[[Request], Any], request: Request, log: logging.Logger
) -> Response | StreamingResponse:
    """Run an HTTP handler (a function or a coroutine function) and convert its result.

    The native server and the ASGI hub answer with it alike (see :func:`to_response`).

    Args:
        handler: the route's handler for the request's method.
        request: the request.
        log: where a handler that raises (or returns no response) is logged, traceback
            included; the client gets a 500 without the details.
    """
    try:
        result = handler(request)
        if inspect.isawaitable(result):
            result = await result
        response = to_response(result)
    except Exception:
        log.exception("HTTP handler for %s raised", request.path)
        return text_response("internal server error\n", 500)
    if response is result and type(response) is Response:  # built by the handler itself
        error = _framing_error(response, request.method)
        if error is not None:
            # The body is sent whole after a head that says otherwise: a keep-alive client
            # would read the rest as its next answer, or wait for bytes that never come.
            log.error("HTTP handler for %s %s: answered 500 instead", request.path, error)
            return text_response("internal server error\n", 500)
    return response


def _framing_error(response: Response, method: str) -> str | None:
    """Why a handler's whole-body response would desynchronise the stream, or None."""
    headers = response.headers
    status = response.status
    if method == "HEAD" or status < 200 or status in (204, 304):
        return None  # no body follows the head (HEAD: the server sets Content-Length)
    if "Transfer-Encoding" in headers:
        return "set Transfer-Encoding on a response with a whole body"
    declared = headers.get_all("Content-Length")
    if declared and declared != [str(len(response.body))]:
        size = len(response.body)
        return f"declared Content-Length {', '.join(declared)} for a body of {size} bytes"
    return None


@dataclass
class WebSocketRoute:
    """A WebSocket endpoint and its per-route settings.

    Attributes:
        path: the request path it answers.
        handler: the coroutine run for each connection.
        subprotocols: subprotocols supported, in order of preference.
        select_subprotocol: a hook choosing the subprotocol, overriding the preference order.
        origins: the Origin allow-list, None for the safe default (same host or no Origin).
        compression: whether permessage-deflate is accepted.
        max_message_size: message size limit (1009 above it), None for no limit.
        max_frame_size: frame size limit (1009 above it); None: bounded by the message limit.
        require_subprotocol: refuse (400) clients that offer none of ``subprotocols``.
        auth: the route's authenticator, :data:`APP_AUTH` for the application's, None for
            none (see :mod:`fullduplex.auth`).
    """

    path: str
    handler: WebSocketHandler
    subprotocols: Sequence[str] = ()
    select_subprotocol: Callable[[Request, Sequence[str]], str | None] | None = None
    origins: Sequence[str | re.Pattern[str]] | None = None
    compression: bool = True
    max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE
    max_frame_size: int | None = DEFAULT_MAX_FRAME_SIZE
    require_subprotocol: bool = False
    pattern: re.Pattern[str] | None = field(default=None, repr=False)
    converters: dict[str, Callable[[str], Any]] = field(default_factory=dict, repr=False)
    auth: Any = APP_AUTH


@dataclass
class HTTPRoute:
    """An HTTP endpoint: one path, a handler per method.

    Attributes:
        path: the request path it answers (may hold ``{parameters}``).
        handler: the handler registered first (kept for callers of one-handler routes).
        methods: the methods accepted (others get 405 with ``Allow``).
        handlers: the handler of each method.
        pattern: the compiled path, for a path with parameters, else None.
        converters: each path parameter's conversion function.
        auth: the route's authenticator, :data:`APP_AUTH` for the application's, None for
            none (see :mod:`fullduplex.auth`); the first registration of a path sets it.
        access_log_level: the level of this route's lines in the ``fullduplex.access`` log
            (``logging.DEBUG`` for polls, which a live page repeats all day).
    """

    path: str
    handler: HTTPHandler
    methods: frozenset[str] = frozenset({"GET", "HEAD"})
    handlers: dict[str, HTTPHandler] = field(default_factory=dict)
    pattern: re.Pattern[str] | None = field(default=None, repr=False)
    converters: dict[str, Callable[[str], Any]] = field(default_factory=dict, repr=False)
    auth: Any = APP_AUTH
    access_log_level: int = logging.INFO

    def __post_init__(self) -> None:
        if not self.handlers:
            self.handlers = dict.fromkeys(self.methods, self.handler)
        if self.pattern is None and "{" in self.path:
            self.pattern, self.converters = compile_path(self.path)

    def add(self, methods: frozenset[str], handler: HTTPHandler) -> None:
        """Route ``methods`` of this path to ``handler`` too."""
        self.handlers.update(dict.fromkeys(methods, handler))
        self.methods = frozenset(self.handlers)


#: Static files up to this size are read whole; larger ones are sent in chunks of this size.
DEFAULT_STATIC_CHUNK_SIZE = 256 * 1024


@dataclass(eq=False)
class FileResponse:
    """A static file too large to read whole: the server sends it in chunks.

    Attributes:
        status: the status code.
        headers: the header fields (``Content-Length`` is the server's).
        file: the file, open; whoever sends the response closes it.
        size: bytes sent (the file's size when it was opened).
        chunk_size: bytes read and written at a time.
    """

    status: int
    headers: Headers
    file: BinaryIO
    size: int
    chunk_size: int = DEFAULT_STATIC_CHUNK_SIZE


#: The longest file name most filesystems accept (NAME_MAX: ext4, XFS, btrfs, tmpfs, APFS).
_MAX_NAME_BYTES = 255


@dataclass
class StaticRoute:
    """Files served from a folder under a path prefix.

    Attributes:
        prefix: the path prefix, e.g. ``"/"`` or ``"/static/"``.
        folder: the folder; requests never escape it.
        index: the file served for a folder.
        chunk_size: files up to this size are read whole; larger ones are sent in chunks of
            this size, each after the client has taken the previous ones.
    """

    prefix: str
    folder: Path
    index: str = "index.html"
    chunk_size: int = DEFAULT_STATIC_CHUNK_SIZE

    def resolve(self, path: str) -> Path | None:
        """Map a request path to a file inside the folder, or None."""
        rel = path[len(self.prefix) :]
        parts = [p for p in rel.split("/") if p]
        if any(p in (".", "..") or "\\" in p or "\x00" in p for p in parts):
            return None
        if any(len(p.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES for p in parts):
            return None  # no file has such a name (the filesystem would say ENAMETOOLONG)
        target = self.folder.joinpath(*parts) if parts else self.folder
        # Every filesystem call may raise OSError for a name the kernel refuses (ENAMETOOLONG
        # for the whole path, EACCES, ELOOP...): that is a path with no file, a 404.
        try:
            if target.is_dir():
                target = target / self.index
            target = target.resolve(strict=True)
            root = self.folder.resolve()
            if root != target and root not in target.parents:
                return None
            return target if target.is_file() else None
        except (OSError, RuntimeError, ValueError):
            return None

    def serve(self, path: str) -> Response | FileResponse | None:
        """Build the response for a request path, or None if no file matches.

        A file of up to :attr:`chunk_size` bytes is read whole (a :class:`Response`); a
        larger one is a :class:`FileResponse`, its file open, which the server sends in chunks
        of :attr:`chunk_size` as the client reads them.
        """
        target = self.resolve(path)
        if target is None:
            return None
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        headers = Headers([("Content-Type", ctype), ("Cache-Control", "no-cache")])
        try:
            file = open(target, "rb")  # noqa: SIM115 (the FileResponse owns it)
        except OSError:
            return None  # gone, unreadable or not a regular file since resolve(): a 404
        try:
            size = os.fstat(file.fileno()).st_size
            if size > self.chunk_size:
                return FileResponse(200, headers, file, size, self.chunk_size)
            body = file.read(self.chunk_size)  # bounded if the file grew meanwhile
        except OSError:
            file.close()
            return None
        except BaseException:
            file.close()
            raise
        file.close()
        return Response(200, headers, body)


class App:
    """Routes of one server: WebSocket endpoints, HTTP handlers and static folders.

    Args:
        auth: the authenticator of every WebSocket and HTTP route (not of static files):
            ``(request) -> Identity | None``, sync or async, raising
            :class:`~fullduplex.auth.AuthError` to refuse (see :mod:`fullduplex.auth`).
            None (the default): no authentication, and ``request.identity`` is None.
        cors: the CORS policy of the HTTP routes (:class:`~fullduplex.auth.CORS`), or None
            for none (other origins' pages cannot read answers).
    """

    #: Builds the ``asyncio.Protocol`` of each connection from the server, instead of the
    #: native HTTP protocol (None); :class:`~fullduplex.asgi.ASGIAdapter` sets it.
    protocol_factory: Callable[[Any], Any] | None = None

    def __init__(self, *, auth: Any = None, cors: Any = None) -> None:
        #: The authenticator of routes that do not set their own (None: none).
        self.auth: Any = auth
        #: The CORS policy of HTTP routes (a :class:`~fullduplex.auth.CORS`), or None.
        self.cors: Any = cors
        #: WebSocket routes by path.
        self.websocket_routes: dict[str, WebSocketRoute] = {}
        #: HTTP routes by path.
        self.http_routes: dict[str, HTTPRoute] = {}
        #: WebSocket routes whose paths hold parameters, in registration order.
        self.websocket_patterns: list[WebSocketRoute] = []
        #: HTTP routes whose paths hold parameters, in registration order.
        self.http_patterns: list[HTTPRoute] = []
        #: Static folders, longest prefix first.
        self.static_routes: list[StaticRoute] = []
        #: Called (and awaited if they return awaitables) before the server starts listening.
        self.startup_hooks: list[Callable[[], Any]] = []
        #: Called after the server closed its connections, in reverse order of registration.
        self.shutdown_hooks: list[Callable[[], Any]] = []
        #: The :class:`fullduplex.metrics.Metrics` counting this app's connections, once
        #: :meth:`enable_metrics` turned them on; None otherwise (nothing is counted).
        self.metrics: Any = None
        #: Called (synchronously) when the server starts closing, before it closes anything.
        self.closing_hooks: list[Callable[[], None]] = []

    def authenticate(self, auth: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """Set the application's authenticator (a decorator; see :mod:`fullduplex.auth`)."""
        self.auth = auth
        return auth

    def auth_for(self, route: WebSocketRoute | HTTPRoute) -> Any:
        """The authenticator that applies to ``route`` (its own, else the app's), or None."""
        auth = route.auth
        return self.auth if auth is APP_AUTH else auth

    def on_startup(self, hook: Callable[[], Any]) -> Callable[[], Any]:
        """Register a function run before the server listens (a decorator; may be async)."""
        self.startup_hooks.append(hook)
        return hook

    def on_shutdown(self, hook: Callable[[], Any]) -> Callable[[], Any]:
        """Register a function run once the server has closed (a decorator; may be async)."""
        self.shutdown_hooks.append(hook)
        return hook

    async def startup(self) -> None:
        """Run the startup hooks, in the order they were registered.

        The server calls this before it listens; an application served by another server (a
        :class:`~fullduplex.asgi.HubApp` under uvicorn) calls it from its lifespan. A hook
        that raises stops the startup: the exception propagates.
        """
        for hook in self.startup_hooks:
            result = hook()
            if inspect.isawaitable(result):
                await result

    async def shutdown(self) -> None:
        """Run the shutdown hooks, the last registered first.

        A hook that raises is logged and the others still run.
        """
        for hook in reversed(self.shutdown_hooks):
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("shutdown hook %r raised", hook)

    def enable_metrics(self, path: str = "/metrics", **options: Any) -> Any:
        """Serve Prometheus metrics at ``path``, and ``/healthz`` and ``/readyz``.

        One call turns them on; see :func:`fullduplex.metrics.mount` for the options
        (``hub=``, ``transports=``, ``health=``...).

        Returns:
            The :class:`fullduplex.metrics.Metrics`.
        """
        from ..metrics import mount

        return mount(self, path, **options)

    def on_closing(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Register a function run when the server starts closing (a decorator; synchronous).

        It runs before the server sends 1001 to every WebSocket and ends streaming responses:
        the place to close connections with another code (the pub/sub route sends 1012,
        Service Restart) or to end event streams and long polls with a last word.
        """
        self.closing_hooks.append(hook)
        return hook

    def websocket(
        self,
        path: str,
        *,
        subprotocols: Sequence[str] = (),
        select_subprotocol: Callable[[Request, Sequence[str]], str | None] | None = None,
        origins: Sequence[str | re.Pattern[str]] | None = None,
        compression: bool = True,
        max_message_size: int | None = SERVER_DEFAULT,
        max_frame_size: int | None = SERVER_DEFAULT,
        require_subprotocol: bool = False,
        auth: Any = APP_AUTH,
    ) -> Callable[[WebSocketHandler], WebSocketHandler]:
        """Register a WebSocket handler for ``path`` (a decorator).

        Args:
            path: the request path.
            subprotocols: supported subprotocols, in order of preference.
            select_subprotocol: a hook ``(request, offered) -> str | None`` to choose instead.
            origins: Origin allow-list (exact strings, ``*`` patterns or compiled regexes);
                None accepts same-host Origins and clients sending no Origin.
            compression: accept permessage-deflate.
            max_message_size: per-route message limit; the server's default when omitted.
            max_frame_size: per-route frame limit; the server's default when omitted.
            require_subprotocol: refuse (400) a client offering none of ``subprotocols``
                instead of accepting it without a subprotocol.
            auth: this route's authenticator; the app's when omitted, None for none.
        """
        _check_path(path)

        def register(handler: WebSocketHandler) -> WebSocketHandler:
            route = WebSocketRoute(
                path, handler, tuple(subprotocols), select_subprotocol, origins, compression
            )
            route.max_message_size = max_message_size
            route.max_frame_size = max_frame_size
            route.require_subprotocol = require_subprotocol
            route.auth = auth
            if "{" in path:
                route.pattern, route.converters = compile_path(path)
                self.websocket_patterns.append(route)
            else:
                self.websocket_routes[path] = route
            return handler

        return register

    def route(
        self,
        path: str,
        methods: Sequence[str] = ("GET",),
        *,
        auth: Any = APP_AUTH,
        access_log_level: int = logging.INFO,
    ) -> Callable[[HTTPHandler], HTTPHandler]:
        """Register an HTTP handler for ``path`` and ``methods`` (a decorator).

        The handler takes the :class:`~fullduplex.protocol.http11.Request` and returns (or
        awaits to) a Response, a dict or list (sent as JSON), a str (text) or bytes. Several
        handlers may share a path with different methods; other methods get 405 with
        ``Allow``. ``{name}`` and ``{name:int}`` parts of ``path`` are path parameters
        (``request.path_params``). ``auth`` is the route's authenticator: the app's when
        omitted, None for none. ``access_log_level`` is the level of the route's access log
        lines (``logging.DEBUG`` keeps frequent requests such as polls out of an INFO log).

        Raises:
            ValueError: the path does not start with ``/`` or has an unknown converter.
        """
        _check_path(path)
        allowed = {m.upper() for m in methods}
        if "GET" in allowed:
            allowed.add("HEAD")

        methods_set = frozenset(allowed)
        level = access_log_level
        if "{" in path:
            compile_path(path)  # ValueError now, not at the first request

        def register(handler: HTTPHandler) -> HTTPHandler:
            table = self.http_patterns if "{" in path else None
            existing = (
                self.http_routes.get(path)
                if table is None
                else next((r for r in table if r.path == path), None)
            )
            if existing is not None:
                existing.add(methods_set, handler)
            elif table is not None:
                table.append(
                    HTTPRoute(path, handler, methods_set, auth=auth, access_log_level=level)
                )
            else:
                self.http_routes[path] = HTTPRoute(
                    path, handler, methods_set, auth=auth, access_log_level=level
                )
            return handler

        return register

    def get(
        self, path: str, *, auth: Any = APP_AUTH, access_log_level: int = logging.INFO
    ) -> Callable[[HTTPHandler], HTTPHandler]:
        """Register a GET handler (a decorator; the options are :meth:`route`'s)."""
        return self.route(path, ("GET",), auth=auth, access_log_level=access_log_level)

    def post(
        self, path: str, *, auth: Any = APP_AUTH, access_log_level: int = logging.INFO
    ) -> Callable[[HTTPHandler], HTTPHandler]:
        """Register a POST handler (a decorator; the options are :meth:`route`'s)."""
        return self.route(path, ("POST",), auth=auth, access_log_level=access_log_level)

    def put(self, path: str, *, auth: Any = APP_AUTH) -> Callable[[HTTPHandler], HTTPHandler]:
        """Register a PUT handler (a decorator)."""
        return self.route(path, ("PUT",), auth=auth)

    def delete(self, path: str, *, auth: Any = APP_AUTH) -> Callable[[HTTPHandler], HTTPHandler]:
        """Register a DELETE handler (a decorator)."""
        return self.route(path, ("DELETE",), auth=auth)

    def match_websocket(self, request: Request) -> WebSocketRoute | None:
        """The parameterised WebSocket route for ``request``; sets ``request.path_params``."""
        path = request.path
        for route in self.websocket_patterns:
            assert route.pattern is not None
            params = _match(path, route.pattern, route.converters)
            if params is not None:
                request.path_params = params
                return route
        return None

    def match_http(self, request: Request) -> HTTPRoute | None:
        """The parameterised HTTP route for ``request``; sets ``request.path_params``.

        A route matching the path and the method wins; else the first one matching the path
        (the server answers 405 with its methods); else None.
        """
        path = request.path
        fallback: tuple[HTTPRoute, dict[str, Any]] | None = None
        for route in self.http_patterns:
            assert route.pattern is not None
            params = _match(path, route.pattern, route.converters)
            if params is None:
                continue
            if request.method in route.handlers:
                request.path_params = params
                return route
            if fallback is None:
                fallback = (route, params)
        if fallback is None:
            return None
        request.path_params = fallback[1]
        return fallback[0]

    def static(
        self,
        prefix: str,
        folder: str | os.PathLike[str],
        *,
        chunk_size: int = DEFAULT_STATIC_CHUNK_SIZE,
    ) -> None:
        """Serve the files of ``folder`` under the path ``prefix``.

        Args:
            prefix: the path prefix.
            folder: the folder.
            chunk_size: files up to this size are read whole per request; larger ones are
                sent in chunks of this size as the client takes them (memory per request
                stays about ``chunk_size`` plus the write buffer, whatever the file's size).

        Raises:
            ValueError: the folder does not exist, or ``chunk_size`` is not positive.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        _check_path(prefix)
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"static folder {root} does not exist")
        if not prefix.endswith("/"):
            prefix += "/"
        self.static_routes.append(StaticRoute(prefix, root, chunk_size=chunk_size))
        self.static_routes.sort(key=lambda r: len(r.prefix), reverse=True)

    def find_static(self, path: str) -> Response | FileResponse | None:
        """Serve ``path`` from the static folders, or return None."""
        for route in self.static_routes:
            if path.startswith(route.prefix) or path + "/" == route.prefix:
                response = route.serve(path if path.startswith(route.prefix) else route.prefix)
                if response is not None:
                    return response
        return None

    def is_static(self, path: str) -> bool:
        """Whether ``path`` names a file of the static folders (without reading it)."""
        return any(
            route.resolve(path if path.startswith(route.prefix) else route.prefix) is not None
            for route in self.static_routes
            if path.startswith(route.prefix) or path + "/" == route.prefix
        )


def _check_path(path: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"route path must start with '/': {path!r}")
