"""Limits and timeouts of the server, driven by raw sockets that misbehave on purpose."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import tracemalloc

import pytest
import websockets.asyncio.client as wsclient
from websockets.exceptions import ConnectionClosed as WSClosed
from websockets.exceptions import InvalidStatus as WSInvalidStatus

import fullduplex

from .conftest import start, url

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def raw_upgrade(
    port: int, path: str = "/"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(HANDSHAKE.format(path=path, key=key).encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(n)


async def test_peer_that_never_reads_keeps_server_memory_bounded() -> None:
    app = fullduplex.App()
    progress = {"sent": 0, "buffered": 0}
    chunk = b"z" * 65536

    @app.websocket("/flood")
    async def flood(ws: fullduplex.WebSocket) -> None:
        for _ in range(2000):  # 128 MiB if nothing held it back
            await ws.send(chunk)
            progress["sent"] += 1
            progress["buffered"] = max(progress["buffered"], ws.transport.get_write_buffer_size())

    server = await start(app, write_limit=64 * 1024, close_timeout=0.5)
    try:
        # Tiny receive buffer and no reads: only the kernel buffers hold anything.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(HANDSHAKE.format(path="/flood", key=key).encode())
        await asyncio.sleep(1.0)
        sent_early = progress["sent"]
        await asyncio.sleep(1.0)
        # The handler is blocked in send(): it made no progress while nobody read.
        assert progress["sent"] == sent_early
        assert progress["sent"] < 100
        # The user-space write buffer never went far above the write limit.
        assert progress["buffered"] <= 64 * 1024 + len(chunk) + 16
        sock.close()
    finally:
        await server.shutdown()


async def test_peer_that_never_answers_pings_is_closed_1011() -> None:
    app = fullduplex.App()

    @app.websocket("/idle")
    async def idle(ws: fullduplex.WebSocket) -> None:
        await ws.wait_closed()

    server = await start(app, ping_interval=0.2, ping_timeout=0.3)
    try:
        started = time.monotonic()
        reader, writer = await raw_upgrade(server.port, "/idle")
        opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
        assert opcode == 0x9  # a ping, which we ignore
        opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
        assert opcode == 0x8
        assert struct.unpack("!H", payload[:2])[0] == 1011
        assert time.monotonic() - started < 3
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and TCP is closed
        writer.close()
    finally:
        await server.shutdown()


async def test_peer_answering_pings_stays_open() -> None:
    app = fullduplex.App()

    @app.websocket("/idle")
    async def idle(ws: fullduplex.WebSocket) -> None:
        await asyncio.sleep(1.0)
        await ws.send(f"latency {ws.latency:.6f}")
        await ws.wait_closed()

    server = await start(app, ping_interval=0.1, ping_timeout=0.3)
    try:
        async with wsclient.connect(url(server, "/idle")) as ws:
            message = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(message, str) and message.startswith("latency ")
            assert float(message.split()[1]) > 0
    finally:
        await server.shutdown()


async def test_half_sent_handshake_closed_at_open_timeout() -> None:
    server = await start(fullduplex.demo.create_app(), open_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        elapsed = time.monotonic() - started
        assert 0.2 < elapsed < 2
        writer.close()
    finally:
        await server.shutdown()


async def test_max_connections_answers_503() -> None:
    server = await start(fullduplex.demo.create_app(), max_connections=2)
    try:
        a = await wsclient.connect(url(server, "/echo"))
        b = await wsclient.connect(url(server, "/echo"))
        with pytest.raises(WSInvalidStatus) as info:
            await wsclient.connect(url(server, "/echo"))
        assert info.value.response.status_code == 503
        await a.close()
        await asyncio.sleep(0.1)
        c = await wsclient.connect(url(server, "/echo"))  # a slot is free again
        await c.send("x")
        assert await c.recv() == "x"
        await b.close()
        await c.close()
    finally:
        await server.shutdown()


async def test_oversized_frame_rejected_from_header() -> None:
    app = fullduplex.App()

    @app.websocket("/small")
    async def small(ws: fullduplex.WebSocket) -> None:
        await ws.recv()

    server = await start(app, max_frame_size=1000)
    try:
        reader, writer = await raw_upgrade(server.port, "/small")
        # Announce a 1 GiB masked binary frame and send only its header.
        writer.write(struct.pack("!BBQ", 0x82, 0xFF, 2**30) + b"\x00\x00\x00\x00")
        opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
        assert opcode == 0x8
        assert struct.unpack("!H", payload[:2])[0] == 1009
        writer.close()
    finally:
        await server.shutdown()


async def test_empty_continuation_flood_keeps_memory_flat() -> None:
    # Issue 15: a 1-byte fragment, then empty continuation frames (6 bytes each on the wire),
    # then the last fragment. Each empty frame cost a list entry while the message was open
    # and a Py_buffer when it was joined: 100,000 of them peaked at +8 MB (2,000,000: +170
    # MB, bench/fragment_flood.py). Traced here in the server's process, over a real socket.
    app = fullduplex.App()

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    server = await start(app, ping_interval=None)
    try:
        reader, writer = await raw_upgrade(server.port, "/echo")
        mask = b"\x00\x00\x00\x00"  # payload bytes go on the wire as they are
        empty = (b"\x00\x80" + mask) * 10_000
        writer.write(b"\x02\x81" + mask + b"x")
        await writer.drain()
        tracemalloc.start()
        try:
            for _ in range(10):
                writer.write(empty)
                await writer.drain()
            # Its pong says every frame before it was parsed (RFC 6455 5.5.2: in order).
            writer.write(b"\x89\x80" + mask)
            assert await asyncio.wait_for(read_frame(reader), 10) == (0xA, b"")
            writer.write(b"\x80\x81" + mask + b"y")
            assert await asyncio.wait_for(read_frame(reader), 10) == (0x2, b"xy")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2 * 2**20, peak
        writer.close()
    finally:
        await server.shutdown()


async def test_oversized_http_head_gets_431() -> None:
    server = await start(fullduplex.demo.create_app(), max_head_size=4096)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 431")
        writer.close()
    finally:
        await server.shutdown()


def test_sigterm_closes_every_connection_with_1001() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fullduplex", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "serving on ..." once listening

        async def scenario() -> list[int | None]:
            clients = []
            for _ in range(3):
                for _attempt in range(50):
                    try:
                        clients.append(await wsclient.connect(f"ws://127.0.0.1:{port}/echo"))
                        break
                    except OSError:
                        await asyncio.sleep(0.1)
            assert len(clients) == 3
            proc.send_signal(signal.SIGTERM)
            codes = []
            for ws in clients:
                with pytest.raises(WSClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                codes.append(ws.close_code)
            return codes

        assert asyncio.run(scenario()) == [1001, 1001, 1001]
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


async def test_slow_handler_pauses_reading_then_gets_everything() -> None:
    # 4 KiB messages: one read (at most 256 KiB on both loops) carries at most 64 of them,
    # so the queue that paused reading holds under 8 + 64, whatever the reads look like.
    app = fullduplex.App()
    observed: dict[str, object] = {}
    count, filler = 500, "x" * 4092

    async def paused(ws: fullduplex.WebSocket) -> None:
        while ws.transport.is_reading():  # the condition, polled until it holds (bounded)
            await asyncio.sleep(0.005)

    @app.websocket("/slow")
    async def slow(ws: fullduplex.WebSocket) -> None:
        # Not reading while the client floods, until the server has stopped reading.
        await asyncio.wait_for(paused(ws), 10)
        observed["queued"] = len(ws._queue or ())
        received = [await ws.recv() for _ in range(count)]
        observed["in_order"] = received == [f"{i:04d}{filler}" for i in range(count)]
        observed["reading_after"] = ws.transport.is_reading()
        await ws.send("done")

    server = await start(app, max_queue=8)
    try:
        async with wsclient.connect(url(server, "/slow"), compression=None) as ws:

            async def flood() -> None:
                for i in range(count):
                    await ws.send(f"{i:04d}{filler}")

            await asyncio.wait_for(flood(), 10)
            assert await asyncio.wait_for(ws.recv(), 10) == "done"
        # Reading paused with the queue near max_queue (plus what the read that filled it
        # carried), nothing was lost or reordered, and reading resumed.
        assert 8 <= observed["queued"] < 8 + 64  # type: ignore[operator]
        assert observed["in_order"] is True
        assert observed["reading_after"] is True
    finally:
        await server.shutdown()


async def test_idle_keep_alive_connection_is_closed() -> None:
    server = await start(fullduplex.demo.create_app(), keepalive_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /api/data HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        data = await asyncio.wait_for(reader.read(), 5)  # the answer, then EOF when idle
        assert data.startswith(b"HTTP/1.1 200")
        assert 0.2 < time.monotonic() - started < 3
        writer.close()
    finally:
        await server.shutdown()


async def test_wait_drain_and_writable() -> None:
    app = fullduplex.App()
    seen: dict[str, bool] = {}
    full = asyncio.Event()

    @app.websocket("/drain")
    async def drain(ws: fullduplex.WebSocket) -> None:
        seen["writable_at_start"] = ws.writable
        ws.core.send_binary(b"y" * 8_000_000)  # straight into the buffer, past write_limit
        ws._flush()
        seen["writable_when_full"] = ws.writable
        full.set()
        await ws.wait_drain()
        seen["writable_after_drain"] = ws.writable
        await ws.send("drained")

    server = await start(app, write_limit=16 * 1024)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(HANDSHAKE.format(path="/drain", key=key).encode())
        await asyncio.wait_for(full.wait(), 5)
        await asyncio.sleep(0.2)
        assert "writable_after_drain" not in seen  # still waiting: nobody reads
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
        assert (opcode, len(payload)) == (0x2, 8_000_000)
        assert await asyncio.wait_for(read_frame(reader), 5) == (0x1, b"drained")
        writer.close()
        assert seen == {
            "writable_at_start": True,
            "writable_when_full": False,
            "writable_after_drain": True,
        }
    finally:
        await server.shutdown()


@pytest.mark.parametrize("peer", ["reads", "goes away"])
async def test_every_drain_waiter_wakes(peer: str) -> None:
    app = fullduplex.App()
    results: list[str] = []
    waiting = asyncio.Event()

    @app.websocket("/drain")
    async def drain(ws: fullduplex.WebSocket) -> None:
        ws.core.send_binary(b"y" * 8_000_000)  # straight into the buffer, past write_limit
        ws._flush()

        async def wait(name: str) -> None:
            try:
                await ws.wait_drain()
                results.append(f"{name} drained")
            except fullduplex.ConnectionClosed:
                results.append(f"{name} closed")

        tasks = [asyncio.create_task(wait(name)) for name in ("a", "b", "c")]
        await asyncio.sleep(0.05)
        tasks[1].cancel()  # one waiter gives up: the others still wake
        waiting.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    server = await start(app, write_limit=16 * 1024)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(HANDSHAKE.format(path="/drain", key=key).encode())
        await asyncio.wait_for(waiting.wait(), 5)
        await asyncio.sleep(0.1)
        assert results == []  # all still waiting
        if peer == "reads":
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            await asyncio.wait_for(read_frame(reader), 10)
        else:
            writer.transport.abort()
        for _ in range(100):
            if len(results) == 2:
                break
            await asyncio.sleep(0.05)
        outcome = "drained" if peer == "reads" else "closed"
        assert sorted(results) == [f"a {outcome}", f"c {outcome}"]
        writer.close()
    finally:
        await server.shutdown()
