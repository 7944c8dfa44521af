"""fullduplex.subscribe, its threaded twin and `fullduplex subscribe` under faults, on the memory
hub and on Redis: a numbered stream, every message exactly once and in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

import fullduplex
from fullduplex.hub import Gap, Hub
from fullduplex.sync import subscribe as sync_subscribe

from ..hub.conftest import free_port
from ..transports.conftest import RedisServer, redis_server  # noqa: F401
from .faults import ROOT, Proxy, Publisher, ServerProcess, check_stream, wait_for
from .serve_app import make_app

FAST = {"min_delay": 0.05, "max_delay": 0.5, "restart_jitter": 0.3}


def as_items(received: list[Any]) -> list[Any]:
    return [
        (x.topic, "gap", x.since, x.first_available)
        if isinstance(x, Gap)
        else (x.topic, x.seq, x.data)
        for x in received
    ]


class Setup:
    """A server in this process (memory hub) or two server processes (Redis)."""

    def __init__(self, broker: str | None) -> None:
        self.broker = broker
        self.hub = Hub(broker)
        self.server: fullduplex.Server | None = None
        self.processes: list[ServerProcess] = []
        self.port = 0

    async def start(self) -> None:
        await self.hub.start()
        if self.broker is None:
            self.app, _ = make_app(self.hub)
            self.server = await fullduplex.serve(self.app, "127.0.0.1", 0)
            self.port = self.server.port
        else:
            process = ServerProcess(free_port(), self.broker)
            await asyncio.to_thread(process.start)
            self.processes.append(process)
            self.port = process.port

    async def restart(self) -> None:
        """Shut the server down gracefully (1012), then start it again on the same port."""
        if self.server is not None:
            await self.server.shutdown()
            await asyncio.sleep(0.2)  # down for a while: messages go on into history
            self.server = await fullduplex.serve(self.app, "127.0.0.1", self.port)
        else:
            process = self.processes[0]
            await asyncio.to_thread(process.stop)
            await asyncio.to_thread(process.start)

    async def close(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
        for process in self.processes:
            process.kill()
        await self.hub.close()


@pytest.fixture(params=["memory", "redis"])
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    broker = None
    if request.param == "redis":
        broker = request.getfixturevalue("redis_server").url
    s = Setup(broker)
    await s.start()
    yield s
    await s.close()


async def collect(sub: fullduplex.Subscriber, into: list[Any]) -> None:
    async for item in sub:
        into.append(item)


def topic_name() -> str:
    return f"n{free_port()}"  # fresh per test: Redis keeps history between tests


async def test_subscriber_across_restart(setup: Setup) -> None:
    topic = topic_name()
    publisher = Publisher(setup.hub, topic)
    received: list[Any] = []
    uri = f"ws://127.0.0.1:{setup.port}/pubsub"
    async with fullduplex.subscribe(uri, [topic], since=0, **FAST) as sub:
        task = asyncio.ensure_future(collect(sub, received))
        publisher.start()
        await wait_for(lambda: len(received) >= 20, 10, "20 messages")
        await setup.restart()
        await wait_for(lambda: sub.connections >= 2 and sub.state == "open", 15, "a reconnection")
        last = await publisher.stop()
        await wait_for(lambda: sub.cursors[topic] == last, 10, f"seq {last}")
        task.cancel()
    assert check_stream(as_items(received), topic, 1, last) == 0
    assert sub.connections == 2


async def test_subscriber_through_a_cutting_proxy(setup: Setup) -> None:
    topic = topic_name()
    proxy = await Proxy(setup.port).start()
    publisher = Publisher(setup.hub, topic)
    received: list[Any] = []
    try:
        uri = f"ws://127.0.0.1:{proxy.port}/pubsub"
        async with fullduplex.subscribe(uri, [topic], **FAST) as sub:
            task = asyncio.ensure_future(collect(sub, received))
            await wait_for(lambda: sub.state == "open", 10, "open")
            publisher.start()
            proxy.cut_randomly(0.05, 0.3)
            acks = [await sub.publish("q", i, timeout=20) for i in range(20)]
            await wait_for(lambda: proxy.cuts >= 6, 15, "six cuts")
            proxy.stop_cutting()
            last = await publisher.stop()
            await wait_for(lambda: sub.cursors.get(topic) == last, 10, f"seq {last}")
            task.cancel()
        first = as_items(received)[0][1]
        assert check_stream(as_items(received), topic, first, last) == 0
        assert sub.connections >= 4
        # Publishes acknowledged once each, published once each, across the cuts.
        _, messages = await setup.hub.history("q")
        assert [m.data for m in messages][-20:] == list(range(20))
        assert [a.seq for a in acks] == [m.seq for m in messages][-20:]
    finally:
        await proxy.close()


async def test_subscriber_moved_between_processes(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    a, b = (
        ServerProcess(free_port(), redis_server.url),
        ServerProcess(free_port(), redis_server.url),
    )
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    hub = Hub(redis_server.url)
    await hub.start()
    proxy = await Proxy(a.port).start()
    topics = [topic_name(), topic_name()]
    publishers = [Publisher(hub, t) for t in topics]
    received: list[Any] = []
    try:
        uri = f"ws://127.0.0.1:{proxy.port}/pubsub"
        async with fullduplex.subscribe(uri, topics, since=0, **FAST) as sub:
            task = asyncio.ensure_future(collect(sub, received))
            for p in publishers:
                p.start()
            await wait_for(lambda: len(received) >= 40, 10, "40 messages")
            proxy.target = b.port
            proxy.cut()
            await wait_for(lambda: sub.connections >= 2, 10, "moved to the second process")
            await asyncio.to_thread(a.stop)
            lasts = [await p.stop() for p in publishers]
            for t, last in zip(topics, lasts, strict=True):
                await wait_for(lambda t=t, last=last: sub.cursors[t] == last, 10, "the end")
            task.cancel()
        for t, last in zip(topics, lasts, strict=True):
            assert check_stream(as_items(received), t, 1, last) == 0
    finally:
        for p in publishers:
            await p.stop()
        await proxy.close()
        await hub.close()
        a.kill()
        b.kill()


async def test_gap_item_when_history_is_trimmed() -> None:
    from fullduplex.hub import TopicConfig

    hub = Hub()
    hub.configure("t", TopicConfig(history_size=5))
    await hub.start()
    app, _ = make_app(hub)
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        for i in range(20):
            await hub.publish("t", i)
        uri = f"ws://127.0.0.1:{server.port}/pubsub"
        async with fullduplex.subscribe(uri, "t", since=2, **FAST) as sub:
            first = await asyncio.wait_for(sub.__anext__(), 5)
            assert isinstance(first, Gap) and (first.since, first.first_available) == (2, 16)
            nxt = await asyncio.wait_for(sub.__anext__(), 5)
            assert (nxt.topic, nxt.seq) == ("t", 16)
            assert sub.cursors["t"] == 16
    finally:
        await server.shutdown()
        await hub.close()


async def test_sync_subscriber_across_restart(setup: Setup) -> None:
    topic = topic_name()
    publisher = Publisher(setup.hub, topic)
    uri = f"ws://127.0.0.1:{setup.port}/pubsub"
    sub = await asyncio.to_thread(sync_subscribe, uri, [topic], since=0, **FAST)
    received: list[Any] = []

    def reader() -> None:
        with contextlib.suppress(StopIteration):
            for item in sub:
                received.append(item)

    thread = asyncio.ensure_future(asyncio.to_thread(reader))
    try:
        publisher.start()
        await wait_for(lambda: len(received) >= 20, 10, "20 messages")
        await setup.restart()
        await wait_for(lambda: sub.connections >= 2, 15, "a reconnection")
        ack = await asyncio.to_thread(sub.publish, "q", "from sync", 10)
        assert ack.topic == "q"
        last = await publisher.stop()
        await wait_for(lambda: sub.cursors[topic] == last, 10, f"seq {last}")
    finally:
        await asyncio.to_thread(sub.close)
        await thread
    assert check_stream(as_items(received), topic, 1, last) == 0


async def test_cli_subscribe_across_restart_and_publish(setup: Setup) -> None:
    topic = topic_name()
    uri = f"ws://127.0.0.1:{setup.port}/pubsub"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "fullduplex", "subscribe", uri, topic, "--since", "0"),
        *("--max-delay", "0.5"),
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[Any] = []

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            lines.append(json.loads(line))

    reading = asyncio.ensure_future(read())
    publisher = Publisher(setup.hub, topic)
    try:
        publisher.start()
        await wait_for(lambda: len(lines) >= 20, 15, "20 lines")
        await setup.restart()
        await asyncio.sleep(0.3)
        last = await publisher.stop()
        pub = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "fullduplex", "publish", uri, topic, '{"x": 1}'),
            stdout=subprocess.PIPE,
            env=env,
        )
        out, _ = await asyncio.wait_for(pub.communicate(), 20)
        assert pub.returncode == 0 and int(out) == last + 1
        await wait_for(lambda: lines and lines[-1].get("seq") == last + 1, 15, "the CLI's publish")
    finally:
        proc.terminate()
        await proc.wait()
        await reading
        await publisher.stop()
    items = [(x["topic"], x["seq"], x["data"]) for x in lines]
    assert check_stream(items, topic, 1, last + 1) == 0
    assert lines[-1]["data"] == {"x": 1}


@pytest.mark.parametrize("uri", ["notaurl", "http://127.0.0.1:1/pubsub", "ws://127.0.0.1:99999/x"])
async def test_a_malformed_uri_is_refused_at_once(uri: str) -> None:
    # connect() refuses these on every attempt: retrying them with backoff waited forever.
    with pytest.raises(ValueError, match="invalid WebSocket URI"):
        fullduplex.subscribe(uri, ["t"])
    outcome: list[BaseException | None] = []

    def threaded() -> None:
        try:
            sync_subscribe(uri, ["t"]).close()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    # The threaded twin raises in the caller's thread (it used to wait for its first item).
    thread = threading.Thread(target=threaded, daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join, 10)
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError), outcome
