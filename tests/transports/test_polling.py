"""Short and long polling over real sockets."""

from __future__ import annotations

import asyncio
import time

import pytest

from fullduplex.hub import TopicConfig

from .client import get_json, request
from .conftest import Setup, make_setup, teardown


async def test_poll_without_since_gives_the_cursor(rt: Setup) -> None:
    epoch = rt.hub.backend.epoch_nowait("p")  # the memory hub's, known before any message
    assert await get_json(rt.port, "/poll?topic=p") == {"messages": [], "cursor": 0, "epoch": epoch}
    await rt.hub.publish("p", 1)
    assert await get_json(rt.port, "/poll?topic=p") == {"messages": [], "cursor": 1, "epoch": epoch}


async def test_poll_since_and_limit(rt: Setup) -> None:
    for i in range(5):
        await rt.hub.publish("p", {"i": i})
    reply = await get_json(rt.port, "/poll?topic=p&since=1&limit=2")
    assert [m["seq"] for m in reply["messages"]] == [2, 3]
    assert reply["messages"][0]["data"] == {"i": 1}
    assert reply["cursor"] == 3
    reply = await get_json(rt.port, f"/poll?topic=p&since={reply['cursor']}")
    assert [m["seq"] for m in reply["messages"]] == [4, 5]
    assert reply["cursor"] == 5
    reply = await get_json(rt.port, "/poll?topic=p&since=5")
    assert reply["messages"] == [] and reply["cursor"] == 5


async def test_poll_reports_a_gap() -> None:
    setup = await make_setup()
    setup.hub.configure("short", TopicConfig(history_size=2))
    try:
        for i in range(5):
            await setup.hub.publish("short", i)
        reply = await get_json(setup.port, "/poll?topic=short&since=1")
        assert reply["messages"][0] == {
            "topic": "short",
            "gap": {"since": 1, "first_available": 4, "reason": "trimmed"},
        }
        assert [m["seq"] for m in reply["messages"][1:]] == [4, 5]
        assert reply["cursor"] == 5
    finally:
        await teardown(setup)


async def test_longpoll_answers_at_once_from_history(rt: Setup) -> None:
    await rt.hub.publish("lp", "a")
    started = time.monotonic()
    reply = await get_json(rt.port, "/longpoll?topic=lp&since=0")
    assert time.monotonic() - started < 0.5
    assert [m["data"] for m in reply["messages"]] == ["a"]
    assert reply["cursor"] == 1


async def test_longpoll_waits_for_the_next_message(rt: Setup) -> None:
    await rt.hub.publish("lp", "old")
    poll = asyncio.ensure_future(get_json(rt.port, "/longpoll?topic=lp&since=1"))
    await asyncio.sleep(0.2)
    assert not poll.done()
    await rt.hub.publish("lp", "new")
    reply = await asyncio.wait_for(poll, 2)
    assert [(m["seq"], m["data"]) for m in reply["messages"]] == [(2, "new")]
    assert reply["cursor"] == 2


async def test_longpoll_without_since_waits_from_now(rt: Setup) -> None:
    await rt.hub.publish("lp", "old")
    poll = asyncio.ensure_future(get_json(rt.port, "/longpoll?topic=lp"))
    await asyncio.sleep(0.2)
    await rt.hub.publish("lp", "new")
    reply = await asyncio.wait_for(poll, 2)
    assert [m["seq"] for m in reply["messages"]] == [2]


async def test_longpoll_timeout_keeps_the_cursor(rt: Setup) -> None:
    # The fixture sets longpoll_timeout=1.0.
    await rt.hub.publish("lp", "old")
    started = time.monotonic()
    reply = await get_json(rt.port, "/longpoll?topic=lp&since=1")
    assert 0.9 < time.monotonic() - started < 2.0
    assert reply["messages"] == [] and reply["cursor"] == 1


async def test_many_waiting_longpolls_cost_no_extra_tasks(rt: Setup) -> None:
    before = len(asyncio.all_tasks())
    polls = [asyncio.ensure_future(get_json(rt.port, "/longpoll?topic=many")) for _ in range(50)]
    await asyncio.sleep(0.3)
    # One task per client here, one HTTP handler task per request in the server: no more.
    assert len(asyncio.all_tasks()) - before <= 100
    await rt.hub.publish("many", "go")
    replies = await asyncio.gather(*polls)
    assert all(r["cursor"] == 1 for r in replies)


@pytest.mark.parametrize("path", ["/poll", "/longpoll"])
@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("", "missing parameter: topic"),
        ("?topic=", "invalid topic"),
        ("?topic=a:b", "invalid topic"),
        ("?topic=a&topic=b", "too many topics"),
        ("?topic=a&since=-3", "invalid since"),
        ("?topic=a&since=1e3", "invalid since"),
        ("?topic=a&since=99999999999999999999", "invalid since"),
        ("?topic=a&limit=0", "invalid limit"),
        ("?topic=a&limit=1000", "invalid limit"),
    ],
)
async def test_bad_requests(rt: Setup, path: str, query: str, error: str) -> None:
    reply = await request(rt.port, "GET", path + query)
    assert reply.status == 400
    assert reply.json()["error"].startswith(error)
