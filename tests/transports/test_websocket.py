"""The WebSocket topic protocol, with the websockets library as the client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from fullduplex.hub import Policy, TopicConfig

from .conftest import Setup, make_setup, teardown


async def recv_json(ws: Any, timeout: float = 5.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def send_json(ws: Any, value: Any) -> None:
    await ws.send(json.dumps(value))


async def expect_close(ws: Any, code: int) -> str:
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(100):
            await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == code, info.value.rcvd
    return info.value.rcvd.reason


async def test_subscribe_publish_receive(rt: Setup) -> None:
    async with websockets.connect(rt.ws_url()) as a, websockets.connect(rt.ws_url()) as b:
        await send_json(a, {"op": "subscribe", "topic": "chat"})
        await send_json(b, {"op": "subscribe", "topic": "chat"})
        await asyncio.sleep(0.05)
        await send_json(a, {"op": "publish", "topic": "chat", "data": {"text": "hi é"}})
        for ws in (a, b):
            msg = await recv_json(ws)
            assert msg["topic"] == "chat" and msg["seq"] == 1
            assert msg["data"] == {"text": "hi é"}
            assert isinstance(msg["time"], float)


async def test_since_replays_history_then_live(rt: Setup) -> None:
    for i in range(5):
        await rt.hub.publish("news", i)
    async with websockets.connect(rt.ws_url()) as ws:
        await send_json(ws, {"op": "subscribe", "topic": "news", "since": 2})
        seqs = [(await recv_json(ws))["seq"] for _ in range(3)]
        assert seqs == [3, 4, 5]
        await rt.hub.publish("news", 5)
        assert (await recv_json(ws))["seq"] == 6


async def test_unsubscribe_stops_delivery(rt: Setup) -> None:
    async with websockets.connect(rt.ws_url()) as ws:
        await send_json(ws, {"op": "subscribe", "topic": "a", "since": 0})
        await send_json(ws, {"op": "subscribe", "topic": "b", "since": 0})
        await asyncio.sleep(0.05)
        await rt.hub.publish("a", 1)
        assert (await recv_json(ws))["topic"] == "a"
        await send_json(ws, {"op": "unsubscribe", "topic": "a"})
        await asyncio.sleep(0.05)
        await rt.hub.publish("a", 2)
        await rt.hub.publish("b", 3)
        assert (await recv_json(ws))["topic"] == "b"


async def test_gap_when_history_trimmed() -> None:
    setup = await make_setup()
    try:
        setup.hub.configure("short", TopicConfig(history_size=3))
        for i in range(10):
            await setup.hub.publish("short", i)
        async with websockets.connect(setup.ws_url()) as ws:
            await send_json(ws, {"op": "subscribe", "topic": "short", "since": 2})
            gap = await recv_json(ws)
            assert gap == {
                "topic": "short",
                "gap": {"since": 2, "first_available": 8, "reason": "trimmed"},
            }
            assert [(await recv_json(ws))["seq"] for _ in range(3)] == [8, 9, 10]
    finally:
        await teardown(setup)


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"op": "dance"}, "unknown op"),
        ({"topic": "x"}, "unknown op"),
        ({"op": "subscribe"}, "invalid topic"),
        ({"op": "subscribe", "topic": "a b"}, "invalid topic"),
        ({"op": "subscribe", "topic": "x" * 129}, "invalid topic"),
        ({"op": "subscribe", "topic": "ok", "since": -1}, "invalid since"),
        ({"op": "subscribe", "topic": "ok", "since": "x"}, "invalid since"),
        ({"op": "subscribe", "topic": "ok", "since": 1.5}, "invalid since"),
        ({"op": "subscribe", "topic": "ok", "since": True}, "invalid since"),
        ({"op": "unsubscribe", "topic": "ok"}, "not subscribed"),
        ({"op": "publish", "topic": "news"}, "topic not publishable"),
        ({"op": "publish", "topic": "chat"}, "missing field: data"),
        ({"op": "publish", "topic": 5, "data": 1}, "invalid topic"),
    ],
)
async def test_recoverable_errors(rt: Setup, request_: dict[str, Any], error: str) -> None:
    async with websockets.connect(rt.ws_url()) as ws:
        await send_json(ws, request_)
        reply = await recv_json(ws)
        assert reply["error"].startswith(error), reply
        if "op" in request_ and isinstance(request_["op"], str):
            assert reply["op"] == request_["op"]
        # Still usable.
        await send_json(ws, {"op": "publish", "topic": "chat", "data": 1})
        await send_json(ws, {"op": "subscribe", "topic": "chat", "since": 0})
        assert (await recv_json(ws))["seq"] == 1


async def test_subscribe_twice_is_an_error(rt: Setup) -> None:
    async with websockets.connect(rt.ws_url()) as ws:
        await send_json(ws, {"op": "subscribe", "topic": "chat"})
        await send_json(ws, {"op": "subscribe", "topic": "chat"})
        assert (await recv_json(ws))["error"] == "already subscribed"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        # RecursionError in the parser: closed 1011 with a traceback in the log, before.
        ("[" * 5000 + "]" * 5000, "invalid JSON: nested deeper than 128 levels"),
        (
            '{"op": "publish", "topic": "chat", "data": ' + "[" * 990 + "]" * 990 + "}",
            "invalid JSON: nested deeper than 128 levels",
        ),
        # Python reads NaN, and would send it to every subscriber, whose parsers refuse it.
        (
            '{"op": "publish", "topic": "chat", "data": NaN}',
            "invalid JSON: NaN is not a JSON number",
        ),
        (b"\x00\x01", "binary messages not supported"),
    ],
)
async def test_abuse_closes_1008(rt: Setup, message: str | bytes, reason: str) -> None:
    async with websockets.connect(rt.ws_url()) as ws:
        await ws.send(message)
        assert await expect_close(ws, 1008) == reason
    assert await rt.hub.last_seq("chat") == 0


async def test_too_many_subscriptions_closes_1008(rt: Setup) -> None:
    async with websockets.connect(rt.ws_url()) as ws:
        for i in range(101):
            await send_json(ws, {"op": "subscribe", "topic": f"t{i}"})
        assert await expect_close(ws, 1008) == "too many subscriptions"


async def test_oversize_closes_1009(rt: Setup) -> None:
    async with websockets.connect(rt.ws_url(), max_size=None) as ws:
        big = json.dumps({"op": "publish", "topic": "chat", "data": "x" * 70_000})
        await ws.send(big)
        await expect_close(ws, 1009)


async def test_broadcast_frames_each_message_once(rt: Setup) -> None:
    clients = [await websockets.connect(rt.ws_url()) for _ in range(20)]
    try:
        for ws in clients:
            await send_json(ws, {"op": "subscribe", "topic": "fan"})
        await asyncio.sleep(0.1)
        before = (rt.frames.framed, rt.frames.envelopes.encoded)
        for i in range(10):
            await rt.hub.publish("fan", {"i": i})
        for ws in clients:
            assert [(await recv_json(ws))["data"]["i"] for _ in range(10)] == list(range(10))
        assert rt.frames.framed - before[0] == 10
        assert rt.frames.envelopes.encoded - before[1] == 10
    finally:
        for ws in clients:
            await ws.close()


async def test_compressed_and_plain_clients_get_the_same_messages() -> None:
    setup = await make_setup(compression=True)
    try:
        plain = await websockets.connect(setup.ws_url(), compression=None)
        deflated = await websockets.connect(setup.ws_url())
        assert "permessage-deflate" in (
            deflated.response.headers.get("Sec-WebSocket-Extensions") or ""
        )
        for ws in (plain, deflated):
            await send_json(ws, {"op": "subscribe", "topic": "fan"})
        await asyncio.sleep(0.1)
        for i in range(30):
            await setup.hub.publish("fan", {"price": 100 + i, "symbol": "ACME", "pad": "y" * 80})
        for ws in (plain, deflated):
            got = [(await recv_json(ws))["data"]["price"] for _ in range(30)]
            assert got == [100 + i for i in range(30)]
        await plain.close()
        await deflated.close()
    finally:
        await teardown(setup)


async def _stalled_reader(
    setup: Setup, topic: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw WebSocket client that subscribes and then never reads."""
    import base64
    import os

    reader, writer = await asyncio.open_connection("127.0.0.1", setup.port)
    # A small receive buffer so the server's write buffer fills quickly.
    sock = writer.get_extra_info("socket")
    import socket

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /pubsub HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    payload = json.dumps({"op": "subscribe", "topic": topic}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    await writer.drain()
    return reader, writer


N_FLOOD = 1000


def _server_buffers(setup: Setup) -> list[int]:
    return [ws.transport.get_write_buffer_size() for ws in setup.server.websockets]


@pytest.mark.parametrize("policy", [Policy.DROP_OLDEST, Policy.DISCONNECT])
async def test_slow_consumer_is_bounded_and_others_are_not_delayed(policy: Policy) -> None:
    setup = await make_setup(write_limit=16 * 1024)
    setup.hub.configure("flood", TopicConfig(queue_size=50, policy=policy))
    try:
        _reader, writer = await _stalled_reader(setup, "flood")
        (slow_ws,) = [ws for ws in setup.server.websockets if ws.request.path == "/pubsub"]
        async with websockets.connect(setup.ws_url()) as fast:
            await send_json(fast, {"op": "subscribe", "topic": "flood"})
            await asyncio.sleep(0.1)
            pad = "z" * 8000
            peak = 0
            received = 0
            for i in range(N_FLOOD):
                await setup.hub.publish("flood", {"i": i, "pad": pad})
                msg = await recv_json(fast)  # the fast client keeps up, message by message
                assert msg["data"]["i"] == i
                received += 1
                peak = max(peak, *_server_buffers(setup))
            assert received == N_FLOOD
            # Write buffer limit + one frame, whatever the slow client does.
            assert peak <= 16 * 1024 + 8100
            # The slow one got far fewer messages than were published.
            assert slow_ws.messages_sent < N_FLOOD
            if policy is Policy.DISCONNECT:
                # Closed with 1013, and reset at once rather than after close_timeout: the
                # close frame could only wait behind what the client does not read.
                assert slow_ws.core.close_sent == (1013, "slow consumer")
                await asyncio.wait_for(slow_ws.wait_closed(), 1.0)
            else:
                assert slow_ws.core.close_sent is None
                assert slow_ws in setup.server.websockets
        writer.close()
    finally:
        await teardown(setup)


async def test_a_closed_pubsub_connection_leaves_no_cyclic_garbage() -> None:
    # The session and its sink (whose slow-consumer callback is the session's method) were a
    # cycle: every /pubsub connection's objects waited for the garbage collector. (Connect and
    # close only: a topic whose last subscriber leaves still ends in cycles of the hub's.)
    import gc

    from fullduplex.protocol.frames import serialize_frame

    setup = await make_setup()
    request = (
        b"GET /pubsub HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    close = serialize_frame(8, b"\x03\xe8", mask=True)

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", setup.port)
        writer.write(request)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(close)
        await reader.read()  # until the server closes
        writer.close()
        await writer.wait_closed()

    try:
        await one()  # lazy imports and caches
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                await one()
            setup.server.close()
            await setup.server.wait_closed()
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            ours = [
                type(o).__qualname__
                for o in gc.garbage
                if type(o).__module__.split(".")[0] in ("fullduplex", "httptools")
            ]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert ours == []
    finally:
        await teardown(setup)
