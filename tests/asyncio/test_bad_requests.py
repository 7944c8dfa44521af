"""Request heads that llhttp accepts but the server must refuse, over a raw socket.

Scenarios from ``fuzz/attack.py``: each got 200 from the route before, its body read as if
it were plain HTTP/1.1.
"""

from __future__ import annotations

import asyncio

import pytest

import fullduplex
from fullduplex.protocol.http11 import Request

from .conftest import start


async def exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        # RFC 9110 15.6.6: 505 refuses the major version.
        (b"GET /echo HTTP/2.0\r\nHost: x\r\n\r\n", 505, b"HTTP version not supported"),
        (
            b"POST /echo HTTP/2.0\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
            505,
            b"HTTP version not supported",
        ),
        # RFC 9112 6.1: 501 for a transfer coding the server does not implement; the gzip
        # bytes were handed to the route as the body.
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\n\r\n",
            501,
            b"Transfer-Encoding not supported: only chunked",
        ),
    ],
)
async def test_refused_before_the_route(raw: bytes, status: int, message: bytes) -> None:
    calls: list[Request] = []
    app = fullduplex.App()

    @app.route("/echo", methods=["GET", "POST"])
    async def echo(request: Request) -> bytes:
        calls.append(request)
        return request.body

    server = await start(app)
    try:
        answer = await exchange(server.port, raw)
    finally:
        await server.shutdown()
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer
    assert answer.rstrip().endswith(message)
    assert calls == []
