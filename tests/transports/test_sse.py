"""Server-Sent Events over real sockets: headers, ids, resume, gaps, heartbeats, errors.

Also the event ids' format, and the modules' former import paths.
"""

from __future__ import annotations

import asyncio

import pytest

from fullduplex.hub import MAX_SEQ, Policy, TopicConfig
from fullduplex.protocol import sse as encoding
from fullduplex.transports import eventstream, sse
from fullduplex.transports.sse import format_event_id, parse_event_id

from .client import EventStream, request
from .conftest import Setup, make_setup, teardown


async def test_headers_retry_and_initial_id(rt: Setup) -> None:
    await rt.hub.publish("news", "old")
    stream = await EventStream.open(rt.port, "/sse?topic=news")
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["x-accel-buffering"] == "no"
        first = await stream.next_block()
        assert first is not None
        # The default 3 s hint, jittered over [1.5 s, 4.5 s] so a restart's returns spread.
        assert 1500 <= int(first.get("retry") or 0) <= 4500
        second = await stream.next_block()
        assert second is not None
        assert second.get("id") == "1"  # "now" is a cursor: seq 1 was already published
        assert second.get("data") is None
        await rt.hub.publish("news", {"a": "line1\nline2"})
        event = await stream.next_event()
        assert event is not None
        assert event.get("id") == "2"
        assert event.get("event") is None  # default type: onmessage
        assert event.json() == {
            "topic": "news",
            "seq": 2,
            "data": {"a": "line1\nline2"},
            "time": event.json()["time"],
        }
    finally:
        await stream.close()


async def test_resume_with_last_event_id_is_exact(rt: Setup) -> None:
    stream = await EventStream.open(rt.port, "/sse?topic=feed")
    await stream.next_block()
    for i in range(5):
        await rt.hub.publish("feed", i)
    seen = [int((await stream.next_event()).get("id")) for _ in range(3)]  # type: ignore[union-attr]
    assert seen == [1, 2, 3]
    await stream.close()
    for i in range(5, 8):
        await rt.hub.publish("feed", i)
    stream = await EventStream.open(rt.port, "/sse?topic=feed", [("Last-Event-ID", "3")])
    try:
        await stream.next_block()
        got = [(await stream.next_event()).json()["seq"] for _ in range(5)]  # type: ignore[union-attr]
        assert got == [4, 5, 6, 7, 8]
        await rt.hub.publish("feed", 8)
        assert (await stream.next_event()).json()["seq"] == 9  # type: ignore[union-attr]
    finally:
        await stream.close()


async def test_since_parameter_and_no_duplicates(rt: Setup) -> None:
    for i in range(4):
        await rt.hub.publish("feed", i)
    stream = await EventStream.open(rt.port, "/sse?topic=feed&since=2")
    try:
        await stream.next_block()
        assert [(await stream.next_event()).json()["seq"] for _ in range(2)] == [3, 4]  # type: ignore[union-attr]
        await rt.hub.publish("feed", 4)
        assert (await stream.next_event()).json()["seq"] == 5  # type: ignore[union-attr]
        with pytest.raises(TimeoutError):
            await stream.next_event(timeout=0.3)
    finally:
        await stream.close()


async def test_several_topics_encode_every_cursor(rt: Setup) -> None:
    await rt.hub.publish("b", 0)
    stream = await EventStream.open(rt.port, "/sse?topic=a&topic=b")
    try:
        await stream.next_block()
        first = await stream.next_block()
        assert first is not None and first.get("id") == "a:0,b:1"
        await rt.hub.publish("a", 1)
        event = await stream.next_event()
        assert event is not None and event.get("id") == "a:1,b:1"
        await rt.hub.publish("b", 2)
        event = await stream.next_event()
        assert event is not None and event.get("id") == "a:1,b:2"
    finally:
        await stream.close()
    await rt.hub.publish("a", 3)
    await rt.hub.publish("b", 4)
    stream = await EventStream.open(rt.port, "/sse?topic=a&topic=b", [("Last-Event-ID", "a:1,b:2")])
    try:
        await stream.next_block()
        got = []
        for _ in range(2):
            event = await stream.next_event()
            assert event is not None
            got.append((event.json()["topic"], event.json()["seq"]))
        got.sort()
        assert got == [("a", 2), ("b", 3)]
    finally:
        await stream.close()


async def test_gap_event_when_trimmed() -> None:
    setup = await make_setup()
    setup.hub.configure("short", TopicConfig(history_size=2))
    try:
        for i in range(6):
            await setup.hub.publish("short", i)
        stream = await EventStream.open(setup.port, "/sse?topic=short&since=1")
        await stream.next_block()
        gap = await stream.next_event()
        assert gap is not None and gap.get("event") == "gap"
        assert gap.get("id") == "4"
        assert gap.json()["gap"] == {"since": 1, "first_available": 5, "reason": "trimmed"}
        assert (await stream.next_event()).json()["seq"] == 5  # type: ignore[union-attr]
        await stream.close()
    finally:
        await teardown(setup)


