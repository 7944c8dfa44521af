"""A subscriber that never loses a message (:func:`subscribe`); reconnecting WebSockets.

:func:`reconnect` is the reconnecting form of ``connect`` (``async for ws in connect(uri)``).

::

    async with fullduplex.subscribe("ws://127.0.0.1:8000/pubsub", ["chat", "ticker"]) as sub:
        async for item in sub:
            if isinstance(item, fullduplex.Gap):
                print("lost", item.since + 1, "to", item.first_available - 1, item.reason)
            else:
                print(item.topic, item.seq, item.data)
        ack = await sub.publish("chat", {"text": "hi"})   # acknowledged: ack.seq

It speaks the ``/pubsub`` topic protocol (``docs/transports.md``) over :func:`~.client.connect`,
and keeps, per topic, a cursor: the seq of the last message, or ``first_available - 1`` after a
gap. When the connection drops it reconnects, with exponential backoff and full jitter
(``random(0, min(max_delay, min_delay * 2**attempt))``, the AWS Architecture Blog's "Exponential
Backoff And Jitter"), and subscribes again with ``since`` = each cursor: nothing is skipped
without a :class:`~fullduplex.hub.Gap` item, nothing is seen twice (a message at or below its
cursor is dropped). A server closing with 1012 (Service Restart) or 1013 (Try Again Later) is
retried after ``random(0, restart_jitter)`` instead, so a restart brings its clients back spread
out. A topic subscribed "from now" gets its cursor first from ``/poll`` (next to ``/pubsub``), so
even a reconnection before its first message resumes exactly.

Dead connections are found by RFC 6455 pings (``ping_interval``, ``ping_timeout``; section
5.5.2: "A Ping frame MAY be sent after the connection is established"): the connection closes
with 1011 and the subscriber reconnects.

Dropped for slowness: a subscriber whose application stops taking items stops reading, and
a server whose topic has the ``disconnect`` policy drops it (a connection reset: the close frame
would wait behind what it did not read). Each connection says ``hello`` first, with the id of
the previous one; the server's answer names the new connection and, if it dropped the
previous one, says why: :attr:`Subscriber.last_drop` (a :class:`~fullduplex.hub.Drop`:
``reason`` ``"slow consumer"``, ``code`` 1013, ``topic``) and a warning in the log. A network
failure leaves ``last_drop`` as it was.

Publishing: :meth:`Subscriber.publish` sends ``{"op": "publish", "id": N, "key": K}`` and
resolves with the server's acknowledgement; a publish not yet acknowledged is sent again after
every reconnection with the same idempotency key, which the server publishes once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..hub.base import Gap, GapReason, Message
from ..hub.drops import Drop
from ..protocol import CloseCode, ConnectionClosed, InvalidHandshake, InvalidStatus
from ..protocol.handshake import ClientHandshake
from .client import connect
from .connection import WebSocket

__all__ = [
    "DEFAULT_MAX_DELAY",
    "DEFAULT_MIN_DELAY",
    "DEFAULT_RESTART_JITTER",
    "Ack",
    "Subscriber",
    "SubscriptionError",
    "full_jitter",
    "reconnect",
    "subscribe",
]

logger = logging.getLogger("fullduplex.client")

#: Backoff base, seconds: the first retry waits up to this long.
DEFAULT_MIN_DELAY = 0.5
#: Backoff cap, seconds (centrifuge-js caps at 20 s too).
DEFAULT_MAX_DELAY = 20.0
#: After a server restart (close 1012/1013), reconnect within random(0, this) seconds.
DEFAULT_RESTART_JITTER = 5.0
#: Items received and not yet taken before the subscriber stops reading (and the server's
#: slow-consumer policy applies).
DEFAULT_MAX_PENDING = 1024

# Closing codes that mean "come back": RFC 6455 7.4.1 / IANA registry.
_COME_BACK = frozenset({CloseCode.SERVICE_RESTART, CloseCode.TRY_AGAIN_LATER})
# Handshake statuses that retrying cannot fix: the token or the path is wrong.
_FATAL_STATUSES = frozenset({400, 401, 403, 404})


def full_jitter(attempt: int, min_delay: float, max_delay: float) -> float:
    """A backoff delay: ``random(0, min(max_delay, min_delay * 2**attempt))`` seconds.

    "Full jitter" spreads the retries of many clients that failed at the same moment evenly
    over the window, instead of synchronizing them (AWS Architecture Blog, "Exponential Backoff
    And Jitter"; centrifuge-js's ``backoff``).
    """
    return random.uniform(0, min(max_delay, min_delay * 2 ** min(attempt, 30)))


@dataclass(frozen=True, slots=True)
class Ack:
    """A publish acknowledged by the server.

    Attributes:
        topic: the topic.
        seq: the message's sequence number in the topic.
        time: the publish time, seconds since the epoch (the hub's clock).
    """

    topic: str
    seq: int
    time: float


class SubscriptionError(Exception):
    """The server refused something retrying cannot fix.

    A token (HTTP 401/403), an unknown topic, a publish it rejected. ``str(exc)`` is the
    server's message.
    """


class _Pending:
    """A publish waiting for its acknowledgement."""

    __slots__ = ("future", "request")

    def __init__(self, request: dict[str, Any], future: asyncio.Future[Ack]) -> None:
        self.request = request
        self.future = future


class Subscriber:
    """Messages of one or more topics, across reconnections. Made by :func:`subscribe`.

    Iterate it (``async for item in sub``) for :class:`~fullduplex.hub.Message` and
    :class:`~fullduplex.hub.Gap` items in order; use it as an async context manager to close it.

    Attributes:
        cursors: per topic, the seq of the last item taken (None until known).
        state: ``"connecting"``, ``"open"``, ``"reconnecting"`` or ``"closed"``.
        connections: connections opened so far (1 + reconnections).
        connection_id: the server's name of the current (or last) connection, from its
            ``hello``; None until the first answer.
        last_drop: why the server last dropped this subscriber (a
            :class:`~fullduplex.hub.Drop`: ``reason == "slow consumer"``, ``code`` 1013, the
            ``topic`` that overflowed), learned on the connection after; None if it never
            did. Network failures and restarts do not set it.
        drops: how many times the server said it dropped this subscriber.
    """

    def __init__(
        self,
        uri: str,
        topics: Iterable[str],
        *,
        since: int | Mapping[str, int] | None = None,
        token: str | None = None,
        token_param: str | None = None,
        min_delay: float = DEFAULT_MIN_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        restart_jitter: float = DEFAULT_RESTART_JITTER,
        max_pending: int = DEFAULT_MAX_PENDING,
        **connect_options: Any,
    ) -> None:
        # A URI connect() refuses (no ws:// or wss://, no host, a bad port) is refused here,
        # once: retrying it with backoff would wait forever for nothing.
        ClientHandshake(uri)
        self.uri = uri
        names = list(dict.fromkeys(topics))  # none: a publisher only
        if isinstance(since, Mapping):
            self.cursors: dict[str, int | None] = {t: since.get(t) for t in names}
        else:
            self.cursors = dict.fromkeys(names, since)
        self.token = token
        self.token_param = token_param
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.restart_jitter = restart_jitter
        raw_headers = connect_options.pop("headers", None) or ()
        if isinstance(raw_headers, Mapping):
            raw_headers = raw_headers.items()
        self.headers: list[tuple[str, str]] = list(raw_headers)
        if token is not None:
            self.headers.append(("Authorization", f"Bearer {token}"))
        self.connect_options = connect_options
        self.state = "connecting"
        self.connections = 0
        self.connection_id: str | None = None
        self.last_drop: Drop | None = None
        self.drops = 0
        self._items: asyncio.Queue[Message | Gap | BaseException] = asyncio.Queue(max_pending)
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._ws: WebSocket | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Per topic, the cursor of the last item received (queued, maybe not taken yet): where
        # a reconnection resumes.
        self._received: dict[str, int] = {}

    # -- the public side ----------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (iterating or entering ``async with`` does it)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def __aenter__(self) -> Subscriber:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Message | Gap]:
        self.start()
        return self

    async def __anext__(self) -> Message | Gap:
        if self._closed and self._items.empty():
            raise StopAsyncIteration
        item = await self._items.get()
        if isinstance(item, BaseException):
            self._closed = True
            raise item
        topic = item.topic
        if isinstance(item, Gap):
            self.cursors[topic] = item.first_available - 1
        else:
            self.cursors[topic] = item.seq
        return item

    async def publish(self, topic: str, data: Any, *, timeout: float | None = None) -> Ack:
        """Publish ``data`` to ``topic``; return once the server acknowledged it.

        Sent now if connected, else on the next connection; sent again after each reconnection
        until acknowledged, with one idempotency key: published once.

        Raises:
            SubscriptionError: the server refused it (not publishable, invalid).
            TimeoutError: no acknowledgement within ``timeout`` seconds (it may still be
                published later: the key makes a later retry safe).
        """
        self.start()
        if self._closed:
            raise SubscriptionError("subscriber closed")
        pid = next(self._ids)
        request = {"op": "publish", "topic": topic, "data": data, "id": pid}
        request["key"] = uuid.uuid4().hex
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending[pid] = _Pending(request, future)
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps(request))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            if future.done():
                self._pending.pop(pid, None)

    async def close(self) -> None:
        """Close the connection and stop reconnecting; pending publishes fail."""
        self._closed = True
        self.state = "closed"
        task, self._task = self._task, None
        if task is not None:
            # Cancelled again until it ends: on Python 3.11 a cancellation that meets a
            # finishing asyncio.wait_for (inside connect) can be lost, and the session would
            # then read on from a live connection.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(SubscriptionError("subscriber closed"))
        self._pending.clear()
        with contextlib.suppress(asyncio.QueueFull):
            self._items.put_nowait(StopAsyncIteration())

    # -- the connection loop ------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._closed:
                code: int | None = None
                try:
                    await self._resolve_cursors()
                    ws = await connect(self._ws_uri(), headers=self.headers, **self.connect_options)
                except InvalidStatus as exc:
                    if exc.status in _FATAL_STATUSES:
                        raise SubscriptionError(str(exc)) from None
                    why = str(exc)
                except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
                    why = f"connection failed: {exc or type(exc).__name__}"
                else:
                    attempt = 0
                    code = await self._session(ws)
                    why = f"connection closed ({code})"
                if self._closed:
                    return
                attempt += 1
                if code in _COME_BACK:
                    delay = random.uniform(0, self.restart_jitter)
                else:
                    delay = full_jitter(attempt - 1, self.min_delay, self.max_delay)
                logger.info("subscriber: %s; reconnecting in %.1f s", why, delay)
                self.state = "reconnecting"
                await asyncio.sleep(delay)
        except SubscriptionError as exc:
            await self._items.put(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: surface it to the iterator, never lose it
            logger.exception("subscriber failed")
            await self._items.put(exc)

    async def _session(self, ws: WebSocket) -> int | None:
        """Subscribe, resend pending publishes, read until the connection closes."""
        self._ws = ws
        self.connections += 1
        self.state = "open"
        try:
            # First: the answer (and whether the server dropped the previous connection)
            # comes before any message of this one.
            greeting: dict[str, Any] = {"op": "hello"}
            if self.connection_id is not None:
                greeting["previous"] = self.connection_id
            await ws.send(json.dumps(greeting))
            for topic, cursor in self.cursors.items():
                since = self._received.get(topic, cursor)
                op: dict[str, Any] = {"op": "subscribe", "topic": topic}
                if since is not None:
                    op["since"] = since
                await ws.send(json.dumps(op))
            for pending in list(self._pending.values()):
                await ws.send(json.dumps(pending.request))
            async for text in ws:
                await self._handle(text)
        except ConnectionClosed:
            pass
        finally:
            self._ws = None
            await ws.close()
        return ws.close_code

    async def _handle(self, text: str | bytes) -> None:
        reply = json.loads(text)
        if "seq" in reply and "topic" in reply and "ack" not in reply:
            topic = reply["topic"]
            cursor = self._received.get(topic, self.cursors.get(topic))
            if cursor is not None and reply["seq"] <= cursor:
                return  # a duplicate
            self._received[topic] = reply["seq"]
            await self._items.put(Message(topic, reply["seq"], reply.get("data"), reply["time"]))
        elif "gap" in reply:
            await self._gap(reply)
        elif "ack" in reply:
            self._settle(reply["ack"], Ack(reply["topic"], reply["seq"], reply["time"]))
        elif "hello" in reply:
            self._hello(reply)
        elif "error" in reply:
            if reply.get("op") == "hello":
                logger.debug("subscriber: the server does not name connections: %s", reply)
            elif "id" in reply:
                self._settle(reply["id"], SubscriptionError(reply["error"]))
            elif reply.get("op") == "subscribe" and reply["error"] != "hub unavailable":
                # unknown or invalid topic, too many: retrying cannot fix it.
                raise SubscriptionError(f"{reply['error']}: {reply.get('topic')}")
            else:
                logger.warning("subscriber: server error %s", reply)

    async def _gap(self, reply: dict[str, Any]) -> None:
        topic, gap = reply["topic"], reply["gap"]
        after = gap["first_available"] - 1
        cursor = self._received.get(topic, self.cursors.get(topic))
        reason = GapReason(gap.get("reason", "trimmed"))
        if cursor is not None and after <= cursor and reason is not GapReason.RESET:
            return  # seen already
        self._received[topic] = after
        await self._items.put(Gap(topic, gap["since"], gap["first_available"], reason))

    def _hello(self, reply: dict[str, Any]) -> None:
        self.connection_id = str(reply["hello"]["id"])
        dropped = reply.get("dropped")
        if dropped is not None:
            self.last_drop = Drop.from_json(dropped)
            self.drops += 1
            logger.warning(
                "subscriber: the server dropped the previous connection: %s (topic %s)",
                self.last_drop.reason,
                self.last_drop.topic,
            )

    def _settle(self, pid: object, result: Ack | SubscriptionError) -> None:
        pending = self._pending.pop(pid, None) if isinstance(pid, int) else None
        if pending is None or pending.future.done():
            return
        if isinstance(result, Ack):
            pending.future.set_result(result)
        else:
            pending.future.set_exception(result)

    # -- addresses and the cursor of "now" ----------------------------------------------------

    def _ws_uri(self) -> str:
        if self.token is None or self.token_param is None:
            return self.uri
        sep = "&" if "?" in self.uri else "?"
        return f"{self.uri}{sep}{self.token_param}={quote(self.token, safe='')}"

    async def _resolve_cursors(self) -> None:
        """Give topics subscribed "from now" the current cursor (a short poll answers it)."""
        for topic, cursor in self.cursors.items():
            if cursor is None and topic not in self._received:
                self._received[topic] = await self._current_cursor(topic)

    async def _current_cursor(self, topic: str) -> int:
        parts = urlsplit(self.uri)
        secure = parts.scheme == "wss"
        path = parts.path.rsplit("/", 1)[0] + "/poll"
        target = urlunsplit(("", "", path, f"topic={quote(topic)}", ""))
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if secure else 80)
        ssl = self.connect_options.get("ssl") or (True if secure else None)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl), self._open_timeout()
        )
        try:
            head = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
            head += [f"{name}: {value}" for name, value in self.headers]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
            raw = await asyncio.wait_for(reader.read(), self._open_timeout())
        finally:
            writer.close()
        head_bytes, _, body = raw.partition(b"\r\n\r\n")
        fields = head_bytes.split(None, 2)
        status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        if status in _FATAL_STATUSES:
            raise SubscriptionError(f"{topic}: HTTP {status}: {_error_text(head_bytes, body)}")
        if status != 200:
            raise OSError(f"poll for the cursor of {topic}: HTTP {status}")
        if b"chunked" in head_bytes.lower():
            body = _dechunk(body)
        return int(json.loads(body)["cursor"])

    def _open_timeout(self) -> float | None:
        value = self.connect_options.get("open_timeout", 10.0)
        return None if value is None else float(value)


def _error_text(head: bytes, body: bytes) -> str:
    """The server's ``{"error": ...}`` of a refused poll, else the start of its body as text."""
    if b"chunked" in head.lower():
        with contextlib.suppress(ValueError):
            body = _dechunk(body)
    try:
        error = json.loads(body)["error"]
    except (ValueError, TypeError, KeyError):
        return body[:200].decode(errors="replace").strip()
    return str(error)


def _dechunk(body: bytes) -> bytes:
    out = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(body[:size])
        body = body[size + 2 :]
    return b"".join(out)


def subscribe(
    uri: str,
    topics: str | Iterable[str],
    *,
    since: int | Mapping[str, int] | None = None,
    token: str | None = None,
    token_param: str | None = None,
    min_delay: float = DEFAULT_MIN_DELAY,
    max_delay: float = DEFAULT_MAX_DELAY,
    restart_jitter: float = DEFAULT_RESTART_JITTER,
    max_pending: int = DEFAULT_MAX_PENDING,
    **connect_options: Any,
) -> Subscriber:
    """Subscribe to ``topics`` at a ``/pubsub`` route; iterate the result for items.

    Args:
        uri: the route, e.g. ``ws://127.0.0.1:8000/pubsub``.
        topics: a topic or several.
        since: resume after this seq, for every topic (an int) or per topic (a mapping);
            None starts from now. 0 is the whole history kept.
        token: a credential, sent as ``Authorization: Bearer <token>`` (and in the query, if
            ``token_param`` is set).
        token_param: a query parameter to send the token in as well (e.g. ``"token"``).
        min_delay: backoff base, seconds.
        max_delay: backoff cap, seconds.
        restart_jitter: after a close with 1012/1013, reconnect within random(0, this) seconds.
        max_pending: items received and not taken before reading stops.
        connect_options: passed to :func:`~fullduplex.asyncio.connect` (``open_timeout``,
            ``ping_interval``, ``ping_timeout``, ``ssl``, ``headers``...).

    Returns:
        A :class:`Subscriber`: ``async with`` it, ``async for`` it, ``await sub.publish(...)``.
    """
    names = [topics] if isinstance(topics, str) else list(topics)
    return Subscriber(
        uri,
        names,
        since=since,
        token=token,
        token_param=token_param,
        min_delay=min_delay,
        max_delay=max_delay,
        restart_jitter=restart_jitter,
        max_pending=max_pending,
        **connect_options,
    )


async def reconnect(
    factory: connect,
    *,
    min_delay: float = DEFAULT_MIN_DELAY,
    max_delay: float = DEFAULT_MAX_DELAY,
    restart_jitter: float = DEFAULT_RESTART_JITTER,
) -> AsyncIterator[WebSocket]:
    """Yield a connection, then a new one each time the previous one is closed, forever.

    ``async for ws in fullduplex.connect(uri)`` uses it. Failures to connect are retried with
    backoff and full jitter; a close with 1012 or 1013 after ``random(0, restart_jitter)``. A
    refused handshake with 400, 401, 403 or 404 is raised (retrying would not help).
    """
    attempt = 0
    while True:
        try:
            ws = await factory
        except InvalidStatus as exc:
            if exc.status in _FATAL_STATUSES:
                raise
            code = None
        except (OSError, InvalidHandshake, asyncio.TimeoutError):
            code = None
        else:
            attempt = 0
            try:
                yield ws
            finally:
                await ws.close()
            await ws.wait_closed()
            code = ws.close_code
        attempt += 1
        if code in _COME_BACK:
            await asyncio.sleep(random.uniform(0, restart_jitter))
        else:
            await asyncio.sleep(full_jitter(attempt - 1, min_delay, max_delay))
