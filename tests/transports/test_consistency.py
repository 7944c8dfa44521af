"""All four transports deliver the same messages with the same sequence numbers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from .client import EventStream, get_json, publish
from .conftest import Setup

N = 30


async def via_websocket(rt: Setup, ready: asyncio.Event) -> list[tuple[int, Any]]:
    async with websockets.connect(rt.ws_url()) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": "same", "since": 0}))
        ready.set()
        got = []
        while len(got) < N:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            got.append((msg["seq"], msg["data"]))
        return got


async def via_sse(rt: Setup, ready: asyncio.Event) -> list[tuple[int, Any]]:
    stream = await EventStream.open(rt.port, "/sse?topic=same&since=0")
    ready.set()
    got = []
    try:
        while len(got) < N:
            event = await stream.next_event()
            assert event is not None
            assert int(event.get("id") or 0) == event.json()["seq"]
            got.append((event.json()["seq"], event.json()["data"]))
    finally:
        await stream.close()
    return got


async def via_polling(rt: Setup, path: str, ready: asyncio.Event) -> list[tuple[int, Any]]:
    cursor = 0
    got: list[tuple[int, Any]] = []
    ready.set()
    while len(got) < N:
        reply = await get_json(rt.port, f"{path}?topic=same&since={cursor}")
        got += [(m["seq"], m["data"]) for m in reply["messages"]]
        cursor = reply["cursor"]
        if path == "/poll":
            await asyncio.sleep(0.02)
    return got


async def test_same_sequence_numbers_everywhere(rt: Setup) -> None:
    events = [asyncio.Event() for _ in range(4)]
    readers = [
        asyncio.ensure_future(via_websocket(rt, events[0])),
        asyncio.ensure_future(via_sse(rt, events[1])),
        asyncio.ensure_future(via_polling(rt, "/longpoll", events[2])),
        asyncio.ensure_future(via_polling(rt, "/poll", events[3])),
    ]
    for event in events:
        await event.wait()
    for i in range(N):
        # Half over HTTP, half from server code: the same sequence either way.
        if i % 2:
            await publish(rt.port, "chat", {"i": i})  # another topic in between
        await rt.hub.publish("same", {"i": i})
        await asyncio.sleep(0.005)
    results = await asyncio.wait_for(asyncio.gather(*readers), 15)
    expected = [(i + 1, {"i": i}) for i in range(N)]
    for result in results:
        assert result == expected


async def test_a_client_carries_its_cursor_across_transports(rt: Setup) -> None:
    for i in range(40):
        await rt.hub.publish("carry", i)
    seen: list[int] = []
    # 10 by WebSocket (leaving 30 unread: no receive queue limit, else websockets stops
    # reading and never sees the close frame)...
    async with websockets.connect(rt.ws_url(), max_queue=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": "carry", "since": 0}))
        for _ in range(10):
            seen.append(json.loads(await ws.recv())["seq"])
    # ... 10 by SSE from the WebSocket's cursor ...
    stream = await EventStream.open(rt.port, f"/sse?topic=carry&since={seen[-1]}")
    for _ in range(10):
        event = await stream.next_event()
        assert event is not None
        seen.append(event.json()["seq"])
    await stream.close()
    # ... then long polling from the SSE id, then short polling.
    reply = await get_json(rt.port, f"/longpoll?topic=carry&since={seen[-1]}&limit=10")
    seen += [m["seq"] for m in reply["messages"]]
    reply = await get_json(rt.port, f"/poll?topic=carry&since={reply['cursor']}")
    seen += [m["seq"] for m in reply["messages"]]
    assert seen == list(range(1, 41))
