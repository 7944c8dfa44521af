"""ASGI applications served by fullduplex: Starlette's and FastAPI's own endpoints, real sockets.

Clients: httpx, the `websockets` library and raw sockets (for what clients hide: chunked
framing, keep-alive, limits).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets.asyncio.client as wsclient
from websockets.exceptions import ConnectionClosed as WSClosed
from websockets.exceptions import InvalidStatus as WSInvalidStatus

import fullduplex
from fullduplex.asgi import ASGIAdapter, LifespanFailed

from . import apps


@pytest.fixture
async def starlette_server() -> AsyncIterator[fullduplex.Server]:
    apps.EVENTS.clear()
    server = await fullduplex.serve(apps.starlette_app, "127.0.0.1", 0)
    yield server
    await server.shutdown()


@pytest.fixture
async def fastapi_server() -> AsyncIterator[fullduplex.Server]:
    server = await fullduplex.serve(apps.fastapi_app, "127.0.0.1", 0)
    yield server
    await server.shutdown()


def base(server: fullduplex.Server, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.port}"


async def raw(port: int, data: bytes, *, until: bytes | None = None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        if until is None:
            return await asyncio.wait_for(reader.read(), 5)
        return await asyncio.wait_for(reader.readuntil(until), 5)
    finally:
        writer.close()


# -- HTTP --------------------------------------------------------------------------------------


async def test_starlette_http_with_lifespan_state(starlette_server: fullduplex.Server) -> None:
    async with httpx.AsyncClient(base_url=base(starlette_server)) as client:
        response = await client.get("/")
        assert response.status_code == 200
        assert response.text == "hello from lifespan"
        assert response.headers["content-length"] == str(len(response.text))
        head = await client.head("/")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == response.headers["content-length"]
        missing = await client.get("/nope")
        assert missing.status_code == 404


async def test_streamed_request_body_arrives_in_parts(starlette_server: fullduplex.Server) -> None:
    payload = bytes(range(256)) * 2048  # 512 KiB, under the 1 MiB default limit

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    async with httpx.AsyncClient(base_url=base(starlette_server)) as client:
        response = await client.post("/upload", content=chunks())  # chunked
        digest, parts = response.text.split()
        assert digest == hashlib.sha256(payload).hexdigest()
        assert int(parts) > 1  # more_body: the application saw the body as it came
        response = await client.post("/upload", content=payload)  # Content-Length
        assert response.text.split()[0] == digest


async def test_streaming_response_is_chunked_and_keeps_alive(
    starlette_server: fullduplex.Server,
) -> None:
    request = b"GET /stream?n=4 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await raw(starlette_server.port, request, until=b"hello from lifespan")
    first, _, second = answer.partition(b"0\r\n\r\n")
    assert b"transfer-encoding: chunked" in first.lower()
    assert first.endswith(b"2\r\n0\n\r\n2\r\n1\n\r\n2\r\n2\n\r\n2\r\n3\n\r\n")
    # The second, pipelined request was answered on the same connection.
    assert second.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_body_over_limit_gets_413() -> None:
    server = await fullduplex.serve(apps.starlette_app, "127.0.0.1", 0, max_body_size=1000)
    try:
        head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
        assert (await raw(server.port, head)).startswith(b"HTTP/1.1 413 ")
        chunked = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked += b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n"
        assert (await raw(server.port, chunked)).startswith(b"HTTP/1.1 413 ")
        big_head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        assert (await raw(server.port, big_head)).startswith(b"HTTP/1.1 431 ")
        assert (await raw(server.port, b"NOT HTTP\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    finally:
        await server.shutdown()


async def test_http_disconnect_reaches_the_application() -> None:
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future[None] = loop.create_future()
    seen: asyncio.Future[dict[str, Any]] = loop.create_future()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        first = await receive()
        assert first == {"type": "http.request", "body": b"", "more_body": False}
        arrived.set_result(None)
        seen.set_result(await receive())  # a long poll: waits for the client to leave

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(arrived, 5)
        writer.close()
        assert await asyncio.wait_for(seen, 5) == {"type": "http.disconnect"}
    finally:
        await server.shutdown()


async def test_application_error_is_500_without_details(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raise ValueError("secret detail")

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        with caplog.at_level(logging.ERROR, "fullduplex.asgi"):
            answer = await raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 500 ")
        assert b"secret" not in answer
        assert "secret detail" in caplog.text
    finally:
        await server.shutdown()


async def test_scope_fields_and_root_path() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scopes.append(scope)
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body"})

    server = await fullduplex.serve(app, "127.0.0.1", 0, root_path="/api")
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{base(server)}/a%20b/c?x=1&y=2")
        assert response.status_code == 204
        (scope,) = scopes
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
        assert scope["http_version"] == "1.1" and scope["method"] == "GET"
        assert scope["scheme"] == "http"
        assert scope["root_path"] == "/api"
        assert scope["path"] == "/api/a b/c"
        assert scope["raw_path"] == b"/api/a%20b/c"
        assert scope["query_string"] == b"x=1&y=2"
        assert scope["server"] == ("127.0.0.1", server.port)
        assert scope["client"][0] == "127.0.0.1"
        assert (b"host", f"127.0.0.1:{server.port}".encode()) in scope["headers"]
        assert scope["state"] == {}
    finally:
        await server.shutdown()


async def test_fastapi_http_endpoints(fastapi_server: fullduplex.Server) -> None:
    async with httpx.AsyncClient(base_url=base(fastapi_server)) as client:
        response = await client.get("/items/42", params={"q": "x"})
        assert response.json() == {"item_id": 42, "q": "x"}
        assert (await client.get("/items/nope")).status_code == 422
        response = await client.post("/items", json={"name": "pen"})
        assert response.json() == {"created": {"name": "pen"}}


# -- WebSocket ---------------------------------------------------------------------------------


async def test_starlette_websocket_echo(starlette_server: fullduplex.Server) -> None:
    url = base(starlette_server, "ws") + "/ws"
    async with wsclient.connect(url, subprotocols=["other", "chat"]) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response.headers["x-accepted-by"] == "starlette"
        assert ws.response.headers["sec-websocket-extensions"].startswith("permessage-deflate")
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\x01" * 10000)
        assert await ws.recv() == b"\x00\x01" * 10000
        await ws.close(4002, "client says bye")
    for _ in range(500):  # the application sees the disconnect once TCP is closed
        if apps.EVENTS[-1] != "startup":
            break
        await asyncio.sleep(0.01)  # polling a condition, bounded (5 s)
    assert apps.EVENTS[-1] == ("ws-disconnect", 4002, "client says bye")


async def test_close_code_and_reason_from_the_application(
    starlette_server: fullduplex.Server,
) -> None:
    async with wsclient.connect(base(starlette_server, "ws") + "/ws") as ws:
        await ws.send("close me")
        with pytest.raises(WSClosed):
            await ws.recv()
        assert ws.close_code == 4001 and ws.close_reason == "bye"


async def test_refused_upgrade_with_http_response(starlette_server: fullduplex.Server) -> None:
    with pytest.raises(WSInvalidStatus) as refused:
        await wsclient.connect(base(starlette_server, "ws") + "/deny")
    assert refused.value.response.status_code == 401
    assert refused.value.response.body == b"members only"
    with pytest.raises(WSInvalidStatus) as closed:
        await wsclient.connect(base(starlette_server, "ws") + "/reject")
    assert closed.value.response.status_code == 403


async def test_invalid_handshake_never_reaches_the_application(
    starlette_server: fullduplex.Server,
) -> None:
    request = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n"
    )
    assert (await raw(starlette_server.port, request)).startswith(b"HTTP/1.1 400 ")


async def test_fastapi_websocket_with_path_parameter(fastapi_server: fullduplex.Server) -> None:
    async with wsclient.connect(base(fastapi_server, "ws") + "/ws/lobby") as ws:
        await ws.send('{"n": 1}')
        assert await ws.recv() == '{"room":"lobby","echo":{"n":1}}'


async def test_websocket_limits_are_the_engines() -> None:
    server = await fullduplex.serve(apps.echo_app, "127.0.0.1", 0, max_message_size=1000)
    try:
        async with wsclient.connect(base(server, "ws") + "/", compression=None) as ws:
            await ws.send("x" * 1000)
            assert await ws.recv() == "x" * 1000
            await ws.send("x" * 1001)
            with pytest.raises(WSClosed):
                await ws.recv()
            assert ws.close_code == 1009
    finally:
        await server.shutdown()


async def test_send_after_disconnect_raises_oserror() -> None:
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        assert message["type"] == "websocket.disconnect" and message["code"] == 1000
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        ws = await wsclient.connect(base(server, "ws") + "/")
        await ws.close()
        assert isinstance(await asyncio.wait_for(outcome, 5), fullduplex.asgi.ClientDisconnected)
    finally:
        await server.shutdown()


# -- lifespan ----------------------------------------------------------------------------------


async def test_lifespan_order_startup_before_listening_shutdown_after_close() -> None:
    events: list[str] = []
    listening: list[bool] = []
    port_holder: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    events.append("startup")
                    scope["state"]["ready"] = True
                    await send({"type": "lifespan.startup.complete"})
                else:
                    # Every WebSocket has closed by now.
                    events.append(f"shutdown open={len(server.websockets)}")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "websocket":
            listening.append(scope["state"]["ready"])
            await receive()
            await send({"type": "websocket.accept"})
            message = await receive()
            events.append(f"disconnect {message['code']}")

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    port_holder.append(server.port)
    assert events == ["startup"]
    ws = await wsclient.connect(f"ws://127.0.0.1:{server.port}/")
    await server.shutdown()
    with pytest.raises(WSClosed):
        await ws.recv()
    assert ws.close_code == 1001
    assert listening == [True]
    assert events == ["startup", "disconnect 1001", "shutdown open=0"]


async def test_lifespan_startup_failure_means_no_server() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(LifespanFailed, match="no database"):
        await fullduplex.serve(app, "127.0.0.1", 0)


async def test_application_without_lifespan_still_serves() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"  # lifespan unsupported: raises, logged, ignored
        await apps.echo_app(scope, receive, send)

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(base(server))).text == "ok"
    finally:
        await server.shutdown()
    with pytest.raises(LifespanFailed):
        await fullduplex.serve(ASGIAdapter(app, lifespan="on"), "127.0.0.1", 0)


async def test_trusted_proxy_headers_set_client_and_scheme() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scopes.append(scope)
            await apps.echo_app(scope, receive, send)

    proxied = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")]
    server = await fullduplex.serve(app, "127.0.0.1", 0)  # 127.0.0.1 is trusted by default
    untrusted = await fullduplex.serve(app, "127.0.0.1", 0, forwarded_allow_ips="10.0.0.1")
    try:
        async with httpx.AsyncClient() as client:
            await client.get(base(server), headers=proxied)
            await client.get(base(untrusted), headers=proxied)
        assert scopes[0]["client"] == ("203.0.113.7", 0)
        assert scopes[0]["scheme"] == "https"
        assert scopes[1]["client"][0] == "127.0.0.1" and scopes[1]["scheme"] == "http"
    finally:
        await server.shutdown()
        await untrusted.shutdown()


async def test_shutdown_ends_event_streams() -> None:
    # A stream sending heartbeats ends at its next chunk (send raises, as for a client that
    # left), and one waiting for http.disconnect gets it: neither holds the shutdown for
    # close_timeout.
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Mount, Route

    polling = asyncio.Event()
    outcome: list[str] = []

    async def heartbeats() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        while True:
            await asyncio.sleep(0.05)  # the stream's own heartbeat period, not a sync point
            yield b": heartbeat\n\n"

    async def events(request: Any) -> StreamingResponse:
        return StreamingResponse(heartbeats(), media_type="text/event-stream")

    async def long_poll(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        polling.set()
        outcome.append((await receive())["type"])

    app = Starlette(routes=[Route("/events", events), Mount("/poll", app=long_poll)])
    server = await fullduplex.serve(app, "127.0.0.1", 0, close_timeout=30)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"first\n\n"), 5)
    poll_reader, poll_writer = await asyncio.open_connection("127.0.0.1", server.port)
    poll_writer.write(b"GET /poll/ HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(polling.wait(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.shutdown()
    assert loop.time() - started < 5  # not close_timeout (30 s)
    await asyncio.wait_for(reader.read(), 5)  # both connections were closed
    await asyncio.wait_for(poll_reader.read(), 5)
    assert outcome == ["http.disconnect"]
    writer.close()
    poll_writer.close()


async def test_max_connections_and_compression_settings_apply() -> None:
    server = await fullduplex.serve(
        apps.echo_app, "127.0.0.1", 0, max_connections=1, compression=False
    )
    try:
        async with wsclient.connect(base(server, "ws") + "/") as first:
            assert "sec-websocket-extensions" not in first.response.headers
            with pytest.raises(WSInvalidStatus) as refused:
                await wsclient.connect(base(server, "ws") + "/")
            assert refused.value.response.status_code == 503
            await first.send("still here")
            assert await first.recv() == "still here"
    finally:
        await server.shutdown()


async def test_two_servers_on_one_adapter_keep_their_own_handshake_settings() -> None:
    # The handshake processor is kept per server (as native routes' are): the adapter once
    # kept the first server's, so a second server without compression still offered it.
    adapter = ASGIAdapter(apps.echo_app)
    compressing = await fullduplex.serve(adapter, "127.0.0.1", 0)
    plain = await fullduplex.serve(adapter, "127.0.0.1", 0, compression=False)
    try:
        for server, expected in ((compressing, True), (plain, False), (compressing, True)):
            async with wsclient.connect(base(server, "ws") + "/") as client:  # offers deflate
                await client.send("x")
                assert await client.recv() == "x"
                answer = client.response.headers.get("Sec-WebSocket-Extensions", "")
                assert ("permessage-deflate" in answer) is expected, (server.port, answer)
    finally:
        await compressing.shutdown()
        await plain.shutdown()
