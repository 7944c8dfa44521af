"""HTTP on the WebSocket port: pages, JSON, errors and keep-alive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import fullduplex
from fullduplex.protocol.http11 import Headers, Response


async def http(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def split(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


GET = "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


async def test_page_is_served(demo_server: fullduplex.Server) -> None:
    status, headers, body = split(await http(demo_server.port, GET.format("/").encode()))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("text/html")
    assert b"new WebSocket(" in body
    assert int(headers["content-length"]) == len(body)


async def test_json_endpoint(demo_server: fullduplex.Server) -> None:
    status, headers, body = split(await http(demo_server.port, GET.format("/api/data").encode()))
    assert status.startswith("HTTP/1.1 200")
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    assert set(data) == {"message", "time"}
    assert isinstance(data["time"], float)


async def test_unknown_path_is_404(demo_server: fullduplex.Server) -> None:
    status, _, _ = split(await http(demo_server.port, GET.format("/nope").encode()))
    assert status.startswith("HTTP/1.1 404")


async def test_traversal_is_404(demo_server: fullduplex.Server) -> None:
    for path in ("/../app.py", "/%2e%2e/app.py", "/..%2fapp.py"):
        status, _, body = split(await http(demo_server.port, GET.format(path).encode()))
        assert status.startswith(("HTTP/1.1 404", "HTTP/1.1 400")), path
        assert b"create_app" not in body


async def test_plain_get_to_websocket_route_is_426(demo_server: fullduplex.Server) -> None:
    status, headers, _ = split(await http(demo_server.port, GET.format("/echo").encode()))
    assert status.startswith("HTTP/1.1 426")
    assert headers["upgrade"] == "websocket"


async def test_method_not_allowed(demo_server: fullduplex.Server) -> None:
    raw = b"POST /api/data HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    status, headers, _ = split(await http(demo_server.port, raw))
    assert status.startswith("HTTP/1.1 405")
    assert "GET" in headers["allow"]


async def test_head_has_length_but_no_body(demo_server: fullduplex.Server) -> None:
    raw = b"HEAD /api/data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, headers, body = split(await http(demo_server.port, raw))
    assert status.startswith("HTTP/1.1 200")
    assert int(headers["content-length"]) > 0
    assert body == b""


async def test_keep_alive_and_pipelining(demo_server: fullduplex.Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", demo_server.port)
    writer.write(b"GET /api/data HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
    writer.write(GET.format("/nope").encode())
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert answer.count(b"HTTP/1.1 404") == 1
    writer.close()


async def test_malformed_request_is_400(demo_server: fullduplex.Server) -> None:
    status, _, _ = split(await http(demo_server.port, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status.startswith("HTTP/1.1 400")


async def test_handler_error_is_500_and_server_carries_on() -> None:
    app = fullduplex.App()

    @app.get("/fail")
    def fail(request: object) -> str:
        raise ValueError("secret")

    @app.get("/ok")
    def ok(request: object) -> str:
        return "fine"

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        status, _, body = split(await http(server.port, GET.format("/fail").encode()))
        assert status.startswith("HTTP/1.1 500")
        assert b"secret" not in body
        status, _, body = split(await http(server.port, GET.format("/ok").encode()))
        assert body == b"fine"
    finally:
        await server.shutdown()


async def test_post_body_limit_is_413() -> None:
    app = fullduplex.App()

    @app.post("/in")
    def accept(request: fullduplex.protocol.http11.Request) -> dict[str, int]:
        return {"size": len(request.body)}

    server = await fullduplex.serve(app, "127.0.0.1", 0, max_body_size=100)
    try:
        small = (
            b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        status, _, body = split(await http(server.port, small))
        assert json.loads(body) == {"size": 5}
        big = b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
        status, _, _ = split(await http(server.port, big))
        assert status.startswith("HTTP/1.1 413")
    finally:
        await server.shutdown()


async def test_streaming_response_is_chunked_and_stops_when_client_leaves() -> None:
    app = fullduplex.App()
    finished = asyncio.Event()

    async def ticks() -> AsyncIterator[bytes]:
        try:
            for i in range(1000):
                yield f"tick {i}\n".encode()
                await asyncio.sleep(0.01)
        finally:
            finished.set()

    @app.get("/stream")
    def stream(request: object) -> fullduplex.StreamingResponse:
        headers = fullduplex.protocol.http11.Headers([("Content-Type", "text/plain")])
        return fullduplex.StreamingResponse(200, headers, ticks())

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Transfer-Encoding: chunked" in head
        assert await asyncio.wait_for(reader.readuntil(b"\r\n"), 5) == b"7\r\n"
        assert await reader.readexactly(9) == b"tick 0\n\r\n"
        writer.close()
        await asyncio.wait_for(finished.wait(), 5)  # the generator was closed
    finally:
        await server.shutdown()


async def test_head_on_a_streaming_route_sends_no_chunk() -> None:
    # RFC 9110 9.3.2: no content in a response to HEAD. The chunks were written before, and
    # a keep-alive client read them as the response to its next request.
    app = fullduplex.App()
    steps: list[str] = []

    async def ticks() -> AsyncIterator[bytes]:
        try:
            steps.append("started")
            while True:
                yield b"tick\n"
                await asyncio.sleep(0.01)
        finally:
            steps.append("closed")

    @app.get("/stream")
    def stream(request: object) -> fullduplex.StreamingResponse:
        headers = fullduplex.protocol.http11.Headers([("Content-Type", "text/plain")])
        return fullduplex.StreamingResponse(200, headers, ticks())

    @app.get("/after")
    def after(request: object) -> str:
        return "after"

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        raw = b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n" + GET.format("/after").encode()
        answer = await http(server.port, raw)
    finally:
        await server.shutdown()
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in head
    status, _, body = split(rest)
    assert (status, body) == ("HTTP/1.1 200 OK", b"after")
    assert steps == ["started", "closed"]  # its finally ran: no resource left behind


async def test_startup_and_shutdown_hooks_and_streams_end_on_shutdown() -> None:
    app = fullduplex.App()
    calls: list[str] = []
    stream_closed = asyncio.Event()

    @app.on_startup
    async def up() -> None:
        calls.append("startup")

    @app.on_shutdown
    def down() -> None:
        calls.append("shutdown")

    async def forever() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: x\n\n"
                await asyncio.sleep(0.05)
        finally:
            stream_closed.set()

    @app.get("/events")
    def events(request: object) -> fullduplex.StreamingResponse:
        headers = fullduplex.protocol.http11.Headers([("Content-Type", "text/event-stream")])
        return fullduplex.StreamingResponse(200, headers, forever())

    server = await fullduplex.serve(app, "127.0.0.1", 0, close_timeout=5)
    assert calls == ["startup"]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"data: x"), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.shutdown()
    assert loop.time() - started < 2  # the stream did not hold shutdown for close_timeout
    assert stream_closed.is_set()
    assert calls == ["startup", "shutdown"]
    writer.close()


async def test_stalled_stream_is_dropped_after_write_timeout() -> None:
    import socket

    app = fullduplex.App()
    stream_closed = asyncio.Event()

    async def firehose() -> AsyncIterator[bytes]:
        try:
            for _ in range(100_000):  # far more than the socket buffers hold
                yield b"x" * 65536
        finally:
            stream_closed.set()

    @app.get("/hose")
    def hose(request: object) -> fullduplex.StreamingResponse:
        return fullduplex.StreamingResponse(200, fullduplex.protocol.http11.Headers(), firehose())

    server = await fullduplex.serve(app, "127.0.0.1", 0, write_timeout=0.5)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /hose HTTP/1.1\r\nHost: x\r\n\r\n")  # then never read
        await asyncio.wait_for(stream_closed.wait(), 5)
        sock.close()
    finally:
        await server.shutdown()


async def test_upgrade_to_an_http_route_is_answered_then_closed(
    demo_server: fullduplex.Server,
) -> None:
    raw = b"GET /api/data HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    status, headers, _ = split(await http(demo_server.port, raw))  # returns at EOF
    assert status.startswith("HTTP/1.1 200")
    assert headers["connection"] == "close"


async def test_a_client_that_leaves_ends_its_long_poll_and_its_silent_stream_at_once() -> None:
    """No write is needed to notice: the connection reads on during a handler, for EOF."""
    app = fullduplex.App()
    ended: dict[str, float] = {}

    @app.get("/poll")
    async def poll(request: object) -> dict[str, str]:
        try:
            await asyncio.sleep(30)  # a long poll with nothing to say
        finally:
            ended["poll"] = asyncio.get_running_loop().time()
        return {}  # pragma: no cover - cancelled first

    async def silence() -> AsyncIterator[bytes]:
        try:
            yield b": hello\n\n"
            await asyncio.sleep(30)  # an event stream with no event and no heartbeat
            yield b"never"  # pragma: no cover
        finally:
            ended["stream"] = asyncio.get_running_loop().time()

    @app.get("/stream")
    def stream(request: object) -> fullduplex.StreamingResponse:
        headers = fullduplex.protocol.http11.Headers([("Content-Type", "text/event-stream")])
        return fullduplex.StreamingResponse(200, headers, silence())

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        for path in ("/poll", "/stream"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            if path == "/stream":
                await asyncio.wait_for(reader.readuntil(b"hello\n\n\r\n"), 5)
            else:
                await asyncio.sleep(0.1)
            left = asyncio.get_running_loop().time()
            writer.close()
            for _ in range(100):
                if path.strip("/") in ended:
                    break
                await asyncio.sleep(0.02)
            assert ended[path.strip("/")] - left < 1
        assert not server.connections
    finally:
        await server.shutdown()


async def test_a_request_pipelined_during_a_slow_handler_is_answered_after_it() -> None:
    app = fullduplex.App()

    @app.get("/slow")
    async def slow(request: object) -> dict[str, str]:
        await asyncio.sleep(0.2)
        return {"answer": "slow"}

    @app.get("/fast")
    async def fast(request: object) -> dict[str, str]:
        return {"answer": "fast"}

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)  # the slow handler runs: these bytes wait for it
        writer.write(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.index(b'"slow"') < answer.index(b'"fast"') < answer.index(b" 400 ")
        writer.close()
    finally:
        await server.shutdown()


async def test_a_handler_content_length_that_disagrees_with_its_body_is_a_500() -> None:
    # The head said 3 bytes and the whole body followed (the client read the rest as its next
    # answer), or said 100 for 2 (the client waited for the rest, its next answer never came).
    app = fullduplex.App()
    bodies = {"/long": b"hello world", "/short": b"hi", "/chunked": b"hi"}
    declared = {
        "/long": [("Content-Length", "3")],
        "/short": [("Content-Length", "100")],
        "/chunked": [("Transfer-Encoding", "chunked")],
    }

    def handler(request: fullduplex.Request) -> Response:
        path = request.path
        return Response(200, Headers(declared[path]), bodies[path])

    for path in bodies:
        app.get(path)(handler)

    @app.get("/right")
    def right(request: object) -> Response:
        return Response(200, Headers([("Content-Length", "2")]), b"ok")

    @app.get("/next")
    def after(request: object) -> str:
        return "next\n"

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        for path in (*bodies, "/right"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() + GET.format("/next").encode()
            )
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            first, _, rest = answer.partition(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain")
            status, headers, body = split(first)
            if path == "/right":
                assert (status, body) == ("HTTP/1.1 200 OK", b"ok")
            else:
                assert status == "HTTP/1.1 500 Internal Server Error", (path, answer)
                assert body == b"internal server error\n"
            assert int(headers["content-length"]) == len(body)
            assert rest.endswith(b"\r\n\r\nnext\n"), (path, answer)
            assert bodies.get(path, b"!") not in rest
    finally:
        await server.shutdown()
