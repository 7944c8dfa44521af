"""/metrics scraped with prometheus-client's parser before and after a scripted sequence.

The sequence: a WebSocket echo (3 messages, closed with 1001), a /pubsub subscriber receiving
3 published messages, a slow consumer disconnected by its topic's policy. Every counter must
move by what the sequence did, with one worker process and with two sharing the port (the
scraped worker sums the other's figures, fullduplex.metrics.workers).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

import fullduplex
from tests.hub.conftest import RedisServer, free_port

from .scrape import Snapshot, deltas, scrape, slow_subscriber, value, wait_for

pytestmark = pytest.mark.one_loop  # the loops under test are the workers'

ROOT = Path(__file__).resolve().parents[2]
SLOW_PAYLOAD = "x" * 50_000  # under /publish's 64 KiB limit; 25 of them fill any buffer here


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


class Workers:
    def __init__(self, count: int, broker: str, loop: str, directory: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, FULLDUPLEX_METRICS_DIR=str(directory))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
        command = [sys.executable, "-m", "tests.metrics.worker_app", str(self.port), broker, loop]
        self.processes = [
            subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE)
            for _ in range(count)
        ]
        for process in self.processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == b"ready"

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            assert process.wait(15) == 0
            assert process.stdout is not None
            process.stdout.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def run_workers(
    count: int, broker: str, loop: str, tmp_path: Path
) -> AsyncIterator[tuple[Workers, httpx.AsyncClient]]:
    workers = Workers(count, broker, loop, tmp_path)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            # Each worker has opened its metrics socket before saying "ready"; a scrape sums
            # every worker (whichever the kernel hands it to).
            await wait_for(
                client,
                workers.base,
                lambda s: value(s, "fullduplex_metrics_processes") == count,
                what=f"{count} workers in the sum",
            )
            yield workers, client
    finally:
        workers.stop()


async def scripted_sequence(workers: Workers, client: httpx.AsyncClient) -> None:
    base, port = workers.base, workers.port
    before = await scrape(client, base)

    # 1. A WebSocket echo: 3 messages of 5 characters, then a close with 1001.
    echo = await fullduplex.connect(f"ws://127.0.0.1:{port}/echo")
    for _ in range(3):
        await echo.send("hello")
        assert await echo.recv() == "hello"
    during = await wait_for(
        client,
        base,
        lambda s: (
            value(s, "fullduplex_ping_rtt_seconds_count")
            > value(before, "fullduplex_ping_rtt_seconds_count")
        ),
        what="a keepalive round trip",  # ping_interval=0.2 in the workers
    )
    assert value(during, "fullduplex_connections", transport="websocket", route="/echo") == 1
    await echo.close(1001)

    # 2. A /pubsub subscriber gets 3 messages published through POST /publish.
    reader = await fullduplex.connect(f"ws://127.0.0.1:{port}/pubsub")
    await reader.send(json.dumps({"op": "subscribe", "topic": "news"}))
    await wait_for(
        client,
        base,
        lambda s: value(s, "fullduplex_topic_subscribers", topic="news") == 1,
        what="the news subscriber",
    )
    for i in range(3):
        reply = await client.post(f"{base}/publish", json={"topic": "news", "data": i})
        assert reply.status_code == 200
        assert json.loads(await asyncio.wait_for(reader.recv(), 5))["data"] == i
    await reader.close()

    # 3. A slow consumer: subscribes to "slow" (policy disconnect, queue of 2) and never
    # reads. Publish one message at a time, each delivered before the next, until the
    # policy disconnects it.
    slow = slow_subscriber(port, "slow")
    try:
        ready = await wait_for(
            client,
            base,
            lambda s: value(s, "fullduplex_topic_subscribers", topic="slow") == 1,
            what="the slow subscriber",
        )
        published = 0
        delivered = value(ready, "fullduplex_hub_deliveries_total")
        action = "fullduplex_slow_consumer_actions_total"
        disconnects = value(ready, action, policy="disconnect", action="disconnect")
        while True:
            reply = await client.post(
                f"{base}/publish", json={"topic": "slow", "data": SLOW_PAYLOAD}
            )
            assert reply.status_code == 200
            published += 1
            target = delivered + published
            now = await wait_for(
                client,
                base,
                lambda s, target=target: value(s, "fullduplex_hub_deliveries_total") == target,
                what="the delivery of a slow message",
            )
            if value(now, action, policy="disconnect", action="disconnect") > disconnects:
                break
            assert published < 100, "the slow consumer was never disconnected"
    finally:
        slow.close()  # with unread data: a reset, so the server need not wait close_timeout

    after = await wait_for(
        client,
        base,
        lambda s: (
            value(s, "fullduplex_connections_closed_total", route="/pubsub")
            - value(before, "fullduplex_connections_closed_total", route="/pubsub")
            == 2
            and value(s, "fullduplex_connections_closed_total", route="/echo")
            - value(before, "fullduplex_connections_closed_total", route="/echo")
            == 1
        ),
        what="every connection closed",
    )
    check(before, after, published)


def check(before: Snapshot, after: Snapshot, slow_published: int) -> None:
    expected = {
        "fullduplex_handshakes_total{route=/echo,status=101}": 1,
        "fullduplex_handshakes_total{route=/pubsub,status=101}": 2,
        "fullduplex_messages_total{route=/echo,direction=in}": 3,
        "fullduplex_messages_total{route=/echo,direction=out}": 3,
        "fullduplex_message_bytes_total{route=/echo,direction=in}": 15,
        "fullduplex_message_bytes_total{route=/echo,direction=out}": 15,
        "fullduplex_messages_total{route=/pubsub,direction=in}": 2,  # two subscribe ops
        "fullduplex_connections_closed_total{route=/echo}": 1,
        "fullduplex_connections_closed_total{route=/pubsub}": 2,
        "fullduplex_closes_total{route=/echo,code=1001}": 1,
        "fullduplex_closes_total{route=/pubsub,code=1000}": 1,
        "fullduplex_hub_publishes_total": 3 + slow_published,
        "fullduplex_hub_deliveries_total": 3 + slow_published,
        "fullduplex_slow_consumer_actions_total{policy=disconnect,action=disconnect}": 1,
        "fullduplex_gaps_total{reason=dropped}": 0,
        "fullduplex_gaps_total{reason=trimmed}": 0,
        "fullduplex_gaps_total{reason=reset}": 0,
        "fullduplex_connections{transport=websocket,route=/echo}": 0,
        "fullduplex_connections{transport=websocket,route=/pubsub}": 0,
    }
    assert deltas(before, after, expected) == expected
    # The slow consumer was closed with 1013 (try again later), and the server never got
    # its answer: its code is 1013 as sent, or 1006 (no close frame back) if TCP went first.
    slow_codes = {
        code: value(after, "fullduplex_closes_total", route="/pubsub", code=code)
        - value(before, "fullduplex_closes_total", route="/pubsub", code=code)
        for code in ("1013", "1006")
    }
    assert sum(slow_codes.values()) == 1, slow_codes
    # Sent on /pubsub: the reader's 3, and what reached the slow consumer before its backlog
    # (at least the first, written to an empty buffer; at most every slow message).
    out = value(after, "fullduplex_messages_total", route="/pubsub", direction="out") - value(
        before, "fullduplex_messages_total", route="/pubsub", direction="out"
    )
    assert 3 + 1 <= out <= 3 + slow_published
    assert value(after, "fullduplex_message_bytes_total", route="/pubsub", direction="out") > 0
    assert value(after, "fullduplex_ping_rtt_seconds_count") > value(
        before, "fullduplex_ping_rtt_seconds_count"
    )


async def test_one_worker(tmp_path: Path, loop_name: str) -> None:
    async for workers, client in run_workers(1, "memory", loop_name, tmp_path):
        await scripted_sequence(workers, client)


async def test_two_workers(tmp_path: Path, loop_name: str, redis: RedisServer) -> None:
    async for workers, client in run_workers(2, redis.url, loop_name, tmp_path):
        await scripted_sequence(workers, client)
