"""The Redis backend against real redis-servers: sharing, outages, data loss."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import textwrap
import uuid

import pytest

from fullduplex.hub import Gap, GapReason, Hub, HubUnavailable, Message, RedisBackend, TopicConfig

from .conftest import RedisServer, eventually, redis_backend

PUBLISHER = textwrap.dedent(
    """
    import asyncio, json, sys
    from fullduplex.hub import Hub, RedisBackend

    async def main(url, prefix, topic, count):
        async with Hub(RedisBackend(url, prefix=prefix)) as hub:
            seqs = [(await hub.publish(topic, {"from": "child", "n": n})).seq
                    for n in range(count)]
        print(json.dumps(seqs))

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
    """
)


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


async def test_two_processes_share_sequence_numbers(redis_server: RedisServer) -> None:
    topic, count, keys = "shared", 150, prefix()
    # A queue for every message: this subscriber reads only at the end.
    big = TopicConfig(queue_size=1000)
    async with (
        Hub(redis_backend(redis_server.url, keys), default=big) as hub,
        Hub(redis_backend(redis_server.url, keys)) as other,
    ):
        sub = hub.subscribe(topic)
        await sub.wait_started()
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PUBLISHER,
            redis_server.url,
            keys,
            topic,
            str(count),
            stdout=asyncio.subprocess.PIPE,
        )
        mine = [(await other.publish(topic, {"from": "parent", "n": n})).seq for n in range(count)]
        async with asyncio.timeout(20):
            out, _ = await child.communicate()
        assert child.returncode == 0
        theirs = json.loads(out)
        # Each publisher sees its own sequence numbers increase; together they are dense.
        assert mine == sorted(mine) and theirs == sorted(theirs)
        assert sorted(mine + theirs) == list(range(1, 2 * count + 1))
        assert await hub.last_seq(topic) == 2 * count
        got: list[Message | Gap] = []
        async with asyncio.timeout(10):
            while len(got) < 2 * count:
                got.extend(await sub.wait(None))
        assert [m.seq for m in got if isinstance(m, Message)] == list(range(1, 2 * count + 1))
        by_seq = {m.seq: m.data["from"] for m in got if isinstance(m, Message)}
        assert {s for s, who in by_seq.items() if who == "child"} == set(theirs)


async def test_new_topic_is_read_at_once_while_xread_blocks(redis_server: RedisServer) -> None:
    # A long BLOCK: a second topic must not wait for the first XREAD to time out.
    async with Hub(redis_backend(redis_server.url, prefix(), block=30.0)) as hub:
        first = hub.subscribe("a")
        await first.wait_started()
        await asyncio.sleep(0.05)  # the reader is now blocked in XREAD on "a"
        second = hub.subscribe("b")
        await second.wait_started()
        await hub.publish("b", 1)
        async with asyncio.timeout(2):
            assert [m.seq for m in await second.wait(None) if isinstance(m, Message)] == [1]


async def test_unavailable_at_start_and_on_publish(own_redis: type[RedisServer]) -> None:
    server = own_redis()
    hub = Hub(redis_backend(server.url, prefix()))
    await hub.start()
    server.kill()
    with pytest.raises(HubUnavailable):
        await hub.publish("t", 1)
    with pytest.raises(HubUnavailable):
        await hub.history("t")
    await hub.close()
    with pytest.raises(HubUnavailable):
        await Hub(RedisBackend(server.url)).start()


async def test_killed_and_restarted_under_load(
    own_redis: type[RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL Redis (with AOF, fsync always) while publishing; subscribers lose nothing."""
    caplog.set_level(logging.INFO, logger="fullduplex.hub")
    server = own_redis(persistent=True)
    keys, topic, target = prefix(), "load", 300
    big = TopicConfig(queue_size=1000)  # these subscribers read only at the end
    async with (
        Hub(redis_backend(server.url, keys), default=big) as hub,
        Hub(redis_backend(server.url, keys)) as publisher,
    ):
        queued = hub.subscribe(topic)
        got: list[Message | Gap] = []
        called = hub.subscribe(topic, on_message=got.append)
        await queued.wait_started()
        await called.wait_started()
        acknowledged: dict[int, int] = {}
        failures = 0

        async def publish() -> None:
            # Decided behaviour: publish raises HubUnavailable while Redis is away; the
            # application retries (here after 10 ms) and may publish twice, under two seqs.
            nonlocal failures
            n = 0
            while len(acknowledged) < target:
                try:
                    acknowledged[(await publisher.publish(topic, n)).seq] = n
                    n += 1
                except HubUnavailable:
                    failures += 1
                    await asyncio.sleep(0.01)

        task = asyncio.create_task(publish())
        await eventually(lambda: len(acknowledged) >= 100)
        server.kill()
        await eventually(lambda: failures >= 3)
        # Resubscribing while Redis is down waits for it, then replays.
        resumed = hub.subscribe(topic, since=50)
        await asyncio.sleep(0.3)
        server.start()
        async with asyncio.timeout(15):
            await task
        last = max(acknowledged)
        queued_got: list[Message | Gap] = []
        resumed_got: list[Message | Gap] = []
        async with asyncio.timeout(10):
            while not queued_got or queued_got[-1].seq < last:  # type: ignore[union-attr]
                queued_got.extend(await queued.wait(None))
            while not resumed_got or resumed_got[-1].seq < last:  # type: ignore[union-attr]
                resumed_got.extend(await resumed.wait(None))
        await eventually(lambda: called.cursor == last)
        for items, first in ((queued_got, 1), (got, 1), (resumed_got, 51)):
            assert all(isinstance(m, Message) for m in items)
            assert [m.seq for m in items] == list(range(first, last + 1))  # type: ignore[union-attr]
        data = {m.seq: m.data for m in queued_got if isinstance(m, Message)}
        assert all(data[seq] == n for seq, n in acknowledged.items())
    assert any("unavailable" in r.message for r in caplog.records if r.levelno == logging.WARNING)
    assert any("is back" in r.message for r in caplog.records)


