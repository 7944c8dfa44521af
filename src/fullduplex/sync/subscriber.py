"""The threaded twin of :func:`fullduplex.subscribe`: a subscriber that never loses a message.

::

    from fullduplex.sync import subscribe

    with subscribe("ws://127.0.0.1:8000/pubsub", ["chat"], since=0) as sub:
        for item in sub:                      # Message and Gap items, in order, forever
            print(item)
        ack = sub.publish("chat", "hello")    # acknowledged by the server

The asyncio subscriber (:mod:`fullduplex.asyncio.subscriber`: reconnection with backoff and
full jitter, resumption by cursor, gaps, idempotent publishing) runs on an event loop in one
background thread; items cross to the caller through a bounded queue. One thread per subscriber,
whatever its topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..asyncio.subscriber import DEFAULT_MAX_PENDING, Ack
from ..asyncio.subscriber import Subscriber as AsyncSubscriber
from ..hub.base import Gap, Message
from ..hub.drops import Drop

__all__ = ["Subscriber", "subscribe"]

_END = object()


class Subscriber:
    """Messages of one or more topics, across reconnections, for threaded code.

    Made by :func:`subscribe`. Iterate it for :class:`~fullduplex.hub.Message` and
    :class:`~fullduplex.hub.Gap` items; use it as a context manager to close it.

    Attributes:
        cursors: per topic, the seq of the last item taken (None until known).
    """

    def __init__(
        self,
        uri: str,
        topics: Iterable[str],
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        **options: Any,
    ) -> None:
        names = [topics] if isinstance(topics, str) else list(topics)
        since = options.get("since")
        if isinstance(since, Mapping):
            self.cursors: dict[str, int | None] = {t: since.get(t) for t in names}
        else:
            self.cursors = dict.fromkeys(names, since)
        self._items: queue.Queue[Any] = queue.Queue(max_pending)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._async: AsyncSubscriber | None = None
        self._args = (uri, names, max_pending, options)
        self._closed = False
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="fullduplex-subscriber", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            # Refused by the subscriber itself (a malformed URI, a bad option): raised here,
            # in the caller's thread, instead of leaving it waiting for items never coming.
            self._thread.join()
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        uri, names, max_pending, options = self._args
        try:
            sub = self._async = AsyncSubscriber(uri, names, max_pending=max_pending, **options)
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        sub.start()
        self._ready.set()
        try:
            async for item in sub:
                await self._put(item)
        except Exception as exc:
            await self._put(exc)
        finally:
            await self._put(_END)

    async def _put(self, item: Any) -> None:
        try:
            self._items.put_nowait(item)
        except queue.Full:  # the caller is behind: wait in a worker thread, not on the loop
            await self._loop.run_in_executor(None, self._items.put, item)

    def recv(self, timeout: float | None = None) -> Message | Gap:
        """The next item; waits up to ``timeout`` seconds (forever if None).

        Raises:
            TimeoutError: nothing came in time.
            StopIteration: the subscriber is closed.
            SubscriptionError: the server refused the subscription for good.
        """
        if self._closed and self._items.empty():
            raise StopIteration
        try:
            item = self._items.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no message within the timeout") from None
        if item is _END:
            self._closed = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._closed = True
            raise item
        self.cursors[item.topic] = item.first_available - 1 if isinstance(item, Gap) else item.seq
        result: Message | Gap = item
        return result

    def __iter__(self) -> Iterator[Message | Gap]:
        while True:
            try:
                yield self.recv()
            except StopIteration:
                return

    def publish(self, topic: str, data: Any, timeout: float | None = None) -> Ack:
        """Publish ``data`` to ``topic``; return once the server acknowledged it.

        Raises:
            SubscriptionError: the server refused it.
            TimeoutError: no acknowledgement within ``timeout`` seconds.
        """
        assert self._async is not None
        coro = self._async.publish(topic, data, timeout=timeout)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def state(self) -> str:
        """``"connecting"``, ``"open"``, ``"reconnecting"`` or ``"closed"``."""
        return self._async.state if self._async is not None else "connecting"

    @property
    def connections(self) -> int:
        """Connections opened so far (1 + reconnections)."""
        return self._async.connections if self._async is not None else 0

    @property
    def last_drop(self) -> Drop | None:
        """Why the server last dropped this subscriber (``reason``, ``code``, ``topic``).

        Learned from the ``hello`` of the connection after; None if it never did. See
        :attr:`fullduplex.asyncio.subscriber.Subscriber.last_drop`.
        """
        return self._async.last_drop if self._async is not None else None

    @property
    def drops(self) -> int:
        """How many times the server said it dropped this subscriber."""
        return self._async.drops if self._async is not None else 0

    def close(self) -> None:
        """Close the connection, stop reconnecting and end the thread."""
        if self._async is not None and self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._async.close(), self._loop)
            with contextlib.suppress(Exception):
                future.result(10)
        # Unblock a producer waiting on a full queue, then let the thread end.
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    self._items.get_nowait()
            self._thread.join(0.05)
        self._closed = True
        # The drain above may have taken the thread's end marker: a reader blocked in recv()
        # (another thread) must still wake up and stop.
        with contextlib.suppress(queue.Full):
            self._items.put_nowait(_END)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribe(uri: str, topics: str | Iterable[str], **options: Any) -> Subscriber:
    """Subscribe to ``topics`` at a ``/pubsub`` route, in a background thread.

    Takes the arguments of :func:`fullduplex.subscribe` (``since``, ``token``,
    ``token_param``, ``min_delay``, ``max_delay``, ``restart_jitter``, ``max_pending`` and the
    options of ``connect``).

    Returns:
        A :class:`Subscriber`: iterate it, ``sub.publish(...)``, close it (or use ``with``).
    """
    names = [topics] if isinstance(topics, str) else list(topics)
    return Subscriber(uri, names, **options)
