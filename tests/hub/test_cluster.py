"""The Redis Cluster backend against a real three-master cluster (tests/redis_cluster.py).

The hub's semantics (sequence numbers, history, resume by cursor, gaps by count and age, the
slow-consumer policies) run on the cluster too, in test_hub.py (``make_hub``'s ``cluster``
parameter). Here: the URL, placement on the shards, hubs sharing topics across shards, a
resharding under a subscriber, and failovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import MovedError

from fullduplex.hub import Gap, GapReason, Hub, HubUnavailable, Message, TopicConfig
from fullduplex.hub.cluster import RedisClusterBackend, parse_cluster_url

from ..redis_cluster import Node, RedisCluster
from .conftest import cluster_backend, eventually

BIG = TopicConfig(queue_size=10_000)


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


def spread(backend: RedisClusterBackend, cluster: RedisCluster) -> list[str]:
    """One fresh topic on each master."""
    topics: dict[str, str] = {}
    while len(topics) < len(cluster.masters()):
        name = f"t-{uuid.uuid4().hex[:8]}"
        topics.setdefault(backend.node(name), name)
    return list(topics.values())


def messages(items: list[Message | Gap]) -> list[Message]:
    return [item for item in items if isinstance(item, Message)]


async def collect(sub: Any, until: Any, timeout: float = 10.0) -> list[Message | Gap]:
    """Read ``sub`` until ``until(items)`` holds."""
    items: list[Message | Gap] = []
    async with asyncio.timeout(timeout):
        while not until(items):
            items.extend(await sub.wait(None))
    return items


# The URL


def test_cluster_urls() -> None:
    parsed = parse_cluster_url("redis+cluster://127.0.0.1:7000,[::1]:7001,node-3:7002/0")
    assert parsed.nodes == (("127.0.0.1", 7000), ("::1", 7001), ("node-3", 7002))
    assert parsed.wait_replicas == 0
    parsed = parse_cluster_url(
        "redis+cluster://app:s%40cret@h:7000?wait_replicas=1&wait_timeout=0.25"
    )
    assert (parsed.username, parsed.password) == ("app", "s@cret")
    assert (parsed.wait_replicas, parsed.wait_timeout) == (1, 0.25)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://127.0.0.1:7000", "starts with redis+cluster://"),
        ("redis+cluster://", "host:port"),
        ("redis+cluster://127.0.0.1", "host:port"),
        ("redis+cluster://127.0.0.1:7000,:7001", "host:port"),
        ("redis+cluster://127.0.0.1:99999", "host:port"),
        ("redis+cluster://127.0.0.1:7000/3", "database 0 only"),
        ("redis+cluster://127.0.0.1:7000?wait=1", "unknown option 'wait'"),
        ("redis+cluster://127.0.0.1:7000?wait_replicas=x", "wait_replicas must be an integer"),
    ],
)
def test_bad_cluster_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_cluster_url(url)
    if url.startswith("redis+cluster"):
        with pytest.raises(ValueError, match=re.escape(says)):
            Hub(url)


def test_prefix_and_wait_options_are_checked() -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisClusterBackend("redis+cluster://h:1", prefix="{app}:")
    with pytest.raises(ValueError, match="wait_timeout"):
        RedisClusterBackend("redis+cluster://h:1?wait_replicas=1&wait_timeout=0")
    assert isinstance(Hub("redis+cluster://h:1").backend, RedisClusterBackend)


async def test_unreachable_cluster_fails_at_start() -> None:
    hub = Hub(RedisClusterBackend("redis+cluster://127.0.0.1:1", connect_timeout=1.0))
    with pytest.raises(HubUnavailable, match="no node of the Redis Cluster answers"):
        await hub.start()


# Placement


async def test_topics_are_placed_by_hash_tag_on_every_shard(redis_cluster: RedisCluster) -> None:
    async with Hub(cluster_backend(redis_cluster.url, prefix())) as hub:
        backend = hub.backend
        assert isinstance(backend, RedisClusterBackend)
        topics = spread(backend, redis_cluster)
        assert len({backend.node(name) for name in topics}) == 3
        for name in topics:
            await hub.publish(name, {"on": name})
        for name in topics:
            keys = [backend.key(name), backend.epoch_key(name)]
            assert len({key_slot(key.encode()) for key in [*keys, backend.channel(name)]}) == 1
            owner = redis_cluster.node(backend.node(name))
            with owner.client() as client:
                assert client.exists(*keys) == 2
            for node in redis_cluster.masters():
                if node is not owner:  # the others send clients to the owner
                    with node.client() as client, pytest.raises(MovedError) as moved:
                        client.exists(*keys)
                    assert f"{moved.value.host}:{moved.value.port}" == owner.address


@pytest.mark.parametrize("name", ["a}b", "}x", "{y}", "{}", "tag{a}b:c"])
async def test_topics_with_braces(redis_cluster: RedisCluster, name: str) -> None:
    keys = prefix()
    async with (
        Hub(cluster_backend(redis_cluster.url, keys)) as hub,
        Hub(cluster_backend(redis_cluster.url, keys)) as other,
    ):
        backend = hub.backend
        assert isinstance(backend, RedisClusterBackend)
        slots = {key_slot(k.encode()) for k in (backend.key(name), backend.channel(name))}
        assert len(slots) == 1
        sub = other.subscribe(name)
        await sub.wait_started()
        sent = [await hub.publish(name, n) for n in range(3)]
        got = await collect(sub, lambda items: len(items) >= 3)
        assert got == sent
        assert (await other.history(name, 1))[1] == sent[1:]


# Hubs sharing topics


async def test_hubs_share_topics_on_every_shard(redis_cluster: RedisCluster) -> None:
    keys, count = prefix(), 40
    async with (
        Hub(cluster_backend(redis_cluster.url, keys)) as publisher,
        Hub(cluster_backend(redis_cluster.url, keys), default=BIG) as subscriber,
    ):
        assert isinstance(publisher.backend, RedisClusterBackend)
        topics = spread(publisher.backend, redis_cluster)
        subs = {name: subscriber.subscribe(name) for name in topics}
        for sub in subs.values():
            await sub.wait_started()
        sent: dict[str, list[Message]] = {name: [] for name in topics}
        for n in range(count):
            for name in topics:  # interleaved over the three shards
                sent[name].append(await publisher.publish(name, {"n": n}))
        for name, sub in subs.items():
            assert [m.seq for m in sent[name]] == list(range(1, count + 1))
            got = await collect(sub, lambda items: len(items) >= count)
            assert got == sent[name]
            # Resume by cursor on the other hub, from history on that topic's shard.
            resumed = subscriber.subscribe(name, since=count // 2)
            assert await collect(resumed, lambda i: len(i) >= count // 2) == sent[name][20:]
        assert subscriber.backend.available


async def test_a_publish_key_is_answered_by_any_hub_on_every_shard(
    redis_cluster: RedisCluster,
) -> None:
    keys = prefix()
    async with (
        Hub(cluster_backend(redis_cluster.url, keys)) as one,
        Hub(cluster_backend(redis_cluster.url, keys)) as two,
    ):
        assert isinstance(one.backend, RedisClusterBackend)
        for name in spread(one.backend, redis_cluster):
            sub = two.subscribe(name)
            await sub.wait_started()
            first = await one.publish(name, "a", key="k1")
            again = await two.publish(name, "a", key="k1")  # a retry on another process
            assert (again.seq, again.time, again.epoch) == (first.seq, first.time, first.epoch)
            other = await two.publish(name, "b", key="k2")
            assert other.seq == first.seq + 1
            got = await collect(sub, lambda items: len(items) >= 2)
            assert [(m.seq, m.data) for m in got] == [(first.seq, "a"), (other.seq, "b")]
            sub.close()


async def test_many_topics_of_one_shard_at_once(redis_cluster: RedisCluster) -> None:
    """One hub subscribes to 20 topics of one master at once, and again after Redis drops
    its pub/sub connection: each SSUBSCRIBE names one slot's channel (CROSSSLOT else)."""
    keys = prefix()
    async with (
        Hub(cluster_backend(redis_cluster.url, keys)) as publisher,
        Hub(cluster_backend(redis_cluster.url, keys), default=BIG) as subscriber,
    ):
        backend = subscriber.backend
        assert isinstance(backend, RedisClusterBackend)
        first = f"t-{uuid.uuid4().hex[:8]}"
        topics = [first]
        while len(topics) < 20:
            name = f"t-{uuid.uuid4().hex[:8]}"
            if backend.node(name) == backend.node(first):
                topics.append(name)
        subs = [subscriber.subscribe(name) for name in topics]
        async with asyncio.timeout(10):
            for sub in subs:
                await sub.wait_started()
        sent = [await publisher.publish(name, "one") for name in topics]
        for sub, message in zip(subs, sent, strict=True):
            assert await collect(sub, lambda items: len(items) >= 1) == [message]
        reconnects = backend.reconnects
        with redis_cluster.node(backend.node(first)).client() as client:
            assert client.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        await eventually(lambda: backend.reconnects > reconnects and backend.available)
        sent = [await publisher.publish(name, "two") for name in topics]
        for sub, message in zip(subs, sent, strict=True):
            assert await collect(sub, lambda items: len(items) >= 1) == [message]