async def test_head_gets_the_head_alone_and_subscribes_nothing(rt: Setup) -> None:
    # fuzz/attack.py: HEAD /sse streamed the events (RFC 9110 9.3.2: no content for HEAD),
    # which a keep-alive client reads as its next response. Then a GET on the same connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", rt.port)
    try:
        writer.write(
            b"HEAD /sse?topic=chat HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /poll?topic=chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head
    assert rest.startswith(b"HTTP/1.1 200 ")  # the next response, no event in between
    assert b'"cursor":0' in rest
    assert rt.hub.subscriber_counts().get("chat", 0) == 0  # the stream's cleanup ran
    assert len(rt.transports.requests) == 0


async def test_heartbeat_comments(rt: Setup) -> None:
    # The fixture sets heartbeat_interval=0.2.
    stream = await EventStream.open(rt.port, "/sse?topic=quiet")
    try:
        await stream.next_block()  # retry
        await stream.next_block()  # id
        with pytest.raises(TimeoutError):
            await stream.next_block(timeout=0.7)
        assert len(stream.comments) >= 2
    finally:
        await stream.close()


@pytest.mark.parametrize(
    ("target", "headers", "status", "error"),
    [
        ("/sse", [], 400, "missing parameter: topic"),
        ("/sse?topic=a%20b", [], 400, "invalid topic"),
        ("/sse?topic=ok&since=-1", [], 400, "invalid since"),
        ("/sse?topic=ok&since=1&since=2", [], 400, "parameter since given more than once"),
        ("/sse?topic=ok", [("Last-Event-ID", "x")], 400, "invalid Last-Event-ID"),
        ("/sse?topic=a&topic=b", [("Last-Event-ID", "a:1,c:2")], 400, "invalid Last-Event-ID"),
        ("/sse?" + "&".join(f"topic=t{i}" for i in range(17)), [], 400, "too many topics"),
    ],
)
async def test_bad_requests(
    rt: Setup, target: str, headers: list[tuple[str, str]], status: int, error: str
) -> None:
    reply = await request(rt.port, "GET", target, headers=headers)
    assert reply.status == status
    assert reply.json()["error"].startswith(error)


async def test_disallowed_topic_is_403() -> None:
    from fullduplex import App, serve
    from fullduplex.hub import Hub
    from fullduplex.transports import TopicRules, mount_sse

    hub = Hub()
    await hub.start()
    app = App()
    mount_sse(app, hub, rules=TopicRules(subscribe=["public.*"]))
    server = await serve(app, "127.0.0.1", 0)
    try:
        reply = await request(server.port, "GET", "/sse?topic=secret")
        assert reply.status == 403
        assert reply.json() == {"error": "unknown topic: secret"}
    finally:
        await hub.close()
        await server.shutdown()


async def _stalled_sse(port: int, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    import socket

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


@pytest.mark.parametrize("policy", [Policy.DROP_OLDEST, Policy.DISCONNECT])
async def test_slow_sse_consumer_is_bounded(policy: Policy) -> None:
    setup = await make_setup()
    setup.hub.configure("flood", TopicConfig(queue_size=20, policy=policy))
    try:
        _, slow_writer = await _stalled_sse(setup.port, "/sse?topic=flood")
        fast = await EventStream.open(setup.port, "/sse?topic=flood")
        await fast.next_block()
        await asyncio.sleep(0.1)
        pad = "p" * 8000
        peak = 0
        for i in range(800):
            await setup.hub.publish("flood", {"i": i, "pad": pad})
            event = await fast.next_event()
            assert event is not None and event.json()["data"]["i"] == i
            for conn in setup.server.connections:
                peak = max(peak, conn.transport.get_write_buffer_size())
        # asyncio's default high-water mark (64 KiB) plus one batch of at most queue_size events.
        assert peak <= 64 * 1024 + 21 * 8200
        if policy is Policy.DISCONNECT:
            # The slow stream released its subscription: only the fast one is left. (Its
            # connection stays until the client reads or leaves: StreamingResponse has no
            # way to abort a connection; see docs/transports.md.)
            assert len(setup.transports.requests) == 1
        await fast.close()
        slow_writer.close()
    finally:
        await teardown(setup)


def test_event_ids_one_topic_and_several() -> None:
    assert format_event_id({"t": 42}) == "42"
    assert format_event_id({"chat": 17, "ticker": 42}) == "chat:17,ticker:42"
    assert parse_event_id("42", ["t"]) == {"t": 42}
    assert parse_event_id("chat:17,ticker:42", ["chat", "ticker"]) == {"chat": 17, "ticker": 42}
    assert parse_event_id(" chat:1 ", ["chat", "x"]) == {"chat": 1}
    assert parse_event_id("t:3", ["t"]) == {"t": 3}


@pytest.mark.parametrize(
    ("value", "topics"),
    [
        ("x", ["t"]),
        ("-1", ["t"]),
        ("1.5", ["t"]),
        ("9" * 19, ["t"]),
        ("a:1,b:x", ["a", "b"]),
        ("a:1,c:2", ["a", "b"]),
        ("a1", ["a", "b"]),
        ("", ["a", "b"]),
        ("\u0661", ["t"]),  # an Arabic-Indic digit: isdigit() but not ASCII
    ],
)
def test_bad_event_ids(value: str, topics: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_event_id(value, topics)


def test_event_ids_take_the_cursors_since_takes() -> None:
    # One cursor rule (fullduplex.hub.check_since) for ?since= and Last-Event-ID.
    assert parse_event_id(str(MAX_SEQ), ["t"]) == {"t": MAX_SEQ}
    assert parse_event_id(f"a:{MAX_SEQ},b:0", ["a", "b"]) == {"a": MAX_SEQ, "b": 0}
    with pytest.raises(ValueError):
        parse_event_id(str(MAX_SEQ + 1), ["t"])


def test_former_import_paths_still_work() -> None:
    # transports.sse held the encoding, transports.eventstream the route.
    assert sse.encode_event is encoding.encode_event
    assert sse.encode_comment is encoding.encode_comment
    assert sse.encode_retry is encoding.encode_retry
    assert eventstream.mount_sse is sse.mount_sse
    assert eventstream.EventCache is sse.EventCache
    assert eventstream.DEFAULT_HEARTBEAT_INTERVAL == sse.DEFAULT_HEARTBEAT_INTERVAL
