"""Publish acknowledgements and idempotency keys (/publish and /pubsub), ping, 1012 on
shutdown, and the browser library's files."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from fullduplex.hub import Hub, RedisBackend
from fullduplex.transports import BROWSER_DIR

from ..hub.conftest import RedisServer
from .client import request
from .conftest import Setup, make_setup, teardown
from .test_websocket import recv_json, send_json

JSON = [("Content-Type", "application/json")]


async def _post(
    rt: Setup, body: dict[str, object], headers: list[tuple[str, str]] = JSON
) -> object:
    reply = await request(
        rt.port, "POST", "/publish", body=json.dumps(body).encode(), headers=headers
    )
    return reply.status, reply.json()


async def test_http_publish_with_a_key_is_published_once(rt: Setup) -> None:
    first = await _post(rt, {"topic": "chat", "data": "a", "key": "k1"})
    again = await _post(rt, {"topic": "chat", "data": "a", "key": "k1"})
    other = await _post(rt, {"topic": "chat", "data": "b", "key": "k2"})
    assert first == again and first[0] == 200  # type: ignore[index]
    assert other[1]["seq"] == 2  # type: ignore[index]
    _, messages = await rt.hub.history("chat")
    assert [m.data for m in messages] == ["a", "b"]
    assert rt.transports.keys is not None and rt.transports.keys.deduplicated == 1


async def test_idempotency_key_header_and_bad_keys(rt: Setup) -> None:
    headers = [*JSON, ("Idempotency-Key", "h1")]
    one = await _post(rt, {"topic": "chat", "data": 1}, headers)
    two = await _post(rt, {"topic": "chat", "data": 1}, headers)
    assert one == two
    assert (await _post(rt, {"topic": "chat", "data": 1, "key": ""}))[0] == 400  # type: ignore[index]
    assert (await _post(rt, {"topic": "chat", "data": 1, "key": "x" * 129}))[0] == 400  # type: ignore[index]
    status, body = await _post(rt, {"topic": "open.x", "data": 1, "key": "h1"})  # type: ignore[misc]
    assert status == 409 and "another topic" in body["error"]


async def test_concurrent_retries_share_one_publish(rt: Setup) -> None:
    replies = await asyncio.gather(
        *(_post(rt, {"topic": "chat", "data": "same", "key": "c1"}) for _ in range(5))
    )
    assert len({json.dumps(r) for r in replies}) == 1
    _, messages = await rt.hub.history("chat")
    assert [m.data for m in messages] == ["same"]


async def test_a_retry_on_another_process_is_not_published_twice(
    redis_server: RedisServer,
) -> None:
    # Two servers on one Redis, as `--workers 2` runs them: the first attempt reaches one,
    # its answer is lost, the retry reaches the other (by /publish, then by /pubsub).
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    a = await make_setup(Hub(RedisBackend(redis_server.url, prefix=prefix)))
    b = await make_setup(Hub(RedisBackend(redis_server.url, prefix=prefix)))
    try:
        headers = [*JSON, ("Idempotency-Key", "r1")]
        first = await _post(a, {"topic": "chat", "data": "hello"}, headers)
        retry = await _post(b, {"topic": "chat", "data": "hello"}, headers)
        assert first == retry and first[0] == 200  # type: ignore[index]
        async with websockets.connect(b.ws_url()) as ws:
            await send_json(
                ws, {"op": "publish", "topic": "chat", "data": "hello", "id": 1, "key": "r1"}
            )
            ack = await recv_json(ws)
        assert ack["seq"] == first[1]["seq"]  # type: ignore[index]
        _, messages = await b.hub.history("chat")
        assert [m.data for m in messages] == ["hello"]
    finally:
        await teardown(a)
        await teardown(b)


async def test_websocket_publish_ack_and_key(rt: Setup) -> None:
    async with websockets.connect(rt.ws_url()) as ws:
        await send_json(ws, {"op": "publish", "topic": "chat", "data": "x", "id": 1, "key": "w1"})
        ack = await recv_json(ws)
        assert (ack["ack"], ack["topic"], ack["seq"]) == (1, "chat", 1)
        await send_json(ws, {"op": "publish", "topic": "chat", "data": "x", "id": 2, "key": "w1"})
        again = await recv_json(ws)
        assert (again["ack"], again["seq"], again["time"]) == (2, 1, ack["time"])
        await send_json(ws, {"op": "publish", "topic": "ticker", "data": "x", "id": "s"})
        error = await recv_json(ws)
        assert error == {
            "error": "topic not publishable",
            "op": "publish",
            "id": "s",
            "topic": "ticker",
        }
        await send_json(ws, {"op": "publish", "topic": "chat", "data": "y"})  # no id: no ack
        await send_json(ws, {"op": "ping"})
        assert await recv_json(ws) == {"pong": True}
    # The same key over HTTP: the WebSocket's publish, not a new one.
    status, body = await _post(rt, {"topic": "chat", "data": "x", "key": "w1"})  # type: ignore[misc]
    assert status == 200 and body["seq"] == 1
    _, messages = await rt.hub.history("chat")
    assert [m.data for m in messages] == ["x", "y"]


async def test_shutdown_closes_pubsub_with_1012() -> None:
    rt = await make_setup()
    try:
        async with websockets.connect(rt.ws_url()) as ws:
            await send_json(ws, {"op": "subscribe", "topic": "chat"})
            await send_json(ws, {"op": "ping"})
            assert await recv_json(ws) == {"pong": True}
            rt.transports.close()
            shutdown = asyncio.ensure_future(rt.server.shutdown())
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1012
            await shutdown
    finally:
        await teardown(rt)


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("fullduplex.js", "text/javascript"),
        ("fullduplex.mjs", "text/javascript"),
        ("fullduplex.d.ts", "application/typescript"),
    ],
)
async def test_browser_library_served(rt: Setup, name: str, ctype: str) -> None:
    reply = await request(rt.port, "GET", f"/{name}")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith(ctype)
    assert reply.body == (BROWSER_DIR / name).read_bytes()
    etag = reply.headers["etag"]
    cached = await request(rt.port, "GET", f"/{name}", headers=[("If-None-Match", etag)])
    assert cached.status == 304 and cached.body == b""
