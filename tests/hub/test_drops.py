"""DropLog: the records of subscribers dropped as slow consumers, bounded, expiring, shared
through a real redis-server between hubs (processes) on the same Redis."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio

from fullduplex.hub import Drop, DropLog, Hub

from .conftest import RedisServer, redis_backend

SLOW = Drop("slow consumer", 1700000000.5, "websocket", code=1013, topic="ticker")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_drop_json_round_trip() -> None:
    assert SLOW.to_json() == {
        "reason": "slow consumer",
        "code": 1013,
        "topic": "ticker",
        "time": 1700000000.5,
        "transport": "websocket",
    }
    assert Drop.from_json(SLOW.to_json()) == SLOW
    sse = Drop("slow consumer", 1.0, "sse")
    assert sse.to_json() == {"reason": "slow consumer", "time": 1.0, "transport": "sse"}
    assert Drop.from_json(sse.to_json()) == sse


def test_ids_are_unguessable_and_url_safe() -> None:
    ids = {DropLog.new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 16 and i.replace("-", "").replace("_", "").isalnum() for i in ids)


async def test_a_record_is_given_once() -> None:
    log = DropLog()
    log.record("a", SLOW)
    assert await log.take("b") is None
    assert await log.take("a") == SLOW
    assert await log.take("a") is None
    assert (log.recorded, log.reported) == (1, 1)


async def test_bounded_oldest_first() -> None:
    log = DropLog(max_entries=3)
    for i in range(5):
        log.record(f"c{i}", SLOW)
    assert len(log) == 3
    assert await log.take("c0") is None and await log.take("c1") is None
    assert [await log.take(f"c{i}") for i in (2, 3, 4)] == [SLOW] * 3
    assert len(log) == 0


async def test_bounded_at_the_default_under_a_burst() -> None:
    log = DropLog()
    for i in range(log.max_entries + 500):
        log.record(f"c{i}", SLOW)
    assert len(log) == log.max_entries == 10_000
    assert await log.take("c0") is None
    assert await log.take(f"c{log.max_entries + 499}") == SLOW


async def test_records_expire() -> None:
    clock = Clock()
    log = DropLog(expiry=300.0, clock=clock)
    log.record("old", SLOW)
    clock.now += 200
    log.record("new", SLOW)
    clock.now += 150  # "old" is 350 s old, "new" 150 s
    assert len(log) == 1
    assert await log.take("old") is None
    assert await log.take("new") == SLOW


async def test_only_the_same_identity_is_told() -> None:
    log = DropLog()
    log.record("a", SLOW, owner="ann")
    assert await log.take("a", "bob") is None
    assert await log.take("a", "ann") is None  # forgotten once asked for: given at most once
    log.record("b", SLOW, owner="ann")
    assert await log.take("b") is None  # anonymous is not ann
    log.record("c", SLOW)
    assert await log.take("c", "ann") is None


async def test_max_entries_zero_keeps_nothing() -> None:
    log = DropLog(max_entries=0)
    log.record("a", SLOW)
    assert len(log) == 0 and await log.take("a") is None


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        DropLog(max_entries=-1)
    with pytest.raises(ValueError):
        DropLog(expiry=0)


async def test_memory_hubs_do_not_share() -> None:
    a, b = Hub(), Hub()
    await a.start()
    await b.start()
    try:
        log_a, log_b = DropLog(a), DropLog(b)
        log_a.record("x", SLOW)
        await log_a.close()
        assert await log_b.take("x") is None
        assert await log_a.take("x") == SLOW
    finally:
        await a.close()
        await b.close()


async def test_shared_between_processes_through_redis(redis_server: RedisServer) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    a = Hub(redis_backend(redis_server.url, prefix))
    b = Hub(redis_backend(redis_server.url, prefix))
    await a.start()
    await b.start()
    try:
        log_a, log_b = DropLog(a, expiry=30), DropLog(b, expiry=30)
        log_a.record("x", SLOW, owner="ann")
        log_a.record("y", SLOW)
        await log_a.close()  # the write task is done
        # Dropped by a, reconnected to b: b reads it from Redis, once.
        assert await log_b.take("x", "ann") == SLOW
        assert await log_b.take("x", "ann") is None
        assert await log_a.take("x", "ann") is None  # taken there: not given again here
        # Taken where it was made: the shared copy goes too.
        assert await log_a.take("y") == SLOW
        assert await log_b.take("y") is None
        # With a TTL: Redis forgets it without us.
        log_a.record("z", SLOW)
        await log_a.close()
        client = redis.asyncio.from_url(redis_server.url)
        try:
            ttl = await client.pttl(f"{prefix}n:drop:z")
        finally:
            await client.aclose()
        assert 0 < ttl <= 30_000
    finally:
        await a.close()
        await b.close()


async def test_redis_away_keeps_the_local_record(own_redis: object) -> None:
    server: RedisServer = own_redis()  # type: ignore[operator]
    hub = Hub(redis_backend(server.url, "t:", timeout=0.5, connect_timeout=0.5))
    await hub.start()
    try:
        server.kill()
        log = DropLog(hub)
        log.record("x", SLOW)
        await log.close()  # the write fails, logged; nothing raised
        assert await log.take("x") == SLOW  # told here all the same
        assert await log.take("nothing") is None  # Redis away: not told, no error
    finally:
        await hub.close()
