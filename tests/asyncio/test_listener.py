"""The low-level callback API: WebSocketListener, with no task per connection."""

from __future__ import annotations

import asyncio

import pytest
import websockets.asyncio.client as wsclient
from websockets.exceptions import ConnectionClosed as WSClosed

import fullduplex
from fullduplex.protocol import prepare_frame

from .conftest import start, url


class Echo(fullduplex.WebSocketListener):
    opened: list[str] = []
    closed: list[int | None] = []

    def on_open(self, ws: fullduplex.WebSocket) -> None:
        self.opened.append(ws.request.path)

    def on_message(self, ws: fullduplex.WebSocket, message: fullduplex.Data) -> None:
        if message == "boom":
            raise RuntimeError("listener failure")
        ws.send_nowait(message)

    def on_close(self, ws: fullduplex.WebSocket) -> None:
        self.closed.append(ws.close_code)


@pytest.fixture
async def server() -> fullduplex.Server:
    Echo.opened, Echo.closed = [], []
    app = fullduplex.App()
    app.websocket("/echo")(Echo)
    srv = await start(app)
    yield srv  # type: ignore[misc]
    await srv.shutdown()


async def test_listener_echoes_without_a_task(server: fullduplex.Server) -> None:
    async with wsclient.connect(url(server, "/echo")) as ws:
        tasks_before = len(server._tasks)
        for message in ["one", b"\x00two", "three " * 1000]:
            await ws.send(message)
            assert await ws.recv() == message
        assert len(server._tasks) == tasks_before == 0
    await asyncio.sleep(0.05)
    assert Echo.opened == ["/echo"]
    assert Echo.closed == [1000]


async def test_many_messages_in_one_read_are_answered_in_order(server: fullduplex.Server) -> None:
    async with wsclient.connect(url(server, "/echo"), compression=None) as ws:
        await asyncio.gather(*(ws.send(str(i)) for i in range(200)))
        assert [await ws.recv() for _ in range(200)] == [str(i) for i in range(200)]


async def test_listener_exception_closes_with_1011(
    server: fullduplex.Server, caplog: pytest.LogCaptureFixture
) -> None:
    async with wsclient.connect(url(server, "/echo")) as ws:
        await ws.send("boom")
        with pytest.raises(WSClosed):
            await ws.recv()
        assert ws.close_code == 1011
    assert "listener failure" in caplog.text


async def test_listener_connections_get_1001_on_shutdown() -> None:
    app = fullduplex.App()
    app.websocket("/echo")(Echo)
    srv = await start(app)
    ws = await wsclient.connect(url(srv, "/echo"))
    await srv.shutdown()
    with pytest.raises(WSClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1001


async def test_send_nowait_after_close_raises() -> None:
    kept: list[fullduplex.WebSocket] = []

    class Keeper(fullduplex.WebSocketListener):
        def on_open(self, ws: fullduplex.WebSocket) -> None:
            kept.append(ws)

    app = fullduplex.App()
    app.websocket("/keep")(Keeper)
    srv = await start(app)
    try:
        async with wsclient.connect(url(srv, "/keep")):
            pass
        await kept[0].wait_closed()
        with pytest.raises(fullduplex.ConnectionClosedOK):
            kept[0].send_nowait("too late")
        assert not srv.websockets  # forgotten by the server once closed
    finally:
        await srv.shutdown()


async def test_broadcast_frames_once_and_reaches_every_open_connection() -> None:
    app = fullduplex.App()
    clients: set[fullduplex.WebSocket] = set()
    counts: list[int] = []

    class Relay(fullduplex.WebSocketListener):
        def on_open(self, ws: fullduplex.WebSocket) -> None:
            clients.add(ws)

        def on_message(self, ws: fullduplex.WebSocket, message: fullduplex.Data) -> None:
            counts.append(fullduplex.broadcast(clients - {ws}, message))

        def on_close(self, ws: fullduplex.WebSocket) -> None:
            clients.discard(ws)

    app.websocket("/relay")(Relay)
    srv = await start(app)
    try:
        plain = [await wsclient.connect(url(srv, "/relay"), compression=None) for _ in range(5)]
        deflated = await wsclient.connect(url(srv, "/relay"))  # permessage-deflate
        assert "permessage-deflate" in deflated.response.headers["Sec-WebSocket-Extensions"]
        sender = await wsclient.connect(url(srv, "/relay"))
        await sender.send("to all " * 50)
        for ws in [*plain, deflated]:
            assert await asyncio.wait_for(ws.recv(), 5) == "to all " * 50
        await sender.send(b"\x01\x02")
        for ws in [*plain, deflated]:
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x01\x02"
        assert counts == [6, 6]
        await plain[0].close()
        await asyncio.sleep(0.05)
        await sender.send("fewer")
        await asyncio.wait_for(plain[1].recv(), 5)
        assert counts[-1] == 5
        for ws in [*plain[1:], deflated, sender]:
            await ws.close()
    finally:
        await srv.shutdown()


async def test_send_prepared_keeps_order_and_counts() -> None:
    # Inside a read's callbacks, a prepared frame queues behind what was sent before it (the
    # writes of one read go out together); elsewhere it is written at once.
    app = fullduplex.App()
    results: list[tuple[bool, bool]] = []

    class Prepared(fullduplex.WebSocketListener):
        def on_message(self, ws: fullduplex.WebSocket, message: fullduplex.Data) -> None:
            ws.send_nowait("first")
            results.append((ws.takes_prepared, ws.send_prepared(prepare_frame("sécond"), 6)))
            ws.send_nowait("third")
            if message == "close":
                ws.close_nowait()
                results.append((ws.takes_prepared, ws.send_prepared(prepare_frame("no"), 2)))

    app.websocket("/prepared")(Prepared)
    srv = await start(app)
    try:
        plain = await wsclient.connect(url(srv, "/prepared"), compression=None)
        await plain.send("go")
        assert [await asyncio.wait_for(plain.recv(), 5) for _ in range(3)] == [
            "first",
            "sécond",
            "third",
        ]
        (server_ws,) = srv.websockets
        assert (server_ws.messages_sent, server_ws.bytes_sent) == (3, 16)
        assert results == [(True, True)]
        # permessage-deflate: its own compressor, so never the shared bytes.
        deflated = await wsclient.connect(url(srv, "/prepared"))
        await deflated.send("go")
        assert [await asyncio.wait_for(deflated.recv(), 5) for _ in range(2)] == ["first", "third"]
        assert results[1] == (False, False)
        await plain.send("close")
        assert [await asyncio.wait_for(plain.recv(), 5) for _ in range(3)] == [
            "first",
            "sécond",
            "third",
        ]
        assert results[-1] == (False, False)  # closing: nothing more
        await plain.wait_closed()
        await deflated.close()
    finally:
        await srv.shutdown()
