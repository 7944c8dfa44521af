"""Slow consumers are told why they were dropped (issue 15), over real sockets.

A client that stops reading under a publisher, on a topic with the ``disconnect`` policy, is
reset at once (not after ``close_timeout``: its close frame could only wait behind what it did
not read), and the ``hello`` of its next connection carries ``"dropped"``. A network cut or a
normal close carries nothing. With two processes on one Redis, the other process tells it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import uuid
from typing import Any

import websockets

import fullduplex
from fullduplex.asgi import HubApp
from fullduplex.hub import DropLog, Hub, Policy, TopicConfig

from ..hub.conftest import RedisServer, redis_backend
from .client import EventStream, _read_chunk, _read_head
from .conftest import Setup, make_setup, teardown
from .test_websocket import recv_json, send_json

SLOW = TopicConfig(queue_size=8, policy=Policy.DISCONNECT)
PAD = "x" * 4000


async def stalled_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection with a 4 KiB receive buffer, set before connecting (window scaling
    is fixed at the handshake): once its owner stops reading, the server's buffers fill."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


class RawWebSocket:
    """Just enough of a WebSocket client to stop reading whenever the test says."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, path: str = "/pubsub") -> RawWebSocket:
        reader, writer = await stalled_connection(port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def stop_reading(self) -> None:
        """Read nothing more (not even into the stream reader's buffer)."""
        self.writer.transport.pause_reading()

    def send(self, value: Any) -> None:
        payload = json.dumps(value).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        self.writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    async def recv(self) -> Any:
        first, second = await self.reader.readexactly(2)
        assert first == 0x81, first  # a whole text frame
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return json.loads(await self.reader.readexactly(size))

    async def read_until_closed(self) -> None:
        """Read what is left (the client reads again) until the server's end: EOF or reset."""
        self.writer.transport.resume_reading()
        with contextlib.suppress(ConnectionResetError):
            while await self.reader.read(65536):
                pass

    def close(self) -> None:
        self.writer.transport.abort()


async def flood_until_dropped(setup: Setup, topic: str, limit: int = 3000) -> int:
    """Publish 4 KB messages until the server records a drop; how many were published."""
    drops = setup.transports.drops
    assert drops is not None
    before = drops.recorded
    for i in range(limit):
        await setup.hub.publish(topic, {"i": i, "pad": PAD})
        if drops.recorded > before:
            return i + 1
        await asyncio.sleep(0)  # the server writes: only a client that stops reading falls behind
    raise AssertionError(f"not dropped after {limit} messages")


def pubsub_connections(setup: Setup) -> list[fullduplex.WebSocket]:
    return [ws for ws in setup.server.websockets if ws.request.path == "/pubsub"]


async def test_slow_pubsub_consumer_is_reset_at_once_and_told_on_reconnect() -> None:
    # close_timeout 30 s: a close waiting behind the full buffer would take that long.
    setup = await make_setup(close_timeout=30.0)
    setup.hub.configure("flood", SLOW)
    try:
        raw = await RawWebSocket.open(setup.port)
        raw.send({"op": "hello"})
        first = await raw.recv()
        assert set(first) == {"hello"}, first  # a first connection: nothing to report
        previous = first["hello"]["id"]
        raw.send({"op": "subscribe", "topic": "flood"})
        await asyncio.sleep(0.05)
        raw.stop_reading()
        (server_side,) = pubsub_connections(setup)
        # The client stops reading; a publisher floods the topic.
        await flood_until_dropped(setup, "flood")
        assert server_side.core.close_sent == (1013, "slow consumer")
        await asyncio.wait_for(server_side.wait_closed(), 1.0)  # reset, not after 30 s
        await asyncio.wait_for(raw.read_until_closed(), 5.0)
        raw.close()

        async with websockets.connect(setup.ws_url()) as ws:
            await send_json(ws, {"op": "hello", "previous": previous})
            reply = await recv_json(ws)
            assert reply["hello"]["id"] != previous
            dropped = reply["dropped"]
            assert dropped.pop("time") > 1.6e9
            assert dropped == {
                "reason": "slow consumer",
                "code": 1013,
                "topic": "flood",
                "transport": "websocket",
            }
            # Told once: the same previous id again (a client that missed the answer asks
            # again on its next connection) has nothing more.
            await send_json(ws, {"op": "hello", "previous": previous})
            again = await recv_json(ws)
            assert "dropped" not in again
            assert again["hello"]["id"] == reply["hello"]["id"]  # one name per connection
    finally:
        await teardown(setup)


async def test_network_cut_and_normal_close_report_no_drop(rt: Setup) -> None:
    ids = []
    for ending in ("cut", "close", "cut again"):
        async with websockets.connect(rt.ws_url()) as ws:
            await send_json(ws, {"op": "hello", "previous": ids[-1]} if ids else {"op": "hello"})
            reply = await recv_json(ws)
            assert "dropped" not in reply, (ending, reply)
            ids.append(reply["hello"]["id"])
            await send_json(ws, {"op": "subscribe", "topic": "chat"})
            await send_json(ws, {"op": "publish", "topic": "chat", "data": ending})
            assert (await recv_json(ws))["data"] == ending
            if ending.startswith("cut"):
                ws.transport.abort()  # the network drops the connection: no close at all
    async with websockets.connect(rt.ws_url()) as ws:
        await send_json(ws, {"op": "hello", "previous": ids[-1]})
        assert "dropped" not in await recv_json(ws)
    assert rt.transports.drops is not None and rt.transports.drops.recorded == 0


async def test_hello_refuses_an_invalid_previous_id(rt: Setup) -> None:
    async with websockets.connect(rt.ws_url()) as ws:
        for bad in ("", "x" * 65, "a b", 7, "drop:../x"):
            await send_json(ws, {"op": "hello", "previous": bad})
            reply = await recv_json(ws)
            assert reply["op"] == "hello" and reply["error"].startswith("invalid previous"), reply
        await send_json(ws, {"op": "hello", "previous": "never-seen"})
        assert "dropped" not in await recv_json(ws)


async def test_only_a_connection_that_said_hello_is_recorded() -> None:
    setup = await make_setup(close_timeout=30.0)
    setup.hub.configure("flood", SLOW)
    try:
        raw = await RawWebSocket.open(setup.port)
        raw.send({"op": "subscribe", "topic": "flood"})
        await asyncio.sleep(0.05)
        raw.stop_reading()
        (server_side,) = pubsub_connections(setup)
        for i in range(3000):
            await setup.hub.publish("flood", {"i": i, "pad": PAD})
            if server_side.core.close_sent is not None:
                break
            await asyncio.sleep(0)
        assert server_side.core.close_sent == (1013, "slow consumer")
        await asyncio.wait_for(server_side.wait_closed(), 1.0)
        assert setup.transports.drops is not None and len(setup.transports.drops) == 0
        raw.close()
    finally:
        await teardown(setup)


async def sse_hello(stream: EventStream) -> Any:
    head = [await stream.next_block(), await stream.next_block()]  # retry, then the cursor
    assert [block and block.fields[0][0] for block in head] == ["retry", "id"], head
    hello = await stream.next_block()  # first after them, before any message
    assert hello is not None and hello.get("event") == "hello", hello
    assert hello.get("id") is None  # the browser's last event id stays the cursor
    return hello.json()


async def stalled_event_stream(
    port: int, topic: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
    """An event stream with hello=1 on a small receive buffer; its hello event's JSON."""
    reader, writer = await stalled_connection(port)
    target = f"/sse?topic={topic}&hello=1"
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    status, _, _ = await _read_head(reader)
    assert status == 200
    head = (await _read_chunk(reader)).decode()  # retry, the cursor and hello: one chunk
    assert "event: hello\n" in head, head
    return reader, writer, json.loads(head.split("event: hello\ndata: ")[1].split("\n")[0])


async def test_slow_event_stream_is_reset_and_told_on_reconnect() -> None:
    setup = await make_setup(write_timeout=30.0)
    setup.hub.configure("flood", SLOW)
    try:
        reader, writer, greeting = await stalled_event_stream(setup.port, "flood")
        assert set(greeting) == {"hello"}
        previous = greeting["hello"]["id"]
        await asyncio.sleep(0.05)
        assert len(setup.transports.requests) == 1
        writer.transport.pause_reading()
        await flood_until_dropped(setup, "flood")
        # Reset at once (not after write_timeout): the stream's handler is gone.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while len(setup.transports.requests):
            assert loop.time() < deadline, "the slow stream is still held"
            await asyncio.sleep(0.01)
        writer.transport.resume_reading()
        with contextlib.suppress(ConnectionResetError, asyncio.IncompleteReadError):
            await asyncio.wait_for(reader.read(), 5.0)
        writer.transport.abort()

        target = f"/sse?topic=flood&hello=1&previous={previous}"
        stream = await EventStream.open(setup.port, target)
        try:
            reply = await sse_hello(stream)
        finally:
            await stream.close()
        dropped = reply["dropped"]
        assert dropped.pop("time") > 1.6e9
        assert dropped == {"reason": "slow consumer", "topic": "flood", "transport": "sse"}
        assert reply["hello"]["id"] != previous
    finally:
        await teardown(setup)


async def test_event_stream_stalled_past_write_timeout_is_recorded() -> None:
    # Under drop-oldest a stream is never dropped by policy; a client that reads nothing for
    # write_timeout is, and that is slowness too.
    setup = await make_setup(write_timeout=0.3)
    setup.hub.configure("flood", TopicConfig(queue_size=8))
    try:
        _reader, writer, greeting = await stalled_event_stream(setup.port, "flood")
        previous = greeting["hello"]["id"]
        await asyncio.sleep(0.05)
        writer.transport.pause_reading()
        drops = setup.transports.drops
        assert drops is not None
        for i in range(200):
            await setup.hub.publish("flood", {"i": i, "pad": PAD})
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not drops.recorded:
            assert loop.time() < deadline, "the stalled stream was never dropped"
            await asyncio.sleep(0.02)
        writer.transport.abort()
        stream = await EventStream.open(setup.port, f"/sse?topic=flood&previous={previous}")
        try:
            reply = await sse_hello(stream)
        finally:
            await stream.close()
        assert reply["dropped"]["reason"] == "slow consumer"
        assert reply["dropped"]["transport"] == "sse"
        assert "topic" not in reply["dropped"]
    finally:
        await teardown(setup)


async def test_event_stream_without_hello_is_unchanged(rt: Setup) -> None:
    stream = await EventStream.open(rt.port, "/sse?topic=chat")
    try:
        head = [await stream.next_block(), await stream.next_block()]
        assert [block and block.fields[0][0] for block in head] == ["retry", "id"], head
        await rt.hub.publish("chat", "hi")
        event = await stream.next_block()
        assert event is not None and event.get("event") is None and event.json()["data"] == "hi"
    finally:
        await stream.close()


async def test_told_by_another_process_on_the_same_redis(redis_server: RedisServer) -> None:
    # Two servers, each with its hub, on one redis-server: processes behind one port. The
    # client is dropped by one and comes back to the other.
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    a = await make_setup(Hub(redis_backend(redis_server.url, prefix)), close_timeout=30.0)
    b = await make_setup(Hub(redis_backend(redis_server.url, prefix)))
    a.hub.configure("flood", SLOW)
    try:
        raw = await RawWebSocket.open(a.port)
        raw.send({"op": "hello"})
        previous = (await raw.recv())["hello"]["id"]
        raw.send({"op": "subscribe", "topic": "flood"})
        await asyncio.sleep(0.05)
        raw.stop_reading()
        await flood_until_dropped(a, "flood")
        assert a.transports.drops is not None
        await a.transports.drops.close()  # written to Redis
        raw.close()
        async with websockets.connect(b.ws_url()) as ws:
            await send_json(ws, {"op": "hello", "previous": previous})
            reply = await recv_json(ws)
        assert reply["dropped"]["reason"] == "slow consumer"
        assert reply["dropped"]["topic"] == "flood"
        # Given once, across processes.
        async with websockets.connect(a.ws_url()) as ws:
            await send_json(ws, {"op": "hello", "previous": previous})
            assert "dropped" not in await recv_json(ws)
    finally:
        await teardown(a)
        await teardown(b)


async def test_hub_app_under_asgi_tells_too() -> None:
    # HubApp (the transports as an ASGI app) has the same sessions; its loopback transport
    # sends the 1013 close at once instead of behind the queued messages.
    hub = Hub()
    hub.configure("flood", SLOW)
    app = HubApp(hub)
    await hub.start()
    server = await fullduplex.serve(app, "127.0.0.1", 0, close_timeout=30.0)
    drops = app.transports.drops
    assert isinstance(drops, DropLog)
    try:
        raw = await RawWebSocket.open(server.port)
        raw.send({"op": "hello"})
        previous = (await raw.recv())["hello"]["id"]
        raw.send({"op": "subscribe", "topic": "flood"})
        await asyncio.sleep(0.05)
        raw.stop_reading()
        for i in range(3000):
            await hub.publish("flood", {"i": i, "pad": PAD})
            if drops.recorded:
                break
            await asyncio.sleep(0)
        assert drops.recorded == 1
        raw.close()
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/pubsub") as ws:
            await send_json(ws, {"op": "hello", "previous": previous})
            reply = await recv_json(ws)
        assert reply["dropped"]["code"] == 1013
    finally:
        app.transports.close()
        await server.shutdown()
        await hub.close()


async def test_a_reconnection_replaying_more_than_its_buffers_is_not_dropped_again() -> None:
    # A dropped consumer comes back more than its buffers and queue_size behind: its replay
    # is the server's burst, paced by its socket, not slowness. Before, under ``disconnect``
    # every such reconnection was dropped again at once, on /pubsub and on /sse alike.
    setup = await make_setup()
    setup.hub.configure("flood", SLOW)
    try:
        for i in range(300):  # 1.2 MB: many times a connection's buffers, 300 >> queue_size 8
            await setup.hub.publish("flood", {"i": i, "pad": PAD})
        async with websockets.connect(setup.ws_url(), max_size=None) as ws:
            await send_json(ws, {"op": "subscribe", "topic": "flood", "since": 0})
            seqs = [(await recv_json(ws))["seq"] for _ in range(300)]
            assert seqs == list(range(1, 301))
            await setup.hub.publish("flood", "live")
            assert (await recv_json(ws))["seq"] == 301
        stream = await EventStream.open(setup.port, "/sse?topic=flood&since=0")
        try:
            events = [await stream.next_event() for _ in range(301)]
            assert [json.loads(e.data)["seq"] for e in events if e is not None] == list(
                range(1, 302)
            )
        finally:
            await stream.close()
        assert setup.transports.drops is not None and setup.transports.drops.recorded == 0
    finally:
        await teardown(setup)