async def test_slot_moved_to_another_master_under_a_subscriber(
    redis_cluster: RedisCluster,
) -> None:
    """Resharding: a publisher follows ASK and MOVED, a subscriber follows the slot."""
    keys = prefix()
    async with (
        Hub(cluster_backend(redis_cluster.url, keys)) as publisher,
        Hub(cluster_backend(redis_cluster.url, keys), default=BIG) as subscriber,
    ):
        backend = publisher.backend
        assert isinstance(backend, RedisClusterBackend)
        old = f"t-{uuid.uuid4().hex[:8]}"
        slot = key_slot(backend.key(old).encode())
        new = old + "-n"
        while key_slot(backend.key(new).encode()) != slot:  # another topic of the same slot
            new = f"t-{uuid.uuid4().hex[:8]}"
        source = redis_cluster.master_of(backend.key(old))
        target = next(node for node in redis_cluster.masters() if node is not source)
        subs = {name: subscriber.subscribe(name) for name in (old, new)}
        for sub in subs.values():
            await sub.wait_started()
        await publisher.publish(old, 1)
        source_id, target_id = redis_cluster.node_id(source), redis_cluster.node_id(target)
        with target.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        with source.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        # Migrating: the old topic's keys are still on the source, which runs its publish.
        await publisher.publish(old, 2)
        # The new topic's keys are on neither side: TRYAGAIN, tried again until the move ends.
        first_of_new = asyncio.create_task(publisher.publish(new, 1))
        with source.client() as client:
            moving = client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            assert sorted(moving) == sorted(
                [backend.key(old).encode(), backend.epoch_key(old).encode()]
            )
            client.execute_command(
                "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *moving
            )
        # The old topic's keys left the source: it answers ASK, the script runs on the target.
        await publisher.publish(old, 3)
        for node in redis_cluster.masters():
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        assert (await first_of_new).seq == 1
        # The publisher's map said source: MOVED sent it to the target, where it stays.
        await publisher.publish(old, 4)
        await publisher.publish(new, 2)
        assert backend.node(old) == target.address
        wanted = {old: 4, new: 2}
        got = {
            name: await collect(sub, lambda i, name=name: len(i) >= wanted[name])  # type: ignore[misc]
            for name, sub in subs.items()
        }
        assert [(m.seq, m.data) for m in messages(got[old])] == [(n, n) for n in (1, 2, 3, 4)]
        assert [(m.seq, m.data) for m in messages(got[new])] == [(1, 1), (2, 2)]
        assert got[old] == messages(got[old]) and got[new] == messages(got[new])  # no gaps


