"""What ``async for message in ws`` awaits: one waiter per connection, not a future per message.

A message waiter is awaited again for every message. With a message queued, awaiting it
returns the message at once. With none, it suspends the awaiting task, and the WebSocket hands
the next message over with ``wake(message)``: when no other task is running on the loop (the
usual case: ``wake`` is called from the transport's read callback), the task's wake-up runs at
once, in the task's own context, so the handler runs inside the read that brought its message;
otherwise it is scheduled as a future's callbacks are. Per message that saves a future made and
resolved, a handle through the loop's ready queue and a coroutine object: 21.4k -> 16.9k
user-space instructions per 32 B ``async for`` echo (``bench/run.py --callgrind``;
docs/performance.md, "The `async for` API without a future per message").

Two implementations of that contract:

* ``fullduplex.protocol._speedups.MessageWaiter`` (C, used when built) suspends the task on a
  real pending asyncio future kept between waits (the task's fast path for exact futures), and
  ``wake`` takes the task's wake-up off it and calls it with :data:`DONE`;
* :class:`PyMessageWaiter` is itself the future-like object the task waits on
  (``_asyncio_future_blocking``, ``get_loop``, ``add_done_callback``, ``result``, ``cancel``).

``owner`` is the WebSocket: its ``_queue``, ``_lost``, ``_take_queued()``, ``_requeue(message)``
and ``_end_of_messages()`` are what a waiter reads and calls. ``lose()`` (the connection is
lost) ends a wait with the end of messages; the WebSocket then lets go of its waiter, so that
no reference cycle is left for the garbage collector. A waiter is its own async iterator
(``__aiter__`` and ``__anext__`` return it): ``async for message in ws`` iterates over it and
gets each message's awaitable without a Python call.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Generator
from typing import Any, Protocol, TypeVar

from ..protocol.mask import load_speedups

__all__ = ["DONE", "MessageWaiter", "PyMessageWaiter", "Waitable"]

_IDLE, _WAITING, _DONE, _LOST, _CANCELLED = range(5)

_T_co = TypeVar("_T_co", covariant=True)


class Waitable(Protocol[_T_co]):
    """What ``WebSocket.__anext__`` returns: awaitable, and a ``yield from`` target."""

    def __await__(self) -> Generator[Any, None, _T_co]: ...

    def __iter__(self) -> Generator[Any, None, _T_co]: ...


class PyMessageWaiter:
    """The message waiter in Python (see the module's docstring).

    Args:
        owner: the WebSocket whose messages this waits for.
        loop: its event loop.
        done: unused (the C waiter's completed future, :data:`DONE`).
    """

    __slots__ = (
        "_asyncio_future_blocking",
        "_callback",
        "_cancel_msg",
        "_context",
        "_loop",
        "_owner",
        "_result",
        "_state",
    )

    def __init__(self, owner: Any, loop: asyncio.AbstractEventLoop, done: object = None) -> None:
        self._owner = owner
        self._loop = loop
        self._callback: Callable[[Any], object] | None = None
        self._context: contextvars.Context | None = None
        self._result: Any = None
        self._cancel_msg: Any = None
        self._state = _IDLE
        # None outside a suspension: asyncio.isfuture() is then False (ensure_future wraps it).
        self._asyncio_future_blocking: bool | None = None

    @property
    def busy(self) -> bool:
        """True while awaited, or holding what the awaiting task has not taken yet."""
        return self._state != _IDLE

    def __await__(self) -> Generator[Any, None, Any]:
        return self

    def __iter__(self) -> PyMessageWaiter:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def __aiter__(self) -> PyMessageWaiter:
        return self

    def __anext__(self) -> PyMessageWaiter:
        return self

    def _reset(self) -> None:
        self._state = _IDLE
        self._asyncio_future_blocking = None
        self._callback = self._context = self._cancel_msg = None

    def _end(self) -> BaseException:
        owner = self._owner
        return StopAsyncIteration() if owner is None else owner._end_of_messages()

    def send(self, value: object) -> Any:
        """Resume: the message (as StopIteration), or self to suspend on."""
        state = self._state
        if state == _DONE:
            message = self._result
            self._result = None
            self._reset()
            raise StopIteration(message)
        if state == _WAITING:
            raise RuntimeError("recv() is already being awaited by another coroutine")
        if state in (_LOST, _CANCELLED):
            # Built by a helper, never held in a local here: a frame holding the exception that
            # holds the frame (its traceback) is a cycle left to the garbage collector.
            raise self._ending(state)
        owner = self._owner
        if owner is None:
            raise StopAsyncIteration
        if owner._queue:
            raise StopIteration(owner._take_queued())
        if owner._lost:
            raise owner._end_of_messages()
        self._state = _WAITING
        self._asyncio_future_blocking = True
        return self

    def _ending(self, state: int) -> BaseException:
        exc = self._end() if state == _LOST else self._cancelled_error()
        self._reset()
        return exc

    def _abandon(self) -> None:
        message = self._result if self._state == _DONE else None
        self._result = None
        state = self._state
        self._reset()
        if state == _DONE and self._owner is not None:
            self._owner._requeue(message)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """The awaiting coroutine is thrown an exception: a message handed over is requeued."""
        self._abandon()
        try:
            if isinstance(typ, BaseException):
                raise typ
            raise typ if val is None else val
        finally:
            del typ, val, tb  # no cycle through this frame (see send)

    def close(self) -> None:
        """The awaiting coroutine is closed: a message handed over is requeued."""
        self._abandon()

    def _fire(self, now: bool) -> None:
        callback, context = self._callback, self._context
        self._callback = self._context = None
        if callback is None:
            return  # awaited by hand (next()): the next send() returns the result
        if now and context is not None and asyncio.current_task(self._loop) is None:
            context.run(callback, self)
        else:
            self._loop.call_soon(callback, self, context=context)

    def wake(self, message: Any) -> bool:
        """Hand message to the awaiting task; False if none waits."""
        if self._state != _WAITING:
            return False
        self._state = _DONE
        self._result = message
        self._fire(True)
        return True

    def lose(self) -> None:
        """The connection is lost: end the wait with the end of messages."""
        if self._state == _WAITING:
            self._state = _LOST
            self._fire(False)

    # -- what asyncio's tasks call on a future ------------------------------------------------

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop."""
        return self._loop

    def add_done_callback(
        self, fn: Callable[[Any], object], *, context: contextvars.Context | None = None
    ) -> None:
        """The awaiting task's wake-up (one at a time)."""
        if self._callback is not None:
            raise RuntimeError("MessageWaiter takes one done callback")
        self._callback = fn
        self._context = contextvars.copy_context() if context is None else context
        if self._state not in (_WAITING, _IDLE):
            self._fire(False)

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        """Forget the wake-up; 1 if it was there."""
        if self._callback is not None and self._callback is fn:
            self._callback = self._context = None
            return 1
        return 0

    def _cancelled_error(self) -> asyncio.CancelledError:
        msg = self._cancel_msg
        return asyncio.CancelledError() if msg is None else asyncio.CancelledError(msg)

    def result(self) -> None:
        """None once woken (the message is what awaiting returns); raises if cancelled."""
        if self._state == _CANCELLED:
            raise self._cancelled_error()
        if self._state == _WAITING:
            raise RuntimeError("no message yet")

    def done(self) -> bool:
        """True once woken or cancelled."""
        return self._state not in (_WAITING, _IDLE)

    def cancelled(self) -> bool:
        """True once cancelled."""
        return self._state == _CANCELLED

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the wait (the task is woken with CancelledError); False if not waiting."""
        if self._state != _WAITING:
            return False
        self._state = _CANCELLED
        self._cancel_msg = msg
        self._fire(False)  # never at once: cancel() is called from anywhere, a task included
        return True


class _AnyLoop:
    """All a future asks of its loop until a callback is added: whether it is in debug mode."""

    def get_debug(self) -> bool:
        return False


#: A completed future (result None), never awaited: the C waiter wakes a task with it when it
#: runs the task's wake-up itself (the task then reads the message from the waiter).
DONE: asyncio.Future[None] = asyncio.Future(loop=_AnyLoop())  # type: ignore[arg-type]
DONE.set_result(None)

_speedups = load_speedups()
#: The waiter the WebSocket uses: the C accelerator's when built.
MessageWaiter: Any = PyMessageWaiter if _speedups is None else _speedups.MessageWaiter
