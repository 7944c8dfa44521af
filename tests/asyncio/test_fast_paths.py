"""The per-message paths of the asyncio layer: messages handed straight to a waiting recv() or
``async for`` (and kept when the reader is cancelled), handler errors, server bookkeeping."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest
import websockets.asyncio.client as wsclient

import fullduplex

from .conftest import start, url


async def test_cancelled_recv_keeps_a_message_handed_over(
    demo_server: fullduplex.Server,
) -> None:
    async with fullduplex.connect(url(demo_server, "/echo")) as ws:
        task = asyncio.get_running_loop().create_task(ws.recv())
        await asyncio.sleep(0)  # waiting in recv()
        ws._deliver("handed over")  # as the parser does
        task.cancel()  # before the task resumed
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await ws.recv() == "handed over"
        await ws.send("next")
        assert await ws.recv() == "next"


async def test_cancelled_async_for_keeps_a_message_handed_over(
    demo_server: fullduplex.Server,
) -> None:
    async with fullduplex.connect(url(demo_server, "/echo")) as ws:
        received: list[fullduplex.Data] = []

        async def read() -> None:
            async for message in ws:
                received.append(message)  # pragma: no cover - cancelled first

        task = asyncio.get_running_loop().create_task(read())
        await asyncio.sleep(0)
        ws._deliver("handed over")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert received == []
        async for message in ws:
            assert message == "handed over"
            break
        # Cancelled while still waiting: nothing to keep, and a new reader may wait.
        task = asyncio.get_running_loop().create_task(ws.recv())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await ws.send("again")
        assert await asyncio.wait_for(ws.recv(), 5) == "again"


async def test_an_abandoned_anext_frees_the_reader_slot(demo_server: fullduplex.Server) -> None:
    async with fullduplex.connect(url(demo_server, "/echo")) as ws:
        waiting: Any = ws.__anext__()
        assert asyncio.isfuture(next(waiting))  # waiting for a message, as on a future
        with pytest.raises(RuntimeError, match="already being awaited"):
            await ws.recv()
        waiting.close()  # as when a suspended task is garbage-collected
        await ws.send("after")
        assert await asyncio.wait_for(ws.recv(), 5) == "after"
        # A message handed over just before the generator is closed is kept too.
        waiting = ws.__anext__()
        next(waiting)
        ws._deliver("kept")
        waiting.close()
        assert await ws.recv() == "kept"


async def test_async_for_reads_queued_messages_then_ends_on_a_normal_close(
    demo_server: fullduplex.Server,
) -> None:
    async with fullduplex.connect(url(demo_server, "/echo")) as ws:
        for i in range(5):
            await ws.send(str(i))
        await asyncio.sleep(0.1)  # all five echoes queued
        received = []
        async for message in ws:
            received.append(message)
            if len(received) == 5:
                await ws.close()
        assert received == ["0", "1", "2", "3", "4"]
        async for _ in ws:  # pragma: no cover - closed: nothing more
            pass
        with pytest.raises(fullduplex.ConnectionClosedOK):
            await ws.recv()


async def test_async_for_raises_after_an_abnormal_close(demo_server: fullduplex.Server) -> None:
    async with fullduplex.connect(url(demo_server, "/echo")) as ws:
        ws.transport.abort()
        with pytest.raises(fullduplex.ConnectionClosedError):
            async for _ in ws:  # pragma: no cover - nothing arrives
                pass


async def test_two_readers_are_refused(demo_server: fullduplex.Server) -> None:
    async with fullduplex.connect(url(demo_server, "/echo")) as ws:
        task = asyncio.get_running_loop().create_task(ws.recv())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            await ws.recv()
        await ws.send("x")
        assert await task == "x"


async def test_server_bookkeeping_after_the_protocol_switch() -> None:
    app = fullduplex.App()

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    server = await start(app)
    try:
        async with wsclient.connect(url(server, "/echo")) as client:
            await client.send("hi")
            assert await client.recv() == "hi"
            assert len(server.websockets) == len(server.connections) == 1
        for _ in range(100):
            if not server.connections and not server.websockets and not server._tasks:
                break
            await asyncio.sleep(0.01)
        assert not server.connections and not server.websockets and not server._tasks
    finally:
        await server.shutdown()


async def test_handler_errors_close_with_1011(caplog: pytest.LogCaptureFixture) -> None:
    app = fullduplex.App()

    @app.websocket("/raises")
    async def raises(ws: fullduplex.WebSocket) -> None:
        raise ValueError("bug")

    def not_async(ws: fullduplex.WebSocket) -> None:
        pass

    def raises_at_call(ws: fullduplex.WebSocket) -> None:
        raise ValueError("bug at call")

    app.websocket("/sync")(not_async)  # type: ignore[arg-type]
    app.websocket("/call")(raises_at_call)  # type: ignore[arg-type]
    server = await start(app)
    try:
        with caplog.at_level(logging.ERROR, logger="fullduplex"):
            for path in ("/raises", "/sync", "/call"):
                async with fullduplex.connect(url(server, path)) as ws:
                    with pytest.raises(fullduplex.ConnectionClosedError) as info:
                        await ws.recv()
                    assert info.value.code == 1011
        messages = [r.getMessage() for r in caplog.records]
        assert "WebSocket handler for /raises raised" in messages
        assert "WebSocket handler for /sync raised" in messages  # awaiting None
        assert "WebSocket handler for /call raised" in messages
    finally:
        await server.shutdown()


async def test_listener_gets_frames_sent_with_the_handshake() -> None:
    received: list[fullduplex.Data] = []

    class Keep(fullduplex.WebSocketListener):
        def on_message(self, ws: fullduplex.WebSocket, message: fullduplex.Data) -> None:
            received.append(message)

    app = fullduplex.App()
    app.websocket("/keep")(Keep)
    server = await start(app)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET /keep HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            b"\x82\x82abcd" + bytes(b ^ k for b, k in zip(b"hi", b"ab", strict=True))
        )
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.01)
        assert received == [b"hi"]
        writer.close()
    finally:
        await server.shutdown()


async def test_common_request_fields_are_shared_between_connections() -> None:
    seen: list[fullduplex.WebSocket] = []

    class Keep(fullduplex.WebSocketListener):
        def on_open(self, ws: fullduplex.WebSocket) -> None:
            seen.append(ws)

    app = fullduplex.App()
    app.websocket("/keep")(Keep)
    server = await start(app)
    try:
        async with wsclient.connect(url(server, "/keep")), wsclient.connect(url(server, "/keep")):
            first, second = (ws.request.headers.items() for ws in seen)
            assert [p[0] for p in first] == [p[0] for p in second]
            for a, b in zip(first, second, strict=True):
                if a[0].lower() == "sec-websocket-key":
                    assert a is not b and a != b
                elif a == b and a[0].lower() in ("host", "upgrade", "connection"):
                    assert a is b  # one tuple for both connections
            assert seen[0].request.headers["Upgrade"] == "websocket"
            assert seen[1].request.path == "/keep"
        server._fields.clear()
        request = seen[0].request
        for i in range(5000):
            request.headers.add("Origin", f"http://o{i}")
        server.share_fields(request)
        assert len(server._fields) == 4096  # bounded
    finally:
        await server.shutdown()


_HANDSHAKE = (
    b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
_CLOSE_1000 = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # masked with a zero key


@pytest.mark.parametrize("api", ["async", "listener"])
async def test_a_closed_connection_leaves_no_cyclic_garbage(api: str) -> None:
    """A handshake and its close free the server's objects by reference counting.

    Reference cycles (parser and callbacks, core and WebSocket, an exception in the recv
    future) left every connection's objects to the garbage collector, whose collections cost
    ~8% of a handshake's instructions. Closed normally (1000) and by a dropped TCP connection.
    """
    app = fullduplex.App()
    if api == "async":

        @app.websocket("/echo")
        async def echo(ws: fullduplex.WebSocket) -> None:
            async for message in ws:
                await ws.send(message)

    else:

        class Echo(fullduplex.WebSocketListener):
            def on_message(self, ws: fullduplex.WebSocket, message: fullduplex.Data) -> None:
                ws.send_nowait(message)

        app.websocket("/echo")(Echo)
    server = await start(app, ping_interval=None)

    async def one(close: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(_HANDSHAKE)
        await reader.readuntil(b"\r\n\r\n")
        if close:
            writer.write(_CLOSE_1000)
            await reader.read()  # until the server closes TCP
        writer.close()
        await writer.wait_closed()

    try:
        await one(True)  # lazy imports and caches
        gc.collect()
        gc.disable()
        try:
            for close in (True, False, True):
                await one(close)
            server.close()
            await server.wait_closed()  # every connection and handler done
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            ours = [
                type(o).__qualname__
                for o in gc.garbage
                if type(o).__module__.split(".")[0] in ("fullduplex", "httptools")
            ]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert ours == []
    finally:
        await server.shutdown()


async def test_the_server_side_response_is_the_101_sent() -> None:
    # Without a subprotocol, an extension or a hook, the server keeps no 101 per connection:
    # ws.response is built again from the request when read. It must be the 101 the client got.
    responses: list[Any] = []

    async def keep(ws: fullduplex.WebSocket) -> None:
        responses.append(ws.response)
        await ws.send("ready")
        async for _ in ws:
            pass

    app = fullduplex.App()
    app.websocket("/plain")(keep)
    app.websocket("/chat", subprotocols=["chat"])(keep)
    app.websocket("/deflate", compression=True)(keep)
    server = await start(app)
    try:
        for path, subprotocols, compression in [
            ("/plain", None, None),
            ("/chat", ["chat"], None),
            ("/deflate", None, "deflate"),
            ("/plain", None, None),
        ]:
            async with wsclient.connect(
                url(server, path), subprotocols=subprotocols, compression=compression
            ) as client:
                assert await client.recv() == "ready"
                assert client.response is not None
                response = responses[-1]
                assert response.status == 101
                assert response.headers.items() == list(client.response.headers.raw_items())
    finally:
        await server.shutdown()
