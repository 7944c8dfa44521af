"""SSE events encoded once for every stream: the shared cache, its bounds, the bytes on the wire."""

from __future__ import annotations

import asyncio
import contextlib

from fullduplex.hub import Message
from fullduplex.protocol.sse import encode_event
from fullduplex.transports.common import EnvelopeCache
from fullduplex.transports.sse import EventCache, format_event_id

from .transports.client import EventStream
from .transports.conftest import Setup, make_setup, teardown


def message(seq: int, data: object = None, topic: str = "t") -> Message:
    return Message(topic, seq, {"n": seq} if data is None else data, 1700000000.0 + seq)


def test_event_is_what_the_encoder_writes_and_is_encoded_once() -> None:
    envelopes = EnvelopeCache()
    cache = EventCache(envelopes)
    m = message(7, {"text": "two\nlines"})
    event = cache.event(m)
    assert event == encode_event(envelopes.text(m), id="7")
    assert event.startswith(b"id: 7\ndata: {") and event.endswith(b"}\n\n")
    for _ in range(100):
        assert cache.event(m) is event
    assert cache.encoded == 1


def test_bounded_by_count_oldest_first() -> None:
    cache = EventCache(max_size=4)
    for seq in range(1, 11):
        cache.event(message(seq))
    assert len(cache) == 4
    assert cache.encoded == 10
    cache.event(message(10))
    cache.event(message(7))
    assert cache.encoded == 10  # the 4 latest are kept
    cache.event(message(6))
    assert cache.encoded == 11  # an older one was dropped


def test_bounded_by_bytes() -> None:
    cache = EventCache(max_bytes=2000)
    for seq in range(1, 51):
        cache.event(message(seq, "x" * 400))
    assert 0 < cache.size <= 2000
    assert len(cache) == cache.size // len(cache.event(message(50, "x" * 400)))
    big = message(51, "y" * 5000)  # larger than the bound alone: kept, the rest goes
    assert cache.event(big) is cache.event(big)
    assert len(cache) == 1


def test_a_reused_sequence_number_is_not_served_stale() -> None:
    # A broker that lost its data numbers a topic's messages from 1 again.
    cache = EventCache()
    old = cache.event(message(1, "before the reset"))
    new = cache.event(message(1, "after the reset"))
    assert b"after the reset" in new and old != new
    assert cache.event(message(1, "after the reset")) == new  # equal message: cached
    assert cache.encoded == 2
    assert cache.size == len(new)


async def open_streams(setup: Setup, target: str, count: int) -> list[EventStream]:
    streams = [await EventStream.open(setup.port, target) for _ in range(count)]
    for stream in streams:
        await stream.next_block()  # retry
        await stream.next_block()  # the id-only block: the stream is subscribed
    return streams


async def test_many_streams_one_encode_per_message_and_the_same_bytes() -> None:
    setup = await make_setup()
    events = setup.transports.events
    assert events is not None
    streams = await open_streams(setup, "/sse?topic=fan", 20)
    try:
        before = events.encoded
        for i in range(5):
            await setup.hub.publish("fan", {"i": i, "text": "a\r\nb"})
        # A burst: all 30 published before any stream runs, each stream takes them at once.
        for i in range(5, 35):
            await setup.hub.publish("fan", {"i": i, "text": "a\r\nb"})
        for stream in streams:
            for i in range(35):
                event = await stream.next_event()
                assert event is not None
                assert event.get("id") == str(i + 1)
                assert event.json()["data"] == {"i": i, "text": "a\r\nb"}
        assert events.encoded - before == 35
    finally:
        for stream in streams:
            await stream.close()
        await teardown(setup)


async def test_multi_topic_streams_share_the_data_and_keep_their_own_ids() -> None:
    setup = await make_setup()
    events = setup.transports.events
    assert events is not None
    one = (await open_streams(setup, "/sse?topic=a", 1))[0]
    two = (await open_streams(setup, "/sse?topic=a&topic=b", 1))[0]
    try:
        await setup.hub.publish("b", "first b")
        first_b = await two.next_event()
        assert first_b is not None and first_b.get("id") == "a:0,b:1"
        before = events.encoded
        await setup.hub.publish("a", {"x": 1})
        await setup.hub.publish("a", {"x": 2})
        got_one = [await one.next_event() for _ in range(2)]
        got_two = [await two.next_event() for _ in range(2)]
        assert [e.get("id") for e in got_one if e] == ["1", "2"]
        assert [e.get("id") for e in got_two if e] == ["a:1,b:1", "a:2,b:1"]
        assert [e.data for e in got_one if e] == [e.data for e in got_two if e]
        assert format_event_id({"a": 2, "b": 1}) == "a:2,b:1"
        assert events.encoded - before == 2  # once for both streams
    finally:
        await one.close()
        await two.close()
        await teardown(setup)


async def test_streams_resume_exactly_with_cached_events() -> None:
    setup = await make_setup()
    try:
        for i in range(6):
            await setup.hub.publish("r", i)
        # Three streams replaying from different cursors over the same cached events.
        targets = ["/sse?topic=r&since=0", "/sse?topic=r&since=3", "/sse?topic=r&since=5"]
        streams = [await EventStream.open(setup.port, t) for t in targets]
        try:
            for stream, since in zip(streams, (0, 3, 5), strict=True):
                seqs = []
                with contextlib.suppress(TimeoutError):
                    while True:
                        event = await stream.next_event(timeout=0.3)
                        assert event is not None
                        seqs.append(int(event.get("id") or 0))
                        assert event.json()["seq"] == seqs[-1]
                assert seqs == list(range(since + 1, 7))
        finally:
            for stream in streams:
                await stream.close()
        await asyncio.sleep(0)
    finally:
        await teardown(setup)
