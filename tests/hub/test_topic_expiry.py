"""Topics are forgotten: idle expiry, the cap on live topics, and resuming across a drop."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import websockets

from fullduplex.hub import Gap, GapReason, Hub, MemoryBackend, Message, TooManyTopics, memory
from fullduplex.hub.memory import DEFAULT_MAX_TOPICS

from ..transports.client import request
from ..transports.conftest import make_setup, teardown


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_publishing_to_fresh_topics_stays_bounded() -> None:
    backend = MemoryBackend()
    async with Hub(backend) as hub:
        deadline = time.monotonic() + 20
        for i in range(200_000):
            await hub.publish(f"inbox.{i}", i)
            if i % 10_000 == 0:
                assert time.monotonic() < deadline
        assert len(backend) == DEFAULT_MAX_TOPICS
        assert backend.expired == 200_000 - DEFAULT_MAX_TOPICS
        # Made after drops, new topics number on from their bucket's floor (here 1).
        assert await hub.last_seq("inbox.199999") in (1, 2)  # 2 unless its bucket was empty
        assert await hub.last_seq("inbox.0") >= 1  # dropped, its number kept in a floor
        assert (await hub.publish("inbox.0", 0)).seq >= 2


async def test_memory_of_fresh_topics_is_bounded() -> None:
    import tracemalloc

    backend = MemoryBackend(max_topics=1_000)
    tracemalloc.start()
    try:
        async with Hub(backend) as hub:
            for i in range(2_000):  # the cap is reached: every topic kept is traced
                await hub.publish(f"t.{i}", i)
            before = tracemalloc.get_traced_memory()[0]
            for i in range(2_000, 22_000):
                await hub.publish(f"t.{i}", i)
            grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(backend) == 1_000
    # 20,000 more topics of ~700 B would be 14 MB.
    assert grown < 100_000, grown


async def test_idle_topics_expire_after_the_ttl() -> None:
    clock = Clock()
    backend = MemoryBackend(clock=clock, topic_idle_ttl=60)
    async with Hub(backend) as hub:
        await hub.publish("old", 1)
        listened = hub.subscribe("kept")
        await hub.publish("kept", 1)
        clock.now += 59
        await hub.publish("fresh", 1)
        assert len(backend) == 3
        clock.now += 2
        await hub.publish("fresh", 2)  # the sweep runs with publishes: "old" goes
        assert backend.expired == 1 and len(backend) == 2  # "kept" is listened: kept
        listened.close()
        clock.now += 59
        await hub.publish("fresh", 3)
        assert len(backend) == 2  # "kept" idle for 59 s only
        clock.now += 2
        await hub.publish("fresh", 4)
        assert backend.expired == 2 and len(backend) == 1


async def test_the_sweep_is_amortised() -> None:
    clock = Clock()
    backend = MemoryBackend(clock=clock, topic_idle_ttl=1)
    async with Hub(backend) as hub:
        for i in range(100):
            await hub.publish(f"t.{i}", i)
        clock.now += 2
        await hub.publish("t.0", 0)  # touched again: not expired
        assert backend.expired == 2  # two looked at per sweep, not all 99
        await hub.publish("t.0", 0)
        assert backend.expired == 2  # publishes to a topic kept sweep once a second
        for i in range(20):
            await hub.publish(f"new.{i}", 0)  # each new topic sweeps
        assert backend.expired == 42
        for _ in range(40):  # 77 left to drop, two per second
            clock.now += 1
            await hub.publish("t.0", 0)
        assert backend.expired == 99 + 20 and len(backend) == 1


async def test_resuming_across_expiry_is_exact_or_a_gap() -> None:
    clock = Clock()
    backend = MemoryBackend(clock=clock, topic_idle_ttl=10)
    async with Hub(backend) as hub:
        for i in range(3):
            old = await hub.publish("room", i)
        clock.now += 11
        await hub.publish("other", 0)
        assert backend.expired == 1 and len(backend) == 1
        assert await hub.last_seq("room") == 3  # the number lives on in its floor
        gap, messages = await hub.history("room", 1, epoch=old.epoch)
        assert gap == Gap("room", 1, 4) and messages == []
        for i in range(5):
            new = await hub.publish("room", {"new": i})
        assert new.seq == 8 and new.epoch == old.epoch  # numbers never go back
        # A cursor that missed old messages: a gap, never the new ones as if they followed,
        # with or without its epoch (the browser client sends none).
        for epoch in (None, old.epoch):
            gap, messages = await hub.history("room", 2, epoch=epoch)
            assert gap == Gap("room", 2, 4, GapReason.TRIMMED)
            assert [m.seq for m in messages] == [4, 5, 6, 7, 8]
        subscription = hub.subscribe("room", 2)
        items = [await asyncio.wait_for(subscription.get(), 5) for _ in range(6)]
        assert items[0] == Gap("room", 2, 4)
        assert [m.data for m in items[1:] if isinstance(m, Message)] == [
            {"new": i} for i in range(5)
        ]
        # A cursor that had everything of the old incarnation resumes exactly.
        gap, messages = await hub.history("room", 3)
        assert gap is None and [m.seq for m in messages] == [4, 5, 6, 7, 8]
        # One above anything ever published is still a reset.
        gap, _ = await hub.history("room", 9)
        assert gap is not None and gap.reason is GapReason.RESET


async def test_a_shared_floor_gives_a_new_topic_a_gap_not_old_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "FLOOR_BUCKETS", 1)
    clock = Clock()
    backend = MemoryBackend(clock=clock, topic_idle_ttl=10)
    async with Hub(backend) as hub:
        for i in range(4):
            await hub.publish("a", i)
        await hub.publish("b", 0)
        clock.now += 11
        # "a" dropped: every name not kept now numbers on from 4.
        assert (await hub.publish("b", 1)).seq == 2 and backend.expired == 1
        assert (await hub.publish("c", 0)).seq == 5
        gap, messages = await hub.history("c", 0)
        assert gap == Gap("c", 0, 5) and [m.seq for m in messages] == [5]


async def test_the_cap_drops_idle_topics_then_refuses() -> None:
    backend = MemoryBackend(max_topics=2)
    async with Hub(backend) as hub:
        await hub.publish("idle", 1)
        a = hub.subscribe("a")
        assert len(backend) == 2
        await hub.publish("b", 1)  # "idle" makes room, though recent
        assert backend.expired == 1 and await hub.last_seq("b") == 1
        b = hub.subscribe("b")
        with pytest.raises(TooManyTopics):
            await hub.publish("c", 1)
        with pytest.raises(TooManyTopics):
            hub.subscribe("c")
        assert hub.topics == ["a", "b"]
        await hub.publish("a", 1)  # topics kept still work
        assert (await asyncio.wait_for(a.get(), 5)).seq == 1  # type: ignore[union-attr]
        b.close()
        await hub.publish("c", 1)  # "b" has no listener any more: it makes room
        assert backend.expired == 2 and hub.topics == ["a"]


async def test_a_restarted_hub_does_not_pin_topics() -> None:
    backend = MemoryBackend(max_topics=1)
    async with Hub(backend) as hub:
        hub.subscribe("a")
    async with Hub(backend) as hub:
        await hub.publish("b", 1)
        assert backend.expired == 1 and len(backend) == 1


async def test_the_cap_over_http_and_websocket() -> None:
    setup = await make_setup(Hub(MemoryBackend(max_topics=1)))
    try:
        async with websockets.connect(setup.ws_url()) as ws:
            await ws.send(json.dumps({"op": "subscribe", "topic": "chat"}))
            # Requests are answered in order: once acknowledged, the subscription is live.
            await ws.send(json.dumps({"op": "publish", "topic": "chat", "data": 1, "id": 1}))
            replies = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
            assert sorted(r.get("seq") for r in replies) == [1, 1]
            assert len(setup.hub.backend) == 1  # type: ignore[arg-type]

            body = json.dumps({"topic": "open.x", "data": 1}).encode()
            answer = await request(
                setup.port,
                "POST",
                "/publish",
                body=body,
                headers=[("Content-Type", "application/json")],
            )
            assert answer.status == 503 and b"too many topics" in answer.body

            await ws.send(json.dumps({"op": "subscribe", "topic": "other", "id": 7}))
            reply: Any = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply == {
                "error": "too many topics",
                "op": "subscribe",
                "id": 7,
                "topic": "other",
            }
            await ws.send(json.dumps({"op": "publish", "topic": "open.y", "data": 1, "id": 8}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["error"] == "too many topics" and reply["id"] == 8
            # The connection goes on: the topic it has still works.
            await ws.send(json.dumps({"op": "publish", "topic": "chat", "data": 2, "id": 9}))
            replies = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
            assert {"ack": 9, "topic": "chat", "seq": 2} in [
                {k: r.get(k) for k in ("ack", "topic", "seq")} for r in replies
            ]
            # Event streams and long polls opening a new topic: 503 too.
            for target in ("/sse?topic=other", "/longpoll?topic=other&since=0"):
                answer = await request(setup.port, "GET", target)
                assert answer.status == 503 and b"too many topics" in answer.body, target
    finally:
        await teardown(setup)
