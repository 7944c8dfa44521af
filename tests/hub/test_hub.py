"""The hub's semantics, on the memory backend and on a real redis-server."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import pytest

from fullduplex.hub import (
    Gap,
    GapReason,
    Hub,
    Message,
    Policy,
    Subscription,
    SubscriptionClosed,
    TopicConfig,
)
from fullduplex.hub import hub as hub_module
from fullduplex.hub.base import ERROR, HUB_CLOSED, SLOW_CONSUMER

from .conftest import MakeHub, eventually


def topic() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def seqs(items: list[Message | Gap]) -> list[int]:
    assert all(isinstance(item, Message) for item in items), items
    return [item.seq for item in items if isinstance(item, Message)]


async def take(sub: Subscription, count: int, timeout: float = 5.0) -> list[Message | Gap]:
    items: list[Message | Gap] = []
    async with asyncio.timeout(timeout):
        while len(items) < count:
            items.append(await sub.get())
    return items


async def publish_all(hub: Hub, name: str, count: int, start: int = 0) -> list[Message]:
    return [await hub.publish(name, {"n": n}) for n in range(start, start + count)]


# Sequence numbers


async def test_seq_starts_at_1_and_is_monotonic_per_topic(make_hub: MakeHub) -> None:
    hub = await make_hub()
    a, b = topic(), topic()
    assert await hub.last_seq(a) == 0
    for n in range(1, 21):
        assert (await hub.publish(a, n)).seq == n
        if n % 2:
            assert (await hub.publish(b, n)).seq == (n + 1) // 2
    assert await hub.last_seq(a) == 20
    assert await hub.last_seq(b) == 10
    message = await hub.publish(a, {"x": [1, "é", None]})
    assert message == Message(a, 21, {"x": [1, "é", None]}, message.time)
    assert math.isclose(message.time, __import__("time").time(), abs_tol=5)


async def test_publish_rejects_what_json_cannot_encode(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    with pytest.raises(TypeError):
        await hub.publish(name, object())
    assert await hub.last_seq(name) == 0


async def test_misuse(make_hub: MakeHub) -> None:
    hub = await make_hub()
    with pytest.raises(ValueError):
        hub.subscribe("")
    with pytest.raises(ValueError):
        hub.subscribe("t", since=-1)
    with pytest.raises(ValueError):
        await hub.history("t", limit=-1)
    await hub.close()
    with pytest.raises(RuntimeError):
        await hub.publish("t", 1)
    with pytest.raises(ValueError):
        TopicConfig(queue_size=1)
    with pytest.raises(ValueError):
        TopicConfig(history_age=0)
    with pytest.raises(ValueError):
        Hub("mqtt://nope")


# Subscribing


async def test_subscribe_from_now(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    await publish_all(hub, name, 3)
    sub = hub.subscribe(name)
    await sub.wait_started()
    assert sub.cursor == 3
    await publish_all(hub, name, 3, start=3)
    assert seqs(await take(sub, 3)) == [4, 5, 6]
    assert sub.lag == 0


async def test_since_replays_history_then_live(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    await publish_all(hub, name, 30)
    sub = hub.subscribe(name, since=10)
    assert sub.cursor == 10
    await publish_all(hub, name, 10, start=30)
    items = await take(sub, 30)
    assert seqs(items) == list(range(11, 41))
    assert [m.data["n"] for m in items if isinstance(m, Message)] == list(range(10, 40))
    assert sub.get_nowait() == []
    assert sub.cursor == 40


async def test_since_is_exact_under_concurrent_publishing(
    make_hub: MakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small replay chunks, so that replays take several reads while publishing goes on.
    monkeypatch.setattr(hub_module, "REPLAY_CHUNK", 7)
    hub = await make_hub()
    name, total = topic(), 200
    results: list[tuple[int, list[int]]] = []  # (since, seqs received), one per subscriber

    async def publisher() -> None:
        for n in range(total):
            await hub.publish(name, n)
            if n % 3 == 0:
                await asyncio.sleep(0)

    async def subscriber(since: int) -> None:
        sub = hub.subscribe(name, since=since)
        got: list[Message | Gap] = []
        async with asyncio.timeout(10):
            while not got or got[-1].seq < total:  # type: ignore[union-attr]
                got.extend(await sub.wait(None))
        results.append((since, seqs(got)))
        sub.close()

    async def subscribers() -> None:
        tasks = []
        for n in range(10):
            since = await hub.last_seq(name)
            tasks.append(asyncio.create_task(subscriber(max(0, since - n * 3))))
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)

    await asyncio.gather(publisher(), subscribers())
    # Ten subscribers; their cursors may coincide (a dict keyed by cursor made this flaky).
    assert len(results) == 10
    assert len({since for since, _ in results}) >= 2
    for since, got in results:
        assert got == list(range(since + 1, total + 1)), since


async def test_replay_is_paced_and_live_overflow_falls_back_to_history(
    make_hub: MakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "REPLAY_CHUNK", 5)
    hub = await make_hub(TopicConfig(queue_size=4))
    name = topic()
    await publish_all(hub, name, 100)
    sub = hub.subscribe(name, since=0)
    await eventually(lambda: sub.queued == 4)
    # The replay waits for the reader; live messages overflow its buffer meanwhile.
    await publish_all(hub, name, 50, start=100)
    await asyncio.sleep(0.05)
    assert sub.queued == 4
    assert sub.lag == 150
    got: list[Message | Gap] = []
    async with asyncio.timeout(10):
        while len(got) < 150:
            got.append(await sub.get())
    assert seqs(got) == list(range(1, 151))
    assert sub.dropped == 0


async def test_a_cursor_of_another_epoch_is_a_reset(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    await publish_all(hub, name, 3)
    last, epoch = await hub.position(name)
    assert last == 3 and epoch
    gap, messages = await hub.history(name, 2, epoch="someotherepoch")
    assert gap == Gap(name, 2, 1, GapReason.RESET) and gap.epoch == epoch
    assert [(m.seq, m.epoch) for m in messages] == [(1, epoch), (2, epoch), (3, epoch)]
    gap, messages = await hub.history(name, 2, epoch=epoch)
    assert gap is None and [m.seq for m in messages] == [3]
    gap, messages = await hub.history(name, 0, epoch="someotherepoch")  # nothing held
    assert gap is None and len(messages) == 3
    sub = hub.subscribe(name, since=3, epoch="someotherepoch")
    items = await take(sub, 4)
    assert items[0] == Gap(name, 3, 1, GapReason.RESET)
    assert seqs(items[1:]) == [1, 2, 3] and sub.epoch == epoch


async def test_since_beyond_last_is_a_reset(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    await publish_all(hub, name, 3)
    gap, messages = await hub.history(name, 10)
    assert gap == Gap(name, 10, 1, GapReason.RESET)
    assert [m.seq for m in messages] == [1, 2, 3]
    sub = hub.subscribe(name, since=10)
    items = await take(sub, 4)
    assert items[0] == Gap(name, 10, 1, GapReason.RESET)
    assert seqs(items[1:]) == [1, 2, 3]
    assert sub.cursor == 3


# History and gaps


async def test_history_limit_and_since(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    assert await hub.history(name) == (None, [])
    await publish_all(hub, name, 10)
    gap, messages = await hub.history(name, 4, limit=3)
    assert gap is None
    assert [m.seq for m in messages] == [5, 6, 7]
    assert await hub.history(name, 10) == (None, [])
    assert (await hub.history(name, 0, limit=0)) == (None, [])


async def test_gap_when_trimmed_by_count(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    hub.configure(name, TopicConfig(history_size=10))
    await publish_all(hub, name, 30)
    gap, messages = await hub.history(name, 5)
    assert gap == Gap(name, 5, 21)
    assert gap.missing == 15
    assert [m.seq for m in messages] == list(range(21, 31))
    gap, messages = await hub.history(name, 20)
    assert gap is None
    assert [m.seq for m in messages] == list(range(21, 31))
    # A subscriber resuming before the history gets the gap first.
    sub = hub.subscribe(name, since=5)
    items = await take(sub, 11)
    assert items[0] == Gap(name, 5, 21)
    assert seqs(items[1:]) == list(range(21, 31))
    assert sub.cursor == 30


async def test_history_size_zero_keeps_nothing(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    hub.configure(name, TopicConfig(history_size=0))
    await publish_all(hub, name, 3)
    assert await hub.history(name, 1) == (Gap(name, 1, 4), [])
    assert await hub.last_seq(name) == 3
    assert (await hub.publish(name, 0)).seq == 4


async def test_gap_when_trimmed_by_age(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    hub.configure(name, TopicConfig(history_age=0.2))
    await publish_all(hub, name, 5)
    await asyncio.sleep(0.3)  # the time passing is what is tested here
    # Trimmed on read too, before anything is published again.
    assert await hub.history(name, 0) == (Gap(name, 0, 6), [])
    await publish_all(hub, name, 3, start=5)
    gap, messages = await hub.history(name, 2)
    assert gap == Gap(name, 2, 6)
    assert [m.seq for m in messages] == [6, 7, 8]


async def test_configure_patterns_later_wins(make_hub: MakeHub) -> None:
    hub = await make_hub(TopicConfig(history_size=5))
    hub.configure("ticker.*", TopicConfig(history_size=2))
    hub.configure("ticker.eur", TopicConfig(history_size=3))
    assert hub.config("chat").history_size == 5
    assert hub.config("ticker.usd").history_size == 2
    assert hub.config("ticker.eur").history_size == 3
    hub.configure("ticker.*", TopicConfig(history_size=4))
    assert hub.config("ticker.eur").history_size == 4
    prefix = topic()
    hub.configure(f"{prefix}.*", TopicConfig(history_size=2))
    await publish_all(hub, f"{prefix}.a", 5)
    assert (await hub.history(f"{prefix}.a", 0))[0] == Gap(f"{prefix}.a", 0, 4)


# Slow consumers: queue policies


N = 300
SIZE = 8


async def run_slow_and_fast(hub: Hub, name: str) -> tuple[Subscription, Subscription, float]:
    """Publish N messages with a subscriber that never reads; return it, and the seconds a
    fast subscriber took to get all N."""
    slow = hub.subscribe(name)
    fast = hub.subscribe(name)
    await slow.wait_started()
    await fast.wait_started()
    loop = asyncio.get_running_loop()
    start = loop.time()
    received: list[Message | Gap] = []
    peak = 0

    async def read_fast() -> None:
        while len(received) < N:
            received.extend(await fast.wait(None))

    reader = asyncio.create_task(read_fast())
    for n in range(N):
        await hub.publish(name, {"key": n % 3, "n": n})
        await asyncio.sleep(0)  # the memory backend's publish never yields to the reader
        peak = max(peak, slow.queued)
        assert slow.queued <= SIZE
    async with asyncio.timeout(10):
        await reader
    elapsed = loop.time() - start
    assert seqs(received) == list(range(1, N + 1))
    assert fast.dropped == 0 and fast.lag == 0
    assert peak <= SIZE
    return slow, fast, elapsed


async def test_drop_oldest_keeps_queue_bounded_and_says_so(make_hub: MakeHub) -> None:
    hub = await make_hub(TopicConfig(queue_size=SIZE, policy=Policy.DROP_OLDEST))
    name = topic()
    slow, _, _ = await run_slow_and_fast(hub, name)
    await eventually(lambda: slow.dropped == N - (SIZE - 1))
    assert slow.lag == N
    items = slow.get_nowait()
    assert len(items) == SIZE
    assert items[0] == Gap(name, 0, N - SIZE + 2, GapReason.DROPPED)
    assert seqs(items[1:]) == list(range(N - SIZE + 2, N + 1))
    assert slow.lag == 0 and slow.cursor == N
    # What was dropped is still in history.
    _, messages = await hub.history(name, items[0].since, limit=3)
    assert [m.seq for m in messages] == [1, 2, 3]


async def test_conflate_keeps_latest_per_key(make_hub: MakeHub) -> None:
    hub = await make_hub(
        TopicConfig(queue_size=SIZE, policy=Policy.CONFLATE, conflate_key=lambda d: d["key"])
    )
    name = topic()
    slow, _, _ = await run_slow_and_fast(hub, name)
    await eventually(lambda: slow.conflated + slow.queued == N)
    items = slow.get_nowait()
    got = seqs(items)
    assert got == sorted(got)
    assert got[-3:] == [N - 2, N - 1, N]  # the latest of each key
    assert slow.dropped == 0


async def test_conflate_whole_topic_keeps_the_latest(make_hub: MakeHub) -> None:
    hub = await make_hub(TopicConfig(queue_size=SIZE, policy="conflate"))  # type: ignore[arg-type]
    name = topic()
    sub = hub.subscribe(name)
    await sub.wait_started()
    await publish_all(hub, name, SIZE)
    await eventually(lambda: sub.queued == SIZE)
    await hub.publish(name, "latest")
    await eventually(lambda: sub.conflated == SIZE)
    assert [m.data for m in sub.get_nowait() if isinstance(m, Message)] == ["latest"]
    assert sub.dropped == 0


async def test_conflate_full_of_other_keys_drops_oldest(make_hub: MakeHub) -> None:
    hub = await make_hub(
        TopicConfig(queue_size=4, policy=Policy.CONFLATE, conflate_key=lambda d: d["n"])
    )
    name = topic()
    sub = hub.subscribe(name)
    await sub.wait_started()
    await publish_all(hub, name, 10)
    await eventually(lambda: sub.dropped == 7)
    items = sub.get_nowait()
    assert items[0] == Gap(name, 0, 8, GapReason.DROPPED)
    assert seqs(items[1:]) == [8, 9, 10]


async def test_disconnect_closes_slow_consumer(make_hub: MakeHub) -> None:
    hub = await make_hub(TopicConfig(queue_size=SIZE, policy=Policy.DISCONNECT))
    name = topic()
    slow, fast, _ = await run_slow_and_fast(hub, name)
    assert slow.closed and slow.close_reason == SLOW_CONSUMER
    assert not fast.closed
    # What was queued can still be read, then the reason is raised.
    assert seqs(await take(slow, SIZE)) == list(range(1, SIZE + 1))
    with pytest.raises(SubscriptionClosed) as raised:
        await slow.get()
    assert raised.value.reason == SLOW_CONSUMER
    with pytest.raises(SubscriptionClosed):
        slow.get_nowait()
    with pytest.raises(SubscriptionClosed):
        async for _ in slow:
            pass


async def test_lag_is_observable(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    sub = hub.subscribe(name)
    await sub.wait_started()
    await publish_all(hub, name, 10)
    await eventually(lambda: sub.queued == 10)
    assert sub.lag == 10
    await take(sub, 4)
    assert sub.lag == 6 and sub.queued == 6
    sub.get_nowait()
    assert sub.lag == 0
    assert "lag=0" in repr(sub)


# Reading


async def test_wait_returns_everything_or_nothing_after_timeout(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    sub = hub.subscribe(name)
    await sub.wait_started()
    assert await sub.wait(0.01) == []
    await publish_all(hub, name, 3)
    await eventually(lambda: sub.queued == 3)
    assert seqs(await sub.wait(1)) == [1, 2, 3]
    waiter = asyncio.create_task(sub.wait(5))
    await asyncio.sleep(0)
    await hub.publish(name, 4)
    assert seqs(await asyncio.wait_for(waiter, 5)) == [4]


async def test_async_for_ends_on_close(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    sub = hub.subscribe(name)
    await sub.wait_started()
    await publish_all(hub, name, 3)
    got = []
    async with asyncio.timeout(5):
        async for item in sub:
            got.append(item)
            if len(got) == 3:
                sub.close()
    assert seqs(got) == [1, 2, 3]
    assert sub.close_reason == "closed"
    with pytest.raises(SubscriptionClosed):
        await sub.get()


async def test_close_hub_closes_subscriptions(make_hub: MakeHub) -> None:
    hub = await make_hub()
    sub = hub.subscribe(topic())
    replaying = hub.subscribe(topic(), since=0)
    getter = asyncio.create_task(sub.get())
    await asyncio.sleep(0.01)
    await hub.close()
    with pytest.raises(SubscriptionClosed):
        await asyncio.wait_for(getter, 5)
    assert sub.close_reason == replaying.close_reason == HUB_CLOSED
    await asyncio.wait_for(sub.wait_closed(), 1)


# Callback mode


async def test_callback_mode(make_hub: MakeHub) -> None:
    hub = await make_hub(TopicConfig(queue_size=2))
    name = topic()
    await publish_all(hub, name, 5)
    live: list[Message | Gap] = []
    resumed: list[Message | Gap] = []
    first = hub.subscribe(name, on_message=live.append)
    second = hub.subscribe(name, since=2, on_message=resumed.append)
    await first.wait_started()
    await publish_all(hub, name, 20, start=5)
    await eventually(lambda: len(live) == 20 and len(resumed) == 23)
    assert seqs(live) == list(range(6, 26))
    assert seqs(resumed) == list(range(3, 26))  # no queue, so no policy applies
    assert first.cursor == second.cursor == 25 and first.lag == 0
    assert first.queued == 0
    with pytest.raises(RuntimeError):
        await first.get()


async def test_failing_callback_is_closed_alone(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    good: list[Any] = []

    def bad(item: Message | Gap) -> None:
        raise RuntimeError("boom")

    failing = hub.subscribe(name, on_message=bad)
    other = hub.subscribe(name, on_message=good.append)
    await failing.wait_started()
    await other.wait_started()
    await publish_all(hub, name, 3)
    await eventually(lambda: len(good) == 3)
    assert failing.closed and failing.close_reason == ERROR
    assert not other.closed


async def test_on_close_tells_why_once(make_hub: MakeHub) -> None:
    hub = await make_hub(TopicConfig(queue_size=2, policy=Policy.DISCONNECT))
    name = topic()
    reasons: list[tuple[str, str]] = []
    slow = hub.subscribe(name, on_close=lambda reason: reasons.append(("slow", reason)))
    callback = hub.subscribe(
        name, on_message=lambda item: None, on_close=lambda r: reasons.append(("cb", r))
    )
    await slow.wait_started()
    await callback.wait_started()
    await publish_all(hub, name, 3)
    await eventually(lambda: slow.closed)
    assert reasons == [("slow", SLOW_CONSUMER)]
    await hub.close()
    callback.close()
    assert reasons == [("slow", SLOW_CONSUMER), ("cb", HUB_CLOSED)]


async def test_wait_waits_its_timeout_through_other_changes(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = topic()
    sub = hub.subscribe(name, since=0)  # its start wakes waiters: wait() must go on
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await sub.wait(0.1) == []
    assert loop.time() - start >= 0.09


async def test_subscribing_from_the_last_seq_goes_live_without_a_replay(make_hub: MakeHub) -> None:
    hub = await make_hub()
    for n in range(3):
        await hub.publish("cursor", n)
    first = hub.subscribe("cursor")  # opens the feed: this hub now knows the last seq
    await first.wait_started()
    sub = hub.subscribe("cursor", since=3)
    assert sub._task is None  # no replay task, no history read
    assert sub.cursor == 3
    message = await hub.publish("cursor", "next")
    got = await asyncio.wait_for(sub.get(), 5)
    assert isinstance(got, Message) and got.seq == message.seq == 4
    sub.close()
    first.close()
