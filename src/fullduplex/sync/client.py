"""The threaded client, for scripts and notebooks: :func:`connect`.

Same names as the asyncio client, without ``await``::

    with fullduplex.sync.connect("ws://127.0.0.1:8000/echo") as ws:
        ws.send("hello")
        print(ws.recv(timeout=5))

One background thread per connection reads the socket and feeds the sans-I/O core; received
messages wait in a bounded queue (the reader stops reading when it is full, so TCP holds the
peer back), and :meth:`ClientConnection.recv` takes them. With ``ping_interval`` set (20 s by
default, as in the asyncio client), a second thread sends a keepalive ping at that interval and
closes the connection with 1011 when its pong takes longer than ``ping_timeout``: a server or
a network path that died silently is noticed, and NAT or proxy idle timeouts are kept at bay.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import socket
import ssl as ssl_module
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..config import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_QUEUE,
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    UNSET,
    Config,
    resolve_alias,
)
from ..protocol import (
    BinaryMessage,
    CloseCode,
    Connection,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    Pong,
    Side,
    State,
    TextMessage,
)
from ..protocol.deflate import ClientPerMessageDeflateFactory
from ..protocol.exceptions import InvalidMessage
from ..protocol.handshake import ClientHandshake
from ..protocol.http11 import Request, Response, ResponseParser

__all__ = ["ClientConnection", "connect"]

#: A WebSocket message: ``str`` for text, ``bytes`` for binary.
Data = str | bytes


class ClientConnection:
    """An open WebSocket connection in a thread; created by :func:`connect`.

    Args:
        sock: the connected socket, after the handshake.
        core: the sans-I/O connection.
        request: the handshake request.
        response: the handshake response.
        subprotocol: the negotiated subprotocol.
        close_timeout: seconds to wait for the closing handshake.
        max_queue: received messages held before the reader thread stops reading.
        trailing: bytes received right after the handshake response.
        ping_interval: seconds between keepalive pings, None for none.
        ping_timeout: seconds to wait for a keepalive pong before closing with 1011, None to
            wait forever.
    """

    def __init__(
        self,
        sock: socket.socket,
        core: Connection,
        *,
        request: Request,
        response: Response,
        subprotocol: str | None,
        close_timeout: float | None,
        max_queue: int,
        trailing: bytes = b"",
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
    ) -> None:
        self.sock = sock
        self.core = core
        #: The handshake request.
        self.request = request
        #: The handshake response.
        self.response = response
        #: The negotiated subprotocol, or None.
        self.subprotocol = subprotocol
        #: The server's address.
        self.remote_address: Any = sock.getpeername()
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        #: Round-trip time of the last ping, in seconds (0 until one completes).
        self.latency = 0.0
        # Received messages, at most max_queue (the reader waits for room), and the condition
        # the reader and recv() wait on. The end of the messages is a flag, not an item: it
        # must get through when the queue is full (issue 15: a marker dropped after a short
        # wait left recv() blocked forever).
        self._messages: collections.deque[Data] = collections.deque()
        self._max_queue = max_queue
        self._ready = threading.Condition(threading.Lock())
        self._ended = False  # the reader is done: no message will be added
        self._closing = False  # close() was called: the reader no longer waits for room
        self._lock = threading.Lock()
        self._pings: dict[bytes, tuple[float, threading.Event, list[float]]] = {}
        self._closed = threading.Event()
        self._reader = threading.Thread(
            target=self._read_loop, args=(trailing,), name="fullduplex-reader", daemon=True
        )
        self._reader.start()
        self._keepalive: threading.Thread | None = None
        if ping_interval is not None:
            self._keepalive = threading.Thread(
                target=self._keepalive_loop, name="fullduplex-keepalive", daemon=True
            )
            self._keepalive.start()

    @property
    def state(self) -> State:
        """The connection state."""
        return self.core.state

    @property
    def close_code(self) -> int | None:
        """The close code once closed, else None."""
        return self.core.close_code if self._closed.is_set() else None

    @property
    def close_reason(self) -> str | None:
        """The close reason once closed, else None."""
        return self.core.close_reason if self._closed.is_set() else None

    def recv(self, timeout: float | None = None) -> Data:
        """Receive the next message.

        Args:
            timeout: seconds to wait; None waits forever.

        Raises:
            TimeoutError: nothing arrived in time.
            ConnectionClosed: the connection is closed and every message received was taken.
        """
        with self._ready:
            if not self._ready.wait_for(self._takeable, timeout):
                raise TimeoutError(f"no message within {timeout}s")
            if self._messages:
                message = self._messages.popleft()
                self._ready.notify_all()  # the reader may be waiting for room
                return message
        raise self._closed_exception()

    def _takeable(self) -> bool:
        return bool(self._messages) or self._ended

    def __iter__(self) -> Iterator[Data]:
        """Iterate over messages until the connection closes normally."""
        try:
            while True:
                yield self.recv()
        except ConnectionClosedOK:
            return

    def send(self, message: Data | Iterable[Data]) -> None:
        """Send a message; an iterable is sent as one fragmented message.

        Raises:
            ConnectionClosed: the connection is closing or closed.
        """
        with self._lock:
            if self.core.state is not State.OPEN:
                raise self._closed_exception()
            if isinstance(message, str):
                self.core.send_text(message)
            elif isinstance(message, (bytes, bytearray, memoryview)):
                self.core.send_binary(message)
            else:
                chunks = list(message)
                if chunks and isinstance(chunks[0], str):
                    self.core.send_text(chunks)  # type: ignore[arg-type]
                else:
                    self.core.send_binary(chunks)  # type: ignore[arg-type]
            self._flush()

    def ping(self, data: bytes | None = None, timeout: float | None = None) -> float:
        """Send a ping and wait for its pong; return the round-trip time in seconds.

        Raises:
            TimeoutError: no pong within ``timeout``.
        """
        payload = secrets.token_bytes(4) if data is None else data
        done = threading.Event()
        result: list[float] = []
        with self._lock:
            if self.core.state is not State.OPEN:
                raise self._closed_exception()
            self.core.send_ping(payload)
            self._pings[payload] = (time.monotonic(), done, result)
            self._flush()
        if not done.wait(timeout):
            with self._lock:
                self._pings.pop(payload, None)
            raise TimeoutError(f"no pong within {timeout}s")
        if not result:
            raise self._closed_exception()
        self.latency = result[0]
        return result[0]

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection and wait for the server to close TCP (up to close_timeout).

        Messages already queued can still be taken with :meth:`recv`; from now on, messages
        that find the queue full are dropped, so that the reader keeps reading and sees the
        server's close frame.
        """
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        with self._lock:
            if self.core.state is State.OPEN:
                self.core.send_close(code, reason)
                self._flush()
        if not self._closed.wait(self.close_timeout):
            self._shutdown()
            self._closed.wait()

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data:
            with contextlib.suppress(OSError):
                self.sock.sendall(data)
        if self.core.transport_should_close:
            self._shutdown()

    def _keepalive_loop(self) -> None:
        interval = self.ping_interval
        assert interval is not None
        while not self._closed.wait(interval):
            try:
                self.ping(timeout=self.ping_timeout)
            except TimeoutError:
                # RFC 6455 7.4.1: 1011, "encountered an unexpected condition" (as the asyncio
                # client and websockets do).
                with self._lock:
                    if self.core.state is not State.CLOSED:
                        self.core.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    self._flush()
                self._shutdown()
                return
            except ConnectionClosed:
                return

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _read_loop(self, trailing: bytes) -> None:
        try:
            if trailing:
                self._receive(trailing)
            while not self.core.transport_should_close:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    with self._lock:
                        self.core.receive_eof()
                    break
                self._receive(data)
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()
            self._closed.set()
            for _, done, _ in self._pings.values():
                done.set()
            with self._ready:
                self._ended = True
                self._ready.notify_all()

    def _receive(self, data: bytes) -> None:
        with self._lock:
            self.core.receive_data(data)
            events = self.core.events_received()
            self._flush()
        now = time.monotonic()
        for event in events:
            if isinstance(event, (TextMessage, BinaryMessage)):
                self._put(event.data)
            elif isinstance(event, Pong):
                for payload in event.acknowledged:
                    entry = self._pings.pop(payload, None)
                    if entry is not None:
                        entry[2].append(now - entry[0])
                        entry[1].set()

    def _put(self, message: Data) -> None:
        # Waits while the queue is full: the reader stops reading, TCP pushes back.
        with self._ready:
            self._ready.wait_for(self._has_room)
            if len(self._messages) < self._max_queue:
                self._messages.append(message)
                self._ready.notify_all()
            # else: closing with a full queue: the application asked for no more.

    def _has_room(self) -> bool:
        return len(self._messages) < self._max_queue or self._closing

    def _closed_exception(self) -> ConnectionClosed:
        code, reason = self.core.close_code, self.core.close_reason
        if code in (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY):
            return ConnectionClosedOK(code, reason)
        return ConnectionClosedError(code, reason)


