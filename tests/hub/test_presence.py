"""Presence: counts per identity, join and leave events, across processes on Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

import fullduplex
from fullduplex.hub import Hub
from fullduplex.hub.presence import MemoryPresence

from ..redis_cluster import RedisCluster
from .conftest import RedisServer
from .presence_app import make_app

ROOT = Path(__file__).resolve().parents[2]


async def recv(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    item: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return item


async def who(ws: Any, topic: str = "room") -> dict[str, Any]:
    await ws.send(json.dumps({"op": "presence", "topic": topic}))
    while True:
        item = await recv(ws)
        if "presence" in item and "connections" in item["presence"]:
            answer: dict[str, Any] = item["presence"]
            return answer


async def subscribe(ws: Any, topic: str = "room", events: bool = False) -> None:
    await ws.send(json.dumps({"op": "subscribe", "topic": topic, "presence": events}))


@pytest.fixture
async def memory_server() -> AsyncIterator[fullduplex.Server]:
    hub = Hub()
    await hub.start()
    server = await fullduplex.serve(make_app(hub, MemoryPresence()), "127.0.0.1", 0)
    yield server
    server.close()
    await server.wait_closed()
    await hub.close()


async def test_memory_counts_and_events(memory_server: fullduplex.Server) -> None:
    url = f"ws://127.0.0.1:{memory_server.port}/pubsub"
    async with websockets.connect(url + "?user=watcher") as watcher:
        await subscribe(watcher, events=True)
        assert await recv(watcher) == {"topic": "room", "presence": {"join": "watcher"}}
        async with (
            websockets.connect(url + "?user=ann") as a1,
            websockets.connect(url + "?user=ann") as a2,
            websockets.connect(url) as anon,
        ):
            await subscribe(a1)
            assert await recv(watcher) == {"topic": "room", "presence": {"join": "ann"}}
            await subscribe(a2)
            assert await recv(watcher) == {"topic": "room", "presence": {"join": "ann"}}
            await subscribe(anon)
            assert await recv(watcher) == {"topic": "room", "presence": {"join": "anonymous"}}
            assert await who(anon) == {
                "identities": {"watcher": 1, "ann": 2, "anonymous": 1},
                "connections": 4,
            }
            await a1.send(json.dumps({"op": "unsubscribe", "topic": "room"}))
            assert await recv(watcher) == {"topic": "room", "presence": {"leave": "ann"}}
        # a2 and anon closed: two leaves, in either order
        leaves = sorted([(await recv(watcher))["presence"]["leave"] for _ in range(2)])
        assert leaves == ["ann", "anonymous"]
        assert await who(watcher) == {"identities": {"watcher": 1}, "connections": 1}
        # A topic nobody subscribed to:
        assert await who(watcher, "other") == {"identities": {}, "connections": 0}


def start_process(url: str, prefix: str, expiry: float) -> tuple[Any, int]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hub.presence_app", url, prefix, str(expiry)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip().isdigit(), f"no port from the server: {line!r}"
    return process, int(line)


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        process.stdout.close()


@pytest.fixture(params=["redis", "cluster"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """A real redis-server's URL, or a real Redis Cluster's."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return cluster.url


@pytest.mark.one_loop
async def test_redis_two_processes_and_expiry(broker_url: str, processes: list[Any]) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    expiry = 1.5
    first, port1 = start_process(broker_url, prefix, expiry)
    processes.append(first)
    second, port2 = start_process(broker_url, prefix, expiry)
    processes.append(second)
    url1 = f"ws://127.0.0.1:{port1}/pubsub"
    url2 = f"ws://127.0.0.1:{port2}/pubsub"
    async with websockets.connect(url1 + "?user=watcher") as watcher:
        await subscribe(watcher, events=True)
        assert await recv(watcher) == {"topic": "room", "presence": {"join": "watcher"}}
        async with websockets.connect(url2 + "?user=bob") as bob:
            await subscribe(bob)
            # bob joined in the other process: the event crosses Redis
            assert await recv(watcher) == {"topic": "room", "presence": {"join": "bob"}}
            assert await who(bob) == {
                "identities": {"watcher": 1, "bob": 1},
                "connections": 2,
            }
        assert await recv(watcher) == {"topic": "room", "presence": {"leave": "bob"}}
        async with websockets.connect(url2 + "?user=carol") as carol:
            await subscribe(carol)
            assert await recv(watcher) == {"topic": "room", "presence": {"join": "carol"}}
            assert (await who(watcher))["identities"] == {"watcher": 1, "carol": 1}
            second.kill()  # SIGKILL: no goodbye, its hash expires on its own
            second.wait(10)
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            answer: dict[str, Any] = {}
            while loop.time() < killed_at + expiry + 2.0:
                answer = await who(watcher)
                if answer["identities"] == {"watcher": 1}:
                    break
                await asyncio.sleep(0.05)
            assert answer == {"identities": {"watcher": 1}, "connections": 1}
            assert loop.time() - killed_at <= expiry + 0.5