async def test_data_lost_by_redis_is_a_reset_gap(own_redis: type[RedisServer]) -> None:
    server = own_redis()  # no persistence: a restart loses everything
    keys = prefix()
    async with Hub(redis_backend(server.url, keys)) as hub:
        sub = hub.subscribe("t")
        await sub.wait_started()
        for n in range(20):
            await hub.publish("t", n)
        await eventually(lambda: sub.queued == 20)
        server.kill()
        server.start()
        await eventually(lambda: sub.queued == 21)
        items = sub.get_nowait()
        assert items[-1] == Gap("t", 20, 1, GapReason.RESET)
        await hub.publish("t", "after")
        async with asyncio.timeout(5):
            item = await sub.get()
        assert isinstance(item, Message) and (item.seq, item.data) == (1, "after")
        # A client resuming from before the loss is told too.
        gap, messages = await hub.history("t", 20)
        assert gap == Gap("t", 20, 1, GapReason.RESET)
        assert [m.seq for m in messages] == [1]


async def test_data_lost_and_renumbered_past_the_cursor_is_a_reset(
    own_redis: type[RedisServer],
) -> None:
    """The new numbering passes the cursor before the reader is back: the epoch tells."""
    server = own_redis()
    keys = prefix()
    reader = redis_backend(server.url, keys, reconnect_delay=(2.0, 2.0))
    async with Hub(reader) as hub, Hub(redis_backend(server.url, keys)) as publisher:
        sub = hub.subscribe("t")
        await sub.wait_started()
        for n in range(5):
            await publisher.publish("t", n)
        await eventually(lambda: sub.queued == 5)
        old = sub.get_nowait()[-1]
        assert isinstance(old, Message) and old.epoch
        server.kill()
        server.start()
        for n in range(8):  # 8 > the cursor, 5: numbers alone can't tell
            while True:
                try:
                    await publisher.publish("t", f"new {n}")
                    break
                except HubUnavailable:
                    await asyncio.sleep(0.01)
        await eventually(lambda: sub.queued == 9, timeout=10)
        items = sub.get_nowait()
        reset = items[0]
        assert reset == Gap("t", 5, 1, GapReason.RESET)
        assert isinstance(reset, Gap) and reset.epoch and reset.epoch != old.epoch
        assert [(m.seq, m.data) for m in items[1:]] == [(n + 1, f"new {n}") for n in range(8)]
        assert all(isinstance(m, Message) and m.epoch == reset.epoch for m in items[1:])
        # A client resuming with the old epoch is told; with the new one it is not.
        gap, messages = await hub.history("t", 5, epoch=old.epoch)
        assert gap == Gap("t", 5, 1, GapReason.RESET) and len(messages) == 8
        gap, messages = await hub.history("t", 5, epoch=reset.epoch)
        assert gap is None and [m.seq for m in messages] == [6, 7, 8]