# Failover: a master killed, its replica promoted


async def until_ok(operation: Any, timeout: float = 15.0) -> Any:
    """Run ``operation()`` until the cluster answers (publishes fail while a master is away)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await operation()
            except HubUnavailable:
                await asyncio.sleep(0.01)


def fresh_topic(backend: Any, cluster: RedisCluster) -> tuple[str, Node, Node]:
    """A new topic, its master and that master's replica."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    master = cluster.node(backend.node(name))
    return name, master, cluster.replica_of(master)


@contextlib.contextmanager
def restored(cluster: RedisCluster, node: Node) -> Any:
    """Whatever happens to ``node`` (killed), bring it back as a replica at the end."""
    try:
        yield
    finally:
        if node.process is None:
            cluster.restart(node)


async def test_master_killed_while_publishing(redis_cluster: RedisCluster) -> None:
    """Redis promotes the replica after ~2 s (cluster-node-timeout 1 s). Replication is
    asynchronous: what holds is that the subscriber on another hub gets every acknowledged
    message once and in order, or one reset and then the topic as the new master has it."""
    keys = prefix()
    async with (
        Hub(cluster_backend(redis_cluster.url, keys)) as publisher,
        Hub(cluster_backend(redis_cluster.url, keys), default=BIG) as subscriber,
    ):
        name, master, replica = fresh_topic(publisher.backend, redis_cluster)
        with restored(redis_cluster, master):
            sub = subscriber.subscribe(name)
            await sub.wait_started()
            acked: list[Message] = []
            refused, n = 0, 0
            loop = asyncio.get_running_loop()
            killed_at = back_at = 0.0
            async with asyncio.timeout(20):
                while len(acked) < 150:
                    try:
                        acked.append(await publisher.publish(name, {"n": n}))
                        if killed_at and not back_at:
                            back_at = loop.time()
                    except HubUnavailable:
                        refused += 1  # not acknowledged: may or may not have been kept
                        await asyncio.sleep(0.005)
                    n += 1
                    if len(acked) == 50 and not killed_at:
                        master.kill()
                        killed_at = loop.time()
            assert refused > 0 and 0.5 < back_at - killed_at < 10
            redis_cluster.wait_master(replica)
            assert redis_cluster.master_of(publisher.backend.key(name)) is replica
            last = acked[-1]
            items = await collect(sub, lambda items: last in items)
            _, history = await subscriber.history(name)
            resets = [item for item in items if isinstance(item, Gap)]
            if not resets:
                # Nothing acknowledged was lost: every message once, in order, no hole.
                got = messages(items)
                assert [m.seq for m in got] == list(range(1, last.seq + 1))
                assert all(message in got for message in acked)
                assert got == history
            else:
                # Some were lost with the master: one reset, then the topic as it is now.
                assert len(resets) == 1 and resets[0].reason is GapReason.RESET
                assert items[items.index(resets[0]) + 1 :] == history
                assert items[: items.index(resets[0])] == messages(items[: items.index(resets[0])])