def connect(
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
    max_size: int | None = UNSET,
) -> ClientConnection:
    """Open a WebSocket connection in a background thread.

    Arguments mean what they mean for :func:`fullduplex.connect`: ``ping_interval`` seconds
    between keepalive pings (None: none), ``ping_timeout`` seconds to wait for each pong before
    closing with 1011; ``max_size`` is the former name of ``max_message_size``.

    Raises:
        OSError: the TCP connection failed.
        InvalidStatus: the server answered another status than 101.
        InvalidHandshake: the 101 response is invalid.
        TimeoutError: the handshake took longer than ``open_timeout``.
        ValueError: a limit or timeout is out of range (raised at once, before connecting).
        TypeError: both ``max_message_size`` and ``max_size`` were given.
    """
    config = Config(
        open_timeout=open_timeout,
        close_timeout=close_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        max_message_size=resolve_alias(
            "max_message_size", max_message_size, "max_size", max_size, DEFAULT_MAX_MESSAGE_SIZE
        ),
        max_frame_size=max_frame_size,
        max_queue=max_queue,
    )
    factories = [ClientPerMessageDeflateFactory()] if compression else []
    hs = ClientHandshake(
        uri, subprotocols=subprotocols, extensions=factories, origin=origin, headers=headers
    )
    deadline = None if open_timeout is None else time.monotonic() + open_timeout
    sock = socket.create_connection((hs.host, hs.port), timeout=open_timeout)
    try:
        if hs.secure:
            ctx = ssl if ssl is not None else ssl_module.create_default_context()
            sock = ctx.wrap_socket(sock, server_hostname=hs.host)
        request = hs.request()
        sock.sendall(request.serialize())
        parser = ResponseParser()
        response = None
        while response is None:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"opening handshake timed out after {open_timeout}s")
                sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"opening handshake timed out after {open_timeout}s") from None
            if data:
                parser.feed(data)
            else:
                parser.feed_eof()
            response = parser.next_response()
            if response is None and not data:
                raise InvalidMessage("connection closed during the opening handshake")
        accepted = hs.process_response(response)
        sock.settimeout(None)
        core = Connection(
            Side.CLIENT,
            extensions=accepted.extensions,
            max_frame_size=config.max_frame_size,
            max_message_size=config.max_message_size,
        )
        return ClientConnection(
            sock,
            core,
            request=request,
            response=response,
            subprotocol=accepted.subprotocol,
            close_timeout=config.close_timeout,
            max_queue=config.max_queue,
            trailing=parser.trailing_data(),
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
        )
    except BaseException:
        sock.close()
        raise
