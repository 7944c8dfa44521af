"""Subscribers that keep up lose nothing to a burst: backlogs overflow into history, not gaps.

Issue 15, defect 2: 300 messages published in one loop (or a broker handing over what it kept
during an outage) overflowed the event stream's and the long poll's backlog, and the client got
a ``dropped`` gap for messages still in history. They are read back from history now; a gap is
sent only for what history no longer holds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fullduplex.hub import Hub, HubUnavailable, RedisBackend, TopicConfig

from ..hub.conftest import RedisServer, eventually
from .client import EventStream, get_json
from .conftest import make_hub, make_setup, teardown


async def read_items(stream: EventStream, count: int, timeout: float = 10.0) -> list[Any]:
    items = []
    for _ in range(count):
        event = await stream.next_event(timeout)
        assert event is not None, f"stream ended after {len(items)} items"
        items.append(event.json())
    return items


async def publish_burst(hub: Hub, topic: str, count: int, start: int = 0) -> None:
    # One loop, no other task runs in between with the memory hub.
    for n in range(start, start + count):
        await hub.publish(topic, n)


def seqs(items: list[Any]) -> list[int]:
    assert all("gap" not in item for item in items), [i for i in items if "gap" in i]
    return [item["seq"] for item in items]


async def test_sse_burst_of_300_default_settings() -> None:
    """The issue's scenario: memory hub, unbounded history, 300 in one loop."""
    hub = Hub(default=TopicConfig(history_size=None))
    setup = await make_setup(hub)
    stream = await EventStream.open(setup.port, "/sse?topic=t&since=0")
    try:
        await stream.next_block()  # retry
        await stream.next_block()  # id: 0
        await publish_burst(hub, "t", 300)
        assert seqs(await read_items(stream, 300)) == list(range(1, 301))
    finally:
        await stream.close()
        await teardown(setup)


async def test_longpoll_burst_of_300_default_settings() -> None:
    hub = Hub(default=TopicConfig(history_size=None))
    setup = await make_setup(hub)
    try:
        poll = asyncio.ensure_future(get_json(setup.port, "/longpoll?topic=t&since=0"))
        await eventually(lambda: len(setup.transports.requests) == 1)
        await publish_burst(hub, "t", 300)
        answer = await poll
        assert seqs(answer["messages"]) == list(range(1, 101))
        assert answer["cursor"] == 100
    finally:
        await teardown(setup)


async def test_small_queues_lose_nothing_still_in_history(
    backend_name: str, request: pytest.FixtureRequest
) -> None:
    """A queue of 8 against bursts of 200, on memory and Redis: every message, in order."""
    hub = make_hub(backend_name, request, default=TopicConfig(queue_size=8, history_size=None))
    setup = await make_setup(hub)
    stream = await EventStream.open(setup.port, "/sse?topic=b&since=0")
    try:
        await stream.next_block()
        await stream.next_block()
        poll = asyncio.ensure_future(get_json(setup.port, "/longpoll?topic=b&since=0&limit=50"))
        await eventually(lambda: len(setup.transports.requests) == 2)
        await asyncio.gather(*(hub.publish("b", n) for n in range(200)))
        answer = await poll
        # With Redis the answer may go out with the reader's first delivery: a prefix.
        got = seqs(answer["messages"])
        assert got == list(range(1, len(got) + 1)) and 1 <= len(got) <= 50
        assert seqs(await read_items(stream, 200)) == list(range(1, 201))
    finally:
        await stream.close()
        await teardown(setup)


async def test_trimmed_while_behind_is_a_trimmed_gap() -> None:
    """What history no longer holds is announced, with history's reason."""
    hub = Hub(default=TopicConfig(queue_size=4, history_size=10))
    setup = await make_setup(hub)
    stream = await EventStream.open(setup.port, "/sse?topic=g&since=0")
    try:
        await stream.next_block()
        await stream.next_block()
        await publish_burst(hub, "g", 50)
        items = await read_items(stream, 11)
        assert items[0]["gap"] == {"since": 0, "first_available": 41, "reason": "trimmed"}
        assert [item["seq"] for item in items[1:]] == list(range(41, 51))
    finally:
        await stream.close()
        await teardown(setup)


async def test_redis_handing_over_a_backlog_after_a_restart(
    own_redis: Any, request: pytest.FixtureRequest
) -> None:
    """Redis restarts (with its data); its reader hands over hundreds at once: none lost."""
    server: RedisServer = own_redis(persistent=True)
    # The server's reader comes back slowly, so that 600 messages wait for it.
    backend = RedisBackend(server.url, prefix="r:", reconnect_delay=(1.0, 1.0))
    setup = await make_setup(Hub(backend), longpoll_timeout=10.0)
    publisher = Hub(RedisBackend(server.url, prefix="r:"))
    await publisher.start()
    stream = await EventStream.open(setup.port, "/sse?topic=o&since=0")
    try:
        await stream.next_block()
        await stream.next_block()
        await publish_burst(publisher, "o", 10)
        assert seqs(await read_items(stream, 10)) == list(range(1, 11))
        poll = asyncio.ensure_future(get_json(setup.port, "/longpoll?topic=o&since=10"))
        await eventually(lambda: len(setup.transports.requests) == 2)
        server.kill()
        server.start()
        sent = 10
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while sent < 610:
            assert loop.time() < deadline
            try:
                await publisher.publish("o", sent)
                sent += 1
            except HubUnavailable:
                await asyncio.sleep(0.01)  # the publisher's connection pool reconnects
        answer = await poll
        got = seqs(answer["messages"])
        assert got == list(range(11, 11 + len(got))) and 1 <= len(got) <= 100
        assert seqs(await read_items(stream, 600)) == list(range(11, 611))
    finally:
        await stream.close()
        await publisher.close()
        await teardown(setup)