async def test_writes_the_replica_never_got_are_one_reset(redis_cluster: RedisCluster) -> None:
    """Deterministic loss: the replica is frozen and cut off while the master acknowledges
    three messages, the master is killed, the replica takes over and numbers new messages
    over the lost ones before the subscriber's hub is back. Its reader tells the entry at its
    cursor is not the one it delivered: one reset."""
    keys = prefix()
    slow = cluster_backend(redis_cluster.url, keys, reconnect_delay=(2.0, 2.0))
    async with (
        Hub(cluster_backend(redis_cluster.url, keys)) as publisher,
        Hub(slow, default=BIG) as subscriber,
    ):
        name, master, replica = fresh_topic(publisher.backend, redis_cluster)
        with restored(redis_cluster, master):
            sub = subscriber.subscribe(name)
            await sub.wait_started()
            kept = [await publisher.publish(name, {"kept": n}) for n in range(5)]
            redis_cluster.wait_replicated(master)
            redis_cluster.pause(replica)
            try:
                redis_cluster.cut_replication(master)
                lost = [await publisher.publish(name, {"lost": n}) for n in range(3)]
                assert await collect(sub, lambda items: len(items) >= 8) == kept + lost
                master.kill()
            finally:
                redis_cluster.resume(replica)
            redis_cluster.takeover(replica)
            new = [
                await until_ok(lambda n=n: publisher.publish(name, {"new": n})) for n in range(6)
            ]
            assert [m.seq for m in new] == list(range(6, 12))  # 6, 7, 8 again
            assert not slow.available  # its reader waits 1-2 s before it reconnects
            items = await collect(sub, lambda items: len(items) >= 12)
            assert items[0] == Gap(name, 8, 1, GapReason.RESET)
            assert items[1:] == kept + new == (await subscriber.history(name))[1]
            assert len(items) == 12
            # A bare cursor (seq and epoch, as a client resumes) cannot tell: the documented
            # limit. The epoch did not change: the topic was not lost, only its tail.
            gap, after = await publisher.history(name, 8, epoch=lost[-1].epoch)
            assert gap is None and after == new[3:]


async def test_wait_replicas_acknowledges_only_what_a_replica_has(
    redis_cluster: RedisCluster,
) -> None:
    keys = prefix()
    url = f"{redis_cluster.url}?wait_replicas=1&wait_timeout=0.2"
    async with (
        Hub(RedisClusterBackend(url, prefix=keys, reconnect_delay=(0.02, 0.2))) as publisher,
        Hub(cluster_backend(redis_cluster.url, keys), default=BIG) as subscriber,
    ):
        name, master, replica = fresh_topic(publisher.backend, redis_cluster)
        with restored(redis_cluster, master):
            sub = subscriber.subscribe(name)
            await sub.wait_started()
            kept = [await publisher.publish(name, n) for n in range(5)]  # each one replicated
            redis_cluster.pause(replica)
            try:
                redis_cluster.cut_replication(master)
                with pytest.raises(HubUnavailable, match="reached 0 of 1 replicas"):
                    await publisher.publish(name, "unconfirmed")
                # Not acknowledged, yet on the master: its subscribers saw it.
                seen = await collect(sub, lambda items: len(items) >= 6)
                assert messages(seen)[-1].data == "unconfirmed"
                master.kill()
            finally:
                redis_cluster.resume(replica)
            redis_cluster.takeover(replica)
            # Every acknowledged message survived the failover; the unconfirmed one did not.
            _, history = await until_ok(lambda: publisher.history(name))
            assert history == kept
            # The new master has no replica until the old one is back. With Redis'
            # min-replicas-to-write 1 it refuses writes (not run), where without it every
            # publish would run and then time out waiting.
            with replica.client() as client:
                client.config_set("min-replicas-to-write", 1)
            try:
                with pytest.raises(HubUnavailable, match="NOREPLICAS"):
                    await publisher.publish(name, "refused")
                redis_cluster.restart(master)  # as the new master's replica
                after = await until_ok(lambda: publisher.publish(name, "after"))
            finally:
                with replica.client() as client:
                    client.config_set("min-replicas-to-write", 0)
            assert after.seq == 6, (after, await publisher.history(name))
            items = await collect(sub, lambda items: after in items)
            assert items[0] == Gap(name, 6, 1, GapReason.RESET)
            assert items[1:] == [*kept, after]