async def test_history_is_shared(redis_server: RedisServer) -> None:
    keys = prefix()
    async with (
        Hub(redis_backend(redis_server.url, keys)) as one,
        Hub(redis_backend(redis_server.url, keys)) as two,
    ):
        for n in range(5):
            await one.publish("t", n)
        gap, messages = await two.history("t", 2)
        assert gap is None
        assert [(m.seq, m.data) for m in messages] == [(3, 2), (4, 3), (5, 4)]
        assert (await two.publish("t", 5)).seq == 6


async def test_numbers_never_reused_after_the_newest_entries_are_deleted_or_trimmed(
    redis_server: RedisServer,
) -> None:
    # The publish script reads the last number from the newest entry; an operator's XDEL of
    # that entry, or a history of size 0 (the stream emptied by every trim), must not make it
    # give a number twice: Redis' own last id decides then.
    import redis.asyncio as aioredis

    keys = prefix()
    backend = redis_backend(redis_server.url, keys)
    async with Hub(backend) as hub:
        for n in range(3):
            await hub.publish("t", n)
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            assert await client.xdel(backend.key("t"), "3-0", "2-0") == 2
            assert (await hub.publish("t", 3)).seq == 4
            hub.configure("none", TopicConfig(history_size=0))
            assert [(await hub.publish("none", n)).seq for n in range(3)] == [1, 2, 3]
            assert await client.xlen(backend.key("none")) == 0
        finally:
            await client.aclose()
        gap, messages = await hub.history("t", 0)
        assert gap is None
        assert [m.seq for m in messages] == [1, 4]


async def test_a_publish_key_is_answered_by_any_hub_until_it_expires(
    redis_server: RedisServer,
) -> None:
    # Two hubs on one Redis stand for two worker processes: a client's retry that lands on
    # the other one is answered with the first publish's message, not published again.
    keys = prefix()
    async with (
        Hub(redis_backend(redis_server.url, keys, publish_key_ttl=0.5)) as one,
        Hub(redis_backend(redis_server.url, keys)) as two,
        Hub(redis_backend(redis_server.url, keys, publish_key_ttl=None)) as keyless,
    ):
        first = await one.publish("t", "a", key="k1")
        again = await two.publish("t", "a", key="k1")
        assert (again.seq, again.time, again.epoch) == (first.seq, first.time, first.epoch)
        assert (await two.publish("u", "a", key="k1")).seq == 1  # keys are per topic
        assert (await keyless.publish("t", "c", key="k1")).seq == 2  # keeps no key
        assert (await one.publish("t", "d")).seq == 3  # no key: always published
        _, messages = await two.history("t", 0)
        assert [m.data for m in messages] == ["a", "c", "d"]
        await asyncio.sleep(0.6)  # one's key TTL passed: the same key publishes again
        assert (await one.publish("t", "e", key="k1")).seq == 4
    with pytest.raises(ValueError, match="publish_key_ttl"):
        redis_backend(redis_server.url, keys, publish_key_ttl=-1)


async def test_more_concurrent_commands_than_connections_wait_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    backend = redis_backend(redis_server.url, prefix(), max_connections=4)
    async with Hub(backend) as hub:
        published = await asyncio.gather(*(hub.publish("burst", n) for n in range(200)))
        assert sorted(m.seq for m in published) == list(range(1, 201))
        histories = await asyncio.gather(*(hub.history("burst", since=190) for _ in range(200)))
        assert all([m.seq for m in items] == list(range(191, 201)) for _, items in histories)


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        RedisBackend("redis://127.0.0.1:1/0", max_connections=0)
