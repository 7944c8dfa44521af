"""Malformed frames from a raw socket get the RFC 6455 close code, then the TCP close.

Native routes and fullduplex's ASGI server share the core; each scenario runs on both. The
scenarios come from ``fuzz/attack.py`` (which holds many more): each is one the core once let
through.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

import fullduplex

from ..asgi.apps import echo_app

KEY = base64.b64encode(os.urandom(16)).decode()


def frame(opcode: int, payload: bytes, *, length_form: int | None = None) -> bytes:
    """A masked client frame; ``length_form`` 126 or 127 forces that length encoding."""
    n = len(payload)
    form = length_form or (n if n < 126 else 126 if n < 65536 else 127)
    head = bytes([0x80 | opcode])
    if form == 126:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    elif form == 127:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    else:
        head += bytes([0x80 | n])
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def native_echo(ws: fullduplex.WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.fixture(params=["native", "asgi"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[fullduplex.Server]:
    app: Any = echo_app
    if request.param == "native":
        app = fullduplex.App()
        app.websocket("/")(native_echo)
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    yield server
    await server.shutdown()


async def upgrade(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(n)


async def close_after(port: int, data: bytes) -> tuple[int, str]:
    """Send ``data`` after the handshake: the server's close code and reason (then EOF)."""
    reader, writer = await upgrade(port)
    try:
        writer.write(data)
        while True:
            opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
            if opcode == 8:
                break
        writer.write(frame(8, payload[:2]))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closes TCP
        return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
    finally:
        writer.close()


@pytest.mark.parametrize(
    "data",
    [
        # RFC 6455 5.2: "the minimal number of bytes MUST be used to encode the length";
        # such frames were read as valid (and echoed) before.
        frame(1, b"hello", length_form=126),
        frame(2, b"hello", length_form=127),
        frame(2, b"y" * 300, length_form=127),
    ],
    ids=["16-bit-for-5", "64-bit-for-5", "64-bit-for-300"],
)
async def test_non_minimal_length_closes_1002(server: fullduplex.Server, data: bytes) -> None:
    # The reason is the core's fixed phrase (the log has the detail: test_frames).
    assert await close_after(server.port, data) == (1002, "protocol error")


async def test_minimal_lengths_at_the_boundaries_are_echoed(server: fullduplex.Server) -> None:
    reader, writer = await upgrade(server.port)
    try:
        for size in (125, 126, 65535, 65536):
            writer.write(frame(2, b"z" * size))
            assert await asyncio.wait_for(read_frame(reader), 5) == (2, b"z" * size)
    finally:
        writer.close()
