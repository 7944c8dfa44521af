"""The kernel send buffer of accepted connections is capped (SO_SNDBUF, ``send_buffer_size``)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import pytest

import fullduplex
from fullduplex.config import DEFAULT_SEND_BUFFER_SIZE

from .conftest import start

CHUNK = b"z" * 16384
# Bounds the server's sending loop: far beyond any kernel buffer.
MAX_SENT = 64 * 2**20


def stalled_reader_app(report: asyncio.Future[dict[str, int]]) -> fullduplex.App:
    """A route that floods its client and reports how much the kernel took before pushing back."""
    app = fullduplex.App()

    @app.websocket("/flood")
    async def flood(ws: fullduplex.WebSocket) -> None:
        sock = ws.transport.get_extra_info("socket")
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        sent = 0
        kernel = None
        frame = len(CHUNK) + 4  # a 16 KiB binary message and its frame header
        limit = ws.transport.get_write_buffer_limits()[1]
        while sent < MAX_SENT:
            buffered = ws.transport.get_write_buffer_size()
            if buffered + frame > limit:
                break  # write_limit reached: this send() would wait for the stalled client
            await ws.send(CHUNK)
            sent += frame
            if kernel is None and ws.transport.get_write_buffer_size():
                # The first write that did not go straight into the kernel: the socket's send
                # buffer and the peer's receive window are full.
                kernel = sent - ws.transport.get_write_buffer_size()
        report.set_result({"sndbuf": sndbuf, "kernel": kernel or sent, "sent": sent})
        ws.transport.abort()

    return app


async def stalled_client(port: int) -> socket.socket:
    """Open a WebSocket with a raw socket that then never reads (a small, fixed receive buffer)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    # Fixed before connecting, so that the peer's side of the sum does not autotune either.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /flood HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = await asyncio.wait_for(loop.sock_recv(sock, 200), 5)  # part of the 101 head
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def measure(**options: int | None) -> dict[str, int]:
    report: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
    server = await start(stalled_reader_app(report), **options)
    try:
        sock = await stalled_client(server.port)
        try:
            return await asyncio.wait_for(report, 20)
        finally:
            sock.close()
    finally:
        await server.shutdown()


async def test_accepted_connections_get_the_send_buffer_cap() -> None:
    for size in (DEFAULT_SEND_BUFFER_SIZE, 32768):
        options = {} if size == DEFAULT_SEND_BUFFER_SIZE else {"send_buffer_size": size}
        server = await start(fullduplex.App(), **options)
        try:
            loop = asyncio.get_running_loop()
            with socket.socket() as client:
                client.setblocking(False)
                await loop.sock_connect(client, ("127.0.0.1", server.port))
                await asyncio.wait_for(_until(server.connections.__len__), 5)
                (conn,) = server.connections
                sock = conn.transport.get_extra_info("socket")
                # socket(7): Linux doubles the value set; getsockopt returns the doubled one.
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * size
        finally:
            await server.shutdown()


async def test_none_leaves_the_kernel_default() -> None:
    with socket.socket() as plain:
        kernel_default = plain.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    server = await start(fullduplex.App(), send_buffer_size=None)
    try:
        (listener,) = server.sockets
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == kernel_default
    finally:
        await server.shutdown()


async def test_a_stalled_reader_reaches_write_limit_after_little_kernel_memory() -> None:
    capped = await measure(send_buffer_size=65536, write_limit=65536)
    uncapped = await measure(send_buffer_size=None, write_limit=65536)
    assert capped["sndbuf"] == 131072
    # What the kernel took before the server's own buffer started to fill: the capped send
    # buffer plus the client's small receive window, instead of megabytes.
    assert capped["kernel"] < 300_000, capped
    assert uncapped["kernel"] > 3 * capped["kernel"], (capped, uncapped)
    # write_limit then counts: the loop stopped a write_limit after the kernel filled.
    assert capped["sent"] - capped["kernel"] <= 65536


def test_invalid_send_buffer_size_is_refused() -> None:
    with pytest.raises(ValueError, match="send_buffer_size"):
        fullduplex.config.Config(send_buffer_size=0)
    with pytest.raises(TypeError, match="send_buffer_size"):
        fullduplex.config.Config(send_buffer_size="64k")  # type: ignore[arg-type]


async def _until(condition: object) -> None:
    while not condition():  # type: ignore[operator]
        await asyncio.sleep(0.005)
