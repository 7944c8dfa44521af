"""Interoperability with the `websockets` library, an implementation nobody here wrote.

Its client against our server, and our client against its server, on asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from http import HTTPStatus

import pytest
import websockets.asyncio.client as wsclient
import websockets.asyncio.server as wsserver
from websockets.exceptions import ConnectionClosed as WSClosed
from websockets.exceptions import InvalidStatus as WSInvalidStatus

import fullduplex
from fullduplex.protocol.exceptions import InvalidHandshake, InvalidStatus

from .conftest import start, url

# -- their client, our server -----------------------------------------------------------------


async def test_text_and_binary_echo(echo_server: fullduplex.Server) -> None:
    async with wsclient.connect(url(echo_server, "/echo"), compression=None) as ws:
        await ws.send("héllo wörld")
        assert await ws.recv() == "héllo wörld"
        payload = bytes(range(256)) * 300
        await ws.send(payload)
        assert await ws.recv() == payload


async def test_fragmented_message(echo_server: fullduplex.Server) -> None:
    async with wsclient.connect(url(echo_server, "/echo"), compression=None) as ws:
        await ws.send(["frag", "men", "ted ✓"])
        assert await ws.recv() == "fragmented ✓"
        await ws.send([b"\x00\x01", b"", b"\x02"])
        assert await ws.recv() == b"\x00\x01\x02"


async def test_compressed_messages(echo_server: fullduplex.Server) -> None:
    async with wsclient.connect(url(echo_server, "/echo"), compression="deflate") as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert extensions.startswith("permessage-deflate")
        text = "compress me " * 2000
        for _ in range(3):  # context takeover across messages
            await ws.send(text)
            assert await ws.recv() == text
        await ws.send(["fragmented ", "and compressed " * 100])
        assert await ws.recv() == "fragmented " + "and compressed " * 100


async def test_ping_pong(echo_server: fullduplex.Server) -> None:
    async with wsclient.connect(url(echo_server, "/echo")) as ws:
        waiter = await ws.ping(b"are you there")
        latency = await asyncio.wait_for(waiter, 5)
        assert latency >= 0


async def test_server_pings_and_measures_latency() -> None:
    app = fullduplex.App()
    result: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    @app.websocket("/p")
    async def handler(ws: fullduplex.WebSocket) -> None:
        result.set_result(await ws.ping(b"abc"))
        await ws.recv()

    server = await start(app)
    try:
        async with wsclient.connect(url(server, "/p")) as ws:
            rtt = await asyncio.wait_for(result, 5)
            assert 0 <= rtt < 5
            await ws.send("done")
    finally:
        await server.shutdown()


async def test_timestamped_echo_and_subprotocol(demo_server: fullduplex.Server) -> None:
    async with wsclient.connect(url(demo_server, "/ws"), subprotocols=["echo"]) as ws:
        assert ws.subprotocol == "echo"
        await ws.send("hi")
        answer = await ws.recv()
        assert isinstance(answer, str)
        stamp, _, rest = answer.partition(": ")
        assert rest == "hi"
        assert len(stamp) == 8 and stamp[2] == ":" and stamp[5] == ":"


async def test_normal_close(echo_server: fullduplex.Server) -> None:
    ws = await wsclient.connect(url(echo_server, "/echo"))
    await ws.close(1000, "bye")
    assert ws.close_code == 1000
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000


async def test_binary_refused_with_1003(demo_server: fullduplex.Server) -> None:
    async with wsclient.connect(url(demo_server, "/ws"), subprotocols=["echo"]) as ws:
        await ws.send(b"\x01\x02")
        with pytest.raises(WSClosed):
            await ws.recv()
        assert ws.close_code == 1003


async def test_oversized_message_gets_1009(demo_server: fullduplex.Server) -> None:
    async with wsclient.connect(
        url(demo_server, "/ws"), subprotocols=["echo"], compression=None
    ) as ws:
        await ws.send("x" * (10 * 1024 + 1))
        with pytest.raises(WSClosed):
            await ws.recv()
        assert ws.close_code == 1009


async def test_handler_error_gets_1011_without_details(caplog: pytest.LogCaptureFixture) -> None:
    app = fullduplex.App()

    @app.websocket("/boom")
    async def handler(ws: fullduplex.WebSocket) -> None:
        await ws.recv()
        raise RuntimeError("secret internal detail")

    @app.websocket("/fine")
    async def fine(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    server = await start(app)
    try:
        async with wsclient.connect(url(server, "/fine")) as other:
            async with wsclient.connect(url(server, "/boom")) as ws:
                await ws.send("go")
                with pytest.raises(WSClosed):
                    await ws.recv()
                assert ws.close_code == 1011
                assert ws.protocol.close_rcvd is not None
                assert "secret" not in ws.protocol.close_rcvd.reason
            # Another connection carries on.
            await other.send("still here")
            assert await other.recv() == "still here"
        assert "secret internal detail" in caplog.text
    finally:
        await server.shutdown()


async def test_shutdown_sends_1001(echo_server: fullduplex.Server) -> None:
    server = echo_server
    clients = [await wsclient.connect(url(server, "/echo")) for _ in range(3)]
    await server.shutdown()
    for ws in clients:
        with pytest.raises(WSClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1001


async def test_refused_origin(demo_server: fullduplex.Server) -> None:
    with pytest.raises(WSInvalidStatus) as info:
        await wsclient.connect(url(demo_server, "/echo"), origin="https://evil.example")
    assert info.value.response.status_code == 403
    # Same host is accepted by default.
    async with wsclient.connect(
        url(demo_server, "/echo"), origin=f"http://127.0.0.1:{demo_server.port}"
    ) as ws:
        await ws.send("ok")
        assert await ws.recv() == "ok"


async def test_refused_subprotocol(demo_server: fullduplex.Server) -> None:
    with pytest.raises(WSInvalidStatus) as info:
        await wsclient.connect(url(demo_server, "/ws"), subprotocols=["chat"])
    assert info.value.response.status_code == 400


# -- our client, their server -----------------------------------------------------------------


async def _their_echo(ws: wsserver.ServerConnection) -> None:
    async for message in ws:
        if message == "close-1003":
            await ws.close(1003, "nope")
            return
        await ws.send(message)


@pytest.fixture
async def their_server() -> object:
    server = await wsserver.serve(
        _their_echo,
        "127.0.0.1",
        0,
        select_subprotocol=lambda conn, offered: "chat" if "chat" in offered else None,
        max_size=2**20,
    )
    yield server
    server.close()
    await server.wait_closed()


def their_url(server: object) -> str:
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return f"ws://127.0.0.1:{port}/"


async def test_our_client_text_binary_fragmented(their_server: object) -> None:
    async with fullduplex.connect(their_url(their_server), compression=False) as ws:
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00" * 70000)
        assert await ws.recv() == b"\x00" * 70000
        await ws.send(["a", "b", "c"])
        assert await ws.recv() == "abc"


async def test_our_client_compression(their_server: object) -> None:
    async with fullduplex.connect(their_url(their_server)) as ws:
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        text = "squeeze " * 5000
        for _ in range(3):
            await ws.send(text)
            assert await ws.recv() == text


async def test_our_client_ping_and_subprotocol(their_server: object) -> None:
    async with fullduplex.connect(their_url(their_server), subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        rtt = await ws.ping()
        assert 0 <= rtt < 5


async def test_our_client_close_paths(their_server: object) -> None:
    ws = await fullduplex.connect(their_url(their_server))
    await ws.close(1000, "done")
    assert ws.close_code == 1000
    ws = await fullduplex.connect(their_url(their_server))
    await ws.send("close-1003")
    with pytest.raises(fullduplex.ConnectionClosedError) as info:
        await ws.recv()
    assert info.value.code == 1003
    assert ws.close_code == 1003


async def test_our_client_gets_1009_from_their_server(their_server: object) -> None:
    async with fullduplex.connect(their_url(their_server), compression=False) as ws:
        await ws.send(b"x" * (2**20 + 1))
        with pytest.raises(fullduplex.ConnectionClosedError) as info:
            await ws.recv()
        assert info.value.code == 1009


async def test_our_client_rejects_oversized_from_their_server() -> None:
    async def big(ws: wsserver.ServerConnection) -> None:
        await ws.send("y" * 5000)
        await ws.wait_closed()

    server = await wsserver.serve(big, "127.0.0.1", 0)
    try:
        async with fullduplex.connect(their_url(server), max_size=1000) as ws:
            with pytest.raises(fullduplex.ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.code == 1009
    finally:
        server.close()
        await server.wait_closed()


async def test_our_client_shutdown_1001_from_their_server(their_server: object) -> None:
    ws = await fullduplex.connect(their_url(their_server))
    their_server.close()  # type: ignore[attr-defined]  # websockets closes with 1001
    with pytest.raises(fullduplex.ConnectionClosedOK) as info:
        await asyncio.wait_for(ws.recv(), 5)
    assert info.value.code == 1001


async def test_our_client_refused_origin_and_subprotocol() -> None:
    server = await wsserver.serve(
        _their_echo, "127.0.0.1", 0, origins=["https://good.example"], subprotocols=["echo"]
    )
    try:
        with pytest.raises(InvalidStatus) as info:
            await fullduplex.connect(their_url(server), origin="https://evil.example")
        assert info.value.status == 403
        with pytest.raises(InvalidHandshake):
            await fullduplex.connect(
                their_url(server), origin="https://good.example", subprotocols=["chat"]
            )
    finally:
        server.close()
        await server.wait_closed()


async def test_our_client_refused_with_a_large_body_gets_invalid_status() -> None:
    # Issue 15: a non-101 answer with a body over the client's 1 MiB body limit raised
    # MessageTooBig; docs/server.md promises InvalidStatus. The body is cut at the limit.
    body = "no entry. " * 300_000  # 3 MB

    def refuse(connection: wsserver.ServerConnection, request: object) -> object:
        return connection.respond(HTTPStatus.FORBIDDEN, body)

    server = await wsserver.serve(_their_echo, "127.0.0.1", 0, process_request=refuse)
    try:
        with pytest.raises(InvalidStatus) as info:
            await fullduplex.connect(their_url(server))
        assert info.value.status == 403
        assert info.value.body == body.encode()[: 2**20]
    finally:
        server.close()
        await server.wait_closed()


async def test_raising_the_message_limit_raises_the_frame_limit() -> None:
    # Issue 11: max_size (the client) or max_message_size (a route) at 32 MiB must accept a 4
    # MiB message sent as one frame, without a frame limit of its own; a frame limit set
    # separately still applies (1009 from the frame header).
    big = bytes(range(256)) * (4 * 2**20 // 256)

    async def send_big(ws: wsserver.ServerConnection) -> None:
        with contextlib.suppress(WSClosed):
            await ws.send(big)  # websockets sends one frame
        await ws.wait_closed()

    server = await wsserver.serve(send_big, "127.0.0.1", 0, compression=None, max_size=None)
    try:
        async with fullduplex.connect(their_url(server), max_size=32 * 2**20) as ws:
            assert await asyncio.wait_for(ws.recv(), 10) == big
        ws = await fullduplex.connect(
            their_url(server), max_message_size=32 * 2**20, max_frame_size=2**20
        )
        with pytest.raises(fullduplex.ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), 10)
        assert info.value.code == 1009
    finally:
        server.close()
        await server.wait_closed()

    app = fullduplex.App()

    async def echo_size(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(str(len(message)))

    app.websocket("/raised", max_message_size=32 * 2**20)(echo_size)
    app.websocket("/framed", max_message_size=32 * 2**20, max_frame_size=2**20)(echo_size)
    ours = await start(app)
    try:
        async with wsclient.connect(url(ours, "/raised"), compression=None, max_size=None) as c:
            await c.send(big)
            assert await asyncio.wait_for(c.recv(), 10) == str(len(big))
        # The separate frame limit trips from the header alone: send just that.
        reader, writer = await asyncio.open_connection("127.0.0.1", ours.port)
        writer.write(
            b"GET /framed HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
            + struct.pack("!BBQ", 0x82, 0xFF, len(big))
            + b"\x00\x00\x00\x00"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        close = await asyncio.wait_for(reader.readexactly(4), 5)
        assert close[0] == 0x88 and struct.unpack("!H", close[2:])[0] == 1009
        writer.close()
    finally:
        await ours.shutdown()


async def test_our_client_gets_1011_when_their_handler_fails() -> None:
    async def failing(ws: wsserver.ServerConnection) -> None:
        await ws.recv()
        raise RuntimeError("their handler broke")

    server = await wsserver.serve(failing, "127.0.0.1", 0)
    try:
        async with fullduplex.connect(their_url(server)) as ws:
            await ws.send("go")
            with pytest.raises(fullduplex.ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.code == 1011
    finally:
        server.close()
        await server.wait_closed()
