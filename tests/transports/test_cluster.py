"""Servers in separate processes share topics through a real Redis Cluster, on every transport."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets.asyncio.client as wsclient

from fullduplex.hub.cluster import RedisClusterBackend

from ..hub.test_cluster import spread
from ..redis_cluster import RedisCluster
from .client import EventStream, publish, request
from .test_broker import chat_say, free_port, serve, wait_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.one_loop  # the servers are subprocesses: the test's loop is a client


@pytest.fixture
def start_server() -> Iterator[Callable[[str, str], int]]:
    """Start ``python -m tests.transports.cluster_app URL PREFIX``; return its port."""
    started: list[subprocess.Popen[bytes]] = []

    def start(url: str, prefix: str) -> int:
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.transports.cluster_app", url, prefix],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip().isdigit(), f"no port from the server: {line!r}"
        return int(line)

    yield start
    for process in started:
        process.kill()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


async def topics_on_every_shard(cluster: RedisCluster, prefix: str) -> list[str]:
    backend = RedisClusterBackend(cluster.url, prefix=prefix)
    await backend.start(lambda item: None)
    try:
        return spread(backend, cluster)
    finally:
        await backend.close()


def by_topic(items: list[dict[str, Any]]) -> dict[str, list[tuple[int, Any]]]:
    found: dict[str, list[tuple[int, Any]]] = {}
    for item in items:
        if "seq" in item:
            found.setdefault(item["topic"], []).append((item["seq"], item["data"]))
    return found


async def test_every_transport_on_one_process_gets_every_shard_from_another(
    redis_cluster: RedisCluster, start_server: Callable[[str, str], int]
) -> None:
    prefix, count = f"test-{uuid.uuid4().hex[:8]}:", 5
    port_a = await asyncio.to_thread(start_server, redis_cluster.url, prefix)
    port_b = await asyncio.to_thread(start_server, redis_cluster.url, prefix)
    topics = await topics_on_every_shard(redis_cluster, prefix)
    # Subscribers on B, all from the start (since=0): no race with the publishes.
    ws = await wsclient.connect(f"ws://127.0.0.1:{port_b}/pubsub")
    for name in topics:
        await ws.send(json.dumps({"op": "subscribe", "topic": name, "since": 0}))
    query = "&".join(f"topic={name}" for name in topics)
    stream = await EventStream.open(port_b, f"/sse?{query}&since=0")
    held = [
        asyncio.create_task(request(port_b, "GET", f"/longpoll?topic={name}&since=0"))
        for name in topics
    ]
    try:
        # Published on A, interleaved over the three shards.
        for n in range(count):
            for name in topics:
                reply = await publish(port_a, name, {"n": n})
                assert reply["seq"] == n + 1
        expected = {name: [(n + 1, {"n": n}) for n in range(count)] for name in topics}

        def complete(items: list[dict[str, Any]]) -> bool:
            got = by_topic(items)
            return all(len(got.get(name, [])) >= count for name in topics)

        received: dict[str, dict[str, list[tuple[int, Any]]]] = {}
        items: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while not complete(items):
                items.append(json.loads(await ws.recv()))
        received["websocket"] = by_topic(items)
        items = []
        while not complete(items):
            event = await stream.next_event(timeout=10)
            assert event is not None
            items.append(event.json())
        received["sse"] = by_topic(items)
        items = []
        for name, task in zip(topics, held, strict=True):
            reply = (await asyncio.wait_for(task, 10)).json()
            items += reply["messages"]
            while len(by_topic(items).get(name, [])) < count:  # long polls go on from there
                since = items[-1]["seq"]
                reply = await request(port_b, "GET", f"/longpoll?topic={name}&since={since}")
                items += reply.json()["messages"]
        received["longpoll"] = by_topic(items)
        items = []
        for name in topics:
            items += (await request(port_b, "GET", f"/poll?topic={name}&since=0")).json()[
                "messages"
            ]
        received["poll"] = by_topic(items)
        assert received == dict.fromkeys(received, expected)
    finally:
        await stream.close()
        await ws.close()
        for task in held:
            task.cancel()


async def test_the_demo_serves_with_a_cluster_broker(redis_cluster: RedisCluster) -> None:
    """``fullduplex serve --broker redis+cluster://...``: the chat across two processes."""
    port_a, port_b = free_port(), free_port()
    with (
        serve("--port", str(port_a), "--broker", redis_cluster.url) as a,
        serve("--port", str(port_b), "--broker", redis_cluster.url) as b,
    ):
        await asyncio.to_thread(wait_port, port_a, a)
        await asyncio.to_thread(wait_port, port_b, b)
        cursor = (await request(port_b, "GET", "/poll?topic=chat")).json()["cursor"]
        sent = await chat_say(port_a, "through the cluster")
        reply = await request(port_b, "GET", f"/longpoll?topic=chat&since={cursor}")
        seqs = {m["seq"]: m["data"] for m in reply.json()["messages"]}
        while sent not in seqs:
            since = max(seqs)
            reply = await request(port_b, "GET", f"/longpoll?topic=chat&since={since}")
            seqs.update({m["seq"]: m["data"] for m in reply.json()["messages"]})
        assert seqs[sent].get("text") == "through the cluster"