async def test_presence_needs_subscribe_permission() -> None:
    from fullduplex.transports.common import TopicRules
    from fullduplex.transports.websocket import mount_websocket

    hub = Hub()
    await hub.start()
    app = fullduplex.App()
    mount_websocket(app, hub, rules=TopicRules(subscribe=["room"]), presence=MemoryPresence())
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/pubsub") as ws:
            await ws.send(json.dumps({"op": "presence", "topic": "secret"}))
            assert await recv(ws) == {"error": "unknown topic", "op": "presence", "topic": "secret"}
            await subscribe(ws)
            assert await who(ws) == {"identities": {"anonymous": 1}, "connections": 1}
    finally:
        server.close()
        await server.wait_closed()
        await hub.close()


async def test_cap_counts_the_rest_together() -> None:
    presence = MemoryPresence(max_identities=2)
    seen: list[tuple[str, str]] = []
    presence.watch("t", lambda kind, name: seen.append((kind, name)))
    assert [presence.join("t", name) for name in ("a", "b", "c", "d", "a")] == [
        "a",
        "b",
        "*",
        "*",
        "a",
    ]
    assert await presence.who("t") == {"identities": {"a": 2, "b": 1, "*": 2}, "connections": 5}
    presence.leave("t", "*")
    presence.leave("t", "b")
    assert await presence.who("t") == {"identities": {"a": 2, "*": 1}, "connections": 3}
    assert seen[-2:] == [("leave", "*"), ("leave", "b")]
    assert len(seen) == 7


async def test_redis_close_withdraws_entries(broker_url: str) -> None:
    from fullduplex.hub.presence import RedisPresence

    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    one = RedisPresence(broker_url, prefix=prefix, expiry=30.0)
    two = RedisPresence(broker_url, prefix=prefix, expiry=30.0)
    await one.start()
    await two.start()
    try:
        seen: list[tuple[str, str]] = []
        two.watch("t", lambda kind, name: seen.append((kind, name)))
        one.join("t", "ann")
        for _ in range(500):  # bounded: 5 s
            if seen and (await two.who("t"))["connections"] == 1:
                break
            await asyncio.sleep(0.01)
        assert seen == [("join", "ann")]
        assert await two.who("t") == {"identities": {"ann": 1}, "connections": 1}
        await one.close()  # a clean exit deletes its hash at once, no need to wait 30 s
        assert await two.who("t") == {"identities": {}, "connections": 0}
    finally:
        await two.close()


async def test_http_presence_through_mount_all() -> None:
    import httpx

    from fullduplex.transports import TopicRules, mount_all

    hub = Hub()
    await hub.start()
    app = fullduplex.App()
    transports = mount_all(
        app, hub, rules=TopicRules(subscribe=["room"]), presence=MemoryPresence()
    )
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with (
            websockets.connect(f"ws://127.0.0.1:{server.port}/pubsub") as ws,
            httpx.AsyncClient(base_url=base) as http,
        ):
            await subscribe(ws, events=True)
            assert await recv(ws) == {"topic": "room", "presence": {"join": "anonymous"}}
            answer = await http.get("/presence", params={"topic": "room"})
            assert answer.status_code == 200
            assert answer.json() == {
                "topic": "room",
                "identities": {"anonymous": 1},
                "connections": 1,
            }
            refused = await http.get("/presence", params={"topic": "secret"})
            assert refused.status_code == 403
            assert refused.json() == {"error": "unknown topic: secret"}
            assert (await http.get("/presence")).status_code == 400
    finally:
        transports.close()
        server.close()
        await server.wait_closed()
        await hub.close()


async def test_slow_watcher_counts_missed_events() -> None:
    from fullduplex.transports.websocket import mount_websocket

    hub = Hub()
    await hub.start()
    presence = MemoryPresence(max_identities=10)
    app = fullduplex.App()
    mount_websocket(app, hub, presence=presence)
    server = await fullduplex.serve(app, "127.0.0.1", 0, write_limit=1024)
    try:
        url = f"ws://127.0.0.1:{server.port}/pubsub"
        async with websockets.connect(url, max_queue=1) as ws:
            await subscribe(ws, events=True)
            assert await recv(ws) == {"topic": "room", "presence": {"join": "anonymous"}}
            # The client stops reading (max_queue=1): the joins fill the socket buffers,
            # then the server's write buffer passes write_limit and events are counted.
            # 50,000 events of 1 KiB: 50 MiB, far more than loopback socket buffers hold.
            name = "u" * 1000
            issued = 50_000
            for _ in range(issued):
                presence.join("room", name)
            received = missed = 0
            finals = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                assert loop.time() < deadline, "the final join never arrived"
                try:
                    item = json.loads(await asyncio.wait_for(ws.recv(), 0.05))
                except asyncio.TimeoutError:
                    presence.join("room", "final")  # sent once the buffer drained
                    finals += 1
                    continue
                event = item["presence"]
                if "missed" in event:
                    missed += event["missed"]
                elif event.get("join") == name:
                    received += 1
                elif event.get("join") == "final":
                    break
            assert missed > 0
            # Every event is accounted for: received, or counted in a "missed" item.
            assert received + missed == issued + finals - 1
    finally:
        server.close()
        await server.wait_closed()
        await hub.close()
