"""The asyncio WebSocket connection shared by the server and the client.

:class:`WebSocket` wraps a sans-I/O :class:`~fullduplex.protocol.Connection` and an asyncio
transport. The transport's protocol calls :meth:`WebSocket.data_received` for each chunk read
from the socket; the bytes go straight into the core, whose events are dispatched at once: no
reader task and no task per message. Keepalive and the close timeout are loop timers
(``call_later``), not tasks, to keep an idle connection small.

Flow control, both ways:

* received messages wait in a queue of ``max_queue`` messages; when it is full the transport
  stops reading (``pause_reading``) and resumes when the application has taken it down to a
  quarter, so a peer sending faster than the application reads is held back by TCP. The queue
  may exceed ``max_queue`` by the messages of the one read that filled it (at most 256 KiB of
  frames), never more;
* :meth:`WebSocket.send` waits while the transport's write buffer is above ``write_limit``
  (``pause_writing``); while it is, reading pauses too, so a peer that never reads cannot make
  the server queue pongs or close frames without bound.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from typing import Any

from ..config import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    DEFAULT_WRITE_LIMIT,
)
from ..protocol import (
    BinaryFragment,
    CloseCode,
    CloseReceived,
    Connection,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    Pong,
    Side,
    State,
    TextFragment,
    prepare_frame,
)
from ..protocol.http11 import Request, Response
from .waiter import DONE, MessageWaiter, Waitable

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "DEFAULT_WRITE_LIMIT",
    "Data",
    "WebSocket",
    "WebSocketListener",
]

#: A WebSocket message: ``str`` for text, ``bytes`` for binary.
Data = str | bytes

logger = logging.getLogger("fullduplex")
#: One line per request and per WebSocket connection (shared with the server's HTTP lines).
access_logger = logging.getLogger("fullduplex.access")

# Enum members as globals: ``State.OPEN`` costs a slot wrapper call on Python 3.11 (EnumType
# has __getattr__), ~850 user-space instructions; see fullduplex.protocol.connection.
_OPEN, _CLOSED = State.OPEN, State.CLOSED
_NORMAL_CLOSURE, _GOING_AWAY = CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY
_SERVER = Side.SERVER
_UNSET: Any = object()


class WebSocketListener:
    """The low-level callback API: methods called from the socket's callbacks, no task.

    Register a subclass on a route with ``@app.websocket(path)`` (decorating the class). One
    instance is created per connection. Its methods run inside the event loop's read callback:
    they must not block; answer with :meth:`WebSocket.send_nowait`, which writes at once (all
    sends made while a read is processed go out in one write). There is no task and no future
    per connection or per message, which is what makes this API cheaper than ``async for``
    (bench/README.md has the figures). Flow control still holds: while the write buffer is over
    ``write_limit`` the connection stops reading, so ``on_message`` is not called. An exception
    from a method closes the connection with 1011; the traceback goes to the log.
    """

    def on_open(self, ws: WebSocket) -> None:
        """The connection is open (the 101 response has been written)."""

    def on_message(self, ws: WebSocket, message: Data) -> None:
        """A whole message arrived: ``str`` for text, ``bytes`` for binary."""

    def on_close(self, ws: WebSocket) -> None:
        """The TCP connection is closed; ``ws.close_code`` and ``ws.close_reason`` are final."""


class WebSocket(asyncio.Protocol):
    """An open WebSocket connection, on the server or the client side.

    Server handlers receive one; :func:`fullduplex.connect` returns one. Iterate over it to
    receive messages until the connection closes normally::

        async for message in ws:
            await ws.send(message)

    Args:
        core: the sans-I/O connection, after the handshake.
        transport: the asyncio transport.
        request: the opening handshake request.
        response: the opening handshake response.
        subprotocol: the negotiated subprotocol, or None.
        ping_interval: seconds between keepalive pings, None to disable.
        ping_timeout: seconds to wait for the keepalive pong, None to wait forever.
        close_timeout: seconds to wait for the closing handshake, None to wait forever.
        max_queue: received messages held before reading pauses.
        write_limit: write buffer size above which :meth:`send` waits.
        max_messages_per_second: messages received per second before the connection closes
            with 1008, None for no limit (see :meth:`limit_rate`).
        max_bytes_per_second: payload bytes received per second before it closes with 1008,
            None for no limit.
        owner: the protocol that read the opening handshake and handed the transport over
            (``transport.set_protocol``); its ``connection_lost(exc)`` is called when TCP
            closes and its ``pong_received(latency)`` when a keepalive pong arrives.
        remote_address: the peer's address, when the caller has read it already; else
            ``transport.get_extra_info("peername")``.
        handshake: with ``response`` None, the server's
            :class:`~fullduplex.protocol.handshake.ServerHandshake` that accepted ``request``
            without a hook, an extension or a subprotocol: :attr:`response` is built again
            from the request when first read (the same 101), not kept by every connection.
    """

    # Slots, not a __dict__: an idle server holds one of these per connection (1.6 KiB -> 0.3
    # KiB each, measured with tracemalloc over 2,000 connections).
    __slots__ = (
        "_close_timer",
        "_closed",
        "_dispatching",
        "_drain_waiters",
        "_fragments",
        "_high",
        "_keepalive",
        "_listener",
        "_loop",
        "_lost",
        "_low",
        "_owner",
        "_pings",
        "_pong_deadline",
        "_queue",
        "_rate_bytes",
        "_rate_bytes_at",
        "_rate_messages",
        "_rate_messages_at",
        "_rate_window",
        "_read_paused",
        "_response",
        "_waiter",
        "_write_paused",
        "bytes_received",
        "bytes_sent",
        "close_timeout",
        "core",
        "latency",
        "messages_received",
        "messages_sent",
        "opened_at",
        "ping_interval",
        "ping_timeout",
        "remote_address",
        "request",
        "subprotocol",
        "transport",
    )

    def __init__(
        self,
        core: Connection,
        transport: asyncio.Transport,
        *,
        request: Request,
        response: Response | None,
        subprotocol: str | None,
        # Timeouts
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
        close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
        # Limits
        max_queue: int = DEFAULT_MAX_QUEUE,
        write_limit: int = DEFAULT_WRITE_LIMIT,
        max_messages_per_second: int | None = None,
        max_bytes_per_second: int | None = None,
        owner: Any = None,
        remote_address: Any = _UNSET,
        handshake: Any = None,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        #: The sans-I/O connection.
        self.core = core
        #: The asyncio transport.
        self.transport = transport
        #: The opening handshake request (path, query, headers).
        self.request = request
        # The opening handshake response, or the handshake that builds it again on the first
        # read of `response` (then a server keeps no 101 per connection: ~370 bytes).
        self._response: Any = handshake if response is None else response
        #: The negotiated subprotocol, or None.
        self.subprotocol = subprotocol
        #: The peer's address, as given by the socket.
        self.remote_address: Any = (
            transport.get_extra_info("peername") if remote_address is _UNSET else remote_address
        )
        #: Round-trip time of the last keepalive ping, in seconds (0 until one completes).
        self.latency = 0.0
        #: Messages received / sent and payload sizes received / sent (bytes for binary
        #: messages, characters for text), for logs and metrics: one integer add each per
        #: message, read by the close log line and :mod:`fullduplex.metrics`.
        self.messages_received = 0
        self.messages_sent = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        #: When the connection opened (``time.monotonic()``).
        self.opened_at = time.monotonic()
        # Rate limits (limit_rate): the counts above which _rate_check runs; never reached
        # when unlimited, so the per-message cost is two integer compares.
        self._rate_messages = max_messages_per_second
        self._rate_bytes = max_bytes_per_second
        self._rate_messages_at = (
            sys.maxsize if max_messages_per_second is None else max_messages_per_second
        )
        self._rate_bytes_at = sys.maxsize if max_bytes_per_second is None else max_bytes_per_second
        self._rate_window = self.opened_at
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self._loop = asyncio.get_running_loop()
        # Created with the first message: an empty deque costs ~0.7 KiB per idle connection.
        self._queue: collections.deque[Data] | None = None
        self._high = max_queue
        self._low = max_queue // 4 or 1  # not max(): ~1.4k instructions on Python 3.11
        # What async for / recv() await, made by the first of them (see waiter.py).
        self._waiter: Any = None
        # One future per coroutine waiting for the write buffer to drain (None: no waiter).
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        self._write_paused = False
        self._read_paused = False
        self._fragments: list[Data] | None = None
        # Pings waiting for their pong, made by the first ping (an idle connection holds none).
        self._pings: dict[bytes, tuple[float, asyncio.Future[float]]] | None = None
        # Created by the first close() or wait_closed() that has to wait: most connections
        # are lost before anyone waits, and an idle one then holds no future.
        self._closed: asyncio.Future[None] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._pong_deadline: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._lost = False
        self._listener: WebSocketListener | None = None
        self._dispatching = False
        # Told when TCP closes and when a pong arrives, if the transport calls this WebSocket
        # directly (the server's protocol hands the transport over at the upgrade: see
        # HTTPProtocol._upgrade).
        self._owner = owner
        # Whole messages come straight from the parser, without event objects.
        core.message_handler = self._deliver
        transport.set_write_buffer_limits(high=write_limit)
        if ping_interval is not None:
            self._schedule_keepalive()

    # -- public API ---------------------------------------------------------------------------

    @property
    def response(self) -> Response:
        """The opening handshake response."""
        response = self._response
        if not isinstance(response, Response):  # the server's handshake (see __init__)
            response = self._response = response.process_request(self.request).response
        assert isinstance(response, Response)
        return response

    @property
    def identity(self) -> Any:
        """Who is connected (a :class:`fullduplex.auth.Identity`), from the opening handshake.

        None when the route has no authenticator (and on the client side).
        """
        request = self.request
        return request.identity if request is not None else None

    @property
    def state(self) -> State:
        """The connection state: OPEN, CLOSING or CLOSED."""
        return self.core.state

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closed, else None (1006 if no close frame)."""
        return self.core.close_code if self._lost else None

    @property
    def close_reason(self) -> str | None:
        """The close reason once the connection is closed, else None."""
        return self.core.close_reason if self._lost else None

    @property
    def path_params(self) -> Mapping[str, Any]:
        """The route's converted path parameters (``/rooms/{room}``): ``request.path_params``."""
        return self.request.path_params

    async def recv(self) -> Data:
        """Receive the next message: ``str`` for text, ``bytes`` for binary.

        Cancelling recv() loses no message: one handed over at that moment is put back.

        Raises:
            ConnectionClosedOK: the connection closed normally (1000 or 1001).
            ConnectionClosedError: it closed with an error or without a close frame.
            RuntimeError: another coroutine is already waiting in recv().
        """
        try:
            message: Data = await self.__anext__()
        except StopAsyncIteration:
            raise self._closed_exception() from None
        return message

    def __aiter__(self) -> AsyncIterator[Data]:
        """Iterate over received messages until the connection closes normally.

        What ``async for`` iterates over is the connection's message waiter (see
        :meth:`__anext__`), its own async iterator: each message's awaitable comes from a C
        slot, without a Python call (32 B async echo ~0.5k fewer user-space instructions per
        message, ``bench/run.py --callgrind``).
        """
        return self._message_waiter()  # type: ignore[no-any-return]

    def __anext__(self) -> Waitable[Data]:
        """The next message, for ``async for``; StopAsyncIteration after a normal close.

        Cancelling it loses no message: one handed over at that moment is put back.

        What it returns is the connection's one :class:`~fullduplex.asyncio.waiter.MessageWaiter`,
        awaited again for each message: no future resolved, no handle scheduled and no coroutine
        object per message, and the handler's task is resumed inside the read that brought its
        message (waiter.py): 21.4k -> 16.7k user-space instructions per 32 B async echo
        (``bench/run.py --callgrind``; docs/performance.md). Nothing happens until it is
        awaited.
        """
        waiter = self._waiter
        if waiter is None:
            return self._message_waiter()  # type: ignore[no-any-return]
        return waiter  # type: ignore[no-any-return]

    def _message_waiter(self) -> Any:
        waiter = self._waiter
        if waiter is None:
            # Made here, not by a generator around the first wait: that generator would stay
            # suspended as long as an idle connection waits (~230 bytes each). Once the
            # connection is lost it is not kept (it holds this WebSocket): it returns what is
            # queued, then the end of messages.
            waiter = MessageWaiter(self, self._loop, DONE)
            if not self._lost:
                self._waiter = waiter
        return waiter

    def _take_queued(self) -> Data:
        # A message queued before anyone waited (the waiter calls this).
        queue = self._queue
        assert queue is not None
        message = queue.popleft()
        if self._read_paused and len(queue) <= self._low:
            self._update_reading()
        return message

    def _requeue(self, message: Data) -> None:
        if self._queue is None:
            self._queue = collections.deque()
        self._queue.appendleft(message)

    def _end_of_messages(self) -> BaseException:
        if self.core.close_code in (_NORMAL_CLOSURE, _GOING_AWAY):
            return StopAsyncIteration()  # a normal close ends the iteration
        return self._closed_exception()

    async def send(self, message: Data | Iterable[Data] | AsyncIterable[Data]) -> None:
        """Send a message; an iterable or async iterable is sent as one fragmented message.

        Waits while the write buffer is above ``write_limit``.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            TypeError: the message is not ``str``, bytes-like or an iterable of them.
        """
        core = self.core
        if core.state is not _OPEN:
            raise self._closed_exception()
        if type(message) is bytes:  # the exact type first: one test for an echoed message
            core.send_binary(message)
            self.bytes_sent += len(message)
        elif isinstance(message, str):
            core.send_text(message)
            self.bytes_sent += len(message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            core.send_binary(message)
            self.bytes_sent += len(message)
        elif isinstance(message, AsyncIterable):
            await self._send_async_fragments(message)
        elif isinstance(message, Iterable):
            await self._send_async_fragments(_aiter(message))
        else:
            raise TypeError(f"cannot send {type(message).__name__}")
        self.messages_sent += 1
        self._flush()
        if self._write_paused:
            await self._wait_drain()

    async def _send_async_fragments(self, chunks: AsyncIterable[Data]) -> None:
        pending: Data | None = None
        async for chunk in chunks:
            if not isinstance(chunk, (str, bytes, bytearray, memoryview)):
                raise TypeError(f"cannot send fragment of type {type(chunk).__name__}")
            if pending is not None:
                self.core.send_fragment(pending, final=False)
                self._flush()
                if self._write_paused:
                    await self._wait_drain()
            pending = chunk if isinstance(chunk, str) else bytes(chunk)
            self.bytes_sent += len(chunk)
        if pending is None:
            raise TypeError("cannot send an empty iterable")
        self.core.send_fragment(pending, final=True)

    async def ping(self, data: bytes | None = None) -> float:
        """Send a ping and wait for its pong.

        Args:
            data: the ping payload (at most 125 bytes); a random 4-byte payload when None.

        Returns:
            The round-trip time in seconds.
        """
        if data is None:
            data = _random_payload(self._pings)
        if self.core.state is not _OPEN:
            raise self._closed_exception()
        fut = self._send_ping(data)
        return await fut

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake and wait until the TCP connection is closed.

        Waits at most ``close_timeout`` for the peer's answer, then drops the connection.
        Closing a closed connection does nothing.
        """
        self.close_nowait(code, reason)
        await self.wait_closed()

    def close_nowait(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake without waiting for it (does nothing if closing)."""
        if self.core.state is _OPEN:
            self.core.send_close(code, reason)
            self._flush()

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed."""
        if self._lost:
            return
        closed = self._closed
        if closed is None:
            closed = self._closed = self._loop.create_future()
        await asyncio.shield(closed)  # a cancelled waiter leaves it for the others

    def send_nowait(self, message: Data) -> None:
        """Send a message without waiting (for :class:`WebSocketListener` methods).

        Inside a listener callback the frame is written with the others of the same read;
        elsewhere, at once. It never waits for the write buffer to drain: check
        :attr:`writable` (or await :meth:`wait_drain`) when sending much.

        Raises:
            ConnectionClosed: the connection is closing or closed.
        """
        core = self.core
        if core.state is not _OPEN:
            raise self._closed_exception()
        if isinstance(message, str):
            core.send_text(message)
        else:
            core.send_binary(message)
        self.messages_sent += 1
        self.bytes_sent += len(message)
        if not self._dispatching:
            self._flush()

    @property
    def takes_prepared(self) -> bool:
        """True when :meth:`send_prepared` would write now.

        The core takes the same bytes as every plain server connection
        (:attr:`Connection.takes_prepared <fullduplex.protocol.Connection.takes_prepared>`),
        and the write buffer is under ``write_limit``.
        """
        return self.core.takes_prepared and not self._write_paused and not self._lost

    def send_prepared(self, frame: bytes, size: int) -> bool:
        """Write a frame prepared once for many connections, if this one takes it now.

        The one way to send the same bytes to many connections (:func:`broadcast`, the hub's
        WebSocket fan-out): build the frame once with :func:`fullduplex.protocol.prepare_frame`,
        then offer it to each connection. It is written when :attr:`takes_prepared` holds,
        and counted (``messages_sent``, ``bytes_sent``); nothing is awaited.

        Args:
            frame: the frame from :func:`~fullduplex.protocol.prepare_frame`.
            size: the message's length (characters for text, bytes for binary), counted in
                ``bytes_sent``.

        Returns:
            False when nothing was written: the connection is not open, has an extension or
            a fragmented send in progress (send the message itself with :meth:`send_nowait`),
            or its write buffer is over ``write_limit`` (a slow reader: skip it or keep the
            message for later).
        """
        core = self.core
        if not core.takes_prepared or self._write_paused or self._lost:
            return False
        if self._dispatching:
            core.send_prepared(frame)  # after what this read's callbacks sent, in order
        else:
            self.transport.write(frame)
        self.messages_sent += 1
        self.bytes_sent += size
        return True

    def attach(self, listener: WebSocketListener) -> None:
        """Deliver messages to ``listener`` instead of :meth:`recv`, and call its ``on_open``."""
        self._listener = listener
        self.core.message_handler = self._deliver_to_listener
        self._call_listener(listener.on_open, self)

    @property
    def writable(self) -> bool:
        """True when the write buffer is below ``write_limit`` (sending would not wait)."""
        return not self._write_paused and not self._lost

    async def wait_drain(self) -> None:
        """Wait until the write buffer is below ``write_limit`` again.

        Raises:
            ConnectionClosed: the connection closed while waiting.
        """
        if self._write_paused:
            await self._wait_drain()
        elif self._lost:
            raise self._closed_exception()

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection at once: send a close frame if possible and drop TCP."""
        if not self._lost and self.core.state is not _CLOSED:
            self.core.fail(code, reason)
        self._flush()
        if not self.transport.is_closing():  # see _flush: TLS transports mind a second close
            self.transport.close()

    # -- called by the transport's protocol ---------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Feed bytes read from the socket."""
        core = self.core
        self._dispatching = True
        try:
            core.receive_data(data)  # messages go to _deliver as they are parsed
            if core.pending_events:  # events_received() only when there are some: one call less
                self._dispatch(core.events_received())
        finally:
            self._dispatching = False
        # Nothing to write after most reads of the async API (its answers are sent from the
        # task): _flush's own tests, without the call (32 B async echo: ~0.5k user-space
        # instructions per message, callgrind).
        if core.pending_output or core.transport_should_close or core.close_timer_wanted:
            self._flush()

    def eof_received(self) -> bool:
        """The peer closed its end of the TCP connection.

        Returns:
            True over plain TCP: the WebSocket closes the transport itself, after its close
            frame. False over TLS, whose transports (asyncio's and uvloop's) close after a
            close_notify whatever this returns, and log a warning when it returns True.
        """
        self.core.receive_eof()
        self._process_events()
        return self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        """The TCP connection is closed."""
        if self._lost:
            return
        self._lost = True
        core = self.core
        core.receive_eof()
        # The core holds a bound method of this object (it delivers messages to it): no
        # message can come any more, and without the cycle the connection's objects are
        # freed at once instead of by the garbage collector (which took ~8% of a handshake's
        # instructions, callgrind).
        core.message_handler = None
        for handle in (self._keepalive, self._pong_deadline, self._close_timer):
            if handle is not None:
                handle.cancel()
        waiting = self._closed
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
        waiter = self._waiter
        if waiter is not None:
            # A waiting recv() raises the end of messages; the waiter lets go of this WebSocket
            # once idle (no cycle left for the garbage collector).
            self._waiter = None
            waiter.lose()
        self._wake_drain_waiters()
        if self._pings:
            closed = self._closed_exception()
            for _, fut in self._pings.values():
                if not fut.done():
                    fut.set_exception(closed)
                    fut.exception()  # retrieved: an unawaited keepalive ping must not warn
            self._pings.clear()
        self._log_closed()
        if self._listener is not None:
            self._call_listener(self._listener.on_close, self)
        owner = self._owner
        if owner is not None:
            self._owner = None
            owner.connection_lost(exc)

    def pause_writing(self) -> None:
        """The transport's write buffer went above the high-water mark."""
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        """The transport's write buffer went below the low-water mark."""
        self._write_paused = False
        self._wake_drain_waiters()
        self._update_reading()

    # -- internals ----------------------------------------------------------------------------

    def _process_events(self) -> None:
        core = self.core
        self._dispatching = True
        try:
            self._dispatch(core.events_received())
        finally:
            self._dispatching = False
        self._flush()

    def _dispatch(self, events: list[Any]) -> None:
        # Whole messages never come here: they go to core.message_handler.
        for event in events:
            if type(event) is Pong:
                self._pong_received(event.acknowledged)
            elif isinstance(event, (TextFragment, BinaryFragment)):
                if self._fragments is None:
                    self._fragments = []
                self._fragments.append(event.data)
                if event.final:
                    if self._listener is None:
                        self._deliver(_join(self._fragments))
                    else:
                        self._deliver_to_listener(_join(self._fragments))
                    self._fragments = None
            elif isinstance(event, CloseReceived):
                pass  # the core answered it; the close code is read from the core

    def limit_rate(self, messages: int | None, size: int | None) -> None:
        """Close with 1008 above ``messages`` messages or ``size`` bytes a second.

        None disables either limit. The server calls this on each upgrade with
        ``max_messages_per_second`` and ``max_bytes_per_second``.
        """
        self._rate_messages = messages
        self._rate_bytes = size
        self._rate_window = time.monotonic()
        self._rate_messages_at = (
            sys.maxsize if messages is None else self.messages_received + messages
        )
        self._rate_bytes_at = sys.maxsize if size is None else self.bytes_received + size

    def _rate_check(self) -> bool:
        """A budget ran out: open a new one-second window, or close 1008 (returns True)."""
        now = time.monotonic()
        if now - self._rate_window >= 1.0:
            self.limit_rate(self._rate_messages, self._rate_bytes)
            # The message that crossed counts in the new window.
            self._rate_messages_at -= 1 if self._rate_messages is not None else 0
            return False
        # RFC 6455 7.4.1: 1008, a message that violates the endpoint's policy.
        what = "messages" if self.messages_received > self._rate_messages_at else "bytes"
        self.close_nowait(CloseCode.POLICY_VIOLATION, f"too many {what} per second")
        # Read on whatever is queued: the peer's close frame must get through, or a flood that
        # filled the queue (reading paused) holds the connection until close_timeout. What
        # comes before it is dropped above (at most a budget a second once windows reopen).
        self._high = sys.maxsize
        self._update_reading()
        return True

    def _deliver(self, message: Data) -> None:
        # The counts kept in locals for the rate test: two attribute reads less per message.
        count = self.messages_received = self.messages_received + 1
        size = self.bytes_received = self.bytes_received + len(message)
        if (count > self._rate_messages_at or size > self._rate_bytes_at) and self._rate_check():
            return
        waiter = self._waiter
        if waiter is not None and waiter.wake(message):
            # Handed straight to the waiting recv() / async for (its task resumed at once when
            # no other task runs): no queue round trip.
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = collections.deque()
        queue.append(message)
        if len(queue) >= self._high and not self._read_paused:
            self._update_reading()

    def _deliver_to_listener(self, message: Data) -> None:
        self.messages_received += 1
        self.bytes_received += len(message)
        if (
            self.messages_received > self._rate_messages_at
            or self.bytes_received > self._rate_bytes_at
        ) and self._rate_check():
            return
        listener = self._listener
        assert listener is not None
        if self.core.state is _OPEN:
            # _call_listener inlined: 1,160 -> 1,040 ns per 32 B listener echo in-process
            # (docs/performance.md).
            try:
                listener.on_message(self, message)
            except Exception:
                self._listener_failed(listener.on_message)

    def _flush(self) -> None:
        core = self.core
        # Connection.data_to_send inlined (the pieces taken from pending_output): one call
        # less per flush, and no join (see below); 32 B listener echo 14.6k -> 13.5k
        # instructions with data_received's check (bench/run.py --callgrind).
        out = core.pending_output
        transport = self.transport
        if out:
            core.pending_output = []
            if transport.is_closing():
                pass
            elif len(out) == 1:
                transport.write(out[0])
            else:
                # No join: a large payload is its own piece (see LARGE_PAYLOAD_SIZE), and
                # uvloop writes the pieces in one writev.
                transport.writelines(out)
        if core.transport_should_close:
            # close() flushes the write buffer first; a peer that stopped reading would hold
            # it open forever, so the close timer aborts it. With nothing left to write the
            # transport closes at once (TLS: within its own shutdown timeout): no timer to arm
            # and cancel in the commonest case.
            # Once: a second close() of asyncio's TLS transport drops its SSL protocol, and its
            # get_write_buffer_size() then raises AttributeError (the ERROR "Error calling
            # eof_received()" that every wss:// close logged without uvloop).
            if not transport.is_closing():
                transport.close()
                if transport.get_write_buffer_size():
                    self._start_close_timer()
        elif core.close_timer_wanted:
            self._start_close_timer()

    def _start_close_timer(self) -> None:
        if self._close_timer is None and self.close_timeout is not None and not self._lost:
            self._close_timer = self._loop.call_later(self.close_timeout, self.transport.abort)

    def _call_listener(self, method: Any, *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            self._listener_failed(method)

    def _listener_failed(self, method: Any) -> None:
        logger.exception("WebSocket listener %s raised", method.__qualname__)
        if self.core.state is _OPEN:
            self.core.send_close(CloseCode.INTERNAL_ERROR, "internal error")
            if not self._dispatching:
                self._flush()

    def _update_reading(self) -> None:
        queued = len(self._queue) if self._queue is not None else 0
        should_pause = self._write_paused or queued >= self._high
        if should_pause == self._read_paused or self._lost:
            return
        self._read_paused = should_pause
        try:
            if should_pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
        except (RuntimeError, AttributeError):  # pragma: no cover - transport already closing
            pass

    async def _wait_drain(self) -> None:
        while self._write_paused and not self._lost:
            waiter: asyncio.Future[None] = self._loop.create_future()
            if self._drain_waiters is None:
                self._drain_waiters = []
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                if self._drain_waiters is not None and waiter in self._drain_waiters:
                    self._drain_waiters.remove(waiter)  # cancelled: not woken
        if self._lost:
            raise self._closed_exception()

    def _wake_drain_waiters(self) -> None:
        waiters = self._drain_waiters
        if waiters is not None:
            self._drain_waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _send_ping(self, data: bytes) -> asyncio.Future[float]:
        self.core.send_ping(data)
        fut: asyncio.Future[float] = self._loop.create_future()
        pings = self._pings
        if pings is None:
            pings = self._pings = {}
        pings[data] = (time.monotonic(), fut)
        self._flush()
        return fut

    def _pong_received(self, acknowledged: tuple[bytes, ...]) -> None:
        pings = self._pings
        if pings is None:
            return
        now = time.monotonic()
        for payload in acknowledged:
            entry = pings.pop(payload, None)
            if entry is not None:
                sent, fut = entry
                self.latency = now - sent
                pong_received = getattr(self._owner, "pong_received", None)
                if pong_received is not None:
                    pong_received(self.latency)  # the server's metrics (once per ping)
                if not fut.done():
                    fut.set_result(self.latency)

    def _schedule_keepalive(self) -> None:
        if self.ping_interval is not None and not self._lost:
            self._keepalive = self._loop.call_later(self.ping_interval, self._keepalive_ping)

    def _keepalive_ping(self) -> None:
        self._keepalive = None
        if self.core.state is not _OPEN or self._lost:
            return
        fut = self._send_ping(_random_payload(self._pings))
        fut.add_done_callback(self._keepalive_pong)
        if self.ping_timeout is not None:
            self._pong_deadline = self._loop.call_later(self.ping_timeout, self._keepalive_expired)

    def _keepalive_pong(self, fut: asyncio.Future[float]) -> None:
        if self._pong_deadline is not None:
            self._pong_deadline.cancel()
            self._pong_deadline = None
        if not fut.cancelled() and fut.exception() is None:
            self._schedule_keepalive()

    def _keepalive_expired(self) -> None:
        self._pong_deadline = None
        logger.info("keepalive ping timeout on %s: closing with 1011", self.request.path)
        # RFC 6455 7.4.1: 1011 "encountered an unexpected condition"; websockets does the same.
        self.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")

    def _closed_exception(self) -> ConnectionClosed:
        code = self.core.close_code
        reason = self.core.close_reason
        if code in (_NORMAL_CLOSURE, _GOING_AWAY):
            return ConnectionClosedOK(code, reason)
        return ConnectionClosedError(code, reason)

    def _log_closed(self) -> None:
        # One INFO line per connection on the server, on the access logger; clients log at
        # DEBUG. The level test comes first: with the logger off this costs one call.
        if self.core.side is _SERVER:
            log, level = access_logger, logging.INFO
        else:
            log, level = logger, logging.DEBUG
        if not log.isEnabledFor(level):
            return
        client = self.request.client
        peer = client[0] if client is not None else "-"
        duration = time.monotonic() - self.opened_at
        fields = {
            "peer": peer,
            "route": self.request.path,
            "transport": "websocket",
            "close_code": self.core.close_code,
            "close_reason": self.core.close_reason,
            "duration": duration,
            "messages_received": self.messages_received,
            "bytes_received": self.bytes_received,
            "messages_sent": self.messages_sent,
            "bytes_sent": self.bytes_sent,
        }
        log.log(
            level,
            "%s websocket %s closed %d %s in %.3fs: %d msgs / %d B in, %d msgs / %d B out",
            peer,
            self.request.path,
            self.core.close_code,
            self.core.close_reason or "-",
            duration,
            self.messages_received,
            self.bytes_received,
            self.messages_sent,
            self.bytes_sent,
            extra={"connection": fields},
        )


def broadcast(websockets: Iterable[WebSocket], message: Data) -> int:
    """Send one message to many connections, framing it once.

    Server frames are never masked, so every connection without a negotiated extension gets
    the same bytes (:meth:`WebSocket.send_prepared`); connections with permessage-deflate go
    through their own compressor. Nothing is awaited: a connection that is not open, is in the
    middle of a fragmented send, or whose write buffer is over ``write_limit`` (a slow reader)
    is skipped, and the message is lost for it, as with ``websockets.broadcast``. Applications
    that must not lose messages use the hub (:mod:`fullduplex.hub`), which keeps history.

    Returns:
        The number of connections the message was written to.
    """
    if not isinstance(message, (str, bytes)):
        message = bytes(message)
    frame: bytes | None = None
    size = len(message)
    sent = 0
    for ws in websockets:
        if frame is None:
            frame = prepare_frame(message)
        # WebSocket.send_prepared, inlined: the method call was 12% of a delivery (2.70k ->
        # 3.03k instructions, bench/run.py --callgrind broadcast); same module, same rule.
        core = ws.core
        if core.takes_prepared and not ws._write_paused and not ws._lost:
            if ws._dispatching:
                core.send_prepared(frame)
            else:
                ws.transport.write(frame)
            ws.messages_sent += 1
            ws.bytes_sent += size
            sent += 1
        elif ws.writable and ws.state is _OPEN and not core.sending_fragmented:
            # Its own frame: an extension (its own compressor), a client (masked frames) or
            # fragment_size.
            ws.send_nowait(message)
            sent += 1
    return sent


def _join(parts: list[Data]) -> Data:
    if parts and isinstance(parts[0], str):
        return "".join(parts)  # type: ignore[arg-type]
    return b"".join(parts)  # type: ignore[arg-type]


def _random_payload(taken: dict[bytes, Any] | None) -> bytes:
    while True:
        data = secrets.token_bytes(4)
        if taken is None or data not in taken:
            return data


async def _aiter(items: Iterable[Data]) -> AsyncIterator[Data]:
    for item in items:
        yield item
