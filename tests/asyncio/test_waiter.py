"""The message waiter behind ``async for message in ws`` (fullduplex.asyncio.waiter).

Each test runs with the C accelerator's waiter and with the Python one: a handler's task is
resumed inside the read that brought its message, in the task's own context, and everything an
asyncio task does inside a handler (current_task, timeouts, cancellation, wait_for) still works.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from typing import Any

import pytest

import fullduplex
from fullduplex.asyncio import connection, waiter
from fullduplex.protocol.mask import load_speedups

from .conftest import start, url

_speedups = load_speedups()
WAITERS = {"python": waiter.PyMessageWaiter}
if _speedups is not None:
    WAITERS["c"] = _speedups.MessageWaiter

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


@pytest.fixture(params=sorted(WAITERS))
def waiter_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(connection, "MessageWaiter", WAITERS[request.param])
    yield request.param


def test_the_c_waiter_is_built_where_required() -> None:
    import os

    if os.environ.get("FULLDUPLEX_REQUIRE_SPEEDUPS"):
        assert "c" in WAITERS
        assert waiter.MessageWaiter is WAITERS["c"]


async def test_handlers_run_in_their_task_and_context(waiter_kind: str) -> None:
    app = fullduplex.App()
    seen: list[tuple[bool, str]] = []

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        me = asyncio.current_task()
        request_id.set("r1")
        async for message in ws:
            seen.append((asyncio.current_task() is me, request_id.get()))
            await ws.send(message)

    server = await start(app, ping_interval=None)
    try:
        async with fullduplex.connect(url(server, "/echo")) as ws:
            for i in range(50):
                await ws.send(f"m{i}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"m{i}"
            # Several messages in one read: each is handled, in order.
            await ws.send([b"a", b"b"])
            for i in range(20):
                ws.send_nowait(str(i))
            assert await asyncio.wait_for(ws.recv(), 5) == b"ab"
            assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(20)] == [
                str(i) for i in range(20)
            ]
        assert len(seen) == 71 and set(seen) == {(True, "r1")}
    finally:
        await server.shutdown()


async def test_timeouts_inside_a_handler(waiter_kind: str) -> None:
    app = fullduplex.App()

    @app.websocket("/timeouts")
    async def handler(ws: fullduplex.WebSocket) -> None:
        try:
            async with asyncio.timeout(0.05):
                await ws.recv()
        except TimeoutError:
            await ws.send("timeout")
        try:
            await asyncio.wait_for(ws.recv(), 0.05)
        except TimeoutError:
            await ws.send("wait_for")
        # After two cancelled waits, messages still arrive, in order.
        async for message in ws:
            await ws.send(message)

    server = await start(app, ping_interval=None)
    try:
        async with fullduplex.connect(url(server, "/timeouts")) as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "timeout"
            assert await asyncio.wait_for(ws.recv(), 5) == "wait_for"
            for i in range(3):
                await ws.send(str(i))
            assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(3)] == ["0", "1", "2"]
    finally:
        await server.shutdown()


async def test_a_message_wakes_the_reader_inside_the_read(
    waiter_kind: str, demo_server: fullduplex.Server
) -> None:
    async with fullduplex.connect(url(demo_server, "/echo")) as ws:
        got: list[Any] = []

        async def read() -> None:
            async for message in ws:
                got.append(message)

        task = asyncio.get_running_loop().create_task(read())
        await asyncio.sleep(0)  # waiting
        done = asyncio.get_running_loop().create_future()

        def deliver(message: str) -> None:  # a loop callback, as data_received is
            ws._deliver(message)
            done.set_result(list(got))

        asyncio.get_running_loop().call_soon(deliver, "now")
        assert await done == ["now"]  # the reader ran before deliver() returned
        # From a running task, the reader is scheduled instead (a task cannot run another).
        ws._deliver("later")
        assert got == ["now"]
        await asyncio.sleep(0)
        assert got == ["now", "later"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Cancelled while waiting: what comes next waits for the next reader.
        ws._deliver("kept")
        assert await ws.recv() == "kept"


async def test_wait_for_anext_and_concurrent_readers(
    waiter_kind: str, demo_server: fullduplex.Server
) -> None:
    async with fullduplex.connect(url(demo_server, "/echo")) as ws:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(ws), 0.05)
        await ws.send("one")
        assert await asyncio.wait_for(anext(ws), 5) == "one"
        first = asyncio.get_running_loop().create_task(ws.recv())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already being awaited"):
            await ws.recv()
        await ws.send("two")
        assert await asyncio.wait_for(first, 5) == "two"


async def test_a_lost_connection_ends_the_wait(
    waiter_kind: str, demo_server: fullduplex.Server
) -> None:
    async with fullduplex.connect(url(demo_server, "/echo")) as ws:
        reader = asyncio.get_running_loop().create_task(ws.recv())
        await asyncio.sleep(0)
        ws.transport.abort()
        with pytest.raises(fullduplex.ConnectionClosedError):
            await asyncio.wait_for(reader, 5)
        with pytest.raises(fullduplex.ConnectionClosedError):
            await ws.recv()


async def test_no_cyclic_garbage_with_either_waiter(waiter_kind: str) -> None:
    from .test_fast_paths import test_a_closed_connection_leaves_no_cyclic_garbage as check

    await check("async")


@pytest.mark.parametrize("kind", sorted(WAITERS))
async def test_a_waiter_driven_by_hand(kind: str) -> None:
    """Any owner with the attributes (no slots here: the C waiter looks them up by name)."""

    class Owner:
        def __init__(self) -> None:
            self._queue: list[str] | None = None
            self._lost = False
            self.requeued: list[str] = []

        def _take_queued(self) -> str:
            assert self._queue
            return self._queue.pop(0)

        def _requeue(self, message: str) -> None:
            self.requeued.append(message)

        def _end_of_messages(self) -> BaseException:
            return StopAsyncIteration()

    owner = Owner()
    w = WAITERS[kind](owner, asyncio.get_running_loop(), waiter.DONE)
    assert not w.busy
    suspended_on = next(w)
    assert asyncio.isfuture(suspended_on) and w.busy
    with pytest.raises(RuntimeError, match="already being awaited"):
        next(w)
    # No task waits. The C waiter finds no wake-up on its future and hands nothing over (the
    # caller queues the message); the Python one keeps it for the next send(), and closing
    # the wait gives it back.
    handed = w.wake("held")
    w.close()
    assert not w.busy
    if kind == "c":
        assert handed is False and owner.requeued == []
    else:
        assert handed is True and owner.requeued == ["held"]
    owner._queue = ["queued"]
    assert await w == "queued"
    owner._lost = True
    with pytest.raises(StopAsyncIteration):
        await w
    w.lose()
    with pytest.raises(StopAsyncIteration):
        await w


@pytest.mark.parametrize("waited", [False, True])
async def test_queued_messages_outlive_the_connection(
    waiter_kind: str, waited: bool, demo_server: fullduplex.Server
) -> None:
    async with fullduplex.connect(url(demo_server, "/echo")) as ws:
        if waited:  # a waiter exists when the connection is lost
            await ws.send("first")
            assert await asyncio.wait_for(ws.recv(), 5) == "first"
        ws._deliver("a")  # nobody waits: queued
        ws._deliver("b")
        ws.transport.abort()
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert await ws.recv() == "a"
        assert await anext(ws) == "b"
        with pytest.raises(fullduplex.ConnectionClosedError):
            await ws.recv()


async def test_async_for_across_a_lost_connection(
    waiter_kind: str, demo_server: fullduplex.Server
) -> None:
    async with fullduplex.connect(url(demo_server, "/echo")) as ws:
        iterator = aiter(ws)
        assert iterator.__anext__() is iterator  # its own iterator: no Python call per message
        await ws.send("first")
        got: list[Any] = []
        with pytest.raises(fullduplex.ConnectionClosedError):
            async for message in ws:
                got.append(message)
                if message == "first":  # lost while the loop body runs, a message queued
                    ws._deliver("queued")
                    ws.transport.abort()
                    await asyncio.wait_for(ws.wait_closed(), 5)
        assert got == ["first", "queued"]
        # A new loop after the loss: nothing queued, the same end.
        with pytest.raises(fullduplex.ConnectionClosedError):
            async for _ in ws:  # pragma: no cover - nothing arrives
                pass
