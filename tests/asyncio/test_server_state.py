"""The server's own state: shutdown without polling, per-server handshake settings."""

from __future__ import annotations

import asyncio

import websockets.asyncio.client as wsclient

import fullduplex

from .conftest import start


async def loop_turns_until(task: asyncio.Future[None], limit: int = 100_000) -> int:
    """Count event loop iterations until ``task`` is done (bounded)."""
    for turns in range(limit):
        if task.done():
            return turns
        await asyncio.sleep(0)
    raise AssertionError(f"not done after {limit} loop iterations")


async def test_wait_closed_wakes_when_the_last_handler_ends_without_polling() -> None:
    app = fullduplex.App()
    release = asyncio.Event()
    left = asyncio.Event()

    @app.websocket("/linger")
    async def linger(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)
        left.set()
        await release.wait()  # cleanup that outlives the connection: the server waits for it

    server = await start(app)
    async with wsclient.connect(f"ws://127.0.0.1:{server.port}/linger") as client:
        await client.send("x")
        assert await client.recv() == "x"
        server.close()  # 1001; the client answers and the connection ends
        forever = asyncio.ensure_future(server.serve_forever())
        closed = asyncio.ensure_future(server.wait_closed())
        await asyncio.wait_for(left.wait(), 5)
    assert client.close_code == 1001
    for _ in range(50):
        await asyncio.sleep(0)
    assert not closed.done() and not forever.done()  # the handler still runs
    release.set()
    # A poll every 50 ms would take thousands of loop iterations here (each a few µs); the
    # waiter is woken by the end of the last task, a handful of iterations later.
    assert await loop_turns_until(closed) < 50
    assert await loop_turns_until(forever) < 50
    assert not server.connections and not server.websockets
    await server.shutdown()


async def test_a_cancelled_wait_closed_does_not_break_another() -> None:
    app = fullduplex.App()

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    server = await start(app)
    async with wsclient.connect(f"ws://127.0.0.1:{server.port}/echo") as client:
        first = asyncio.ensure_future(server.wait_closed())
        second = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0)
        first.cancel()
        server.close()  # 1001 to the client, which answers; then both sides close
        await asyncio.wait_for(second, 5)
        assert client.close_code == 1001
    assert first.cancelled()


async def test_two_servers_on_one_app_keep_their_own_handshake_settings() -> None:
    app = fullduplex.App()

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    compressing = await start(app)
    plain = await start(app, compression=False)
    try:
        for server, expected in ((compressing, True), (plain, False), (compressing, True)):
            uri = f"ws://127.0.0.1:{server.port}/echo"
            async with wsclient.connect(uri) as client:  # offers permessage-deflate
                await client.send("x")
                assert await client.recv() == "x"
                assert client.response is not None
                answer = client.response.headers.get("Sec-WebSocket-Extensions", "")
                assert ("permessage-deflate" in answer) is expected, (server.port, answer)
    finally:
        await compressing.shutdown()
        await plain.shutdown()


async def test_http_connection_states() -> None:
    from fullduplex.asyncio.server import HTTPState

    app = fullduplex.App()
    release = asyncio.Event()

    @app.get("/hold")
    async def hold(request: object) -> str:
        await release.wait()
        return "done\n"

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    server = await start(app)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            while not server.connections or next(iter(server.connections)).busy is False:
                await asyncio.sleep(0.005)
        (conn,) = server.connections
        assert conn.state is HTTPState.HANDLING and not conn.awaiting_request
        release.set()
        await asyncio.wait_for(reader.readuntil(b"done\n"), 5)
        assert conn.state is HTTPState.IDLE  # kept alive after the answer
        writer.write(b"GET /hold HTTP/1.1\r\n")  # a new request starts
        async with asyncio.timeout(5):
            while conn.state is not HTTPState.READING:
                await asyncio.sleep(0.005)
        assert conn.awaiting_request
        writer.close()
        async with wsclient.connect(f"ws://127.0.0.1:{server.port}/echo") as client:
            await client.send("x")
            assert await client.recv() == "x"
            upgraded = [c for c in server.connections if c.websocket is not None]
            assert [c.state for c in upgraded] == [HTTPState.UPGRADED]
    finally:
        await server.shutdown()
